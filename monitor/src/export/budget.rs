//! The series budget: which listeners and pools an exposition shows, and in how much detail.
//!
//! Every listener and pool gets one of two levels:
//! - **detail**: every series connmon has for it (histograms, failures by reason, storm scores,
//!   queue figures);
//! - **summary**: the gauges and counters the Prometheus rules read (listener: queue depth and
//!   backlog, drops, established, accepts; pool: open connections, attempts, opens, and the
//!   failure and died-young counters that have counted something; its destination: open
//!   connections and the rejections seen), plus the storm flag while a storm lasts.
//!
//! Entities that matter now come first and get detail: those failing (failures, resets, drops or
//! abandoned connections counted since the last scrape), queueing (a peak above a tenth of the
//! backlog, a wait of 100 ms or more, a queue that drains slower than clients wait; or a
//! non-empty accept or SYN queue at two scrapes in a row), storming, growing (open or established
//! connections up by a tenth and at least 2 since the entity's baseline), with connects in flight
//! at two scrapes in a row, or named by a pending or firing agent alert. An entity stays notable for `hold` after the last time it was, so the series the
//! rules take rates and trends over stay continuous through their windows. Everyone gets a
//! summary first, notable first (by rank: alerted, failing, queueing, growing, held) and then the
//! busiest, listeners and pools in turn, while the budget lasts less a reserve of up to half of it;
//! the reserve gives the notable their detail, and what is left upgrades the rest in the same
//! order. So a host that fits the budget shows everything in detail, and a crowded one shows the
//! quiet tail as summaries, then leaves the quietest out (listeners dropped, pools folded into
//! `other`), each counted in `connmon_series_left_out`.
//!
//! Costs are counted per entity as the exporters below emit them (an upper bound where a series is
//! conditional), so the exposition stays within the budget, the agent's own series included.
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use monitor_common::HIST_BUCKETS;

use crate::{
    alerts::AlertView,
    model::listeners::{Listener, ListenerId},
    model::storms::Signals,
};

pub const SERIES_BUDGET: &str = "connmon_series_budget";
pub const SERIES_LEFT_OUT: &str = "connmon_series_left_out";

/// How much of an entity is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Summary,
    Detail,
}

/// `[series]` settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Series an exposition aims to stay within (0: no budget, everything in detail).
    pub budget: usize,
    /// How long an entity stays notable after it last was.
    pub hold: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { budget: DEFAULT_BUDGET, hold: DEFAULT_HOLD }
    }
}

pub const DEFAULT_BUDGET: usize = crate::config::DEFAULT_SERIES_BUDGET;
pub const DEFAULT_HOLD: Duration = crate::config::DEFAULT_SERIES_HOLD;

/// A histogram as exposed: one series per bucket, `_sum` and `_count`.
pub(crate) const HIST_SERIES: usize = HIST_BUCKETS + 2;

/// What the selector remembers of an entity between scrapes.
#[derive(Debug, Clone)]
struct Memory {
    /// Sum of the counters whose increase makes the entity notable (failures, drops...).
    trouble: u64,
    /// Open (pools) or established (listeners) connections when the baseline was taken.
    baseline: i64,
    baseline_at: Instant,
    notable_until: Option<Instant>,
    /// The weak signs (see [`Candidate::hint`]) were there at the last scrape.
    hinted: bool,
    seen: u64,
}

/// One candidate for the exposition: what the selector needs to know about it.
pub(crate) struct Candidate {
    /// Trouble counters' sum (see [`Memory::trouble`]).
    pub trouble: u64,
    /// Open or established connections.
    pub connections: i64,
    /// Notable on its own figures right now (a queue filling, a measurable wait, a storm...).
    pub busy_now: bool,
    /// Signs that busy hosts show in passing (a connection in the queue or in flight at the
    /// instant of the scan): notable only when seen at two scrapes in a row.
    pub hint: bool,
    /// Named by an active agent alert.
    pub alerted: bool,
    /// Ordering among the quiet: higher first.
    pub weight: i64,
    pub summary_cost: usize,
    pub detail_cost: usize,
}

/// Remembers entities across scrapes (notable hold, baselines); one per agent.
#[derive(Debug, Default)]
pub struct Selector {
    settings: Settings,
    listeners: HashMap<ListenerId, Memory>,
    pools: HashMap<[String; 5], Memory>,
    scrape: u64,
}

/// Who gets what, and what was left out.
#[derive(Debug, Default)]
pub struct Plan {
    /// Per listener of the snapshot (same order): its level, None when left out.
    pub listeners: Vec<Option<Level>>,
    /// Per pool row: its level, None when folded into `other`.
    pub pools: Vec<Option<Level>>,
    /// (kind, level) -> entities left out at that level: `detail` counts entities shown as a
    /// summary only, `all` those not shown at all.
    pub left_out: Vec<(&'static str, &'static str, usize)>,
    pub budget: usize,
}

impl Selector {
    pub fn new(settings: Settings) -> Self {
        Selector { settings, ..Default::default() }
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Whether an entity matters now; updates its memory.
    fn notable<K: std::hash::Hash + Eq + Clone>(
        map: &mut HashMap<K, Memory>,
        key: &K,
        c: &Candidate,
        now: Instant,
        scrape: u64,
        hold: Duration,
    ) -> Option<u8> {
        // First seen, every count so far is news: counters start with the agent (pools) or are
        // rare enough (drops) that an entity with any is worth its detail for a while.
        let m = map.entry(key.clone()).or_insert_with(|| Memory {
            trouble: 0,
            baseline: c.connections,
            baseline_at: now,
            notable_until: None,
            hinted: false,
            seen: scrape,
        });
        // A baseline older than the hold is renewed, so slow steady states do not count as growth.
        if now.duration_since(m.baseline_at) > hold {
            m.baseline = c.connections.min(m.baseline.max(0) + (c.connections - m.baseline.max(0)) / 2);
            m.baseline_at = now;
        }
        let growing = c.connections >= m.baseline + 2 && c.connections * 10 >= m.baseline * 11;
        let troubled = c.trouble > m.trouble;
        let lasting = c.hint && m.hinted;
        m.trouble = c.trouble;
        m.hinted = c.hint;
        m.seen = scrape;
        // Rank among the notable: alerted, failing, queueing, growing, held from before.
        let rank = [c.alerted, troubled, c.busy_now || lasting, growing].iter().position(|b| *b);
        if rank.is_some() {
            m.notable_until = Some(now + hold);
        }
        match rank {
            Some(r) => Some(r as u8),
            None => m.notable_until.is_some_and(|t| now < t).then_some(4),
        }
    }

    /// Decides the levels. `fixed` is the series the exposition has besides listeners and pools.
    pub(crate) fn plan(
        &mut self,
        listeners: &[(ListenerId, Candidate)],
        pools: &[([String; 5], Candidate)],
        fixed: usize,
        other_cost: usize,
    ) -> Plan {
        let now = Instant::now();
        self.scrape += 1;
        let (scrape, hold) = (self.scrape, self.settings.hold);
        let mut plan = Plan {
            listeners: vec![None; listeners.len()],
            pools: vec![None; pools.len()],
            left_out: Vec::new(),
            budget: self.settings.budget,
        };
        let notable_l: Vec<Option<u8>> =
            listeners.iter().map(|(k, c)| Self::notable(&mut self.listeners, k, c, now, scrape, hold)).collect();
        let notable_p: Vec<Option<u8>> =
            pools.iter().map(|(k, c)| Self::notable(&mut self.pools, k, c, now, scrape, hold)).collect();
        // Entities not seen this scrape are gone: their memory goes too (bounds the maps by what
        // the scans hold).
        self.listeners.retain(|_, m| m.seen == scrape);
        self.pools.retain(|_, m| m.seen == scrape);

        if self.settings.budget == 0 {
            plan.listeners.fill(Some(Level::Detail));
            plan.pools.fill(Some(Level::Detail));
            return plan;
        }
        let mut left = self.settings.budget.saturating_sub(fixed);
        // When not everything fits as summaries, pools will fold: keep room for `other`.
        let cost = |c: &Candidate, notable: Option<u8>| if notable.is_some() { c.detail_cost } else { c.summary_cost };
        let demand: usize = listeners.iter().zip(&notable_l).map(|((_, c), n)| cost(c, *n)).sum::<usize>()
            + pools.iter().zip(&notable_p).map(|((_, c), n)| cost(c, *n)).sum::<usize>();
        if demand > left && !pools.is_empty() {
            left = left.saturating_sub(other_cost);
        }

        // Order: within each kind the notable by rank, then the quiet by weight; the two kinds in
        // turn, so neither can crowd the other out. (Notable first across both kinds let a host
        // whose 1,200 listeners all counted resets fold every one of its 1,500 pools into `other`.)
        #[derive(Clone, Copy)]
        enum Who {
            L(usize),
            P(usize),
        }
        let l_cands: Vec<&Candidate> = listeners.iter().map(|(_, c)| c).collect();
        let p_cands: Vec<&Candidate> = pools.iter().map(|(_, c)| c).collect();
        let (hot_l, quiet_l) = ranked_refs(&notable_l, &l_cands);
        let (hot_p, quiet_p) = ranked_refs(&notable_p, &p_cands);
        let in_turn = |ls: Vec<usize>, ps: Vec<usize>| -> Vec<Who> {
            let (mut a, mut b) = (ls.into_iter(), ps.into_iter());
            let mut order = Vec::new();
            loop {
                let (x, y) = (a.next(), b.next());
                if x.is_none() && y.is_none() {
                    return order;
                }
                order.extend(x.map(Who::L));
                order.extend(y.map(Who::P));
            }
        };
        let hot = in_turn(hot_l.clone(), hot_p.clone());
        let order = in_turn([hot_l, quiet_l].concat(), [hot_p, quiet_p].concat());
        let cand = |w: Who| match w {
            Who::L(i) => &listeners[i].1,
            Who::P(i) => &pools[i].1,
        };
        let level_of = |plan: &Plan, w: Who| match w {
            Who::L(i) => plan.listeners[i],
            Who::P(i) => plan.pools[i],
        };
        let set = |plan: &mut Plan, w: Who, level: Level| match w {
            Who::L(i) => plan.listeners[i] = Some(level),
            Who::P(i) => plan.pools[i] = Some(level),
        };
        let extra = |c: &Candidate| c.detail_cost.saturating_sub(c.summary_cost);
        // Up to half the room is kept for the notable's detail; summaries (breadth) get the rest.
        let reserve = (left / 2).min(hot.iter().map(|&w| extra(cand(w))).sum());
        // Summaries to those still out, in order, while `reserve` stays free; detail to those of
        // `ws` with a summary. Pass 1: summaries, keeping the reserve. Pass 2: the notable's detail.
        // Passes 3 and 4: what is left gives summaries to those still out, then detail to the
        // quiet, in the same order.
        let summaries = |plan: &mut Plan, left: &mut usize, reserve: usize| {
            for &w in &order {
                let c = cand(w);
                if level_of(plan, w).is_none() && c.summary_cost + reserve <= *left {
                    *left -= c.summary_cost;
                    set(plan, w, Level::Summary);
                }
            }
        };
        let details = |plan: &mut Plan, left: &mut usize, ws: &[Who]| {
            for &w in ws {
                let c = cand(w);
                if level_of(plan, w) == Some(Level::Summary) && extra(c) <= *left {
                    *left -= extra(c);
                    set(plan, w, Level::Detail);
                }
            }
        };
        summaries(&mut plan, &mut left, reserve);
        details(&mut plan, &mut left, &hot);
        summaries(&mut plan, &mut left, 0);
        details(&mut plan, &mut left, &order);
        for (kind, levels) in [("listener", &plan.listeners), ("pool", &plan.pools)] {
            let summary = levels.iter().filter(|l| **l == Some(Level::Summary)).count();
            let none = levels.iter().filter(|l| l.is_none()).count();
            plan.left_out.push((kind, "detail", summary));
            plan.left_out.push((kind, "all", none));
        }
        plan
    }
}

/// Indices of the notable (by rank, then weight) and of the quiet (by weight), heaviest first.
fn ranked_refs(notable: &[Option<u8>], cands: &[&Candidate]) -> (Vec<usize>, Vec<usize>) {
    let mut hot: Vec<usize> = (0..cands.len()).filter(|&i| notable[i].is_some()).collect();
    let mut quiet: Vec<usize> = (0..cands.len()).filter(|&i| notable[i].is_none()).collect();
    hot.sort_by_key(|&i| (notable[i], std::cmp::Reverse(cands[i].weight)));
    quiet.sort_by_key(|&i| std::cmp::Reverse(cands[i].weight));
    (hot, quiet)
}

/// Active alerts by the value of their `anchor` label (a port): only those with the entity's
/// port can name it, so each entity checks those few instead of every alert (at 3,000 entities
/// and a few dozen alerts, comparing every label of every alert was 3% of the agent's CPU).
pub(crate) struct AlertsByAnchor<'a> {
    anchor: &'static str,
    by_value: HashMap<&'a str, Vec<&'a AlertView>>,
}

impl<'a> AlertsByAnchor<'a> {
    pub(crate) fn new(alerts: &'a [AlertView], anchor: &'static str) -> Self {
        let mut by_value: HashMap<&str, Vec<&AlertView>> = HashMap::new();
        for a in alerts {
            if let Some(v) = a.labels.get(anchor) {
                by_value.entry(v.as_str()).or_default().push(a);
            }
        }
        Self { anchor, by_value }
    }

    /// Whether some alert has `value` as its anchor label: `name` can only be true then.
    pub(crate) fn anchors(&self, value: &str) -> bool {
        self.by_value.contains_key(value)
    }

    /// `alert_names` over the alerts with `identity`'s anchor value.
    pub(crate) fn name(&self, identity: &[(&str, &str)]) -> bool {
        let Some((_, value)) = identity.iter().find(|(k, _)| *k == self.anchor) else { return false };
        self.by_value
            .get(value)
            .is_some_and(|alerts| alerts.iter().any(|a| alert_names(std::slice::from_ref(*a), identity, self.anchor)))
    }
}

/// Whether an active alert names this entity: every one of its labels among `identity` keys
/// matches, and it names `anchor` (a port), so namespace-wide alerts do not match everything.
pub(crate) fn alert_names(alerts: &[AlertView], identity: &[(&str, &str)], anchor: &str) -> bool {
    alerts.iter().any(|a| {
        let mut anchored = false;
        let all = a.labels.iter().all(|(k, v)| match identity.iter().find(|(ik, _)| ik == k) {
            Some((ik, iv)) => {
                anchored |= *ik == anchor;
                iv == v
            }
            None => true,
        });
        all && anchored
    })
}

/// Listener series at each level (see the listener exporters in mod.rs, pools.rs, queues.rs and
/// storms.rs): an upper bound where a series is conditional.
pub(crate) fn listener_costs(l: &Listener, accept_classes: usize, signals: Option<&Signals>) -> (usize, usize) {
    let q = &l.queue;
    let storm_flag = usize::from(signals.is_some_and(|s| s.in_storm));
    let abandoned_seen = usize::from(q.stats.abandoned_fin > 0) + usize::from(q.stats.abandoned_rst > 0);
    let summary = 4 + accept_classes + storm_flag + abandoned_seen;
    let tcp = !l.is_unix();
    let detail = 7
        + 1
        + accept_classes
        + 2
        + 1
        + 2
        + if q.abandoned.is_some() && tcp { 2 } else { 0 }
        + if q.accepted_closed.is_some() && tcp { 1 + HIST_SERIES } else { 0 }
        + if q.requested_backlog.is_some() { 2 } else { 0 }
        + if signals.is_some() { 5 } else { 0 };
    (summary, detail.max(summary))
}

/// Pool series at each level (pools.rs and storms.rs); `probed`: the pools probe is up.
pub(crate) fn pool_costs(
    failures_seen: usize,
    died_seen: usize,
    probed: bool,
    signals: Option<&Signals>,
) -> (usize, usize) {
    let storm_flag = usize::from(signals.is_some_and(|s| s.in_storm));
    if !probed {
        return (1, 2);
    }
    let summary = 3 + failures_seen + died_seen + storm_flag;
    let storm = signals.map_or(0, |s| 7 + if s.estimate.is_some() { 2 } else { 0 });
    let detail = 2 + 3 + 5 + 1 + 2 + 1 + 1 + 2 + 2 * HIST_SERIES + storm;
    (summary, detail.max(summary))
}

/// Destination series at each level (destinations.rs), and its service-info series (pools.rs).
pub(crate) fn destination_costs(rejections_seen: usize, ceiling: bool, probed: bool) -> (usize, usize) {
    let c = usize::from(ceiling);
    if !probed {
        return (1 + c, 3 + c);
    }
    (1 + rejections_seen + c, 1 + 2 + 1 + 5 + c + 1)
}

/// Destinations counted once: the first pool to a destination pays for it (its detail level
/// when the pool gets detail), the others nothing.
pub(crate) struct DestinationsPaid(HashSet<(String, String)>);

impl DestinationsPaid {
    pub fn new() -> Self {
        DestinationsPaid(HashSet::new())
    }

    pub fn first(&mut self, addr: &str, port: &str) -> bool {
        self.0.insert((addr.to_string(), port.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(connections: i64, trouble: u64, busy: bool, weight: i64) -> Candidate {
        Candidate {
            trouble,
            connections,
            busy_now: busy,
            hint: false,
            alerted: false,
            weight,
            summary_cost: 10,
            detail_cost: 40,
        }
    }

    fn lid(port: u16) -> ListenerId {
        ListenerId { netns: 1, addr: "127.0.0.1".parse().unwrap(), port, cookie: 0 }
    }

    fn pid(port: u16) -> [String; 5] {
        ["other".into(), "127.0.0.1".into(), port.to_string(), "x".into(), "/".into()]
    }

    #[test]
    fn a_roomy_budget_shows_everything_in_detail() {
        let mut s = Selector::new(Settings { budget: 10_000, hold: DEFAULT_HOLD });
        let l: Vec<_> = (0..10).map(|i| (lid(i), c(1, 0, false, 1))).collect();
        let p: Vec<_> = (0..10).map(|i| (pid(i), c(1, 0, false, 1))).collect();
        let plan = s.plan(&l, &p, 100, 40);
        assert!(plan.listeners.iter().chain(&plan.pools).all(|l| *l == Some(Level::Detail)));
        assert!(plan.left_out.iter().all(|(_, _, n)| *n == 0), "{:?}", plan.left_out);
    }

    #[test]
    fn a_tight_budget_keeps_detail_for_the_notable_and_summaries_for_the_busiest() {
        let mut s = Selector::new(Settings { budget: 100 + 40 + 40 + 3 * 10 + 40, hold: DEFAULT_HOLD });
        // Listener 0 has a queue; pool 3 keeps failing (its trouble grows between scrapes).
        let listeners = |t: u64| -> Vec<(ListenerId, Candidate)> {
            (0..5).map(|i| (lid(i), c(1, 0, i == 0 && t == 0, 10 - i64::from(i)))).collect()
        };
        let pools = |t: u64| -> Vec<([String; 5], Candidate)> {
            (0..5).map(|i| (pid(i), c(1, if i == 3 { t } else { 0 }, false, i64::from(i)))).collect()
        };
        s.plan(&listeners(0), &pools(0), 100, 40);
        let plan = s.plan(&listeners(1), &pools(1), 100, 40);
        assert_eq!(plan.listeners[0], Some(Level::Detail), "queued a scrape ago, held: {plan:?}");
        assert_eq!(plan.pools[3], Some(Level::Detail), "failing: {plan:?}");
        let summaries = plan.listeners.iter().chain(&plan.pools).filter(|l| **l == Some(Level::Summary)).count();
        assert_eq!(summaries, 3, "{plan:?}");
        // Quiet listeners and pools share the room in turn, busiest first: listeners 1 and 2
        // (weights 9, 8) and pool 4 (weight 4) are in, listener 3 (weight 7) and pool 2 are not.
        assert!(plan.listeners[1].is_some() && plan.listeners[2].is_some() && plan.pools[4].is_some(), "{plan:?}");
        assert!(plan.listeners[3].is_none() && plan.pools[2].is_none(), "{plan:?}");
        let all: usize = plan.left_out.iter().filter(|(_, l, _)| *l == "all").map(|(_, _, n)| n).sum();
        assert_eq!(all, 5, "{:?}", plan.left_out);
    }

    #[test]
    fn notable_listeners_do_not_fold_every_pool() {
        // The fleet host: every listener counts resets at every scrape, the pools are quiet.
        let mut s = Selector::new(Settings { budget: 12_000, hold: DEFAULT_HOLD });
        let listeners =
            |t: u64| -> Vec<(ListenerId, Candidate)> { (0..1200).map(|i| (lid(i), c(1, t, false, 1))).collect() };
        let pools: Vec<_> = (0..1500).map(|i| (pid(i), c(1, 0, false, 1))).collect();
        s.plan(&listeners(0), &pools, 100, 40);
        let plan = s.plan(&listeners(1), &pools, 100, 40);
        let shown_l = plan.listeners.iter().filter(|l| l.is_some()).count();
        let shown_p = plan.pools.iter().filter(|l| l.is_some()).count();
        assert!(shown_p + 1 >= shown_l.min(1500), "listeners {shown_l}, pools {shown_p}: {:?}", plan.left_out);
        assert!(plan.listeners.contains(&Some(Level::Detail)), "the notable keep their detail");
    }

    #[test]
    fn growth_makes_a_pool_notable() {
        let mut s = Selector::new(Settings { budget: 50, hold: DEFAULT_HOLD });
        let p = |n: i64| vec![(pid(1), c(n, 0, false, 0)), (pid(2), c(10, 0, false, 100))];
        let plan = s.plan(&[], &p(10), 0, 40);
        assert_eq!(plan.pools, vec![Some(Level::Summary), Some(Level::Detail)]);
        let plan = s.plan(&[], &p(13), 0, 40);
        assert_eq!(plan.pools, vec![Some(Level::Detail), Some(Level::Summary)]);
    }

    #[test]
    fn alerts_name_entities_by_their_port() {
        use crate::alerts::AlertState;
        let alert = |labels: &[(&str, &str)]| AlertView {
            alertname: "X".into(),
            state: AlertState::Firing,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            annotations: Default::default(),
            since: String::new(),
            ended: None,
        };
        let id = [("dst_addr", "10.0.0.1"), ("dst_port", "6379"), ("comm", "app")];
        assert!(alert_names(&[alert(&[("dst_addr", "10.0.0.1"), ("dst_port", "6379")])], &id, "dst_port"));
        assert!(!alert_names(&[alert(&[("dst_addr", "10.0.0.1"), ("dst_port", "5432")])], &id, "dst_port"));
        assert!(!alert_names(&[alert(&[("netns", "1")])], &id, "dst_port"));
        // The index by port answers the same.
        let alerts = [
            alert(&[("netns", "1")]),
            alert(&[("dst_addr", "10.0.0.2"), ("dst_port", "6379")]),
            alert(&[("dst_addr", "10.0.0.1"), ("dst_port", "5432")]),
        ];
        let index = AlertsByAnchor::new(&alerts, "dst_port");
        assert!(!index.name(&id));
        assert_eq!(index.name(&id), alert_names(&alerts, &id, "dst_port"));
        let more = [alerts[0].clone(), alerts[1].clone(), alert(&[("dst_addr", "10.0.0.1"), ("dst_port", "6379")])];
        assert!(AlertsByAnchor::new(&more, "dst_port").name(&id));
        assert!(alert_names(&more, &id, "dst_port"));
        assert!(!AlertsByAnchor::new(&more, "dst_port").name(&[("dst_addr", "10.0.0.1")]));
    }
}
