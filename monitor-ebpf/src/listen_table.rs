//! Per-listener tables that several listener programs feed: the high-water marks (LISTEN_PEAKS)
//! and the queued-connection counters (LISTEN_COUNTERS), keyed by the listener. The
//! `sk_data_ready` programs (`probes::listeners`) and the queued-child programs of older kernels
//! (`probes::queued_child`) both record here, so the agent reads one table whatever hook ran.
use monitor_common::{ListenerCounters, ListenerKey, ListenerPeak};

use crate::{
    access::{load, local_addr, netns_of, read},
    fields::{Fields as _, Sock},
    maps::{off, LISTEN_COUNTERS, LISTEN_PEAKS},
};

/// One connection joined the accept queue of listener `sk`: raise its peaks and count it.
/// `pending` is added to the depth read from the socket, for hooks that run just before the
/// kernel queues the child. `BTF` as in `access::load`.
#[inline(always)]
pub(crate) fn record_queued<const BTF: bool>(sk: *const u8, pending: u32) -> Result<(), i64> {
    let depth: u32 = load::<u32, BTF>(sk, off!(SOCK_OFFSETS.ack_backlog))?;
    let backlog: u32 = load::<u32, BTF>(sk, off!(SOCK_OFFSETS.max_ack_backlog))?;
    // icsk_accept_queue lies in inet_connection_sock, past struct sock: the verifier checks a
    // direct load against struct sock only, so this one goes through bpf_probe_read_kernel.
    let syn_queue: u32 = read(sk, off!(SOCK_OFFSETS.syn_qlen)).unwrap_or(0);
    let key = listener_key::<BTF>(sk)?;
    raise_peak(&key, depth.saturating_add(pending), backlog, syn_queue);
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

pub(crate) fn raise_peak(key: &ListenerKey, depth: u32, backlog: u32, syn_queue: u32) {
    match LISTEN_PEAKS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        Some(p) => unsafe { (*p).raise(depth, backlog, syn_queue) },
        None => {
            let p = ListenerPeak { depth, backlog, syn_queue, _reserved: 0 };
            let _ = LISTEN_PEAKS.insert(key, &p, 0);
        }
    }
}

pub(crate) fn listener_key<const BTF: bool>(sk: *const u8) -> Result<ListenerKey, i64> {
    if BTF {
        let f = Sock(sk);
        let family = f.family()?;
        return Ok(ListenerKey {
            cookie: f.cookie(),
            netns: f.netns(),
            port: f.sport()?,
            family,
            addr: f.saddr(family)?,
        });
    }
    let family: u16 = read(sk, off!(SOCK_OFFSETS.family))?;
    let port: u16 = read(sk, off!(SOCK_OFFSETS.num))?;
    let addr = local_addr(sk, family)?;
    let netns = netns_of(sk);
    let cookie: u64 = read(sk, off!(SOCK_OFFSETS.cookie)).unwrap_or(0);
    Ok(ListenerKey { cookie, netns, port, family, addr })
}
