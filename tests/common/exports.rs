//! What the agent exports, read from its source: the `"connmon_…"` metric-name constants of
//! monitor/src/export/. The dashboard and rules tests check every metric they name against this
//! set, so renaming a metric fails a test instead of silently emptying a panel or an alert. Which
//! constants also stand for histogram series (`_bucket`, `_sum`, `_count`) is left to each suite:
//! the dashboard test must tell histograms from gauges to demand rate() around them, the rules
//! test only that a name exists, so they draw that line differently.

use std::collections::BTreeSet;
use std::fs;

use super::workspace::root;

pub const EXPORT_DIR: &str = "monitor/src/export";

/// `connmon_...` metric names: every quoted string constant in the export modules that is a whole
/// metric name (`"connmon_pool_connections"`, not test strings like `"connmon_probe_up{..."`).
/// Counter constants already end in `_total` (prometheus-client's exposition name).
pub fn exported_metrics() -> BTreeSet<String> {
    let dir = root().join(EXPORT_DIR);
    let mut names = BTreeSet::new();
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let src = fs::read_to_string(&path).unwrap();
            for (i, _) in src.match_indices("\"connmon_") {
                let rest = &src[i + 1..];
                let len = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                if rest[len..].starts_with('"') {
                    names.insert(rest[..len].to_string());
                }
            }
        }
    }
    names
}
