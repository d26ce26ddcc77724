//! `connmon pools`: connection pools from one scan, or live from the kernel probes with `--watch`.
//! The scan-or-watch loop is shared with `connmon destinations`, which sums the same pools.
use std::time::Duration;

use clap::Args;

use crate::{
    attribution::cgroups,
    config::{
        flags::{PoolArgs, ProbeArgs},
        values::parse_duration,
    },
    kernel::{privs, probes},
    model::{
        pools::{self, Pool},
        services,
    },
    scan,
};

/// How a pool-based command shows its rows: once from a scan, or live from the kernel probes.
#[derive(Debug, Args)]
pub struct PoolsArgs {
    /// One JSON object per row, one per line.
    #[arg(long)]
    pub json: bool,
    /// Attach the kernel probes and refresh every --interval, with opens, closes, failures and
    /// rejections counted since the command started (needs root or CAP_BPF and CAP_PERFMON).
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
    let mut namer = super::names::Namer::default();
    show(args, |pools, _live| {
        if args.json {
            return super::print_json(
                pools
                    .iter()
                    .map(|p| super::with_name(p, (!p.comm.is_empty()).then(|| namer.name(&p.comm, &p.cgroup, None)))),
            );
        }
        let named: Vec<Pool> =
            pools.iter().map(|p| Pool { comm: namer.name(&p.comm, &p.cgroup, None), ..p.clone() }).collect();
        super::print_rows(&named, false, super::table::print_pools)
    })
}

/// Hands `rows` the pools of one scan (`live` false), or with `--watch` the pools the probes
/// count, every `--interval` on a cleared screen (`live` true) until interrupted.
pub(super) fn show(args: &PoolsArgs, mut rows: impl FnMut(&[Pool], bool) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let services = services::Services::with_overrides(&args.pool.services)?;
    if !args.watch {
        let mut cgroups = cgroups::CgroupNames::default();
        return rows(&pools::from_scan(&scan::scan(None, scan::Depth::Full), &services, &mut cgroups), false);
    }
    let mut loaded = probes::Probes::load(&args.probes.options(Duration::from_secs(1)));
    privs::drop_after_attach();
    let up = loaded.is_up(probes::POOLS);
    let Some(ebpf) = loaded.ebpf_mut().filter(|_| up) else {
        anyhow::bail!(
            "--watch needs the pools probe (tracepoint sock:inet_sock_set_state): run as root or grant CAP_BPF and CAP_PERFMON"
        );
    };
    let mut tracker = pools::PoolTracker::new(services, Duration::MAX);
    tracker.seed(ebpf)?;
    loop {
        let (pools, _) = tracker.collect(ebpf, true);
        if !args.json {
            print!("\x1b[2J\x1b[H");
        }
        rows(&pools, true)?;
        std::thread::sleep(args.interval);
    }
}
