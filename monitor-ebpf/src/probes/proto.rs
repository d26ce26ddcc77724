//! Protocol recognition from the first bytes a client sends. Tracepoints cannot see payload (it
//! sits in page fragments), so a cgroup_skb egress program on the cgroup2 root reads it with
//! bpf_skb_load_bytes. Only flows the pools probe registered (`proto_watch`) are looked at; what
//! the bytes mean is `monitor_common::proto::recognise`.
use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};
use monitor_common::{proto, FlowKey, AF_INET, AF_INET6};

use crate::{
    counters,
    maps::{check_program_name, PENDING, PENDING_N, PROTO_SEEN},
};

const IPPROTO_TCP: u8 = 6;

#[cgroup_skb(egress)]
pub fn classify_egress(ctx: SkBuffContext) -> i32 {
    let _ = try_classify(&ctx);
    1 // never drop: this program only looks
}
check_program_name!(classify_egress, CLASSIFY_EGRESS);

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
    let Some(pool) = PENDING.get_ptr(&flow) else {
        return Ok(());
    };
    // SAFETY: entry pointer from the map, copied out at once.
    let pool = unsafe { *pool };
    // A fixed-size load: load_bytes clamps its length to the packet, which the verifier rejects
    // as possibly zero.
    let b: [u8; 8] = ctx.load(payload)?;
    let _ = PROTO_SEEN.insert(&pool, &proto::recognise(&b), 0);
    if PENDING.remove(&flow).is_ok() {
        counters::add(&PENDING_N, -1);
    }
    Ok(())
}
