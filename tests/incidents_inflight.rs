//! The in-flight incident, replayed (seed 001, "the day Dodo IS stopped"): a server whose
//! concurrency kept growing long after the spike that started it, at a steady arrival rate,
//! because every request in flight slowed all the others (Little's law, L = λW, with W growing
//! with L). The server (tests/fixtures/inflight_server.py) accepts everything and shares its
//! capacity among the requests in flight, losing some of it to each; the clients
//! (tests/fixtures/steady_clients.py) arrive at a fixed 2/s, each on a new connection, and wait
//! for their reply however long it takes. A spike of 30 requests pushes one server past its
//! tipping point, and its open connections then grow by about 2/s with nothing completing;
//! InFlightGrowth must fire with the agent's DEFAULT settings (10m window, 80% of it covered, `for`
//! 2m: about ten minutes after the listener appears). Its healthy twin, the same server and the
//! same arrivals without the spike, keeps up and stays silent.
//!
//! The rule twin: a real Prometheus loads the shipped deploy/prometheus/connmon-rules.yml and
//! scrapes the agent every 15 s. Its InFlightGrowth has `for: 10m` over a 10m window, so it fires
//! minutes after the agent's; when the agent fires, the twin's expression must already hold for
//! the server (the alert pending or firing in Prometheus) and not for the twin.
//!
//! Truth here: `ss -tn state established` in the test's namespace (the server's open
//! connections), and the clients' own count of what they started and got back.
//! Needs Prometheus (Debian: package `prometheus`; `PROMETHEUS` overrides the binary).
//!
//! The test waits for a real ten-minute window, so `cargo xtask test` runs this binary after the
//! other test binaries, beside the steps that load no eBPF on the host (the matrix's guests,
//! fuzzing). Needs root.

use connmon_test_support as common;

use std::time::{Duration, Instant};

use common::alert_views::*;
use common::inflight::*;
use common::scrape::sum_of;
use common::*;

/// Arrivals a second, on both servers.
const RATE: f64 = 2.0;
/// Seconds after the clients start when the spike comes, and its size.
const SPIKE: (f64, u32) = (20.0, 30);
/// Requests a second the server completes with one in flight, and the concurrency at which it has
/// lost half of that: with RATE arrivals its tipping point is KNEE * (CAPACITY / RATE - 1) = 10
/// in flight, which the twin's steady arrivals never reach and the spike passes threefold.
const CAPACITY: f64 = 4.0;
const KNEE: f64 = 10.0;
/// The stated time: the window's 80% (8 min) from the listener's first sample, `for` 2m, and
/// 30 s for the agent's one-second evaluations and the clients' start.
const FIRES_WITHIN_S: f64 = 630.0;

/// Prometheus's scrape and rule evaluation interval: a common production setting.
const SCRAPE_INTERVAL: &str = "15s";

fn listener_labels<'a>(ino: &'a str, port: &'a str) -> [(&'a str, &'a str); 3] {
    [("netns", ino), ("addr", "127.0.0.1"), ("port", port)]
}

/// The clients' in-flight growth per minute over the last `secs` seconds of their counts.
fn waiting_growth_per_min(clients: &SteadyClients, secs: f64) -> f64 {
    let h = clients.history();
    let last = *h.last().expect("the clients wrote their counts");
    let first = h.iter().find(|c| c.at >= last.at - secs).copied().unwrap_or(last);
    assert!(last.at - first.at >= secs * 0.9, "the clients' counts cover {:.0}s, not {secs}s", last.at - first.at);
    (last.waiting() as f64 - first.waiting() as f64) / (last.at - first.at) * 60.0
}

#[test]
fn inflight_growth_after_a_spike_fires_with_defaults_and_the_twin_stays_silent() {
    let agent = Agent::start(&[]);
    let rules = workspace::root().join("deploy/prometheus/connmon-rules.yml");
    let config = format!(
        "{}rule_files:\n  - '{}'\n",
        scrape_config("connmon", SCRAPE_INTERVAL, &[agent.addr()]),
        rules.display()
    );
    let prom = Prometheus::start(&config);
    let ns = Netns::new();
    let ino = ns.inode().to_string();
    let (port, twin_port) = (unique_port(), unique_port());
    let (port_s, twin_s) = (port.to_string(), twin_port.to_string());
    let _server = InflightServer::start(&ns, "127.0.0.1", port, CAPACITY, KNEE);
    let _twin_server = InflightServer::start(&ns, "127.0.0.1", twin_port, CAPACITY, KNEE);
    let t0 = now_epoch();
    let clients = SteadyClients::start(&ns, "127.0.0.1", port, RATE, 900, Some(SPIKE));
    let twin = SteadyClients::start(&ns, "127.0.0.1", twin_port, RATE, 900, None);
    let spike_at = t0 + SPIKE.0;

    let alert = wait_agent_firing(
        &agent,
        Instant::now() + Duration::from_secs_f64(SPIKE.0 + FIRES_WITHIN_S + 30.0),
        INFLIGHT_GROWTH,
        &listener_labels(&ino, &port_s),
    );
    let after = epoch(alert["since"].as_str().expect("since")) - spike_at;
    eprintln!("InFlightGrowth fired {after:.0}s after the spike; annotations: {}", alert["annotations"]);
    assert!(after <= FIRES_WITHIN_S, "fired {after:.0}s after the spike, more than {FIRES_WITHIN_S}s");

    // The server really fell behind, and nobody failed: this is growth, not errors.
    let c = clients.counts().expect("the clients' counts");
    let open = ss_established_from(&ns, port);
    assert!(open >= 600, "ss shows only {open} open connections on the server after {after:.0}s; clients: {c:?}");
    assert_eq!(c.failed, 0, "the clients saw failures: {c:?}");

    // The agent's count of open connections against ss, taken on either side of a scrape. The
    // count grows by RATE a second, and comes from the agent's last connection dump, as old as
    // connmon_scan_connections_age_seconds says (dumps are paced by --scan.budget: about 10 s
    // here): so it may lag ss by RATE times that age, and a tick more.
    let before = ss_established_from(&ns, port);
    let samples = agent.samples();
    let after_scrape = ss_established_from(&ns, port);
    let mine = sum_of(&samples, "connmon_listen_established_connections", &[("netns", &ino), ("port", &port_s)])
        .expect("the listener's established series");
    let age = sum_of(&samples, "connmon_scan_connections_age_seconds", &[]).expect("the connection dump's age");
    let lag = (RATE * (age + 1.0)).ceil() as u64;
    eprintln!("established: ss {before}..{after_scrape}, agent {mine} from a dump {age:.1}s old");
    assert_between("connmon_listen_established_connections", before.saturating_sub(lag), mine, after_scrape);

    // The annotations against the clients: their arrival rate, and how fast their waiting
    // requests grew over the last five minutes of the window.
    let rate = ann_f64(&alert, "accept_rate");
    assert!((rate - RATE).abs() <= 0.1 * RATE, "accept_rate {rate}/s, the clients arrive at {RATE}/s");
    let slope = ann_f64(&alert, "slope_per_minute");
    let grew = waiting_growth_per_min(&clients, 300.0);
    assert!(
        (slope - grew).abs() <= 0.15 * grew,
        "slope_per_minute {slope}, the clients' waiting requests grew by {grew:.1}/min over the last 5 min"
    );

    // The twin kept up the whole time, and the agent never flagged it.
    let t = twin.counts().expect("the twin's counts");
    let twin_open = ss_established_from(&ns, twin_port);
    assert!(t.failed == 0 && t.waiting() < 10 && twin_open < 10, "the twin fell behind: {t:?}, {twin_open} open");
    let listed = agent_matching(
        &agent_alerts(&agent).unwrap_or_else(|e| panic!("{e}")),
        INFLIGHT_GROWTH,
        &listener_labels(&ino, &twin_s),
    );
    assert!(listed.is_empty(), "the agent lists InFlightGrowth for the healthy twin: {listed:#?}");
    let needles = [format!("netns={ino:?}"), format!("port={twin_s:?}")];
    let fired = log_lines(&agent, "firing", INFLIGHT_GROWTH, &needles);
    assert!(fired.is_empty(), "the agent fired InFlightGrowth for the healthy twin: {fired:#?}");

    // The rule twin in a real Prometheus, on the same exposition.
    let twin_rule = |p: &str| {
        let expr = format!("ALERTS{{alertname=\"{INFLIGHT_GROWTH}\",netns=\"{ino}\",port=\"{p}\"}}");
        prom.query(&expr).unwrap_or_else(|e| panic!("{e}"))
    };
    let server_rule = twin_rule(&port_s);
    let states: Vec<&str> = server_rule.iter().filter_map(|s| s.label("alertstate")).collect();
    let half = |offset: &str| {
        let expr = format!(
            "sum without (client_class) (increase(connmon_listen_accepts_total{{port=\"{port_s}\"}}[5m]{offset}))"
        );
        prom.query(&expr).map(|v| v.iter().map(|s| s.value).collect::<Vec<_>>())
    };
    eprintln!(
        "Prometheus: InFlightGrowth {states:?}; accepts in the last 5m {:?}, in the 5m before {:?}",
        half(""),
        half(" offset 5m")
    );
    assert!(
        states.iter().any(|s| *s == "pending" || *s == "firing"),
        "when the agent fired, Prometheus's InFlightGrowth (deploy/prometheus/connmon-rules.yml) did not hold for the server: {server_rule:?}"
    );
    let twin_listed = twin_rule(&twin_s);
    assert!(twin_listed.is_empty(), "Prometheus's InFlightGrowth holds for the healthy twin: {twin_listed:?}");
}
