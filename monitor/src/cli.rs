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
    Run(Box<RunArgs>),
    /// Scan every listening TCP socket once and print it.
    Listeners(ListenersArgs),
    /// Show connection pools (client workload × destination), busiest first.
    Pools(PoolsArgs),
    /// Watch pools and listeners for a while and show their retry-storm signals, storms first.
    Storms(StormsArgs),
    /// Show the alerts a running agent has pending or firing.
    Alerts(AlertsArgs),
}

#[derive(Debug, Args)]
pub struct AlertsArgs {
    /// The agent's address.
    #[arg(long, default_value = "http://127.0.0.1:9977")]
    pub agent: String,
    /// One JSON object per alert, one per line.
    #[arg(long)]
    pub json: bool,
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
    #[command(flatten)]
    pub probes: ProbeArgs,
}

/// How the kernel probes are loaded: for the agent and for the commands that attach them
/// (`pools --watch`, `storms`).
#[derive(Debug, Args, Clone)]
pub struct ProbeArgs {
    /// Where tracefs is mounted; only the default location is mounted automatically when absent.
    #[arg(long, default_value = DEFAULT_TRACEFS)]
    pub tracefs: PathBuf,
    /// Turn a kernel probe off (repeatable); the probes are listed in the README's probe table.
    #[arg(long = "probes.disable", value_name = "PROBE", value_parser = clap::builder::PossibleValuesParser::new(crate::probes::probe_names()))]
    pub disabled_probes: Vec<String>,
    /// Live client connections the kernel side can follow (about 90 bytes each); connects beyond
    /// it are not counted and show in connmon_events_lost_total{reason="socket_table_full"}.
    #[arg(long = "pools.max-sockets", default_value_t = monitor_common::MAX_SOCKS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sockets: u32,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address to serve /metrics, /healthz and /readyz on (HOST:PORT or :PORT for all interfaces).
    #[arg(long = "web.listen-address", default_value = ":9977", env = "CONNMON_LISTEN_ADDRESS")]
    pub listen_address: String,
    /// TLS, basic auth and response headers for every HTTP endpoint: a YAML file in the Prometheus
    /// exporter-toolkit format (tls_server_config, http_server_config, basic_auth_users,
    /// rate_limit). Re-read when it or a certificate it names changes. Wins over the config file's
    /// web.config_file.
    #[arg(long = "web.config.file", value_name = "PATH", env = "CONNMON_WEB_CONFIG_FILE")]
    pub web_config_file: Option<PathBuf>,
    #[command(flatten)]
    pub probes: ProbeArgs,
    /// How often the agent scans listeners and updates the retry-storm detectors between scrapes.
    #[arg(long = "scan.interval", default_value = "1s", value_parser = parse_duration)]
    pub scan_interval: Duration,
    /// Share of one core that dumping connections (established counts, SYN queues, pool
    /// reconciliation) may use; a scrape sooner than that allows reuses the last dump and says
    /// how old it is in connmon_scan_connections_age_seconds. 1 dumps on every scrape.
    #[arg(long = "scan.budget", default_value_t = 0.01, value_parser = parse_budget)]
    pub scan_budget: f64,
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
    #[command(flatten)]
    pub pool: PoolArgs,
    #[command(flatten)]
    pub storm: StormArgs,
    /// Configuration file (TOML): services, ceilings, storm thresholds, alert rules; see
    /// deploy/connmon.example.toml. Flags win over it.
    #[arg(long = "config.file", value_name = "PATH")]
    pub config_file: Option<PathBuf>,
    /// Alertmanager to push alerts to (repeatable), e.g. http://alertmanager:9093; replaces the
    /// config file's alerts.alertmanager_urls.
    #[arg(long = "alertmanager.url", value_name = "URL")]
    pub alertmanager_urls: Vec<String>,
    #[command(flatten)]
    pub kubernetes: KubeArgs,
}

/// Whether to name workloads and peers from the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KubeEnabled {
    /// On when running in a cluster (KUBERNETES_SERVICE_HOST is set) or given --kubernetes.kubeconfig.
    Auto,
    /// On; the API is found through --kubernetes.kubeconfig, the in-cluster service account, or
    /// KUBECONFIG / ~/.kube/config.
    True,
    /// Off: workloads are named by cgroup ids and comm only.
    False,
}

/// Kubernetes API enrichment (namespace, pod and container names; peer pod and Service names).
#[derive(Debug, Args, Clone)]
pub struct KubeArgs {
    /// Name workloads and peers from the Kubernetes API: auto, true or false.
    #[arg(long = "kubernetes.enabled", value_enum, default_value = "auto")]
    pub enabled: KubeEnabled,
    /// The node this agent runs on: only its pods are watched (field selector spec.nodeName).
    /// Required when the API is used; the DaemonSet sets NODE_NAME from the downward API.
    #[arg(long = "kubernetes.node-name", env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// kubeconfig file to reach the API with (for use outside a cluster); turns `auto` on.
    #[arg(long = "kubernetes.kubeconfig", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
}

/// Retry-storm detector thresholds; unset flags take the config file's value, else the default.
#[derive(Debug, Args, Clone)]
pub struct StormArgs {
    /// Connections that close sooner than this after their handshake are short-lived [default: 1s].
    #[arg(long = "storm.short-lived", value_parser = parse_duration)]
    pub short_lived: Option<Duration>,
    /// Attempts per second below which nothing is a storm [default: 5].
    #[arg(long = "storm.min-rate", value_parser = parse_positive)]
    pub min_rate: Option<f64>,
    /// How many times its own baseline the attempt rate must reach [default: 3].
    #[arg(long = "storm.rate-factor", value_parser = parse_positive)]
    pub rate_factor: Option<f64>,
    /// Share of attempts that failed or died young, 0..1 [default: 0.5].
    #[arg(long = "storm.bad-ratio", value_parser = parse_ratio)]
    pub bad_ratio: Option<f64>,
    /// Retry-gap growth per retry below which retries have no effective backoff [default: 1.5].
    #[arg(long = "storm.min-backoff", value_parser = parse_positive)]
    pub min_backoff: Option<f64>,
    /// How long the signature must hold before a storm is declared [default: 2s].
    #[arg(long = "storm.for", value_parser = parse_duration)]
    pub for_duration: Option<Duration>,
    /// How long a storm must stay calm before it is declared over [default: 15s].
    #[arg(long = "storm.hold-down", value_parser = parse_duration)]
    pub hold_down: Option<Duration>,
    /// Window for rates and ratios [default: 5s].
    #[arg(long = "storm.window", value_parser = parse_duration)]
    pub window: Option<Duration>,
    /// How long a pool is watched before connections its server hangs up on young count as
    /// failures (until then there is no baseline to judge its rate by) [default: 10s].
    #[arg(long = "storm.warmup", value_parser = parse_duration)]
    pub warmup: Option<Duration>,
}

impl StormArgs {
    /// Defaults, then the config file's [storm] section, then these flags.
    pub fn config(&self, file: &crate::config::StormSection) -> crate::storms::StormConfig {
        let mut c = file.apply(crate::storms::StormConfig::default());
        macro_rules! set {
            ($($f:ident),*) => {$( if let Some(v) = self.$f { c.$f = v; } )*};
        }
        set!(min_rate, rate_factor, bad_ratio, min_backoff, for_duration, hold_down, window, warmup);
        c
    }

    pub fn short_lived(&self, file: &crate::config::StormSection) -> Duration {
        self.short_lived.or(file.short_lived.map(|d| d.0)).unwrap_or(Duration::from_secs(1))
    }
}

fn parse_positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{text:?} is not a positive number")),
    }
}

fn parse_budget(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!("{text:?} is not a share of one core: give a number above 0 and at most 1, e.g. 0.01")),
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
    #[command(flatten)]
    pub probes: ProbeArgs,
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

/// Durations like `500ms`, `5s`, `2m`, `1h`; zero is allowed (a `for` of 0s means "at once").
pub fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
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
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {text:?}: too large"))
}

/// As `parse_duration_or_zero`, but the duration must be longer than zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match parse_duration_or_zero(text)? {
        d if d.is_zero() => Err(format!("invalid duration {text:?}: must be positive")),
        d => Ok(d),
    }
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
        assert_eq!(parse_duration_or_zero("0s"), Ok(Duration::ZERO));
    }
}
