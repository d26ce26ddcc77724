//! Protocol recognition from the first bytes a client sends. Tracepoints cannot see payload (it
//! sits in page fragments), so a cgroup_skb egress program on the cgroup2 root reads it with
//! bpf_skb_load_bytes. Only flows the pools probe registered as pending are looked at, and a
//! counter of pending flows lets every other packet leave after one array read.
use aya_ebpf::{
    macros::{cgroup_skb, map},
    maps::{Array, LruHashMap},
    programs::SkBuffContext,
};
use monitor_common::{
    FlowKey, PoolKey, AF_INET, AF_INET6, MAX_PENDING_FLOWS, MAX_POOLS, PROTO_MAX_TRIES,
    PROTO_POSTGRES, PROTO_REDIS, PROTO_TRIES_BASE, PROTO_UNKNOWN,
};

#[map]
static PENDING: LruHashMap<FlowKey, PoolKey> = LruHashMap::with_max_entries(MAX_PENDING_FLOWS, 0);

/// Flows added to PENDING minus flows removed. LRU evictions are not subtracted, so it can stay
/// above zero: that only costs lookups, never a missed flow.
#[map]
static PENDING_N: Array<i64> = Array::with_max_entries(1, 0);

/// Protocol seen per pool (PROTO_*); read by the agent.
#[map]
static PROTO_SEEN: LruHashMap<PoolKey, u32> = LruHashMap::with_max_entries(MAX_POOLS, 0);

use crate::counters;

const IPPROTO_TCP: u8 = 6;

/// Called by the pools probe when a client connection is established. A pool already classed,
/// or whose last PROTO_MAX_TRIES connections closed without sending a byte, is not watched: a
/// pool that never speaks first (the server talks first, or it only connects) would otherwise keep
/// every packet on the host paying for the lookup.
/// Returns whether the flow was registered, so the close knows whether to unregister it.
pub(crate) fn watch(flow: &FlowKey, pool: &PoolKey) -> bool {
    if let Some(seen) = PROTO_SEEN.get_ptr(pool) {
        // SAFETY: entry pointer from the map, read at once.
        let seen = unsafe { *seen };
        if seen < PROTO_TRIES_BASE || seen >= PROTO_TRIES_BASE + PROTO_MAX_TRIES {
            return false;
        }
    }
    if PENDING.insert(flow, pool, 0).is_ok() {
        counters::add(&PENDING_N, 1);
        return true;
    }
    false
}

/// Called by the pools probe when a client connection closes; a flow still pending sent nothing.
pub(crate) fn unwatch(flow: &FlowKey, pool: &PoolKey) {
    if PENDING.remove(flow).is_ok() {
        counters::add(&PENDING_N, -1);
        let tries = match PROTO_SEEN.get_ptr(pool) {
            // SAFETY: as above.
            Some(seen) => unsafe { *seen }.max(PROTO_TRIES_BASE) + 1,
            None => PROTO_TRIES_BASE + 1,
        };
        let _ = PROTO_SEEN.insert(pool, &tries, 0);
    }
}

/// The flow key of a socket, with IPv4-mapped IPv6 addresses normalised to IPv4.
#[inline(always)]
pub(crate) fn flow(family: u16, saddr: &[u8; 16], sport: u16, daddr: &[u8; 16], dport: u16) -> FlowKey {
    let mut f = FlowKey { saddr: *saddr, daddr: *daddr, sport, dport, family, _reserved: 0 };
    if family == AF_INET6 && is_v4_mapped(saddr) && is_v4_mapped(daddr) {
        f.family = AF_INET;
        f.saddr = [0; 16];
        f.daddr = [0; 16];
        f.saddr[..4].copy_from_slice(&saddr[12..16]);
        f.daddr[..4].copy_from_slice(&daddr[12..16]);
    }
    f
}

fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10].iter().all(|&b| b == 0) && a[10] == 0xff && a[11] == 0xff
}

#[cgroup_skb(egress)]
pub fn classify_egress(ctx: SkBuffContext) -> i32 {
    let _ = try_classify(&ctx);
    1 // never drop: this program only looks
}

fn try_classify(ctx: &SkBuffContext) -> Result<(), i64> {
    if !counters::positive(&PENDING_N) {
        return Ok(());
    }
    let vihl: u8 = ctx.load(0)?;
    let (flow, l4, total) = match vihl >> 4 {
        4 => {
            let proto: u8 = ctx.load(9)?;
            if proto != IPPROTO_TCP {
                return Ok(());
            }
            let total = u16::from_be(ctx.load::<u16>(2)?) as usize;
            let mut f = FlowKey { saddr: [0; 16], daddr: [0; 16], sport: 0, dport: 0, family: AF_INET, _reserved: 0 };
            let s: [u8; 4] = ctx.load(12)?;
            let d: [u8; 4] = ctx.load(16)?;
            f.saddr[..4].copy_from_slice(&s);
            f.daddr[..4].copy_from_slice(&d);
            (f, usize::from(vihl & 0x0f) * 4, total)
        }
        6 => {
            // Extension headers before TCP are rare on client traffic; such packets are skipped.
            let next: u8 = ctx.load(6)?;
            if next != IPPROTO_TCP {
                return Ok(());
            }
            let total = u16::from_be(ctx.load::<u16>(4)?) as usize + 40;
            let f = FlowKey {
                saddr: ctx.load(8)?,
                daddr: ctx.load(24)?,
                sport: 0,
                dport: 0,
                family: AF_INET6,
                _reserved: 0,
            };
            (f, 40, total)
        }
        _ => return Ok(()),
    };
    let mut flow = flow;
    flow.sport = u16::from_be(ctx.load::<u16>(l4)?);
    flow.dport = u16::from_be(ctx.load::<u16>(l4 + 2)?);
    let doff: u8 = ctx.load(l4 + 12)?;
    let payload = l4 + usize::from(doff >> 4) * 4;
    if total < payload + 8 {
        return Ok(()); // a bare ACK, or too short to tell
    }
    let Some(pool) = PENDING.get_ptr(&flow) else { return Ok(()) };
    // SAFETY: entry pointer from the map, copied out at once.
    let pool = unsafe { *pool };
    // A fixed-size load: load_bytes clamps its length to the packet, which the verifier rejects
    // as possibly zero.
    let b: [u8; 8] = ctx.load(payload)?;
    let proto = classify(&b);
    let _ = PROTO_SEEN.insert(&pool, &proto, 0);
    if PENDING.remove(&flow).is_ok() {
        counters::add(&PENDING_N, -1);
    }
    Ok(())
}

/// RESP: a client command is an array, `*<digits>`. PostgreSQL: a StartupMessage (protocol 3.0),
/// an SSLRequest or a GSSENCRequest, each a big-endian length followed by a well-known code.
fn classify(b: &[u8; 8]) -> u32 {
    if b[0] == b'*' && b[1].is_ascii_digit() {
        return PROTO_REDIS;
    }
    let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let code = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    let startup = code == 0x0003_0000 && (8..10_000).contains(&len);
    let negotiation = len == 8 && (code == 80_877_103 || code == 80_877_104);
    if startup || negotiation {
        return PROTO_POSTGRES;
    }
    PROTO_UNKNOWN
}
