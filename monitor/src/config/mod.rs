//! The configuration file (TOML): service classes and their connection ceilings, retry-storm
//! thresholds and the built-in alert rules. Every key has a documented default, unknown keys are
//! errors, and any error names the file, the line, the key and what is wrong, in one line.
//! Command-line flags override what the file says.
use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::anyhow;
use serde::Deserialize;

pub mod flags;
pub mod storm;
pub mod values;

pub use values::{Dur, Positive, Ratio};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Service class → destination ports, added to (and overriding) the well-known ones.
    pub services: BTreeMap<String, Vec<u16>>,
    /// Service class → the most connections its servers accept (Redis maxclients, PostgreSQL
    /// max_connections): the ceiling pool-growth alerts project against.
    pub ceilings: BTreeMap<String, Positive>,
    pub storm: storm::StormOverrides,
    pub alerts: AlertsConfig,
    pub web: WebSection,
    pub series: SeriesSection,
}

/// Series an exposition aims to stay within by default (export::budget reads it from here, so
/// config does not depend on export).
pub const DEFAULT_SERIES_BUDGET: usize = 12_000;
/// How long an entity stays notable by default.
pub const DEFAULT_SERIES_HOLD: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// The series budget of the exposition (see monitor/src/export/budget.rs); `--series.budget`
/// and `--series.hold` win over it.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeriesSection {
    /// Series an exposition aims to stay within; 0 turns the budget off (everything in detail).
    pub budget: usize,
    /// How long a listener or pool keeps full detail after it last mattered.
    pub hold: Dur,
}

impl Default for SeriesSection {
    fn default() -> Self {
        SeriesSection { budget: DEFAULT_SERIES_BUDGET, hold: Dur(DEFAULT_SERIES_HOLD) }
    }
}

/// The HTTP endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSection {
    /// TLS and basic-auth file (exporter-toolkit format), as `--web.config.file`; a relative path
    /// is relative to this TOML file's directory.
    pub config_file: Option<std::path::PathBuf>,
}

/// Hysteresis shared by every rule: the condition must hold for `for` before firing and stay
/// false for `clear_for` before resolving.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub for_duration: Dur,
    pub clear_for: Dur,
}

fn secs(s: u64) -> Dur {
    Dur(Duration::from_secs(s))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// How often rules are evaluated.
    pub interval: Dur,
    /// Alertmanager base URLs (e.g. http://alertmanager:9093); alerts go to /api/v2/alerts.
    pub alertmanager_urls: Vec<String>,
    /// How often firing alerts are sent again (Alertmanager expires alerts not re-sent).
    pub resend: Dur,
    pub pool_growth: PoolGrowthRule,
    pub accept_queue_saturated: SaturationRule,
    pub accept_queue_slow_failure: SlowFailureRule,
    pub listen_overflow: OverflowRule,
    pub inflight_growth: InFlightRule,
    pub retry_storm: StormRule,
    pub destination_saturated: DestinationSaturatedRule,
    pub dependency_failing: DependencyFailingRule,
    pub near_ceiling: NearCeilingRule,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            interval: secs(5),
            alertmanager_urls: Vec::new(),
            resend: secs(30),
            pool_growth: PoolGrowthRule::default(),
            accept_queue_saturated: SaturationRule::default(),
            accept_queue_slow_failure: SlowFailureRule::default(),
            listen_overflow: OverflowRule::default(),
            inflight_growth: InFlightRule::default(),
            retry_storm: StormRule::default(),
            destination_saturated: DestinationSaturatedRule::default(),
            dependency_failing: DependencyFailingRule::default(),
            near_ceiling: NearCeilingRule::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolGrowthRule {
    pub enabled: bool,
    /// Span of samples the slope is fitted over.
    pub window: Dur,
    /// Least growth, in connections per minute, that counts.
    pub min_slope_per_min: Positive,
    /// The most recent span that must still be growing (at half the minimum slope): no plateau.
    pub plateau_window: Dur,
    #[serde(rename = "for")]
    pub for_duration: Dur,
    pub clear_for: Dur,
}

impl Default for PoolGrowthRule {
    fn default() -> Self {
        Self {
            enabled: true,
            window: secs(600),
            min_slope_per_min: Positive(1.0),
            plateau_window: secs(120),
            for_duration: secs(120),
            clear_for: secs(300),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SaturationRule {
    pub enabled: bool,
    /// Accept-queue depth / backlog at or above which the queue counts as saturated.
    pub fill: Ratio,
    #[serde(rename = "for")]
    pub for_duration: Dur,
    pub clear_for: Dur,
}

impl Default for SaturationRule {
    fn default() -> Self {
        Self { enabled: true, fill: Ratio(0.9), for_duration: secs(60), clear_for: secs(60) }
    }
}

/// AcceptQueueSlowFailure: connections wait in the queue longer than clients wait for them, or
/// clients give up while queued.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlowFailureRule {
    pub enabled: bool,
    /// How long clients wait for an answer before giving up (their connect or read timeout).
    pub client_timeout: Dur,
    /// Abandoned connections within `window` that fire the rule on their own...
    pub min_abandoned: u64,
    /// ...when they are at least this share of the connections queued within `window` (where
    /// the eBPF peak probe counts them). A short queue that refuses the excess at once still sees
    /// a few clients leave at the moment it takes them in (their final ACK was dropped while it
    /// was full, and their timeout came first): a handful in thousands, not a slow failure.
    pub min_abandoned_ratio: Ratio,
    pub window: Dur,
    #[serde(rename = "for")]
    pub for_duration: Dur,
    pub clear_for: Dur,
}

impl Default for SlowFailureRule {
    fn default() -> Self {
        Self {
            enabled: true,
            client_timeout: secs(1),
            min_abandoned: 10,
            min_abandoned_ratio: Ratio(0.05),
            window: secs(30),
            for_duration: secs(5),
            clear_for: secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverflowRule {
    pub enabled: bool,
    /// Drops increasing within this span fire the alert.
    pub window: Dur,
    #[serde(rename = "for")]
    pub for_duration: Dur,
    pub clear_for: Dur,
}

impl Default for OverflowRule {
    fn default() -> Self {
        Self { enabled: true, window: secs(120), for_duration: secs(0), clear_for: secs(120) }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InFlightRule {
    pub enabled: bool,
    pub window: Dur,
    /// Least growth of established connections (or queue depth), per minute.
    pub min_slope_per_min: Positive,
    /// The accept rate counts as flat when its two half-window rates differ by at most this share.
    pub max_accept_rate_change: Ratio,
    #[serde(rename = "for")]
    pub for_duration: Dur,
    pub clear_for: Dur,
}

impl Default for InFlightRule {
    fn default() -> Self {
        Self {
            enabled: true,
            window: secs(600),
            min_slope_per_min: Positive(1.0),
            max_accept_rate_change: Ratio(0.1),
            for_duration: secs(120),
            clear_for: secs(300),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StormRule {
    pub enabled: bool,
    #[serde(rename = "for")]
    pub for_duration: Dur,
    pub clear_for: Dur,
}

impl Default for StormRule {
    fn default() -> Self {
        // The detector has its own for/hold-down; the alert follows it.
        Self { enabled: true, for_duration: secs(0), clear_for: secs(0) }
    }
}

/// Every rule's `for` and `clear_for`.
pub trait Timed {
    fn timing(&self) -> Timing;
}

macro_rules! timed {
    ($($t:ty),*) => {$(
        impl Timed for $t {
            fn timing(&self) -> Timing {
                Timing { for_duration: self.for_duration, clear_for: self.clear_for }
            }
        }
    )*};
}
timed!(
    PoolGrowthRule,
    SaturationRule,
    SlowFailureRule,
    OverflowRule,
    InFlightRule,
    StormRule,
    DestinationSaturatedRule,
    DependencyFailingRule,
    NearCeilingRule
);

/// DestinationSaturated: a server that holds this host's connections while rejecting new ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DestinationSaturatedRule {
    pub enabled: bool,
    /// Span over which rejections and attempts are counted.
    pub window: Dur,
    /// Least rejections within the window; they must also fall in two evaluation intervals (a
    /// single burst is not a sustained rate).
    pub min_rejections: Positive,
    /// Least share of the connect attempts of those intervals that were rejected. Low on purpose:
    /// a client that closes as soon as it has read the server's refusal (libpq does) often
    /// closes before the server's FIN arrives, and is then seen hanging up first; TCP showed 24%
    /// to 88% of psycopg's "too many clients" as rejections.
    pub min_ratio: Ratio,
    /// How far the open count may have risen over the last 12 s (a share of its lowest count
    /// then, plus one connection) and still count as "stopped growing".
    pub max_growth: Ratio,
    #[serde(rename = "for")]
    pub for_duration: Dur,
    pub clear_for: Dur,
}

impl Default for DestinationSaturatedRule {
    fn default() -> Self {
        Self {
            enabled: true,
            window: secs(30),
            min_rejections: Positive(3.0),
            min_ratio: Ratio(0.1),
            max_growth: Ratio(0.1),
            for_duration: secs(0),
            clear_for: secs(30),
        }
    }
}

/// DependencyFailing: one destination failing for many client workloads at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DependencyFailingRule {
    pub enabled: bool,
    /// Span within which the workloads' failures must fall.
    pub window: Dur,
    /// Least distinct client workloads (cgroups, or process names where there is no cgroup).
    pub min_workloads: Positive,
    #[serde(rename = "for")]
    pub for_duration: Dur,
    pub clear_for: Dur,
}

impl Default for DependencyFailingRule {
    fn default() -> Self {
        Self {
            enabled: true,
            window: secs(30),
            min_workloads: Positive(3.0),
            for_duration: secs(0),
            clear_for: secs(30),
        }
    }
}

/// ConnectionPoolNearCeiling: a destination whose open connections approach its `[ceilings]`
/// value fast, or already hold most of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NearCeilingRule {
    pub enabled: bool,
    /// Span the short-term growth rate is fitted over.
    pub window: Dur,
    /// Fires when, at that rate, the destination reaches its configured ceiling within this span...
    pub horizon: Dur,
    /// ...or already holds this share of it.
    pub fill: Ratio,
    #[serde(rename = "for")]
    pub for_duration: Dur,
    pub clear_for: Dur,
}

impl Default for NearCeilingRule {
    fn default() -> Self {
        Self {
            enabled: true,
            window: secs(30),
            horizon: secs(120),
            fill: Ratio(0.9),
            for_duration: secs(0),
            clear_for: secs(60),
        }
    }
}

impl Config {
    /// Spans that would make a rule meaningless at zero.
    fn validate(&self) -> Result<(), String> {
        let a = &self.alerts;
        let spans = [
            ("alerts.interval", a.interval),
            ("alerts.resend", a.resend),
            ("alerts.pool_growth.window", a.pool_growth.window),
            ("alerts.pool_growth.plateau_window", a.pool_growth.plateau_window),
            ("alerts.listen_overflow.window", a.listen_overflow.window),
            ("alerts.accept_queue_slow_failure.window", a.accept_queue_slow_failure.window),
            ("alerts.accept_queue_slow_failure.client_timeout", a.accept_queue_slow_failure.client_timeout),
            ("alerts.inflight_growth.window", a.inflight_growth.window),
            ("alerts.destination_saturated.window", a.destination_saturated.window),
            ("alerts.dependency_failing.window", a.dependency_failing.window),
            ("alerts.near_ceiling.window", a.near_ceiling.window),
            ("alerts.near_ceiling.horizon", a.near_ceiling.horizon),
        ];
        match spans.iter().find(|(_, d)| d.0.is_zero()) {
            Some((key, _)) => Err(format!("{key} must be longer than 0s")),
            None => Ok(()),
        }
    }
}

/// Pure: parses a config text; `name` is the file name used in errors.
pub fn parse(text: &str, name: &str) -> anyhow::Result<Config> {
    let config = toml::from_str::<Config>(text).map_err(|e| {
        let place = e.span().map(|span| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let snippet = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line} (`{snippet}`): ")
        });
        anyhow!("invalid config {name}: {}{}", place.unwrap_or_default(), e.message().replace('\n', " "))
    })?;
    config.validate().map_err(|e| anyhow!("invalid config {name}: {e}"))?;
    Ok(config)
}

pub fn load(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("cannot read config {}: {e}", path.display()))?;
    let mut config = parse(&text, &path.display().to_string())?;
    if let Some(web) = &mut config.web.config_file {
        *web = path.parent().unwrap_or(Path::new(".")).join(&*web);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_budget_section() {
        let c = parse("[series]\nbudget = 5000\nhold = \"5m\"\n", "x.toml").unwrap();
        assert_eq!((c.series.budget, c.series.hold), (5000, secs(300)));
        let e = parse("[series]\nbudget = -1\n", "bad.toml").unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains("budget"), "{e}");
    }

    #[test]
    fn empty_config_is_all_defaults() {
        let c = parse("", "x.toml").unwrap();
        assert_eq!(c.series.budget, 12_000);
        assert_eq!(c.alerts.pool_growth.window, secs(600));
        assert!(c.alerts.retry_storm.enabled);
        assert!(c.ceilings.is_empty());
    }

    #[test]
    fn full_example_parses() {
        let c = parse(EXAMPLE, "example.toml").unwrap();
        assert_eq!(c.services["redis"], vec![6379, 7000]);
        assert_eq!(c.ceilings["redis"].0, 10000.0);
        assert_eq!(c.alerts.pool_growth.for_duration, secs(60));
        assert_eq!(c.alerts.alertmanager_urls, vec!["http://127.0.0.1:9093".to_string()]);
        assert_eq!(c.storm.resolve().min_rate, 10.0);
    }

    #[test]
    fn errors_name_the_file_line_key_and_problem() {
        let cases = [
            ("[alerts.pool_growth]\nwndow = \"10m\"\n", "line 2", "wndow"),
            ("[alerts.pool_growth]\nwindow = \"10x\"\n", "line 2", "unit must be"),
            ("[storm]\nmin_rate = -1\n", "line 2", "positive"),
            ("[alerts.accept_queue_saturated]\nfill = 1.5\n", "line 2", "between 0 and 1"),
            ("[alerts]\ninterval = \"0s\"\n", "", "alerts.interval must be longer than 0s"),
        ];
        for (text, line, what) in cases {
            let e = parse(text, "bad.toml").unwrap_err().to_string();
            assert!(e.contains("bad.toml") && e.contains(line) && e.contains(what), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn web_config_file_is_relative_to_the_toml_file() {
        let dir = std::env::temp_dir().join(format!("connmon-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("connmon.toml");
        std::fs::write(&path, "[web]\nconfig_file = \"web.yml\"\n").unwrap();
        let c = load(&path).unwrap();
        assert_eq!(c.web.config_file, Some(dir.join("web.yml")));
        std::fs::write(&path, "[web]\nconfig_file = \"/etc/w.yml\"\n").unwrap();
        assert_eq!(load(&path).unwrap().web.config_file, Some("/etc/w.yml".into()));
        let e = parse("[web]\nconfig = 1\n", "bad.toml").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("unknown field `config`"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The documented example (docs/configuration.md); kept here so the documented file always parses.
    pub const EXAMPLE: &str = include_str!("../../../deploy/connmon.example.toml");
}
