//! Listener probes: accept-queue and SYN-queue high-water marks (`sk_data_ready` on a listening
//! socket fires each time a connection is queued) and SYN-ACK retransmits per listener.
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use monitor_common::{ListenerCounters, TCP_LISTEN};

use crate::{
    access::{load, read, read_ctx},
    listen_table::{listener_key, raise_peak, record_queued},
    maps::{check_program_name, off, LISTEN_COUNTERS},
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
    try_data_ready::<true>(sk)
}

fn try_data_ready_tp(ctx: &TracePointContext) -> Result<(), i64> {
    let sk: *const u8 = read_ctx(ctx, off!(TP_OFFSETS.data_ready_skaddr))?;
    try_data_ready::<false>(sk)
}

/// `BTF`: `sk` is a BTF-typed pointer (tp_btf), so fields load directly; else each goes through
/// bpf_probe_read_kernel.
fn try_data_ready<const BTF: bool>(sk: *const u8) -> Result<(), i64> {
    // This hook fires for every socket that receives data; bail out early on all but listeners.
    let state: u8 = load::<u8, BTF>(sk, off!(SOCK_OFFSETS.state))?;
    if state != TCP_LISTEN {
        return Ok(());
    }
    // The listener has already queued the child when sk_data_ready runs: nothing pending.
    record_queued::<BTF>(sk, 0)
}

fn try_retransmit_synack(ctx: &TracePointContext) -> Result<(), i64> {
    let sk: *const u8 = read_ctx(ctx, off!(TP_OFFSETS.synack_skaddr))?;
    let key = listener_key::<false>(sk)?;
    if let Ok(syn_queue) = read::<u32>(sk, off!(SOCK_OFFSETS.syn_qlen)) {
        raise_peak(&key, 0, 0, syn_queue);
    }
    match LISTEN_COUNTERS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        Some(c) => unsafe { (*c).synack_retransmits += 1 },
        None => {
            let c = ListenerCounters { queued: 0, synack_retransmits: 1 };
            LISTEN_COUNTERS.insert(&key, &c, 0).map_err(|e| e as i64)?;
        }
    }
    Ok(())
}
