//! `connmon destinations`: this host's client pools summed per destination, from one scan (open
//! connections and the workloads holding them), or live from the kernel probes with `--watch`
//! (connects in flight, the server's rejections, and the ceiling learned when they began).
use std::time::{Duration, Instant};

use clap::Args;

use crate::{
    attribution::cgroups,
    config::{
        flags::{PoolArgs, ProbeArgs},
        values::parse_duration,
    },
    kernel::{privs, probes},
    model::{destinations::Tracker, pools, services},
    scan,
};

#[derive(Debug, Args)]
pub struct DestinationsArgs {
    /// One JSON object per destination, one per line.
    #[arg(long)]
    pub json: bool,
    /// Attach the kernel probes and refresh every --interval, with rejections counted since the
    /// command started (needs root or CAP_BPF and CAP_PERFMON).
    #[arg(long)]
    pub watch: bool,
    /// Refresh period of --watch.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub interval: Duration,
    #[command(flatten)]
    pub pool: PoolArgs,
    #[command(flatten)]
    pub probes: ProbeArgs,
}

pub fn run(args: &DestinationsArgs) -> anyhow::Result<()> {
    let services = services::Services::with_overrides(&args.pool.services)?;
    let mut tracker = Tracker::new(Default::default(), Default::default(), Default::default());
    let started = Instant::now();
    if !args.watch {
        let mut cgroups = cgroups::CgroupNames::default();
        let pools = pools::from_scan(&scan::scan(None, scan::Depth::Full), &services, &mut cgroups);
        let dests = tracker.update(0.0, &pools, false, true);
        return super::print_rows(&dests, args.json, super::table::print_destinations);
    }
    let mut loaded = probes::Probes::load(&args.probes.options(Duration::from_secs(1)));
    privs::drop_after_attach();
    let up = loaded.is_up(probes::POOLS);
    let Some(ebpf) = loaded.ebpf_mut().filter(|_| up) else {
        anyhow::bail!("--watch needs the pools probe (tracepoint sock:inet_sock_set_state): run as root or grant CAP_BPF and CAP_PERFMON");
    };
    let mut pools_tracker = pools::PoolTracker::new(services, Duration::MAX);
    pools_tracker.seed(ebpf)?;
    loop {
        let (pools, _) = pools_tracker.collect(ebpf, true);
        let dests = tracker.update(started.elapsed().as_secs_f64(), &pools, true, true);
        if !args.json {
            print!("\x1b[2J\x1b[H");
        }
        super::print_rows(&dests, args.json, super::table::print_destinations)?;
        std::thread::sleep(args.interval);
    }
}
