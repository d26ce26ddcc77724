//! Listener probes: accept-queue and SYN-queue high-water marks (`sk_data_ready` on a listening
//! socket fires each time a connection is queued) and SYN-ACK retransmits per listener.
use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use monitor_common::TCP_LISTEN;

use crate::{
    access::{direct, load, read_ctx_u64},
    listen_table::{record_queued, record_synack_retransmit},
    maps::{check_program_name, off},
};

#[btf_tracepoint(function = "sk_data_ready")]
pub fn sk_data_ready_btf(ctx: BtfTracePointContext) -> u32 {
    let _ = try_data_ready_btf(&ctx);
    0
}
check_program_name!(sk_data_ready_btf, SK_DATA_READY_BTF);

/// Fallback for kernels where tp_btf cannot attach: the same hook through tracefs.
#[tracepoint]
pub fn sk_data_ready_tp(ctx: TracePointContext) -> u32 {
    let _ = try_data_ready_tp(&ctx);
    0
}
check_program_name!(sk_data_ready_tp, SK_DATA_READY_TP);

#[tracepoint]
pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    let _ = try_retransmit_synack(&ctx);
    0
}
check_program_name!(tcp_retransmit_synack, TCP_RETRANSMIT_SYNACK);

fn try_data_ready_btf(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let sk: *const u8 = ctx.arg(0);
    // This hook fires for every socket that receives data; bail out early on all but listeners.
    if !listening::<true>(sk)? {
        return Ok(());
    }
    // The cookie is set once anyone asked for it (the agent's scan does); the helper assigns one
    // to a listener created since, so every entry is keyed by cookie on this hook.
    let cookie = match direct::<u64>(sk, off!(SOCK_OFFSETS.cookie)) {
        Ok(c) if c != 0 => c,
        // SAFETY: `sk` is the BTF-typed socket the hook passed; the helper only reads or sets its cookie.
        _ => unsafe { bpf_get_socket_cookie(sk as *mut _) },
    };
    // The listener has already queued the child when sk_data_ready runs: nothing pending.
    record_queued::<true>(sk, 0, cookie)
}

fn try_data_ready_tp(ctx: &TracePointContext) -> Result<(), i64> {
    let sk = read_ctx_u64(ctx, off!(TP_OFFSETS.data_ready_skaddr))? as *const u8;
    if !listening::<false>(sk)? {
        return Ok(());
    }
    let cookie = load::<u64, false>(sk, off!(SOCK_OFFSETS.cookie)).unwrap_or(0);
    record_queued::<false>(sk, 0, cookie)
}

/// `BTF`: `sk` is a BTF-typed pointer (tp_btf), so fields load directly; else each goes through
/// bpf_probe_read_kernel.
#[inline(always)]
fn listening<const BTF: bool>(sk: *const u8) -> Result<bool, i64> {
    Ok(load::<u8, BTF>(sk, off!(SOCK_OFFSETS.state))? == TCP_LISTEN)
}

fn try_retransmit_synack(ctx: &TracePointContext) -> Result<(), i64> {
    let sk = read_ctx_u64(ctx, off!(TP_OFFSETS.synack_skaddr))? as *const u8;
    record_synack_retransmit(sk)
}
