//! connmon: TCP connection and listen-backlog monitor. `main` only maps the outcome of `run` to an
//! exit code: errors print as one line, and a closed pipe (`connmon listeners | head`) is success.
use std::{io::Write as _, process::ExitCode};

use clap::Parser as _;

mod agent;
mod alerts;
mod btf;
mod cgroups;
mod cli;
mod cluster;
mod cluster_map;
mod config;
mod diag;
mod export;
mod listeners;
mod netns;
mod netstat;
mod notify;
mod pools;
mod privs;
mod probes;
mod procs;
mod scan;
mod services;
mod storms;
mod table;
mod tracefs;
mod web;
mod webauth;
mod webconfig;
mod webtls;
mod workload;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("connmon: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<()> {
    match cli.command {
        cli::Command::Run(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(agent::run(*args)),
        cli::Command::Listeners(args) => listeners_command(&args),
        cli::Command::Pools(args) => pools_command(&args),
        cli::Command::Storms(args) => storms_command(&args),
        cli::Command::Alerts(args) => alerts_command(&args),
    }
}

fn listeners_command(args: &cli::ListenersArgs) -> anyhow::Result<()> {
    if let Some(filter) = &args.netns {
        if !netns::discover().iter().any(|ns| scan::matches_filter(ns, filter)) {
            anyhow::bail!("no network namespace matches {filter:?}: give a name from /run/netns or an inode");
        }
    }
    let snap = listeners::build(&scan::scan(args.netns.as_deref(), scan::Depth::Full), &mut cgroups::CgroupNames::default());
    print_rows(&snap.listeners, args.json, table::print_listeners)
}

fn pools_command(args: &cli::PoolsArgs) -> anyhow::Result<()> {
    let services = services::Services::with_overrides(&args.pool.services)?;
    if !args.watch {
        let mut cgroups = cgroups::CgroupNames::default();
        let pools = pools::from_scan(&scan::scan(None, scan::Depth::Full), &services, &mut cgroups);
        return print_rows(&pools, args.json, table::print_pools);
    }
    let mut loaded = probes::Probes::load(&probes::ProbeOptions {
        tracefs: &args.probes.tracefs,
        max_sockets: args.probes.max_sockets,
        cgroup_root: cgroups::cgroup2_root().as_deref(),
        disabled: &args.probes.disabled_probes,
        short_lived: std::time::Duration::from_secs(1),
    });
    privs::drop_after_attach();
    let up = loaded.is_up(probes::POOLS);
    let Some(ebpf) = loaded.ebpf_mut().filter(|_| up) else {
        anyhow::bail!("--watch needs the pools probe (tracepoint sock:inet_sock_set_state): run as root or grant CAP_BPF and CAP_PERFMON");
    };
    let mut tracker = pools::PoolTracker::new(services, std::time::Duration::MAX);
    tracker.seed(ebpf)?;
    loop {
        let (pools, _) = tracker.collect(ebpf, true);
        if !args.json {
            print!("\x1b[2J\x1b[H");
        }
        print_rows(&pools, args.json, table::print_pools)?;
        std::thread::sleep(args.interval);
    }
}

/// Observes for `--for`, ticking once a second like the agent, then prints every pool and
/// listener with its storm signals, storms first.
fn storms_command(args: &cli::StormsArgs) -> anyhow::Result<()> {
    let services = services::Services::with_overrides(&args.pool.services)?;
    let loaded = probes::Probes::load(&probes::ProbeOptions {
        tracefs: &args.probes.tracefs,
        max_sockets: args.probes.max_sockets,
        cgroup_root: cgroups::cgroup2_root().as_deref(),
        disabled: &args.probes.disabled_probes,
        short_lived: args.storm.short_lived(&Default::default()),
    });
    privs::drop_after_attach();
    if !loaded.is_up(probes::POOLS) {
        anyhow::bail!("connmon storms needs the pools probe (tracepoint sock:inet_sock_set_state): run as root or grant CAP_BPF and CAP_PERFMON");
    }
    let mut c = agent::Collector::new(
        pools::PoolTracker::new(services, std::time::Duration::MAX),
        storms::StormTracker::new(args.storm.config(&Default::default())),
    );
    c.attach(loaded);
    let deadline = std::time::Instant::now() + args.observe;
    let mut listeners = c.tick();
    while std::time::Instant::now() < deadline {
        std::thread::sleep(deadline.saturating_duration_since(std::time::Instant::now()).min(std::time::Duration::from_secs(1)));
        listeners = c.tick();
    }
    let rows = storms::report(&mut c.pools, &c.storms, &listeners);
    print_rows(&rows, args.json, table::print_storms)
}

/// Asks a running agent for its alerts.
fn alerts_command(args: &cli::AlertsArgs) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/alerts", args.agent.trim_end_matches('/'));
    let alerts: Vec<alerts::AlertView> = ureq::get(&url)
        .call()
        .and_then(|mut r| r.body_mut().read_json())
        .map_err(|e| anyhow::anyhow!("cannot read alerts from {url}: {e} (is `connmon run` serving there? see --agent)"))?;
    print_rows(&alerts, args.json, table::print_alerts)
}

/// One JSON object per line with `json`, else the aligned table `table` prints.
fn print_rows<T: serde::Serialize>(
    rows: &[T],
    json: bool,
    table: fn(&mut std::io::StdoutLock<'static>, &[T]) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        for r in rows {
            serde_json::to_writer(&mut out, r)?;
            writeln!(out)?;
        }
    } else {
        table(&mut out, rows)?;
    }
    out.flush()?;
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>().is_some_and(|j| j.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
    })
}

fn init_logging() {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    // kube-rs logs every failed request of a retried watch (at ERROR); cluster.rs logs each change
    // of a watch's state once instead. A RUST_LOG that names a kube crate still gets them.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("kube")) {
        builder.filter_module("kube_client", log::LevelFilter::Off).filter_module("kube_runtime", log::LevelFilter::Off);
    }
    builder.format_timestamp_millis().format_target(false).init();
}
