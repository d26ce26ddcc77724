//! The Prometheus alerting rules shipped in deploy/ (for users who alert centrally rather than on
//! the agent's own alerts):
//! - deploy/prometheus/connmon-rules.yml passes `promtool check rules`, and its unit tests
//!   (connmon-rules.test.yml) pass `promtool test rules`; every alert has a case where it fires
//!   and one where it is checked to stay silent;
//! - deploy/kubernetes/prometheusrule.yaml carries the same rules, byte for byte;
//! - every `connmon_` metric the rules and their tests name is one the agent exports, so renaming a
//!   metric in monitor/src/export/ fails here instead of silently disabling an alert.
//!
//! Needs promtool (Debian/Ubuntu: package `prometheus`); `PROMTOOL=/path/to/promtool` overrides
//! the one on PATH. Does not need root.

use connmon_test_support as common;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::process::{Command, Output};

use common::exports::{exported_metrics, EXPORT_DIR};
use common::workspace::{read, root};

const RULES: &str = "deploy/prometheus/connmon-rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/connmon-rules.test.yml";
const PROMETHEUS_RULE: &str = "deploy/kubernetes/prometheusrule.yaml";

/// Runs promtool in the workspace root (so the paths it prints are the ones above).
fn promtool(args: &[&str]) -> Output {
    let bin = std::env::var_os("PROMTOOL").unwrap_or_else(|| OsString::from("promtool"));
    Command::new(&bin).args(args).current_dir(root()).output().unwrap_or_else(|e| {
        panic!(
            "running {} {}: {e}; install promtool (Debian/Ubuntu: apt install prometheus) or set PROMTOOL",
            bin.to_string_lossy(),
            args.join(" ")
        )
    })
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rules_pass_promtool_check() {
    let out = promtool(&["check", "rules", RULES]);
    assert_success(&format!("promtool check rules {RULES}"), &out);
}

#[test]
fn rules_pass_their_unit_tests() {
    let out = promtool(&["test", "rules", RULE_TESTS]);
    assert_success(&format!("promtool test rules {RULE_TESTS}"), &out);
}

/// Alert names of the rules file, in order (`- alert: Name` lines; repeated names once).
fn alert_names(rules: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in rules.lines() {
        if let Some(name) = line.trim_start().strip_prefix("- alert:") {
            let name = name.trim().to_string();
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// promtool only tests what the test file asks about: each alert must have a case that expects it
/// to fire (`alertname: X` followed by `exp_alerts:`) and one that expects silence (`alertname: X`
/// with no `exp_alerts:`).
#[test]
fn every_alert_has_firing_and_silent_unit_tests() {
    let names = alert_names(&read(RULES));
    assert!(names.len() >= 5, "expected connmon's alerts in {RULES}, found {names:?}");
    let tests = read(RULE_TESTS);
    let lines: Vec<&str> = tests.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    for name in &names {
        let (mut fires, mut silent) = (false, false);
        for (i, line) in lines.iter().enumerate() {
            if line.strip_prefix("alertname:").map(str::trim) == Some(name.as_str()) {
                match lines.get(i + 1) {
                    Some(next) if next.starts_with("exp_alerts:") => fires = true,
                    _ => silent = true,
                }
            }
        }
        assert!(fires, "{RULE_TESTS} has no case where {name} fires (alertname: {name} with exp_alerts)");
        assert!(silent, "{RULE_TESTS} has no case where {name} stays silent (alertname: {name} without exp_alerts)");
    }
}

/// The PrometheusRule's spec is the rules file from its `groups:` line on with every non-empty line
/// indented by two spaces. Comparing the text (rather than parsed YAML, which would need a YAML
/// parser this workspace does not have) is stricter and still exact: indenting every line of a
/// YAML block by the same amount does not change what it means, so equal text is equal rules.
#[test]
fn prometheusrule_spec_is_the_rules_file() {
    let rules = read(RULES);
    let resource = read(PROMETHEUS_RULE);

    let start = rules.find("\ngroups:\n").map(|i| i + 1).or_else(|| rules.starts_with("groups:\n").then_some(0));
    let start = start.unwrap_or_else(|| panic!("{RULES}: no top-level `groups:` line"));
    for line in rules[..start].lines() {
        assert!(
            line.trim().is_empty() || line.starts_with('#'),
            "{RULES}: only comments may precede `groups:`, found {line:?}"
        );
    }
    let expected: String =
        rules[start..].lines().map(|l| if l.is_empty() { "\n".to_string() } else { format!("  {l}\n") }).collect();

    let spec = resource.find("\nspec:\n").unwrap_or_else(|| panic!("{PROMETHEUS_RULE}: no top-level `spec:` line"));
    let (head, body) = resource.split_at(spec + "\nspec:\n".len());
    for needle in [
        "apiVersion: monitoring.coreos.com/v1\n",
        "kind: PrometheusRule\n",
        "\n  name: connmon\n",
        "app.kubernetes.io/name: connmon\n",
    ] {
        assert!(head.contains(needle), "{PROMETHEUS_RULE}: header lacks {needle:?}");
    }

    if body != expected {
        let first_diff = body
            .lines()
            .zip(expected.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("spec line {}: PrometheusRule has {a:?}, rules file gives {b:?}", i + 1))
            .unwrap_or_else(|| {
                format!("{} lines in the spec, {} expected", body.lines().count(), expected.lines().count())
            });
        panic!(
            "{PROMETHEUS_RULE} is out of sync with {RULES} ({first_diff}); regenerate it with the command in its header"
        );
    }
}

/// `connmon_...` identifiers in YAML text (expressions, templates, series of the unit tests).
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("connmon_") {
        if text[..i].chars().next_back().is_some_and(is_name_char) {
            continue;
        }
        let rest = &text[i..];
        let len = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
        names.insert(rest[..len].to_string());
    }
    names
}

/// A name the agent exposes: a constant itself, or a histogram constant's `_bucket`, `_sum` or
/// `_count` series (allowed for any constant that is not a counter or info metric, since which
/// constants are histograms is not spelled out in a greppable way).
fn is_exposed(name: &str, exported: &BTreeSet<String>) -> bool {
    exported.contains(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| exported.contains(base) && !base.ends_with("_total") && !base.ends_with("_info"))
        })
}

#[test]
fn rules_name_only_metrics_the_agent_exports() {
    let exported = exported_metrics();
    for known in ["connmon_pool_connections", "connmon_listen_drops_total", "connmon_retry_storm"] {
        assert!(exported.contains(known), "{known} not found among the constants in {EXPORT_DIR}: {exported:?}");
    }
    for file in [RULES, RULE_TESTS, PROMETHEUS_RULE] {
        let used = metric_names_in(&read(file));
        assert!(!used.is_empty(), "{file} names no connmon_ metrics");
        let unknown: Vec<&String> = used.iter().filter(|n| !is_exposed(n, &exported)).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics the agent does not export: {unknown:?} (exported: {exported:?})"
        );
    }
}

#[test]
fn name_scanning_finds_whole_names_only() {
    let used = metric_names_in("rate(connmon_a_total[5m]) / xconnmon_b + {{ connmon_c }}\nconnmon_d{x=\"connmon\"}");
    assert_eq!(used, ["connmon_a_total", "connmon_c", "connmon_d"].map(String::from).into());
    let exported: BTreeSet<String> = ["connmon_h_seconds", "connmon_c_total"].map(String::from).into();
    assert!(is_exposed("connmon_h_seconds_bucket", &exported));
    assert!(!is_exposed("connmon_c_total_sum", &exported));
    assert!(!is_exposed("connmon_x", &exported));
}
