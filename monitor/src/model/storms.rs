//! Retry-storm detection. Per pool (and per listener, from the server's side) it keeps rates of
//! connect attempts, failures and connections that died young over a short window, a slow
//! baseline of the attempt rate, and backoff/jitter estimates from the start times of failed
//! attempts. A target is in a storm when its attempt rate is high against its own baseline and an
//! absolute floor, most attempts fail or die young, and retries show no effective backoff; it
//! leaves the storm after the conditions have stayed false for a hold-down period. Healthy churn
//! (many short connections the client closes itself, no failures) never meets the failure part.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::Instant,
};

use monitor_common::{PoolKey, PoolStats, RetryEvent, RETRY_FAILED};
use serde::Serialize;

use crate::{
    config::storm::StormSettings,
    model::listeners::{Listener, ListenerId},
    model::stats::{median, theil_sen},
};

/// Backoff and jitter of a sequence of failed attempts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetryEstimate {
    /// Growth of the gap between attempts per retry: 1 = flat, 2 = doubling.
    pub backoff: f64,
    /// Coefficient of variation of the gaps around their trend: 0 = perfectly regular.
    pub jitter: f64,
    pub gaps: usize,
}

/// Estimates backoff and jitter from attempt start times (ns, ascending); needs 4 attempts.
/// The trend is a Theil–Sen fit of log2(gap) against the retry index, robust to the outliers
/// that jitter produces.
pub fn estimate(times_ns: &[u64]) -> Option<RetryEstimate> {
    if times_ns.len() < 4 {
        return None;
    }
    let gaps: Vec<f64> = times_ns.windows(2).map(|w| w[1].saturating_sub(w[0]).max(1) as f64).collect();
    let ys: Vec<f64> = gaps.iter().map(|g| g.log2()).collect();
    let points: Vec<(f64, f64)> = ys.iter().enumerate().map(|(i, y)| (i as f64, *y)).collect();
    let slope = theil_sen(&points, usize::MAX)?;
    let mut intercepts: Vec<f64> = ys.iter().enumerate().map(|(i, y)| y - slope * i as f64).collect();
    let intercept = median(&mut intercepts)?;
    let ratios: Vec<f64> = gaps.iter().enumerate().map(|(i, g)| g / (intercept + slope * i as f64).exp2()).collect();
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let var = ratios.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / ratios.len() as f64;
    Some(RetryEstimate {
        backoff: slope.exp2(),
        jitter: if mean > 0.0 { var.sqrt() / mean } else { 0.0 },
        gaps: gaps.len(),
    })
}

/// Attempts per second and the bad share between two readings; `soft` says whether connections
/// the server hung up on young count as bad.
fn rates(from: (f64, Reading), to: (f64, Reading), soft: bool) -> (f64, f64) {
    let dt = to.0 - from.0;
    let d = |a: u64, b: u64| a.saturating_sub(b) as f64;
    let attempts = d(to.1.attempts, from.1.attempts);
    let soft_bad = if soft { d(to.1.soft, from.1.soft) } else { 0.0 };
    let bad = d(to.1.hard, from.1.hard) + soft_bad;
    let rate = if dt > 0.0 { attempts / dt } else { 0.0 };
    (rate, if attempts > 0.0 { (bad / attempts).min(1.0) } else { 0.0 })
}

/// Counter readings of one target at one tick (cumulative; resets are tolerated).
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    pub attempts: u64,
    /// Failed connects and connections the server reset young: always bad.
    pub hard: u64,
    /// Connections the server hung up on young: bad only against an established baseline,
    /// because a server that closes after every response looks the same.
    pub soft: u64,
}

/// How strongly each part of the storm signature matches, 0..1; `overall` is the weakest part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Score {
    pub rate: f64,
    pub failures: f64,
    pub backoff: f64,
    pub overall: f64,
}

/// What the detector knows of one target now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Signals {
    pub attempt_rate: f64,
    pub bad_ratio: f64,
    pub baseline_rate: f64,
    pub estimate: Option<RetryEstimate>,
    pub score: Score,
    pub in_storm: bool,
}

/// One pool's or listener's detector state.
#[derive(Debug, Default)]
pub struct Detector {
    /// (time s, reading) over the window.
    history: VecDeque<(f64, Reading)>,
    /// Attempt start times of failures (ns), newest last.
    failures: VecDeque<u64>,
    baseline: Option<f64>,
    first_seen: Option<f64>,
    matching_since: Option<f64>,
    calm_since: Option<f64>,
    /// An interval with attempts that mostly succeeded has been seen: server hang-ups young are
    /// then a change, not how this server always behaves (one closing after each response).
    healthy_seen: bool,
    pub signals: Signals,
}

/// What a tick changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Started,
    Ended,
}

const MAX_FAILURE_TIMES: usize = 64;

/// Share of an interval's attempts that went bad above which the pool's whole traffic is being
/// rejected (see StormSettings::min_rate_rejected).
const ALL_REJECTED: f64 = 0.9;

impl Detector {
    /// A failed attempt that started at `ts_ns`.
    pub fn failure(&mut self, ts_ns: u64) {
        if self.failures.len() == MAX_FAILURE_TIMES {
            self.failures.pop_front();
        }
        self.failures.push_back(ts_ns);
    }

    /// A success after failures: retries that follow start a new sequence.
    pub fn recovered(&mut self) {
        self.failures.clear();
    }

    /// Feeds the counters read at time `now` (seconds, monotonic) and re-evaluates.
    pub fn tick(&mut self, now: f64, r: Reading, cfg: &StormSettings) -> Option<Transition> {
        let last = self.history.back().copied();
        self.history.push_back((now, r));
        let window = cfg.window.as_secs_f64();
        while self.history.len() > 2 && now - self.history[1].0 >= window {
            self.history.pop_front();
        }
        // Exported figures are smoothed over the window; whether the signature matches is judged
        // on the last interval alone, so `for` means "sustained" and a burst inside the window
        // does not keep matching after it ended.
        let first_seen = *self.first_seen.get_or_insert(now);
        let soft = self.baseline.is_some() && now - first_seen >= cfg.warmup.as_secs_f64();
        let (rate, bad_ratio) = rates(self.history[0], (now, r), soft);
        let last = last?;
        let (tick_rate, tick_bad) = rates(last, (now, r), soft);
        let times: Vec<u64> = self.failures.iter().copied().collect();
        let estimate = estimate(&times);
        let (_, tick_hard) = rates(last, (now, r), false);
        let (_, tick_all) = rates(last, (now, r), true);
        if tick_rate > 0.0 && tick_all < cfg.bad_ratio {
            self.healthy_seen = true;
        }
        // The whole of the pool's traffic turned away: hard evidence, or server hang-ups on a pool
        // that once had healthy connections. Then the lower floor applies, whatever the baseline.
        let healthy_seen = self.healthy_seen;
        let normal = cfg.min_rate.max(cfg.rate_factor * self.baseline.unwrap_or(0.0));
        let threshold_for = |bad: f64, hard: f64| {
            if bad >= ALL_REJECTED && (hard >= ALL_REJECTED || healthy_seen) {
                cfg.min_rate_rejected.min(normal)
            } else {
                normal
            }
        };
        let threshold = threshold_for(bad_ratio, rates(self.history[0], (now, r), false).1);
        let score = Score {
            rate: (rate / threshold).min(1.0),
            failures: (bad_ratio / cfg.bad_ratio).min(1.0),
            // No estimate yet (too few failures) is no evidence of backoff.
            backoff: estimate
                .map_or(1.0, |e| ((cfg.min_backoff - e.backoff) / (cfg.min_backoff - 1.0)).clamp(0.0, 1.0)),
            overall: 0.0,
        };
        let score = Score { overall: score.rate.min(score.failures).min(score.backoff), ..score };
        let dt = now - last.0;
        let matching = tick_rate >= threshold_for(tick_bad, tick_hard)
            && tick_bad >= cfg.bad_ratio
            && estimate.is_none_or(|e| e.backoff < cfg.min_backoff);
        let mut transition = None;
        // A match is judged on the whole interval since the last tick, so the signature has held
        // since that interval began, not since this tick. Ticks run a few milliseconds early or
        // late: without the slack, two 1 s intervals could add up to 1.999 s and `for 2s` would
        // wait a whole extra tick.
        const SLACK: f64 = 0.05;
        if matching {
            self.calm_since = None;
            let since = *self.matching_since.get_or_insert(last.0);
            if !self.signals.in_storm && now - since + SLACK >= cfg.for_duration.as_secs_f64() {
                self.signals.in_storm = true;
                transition = Some(Transition::Started);
            }
        } else {
            self.matching_since = None;
            let since = *self.calm_since.get_or_insert(last.0);
            if self.signals.in_storm && now - since + SLACK >= cfg.hold_down.as_secs_f64() {
                self.signals.in_storm = false;
                transition = Some(Transition::Ended);
            }
        }
        if !self.signals.in_storm && !matching && dt > 0.0 {
            let alpha = 1.0 - (-dt.min(window) / cfg.baseline_half_life.as_secs_f64() * std::f64::consts::LN_2).exp();
            self.baseline = Some(self.baseline.map_or(tick_rate, |b| b + alpha * (tick_rate - b)));
        }
        self.signals = Signals {
            attempt_rate: rate,
            bad_ratio,
            baseline_rate: self.baseline.unwrap_or(0.0),
            estimate,
            score,
            in_storm: self.signals.in_storm,
        };
        transition
    }
}

/// Detectors keyed by target, dropping targets not seen for a while.
#[derive(Debug)]
pub struct Detectors<K> {
    pub by_key: HashMap<K, Detector>,
    last_seen: HashMap<K, f64>,
}

impl<K> Default for Detectors<K> {
    fn default() -> Self {
        Self { by_key: HashMap::new(), last_seen: HashMap::new() }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Detectors<K> {
    pub fn get(&mut self, key: &K, now: f64) -> &mut Detector {
        self.last_seen.insert(key.clone(), now);
        self.by_key.entry(key.clone()).or_default()
    }

    /// Forgets targets not updated for `idle` seconds unless they are in a storm.
    pub fn expire(&mut self, now: f64, idle: f64) {
        let stale: Vec<K> = self
            .last_seen
            .iter()
            .filter(|(k, t)| now - **t > idle && !self.by_key.get(*k).is_some_and(|d| d.signals.in_storm))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.by_key.remove(&k);
            self.last_seen.remove(&k);
        }
    }
}

/// The evidence logged when a storm starts or ends, as key=value pairs.
pub fn evidence(s: &Signals) -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    m.insert("attempt_rate", format!("{:.1}", s.attempt_rate));
    m.insert("bad_ratio", format!("{:.2}", s.bad_ratio));
    m.insert("baseline_rate", format!("{:.1}", s.baseline_rate));
    m.insert("backoff", s.estimate.map_or("unknown".into(), |e| format!("{:.2}", e.backoff)));
    m.insert("jitter", s.estimate.map_or("unknown".into(), |e| format!("{:.2}", e.jitter)));
    m.insert("score", format!("{:.2}", s.score.overall));
    m
}

/// The agent's detectors: pools fed with kernel counters and retry events, listeners with
/// queued connections and drops.
#[derive(Debug)]
pub struct StormTracker {
    cfg: StormSettings,
    pub pools: Detectors<PoolKey>,
    pub listeners: Detectors<ListenerId>,
    started: Instant,
}

/// Detectors of targets idle this long are dropped.
const IDLE_SECS: f64 = 600.0;

impl StormTracker {
    pub fn new(cfg: StormSettings) -> Self {
        Self { cfg, pools: Detectors::default(), listeners: Detectors::default(), started: Instant::now() }
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn retry_events(&mut self, events: &[RetryEvent]) {
        let now = self.now();
        for e in events {
            let d = self.pools.get(&e.pool, now);
            if e.kind == RETRY_FAILED {
                d.failure(e.ts_ns);
            } else {
                d.recovered();
            }
        }
    }

    /// One tick for every pool; `describe` names a pool for the start/end log lines.
    pub fn pools_tick(
        &mut self,
        stats: &crate::model::pool_ids::HashMap<PoolKey, PoolStats>,
        describe: &mut dyn FnMut(&PoolKey) -> String,
    ) {
        let now = self.now();
        for (key, s) in stats {
            let r = Reading {
                attempts: s.attempts,
                hard: s.failures.iter().sum::<u64>() + s.died_reset,
                soft: s.died_server_closed,
            };
            let d = self.pools.get(key, now);
            if let Some(t) = d.tick(now, r, &self.cfg) {
                log_transition(t, "pool", &describe(key), &d.signals);
            }
        }
        self.pools.expire(now, IDLE_SECS);
    }

    /// One tick for every listener whose queued-connection counter the kernel provides.
    pub fn listeners_tick(&mut self, listeners: &[Listener]) {
        let now = self.now();
        for l in listeners {
            let Some(queued) = l.queued else { continue };
            // From the server's side an attempt is a handshake that completed or was dropped.
            let r = Reading { attempts: queued + l.drops, hard: l.drops, soft: 0 };
            let d = self.listeners.get(&l.id, now);
            if let Some(t) = d.tick(now, r, &self.cfg) {
                let what = crate::model::listeners::describe(l);
                log_transition(t, "listener", &what, &d.signals);
            }
        }
        self.listeners.expire(now, IDLE_SECS);
    }

    pub fn pool_signals(&self) -> HashMap<PoolKey, Signals> {
        self.pools.by_key.iter().map(|(k, d)| (*k, d.signals.clone())).collect()
    }

    pub fn listener_signals(&self) -> HashMap<ListenerId, Signals> {
        self.listeners.by_key.iter().map(|(k, d)| (*k, d.signals.clone())).collect()
    }
}

/// One line of `connmon storms`.
#[derive(Debug, Clone, Serialize)]
pub struct ReportRow {
    pub target: &'static str,
    /// key=value description of the pool or listener, for the table.
    #[serde(skip)]
    pub what: String,
    /// The pool's or listener's labels as fields, named and typed as in `connmon pools --json`
    /// and `connmon listeners --json` (a listener adds path, cgroup and pid).
    #[serde(flatten)]
    pub labels: serde_json::Map<String, serde_json::Value>,
    #[serde(flatten)]
    pub signals: Signals,
}

/// The fields of `row` (serialized) named in `keys`, null where absent.
fn fields_of(row: &impl Serialize, keys: &[&str]) -> serde_json::Map<String, serde_json::Value> {
    let v = serde_json::to_value(row).unwrap_or_default();
    keys.iter().map(|k| (k.to_string(), v.get(*k).cloned().unwrap_or_default())).collect()
}

const LISTENER_FIELDS: [&str; 8] = ["netns", "family", "addr", "port", "path", "comm", "cgroup", "pid"];

/// Every pool and listener the detectors know, storms first, then by score.
pub fn report(
    pools: &mut crate::model::pools::PoolTracker,
    storms: &StormTracker,
    listeners: &[Listener],
) -> Vec<ReportRow> {
    let mut rows: Vec<ReportRow> = storms
        .pools
        .by_key
        .iter()
        .map(|(k, d)| {
            let p = pools.pool_for(k);
            let labels = fields_of(&p, &crate::model::pools::POOL_LABELS);
            ReportRow { target: "pool", what: pools.describe(k), labels, signals: d.signals.clone() }
        })
        .collect();
    for l in listeners {
        if let Some(d) = storms.listeners.by_key.get(&l.id) {
            let what = crate::model::listeners::describe(l);
            let labels = fields_of(l, &LISTENER_FIELDS);
            rows.push(ReportRow { target: "listener", what, labels, signals: d.signals.clone() });
        }
    }
    rows.sort_by(|a, b| {
        (b.signals.in_storm, b.signals.score.overall)
            .partial_cmp(&(a.signals.in_storm, a.signals.score.overall))
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| a.what.cmp(&b.what))
    });
    rows
}

fn log_transition(t: Transition, target: &str, what: &str, s: &Signals) {
    let state = match t {
        Transition::Started => "start",
        Transition::Ended => "end",
    };
    let ev: Vec<String> = evidence(s).into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    log::warn!("retry_storm={state} target={target} {what} {}", ev.join(" "));
}

#[cfg(test)]
#[path = "storms_tests.rs"]
mod tests;
