//! Listener probes: accept-queue and SYN-queue high-water marks (`sk_data_ready` on a listening
//! socket fires each time a connection is queued) and SYN-ACK retransmits per listener.
use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{btf_tracepoint, map, tracepoint},
    maps::LruPerCpuHashMap,
    programs::{BtfTracePointContext, TracePointContext},
};
use monitor_common::{
    ListenerCounters, ListenerKey, ListenerPeak, SockOffsets, TracepointOffsets, AF_INET,
    MAX_LISTENERS, OFFSET_UNKNOWN, TCP_LISTEN,
};

/// Written by the agent before load; read through `read_volatile` so the compiler cannot fold
/// the placeholder values into the program.
#[no_mangle]
static SOCK_OFFSETS: SockOffsets = SockOffsets::UNKNOWN;
#[no_mangle]
static TP_OFFSETS: TracepointOffsets = TracepointOffsets::UNKNOWN;

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
    let _ = try_data_ready(sk);
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
    let tp = tp_offsets();
    let sk: *const u8 = read_ctx(ctx, tp.data_ready_skaddr)?;
    try_data_ready(sk)
}

fn try_data_ready(sk: *const u8) -> Result<(), i64> {
    let offs = sock_offsets();
    // This tracepoint fires for every socket that receives data; bail out early on all but listeners.
    let state: u8 = read(sk, offs.state)?;
    if state != TCP_LISTEN {
        return Ok(());
    }
    let depth: u32 = read(sk, offs.ack_backlog)?;
    let backlog: u32 = read(sk, offs.max_ack_backlog)?;
    let syn_queue: u32 = read(sk, offs.syn_qlen).unwrap_or(0);
    let key = listener_key(sk, &offs)?;
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
    let tp = tp_offsets();
    let sk: *const u8 = read_ctx(ctx, tp.synack_skaddr)?;
    let offs = sock_offsets();
    let key = listener_key(sk, &offs)?;
    if let Ok(syn_queue) = read::<u32>(sk, offs.syn_qlen) {
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

fn listener_key(sk: *const u8, offs: &SockOffsets) -> Result<ListenerKey, i64> {
    let family: u16 = read(sk, offs.family)?;
    let port: u16 = read(sk, offs.num)?;
    let mut addr = [0u8; 16];
    if family == AF_INET {
        let v4: [u8; 4] = read(sk, offs.rcv_saddr)?;
        addr[..4].copy_from_slice(&v4);
    } else {
        addr = read(sk, offs.v6_rcv_saddr)?;
    }
    let netns = match read::<*const u8>(sk, offs.net) {
        Ok(net) if !net.is_null() => read::<u32>(net, offs.net_inum).unwrap_or(0),
        _ => 0,
    };
    let cookie: u64 = read(sk, offs.cookie).unwrap_or(0);
    Ok(ListenerKey { cookie, netns, port, family, addr })
}

#[inline(always)]
fn sock_offsets() -> SockOffsets {
    // SAFETY: a plain read of a static the loader initialised.
    unsafe { core::ptr::read_volatile(&SOCK_OFFSETS) }
}

#[inline(always)]
fn tp_offsets() -> TracepointOffsets {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(&TP_OFFSETS) }
}

#[inline(always)]
fn read<T>(base: *const u8, off: u32) -> Result<T, i64> {
    if off == OFFSET_UNKNOWN || base.is_null() {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel faults safely on a bad address and returns an error.
    unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const T).map_err(|e| e as i64) }
}

#[inline(always)]
fn read_ctx<T>(ctx: &TracePointContext, off: u32) -> Result<T, i64> {
    if off == OFFSET_UNKNOWN {
        return Err(-1);
    }
    // SAFETY: the offset comes from the tracepoint's own format file.
    unsafe { ctx.read_at::<T>(off as usize).map_err(|e| e as i64) }
}
