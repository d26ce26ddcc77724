//! `connmon pools`: connection pools from one scan, or live from the kernel probes with `--watch`.
use std::time::Duration;

use clap::Args;

use crate::{
    attribution::cgroups,
    config::{
        flags::{PoolArgs, ProbeArgs},
        values::parse_duration,
    },
    kernel::{privs, probes},
    model::{pools, services},
    scan,
};

#[derive(Debug, Args)]
pub struct PoolsArgs {
    /// One JSON object per pool, one per line.
    #[arg(long)]
    pub json: bool,
    /// Attach the kernel probes and refresh every --interval, showing opens, closes and failures
    /// since the command started (needs root or CAP_BPF and CAP_PERFMON).
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

pub fn run(args: &PoolsArgs) -> anyhow::Result<()> {
    let services = services::Services::with_overrides(&args.pool.services)?;
    if !args.watch {
        let mut cgroups = cgroups::CgroupNames::default();
        let pools = pools::from_scan(&scan::scan(None, scan::Depth::Full), &services, &mut cgroups);
        return super::print_rows(&pools, args.json, super::table::print_pools);
    }
    let mut loaded = probes::Probes::load(&args.probes.options(Duration::from_secs(1)));
    privs::drop_after_attach();
    let up = loaded.is_up(probes::POOLS);
    let Some(ebpf) = loaded.ebpf_mut().filter(|_| up) else {
        anyhow::bail!("--watch needs the pools probe (tracepoint sock:inet_sock_set_state): run as root or grant CAP_BPF and CAP_PERFMON");
    };
    let mut tracker = pools::PoolTracker::new(services, Duration::MAX);
    tracker.seed(ebpf)?;
    loop {
        let (pools, _) = tracker.collect(ebpf, true);
        if !args.json {
            print!("\x1b[2J\x1b[H");
        }
        super::print_rows(&pools, args.json, super::table::print_pools)?;
        std::thread::sleep(args.interval);
    }
}
