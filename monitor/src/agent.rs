//! The running agent: owns the loaded probes and the peak tracker, serialises collections (a
//! scrape and the background sampler never scan at once), and tracks readiness. Start-up order is
//! chosen so a bad listen address fails before anything is loaded, and `/healthz` answers while
//! probes are still loading.
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Instant,
};

use log::{info, warn};

use crate::{
    cgroups,
    cli::RunArgs,
    export::{self, pools::PoolsSection},
    listeners::{self, PeakTracker},
    pools::{self, PoolTracker},
    probes::{self, ProbeOptions, Probes},
    scan,
    services::Services,
    storms::StormTracker,
    web,
};

/// Everything a collection or a tick touches; also driven directly by `connmon storms`.
pub struct Collector {
    pub probes: Probes,
    pub peaks: PeakTracker,
    pub pools: PoolTracker,
    pub storms: StormTracker,
}

impl Collector {
    /// A collector with no probes yet: scans work, kernel figures are missing.
    pub fn new(pools: PoolTracker, storms: StormTracker) -> Self {
        Self { probes: Probes::none("probes are still loading"), peaks: PeakTracker::new(false), pools, storms }
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
        let Collector { probes, peaks, pools, storms } = self;
        let mut snap = listeners::build(&scan::scan(None, false));
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
}

pub struct Agent {
    collector: Mutex<Collector>,
    ready: AtomicBool,
    max_listener_series: usize,
    max_pool_series: usize,
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
        let mut guard = self.lock();
        let Collector { probes, peaks, pools, storms } = &mut *guard;
        let t0 = Instant::now();
        let scan = scan::scan(None, true);
        let mut snap = listeners::build(&scan);
        let kernel = probes.take_listener_stats();
        peaks.observe(&mut snap.listeners, &kernel, probes.is_up(probes::SYNACK_RETRANSMIT));
        peaks.report(&mut snap.listeners);
        let pools_up = probes.is_up(probes::POOLS);
        let (pool_list, extras) = match probes.ebpf_mut() {
            Some(ebpf) if pools_up => {
                let (p, e) = pools.collect(ebpf);
                (p, Some(e))
            }
            _ => {
                let services = pools.services().clone();
                (pools::from_scan(&scan, &services, pools.cgroups()), None)
            }
        };
        let pool_signals = storms.pool_signals();
        let listener_signals = storms.listener_signals();
        let section = PoolsSection {
            pools: &pool_list,
            signals: &pool_signals,
            extras: extras.as_ref(),
            listener_signals: &listener_signals,
            max_series: self.max_pool_series,
        };
        let ctx = export::Context {
            probes: &probes.states,
            scan_seconds: t0.elapsed().as_secs_f64(),
            max_listener_series: self.max_listener_series,
        };
        export::render(&snap, &section, &ctx)
    }

    fn tick(&self) {
        self.lock().tick();
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let services = Services::with_overrides(&args.pool.services)?;
    let listener = web::bind(&args.listen_address).await?;
    let agent = Arc::new(Agent {
        collector: Mutex::new(Collector::new(
            PoolTracker::new(services, args.pool_idle_expiry),
            StormTracker::new(args.storm.config()),
        )),
        ready: AtomicBool::new(false),
        max_listener_series: args.max_listener_series,
        max_pool_series: args.max_pool_series,
    });
    info!("serving metrics on http://{}/metrics", listener.local_addr()?);

    let starter = Arc::clone(&agent);
    let tracefs = args.tracefs.clone();
    let max_sockets = args.max_sockets;
    let disabled = args.disabled_probes.clone();
    let short_lived = args.storm.short_lived;
    tokio::task::spawn_blocking(move || {
        let probes = Probes::load(&ProbeOptions {
            tracefs: &tracefs,
            max_sockets,
            cgroup_root: cgroups::cgroup2_root().as_deref(),
            disabled: &disabled,
            short_lived,
        });
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

    axum::serve(listener, web::router(agent))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    info!("shutting down");
    Ok(())
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
