//! Command-line interface: subcommands and flags. Flag names follow the Prometheus exporter
//! conventions (`--web.listen-address`) so operators find what they expect.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::tracefs::DEFAULT_TRACEFS;

#[derive(Debug, Parser)]
#[command(name = "connmon", version, about = "TCP connection and listen-backlog monitor (eBPF)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: attach probes and serve Prometheus metrics.
    Run(RunArgs),
    /// Scan every listening TCP socket once and print it.
    Listeners(ListenersArgs),
    /// Show connection pools (client workload × destination), busiest first.
    Pools(PoolsArgs),
    /// Watch pools and listeners for a while and show their retry-storm signals, storms first.
    Storms(StormsArgs),
}

#[derive(Debug, Args, Clone)]
pub struct PoolArgs {
    /// Class a destination port as a service: NAME=PORT[,PORT...] (repeatable), e.g. redis=7000.
    /// Defaults: redis=6379,6380,26379 postgres=5432,6432.
    #[arg(long = "service", value_name = "NAME=PORTS")]
    pub services: Vec<String>,
}

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
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address to serve /metrics, /healthz and /readyz on (HOST:PORT or :PORT for all interfaces).
    #[arg(long = "web.listen-address", default_value = ":9977", env = "CONNMON_LISTEN_ADDRESS")]
    pub listen_address: String,
    /// Where tracefs is mounted; only the default location is mounted automatically when absent.
    #[arg(long, default_value = DEFAULT_TRACEFS)]
    pub tracefs: PathBuf,
    /// Turn a kernel probe off (repeatable); the probes are listed in the README's probe table.
    #[arg(long = "probes.disable", value_name = "PROBE", value_parser = clap::builder::PossibleValuesParser::new(crate::probes::probe_names()))]
    pub disabled_probes: Vec<String>,
    /// How often the agent scans listeners and updates the retry-storm detectors between scrapes.
    #[arg(long = "scan.interval", default_value = "1s", value_parser = parse_duration)]
    pub scan_interval: Duration,
    /// Most listeners exported per scrape (fullest queues first); the rest are counted in
    /// connmon_listen_series_dropped.
    #[arg(long = "listeners.max-series", default_value_t = 5000)]
    pub max_listener_series: usize,
    /// Most pools exported per scrape (busiest first); the rest are summed into one pool labelled
    /// "other" and counted in connmon_pool_series_folded.
    #[arg(long = "pools.max-series", default_value_t = 1000)]
    pub max_pool_series: usize,
    /// Pools with no open connection and no activity for this long stop being exported.
    #[arg(long = "pools.idle-expiry", default_value = "15m", value_parser = parse_duration)]
    pub pool_idle_expiry: Duration,
    /// Live client connections the kernel side can follow (about 90 bytes each); connects beyond
    /// it are not counted and show in connmon_events_lost_total{reason="socket_table_full"}.
    #[arg(long = "pools.max-sockets", default_value_t = monitor_common::MAX_SOCKS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sockets: u32,
    #[command(flatten)]
    pub pool: PoolArgs,
    #[command(flatten)]
    pub storm: StormArgs,
}

/// Retry-storm detector thresholds.
#[derive(Debug, Args, Clone)]
pub struct StormArgs {
    /// Connections that close sooner than this after their handshake are short-lived.
    #[arg(long = "storm.short-lived", default_value = "1s", value_parser = parse_duration)]
    pub short_lived: Duration,
    /// Attempts per second below which nothing is a storm.
    #[arg(long = "storm.min-rate", default_value_t = 5.0, value_parser = parse_positive)]
    pub min_rate: f64,
    /// How many times its own baseline the attempt rate must reach.
    #[arg(long = "storm.rate-factor", default_value_t = 3.0, value_parser = parse_positive)]
    pub rate_factor: f64,
    /// Share of attempts that failed or died young (0..1).
    #[arg(long = "storm.bad-ratio", default_value_t = 0.5, value_parser = parse_ratio)]
    pub bad_ratio: f64,
    /// Retry-gap growth per retry below which retries have no effective backoff.
    #[arg(long = "storm.min-backoff", default_value_t = 1.5, value_parser = parse_positive)]
    pub min_backoff: f64,
    /// How long the signature must hold before a storm is declared.
    #[arg(long = "storm.for", default_value = "2s", value_parser = parse_duration)]
    pub for_duration: Duration,
    /// How long a storm must stay calm before it is declared over.
    #[arg(long = "storm.hold-down", default_value = "15s", value_parser = parse_duration)]
    pub hold_down: Duration,
    /// Window for rates and ratios.
    #[arg(long = "storm.window", default_value = "5s", value_parser = parse_duration)]
    pub window: Duration,
}

impl StormArgs {
    pub fn config(&self) -> crate::storms::StormConfig {
        crate::storms::StormConfig {
            min_rate: self.min_rate,
            rate_factor: self.rate_factor,
            bad_ratio: self.bad_ratio,
            min_backoff: self.min_backoff,
            for_duration: self.for_duration,
            hold_down: self.hold_down,
            window: self.window,
            ..Default::default()
        }
    }
}

fn parse_positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{text:?} is not a positive number")),
    }
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{text:?} is not a ratio between 0 and 1")),
    }
}

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
    pub storm: StormArgs,
}

#[derive(Debug, Args)]
pub struct ListenersArgs {
    /// One JSON object per listener, one per line.
    #[arg(long)]
    pub json: bool,
    /// Only this network namespace: its /run/netns name or its inode.
    #[arg(long)]
    pub netns: Option<String>,
}

/// Durations like `500ms`, `5s`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {text:?}: expected e.g. 500ms, 5s, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration {text:?}: unit must be ms, s, m or h")),
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!("invalid duration {text:?}: must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
