//! Integration tests for connmon's retry-storm detector.
//!
//! Real retry behaviour from client programs written for these tests (this binary re-executed, see
//! `common::storm_clients`, plus the pool tests' churn and hold clients from `common::client`),
//! against real peers: a closed port, a listener with backlog 1 that never accepts, redis-server
//! (healthy, and turned away by `--maxclients`). Each client has a process name and a cgroup of its
//! own, so every assertion filters connmon's series by that client's pool. What the clients saw
//! (refusals, timeouts, Redis replies, their own attempt times) is the truth to compare with.
//! Needs root.
//!
//! Every agent traces every connection on the host, and the detector's timing figures ride on a
//! ring buffer of failed attempts that a flood of failures elsewhere can overflow; so the tests that
//! flood (healthy churn, maxclients), and those that time detection or need to be the only storm on
//! the host, run alone within this binary (see [`alone`]).

mod common;

use std::fmt;
use std::net::SocketAddr;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::storm_clients::*;
use common::*;

/// The pool tests' client process (does nothing in a normal run; see `common::client`).
#[test]
fn client_entry() {
    client_main()
}

/// The storm client process (does nothing in a normal run; see `common::storm_clients`).
#[test]
fn storm_client_entry() {
    storm_client_main()
}

static LOAD: RwLock<()> = RwLock::new(());

/// Tests that may run beside each other.
fn beside_others() -> RwLockReadGuard<'static, ()> {
    LOAD.read().unwrap_or_else(|e| e.into_inner())
}

/// Tests that flood the host with connections, time detection, or must be the only storm.
fn alone() -> RwLockWriteGuard<'static, ()> {
    LOAD.write().unwrap_or_else(|e| e.into_inner())
}

const RETRY_STORM: &str = "connmon_retry_storm";
const STORM_SCORE: &str = "connmon_retry_storm_score";
const BACKOFF: &str = "connmon_pool_retry_backoff_ratio";
const JITTER: &str = "connmon_pool_retry_jitter";
const ATTEMPT_RATE: &str = "connmon_pool_connect_attempt_rate";
/// The share of bad attempts: `connmon_pool_bad_attempt_ratio`, called
/// `connmon_pool_failed_attempt_ratio` before hung-up-young connections became soft evidence.
const BAD_RATIO: &str = "connmon_pool_bad_attempt_ratio";
const BAD_RATIO_OLD: &str = "connmon_pool_failed_attempt_ratio";
const SYN_RETRANS: &str = "connmon_pool_syn_retransmits_total";
const RESETS: &str = "connmon_pool_resets_total";
const SHORT_LIVED: &str = "connmon_pool_short_lived_total";
const DIED_YOUNG: &str = "connmon_pool_died_young_total";
const LISTEN_DROPS: &str = "connmon_listen_drops_total";

const MAXCLIENTS_ERR: &str = "-ERR max number of clients reached";

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One pool as the detector and the counters show it at one scrape; `None` where absent.
///
/// The pool is picked by comm and destination alone (the comm is unique to the test's client), so
/// that a lagging cgroup label does not hide it: an agent that maps cgroup ids to paths by walking
/// the cgroup tree periodically (every 5 s at commit c0ea22b) labels a pool made in a fresh cgroup
/// `cgroup=""` until its next walk. `cgroup` is the label the pool carried at this scrape; the
/// scenarios check it once their clients have stopped.
#[derive(Debug, Clone, Default)]
struct StormView {
    cgroup: Option<String>,
    storm: Option<f64>,
    score: Option<f64>,
    backoff: Option<f64>,
    jitter: Option<f64>,
    rate: Option<f64>,
    bad: Option<f64>,
    attempts: Option<f64>,
    opens: Option<f64>,
    closes: Option<f64>,
    failures: f64,
    refused: Option<f64>,
    aborted: Option<f64>,
    syn_retrans: Option<f64>,
    resets_received: Option<f64>,
    short_lived: Option<f64>,
    died_young: Option<f64>,
}

/// The sum of the samples `name` whose labels include `labels` (over the labels not given, such as
/// `reason`, or `how` where the agent splits died-young connections); `None` if there are none.
fn sum_of(s: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let hits = samples_matching(s, name, labels);
    (!hits.is_empty()).then(|| hits.iter().map(|x| x.value).sum())
}

impl StormView {
    fn of(p: &PoolRef, s: &[Sample]) -> StormView {
        let base = [
            ("comm", p.comm.as_str()),
            ("dst_addr", p.dst_addr.as_str()),
            ("dst_port", p.dst_port.as_str()),
        ];
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
    fn cgroup_is(&self, p: &PoolRef) -> bool {
        self.cgroup.as_deref() == Some(p.cgroup.as_str())
    }

    fn in_storm(&self) -> bool {
        self.storm == Some(1.0)
    }
}

impl fmt::Display for StormView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = |v: Option<f64>| {
            v.map_or("-".to_string(), |v| {
                format!("{v:.3}")
                    .trim_end_matches('0')
                    .trim_end_matches('.')
                    .to_string()
            })
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

/// How often the storm tests scrape while waiting. The detector moves once per tick (1 s), and a
/// scrape costs the agent a full collection: scraping back to back would load the host enough to
/// disturb the clients' timing.
const SCRAPE_EVERY: Duration = Duration::from_millis(200);

/// Scrapes every [`SCRAPE_EVERY`] until `f` accepts the samples; panics at `deadline` with `what`
/// and `f`'s last explanation.
fn scrape_until<T>(
    agent: &Agent,
    deadline: Instant,
    what: &str,
    mut f: impl FnMut(&[Sample]) -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        let last = match f(&agent.samples()) {
            Ok(v) => return v,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            panic!(
                "timed out after {:.1}s waiting for {what}; last observation: {last}",
                start.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(SCRAPE_EVERY);
    }
}

/// Scrapes until `pool`'s retry_storm gauge reads `want` (panics at `deadline`); returns how long
/// after `since` that was, and the scrape. Prints what changed on the way (when the pool's storm
/// series appeared, when its score and rates moved): where the time went.
fn wait_storm(
    agent: &Agent,
    p: &PoolRef,
    want: f64,
    since: Instant,
    deadline: Instant,
) -> (Duration, StormView) {
    let mut timeline: Vec<String> = Vec::new();
    let mut last_seen = String::new();
    let found = scrape_until(
        agent,
        deadline,
        &format!("{RETRY_STORM}{{target=\"pool\"}} == {want} for {p}"),
        |s| {
            let v = StormView::of(p, s);
            let t = since.elapsed();
            let o = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}"));
            let seen = format!(
                "storm={} score={} attempt_rate={} bad_ratio={}",
                o(v.storm),
                o(v.score),
                o(v.rate),
                o(v.bad)
            );
            if seen != last_seen {
                timeline.push(format!(
                    "{:.2}s attempts={} {seen}",
                    t.as_secs_f64(),
                    o(v.attempts)
                ));
                last_seen = seen;
            }
            if v.storm == Some(want) {
                Ok((t, v))
            } else {
                Err(v.to_string())
            }
        },
    );
    eprintln!(
        "{p}: waiting for {RETRY_STORM} == {want}: {}",
        timeline.join(" | ")
    );
    found
}

/// The agent's `retry_storm=<state> target=pool` log lines for the pool of process `comm`.
fn storm_log_lines(stderr: &str, state: &str, comm: &str) -> Vec<String> {
    let comm_kv = format!(" comm={comm} ");
    stderr
        .lines()
        .filter(|l| {
            l.contains(&format!("retry_storm={state} target=pool ")) && l.contains(&comm_kv)
        })
        .map(str::to_string)
        .collect()
}

/// The wall-clock time at the start of an agent log line (`[2026-11-23T03:41:05.188Z WARN ] ...`).
fn log_time(line: &str) -> SystemTime {
    let bad = || -> ! { panic!("no [YYYY-MM-DDTHH:MM:SS.mmmZ timestamp at the start of {line:?}") };
    let ts = line
        .strip_prefix('[')
        .and_then(|l| l.get(..24))
        .unwrap_or_else(|| bad());
    let num = |r: std::ops::Range<usize>| -> i64 {
        ts.get(r)
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| bad())
    };
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    // Days from 1970-01-01 to y-m-d (proleptic Gregorian; H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let ms =
        ((days * 24 + num(11..13)) * 60 + num(14..16)) * 60_000 + num(17..19) * 1000 + num(20..23);
    UNIX_EPOCH + Duration::from_millis(ms as u64)
}

/// Seconds from `from` to `to` (negative if `to` is earlier).
fn secs_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Waits (5 s) for the agent to log `retry_storm=<state>` for `comm`'s pool; returns the line.
fn wait_storm_log(agent: &Agent, state: &str, comm: &str) -> String {
    poll_until(
        deadline(5),
        &format!("the agent to log retry_storm={state} for comm={comm}"),
        || {
            let text = agent.stderr();
            storm_log_lines(&text, state, comm)
                .into_iter()
                .next()
                .ok_or_else(|| {
                    format!(
                        "retry_storm lines so far: {:?}",
                        text.lines()
                            .filter(|l| l.contains("retry_storm="))
                            .collect::<Vec<_>>()
                    )
                })
        },
    )
}

/// Growth per retry of the gaps between attempt times (ns) and their jitter, by the definition
/// connmon documents for connmon_pool_retry_backoff_ratio and _jitter: a Theil–Sen fit of
/// log2(gap) against the retry index (backoff = 2^slope), and the coefficient of variation of the
/// gaps divided by that trend. Computed here from the client's own clock as the truth.
fn gap_growth(times: &[u64]) -> (f64, f64) {
    assert!(
        times.len() >= 4,
        "need 4 attempt times, have {}",
        times.len()
    );
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        let m = v.len() / 2;
        if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2.0
        }
    };
    let gaps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).max(1) as f64)
        .collect();
    let ys: Vec<f64> = gaps.iter().map(|g| g.log2()).collect();
    let mut slopes = Vec::new();
    for i in 0..ys.len() {
        for j in i + 1..ys.len() {
            slopes.push((ys[j] - ys[i]) / (j - i) as f64);
        }
    }
    let slope = median(&mut slopes);
    let mut intercepts: Vec<f64> = ys
        .iter()
        .enumerate()
        .map(|(i, y)| y - slope * i as f64)
        .collect();
    let intercept = median(&mut intercepts);
    let ratios: Vec<f64> = gaps
        .iter()
        .enumerate()
        .map(|(i, g)| g / (intercept + slope * i as f64).exp2())
        .collect();
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let var = ratios.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / ratios.len() as f64;
    (slope.exp2(), var.sqrt() / mean)
}

// -------------------------------------------------------------------------------------------------
// 1.

#[test]
fn tight_loop_against_closed_port_is_flagged_fast() {
    let _g = alone();
    let agent = Agent::start(&[]);
    let dst = local(free_local_port());
    let lost_before = lost(&agent.samples(), "retry_ring_full");
    let mut c = StormClient::spawn("stl", dst, StormMode::TightLoop { pause_ms: 10 }, None);
    let p = c.pool();

    // Waits longer than the 5 s asked for, so that a slow detection is measured, not just refused.
    let (took, v) = wait_storm(
        &agent,
        &p,
        1.0,
        c.started,
        c.started + Duration::from_secs(10),
    );
    // Retry timing events of every pool on the host share one ring: a flood elsewhere drops some
    // of ours, and each drop merges two gaps into one.
    let lost_meanwhile = lost(&agent.samples(), "retry_ring_full") - lost_before;
    let line = wait_storm_log(&agent, "start", &c.name);
    let logged = secs_between(c.started_wall, log_time(&line));
    eprintln!(
        "tight loop: {p} seen flagged {:.2}s after the client started (the agent logged the start {logged:.2}s after it): {v}",
        took.as_secs_f64()
    );
    eprintln!("tight loop: agent logged: {line}");
    assert!(
        took <= Duration::from_secs(5),
        "{p}: {RETRY_STORM} read 1 only {took:?} after the client started, want within 5 s (the agent's log puts the start at {logged:.2}s): {v}"
    );

    let r = c.stop();
    assert_eq!(
        r.outcome("refused"),
        r.attempts,
        "test setup: every connect to {dst} must be refused: {:?}",
        r.outcomes
    );
    eprintln!(
        "tight loop: client made {} attempts in {:.1}s ({:.0}/s)",
        r.attempts,
        r.elapsed_s,
        r.attempts as f64 / r.elapsed_s
    );
    // The client's own view of the (up to) 64 attempts the detector's estimate covered.
    let upto = (v.attempts.unwrap_or(0.0) as usize).min(r.times_ns.len());
    let last = &r.times_ns[upto.saturating_sub(64)..upto];
    let gaps_ms: Vec<f64> = last
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e6)
        .collect();
    let (cb, cj) = gap_growth(last);
    let client = format!(
        "the client's own clock over those {} attempts: growth {cb:.3}, jitter {cj:.3}, gaps {:.2}..{:.2} ms",
        last.len(),
        gaps_ms.iter().copied().fold(f64::INFINITY, f64::min),
        gaps_ms.iter().copied().fold(0.0, f64::max)
    );
    eprintln!("tight loop: {client}; retry events lost to a full ring meanwhile (whole host): {lost_meanwhile}");

    let backoff = v
        .backoff
        .unwrap_or_else(|| panic!("{p}: no {BACKOFF} while in a storm: {v}"));
    let jitter = v
        .jitter
        .unwrap_or_else(|| panic!("{p}: no {JITTER} while in a storm: {v}"));
    assert!(
        backoff < 1.3,
        "{p}: retries every 10 ms have no backoff, yet {BACKOFF} = {backoff}; {client}: {v}"
    );
    // The jitter is a mean/variance figure: one retry event of ours dropped from the shared ring
    // (a flood by another process on the host) makes one gap twice as long and the figure jumps,
    // so it is judged only when the agent lost no retry events while the storm built up. (Within
    // this binary the flooding tests never run beside this one.)
    if lost_meanwhile == 0.0 {
        assert!(
            jitter < 0.3,
            "{p}: retries every 10 ms are regular, yet {JITTER} = {jitter}; {client}: {v}"
        );
    } else {
        eprintln!(
            "tight loop: NOTE: {JITTER} = {jitter:.3} not judged: the agent dropped {lost_meanwhile} retry events host-wide (ring full) meanwhile; {client}"
        );
    }
    assert!(
        v.refused.unwrap_or(0.0) > 0.0,
        "{p}: no failures{{reason=\"refused\"}}: {v}"
    );
    assert!(
        v.resets_received.unwrap_or(0.0) > 0.0,
        "{p}: refusals arrive as RSTs, yet no resets{{direction=\"received\"}}: {v}"
    );
    let n = r.attempts as f64;
    let (v, ring_lost) = scrape_until(
        &agent,
        deadline(10),
        &format!("{p}: attempts = refused = resets received = {n}, and its cgroup label"),
        |s| {
            let v = StormView::of(&p, s);
            if v.attempts == Some(n)
                && v.refused == Some(n)
                && v.failures == n
                && v.resets_received == Some(n)
                && v.cgroup_is(&p)
            {
                Ok((v, lost(s, "retry_ring_full") - lost_before))
            } else {
                Err(v.to_string())
            }
        },
    );
    let tail = &r.times_ns[r.times_ns.len().saturating_sub(64)..];
    let (tb, tj) = gap_growth(tail);
    eprintln!("tight loop: after the stop: {v}; retry events lost to a full ring since the client started (whole host): {ring_lost}; client's own last 64 attempts: growth {tb:.3}, jitter {tj:.3}");
}

// -------------------------------------------------------------------------------------------------
// 2.

#[test]
fn backlog_one_never_accepting_is_flagged() {
    let _g = beside_others();
    let agent = Agent::start(&[]);
    let ns = Netns::new();
    let port = unique_port();
    let addr = local(port);
    let _listener = ns.run(|| listen_tcp(addr, 1));
    let ino = ns.inode().to_string();
    let port_s = port.to_string();
    let listener = [("netns", ino.as_str()), ("port", port_s.as_str())];
    let drops_before = scrape_until(
        &agent,
        deadline(15),
        &format!(
            "the agent to export {LISTEN_DROPS} for {addr} in {}",
            ns.name()
        ),
        |s| sample(s, LISTEN_DROPS, &listener).ok_or_else(|| "absent".to_string()),
    );

    let mut c = StormClient::spawn(
        "sbl",
        addr,
        StormMode::ConnectTimeout {
            threads: 4,
            timeout_ms: 200,
        },
        Some(&ns),
    );
    let p = c.pool();
    let (took, v) = wait_storm(
        &agent,
        &p,
        1.0,
        c.started,
        c.started + Duration::from_secs(15),
    );
    eprintln!(
        "backlog 1: {p} flagged {:.2}s after the client started: {v}",
        took.as_secs_f64()
    );
    assert!(
        v.syn_retrans.unwrap_or(0.0) > 0.0 || v.aborted.unwrap_or(0.0) > 0.0,
        "{p}: SYNs into a full accept queue are dropped, yet neither SYN retransmits nor aborted connects: {v}"
    );

    let ss_before = ss_listener(&ns, "127.0.0.1", port).expect("ss lost the listener");
    let s = agent.samples();
    let ss_after = ss_listener(&ns, "127.0.0.1", port).expect("ss lost the listener");
    let drops = sample_expect(&s, LISTEN_DROPS, &listener);
    eprintln!(
        "backlog 1: listener {addr}: {LISTEN_DROPS} {drops_before} -> {drops} (ss: {ss_before:?} .. {ss_after:?})"
    );
    assert!(
        drops > drops_before,
        "{LISTEN_DROPS} of {addr} did not increase ({drops_before} -> {drops}); ss: {ss_after:?}"
    );
    assert!(
        ss_before.drops as f64 <= drops && drops <= ss_after.drops as f64,
        "{LISTEN_DROPS} {drops} is not within ss's bracket [{}, {}]",
        ss_before.drops,
        ss_after.drops
    );
    // From the server's side the same storm: nearly every attempt on the listener is a drop.
    let storm_labels = [listener[0], listener[1], ("target", "listener")];
    let listener_storm = scrape_until(
        &agent,
        deadline(10),
        &format!("{RETRY_STORM}{{target=\"listener\"}} == 1 for {addr}"),
        |s| match sample(s, RETRY_STORM, &storm_labels) {
            Some(v) if v == 1.0 => Ok(v),
            other => Err(format!("{other:?}")),
        },
    );
    let port_kv = format!(" port={port} ");
    let listener_line = agent
        .stderr()
        .lines()
        .find(|l| {
            l.contains("retry_storm=start target=listener ")
                && l.contains(&format!("netns={ino} "))
                && l.contains(&port_kv)
        })
        .map(str::to_string);
    eprintln!("backlog 1: listener {addr} in a storm too ({RETRY_STORM}={listener_storm}); agent logged: {listener_line:?}");

    let r = c.stop();
    eprintln!(
        "backlog 1: client made {} attempts in {:.1}s ({:.1}/s): {:?}",
        r.attempts,
        r.elapsed_s,
        r.attempts as f64 / r.elapsed_s,
        r.outcomes
    );
    assert!(
        r.outcome("timeout") > 0,
        "test setup: no connect timed out against the full queue: {:?}",
        r.outcomes
    );
    let v = scrape_until(
        &agent,
        deadline(10),
        &format!(
            "{p}: attempts = {} as the client counted, and its cgroup label",
            r.attempts
        ),
        |s| {
            let v = StormView::of(&p, s);
            if v.attempts == Some(r.attempts as f64) && v.cgroup_is(&p) {
                Ok(v)
            } else {
                Err(v.to_string())
            }
        },
    );
    eprintln!("backlog 1: after the stop: {v}");
}

// -------------------------------------------------------------------------------------------------
// 3.

#[test]
fn exponential_backoff_with_jitter_is_not_flagged() {
    let _g = beside_others();
    // A fixed seed makes the schedule reproducible; CONNMON_TEST_BACKOFF_SEED tries others.
    // (With full jitter and a 2 s cap the estimate is a random variable: over 12 attempts the
    // Theil–Sen growth of such schedules is below 1.4 about 1% of the time; seed 1 plans 1.63.)
    let seed: u64 = std::env::var("CONNMON_TEST_BACKOFF_SEED")
        .ok()
        .map_or(1, |s| s.parse().expect("seed"));
    let (base_ms, cap_ms, attempts) = (20, 2000, 12);
    let sleeps = backoff_sleeps(
        Duration::from_millis(base_ms),
        Duration::from_millis(cap_ms),
        attempts,
        seed,
    );
    let mut planned = vec![0u64];
    for d in &sleeps {
        planned.push(planned.last().unwrap() + d.as_nanos() as u64);
    }
    let (pb, pj) = gap_growth(&planned);
    eprintln!(
        "backoff: seed {seed}: sleeps {:?} ms, planned growth {pb:.3}, jitter {pj:.3}",
        sleeps.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
    );

    let agent = Agent::start(&[]);
    let dst = local(free_local_port());
    let lost_before = lost(&agent.samples(), "retry_ring_full");
    let mut c = StormClient::spawn(
        "sbk",
        dst,
        StormMode::Backoff {
            base_ms,
            cap_ms,
            attempts,
            seed,
        },
        None,
    );
    let p = c.pool();
    let mut views: Vec<(f64, StormView)> = Vec::new();
    // One scrape a second, on a fixed schedule, until the client has made all its attempts.
    let report = loop {
        views.push((
            c.started.elapsed().as_secs_f64(),
            StormView::of(&p, &agent.samples()),
        ));
        let next = c.started + Duration::from_secs(views.len() as u64);
        if let Some(r) = c.try_done(next.saturating_duration_since(Instant::now())) {
            break r;
        }
        assert!(
            c.started.elapsed() < Duration::from_secs(30),
            "the backoff client is still retrying after 30 s"
        );
    };
    assert_eq!(
        report.outcome("refused"),
        u64::from(attempts),
        "test setup: every connect to {dst} must be refused: {:?}",
        report.outcomes
    );
    let (cb, cj) = gap_growth(&report.times_ns);
    eprintln!(
        "backoff: client made {} attempts in {:.1}s; from its own clock: growth {cb:.3}, jitter {cj:.3}",
        report.attempts, report.elapsed_s
    );

    // The end: every failure counted, and the estimate over all of them exported: the agent's
    // figure meets the client's own. Retry timing events of all pools on the host share one ring;
    // if a flood elsewhere overflowed it meanwhile, some of ours may be missing and the figures
    // cannot meet: then the estimate is taken once a tick has passed after the last refusal.
    let n = f64::from(attempts);
    let offsets_ms: Vec<u64> = report
        .times_ns
        .iter()
        .map(|t| (t - report.times_ns[0]) / 1_000_000)
        .collect();
    let mut complete_since: Option<Instant> = None;
    let (fin, lost_meanwhile) = scrape_until(
        &agent,
        deadline(10),
        &format!("{p}: {n} refusals counted and {BACKOFF} = {cb:.3}, {JITTER} = {cj:.3} (± 0.02: the client's own figures from its attempts at {offsets_ms:?} ms)"),
        |s| {
            let v = StormView::of(&p, s);
            let lost_now = lost(s, "retry_ring_full") - lost_before;
            views.push((c.started.elapsed().as_secs_f64(), v.clone()));
            if v.refused != Some(n) {
                return Err(v.to_string());
            }
            let since = *complete_since.get_or_insert_with(Instant::now);
            match (v.backoff, v.jitter) {
                (Some(b), Some(j)) if (b - cb).abs() < 0.02 && (j - cj).abs() < 0.02 => Ok((v, lost_now)),
                (Some(_), _) if lost_now > 0.0 && since.elapsed() > Duration::from_millis(1500) => Ok((v, lost_now)),
                _ => Err(format!("{v}; retry events lost to a full ring since the start (whole host): {lost_now}")),
            }
        },
    );
    for (t, v) in &views {
        eprintln!("backoff: t={t:5.2}s {v}");
    }
    eprintln!(
        "backoff: {} scrapes, {} with {RETRY_STORM}",
        views.len(),
        views.iter().filter(|(_, v)| v.storm.is_some()).count()
    );
    let seen: Vec<f64> = views.iter().filter_map(|(_, v)| v.storm).collect();
    assert!(
        views.iter().all(|(_, v)| !v.in_storm()),
        "{p}: a jittered exponential backoff was flagged as a retry storm (see the scrapes above)"
    );
    assert!(
        seen.len() >= 5,
        "{p}: {RETRY_STORM} present in only {} of {} scrapes",
        seen.len(),
        views.len()
    );
    let b = fin.backoff.unwrap();
    assert!(
        b > 1.4,
        "{p}: {BACKOFF} = {b} at the end, expected > 1.4 for a doubling backoff: {fin}"
    );
    let j = fin
        .jitter
        .unwrap_or_else(|| panic!("{p}: no {JITTER}: {fin}"));
    eprintln!("backoff: final: {fin}; client's own: growth {cb:.3} jitter {cj:.3}; retry events lost (whole host): {lost_meanwhile}");
    if lost_meanwhile > 0.0 && ((b - cb).abs() >= 0.02 || (j - cj).abs() >= 0.02) {
        eprintln!("backoff: NOTE: {lost_meanwhile} retry events were lost host-wide; the agent's figures differ from the client's own");
    }
}

// -------------------------------------------------------------------------------------------------
// 4.

#[test]
fn healthy_churn_against_redis_is_never_flagged() {
    let _g = alone();
    let redis = Redis::start(free_local_port(), &[]);
    let dst = redis.addr();
    let agent = Agent::start(&[]);
    let mut c = ClientProc::spawn(ClientSpec::new(
        "sch",
        dst,
        Proto::Redis,
        Mode::Churn {
            count: 100_000_000,
            max_secs: 30.0,
        },
    ));
    let p = PoolRef::of(&c, dst);
    let t0 = Instant::now();
    let mut views: Vec<(f64, StormView)> = Vec::new();
    // One scrape a second, on a fixed schedule (a scrape itself takes a while on a busy host).
    let cycles: u64 = loop {
        views.push((
            t0.elapsed().as_secs_f64(),
            StormView::of(&p, &agent.samples()),
        ));
        let next = t0 + Duration::from_secs(views.len() as u64);
        if let Some(n) = c.try_expect("done", next.saturating_duration_since(Instant::now())) {
            break n.parse().expect("done N");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the churn client is still running after 60 s"
        );
    };
    let churned = t0.elapsed();
    c.exit();
    let n = cycles as f64;
    let fin = scrape_until(
        &agent,
        deadline(20),
        &format!("{p}: {cycles} opens and closes counted"),
        |s| {
            let v = StormView::of(&p, s);
            if v.opens == Some(n) && v.closes == Some(n) {
                Ok(v)
            } else {
                Err(v.to_string())
            }
        },
    );
    for (t, v) in views.iter().step_by(5) {
        eprintln!("churn: t={t:5.2}s {v}");
    }
    eprintln!(
        "churn: {cycles} cycles in {:.1}s ({:.0}/s); final: {fin}",
        churned.as_secs_f64(),
        n / churned.as_secs_f64()
    );

    let seen: Vec<f64> = views.iter().filter_map(|(_, v)| v.storm).collect();
    assert!(
        views.iter().all(|(_, v)| !v.in_storm()),
        "{p}: healthy churn was flagged as a retry storm at some scrape"
    );
    assert!(
        seen.len() >= 25,
        "{p}: {RETRY_STORM} present in only {} of {} scrapes (want >= 25)",
        seen.len(),
        views.len()
    );
    assert!(
        n > 1000.0,
        "{p}: only {cycles} connections opened; churn should be fast"
    );
    assert_eq!(
        fin.failures, 0.0,
        "{p}: a healthy Redis refused nothing: {fin}"
    );
    assert_eq!(
        fin.died_young,
        Some(0.0),
        "{p}: the client closed every connection itself; none died young: {fin}"
    );
    let short = fin.short_lived.unwrap_or(0.0);
    assert!(
        short > 1000.0 && short <= n,
        "{p}: churn should show in {SHORT_LIVED} (got {short} of {cycles}): {fin}"
    );
    let worst_bad = views.iter().filter_map(|(_, v)| v.bad).fold(0.0, f64::max);
    let worst_score = views
        .iter()
        .filter_map(|(_, v)| v.score)
        .fold(0.0, f64::max);
    eprintln!(
        "churn: {RETRY_STORM} = 0 at all {} scrapes that had it ({} in all); highest {BAD_RATIO} {worst_bad}, highest overall score {worst_score}",
        seen.len(),
        views.len()
    );
}

// -------------------------------------------------------------------------------------------------
// 5.

#[test]
fn redis_maxclients_storm_starts_and_ends() {
    let _g = alone();
    let redis = Redis::start(free_local_port(), &["--maxclients", "2"]);
    let dst = redis.addr();
    // Redis::start's own PING connection must be gone before the holders take both slots.
    poll_until(
        deadline(10),
        "redis-server to have no clients",
        || match redis.connected_clients_but_me() {
            0 => Ok(()),
            n => Err(format!("{n} clients")),
        },
    );
    let holders = ClientProc::spawn(ClientSpec::new(
        "shd",
        dst,
        Proto::Redis,
        Mode::Hold { count: 2 },
    ));
    let hold_down = 5;
    let agent = Agent::start(&["--storm.hold-down", &format!("{hold_down}s")]);

    let mut c = StormClient::spawn("srd", dst, StormMode::RedisReconnect { threads: 4 }, None);
    let p = c.pool();
    let (took, v) = wait_storm(
        &agent,
        &p,
        1.0,
        c.started,
        c.started + Duration::from_secs(10),
    );
    let line = wait_storm_log(&agent, "start", &c.name);
    eprintln!(
        "maxclients: {p} seen flagged {:.2}s after the clients started (logged at {:.2}s): {v}",
        took.as_secs_f64(),
        secs_between(c.started_wall, log_time(&line))
    );
    eprintln!("maxclients: agent logged: {line}");
    assert!(
        took <= Duration::from_secs(10),
        "{p}: {RETRY_STORM} read 1 only {took:?} after the clients started, want within 10 s: {v}"
    );
    let young = v.died_young.unwrap_or(0.0);
    assert!(
        young > 0.0,
        "{p}: Redis hangs up on every reconnect, yet {DIED_YOUNG} = {young}: {v}"
    );

    let r = c.stop();
    let stopped = Instant::now();
    eprintln!(
        "maxclients: clients made {} attempts in {:.1}s ({:.0}/s): {:?}",
        r.attempts,
        r.elapsed_s,
        r.attempts as f64 / r.elapsed_s,
        r.outcomes
    );
    assert!(
        r.outcome(MAXCLIENTS_ERR) * 2 > r.attempts,
        "test setup: Redis should turn most reconnects away with {MAXCLIENTS_ERR:?}: {:?}",
        r.outcomes
    );

    let stopped_wall = SystemTime::now();
    let (calmed, v_end) = wait_storm(
        &agent,
        &p,
        0.0,
        stopped,
        stopped + Duration::from_secs(hold_down + 10),
    );
    let line = wait_storm_log(&agent, "end", &c.name);
    eprintln!(
        "maxclients: storm seen over {:.2}s after the clients stopped (logged at {:.2}s; hold-down {hold_down}s): {v_end}",
        calmed.as_secs_f64(),
        secs_between(stopped_wall, log_time(&line))
    );
    eprintln!("maxclients: agent logged: {line}");
    assert!(
        calmed >= Duration::from_secs(hold_down - 1),
        "{p}: the storm ended {calmed:?} after the clients stopped, sooner than the {hold_down}s hold-down"
    );
    let young_end = v_end.died_young.unwrap_or(0.0);
    assert!(
        young_end > young,
        "{p}: {DIED_YOUNG} did not grow while the storm went on ({young} -> {young_end})"
    );
    drop(holders);
}

// -------------------------------------------------------------------------------------------------
// 6.

#[test]
fn storms_cli_reports_the_storm() {
    let _g = alone();
    let dst = local(free_local_port());
    let mut c = StormClient::spawn("scl", dst, StormMode::TightLoop { pause_ms: 10 }, None);
    let out = connmon(&["storms", "--for", "6s", "--json"]);
    let r = c.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "connmon storms failed with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert_eq!(
        r.outcome("refused"),
        r.attempts,
        "test setup: every connect to {dst} must be refused: {:?}",
        r.outcomes
    );
    let rows = parse_json_lines(&stdout);
    let mine = format!(" comm={} cgroup={}", c.name, c.cgroup());
    let show = |rows: &[serde_json::Value]| {
        rows.iter()
            .take(10)
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        !rows.is_empty(),
        "connmon storms printed no rows; stderr:\n{stderr}"
    );
    let first = &rows[0];
    eprintln!("storms CLI: first of {} rows: {first}", rows.len());
    assert_eq!(
        first["in_storm"],
        serde_json::Value::Bool(true),
        "the first row is not in a storm; rows:\n{}",
        show(&rows)
    );
    // Storms first: nothing in a storm after the first row that is not.
    let storms = rows
        .iter()
        .take_while(|r| r["in_storm"] == serde_json::Value::Bool(true))
        .count();
    assert!(
        rows[storms..]
            .iter()
            .all(|r| r["in_storm"] != serde_json::Value::Bool(true)),
        "a storm row comes after a calm one; rows:\n{}",
        show(&rows)
    );
    let at = rows
        .iter()
        .position(|r| r["what"].as_str().is_some_and(|w| w.ends_with(&mine)))
        .unwrap_or_else(|| {
            panic!(
                "no row for the tight-loop client (what ending {mine:?}); rows:\n{}",
                show(&rows)
            )
        });
    let row = &rows[at];
    // Ours is the first row, a pool in a storm. The command watches the whole host, though: a
    // process elsewhere storming at the same time (another test binary, say) may rank before it;
    // then that row is a storm too, and ours must be among the leading storm rows.
    if at != 0 {
        let others: Vec<&str> = rows[..at].iter().map(|r| json_str(r, "what")).collect();
        eprintln!(
            "storms CLI: our row is #{at}; storms elsewhere on the host rank before it: {others:?}"
        );
    }
    assert!(at < storms, "the tight-loop client's row is not among the leading storm rows (row #{at}, {storms} storms); rows:\n{}", show(&rows));
    assert_eq!(json_str(row, "target"), "pool", "{row}");
    let backoff = row["estimate"]["backoff"]
        .as_f64()
        .unwrap_or_else(|| panic!("no estimate in {row}"));
    assert!(
        backoff < 1.3,
        "retries every 10 ms have no backoff, yet the CLI says {backoff}: {row}"
    );
    assert!(
        json_f64(row, "bad_ratio") >= 0.5,
        "every attempt failed, yet bad_ratio is low: {row}"
    );
    assert!(
        json_f64(row, "attempt_rate") >= 5.0,
        "about 100 attempts a second, yet attempt_rate is low: {row}"
    );
    eprintln!("storms CLI: our row: {row}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("retry_storm=start target=pool ")
                && l.contains(&format!(" comm={} ", c.name))),
        "connmon storms did not log retry_storm=start for {}; stderr:\n{stderr}",
        c.name
    );
}
