//! Retry-storm signals per pool: SYN retransmits of connects and resets received and sent. Sockets
//! are matched to pools through the pools probe's socket table, so only client connections
//! connmon follows are counted. (The failed connects and recoveries themselves are reported by the
//! pools probe through `retry_events`.) Each program has a tp_btf twin, preferred: the kernel
//! passes it the socket pointer directly instead of filling a trace record on every run (about
//! 20 ns of each reset program's run).
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use monitor_common::TCP_SYN_SENT;

use crate::{
    access::{direct, read_ctx},
    maps::{check_program_name, off},
    pool_table::{socket, with_stats},
};

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let _ = try_retransmit(&ctx);
    0
}
check_program_name!(tcp_retransmit_skb, TCP_RETRANSMIT_SKB);

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb_btf(ctx: BtfTracePointContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    // The state straight from the BTF-typed socket: data retransmits leave before any lookup.
    if direct::<u8>(sk as *const u8, off!(SOCK_OFFSETS.state)) == Ok(TCP_SYN_SENT) {
        on_syn_retransmit(sk);
    }
    0
}
check_program_name!(tcp_retransmit_skb_btf, TCP_RETRANSMIT_SKB_BTF);

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let _ = read_ctx(&ctx, off!(TP_OFFSETS.rx_reset_skaddr)).and_then(|sk| on_reset::<false>(sk, true));
    0
}
check_program_name!(tcp_receive_reset, TCP_RECEIVE_RESET);

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset_btf(ctx: BtfTracePointContext) -> u32 {
    let _ = on_reset::<true>(ctx.arg(0), true);
    0
}
check_program_name!(tcp_receive_reset_btf, TCP_RECEIVE_RESET_BTF);

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let _ = read_ctx(&ctx, off!(TP_OFFSETS.tx_reset_skaddr)).and_then(|sk| on_reset::<false>(sk, false));
    0
}
check_program_name!(tcp_send_reset, TCP_SEND_RESET);

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset_btf(ctx: BtfTracePointContext) -> u32 {
    let _ = on_reset::<true>(ctx.arg(0), false);
    0
}
check_program_name!(tcp_send_reset_btf, TCP_SEND_RESET_BTF);

fn try_retransmit(ctx: &TracePointContext) -> Result<(), i64> {
    let state: i32 = read_ctx(ctx, off!(TP_OFFSETS.retrans_state))?;
    if state as u8 != TCP_SYN_SENT {
        return Ok(());
    }
    on_syn_retransmit(read_ctx(ctx, off!(TP_OFFSETS.retrans_skaddr))?);
    Ok(())
}

/// A connect's SYN sent again: counted for its pool, if connmon follows the socket.
#[inline(always)]
fn on_syn_retransmit(sk: u64) {
    if let Some(info) = socket(sk) {
        with_stats(info.pool_id, |s| s.syn_retransmits += 1);
    }
}

/// A reset for `sk`. `BTF`: the hook passed a BTF-typed socket, so fields load directly.
#[inline(always)]
fn on_reset<const BTF: bool>(sk: u64, received: bool) -> Result<(), i64> {
    // A reset sent in answer to a packet no socket owns has none.
    if sk == 0 {
        return Ok(());
    }
    // A passive child (a server's end) is never in the socket table: one load instead of a missed
    // hash lookup, on the server's side of every reset.
    let passive = crate::queue_table::passive_child_at::<BTF>(sk as *const u8);
    if let Some(info) = (!passive).then(|| socket(sk)).flatten() {
        with_stats(info.pool_id, |s| {
            if received {
                s.resets_received += 1;
            } else {
                s.resets_sent += 1;
            }
        });
    } else if received {
        // Not a client connection: maybe a child in an accept queue whose client gave up.
        crate::queue_table::reset_received_at::<BTF>(sk as *const u8)?;
    }
    Ok(())
}
