//! Where `connmon top` gets its rows: the kernel probes attached by top itself (the agent's
//! Observer, ticked once a second like the agent, with the built-in alert rules evaluated at
//! their defaults), or a running agent's /metrics and /api/v1/alerts (`--agent`). Each runs on a
//! thread of its own and hands a `Frame` per refresh over a channel of one, so a slow scan or
//! agent never blocks the keys.
use std::{
    collections::BTreeMap,
    sync::mpsc::{Receiver, SyncSender, TrySendError},
    time::{Duration, Instant},
};

use super::{
    metrics::Exposition,
    model::{Frame, Row, Tab},
};
use crate::{
    agent::{Alerting, Observer},
    alerts::{AlertView, Engine},
    cli::{client::AgentClient, names::Namer},
    config::AlertsConfig,
    kernel::{privs, probes},
    model::{
        destinations::{self, Destination},
        listeners::{Listener, LISTENER_LABELS},
        pools::{self, Pool, POOL_LABELS},
        services::Services,
        storms::{Signals, StormTracker},
    },
};

/// What the sources send: a frame, or an error that ends top (probes missing, say).
pub type Update = Result<Frame, String>;

/// Starts the local source: loads the probes here, before any other thread exists (so that
/// privileges can be dropped after attaching), then refreshes on a thread of its own.
pub fn local(
    services: Services,
    probe_args: crate::config::flags::ProbeArgs,
    interval: Duration,
) -> anyhow::Result<Receiver<Update>> {
    let loaded = probes::Probes::load(&probe_args.options(Duration::from_secs(1)));
    privs::drop_after_attach();
    if !loaded.is_up(probes::POOLS) {
        anyhow::bail!("connmon top needs the pools probe (tracepoint sock:inet_sock_set_state): run as root or grant CAP_BPF and CAP_PERFMON, or read an agent with --agent URL");
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new().name("top-probes".into()).spawn(move || {
        let storm = StormTracker::new(Default::default());
        let notes: Vec<String> = probes::probe_names()
            .iter()
            .filter(|p| !loaded.is_up(p) && !probe_args.disabled_probes.iter().any(|d| d == *p))
            .map(|p| format!("probe {p} is not running: its figures are missing"))
            .collect();
        let cfg = AlertsConfig::default();
        let mut o = Observer::new(pools::PoolTracker::new(services, Duration::MAX), storm);
        o.queues = crate::model::queue_wait::QueueTracker::new(cfg.accept_queue_slow_failure.client_timeout.0);
        o.destinations = destinations::Tracker::new(
            cfg.destination_saturated.clone(),
            cfg.dependency_failing.clone(),
            cfg.near_ceiling.clone(),
        );
        let mut alerting =
            Alerting { engine: Engine::new(cfg, BTreeMap::new()), notifier: None, generator_url: String::new() };
        o.attach(loaded);
        let mut namer = Namer::default();
        let mut next = Instant::now();
        loop {
            // Tick once a second (the storm detectors' pace), refresh every interval.
            let refresh_at = next;
            while Instant::now() < refresh_at {
                o.tick();
                std::thread::sleep(refresh_at.saturating_duration_since(Instant::now()).min(Duration::from_secs(1)));
            }
            next = Instant::now() + interval;
            alerting.evaluate(&o.gather(false), None);
            let frame = local_frame(&mut o, &alerting, &mut namer, &notes);
            if !send(&tx, Ok(frame)) {
                return;
            }
        }
    })?;
    Ok(rx)
}

/// Sends unless the viewer is behind (then this refresh is skipped); false once it has quit.
fn send(tx: &SyncSender<Update>, u: Update) -> bool {
    !matches!(tx.try_send(u), Err(TrySendError::Disconnected(_)))
}

fn local_frame(o: &mut Observer, alerting: &Alerting, namer: &mut Namer, notes: &[String]) -> Frame {
    let g = o.gather(true);
    let alerts: Vec<AlertView> = alerting.engine.active();
    let lrows = g.snap.listeners.iter().map(|l| listener_row(l, namer, g.listener_signals.get(&l.id))).collect();
    let prows = g
        .pools
        .iter()
        .map(|p| {
            let s = p.key.and_then(|k| g.pool_signals.get(&k));
            pool_row(p, namer, s)
        })
        .collect();
    let drows = g.destinations.iter().map(|d| dest_row(d, namer, &g.pools)).collect();
    Frame {
        rows: [(Tab::Listeners, lrows), (Tab::Pools, prows), (Tab::Destinations, drows)].into(),
        alerts,
        notes: notes.to_vec(),
    }
}

fn key_of(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

pub fn listener_row(l: &Listener, namer: &mut Namer, s: Option<&Signals>) -> Row {
    let labels: BTreeMap<String, String> =
        LISTENER_LABELS.iter().map(|k| k.to_string()).zip(l.label_values()).collect();
    let local = match l.local_labels() {
        (path, port) if port.is_empty() => path,
        (addr, port) => format!("{}:{port}", if addr.contains(':') { format!("[{addr}]") } else { addr }),
    };
    let comm = l.comm.clone().unwrap_or_default();
    let name = namer.name(&comm, l.cgroup.as_deref().unwrap_or(""), l.pid);
    let netns = l.netns_name.clone().unwrap_or_else(|| l.netns.to_string());
    Row {
        key: key_of(&labels),
        search: format!("{local} {name} {comm} {} {netns}", l.cgroup.as_deref().unwrap_or("")),
        labels,
        text: vec![local, netns, if name.is_empty() { "-".into() } else { name }],
        gauge: f64::from(l.depth),
        limit: Some(f64::from(l.backlog)),
        wait: l.queue.worst_wait(),
        bad_total: Some(l.drops),
        storm_score: s.map(|s| s.score.overall),
        in_storm: s.is_some_and(|s| s.in_storm),
        ..Default::default()
    }
}

pub fn pool_row(p: &Pool, namer: &mut Namer, s: Option<&Signals>) -> Row {
    let labels: BTreeMap<String, String> = POOL_LABELS.iter().map(|k| k.to_string()).zip(p.label_values()).collect();
    let dst = std::net::SocketAddr::new(p.dst_addr, p.dst_port).to_string();
    let name = namer.name(&p.comm, &p.cgroup, None);
    Row {
        key: key_of(&labels),
        search: format!("{} {dst} {name} {} {}", p.service, p.comm, p.cgroup),
        labels,
        text: vec![p.service.clone(), dst, dash(name), dash(p.cgroup.clone())],
        gauge: p.active as f64,
        second: p.key.map(|_| p.pending as f64),
        bad_total: p.failures,
        storm_score: s.map(|s| s.score.overall),
        in_storm: s.is_some_and(|s| s.in_storm),
        ..Default::default()
    }
}

fn dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// The destination's top workloads by their recognisable names (`worker.py=12`).
fn workloads_text(d: &Destination, namer: &mut Namer, pools: &[Pool]) -> String {
    d.workloads
        .iter()
        .take(3)
        .map(|(w, n)| {
            let p = pools.iter().find(|p| destinations::DestKey::of(p) == d.key && destinations::workload_of(p) == *w);
            let name = p.map(|p| namer.name(&p.comm, &p.cgroup, None)).unwrap_or_else(|| w.clone());
            format!("{}={n}", dash(name))
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub fn dest_row(d: &Destination, namer: &mut Namer, pools: &[Pool]) -> Row {
    let labels: BTreeMap<String, String> = [
        ("service".to_string(), d.key.service.clone()),
        ("dst_addr".to_string(), d.key.dst_addr.to_string()),
        ("dst_port".to_string(), d.key.dst_port.to_string()),
    ]
    .into();
    let dst = std::net::SocketAddr::new(d.key.dst_addr, d.key.dst_port).to_string();
    let top = workloads_text(d, namer, pools);
    Row {
        key: key_of(&labels),
        search: format!("{} {dst} {top}", d.key.service),
        labels,
        text: vec![d.key.service.clone(), dst, dash(top)],
        gauge: d.connections as f64,
        limit: d.ceiling_observed.map(|c| c as f64),
        bad_total: d.probed.then(|| d.evidence.rejected()),
        ..Default::default()
    }
}

/// Starts the agent source: reads /metrics and /api/v1/alerts every `interval`.
pub fn agent(client: AgentClient, interval: Duration) -> Receiver<Update> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("top-agent".into())
        .spawn(move || {
            let mut namer = Namer::default();
            let mut last: Option<Frame> = None;
            loop {
                let started = Instant::now();
                let update = match (agent_frame(&client, &mut namer), &last) {
                    (Ok(f), _) => {
                        last = Some(f.clone());
                        Ok(f)
                    }
                    // The first read failing ends top with the error; later ones keep the last
                    // rows on screen with a note until the agent answers again.
                    (Err(e), None) => Err(format!("{e:#}")),
                    (Err(e), Some(prev)) => Ok(Frame {
                        notes: vec![format!("agent unreachable, showing the last rows read: {e:#}")],
                        ..prev.clone()
                    }),
                };
                let fatal = update.is_err();
                if !send(&tx, update) || fatal {
                    return;
                }
                std::thread::sleep(interval.saturating_sub(started.elapsed()));
            }
        })
        .expect("spawning a thread");
    rx
}

fn agent_frame(client: &AgentClient, namer: &mut Namer) -> anyhow::Result<Frame> {
    let text = client.get_text("/metrics")?;
    let alerts: Vec<AlertView> = client.get_json("/api/v1/alerts")?;
    let m = Exposition::parse(&text);
    Ok(Frame { rows: super::metrics::rows(&m, namer), alerts, notes: Vec::new() })
}
