//! Accept-queue tables shared by the programs that feed them: the state probe counts children
//! whose client hung up while still queued; the received-reset probe counts those reset while
//! queued; the accept probe (`probes::accept_queue`) measures each child's wait. A child still
//! queued has no owner (`sk_socket` NULL).
//!
//! The wait starts at a stamp the kernel keeps in the child itself (`tcp_sock.rcvq_space.time`,
//! see `FdOffsets::child_stamp`), so nothing is written at enqueue. On a kernel whose BTF lacks
//! it, the state probe remembers each TCP child when it joins a listener's queue
//! (QUEUED_CHILDREN) instead. That map is keyed by socket address, and the kernel hands a freed
//! socket's memory to the next one, so under churn most children land on an entry an earlier
//! socket left: the entry is rewritten in place and accept() marks it taken (`enqueued_ns` 0)
//! instead of deleting it. An LRU insert and delete each take the map's bucket lock and move a
//! node through the LRU's shared lists; two lookups take no lock.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use monitor_common::{QueueKey, QueueStats, QueuedChild, OFFSET_UNKNOWN, TCP_ESTABLISHED};

use crate::{
    access::{load, local_addr, netns_of, read},
    fields::{Fields, Sock},
    maps::{off, QUEUED_CHILDREN, QUEUE_STATS},
};

/// Whether children are remembered in QUEUED_CHILDREN: only where the kernel's own stamp is
/// unknown, and only while the accept side is attached (without it nothing would ever remove a
/// child). The loader leaves `accept_ret` unknown when the probe is off.
#[inline(always)]
pub(crate) fn tracking() -> bool {
    off!(FD_OFFSETS.accept_ret) != OFFSET_UNKNOWN && off!(FD_OFFSETS.child_stamp) == OFFSET_UNKNOWN
}

/// A socket that cannot be a client the pools probe tracks: a passive child. A child is a copy of
/// its listener, `sk_max_ack_backlog` included (the backlog, non-zero unless `listen(fd, 0)`);
/// a socket that never listened has 0 there. One load, on every kernel with the field (all
/// since 2.6). A socket that listened and later connect()ed as a client also reads non-zero:
/// its close goes unseen here and the agent's reconcile counts it as a missed close.
#[inline(always)]
pub(crate) fn passive_child<F: Fields>(f: &F) -> bool {
    f.max_ack_backlog().is_ok_and(|b| b != 0)
}

/// `passive_child` for the reset hooks, which have a bare socket pointer rather than `Fields`:
/// `BTF` as in `access::load`. Its resets go uncounted the same way its close does.
#[inline(always)]
pub(crate) fn passive_child_at<const BTF: bool>(sk: *const u8) -> bool {
    load::<u32, BTF>(sk, off!(SOCK_OFFSETS.max_ack_backlog)).is_ok_and(|b| b != 0)
}

/// Called from the state probe when a passive child finished its handshake (it is now queued).
#[inline(always)]
pub(crate) fn child_queued(sk: u64, key: &QueueKey) {
    if !tracking() {
        return;
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(c) = QUEUED_CHILDREN.get_ptr_mut(&sk) {
        // SAFETY: entry pointer from the map. The socket that left it is gone (its memory is
        // this child's), so nothing else reads or writes this entry now.
        unsafe { *c = QueuedChild { enqueued_ns: now, key: *key } };
        return;
    }
    let _ = QUEUED_CHILDREN.insert(&sk, &QueuedChild { enqueued_ns: now, key: *key }, 0);
}

/// Called from the state probe on ESTABLISHED -> CLOSE_WAIT: a child nobody owns yet whose
/// client hung up was abandoned in the queue.
#[inline(always)]
pub(crate) fn peer_closed<F: Fields>(f: &F) -> Result<(), i64> {
    if !f.unowned() {
        return Ok(());
    }
    let family = f.family()?;
    let key = QueueKey { netns: f.netns(), port: f.sport()?, family, addr: f.saddr(family)? };
    with_stats(&key, |s| s.abandoned_fin += 1);
    Ok(())
}

/// Called from the received-reset tracepoint for sockets that are not client connections. It
/// fires before the reset changes anything: by the ESTABLISHED -> CLOSE transition that follows,
/// the kernel has already released the socket's local port (`skc_num` is 0), so the listener
/// could no longer be named there. A reset that ends a listener's queue when it closes comes
/// through tcp_disconnect instead, and is not counted.
///
/// `BTF` when the hook passed a BTF-typed `struct sock *` (tp_btf), so fields load directly, as in
/// `access::load`.
#[inline(always)]
pub(crate) fn reset_received_at<const BTF: bool>(sk: *const u8) -> Result<(), i64> {
    // The owner first: most sockets reset here were accepted already, and one load rules them out.
    let owner: u64 = load::<u64, BTF>(sk, off!(FD_OFFSETS.sock_socket))?;
    if owner != 0 {
        return Ok(());
    }
    let state: u8 = load::<u8, BTF>(sk, off!(SOCK_OFFSETS.state))?;
    if state != TCP_ESTABLISHED {
        return Ok(());
    }
    let key = if BTF {
        let f = Sock(sk);
        let family = f.family()?;
        QueueKey { netns: f.netns(), port: f.sport()?, family, addr: f.saddr(family)? }
    } else {
        let family: u16 = read(sk, off!(SOCK_OFFSETS.family))?;
        let addr = local_addr(sk, family)?;
        QueueKey { netns: netns_of(sk), port: read(sk, off!(SOCK_OFFSETS.num))?, family, addr }
    };
    with_stats(&key, |s| s.abandoned_rst += 1);
    Ok(())
}

#[inline(always)]
pub(crate) fn with_stats(key: &QueueKey, f: impl FnOnce(&mut QueueStats)) {
    if let Some(s) = QUEUE_STATS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        f(unsafe { &mut *s });
        return;
    }
    let mut s = QueueStats::default();
    f(&mut s);
    let _ = QUEUE_STATS.insert(key, &s, 0);
}
