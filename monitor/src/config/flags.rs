//! Flags shared by the agent and the commands that attach probes: how probes load, which ports
//! are which service, the retry-storm thresholds, the Kubernetes API, and the agent's own settings
//! (`connmon run`). Flag names follow the Prometheus exporter conventions
//! (`--web.listen-address`) so operators find what they expect. The value parsers live here too,
//! so a flag and the config file's key reject a bad value with the same words.
use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::{
    storm::StormOverrides,
    values::{parse_budget, parse_duration},
};
use crate::kernel::{probes::ProbeOptions, tracefs::DEFAULT_TRACEFS};

#[derive(Debug, Args, Clone)]
pub struct PoolArgs {
    /// Class a destination port as a service: NAME=PORT[,PORT...] (repeatable), e.g. redis=7000.
    /// Defaults: redis=6379,6380,26379 postgres=5432,6432.
    #[arg(long = "service", value_name = "NAME=PORTS")]
    pub services: Vec<String>,
}

/// How the kernel probes are loaded: for the agent and for the commands that attach them
/// (`pools --watch`, `storms`).
#[derive(Debug, Args, Clone)]
pub struct ProbeArgs {
    /// Where tracefs is mounted; only the default location is mounted automatically when absent.
    #[arg(long, default_value = DEFAULT_TRACEFS)]
    pub tracefs: PathBuf,
    /// Turn a kernel probe off (repeatable); the probes are listed in the probe table of
    /// docs/requirements.md. A program name turns off that one row of a probe with alternatives,
    /// so the next row is used.
    #[arg(long = "probes.disable", value_name = "PROBE", value_parser = clap::builder::PossibleValuesParser::new(crate::kernel::probes::disable_values()))]
    pub disabled_probes: Vec<String>,
    /// Live client connections the kernel side can follow (about 90 bytes each); connects beyond
    /// it are not counted and show in connmon_events_lost_total{reason="socket_table_full"}.
    #[arg(long = "pools.max-sockets", default_value_t = monitor_common::MAX_SOCKS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sockets: u32,
}

impl ProbeArgs {
    /// The loader's options: these flags, the cgroup2 mount found now, and the storm threshold
    /// the kernel side uses to call a connection short-lived.
    pub fn options(&self, short_lived: Duration) -> ProbeOptions {
        ProbeOptions {
            tracefs: self.tracefs.clone(),
            max_sockets: self.max_sockets,
            cgroup_root: crate::kernel::cgroupfs::cgroup2_root(),
            disabled: self.disabled_probes.clone(),
            short_lived,
        }
    }
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
    /// Most HTTP connections served at once; further connections wait in the kernel's accept
    /// queue until one closes (connmon_web_connection_limit_hits_total counts them). A connection
    /// that sends no complete request head for 10 s, or idles that long, is closed.
    #[arg(long = "web.max-connections", default_value_t = 512, value_parser = parse_cap)]
    pub max_connections: usize,
    /// Most HTTP requests served at once; a request that finds none free for 8 s gets a 503
    /// (connmon_web_request_limit_hits_total, connmon_web_requests_rejected_total). Scrapes that
    /// arrive during a collection share it, so this bounds waiting requests, not scans.
    #[arg(long = "web.max-requests", default_value_t = 64, value_parser = parse_cap)]
    pub max_requests: usize,
    #[command(flatten)]
    pub probes: ProbeArgs,
    /// How often the agent scans listeners and updates the retry-storm detectors between scrapes.
    #[arg(long = "scan.interval", default_value = "1s", value_parser = parse_duration)]
    pub scan_interval: Duration,
    /// Share of one core that dumping connections (established counts, SYN queues, pool
    /// reconciliation) may use. Dumps run in the background, one every `duration / budget`;
    /// scrapes use the last one and say how old it is in connmon_scan_connections_age_seconds.
    /// 1 dumps again as soon as the last dump is done. A tenth of a percent by default: at 10k
    /// connections/s a dump (which walks every TIME_WAIT socket) takes about 15 ms, and at half
    /// a percent the dumps were half of the agent's CPU, while what they feed moves slowly
    /// (established counts, SYN queues) or needs only some dump (reconciliation of missed
    /// closes).
    #[arg(long = "scan.budget", default_value_t = 0.001, value_parser = parse_budget)]
    pub scan_budget: f64,
    /// Most listeners exported per scrape (fullest queues first); the rest are counted in
    /// connmon_listen_series_dropped.
    #[arg(long = "listeners.max-series", default_value_t = 5000)]
    pub max_listener_series: usize,
    /// Most pools exported per scrape (busiest first); the rest are summed into one pool labelled
    /// "other" and counted in connmon_pool_series_folded.
    #[arg(long = "pools.max-series", default_value_t = 1000)]
    pub max_pool_series: usize,
    /// Period of the peak gauges (connmon_listen_queue_peak_depth, connmon_pool_connections_peak,
    /// connmon_destination_connections_peak): each shows the highest value in this window, the
    /// same for every scraper. Make it at least the longest scrape interval.
    #[arg(long = "peaks.window", default_value = "1m", value_parser = parse_duration)]
    pub peak_window: Duration,
    /// Series the exposition aims to stay within: listeners and pools that matter now (failing,
    /// queueing, storming, growing, alerting) get full detail, the busiest of the rest a summary
    /// (the gauges and counters the rules read), the quietest are left out; see
    /// connmon_series_left_out. 0 turns it off. Default 12000 (the config file's series.budget).
    #[arg(long = "series.budget")]
    pub series_budget: Option<usize>,
    /// How long a listener or pool keeps full detail after it last mattered. Default 15m (the
    /// config file's series.hold).
    #[arg(long = "series.hold", value_parser = parse_duration)]
    pub series_hold: Option<Duration>,
    /// Pools with no open connection and no activity for this long stop being exported.
    #[arg(long = "pools.idle-expiry", default_value = "15m", value_parser = parse_duration)]
    pub pool_idle_expiry: Duration,
    #[command(flatten)]
    pub pool: PoolArgs,
    #[command(flatten)]
    pub storm: StormOverrides,
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

/// A cap on connections or requests: 1 to 65535.
fn parse_cap(text: &str) -> Result<usize, String> {
    match text.parse::<u16>() {
        Ok(n) if n > 0 => Ok(usize::from(n)),
        _ => Err(format!("{text:?} is not a cap: write a whole number from 1 to 65535")),
    }
}
