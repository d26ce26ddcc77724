//! The report of `cargo xtask bench pools`: the line printed after each round (the load's figures,
//! then the probe's CPU, peak RSS, scrapes and how much of the load it counted), and the summary
//! at the end: per variant the median, min and max throughput, its cost against no probe, probe
//! CPU, peak RSS and counted share; the fixed-rate line; the targets, reported as met or missed
//! and never asserted; a note when A's own spread is noise; and the method lines.

use super::super::proc_stats::{cpu_count, kernel_release, load_average};
use super::super::stats::{mib, summary, thousands};
use super::{Ctx, PoolsArgs, ProbeFigures, Run, Variant, SETTLE};

/// The per-run line: load figures, then the probe's.
pub(super) fn describe(run: &Run) -> String {
    let l = &run.load;
    let mut s = format!("{:>8} conn/s ({} in {:.2} s", thousands(l.rate), thousands(l.connections as f64), l.elapsed_s);
    if l.late_max_ms > 1.0 {
        s += &format!(", up to {:.1} ms late", l.late_max_ms);
    }
    if l.errors > 0 {
        s += &format!(", {} errors: {}", thousands(l.errors as f64), l.first_error.as_deref().unwrap_or("?"));
    }
    s.push(')');
    let Some(p) = &run.probe else { return s };
    s += &format!("; {} {:.2} s CPU ({:.1}% of a core)", run.variant.process(), p.cpu_s, 100.0 * p.cpu_s / p.wall_s);
    if let Some(kib) = p.hwm_kib {
        s += &format!(", peak RSS {:.1} MiB", mib(kib));
    }
    if let Some(sc) = p.scrapes {
        s += &format!(", {} scrapes", sc.ok);
        if sc.failed > 0 {
            s += &format!(" ({} failed)", sc.failed);
        }
        s += &format!(" up to {:.0} ms", sc.max_ms);
    }
    match p.counted {
        Some(n) if l.connections > 0 => s += &format!(", counted {:.1}%", 100.0 * n / l.connections as f64),
        Some(_) => {}
        None => s += ", counted: n/a",
    }
    if let Some(lost) = p.lost.filter(|&n| n > 0.0) {
        s += &format!(", {} events lost", thousands(lost));
    }
    s
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "missed"
    }
}

pub(super) fn print_summary(
    args: &PoolsArgs,
    ctx: &Ctx,
    order: &[Variant],
    runs: &[Run],
    steady: Option<&Run>,
    load_at_start: &str,
) {
    struct Row {
        variant: Variant,
        median: f64,
        min: f64,
        max: f64,
        cpu_s: Option<f64>,
        cpu_pct: Option<f64>,
        hwm_kib: Option<u64>,
        counted_pct: Option<f64>,
    }
    let rows: Vec<Row> = Variant::ALL
        .iter()
        .filter_map(|&variant| {
            let mine: Vec<&Run> = runs.iter().filter(|r| r.variant == variant).collect();
            let rates: Vec<f64> = mine.iter().map(|r| r.load.rate).collect();
            let (median, min, max) = summary(&rates)?;
            let probes: Vec<&ProbeFigures> = mine.iter().filter_map(|r| r.probe.as_ref()).collect();
            let cpu: Vec<f64> = probes.iter().map(|p| p.cpu_s).collect();
            let pct: Vec<f64> = probes.iter().map(|p| 100.0 * p.cpu_s / p.wall_s).collect();
            let counted: Vec<f64> = mine
                .iter()
                .filter_map(|r| {
                    let n = r.probe.as_ref()?.counted?;
                    (r.load.connections > 0).then(|| 100.0 * n / r.load.connections as f64)
                })
                .collect();
            Some(Row {
                variant,
                median,
                min,
                max,
                cpu_s: summary(&cpu).map(|s| s.0),
                cpu_pct: summary(&pct).map(|s| s.0),
                hwm_kib: probes.iter().filter_map(|p| p.hwm_kib).max(),
                counted_pct: summary(&counted).map(|s| s.1),
            })
        })
        .collect();
    let median_a = rows.iter().find(|r| r.variant == Variant::A).map(|r| r.median);
    let cost = |r: &Row| median_a.filter(|&a| a > 0.0).map(|a| 1.0 - r.median / a);

    println!();
    println!("== bench pools: results ==");
    println!(
        "{:<25} {:>11} {:>9} {:>9} {:>9}  {:>20} {:>10} {:>9}",
        "variant (rounds)", "median c/s", "min", "max", "cost vs A", "probe CPU per round", "peak RSS", "counted*"
    );
    for r in &rows {
        let n = runs.iter().filter(|x| x.variant == r.variant).count();
        let cost_s = match (r.variant, cost(r)) {
            (Variant::A, _) | (_, None) => "-".to_owned(),
            (_, Some(c)) => format!("{:.1}%", 100.0 * c),
        };
        let cpu_s = match (r.cpu_s, r.cpu_pct) {
            (Some(s), Some(p)) => format!("{s:.2} s ({p:.1}% core)"),
            _ => "-".to_owned(),
        };
        let rss = r.hwm_kib.map_or("-".to_owned(), |k| format!("{:.1} MiB", mib(k)));
        let counted = r.counted_pct.map_or("-".to_owned(), |c| format!("{c:.1}%"));
        println!(
            "{:<25} {:>11} {:>9} {:>9} {:>9}  {:>20} {:>10} {:>9}",
            format!("{} {} ({n})", r.variant.letter(), r.variant.name()),
            thousands(r.median),
            thousands(r.min),
            thousands(r.max),
            cost_s,
            cpu_s,
            rss,
            counted
        );
    }
    if let Some(run) = steady {
        let l = &run.load;
        let p = run.probe.unwrap_or_default();
        println!(
            "fixed rate: {} conn/s asked for {} s with connmon attached and scraped every 1 s: achieved {} conn/s \
             ({} connections, {} errors, up to {:.1} ms late); connmon {:.2} s CPU = {:.2}% of one core",
            thousands(args.rate),
            args.rate_secs,
            thousands(l.rate),
            thousands(l.connections as f64),
            l.errors,
            l.late_max_ms,
            p.cpu_s,
            100.0 * p.cpu_s / p.wall_s
        );
    }

    println!("targets (reported, not asserted):");
    let row = |v: Variant| rows.iter().find(|r| r.variant == v);
    match (row(Variant::B).and_then(cost), row(Variant::C).and_then(cost)) {
        (Some(b), Some(c)) => println!(
            "  {:<58} target: ≤ bpftrace cost   {}",
            format!("throughput cost: connmon {:.1}%, bpftrace {:.1}%", 100.0 * b, 100.0 * c),
            met(b <= c)
        ),
        _ => println!("  throughput cost: not measured"),
    }
    if let (Some(d), Some(c)) = (row(Variant::D).and_then(cost), row(Variant::C).and_then(cost)) {
        println!(
            "  {:<58} (informative: what the protocol probe costs)",
            format!("without the protocol probe: connmon {:.1}%, bpftrace {:.1}%", 100.0 * d, 100.0 * c)
        );
    }
    match steady.and_then(|r| r.probe.map(|p| (r, p))) {
        Some((run, p)) => {
            let pct = 100.0 * p.cpu_s / p.wall_s;
            println!(
                "  {:<58} target: < 2% of a core    {}",
                format!("connmon CPU at {} conn/s: {:.2}% of one core", thousands(run.load.rate), pct),
                met(pct < 2.0)
            );
        }
        None => println!("  connmon CPU at a fixed rate: not measured (--rate-secs 0)"),
    }
    let agent_runs: Vec<&ProbeFigures> =
        runs.iter().chain(steady).filter(|r| r.variant == Variant::B).filter_map(|r| r.probe.as_ref()).collect();
    match agent_runs.iter().filter_map(|p| p.hwm_kib).max() {
        Some(kib) => println!(
            "  {:<58} target: < 50 MiB          {}",
            format!("connmon peak RSS: {:.1} MiB (highest of {} runs)", mib(kib), agent_runs.len()),
            met(mib(kib) < 50.0)
        ),
        None => println!("  connmon peak RSS: not measured"),
    }

    // A's own spread is the noise floor of every cost above: say so when it is large.
    if let Some(a) = row(Variant::A).filter(|a| a.median > 0.0) {
        let spread = (a.max - a.min) / a.median;
        if spread > 0.15 {
            println!(
                "note: A alone ranged {}–{} conn/s over its rounds ({:.0}% of its median; load average {} on {} CPUs): \
                 cost differences smaller than that are noise; rerun with more --rounds on a quieter machine",
                thousands(a.min),
                thousands(a.max),
                100.0 * spread,
                load_average(),
                cpu_count()
            );
        }
    }

    let order_s: Vec<&str> = order.iter().map(|v| v.letter()).collect();
    println!(
        "method: kernel {}, {} CPUs, load average {} at start and {} at end; {} rounds per variant × {} s of \
         saturated loopback churn, interleaved {}; each probe started fresh per round and settled {} s; \
         CPU = utime+stime deltas from /proc/<pid>/stat (CLK_TCK {}), RSS = VmHWM",
        kernel_release(),
        cpu_count(),
        load_at_start,
        load_average(),
        args.rounds,
        args.secs,
        order_s.join(" "),
        SETTLE.as_secs(),
        ctx.tck,
    );
    println!(
        "method: load = connload (xtask/src/bin/connload.rs): {} client threads connect → read the server's FIN → close, \
         the accept thread closes first; *counted = the probe's own count of connload's connections, lowest round \
         (B: connmon_pool_opens_total{{comm=\"connload\"}}; C: machine-wide ESTABLISHED transitions / 2); \
         fixed rate = {} s paced by absolute deadlines; raw figures in {}",
        2 * cpu_count(),
        args.rate_secs,
        ctx.logs.join("connload.jsonl").display()
    );
}
