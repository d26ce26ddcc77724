//! What one collection or tick does, apart from serving it: the loaded probes, the listener peaks,
//! the pool and storm trackers and the alert rules, and the order in which a scan, the kernel
//! maps and the detectors are combined. The agent drives one behind a lock; `connmon storms`
//! drives one directly.
use std::{collections::HashMap, time::Instant};

use log::{info, warn};

use crate::{
    alerts::{self, notify, notify::Notifier, Engine},
    attribution::cluster_map::Names,
    kernel::probes::{self, Probes},
    model::{
        destinations::{self, Destination},
        listeners::{self, PeakTracker},
        peak_window::PeakWindows,
        pools::{self, PoolTracker},
        queue_wait::{QueueTracker, Sources as QueueSources},
        storms::{Signals, StormTracker},
    },
    scan,
};

/// Everything a collection or a tick touches; also driven directly by `connmon storms`.
pub struct Observer {
    pub probes: Probes,
    pub peaks: PeakTracker,
    pub queues: QueueTracker,
    pub pools: PoolTracker,
    pub storms: StormTracker,
    pub full_scans: scan::FullScans,
    pub destinations: destinations::Tracker,
    /// The peak gauges' period (see model/peak_window.rs).
    pub windows: PeakWindows,
    /// How full the kernel hash maps are.
    pub census: crate::kernel::census::Census,
    started: Instant,
}

/// The built-in alert rules and where their results go. Kept apart from the [`Observer`] (behind
/// a lock of its own in the agent), so evaluating the rules does not hold up scans and scrapes.
pub struct Alerting {
    pub engine: Engine,
    pub notifier: Option<Notifier>,
    /// Link in Alertmanager back to this agent.
    pub generator_url: String,
}

/// One scan with everything the probes add to it.
pub struct Gathered {
    pub snap: listeners::Snapshot,
    pub pools: Vec<pools::Pool>,
    pub extras: Option<pools::KernelExtras>,
    pub pool_signals: HashMap<monitor_common::PoolKey, Signals>,
    pub listener_signals: HashMap<listeners::ListenerId, Signals>,
    pub destinations: Vec<Destination>,
    pub seconds: f64,
    /// Seconds since connections were last dumped (0 when this gather dumped them).
    pub connections_age: f64,
}

impl Observer {
    /// A collector with no probes yet: scans work, kernel figures are missing.
    pub fn new(pools: PoolTracker, storms: StormTracker) -> Self {
        Self {
            probes: Probes::none("probes are still loading"),
            peaks: PeakTracker::new(false),
            queues: QueueTracker::default(),
            pools,
            storms,
            // The flag's default; the agent sets --scan.budget. `connmon storms` only ticks, which
            // would otherwise start a dump every second.
            full_scans: scan::FullScans::new(0.001),
            destinations: destinations::Tracker::new(Default::default(), Default::default(), Default::default()),
            windows: PeakWindows::new(DEFAULT_PEAK_WINDOW),
            census: Default::default(),
            started: Instant::now(),
        }
    }

    /// Takes loaded probes and counts the connections already open (pools probe only).
    pub fn attach(&mut self, mut probes: Probes) {
        if probes.is_up(probes::POOLS) {
            if let Some(ebpf) = probes.ebpf_mut() {
                match self.pools.seed(ebpf) {
                    Ok(n) => info!("pools: {n} connections open at start-up counted"),
                    Err(e) => warn!("pools: counting connections open at start-up failed: {e:#}"),
                }
            }
        }
        self.peaks = PeakTracker::new(probes.is_up(probes::LISTEN_PEAK));
        self.probes = probes;
    }

    /// The periodic tick: folds a listener scan into the peak windows and feeds the retry-storm
    /// detectors. Returns the listeners it saw.
    pub fn tick(&mut self) -> Vec<listeners::Listener> {
        let Observer { probes, peaks, queues, pools, storms, windows, census, full_scans, .. } = self;
        if let Some(ebpf) = probes.ebpf_mut() {
            census.refresh(ebpf);
        }
        // In the background: the next scrape or alert evaluation finds it done.
        full_scans.start_if_due();
        let mut snap = listeners::build(&scan::scan(None, scan::Depth::Queues), pools.cgroups());
        let kernel = probes.take_listener_stats();
        peaks.observe(&mut snap.listeners, &kernel, probes.is_up(probes::SYNACK_RETRANSMIT));
        windows.advance(Instant::now());
        listener_peaks(peaks, windows, &mut snap.listeners);
        queues.observe(&mut snap.listeners, &kernel, queue_sources(probes));
        let pools_up = probes.is_up(probes::POOLS);
        if let Some(ebpf) = probes.ebpf_mut().filter(|_| pools_up) {
            // Each connection dump once, here rather than in a scrape: at 64k sockets the socket
            // table's read is most of the work.
            if let Some((dump, started_ns)) = full_scans.fresh_dump() {
                pools.reconcile(ebpf, &dump, started_ns);
            }
            storms.retry_events(&pools::drain_retry_events(ebpf));
            let stats = pools::read_stats(ebpf);
            storms.pools_tick(&stats, &mut |k| pools.describe(k));
        }
        storms.listeners_tick(&snap.listeners);
        snap.listeners
    }

    /// A full scan with connections, kernel peaks folded into the peak windows, pools,
    /// destinations and storm signals. Destinations record a sample for the alert rules only
    /// when not `scrape`, so how often Prometheus scrapes does not matter.
    pub fn gather(&mut self, scrape: bool) -> Gathered {
        let Observer { probes, peaks, queues, pools, storms, full_scans, destinations, started, windows, .. } = self;
        let t0 = Instant::now();
        let scan = full_scans.scan();
        let mut snap = listeners::build(&scan, pools.cgroups());
        let kernel = probes.take_listener_stats();
        peaks.observe(&mut snap.listeners, &kernel, probes.is_up(probes::SYNACK_RETRANSMIT));
        queues.observe(&mut snap.listeners, &kernel, queue_sources(probes));
        windows.advance(Instant::now());
        listener_peaks(peaks, windows, &mut snap.listeners);
        let pools_up = probes.is_up(probes::POOLS);
        let (pool_list, extras) = match probes.ebpf_mut() {
            Some(ebpf) if pools_up => {
                let (p, mut e) = pools.collect(ebpf, true);
                e.recursion_misses = probes.recursion_misses();
                (p, Some(e))
            }
            _ => {
                let services = pools.services().clone();
                (pools::from_scan(&scan, &services, pools.cgroups()), None)
            }
        };
        let mut pool_list = pool_list;
        for p in &mut pool_list {
            p.peak = windows.pools.observe(&p.label_values(), p.peak);
        }
        let mut destinations = destinations.update(started.elapsed().as_secs_f64(), &pool_list, !scrape, true);
        for d in &mut destinations {
            d.peak = windows.destinations.observe(&d.key, d.peak);
        }
        Gathered {
            snap,
            destinations,
            pools: pool_list,
            extras,
            pool_signals: storms.pool_signals(),
            listener_signals: storms.listener_signals(),
            seconds: t0.elapsed().as_secs_f64(),
            connections_age: full_scans.age(),
        }
    }
}

impl Alerting {
    /// Evaluates the alert rules on `g`, a fresh gather (not a scrape's); logs and pushes what
    /// changed. `names` are the Kubernetes API's, when it is used.
    pub fn evaluate(&mut self, g: &Gathered, names: Option<&Names>) {
        let a = self;
        let peer_names: HashMap<std::net::IpAddr, String> = names
            .map(|n| {
                g.destinations
                    .iter()
                    .filter_map(|d| {
                        n.peer(d.key.dst_addr)
                            .map(|p| (d.key.dst_addr, format!("{} {}/{}", p.kind.as_str(), p.namespace, p.name)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let inputs = alerts::Inputs {
            destinations: &g.destinations,
            peer_names: &peer_names,
            pools: &g.pools,
            listeners: &g.snap.listeners,
            namespaces: &g.snap.namespaces,
            pool_signals: &g.pool_signals,
            listener_signals: &g.listener_signals,
        };
        let now = a.engine.now();
        let changes = a.engine.evaluate(now, &inputs);
        let mut resolved = Vec::new();
        for c in &changes {
            let (what, v) = match c {
                alerts::Change::Fired(v) => ("firing", v),
                alerts::Change::Resolved(v) => ("resolved", v),
            };
            let labels: Vec<String> =
                v.labels.iter().chain(&v.annotations).map(|(k, v)| format!("{k}={v:?}")).collect();
            warn!("alert={what} alertname={} {}", v.alertname, labels.join(" "));
            if matches!(c, alerts::Change::Resolved(_)) {
                resolved.push(notify::to_am(v, &a.generator_url));
            }
        }
        if let Some(n) = &a.notifier {
            let firing = a
                .engine
                .active()
                .iter()
                .filter(|v| v.state == alerts::AlertState::Firing)
                .map(|v| notify::to_am(v, &a.generator_url))
                .collect();
            n.update(firing, resolved);
        }
    }
}

/// The peak gauges' window unless `--peaks.window` says otherwise: Prometheus' default scrape
/// interval, so every scraper at that interval or faster sees every peak.
pub const DEFAULT_PEAK_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Ends the listeners' current peak period (highest since the previous collection) and puts the
/// highest within the window into each listener's `peak_depth`.
fn listener_peaks(peaks: &mut PeakTracker, windows: &mut PeakWindows, listeners: &mut [listeners::Listener]) {
    peaks.report(listeners);
    for l in listeners.iter_mut() {
        l.peak_depth = windows.listeners.observe(&l.id, i64::from(l.peak_depth)).try_into().unwrap_or(u32::MAX);
    }
}

/// Which probes the queue figures can rely on.
fn queue_sources(p: &Probes) -> QueueSources {
    QueueSources {
        states: p.is_up(probes::POOLS),
        accepts: p.is_up(probes::ACCEPT_WAIT),
        listens: p.is_up(probes::LISTEN_BACKLOG),
    }
}
