//! The series budget (`--series.budget`, monitor/src/export/budget.rs) against what reads the
//! exposition: a real agent on a host with more listeners and pools than its budget holds.
//!
//! The load (this process, loopback): 60 quiet listeners with one client connection each, a
//! listener whose accept queue fills (nobody accepts), and a pool whose connects are all refused.
//! One agent runs with the budget off, then one with half the series the first exported. The
//! reduced exposition must:
//! - stay within its budget and say what it left out (`connmon_series_left_out`);
//! - keep full detail for what matters now (the refused pool's failure reasons and histograms,
//!   the queued listener's queue figures) and the rules' inputs for the quiet ones;
//! - for every metric a Prometheus rule (deploy/prometheus/connmon-rules.yml) or a dashboard panel
//!   (deploy/grafana/connmon.json) reads, have series whenever the full one had, with the same label
//!   names, so every selector, `by (...)` and join still finds what it needs.
//!
//! The agent's own alerts read the model, not the exposition, so the budget cannot starve them.
//! Needs root (the agent loads eBPF programs); run under the host-wide test lock.

use connmon_test_support as common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::grafana::{exprs, label_values_selector, variable_query, variables};
use common::metrics::{parse_metrics, Sample};
use common::promql::metric_uses;
use common::workspace::read;
use common::*;

const RULES: &str = "deploy/prometheus/connmon-rules.yml";
const DASHBOARD: &str = "deploy/grafana/connmon.json";

/// `connmon_...` names in a text (the rules file: expressions and templates).
fn names_in(text: &str) -> BTreeSet<String> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("connmon_") {
        if text[..i].chars().next_back().is_some_and(is_name_char) {
            continue;
        }
        let end = text[i..].find(|c: char| !is_name_char(c)).map_or(text.len(), |e| i + e);
        names.insert(text[i..end].to_string());
    }
    names
}

/// Metric names the rules and the dashboard read.
fn read_by_rules_and_panels() -> BTreeSet<String> {
    let mut names = names_in(&read(RULES));
    let dash: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard JSON");
    for (_, e) in exprs(&dash) {
        names.extend(metric_uses(&e).into_iter().map(|u| u.metric));
    }
    for v in variables(&dash) {
        if let Some(sel) = variable_query(v).and_then(label_values_selector) {
            names.extend(metric_uses(sel).into_iter().map(|u| u.metric));
        }
    }
    names
}

/// Metric name -> the label names its series carry.
/// Per metric, the distinct sets of label names its series carry (a metric such as
/// `connmon_retry_storm` has one shape for pools and another for listeners).
fn label_names(samples: &[Sample]) -> BTreeMap<String, BTreeSet<BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeSet<BTreeSet<String>>> = BTreeMap::new();
    for s in samples {
        out.entry(s.name.clone()).or_default().insert(s.labels.keys().cloned().collect());
    }
    out
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples.iter().find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v))).map(|s| s.value)
}

/// The load: quiet listeners with a client each, a listener whose queue fills, a refused pool.
struct Load {
    _listeners: Vec<TcpListener>,
    _clients: Vec<TcpStream>,
    queued: SocketAddr,
    refused: SocketAddr,
    stop: Arc<AtomicBool>,
    refuser: Option<thread::JoinHandle<()>>,
}

impl Load {
    fn start(quiet: usize) -> Load {
        let mut listeners = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..quiet {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            clients.push(TcpStream::connect(l.local_addr().unwrap()).unwrap());
            // Accepted and kept: an established connection on each side.
            clients.push(l.accept().unwrap().0);
            listeners.push(l);
        }
        // Never accepted: 3 connections wait in its queue.
        let q = TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: listen(2) on a socket we own, with a small backlog.
        unsafe { libc::listen(q.as_raw_fd(), 8) };
        let queued = q.local_addr().unwrap();
        for _ in 0..3 {
            clients.push(TcpStream::connect(queued).unwrap());
        }
        listeners.push(q);
        // Bound, not listening: connects are refused.
        let refused = {
            // A port that was free a moment ago; nothing listens on it (the kernel answers RST).
            let probe = TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let refuser = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let _ = TcpStream::connect_timeout(&refused, Duration::from_secs(1));
                thread::sleep(Duration::from_millis(200));
            }
        });
        Load { _listeners: listeners, _clients: clients, queued, refused, stop, refuser: Some(refuser) }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.refuser.take() {
            let _ = t.join();
        }
    }
}

/// Scrapes until the refused pool has counted failures and the queued listener its queue.
fn settled(agent: &Agent, load: &Load) -> Vec<Sample> {
    let port = load.refused.port().to_string();
    let qport = load.queued.port().to_string();
    agent.wait_metrics(deadline(60), "refused connects and a queued listener", |s| {
        let refused = value(s, "connmon_pool_connect_failures_total", &[("dst_port", &port), ("reason", "refused")]);
        let depth = value(s, "connmon_listen_queue_depth", &[("port", &qport)]);
        // The storm detector's view of the refused pool (detail only) needs a window of attempts:
        // until then neither agent has it, and the rules-and-panels check below would compare
        // one agent's early scrape with the other's later one.
        let bad = value(s, "connmon_pool_bad_attempt_ratio", &[("dst_port", &port)]);
        match (refused, depth, bad) {
            (Some(r), Some(d), Some(_)) if r >= 2.0 && d >= 3.0 => Ok(s.to_vec()),
            got => Err(format!("refused, depth, bad attempt ratio = {got:?}")),
        }
    })
}

#[test]
fn a_reduced_exposition_keeps_what_rules_and_panels_read() {
    let load = Load::start(60);
    let full = {
        let agent = Agent::start(&["--series.budget", "0"]);
        settled(&agent, &load)
    };
    let budget = full.len() / 2;
    let agent = Agent::start(&["--series.budget", &budget.to_string()]);
    let reduced = settled(&agent, &load);
    let text = agent.metrics();
    let reduced_now = parse_metrics(&text);

    // Within the budget, and says so.
    assert!(
        reduced_now.len() <= budget,
        "{} series over a budget of {budget} ({} without)",
        reduced_now.len(),
        full.len()
    );
    assert_eq!(value(&reduced_now, "connmon_series_budget", &[]), Some(budget as f64));
    let left = |kind: &str, level: &str| {
        value(&reduced_now, "connmon_series_left_out", &[("kind", kind), ("level", level)]).unwrap_or(-1.0)
    };
    assert!(
        left("listener", "detail") + left("pool", "detail") > 0.0,
        "half the series and nothing summarised? listener {} pool {}",
        left("listener", "detail"),
        left("pool", "detail")
    );
    assert_eq!(value(&full, "connmon_series_left_out", &[("kind", "pool"), ("level", "detail")]), Some(0.0));

    // What matters now keeps its detail.
    let rport = load.refused.port().to_string();
    let qport = load.queued.port().to_string();
    for (name, labels) in [
        ("connmon_pool_connect_failures_total", vec![("dst_port", rport.as_str()), ("reason", "timeout")]),
        ("connmon_pool_connect_duration_seconds_count", vec![("dst_port", rport.as_str())]),
        ("connmon_pool_resets_total", vec![("dst_port", rport.as_str()), ("direction", "received")]),
        ("connmon_listen_queue_fill_ratio", vec![("port", qport.as_str())]),
        ("connmon_listen_queue_peak_depth", vec![("port", qport.as_str())]),
        ("connmon_listen_syn_queue_depth", vec![("port", qport.as_str())]),
    ] {
        assert!(value(&reduced_now, name, &labels).is_some(), "{name}{labels:?} missing from the reduced exposition");
    }

    // Every metric the rules and panels read: series whenever the full exposition had them, with
    // the same label names.
    let (full_labels, reduced_labels) = (label_names(&full), label_names(&reduced));
    let mut checked = 0;
    for name in read_by_rules_and_panels() {
        let Some(want) = full_labels.get(&name) else { continue };
        checked += 1;
        let got = reduced_labels.get(&name).unwrap_or_else(|| {
            panic!(
                "{name} is read by a rule or panel and was exported without a budget, but not within {budget} series"
            )
        });
        // A summary never drops or renames a label: no shape within the budget is a strict part
        // of a shape without it. (Not equality: a shape that comes and goes with the state, such
        // as a pool's retry-storm flag while the refused pool storms, may be in one run only.)
        for g in got {
            let lost = want.iter().find(|w| g.is_subset(w) && g != *w);
            assert!(lost.is_none(), "{name}: {g:?} within the budget, {lost:?} without it");
        }
    }
    assert!(checked >= 25, "only {checked} metrics of the rules and panels were exported at all");

    // Quiet pools and listeners keep the rules' inputs: a pool's open connections and opens, a
    // listener's queue, backlog, drops and established count.
    let shown_quiet = reduced_now
        .iter()
        .filter(|s| {
            s.name == "connmon_pool_connections" && s.label("comm").is_some_and(|c| c.starts_with("series_budget"))
        })
        .count();
    assert!(shown_quiet > 0, "no pool of this test shown at all");
    for s in reduced_now.iter().filter(|s| s.name == "connmon_listen_queue_depth") {
        let id: Vec<(&str, &str)> = ["netns", "addr", "port"].iter().map(|k| (*k, s.label(k).unwrap_or(""))).collect();
        for name in ["connmon_listen_queue_max", "connmon_listen_drops_total", "connmon_listen_established_connections"]
        {
            assert!(value(&reduced_now, name, &id).is_some(), "{name}{id:?}: a listener shown without a rule input");
        }
    }
}
