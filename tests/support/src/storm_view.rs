//! One pool as the retry-storm detector and connmon's pool counters show it ([`StormView`]), the
//! waits built on it (the storm gauge reaching a value, the agent logging a storm's start or end),
//! and the detector's backoff and jitter figures computed independently from a client's own
//! attempt times ([`gap_growth`]), which is the truth the exported figures are compared with. The
//! pool is always picked by the test client's unique comm, so parallel tests never mix.

use std::fmt;
use std::time::{Duration, Instant};

use super::agent_log::{lines_with, wait_log_line};
use super::scrape::{scrape_until, sum_of};
use super::{
    deadline, sample, samples_matching, Agent, PoolRef, Sample, POOL_ATTEMPTS, POOL_CLOSES, POOL_FAILURES, POOL_OPENS,
};

pub use connmon::export::pools::{
    POOL_DIED_YOUNG as DIED_YOUNG, POOL_RESETS as RESETS, POOL_SHORT_LIVED as SHORT_LIVED,
    POOL_SYN_RETRANS as SYN_RETRANS,
};
pub use connmon::export::storms::{
    POOL_ATTEMPT_RATE as ATTEMPT_RATE, POOL_BACKOFF as BACKOFF, POOL_BAD_RATIO as BAD_RATIO, POOL_JITTER as JITTER,
    RETRY_STORM, RETRY_STORM_SCORE as STORM_SCORE,
};
/// What [`BAD_RATIO`] was called before hung-up-young connections became soft evidence, for
/// running these tests against older agents.
pub const BAD_RATIO_OLD: &str = "connmon_pool_failed_attempt_ratio";

/// One pool as the detector and the counters show it at one scrape; `None` where absent.
///
/// The pool is picked by comm and destination alone (the comm is unique to the test's client), so
/// that a lagging cgroup label does not hide it: an agent that maps cgroup ids to paths by walking
/// the cgroup tree periodically (every 5 s at commit c0ea22b) labels a pool made in a fresh cgroup
/// `cgroup=""` until its next walk. `cgroup` is the label the pool carried at this scrape; the
/// scenarios check it once their clients have stopped.
#[derive(Debug, Clone, Default)]
pub struct StormView {
    pub cgroup: Option<String>,
    pub storm: Option<f64>,
    pub score: Option<f64>,
    pub backoff: Option<f64>,
    pub jitter: Option<f64>,
    pub rate: Option<f64>,
    pub bad: Option<f64>,
    pub attempts: Option<f64>,
    pub opens: Option<f64>,
    pub closes: Option<f64>,
    pub failures: f64,
    pub refused: Option<f64>,
    pub aborted: Option<f64>,
    pub syn_retrans: Option<f64>,
    pub resets_received: Option<f64>,
    pub short_lived: Option<f64>,
    pub died_young: Option<f64>,
}

impl StormView {
    pub fn of(p: &PoolRef, s: &[Sample]) -> StormView {
        let base = [("comm", p.comm.as_str()), ("dst_addr", p.dst_addr.as_str()), ("dst_port", p.dst_port.as_str())];
        let with = |name: &str, extra: &[(&str, &str)]| {
            let mut l = base.to_vec();
            l.extend_from_slice(extra);
            sample(s, name, &l)
        };
        StormView {
            cgroup: samples_matching(s, POOL_ATTEMPTS, &base)
                .first()
                .and_then(|x| x.label("cgroup"))
                .map(str::to_string),
            storm: with(RETRY_STORM, &[("target", "pool")]),
            score: with(STORM_SCORE, &[("target", "pool"), ("component", "overall")]),
            backoff: with(BACKOFF, &[]),
            jitter: with(JITTER, &[]),
            rate: with(ATTEMPT_RATE, &[]),
            bad: with(BAD_RATIO, &[]).or_else(|| with(BAD_RATIO_OLD, &[])),
            attempts: with(POOL_ATTEMPTS, &[]),
            opens: with(POOL_OPENS, &[]),
            closes: with(POOL_CLOSES, &[]),
            failures: sum_of(s, POOL_FAILURES, &base).unwrap_or(0.0),
            refused: with(POOL_FAILURES, &[("reason", "refused")]),
            aborted: with(POOL_FAILURES, &[("reason", "aborted")]),
            syn_retrans: with(SYN_RETRANS, &[]),
            resets_received: with(RESETS, &[("direction", "received")]),
            short_lived: with(SHORT_LIVED, &[]),
            died_young: sum_of(s, DIED_YOUNG, &base),
        }
    }

    /// The pool carries its client's cgroup label.
    pub fn cgroup_is(&self, p: &PoolRef) -> bool {
        self.cgroup.as_deref() == Some(p.cgroup.as_str())
    }

    pub fn in_storm(&self) -> bool {
        self.storm == Some(1.0)
    }
}

impl fmt::Display for StormView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = |v: Option<f64>| {
            v.map_or("-".to_string(), |v| format!("{v:.3}").trim_end_matches('0').trim_end_matches('.').to_string())
        };
        write!(
            f,
            "cgroup={:?} storm={} score={} backoff={} jitter={} attempt_rate={} bad_ratio={} attempts={} opens={} closes={} failures={} refused={} aborted={} syn_retrans={} resets_received={} short_lived={} died_young={}",
            self.cgroup.as_deref().unwrap_or("-"),
            o(self.storm),
            o(self.score),
            o(self.backoff),
            o(self.jitter),
            o(self.rate),
            o(self.bad),
            o(self.attempts),
            o(self.opens),
            o(self.closes),
            self.failures,
            o(self.refused),
            o(self.aborted),
            o(self.syn_retrans),
            o(self.resets_received),
            o(self.short_lived),
            o(self.died_young),
        )
    }
}

/// Scrapes until `pool`'s retry_storm gauge reads `want` (panics at `deadline`); returns how long
/// after `since` that was, and the scrape. Prints what changed on the way (when the pool's storm
/// series appeared, when its score and rates moved): where the time went.
pub fn wait_storm(agent: &Agent, p: &PoolRef, want: f64, since: Instant, deadline: Instant) -> (Duration, StormView) {
    let mut timeline: Vec<String> = Vec::new();
    let mut last_seen = String::new();
    let found = scrape_until(agent, deadline, &format!("{RETRY_STORM}{{target=\"pool\"}} == {want} for {p}"), |s| {
        let v = StormView::of(p, s);
        let t = since.elapsed();
        let o = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}"));
        let seen =
            format!("storm={} score={} attempt_rate={} bad_ratio={}", o(v.storm), o(v.score), o(v.rate), o(v.bad));
        if seen != last_seen {
            timeline.push(format!("{:.2}s attempts={} {seen}", t.as_secs_f64(), o(v.attempts)));
            last_seen = seen;
        }
        if v.storm == Some(want) {
            Ok((t, v))
        } else {
            Err(v.to_string())
        }
    });
    eprintln!("{p}: waiting for {RETRY_STORM} == {want}: {}", timeline.join(" | "));
    found
}

/// What every `retry_storm=<state> target=pool` log line for the pool of process `comm` contains.
fn storm_line_needles(state: &str, comm: &str) -> [String; 2] {
    [format!("retry_storm={state} target=pool "), format!(" comm={comm} ")]
}

/// The agent's `retry_storm=<state> target=pool` log lines for the pool of process `comm`.
pub fn storm_log_lines(stderr: &str, state: &str, comm: &str) -> Vec<String> {
    lines_with(stderr, &storm_line_needles(state, comm))
}

/// Waits (5 s) for the agent to log `retry_storm=<state>` for `comm`'s pool; returns the line.
pub fn wait_storm_log(agent: &Agent, state: &str, comm: &str) -> String {
    wait_log_line(
        agent,
        deadline(5),
        &format!("the agent to log retry_storm={state} for comm={comm}"),
        &storm_line_needles(state, comm),
        |text| format!("retry_storm lines so far: {:?}", lines_with(text, &["retry_storm="])),
    )
}

/// Growth per retry of the gaps between attempt times (ns) and their jitter, by the definition
/// connmon documents for connmon_pool_retry_backoff_ratio and _jitter: a Theil–Sen fit of
/// log2(gap) against the retry index (backoff = 2^slope), and the coefficient of variation of the
/// gaps divided by that trend. Computed here from the client's own clock as the truth.
pub fn gap_growth(times: &[u64]) -> (f64, f64) {
    assert!(times.len() >= 4, "need 4 attempt times, have {}", times.len());
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        let m = v.len() / 2;
        if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2.0
        }
    };
    let gaps: Vec<f64> = times.windows(2).map(|w| (w[1] - w[0]).max(1) as f64).collect();
    let ys: Vec<f64> = gaps.iter().map(|g| g.log2()).collect();
    let mut slopes = Vec::new();
    for i in 0..ys.len() {
        for j in i + 1..ys.len() {
            slopes.push((ys[j] - ys[i]) / (j - i) as f64);
        }
    }
    let slope = median(&mut slopes);
    let mut intercepts: Vec<f64> = ys.iter().enumerate().map(|(i, y)| y - slope * i as f64).collect();
    let intercept = median(&mut intercepts);
    let ratios: Vec<f64> = gaps.iter().enumerate().map(|(i, g)| g / (intercept + slope * i as f64).exp2()).collect();
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let var = ratios.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / ratios.len() as f64;
    (slope.exp2(), var.sqrt() / mean)
}
