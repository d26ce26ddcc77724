//! The agent's alerts as the alert tests read them: its /api/v1/alerts list, the
//! `connmon_alert_active` series, its `alert=firing|resolved` log lines, and the annotations it
//! attaches (checked against what the leaking client did). Alerts are picked by the test's own
//! labels (its client's comm, its listener's netns and port), since every agent sees every pool and
//! listener on the host; Alertmanager's side is in [`super::alertmanager`].

use std::process::Command;
use std::time::Instant;

use serde_json::Value;

use super::agent_log::{lines_with, wait_log_line};
use super::alertmanager::get_alert_list;
use super::scrape::sum_of;
use super::{poll_until, Agent, Sample};

pub use connmon::alerts::Alert;
pub const POOL_GROWTH: &str = Alert::PoolGrowth.name();
pub const QUEUE_SATURATED: &str = Alert::QueueSaturated.name();
pub const LISTEN_OVERFLOW: &str = Alert::ListenOverflow.name();
pub const INFLIGHT_GROWTH: &str = Alert::InflightGrowth.name();
pub use connmon::export::{ALERTS_FIRED, ALERT_ACTIVE};

/// The agent's GET /api/v1/alerts.
pub fn agent_alerts(agent: &Agent) -> Result<Vec<Value>, String> {
    get_alert_list(agent.addr(), "/api/v1/alerts")
}

/// Alerts in the agent's format (alertname beside the labels) named `alertname` with `labels`.
pub fn agent_matching(list: &[Value], alertname: &str, labels: &[(&str, &str)]) -> Vec<Value> {
    list.iter()
        .filter(|a| {
            a["alertname"].as_str() == Some(alertname)
                && labels.iter().all(|(k, v)| a["labels"][*k].as_str() == Some(*v))
        })
        .cloned()
        .collect()
}

/// The rows of `connmon alerts --json` (labels are top-level fields there) named `alertname` with
/// every one of `labels`.
pub fn cli_matching(list: &[Value], alertname: &str, labels: &[(&str, &str)]) -> Vec<Value> {
    list.iter()
        .filter(|a| {
            a["alertname"].as_str() == Some(alertname) && labels.iter().all(|(k, v)| a[*k].as_str() == Some(*v))
        })
        .cloned()
        .collect()
}

/// Waits until the agent lists exactly one alert `alertname{labels}` in state "firing".
pub fn wait_agent_firing(agent: &Agent, within: Instant, alertname: &str, labels: &[(&str, &str)]) -> Value {
    poll_until(within, &format!("agent /api/v1/alerts to list {alertname}{labels:?} firing"), || {
        let list = agent_alerts(agent)?;
        let mine = agent_matching(&list, alertname, labels);
        match mine.as_slice() {
            [a] if a["state"] == "firing" => Ok(a.clone()),
            _ => Err(format!("matching: {mine:?}; all: {}", summarize(&list))),
        }
    })
}

/// alertname + state + comm/port of each alert, for timeout messages.
pub fn summarize(list: &[Value]) -> String {
    let v: Vec<String> = list
        .iter()
        .map(|a| {
            format!("{}:{}:{}", a["alertname"].as_str().unwrap_or("?"), a["state"].as_str().unwrap_or("?"), a["labels"])
        })
        .collect();
    format!("{v:?}")
}

/// Sum of connmon_alert_active{alertname, labels} (0 when absent).
pub fn alert_active(samples: &[Sample], alertname: &str, labels: &[(&str, &str)]) -> f64 {
    let mut l = vec![("alertname", alertname)];
    l.extend_from_slice(labels);
    sum_of(samples, ALERT_ACTIVE, &l).unwrap_or(0.0)
}

/// What every agent log line `alert=<what> alertname=<alertname> ...` with every `needle` contains.
fn alert_line_needles(what: &str, alertname: &str, needles: &[String]) -> Vec<String> {
    let mut all = vec![format!("alert={what} alertname={alertname} ")];
    all.extend_from_slice(needles);
    all
}

/// Agent stderr lines `alert=<what> alertname=<alertname> ...` that contain every `needle`.
pub fn log_lines(agent: &Agent, what: &str, alertname: &str, needles: &[String]) -> Vec<String> {
    lines_with(&agent.stderr(), &alert_line_needles(what, alertname, needles))
}

/// Waits (until `within`) for the agent to log `alert=<what> alertname=<alertname> ...` with every
/// `needle`; returns the first such line. Meanwhile it reports how many `alert=firing` lines the
/// alert has.
pub fn wait_alert_log(agent: &Agent, within: Instant, what: &str, alertname: &str, needles: &[String]) -> String {
    wait_log_line(
        agent,
        within,
        &format!("agent log `alert={what}` for {needles:?}"),
        &alert_line_needles(what, alertname, needles),
        |text| format!("{} firing line(s)", lines_with(text, &alert_line_needles("firing", alertname, needles)).len()),
    )
}

/// Seconds since the Unix epoch of an RFC 3339 time.
pub fn epoch(rfc3339: &str) -> f64 {
    let out = Command::new("date").args(["-u", "-d", rfc3339, "+%s.%N"]).output().expect("run date");
    assert!(out.status.success(), "date cannot parse {rfc3339:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("date +%s.%N")
}

pub fn now_epoch() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A humantime duration ("1m 20s", "2h 5m", "45s") in seconds; None if it is not one.
pub fn parse_human(text: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut any = false;
    for tok in text.split_whitespace() {
        let split = tok.find(|c: char| !c.is_ascii_digit())?;
        let (n, unit) = tok.split_at(split);
        let n: f64 = n.parse().ok()?;
        total += n * match unit {
            "ns" => 1e-9,
            "us" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return None,
        };
        any = true;
    }
    any.then_some(total)
}

pub fn ann<'a>(alert: &'a Value, key: &str) -> &'a str {
    alert["annotations"][key].as_str().unwrap_or_else(|| panic!("annotation {key} missing in {alert}"))
}

pub fn ann_f64(alert: &Value, key: &str) -> f64 {
    let s = ann(alert, key);
    s.parse().unwrap_or_else(|e| panic!("annotation {key}={s:?} is not a number ({e}) in {alert}"))
}

/// The pool-growth annotations the contract promises, with a 500-connection redis ceiling and a
/// client that opens about 5 connections a second.
pub fn check_pool_annotations(alert: &Value, where_: &str) {
    let summary = ann(alert, "summary");
    assert!(!summary.is_empty(), "{where_}: empty summary: {alert}");
    assert!(!ann(alert, "description").is_empty(), "{where_}: empty description: {alert}");
    let current = ann_f64(alert, "current");
    let slope = ann_f64(alert, "slope_per_minute");
    assert!(current >= 1.0, "{where_}: current {current}: {alert}");
    // 5 connections/s = 300/min; allow for scheduling jitter on a loaded machine.
    assert!((150.0..=450.0).contains(&slope), "{where_}: slope_per_minute {slope}, the client opens ~300/min: {alert}");
    assert_eq!(ann(alert, "ceiling"), "500", "{where_}: ceiling: {alert}");
    let ttc = ann(alert, "time_to_ceiling");
    assert!(!ttc.is_empty() && ttc != "reached", "{where_}: time_to_ceiling {ttc:?}: {alert}");
    let secs =
        parse_human(ttc).unwrap_or_else(|| panic!("{where_}: time_to_ceiling {ttc:?} is not a duration: {alert}"));
    let expect = (500.0 - current) / (slope / 60.0);
    assert!(
        (secs - expect).abs() <= 2.0 + 0.02 * expect,
        "{where_}: time_to_ceiling {ttc} ({secs}s) vs (500 - current {current}) / slope {slope}/min = {expect:.1}s: {alert}"
    );
}

pub fn pool_labels<'a>(leak_name: &'a str, cgroup: &'a str, dst_port: &'a str) -> [(&'a str, &'a str); 5] {
    [("service", "redis"), ("dst_addr", "127.0.0.1"), ("dst_port", dst_port), ("comm", leak_name), ("cgroup", cgroup)]
}
