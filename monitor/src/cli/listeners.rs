//! `connmon listeners`: one scan of every listening socket (TCP and unix) in every network
//! namespace (or one), printed as a table or JSON lines. With `--for`, the probes are attached and
//! the listeners watched for that long first, which adds the queue-wait figures (they need a rate).
use std::time::{Duration, Instant};

use clap::Args;

use crate::{
    agent::Observer,
    attribution::cgroups,
    config::{
        flags::ProbeArgs,
        values::{parse_duration, parse_duration_or_zero},
    },
    kernel::{privs, probes},
    model::{listeners, pools, queue_wait::QueueTracker, services, storms},
    scan::{self, netns},
};

#[derive(Debug, Args)]
pub struct ListenersArgs {
    /// One JSON object per listener, one per line.
    #[arg(long)]
    pub json: bool,
    /// Only this network namespace: its /run/netns name or its inode.
    #[arg(long)]
    pub netns: Option<String>,
    /// Attach the probes and watch this long before printing (at least 2s), to show how long
    /// connections wait in each queue; 0s (the default) prints one scan without those figures.
    #[arg(long = "for", default_value = "0s", value_parser = parse_duration_or_zero)]
    pub observe: Duration,
    /// Clients' timeout, for the slow-drain flag (a full queue that takes longer to drain).
    #[arg(long = "client-timeout", default_value = "1s", value_parser = parse_duration)]
    pub client_timeout: Duration,
    #[command(flatten)]
    pub probes: ProbeArgs,
}

pub fn run(args: &ListenersArgs) -> anyhow::Result<()> {
    if let Some(filter) = &args.netns {
        if !netns::discover().iter().any(|ns| scan::matches_filter(ns, filter)) {
            anyhow::bail!("no network namespace matches {filter:?}: give a name from /run/netns or an inode");
        }
    }
    if args.observe.is_zero() {
        let snap = listeners::build(
            &scan::scan(args.netns.as_deref(), scan::Depth::Full),
            &mut cgroups::CgroupNames::default(),
        );
        return print(&snap.listeners, args.json);
    }
    if args.observe < Duration::from_secs(2) {
        anyhow::bail!(
            "--for {:?} is too short to measure a rate: give 2s or more, or 0s for a plain scan",
            args.observe
        );
    }
    let loaded = probes::Probes::load(&args.probes.options(Duration::from_secs(1)));
    privs::drop_after_attach();
    let mut c = Observer::new(
        pools::PoolTracker::new(services::Services::with_overrides(&[])?, Duration::MAX),
        storms::StormTracker::new(Default::default()),
    );
    c.queues = QueueTracker::new(args.client_timeout);
    c.attach(loaded);
    let deadline = Instant::now() + args.observe;
    let mut seen = c.tick();
    while Instant::now() < deadline {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(1)));
        seen = c.tick();
    }
    if let Some(filter) = &args.netns {
        seen.retain(|l| l.netns_name.as_deref() == Some(filter) || l.netns.to_string() == *filter);
    }
    print(&seen, args.json)
}

/// JSON Lines with each listener's recognisable `name`, or the table with that name as PROCESS.
fn print(rows: &[listeners::Listener], json: bool) -> anyhow::Result<()> {
    let mut namer = super::names::Namer::default();
    let mut name =
        |l: &listeners::Listener| l.comm.as_deref().map(|c| namer.name(c, l.cgroup.as_deref().unwrap_or(""), l.pid));
    if json {
        return super::print_json(rows.iter().map(|l| super::with_name(l, name(l))));
    }
    let named: Vec<listeners::Listener> =
        rows.iter().map(|l| listeners::Listener { comm: name(l), ..l.clone() }).collect();
    super::print_rows(&named, false, super::table::print_listeners)
}
