//! Retry-storm signals per pool: SYN retransmits of connects, resets received and sent, and a
//! ring buffer of failed connects (and the first success after failures) whose timing the agent
//! turns into backoff and jitter estimates. Sockets are matched to pools through the pools probe's
//! socket table, so only client connections connmon follows are counted.
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, tracepoint},
    maps::{Array, LruHashMap, RingBuf},
    programs::TracePointContext,
};
use monitor_common::{
    PoolKey, RetryEvent, SockInfo, StormConfig, FAIL_REASONS, LOST_RETRY_RING_FULL, MAX_POOLS,
    RETRY_EVENT_MIN_GAP_NS, RETRY_FAILED,
    RETRY_RECOVERED, RETRY_RING_BYTES, TCP_SYN_SENT,
};

use crate::{
    counters,
    listeners::{off, read_ctx},
    pools::{lost, with_stats, SOCKS},
};

#[no_mangle]
pub(crate) static STORM_CONFIG: StormConfig = StormConfig::DEFAULT;

#[map]
static RETRY_EVENTS: RingBuf = RingBuf::with_byte_size(RETRY_RING_BYTES, 0);

/// When each pool's last retry event was sent: the per-pool rate limit.
#[map]
static LAST_FAILED: LruHashMap<PoolKey, u64> = LruHashMap::with_max_entries(MAX_POOLS, 0);

/// Pools with a reported connect failure not yet followed by a success: the next completed
/// handshake is reported as a recovery. Connections that died young do not enter: they did
/// complete their handshake, and a server rejecting every client is not "recovering" in between.
#[map]
static FAILING: LruHashMap<PoolKey, u32> = LruHashMap::with_max_entries(MAX_POOLS, 0);

/// Entries added to FAILING minus entries removed (LRU evictions are not subtracted): an upper
/// bound, so a healthy host skips the FAILING lookup on every completed handshake.
#[map]
static FAILING_N: Array<i64> = Array::with_max_entries(1, 0);

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let _ = try_retransmit(&ctx);
    0
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let _ = try_reset(&ctx, off!(TP_OFFSETS.rx_reset_skaddr), true);
    0
}

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let _ = try_reset(&ctx, off!(TP_OFFSETS.tx_reset_skaddr), false);
    0
}

fn try_retransmit(ctx: &TracePointContext) -> Result<(), i64> {
    let state: i32 = read_ctx(ctx, off!(TP_OFFSETS.retrans_state))?;
    if state as u8 != TCP_SYN_SENT {
        return Ok(());
    }
    let sk: u64 = read_ctx(ctx, off!(TP_OFFSETS.retrans_skaddr))?;
    if let Some(info) = socket(sk) {
        with_stats(&info.pool, |s| s.syn_retransmits += 1);
    }
    Ok(())
}

fn try_reset(ctx: &TracePointContext, skaddr_off: u32, received: bool) -> Result<(), i64> {
    let sk: u64 = read_ctx(ctx, skaddr_off)?;
    if sk == 0 {
        return Ok(());
    }
    if let Some(info) = socket(sk) {
        with_stats(&info.pool, |s| {
            if received {
                s.resets_received += 1;
            } else {
                s.resets_sent += 1;
            }
        });
    }
    Ok(())
}

fn socket(sk: u64) -> Option<SockInfo> {
    // SAFETY: entry pointer from the map, copied out at once.
    SOCKS.get_ptr(&sk).map(|p| unsafe { *p })
}

pub(crate) fn short_lived_ns() -> u64 {
    // SAFETY: a plain read of a static the loader initialised; volatile so the default is not folded in.
    unsafe { core::ptr::read_volatile(&raw const STORM_CONFIG.short_lived_ns) }
}

/// An attempt of `pool` that started at `connect_ns` failed (or died young). Events closer than
/// RETRY_EVENT_MIN_GAP_NS to the last one sent for the pool are not sent.
pub(crate) fn failed_at(pool: &PoolKey, connect_ns: u64, reason: usize) {
    if let Some(last) = LAST_FAILED.get_ptr(pool) {
        // SAFETY: entry pointer from the map, read at once.
        let last = unsafe { *last };
        // Concurrent connections close out of order, so an attempt may have started before the
        // last one sent: that is "too soon" as well, not a huge unsigned gap.
        if last != 0 && connect_ns < last.saturating_add(RETRY_EVENT_MIN_GAP_NS) {
            return;
        }
    }
    let _ = LAST_FAILED.insert(pool, &connect_ns, 0);
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
