//! Pushes alerts to Alertmanager (API v2). A thread of its own holds the latest state, so rule
//! evaluation never waits on the network: firing alerts are sent again every `resend` (Alertmanager
//! forgets alerts that are not), resolved ones are kept until a push carrying their `endsAt`
//! succeeds and then sent again with every push for `RESOLVED_RETENTION`, and a failing
//! Alertmanager is retried with exponential backoff and full jitter.
//!
//! Why resolved notices are sent again after delivery (as Prometheus does for 15 minutes): an
//! Alertmanager that hung holds requests the agent gave up on, and may process a stale one, still
//! carrying the alert as firing, after the newer push that resolved it. It orders by arrival, so
//! the stale push wins and the alert stays active until its 5-minute timeout, unresolved in every
//! receiver. The next resend of the resolved notice puts it right.
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use log::{info, warn};
use serde::Serialize;

use crate::alerts::{AlertView, Labels};

/// One alert in Alertmanager's v2 format.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AmAlert {
    pub labels: Labels,
    pub annotations: Labels,
    pub starts_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
}

/// Pure: an alert view as Alertmanager wants it (the alert name becomes the `alertname` label).
pub fn to_am(v: &AlertView, generator_url: &str) -> AmAlert {
    let mut labels = v.labels.clone();
    labels.insert("alertname".into(), v.alertname.clone());
    AmAlert {
        labels,
        annotations: v.annotations.clone(),
        starts_at: v.since.clone(),
        ends_at: v.ended.clone(),
        generator_url: generator_url.into(),
    }
}

#[derive(Default)]
struct State {
    firing: Vec<AmAlert>,
    resolved: BTreeMap<String, Resolved>,
    changed: bool,
}

/// A resolved notice and when a push carrying it first succeeded.
struct Resolved {
    alert: AmAlert,
    delivered: Option<Instant>,
}

/// How long a delivered resolved notice is still sent with every push (Prometheus's figure).
pub const RESOLVED_RETENTION: Duration = Duration::from_secs(15 * 60);

impl State {
    /// Resolved notices not yet delivered.
    fn undelivered(&self) -> usize {
        self.resolved.values().filter(|r| r.delivered.is_none()).count()
    }

    /// Forgets delivered notices older than the retention, and those whose alert fires again.
    fn expire(&mut self, now: Instant) {
        let firing: std::collections::HashSet<String> = self.firing.iter().map(|a| key(&a.labels)).collect();
        self.resolved.retain(|k, r| {
            !firing.contains(k) && r.delivered.is_none_or(|at| now.duration_since(at) < RESOLVED_RETENTION)
        });
    }

    /// Makes room for one more notice: a delivered one goes first, else the oldest-keyed
    /// undelivered one (counted as dropped). Returns whether an undelivered one was dropped.
    fn make_room(&mut self) -> bool {
        if self.resolved.len() < MAX_RESOLVED {
            return false;
        }
        if let Some(k) = self.resolved.iter().find(|(_, r)| r.delivered.is_some()).map(|(k, _)| k.clone()) {
            self.resolved.remove(&k);
            return false;
        }
        self.resolved.pop_first();
        true
    }
}

fn key(labels: &Labels) -> String {
    format!("{labels:?}")
}

/// Resolved alerts kept for delivery while Alertmanager is unreachable at most; beyond it the
/// oldest-keyed is dropped (and counted). Firing alerts are not queued: each push carries the
/// current set, so a long outage costs nothing but the resolved notices.
pub const MAX_RESOLVED: usize = 1000;

/// What the sender did, for the agent's metrics.
#[derive(Debug, Default)]
pub struct Counts {
    /// Pushes that reached every Alertmanager.
    pub delivered: AtomicU64,
    /// Pushes that failed for at least one Alertmanager (each is retried).
    pub failed: AtomicU64,
    /// Resolved notices dropped because `MAX_RESOLVED` were waiting.
    pub dropped: AtomicU64,
}

pub struct Notifier {
    shared: Arc<(Mutex<State>, Condvar)>,
    pub counts: Arc<Counts>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl Notifier {
    /// Starts the sender thread for `urls` (Alertmanager base URLs).
    pub fn start(urls: Vec<String>, resend: Duration) -> Self {
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let counts = Arc::new(Counts::default());
        let (worker, c) = (Arc::clone(&shared), Arc::clone(&counts));
        let spawned = std::thread::Builder::new()
            .name("connmon-alertmanager".into())
            .spawn(move || run(&urls, resend, &worker, &c));
        if let Err(e) = spawned {
            warn!("cannot start the Alertmanager sender: {e}; alerts will not be pushed");
        }
        Self { shared, counts }
    }

    /// Resolved notices waiting for delivery (not those delivered and still being resent).
    pub fn queued(&self) -> usize {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner()).undelivered()
    }

    /// Hands over the alerts firing now and those that just resolved. Never blocks on the network.
    pub fn update(&self, firing: Vec<AmAlert>, resolved: Vec<AmAlert>) {
        let (lock, cvar) = &*self.shared;
        let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
        // A new or ended alert is pushed at once; fresher annotations (a pool's growing count)
        // wait for the periodic resend instead of pushing every evaluation.
        let identity = |v: &[AmAlert]| v.iter().map(|a| (a.labels.clone(), a.starts_at.clone())).collect::<Vec<_>>();
        s.changed |= identity(&s.firing) != identity(&firing) || !resolved.is_empty();
        s.firing = firing;
        s.expire(Instant::now());
        for r in resolved {
            let k = key(&r.labels);
            if !s.resolved.contains_key(&k) && s.make_room() {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            }
            s.resolved.insert(k, Resolved { alert: r, delivered: None });
        }
        cvar.notify_one();
    }
}

fn run(urls: &[String], resend: Duration, shared: &(Mutex<State>, Condvar), counts: &Counts) {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).build(),
    );
    let mut last_sent = Instant::now() - resend;
    let mut failures = 0u32;
    let mut rng = seed();
    loop {
        let batch = {
            let (lock, cvar) = shared;
            let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                s.expire(Instant::now());
                let due = last_sent.elapsed() >= resend && !(s.firing.is_empty() && s.resolved.is_empty());
                if s.changed || due {
                    break;
                }
                let wait = resend.saturating_sub(last_sent.elapsed()).max(Duration::from_millis(100));
                s = cvar.wait_timeout(s, wait).unwrap_or_else(|p| p.into_inner()).0;
            }
            s.changed = false;
            let mut batch = s.firing.clone();
            batch.extend(s.resolved.values().map(|r| r.alert.clone()));
            batch
        };
        let delivered = urls.iter().filter(|u| post(&agent, u, &batch)).count();
        last_sent = Instant::now();
        if delivered == urls.len() {
            counts.delivered.fetch_add(1, Ordering::Relaxed);
            if failures > 0 {
                info!("alertmanager: delivering again after {failures} failed attempts");
            }
            failures = 0;
            let (lock, _) = shared;
            let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            for a in batch.iter().filter(|a| a.ends_at.is_some()) {
                if let Some(r) = s.resolved.get_mut(&key(&a.labels)) {
                    r.delivered.get_or_insert(now);
                }
            }
            continue;
        }
        failures += 1;
        counts.failed.fetch_add(1, Ordering::Relaxed);
        // Full jitter: a random wait up to the exponential bound, so restarted agents do not
        // all retry in step against a recovering Alertmanager.
        let bound = Duration::from_secs(1u64 << failures.min(6)).min(MAX_BACKOFF);
        let wait = bound.mul_f64(next_unit(&mut rng));
        if failures == 1 || failures.is_power_of_two() {
            warn!("alertmanager: push failed ({failures} in a row); retrying in {:.1}s", wait.as_secs_f64());
        }
        std::thread::sleep(wait);
        let (lock, _) = shared;
        lock.lock().unwrap_or_else(|p| p.into_inner()).changed = true;
    }
}

fn post(agent: &ureq::Agent, base: &str, batch: &[AmAlert]) -> bool {
    let url = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
    match agent.post(&url).send_json(batch) {
        Ok(_) => true,
        Err(e) => {
            log::debug!("alertmanager {url}: {e}");
            false
        }
    }
}

fn seed() -> u64 {
    let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    t ^ u64::from(std::process::id()).rotate_left(32) | 1
}

/// xorshift64*: jitter needs spread, not cryptographic quality.
fn next_unit(x: &mut u64) -> f64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alertmanager_format() {
        let mut labels = Labels::new();
        labels.insert("comm".into(), "app".into());
        let v = AlertView {
            alertname: "X".into(),
            state: crate::alerts::AlertState::Resolved,
            labels,
            annotations: Labels::new(),
            since: "2026-01-01T00:00:00.000Z".into(),
            ended: Some("2026-01-01T00:05:00.000Z".into()),
        };
        let json = serde_json::to_value(to_am(&v, "http://h:9977/")).unwrap();
        assert_eq!(json["labels"]["alertname"], "X");
        assert_eq!(json["labels"]["comm"], "app");
        assert_eq!(json["startsAt"], "2026-01-01T00:00:00.000Z");
        assert_eq!(json["endsAt"], "2026-01-01T00:05:00.000Z");
        assert_eq!(json["generatorURL"], "http://h:9977/");
    }

    fn alert(name: &str, ended: bool) -> AmAlert {
        let mut labels = Labels::new();
        labels.insert("alertname".into(), name.into());
        AmAlert {
            labels,
            annotations: Labels::new(),
            starts_at: "2026-01-01T00:00:00.000Z".into(),
            ends_at: ended.then(|| "2026-01-01T00:05:00.000Z".into()),
            generator_url: String::new(),
        }
    }

    #[test]
    fn delivered_resolved_notices_are_resent_until_the_retention_ends() {
        let t0 = Instant::now();
        let mut s = State::default();
        let a = alert("A", true);
        s.resolved.insert(key(&a.labels), Resolved { alert: a.clone(), delivered: None });
        assert_eq!(s.undelivered(), 1);
        s.resolved.get_mut(&key(&a.labels)).unwrap().delivered = Some(t0);
        assert_eq!(s.undelivered(), 0, "delivered: no longer waiting");
        s.expire(t0 + RESOLVED_RETENTION - Duration::from_secs(1));
        assert_eq!(s.resolved.len(), 1, "still resent within the retention");
        s.expire(t0 + RESOLVED_RETENTION);
        assert!(s.resolved.is_empty(), "forgotten after the retention");
    }

    #[test]
    fn a_resolved_notice_is_forgotten_when_its_alert_fires_again() {
        let mut s = State::default();
        let a = alert("A", true);
        s.resolved.insert(key(&a.labels), Resolved { alert: a, delivered: Some(Instant::now()) });
        s.firing = vec![alert("A", false)];
        s.expire(Instant::now());
        assert!(s.resolved.is_empty(), "a push must not carry the alert both firing and resolved");
    }

    #[test]
    fn room_is_made_from_delivered_notices_before_undelivered_ones_are_dropped() {
        let mut s = State::default();
        for i in 0..MAX_RESOLVED {
            let a = alert(&format!("A{i:04}"), true);
            let delivered = (i == MAX_RESOLVED - 1).then(Instant::now);
            s.resolved.insert(key(&a.labels), Resolved { alert: a, delivered });
        }
        assert!(!s.make_room(), "a delivered notice makes room without a drop");
        assert_eq!(s.resolved.len(), MAX_RESOLVED - 1);
        let a = alert("B", true);
        s.resolved.insert(key(&a.labels), Resolved { alert: a, delivered: None });
        assert!(s.make_room(), "all undelivered: the oldest-keyed is dropped");
        assert_eq!(s.resolved.len(), MAX_RESOLVED - 1);
        assert!(!s.resolved.contains_key(&key(&alert("A0000", true).labels)));
    }

    #[test]
    fn jitter_is_spread_over_the_unit_interval() {
        let mut x = seed();
        let v: Vec<f64> = (0..1000).map(|_| next_unit(&mut x)).collect();
        assert!(v.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        assert!((0.4..0.6).contains(&mean), "{mean}");
    }
}
