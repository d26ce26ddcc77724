//! Listener peaks on kernels without the `sock:sk_data_ready` tracepoint (before 6.6): the same
//! event, a child socket joining a listener's accept queue, seen at `inet_csk_complete_hashdance`,
//! through which every child that finished its handshake passes on its way into the queue (it
//! exists, and is not inlined, on 5.10 through current kernels; `inet_csk_reqsk_queue_add` is
//! inlined on 6.1). fexit is preferred: it runs after the child was queued, and the function's
//! return value says whether it was (NULL when another CPU won the request or the listener
//! closed). The kprobe runs before, so it adds the child about to be queued to the depth.
//! Children that skip the handshake path (SYN cookies, TCP Fast Open) are not seen here; the
//! scan's sampled depth still covers them.
use aya_ebpf::{
    macros::{fexit, kprobe},
    programs::{FExitContext, ProbeContext},
};
use monitor_common::TCP_LISTEN;

use crate::{
    access::{direct, read},
    listen_table::record_queued,
    maps::{check_program_name, off},
};

/// `struct sock *inet_csk_complete_hashdance(struct sock *sk, struct sock *child,
/// struct request_sock *req, bool own_req)`: argument 0 is the listener; slot 4 of an fexit
/// context holds the return value.
#[fexit(function = "inet_csk_complete_hashdance")]
pub fn queued_child_fexit(ctx: FExitContext) -> u32 {
    let _ = try_fexit(&ctx);
    0
}
check_program_name!(queued_child_fexit, QUEUED_CHILD_FEXIT);

/// Fallback where fexit cannot attach (no BPF trampoline, or a kernel that refuses it).
#[kprobe]
pub fn queued_child_kprobe(ctx: ProbeContext) -> u32 {
    let _ = try_kprobe(&ctx);
    0
}
check_program_name!(queued_child_kprobe, QUEUED_CHILD_KPROBE);

fn try_fexit(ctx: &FExitContext) -> Result<(), i64> {
    let queued: u64 = ctx.arg(4);
    if queued == 0 {
        return Ok(());
    }
    let sk: *const u8 = ctx.arg(0);
    // No bpf_get_socket_cookie here: fexit has it only from 5.12, and this row exists for older
    // kernels. A listener not yet scanned (cookie 0) is keyed by address instead.
    let cookie = direct::<u64>(sk, off!(SOCK_OFFSETS.cookie)).unwrap_or(0);
    record_queued::<true>(sk, 0, cookie)
}

fn try_kprobe(ctx: &ProbeContext) -> Result<(), i64> {
    let sk: *const u8 = ctx.arg(0).ok_or(-1i64)?;
    let own_req: u64 = ctx.arg(3).ok_or(-1i64)?;
    // A bool in a register: only the low byte is defined.
    if own_req & 0xff == 0 {
        return Ok(());
    }
    // The kernel queues the child only on a listener that is still listening.
    let state: u8 = read(sk, off!(SOCK_OFFSETS.state))?;
    if state != TCP_LISTEN {
        return Ok(());
    }
    let cookie = read::<u64>(sk, off!(SOCK_OFFSETS.cookie)).unwrap_or(0);
    record_queued::<false>(sk, 1, cookie)
}
