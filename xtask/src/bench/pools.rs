//! `cargo xtask bench pools`: what tracking connection pools costs under connection churn.
//!
//! Phase 1, throughput: interleaved rounds (A B C D D C B A ...) of saturated loopback churn
//! (connload) with
//! - A: no probe;
//! - B: the release agent (`connmon run`), /metrics scraped every second as Prometheus would, so
//!   the userspace side is part of the cost;
//! - C: the bpftrace one-liner counting `sock:inet_sock_set_state` transitions, a floor for "one
//!   eBPF program on that tracepoint";
//! - D: as B with `--probes.disable protocol`, to show apart what the protocol recogniser's
//!   per-packet cgroup_skb program costs (informative; the targets are judged on B).
//!
//! Each probe is started fresh for its round and given the same settle time as A; it is ready
//! once /readyz answers 200 (B) or bpftrace prints "Attaching" (C). The agent's and bpftrace's
//! CPU are utime+stime deltas of the round from /proc/<pid>/stat, their peak RSS is VmHWM. The
//! kernel-side cost of the eBPF programs runs in the context of the connecting/accepting threads
//! (and softirqs), not in the probe's process: it shows as lost throughput, not as probe CPU.
//!
//! Phase 2, steady load: connload paced at a fixed rate (10,000 connections/s for 10 s) with a
//! fresh agent attached and scraped every second: the agent's CPU as a share of one core.
//!
//! Targets are reported, never asserted: the command fails only when something does not run.
//! The per-round lines and the summary are formatted in [`report`].

mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;

use self::report::{describe, print_summary};
use super::load::{run_connload, Load};
use super::probe::{start_agent, start_bpftrace, Probe};
use super::proc_stats::{clk_tck, cpu_ticks, load_average, other_tracers, status_kib};
use super::scrape::{http_get, metric_sum, ScrapeStats, Scraper};
use super::stats::thousands;
use super::{build_release, free_port, log_dir, preflight, Binaries};

#[derive(Args, Debug)]
pub struct PoolsArgs {
    /// Rounds per variant (A no probe, B connmon, C bpftrace, D connmon without the protocol
    /// probe), interleaved A B C D D C B A ...
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Length of each saturated round, in seconds.
    #[arg(long, default_value_t = 5.0, value_parser = positive_secs)]
    secs: f64,
    /// Connection rate of the fixed-rate phase (connections per second).
    #[arg(long, default_value_t = 10_000.0, value_parser = positive_rate)]
    rate: f64,
    /// Length of the fixed-rate phase in seconds; 0 skips it.
    #[arg(long = "rate-secs", default_value_t = 10.0, value_parser = non_negative_secs)]
    rate_secs: f64,
}

pub(super) fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() && v <= 3600.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number in (0, 3600]")),
    }
}

pub(super) fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

fn non_negative_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(0.0) => Ok(0.0),
        _ => positive_secs(s),
    }
}

/// The bpftrace one-liner of variant C (the issue's, verbatim).
const BPFTRACE_PROGRAM: &str = "tracepoint:sock:inet_sock_set_state { @[args->newstate] = count(); }";

/// Pause after a probe is ready (and before A's rounds alike): lets start-up work (the agent's
/// seeding scan, bpftrace's attach) finish outside the measured window.
const SETTLE: Duration = Duration::from_secs(1);

/// Unmeasured churn before the first round: warms caches and CPU clocks and fills the server
/// side's TIME_WAIT table (see connload) so every measured round sees the same kernel state.
const WARM_UP_SECS: f64 = 3.0;

/// TCP_ESTABLISHED in the tracepoint's `newstate`.
const TCP_ESTABLISHED: u32 = 1;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    A,
    B,
    C,
    /// connmon without the protocol recogniser (`--probes.disable protocol`): its cgroup_skb
    /// program runs on every egress packet, so this shows what that one probe costs.
    D,
}

impl Variant {
    const ALL: [Variant; 4] = [Variant::A, Variant::B, Variant::C, Variant::D];

    fn letter(self) -> &'static str {
        match self {
            Variant::A => "A",
            Variant::B => "B",
            Variant::C => "C",
            Variant::D => "D",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Variant::A => "no probe",
            Variant::B => "connmon, scraped 1/s",
            Variant::C => "bpftrace one-liner",
            Variant::D => "connmon, no protocol",
        }
    }

    fn process(self) -> &'static str {
        match self {
            Variant::A => "-",
            Variant::B => "connmon",
            Variant::C => "bpftrace",
            Variant::D => "connmon",
        }
    }
}

/// A B C, C B A, A B C, ...: each variant sits early and late equally often, so a drift of the
/// machine over the run (heat, other tenants) does not favour one of them.
fn schedule(rounds: u32) -> Vec<Variant> {
    (0..rounds)
        .flat_map(|r| {
            let mut block = Variant::ALL;
            if r % 2 == 1 {
                block.reverse();
            }
            block
        })
        .collect()
}

/// The probe's side of one measured run.
#[derive(Clone, Copy, Default)]
struct ProbeFigures {
    cpu_s: f64,
    wall_s: f64,
    hwm_kib: Option<u64>,
    scrapes: Option<ScrapeStats>,
    /// Connections the probe itself counted (B: the agent's connmon_pool_opens_total for
    /// comm="connload"; C: ESTABLISHED transitions / 2, client and server side).
    counted: Option<f64>,
    /// B: connmon_events_lost_total at the end.
    lost: Option<f64>,
}

struct Run {
    variant: Variant,
    load: Load,
    probe: Option<ProbeFigures>,
}

struct Ctx {
    bins: Binaries,
    logs: PathBuf,
    tck: f64,
    /// connload's listening port, the same for every run (see `run`).
    load_port: u16,
}

pub fn run(args: &PoolsArgs) -> Result<()> {
    preflight()?;
    let others = other_tracers(&["connmon", "bpftrace"]);
    let bins = build_release()?;
    let ctx = Ctx {
        bins,
        logs: log_dir("pools")?,
        tck: clk_tck(),
        // One server port for every connload run: the server-side TIME_WAIT entries are then
        // keyed by (this port, client port) and recycled by the next SYN on the same pair, so
        // their number stays at about the number of ephemeral ports in use, reached during the
        // warm-up. A new port per run would add up to ~28k more per run (until
        // tcp_max_tw_buckets), and sock_diag dumps (the agent's scans) walk them all: rounds
        // late in the run would find a heavier kernel table than early ones.
        load_port: free_port()?,
    };
    let order = schedule(args.rounds);
    let load_at_start = load_average();
    let estimate = WARM_UP_SECS
        + order.len() as f64 * (args.secs + SETTLE.as_secs_f64() + 0.5)
        + if args.rate_secs > 0.0 { args.rate_secs + SETTLE.as_secs_f64() + 0.5 } else { 0.0 };
    println!(
        "bench pools: {} rounds of {} s ({}), then {} s at {} conn/s; about {:.0} s; logs in {}",
        order.len(),
        args.secs,
        order.iter().map(|v| v.letter()).collect::<Vec<_>>().join(" "),
        args.rate_secs,
        thousands(args.rate),
        estimate,
        ctx.logs.display()
    );
    if !others.is_empty() {
        println!(
            "warning: other tracers are running: {}; their probes cost every variant alike, A included",
            others.join(", ")
        );
    }

    let warm = run_connload(
        &ctx.bins.connload,
        &load_args(&ctx, &["--secs", &WARM_UP_SECS.to_string()]),
        &ctx.logs.join("connload.jsonl"),
    )?;
    println!("warm-up: {} conn/s for {WARM_UP_SECS} s (not counted)", thousands(warm.rate));

    let saturate = load_args(&ctx, &["--secs", &args.secs.to_string()]);
    let mut runs = Vec::new();
    for (i, &variant) in order.iter().enumerate() {
        let label = format!("round{:02}-{}", i + 1, variant.letter());
        let run = measure(&ctx, variant, &label, &saturate)?;
        println!("round {:>2}/{}  {}  {:<22} {}", i + 1, order.len(), variant.letter(), variant.name(), describe(&run));
        runs.push(run);
    }

    let steady = if args.rate_secs > 0.0 {
        let paced = load_args(&ctx, &["--secs", &args.rate_secs.to_string(), "--rate", &args.rate.to_string()]);
        let run = measure(&ctx, Variant::B, "fixed-rate-B", &paced)?;
        println!("fixed rate  B  {:<22} {}", format!("{} conn/s asked", thousands(args.rate)), describe(&run));
        Some(run)
    } else {
        None
    };

    print_summary(args, &ctx, &order, &runs, steady.as_ref(), &load_at_start);
    Ok(())
}

/// connload's arguments: `extra` and the bench's fixed port.
fn load_args(ctx: &Ctx, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.push("--port".into());
    args.push(ctx.load_port.to_string());
    args
}

/// One run of connload with `variant`'s probe started before and stopped after it.
fn measure(ctx: &Ctx, variant: Variant, label: &str, load_args: &[String]) -> Result<Run> {
    let web = match variant {
        Variant::B | Variant::D => Some(SocketAddr::from(([127, 0, 0, 1], free_port()?))),
        _ => None,
    };
    let log = |suffix: &str| ctx.logs.join(format!("{label}-{suffix}.log"));
    let mut probe: Option<Probe> = match variant {
        Variant::A => None,
        Variant::B => Some(start_agent(&ctx.bins.connmon, web.expect("B has an address"), log("connmon"), &[])?),
        Variant::D => Some(start_agent(
            &ctx.bins.connmon,
            web.expect("D has an address"),
            log("connmon"),
            &["--probes.disable", "protocol"],
        )?),
        Variant::C => Some(start_bpftrace(BPFTRACE_PROGRAM, log("bpftrace"))?),
    };
    thread::sleep(SETTLE);
    let pid = probe.as_ref().map(Probe::pid);

    let cpu0 = pid.and_then(cpu_ticks);
    let t0 = Instant::now();
    let scraper = web.map(Scraper::start);
    let load = run_connload(&ctx.bins.connload, load_args, &ctx.logs.join("connload.jsonl"))?;
    let scrapes = scraper.map(Scraper::finish);
    let cpu1 = pid.and_then(cpu_ticks);
    let wall_s = t0.elapsed().as_secs_f64();

    let Some(mut probe) = probe.take() else {
        return Ok(Run { variant, load, probe: None });
    };
    // A probe that died during the round invalidates it: a real failure.
    probe.check_alive()?;
    let hwm_kib = status_kib(probe.pid(), "VmHWM");
    let mut figures = ProbeFigures {
        cpu_s: match (cpu0, cpu1) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / ctx.tck,
            _ => f64::NAN,
        },
        wall_s,
        hwm_kib,
        scrapes,
        ..ProbeFigures::default()
    };
    if let Some(web) = web {
        if let Ok((200, body)) = http_get(web, "/metrics", Duration::from_secs(5)) {
            figures.counted = metric_sum(&body, "connmon_pool_opens_total", "comm=\"connload\"");
            figures.lost = metric_sum(&body, "connmon_events_lost_total", "");
        }
    }
    let name = probe.name;
    let stopped = probe.stop()?;
    if variant == Variant::C {
        figures.counted = bpftrace_count(&stopped.stdout, TCP_ESTABLISHED).map(|n| n as f64 / 2.0);
        let _ = std::fs::write(log("bpftrace-stdout"), stopped.stdout.join("\n") + "\n");
    }
    if !stopped.status.success() {
        eprintln!("warning: {name} exited with {} when stopped (SIGINT); see {}", stopped.status, ctx.logs.display());
    }
    Ok(Run { variant, load, probe: Some(figures) })
}

/// `@[KEY]: N` from bpftrace's map printout.
fn bpftrace_count(lines: &[String], key: u32) -> Option<u64> {
    let prefix = format!("@[{key}]:");
    lines.iter().find_map(|l| l.trim().strip_prefix(&prefix)?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_order() {
        let letters = |n| schedule(n).iter().map(|v| v.letter()).collect::<Vec<_>>().join(" ");
        assert_eq!(letters(3), "A B C D D C B A A B C D");
        assert_eq!(letters(1), "A B C D");
        assert_eq!(schedule(4).len(), 16);
    }

    #[test]
    fn bpftrace_map_printout() {
        let out: Vec<String> =
            ["Attaching 1 probe...", "", "", "@[9]: 3", "@[1]: 6", "@[10]: 2"].iter().map(|s| s.to_string()).collect();
        assert_eq!(bpftrace_count(&out, 1), Some(6));
        assert_eq!(bpftrace_count(&out, 10), Some(2));
        assert_eq!(bpftrace_count(&out, 2), None);
    }

    #[test]
    fn flag_validation() {
        assert!(positive_secs("5").is_ok());
        assert!(positive_secs("0").is_err());
        assert!(positive_secs("nan").is_err());
        assert_eq!(non_negative_secs("0"), Ok(0.0));
        assert!(non_negative_secs("-1").is_err());
        assert_eq!(positive_rate("10000"), Ok(10000.0));
        assert!(positive_rate("0").is_err());
    }
}
