//! Integration tests for `connmon listeners` (the one-shot scan) and the agent's start-up
//! errors and namespace churn. Each test builds real kernel state in a network namespace of its
//! own (listeners, clients that overflow the accept queue, half-open requests from raw SYNs), then
//! compares what connmon reports with what the kernel's own tools (`ss`, `nstat`) report. Needs root.
//!
//! Counters keep moving while clients retransmit, so comparisons with a moving truth are
//! bracketed: oracle reading, connmon reading, oracle reading; connmon's value must lie between.

use connmon_test_support as common;

use std::os::fd::OwnedFd;
use std::process::Command;
use std::time::Duration;

use common::*;
// -------------------------------------------------------------------------------------------------
// One-shot `connmon listeners`

#[test]
fn listeners_match_ss() {
    let ns = Netns::new();
    let (p, q) = (unique_port(), unique_port());
    let a4 = addr(&format!("127.0.0.1:{p}"));
    let a6 = addr(&format!("[::1]:{q}"));
    let (_l4, _c4) = overflowing_listener(&ns, a4, 3, 8);
    let (_l6, _c6) = overflowing_listener(&ns, a6, 2, 8);

    let before = ss_listeners(&ns);
    let rows = connmon_listeners_json(&["--netns", ns.name()]);
    let after = ss_listeners(&ns);

    let ino = ns.inode();
    let pid = u64::from(std::process::id());
    let comm = self_comm();
    for row in &rows {
        assert_eq!(row["netns"].as_u64(), Some(ino), "--netns {} let through another namespace: {row}", ns.name());
    }
    assert_eq!(rows.len(), 2, "namespace {} has exactly two listeners; connmon listed {rows:#?}", ns.name());

    for (ip, port, backlog, family) in [("127.0.0.1", p, 3u64, "ipv4"), ("::1", q, 2, "ipv6")] {
        let b = pick_listener(&before, ip, port).unwrap_or_else(|| panic!("ss lost {ip}:{port}: {before:?}"));
        let a = pick_listener(&after, ip, port).unwrap_or_else(|| panic!("ss lost {ip}:{port}: {after:?}"));
        assert_eq!((b.recv_q, b.send_q), (backlog + 1, backlog), "test setup: ss {b:?}");
        assert_eq!((a.recv_q, a.send_q), (b.recv_q, b.send_q), "test setup: queue moved during the bracket");
        let row = find_row(&rows, ino, ip, port);
        let ctx = format!("{ip}:{port} row {row}; ss before {b:?}, after {a:?}");

        assert_eq!(json_str(row, "family"), family, "{ctx}");
        assert_eq!(row["netns_name"].as_str(), Some(ns.name()), "netns_name: {ctx}");
        assert_eq!(json_u64(row, "depth"), b.recv_q, "depth vs ss Recv-Q: {ctx}");
        assert_eq!(json_u64(row, "backlog"), b.send_q, "backlog vs ss Send-Q: {ctx}");
        assert_between(&format!("drops vs ss skmem d: {ctx}"), b.drops, json_u64(row, "drops") as f64, a.drops);
        assert_eq!(json_u64(row, "syn_queue"), 0, "syn_queue: {ctx}");
        let fill = json_f64(row, "fill");
        let want = b.recv_q as f64 / b.send_q as f64;
        assert!((fill - want).abs() < 1e-9, "fill {fill} != depth/backlog {want}: {ctx}");
        assert_eq!(row["pid"].as_u64(), Some(pid), "pid (the test process holds the socket): {ctx}");
        assert_eq!(row["comm"].as_str(), Some(comm.as_str()), "comm: {ctx}");
        if let Some(cg) = row["cgroup"].as_str() {
            assert_eq!(Some(cg.to_string()), self_cgroup(), "cgroup: {ctx}");
        }
        let peak_source = json_str(row, "peak_source");
        assert!(["ebpf", "sampled"].contains(&peak_source), "peak_source: {ctx}");
        assert!(json_u64(row, "peak_depth") >= json_u64(row, "depth"), "peak_depth < depth: {ctx}");
    }

    let table = connmon_ok(&["listeners", "--netns", ns.name()]);
    for port in [p, q] {
        assert!(contains_number(&table, port.into()), "table output lacks port {port}:\n{table}");
    }
}

#[test]
fn syn_queue_matches_ss() {
    let ns = Netns::new();
    let port = unique_port();
    let _l = listener_with_half_open(&ns, port, 16, 6);
    wait_until(deadline(10), "ss to show 6 SYN-RECV requests", || (ss_syn_recv_count(&ns, port) == 6).then_some(()));

    let before = ss_syn_recv_count(&ns, port);
    let rows = connmon_listeners_json(&["--netns", ns.name()]);
    let after = ss_syn_recv_count(&ns, port);
    // Requests live ~63 s (5 SYN-ACK retransmits), so the count is stable here.
    assert_eq!((before, after), (6, 6), "test setup: SYN-RECV count moved");

    let row = find_row(&rows, ns.inode(), &SYNQ_LOCAL.to_string(), port);
    assert_eq!(json_u64(row, "syn_queue"), 6, "syn_queue vs ss state syn-recv: {row}");
    assert_eq!(json_u64(row, "depth"), 0, "half-open requests are not in the accept queue: {row}");
    assert_eq!(json_u64(row, "backlog"), 16, "{row}");
}

#[test]
fn bad_listen_address_is_one_line() {
    let mut cmd = Command::new(connmon_bin());
    cmd.args(["run", "--web.listen-address", "nonsense:abc"]).env_remove("RUST_LOG").env_remove("RUST_BACKTRACE");
    let out = run_with_timeout(&mut cmd, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "connmon run with a bad listen address exited 0; stderr:\n{stderr}");
    assert!(stderr.contains("nonsense:abc"), "stderr does not name the address:\n{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("stack backtrace"), "stderr shows a panic:\n{stderr}");
    let lines = stderr.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(lines <= 2, "stderr has {lines} lines, want at most 2:\n{stderr}");
}

#[test]
fn scan_survives_vanishing_namespaces() {
    const N: usize = 15;
    const RUNS: usize = 5;
    let namespaces: Vec<(Netns, OwnedFd, u16)> = (0..N)
        .map(|_| {
            let ns = Netns::new();
            let port = unique_port();
            let l = ns.run(|| listen_tcp(addr(&format!("127.0.0.1:{port}")), 8));
            (ns, l, port)
        })
        .collect();
    let ids: Vec<(u64, u16)> = namespaces.iter().map(|(ns, _, p)| (ns.inode(), *p)).collect();

    // Before the deletions every namespace is found, by name (it is in /run/netns).
    let rows = connmon_listeners_json(&[]);
    for (ns, _, port) in &namespaces {
        let row = find_row(&rows, ns.inode(), "127.0.0.1", *port);
        assert_eq!(row["netns_name"].as_str(), Some(ns.name()), "{row}");
    }

    // Each run starts together with the deletion of the next N/RUNS namespaces. Even-numbered ones
    // lose their socket too, so the namespace itself is destroyed; odd ones stay alive, unnamed,
    // held only by the test's socket.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let kept = std::thread::scope(|s| {
        let deleter = s.spawn(move || {
            let mut kept = Vec::new();
            let mut it = namespaces.into_iter().enumerate();
            while rx.recv().is_ok() {
                for (i, (mut ns, sock, _)) in it.by_ref().take(N / RUNS) {
                    ns.delete();
                    if i % 2 == 1 {
                        kept.push(sock);
                    }
                }
            }
            kept.extend(it.map(|(_, (_, sock, _))| sock));
            kept
        });
        for run in 0..RUNS {
            tx.send(()).expect("deleter thread is gone");
            let out = connmon(&["listeners", "--json"]);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "run {run}: connmon listeners --json failed with {} while namespaces vanished\nstderr:\n{}\nstdout:\n{stdout}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            for row in parse_json_lines(&stdout) {
                for key in ["netns", "port", "depth", "backlog"] {
                    assert!(row[key].is_u64(), "run {run}: {key} missing in {row}");
                }
            }
        }
        drop(tx);
        deleter.join().expect("deleter thread panicked")
    });

    // Gone by name (and, for half of them, destroyed): no later scan lists them.
    let rows = connmon_listeners_json(&[]);
    for (ino, port) in &ids {
        assert!(
            !rows.iter().any(|r| r["netns"].as_u64() == Some(*ino) && r["port"].as_u64() == Some(u64::from(*port))),
            "deleted namespace {ino} (port {port}) still listed"
        );
    }
    drop(kept);
}

// -------------------------------------------------------------------------------------------------
// The harness itself (no agent needed): the oracles and recipes the tests above rely on.

#[test]
fn harness_raw_syns_fill_the_syn_queue() {
    let ns = Netns::new();
    let port = unique_port();
    let _l = listener_with_half_open(&ns, port, 16, 6);
    wait_until(deadline(10), "ss to show 6 SYN-RECV requests", || (ss_syn_recv_count(&ns, port) == 6).then_some(()));
    let l = ss_listener(&ns, &SYNQ_LOCAL.to_string(), port).expect("ss shows the listener");
    assert_eq!((l.recv_q, l.send_q), (0, 16), "{l:?}");
}

#[test]
fn harness_overflow_matches_nstat() {
    let ns = Netns::new();
    let port = unique_port();
    let (_l, clients) = overflowing_listener(&ns, addr(&format!("127.0.0.1:{port}")), 3, 8);
    let pending: Vec<OwnedFd> = clients.into_iter().filter(|c| tcp_state(c) == TCP_SYN_SENT).collect();
    assert_eq!(pending.len(), 4);
    drop(pending);
    let ss = ss_listener(&ns, "127.0.0.1", port).expect("listener");
    let n = nstat(&ns);
    // Only this listener lives in the namespace: its drops are the namespace's listen drops.
    assert_eq!(ss.drops, counter(&n, "TcpExtListenDrops"), "ss {ss:?}");
    assert_eq!(counter(&n, "TcpExtListenOverflows"), counter(&n, "TcpExtListenDrops"));
    assert_eq!(nstat_counter(&ns, "TcpExtListenOverflows"), counter(&n, "TcpExtListenOverflows"));
}
