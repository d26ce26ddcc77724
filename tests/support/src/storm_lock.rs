//! Which storm scenarios may run beside each other. Every agent traces every connection on the
//! host, and the detector's timing figures ride on a ring buffer of failed attempts that a flood of
//! failures elsewhere can overflow; so the scenarios that flood (healthy churn, maxclients), and
//! those that time detection or need to be the only storm on the host, take the lock exclusively
//! ([`alone`]), the others shared ([`beside_others`]). The lock is a static of this library, and
//! each test binary is a process of its own with its own copy: it orders the scenarios within one
//! binary, and cargo already runs test binaries one after another.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static LOAD: RwLock<()> = RwLock::new(());

/// Tests that may run beside each other.
pub fn beside_others() -> RwLockReadGuard<'static, ()> {
    LOAD.read().unwrap_or_else(|e| e.into_inner())
}

/// Tests that flood the host with connections, time detection, or must be the only storm.
pub fn alone() -> RwLockWriteGuard<'static, ()> {
    LOAD.write().unwrap_or_else(|e| e.into_inner())
}
