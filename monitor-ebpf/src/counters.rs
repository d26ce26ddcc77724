//! Shared counters in one-slot arrays (PENDING_N, SEEDED_LEFT, FAILING_N): each tells the hot
//! path whether a table can hold anything for it, so a healthy host skips the table's lookup.
//! They are kept as upper bounds (LRU evictions and the agent's own deletions are not
//! subtracted), so "zero" always means the table really has nothing to offer.
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::maps::Array;

/// Adds `delta` atomically: several CPUs update the same slot.
#[inline(always)]
pub(crate) fn add(counter: &Array<i64>, delta: i64) {
    if let Some(n) = counter.get_ptr_mut(0) {
        // SAFETY: the array slot lives as long as the map; the add is atomic across CPUs.
        unsafe { atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(n, delta) };
    }
}

/// Whether the counter is above zero.
#[inline(always)]
pub(crate) fn positive(counter: &Array<i64>) -> bool {
    // SAFETY: array slot, read once.
    counter.get_ptr(0).is_some_and(|n| unsafe { core::ptr::read_volatile(n) } > 0)
}
