//! Reading the agent's log (its stderr, `key=value` lines after a `[timestamp LEVEL module]`
//! head): the lines that contain every one of some substrings, waiting for the first such line,
//! and the wall-clock time a line was written. Storm and alert events are both logged this way,
//! so both kinds of test pick their lines with the same helpers.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{poll_until, Agent};

/// The lines of `text` that contain every one of `needles`.
pub fn lines_with(text: &str, needles: &[impl AsRef<str>]) -> Vec<String> {
    text.lines().filter(|l| needles.iter().all(|n| l.contains(n.as_ref()))).map(str::to_string).collect()
}

/// Waits (until `deadline`, panicking with `what`) for the agent to log a line that contains every
/// one of `needles`, and returns the first such line. While there is none, `explain` says what the
/// log (given whole) shows instead.
pub fn wait_log_line(
    agent: &Agent,
    deadline: Instant,
    what: &str,
    needles: &[impl AsRef<str>],
    explain: impl Fn(&str) -> String,
) -> String {
    poll_until(deadline, what, || {
        let text = agent.stderr();
        lines_with(&text, needles).into_iter().next().ok_or_else(|| explain(&text))
    })
}

/// The wall-clock time at the start of an agent log line (`[2026-11-23T03:41:05.188Z WARN ] ...`).
pub fn log_time(line: &str) -> SystemTime {
    let bad = || -> ! { panic!("no [YYYY-MM-DDTHH:MM:SS.mmmZ timestamp at the start of {line:?}") };
    let ts = line.strip_prefix('[').and_then(|l| l.get(..24)).unwrap_or_else(|| bad());
    let num = |r: std::ops::Range<usize>| -> i64 { ts.get(r).and_then(|t| t.parse().ok()).unwrap_or_else(|| bad()) };
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    // Days from 1970-01-01 to y-m-d (proleptic Gregorian; H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let ms = ((days * 24 + num(11..13)) * 60 + num(14..16)) * 60_000 + num(17..19) * 1000 + num(20..23);
    UNIX_EPOCH + Duration::from_millis(ms as u64)
}

/// Seconds from `from` to `to` (negative if `to` is earlier).
pub fn secs_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}
