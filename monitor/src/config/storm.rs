//! The retry-storm settings, declared once: [`StormOverrides`] is both the config file's `[storm]`
//! table and the `--storm.*` flags (every field optional), and [`StormSettings`] is what the
//! detector and the probes run with once flags, file and defaults are merged, in that order.
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use super::values::{positive, positive_dur, ratio, Dur, Positive, Ratio};

/// Retry-storm thresholds as the operator gives them; unset ones fall through to the config file,
/// then to [`StormSettings::default`].
#[derive(Debug, Clone, Default, Deserialize, Args)]
#[serde(deny_unknown_fields, default)]
pub struct StormOverrides {
    /// Connections that close sooner than this after their handshake are short-lived [default: 1s].
    #[arg(long = "storm.short-lived", value_parser = positive_dur)]
    pub short_lived: Option<Dur>,
    /// Attempts per second below which nothing is a storm [default: 5].
    #[arg(long = "storm.min-rate", value_parser = positive)]
    pub min_rate: Option<Positive>,
    /// Attempts per second at or above which a pool whose every attempt (90% or more) is
    /// rejected is a storm, whatever its baseline [default: 2].
    #[arg(long = "storm.min-rate-rejected", value_parser = positive)]
    pub min_rate_rejected: Option<Positive>,
    /// How many times its own baseline the attempt rate must reach [default: 3].
    #[arg(long = "storm.rate-factor", value_parser = positive)]
    pub rate_factor: Option<Positive>,
    /// Share of attempts that failed or died young, 0..1 [default: 0.5].
    #[arg(long = "storm.bad-ratio", value_parser = ratio)]
    pub bad_ratio: Option<Ratio>,
    /// Retry-gap growth per retry below which retries have no effective backoff [default: 1.5].
    #[arg(long = "storm.min-backoff", value_parser = positive)]
    pub min_backoff: Option<Positive>,
    /// How long the signature must hold before a storm is declared [default: 2s].
    #[arg(long = "storm.for", value_parser = positive_dur)]
    #[serde(rename = "for")]
    pub for_duration: Option<Dur>,
    /// How long a storm must stay calm before it is declared over [default: 15s].
    #[arg(long = "storm.hold-down", value_parser = positive_dur)]
    pub hold_down: Option<Dur>,
    /// Window for rates and ratios [default: 5s].
    #[arg(long = "storm.window", value_parser = positive_dur)]
    pub window: Option<Dur>,
    /// How long a pool is watched before connections its server hangs up on young count as
    /// failures (until then there is no baseline to judge its rate by) [default: 10s].
    #[arg(long = "storm.warmup", value_parser = positive_dur)]
    pub warmup: Option<Dur>,
}

/// What the detector and the kernel side run with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StormSettings {
    /// Connections closed sooner than this after their handshake died young.
    pub short_lived: Duration,
    /// Attempts per second below which nothing is a storm.
    pub min_rate: f64,
    /// The floor instead, for an interval in which nearly every attempt went bad: a pool whose
    /// whole traffic is being turned away is a storm at a few attempts a second, whatever its
    /// baseline. Backoff still clears it, so slow polite retries are not flagged.
    pub min_rate_rejected: f64,
    /// How many times its baseline the attempt rate must be.
    pub rate_factor: f64,
    /// Share of attempts that failed or died young.
    pub bad_ratio: f64,
    /// Backoff growth factor per retry below which retries count as "no effective backoff".
    pub min_backoff: f64,
    /// Conditions must hold this long before a storm starts...
    pub for_duration: Duration,
    /// ...and stay false this long before it ends.
    pub hold_down: Duration,
    /// Window over which rates and ratios are taken.
    pub window: Duration,
    /// Half-life of the attempt-rate baseline (updated only outside storms); not settable.
    pub baseline_half_life: Duration,
    /// How long a target must have been watched before soft evidence (server hung up young)
    /// counts: until then there is no baseline to call its rate elevated against.
    pub warmup: Duration,
}

impl Default for StormSettings {
    fn default() -> Self {
        Self {
            short_lived: Duration::from_secs(1),
            min_rate: 5.0,
            min_rate_rejected: 2.0,
            rate_factor: 3.0,
            bad_ratio: 0.5,
            min_backoff: 1.5,
            for_duration: Duration::from_secs(2),
            hold_down: Duration::from_secs(15),
            window: Duration::from_secs(5),
            baseline_half_life: Duration::from_secs(300),
            warmup: Duration::from_secs(10),
        }
    }
}

impl StormOverrides {
    /// These settings where given, else `fallback`'s (flags over the config file).
    pub fn or(&self, fallback: &StormOverrides) -> StormOverrides {
        macro_rules! pick {
            ($($f:ident),*) => { StormOverrides { $($f: self.$f.or(fallback.$f)),* } };
        }
        pick!(
            short_lived,
            min_rate,
            min_rate_rejected,
            rate_factor,
            bad_ratio,
            min_backoff,
            for_duration,
            hold_down,
            window,
            warmup
        )
    }

    /// The given settings over the defaults.
    pub fn resolve(&self) -> StormSettings {
        let d = StormSettings::default();
        StormSettings {
            short_lived: self.short_lived.map_or(d.short_lived, |v| v.0),
            min_rate: self.min_rate.map_or(d.min_rate, |v| v.0),
            min_rate_rejected: self.min_rate_rejected.map_or(d.min_rate_rejected, |v| v.0),
            rate_factor: self.rate_factor.map_or(d.rate_factor, |v| v.0),
            bad_ratio: self.bad_ratio.map_or(d.bad_ratio, |v| v.0),
            min_backoff: self.min_backoff.map_or(d.min_backoff, |v| v.0),
            for_duration: self.for_duration.map_or(d.for_duration, |v| v.0),
            hold_down: self.hold_down.map_or(d.hold_down, |v| v.0),
            window: self.window.map_or(d.window, |v| v.0),
            baseline_half_life: d.baseline_half_life,
            warmup: self.warmup.map_or(d.warmup, |v| v.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file = StormOverrides {
            min_rate: Some(Positive(10.0)),
            window: Some(Dur(Duration::from_secs(9))),
            ..Default::default()
        };
        let flags = StormOverrides { min_rate: Some(Positive(2.0)), ..Default::default() };
        let s = flags.or(&file).resolve();
        assert_eq!(s.min_rate, 2.0);
        assert_eq!(s.window, Duration::from_secs(9));
        assert_eq!(s.hold_down, StormSettings::default().hold_down);
    }
}
