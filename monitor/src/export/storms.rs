//! Retry-storm series: the storm flag and its score per pool and per listener, the retry
//! backoff and jitter estimates, and the detector's windowed attempt rate and failure ratio.
use std::{collections::HashMap, sync::Arc};

use monitor_common::PoolKey;
use prometheus_client::registry::Registry;

use super::{budget::Level, float_family, gauge_family, Labels, Shown};
use crate::{model::listeners::ListenerId, model::storms::Signals};

pub const RETRY_STORM: &str = "connmon_retry_storm";
pub const RETRY_STORM_SCORE: &str = "connmon_retry_storm_score";
pub const POOL_BACKOFF: &str = "connmon_pool_retry_backoff_ratio";
pub const POOL_JITTER: &str = "connmon_pool_retry_jitter";
pub const POOL_ATTEMPT_RATE: &str = "connmon_pool_connect_attempt_rate";
pub const POOL_BAD_RATIO: &str = "connmon_pool_bad_attempt_ratio";

/// Storm series for exported pools (`labels` are each pool row's labels with the signals of the
/// strongest-scoring pool folded into it) and for listeners. A summary has the storm flag only,
/// and only while the storm lasts.
pub(crate) fn register(
    reg: &mut Registry,
    pools: &[(Arc<Labels>, Signals, Level)],
    listeners: &[Shown<'_>],
    listener_signals: &HashMap<ListenerId, Signals>,
) {
    let storm = gauge_family(reg, RETRY_STORM, "1 while the pool or listener is in a retry storm (attempt rate high against its baseline, most attempts failing or dying young, no effective backoff), 0 once it has been calm for the hold-down period");
    let score = float_family(reg, RETRY_STORM_SCORE, "How strongly each part of the retry-storm signature matches, 0 to 1: rate, failures, backoff, and overall (the weakest part)");
    let backoff = float_family(reg, POOL_BACKOFF, "Growth of the gap between a pool's consecutive failed attempts per retry: 1 = retries at a flat interval, 2 = doubling");
    let jitter = float_family(reg, POOL_JITTER, "Variation of a pool's retry gaps around their trend (coefficient of variation): 0 = perfectly regular, no jitter");
    let rate = float_family(reg, POOL_ATTEMPT_RATE, "Connect attempts per second of the pool over the detector window");
    let bad = float_family(reg, POOL_BAD_RATIO, "Share of the pool's attempts over the detector window that went bad: failed, reset young, or (once the pool has a baseline) hung up on young by the server");
    let emit = |target: &'static str, labels: &Arc<Labels>, s: &Signals, level: Level| {
        if level == Level::Summary && !s.in_storm {
            return;
        }
        storm.with(labels, &[("target", target)]).set(i64::from(s.in_storm));
        if level == Level::Summary {
            return;
        }
        for (component, v) in [
            ("rate", s.score.rate),
            ("failures", s.score.failures),
            ("backoff", s.score.backoff),
            ("overall", s.score.overall),
        ] {
            score.with(labels, &[("target", target), ("component", component)]).set(v);
        }
    };
    for (labels, s, level) in pools {
        emit("pool", labels, s, *level);
        if *level == Level::Summary {
            continue;
        }
        rate.get_or_create(labels).set(s.attempt_rate);
        bad.get_or_create(labels).set(s.bad_ratio);
        if let Some(e) = s.estimate {
            backoff.get_or_create(labels).set(e.backoff);
            jitter.get_or_create(labels).set(e.jitter);
        }
    }
    for Shown { l, level, id, .. } in listeners {
        if let Some(s) = listener_signals.get(&l.id) {
            emit("listener", id, s, *level);
        }
    }
}

/// The signals of the strongest-scoring pool among `keys` (merged rows show their worst part).
pub fn strongest<'a>(
    keys: impl IntoIterator<Item = &'a PoolKey>,
    signals: &HashMap<PoolKey, Signals>,
) -> Option<Signals> {
    keys.into_iter()
        .filter_map(|k| signals.get(k))
        .max_by(|a, b| {
            (a.in_storm, a.score.overall)
                .partial_cmp(&(b.in_storm, b.score.overall))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .cloned()
}
