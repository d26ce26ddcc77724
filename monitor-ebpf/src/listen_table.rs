//! The per-listener table several listener programs feed (LISTENERS): queued-connection and
//! SYN-ACK retransmit counters and the queue high-water marks of the current peak period, one
//! entry per listening socket keyed by its socket cookie, so the hot path builds no name and makes
//! one map operation. The `sk_data_ready` programs (`probes::listeners`) and the queued-child
//! programs of older kernels (`probes::queued_child`) both record here, so the agent reads one
//! table whatever hook ran; it joins cookies to listeners through sock_diag's `idiag_cookie`.
use monitor_common::{ListenerCounters, ListenerKey, ListenerPeak, ListenerStats};

use crate::{
    access::{load, local_addr, netns_of, read},
    fields::{Fields as _, Sock},
    maps::{off, LISTENERS, LISTEN_EPOCH},
};

/// One connection joined the accept queue of listener `sk`: raise its peaks and count it.
/// `pending` is added to the depth read from the socket, for hooks that run just before the
/// kernel queues the child. `cookie` is the listener's socket cookie, 0 if the hook could not
/// get one. `BTF` as in `access::load`.
#[inline(always)]
pub(crate) fn record_queued<const BTF: bool>(sk: *const u8, pending: u32, cookie: u64) -> Result<(), i64> {
    let depth: u32 = load::<u32, BTF>(sk, off!(SOCK_OFFSETS.ack_backlog))?;
    let backlog: u32 = load::<u32, BTF>(sk, off!(SOCK_OFFSETS.max_ack_backlog))?;
    // icsk_accept_queue lies in inet_connection_sock, past struct sock: the verifier checks a
    // direct load against struct sock only, so this one goes through bpf_probe_read_kernel.
    let syn_queue: u32 = read(sk, off!(SOCK_OFFSETS.syn_qlen)).unwrap_or(0);
    let depth = depth.saturating_add(pending);
    record::<BTF>(sk, cookie, depth, backlog, syn_queue, ListenerCounters { queued: 1, synack_retransmits: 0 })
}

/// One SYN-ACK retransmitted for a request of listener `sk` (a classic tracepoint's pointer).
#[inline(always)]
pub(crate) fn record_synack_retransmit(sk: *const u8) -> Result<(), i64> {
    let cookie: u64 = read(sk, off!(SOCK_OFFSETS.cookie)).unwrap_or(0);
    let syn_queue: u32 = read(sk, off!(SOCK_OFFSETS.syn_qlen)).unwrap_or(0);
    record::<false>(sk, cookie, 0, 0, syn_queue, ListenerCounters { queued: 0, synack_retransmits: 1 })
}

#[inline(always)]
fn record<const BTF: bool>(
    sk: *const u8,
    cookie: u64,
    depth: u32,
    backlog: u32,
    syn_queue: u32,
    add: ListenerCounters,
) -> Result<(), i64> {
    // Kernel addresses already have LISTENER_BY_ADDRESS set (and the verifier allows no
    // arithmetic on a BTF pointer).
    let key = if cookie != 0 { cookie } else { sk as u64 };
    // SAFETY: array slot 0 always exists; read once.
    let epoch = LISTEN_EPOCH.get_ptr(0).map_or(0, |e| unsafe { core::ptr::read_volatile(e) });
    if let Some(s) = LISTENERS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        let s = unsafe { &mut *s };
        s.raise(epoch, depth, backlog, syn_queue);
        s.counters.queued += add.queued;
        s.counters.synack_retransmits += add.synack_retransmits;
        return Ok(());
    }
    // First event of this listener on any CPU since it entered the table (the insert zeroes the
    // other CPUs' values). Only an entry keyed by address carries the name the agent needs.
    let name = if cookie == 0 { listener_name::<BTF>(sk)? } else { ListenerKey::default() };
    let s =
        ListenerStats { epoch, counters: add, peak: ListenerPeak { depth, backlog, syn_queue, _reserved: 0 }, name };
    LISTENERS.insert(&key, &s, 0).map_err(|e| e as i64)
}

/// The listener's (netns, address, port), for entries the agent cannot join by cookie.
fn listener_name<const BTF: bool>(sk: *const u8) -> Result<ListenerKey, i64> {
    if BTF {
        let f = Sock(sk);
        let family = f.family()?;
        return Ok(ListenerKey { cookie: 0, netns: f.netns(), port: f.sport()?, family, addr: f.saddr(family)? });
    }
    let family: u16 = read(sk, off!(SOCK_OFFSETS.family))?;
    let port: u16 = read(sk, off!(SOCK_OFFSETS.num))?;
    let addr = local_addr(sk, family)?;
    Ok(ListenerKey { cookie: 0, netns: netns_of(sk), port, family, addr })
}
