//! The kernel smoke suite: one pass over every feature whose probe differs between kernels, with
//! real things and the kernel's own tools as the oracle. It runs here on the host kernel like any
//! integration test, and `cargo xtask matrix` runs this same binary inside Debian's 5.10, 6.1 and
//! 6.12 kernels (qemu, the host's root filesystem shared read-only), where it writes what it saw
//! to `$CONNMON_SMOKE_OUT/smoke.json` for the matrix to compare with the table of what each kernel
//! must have. Needs root.
//!
//! What it checks, on whatever probes attached:
//! - every probe's state and the program it attached through (from the agent's own log), and
//!   that start-up stays a screenful (one line per failed attach, no verifier log at info);
//! - a burst of 5 connections into a backlog-4 listener, queued and accepted between two
//!   scrapes: with `listen_peak` up the eBPF peak must see 4..=5 (the program that counts them
//!   differs per kernel: sk_data_ready, fexit or kprobe); without it the peak is sampled; with
//!   `accept_wait` up, 5 waits measured, each within the burst;
//! - an overflowing listener: depth against `ss` Recv-Q, drops against `ss` skmem d;
//! - a redis-py-like pool (real redis-server, clients speaking RESP): pool size against redis
//!   `CLIENT LIST`, and the service recognised from the bytes on the wire on a port that says
//!   nothing;
//! - a retry storm against a backlog-1 listener nobody accepts from: the pool flagged, and with
//!   `listen_peak` up the listener too.
//!
//! Where fexit carries the listener peaks (before 6.6), the peak and storm checks run again with
//! `--probes.disable queued_child_fexit`, on the kprobe row. Outside the matrix (no
//! `CONNMON_SMOKE_OUT`), the host kernel must have every probe up.

use connmon::export::pools::{POOL_CONNECTIONS, POOL_SERVICE_INFO};
use connmon::export::queues::LISTEN_QUEUE_WAIT_HIST;
use connmon::export::storms::RETRY_STORM;
use connmon::export::{LISTEN_DROPS, LISTEN_QUEUE_DEPTH, LISTEN_QUEUE_PEAK, PROBE_UP};
use connmon_test_support as common;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::pool_fixtures::local;
use common::storm_clients::*;
use common::storm_view::*;
use common::*;

/// Where the matrix wants the report (a directory shared with the host).
const OUT_ENV: &str = "CONNMON_SMOKE_OUT";

/// The pool clients' process (does nothing in a normal run; see `common::client`).
#[test]
fn client_entry() {
    client_main()
}

/// The storm client process (does nothing in a normal run; see `common::storm_clients`).
#[test]
fn storm_client_entry() {
    storm_client_main()
}

/// What the suite saw, written to `$CONNMON_SMOKE_OUT/smoke.json` even when a check fails
/// half-way (the matrix then shows how far it got, and the failure from the test's output).
struct Report {
    out: Option<PathBuf>,
    v: BTreeMap<String, Value>,
    started: Instant,
}

impl Report {
    fn new() -> Report {
        let out = std::env::var_os(OUT_ENV).map(PathBuf::from);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        let mut v = BTreeMap::new();
        v.insert("kernel".into(), json!(kernel));
        Report { out, v, started: Instant::now() }
    }

    /// A report that is only printed (for the tests the matrix does not run).
    fn printed() -> Report {
        Report { out: None, v: BTreeMap::new(), started: Instant::now() }
    }

    fn set(&mut self, key: &str, value: Value) {
        eprintln!("smoke: {key} = {value}");
        self.v.insert(key.into(), value);
        self.write();
    }

    fn write(&self) {
        let Some(dir) = &self.out else { return };
        let mut v = self.v.clone();
        v.insert("elapsed_s".into(), json!(self.started.elapsed().as_secs_f64()));
        let text = serde_json::to_string_pretty(&v).expect("report is JSON");
        std::fs::write(dir.join("smoke.json"), text).unwrap_or_else(|e| panic!("write {}: {e}", dir.display()));
    }
}

/// The agent's start-up lines about probes: (program it attached through, or the reason it did
/// not), per probe.
fn probe_states(agent: &Agent, samples: &[Sample]) -> BTreeMap<String, Value> {
    let log = agent.stderr();
    let mut out = BTreeMap::new();
    for s in samples_matching(samples, PROBE_UP, &[]) {
        let probe = s.label("probe").expect("probe label").to_string();
        let attached = format!("probe {probe} attached via ");
        let program = log
            .lines()
            .find_map(|l| l.split_once(&attached).map(|(_, rest)| rest.to_string()))
            .map(|rest| rest.split_whitespace().take(2).collect::<Vec<_>>().join(" "));
        let failed = format!("probe {probe} could not attach ");
        let failures: Vec<String> =
            log.lines().filter_map(|l| l.split_once(&failed).map(|(_, rest)| rest.to_string())).collect();
        out.insert(probe, json!({"up": s.value == 1.0, "via": program, "failed": failures}));
    }
    out
}

#[test]
fn kernel_smoke() {
    let mut report = Report::new();
    let in_matrix = report.out.is_some();
    let agent = Agent::start(&[]);
    let samples = agent.wait_metrics(deadline(60), "connmon_probe_up for every probe", |s| {
        let n = samples_matching(s, PROBE_UP, &[]).len();
        if n >= 9 {
            Ok(s.to_vec())
        } else {
            Err(format!("{n} probes"))
        }
    });
    let probes = probe_states(&agent, &samples);
    let up = |p: &str| probes.get(p).is_some_and(|v| v["up"] == json!(true));
    report.set("probes", json!(probes));
    let startup = agent.stderr();
    let lines = startup.lines().count();
    report.set("startup_log_lines", json!(lines));
    report.set("startup_log", json!(startup.lines().collect::<Vec<_>>()));
    // One line per failed attach, and a start-up that fits a screen: the verifier's log of a
    // rejected program (hundreds of lines) goes to debug level only.
    assert!(lines <= 40, "agent start-up logged {lines} lines, want a screenful (<= 40):\n{startup}");
    if !in_matrix {
        let down: Vec<&String> = probes.keys().filter(|p| !up(p)).collect();
        assert!(down.is_empty(), "probes down on the host kernel: {down:?}; agent log:\n{startup}");
    }

    peak_burst(&agent, &mut report, "peak", up("listen_peak"), up("accept_wait"));
    overflow_vs_ss(&agent, &mut report);
    redis_pool(&agent, &mut report, up("protocol"));
    storm(&agent, &mut report, "storm", up("listen_peak"));
    drop(agent);

    // Where fexit carried the listener peaks (kernels before 6.6), the kprobe row behind it must
    // work as well: the same checks with fexit turned off.
    let via = probes.get("listen_peak").and_then(|p| p["via"].as_str()).unwrap_or("");
    if via.starts_with("queued_child_fexit ") {
        let agent = Agent::start(&["--probes.disable", "queued_child_fexit"]);
        let samples = agent.samples();
        let second = probe_states(&agent, &samples);
        let peak = &second["listen_peak"];
        report.set("kprobe", peak.clone());
        assert!(
            peak["via"].as_str().unwrap_or("").starts_with("queued_child_kprobe "),
            "with queued_child_fexit disabled, listen_peak is {peak}; agent log:\n{}",
            agent.stderr()
        );
        peak_burst(&agent, &mut report, "kprobe_peak", true, false);
        storm(&agent, &mut report, "kprobe_storm", true);
    }
    report.set("passed", json!(true));
}

/// With the `sk_data_ready` rows turned off, the rows behind them on this kernel (fexit, then
/// kprobe): each row tried logs exactly one line, the probe ends up where those lines say, and
/// the peak's source follows. On the development kernel neither hook exists, so this is where
/// their failure path is tested; the matrix tests their success.
#[test]
fn listen_peak_rows_behind_sk_data_ready() {
    let agent = Agent::start(&["--probes.disable", "sk_data_ready_btf", "--probes.disable", "sk_data_ready_tp"]);
    let up = sample(&agent.samples(), PROBE_UP, &[("probe", "listen_peak")]) == Some(1.0);
    let log = agent.stderr();
    let rows: Vec<&str> = log.lines().filter(|l| l.contains("probe listen_peak")).collect();
    eprintln!("listen_peak rows:\n{}", rows.join("\n"));
    let one = |program: &str| rows.iter().filter(|l| l.contains(&format!(" {program} "))).count();
    assert_eq!((one("sk_data_ready_btf"), one("sk_data_ready_tp")), (1, 1), "one line per disabled row");
    let tried = ["queued_child_fexit", "queued_child_kprobe"];
    let attached = rows.iter().find_map(|l| l.split_once("probe listen_peak attached via ").map(|(_, r)| r));
    match attached {
        Some(via) => assert!(up && tried.iter().any(|p| via.starts_with(p)), "attached via {via}, up={up}"),
        None => {
            assert!(!up, "listen_peak is up, yet no line says through which program:\n{log}");
            for p in tried {
                assert_eq!(one(p), 1, "{p}: want one line saying why it could not attach:\n{}", rows.join("\n"));
            }
            let last = rows.last().copied().unwrap_or("");
            assert!(last.contains("WARN") && last.contains("source=\"sampled\""), "the last row's line: {last}");
        }
    }
    assert!(rows.iter().all(|l| l.contains("falling back to: ") || l.contains(" attached via ")), "{rows:#?}");
    peak_burst(&agent, &mut Report::printed(), "peak", up, false);
}

/// 5 connections into a backlog-4 listener, accepted again before the next scrape: only a probe
/// that sees each child queued can report the peak. With `wait_probe`, the 5 waits `accept_exit`
/// measured (from the kernel's own stamp of each child) must each lie within the burst.
fn peak_burst(agent: &Agent, report: &mut Report, key: &str, peak_probe: bool, wait_probe: bool) {
    let ns = Netns::new();
    let port = unique_port();
    let a = addr(&format!("127.0.0.1:{port}"));
    let listener = ns.run(|| listen_tcp(a, 4));
    let ino = ns.inode().to_string();
    let port_s = port.to_string();
    let labels = [("netns", ino.as_str()), ("addr", "127.0.0.1"), ("port", port_s.as_str())];
    agent.wait_metrics(deadline(30), "the burst listener's depth series", |s| {
        sample(s, LISTEN_QUEUE_DEPTH, &labels).ok_or("absent".to_string())
    });
    let started = Instant::now();
    queue_burst(&ns, &listener, a, 5);
    let burst = started.elapsed().as_secs_f64();
    let s = agent.samples();
    let peaks = samples_matching(&s, LISTEN_QUEUE_PEAK, &labels);
    assert_eq!(peaks.len(), 1, "one peak series for {a}: {peaks:#?}");
    let (source, peak) = (peaks[0].label("source").unwrap_or("").to_string(), peaks[0].value);
    report.set(key, json!({"source": source, "depth": peak, "ss_queued": 5}));
    if peak_probe {
        assert_eq!(source, "ebpf", "listen_peak is up, yet the peak is {source:?}");
        // Backlog 4 admits 5 (the kernel's accept queue holds backlog + 1).
        assert!((4.0..=5.0).contains(&peak), "eBPF peak {peak}, want 4..=5 (ss saw 5 queued)");
    } else {
        assert_eq!(source, "sampled", "listen_peak is down, yet the peak is {source:?}");
    }
    if wait_probe {
        let count = format!("{LISTEN_QUEUE_WAIT_HIST}_count");
        let sum = format!("{LISTEN_QUEUE_WAIT_HIST}_sum");
        let waits = agent.wait_metrics(deadline(15), "5 accept waits measured", |s| {
            let (n, total) = (sample(s, &count, &labels), sample(s, &sum, &labels));
            match total {
                Some(total) if n == Some(5.0) => Ok(total),
                _ => Err(format!("count {n:?}, sum {total:?}")),
            }
        });
        report.set(&format!("{key}_accept_wait"), json!({"measured": 5, "sum_seconds": waits, "burst_seconds": burst}));
        assert!(waits > 0.0 && waits <= 5.0 * burst, "5 waits summing {waits} s in a burst of {burst} s");
    }
}

/// Depth and drops of an overflowing listener against `ss`, with the SYN-SENT clients closed so
/// the figures hold still.
fn overflow_vs_ss(agent: &Agent, report: &mut Report) {
    let ns = Netns::new();
    let port = unique_port();
    let a = addr(&format!("127.0.0.1:{port}"));
    let (_listener, clients) = overflowing_listener(&ns, a, 3, 8);
    let (pending, _queued): (Vec<OwnedFd>, Vec<OwnedFd>) =
        clients.into_iter().partition(|c| tcp_state(c) == TCP_SYN_SENT);
    drop(pending);
    let ino = ns.inode().to_string();
    let port_s = port.to_string();
    let labels = [("netns", ino.as_str()), ("addr", "127.0.0.1"), ("port", port_s.as_str())];
    let (got, want) = agent.wait_metrics(deadline(30), "depth and drops equal to ss", |s| {
        let ss = ss_listener(&ns, "127.0.0.1", port).expect("ss lost the listener");
        let got = (sample(s, LISTEN_QUEUE_DEPTH, &labels), sample(s, LISTEN_DROPS, &labels));
        let want = (Some(ss.recv_q as f64), Some(ss.drops as f64));
        if got == want {
            Ok((got, want))
        } else {
            Err(format!("(depth, drops) connmon {got:?}, ss {want:?}"))
        }
    });
    assert!(want.1 > Some(0.0), "test setup: no drops on {a}");
    report.set(
        "listener",
        json!({"depth": got.0, "ss_recv_q": want.0, "drops": got.1, "ss_drops": want.1, "backlog": 3}),
    );
}

/// A pool of 6 RESP clients on a port that names no service: size against redis `CLIENT LIST`,
/// service from the first bytes on the wire.
fn redis_pool(agent: &Agent, report: &mut Report, protocol_probe: bool) {
    let redis = Redis::start(free_local_port(), &[]);
    let dst = redis.addr();
    let client = ClientProc::spawn(ClientSpec::new("smk", dst, Proto::Redis, Mode::Hold { count: 6 }));
    let pool = PoolRef::of(&client, dst);
    let s = agent.wait_metrics(deadline(30), "the pool's 6 connections", |s| match pool.get(s, POOL_CONNECTIONS) {
        Some(6.0) => Ok(s.to_vec()),
        other => Err(format!("{other:?}")),
    });
    let listed = redis.clients_named(&client.name);
    let got = pool.get(&s, POOL_CONNECTIONS);
    let info = service_info(&s, dst);
    let service = info.first().and_then(|i| i.label("service")).unwrap_or("").to_string();
    let by = info.first().and_then(|i| i.label("classified_by")).unwrap_or("").to_string();
    report
        .set("pool", json!({"connections": got, "redis_client_list": listed, "service": service, "classified_by": by}));
    assert_eq!(got, Some(listed as f64), "{pool}: connmon vs redis CLIENT LIST ({listed})");
    if protocol_probe {
        let s = agent.wait_metrics(deadline(20), "service redis recognised on the wire", |s| {
            let info = service_info(s, dst);
            match info.first().map(|i| (i.label("service"), i.label("classified_by"))) {
                Some((Some("redis"), Some("protocol"))) => Ok(s.to_vec()),
                other => Err(format!("{other:?}")),
            }
        });
        assert_eq!(service_info(&s, dst).len(), 1, "one {POOL_SERVICE_INFO} for {dst}");
        report.set("protocol", json!({"service": "redis", "classified_by": "protocol"}));
    } else {
        report.set("protocol", json!({"service": service, "classified_by": by}));
    }
}

/// Clients retrying with a 200 ms connect timeout into a backlog-1 listener that never accepts.
fn storm(agent: &Agent, report: &mut Report, key: &str, peak_probe: bool) {
    let ns = Netns::new();
    let port = unique_port();
    let addr = local(port);
    let _listener = ns.run(|| listen_tcp(addr, 1));
    let ino = ns.inode().to_string();
    let port_s = port.to_string();
    let mut c = StormClient::spawn("smks", addr, StormMode::ConnectTimeout { threads: 4, timeout_ms: 200 }, Some(&ns));
    let p = c.pool();
    let (took, v) = wait_storm(agent, &p, 1.0, c.started, c.started + Duration::from_secs(30));
    let labels = [("netns", ino.as_str()), ("port", port_s.as_str()), ("target", "listener")];
    let listener_storm = if peak_probe {
        agent.wait_metrics(deadline(30), &format!("{RETRY_STORM}{{target=\"listener\"}} == 1 for {addr}"), |s| {
            match sample(s, RETRY_STORM, &labels) {
                Some(1.0) => Ok(true),
                other => Err(format!("{other:?}")),
            }
        })
    } else {
        sample(&agent.samples(), RETRY_STORM, &labels) == Some(1.0)
    };
    let r = c.stop();
    report.set(
        key,
        json!({"pool": v.in_storm(), "pool_flagged_after_s": took.as_secs_f64(), "listener": listener_storm,
               "client_attempts": r.attempts}),
    );
    assert!(v.in_storm(), "{p}: not flagged: {v}");
}
