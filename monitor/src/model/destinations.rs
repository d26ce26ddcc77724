//! Destinations (service, address, port) seen from this host: the client pools that reach each one
//! summed, with the server's rejection evidence, and the history the destination alerts judge.
//! A server at its ceiling (Redis `maxclients`, PostgreSQL `max_connections`) shows here as a
//! destination that holds its connections while new ones are refused, reset or hung up on young;
//! a dependency that went away shows as many client workloads failing against one destination.
//! The alert rules on destinations are in `alerts::destinations`. The tracker learns each
//! destination's ceiling: the connections it held when rejections began.
//! Its state is bounded by the kernel's pool table (every destination has at least one pool) and
//! is dropped with the destination's last pool.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
};

use serde::Serialize;

use crate::{
    config::{DependencyFailingRule, DestinationSaturatedRule, NearCeilingRule},
    model::{pools::Pool, services, stats::theil_sen},
};

/// `how` values of the rejection counter, in export order.
pub const REJECTION_KINDS: [&str; 5] = ["reset_young", "closed_young", "refused", "timeout", "unreachable"];

/// Most workloads remembered per destination and sample; more are counted, not named.
const MAX_WORKLOADS: usize = 256;

/// Span over which a destination's open count must not have grown to count as held at a ceiling:
/// two evaluation intervals and a margin. Judged over this span rather than since the first
/// rejection, so one stray early rejection (a pool still warming up) cannot pin the reference low.
pub const FLAT_SECS: f64 = 12.0;

/// Samples older than the longest rule window are dropped; at most this many are kept besides.
const MAX_SAMPLES: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct DestKey {
    pub service: String,
    pub dst_addr: IpAddr,
    pub dst_port: u16,
}

impl DestKey {
    pub fn of(p: &Pool) -> DestKey {
        DestKey { service: p.service.clone(), dst_addr: p.dst_addr, dst_port: p.dst_port }
    }
}

/// The workload a pool belongs to: its cgroup, or its process name where it has none.
pub fn workload_of(p: &Pool) -> String {
    if p.cgroup.is_empty() {
        p.comm.clone()
    } else {
        p.cgroup.clone()
    }
}

/// Cumulative evidence of one pool or destination, from the kernel's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Evidence {
    pub attempts: u64,
    /// By REJECTION_KINDS: reset young, server closed young, refused, timed out (the kernel's
    /// SYN retries or the client's own connect timeout), unreachable (and other failures).
    /// Serialized as an object keyed by those names.
    #[serde(serialize_with = "by_kind")]
    pub rejections: [u64; 5],
    /// Resets received on connections that were not young (not a rejection; a failure).
    pub resets: u64,
}

fn by_kind<S: serde::Serializer>(r: &[u64; 5], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(REJECTION_KINDS.iter().zip(r))
}

impl Evidence {
    /// Failed connects and connections the server ended young. A server that closes after
    /// each response looks like a rejecting one, so hanging up young counts only for a
    /// recognised service (`soft`), where servers hold their connections.
    pub fn of(p: &Pool) -> Evidence {
        let Some(s) = &p.stats else {
            return Evidence::default();
        };
        let soft = p.service != services::OTHER;
        // FAILURE_REASONS: refused, timeout, unreachable, aborted, other.
        let [refused, timeout, unreachable, aborted, other] = s.failures;
        Evidence {
            attempts: s.attempts,
            rejections: [
                s.died_reset,
                if soft { s.died_server_closed } else { 0 },
                refused,
                timeout + aborted,
                unreachable + other,
            ],
            resets: s.resets_received.saturating_sub(refused).saturating_sub(s.died_reset),
        }
    }

    fn add(&mut self, o: &Evidence) {
        self.attempts += o.attempts;
        self.resets += o.resets;
        for (a, b) in self.rejections.iter_mut().zip(o.rejections) {
            *a += b;
        }
    }

    /// What the saturation rule counts: every rejection kind but unreachable.
    pub fn rejected(&self) -> u64 {
        self.rejections[..4].iter().sum()
    }

    /// What the dependency rule counts: every rejection and every reset.
    pub fn failed(&self) -> u64 {
        self.rejections.iter().sum::<u64>() + self.resets
    }
}

/// One destination now, and what the rules' windows saw.
#[derive(Debug, Clone, Serialize)]
pub struct Destination {
    #[serde(flatten)]
    pub key: DestKey,
    /// Open connections summed over the client pools.
    pub connections: i64,
    /// Highest sum seen in the peak window (at least the busiest pool's own peak).
    pub peak: i64,
    pub pending: i64,
    /// Whether the pools probe supplied counters (without it there is no rejection evidence).
    pub probed: bool,
    pub evidence: Evidence,
    /// Connections held when rejections last began.
    pub ceiling_observed: Option<i64>,
    /// Client workloads with open connections, most first (workload, connections).
    pub workloads: Vec<(String, i64)>,
    #[serde(skip)]
    pub recent: Recent,
}

/// Figures over the rules' windows.
#[derive(Debug, Clone, Default)]
pub struct Recent {
    /// Saturation window: rejections, the attempts of the intervals they fell in, and how many
    /// such intervals.
    pub rejected: u64,
    pub attempts: u64,
    pub rejecting_intervals: usize,
    /// How long those intervals lasted, seconds.
    pub rejecting_secs: f64,
    pub window_secs: f64,
    /// Open connections when the current run of rejections began (None: no run now).
    pub held_at_start: Option<i64>,
    /// Fewest open connections over the last FLAT_SECS: what "stopped growing" is judged against.
    pub recent_min: Option<i64>,
    /// Dependency window: workloads whose failures grew, with how many each.
    pub failing: Vec<(String, u64)>,
    /// Near-ceiling window: growth of the open count, connections per second (Theil–Sen).
    pub slope: f64,
}

#[derive(Debug, Clone)]
struct Sample {
    t: f64,
    connections: i64,
    rejected: u64,
    attempts: u64,
    failed: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct State {
    samples: VecDeque<Sample>,
    held_at_start: Option<i64>,
    ceiling: Option<i64>,
    peak: i64,
}

/// The destinations' memory between collections.
pub struct Tracker {
    saturated: DestinationSaturatedRule,
    failing: DependencyFailingRule,
    near: NearCeilingRule,
    states: HashMap<DestKey, State>,
}

/// Sums pools per destination: (connections, pending, largest pool peak, evidence, per-workload
/// connections and failures).
#[derive(Default)]
struct Sum {
    connections: i64,
    pending: i64,
    max_pool_peak: i64,
    probed: bool,
    evidence: Evidence,
    workloads: BTreeMap<String, (i64, u64)>,
}

fn sums(pools: &[Pool]) -> BTreeMap<DestKey, Sum> {
    let mut out: BTreeMap<DestKey, Sum> = BTreeMap::new();
    for p in pools {
        let s = out.entry(DestKey::of(p)).or_default();
        let e = Evidence::of(p);
        s.connections += p.active;
        s.pending += p.pending;
        s.max_pool_peak = s.max_pool_peak.max(p.peak);
        s.probed |= p.stats.is_some();
        s.evidence.add(&e);
        let w = workload_of(p);
        if s.workloads.len() < MAX_WORKLOADS || s.workloads.contains_key(&w) {
            let slot = s.workloads.entry(w).or_default();
            slot.0 += p.active;
            slot.1 += e.failed();
        }
    }
    out
}

impl Tracker {
    pub fn new(saturated: DestinationSaturatedRule, failing: DependencyFailingRule, near: NearCeilingRule) -> Self {
        Self { saturated, failing, near, states: HashMap::new() }
    }

    /// Destinations of `pools` at `now` (seconds, monotonic). `record` adds a sample to the rules'
    /// history (alert evaluations do; scrapes only read, so their pace does not matter);
    /// `scrape` starts a new peak period.
    pub fn update(&mut self, now: f64, pools: &[Pool], record: bool, scrape: bool) -> Vec<Destination> {
        let sums = sums(pools);
        self.states.retain(|k, _| sums.contains_key(k));
        let keep = self.saturated.window.0.max(self.failing.window.0).max(self.near.window.0).as_secs_f64();
        let mut out = Vec::with_capacity(sums.len());
        for (key, s) in sums {
            let st = self.states.entry(key.clone()).or_default();
            st.peak = st.peak.max(s.connections).max(s.max_pool_peak);
            let peak = st.peak;
            if scrape {
                st.peak = s.connections;
            }
            if record {
                let failed = s.workloads.iter().map(|(w, (_, f))| (w.clone(), *f)).collect();
                let sample = Sample {
                    t: now,
                    connections: s.connections,
                    rejected: s.evidence.rejected(),
                    attempts: s.evidence.attempts,
                    failed,
                };
                learn_ceiling(st, &sample);
                st.samples.push_back(sample);
                while st.samples.len() > MAX_SAMPLES || st.samples.front().is_some_and(|f| now - f.t > keep) {
                    st.samples.pop_front();
                }
            }
            let recent = recent(&self.saturated, &self.failing, &self.near, st, now);
            let mut workloads: Vec<(String, i64)> =
                s.workloads.iter().filter(|(_, (c, _))| *c > 0).map(|(w, (c, _))| (w.clone(), *c)).collect();
            workloads.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            out.push(Destination {
                key,
                connections: s.connections,
                peak,
                pending: s.pending,
                probed: s.probed,
                evidence: s.evidence,
                ceiling_observed: st.ceiling,
                workloads,
                recent,
            });
        }
        out.sort_by(|a, b| b.connections.cmp(&a.connections).then_with(|| a.key.cmp(&b.key)));
        out
    }
}

/// The rules' windowed figures of one destination.
fn recent(
    saturated: &DestinationSaturatedRule,
    failing: &DependencyFailingRule,
    near: &NearCeilingRule,
    st: &State,
    now: f64,
) -> Recent {
    {
        let within = |w: f64| st.samples.iter().filter(move |s| now - s.t <= w);
        let sat_w = saturated.window.0.as_secs_f64();
        let in_sat: Vec<&Sample> = within(sat_w).collect();
        let mut r = Recent {
            window_secs: sat_w,
            held_at_start: st.held_at_start,
            recent_min: within(FLAT_SECS).map(|s| s.connections).min(),
            ..Default::default()
        };
        // The sample just before the window is the baseline its first interval is measured from.
        let base = st.samples.iter().rev().find(|s| now - s.t > sat_w).or(in_sat.first().copied());
        if let Some(base) = base {
            let mut prev = base;
            for s in &in_sat {
                // The share is taken over the intervals with rejections: connects that succeeded
                // while the pool grew toward the ceiling say nothing about the server now.
                if s.rejected > prev.rejected {
                    r.rejecting_intervals += 1;
                    r.rejecting_secs += s.t - prev.t;
                    r.rejected += s.rejected - prev.rejected;
                    r.attempts += s.attempts.saturating_sub(prev.attempts);
                }
                prev = s;
            }
        }
        let dep_w = failing.window.0.as_secs_f64();
        let in_dep: Vec<&Sample> = within(dep_w).collect();
        if let (Some(base), Some(last)) =
            (st.samples.iter().rev().find(|s| now - s.t > dep_w).or(in_dep.first().copied()), in_dep.last())
        {
            r.failing = last
                .failed
                .iter()
                .filter_map(|(w, n)| {
                    // A workload first seen inside the window started from zero.
                    let before = base.failed.get(w).copied().unwrap_or(0);
                    let grew = if std::ptr::eq(base, *last) { 0 } else { n.saturating_sub(before) };
                    (grew > 0).then(|| (w.clone(), grew))
                })
                .collect();
            r.failing.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        }
        let pts: Vec<(f64, f64)> = within(near.window.0.as_secs_f64()).map(|s| (s.t, s.connections as f64)).collect();
        r.slope = if pts.len() >= 3 { theil_sen(&pts, 60).unwrap_or(0.0) } else { 0.0 };
        r
    }
}

/// Rejections beginning with connections held: what was held is the ceiling this host saw. A new
/// run of rejections learns it afresh (the server's limit may have changed); within a run the
/// highest count held is kept.
fn learn_ceiling(st: &mut State, sample: &Sample) {
    let Some(prev) = st.samples.back() else {
        return;
    };
    if sample.rejected > prev.rejected {
        let held = prev.connections.max(sample.connections);
        if held > 0 {
            match st.held_at_start {
                None => {
                    st.held_at_start = Some(held);
                    st.ceiling = Some(held);
                }
                Some(_) => st.ceiling = Some(st.ceiling.unwrap_or(held).max(held)),
            }
        }
    } else if st.samples.iter().rev().take(2).all(|s| s.rejected == sample.rejected) {
        // Two quiet intervals end the run; the ceiling learned is kept.
        st.held_at_start = None;
    }
}
