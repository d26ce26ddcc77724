//! Updates of the per-pool tables that more than one program makes: the per-CPU counters
//! (POOL_STATS), the live count and its peak (POOL_LIVE, POOL_PEAK), the socket table lookup, and
//! the LOST counters. Live counts sit in a shared map with atomic adds so the peak is a true peak
//! across CPUs; only the kernel writes them (the agent keeps the start-up offset itself), and pool
//! maps are not LRU, so a quiet long-lived pool is never evicted by churning ones: the agent
//! removes idle pools.
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use monitor_common::{PoolKey, PoolStats, SockInfo, LOST_POOL_TABLE_FULL};

use crate::maps::{LOST, POOL_LIVE, POOL_PEAK, POOL_STATS, SCRATCH_STATS, SOCKS};

/// Applies `f` to this CPU's counters of `pool`, creating them on first use.
pub(crate) fn with_stats(pool: &PoolKey, f: impl FnOnce(&mut PoolStats)) {
    if let Some(s) = POOL_STATS.get_ptr_mut(pool) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        f(unsafe { &mut *s });
        return;
    }
    // PoolStats is too large for the 512-byte BPF stack: build the first value in a scratch slot.
    let Some(s) = SCRATCH_STATS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch slot, used only within this call.
    let s = unsafe {
        core::ptr::write_bytes(s, 0, 1);
        &mut *s
    };
    f(s);
    if POOL_STATS.insert(pool, s, 0).is_err() {
        lost(LOST_POOL_TABLE_FULL);
    }
}

/// Adds `delta` to the pool's live count and raises its peak.
pub(crate) fn live_add(pool: &PoolKey, delta: i64) {
    // One lookup in the usual case; a new pool inserts 0 and looks again, because the add must
    // be atomic on the entry other CPUs see.
    let live = match POOL_LIVE.get_ptr_mut(pool) {
        Some(live) => live,
        None => {
            let _ = POOL_LIVE.insert(pool, &0, 1 /* BPF_NOEXIST */);
            let Some(live) = POOL_LIVE.get_ptr_mut(pool) else {
                lost(LOST_POOL_TABLE_FULL);
                return;
            };
            live
        }
    };
    // core's atomics have no read-modify-write for bpf (no CAS), so use the intrinsic, which
    // lowers to the BPF atomic add instruction.
    // SAFETY: the value lives as long as the entry, and the agent deletes only idle entries.
    let now = unsafe {
        atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(live, delta);
        core::ptr::read_volatile(live)
    };
    if delta <= 0 {
        return;
    }
    // A plain store: two CPUs racing may each miss the other's +1 in the peak, never more.
    match POOL_PEAK.get_ptr_mut(pool) {
        // SAFETY: as above.
        Some(peak) => unsafe {
            if now > *peak {
                *peak = now;
            }
        },
        None => {
            let _ = POOL_PEAK.insert(pool, &now, 0);
        }
    }
}

/// What the socket table holds for `sk`, copied out.
pub(crate) fn socket(sk: u64) -> Option<SockInfo> {
    // SAFETY: entry pointer from the map, copied out at once.
    SOCKS.get_ptr(&sk).map(|p| unsafe { *p })
}

/// Counts an event the kernel side could not account (LOST_*).
pub(crate) fn lost(reason: u32) {
    if let Some(n) = LOST.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot.
        unsafe { *n += 1 }
    }
}
