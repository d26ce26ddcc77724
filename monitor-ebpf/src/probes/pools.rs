//! Connection pools from `inet_sock_set_state` (tp_btf, else the classic tracepoint). A client
//! socket is attributed at connect() (CLOSE -> SYN_SENT, the only transition that runs in the
//! caller's process context), its pool resolved to a pool id once there, remembered in SOCKS
//! until it closes, and every transition updates its pool's counters by id (`pool_table`).
//! Sockets that existed before the agent started are found through SEEDED, keyed by socket
//! cookie. Which transitions matter is `monitor_common::tcp::transition`.
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use monitor_common::{
    addr, errno, hist,
    tcp::{self, transition, Transition},
    AcceptKey, PoolKey, QueueKey, SockInfo, FAIL_DIED_RESET, FAIL_DIED_SERVER_CLOSED, LOST_MISSED_CLOSE,
    LOST_SOCK_TABLE_FULL, LOST_SOCK_UNTRACKED, LOST_UNSEEN_HANDSHAKE, SOCK_PROTO_PENDING, TCP_CLOSE, TCP_ESTABLISHED,
};

use crate::{
    access::read_ctx,
    counters,
    fields::{Fields, Record, Sock},
    maps::{check_program_name, off, ACCEPTS, SEEDED, SEEDED_LEFT, SOCKS},
    pool_table::{live_add, lookup_pool_id, lost, pool_id, with_stats},
    proto_watch, queue_table, retry_events,
};

const IPPROTO_TCP: u16 = 6;
/// Map update flag: fail with EEXIST instead of replacing an entry.
const BPF_NOEXIST: u64 = 1;
const EEXIST: i64 = 17;
/// SockInfo::pool_id of a socket whose pool got no id: outside every per-pool array.
const NO_POOL: u32 = u32::MAX;

/// The pools probe as a BTF raw tracepoint: the kernel passes the socket and both states
/// directly, without filling a trace record, and a transition the probe does not act on costs no
/// helper call at all. Preferred; the classic tracepoint below is the fallback.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> u32 {
    let _ = try_set_state_btf(&ctx);
    0
}
check_program_name!(inet_sock_set_state_btf, INET_SOCK_SET_STATE_BTF);

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_set_state(&ctx);
    0
}
check_program_name!(inet_sock_set_state, INET_SOCK_SET_STATE);

#[inline(always)]
fn try_set_state_btf(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let sk: u64 = ctx.arg(0);
    let old: u64 = ctx.arg(1);
    let new: u64 = ctx.arg(2);
    match transition(old as u8, new as u8) {
        Transition::Ignored => Ok(()),
        t => on_change(t, sk, old as u8, new as u8, &Sock(sk as *const u8)),
    }
}

fn try_set_state(ctx: &TracePointContext) -> Result<(), i64> {
    let old: i32 = read_ctx(ctx, off!(TP_OFFSETS.state.oldstate))?;
    let new: i32 = read_ctx(ctx, off!(TP_OFFSETS.state.newstate))?;
    let t = transition(old as u8, new as u8);
    if t == Transition::Ignored {
        return Ok(());
    }
    let sk: u64 = read_ctx(ctx, off!(TP_OFFSETS.state.skaddr))?;
    on_change(t, sk, old as u8, new as u8, &Record { ctx, sk: sk as *const u8 })
}

/// A transition the probe acts on.
#[inline(always)]
fn on_change<F: Fields>(t: Transition, sk: u64, old: u8, new: u8, f: &F) -> Result<(), i64> {
    // Only sockets that start here need the protocol checked (SCTP, for one, reports through
    // the same hook); every later transition finds its socket in SOCKS, which holds TCP only.
    match t {
        Transition::Connect => {
            if f.protocol()? == IPPROTO_TCP {
                on_connect(f, sk)
            } else {
                Ok(())
            }
        }
        Transition::Accept => {
            if f.protocol()? == IPPROTO_TCP {
                on_accept(f, sk)
            } else {
                Ok(())
            }
        }
        Transition::HandshakeEnd => on_handshake_end(f, sk, new),
        // A passive child still queued whose client hung up; one load for every other socket.
        // No socket-table lookup: a client's close tells who hung up first from its old state.
        Transition::PeerClosed => queue_table::peer_closed(f),
        Transition::Close => on_close(f, sk, old),
        Transition::Ignored => Ok(()),
    }
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
    // Without an id (every id taken, counted in LOST) the socket is still followed, so its later
    // transitions find it; their counter updates miss the arrays and do nothing.
    let pool_id = pool_id(&pool).unwrap_or(NO_POOL);
    let info = SockInfo { pool, connect_ns: now, established_ns: 0, saddr: [0; 16], sport: 0, flags: 0, pool_id };
    // One map operation in the usual case: the insert itself says whether the address is taken.
    match SOCKS.insert(&sk, &info, BPF_NOEXIST) {
        Ok(()) => {}
        Err(e) if i64::from(e) == -EEXIST => {
            // An entry already here belongs to an earlier socket at the same address whose close
            // the kernel skipped (a tracing program cannot nest inside another on the same CPU):
            // count that close now, or its pool would stay one too high for good.
            if let Some(old) = SOCKS.get_ptr(&sk) {
                // SAFETY: entry pointer from the map, copied out at once.
                let old = unsafe { *old };
                if old.established_ns != 0 {
                    with_stats(old.pool_id, |s| s.closes += 1);
                    live_add(old.pool_id, -1);
                }
            }
            lost(LOST_MISSED_CLOSE);
            if SOCKS.insert(&sk, &info, 0).is_err() {
                lost(LOST_SOCK_TABLE_FULL);
                return Ok(());
            }
        }
        Err(_) => {
            lost(LOST_SOCK_TABLE_FULL);
            return Ok(());
        }
    }
    with_stats(pool_id, |s| s.attempts += 1);
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
        let mut settled = false;
        with_stats(info.pool_id, |s| {
            s.opens += 1;
            s.connect_us[hist::bucket(us)] += 1;
            s.connect_us_sum += us;
            settled = s.proto_settled != 0;
        });
        live_add(info.pool_id, 1);
        retry_events::succeeded(&info.pool);
        let p = &info.pool;
        if !settled {
            match proto_watch::watch(&addr::flow(p.family, &info.saddr, info.sport, &p.daddr, p.dport), p) {
                proto_watch::Watch::Registered => info.flags |= SOCK_PROTO_PENDING,
                // Remembered in this CPU's counters, which this handshake just looked up anyway:
                // the pool's later handshakes on this CPU skip the PROTO_SEEN lookup.
                proto_watch::Watch::Settled => with_stats(info.pool_id, |s| s.proto_settled = 1),
                proto_watch::Watch::NotNow => {}
            }
        }
    } else if new == TCP_CLOSE {
        let pool = info.pool;
        let reason = errno::connect_failure(f.err().unwrap_or(-1));
        with_stats(info.pool_id, |s| s.failures[reason] += 1);
        retry_events::failed_at(&pool, info.pool_id, info.connect_ns, reason);
        let _ = SOCKS.remove(&sk);
    }
    Ok(())
}

fn on_close<F: Fields>(f: &F, sk: u64, old: u8) -> Result<(), i64> {
    if let Some(info) = (!queue_table::passive_child(f)).then(|| SOCKS.get_ptr(&sk)).flatten() {
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
        let short = lifetime_ns < retry_events::short_lived_ns();
        // Died young: short-lived and ended by the server, by a reset or by hanging up first.
        // Healthy per-request churn usually closes from the client side.
        let reset = short && f.err().is_ok_and(errno::ended_by_reset);
        let hung_up = short && !reset && tcp::peer_closed_first(old);
        if reset {
            retry_events::failed_at(&info.pool, info.pool_id, info.connect_ns, FAIL_DIED_RESET);
        } else if hung_up {
            retry_events::failed_at(&info.pool, info.pool_id, info.connect_ns, FAIL_DIED_SERVER_CLOSED);
        }
        with_stats(info.pool_id, |s| {
            s.closes += 1;
            s.lifetime_ms[hist::bucket(ms)] += 1;
            s.lifetime_ms_sum += ms;
            s.short_lived += u64::from(short);
            s.died_reset += u64::from(reset);
            s.died_server_closed += u64::from(hung_up);
        });
        live_add(info.pool_id, -1);
        // Only flows registered as pending need the (locking) delete from the LRU table.
        if info.flags & SOCK_PROTO_PENDING != 0 {
            let p = &info.pool;
            proto_watch::unwatch(&addr::flow(p.family, &info.saddr, info.sport, &p.daddr, p.dport), p);
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
        // Rare (only connections open at start-up): resolving the id here costs a hash lookup.
        if let Some(id) = lookup_pool_id(&pool) {
            with_stats(id, |s| s.closes += 1);
            live_add(id, -1);
        }
        if SEEDED.remove(&cookie).is_ok() {
            counters::add(&SEEDED_LEFT, -1);
        }
    }
    Ok(())
}

fn on_accept<F: Fields>(f: &F, sk: u64) -> Result<(), i64> {
    let family = f.family()?;
    let addr = f.saddr(family)?;
    let peer = f.daddr(family)?;
    let key = AcceptKey {
        netns: f.netns(),
        port: f.sport()?,
        family,
        addr,
        client_class: addr::client_class(family, &peer),
        _reserved: 0,
    };
    queue_table::child_queued(sk, &QueueKey { netns: key.netns, port: key.port, family, addr });
    match ACCEPTS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = ACCEPTS.insert(&key, &1, 0);
        }
    }
    Ok(())
}
