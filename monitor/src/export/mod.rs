//! Prometheus exposition: metric names (constants, so the README table, tests and dashboards have
//! one spelling), rendering a scan's snapshot into a fresh prometheus-client registry, and the
//! classic 0.0.4 text format for scrapers that do not ask for OpenMetrics. A registry is built per
//! scrape because listeners come and go: series of vanished sockets must disappear, not linger.
use std::{collections::BTreeMap, sync::Arc};

use prometheus_client::{
    metrics::{info::Info, MetricType},
    registry::Registry,
};

use self::series::Fam;

use crate::{
    alerts::{Alert, AlertState},
    kernel::probes::ProbeState,
    model::listeners::{Listener, Snapshot, LISTENER_LABELS},
    scan::netstat::TCP_EXT_COUNTERS,
};

pub mod budget;
pub mod cluster;
pub mod destinations;
mod levels;
pub mod pools;
pub mod queues;
mod series;
pub mod storms;

/// Every metric name connmon exports (counters with their `_total`), for tests and tooling that
/// check dashboards and rules against what really exists.
pub const METRICS: &[&str] = &[
    LISTEN_QUEUE_DEPTH,
    LISTEN_QUEUE_MAX,
    LISTEN_QUEUE_FILL,
    LISTEN_QUEUE_PEAK,
    LISTEN_DROPS,
    LISTEN_SYN_QUEUE,
    LISTEN_SYNACK_RETRANS,
    LISTEN_SERIES_DROPPED,
    NETNS_TCP_EXT,
    NETNS_INFO,
    SCAN_DURATION,
    SCAN_NETNS_FAILED,
    SCAN_CONNECTIONS_AGE,
    PROBE_UP,
    MAP_READ_ERRORS,
    BUILD_INFO,
    WORKLOAD_INFO,
    ALERT_ACTIVE,
    ALERTS_FIRED,
    cluster::PEER_INFO,
    cluster::KUBERNETES_UP,
    cluster::KUBERNETES_OBJECTS,
    cluster::KUBERNETES_LAST_SYNC,
    pools::POOL_CONNECTIONS,
    pools::POOL_PEAK,
    pools::POOL_ATTEMPTS,
    pools::POOL_OPENS,
    pools::POOL_CLOSES,
    pools::POOL_FAILURES,
    pools::POOL_CONNECT_DURATION,
    pools::POOL_LIFETIME,
    pools::POOL_SERVICE_INFO,
    pools::POOL_FOLDED,
    pools::LISTEN_ESTABLISHED,
    pools::LISTEN_ACCEPTS,
    pools::EVENTS_LOST,
    pools::POOL_SYN_RETRANS,
    pools::POOL_RESETS,
    pools::POOL_SHORT_LIVED,
    pools::POOL_DIED_YOUNG,
    pools::POOL_PENDING,
    destinations::DEST_CONNECTIONS,
    destinations::DEST_PEAK,
    destinations::DEST_PENDING,
    destinations::DEST_REJECTIONS,
    destinations::DEST_CEILING,
    storms::RETRY_STORM,
    storms::RETRY_STORM_SCORE,
    storms::POOL_BACKOFF,
    storms::POOL_JITTER,
    storms::POOL_ATTEMPT_RATE,
    storms::POOL_BAD_RATIO,
    queues::LISTEN_QUEUE_WAIT,
    queues::LISTEN_QUEUE_WAIT_HIST,
    queues::LISTEN_ACCEPT_RATE,
    queues::LISTEN_DRAIN,
    queues::LISTEN_SLOW_DRAIN,
    queues::LISTEN_ABANDONED,
    queues::LISTEN_ACCEPTED_CLOSED,
    queues::LISTEN_BACKLOG_REQUESTED,
    queues::LISTEN_BACKLOG_CLAMPED,
    queues::NETNS_SYSCTL,
    budget::SERIES_BUDGET,
    budget::SERIES_LEFT_OUT,
];

pub const LISTEN_QUEUE_DEPTH: &str = "connmon_listen_queue_depth";
pub const LISTEN_QUEUE_MAX: &str = "connmon_listen_queue_max";
pub const LISTEN_QUEUE_FILL: &str = "connmon_listen_queue_fill_ratio";
pub const LISTEN_QUEUE_PEAK: &str = "connmon_listen_queue_peak_depth";
pub const LISTEN_DROPS: &str = "connmon_listen_drops_total";
pub const LISTEN_SYN_QUEUE: &str = "connmon_listen_syn_queue_depth";
pub const LISTEN_SYNACK_RETRANS: &str = "connmon_listen_synack_retransmits_total";
pub const LISTEN_SERIES_DROPPED: &str = "connmon_listen_series_dropped";
pub const NETNS_TCP_EXT: &str = "connmon_netns_tcp_ext_total";
pub const NETNS_INFO: &str = "connmon_netns_info";
pub const SCAN_DURATION: &str = "connmon_scan_duration_seconds";
pub const SCAN_NETNS_FAILED: &str = "connmon_scan_netns_failed";
pub const SCAN_CONNECTIONS_AGE: &str = "connmon_scan_connections_age_seconds";
pub const PROBE_UP: &str = "connmon_probe_up";
pub const MAP_READ_ERRORS: &str = "connmon_map_read_errors_total";
pub const BUILD_INFO: &str = "connmon_build_info";
pub const WORKLOAD_INFO: &str = "connmon_workload_info";
pub const ALERT_ACTIVE: &str = "connmon_alert_active";
pub const ALERTS_FIRED: &str = "connmon_alerts_fired_total";

pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(crate) type Labels = Vec<(String, String)>;

/// What one scrape exposes besides the snapshot itself.
pub struct Context<'a> {
    pub probes: &'a BTreeMap<&'static str, ProbeState>,
    pub scan_seconds: f64,
    /// Age of the connection figures (established counts, SYN queues) in seconds.
    pub connections_age: f64,
    /// Most listeners exported; the fullest queues are kept.
    pub max_listener_series: usize,
    /// Pending and firing alerts.
    pub alerts: &'a [crate::alerts::AlertView],
    pub alerts_fired: &'a BTreeMap<Alert, u64>,
    /// Names and health from the Kubernetes API, when it is used.
    pub cluster: Option<&'a crate::attribution::cluster::View>,
}

pub(crate) fn gauge_family(reg: &mut Registry, name: &'static str, help: &'static str) -> Fam {
    Fam::register(reg, name, help, MetricType::Gauge)
}

pub(crate) fn float_family(reg: &mut Registry, name: &'static str, help: &'static str) -> Fam {
    Fam::register(reg, name, help, MetricType::Gauge)
}

pub(crate) fn counter_family(reg: &mut Registry, name: &'static str, help: &'static str) -> Fam {
    Fam::register(reg, name, help, MetricType::Counter)
}

pub(crate) fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Identity labels of a listener.
pub(crate) fn listener_labels(l: &Listener) -> Labels {
    LISTENER_LABELS.iter().map(|k| k.to_string()).zip(l.label_values()).collect()
}

/// A listener this exposition shows: its level, its accepts by client class, and its identity
/// labels, built once per render and shared by every family that names it (each exporter used to
/// build them again, five times per listener on a fleet host).
pub(crate) struct Shown<'a> {
    pub(crate) l: &'a Listener,
    pub(crate) level: budget::Level,
    pub(crate) id: Arc<Labels>,
    pub(crate) accepts: &'a [(&'static str, u64)],
}

/// The listeners the plan shows, in the snapshot's order, with their labels built once.
fn shown<'a>(
    listeners: &'a [Listener],
    levels: &[Option<budget::Level>],
    accepts: &'a levels::Accepts,
) -> Vec<Shown<'a>> {
    listeners
        .iter()
        .zip(levels)
        .zip(accepts)
        .filter_map(|((l, level), a)| {
            Some(Shown { l, level: (*level)?, id: Arc::new(listener_labels(l)), accepts: a.as_slice() })
        })
        .collect()
}

/// Bytes to reserve for an exposition of `entities` listeners and pools within `budget` series
/// (0: none), so the text is written without growing (copying) its buffer: a sample line of a
/// fleet host averages about 126 bytes (1.52 MB for 12,034 series), an entity about 8 series.
/// Pages reserved and never written are not resident.
fn capacity(entities: usize, budget: usize) -> usize {
    let series = entities.saturating_mul(8).saturating_add(1000);
    let series = if budget > 0 { series.min(budget) } else { series };
    series.saturating_mul(128)
}

/// Renders the snapshot as OpenMetrics text (ending in `# EOF`), within the series budget that
/// `selector` keeps (see budget.rs).
pub fn render(
    snap: &Snapshot,
    pools: &pools::PoolsSection<'_>,
    ctx: &Context<'_>,
    selector: &mut budget::Selector,
) -> String {
    let accepts = levels::accepts_per_listener(&snap.listeners, pools);
    let rows = pools::merge_rows(pools.pools);
    let plan = levels::plan(selector, &snap.listeners, &accepts, &rows, pools, ctx, snap.namespaces.len());
    let shown = shown(&snap.listeners, &plan.listeners, &accepts);
    let (rows, folded) = pools::fold(rows, &plan.pools);
    let mut reg = Registry::default();
    let depth = gauge_family(
        &mut reg,
        LISTEN_QUEUE_DEPTH,
        "Connections in the listener's accept queue (established, not yet accepted), as ss Recv-Q shows",
    );
    let max = gauge_family(&mut reg, LISTEN_QUEUE_MAX, "Configured accept-queue backlog of the listener (ss Send-Q)");
    let fill = float_family(&mut reg, LISTEN_QUEUE_FILL, "Accept-queue depth divided by backlog");
    let peak = gauge_family(&mut reg, LISTEN_QUEUE_PEAK, "Highest accept-queue depth in the last --peaks.window (default 1m, the same for every scraper); source says whether an eBPF probe saw every queued connection or scans sampled it");
    let drops = counter_family(&mut reg, LISTEN_DROPS, "Packets the listener dropped (sk_drops: accept-queue overflows and other listen drops), as ss -m shows in skmem dN");
    let synq = gauge_family(
        &mut reg,
        LISTEN_SYN_QUEUE,
        "Half-open connections (SYN received, handshake not complete) waiting on the listener",
    );
    let synack = counter_family(
        &mut reg,
        LISTEN_SYNACK_RETRANS,
        "SYN-ACKs the listener retransmitted (tracepoint tcp:tcp_retransmit_synack)",
    );
    let dropped = gauge_family(
        &mut reg,
        LISTEN_SERIES_DROPPED,
        "Listeners left out of this exposition because the series cap or budget was reached",
    );
    let ext = counter_family(&mut reg, NETNS_TCP_EXT, "TcpExt counter of the network namespace (as nstat shows)");
    let ns_info = gauge_family(
        &mut reg,
        NETNS_INFO,
        "Network namespaces scanned, with their /run/netns name where they have one",
    );
    let scan = float_family(&mut reg, SCAN_DURATION, "Time the scan behind this exposition took");
    let ns_failed = gauge_family(
        &mut reg,
        SCAN_NETNS_FAILED,
        "Network namespaces the scan could not read (vanished or not enterable)",
    );
    let probe_up = gauge_family(
        &mut reg,
        PROBE_UP,
        "1 when the kernel probe is attached, 0 when it is unavailable (the agent log says why)",
    );
    // An Info metric gets `_info` appended by prometheus-client.
    reg.register(
        BUILD_INFO.strip_suffix("_info").unwrap_or(BUILD_INFO),
        "connmon build information",
        Info::new(vec![("version".to_string(), env!("CARGO_PKG_VERSION").to_string())]),
    );

    for Shown { l, level, id, .. } in &shown {
        depth.get_or_create(id).set(i64::from(l.depth));
        max.get_or_create(id).set(i64::from(l.backlog));
        drops.get_or_create(id).inc_by(l.drops);
        if *level == budget::Level::Summary {
            continue;
        }
        fill.get_or_create(id).set(l.fill);
        synq.get_or_create(id).set(i64::from(l.syn_queue));
        if let Some(n) = l.synack_retransmits {
            synack.get_or_create(id).inc_by(n);
        }
        peak.with(id, &[("source", l.peak_source.as_str())]).set(i64::from(l.peak_depth));
    }
    dropped.get_or_create(vec![]).set((snap.listeners.len() - shown.len()) as i64);
    queues::register(&mut reg, &shown, &snap.namespaces);
    for ns in &snap.namespaces {
        let netns = ns.inode.to_string();
        ns_info.get_or_create(labels(&[("netns", &netns), ("name", ns.name.as_deref().unwrap_or(""))])).set(1);
        for counter in TCP_EXT_COUNTERS {
            if let Some(v) = ns.tcp_ext.get(*counter) {
                ext.get_or_create(labels(&[("netns", &netns), ("counter", counter)])).inc_by(*v);
            }
        }
    }
    scan.get_or_create(vec![]).set(ctx.scan_seconds);
    float_family(&mut reg, SCAN_CONNECTIONS_AGE, "Seconds since connections and SYN_RECV requests were last dumped; scrapes sooner than --scan.budget allows reuse the last dump")
        .get_or_create(vec![])
        .set(ctx.connections_age);
    ns_failed.get_or_create(vec![]).set(snap.netns_errors as i64);
    for (probe, state) in ctx.probes {
        let up = i64::from(matches!(state, ProbeState::Up { .. }));
        probe_up.get_or_create(labels(&[("probe", probe)])).set(up);
    }
    let map_errors = counter_family(&mut reg, MAP_READ_ERRORS, "Failed reads of each eBPF map the agent reads (the first is logged); figures from a failing map are missing, not zero");
    for (map, n) in crate::kernel::maps::read_errors() {
        map_errors.get_or_create(labels(&[("map", map)])).inc_by(n);
    }
    let destinations = pools::register(&mut reg, pools, &rows, folded, &shown);
    let cgroups: std::collections::BTreeSet<&str> = shown
        .iter()
        .filter_map(|s| s.l.cgroup.as_deref())
        .chain(rows.iter().map(|(v, _, _)| v[4].as_str()))
        .filter(|c| !c.is_empty() && *c != "other")
        .collect();
    cluster::register(&mut reg, &cgroups, &destinations, ctx.cluster);
    let active = gauge_family(
        &mut reg,
        ALERT_ACTIVE,
        "1 for each alert firing in the agent, with the alert's labels (see /api/v1/alerts and connmon alerts)",
    );
    for a in ctx.alerts.iter().filter(|a| a.state == AlertState::Firing) {
        let mut l: Labels = vec![("alertname".into(), a.alertname.clone())];
        l.extend(a.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        active.get_or_create(&l).set(1);
    }
    let budget_g = gauge_family(
        &mut reg,
        budget::SERIES_BUDGET,
        "Series this exposition aims to stay within (--series.budget; 0: no budget, everything in detail)",
    );
    budget_g.get_or_create(vec![]).set(plan.budget as i64);
    let left_out = gauge_family(&mut reg, budget::SERIES_LEFT_OUT, "Listeners and pools the series budget or caps left out of this exposition: level=detail counts those shown as a summary only (no histograms, breakdowns or queue figures), level=all those not shown at all (listeners dropped, pools folded into other)");
    for (kind, level, n) in &plan.left_out {
        left_out.get_or_create(labels(&[("kind", kind), ("level", level)])).set(*n as i64);
    }
    let fired = counter_family(&mut reg, ALERTS_FIRED, "Times each built-in alert started firing");
    for alert in Alert::ALL {
        fired
            .get_or_create(labels(&[("alertname", alert.name())]))
            .inc_by(ctx.alerts_fired.get(&alert).copied().unwrap_or(0));
    }
    let mut out = String::with_capacity(capacity(snap.listeners.len() + pools.pools.len(), plan.budget));
    // Writing into a String cannot fail.
    // Shared sets: the listeners', pool rows' and destinations' identities.
    let _ = series::encode_exposition(&mut out, &reg, shown.len() + 2 * rows.len());
    out
}

/// Rewrites OpenMetrics text as the classic Prometheus text format 0.0.4: counter and info
/// families are named after their samples (`_total`, `_info`), info becomes gauge, and the
/// OpenMetrics-only `# UNIT` and `# EOF` lines go.
pub fn to_classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut kinds: BTreeMap<&str, &str> = BTreeMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                kinds.insert(name, kind);
            }
        }
    }
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("HELP", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("TYPE", r)));
        match meta {
            Some((what, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let (name, tail) = match kinds.get(name) {
                    Some(&"counter") => (format!("{name}_total"), tail.to_string()),
                    Some(&"info") if what == "TYPE" => (format!("{name}_info"), "gauge".to_string()),
                    Some(&"info") => (format!("{name}_info"), tail.to_string()),
                    _ => (name.to_string(), tail.to_string()),
                };
                out.push_str(&format!("# {what} {name} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "budget_tests.rs"]
mod budget_tests;

#[cfg(test)]
#[path = "render_tests.rs"]
mod render_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_names_counter_and_info_families_after_their_samples() {
        let om = "# HELP a_drops Drops.\n# TYPE a_drops counter\na_drops_total{x=\"1\"} 3\n\
                  # HELP b Build.\n# TYPE b info\nb_info{version=\"1\"} 1\n\
                  # HELP g G.\n# TYPE g gauge\n# UNIT g seconds\ng 1.5\n# EOF\n";
        let classic = to_classic(om);
        assert_eq!(
            classic,
            "# HELP a_drops_total Drops.\n# TYPE a_drops_total counter\na_drops_total{x=\"1\"} 3\n\
             # HELP b_info Build.\n# TYPE b_info gauge\nb_info{version=\"1\"} 1\n\
             # HELP g G.\n# TYPE g gauge\ng 1.5\n"
        );
    }

    #[test]
    fn render_exports_every_probe_and_the_build() {
        let mut probes = BTreeMap::new();
        probes.insert("listen_peak", ProbeState::Up { program: "x" });
        probes.insert("synack_retransmit", ProbeState::Down { reason: "no".into() });
        let fired = BTreeMap::new();
        let ctx = Context {
            probes: &probes,
            scan_seconds: 0.01,
            connections_age: 0.0,
            max_listener_series: 10,
            alerts: &[],
            alerts_fired: &fired,
            cluster: None,
        };
        let none = Default::default();
        let none_l = Default::default();
        let section = pools::PoolsSection {
            pools: &[],
            destinations: &[],
            signals: &none,
            extras: None,
            listener_signals: &none_l,
            max_series: 10,
        };
        let text = render(&Snapshot::default(), &section, &ctx, &mut budget::Selector::default());
        assert!(text.contains("connmon_probe_up{probe=\"listen_peak\"} 1"), "{text}");
        assert!(text.contains("connmon_probe_up{probe=\"synack_retransmit\"} 0"), "{text}");
        assert!(text.contains("connmon_build_info{version="), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn metrics_lists_every_metric_name_constant() {
        let sources = [
            include_str!("mod.rs"),
            include_str!("cluster.rs"),
            include_str!("pools.rs"),
            include_str!("storms.rs"),
            include_str!("queues.rs"),
            include_str!("destinations.rs"),
            include_str!("budget.rs"),
        ];
        let mut declared = Vec::new();
        for src in sources {
            for (i, _) in src.match_indices(": &str = \"connmon_") {
                let rest = &src[i + 10..];
                declared.push(&rest[..rest.find('"').unwrap()]);
            }
        }
        assert_eq!(declared.len(), METRICS.len(), "a metric constant is missing from METRICS");
        for name in declared {
            assert!(METRICS.contains(&name), "{name} is not in METRICS");
        }
    }
}
