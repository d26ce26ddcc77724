//! The alert rules on destinations (see `model::destinations` for the view and its windows):
//! DestinationSaturated, a server that holds this host's connections while it rejects new ones;
//! DependencyFailing, one destination failing for several client workloads at once;
//! ConnectionPoolNearCeiling, a destination approaching its configured ceiling fast. Each returns
//! its condition and the annotations that explain it.
use std::collections::BTreeMap;

use super::human;
use crate::{
    config::{DependencyFailingRule, DestinationSaturatedRule, NearCeilingRule},
    model::destinations::{DestKey, Destination},
};

/// The DestinationSaturated condition and its annotations.
pub fn saturated(
    d: &Destination,
    rule: &DestinationSaturatedRule,
    configured: Option<f64>,
) -> (bool, BTreeMap<String, String>) {
    let r = &d.recent;
    let held = r.held_at_start.unwrap_or(0);
    let lowest = r.recent_min.unwrap_or(d.connections);
    let flat = d.connections as f64 <= lowest as f64 * (1.0 + rule.max_growth.0) + 1.0;
    let ratio = if r.attempts > 0 {
        r.rejected as f64 / r.attempts as f64
    } else if r.rejected > 0 {
        1.0
    } else {
        0.0
    };
    let cond = d.connections > 0
        && held > 0
        && flat
        && r.rejected as f64 >= rule.min_rejections.0
        && r.rejecting_intervals >= 2
        && ratio >= rule.min_ratio.0;
    // Per second of the intervals that had rejections: the rate while the server rejects.
    let rate = if r.rejecting_secs > 0.0 { r.rejected as f64 / r.rejecting_secs } else { 0.0 };
    let ceiling = d.ceiling_observed.unwrap_or(held);
    let top = top_workloads(&d.workloads, 5);
    let mut ann = BTreeMap::new();
    ann.insert(
        "summary".into(),
        format!(
            "{} at {}:{} rejects new connections at {rate:.1}/s while {} are held",
            d.key.service, d.key.dst_addr, d.key.dst_port, d.connections
        ),
    );
    ann.insert("ceiling_observed".into(), ceiling.to_string());
    ann.insert("connections".into(), d.connections.to_string());
    ann.insert("rejection_rate".into(), format!("{rate:.2}"));
    ann.insert("rejected_ratio".into(), format!("{ratio:.2}"));
    ann.insert("top_workloads".into(), top);
    if let Some(c) = configured {
        ann.insert("ceiling_configured".into(), format!("{c:.0}"));
    }
    ann.insert(
        "description".into(),
        format!(
            "{} of the last {:.0}s of connects to {}:{} were refused, timed out or ended by the server within short-lived of the handshake ({:.0}%), while this host holds {} connections to it (rejections began at {ceiling}). The server is at its connection limit; clients that open a connection per task keep reconnecting.",
            r.rejected,
            r.window_secs,
            d.key.dst_addr,
            d.key.dst_port,
            ratio * 100.0,
            d.connections
        ),
    );
    (cond, ann)
}

/// The DependencyFailing condition and its annotations; `name` is the Kubernetes Service (or pod)
/// behind the address, when the API knows it.
pub fn dependency_failing(
    d: &Destination,
    rule: &DependencyFailingRule,
    name: Option<String>,
) -> (bool, BTreeMap<String, String>) {
    let r = &d.recent;
    let n = r.failing.len();
    let cond = n as f64 >= rule.min_workloads.0;
    let list: Vec<&str> = r.failing.iter().take(20).map(|(w, _)| w.as_str()).collect();
    let more = if n > list.len() { format!(" and {} more", n - list.len()) } else { String::new() };
    let target = match &name {
        Some(name) => format!("{name} ({}:{})", d.key.dst_addr, d.key.dst_port),
        None => format!("{} {}:{}", d.key.service, d.key.dst_addr, d.key.dst_port),
    };
    let window = human(rule.window.0.as_secs_f64());
    let mut ann = BTreeMap::new();
    ann.insert("summary".into(), format!("{target} is failing for {n} client workloads"));
    ann.insert("workloads_count".into(), n.to_string());
    ann.insert("workloads".into(), format!("{}{more}", list.join(", ")));
    ann.insert("destination".into(), target.clone());
    if let Some(name) = name {
        ann.insert("destination_name".into(), name);
    }
    ann.insert(
        "description".into(),
        format!("In the last {window}, {n} distinct client workloads saw failed connects, resets or connections ended young by {target}: the dependency they share is failing, not each of them."),
    );
    (cond, ann)
}

/// The ConnectionPoolNearCeiling condition against a configured ceiling, and its annotations.
pub fn near_ceiling(d: &Destination, rule: &NearCeilingRule, ceiling: f64) -> (bool, BTreeMap<String, String>) {
    let now = d.connections as f64;
    let slope = d.recent.slope;
    let horizon = rule.horizon.0.as_secs_f64();
    let left = if slope > 0.0 { (ceiling - now) / slope } else { f64::INFINITY };
    let cond = now >= rule.fill.0 * ceiling || (now > 0.0 && left <= horizon);
    let mut ann = BTreeMap::new();
    ann.insert(
        "summary".into(),
        format!(
            "{} at {}:{} holds {now:.0} of its {ceiling:.0} connections, +{:.1}/min",
            d.key.service,
            d.key.dst_addr,
            d.key.dst_port,
            slope * 60.0
        ),
    );
    ann.insert("current".into(), format!("{now:.0}"));
    ann.insert("ceiling".into(), format!("{ceiling:.0}"));
    ann.insert("slope_per_minute".into(), format!("{:.2}", slope * 60.0));
    ann.insert(
        "time_to_ceiling".into(),
        if now >= ceiling {
            "reached".into()
        } else if left.is_finite() {
            human(left)
        } else {
            "never at this rate".into()
        },
    );
    ann.insert("top_workloads".into(), top_workloads(&d.workloads, 5));
    (cond, ann)
}

fn top_workloads(w: &[(String, i64)], n: usize) -> String {
    let v: Vec<String> = w.iter().take(n).map(|(w, c)| format!("{w}={c}")).collect();
    v.join(", ")
}

/// Labels of a destination's alerts and series.
pub fn labels(k: &DestKey) -> BTreeMap<String, String> {
    [("service", k.service.clone()), ("dst_addr", k.dst_addr.to_string()), ("dst_port", k.dst_port.to_string())]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b))
        .collect()
}

#[cfg(test)]
#[path = "destinations_tests.rs"]
mod tests;
