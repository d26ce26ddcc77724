//! Listener fixtures shared by the listener and agent tests: an overflowing listener, waiting
//! for `ss` to show a queue depth, and bracketed comparisons against a moving oracle.
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use super::*;

/// In `ns`: a listener on `addr` with `backlog`, and `clients` non-blocking connects that are never
/// accepted. The accept queue holds backlog + 1 connections; the other clients' SYNs are dropped
/// (and retransmitted, so drops keep rising). Waits until `ss` shows the full queue and drops.
pub fn overflowing_listener(
    ns: &Netns,
    addr: SocketAddr,
    backlog: i32,
    clients: usize,
) -> (OwnedFd, Vec<OwnedFd>) {
    assert!(
        clients > backlog as usize + 1,
        "need more clients than the accept queue holds"
    );
    let (listener, clients) = ns.run(|| {
        let l = listen_tcp(addr, backlog);
        let cs: Vec<OwnedFd> = (0..clients).map(|_| connect_nonblocking(addr)).collect();
        (l, cs)
    });
    let ip = addr.ip().to_string();
    poll_until(
        deadline(15),
        &format!(
            "ss to show a full accept queue ({}) and drops on {addr}",
            backlog + 1
        ),
        || match ss_listener(ns, &ip, addr.port()) {
            Some(l) if l.recv_q == backlog as u64 + 1 && l.drops > 0 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    (listener, clients)
}

/// Waits until `ss` shows `n` connections in the accept queue of `addr` in `ns`.
pub fn wait_recv_q(ns: &Netns, addr: SocketAddr, n: u64) {
    let ip = addr.ip().to_string();
    poll_until(
        deadline(15),
        &format!("ss Recv-Q == {n} on {addr}"),
        || match ss_listener(ns, &ip, addr.port()) {
            Some(l) if l.recv_q == n => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}

pub fn assert_between(what: &str, low: u64, value: f64, high: u64) {
    assert!(
        low as f64 <= value && value <= high as f64,
        "{what}: {value} is not within the oracle's bracket [{low}, {high}]"
    );
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad address {s:?}: {e}"))
}

