//! The running agent: owns the loaded probes, the trackers and the alert rules, serialises
//! collections (a scrape, the periodic tick and alert evaluation never scan at once), and tracks
//! readiness. Start-up order is
//! chosen so a bad listen address or web config file fails before anything is loaded, probes
//! load while the process has one thread (so capabilities can be dropped for all), and
//! `/healthz` answers while the connections open at start-up are still being counted.
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Instant,
};

use log::{info, warn};

use crate::{
    alerts::{self, Engine},
    cgroups,
    cli::RunArgs,
    cluster::{self, Cluster, Decision},
    config,
    export::{self, pools::PoolsSection},
    listeners::{self, PeakTracker},
    pools::{self, PoolTracker},
    probes::{self, ProbeOptions, Probes},
    scan,
    services::Services,
    notify::{self, Notifier},
    storms::{Signals, StormTracker},
    web, webauth, webtls,
};

/// Everything a collection or a tick touches; also driven directly by `connmon storms`.
pub struct Collector {
    pub probes: Probes,
    pub peaks: PeakTracker,
    pub pools: PoolTracker,
    pub storms: StormTracker,
    pub alerts: Option<Alerting>,
    pub full_scans: scan::FullScans,
}

/// The built-in alert rules and where their results go.
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
    pub seconds: f64,
    /// Seconds since connections were last dumped (0 when this gather dumped them).
    pub connections_age: f64,
}

impl Collector {
    /// A collector with no probes yet: scans work, kernel figures are missing.
    pub fn new(pools: PoolTracker, storms: StormTracker) -> Self {
        Self {
            probes: Probes::none("probes are still loading"),
            peaks: PeakTracker::new(false),
            pools,
            storms,
            alerts: None,
            full_scans: scan::FullScans::new(1.0),
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

    /// The periodic tick: folds a listener scan into the peaks (without starting a new scrape
    /// period) and feeds the retry-storm detectors. Returns the listeners it saw.
    pub fn tick(&mut self) -> Vec<listeners::Listener> {
        let Collector { probes, peaks, pools, storms, .. } = self;
        let mut snap = listeners::build(&scan::scan(None, scan::Depth::Listeners), pools.cgroups());
        let kernel = probes.take_listener_stats();
        peaks.observe(&mut snap.listeners, &kernel, probes.is_up(probes::SYNACK_RETRANSMIT));
        let pools_up = probes.is_up(probes::POOLS);
        if let Some(ebpf) = probes.ebpf_mut().filter(|_| pools_up) {
            storms.retry_events(&pools::drain_retry_events(ebpf));
            let stats = pools::read_stats(ebpf);
            storms.pools_tick(&stats, &mut |k| pools.describe(k));
        }
        storms.listeners_tick(&snap.listeners);
        snap.listeners
    }

    /// A full scan with connections, kernel peaks folded in (a new peak period starts only when
    /// `scrape`), pools and storm signals.
    pub fn gather(&mut self, scrape: bool) -> Gathered {
        let Collector { probes, peaks, pools, storms, full_scans, .. } = self;
        let t0 = Instant::now();
        let scan_started_ns = monotonic_ns();
        let (scan, fresh) = full_scans.scan();
        let mut snap = listeners::build(&scan, pools.cgroups());
        let kernel = probes.take_listener_stats();
        peaks.observe(&mut snap.listeners, &kernel, probes.is_up(probes::SYNACK_RETRANSMIT));
        if scrape {
            peaks.report(&mut snap.listeners);
        }
        let pools_up = probes.is_up(probes::POOLS);
        let (pool_list, extras) = match probes.ebpf_mut() {
            Some(ebpf) if pools_up => {
                // Reused connections are older than sockets opened since: no reconciling.
                if fresh {
                    pools.reconcile(ebpf, &scan, scan_started_ns);
                }
                let (p, mut e) = pools.collect(ebpf, scrape);
                e.recursion_misses = probes.recursion_misses();
                (p, Some(e))
            }
            _ => {
                let services = pools.services().clone();
                (pools::from_scan(&scan, &services, pools.cgroups()), None)
            }
        };
        Gathered {
            snap,
            pools: pool_list,
            extras,
            pool_signals: storms.pool_signals(),
            listener_signals: storms.listener_signals(),
            seconds: t0.elapsed().as_secs_f64(),
            connections_age: full_scans.age(),
        }
    }

    /// Evaluates the alert rules on a fresh scan; logs and pushes what changed.
    pub fn evaluate_alerts(&mut self) {
        if self.alerts.is_none() {
            return;
        }
        let g = self.gather(false);
        let Some(a) = self.alerts.as_mut() else { return };
        let inputs = alerts::Inputs {
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
            let labels: Vec<String> = v.labels.iter().chain(&v.annotations).map(|(k, v)| format!("{k}={v:?}")).collect();
            warn!("alert={what} alertname={} {}", v.alertname, labels.join(" "));
            if matches!(c, alerts::Change::Resolved(_)) {
                resolved.push(notify::to_am(v, &a.generator_url));
            }
        }
        if let Some(n) = &a.notifier {
            let firing = a.engine.active().iter().filter(|v| v.state == "firing").map(|v| notify::to_am(v, &a.generator_url)).collect();
            n.update(firing, resolved);
        }
    }
}

pub struct Agent {
    collector: Mutex<Collector>,
    ready: AtomicBool,
    max_listener_series: usize,
    max_pool_series: usize,
    /// Names from the Kubernetes API, when it is used.
    cluster: Option<Cluster>,
}

impl Agent {
    fn lock(&self) -> MutexGuard<'_, Collector> {
        // A panic inside a collection must not wedge every later scrape.
        self.collector.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Scans, folds in what the probes saw, and renders OpenMetrics text. Blocking.
    pub fn collect(&self) -> String {
        let mut c = self.lock();
        let g = c.gather(true);
        let section = PoolsSection {
            pools: &g.pools,
            signals: &g.pool_signals,
            extras: g.extras.as_ref(),
            listener_signals: &g.listener_signals,
            max_series: self.max_pool_series,
        };
        let (active, fired) = match &c.alerts {
            Some(a) => (a.engine.active(), a.engine.fired_total.clone()),
            None => (Vec::new(), Default::default()),
        };
        let view = self.cluster.as_ref().map(Cluster::view);
        let ctx = export::Context {
            cluster: view.as_ref(),
            probes: &c.probes.states,
            scan_seconds: g.seconds,
            connections_age: g.connections_age,
            max_listener_series: self.max_listener_series,
            alerts: &active,
            alerts_fired: &fired,
        };
        export::render(&g.snap, &section, &ctx)
    }

    /// Pending and firing alerts, for /api/v1/alerts.
    pub fn alerts(&self) -> Vec<alerts::AlertView> {
        self.lock().alerts.as_ref().map(|a| a.engine.active()).unwrap_or_default()
    }

    fn tick(&self) {
        self.lock().tick();
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let file = match &args.config_file {
        Some(path) => config::load(path)?,
        None => config::Config::default(),
    };
    let mut service_specs: Vec<String> =
        file.services.iter().map(|(name, ports)| format!("{name}={}", ports.iter().map(u16::to_string).collect::<Vec<_>>().join(","))).collect();
    service_specs.extend(args.pool.services.iter().cloned());
    let services = Services::with_overrides(&service_specs)?;
    let web_config = match args.web_config_file.as_ref().or(file.web.config_file.as_ref()) {
        Some(path) => Some(Arc::new(webtls::WebConfigSource::open(path)?)),
        None => None,
    };
    let tls = web_config.as_ref().is_some_and(|w| w.current().tls.is_some());
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty());
    let kube = cluster::decide(&args.kubernetes, in_cluster)?;
    let listener = web::bind(&args.listen_address).await?;
    let local = listener.local_addr()?;
    // Loaded on this thread while it is the process's only one, so the capabilities that only
    // loading needs can be dropped for every thread started afterwards. Connections queue in the
    // bound socket meanwhile (loading takes well under a second).
    let loading = Instant::now();
    let probes = Probes::load(&ProbeOptions {
        tracefs: &args.probes.tracefs,
        max_sockets: args.probes.max_sockets,
        cgroup_root: cgroups::cgroup2_root().as_deref(),
        disabled: &args.probes.disabled_probes,
        short_lived: args.storm.short_lived(&file.storm),
    });
    info!("probes loaded in {} ms", loading.elapsed().as_millis());
    crate::privs::drop_after_attach();
    let scheme = if tls { "https" } else { "http" };
    let mut alert_cfg = file.alerts.clone();
    if !args.alertmanager_urls.is_empty() {
        alert_cfg.alertmanager_urls = args.alertmanager_urls.clone();
    }
    let notifier = (!alert_cfg.alertmanager_urls.is_empty()).then(|| Notifier::start(alert_cfg.alertmanager_urls.clone(), alert_cfg.resend.0));
    let ceilings = file.ceilings.iter().map(|(k, v)| (k.clone(), v.0)).collect();
    let alert_interval = alert_cfg.interval.0;
    let mut collector = Collector::new(
        PoolTracker::new(services, args.pool_idle_expiry),
        StormTracker::new(args.storm.config(&file.storm)),
    );
    collector.full_scans = scan::FullScans::new(args.scan_budget);
    collector.alerts = Some(Alerting {
        engine: Engine::new(alert_cfg, ceilings),
        notifier,
        generator_url: format!("{scheme}://{}/", hostname_or(local)),
    });
    let agent = Arc::new(Agent {
        collector: Mutex::new(collector),
        ready: AtomicBool::new(false),
        max_listener_series: args.max_listener_series,
        max_pool_series: args.max_pool_series,
        cluster: match kube {
            Decision::Off(why) => {
                info!("kubernetes: {why}; naming workloads by cgroup ids and comm");
                None
            }
            // Returns at once: the watches run on a thread of their own.
            Decision::On(settings) => Some(Cluster::start(settings)),
        },
    });
    match &web_config {
        Some(w) => {
            let auth = match w.current().config.users.len() {
                0 => "no basic auth".to_string(),
                n => format!("basic auth, {n} user(s)"),
            };
            info!("serving metrics on {scheme}://{local}/metrics (web config {}: {auth})", w.path().display());
        }
        None => info!("serving metrics on http://{local}/metrics"),
    }

    let starter = Arc::clone(&agent);
    tokio::task::spawn_blocking(move || {
        starter.lock().attach(probes);
        starter.tick();
        starter.ready.store(true, Ordering::Release);
        info!("ready: first scan done");
    });

    let sampler = Arc::clone(&agent);
    let interval = args.scan_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if sampler.is_ready() {
                let s = Arc::clone(&sampler);
                if let Err(e) = tokio::task::spawn_blocking(move || s.tick()).await {
                    warn!("periodic scan failed: {e}");
                }
            }
        }
    });

    let evaluator = Arc::clone(&agent);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(alert_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if evaluator.is_ready() {
                let e = Arc::clone(&evaluator);
                if let Err(err) = tokio::task::spawn_blocking(move || e.lock().evaluate_alerts()).await {
                    warn!("alert evaluation failed: {err}");
                }
            }
        }
    });

    let app = web::router(agent, web_config.clone().map(webauth::Guard::new));
    match web_config {
        Some(source) if tls => {
            axum::serve(webtls::TlsListener::new(listener, source)?, app).with_graceful_shutdown(shutdown_signal()).await?
        }
        _ => axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?,
    }
    info!("shutting down");
    Ok(())
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// The host name for links back to this agent, else its listen address.
fn hostname_or(local: std::net::SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    if host.is_empty() || local.ip().is_loopback() {
        local.to_string()
    } else {
        format!("{host}:{}", local.port())
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
