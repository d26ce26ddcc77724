//! Built-in alerts on unbounded growth. Each evaluation records a sample per pool and listener,
//! judges eight rules (pool growth with a projected time to the service's ceiling, saturated
//! accept queues, listen overflows, in-flight growth with a flat accept rate, retry storms, and
//! per destination, in `destinations`: a server at its ceiling, a dependency failing for many
//! workloads, growth toward a configured ceiling), and
//! runs every alert instance through the same state machine: pending until its condition has held
//! for `for`, firing until it has been false for `clear_for`. Slopes are Theil–Sen fits, so one
//! noisy sample cannot fire or resolve an alert.
pub mod destinations;
pub mod notify;
mod slow_failure;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

use crate::{
    config::{AlertsConfig, Timed as _, Timing},
    model::destinations::Destination,
    model::listeners::{Listener, ListenerId, NetnsStats, LISTENER_LABELS},
    model::pools::{Pool, POOL_LABELS},
    model::stats::theil_sen,
    model::storms::Signals,
};

/// The built-in alerts. The Prometheus rules in deploy/prometheus/ carry the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alert {
    PoolGrowth,
    QueueSaturated,
    SlowFailure,
    ListenOverflow,
    InflightGrowth,
    RetryStorm,
    DestinationSaturated,
    DependencyFailing,
    NearCeiling,
}

impl Alert {
    pub const ALL: [Alert; 9] = [
        Alert::PoolGrowth,
        Alert::QueueSaturated,
        Alert::SlowFailure,
        Alert::ListenOverflow,
        Alert::InflightGrowth,
        Alert::RetryStorm,
        Alert::DestinationSaturated,
        Alert::DependencyFailing,
        Alert::NearCeiling,
    ];

    /// The `alertname` label.
    pub const fn name(self) -> &'static str {
        match self {
            Alert::PoolGrowth => "ConnectionPoolGrowthUnbounded",
            Alert::QueueSaturated => "AcceptQueueSaturated",
            Alert::SlowFailure => "AcceptQueueSlowFailure",
            Alert::ListenOverflow => "ListenOverflow",
            Alert::InflightGrowth => "InFlightGrowth",
            Alert::RetryStorm => "RetryStorm",
            Alert::DestinationSaturated => "DestinationSaturated",
            Alert::DependencyFailing => "DependencyFailing",
            Alert::NearCeiling => "ConnectionPoolNearCeiling",
        }
    }
}

/// Where an alert instance is in its life; firing sorts first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Firing,
    Pending,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Pending => "pending",
            AlertState::Resolved => "resolved",
        }
    }
}

pub type Labels = BTreeMap<String, String>;

/// What one evaluation looks at.
pub struct Inputs<'a> {
    pub pools: &'a [Pool],
    pub listeners: &'a [Listener],
    pub namespaces: &'a [NetnsStats],
    pub pool_signals: &'a HashMap<monitor_common::PoolKey, Signals>,
    pub listener_signals: &'a HashMap<ListenerId, Signals>,
    pub destinations: &'a [Destination],
    /// Kubernetes names of destination addresses ("service data/redis"), when the API is used.
    pub peer_names: &'a HashMap<std::net::IpAddr, String>,
}

/// An alert as `connmon alerts`, the metrics and Alertmanager see it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct AlertView {
    pub alertname: String,
    pub state: AlertState,
    pub labels: Labels,
    pub annotations: Labels,
    /// When the alert started firing (RFC 3339), or when it became pending.
    pub since: String,
    /// When it resolved (RFC 3339), for resolved alerts only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ended: Option<String>,
}

#[derive(Debug)]
struct Instance {
    labels: Labels,
    annotations: Labels,
    /// When the condition began to hold, on the engine's monotonic clock (what `for` is timed on).
    pending_since: Option<f64>,
    /// The same moment on the wall clock, only to show it (`since` of a pending alert).
    pending_at: Option<SystemTime>,
    clear_since: Option<f64>,
    firing_since: Option<SystemTime>,
}

/// Fired or resolved by one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Fired(AlertView),
    Resolved(AlertView),
}

/// A target's sample histories, by what is sampled (pool size, drops, depth, ...).
type Histories = HashMap<&'static str, VecDeque<(f64, f64)>>;

pub struct Engine {
    cfg: AlertsConfig,
    ceilings: BTreeMap<String, f64>,
    /// Sample histories by target, then by what is sampled: looked up by the target's labels
    /// without cloning them (a clone per sample was most of an evaluation's allocations).
    series: HashMap<Labels, Histories>,
    instances: BTreeMap<(Alert, Labels), Instance>,
    pub fired_total: BTreeMap<Alert, u64>,
    started: Instant,
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Samples a trend is fitted to at most: Theil–Sen is quadratic in its points.
const TREND_POINTS: usize = 60;

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

pub fn pool_labels(p: &Pool) -> Labels {
    POOL_LABELS.iter().map(|k| k.to_string()).zip(p.label_values()).collect()
}

fn listener_labels(l: &Listener) -> Labels {
    LISTENER_LABELS.iter().map(|k| k.to_string()).zip(l.label_values()).collect()
}

/// `addr:port`, or the unix socket's path, for summaries.
fn local(l: &Listener) -> String {
    match l.local_labels() {
        (path, port) if port.is_empty() => path,
        (addr, port) => format!("{addr}:{port}"),
    }
}

pub(crate) fn human(secs: f64) -> String {
    humantime::format_duration(Duration::from_secs(secs.max(0.0).round() as u64)).to_string()
}

impl Engine {
    pub fn new(cfg: AlertsConfig, ceilings: BTreeMap<String, f64>) -> Self {
        Self {
            cfg,
            ceilings,
            series: HashMap::new(),
            instances: BTreeMap::new(),
            fired_total: BTreeMap::new(),
            started: Instant::now(),
        }
    }

    /// Seconds of samples the trend rules look back over.
    fn keep(&self) -> f64 {
        self.cfg
            .pool_growth
            .window
            .0
            .max(self.cfg.inflight_growth.window.0)
            .max(self.cfg.listen_overflow.window.0)
            .max(self.cfg.accept_queue_slow_failure.window.0)
            .as_secs_f64()
    }

    /// Series of samples held (one per pool and listener seen within the rules' window).
    pub fn series_len(&self) -> usize {
        self.series.values().map(HashMap::len).sum()
    }

    fn record(&mut self, kind: &'static str, labels: &Labels, now: f64, v: f64) -> Vec<(f64, f64)> {
        let keep = self.keep();
        if !self.series.contains_key(labels) {
            self.series.insert(labels.clone(), HashMap::new());
        }
        let s = self.series.get_mut(labels).map(|k| k.entry(kind).or_default()).expect("inserted above");
        s.push_back((now, v));
        while s.front().is_some_and(|(t, _)| now - t > keep) {
            s.pop_front();
        }
        s.iter().copied().collect()
    }

    /// Seconds since the engine started: the clock `evaluate` expects.
    pub fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Evaluates every rule once at `now` (see `now()`); returns what fired and what resolved.
    pub fn evaluate(&mut self, now: f64, inputs: &Inputs<'_>) -> Vec<Change> {
        let mut judged: Vec<(Alert, Labels, bool, Labels)> = Vec::new();
        // A false condition matters only to an alert with instances (`step` skips the rest), so
        // its labels and annotations are built only then: on a host with thousands of listeners
        // and pools, nearly every condition is false.
        let live: Vec<Alert> = self.instances.keys().map(|(a, _)| *a).collect();
        let needed = |alert: Alert, cond: bool| cond || live.contains(&alert);
        let mut pools: BTreeMap<Labels, (f64, String)> = BTreeMap::new();
        for p in inputs.pools {
            let e = pools.entry(pool_labels(p)).or_insert((0.0, p.service.clone()));
            e.0 += p.active as f64;
        }
        for (l, (active, service)) in &pools {
            let samples = self.record("pool", l, now, *active);
            if self.cfg.pool_growth.enabled {
                let (cond, ann) = self.pool_growth(&samples, now, service, live.contains(&Alert::PoolGrowth));
                if needed(Alert::PoolGrowth, cond) {
                    judged.push((Alert::PoolGrowth, l.clone(), cond, ann));
                }
            }
        }
        for l in inputs.listeners {
            let ll = listener_labels(l);
            let fill = if l.backlog > 0 { f64::from(l.depth) / f64::from(l.backlog) } else { 0.0 };
            let saturated = l.backlog > 0 && fill >= self.cfg.accept_queue_saturated.fill.0;
            if self.cfg.accept_queue_saturated.enabled && needed(Alert::QueueSaturated, saturated) {
                let cond = saturated;
                let ann = labels(&[
                    ("summary", format!("accept queue of {} at {:.0}% of its backlog", local(l), fill * 100.0)),
                    ("depth", l.depth.to_string()),
                    ("backlog", l.backlog.to_string()),
                ]);
                judged.push((Alert::QueueSaturated, ll.clone(), cond, ann));
            }
            // Connections queued (the peak probe's count): one series for the two rules that read it.
            let queued = l
                .queued
                .filter(|_| self.cfg.accept_queue_slow_failure.enabled || self.cfg.inflight_growth.enabled)
                .map(|n| self.record("queued", &ll, now, n as f64));
            if self.cfg.accept_queue_slow_failure.enabled {
                let abandoned = self.record("abandoned", &ll, now, l.queue.abandoned.unwrap_or(0) as f64);
                let (cond, ann) = slow_failure::judge(
                    l,
                    &local(l),
                    &abandoned,
                    queued.as_deref(),
                    now,
                    &self.cfg.accept_queue_slow_failure,
                );
                if needed(Alert::SlowFailure, cond) {
                    judged.push((Alert::SlowFailure, ll.clone(), cond, ann));
                }
            }
            let drops = self.record("drops", &ll, now, l.drops as f64);
            let overflow = self
                .cfg
                .listen_overflow
                .enabled
                .then(|| increased(&drops, now, self.cfg.listen_overflow.window.0.as_secs_f64()))
                .filter(|(cond, _)| needed(Alert::ListenOverflow, *cond));
            if let Some((cond, n)) = overflow {
                let ann = labels(&[
                    (
                        "summary",
                        format!(
                            "listener {} dropped {n} connection attempts in the last {}",
                            local(l),
                            human(self.cfg.listen_overflow.window.0.as_secs_f64())
                        ),
                    ),
                    ("drops", n.to_string()),
                ]);
                judged.push((Alert::ListenOverflow, ll.clone(), cond, ann));
            }
            let established = self.record("established", &ll, now, f64::from(l.established));
            let depth = self.record("depth", &ll, now, f64::from(l.depth));
            if let (Some(queued), true) = (&queued, self.cfg.inflight_growth.enabled) {
                let (cond, ann) = self.inflight(&established, &depth, queued, now);
                if needed(Alert::InflightGrowth, cond) {
                    judged.push((Alert::InflightGrowth, ll.clone(), cond, ann));
                }
            }
            let signals = inputs.listener_signals.get(&l.id).filter(|s| needed(Alert::RetryStorm, s.in_storm));
            if let (Some(s), true) = (signals, self.cfg.retry_storm.enabled) {
                let mut with = ll.clone();
                with.insert("target".into(), "listener".into());
                judged.push((Alert::RetryStorm, with, s.in_storm, storm_annotations(s)));
            }
        }
        for ns in inputs.namespaces {
            let nl = labels(&[("netns", ns.inode.to_string())]);
            let v = ns.tcp_ext.get("ListenOverflows").copied().unwrap_or(0) as f64;
            let series = self.record("netns_overflows", &nl, now, v);
            if self.cfg.listen_overflow.enabled {
                let (cond, n) = increased(&series, now, self.cfg.listen_overflow.window.0.as_secs_f64());
                let ann = labels(&[
                    (
                        "summary",
                        format!(
                            "network namespace {} counted {n} ListenOverflows in the last {}",
                            ns.inode,
                            human(self.cfg.listen_overflow.window.0.as_secs_f64())
                        ),
                    ),
                    ("overflows", n.to_string()),
                ]);
                judged.push((Alert::ListenOverflow, nl, cond, ann));
            }
        }
        for d in inputs.destinations {
            let dl = destinations::labels(&d.key);
            let configured = self.ceilings.get(&d.key.service).copied();
            if self.cfg.destination_saturated.enabled {
                let (cond, ann) = destinations::saturated(d, &self.cfg.destination_saturated, configured);
                if needed(Alert::DestinationSaturated, cond) {
                    judged.push((Alert::DestinationSaturated, dl.clone(), cond, ann));
                }
            }
            if self.cfg.dependency_failing.enabled {
                let name = inputs.peer_names.get(&d.key.dst_addr).cloned();
                let (cond, ann) = destinations::dependency_failing(d, &self.cfg.dependency_failing, name);
                if needed(Alert::DependencyFailing, cond) {
                    judged.push((Alert::DependencyFailing, dl.clone(), cond, ann));
                }
            }
            if let (Some(ceiling), true) = (configured, self.cfg.near_ceiling.enabled) {
                let (cond, ann) = destinations::near_ceiling(d, &self.cfg.near_ceiling, ceiling);
                if needed(Alert::NearCeiling, cond) {
                    judged.push((Alert::NearCeiling, dl, cond, ann));
                }
            }
        }
        if self.cfg.retry_storm.enabled {
            for p in inputs.pools {
                let signals = p.key.as_ref().and_then(|k| inputs.pool_signals.get(k));
                if let Some(s) = signals.filter(|s| needed(Alert::RetryStorm, s.in_storm)) {
                    let mut with = pool_labels(p);
                    with.insert("target".into(), "pool".into());
                    judged.push((Alert::RetryStorm, with, s.in_storm, storm_annotations(s)));
                }
            }
        }
        self.step(now, judged)
    }

    /// ConnectionPoolGrowthUnbounded: robust slope above the floor over the window, still growing
    /// over the most recent span (no plateau), and higher than at the window's start.
    /// Annotations only when the condition holds or `annotate` (the alert has instances).
    fn pool_growth(&self, samples: &[(f64, f64)], now: f64, service: &str, annotate: bool) -> (bool, Labels) {
        let rule = &self.cfg.pool_growth;
        let window = rule.window.0.as_secs_f64();
        let span = samples.first().map_or(0.0, |f| now - f.0);
        let in_window: Vec<(f64, f64)> = samples.iter().copied().filter(|(t, _)| now - t <= window).collect();
        let recent: Vec<(f64, f64)> =
            samples.iter().copied().filter(|(t, _)| now - t <= rule.plateau_window.0.as_secs_f64()).collect();
        let floor = rule.min_slope_per_min.0 / 60.0;
        let slope = theil_sen(&in_window, TREND_POINTS).unwrap_or(0.0);
        let recent_slope = if recent.len() >= 3 { theil_sen(&recent, TREND_POINTS).unwrap_or(0.0) } else { 0.0 };
        let current = samples.last().map_or(0.0, |s| s.1);
        let grew = in_window.first().is_some_and(|f| current > f.1);
        let cond = span >= 0.8 * window && slope >= floor && recent_slope >= floor / 2.0 && grew;
        if !cond && !annotate {
            return (cond, Labels::new());
        }
        let mut ann = labels(&[
            (
                "summary",
                format!(
                    "{service} pool keeps growing: {current:.0} connections, +{:.1}/min over the last {}",
                    slope * 60.0,
                    human(window)
                ),
            ),
            ("current", format!("{current:.0}")),
            ("slope_per_minute", format!("{:.2}", slope * 60.0)),
        ]);
        match self.ceilings.get(service) {
            Some(&ceiling) if slope > 0.0 => {
                let left = (ceiling - current) / slope;
                ann.insert("ceiling".into(), format!("{ceiling:.0}"));
                ann.insert("time_to_ceiling".into(), if left <= 0.0 { "reached".into() } else { human(left) });
                ann.insert(
                    "description".into(),
                    format!(
                        "at this rate the pool reaches the {service} ceiling of {ceiling:.0} connections in {}",
                        ann["time_to_ceiling"]
                    ),
                );
            }
            _ => {
                ann.insert("description".into(), format!("no ceiling configured for service {service:?} (set [ceilings] in the config file), so no time to ceiling"));
            }
        }
        (cond, ann)
    }

    /// InFlightGrowth (Little's law): established connections or queue depth keep growing while
    /// the accept rate stays flat, so work arrives faster than it completes.
    fn inflight(
        &self,
        established: &[(f64, f64)],
        depth: &[(f64, f64)],
        queued: &[(f64, f64)],
        now: f64,
    ) -> (bool, Labels) {
        let rule = &self.cfg.inflight_growth;
        let window = rule.window.0.as_secs_f64();
        let floor = rule.min_slope_per_min.0 / 60.0;
        let within =
            |s: &[(f64, f64)]| -> Vec<(f64, f64)> { s.iter().copied().filter(|(t, _)| now - t <= window).collect() };
        let (est, dep, q) = (within(established), within(depth), within(queued));
        let span = q.first().map_or(0.0, |f| now - f.0);
        let slope = theil_sen(&est, TREND_POINTS).unwrap_or(0.0).max(theil_sen(&dep, TREND_POINTS).unwrap_or(0.0));
        let rate = |a: &(f64, f64), b: &(f64, f64)| if b.0 > a.0 { (b.1 - a.1).max(0.0) / (b.0 - a.0) } else { 0.0 };
        let (r1, r2) = match (q.first(), q.get(q.len() / 2), q.last()) {
            (Some(a), Some(m), Some(b)) => (rate(a, m), rate(m, b)),
            _ => (0.0, 0.0),
        };
        let flat = (r2 - r1).abs() <= rule.max_accept_rate_change.0 * r1.max(r2);
        let cond = span >= 0.8 * window && slope >= floor && flat && r2 > 0.0;
        let ann = labels(&[
            (
                "summary",
                format!("in-flight connections grow by {:.1}/min while accepts stay at {r2:.1}/s", slope * 60.0),
            ),
            ("slope_per_minute", format!("{:.2}", slope * 60.0)),
            ("accept_rate", format!("{r2:.2}")),
        ]);
        (cond, ann)
    }

    fn step(&mut self, now: f64, judged: Vec<(Alert, Labels, bool, Labels)>) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (name, labels, cond, ann) in judged {
            let key = (name, labels);
            // A false condition without an instance changes nothing (`advance` would create one
            // and `retain` drop it): with thousands of listeners and pools, cloning label maps
            // into instances only to drop them was a third of an evaluation's time.
            if !cond && !self.instances.contains_key(&key) {
                continue;
            }
            let labels = key.1.clone();
            seen.insert(key);
            let timing = self.timing(name);
            let inst = self.instances.entry((name, labels.clone())).or_insert(Instance {
                labels,
                annotations: ann.clone(),
                pending_since: None,
                pending_at: None,
                clear_since: None,
                firing_since: None,
            });
            if let Some(c) = advance(name, inst, cond, ann, now, timing, &mut self.fired_total) {
                changes.push(c);
            }
        }
        // A target that disappeared counts as its condition being false.
        let gone: Vec<(Alert, Labels)> = self.instances.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        for key in gone {
            let timing = self.timing(key.0);
            if let Some(inst) = self.instances.get_mut(&key) {
                let ann = inst.annotations.clone();
                if let Some(c) = advance(key.0, inst, false, ann, now, timing, &mut self.fired_total) {
                    changes.push(c);
                }
            }
        }
        self.instances.retain(|_, i| i.pending_since.is_some() || i.firing_since.is_some());
        // Series of pools and listeners gone for longer than the window: without this, every
        // short-lived cgroup or port would keep its (emptied) series for the agent's lifetime.
        let keep = self.keep();
        self.series.retain(|_, kinds| {
            kinds.retain(|_, s| s.back().is_some_and(|(t, _)| now - t <= keep));
            !kinds.is_empty()
        });
        changes
    }

    fn timing(&self, alert: Alert) -> Timing {
        match alert {
            Alert::PoolGrowth => self.cfg.pool_growth.timing(),
            Alert::QueueSaturated => self.cfg.accept_queue_saturated.timing(),
            Alert::SlowFailure => self.cfg.accept_queue_slow_failure.timing(),
            Alert::ListenOverflow => self.cfg.listen_overflow.timing(),
            Alert::InflightGrowth => self.cfg.inflight_growth.timing(),
            Alert::RetryStorm => self.cfg.retry_storm.timing(),
            Alert::DestinationSaturated => self.cfg.destination_saturated.timing(),
            Alert::DependencyFailing => self.cfg.dependency_failing.timing(),
            Alert::NearCeiling => self.cfg.near_ceiling.timing(),
        }
    }

    /// Pending and firing alerts, firing first.
    pub fn active(&self) -> Vec<AlertView> {
        let mut out: Vec<AlertView> = self.instances.iter().map(|((name, _), i)| view(*name, i, None)).collect();
        out.sort_by(|a, b| {
            a.state.cmp(&b.state).then_with(|| a.alertname.cmp(&b.alertname)).then_with(|| a.labels.cmp(&b.labels))
        });
        out
    }
}

fn view(alert: Alert, i: &Instance, ended: Option<SystemTime>) -> AlertView {
    let since = i.firing_since.or(i.pending_at).unwrap_or_else(SystemTime::now);
    AlertView {
        alertname: alert.name().to_string(),
        state: if ended.is_some() {
            AlertState::Resolved
        } else if i.firing_since.is_some() {
            AlertState::Firing
        } else {
            AlertState::Pending
        },
        labels: i.labels.clone(),
        annotations: i.annotations.clone(),
        since: rfc3339(since),
        ended: ended.map(rfc3339),
    }
}

/// One step of an instance's state machine.
fn advance(
    name: Alert,
    i: &mut Instance,
    cond: bool,
    ann: Labels,
    now: f64,
    t: Timing,
    fired: &mut BTreeMap<Alert, u64>,
) -> Option<Change> {
    if cond {
        i.annotations = ann;
        i.clear_since = None;
        if i.firing_since.is_some() {
            return None;
        }
        if i.pending_since.is_none() {
            i.pending_at = Some(SystemTime::now());
        }
        let since = *i.pending_since.get_or_insert(now);
        if now - since >= t.for_duration.0.as_secs_f64() {
            i.firing_since = Some(SystemTime::now());
            *fired.entry(name).or_default() += 1;
            return Some(Change::Fired(view(name, i, None)));
        }
        return None;
    }
    i.pending_since = None;
    i.pending_at = None;
    i.firing_since?;
    let since = *i.clear_since.get_or_insert(now);
    if now - since >= t.clear_for.0.as_secs_f64() {
        let v = view(name, i, Some(SystemTime::now()));
        i.firing_since = None;
        return Some(Change::Resolved(v));
    }
    None
}

/// Whether a counter series rose within the last `window` seconds, and by how much.
pub(crate) fn increased(samples: &[(f64, f64)], now: f64, window: f64) -> (bool, u64) {
    let inside: Vec<&(f64, f64)> = samples.iter().filter(|(t, _)| now - t <= window).collect();
    match (inside.first(), samples.last()) {
        (Some(a), Some(b)) if b.1 > a.1 => (true, (b.1 - a.1) as u64),
        _ => (false, 0),
    }
}

fn storm_annotations(s: &Signals) -> Labels {
    let mut ann: Labels = crate::model::storms::evidence(s).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    ann.insert(
        "summary".into(),
        format!(
            "retry storm: {:.1} attempts/s, {:.0}% failing or dying young, no effective backoff",
            s.attempt_rate,
            s.bad_ratio * 100.0
        ),
    );
    ann
}

#[cfg(test)]
mod tests;
