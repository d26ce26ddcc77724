//! `cargo xtask bench scale`: the agent's own cost on a big host, with default settings.
//!
//! - fleet: 1,500 listeners and 1,500 client pools (plus a few pools whose connects are all
//!   refused) in one process on loopback (connfleet, src/bin/connfleet.rs), churning a little so
//!   counters and histograms move. Measured: series per scrape, bytes per scrape, scrape time
//!   (a fresh connection each, as Prometheus does), and the agent's RSS and CPU.
//! - sockets: 64k established sockets (32k connections, both ends on this host) over a few pools;
//!   measured: RSS and scrape time.
//! - churn: 10,000 connections/s (connload, paced) for 20 s, the agent scraped every second as in
//!   `bench pools`; measured: the agent's CPU as a share of one core.
//!
//! Each part starts its load, then a fresh agent, scrapes it every 2 s for `--warmup` seconds
//! (pools need a scrape or two before their rates and storm signals exist, and Prometheus scrapes
//! an agent from its start; the first scrape's time is reported apart), then measures `--scrapes`
//! scrapes, 2 s apart.
//! The last exposition of each part is kept in the log directory for inspection. Targets (from
//! issue 17) are printed beside the figures, never asserted: the command fails only when
//! something does not run.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use super::load::run_connload;
use super::probe::start_agent;
use super::proc_stats::{clk_tck, cpu_ticks, load_average, status_kib};
use super::scrape::{http_get, Scraper};
use super::stats::{mib, summary, thousands};
use super::{build_release, built_release, free_port, log_dir, preflight};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Part {
    Fleet,
    Sockets,
    Churn,
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// Parts to run (default: all three).
    #[arg(long = "part", value_enum)]
    parts: Vec<Part>,
    /// Seconds between the agent's readiness and the first measured scrape, scraped every 2 s.
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    /// Measured scrapes per part, 2 s apart.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    scrapes: u32,
    /// Extra argument for `connmon run` (repeat for several), e.g. --agent-arg=--series.budget=0.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
    /// Measure this agent binary instead of the release build (e.g. an older build, for a
    /// before/after comparison).
    #[arg(long, value_name = "PATH")]
    connmon: Option<std::path::PathBuf>,
    /// Use the release binaries the last build left instead of building them first (build
    /// outside the test lock, then measure under it).
    #[arg(long)]
    no_build: bool,
}

/// What one part measured.
struct Figures {
    series: usize,
    bytes: usize,
    scrape_ms: Vec<f64>,
    /// The warm-up's first scrape: nothing was prepared for it.
    first_scrape_ms: Option<f64>,
    rss_kib: Option<u64>,
    hwm_kib: Option<u64>,
    cpu_share: f64,
    left_out: Vec<String>,
}

/// The load generator, killed when dropped.
struct Fleet(Child);

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_fleet(connfleet: &Path, args: &[&str]) -> Result<(Fleet, String)> {
    let mut child = Command::new(connfleet)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", connfleet.display()))?;
    let stdout = child.stdout.take().context("connfleet stdout")?;
    let fleet = Fleet(child);
    let mut first = String::new();
    // connfleet gives up on its own after 30 s of opening connections.
    BufReader::new(stdout).read_line(&mut first)?;
    if !first.contains("\"ready\":true") {
        bail!("connfleet did not get ready: {}", first.trim());
    }
    Ok((fleet, first.trim().to_string()))
}

/// Sample lines of an exposition (series), and the `connmon_series_left_out` samples.
fn count_series(body: &str) -> (usize, Vec<String>) {
    let samples = body.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count();
    let left = body.lines().filter(|l| l.starts_with("connmon_series_left_out")).map(str::to_string).collect();
    (samples, left)
}

fn measure(connmon: &Path, logs: &Path, part: Part, args: &ScaleArgs) -> Result<Figures> {
    let web = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let extra: Vec<&str> = args.agent_args.iter().map(String::as_str).collect();
    let name = format!("{part:?}").to_lowercase();
    let agent = start_agent(connmon, web, logs.join(format!("{name}-connmon.log")), &extra)?;
    let pid = agent.pid();
    // Scraped through the warm-up at the measuring cadence, as Prometheus scrapes an agent from
    // its start: the agent prepares expositions for the scrapes it expects (agent/prepared.rs).
    // The first scrape, which it could not expect, is reported apart.
    let start = Instant::now();
    let mut first_scrape_ms = None;
    let mut k = 0u64;
    let t0 = loop {
        let due = start + Duration::from_secs(2 * k);
        if due >= start + Duration::from_secs(args.warmup) {
            break due;
        }
        thread::sleep(due.saturating_duration_since(Instant::now()));
        let t = Instant::now();
        http_get(web, "/metrics", Duration::from_secs(30))?;
        first_scrape_ms.get_or_insert(t.elapsed().as_secs_f64() * 1e3);
        k += 1;
    };
    thread::sleep(t0.saturating_duration_since(Instant::now()));
    let tck = clk_tck();
    let cpu0 = cpu_ticks(pid);
    let mut scrape_ms = Vec::new();
    let mut last = String::new();
    for k in 0..args.scrapes {
        let due = t0 + Duration::from_secs(2 * u64::from(k));
        thread::sleep(due.saturating_duration_since(Instant::now()));
        let t = Instant::now();
        let (status, body) = http_get(web, "/metrics", Duration::from_secs(30))?;
        scrape_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        last = body;
    }
    let cpu1 = cpu_ticks(pid);
    let wall = t0.elapsed().as_secs_f64();
    let rss_kib = status_kib(pid, "VmRSS");
    let hwm_kib = status_kib(pid, "VmHWM");
    let _ = std::fs::write(logs.join(format!("{name}-metrics.txt")), &last);
    agent.stop()?;
    let (series, left_out) = count_series(&last);
    let cpu_share = match (cpu0, cpu1) {
        (Some(a), Some(b)) => b.saturating_sub(a) as f64 / tck / wall,
        _ => f64::NAN,
    };
    Ok(Figures { series, bytes: last.len(), scrape_ms, first_scrape_ms, rss_kib, hwm_kib, cpu_share, left_out })
}

fn report(part: Part, load: &str, f: &Figures) {
    let (med, min, max) = summary(&f.scrape_ms).unwrap_or((f64::NAN, f64::NAN, f64::NAN));
    let kib = |k: Option<u64>| k.map_or("?".to_string(), |k| format!("{:.1} MiB", mib(k)));
    println!("{part:?}: {load}");
    println!("  series per scrape   {:>12}", thousands(f.series as f64));
    println!("  bytes per scrape    {:>12}  ({:.2} MB)", thousands(f.bytes as f64), f.bytes as f64 / 1e6);
    println!("  scrape time         {med:>9.1} ms median (min {min:.1}, max {max:.1}; {} scrapes)", f.scrape_ms.len());
    if let Some(first) = f.first_scrape_ms {
        println!("  first scrape        {first:>9.1} ms  (after start-up, collected afresh: no scrape was expected)");
    }
    println!("  agent RSS           {:>12}  (peak {})", kib(f.rss_kib), kib(f.hwm_kib));
    println!("  agent CPU           {:>11.2}%  of one core while scraped every 2 s", f.cpu_share * 100.0);
    for l in &f.left_out {
        println!("  {l}");
    }
    match part {
        Part::Fleet => println!("  targets: ≤ 15,000 series, ≤ 2 MB, scrape ≤ 50 ms, RSS ≤ 64 MiB"),
        Part::Sockets => println!("  targets: RSS ≤ 48 MiB at 64k sockets, scrape ≤ 25 ms"),
        Part::Churn => {}
    }
}

/// The agent's CPU while connload churns 10,000 connections/s for 20 s, scraped every second.
fn churn(connmon: &Path, connload: &Path, logs: &Path, args: &ScaleArgs) -> Result<()> {
    let web = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let extra: Vec<&str> = args.agent_args.iter().map(String::as_str).collect();
    let agent = start_agent(connmon, web, logs.join("churn-connmon.log"), &extra)?;
    let pid = agent.pid();
    thread::sleep(Duration::from_secs(2));
    let cpu0 = cpu_ticks(pid);
    let t0 = Instant::now();
    let scraper = Scraper::start(web);
    let load_args: Vec<String> =
        ["--secs", "20", "--rate", "10000", "--port", &free_port()?.to_string()].map(String::from).to_vec();
    let load = run_connload(connload, &load_args, &logs.join("connload.jsonl"))?;
    let scrapes = scraper.finish();
    let (cpu1, wall) = (cpu_ticks(pid), t0.elapsed().as_secs_f64());
    let hwm = status_kib(pid, "VmHWM");
    agent.stop()?;
    let share = match (cpu0, cpu1) {
        (Some(a), Some(b)) => b.saturating_sub(a) as f64 / clk_tck() / wall,
        _ => f64::NAN,
    };
    println!("Churn: {} conn/s paced for 20 s ({} errors)", thousands(load.rate), load.errors);
    println!("  agent CPU           {:>11.2}%  of one core, scraped every second", share * 100.0);
    println!("  scrapes             {:>12}  ok (max {:.1} ms, {} failed)", scrapes.ok, scrapes.max_ms, scrapes.failed);
    println!("  agent peak RSS      {:>12}", hwm.map_or("?".into(), |k| format!("{:.1} MiB", mib(k))));
    println!("  target: under 0.5% of a core");
    Ok(())
}

pub fn run(args: &ScaleArgs) -> Result<()> {
    preflight()?;
    let bins = if args.no_build { built_release()? } else { build_release()? };
    let logs = log_dir("scale")?;
    let parts = if args.parts.is_empty() { vec![Part::Fleet, Part::Sockets, Part::Churn] } else { args.parts.clone() };
    println!(
        "bench scale: {} part(s), {} s warm-up and {} scrapes each; load average {}; logs in {}",
        parts.len(),
        args.warmup,
        args.scrapes,
        load_average(),
        logs.display()
    );
    for part in parts {
        let connmon = args.connmon.as_deref().unwrap_or(&bins.connmon);
        if part == Part::Churn {
            churn(connmon, &bins.connload, &logs, args)?;
            continue;
        }
        // 8,000 connections (16,000 descriptors) a process: a root without CAP_SYS_RESOURCE may not
        // raise RLIMIT_NOFILE past its hard limit (often 20,000), so the 64k sockets take four.
        let (loads, processes): (&[&str], usize) = match part {
            Part::Fleet => {
                (&["--listeners", "1500", "--pools", "1500", "--failing", "20", "--conns", "1", "--churn", "200"], 1)
            }
            Part::Sockets => (&["--listeners", "1", "--pools", "1", "--conns", "8000", "--churn", "0"], 4),
            Part::Churn => unreachable!("handled above"),
        };
        let mut fleets = Vec::new();
        let mut ready = Vec::new();
        for _ in 0..processes {
            let (f, r) = start_fleet(&bins.connfleet, loads)?;
            fleets.push(f);
            ready.push(r);
        }
        let ready = if processes == 1 { ready.remove(0) } else { format!("{processes} × {}", ready[0]) };
        let figures = measure(connmon, &logs, part, args)?;
        drop(fleets);
        report(part, &ready, &figures);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_samples_not_comments() {
        let body = "# HELP a A.\n# TYPE a gauge\na{x=\"1\"} 1\na{x=\"2\"} 2\n\
                    connmon_series_left_out{what=\"histograms\"} 3\n# EOF\n";
        let (n, left) = count_series(body);
        assert_eq!(n, 3);
        assert_eq!(left, vec!["connmon_series_left_out{what=\"histograms\"} 3".to_string()]);
    }
}
