//! Metrics on the agent's own bounds, beyond the HTTP server's (web/stats.rs) and the series caps
//! (export/): how full each kernel hash map is, the Alertmanager sender's queue and drops, and the
//! sizes of the in-memory histories the alert rules and peak gauges keep. docs/reliability.md
//! lists every bound with the metric that says when it is hit.
use std::sync::atomic::Ordering;

use prometheus_client::{encoding::text::encode, registry::Registry};

use super::{Alerting, Observer};
use crate::{
    alerts::notify,
    attribution::cgroups,
    export::{counter_family, gauge_family, Labels},
    model::pools,
};

pub const MAP_ENTRIES: &str = "connmon_map_entries";
pub const MAP_MAX_ENTRIES: &str = "connmon_map_max_entries";
pub const AM_PUSHES: &str = "connmon_alertmanager_pushes_total";
pub const AM_QUEUED: &str = "connmon_alertmanager_resolved_queued";
pub const AM_QUEUE_LIMIT: &str = "connmon_alertmanager_resolved_queue_limit";
pub const AM_DROPPED: &str = "connmon_alertmanager_resolved_dropped_total";
pub const ALERT_SERIES: &str = "connmon_alert_rule_series";
pub const PEAK_SERIES: &str = "connmon_peak_window_series";
pub const CACHE_ENTRIES: &str = "connmon_cache_entries";
pub const CACHE_LIMIT: &str = "connmon_cache_limit";
pub const CACHE_RESETS: &str = "connmon_cache_resets_total";
pub const EXPOSITION_AGE: &str = "connmon_exposition_age_seconds";

/// Every metric this module exports.
pub const METRICS: &[&str] = &[
    MAP_ENTRIES,
    MAP_MAX_ENTRIES,
    AM_PUSHES,
    AM_QUEUED,
    AM_QUEUE_LIMIT,
    AM_DROPPED,
    ALERT_SERIES,
    PEAK_SERIES,
    CACHE_ENTRIES,
    CACHE_LIMIT,
    CACHE_RESETS,
    EXPOSITION_AGE,
];

/// The exposition's age as OpenMetrics text (without `# EOF`): since its gather began, when it is
/// served. A prepared exposition is up to one tick old (prepared.rs); a fresh one, its own
/// collection's time.
pub fn render_age(age: std::time::Duration) -> String {
    format!(
        "# HELP {EXPOSITION_AGE} Seconds since the collection behind this exposition began: up to --scan.interval when the tick prepared it for an expected scrape, the collection's own time otherwise.\n\
         # TYPE {EXPOSITION_AGE} gauge\n{EXPOSITION_AGE} {}\n",
        age.as_secs_f64()
    )
}

fn one(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

/// The bounds' metrics as OpenMetrics text, without the final `# EOF`.
pub fn render(o: &Observer, alerting: Option<&Alerting>) -> String {
    let mut reg = Registry::default();
    if !o.census.maps.is_empty() {
        let entries = gauge_family(&mut reg, MAP_ENTRIES, "Entries in the kernel program's hash map at the last count (every 30 s); at connmon_map_max_entries an LRU map evicts and a plain one refuses (connmon_events_lost_total says what was lost)");
        let max = gauge_family(&mut reg, MAP_MAX_ENTRIES, "Capacity of the kernel program's hash map");
        for (map, f) in &o.census.maps {
            entries.get_or_create(one("map", map)).set(i64::from(f.entries));
            max.get_or_create(one("map", map)).set(i64::from(f.max_entries));
        }
    }
    if let Some(n) = alerting.and_then(|a| a.notifier.as_ref()) {
        let pushes = counter_family(
            &mut reg,
            AM_PUSHES,
            "Pushes to Alertmanager by result: delivered to every URL, or failed for one (retried with backoff)",
        );
        pushes.get_or_create(one("result", "delivered")).inc_by(n.counts.delivered.load(Ordering::Relaxed));
        pushes.get_or_create(one("result", "failed")).inc_by(n.counts.failed.load(Ordering::Relaxed));
        gauge_family(&mut reg, AM_QUEUED, "Resolved alerts waiting to be delivered to Alertmanager")
            .get_or_create(vec![])
            .set(n.queued() as i64);
        gauge_family(
            &mut reg,
            AM_QUEUE_LIMIT,
            "Most resolved alerts kept for delivery while Alertmanager is unreachable",
        )
        .get_or_create(vec![])
        .set(notify::MAX_RESOLVED as i64);
        counter_family(&mut reg, AM_DROPPED, "Resolved alerts dropped undelivered because the queue was full")
            .get_or_create(vec![])
            .inc_by(n.counts.dropped.load(Ordering::Relaxed));
    }
    if let Some(a) = alerting {
        gauge_family(&mut reg, ALERT_SERIES, "Sample histories the alert rules keep (one per pool, listener and destination seen within the rules' longest window)")
            .get_or_create(vec![])
            .set(a.engine.series_len() as i64);
    }
    gauge_family(
        &mut reg,
        PEAK_SERIES,
        "Per-series maxima the peak gauges keep over --peaks.window, summed over its buckets",
    )
    .get_or_create(vec![])
    .set(o.windows.entries() as i64);
    let (protocols, cgroups) = o.pools.cache_sizes();
    let entries = gauge_family(&mut reg, CACHE_ENTRIES, "Entries in the agent's in-memory cache");
    let limit = gauge_family(
        &mut reg,
        CACHE_LIMIT,
        "Most entries the agent's cache holds; at the limit it is emptied and rebuilt (connmon_cache_resets_total)",
    );
    let resets = counter_family(&mut reg, CACHE_RESETS, "Times the agent's cache was emptied at its limit");
    for (cache, n, max, reset) in [
        ("pool_protocols", protocols, pools::MAX_PROTOCOL_DESTINATIONS, &pools::PROTOCOL_RESETS),
        ("cgroup_paths", cgroups, cgroups::MAX_REMEMBERED, &cgroups::RESETS),
    ] {
        entries.get_or_create(one("cache", cache)).set(n as i64);
        limit.get_or_create(one("cache", cache)).set(max as i64);
        resets.get_or_create(one("cache", cache)).inc_by(reset.load(Ordering::Relaxed));
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out.strip_suffix("# EOF\n").map(str::to_string).unwrap_or(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_age_is_one_gauge_in_seconds() {
        let text = render_age(std::time::Duration::from_millis(250));
        assert!(text.contains(&format!("\n# TYPE {EXPOSITION_AGE} gauge\n{EXPOSITION_AGE} 0.25\n")), "{text}");
        assert_eq!(text.lines().count(), 3, "{text}");
    }
}
