//! Connection pools from `inet_sock_set_state` (tp_btf, else the classic tracepoint). A client socket is attributed at connect()
//! (CLOSE -> SYN_SENT, the only transition that runs in the caller's process context), remembered
//! in SOCKS until it closes, and every transition updates its pool's per-CPU counters. Live counts
//! sit in a shared map with atomic adds so the peak is a true peak across CPUs; only the kernel
//! writes them (the agent keeps the start-up offset itself), and pool maps are not LRU, so a quiet
//! long-lived pool is never evicted by churning ones: the agent removes idle pools. Sockets that
//! existed before the agent started are found through SEEDED, keyed by socket cookie.
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_task, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, HashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, TracePointContext},
};
use monitor_common::{
    SOCK_PEER_CLOSED, SOCK_PROTO_PENDING, TCP_CLOSE_WAIT,
    AcceptKey, PoolKey, PoolStats, SockInfo, AF_INET, CLIENT_LINK_LOCAL, CLIENT_LOOPBACK,
    CLIENT_PRIVATE, CLIENT_PUBLIC, FAIL_ABORTED, FAIL_OTHER, FAIL_REFUSED, FAIL_TIMEOUT,
    FAIL_DIED_RESET, FAIL_DIED_SERVER_CLOSED, FAIL_UNREACHABLE, HIST_BUCKETS, LOST_POOL_TABLE_FULL, LOST_REASONS, LOST_MISSED_CLOSE, LOST_SOCK_UNTRACKED, LOST_UNSEEN_HANDSHAKE,
    LOST_SOCK_TABLE_FULL, MAX_LISTENERS, MAX_POOLS, MAX_SOCKS, TCP_CLOSE, TCP_ESTABLISHED,
    TCP_SYN_RECV, TCP_SYN_SENT,
};

use crate::{
    counters,
    fields::{Fields, Record, Sock},
    listeners::{off, read, read_ctx},
    proto, storms,
};

const IPPROTO_TCP: u16 = 6;

/// Client sockets from connect() to close. Not LRU: evicting a live socket would lose its close and
/// leave its pool's count too high forever; a full table instead refuses new sockets, which are
/// then not counted at all, and says so in LOST.
#[map]
pub(crate) static SOCKS: HashMap<u64, SockInfo> = HashMap::with_max_entries(MAX_SOCKS, 0);

/// Connections open when the agent started, by socket cookie; filled by the agent from sock_diag,
/// emptied here as they close.
#[map]
static SEEDED: HashMap<u64, PoolKey> = HashMap::with_max_entries(MAX_SOCKS, 0);

/// Seeded connections the kernel has not yet seen close: the agent sets it when it seeds, only
/// this side decrements it, so it never falls below what SEEDED holds.
#[map]
static SEEDED_LEFT: Array<i64> = Array::with_max_entries(1, 0);

#[map]
static POOL_STATS: PerCpuHashMap<PoolKey, PoolStats> = PerCpuHashMap::with_max_entries(MAX_POOLS, 0);

/// Connections opened minus closed while probed (the agent adds those open at start-up).
#[map]
static POOL_LIVE: HashMap<PoolKey, i64> = HashMap::with_max_entries(MAX_POOLS, 0);

/// Highest POOL_LIVE value since the agent last reset it.
#[map]
static POOL_PEAK: HashMap<PoolKey, i64> = HashMap::with_max_entries(MAX_POOLS, 0);

#[map]
static ACCEPTS: LruPerCpuHashMap<AcceptKey, u64> =
    LruPerCpuHashMap::with_max_entries(MAX_LISTENERS, 0);

#[map]
static SCRATCH_STATS: PerCpuArray<PoolStats> = PerCpuArray::with_max_entries(1, 0);

#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_REASONS, 0);

/// The pools probe as a BTF raw tracepoint: the kernel passes the socket and both states
/// directly, without filling a trace record, and a transition the probe does not act on costs no
/// helper call at all. Preferred; the classic tracepoint below is the fallback.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let old: u64 = ctx.arg(1);
    let new: u64 = ctx.arg(2);
    let (old, new) = (old as u8, new as u8);
    if acts_on(old, new) {
        let _ = on_change(sk, old, new, &Sock(sk as *const u8));
    }
    0
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_set_state(&ctx);
    0
}

fn try_set_state(ctx: &TracePointContext) -> Result<(), i64> {
    let old: i32 = read_ctx(ctx, off!(TP_OFFSETS.state.oldstate))?;
    let new: i32 = read_ctx(ctx, off!(TP_OFFSETS.state.newstate))?;
    if !acts_on(old as u8, new as u8) {
        return Ok(());
    }
    let sk: u64 = read_ctx(ctx, off!(TP_OFFSETS.state.skaddr))?;
    on_change(sk, old as u8, new as u8, &Record { ctx, sk: sk as *const u8 })
}

/// The transitions the probe acts on; half of a connection's transitions (FIN_WAIT1, FIN_WAIT2,
/// LAST_ACK, ...) are not among them and leave before reading anything.
#[inline(always)]
fn acts_on(old: u8, new: u8) -> bool {
    (old == TCP_CLOSE && new == TCP_SYN_SENT)
        || old == TCP_SYN_SENT
        || (old == TCP_SYN_RECV && new == TCP_ESTABLISHED)
        || (old == TCP_ESTABLISHED && new == TCP_CLOSE_WAIT)
        || new == TCP_CLOSE
}

/// A transition `acts_on` accepted.
#[inline(always)]
fn on_change<F: Fields>(sk: u64, old: u8, new: u8, f: &F) -> Result<(), i64> {
    // Only sockets that start here need the protocol checked (SCTP, for one, reports through
    // the same hook); every later transition finds its socket in SOCKS, which holds TCP only.
    if old == TCP_CLOSE && new == TCP_SYN_SENT {
        return if f.protocol()? == IPPROTO_TCP { on_connect(f, sk) } else { Ok(()) };
    }
    if old == TCP_SYN_RECV && new == TCP_ESTABLISHED {
        return if f.protocol()? == IPPROTO_TCP { on_accept(f) } else { Ok(()) };
    }
    if old == TCP_SYN_SENT {
        return on_handshake_end(f, sk, new);
    }
    if old == TCP_ESTABLISHED && new == TCP_CLOSE_WAIT {
        if let Some(info) = SOCKS.get_ptr_mut(&sk) {
            // SAFETY: entry pointer from the map; this socket's transitions are serialised.
            unsafe { (*info).flags |= SOCK_PEER_CLOSED };
        }
        return Ok(());
    }
    on_close(f, sk)
}

fn on_connect<F: Fields>(f: &F, sk: u64) -> Result<(), i64> {
    let family = f.family()?;
    let pool = PoolKey {
        // SAFETY: plain helper calls valid in tracepoint programs.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        netns: f.netns(),
        dport: f.dport()?,
        family,
        daddr: f.daddr(family)?,
        comm: f.process_comm(),
    };
    // SAFETY: as above.
    let now = unsafe { bpf_ktime_get_ns() };
    // An entry already here belongs to an earlier socket at the same address whose close the
    // kernel skipped (a tracing program cannot nest inside another on the same CPU): count that
    // close now, or its pool would stay one too high for good.
    if let Some(old) = SOCKS.get_ptr(&sk) {
        // SAFETY: entry pointer from the map, copied out at once.
        let old = unsafe { *old };
        if old.established_ns != 0 {
            with_stats(&old.pool, |s| s.closes += 1);
            live_add(&old.pool, -1);
        }
        lost(LOST_MISSED_CLOSE);
    }
    let info = SockInfo {
        pool,
        connect_ns: now,
        established_ns: 0,
        saddr: [0; 16],
        sport: 0,
        flags: 0,
        _reserved: [0; 2],
    };
    if SOCKS.insert(&sk, &info, 0).is_err() {
        lost(LOST_SOCK_TABLE_FULL);
        return Ok(());
    }
    with_stats(&pool, |s| s.attempts += 1);
    Ok(())
}

fn on_handshake_end<F: Fields>(f: &F, sk: u64, new: u8) -> Result<(), i64> {
    let Some(info) = SOCKS.get_ptr_mut(&sk) else {
        if new == TCP_ESTABLISHED {
            lost(LOST_SOCK_UNTRACKED);
        }
        return Ok(());
    };
    // SAFETY: entry pointer from the map; only this socket's transitions (serialised by the
    // socket lock) touch it.
    let info = unsafe { &mut *info };
    let now = unsafe { bpf_ktime_get_ns() };
    if new == TCP_ESTABLISHED {
        info.established_ns = now;
        info.sport = f.sport().unwrap_or(0);
        info.saddr = f.saddr(info.pool.family).unwrap_or([0; 16]);
        let us = (now - info.connect_ns) / 1000;
        with_stats(&info.pool, |s| {
            s.opens += 1;
            s.connect_us[bucket(us)] += 1;
            s.connect_us_sum += us;
        });
        live_add(&info.pool, 1);
        storms::succeeded(&info.pool);
        let p = &info.pool;
        if proto::watch(&proto::flow(p.family, &info.saddr, info.sport, &p.daddr, p.dport), p) {
            info.flags |= SOCK_PROTO_PENDING;
        }
    } else if new == TCP_CLOSE {
        let pool = info.pool;
        let reason = failure_reason(f);
        with_stats(&pool, |s| s.failures[reason] += 1);
        storms::failed_at(&pool, info.connect_ns, reason);
        let _ = SOCKS.remove(&sk);
    }
    Ok(())
}

fn on_close<F: Fields>(f: &F, sk: u64) -> Result<(), i64> {
    if let Some(info) = SOCKS.get_ptr(&sk) {
        // SAFETY: as in on_handshake_end.
        let info = unsafe { *info };
        if info.established_ns == 0 {
            // Its handshake event was missed (the kernel skips a tracing program that would nest
            // inside another on the same CPU): it was never counted live, so do not uncount it.
            lost(LOST_UNSEEN_HANDSHAKE);
            let _ = SOCKS.remove(&sk);
            return Ok(());
        }
        let now = unsafe { bpf_ktime_get_ns() };
        let lifetime_ns = now - info.established_ns;
        let ms = lifetime_ns / 1_000_000;
        let short = lifetime_ns < storms::short_lived_ns();
        // Died young: short-lived and ended by the server, by a reset (ECONNRESET, EPIPE) or by
        // hanging up first. Healthy per-request churn usually closes from the client side.
        let reset = short && matches!(f.err(), Ok(104) | Ok(32));
        let hung_up = short && !reset && info.flags & SOCK_PEER_CLOSED != 0;
        if reset {
            storms::failed_at(&info.pool, info.connect_ns, FAIL_DIED_RESET);
        } else if hung_up {
            storms::failed_at(&info.pool, info.connect_ns, FAIL_DIED_SERVER_CLOSED);
        }
        with_stats(&info.pool, |s| {
            s.closes += 1;
            s.lifetime_ms[bucket(ms)] += 1;
            s.lifetime_ms_sum += ms;
            s.short_lived += u64::from(short);
            s.died_reset += u64::from(reset);
            s.died_server_closed += u64::from(hung_up);
        });
        live_add(&info.pool, -1);
        // Only flows registered as pending need the (locking) delete from the LRU table.
        if info.flags & SOCK_PROTO_PENDING != 0 {
            let p = &info.pool;
            proto::unwatch(&proto::flow(p.family, &info.saddr, info.sport, &p.daddr, p.dport), p);
        }
        let _ = SOCKS.remove(&sk);
        return Ok(());
    }
    // Not connected while we watched: maybe a connection seeded at start-up. Once every seeded
    // connection is gone (SEEDED_LEFT is an upper bound on what is left), skip the lookup.
    if !counters::positive(&SEEDED_LEFT) {
        return Ok(());
    }
    let cookie = f.cookie();
    if cookie == 0 {
        return Ok(());
    }
    if let Some(pool) = SEEDED.get_ptr(&cookie) {
        // SAFETY: entry pointer from the map, copied out at once.
        let pool = unsafe { *pool };
        with_stats(&pool, |s| s.closes += 1);
        live_add(&pool, -1);
        if SEEDED.remove(&cookie).is_ok() {
            counters::add(&SEEDED_LEFT, -1);
        }
    }
    Ok(())
}

fn on_accept<F: Fields>(f: &F) -> Result<(), i64> {
    let family = f.family()?;
    let addr = f.saddr(family)?;
    let peer = f.daddr(family)?;
    let class = if family == AF_INET { class_v4([peer[0], peer[1], peer[2], peer[3]]) } else { class_v6(&peer) };
    let key = AcceptKey {
        netns: f.netns(),
        port: f.sport()?,
        family,
        addr,
        client_class: class,
        _reserved: 0,
    };
    match ACCEPTS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = ACCEPTS.insert(&key, &1, 0);
        }
    }
    Ok(())
}

fn class_v4(a: [u8; 4]) -> u32 {
    match a {
        [127, ..] => CLIENT_LOOPBACK,
        [10, ..] | [192, 168, ..] => CLIENT_PRIVATE,
        [172, b, ..] if (16..32).contains(&b) => CLIENT_PRIVATE,
        [100, b, ..] if (64..128).contains(&b) => CLIENT_PRIVATE,
        [169, 254, ..] => CLIENT_LINK_LOCAL,
        _ => CLIENT_PUBLIC,
    }
}

fn class_v6(a: &[u8; 16]) -> u32 {
    let mapped = a[..10].iter().all(|&b| b == 0) && a[10] == 0xff && a[11] == 0xff;
    if mapped {
        return class_v4([a[12], a[13], a[14], a[15]]);
    }
    if a[..15].iter().all(|&b| b == 0) && a[15] == 1 {
        CLIENT_LOOPBACK
    } else if a[0] & 0xfe == 0xfc {
        CLIENT_PRIVATE
    } else if a[0] == 0xfe && a[1] & 0xc0 == 0x80 {
        CLIENT_LINK_LOCAL
    } else {
        CLIENT_PUBLIC
    }
}

/// Name of the calling process (its thread-group leader), else of the calling thread.
pub(crate) fn process_comm() -> [u8; 16] {
    // SAFETY: bpf_get_current_task is valid in tracepoint programs; reads go through probe_read.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    if let Ok(leader) = read::<*const u8>(task, off!(TASK_OFFSETS.group_leader)) {
        if let Ok(comm) = read::<[u8; 16]>(leader, off!(TASK_OFFSETS.comm)) {
            return comm;
        }
    }
    bpf_get_current_comm().unwrap_or([0; 16])
}

/// Why a SYN_SENT socket closed, from the error the kernel left on it.
fn failure_reason<F: Fields>(f: &F) -> usize {
    let err: i32 = f.err().unwrap_or(-1);
    match err {
        0 => FAIL_ABORTED,
        111 => FAIL_REFUSED,             // ECONNREFUSED: RST answered the SYN
        110 => FAIL_TIMEOUT,             // ETIMEDOUT: SYN retries exhausted
        101 | 112 | 113 => FAIL_UNREACHABLE, // ENETUNREACH, EHOSTDOWN, EHOSTUNREACH
        _ => FAIL_OTHER,
    }
}

/// Index of the power-of-4 bucket holding `v`: bucket i holds 4^i <= v < 4^(i+1) (bucket 0 also
/// holds 0). v has `bits` significant bits, so v < 4^(i+1) exactly when bits <= 2i + 2.
fn bucket(v: u64) -> usize {
    let bits = 64 - v.leading_zeros() as usize;
    let i = bits.saturating_sub(1) / 2;
    if i >= HIST_BUCKETS {
        HIST_BUCKETS - 1
    } else {
        i
    }
}


pub(crate) fn with_stats(pool: &PoolKey, f: impl FnOnce(&mut PoolStats)) {
    if let Some(s) = POOL_STATS.get_ptr_mut(pool) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        f(unsafe { &mut *s });
        return;
    }
    // PoolStats is too large for the 512-byte BPF stack: build the first value in a scratch slot.
    let Some(s) = SCRATCH_STATS.get_ptr_mut(0) else { return };
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

fn live_add(pool: &PoolKey, delta: i64) {
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

pub(crate) fn lost(reason: u32) {
    if let Some(n) = LOST.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot.
        unsafe { *n += 1 }
    }
}
