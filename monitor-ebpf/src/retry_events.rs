//! The retry-event stream: a failed connect (or a connection that died young) of a pool, and the
//! first success after failures, go to a ring buffer whose timing the agent turns into backoff and
//! jitter estimates. Rate-limited per pool (LAST_FAILED, with each CPU's copy of it in the
//! pool's counters in front); a healthy pool skips every lookup here.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use monitor_common::{retry, PoolKey, RetryEvent, FAIL_REASONS, LOST_RETRY_RING_FULL, RETRY_FAILED, RETRY_RECOVERED};

use crate::{
    counters,
    maps::{FAILING, FAILING_N, LAST_FAILED, RETRY_EVENTS, STORM_CONFIG},
    pool_table::{lost, with_stats},
};

/// Connections that close within this time of their handshake count as short-lived.
pub(crate) fn short_lived_ns() -> u64 {
    // SAFETY: a plain read of a static the loader initialised; volatile so the default is not folded in.
    unsafe { core::ptr::read_volatile(&raw const STORM_CONFIG.short_lived_ns) }
}

/// An attempt of `pool` (id `pool_id`) that started at `connect_ns` failed (or died young).
/// Events closer than RETRY_EVENT_MIN_GAP_NS to the last one sent for the pool are not sent.
pub(crate) fn failed_at(pool: &PoolKey, pool_id: u32, connect_ns: u64, reason: usize) {
    // Under churn that dies young (a server closing after each response) nearly every close
    // lands here and is too soon: this CPU's copy answers that without the LRU lookup.
    let mut local = 0;
    with_stats(pool_id, |s| local = s.retry_last_ns);
    if !retry::due(Some(local), connect_ns) {
        return;
    }
    // SAFETY: entry pointer from the map, read at once.
    let last = LAST_FAILED.get_ptr(pool).map(|last| unsafe { *last });
    if !retry::due(last, connect_ns) {
        with_stats(pool_id, |s| s.retry_last_ns = last.unwrap_or(0));
        return;
    }
    let _ = LAST_FAILED.insert(pool, &connect_ns, 0);
    with_stats(pool_id, |s| s.retry_last_ns = connect_ns);
    emit(pool, connect_ns, RETRY_FAILED, reason as u32);
    if reason < FAIL_REASONS && FAILING.insert(pool, &1, 1 /* BPF_NOEXIST */).is_ok() {
        counters::add(&FAILING_N, 1);
    }
}

/// A connect of `pool` succeeded; reported only after a reported connect failure.
pub(crate) fn succeeded(pool: &PoolKey) {
    // Nearly every connect of a healthy pool lands here: skip the lookup while nothing is
    // failing, and look up before deleting (a delete takes the bucket lock even when there is
    // nothing to delete).
    if !counters::positive(&FAILING_N) {
        return;
    }
    if FAILING.get_ptr(pool).is_none() || FAILING.remove(pool).is_err() {
        return;
    }
    counters::add(&FAILING_N, -1);
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    emit(pool, now, RETRY_RECOVERED, 0);
}

fn emit(pool: &PoolKey, ts_ns: u64, kind: u32, reason: u32) {
    let event = RetryEvent { pool: *pool, ts_ns, kind, reason };
    if RETRY_EVENTS.output::<RetryEvent>(&event, 0).is_err() {
        lost(LOST_RETRY_RING_FULL);
    }
}
