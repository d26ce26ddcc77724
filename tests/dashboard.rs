//! The Grafana dashboard shipped in deploy/grafana/connmon.json:
//! - it is a dashboard (schemaVersion ≥ 36, uid, title) with panels laid out on the 24-column
//!   grid, a `datasource` variable of type prometheus that every panel and query uses;
//! - every panel has at least one query, and every query is PromQL that promtool accepts (each one
//!   is checked as a recording rule, with the template variables filled in);
//! - every `connmon_` metric a query names is one the agent exports (the `"connmon_…"` constants in
//!   monitor/src/export/), so renaming a metric fails here instead of leaving an empty panel;
//! - counters (`…_total`) and histogram series (`…_bucket/_sum/_count`) are only read through
//!   rate()/irate()/increase(), gauges never are; histogram_quantile keeps `le`;
//! - brackets balance, and every `$variable` is defined (before use, for variable queries) and
//!   every variable is used;
//! - the sections an operator needs are there (listeners, namespaces, pools, server side, storms,
//!   alerts, agent).
//!
//! Needs promtool (Debian/Ubuntu: package `prometheus`); `PROMTOOL=/path/to/promtool` overrides
//! the one on PATH. Does not need root.

use connmon_test_support as common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::process::Command;

use serde_json::Value;

use common::exports::{exported_metrics, EXPORT_DIR};
use common::grafana::*;
use common::promql::*;
use common::workspace::read;

const DASHBOARD: &str = "deploy/grafana/connmon.json";

/// Variables Grafana defines itself.
const BUILTIN_VARIABLES: [&str; 9] = [
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
    "__dashboard",
    "__name",
    "__all",
];

/// PromQL functions that turn a counter (or a histogram's series) into something meaningful.
const COUNTER_FUNCTIONS: [&str; 3] = ["rate", "irate", "increase"];

fn dashboard() -> Value {
    let text = read(DASHBOARD);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// The histogram a series name belongs to (`x_seconds` for `x_seconds_bucket|_sum|_count`), if
/// `x_seconds` is an exported histogram (the exported constants named `…_seconds`).
fn histogram_of<'a>(name: &'a str, exported: &BTreeSet<String>) -> Option<&'a str> {
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        name.strip_suffix(suffix).filter(|base| base.ends_with("_seconds") && exported.contains(*base))
    })
}

fn is_exposed(name: &str, exported: &BTreeSet<String>) -> bool {
    exported.contains(name) || histogram_of(name, exported).is_some()
}

/// A series that only makes sense through rate()/increase(): a counter or a histogram's series.
fn is_counter_like(name: &str, exported: &BTreeSet<String>) -> bool {
    name.ends_with("_total") || histogram_of(name, exported).is_some()
}

// -------------------------------------------------------------------------------------------------
// Tests

#[test]
fn dashboard_is_well_formed() {
    let dash = dashboard();
    assert!(dash.is_object(), "{DASHBOARD}: not a JSON object");
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()), "{DASHBOARD}: no title");
    assert!(
        dash["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40),
        "{DASHBOARD}: uid missing or longer than Grafana allows (40)"
    );
    let schema = dash["schemaVersion"].as_u64().unwrap_or(0);
    assert!(schema >= 36, "{DASHBOARD}: schemaVersion {schema} < 36");
    assert!(dash["id"].is_null(), "{DASHBOARD}: `id` must be null so that imports create the dashboard");

    let all = panels(&dash);
    assert!(all.len() >= 10, "{DASHBOARD}: only {} panels", all.len());
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().expect("panels is an array") {
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("{}: no numeric id", title(p)));
        assert!(ids.insert(id), "duplicate panel id {id}");
    }
    for p in &all {
        let what = title(p);
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{what}: no title");
        assert!(p["type"].as_str().is_some(), "{what}: no type");
        let g = &p["gridPos"];
        let (x, w, h) = (g["x"].as_u64().unwrap_or(99), g["w"].as_u64().unwrap_or(0), g["h"].as_u64().unwrap_or(0));
        assert!(w > 0 && h > 0 && x + w <= 24 && g["y"].is_u64(), "{what}: gridPos {g} is off the 24-column grid");
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{what}: panel datasource must be the `datasource` variable: {}",
            p["datasource"]
        );
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        assert!(!targets.is_empty(), "{what}: no queries");
        let mut refs = BTreeSet::new();
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "{what}: a query without expr: {t}");
            let r = t["refId"].as_str().unwrap_or_default();
            assert!(!r.is_empty() && refs.insert(r), "{what}: refId {r:?} missing or repeated");
            if !t["datasource"].is_null() {
                assert_eq!(
                    t["datasource"]["uid"], "${datasource}",
                    "{what}: query datasource must be the `datasource` variable: {t}"
                );
            }
        }
    }
    // No two panels on the same cell of the grid.
    let mut cells = BTreeMap::new();
    for p in dash["panels"].as_array().unwrap() {
        let g = &p["gridPos"];
        let (x, y, w, h) =
            (g["x"].as_u64().unwrap(), g["y"].as_u64().unwrap(), g["w"].as_u64().unwrap(), g["h"].as_u64().unwrap());
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title(p)) {
                    panic!("{} overlaps {other} at ({cx}, {cy})", title(p));
                }
            }
        }
    }
}

#[test]
fn template_variables_are_defined_and_used() {
    let dash = dashboard();
    let vars = variables(&dash);
    let ds = vars
        .iter()
        .find(|v| v["name"] == "datasource")
        .unwrap_or_else(|| panic!("{DASHBOARD}: no `datasource` variable"));
    assert_eq!(ds["type"], "datasource", "`datasource` variable: {ds}");
    assert_eq!(ds["query"], "prometheus", "`datasource` variable: {ds}");

    // Variables are resolved in order: a variable's query may use only those defined before it.
    let mut defined: BTreeSet<String> = BUILTIN_VARIABLES.iter().map(|s| s.to_string()).collect();
    let mut names = Vec::new();
    for v in &vars {
        let name = v["name"].as_str().unwrap_or_else(|| panic!("a variable without a name: {v}"));
        let mut text = v["datasource"].to_string();
        if let Some(q) = variable_query(v) {
            text.push_str(q);
        }
        for r in variable_refs(&text) {
            assert!(defined.contains(&r), "variable {name} uses ${r}, which is not defined before it");
        }
        if v["type"] == "query" {
            assert_eq!(v["datasource"]["uid"], "${datasource}", "variable {name}: {v}");
            let q = variable_query(v).unwrap_or_else(|| panic!("variable {name} has no query"));
            assert!(
                q.trim_start().starts_with("label_values(") || q.trim_start().starts_with("query_result("),
                "variable {name}: unexpected query {q:?}"
            );
        }
        assert!(defined.insert(name.to_string()), "variable {name} defined twice");
        names.push(name.to_string());
    }
    assert!(names.iter().any(|n| n == "comm" || n == "service"), "no `comm` or `service` variable: {names:?}");

    let mut used = BTreeSet::new();
    for p in panels(&dash) {
        let mut text = p["datasource"].to_string();
        for t in p["targets"].as_array().into_iter().flatten() {
            text.push_str(&t["datasource"].to_string());
            text.push_str(t["expr"].as_str().unwrap_or_default());
        }
        for r in variable_refs(&text) {
            assert!(defined.contains(&r), "{} uses ${r}, which is not defined (variables: {names:?})", title(p));
            used.insert(r);
        }
    }
    for v in &vars {
        for r in variable_refs(variable_query(v).unwrap_or_default()) {
            used.insert(r);
        }
    }
    for n in &names {
        assert!(used.contains(n), "variable {n} is defined but never used");
    }
}

#[test]
fn queries_have_balanced_brackets() {
    let dash = dashboard();
    for (what, expr) in exprs(&dash) {
        if let Err(e) = check_brackets(&expr) {
            panic!("{what}: {e} in {expr}");
        }
    }
    for v in variables(&dash) {
        if let Some(q) = variable_query(v) {
            if let Err(e) = check_brackets(q) {
                panic!("variable {}: {e} in {q}", v["name"]);
            }
        }
    }
}

#[test]
fn panels_query_only_metrics_the_agent_exports() {
    let exported = exported_metrics();
    for known in [
        "connmon_pool_connections",
        "connmon_listen_drops_total",
        "connmon_pool_connect_duration_seconds",
        "connmon_retry_storm",
    ] {
        assert!(exported.contains(known), "{known} not found among the constants in {EXPORT_DIR}: {exported:?}");
    }
    let dash = dashboard();
    let mut queries = exprs(&dash);
    for v in variables(&dash) {
        if let Some(sel) = variable_query(v).and_then(label_values_selector) {
            queries.push((format!("variable {}", v["name"]), sel.to_string()));
        }
    }
    for (what, expr) in &queries {
        let uses = metric_uses(expr);
        assert!(!uses.is_empty(), "{what} names no connmon_ metric: {expr}");
        for u in uses {
            assert!(
                is_exposed(&u.metric, &exported),
                "{what} queries {}, which the agent does not export (exported: {exported:?}); query: {expr}",
                u.metric
            );
        }
    }
}

#[test]
fn counters_are_read_through_rate_or_increase() {
    let exported = exported_metrics();
    for (what, expr) in exprs(&dashboard()) {
        for u in metric_uses(&expr) {
            let f = u.function.as_deref().unwrap_or("");
            if is_counter_like(&u.metric, &exported) {
                assert!(
                    COUNTER_FUNCTIONS.contains(&f),
                    "{what}: counter {} must be inside rate()/irate()/increase(), is inside {:?}: {expr}",
                    u.metric,
                    u.function
                );
            } else {
                assert!(!COUNTER_FUNCTIONS.contains(&f), "{what}: {f}() of the gauge {}: {expr}", u.metric);
            }
        }
        let has_bucket = metric_uses(&expr).iter().any(|u| u.metric.ends_with("_bucket"));
        if expr.contains("histogram_quantile") || has_bucket {
            assert!(
                expr.contains("histogram_quantile(") && has_bucket,
                "{what}: histogram_quantile needs _bucket series and vice versa: {expr}"
            );
            let groups = grouping_lists(&expr);
            assert!(
                groups.iter().all(|g| g.iter().any(|l| l == "le")),
                "{what}: an aggregation inside histogram_quantile drops `le`: {expr}"
            );
        }
    }
}

/// The sections the dashboard is for, each with the metrics that must be on it somewhere.
#[test]
fn dashboard_covers_every_section() {
    let dash = dashboard();
    let used: BTreeSet<String> = exprs(&dash).iter().flat_map(|(_, e)| metric_uses(e)).map(|u| u.metric).collect();
    let rows: Vec<String> = rows(&dash).iter().map(|r| r.to_lowercase()).collect();
    let sections: [(&str, &[&str]); 7] = [
        (
            "listeners",
            &[
                "connmon_listen_queue_depth",
                "connmon_listen_queue_max",
                "connmon_listen_queue_fill_ratio",
                "connmon_listen_queue_peak_depth",
                "connmon_listen_drops_total",
                "connmon_listen_syn_queue_depth",
                "connmon_listen_synack_retransmits_total",
            ],
        ),
        ("namespaces", &["connmon_netns_tcp_ext_total"]),
        (
            "pools",
            &[
                "connmon_pool_connections",
                "connmon_pool_connections_peak",
                "connmon_pool_opens_total",
                "connmon_pool_closes_total",
                "connmon_pool_connect_failures_total",
                "connmon_pool_connect_duration_seconds_bucket",
                "connmon_pool_connection_lifetime_seconds_sum",
            ],
        ),
        ("server side", &["connmon_listen_established_connections", "connmon_listen_accepts_total"]),
        (
            "storms",
            &[
                "connmon_retry_storm",
                "connmon_retry_storm_score",
                "connmon_pool_retry_backoff_ratio",
                "connmon_pool_retry_jitter",
                "connmon_pool_connect_attempt_rate",
                "connmon_pool_bad_attempt_ratio",
            ],
        ),
        ("alerts", &["connmon_alert_active", "connmon_alerts_fired_total"]),
        ("agent", &["connmon_probe_up", "connmon_scan_duration_seconds", "connmon_events_lost_total"]),
    ];
    for (section, metrics) in sections {
        let word = section.split(' ').next().unwrap().trim_end_matches('s');
        assert!(rows.iter().any(|r| r.contains(word)), "no row for {section} (rows: {rows:?})");
        for m in metrics {
            assert!(used.contains(*m), "{section}: no panel queries {m} (queried: {used:?})");
        }
    }
    // Quantiles of the connect latency: p50 and p99.
    let quantiles: BTreeSet<String> = exprs(&dash)
        .iter()
        .filter(|(_, e)| e.contains("connmon_pool_connect_duration_seconds_bucket"))
        .filter_map(|(_, e)| {
            let rest = e.split("histogram_quantile(").nth(1)?;
            Some(rest.split(',').next()?.trim().to_string())
        })
        .collect();
    for q in ["0.5", "0.99"] {
        assert!(quantiles.contains(q), "connect latency quantile {q} missing (have {quantiles:?})");
    }
}

/// Every query (and every variable's series selector), with the variables filled in, is written as
/// a recording rule and checked by `promtool check rules`, which parses and type-checks PromQL.
#[test]
fn queries_pass_promtool() {
    let dash = dashboard();
    let mut queries = exprs(&dash);
    for v in variables(&dash) {
        if let Some(sel) = variable_query(v).and_then(label_values_selector) {
            queries.push((format!("variable {}", v["name"]), sel.to_string()));
        }
    }
    let mut yaml = String::from("groups:\n  - name: connmon-dashboard\n    rules:\n");
    let mut names = BTreeMap::new();
    for (i, (what, expr)) in queries.iter().enumerate() {
        let record = format!("dashboard:query_{i}");
        let expr = substitute(expr);
        assert!(!expr.contains('$') && !expr.contains('\n'), "{what}: unsubstituted variable or newline: {expr}");
        yaml.push_str(&format!("      - record: {record}\n        expr: '{}'\n", expr.replace('\'', "''")));
        names.insert(record, (what.clone(), expr));
    }
    let dir = std::env::temp_dir().join(format!("cmdash{}", std::process::id()));
    fs::create_dir_all(&dir).expect("create temp dir");
    let file = dir.join("dashboard-queries.yml");
    fs::write(&file, &yaml).expect("write rules file");

    let bin = std::env::var_os("PROMTOOL").unwrap_or_else(|| OsString::from("promtool"));
    let out = Command::new(&bin).args(["check", "rules"]).arg(&file).output().unwrap_or_else(|e| {
        panic!(
            "running {} check rules: {e}; install promtool (Debian/Ubuntu: apt install prometheus) or set PROMTOOL",
            bin.to_string_lossy()
        )
    });
    let _ = fs::remove_dir_all(&dir);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        // Name the panels behind the rules promtool complains about.
        let culprits: Vec<String> = names
            .iter()
            .filter(|(r, _)| text.contains(&format!("\"{r}\"")))
            .map(|(r, (what, e))| format!("{r} = {what}: {e}"))
            .collect();
        panic!(
            "promtool check rules rejected dashboard queries:\n{text}\n{}\n(all {} queries were checked)",
            culprits.join("\n"),
            queries.len()
        );
    }
    assert!(
        text.contains(&format!("{} rules found", queries.len())),
        "promtool did not check all {} queries:\n{text}",
        queries.len()
    );
}

// -------------------------------------------------------------------------------------------------
// The scanners themselves

#[test]
fn scanners_find_what_they_should() {
    let uses = metric_uses(
        "sum by (le) (rate(connmon_a_bucket{x=\"connmon_no\"}[5m])) / connmon_g * on (i) group_left (n) (connmon_h) + xconnmon_no",
    );
    assert_eq!(
        uses,
        vec![
            Use { metric: "connmon_a_bucket".into(), function: Some("rate".into()) },
            Use { metric: "connmon_g".into(), function: None },
            // `group_left (n)` is closed: `(connmon_h)` is a plain grouping.
            Use { metric: "connmon_h".into(), function: None },
        ]
    );
    assert_eq!(metric_uses("increase(connmon_c_total[1h]) or vector(0)")[0].function.as_deref(), Some("increase"));

    assert!(check_brackets("sum(rate(m{a=\"(\"}[5m]))").is_ok());
    assert!(check_brackets("sum(rate(m[5m])").is_err());
    assert!(check_brackets("m{a=\"x}").is_err());
    assert!(check_brackets("(m])").is_err());

    assert_eq!(
        variable_refs("a{x=~\"$comm\", y=\"${service:regex}\"}[$__rate_interval] [[old]] $"),
        ["__rate_interval", "comm", "old", "service"].map(String::from).into()
    );
    assert_eq!(substitute("rate(m{c=~\"$comm\"}[$__rate_interval])"), "rate(m{c=~\".*\"}[1m])");
    assert_eq!(
        grouping_lists("histogram_quantile(0.5, sum by (le, a) (x)) without(b)"),
        vec![vec!["le".to_string(), "a".to_string()], vec!["b".to_string()]]
    );
    assert_eq!(label_values_selector("label_values(m{a=~\"$x\"}, comm)"), Some("m{a=~\"$x\"}"));
    assert_eq!(label_values_selector("label_values(comm)"), None);

    let exported: BTreeSet<String> = ["connmon_h_seconds", "connmon_c_total", "connmon_g"].map(String::from).into();
    assert!(is_exposed("connmon_h_seconds_bucket", &exported));
    assert!(!is_exposed("connmon_c_total_sum", &exported));
    assert!(!is_exposed("connmon_g_count", &exported));
    assert!(is_counter_like("connmon_c_total", &exported));
    assert!(is_counter_like("connmon_h_seconds_sum", &exported));
    assert!(!is_counter_like("connmon_g", &exported));
}
