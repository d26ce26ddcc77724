//! A small parser for the Prometheus text exposition (0.0.4; OpenMetrics text parses too:
//! `# ...` lines are skipped, exemplars after " # " are ignored).

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

fn parse_value(tok: &str, line: &str) -> f64 {
    match tok {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        t => t.parse().unwrap_or_else(|e| panic!("bad sample value {t:?} in {line:?}: {e}")),
    }
}

/// Parses `{a="x",b="y\"z"}` starting after the `{`; returns labels and the rest after `}`.
fn parse_labels<'a>(mut s: &'a str, line: &str) -> (BTreeMap<String, String>, &'a str) {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(rest) = s.strip_prefix('}') {
            return (labels, rest);
        }
        let eq = s.find('=').unwrap_or_else(|| panic!("label without '=' in {line:?}"));
        let name = s[..eq].trim().to_string();
        let rest = s[eq + 1..].trim_start();
        let mut chars = rest.char_indices();
        assert_eq!(chars.next().map(|c| c.1), Some('"'), "unquoted label value in {line:?}");
        let mut value = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, o)) => {
                        value.push('\\');
                        value.push(o)
                    }
                    None => panic!("dangling escape in {line:?}"),
                },
                '"' => {
                    end = Some(i + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.unwrap_or_else(|| panic!("unterminated label value in {line:?}"));
        assert!(labels.insert(name.clone(), value).is_none(), "duplicate label {name} in {line:?}");
        s = &rest[end..];
    }
}

/// Every sample line of an exposition.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line_t = line.trim();
        if line_t.is_empty() || line_t.starts_with('#') {
            continue;
        }
        let name_end = line_t
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or_else(|| panic!("sample line without value: {line:?}"));
        let name = line_t[..name_end].to_string();
        let (labels, rest) = if line_t[name_end..].starts_with('{') {
            parse_labels(&line_t[name_end + 1..], line)
        } else {
            (BTreeMap::new(), &line_t[name_end..])
        };
        let rest = rest.split(" # ").next().unwrap_or(rest); // OpenMetrics exemplar
        let tok = rest.split_whitespace().next().unwrap_or_else(|| panic!("sample line without value: {line:?}"));
        out.push(Sample { name, labels, value: parse_value(tok, line) });
    }
    out
}

/// Samples named `name` whose labels include every pair of `labels` (other labels may differ).
pub fn samples_matching<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples.iter().filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v))).collect()
}

/// The value of the one sample named `name` whose labels include `labels`; `None` if there is none.
/// Panics if several samples match (the label filter is not specific enough).
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let hits = samples_matching(samples, name, labels);
    assert!(hits.len() <= 1, "{} samples match {name}{labels:?}: {hits:#?}", hits.len());
    hits.first().map(|s| s.value)
}

/// Like [`sample`], but the value must be there.
pub fn sample_expect(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(samples, name, labels).unwrap_or_else(|| {
        let same_name: Vec<_> = samples.iter().filter(|s| s.name == name).collect();
        panic!("no sample {name}{labels:?}; samples named {name}: {same_name:#?}")
    })
}
