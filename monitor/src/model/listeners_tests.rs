//! Unit tests of the listener view: SYN-queue attribution, peaks, and the index against the linear
//! searches it replaces.
use super::*;

fn sock(state: u8, addr: &str, port: u16, rq: u32, wq: u32) -> DiagSocket {
    let src: IpAddr = addr.parse().unwrap();
    DiagSocket {
        family: if src.is_ipv4() { 2 } else { 10 },
        state,
        src,
        sport: port,
        dst: if src.is_ipv4() { "0.0.0.0".parse().unwrap() } else { "::".parse().unwrap() },
        dport: 0,
        inode: 1,
        cookie: u64::from(port),
        uid: 0,
        rqueue: rq,
        wqueue: wq,
        sk_drops: Some(3),
        cgroup_id: None,
    }
}

#[test]
fn syn_requests_go_to_the_most_specific_listener() {
    let socks = vec![
        sock(TCP_LISTEN, "0.0.0.0", 80, 1, 4),
        sock(TCP_LISTEN, "10.0.0.1", 80, 0, 4),
        sock(TCP_LISTEN, "::", 443, 0, 8),
        sock(TCP_SYN_RECV, "10.0.0.1", 80, 0, 0),
        sock(TCP_SYN_RECV, "10.0.0.2", 80, 0, 0),
        sock(TCP_SYN_RECV, "10.0.0.2", 80, 0, 0),
        sock(TCP_SYN_RECV, "10.0.0.2", 443, 0, 0),
        sock(TCP_SYN_RECV, "10.0.0.2", 8080, 0, 0),
    ];
    let ls = listeners_of(7, None, &socks);
    let q: Vec<(u16, String, u32)> = ls.iter().map(|l| (l.port, l.addr.to_string(), l.syn_queue)).collect();
    assert_eq!(q, vec![(80, "0.0.0.0".into(), 2), (80, "10.0.0.1".into(), 1), (443, "::".into(), 1)]);
    assert_eq!(ls[0].fill, 0.25);
    assert_eq!(ls[0].drops, 3);
}

#[test]
fn peak_survives_a_drained_burst_and_resets_after_report() {
    let mut ls = listeners_of(7, None, &[sock(TCP_LISTEN, "127.0.0.1", 80, 0, 4)]);
    let mut kernel = KernelListenerStats::default();
    let key = ListenerKey { cookie: 80, netns: 7, port: 80, family: 2, addr: [0; 16] };
    kernel.peaks.insert(key, monitor_common::ListenerPeak { depth: 5, backlog: 4, syn_queue: 0, _reserved: 0 });
    let mut t = PeakTracker::new(true);
    t.observe(&mut ls, &kernel, true);
    t.report(&mut ls);
    assert_eq!((ls[0].peak_depth, ls[0].peak_source), (5, PeakSource::Ebpf));
    t.observe(&mut ls, &KernelListenerStats::default(), true);
    t.report(&mut ls);
    assert_eq!(ls[0].peak_depth, 0);
}

#[test]
fn kernel_keys_without_cookie_match_by_address() {
    let ls = listeners_of(7, None, &[sock(TCP_LISTEN, "::1", 9000, 0, 4)]);
    let mut addr = [0u8; 16];
    addr[15] = 1;
    let key = ListenerKey { cookie: 0, netns: 7, port: 9000, family: 10, addr };
    assert_eq!(find_listener(&ls, &key), Some(0));
    let other = ListenerKey { netns: 8, ..key };
    assert_eq!(find_listener(&ls, &other), None);
}

/// The index must answer every lookup exactly as the linear searches do, on a set mixing
/// namespaces, both families, wildcard and specific bindings, v4-mapped addresses, two
/// listeners on one address and port (SO_REUSEPORT: the first wins), unix listeners and
/// cookies shared or zero.
#[test]
fn index_answers_as_the_linear_search() {
    let bound = ["0.0.0.0", "10.0.0.1", "127.0.0.1", "::", "::1", "fd00::1", "::ffff:10.0.0.1", "::ffff:0.0.0.0"];
    let mut ls = Vec::new();
    for netns in [7u64, 8] {
        for (k, a) in bound.iter().enumerate() {
            for port in [80u16, 443, 8080] {
                // Not every address on every port, so each rule gets its turn.
                if !(k + usize::from(port) + netns as usize).is_multiple_of(3) {
                    let mut s = sock(TCP_LISTEN, a, port, 0, 4);
                    s.cookie = (netns << 32) | (k as u64) << 16 | u64::from(port);
                    ls.extend(listeners_of(netns, None, &[s]));
                }
            }
        }
        let mut dup = sock(TCP_LISTEN, "10.0.0.1", 80, 0, 4);
        dup.cookie = 0;
        ls.extend(listeners_of(netns, None, &[dup.clone(), dup]));
        let unix = crate::scan::unix_diag::UnixListenerSock {
            inode: 9,
            cookie: 42,
            kind: "stream",
            name: "/run/x.sock".into(),
            depth: 0,
            backlog: 4,
        };
        ls.push(unix_listener(netns, None, &unix));
    }
    // A unix listener's port is 0 and its address unspecified: it must never own a TCP one.
    ls.push(unix_listener(
        7,
        None,
        &crate::scan::unix_diag::UnixListenerSock {
            inode: 10,
            cookie: 43,
            kind: "stream",
            name: "@a".into(),
            depth: 0,
            backlog: 4,
        },
    ));
    let index = ListenerIndex::new(&ls);
    let asked = [
        "0.0.0.0",
        "10.0.0.1",
        "10.0.0.2",
        "127.0.0.1",
        "::",
        "::1",
        "fd00::1",
        "fd00::2",
        "::ffff:10.0.0.1",
        "::ffff:10.0.0.2",
    ];
    let mut owned = 0;
    for netns in [6u64, 7, 8] {
        for a in asked {
            let addr: IpAddr = a.parse().unwrap();
            for port in [0u16, 80, 443, 8080, 9999] {
                let want = owning_listener(&ls, netns, addr, port);
                assert_eq!(index.owner(netns, addr, port), want, "netns {netns} {addr} port {port}");
                owned += usize::from(want.is_some());
                let octets = match addr {
                    IpAddr::V4(v4) => {
                        let mut b = [0u8; 16];
                        b[..4].copy_from_slice(&v4.octets());
                        b
                    }
                    IpAddr::V6(v6) => v6.octets(),
                };
                let family = if addr.is_ipv4() { AF_INET } else { 10 };
                for cookie in [0u64, 1, 42, 43, ls[3].id.cookie, ls[ls.len() - 3].id.cookie] {
                    let key = ListenerKey { cookie, netns: netns as u32, port, family, addr: octets };
                    assert_eq!(index.find(&key), find_listener(&ls, &key), "{key:?}");
                }
            }
        }
    }
    // The set exercises every rule: some lookups find an owner, not all do.
    assert!(owned > 20 && owned < 3 * asked.len() * 5, "{owned}");
}
