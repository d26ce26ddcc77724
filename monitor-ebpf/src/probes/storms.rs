//! Retry-storm signals per pool: SYN retransmits of connects and resets received and sent. Sockets
//! are matched to pools through the pools probe's socket table, so only client connections
//! connmon follows are counted. (The failed connects and recoveries themselves are reported by the
//! pools probe through `retry_events`.)
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use monitor_common::TCP_SYN_SENT;

use crate::{
    access::read_ctx,
    maps::{check_program_name, off},
    pool_table::{socket, with_stats},
};

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let _ = try_retransmit(&ctx);
    0
}
check_program_name!(tcp_retransmit_skb, TCP_RETRANSMIT_SKB);

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let _ = try_reset(&ctx, off!(TP_OFFSETS.rx_reset_skaddr), true);
    0
}
check_program_name!(tcp_receive_reset, TCP_RECEIVE_RESET);

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let _ = try_reset(&ctx, off!(TP_OFFSETS.tx_reset_skaddr), false);
    0
}
check_program_name!(tcp_send_reset, TCP_SEND_RESET);

fn try_retransmit(ctx: &TracePointContext) -> Result<(), i64> {
    let state: i32 = read_ctx(ctx, off!(TP_OFFSETS.retrans_state))?;
    if state as u8 != TCP_SYN_SENT {
        return Ok(());
    }
    let sk: u64 = read_ctx(ctx, off!(TP_OFFSETS.retrans_skaddr))?;
    if let Some(info) = socket(sk) {
        with_stats(info.pool_id, |s| s.syn_retransmits += 1);
    }
    Ok(())
}

fn try_reset(ctx: &TracePointContext, skaddr_off: u32, received: bool) -> Result<(), i64> {
    let sk: u64 = read_ctx(ctx, skaddr_off)?;
    if sk == 0 {
        return Ok(());
    }
    if let Some(info) = socket(sk) {
        with_stats(info.pool_id, |s| {
            if received {
                s.resets_received += 1;
            } else {
                s.resets_sent += 1;
            }
        });
    } else if received {
        // Not a client connection: maybe a child in an accept queue whose client gave up.
        crate::queue_table::reset_received(sk as *const u8)?;
    }
    Ok(())
}
