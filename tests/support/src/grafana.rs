//! The parts of a Grafana dashboard (its JSON as a [`serde_json::Value`]) that the dashboard test
//! checks: panels (including those inside collapsed rows), rows, queries, template variables and
//! their queries, and Grafana's template-variable syntax (`$name`, `${name:format}`, `[[name]]`),
//! including filling the variables in so that promtool can check a query.

use std::collections::BTreeSet;

use serde_json::Value;

/// Every panel that is not a row, including the panels inside collapsed rows.
pub fn panels(dash: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            if p["type"] == "row" {
                walk(&p["panels"], out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// Row titles, in order.
pub fn rows(dash: &Value) -> Vec<String> {
    dash["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap_or_default().to_string())
        .collect()
}

pub fn title(panel: &Value) -> String {
    format!("panel {} {:?}", panel["id"], panel["title"].as_str().unwrap_or("(untitled)"))
}

/// (where, expr) for every query of every panel.
pub fn exprs(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default().to_string();
            out.push((format!("{} query {}", title(p), t["refId"].as_str().unwrap_or("?")), expr));
        }
    }
    out
}

/// The dashboard's template variables, in order.
pub fn variables(dash: &Value) -> Vec<&Value> {
    dash["templating"]["list"].as_array().map(|l| l.iter().collect()).unwrap_or_default()
}

/// A query variable's query text (Grafana stores a string, or `{ "query": "…" }`).
pub fn variable_query(var: &Value) -> Option<&str> {
    var["query"].as_str().or_else(|| var["query"]["query"].as_str())
}

/// The series selector of `label_values(SELECTOR, label)`; None for `label_values(label)` and for
/// other variable query functions.
pub fn label_values_selector(query: &str) -> Option<&str> {
    let inner = query.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    let (sel, label) = inner.rsplit_once(',')?;
    let label = label.trim();
    assert!(
        !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "bad label in variable query {query:?}"
    );
    Some(sel.trim())
}

/// Template variables referenced in `text`: `$name`, `${name}`, `${name:format}`, `[[name]]`.
pub fn variable_refs(text: &str) -> BTreeSet<String> {
    let is_var_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices('$') {
        let rest = &text[i + 1..];
        let name: String = if let Some(braced) = rest.strip_prefix('{') {
            braced.split(['}', ':']).next().unwrap_or_default().to_string()
        } else {
            rest.chars().take_while(|&c| is_var_char(c)).collect()
        };
        if !name.is_empty() {
            out.insert(name);
        }
    }
    for (i, _) in text.match_indices("[[") {
        if let Some(end) = text[i + 2..].find("]]") {
            let name = text[i + 2..i + 2 + end].split(':').next().unwrap_or_default();
            if !name.is_empty() && name.chars().all(is_var_char) {
                out.insert(name.to_string());
            }
        }
    }
    out
}

/// Fills in template variables the way Grafana would for a check: intervals become `1m`/`1h`,
/// every other variable (all used inside `=~"…"` matchers) becomes `.*`.
pub fn substitute(expr: &str) -> String {
    let mut out = expr.to_string();
    for (var, value) in [
        ("${__rate_interval}", "1m"),
        ("$__rate_interval", "1m"),
        ("${__interval}", "1m"),
        ("$__interval", "1m"),
        ("${__range}", "1h"),
        ("$__range", "1h"),
    ] {
        out = out.replace(var, value);
    }
    for name in variable_refs(&out) {
        for form in [format!("${{{name}}}"), format!("${name}"), format!("[[{name}]]")] {
            out = out.replace(&form, ".*");
        }
    }
    out
}
