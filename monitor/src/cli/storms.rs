//! `connmon storms`: attach the probes, observe for `--for` while ticking once a second like the
//! agent, then print every pool and listener with its storm signals, storms first.
use std::time::{Duration, Instant};

use clap::Args;

use crate::{
    agent::Observer,
    config::{
        flags::{PoolArgs, ProbeArgs},
        storm::StormOverrides,
        values::parse_duration,
    },
    kernel::{privs, probes},
    model::{pools, services, storms},
};

#[derive(Debug, Args)]
pub struct StormsArgs {
    /// How long to observe before printing.
    #[arg(long = "for", default_value = "5s", value_parser = parse_duration)]
    pub observe: Duration,
    /// One JSON object per pool or listener, one per line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub pool: PoolArgs,
    #[command(flatten)]
    pub storm: StormOverrides,
    #[command(flatten)]
    pub probes: ProbeArgs,
}

pub fn run(args: &StormsArgs) -> anyhow::Result<()> {
    let services = services::Services::with_overrides(&args.pool.services)?;
    let storm = args.storm.resolve();
    let loaded = probes::Probes::load(&args.probes.options(storm.short_lived));
    privs::drop_after_attach();
    if !loaded.is_up(probes::POOLS) {
        anyhow::bail!("connmon storms needs the pools probe (tracepoint sock:inet_sock_set_state): run as root or grant CAP_BPF and CAP_PERFMON");
    }
    let mut c = Observer::new(pools::PoolTracker::new(services, Duration::MAX), storms::StormTracker::new(storm));
    c.attach(loaded);
    let deadline = Instant::now() + args.observe;
    let mut listeners = c.tick();
    while Instant::now() < deadline {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(1)));
        listeners = c.tick();
    }
    let mut rows = storms::report(&mut c.pools, &c.storms, &listeners);
    let mut namer = super::names::Namer::default();
    for r in &mut rows {
        let s = |k: &str| r.labels.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let (comm, cgroup) = (s("comm"), s("cgroup"));
        let pid = r.labels.get("pid").and_then(|v| v.as_u64()).map(|p| p as u32);
        let name = (!comm.is_empty()).then(|| namer.name(&comm, &cgroup, pid));
        if name.as_ref().is_some_and(|n| *n != comm) {
            r.what.push_str(&format!(" name={}", name.as_deref().unwrap_or_default()));
        }
        r.labels.insert("name".into(), name.into());
    }
    super::print_rows(&rows, args.json, super::table::print_storms)
}
