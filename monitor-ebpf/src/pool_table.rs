//! Updates of the per-pool tables that more than one program makes: the pool id a connect()
//! resolves once (POOL_IDS, ids taken from FREE_POOL_IDS), the per-CPU counters (POOL_STATS), the
//! live count and its peak (POOL_LIVE, POOL_PEAK), the socket table (`SockTable`: the SOCKS
//! hash, or socket-local storage for tp_btf programs), and the LOST counters. The per-pool tables are arrays indexed by pool id, so every update after the connect
//! costs an inlined array access instead of a hash lookup on a 48-byte key. Live counts take
//! atomic adds so the peak is a true peak across CPUs; only the kernel writes them (the agent
//! keeps the start-up offset itself). Ids are never evicted, so a quiet long-lived pool keeps its
//! counts: the agent forgets idle pools and hands their ids back, zeroed, a collect cycle later.
use core::{
    ffi::c_void,
    intrinsics::{atomic_xadd, AtomicOrdering},
};

use aya_ebpf::helpers::generated::bpf_sk_storage_get;
use monitor_common::{PoolKey, PoolStats, SockInfo, LOST_POOL_TABLE_FULL, SOCK_DONE};

use crate::maps::{FREE_POOL_IDS, LOST, POOL_IDS, POOL_LIVE, POOL_PEAK, POOL_STATS, SOCKS, SOCK_STORE};

/// Map update flag: fail with EEXIST instead of replacing an entry.
const BPF_NOEXIST: u64 = 1;
const EEXIST: i64 = 17;
/// bpf_sk_storage_get flag: create the socket's record (zeroed) when it has none.
const BPF_SK_STORAGE_GET_F_CREATE: u64 = 1;

/// Where a program keeps its client sockets' records between transitions.
pub(crate) trait SockTable {
    /// Starts the record of `sk`. Ok(Some(old)) when an earlier connection left its record open
    /// there (the kernel skipped its close); Err when there is no room (counted by the caller).
    fn start(&self, sk: u64, info: &SockInfo) -> Result<Option<SockInfo>, ()>;
    /// The open record of `sk`. Only that socket's transitions (serialised by the socket lock)
    /// write through the pointer.
    fn get(&self, sk: u64) -> Option<*mut SockInfo>;
    /// Ends the record of `sk` once its close (or failed handshake) is counted.
    fn finish(&self, sk: u64, info: *mut SockInfo);
}

/// The SOCKS hash, keyed by socket address: for classic tracepoints, whose socket pointer the
/// verifier sees as a plain number.
pub(crate) struct Hash;

impl SockTable for Hash {
    #[inline(always)]
    fn start(&self, sk: u64, info: &SockInfo) -> Result<Option<SockInfo>, ()> {
        // One map operation in the usual case: the insert itself says whether the address is taken.
        match SOCKS.insert(&sk, info, BPF_NOEXIST) {
            Ok(()) => Ok(None),
            Err(e) if i64::from(e) == -EEXIST => {
                // SAFETY: entry pointer from the map, copied out at once.
                let old = SOCKS.get_ptr(&sk).map(|p| unsafe { *p });
                SOCKS.insert(&sk, info, 0).map_err(|_| ())?;
                Ok(old)
            }
            Err(_) => Err(()),
        }
    }
    #[inline(always)]
    fn get(&self, sk: u64) -> Option<*mut SockInfo> {
        SOCKS.get_ptr_mut(&sk)
    }
    #[inline(always)]
    fn finish(&self, sk: u64, _info: *mut SockInfo) {
        let _ = SOCKS.remove(&sk);
    }
}

/// Socket-local storage (SOCK_STORE): for tp_btf programs, whose `sk` is a BTF `struct sock *`.
/// A lookup reads the socket's own storage list; a finished record is marked SOCK_DONE instead
/// of deleted, and the kernel frees it with the socket.
pub(crate) struct Store;

#[inline(always)]
fn storage(sk: u64, flags: u64) -> *mut SockInfo {
    // SAFETY: `sk` is the BTF-typed socket pointer of a tp_btf argument (the verifier checks it
    // is one); a NULL value asks for a zeroed record on create.
    unsafe {
        bpf_sk_storage_get(&raw const SOCK_STORE as *mut c_void, sk as *mut c_void, core::ptr::null_mut(), flags)
            as *mut SockInfo
    }
}

impl SockTable for Store {
    #[inline(always)]
    fn start(&self, sk: u64, info: &SockInfo) -> Result<Option<SockInfo>, ()> {
        let p = storage(sk, BPF_SK_STORAGE_GET_F_CREATE);
        if p.is_null() {
            return Err(());
        }
        // SAFETY: the socket's own record; only its transitions write it.
        let old = unsafe { core::ptr::replace(p, *info) };
        // A fresh record is zeroed; a reused socket's old record is DONE unless its close was missed.
        Ok((old.connect_ns != 0 && old.flags & SOCK_DONE == 0).then_some(old))
    }
    #[inline(always)]
    fn get(&self, sk: u64) -> Option<*mut SockInfo> {
        let p = storage(sk, 0);
        // SAFETY: as above.
        (!p.is_null() && unsafe { (*p).flags } & SOCK_DONE == 0).then_some(p)
    }
    #[inline(always)]
    fn finish(&self, _sk: u64, info: *mut SockInfo) {
        // SAFETY: as above.
        unsafe { (*info).flags |= SOCK_DONE };
    }
}

/// The id of `pool`, taking a free one for a pool not seen yet; None (counted in LOST) when every
/// id is taken.
pub(crate) fn pool_id(pool: &PoolKey) -> Option<u32> {
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
#[inline(always)]
pub(crate) fn socket<T: SockTable>(table: &T, sk: u64) -> Option<SockInfo> {
    // SAFETY: record pointer from the table, copied out at once.
    table.get(sk).map(|p| unsafe { *p })
}

/// Counts an event the kernel side could not account (LOST_*).
pub(crate) fn lost(reason: u32) {
    if let Some(n) = LOST.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot.
        unsafe { *n += 1 }
    }
}
