//! The load generator, `connload` (xtask/src/bin/connload.rs): runs it with the bench's arguments,
//! appends the one JSON line it prints to the run's record, and reads back the figures the bench
//! uses (connections, errors, elapsed time, rate, lateness, first error) with a small reader for
//! flat JSON objects.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::util::display;

/// connload's JSON line, the fields the bench uses.
#[derive(Clone, Debug)]
pub(super) struct Load {
    pub(super) connections: u64,
    pub(super) errors: u64,
    pub(super) elapsed_s: f64,
    pub(super) rate: f64,
    pub(super) late_max_ms: f64,
    pub(super) first_error: Option<String>,
}

/// Runs connload with `args` (it prints one JSON line) and appends that line to `record`.
pub(super) fn run_connload(connload: &Path, args: &[String], record: &Path) -> Result<Load> {
    let mut cmd = Command::new(connload);
    cmd.args(args).stdin(Stdio::null()).stderr(Stdio::inherit());
    let shown = display(&cmd);
    let out = cmd.output().with_context(|| format!("cannot run `{shown}`"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("`{shown}` failed ({}): {}", out.status, stdout.trim());
    }
    let line = stdout
        .lines()
        .rfind(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("`{shown}` printed no JSON line"))?;
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(record) {
        let _ = writeln!(f, "{line}");
    }
    parse_load(line).with_context(|| format!("cannot read connload's output: {line}"))
}

fn parse_load(line: &str) -> Option<Load> {
    Some(Load {
        connections: json_number(line, "connections")? as u64,
        errors: json_number(line, "errors")? as u64,
        elapsed_s: json_number(line, "elapsed_s")?,
        rate: json_number(line, "rate")?,
        late_max_ms: json_number(line, "late_max_ms").unwrap_or(0.0),
        first_error: json_string_field(line, "first_error"),
    })
}

/// The number after `"key":` in a flat JSON object.
fn json_number(line: &str, key: &str) -> Option<f64> {
    let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &line[start..];
    let end =
        rest.find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The string after `"key":` in a flat JSON object (escapes kept as written); None for null.
fn json_string_field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let rest = &line[start..];
    let mut end = None;
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => {
                end = Some(i);
                break;
            }
            _ => {}
        }
    }
    Some(rest[..end?].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connload_output() {
        let line = r#"{"mode":"saturate","secs":5,"target_rate":0,"clients":4,"acceptors":1,"echo":false,"connections":123456,"accepted":123456,"errors":2,"elapsed_s":5.0012,"rate":24684.9,"late_max_ms":0.000,"late_over_1ms":0,"first_error":"Cannot assign \"requested\" address"}"#;
        let load = parse_load(line).unwrap();
        assert_eq!(load.connections, 123456);
        assert_eq!(load.errors, 2);
        assert_eq!(load.rate, 24684.9);
        assert_eq!(load.elapsed_s, 5.0012);
        assert_eq!(load.first_error.as_deref(), Some(r#"Cannot assign \"requested\" address"#));
        let none = line.replace(r#""Cannot assign \"requested\" address""#, "null");
        assert_eq!(parse_load(&none).unwrap().first_error, None);
    }
}
