//! Fixtures shared by the pool test binaries (`tests/pools.rs`, `tests/pools_limits.rs`): the
//! socket-table lock that lets one test have the agent's socket table to itself, holding clients,
//! loopback addresses, and the opens/closes/active balance every pool must keep.

use std::net::SocketAddr;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{ClientProc, ClientSpec, Mode, PoolFigures, PoolRef, Proto};

/// The kernel's live-socket table of an agent is shared by every connect on the host. The test that
/// shrinks it to 16 entries takes this lock exclusively so that its binary's other tests (which
/// hold it shared) do not fill the table under it. Each test binary has its own copy of this
/// static, and cargo runs test binaries one after another.
static SOCKET_TABLE: RwLock<()> = RwLock::new(());

pub fn shared() -> RwLockReadGuard<'static, ()> {
    SOCKET_TABLE.read().unwrap_or_else(|e| e.into_inner())
}

pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    SOCKET_TABLE.write().unwrap_or_else(|e| e.into_inner())
}

pub fn hold(prefix: &str, target: SocketAddr, proto: Proto, count: usize) -> ClientProc {
    ClientProc::spawn(ClientSpec::new(prefix, target, proto, Mode::Hold { count }))
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The invariant that makes a pool's gauge trustworthy: what opened minus what closed while
/// connmon watched equals what is open now minus what was open when it started.
pub fn balance(p: &PoolRef, f: &PoolFigures, seeded: f64) -> Result<(), String> {
    let (Some(o), Some(c), Some(a)) = (f.opens, f.closes, f.active) else {
        return Err(format!("{p}: missing series: {f}"));
    };
    if o - c == a - seeded {
        Ok(())
    } else {
        Err(format!("{p}: opens {o} - closes {c} != active {a} - seeded {seeded}: {f}"))
    }
}
