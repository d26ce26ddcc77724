//! What the agent exports: the metric names of `connmon::export::METRICS`. The dashboard and rules
//! tests check every metric they name against this set, so renaming a metric fails a test instead
//! of silently emptying a panel or an alert. Which names also stand for histogram series
//! (`_bucket`, `_sum`, `_count`) is left to each suite: the dashboard test must tell histograms
//! from gauges to demand rate() around them, the rules test only that a name exists, so they draw
//! that line differently.

use std::collections::BTreeSet;

/// Where the names are declared, for messages that send a reader to them.
pub const EXPORT_DIR: &str = "monitor/src/export";

/// `connmon_...` metric names; counters already end in `_total` (prometheus-client's exposition
/// name).
pub fn exported_metrics() -> BTreeSet<String> {
    connmon::export::METRICS.iter().map(|m| m.to_string()).collect()
}
