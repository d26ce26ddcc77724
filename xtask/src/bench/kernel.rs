//! `cargo xtask bench kernel`: what the eBPF programs cost the kernel per connection, from the
//! kernel's own accounting (`bpf_stats`: each program's run_time_ns and run_cnt), which unlike
//! throughput does not depend on how busy the machine is.
//!
//! Three probes, each started fresh for its round, in interleaved rounds (E C M, M C E, ...):
//! - E: an empty bpftrace program on `sock:inet_sock_set_state`, the floor for "a program on that
//!   tracepoint";
//! - C: the bpftrace one-liner counting that tracepoint by new state;
//! - M: connmon with every probe (`connmon run`, defaults).
//!
//! Under each probe, two paced loads of connload on one loopback port (their order alternating
//! too): RST-close churn (connect, close with SO_LINGER 0) and echo churn (connect, one byte each
//! way, the server closes first). The programs the probe loaded are the ones bpftool lists after
//! its start that it did not list before; their run_time_ns and run_cnt deltas over a load,
//! divided by the connections connload completed, are ns and runs per connection (both the client
//! and the server side, and every packet the connection sent through a cgroup_skb program).
//! Nothing else should trace or churn meanwhile: run it under the test lock.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use super::bpf_stats::{self, ProgStats, StatsOn};
use super::load::{run_connload, Load};
use super::probe::{start_agent, start_bpftrace, Probe};
use super::proc_stats::{cpu_count, kernel_release, load_average, other_tracers};
use super::scrape::{http_get, metric_sum};
use super::stats::{summary, thousands};
use super::{build_release, built_release, free_port, log_dir, preflight, Binaries};

#[derive(Args, Debug, Clone)]
pub struct KernelArgs {
    /// Rounds per probe (E empty bpftrace program, C counting one-liner, M connmon), interleaved
    /// E C M M C E ...; each round runs both loads.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Length of each load, in seconds.
    #[arg(long, default_value_t = 3.0, value_parser = super::pools::positive_secs)]
    secs: f64,
    /// Connections per second of both loads.
    #[arg(long, default_value_t = 5_000.0, value_parser = super::pools::positive_rate)]
    rate: f64,
    /// Another connmon binary (e.g. a build of an earlier commit) measured as a fourth probe, B,
    /// in the same rounds: before/after figures of a change from one run.
    #[arg(long, value_name = "PATH")]
    baseline: Option<PathBuf>,
    /// Measure the release binaries already built (`cargo build --release -p connmon -p xtask`)
    /// instead of building first: for runs that hold a lock other jobs wait on.
    #[arg(long = "no-build")]
    no_build: bool,
}

/// The empty program and the one-liner of the issue, verbatim.
const EMPTY_PROGRAM: &str = "tracepoint:sock:inet_sock_set_state {}";
const COUNT_PROGRAM: &str = "tracepoint:sock:inet_sock_set_state { @[args->newstate] = count(); }";

/// After a probe is ready: its start-up work (the agent's seeding scan) stays out of the rounds.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Variant {
    Empty,
    Count,
    Connmon,
    /// `--baseline`: another connmon binary.
    Baseline,
}

impl Variant {
    const ALL: [Variant; 4] = [Variant::Empty, Variant::Count, Variant::Connmon, Variant::Baseline];

    fn letter(self) -> &'static str {
        match self {
            Variant::Empty => "E",
            Variant::Count => "C",
            Variant::Connmon => "M",
            Variant::Baseline => "B",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Variant::Empty => "empty program on sock:inet_sock_set_state (bpftrace)",
            Variant::Count => "bpftrace one-liner counting it by new state",
            Variant::Connmon => "connmon, all probes",
            Variant::Baseline => "connmon --baseline build, all probes",
        }
    }

    /// The probes of this run, in order.
    fn used(args: &KernelArgs) -> Vec<Variant> {
        Variant::ALL.into_iter().filter(|v| *v != Variant::Baseline || args.baseline.is_some()).collect()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum LoadKind {
    Rst,
    Echo,
}

impl LoadKind {
    const ALL: [LoadKind; 2] = [LoadKind::Rst, LoadKind::Echo];

    fn name(self) -> &'static str {
        match self {
            LoadKind::Rst => "RST-close churn",
            LoadKind::Echo => "echo churn",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            LoadKind::Rst => "--rst",
            LoadKind::Echo => "--echo",
        }
    }
}

/// One load under one probe: connections and what each of the probe's programs ran.
struct Sample {
    variant: Variant,
    load: LoadKind,
    connections: u64,
    progs: BTreeMap<String, ProgStats>,
}

impl Sample {
    fn total_ns(&self) -> f64 {
        self.progs.values().map(|p| p.run_time_ns).sum::<u64>() as f64 / self.connections as f64
    }
}

struct Ctx {
    bins: Binaries,
    logs: PathBuf,
    load_port: u16,
    args: KernelArgs,
}

pub fn run(args: &KernelArgs) -> Result<()> {
    preflight()?;
    bpf_stats::preflight()?;
    let others = other_tracers(&["connmon", "bpftrace"]);
    let bins = if args.no_build { built_release()? } else { build_release()? };
    // One server port for every run, as in `bench pools` (TIME_WAIT population stays put).
    if let Some(b) = &args.baseline {
        if !b.is_file() {
            bail!("--baseline {}: no such file; give the path of a connmon binary", b.display());
        }
    }
    let ctx = Ctx { bins, logs: log_dir("kernel")?, load_port: free_port()?, args: args.clone() };
    let used = Variant::used(args);
    let stats = StatsOn::enable()?;
    let load_at_start = load_average();
    let per_round = 2.0 * (args.secs + 0.5) + SETTLE.as_secs_f64() + 2.0;
    println!(
        "bench kernel: {} rounds × ({}) × (RST-close, echo) at {} conn/s for {} s each; about {:.0} s; \
         statistics on through {}; logs in {}",
        args.rounds,
        used.iter().map(|v| v.letter()).collect::<Vec<_>>().join(" "),
        thousands(args.rate),
        args.secs,
        2.0 + f64::from(args.rounds) * used.len() as f64 * per_round,
        stats.how(),
        ctx.logs.display()
    );
    if !others.is_empty() {
        println!(
            "warning: other tracers are running: {}; their traffic and programs may blur the figures",
            others.join(", ")
        );
    }
    for load in LoadKind::ALL {
        let warm = connload(&ctx, load, 1.0)?;
        println!("warm-up {:<16} {} connections (not counted)", load.name(), thousands(warm.connections as f64));
    }

    let mut samples = Vec::new();
    for r in 0..args.rounds {
        let mut variants = used.clone();
        let mut loads = LoadKind::ALL;
        if r % 2 == 1 {
            variants.reverse();
            loads.reverse();
        }
        for variant in variants {
            measure(&ctx, r, variant, loads, &mut samples)?;
        }
    }
    drop(stats);
    print!("{}", report(&ctx.args, &samples, &load_at_start));
    Ok(())
}

fn connload(ctx: &Ctx, load: LoadKind, secs: f64) -> Result<Load> {
    let args: Vec<String> = [
        load.flag().to_owned(),
        "--rate".into(),
        ctx.args.rate.to_string(),
        "--secs".into(),
        secs.to_string(),
        "--port".into(),
        ctx.load_port.to_string(),
    ]
    .into();
    run_connload(&ctx.bins.connload, &args, &ctx.logs.join("connload.jsonl"))
}

/// One probe started, both loads run under it, the probe stopped.
fn measure(ctx: &Ctx, round: u32, variant: Variant, loads: [LoadKind; 2], out: &mut Vec<Sample>) -> Result<()> {
    let label = format!("round{:02}-{}", round + 1, variant.letter());
    let log = ctx.logs.join(format!("{label}.log"));
    let before = bpf_stats::snapshot()?;
    let web = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut probe: Probe = match variant {
        Variant::Empty => start_bpftrace(EMPTY_PROGRAM, log)?,
        Variant::Count => start_bpftrace(COUNT_PROGRAM, log)?,
        Variant::Connmon => start_agent(&ctx.bins.connmon, web, log, &[])?,
        Variant::Baseline => start_agent(ctx.args.baseline.as_deref().unwrap_or(&ctx.bins.connmon), web, log, &[])?,
    };
    thread::sleep(SETTLE);
    let ids = bpf_stats::new_ids(&before, &bpf_stats::snapshot()?);
    if ids.is_empty() {
        bail!("{} is running but bpftool lists no program it loaded", variant.name());
    }
    let mut connections = 0;
    for load in loads {
        let s0 = bpf_stats::snapshot()?;
        let l = connload(ctx, load, ctx.args.secs)?;
        let s1 = bpf_stats::snapshot()?;
        probe.check_alive()?;
        if l.connections == 0 {
            bail!(
                "connload completed no connection ({}); see {}",
                l.first_error.unwrap_or_default(),
                ctx.logs.display()
            );
        }
        connections += l.connections;
        let sample = Sample { variant, load, connections: l.connections, progs: bpf_stats::delta(&ids, &s0, &s1)? };
        println!(
            "round {}  {}  {:<16} {:>7} conn  {:>6} ns/conn  {:>5.1} runs/conn{}",
            round + 1,
            variant.letter(),
            load.name(),
            thousands(l.connections as f64),
            thousands(sample.total_ns()),
            sample.progs.values().map(|p| p.run_cnt).sum::<u64>() as f64 / l.connections as f64,
            if l.errors > 0 { format!("  ({} errors)", l.errors) } else { String::new() },
        );
        out.push(sample);
    }
    if matches!(variant, Variant::Connmon | Variant::Baseline) {
        // The agent's own count of the load's connections: a cheaper program must still count all.
        if let Ok((200, body)) = http_get(web, "/metrics", Duration::from_secs(5)) {
            let opens = metric_sum(&body, "connmon_pool_opens_total", "comm=\"connload\"").unwrap_or(0.0);
            let lost = metric_sum(&body, "connmon_events_lost_total", "").unwrap_or(0.0);
            println!(
                "          connmon counted {} opens of {} connections, {} events lost",
                thousands(opens),
                thousands(connections as f64),
                thousands(lost)
            );
        }
    }
    let stopped = probe.stop()?;
    if !stopped.status.success() {
        eprintln!(
            "warning: {} exited with {} when stopped; see {}",
            variant.name(),
            stopped.status,
            ctx.logs.display()
        );
    }
    Ok(())
}

/// "median [min–max]" of `v`.
fn spread(v: &[f64]) -> String {
    match summary(v) {
        Some((m, lo, hi)) => format!("{} [{}–{}]", thousands(m), thousands(lo), thousands(hi)),
        None => "-".into(),
    }
}

fn median(v: &[f64]) -> f64 {
    summary(v).map_or(f64::NAN, |(m, _, _)| m)
}

/// Per-connection totals of `variant` under `load`, one per round.
fn totals(samples: &[Sample], variant: Variant, load: LoadKind) -> Vec<f64> {
    samples.iter().filter(|s| s.variant == variant && s.load == load).map(Sample::total_ns).collect()
}

fn report(args: &KernelArgs, samples: &[Sample], load_at_start: &str) -> String {
    let used = Variant::used(args);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\nkernel ns per connection (bpf_stats: run_time_ns over connections, client and server side), \
         median [min–max] of {} rounds, {} conn/s × {} s per load; kernel {}, {} CPUs, load average {} at start",
        args.rounds,
        thousands(args.rate),
        args.secs,
        kernel_release(),
        cpu_count(),
        load_at_start
    );
    let _ = writeln!(o, "{:<56} {:>24} {:>24}", "", LoadKind::Rst.name(), LoadKind::Echo.name());
    for &v in &used {
        let _ = writeln!(
            o,
            "{:<56} {:>24} {:>24}",
            format!("{} {}", v.letter(), v.name()),
            spread(&totals(samples, v, LoadKind::Rst)),
            spread(&totals(samples, v, LoadKind::Echo))
        );
    }
    let ratio = |of: Variant, to: Variant, load| {
        format!("{:.2}×", median(&totals(samples, of, load)) / median(&totals(samples, to, load)))
    };
    let mut ratios = vec![(Variant::Count, "M ÷ C (target ≤ 1)"), (Variant::Empty, "M ÷ E (aim ≤ 2)")];
    if args.baseline.is_some() {
        ratios.push((Variant::Baseline, "M ÷ B (this build against --baseline)"));
    }
    for (to, what) in ratios {
        let _ = writeln!(
            o,
            "{:<56} {:>24} {:>24}",
            what,
            ratio(Variant::Connmon, to, LoadKind::Rst),
            ratio(Variant::Connmon, to, LoadKind::Echo)
        );
    }
    for &v in &used {
        let _ = writeln!(o, "\nper program, {} (median ns/conn, runs/conn, ns/run):", v.name());
        let names: Vec<&String> = {
            let mut n: Vec<&String> = samples.iter().filter(|s| s.variant == v).flat_map(|s| s.progs.keys()).collect();
            n.sort();
            n.dedup();
            n
        };
        for name in names {
            let _ = write!(o, "  {name:<28}");
            for load in LoadKind::ALL {
                let rows: Vec<(f64, f64, f64)> = samples
                    .iter()
                    .filter(|s| s.variant == v && s.load == load)
                    .filter_map(|s| {
                        let p = s.progs.get(name)?;
                        let c = s.connections as f64;
                        let per_run = if p.run_cnt > 0 { p.run_time_ns as f64 / p.run_cnt as f64 } else { 0.0 };
                        Some((p.run_time_ns as f64 / c, p.run_cnt as f64 / c, per_run))
                    })
                    .collect();
                let col = |f: fn(&(f64, f64, f64)) -> f64| median(&rows.iter().map(f).collect::<Vec<_>>());
                let _ = write!(
                    o,
                    "  {:<14} {:>6} ns/conn {:>5.1} runs {:>5} ns/run",
                    load.name(),
                    thousands(col(|r| r.0)),
                    col(|r| r.1),
                    thousands(col(|r| r.2))
                );
            }
            let _ = writeln!(o);
        }
    }
    let _ = writeln!(o, "\nmarkdown:\n");
    let _ = writeln!(
        o,
        "| Kernel ns per connection (bpf_stats), median [min–max] of {} rounds | RST-close churn, {}/s | echo churn, {}/s |",
        args.rounds,
        thousands(args.rate),
        thousands(args.rate)
    );
    let _ = writeln!(o, "|---|---|---|");
    for &v in &used {
        let _ = writeln!(
            o,
            "| {} | {} | {} |",
            v.name(),
            spread(&totals(samples, v, LoadKind::Rst)),
            spread(&totals(samples, v, LoadKind::Echo))
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(variant: Variant, load: LoadKind, conns: u64, ns: &[(&str, u64, u64)]) -> Sample {
        let progs = ns
            .iter()
            .map(|&(n, t, c)| (n.to_owned(), ProgStats { name: n.to_owned(), run_time_ns: t, run_cnt: c }))
            .collect();
        Sample { variant, load, connections: conns, progs }
    }

    #[test]
    fn report_has_medians_ratios_and_programs() {
        let mut s = Vec::new();
        for k in [1u64, 2, 3] {
            for load in LoadKind::ALL {
                s.push(sample(Variant::Empty, load, 1000, &[("e", 400_000 * k, 4000)]));
                s.push(sample(Variant::Count, load, 1000, &[("c", 1_600_000 * k, 4000)]));
                s.push(sample(Variant::Connmon, load, 1000, &[("a", 800_000 * k, 4000), ("b", 0, 0)]));
            }
        }
        let r = report(&super::super::defaults::<KernelArgs>(), &s, "0.5");
        assert!(r.contains("800 [400–1,200]"), "{r}");
        assert!(r.contains("3,200 [1,600–4,800]"), "{r}");
        assert!(r.contains("0.50×"), "{r}");
        assert!(r.contains("2.00×"), "{r}");
        assert!(r.contains("| connmon, all probes | 1,600 [800–2,400] | 1,600 [800–2,400] |"), "{r}");
        assert!(r.contains("  a "), "{r}");
    }
}
