//! The running agent: owns the loaded probes, the trackers and the alert rules, serialises
//! collections (a scrape, the periodic tick and alert evaluation never scan at once), prepares
//! expositions for the scrapes it expects (prepared.rs), and tracks readiness. Start-up order is
//! chosen so a bad listen address or web config file fails before anything is loaded, probes
//! load while the process has one thread (so capabilities can be dropped for all), and
//! `/healthz` answers while the connections open at start-up are still being counted.
pub mod bounds;
mod observer;
mod prepared;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU8, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use log::{debug, info, warn};

pub use self::observer::{Alerting, Gathered, Observer};
use self::prepared::{Prepared, ScrapeClock};
use crate::{
    alerts::{self, notify::Notifier, Engine},
    attribution::cluster::{self, Cluster, Decision},
    config::{self, flags::RunArgs},
    export::{self, pools::PoolsSection},
    kernel::probes::Probes,
    model::{destinations, peak_window::PeakWindows, pools::PoolTracker, services::Services, storms::StormTracker},
    scan,
    web::{
        self, auth,
        limits::{Limited, Limits},
        tls,
    },
};

pub struct Agent {
    observer: Mutex<Observer>,
    /// The alert rules: evaluated outside the observer's lock (lock order: observer, then this).
    alerting: Mutex<Option<Alerting>>,
    ready: AtomicBool,
    /// What took the observer's lock last (a `HOLDERS` index): while a scrape waits for the
    /// lock, what holds it, for the debug line that explains a slow scrape.
    holder: AtomicU8,
    max_listener_series: usize,
    max_pool_series: usize,
    /// Which listeners and pools a scrape shows in detail (remembers them across scrapes).
    series: Mutex<export::budget::Selector>,
    /// Names from the Kubernetes API, when it is used.
    cluster: Option<Cluster>,
    /// The periodic tick's interval: the most a prepared exposition may be behind.
    tick_interval: Duration,
    /// When scrapes came, so the tick knows when to prepare one (see prepared.rs).
    scrapes: Mutex<ScrapeClock>,
    /// The exposition the tick prepared last. Held while the tick prepares one, so a scrape that
    /// comes meanwhile waits for it instead of collecting a second time (lock order: this, then
    /// the observer's).
    prepared: Mutex<Option<Prepared>>,
    /// A scrape collected afresh since the last tick: the tick hands what it freed back to the
    /// kernel (`release_freed_memory`), so the scrape does not wait for the trim.
    trim_due: AtomicBool,
}

/// What can hold the observer's lock.
const HOLDERS: [&str; 4] = ["start-up", "scrape", "tick", "alert evaluation"];
const SCRAPE: u8 = 1;
const TICK: u8 = 2;
const EVALUATION: u8 = 3;

impl Agent {
    fn lock(&self) -> MutexGuard<'_, Observer> {
        // A panic inside a collection must not wedge every later scrape.
        self.observer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The observer's lock for `who`.
    fn lock_for(&self, who: u8) -> MutexGuard<'_, Observer> {
        let guard = self.lock();
        self.holder.store(who, Ordering::Relaxed);
        guard
    }

    fn alerting(&self) -> MutexGuard<'_, Option<Alerting>> {
        self.alerting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `collect`: the gather under the observer's lock, the rendering after it is released (it
    /// reads only what the gather returned), so the 1 s tick and alert evaluation, which wait on
    /// that lock, are not held up by the encoding, nor a scrape by theirs for as long. What it
    /// built is freed when it returns.
    fn collect_locked(&self) -> String {
        let (g, probes, active, fired, bounds, (asked, held_by, waited, gathered)) = {
            let asked = Instant::now();
            let held_by = HOLDERS[usize::from(self.holder.load(Ordering::Relaxed)).min(HOLDERS.len() - 1)];
            let mut c = self.lock_for(SCRAPE);
            let waited = asked.elapsed();
            let g = c.gather(true);
            let gathered = asked.elapsed() - waited;
            let alerting = self.alerting();
            let (active, fired) = match &*alerting {
                Some(a) => (a.engine.active(), a.engine.fired_total.clone()),
                None => (Vec::new(), Default::default()),
            };
            let timing = (asked, held_by, waited, gathered);
            (g, c.probes.states.clone(), active, fired, bounds::render(&c, alerting.as_ref()), timing)
        };
        let section = PoolsSection {
            destinations: &g.destinations,
            pools: &g.pools,
            signals: &g.pool_signals,
            extras: g.extras.as_ref(),
            listener_signals: &g.listener_signals,
            max_series: self.max_pool_series,
        };
        let view = self.cluster.as_ref().map(Cluster::view);
        let ctx = export::Context {
            cluster: view.as_ref(),
            probes: &probes,
            scan_seconds: g.seconds,
            connections_age: g.connections_age,
            max_listener_series: self.max_listener_series,
            alerts: &active,
            alerts_fired: &fired,
        };
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let text = web::stats::splice(export::render(&g.snap, &section, &ctx, &mut series), &bounds);
        debug!(
            "scrape: {} ms waiting for the observer's lock (last taken by the {held_by}), {} ms gathering, {} ms rendering",
            waited.as_millis(),
            gathered.as_millis(),
            (asked.elapsed() - waited - gathered).as_millis()
        );
        text
    }

    fn tick(&self) {
        self.lock_for(TICK).tick();
        if self.trim_due.swap(false, Ordering::Relaxed) {
            release_freed_memory();
        }
    }

    /// After a tick: collects and renders now when a scrape is expected before the next tick,
    /// for that scrape to be served at once.
    fn prepare_if_expected(&self) {
        if !self.scrapes.lock().unwrap_or_else(|p| p.into_inner()).expects(Instant::now(), self.tick_interval) {
            return;
        }
        let mut slot = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        let at = Instant::now();
        *slot = None;
        *slot = Some(Prepared { text: self.collect_locked(), at });
        drop(slot);
        release_freed_memory();
    }

    /// A fresh gather under the observer's lock, the rules evaluated on it after the lock is
    /// released: a scrape or tick waits for the gather only.
    fn evaluate_alerts(&self) {
        if self.alerting().is_none() {
            return;
        }
        let g = self.lock_for(EVALUATION).gather(false);
        let view = self.cluster.as_ref().map(Cluster::view);
        if let Some(a) = self.alerting().as_mut() {
            a.evaluate(&g, view.as_ref().map(|v| &*v.names));
        }
        drop(g);
        release_freed_memory();
    }
}

/// Hands the pages that a collection or an alert evaluation freed back to the kernel. Both build
/// and drop tens of thousands of short-lived strings on a big host, between longer-lived entries
/// (sample histories, caches), so glibc's arena kept freed pages it could not trim from its top:
/// on the fleet host (1,500 listeners and pools) 55 MB of arena held 22 MB in use, and
/// `malloc_trim(0)` took the agent from 72 to 59 MiB RSS. Not after every 1 s tick, whose
/// allocations are small (its CPU matters more at 10k connections/s), only after the first tick
/// following a scrape that collected afresh, which leaves its trim to the tick.
#[cfg(target_env = "gnu")]
fn release_freed_memory() {
    // SAFETY: malloc_trim only returns free memory to the kernel; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
fn release_freed_memory() {}

impl web::Endpoints for Agent {
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The exposition the tick prepared for this scrape when it is at most one tick old, else
    /// a fresh one: scans, folds in what the probes saw, and renders OpenMetrics text. Blocking.
    fn collect(&self) -> String {
        let asked = Instant::now();
        self.scrapes.lock().unwrap_or_else(|p| p.into_inner()).arrived(asked);
        {
            let prepared = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(p) = prepared.as_ref() {
                if let Some(text) = p.fresh(self.tick_interval) {
                    let age = p.at.elapsed();
                    debug!(
                        "scrape: served the exposition prepared {} ms ago ({} ms waiting for it)",
                        age.as_millis(),
                        asked.elapsed().as_millis()
                    );
                    return web::stats::splice(text.to_string(), &bounds::render_age(age));
                }
            }
        }
        let text = self.collect_locked();
        // Trimmed by the next tick, at most --scan.interval later: on a fleet host the trim's
        // madvise calls took about 1 ms, which the scrape waited for.
        self.trim_due.store(true, Ordering::Relaxed);
        web::stats::splice(text, &bounds::render_age(asked.elapsed()))
    }

    /// Pending and firing alerts, for /api/v1/alerts.
    fn alerts(&self) -> Vec<alerts::AlertView> {
        self.alerting().as_ref().map(|a| a.engine.active()).unwrap_or_default()
    }
}

/// Threads for scans and other blocking work. Collections are single-flight and serialised with
/// the periodic tick and alert evaluation behind one lock, so more would only wait on it.
pub const BLOCKING_THREADS: usize = 4;

/// Runs the agent on a single-threaded runtime (HTTP and timers) with a blocking pool of
/// `BLOCKING_THREADS` (scans): its thread count does not grow with the number of scrapes.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("connmon-worker")
        .build()?
        .block_on(serve(args))
}

async fn serve(args: RunArgs) -> anyhow::Result<()> {
    let file = match &args.config_file {
        Some(path) => config::load(path)?,
        None => config::Config::default(),
    };
    let mut service_specs: Vec<String> = file
        .services
        .iter()
        .map(|(name, ports)| format!("{name}={}", ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")))
        .collect();
    service_specs.extend(args.pool.services.iter().cloned());
    let services = Services::with_overrides(&service_specs)?;
    let web_config = match args.web_config_file.as_ref().or(file.web.config_file.as_ref()) {
        Some(path) => Some(Arc::new(tls::WebConfigSource::open(path)?)),
        None => None,
    };
    let tls = web_config.as_ref().is_some_and(|w| w.current().tls.is_some());
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty());
    let kube = cluster::decide(&args.kubernetes, in_cluster)?;
    let listener = web::bind(&args.listen_address).await?;
    scan::procs::warn_if_own_pid_namespace();
    let local = listener.local_addr()?;
    // Loaded on this thread while it is the process's only one, so the capabilities that only
    // loading needs can be dropped for every thread started afterwards. Connections queue in the
    // bound socket meanwhile (loading takes well under a second).
    let loading = Instant::now();
    let storm = args.storm.or(&file.storm).resolve();
    let probes = Probes::load(&args.probes.options(storm.short_lived));
    info!("probes loaded in {} ms", loading.elapsed().as_millis());
    crate::kernel::privs::drop_after_attach();
    let scheme = if tls { "https" } else { "http" };
    let mut alert_cfg = file.alerts.clone();
    if !args.alertmanager_urls.is_empty() {
        alert_cfg.alertmanager_urls = args.alertmanager_urls.clone();
    }
    let notifier = (!alert_cfg.alertmanager_urls.is_empty())
        .then(|| Notifier::start(alert_cfg.alertmanager_urls.clone(), alert_cfg.resend.0));
    let ceilings = file.ceilings.iter().map(|(k, v)| (k.clone(), v.0)).collect();
    let alert_interval = alert_cfg.interval.0;
    let mut observer = Observer::new(PoolTracker::new(services, args.pool_idle_expiry), StormTracker::new(storm));
    observer.full_scans = scan::FullScans::new(args.scan_budget);
    observer.windows = PeakWindows::new(args.peak_window);
    observer.queues = crate::model::queue_wait::QueueTracker::new(alert_cfg.accept_queue_slow_failure.client_timeout.0);
    observer.destinations = destinations::Tracker::new(
        alert_cfg.destination_saturated.clone(),
        alert_cfg.dependency_failing.clone(),
        alert_cfg.near_ceiling.clone(),
    );
    let alerting = Alerting {
        engine: Engine::new(alert_cfg, ceilings),
        notifier,
        generator_url: format!("{scheme}://{}/", hostname_or(local)),
    };
    let agent = Arc::new(Agent {
        observer: Mutex::new(observer),
        alerting: Mutex::new(Some(alerting)),
        ready: AtomicBool::new(false),
        holder: AtomicU8::new(0),
        max_listener_series: args.max_listener_series,
        max_pool_series: args.max_pool_series,
        series: Mutex::new(export::budget::Selector::new(export::budget::Settings {
            budget: args.series_budget.unwrap_or(file.series.budget),
            hold: args.series_hold.unwrap_or(file.series.hold.0),
        })),
        cluster: match kube {
            Decision::Off(why) => {
                info!("kubernetes: {why}; naming workloads by cgroup ids and comm");
                None
            }
            // Returns at once: the watches run on a thread of their own.
            Decision::On(settings) => Some(Cluster::start(settings)),
        },
        tick_interval: args.scan_interval,
        scrapes: Mutex::new(ScrapeClock::default()),
        prepared: Mutex::new(None),
        trim_due: AtomicBool::new(false),
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
            if web::Endpoints::is_ready(&*sampler) {
                let s = Arc::clone(&sampler);
                let tick = move || {
                    s.tick();
                    s.prepare_if_expected();
                };
                if let Err(e) = tokio::task::spawn_blocking(tick).await {
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
            if web::Endpoints::is_ready(&*evaluator) {
                let e = Arc::clone(&evaluator);
                if let Err(err) = tokio::task::spawn_blocking(move || e.evaluate_alerts()).await {
                    warn!("alert evaluation failed: {err}");
                }
            }
        }
    });

    let limits = Limits::new(args.max_connections, args.max_requests);
    let app = web::router(
        web::Web::new(agent, Arc::clone(&limits), BLOCKING_THREADS),
        web_config.clone().map(auth::Guard::new),
    );
    match web_config {
        Some(source) if tls => {
            let tls = tls::TlsListener::new(listener, source, limits)?;
            web::serve::serve(tls, app, shutdown_signal()).await
        }
        _ => web::serve::serve(Limited::new(listener, limits), app, shutdown_signal()).await,
    }
    info!("shutting down");
    Ok(())
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
