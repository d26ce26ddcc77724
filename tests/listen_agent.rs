//! Integration tests for the agent's listener metrics: `/metrics` against `ss` and `nstat`, the
//! eBPF peak and SYN-ACK probes, the exposition formats, and degraded start-ups (a probe that
//! cannot attach, no BPF capabilities). Needs root.

use connmon::export::pools::POOL_OPENS;
use connmon::export::{
    BUILD_INFO, LISTEN_DROPS, LISTEN_QUEUE_DEPTH, LISTEN_QUEUE_MAX, LISTEN_QUEUE_PEAK, LISTEN_SYNACK_RETRANS,
    LISTEN_SYN_QUEUE, NETNS_TCP_EXT, PROBE_UP,
};
use connmon_test_support as common;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use common::*;
// -------------------------------------------------------------------------------------------------
// The agent

#[test]
fn agent_metrics_match_ss_and_nstat() {
    let agent = Agent::start(&[]);
    let ns = Netns::new();
    let port = unique_port();
    let a = addr(&format!("127.0.0.1:{port}"));
    let (_listener, clients) = overflowing_listener(&ns, a, 3, 8);

    // Freeze the counters: close the clients still in SYN-SENT, so nothing retransmits SYNs into the
    // full queue any more. The agent may serve figures from its last periodic scan, so exact
    // agreement with a frozen truth is the fair test.
    let (pending, _queued): (Vec<OwnedFd>, Vec<OwnedFd>) =
        clients.into_iter().partition(|c| tcp_state(c) == TCP_SYN_SENT);
    assert_eq!(pending.len(), 4, "test setup: 8 clients, 4 fit in the accept queue");
    drop(pending);

    let ino = ns.inode().to_string();
    let port_s = port.to_string();
    let comm = self_comm();
    let labels = [("netns", ino.as_str()), ("addr", "127.0.0.1"), ("port", port_s.as_str()), ("comm", comm.as_str())];
    let overflows = [("netns", ino.as_str()), ("counter", "ListenOverflows")];
    let listen_drops = [("netns", ino.as_str()), ("counter", "ListenDrops")];

    agent.wait_metrics(deadline(30), "the listener's metrics to agree with ss and nstat", |s| {
        let ss = ss_listener(&ns, "127.0.0.1", port).expect("ss lost the listener");
        let n = nstat(&ns);
        let got = (
            sample(s, LISTEN_QUEUE_DEPTH, &labels),
            sample(s, LISTEN_DROPS, &labels),
            sample(s, NETNS_TCP_EXT, &overflows),
            sample(s, NETNS_TCP_EXT, &listen_drops),
        );
        let want = (
            Some(ss.recv_q as f64),
            Some(ss.drops as f64),
            Some(counter(&n, "TcpExtListenOverflows") as f64),
            Some(counter(&n, "TcpExtListenDrops") as f64),
        );
        if got == want {
            Ok(())
        } else {
            Err(format!("(depth, drops, overflows, listendrops) connmon {got:?}, ss/nstat {want:?}"))
        }
    });

    let ss1 = ss_listener(&ns, "127.0.0.1", port).expect("ss lost the listener");
    let n1 = nstat(&ns);
    let s = agent.samples();
    let ss2 = ss_listener(&ns, "127.0.0.1", port).expect("ss lost the listener");
    let n2 = nstat(&ns);
    assert!(ss1.drops > 0 && counter(&n1, "TcpExtListenOverflows") > 0, "test setup: no overflow happened: {ss1:?}");

    assert_eq!(ss1.recv_q, ss2.recv_q, "test setup: accept queue moved");
    assert_eq!(sample_expect(&s, LISTEN_QUEUE_DEPTH, &labels), ss1.recv_q as f64, "depth vs ss Recv-Q");
    assert_eq!(sample_expect(&s, LISTEN_QUEUE_MAX, &labels), ss1.send_q as f64, "max vs ss Send-Q");
    assert_between(
        "connmon_listen_drops_total vs ss skmem d",
        ss1.drops,
        sample_expect(&s, LISTEN_DROPS, &labels),
        ss2.drops,
    );
    for (labels, key) in [(&overflows, "TcpExtListenOverflows"), (&listen_drops, "TcpExtListenDrops")] {
        assert_between(
            &format!("connmon_netns_tcp_ext_total{labels:?} vs nstat {key}"),
            counter(&n1, key),
            sample_expect(&s, NETNS_TCP_EXT, labels),
            counter(&n2, key),
        );
    }

    let build = samples_matching(&s, BUILD_INFO, &[]);
    assert!(!build.is_empty(), "no connmon_build_info sample");
    assert!(
        build.iter().all(|b| b.label("version").is_some_and(|v| !v.is_empty())),
        "build_info without version: {build:?}"
    );
    assert_eq!(sample(&s, PROBE_UP, &[("probe", "listen_peak")]), Some(1.0), "probe_up{{probe=\"listen_peak\"}}");
}

#[test]
fn synack_retransmits_counted() {
    let agent = Agent::start(&[]);
    let ns = Netns::new();
    let port = unique_port();
    let _l = listener_with_half_open(&ns, port, 16, 6);
    wait_until(deadline(10), "ss to show 6 SYN-RECV requests", || (ss_syn_recv_count(&ns, port) == 6).then_some(()));

    let ino = ns.inode().to_string();
    let local = SYNQ_LOCAL.to_string();
    let port_s = port.to_string();
    let labels = [("netns", ino.as_str()), ("addr", local.as_str()), ("port", port_s.as_str())];
    // The kernel retransmits each SYN-ACK after ~1 s, 3 s, 7 s, ...
    let retrans = agent.wait_metrics(deadline(15), "connmon_listen_synack_retransmits_total >= 1", |s| {
        match sample(s, LISTEN_SYNACK_RETRANS, &labels) {
            Some(v) if v >= 1.0 => Ok(v),
            other => Err(format!("{other:?}")),
        }
    });
    assert!(retrans <= 6.0 * 5.0, "more SYN-ACK retransmits ({retrans}) than 6 requests x 5 retries");

    // SYN_RECV requests come from the last connection dump, made in the background within
    // --scan.budget (connmon_scan_connections_age_seconds says how old): the figure must catch up
    // with what ss shows around the scrape.
    poll_until(deadline(20), "connmon_listen_syn_queue_depth within ss state syn-recv's bracket", || {
        let c1 = ss_syn_recv_count(&ns, port);
        let s = agent.samples();
        let c2 = ss_syn_recv_count(&ns, port);
        match sample(&s, LISTEN_SYN_QUEUE, &labels) {
            Some(v) if c1.min(c2) as f64 <= v && v <= c1.max(c2) as f64 => Ok(()),
            other => Err(format!("{other:?} against ss {c1} then {c2}")),
        }
    });
}

#[test]
fn peak_depth_reaches_backlog_after_drain() {
    let agent = Agent::start(&[]);
    let ns = Netns::new();
    let port = unique_port();
    let a = addr(&format!("127.0.0.1:{port}"));
    let listener = ns.run(|| listen_tcp(a, 4));

    let ino = ns.inode().to_string();
    let port_s = port.to_string();
    let labels = [("netns", ino.as_str()), ("addr", "127.0.0.1"), ("port", port_s.as_str())];
    let ebpf_peak: Vec<(&str, &str)> = labels.iter().copied().chain([("source", "ebpf")]).collect();
    // The agent must know the listener before the burst, so that the first scrape after it reports it.
    agent.wait_metrics(deadline(30), "the listener's depth series", |s| {
        sample(s, LISTEN_QUEUE_DEPTH, &labels).ok_or("absent".to_string())
    });

    queue_burst(&ns, &listener, a, 5);

    // The burst came and went between two scrapes: only the eBPF peak saw it. Backlog 4 admits
    // 5 connections (the kernel's accept queue holds backlog + 1).
    let s = agent.samples();
    let peak = sample_expect(&s, LISTEN_QUEUE_PEAK, &ebpf_peak);
    assert!((4.0..=5.0).contains(&peak), "peak in the window is {peak}, want 4..=5 (ss saw 5 queued)");

    // The peak covers --peaks.window (1m), not the time since the previous scrape: once the
    // agent's depth shows the drained queue, a later scrape still shows the burst's peak
    // (tests/scrapes.rs checks that it leaves after its window).
    agent.wait_metrics(deadline(10), "connmon_listen_queue_depth == 0 after the drain", |s| {
        match sample(s, LISTEN_QUEUE_DEPTH, &labels) {
            Some(0.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let s = agent.samples();
    assert_eq!(sample(&s, LISTEN_QUEUE_DEPTH, &labels), Some(0.0), "depth after the drain");
    let again = sample_expect(&s, LISTEN_QUEUE_PEAK, &ebpf_peak);
    assert!((4.0..=5.0).contains(&again), "a later scrape within the window lost the peak: {again}");
}

#[test]
fn exposition_passes_promtool() {
    let agent = Agent::start(&[]);
    let ns = Netns::new();
    let port = unique_port();
    let (_l, _c) = overflowing_listener(&ns, addr(&format!("127.0.0.1:{port}")), 3, 6);
    let ino = ns.inode().to_string();
    let port_s = port.to_string();
    let labels = [("netns", ino.as_str()), ("port", port_s.as_str())];
    agent.wait_metrics(deadline(30), "the listener's depth series", |s| {
        sample(s, LISTEN_QUEUE_DEPTH, &labels).ok_or("absent".to_string())
    });

    let r = agent.request("/metrics", &[]);
    assert_eq!(r.status, 200, "GET /metrics: {}", r.body);
    let ct = r.header("content-type").unwrap_or("");
    assert!(ct.starts_with("text/plain") && ct.contains("version=0.0.4"), "default Content-Type is {ct:?}");
    let parsed = parse_metrics(&r.body);
    for family in [
        LISTEN_QUEUE_DEPTH,
        LISTEN_QUEUE_MAX,
        LISTEN_QUEUE_PEAK,
        LISTEN_DROPS,
        LISTEN_SYN_QUEUE,
        NETNS_TCP_EXT,
        BUILD_INFO,
        PROBE_UP,
    ] {
        assert!(parsed.iter().any(|s| s.name == family), "exposition has no {family} samples:\n{}", r.body);
    }

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool (Debian package prometheus)");
    promtool.stdin.take().unwrap().write_all(r.body.as_bytes()).expect("write to promtool");
    let out = promtool.wait_with_output().expect("wait for promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- exposition ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        r.body
    );

    let om = agent.request("/metrics", &[("Accept", "application/openmetrics-text; version=1.0.0")]);
    assert_eq!(om.status, 200, "GET /metrics (OpenMetrics): {}", om.body);
    let ct = om.header("content-type").unwrap_or("");
    assert!(ct.starts_with("application/openmetrics-text"), "OpenMetrics Content-Type is {ct:?}");
    assert!(
        om.body.ends_with("# EOF\n"),
        "OpenMetrics body does not end with \"# EOF\\n\": {:?}",
        &om.body[om.body.len().saturating_sub(200)..]
    );
    assert!(
        sample(&parse_metrics(&om.body), LISTEN_QUEUE_DEPTH, &labels).is_some(),
        "OpenMetrics body lacks the listener's depth:\n{}",
        om.body
    );
}

#[test]
fn agent_serves_when_a_probe_cannot_attach() {
    let empty = TempDir::new("cmtracefs");
    let agent = Agent::start(&["--tracefs", empty.path().to_str().unwrap()]);

    let s = agent.samples();
    assert_eq!(
        sample(&s, PROBE_UP, &[("probe", "synack_retransmit")]),
        Some(0.0),
        "a tracepoint probe cannot attach without tracefs format files"
    );
    assert_eq!(
        sample(&s, PROBE_UP, &[("probe", "listen_peak")]),
        Some(1.0),
        "listen_peak uses tp_btf, which needs no tracefs"
    );

    let ns = Netns::new();
    let port = unique_port();
    let a = addr(&format!("127.0.0.1:{port}"));
    let (_l, _c) = ns.run(|| {
        let l = listen_tcp(a, 8);
        let cs: Vec<OwnedFd> = (0..3).map(|_| connect_nonblocking(a)).collect();
        (l, cs)
    });
    wait_recv_q(&ns, a, 3);
    let ino = ns.inode().to_string();
    let port_s = port.to_string();
    let labels = [("netns", ino.as_str()), ("addr", "127.0.0.1"), ("port", port_s.as_str())];
    agent.wait_metrics(deadline(30), "the listener's depth == 3 (ss Recv-Q)", |s| {
        match sample(s, LISTEN_QUEUE_DEPTH, &labels) {
            Some(3.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    let (status, body) = agent.get("/healthz");
    assert_eq!((status, body.trim()), (200, "ok"), "/healthz");
}

#[test]
fn without_bpf_capabilities_listeners_still_work() {
    if !have_program("capsh") {
        eprintln!("SKIPPED without_bpf_capabilities_listeners_still_work: capsh (Debian libcap2-bin) is not installed");
        return;
    }
    let host = Netns::host();
    let listener = listen_tcp(addr("127.0.0.1:0"), 5);
    let a = local_addr(&listener);
    let _clients: Vec<OwnedFd> = (0..2).map(|_| connect_nonblocking(a)).collect();
    wait_recv_q(&host, a, 2);

    let agent = Agent::start_wrapped(&[], |argv| {
        let quoted: Vec<String> = argv.iter().map(|s| format!("'{}'", s.replace('\'', r"'\''"))).collect();
        let mut c = Command::new("capsh");
        c.args(["--drop=cap_bpf,cap_perfmon,cap_sys_admin", "--", "-c"]).arg(format!("exec {}", quoted.join(" ")));
        c
    });

    // Test setup: the agent really runs without those capabilities.
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("agent's /proc status");
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).expect("CapEff hex"))
        .expect("CapEff line");
    for (bit, name) in [(21, "CAP_SYS_ADMIN"), (38, "CAP_PERFMON"), (39, "CAP_BPF")] {
        assert_eq!(cap_eff & (1 << bit), 0, "agent still has {name} (CapEff {cap_eff:x})");
    }

    let ino = host.inode().to_string();
    let port_s = a.port().to_string();
    let labels = [("netns", ino.as_str()), ("addr", "127.0.0.1"), ("port", port_s.as_str())];
    let s = agent.wait_metrics(deadline(30), "the host listener's depth == 2 (ss Recv-Q)", |s| {
        match sample(s, LISTEN_QUEUE_DEPTH, &labels) {
            Some(2.0) => Ok(s.to_vec()),
            other => Err(format!("{other:?}")),
        }
    });

    let probes = samples_matching(&s, PROBE_UP, &[]);
    assert!(!probes.is_empty(), "no connmon_probe_up samples");
    assert!(probes.iter().all(|p| p.value == 0.0), "probes up without CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN: {probes:#?}");

    let peaks = samples_matching(&s, LISTEN_QUEUE_PEAK, &[]);
    assert!(
        peaks.iter().all(|p| p.label("source") == Some("sampled")),
        "without eBPF every peak must be source=\"sampled\": {peaks:#?}"
    );
    let ours: Vec<(&str, &str)> = labels.iter().copied().chain([("source", "sampled")]).collect();
    let peak = sample_expect(&s, LISTEN_QUEUE_PEAK, &ours);
    assert!(peak >= 2.0, "sampled peak {peak} below the depth 2 it sampled");
}

/// Once its probes are attached the agent gives up what only loading needed: no thread keeps
/// CAP_BPF, CAP_PERFMON or CAP_NET_ADMIN, while CAP_SYS_ADMIN (setns for the netns scans, which
/// `agent_metrics_match_ss_and_nstat` exercises) stays. The maps still work afterwards: a
/// connection made after the drop is counted.
#[test]
fn capabilities_dropped_after_attach() {
    let agent = Agent::start(&[]);
    agent.wait_metrics(deadline(30), "the agent to be ready", |_| {
        let (status, _) = agent.get("/readyz");
        if status == 200 {
            Ok(())
        } else {
            Err(format!("/readyz {status}"))
        }
    });
    let tasks = std::fs::read_dir(format!("/proc/{}/task", agent.pid())).expect("agent's task list");
    let mut seen = 0;
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).expect("a thread's status");
        for field in ["CapEff:", "CapPrm:"] {
            let caps = status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .map(|v| u64::from_str_radix(v.trim(), 16).expect("capability mask in hex"))
                .unwrap_or_else(|| panic!("{field} line in {status}"));
            for (bit, name) in [(12, "CAP_NET_ADMIN"), (38, "CAP_PERFMON"), (39, "CAP_BPF"), (0, "CAP_CHOWN")] {
                assert_eq!(caps & (1 << bit), 0, "thread {:?} still has {name} in {field} {caps:x}", task.file_name());
            }
            assert_ne!(caps & (1 << 21), 0, "thread {:?} lost CAP_SYS_ADMIN ({field} {caps:x})", task.file_name());
        }
        seen += 1;
    }
    assert!(seen >= 1, "no threads under /proc/{}/task", agent.pid());

    let listener = listen_tcp(addr("127.0.0.1:0"), 5);
    let a = local_addr(&listener);
    let port = a.port().to_string();
    let _client = std::net::TcpStream::connect(a).expect("connect to the test listener");
    agent.wait_metrics(deadline(30), "the connection made after the drop to be counted", |s| {
        match common::scrape::sum_of(s, POOL_OPENS, &[("dst_port", port.as_str())]) {
            Some(v) if v >= 1.0 => Ok(()),
            other => Err(format!("opens {other:?}")),
        }
    });
}
