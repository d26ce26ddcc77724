//! Soak test for connmon's pool tracking: 1,000,000 short connections through one agent (set
//! CONNMON_SOAK_CYCLES for another count, e.g. 200000 for a quick run), in a binary of its own so
//! that cargo runs it alone (after the other test binaries), and its global lost-event counters
//! belong to this run only. Every one of them must be counted: opens and closes exact, memory
//! bounded. Needs root.

use connmon_test_support as common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

/// The client process (does nothing in a normal run; see `common::client`).
#[test]
fn client_entry() {
    client_main()
}

const DEFAULT_CYCLES: usize = 1_000_000;
/// The slowest churn accepted: below it the run says more about the machine than the agent.
const MIN_RATE: f64 = 1_500.0;
const MIB: u64 = 1024 * 1024;

#[test]
fn survives_a_million_short_connections() {
    let cycles_wanted: usize = std::env::var("CONNMON_SOAK_CYCLES")
        .ok()
        .map(|v| v.parse().expect("CONNMON_SOAK_CYCLES: a number of connections, e.g. 200000"))
        .unwrap_or(DEFAULT_CYCLES);
    let max_secs = cycles_wanted as f64 / MIN_RATE;
    // Client and server in a namespace of their own: 200k TIME-WAIT sockets and ephemeral ports
    // stay out of the host's way. connmon watches every namespace.
    let ns = Netns::new();
    let mut server = AcceptLoop::start(&ns, SocketAddr::from(([127, 0, 0, 1], 7100)), false);
    let dst = server.addr();
    let agent = Agent::start(&[]);
    let s0 = agent.samples();
    let lost0 = lost_all(&s0);
    let rss0 = vm_rss(agent.pid());
    let progs0 = bpf_programs(agent.pid());

    let t0 = Instant::now();
    let mut c = ClientProc::spawn(
        ClientSpec::new("sk", dst, Proto::Silent, Mode::Churn { count: cycles_wanted, max_secs }).in_netns(&ns),
    );
    let p = PoolRef::of(&c, dst);
    // Once a second while the client churns: the agent's RSS, and a scrape (as Prometheus would).
    let mut rss_max = rss0;
    let mut ticks = 0;
    let cycles: usize = loop {
        if let Some(n) = c.try_expect("done", Duration::from_secs(1)) {
            break n.parse().expect("done N");
        }
        ticks += 1;
        let rss = vm_rss(agent.pid());
        rss_max = rss_max.max(rss);
        let f = p.figures(&agent.samples());
        if ticks % 10 == 0 {
            eprintln!("{:>5.1}s: agent RSS {:.1} MiB; {p} {f}", t0.elapsed().as_secs_f64(), rss as f64 / MIB as f64);
        }
        assert!(t0.elapsed() < Duration::from_secs_f64(max_secs + 60.0), "the client did not finish: {f}");
    };
    let churned = t0.elapsed();
    c.exit();
    let accepted = server.stop();
    eprintln!(
        "{cycles} cycles in {churned:?} ({:.0}/s); server accepted {accepted}",
        cycles as f64 / churned.as_secs_f64()
    );
    assert_eq!(
        cycles, cycles_wanted,
        "only {cycles} of {cycles_wanted} connections in {max_secs} s (under {MIN_RATE}/s): too slow to mean anything"
    );

    let n = cycles as f64;
    // Closes land as the last FIN handshakes finish; a close the kernel skipped (recursion
    // miss) is found by reconciliation once its socket is absent from two scans, which can take
    // until its port is no longer reused by later connections and its FIN-WAIT-2 timewait
    // stand-in is gone (net.ipv4.tcp_fin_timeout, 60 s). Give them 90 s, then judge.
    let end = deadline(90);
    let settle = Instant::now();
    let s = loop {
        let s = agent.samples();
        let f = p.figures(&s);
        if (f.opens == Some(n) && f.closes == Some(n) && f.active == Some(0.0)) || Instant::now() >= end {
            break s;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("closes settled {:?} after the client finished", settle.elapsed());
    let f = p.figures(&s);
    let lost1 = lost_all(&s);
    let rss1 = vm_rss(agent.pid());
    rss_max = rss_max.max(rss1);
    let misses = recursion_misses_delta(&progs0, &bpf_programs(agent.pid()));
    // What the kernel still has of the client's side (the client has exited: orphans), by state.
    let d = format!(":{}", dst.port());
    let mut states = std::collections::BTreeMap::new();
    for l in ns.exec_ok(&["ss", "-Htan", "dport", "=", &d]).lines() {
        *states.entry(l.split_whitespace().next().unwrap_or("?").to_string()).or_insert(0) += 1;
    }
    // The client closed every socket: what `ss` still shows as FIN-WAIT-2 is the kernel's
    // timewait stand-in for an orphaned socket (the full socket already went to CLOSE, which is
    // when connmon counts the close), like TIME-WAIT, not an open connection.
    let live_in_kernel: usize =
        states.iter().filter(|(st, _)| st.as_str() != "TIME-WAIT" && st.as_str() != "FIN-WAIT-2").map(|(_, n)| n).sum();
    eprintln!(
        "{p}: {f}\nclient sockets left in the kernel by state: {states:?}\n\
         lost before {lost0:?} after {lost1:?} ({LOST_REASONS:?})\n\
         runs of the agent's eBPF programs the kernel skipped (recursion_misses) during the run: {misses:?}\n\
         agent RSS: start {:.1} MiB, end {:.1} MiB, max {:.1} MiB",
        rss0 as f64 / MIB as f64,
        rss1 as f64 / MIB as f64,
        rss_max as f64 / MIB as f64
    );
    assert_eq!(f.attempts, Some(n), "{p}: attempts: {f}");
    assert_eq!(f.opens, Some(n), "{p}: opens: {f}");
    assert_eq!(f.connect_count, Some(n), "{p}: connect_duration _count: {f}");
    assert_eq!(f.failures_total(), 0.0, "{p}: failures: {f}");
    // Closes the probe missed (the kernel skips a program that would nest in another on the same
    // CPU) are found by reconciling with sock_diag: they count as closes, but their lifetime is
    // unknown, so the lifetime histogram lacks exactly those.
    let missed = lost(&s, "missed_close") - lost(&s0, "missed_close");
    assert_eq!(
        (f.closes, f.active, f.lifetime_count.map(|c| c + missed)),
        (Some(n), Some(live_in_kernel as f64), Some(n)),
        "{p}: after {cycles} connect/close cycles the client's sockets are all closed (kernel: {states:?}), \
         but connmon counts {:?} closes and {:?} open connections (drift), lifetime _count {:?}; \
         kernel-skipped eBPF runs during the run: {misses:?}; lost {lost0:?} -> {lost1:?}",
        f.closes,
        f.active,
        f.lifetime_count
    );
    assert_eq!(lost1, lost0, "connmon_events_lost_total moved during the run ({LOST_REASONS:?})");
    assert!(rss1 < 64 * MIB, "agent RSS {:.1} MiB at the end (limit 64 MiB)", rss1 as f64 / MIB as f64);
    assert!(
        rss1.saturating_sub(rss0) < 16 * MIB,
        "agent RSS grew by {:.1} MiB (from {:.1} MiB)",
        (rss1 - rss0) as f64 / MIB as f64,
        rss0 as f64 / MIB as f64
    );
}
