//! Listener probes: accept-queue and SYN-queue high-water marks (`sk_data_ready` on a listening
//! socket fires each time a connection is queued) and SYN-ACK retransmits per listener.
use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{btf_tracepoint, map, tracepoint},
    maps::LruPerCpuHashMap,
    programs::{BtfTracePointContext, TracePointContext},
};
use monitor_common::{
    ListenerCounters, ListenerKey, ListenerPeak, SockOffsets, TaskOffsets, TracepointOffsets, AF_INET,
    MAX_LISTENERS, OFFSET_UNKNOWN, TCP_LISTEN,
};

/// Written by the agent before load; read through `read_volatile` so the compiler cannot fold
/// the placeholder values into the program.
#[no_mangle]
pub(crate) static SOCK_OFFSETS: SockOffsets = SockOffsets::UNKNOWN;
#[no_mangle]
pub(crate) static TASK_OFFSETS: TaskOffsets = TaskOffsets::UNKNOWN;
#[no_mangle]
pub(crate) static TP_OFFSETS: TracepointOffsets = TracepointOffsets::UNKNOWN;

/// Read-and-cleared by the agent at each scrape, so a value is the peak since the previous one.
#[map]
static LISTEN_PEAKS: LruPerCpuHashMap<ListenerKey, ListenerPeak> =
    LruPerCpuHashMap::with_max_entries(MAX_LISTENERS, 0);

#[map]
static LISTEN_COUNTERS: LruPerCpuHashMap<ListenerKey, ListenerCounters> =
    LruPerCpuHashMap::with_max_entries(MAX_LISTENERS, 0);

#[btf_tracepoint(function = "sk_data_ready")]
pub fn sk_data_ready_btf(ctx: BtfTracePointContext) -> u32 {
    let sk: *const u8 = ctx.arg(0);
    let _ = try_data_ready::<true>(sk);
    0
}

/// Fallback for kernels where tp_btf cannot attach: the same hook through tracefs.
#[tracepoint]
pub fn sk_data_ready_tp(ctx: TracePointContext) -> u32 {
    let _ = try_data_ready_tp(&ctx);
    0
}

#[tracepoint]
pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    let _ = try_retransmit_synack(&ctx);
    0
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
    let depth: u32 = load::<u32, BTF>(sk, off!(SOCK_OFFSETS.ack_backlog))?;
    let backlog: u32 = load::<u32, BTF>(sk, off!(SOCK_OFFSETS.max_ack_backlog))?;
    // icsk_accept_queue lies in inet_connection_sock, past struct sock: the verifier checks a
    // direct load against struct sock only, so this one goes through bpf_probe_read_kernel.
    let syn_queue: u32 = read(sk, off!(SOCK_OFFSETS.syn_qlen)).unwrap_or(0);
    let key = listener_key::<BTF>(sk)?;
    raise_peak(&key, depth, backlog, syn_queue);
    match LISTEN_COUNTERS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        Some(c) => unsafe { (*c).queued += 1 },
        None => {
            let c = ListenerCounters { queued: 1, synack_retransmits: 0 };
            LISTEN_COUNTERS.insert(&key, &c, 0).map_err(|e| e as i64)?;
        }
    }
    Ok(())
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

fn raise_peak(key: &ListenerKey, depth: u32, backlog: u32, syn_queue: u32) {
    match LISTEN_PEAKS.get_ptr_mut(key) {
        Some(p) => {
            // SAFETY: per-CPU value, only this CPU writes it while the program runs.
            let p = unsafe { &mut *p };
            if depth > p.depth {
                p.depth = depth;
            }
            if backlog > p.backlog {
                p.backlog = backlog;
            }
            if syn_queue > p.syn_queue {
                p.syn_queue = syn_queue;
            }
        }
        None => {
            let p = ListenerPeak { depth, backlog, syn_queue, _reserved: 0 };
            let _ = LISTEN_PEAKS.insert(key, &p, 0);
        }
    }
}

fn listener_key<const BTF: bool>(sk: *const u8) -> Result<ListenerKey, i64> {
    if BTF {
        use crate::fields::Fields as _;
        let f = crate::fields::Sock(sk);
        let family = f.family()?;
        return Ok(ListenerKey { cookie: f.cookie(), netns: f.netns(), port: f.sport()?, family, addr: f.saddr(family)? });
    }
    let family: u16 = read(sk, off!(SOCK_OFFSETS.family))?;
    let port: u16 = read(sk, off!(SOCK_OFFSETS.num))?;
    let mut addr = [0u8; 16];
    if family == AF_INET {
        let v4: [u8; 4] = read(sk, off!(SOCK_OFFSETS.rcv_saddr))?;
        addr[..4].copy_from_slice(&v4);
    } else {
        addr = read(sk, off!(SOCK_OFFSETS.v6_rcv_saddr))?;
    }
    let netns = netns_of(sk);
    let cookie: u64 = read(sk, off!(SOCK_OFFSETS.cookie)).unwrap_or(0);
    Ok(ListenerKey { cookie, netns, port, family, addr })
}

#[inline(always)]
fn load<T: Copy, const BTF: bool>(sk: *const u8, off: u32) -> Result<T, i64> {
    if BTF {
        crate::fields::direct(sk, off)
    } else {
        read(sk, off)
    }
}

/// One offset from the loader-written globals. Field by field, because copying the whole struct
/// costs stack the verifier caps at 512 bytes.
macro_rules! off {
    ($($path:tt)+) => {
        // SAFETY: a plain read of a static the loader initialised.
        unsafe { core::ptr::read_volatile(&raw const $crate::listeners::$($path)+) }
    };
}
pub(crate) use off;

#[inline(always)]
pub(crate) fn read<T>(base: *const u8, off: u32) -> Result<T, i64> {
    if off == OFFSET_UNKNOWN || base.is_null() {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel faults safely on a bad address and returns an error.
    unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const T).map_err(|e| e as i64) }
}

#[inline(always)]
pub(crate) fn read_ctx<T>(ctx: &TracePointContext, off: u32) -> Result<T, i64> {
    if off == OFFSET_UNKNOWN {
        return Err(-1);
    }
    // SAFETY: the offset comes from the tracepoint's own format file.
    unsafe { ctx.read_at::<T>(off as usize).map_err(|e| e as i64) }
}

/// Inode of the socket's network namespace, as `/proc/<pid>/ns/net` shows it; 0 if unknown.
pub(crate) fn netns_of(sk: *const u8) -> u32 {
    match read::<*const u8>(sk, off!(SOCK_OFFSETS.net)) {
        Ok(net) if !net.is_null() => read::<u32>(net, off!(SOCK_OFFSETS.net_inum)).unwrap_or(0),
        _ => 0,
    }
}
