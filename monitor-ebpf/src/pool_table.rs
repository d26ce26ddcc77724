//! Updates of the per-pool tables that more than one program makes: the pool id a connect()
//! resolves once (POOL_IDS, ids taken from FREE_POOL_IDS), the per-CPU counters (POOL_STATS), the
//! live count and its peak (POOL_LIVE, POOL_PEAK), the socket table lookup, and the LOST
//! counters. The per-pool tables are arrays indexed by pool id, so every update after the connect
//! costs an inlined array access instead of a hash lookup on a 48-byte key. Live counts take
//! atomic adds so the peak is a true peak across CPUs; only the kernel writes them (the agent
//! keeps the start-up offset itself). Ids are never evicted, so a quiet long-lived pool keeps its
//! counts: the agent forgets idle pools and hands their ids back, zeroed, a collect cycle later.
//! Each CPU remembers the last pool key it resolved (POOL_ID_CACHE): a pool connecting again on
//! that CPU compares six words instead of hashing its key, while the agent's POOL_EPOCH says no
//! key left POOL_IDS since.
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use monitor_common::{PoolIdCache, PoolKey, PoolStats, SockInfo, LOST_POOL_TABLE_FULL};

use crate::maps::{FREE_POOL_IDS, LOST, POOL_EPOCH, POOL_IDS, POOL_ID_CACHE, POOL_LIVE, POOL_PEAK, POOL_STATS, SOCKS};

/// Map update flag: fail with EEXIST instead of replacing an entry.
const BPF_NOEXIST: u64 = 1;

/// The id of `pool` at connect(), from this CPU's cache when it resolved the same pool last and
/// no key left POOL_IDS since; else `lookup_pool_id`, remembered.
pub(crate) fn pool_id(pool: &PoolKey) -> Option<u32> {
    // The epoch is read before the lookup: a removal the agent makes after this read raises the
    // epoch, so what is cached below is looked up again on the next connect. An id read just
    // before a removal is the race `lookup_pool_id` already has; the agent's quarantine covers it.
    // SAFETY: array slot, read once.
    let epoch = POOL_EPOCH.get_ptr(0).map_or(0, |e| unsafe { core::ptr::read_volatile(e) });
    let Some(cache) = POOL_ID_CACHE.get_ptr_mut(0) else {
        return lookup_pool_id(pool);
    };
    // SAFETY: per-CPU slot. Only connect() calls this, in process context with preemption off
    // (tracepoints run so), and an interrupt on this CPU never runs a connect: no second writer.
    let cache = unsafe { &mut *cache };
    if cache.filled != 0 && cache.epoch == epoch && same_pool(&cache.key, pool) {
        return Some(cache.id);
    }
    let id = lookup_pool_id(pool)?;
    *cache = PoolIdCache { key: *pool, epoch, id, filled: 1 };
    Some(id)
}

/// `a == b` as six word compares (the derived `==` may compile to a `memcmp` call, which BPF
/// has not got).
#[inline(always)]
fn same_pool(a: &PoolKey, b: &PoolKey) -> bool {
    // SAFETY: PoolKey is repr(C), 48 bytes, 8-aligned, without padding.
    let (a, b) = unsafe { (&*(a as *const PoolKey as *const [u64; 6]), &*(b as *const PoolKey as *const [u64; 6])) };
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) | (a[5] ^ b[5]) == 0
}

/// The id of `pool` from POOL_IDS, taking a free one for a pool not seen yet; None (counted in
/// LOST) when every id is taken.
pub(crate) fn lookup_pool_id(pool: &PoolKey) -> Option<u32> {
    if let Some(id) = POOL_IDS.get_ptr(pool) {
        // SAFETY: entry pointer from the map, read at once.
        return Some(unsafe { *id });
    }
    let Ok(Some(id)) = FREE_POOL_IDS.pop() else {
        lost(LOST_POOL_TABLE_FULL);
        return None;
    };
    if POOL_IDS.insert(pool, &id, BPF_NOEXIST).is_ok() {
        return Some(id);
    }
    // Another CPU gave the pool an id first (or the table is full): hand this one back.
    let _ = FREE_POOL_IDS.push(id, 0);
    match POOL_IDS.get_ptr(pool) {
        // SAFETY: as above.
        Some(id) => Some(unsafe { *id }),
        None => {
            lost(LOST_POOL_TABLE_FULL);
            None
        }
    }
}

/// Applies `f` to this CPU's counters of pool `id`.
#[inline(always)]
pub(crate) fn with_stats(id: u32, f: impl FnOnce(&mut PoolStats)) {
    if let Some(s) = POOL_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU array slot, only this CPU writes it while the program runs.
        f(unsafe { &mut *s });
    }
}

/// Adds `delta` to pool `id`'s live count and raises its peak.
pub(crate) fn live_add(id: u32, delta: i64) {
    let Some(live) = POOL_LIVE.get_ptr_mut(id) else { return };
    // core's atomics have no read-modify-write for bpf (no CAS), so use the intrinsic, which
    // lowers to the BPF atomic add instruction (no fetch: kernels before 5.12 lack it).
    // SAFETY: an array slot lives as long as the map.
    let now = unsafe {
        atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(live, delta);
        core::ptr::read_volatile(live)
    };
    if delta <= 0 {
        return;
    }
    // A plain store: two CPUs racing may each miss the other's +1 in the peak, never more.
    if let Some(peak) = POOL_PEAK.get_ptr_mut(id) {
        // SAFETY: as above.
        unsafe {
            if now > *peak {
                *peak = now;
            }
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
