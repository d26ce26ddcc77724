//! Pool and server-side series: per-pool gauges, counters and histograms (merged across network
//! namespaces that share labels, capped with the rest folded into one `other` pool), accepts per
//! listener by client class, and lost kernel events.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use monitor_common::{PoolKey, PoolStats, HIST_BUCKETS};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use super::{budget::Level, counter_family, gauge_family, labels, Labels, Shown};
use crate::{
    model::listeners::ListenerId,
    model::pools::{add_stats, KernelExtras, Pool, FAILURE_REASONS, LOST_REASON_NAMES, POOL_LABELS},
    model::storms::Signals,
};

pub const POOL_CONNECTIONS: &str = "connmon_pool_connections";
pub const POOL_PEAK: &str = "connmon_pool_connections_peak";
pub const POOL_ATTEMPTS: &str = "connmon_pool_connect_attempts_total";
pub const POOL_OPENS: &str = "connmon_pool_opens_total";
pub const POOL_CLOSES: &str = "connmon_pool_closes_total";
pub const POOL_FAILURES: &str = "connmon_pool_connect_failures_total";
pub const POOL_CONNECT_DURATION: &str = "connmon_pool_connect_duration_seconds";
pub const POOL_LIFETIME: &str = "connmon_pool_connection_lifetime_seconds";
pub const POOL_SERVICE_INFO: &str = "connmon_pool_service_info";
pub const POOL_FOLDED: &str = "connmon_pool_series_folded";
pub const LISTEN_ESTABLISHED: &str = "connmon_listen_established_connections";
pub const LISTEN_ACCEPTS: &str = "connmon_listen_accepts_total";
pub const EVENTS_LOST: &str = "connmon_events_lost_total";
pub const POOL_SYN_RETRANS: &str = "connmon_pool_syn_retransmits_total";
pub const POOL_RESETS: &str = "connmon_pool_resets_total";
pub const POOL_SHORT_LIVED: &str = "connmon_pool_short_lived_total";
pub const POOL_DIED_YOUNG: &str = "connmon_pool_died_young_total";
pub const POOL_PENDING: &str = "connmon_pool_connects_pending";

pub struct PoolsSection<'a> {
    pub pools: &'a [Pool],
    pub destinations: &'a [crate::model::destinations::Destination],
    /// Retry-storm signals per pool (empty when the detector has none).
    pub signals: &'a HashMap<PoolKey, Signals>,
    /// None when the pools probe is down: then only gauges from scans are exported.
    pub extras: Option<&'a KernelExtras>,
    pub listener_signals: &'a HashMap<ListenerId, Signals>,
    pub max_series: usize,
}

/// One exported pool: the label values and the merged figures behind them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Row {
    pub(crate) active: i64,
    peak: i64,
    pub(crate) pending: i64,
    pub(crate) stats: Option<PoolStats>,
    pub(crate) keys: Vec<PoolKey>,
}

const OTHER: &str = "other";

/// Merges pools that share labels, busiest (most open connections) first. Pools are matched on
/// the fields their labels are made of (equal fields, equal labels), so each merged row's label
/// strings are built once, from its first pool, instead of once per pool.
pub(crate) fn merge_rows(pools: &[Pool]) -> Vec<([String; 5], Row)> {
    type Fields<'a> = (&'a str, IpAddr, u16, &'a str, &'a str);
    let mut merged: HashMap<Fields<'_>, (usize, Row), foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(pools.len(), Default::default());
    for (i, p) in pools.iter().enumerate() {
        let fields = (p.service.as_str(), p.dst_addr, p.dst_port, p.comm.as_str(), p.cgroup.as_str());
        let (_, r) = merged.entry(fields).or_insert_with(|| (i, Row::default()));
        merge(r, p.active, p.peak, p.stats.as_ref());
        r.pending += p.pending;
        r.keys.extend(p.key);
    }
    let mut all: Vec<([String; 5], Row)> = merged.into_values().map(|(i, r)| (pools[i].label_values(), r)).collect();
    // A total order (labels are unique), so the map's order does not show. By index: a row holds
    // its pools' histograms inline.
    crate::model::order::sort_by_index(&mut all, |a, b| b.1.active.cmp(&a.1.active).then_with(|| a.0.cmp(&b.0)));
    all
}

/// Keeps the rows the plan gives a level, folds the rest into one `other` row (in detail).
pub(crate) fn fold(all: Vec<([String; 5], Row)>, levels: &[Option<Level>]) -> (Vec<([String; 5], Row, Level)>, usize) {
    let mut kept = Vec::with_capacity(all.len());
    let mut other = Row::default();
    let mut folded = 0;
    for ((values, r), level) in all.into_iter().zip(levels.iter().chain(std::iter::repeat(&None))) {
        match level {
            Some(level) => kept.push((values, r, *level)),
            None => {
                folded += 1;
                merge(&mut other, r.active, r.peak, r.stats.as_ref());
                other.pending += r.pending;
                other.keys.extend(&r.keys);
            }
        }
    }
    if folded > 0 {
        kept.push(([OTHER.into(), OTHER.into(), OTHER.into(), OTHER.into(), OTHER.into()], other, Level::Detail));
    }
    (kept, folded)
}

fn merge(r: &mut Row, active: i64, peak: i64, stats: Option<&PoolStats>) {
    r.active += active;
    r.peak += peak;
    if let Some(s) = stats {
        add_stats(r.stats.get_or_insert_with(PoolStats::default), s);
    }
}

/// Registers the pool and server-side series of the rows the plan kept, at their levels (see
/// budget.rs for what a summary holds); returns the destination addresses of the pools exported
/// (not folded), for the series that describe destinations.
pub(crate) fn register(
    reg: &mut Registry,
    section: &PoolsSection<'_>,
    rows: &[([String; 5], Row, Level)],
    folded: usize,
    listeners: &[Shown<'_>],
) -> BTreeSet<IpAddr> {
    let destinations: BTreeSet<IpAddr> = rows.iter().filter_map(|(v, _, _)| v[1].parse().ok()).collect();
    let conns = gauge_family(
        reg,
        POOL_CONNECTIONS,
        "Open connections of the pool (client workload and destination), from the handshake until the socket closes",
    );
    let peak = gauge_family(
        reg,
        POOL_PEAK,
        "Highest open-connection count of the pool in the last --peaks.window (default 1m)",
    );
    let folded_g = gauge_family(
        reg,
        POOL_FOLDED,
        "Pools folded into the pool labelled other because the series cap or budget was reached",
    );
    let info = gauge_family(reg, POOL_SERVICE_INFO, "How each destination's service class was decided: protocol seen on the wire, well-known or configured port, or none");
    // Each row's labels, built once for all its families.
    let ids: Vec<Arc<Labels>> = rows.iter().map(|(values, _, _)| Arc::new(pool_label_set(values))).collect();
    for ((_, r, level), l) in rows.iter().zip(&ids) {
        conns.get_or_create(l).set(r.active);
        if *level == Level::Detail {
            peak.get_or_create(l).set(r.peak);
        }
    }
    // One series per destination of an exported (not folded) pool, so the cap bounds these too;
    // a destination's level is the highest of its exported pools'.
    let mut exported: BTreeMap<(String, String), Level> = BTreeMap::new();
    for (v, _, level) in rows {
        let e = exported.entry((v[1].clone(), v[2].clone())).or_insert(*level);
        *e = (*e).max(*level);
    }
    let mut seen = BTreeSet::new();
    for p in section.pools {
        let (addr, port) = (p.dst_addr.to_string(), p.dst_port.to_string());
        if exported.get(&(addr.clone(), port.clone())) == Some(&Level::Detail)
            && seen.insert((addr.clone(), port.clone(), p.service.clone()))
        {
            info.get_or_create(labels(&[
                ("dst_addr", &addr),
                ("dst_port", &port),
                ("service", &p.service),
                ("classified_by", p.classified_by),
            ]))
            .set(1);
        }
    }
    folded_g.get_or_create(vec![]).set(folded as i64);

    // Accepted connections still open, per listener (from scans, so available without probes).
    let established =
        gauge_family(reg, LISTEN_ESTABLISHED, "Connections accepted from the listener that are still open");
    for Shown { l, id, .. } in listeners {
        established.get_or_create(id).set(i64::from(l.established));
    }

    super::destinations::register(reg, section.destinations, &exported, section.extras.is_some());
    let Some(extras) = section.extras else {
        // Without the pools probe there are no pool signals, but listeners still have theirs.
        super::storms::register(reg, &[], listeners, section.listener_signals);
        return destinations;
    };
    let attempts = counter_family(reg, POOL_ATTEMPTS, "connect() calls of the pool");
    let opens = counter_family(reg, POOL_OPENS, "Connections of the pool whose handshake completed");
    let closes = counter_family(reg, POOL_CLOSES, "Established connections of the pool that closed");
    let failures = counter_family(reg, POOL_FAILURES, "Connects of the pool that failed, by reason: refused (RST), timeout (SYN unanswered), unreachable (ICMP), aborted (closed by the client before the handshake finished), other");
    let syn_retrans = counter_family(
        reg,
        POOL_SYN_RETRANS,
        "SYNs of the pool's connects that were retransmitted because the server did not answer in time",
    );
    let resets = counter_family(
        reg,
        POOL_RESETS,
        "Resets on the pool's connections: direction=received (including refused connects) or sent",
    );
    let short_lived = counter_family(
        reg,
        POOL_SHORT_LIVED,
        "Connections of the pool that closed sooner than --storm.short-lived after their handshake (churn)",
    );
    let pending = gauge_family(reg, POOL_PENDING, "Connects of the pool in flight now (SYN_SENT: connect() called, handshake not complete); a blackholed server shows here at once");
    let died_young = counter_family(reg, POOL_DIED_YOUNG, "Short-lived connections of the pool that the server ended: how=reset (rejected) or how=server_closed (the server hung up first: a rejection, or a server that closes after each response)");
    let mut storm_rows = Vec::new();
    let mut hists = Histograms::default();
    for ((_, r, level), l) in rows.iter().zip(&ids) {
        let Some(s) = &r.stats else { continue };
        let detail = *level == Level::Detail;
        attempts.get_or_create(l).inc_by(s.attempts);
        opens.get_or_create(l).inc_by(s.opens);
        // A summary keeps the breakdowns that have counted something: the rules sum them.
        for (reason, n) in FAILURE_REASONS.iter().zip(s.failures) {
            if detail || n > 0 {
                failures.with(l, &[("reason", reason)]).inc_by(n);
            }
        }
        for (how, n) in [("reset", s.died_reset), ("server_closed", s.died_server_closed)] {
            if detail || n > 0 {
                died_young.with(l, &[("how", how)]).inc_by(n);
            }
        }
        if let Some(sig) = super::storms::strongest(&r.keys, section.signals) {
            storm_rows.push((Arc::clone(l), sig, *level));
        }
        if !detail {
            continue;
        }
        closes.get_or_create(l).inc_by(s.closes);
        syn_retrans.get_or_create(l).inc_by(s.syn_retransmits);
        for (direction, n) in [("received", s.resets_received), ("sent", s.resets_sent)] {
            resets.with(l, &[("direction", direction)]).inc_by(n);
        }
        short_lived.get_or_create(l).inc_by(s.short_lived);
        pending.get_or_create(l).set(r.pending);
        hists.connect.push((Arc::clone(l), histogram(&s.connect_us, s.connect_us_sum, 1e-6)));
        hists.lifetime.push((Arc::clone(l), histogram(&s.lifetime_ms, s.lifetime_ms_sum, 1e-3)));
    }
    reg.register_collector(Box::new(hists));
    super::storms::register(reg, &storm_rows, listeners, section.listener_signals);

    let accepts_f = counter_family(
        reg,
        LISTEN_ACCEPTS,
        "Connections that completed the handshake on the listener, by client address class",
    );
    for Shown { id, accepts, .. } in listeners {
        for (class, n) in accepts.iter() {
            accepts_f.with(id, &[("client_class", class)]).inc_by(*n);
        }
    }
    let lost = counter_family(reg, EVENTS_LOST, "Kernel events connmon could not account, by reason: socket_table_full (connect not counted), socket_untracked (handshake of a socket connmon was not tracking), pool_table_full, retry_ring_full (retry timing event dropped), unseen_handshake (a close whose handshake was missed), missed_close (a close the probe missed, found by reconciling with sock_diag), queue_untracked (a TCP connection accepted whose enqueue the accept-queue probe did not see: no wait measured), recursion (runs the kernel skipped because another tracing program was running on the CPU)");
    // Missed closes are found in two places: by the kernel when a socket's memory is reused, and
    // by reconciling with sock_diag; both are one reason to users.
    for (reason, n) in LOST_REASON_NAMES.iter().zip(extras.lost) {
        let n = if *reason == "missed_close" { n + extras.missed_closes } else { n };
        lost.get_or_create(labels(&[("reason", reason)])).inc_by(n);
    }
    lost.get_or_create(labels(&[("reason", "recursion")])).inc_by(extras.recursion_misses);
    destinations
}

fn pool_label_set(values: &[String; 5]) -> Labels {
    POOL_LABELS.iter().zip(values).map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// Kernel power-of-4 buckets as Prometheus buckets: bucket i holds values below 4^(i+1) units.
#[derive(Debug, Clone)]
pub(crate) struct Hist {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

pub(crate) fn histogram(counts: &[u64; HIST_BUCKETS], sum: u64, unit_seconds: f64) -> Hist {
    let buckets = counts
        .iter()
        .enumerate()
        .map(|(i, n)| {
            // The kernel's own bucket bounds (monitor_common::hist), in seconds.
            let upper = monitor_common::hist::upper_bound(i).map_or(f64::MAX, |u| u as f64 * unit_seconds);
            (upper, *n)
        })
        .collect();
    Hist { sum: sum as f64 * unit_seconds, count: counts.iter().sum(), buckets }
}

#[derive(Debug, Default)]
struct Histograms {
    connect: Vec<(Arc<Labels>, Hist)>,
    lifetime: Vec<(Arc<Labels>, Hist)>,
}

impl Collector for Histograms {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, series) in [
            (POOL_CONNECT_DURATION, "Time from connect() to the completed handshake, per pool", &self.connect),
            (POOL_LIFETIME, "Lifetime of the pool's connections that closed, from the completed handshake to close (connections opened before connmon started are not included)", &self.lifetime),
        ] {
            if series.is_empty() {
                continue;
            }
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (l, h) in series {
                let text = super::series::shared_text(l);
                let set = super::series::LabelText::of(l, text.as_deref());
                let m = family.encode_family(&set)?;
                HistRef(h).encode(m)?;
            }
        }
        Ok(())
    }
}

pub(crate) struct HistRef<'a>(pub(crate) &'a Hist);

impl prometheus_client::encoding::EncodeMetric for HistRef<'_> {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.0.sum, self.0.count, &self.0.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pools::tests_support::pool;

    #[test]
    fn rows_left_out_fold_into_other() {
        let pools = vec![pool("a", 1), pool("b", 9), pool("c", 5), pool("a", 2)];
        let all = merge_rows(&pools);
        let (rows, folded) = fold(all, &[Some(Level::Summary)]);
        assert_eq!(folded, 2);
        assert_eq!(rows[0].0[3], "b");
        assert_eq!(rows[0].2, Level::Summary);
        assert_eq!(rows[1].0, ["other", "other", "other", "other", "other"].map(String::from));
        // "a" (two namespaces, 1 + 2) and "c" (5) are folded together.
        assert_eq!(rows[1].1.active, 8);
    }

    #[test]
    fn histogram_bounds_are_powers_of_four() {
        let mut counts = [0u64; HIST_BUCKETS];
        counts[0] = 2;
        counts[HIST_BUCKETS - 1] = 1;
        let h = histogram(&counts, 10, 1e-6);
        assert_eq!(h.count, 3);
        assert!((h.buckets[0].0 - 4e-6).abs() < 1e-12);
        assert!((h.buckets[1].0 - 16e-6).abs() < 1e-12);
        assert_eq!(h.buckets[HIST_BUCKETS - 1].0, f64::MAX);
    }
}
