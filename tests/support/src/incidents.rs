//! The incident suite's checks (tests/incidents_pools.rs): alert and series names, the 30 s
//! bound, waiting for DestinationSaturated while a bounded twin is watched, and the comparisons of
//! the destination's figures with `ss`, `connmon destinations` and what the client library raised.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::alert_views::*;
use super::py_client::PyClient;
use super::scrape::{scrape_until, sum_of};
use super::*;

pub use connmon::export::destinations::{DEST_CEILING, DEST_CONNECTIONS, DEST_PENDING, DEST_REJECTIONS};
pub use connmon::export::pools::POOL_PENDING;
pub use connmon::export::storms::RETRY_STORM;
pub const DESTINATION_SATURATED: &str = connmon::alerts::Alert::DestinationSaturated.name();
pub const DEPENDENCY_FAILING: &str = connmon::alerts::Alert::DependencyFailing.name();
pub const NEAR_CEILING: &str = connmon::alerts::Alert::NearCeiling.name();

pub const REDIS_MAXCLIENTS: &str = "max number of clients reached";
pub const PG_TOO_MANY: &str = "too many clients";

/// The bound the issue sets: an alert within 30 s.
pub const BOUND_SECS: f64 = 30.0;

pub fn dest_labels<'a>(service: &'a str, port: &'a str) -> [(&'a str, &'a str); 3] {
    [("service", service), ("dst_addr", "127.0.0.1"), ("dst_port", port)]
}

/// An Instant for a Unix time.
pub fn instant_at(unix: f64) -> Instant {
    let d = unix - now_epoch();
    if d >= 0.0 {
        Instant::now() + Duration::from_secs_f64(d)
    } else {
        Instant::now()
    }
}

/// Established TCP connections to 127.0.0.1:`port` in the host namespace, client ends only.
pub fn ss_established_to(port: u16) -> usize {
    let out = run_ok(std::process::Command::new("ss").args([
        "-Htn",
        "state",
        "established",
        &format!("( dport = :{port} )"),
    ]));
    out.lines().filter(|l| !l.trim().is_empty()).count()
}

/// Alerts of `alertname` for destination port `port` in the agent's list, any state.
pub fn agent_alerts_for(agent: &Agent, alertname: &str, port: &str) -> Vec<Value> {
    let list = agent_alerts(agent).unwrap_or_else(|e| panic!("{e}"));
    agent_matching(&list, alertname, &[("dst_port", port)])
}

/// Asserts that neither destination alert is pending or firing for `port`, nor a retry storm for
/// the pool of `comm`.
pub fn assert_silent(agent: &Agent, port: &str, comm: &str, when: &str) {
    for name in [DESTINATION_SATURATED, DEPENDENCY_FAILING] {
        let mine = agent_alerts_for(agent, name, port);
        assert!(mine.is_empty(), "{when}: the agent lists {name} for the healthy twin on port {port}: {mine:#?}");
    }
    let s = agent.samples();
    let storm = sum_of(&s, RETRY_STORM, &[("comm", comm), ("target", "pool")]).unwrap_or(0.0);
    assert_eq!(storm, 0.0, "{when}: the twin {comm} is flagged as a retry storm");
}

/// The saturation incident for one server kind: `bad` (unbounded) against `port`, `twin`
/// (bounded) against `twin_port`; returns (seconds from the first rejection to firing, the alert).
pub fn saturation(
    agent: &Agent,
    service: &str,
    bad: &mut PyClient,
    port: u16,
    error: &str,
    twin: &PyClient,
    twin_port: u16,
) -> (f64, Value) {
    let port_s = port.to_string();
    let twin_s = twin_port.to_string();
    let labels = dest_labels(service, &port_s);
    let first = bad.wait_first_error(error, Duration::from_secs(60));
    eprintln!(
        "{service}: {} saw its first {error:?} at +{:.1}s after it started",
        bad.name,
        first - (now_epoch() - bad.started.elapsed().as_secs_f64())
    );
    // Watch the twin every second while waiting for the alert.
    let fired = poll_every(
        Duration::from_secs(1),
        instant_at(first + BOUND_SECS + 10.0),
        &format!("{DESTINATION_SATURATED} for {service} on port {port}"),
        || {
            assert_silent(agent, &twin_s, &twin.name, "while the unbounded pool is rejected");
            let mine = agent_alerts_for(agent, DESTINATION_SATURATED, &port_s);
            match mine.as_slice() {
                [a] if a["state"] == "firing" => Ok(a.clone()),
                _ => {
                    let s = agent.samples();
                    let dest: Vec<String> = s
                        .iter()
                        .filter(|x| {
                            x.name.starts_with("connmon_destination_") && x.label("dst_port") == Some(port_s.as_str())
                        })
                        .map(|x| {
                            format!(
                                "{}{{{},{}}}={}",
                                x.name,
                                x.label("service").unwrap_or(""),
                                x.label("how").unwrap_or(""),
                                x.value
                            )
                        })
                        .collect();
                    Err(format!("{mine:?}; destination: {dest:?}; client: {:?}", bad.latest()))
                }
            }
        },
    );
    let since = epoch(fired["since"].as_str().expect("since"));
    let took = since - first;
    eprintln!("{service}: {DESTINATION_SATURATED} fired {took:.1}s after the first {error:?}: {fired}");
    for (k, v) in labels {
        assert_eq!(fired["labels"][k].as_str(), Some(v), "label {k}: {fired}");
    }
    assert!(
        took <= BOUND_SECS,
        "{service}: {DESTINATION_SATURATED} fired {took:.1}s after the first rejection, want <= {BOUND_SECS}s: {fired}"
    );
    assert!(took >= -1.0, "{service}: fired {took:.1}s before the client saw a rejection: {fired}");
    (took, fired)
}

/// Checks the saturation annotations and series against ss and the client.
/// After the unbounded client stopped: every error its client library raised was one rejected
/// connection. Redis hangs up (or resets) before redis-py closes, so its pool's died-young and
/// failed connects add up to exactly that. libpq closes as soon as it has read "too many
/// clients", often before the server's FIN is in; when even the server's FIN answers the
/// client's, TCP shows an ordinary client close, indistinguishable from a successful short query:
/// there, `exact` is false and connmon must count at least a tenth of them (what
/// DestinationSaturated's `min_ratio` relies on) and never more. Measured: 24% to 88%.
pub fn check_rejections_counted(agent: &Agent, service: &str, bad: &mut PyClient, exact: bool) {
    let last = bad.stop();
    let raised: u64 = last["errors"].as_object().expect("errors").values().filter_map(Value::as_u64).sum();
    let comm = [("comm", bad.name.as_str())];
    let counted = scrape_until(
        agent,
        deadline(20),
        &format!("{}'s rejections counted as its client library raised them ({raised})", bad.name),
        |s| {
            let young = sum_of(s, connmon::export::pools::POOL_DIED_YOUNG, &comm).unwrap_or(0.0);
            let failed = sum_of(s, connmon::export::pools::POOL_FAILURES, &comm).unwrap_or(0.0);
            let n = young + failed;
            if n == raised as f64 || (!exact && n <= raised as f64 && n >= raised as f64 / 10.0) {
                Ok((young, failed))
            } else {
                Err(format!("died young {young} + failed connects {failed}"))
            }
        },
    );
    eprintln!(
        "{service}: {} raised {raised} errors ({}); connmon counted {} died young + {} failed connects ({:.0}%)",
        bad.name,
        last["errors"],
        counted.0,
        counted.1,
        (counted.0 + counted.1) * 100.0 / raised.max(1) as f64
    );
}

pub fn check_saturated(agent: &Agent, service: &str, fired: &Value, bad: &PyClient, port: u16, limit: f64) {
    let port_s = port.to_string();
    let labels = dest_labels(service, &port_s);
    let ceiling = ann_f64(fired, "ceiling_observed");
    assert!(
        (ceiling - limit).abs() <= 1.0,
        "{service}: learned ceiling {ceiling}, the server's limit is {limit}: {fired}"
    );
    let rate = ann_f64(fired, "rejection_rate");
    // The client is turned away about 4 times a second. TCP shows all of redis-py's rejections,
    // but only a part of libpq's (see check_rejections_counted), down to a tenth.
    let least = if service == "redis" { 1.0 } else { 0.4 };
    assert!(
        (least..=12.0).contains(&rate),
        "{service}: rejection_rate {rate}/s, the client is rejected about 4 times a second: {fired}"
    );
    let top = ann(fired, "top_workloads");
    assert!(top.contains(bad.cgroup()), "{service}: top_workloads {top:?} lacks {}: {fired}", bad.cgroup());
    // The destination's series against ss (bracketed: ss, agent, ss).
    let (before, s, after) =
        poll_until(deadline(20), &format!("{DEST_CONNECTIONS} for port {port} within ss's bracket"), || {
            let before = ss_established_to(port);
            let s = agent.samples();
            let after = ss_established_to(port);
            let v = sample(&s, DEST_CONNECTIONS, &labels).unwrap_or(-1.0);
            if before == after && v == before as f64 {
                Ok((before, s, after))
            } else {
                Err(format!("ss {before}..{after}, agent {v}"))
            }
        });
    eprintln!(
        "{service}: {DEST_CONNECTIONS} = {before} = ss ({after}); learned ceiling {ceiling}, server limit {limit}"
    );
    assert_eq!(sample(&s, DEST_CEILING, &labels), Some(ceiling), "{DEST_CEILING} vs the annotation");
    // The CLI's one-shot view of the same destination, against ss.
    let (lo, rows, hi) =
        (ss_established_to(port), parse_json_lines(&connmon_ok(&["destinations", "--json"])), ss_established_to(port));
    // A one-shot scan has no protocol probe: a non-standard port is classed by port (other).
    let row = rows
        .iter()
        .find(|r| r["dst_port"] == port)
        .unwrap_or_else(|| panic!("connmon destinations has no row for port {port}: {rows:#?}"));
    let n = row["connections"].as_i64().expect("connections") as usize;
    assert!(
        lo.min(hi) <= n && n <= lo.max(hi),
        "connmon destinations says {n} connections to port {port}, ss {lo}..{hi}: {row}"
    );
    let rejected = sum_of(&s, DEST_REJECTIONS, &labels).unwrap_or(0.0);
    assert!(rejected >= 3.0, "{service}: {DEST_REJECTIONS} {rejected}");
}

// -------------------------------------------------------------------------------------------------
