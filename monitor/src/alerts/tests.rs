use super::*;
use crate::config::{Dur, Positive};
use crate::model::pools::tests_support::pool;

fn cfg() -> AlertsConfig {
    let mut c = AlertsConfig::default();
    c.pool_growth.window = Dur(Duration::from_secs(60));
    c.pool_growth.plateau_window = Dur(Duration::from_secs(20));
    c.pool_growth.min_slope_per_min = Positive(6.0);
    c.pool_growth.for_duration = Dur(Duration::from_secs(10));
    c.pool_growth.clear_for = Dur(Duration::from_secs(30));
    c
}

/// Feeds a pool whose size is `f(t)` every 5 s from `from` to `to`; returns (time, change).
fn run(e: &mut Engine, from: u64, to: u64, f: impl Fn(u64) -> i64) -> Vec<(u64, Change)> {
    let none = HashMap::new();
    let none_l = HashMap::new();
    let mut out = Vec::new();
    for t in (from..=to).step_by(5) {
        let pools = [pool("leaky", f(t))];
        let inputs = Inputs {
            pools: &pools,
            listeners: &[],
            namespaces: &[],
            pool_signals: &none,
            listener_signals: &none_l,
            destinations: &[],
            peer_names: &HashMap::new(),
        };
        for c in e.evaluate(t as f64, &inputs) {
            out.push((t, c));
        }
    }
    out
}

/// Evaluates `e` at `t` on `listeners` alone.
fn evaluate_listeners(e: &mut Engine, t: f64, listeners: &[Listener]) -> Vec<Change> {
    let inputs = Inputs {
        pools: &[],
        listeners,
        namespaces: &[],
        pool_signals: &HashMap::new(),
        listener_signals: &HashMap::new(),
        destinations: &[],
        peer_names: &HashMap::new(),
    };
    e.evaluate(t, &inputs)
}

#[test]
fn a_leaking_pool_fires_with_time_to_ceiling_and_resolves_after_a_plateau() {
    let mut ceilings = BTreeMap::new();
    ceilings.insert("redis".to_string(), 1000.0);
    let mut e = Engine::new(cfg(), ceilings);
    // +1 connection per second for 3 minutes, then flat.
    let changes = run(&mut e, 0, 400, |t| t.min(180) as i64);
    let fired: Vec<&(u64, Change)> = changes.iter().filter(|(_, c)| matches!(c, Change::Fired(_))).collect();
    let resolved: Vec<&(u64, Change)> = changes.iter().filter(|(_, c)| matches!(c, Change::Resolved(_))).collect();
    assert_eq!((fired.len(), resolved.len()), (1, 1), "{changes:?}");
    // The window must be 80% full (48 s) and then `for` (10 s) must pass.
    assert!((55..=70).contains(&fired[0].0), "{fired:?}");
    let Change::Fired(v) = &fired[0].1 else { unreachable!() };
    assert_eq!(v.labels["comm"], "leaky");
    assert_eq!(v.annotations["slope_per_minute"], "60.00");
    assert!(v.annotations.contains_key("time_to_ceiling"), "{v:?}");
    // Growth stops at 180 s; the recent slope drops under half the floor within the plateau
    // window, then clear_for (30 s) must pass.
    assert!((190..=240).contains(&resolved[0].0), "{resolved:?}");
}

#[test]
fn a_large_flat_pool_never_fires() {
    let mut e = Engine::new(cfg(), BTreeMap::new());
    let changes = run(&mut e, 0, 600, |t| 500 + (t % 3) as i64);
    assert!(changes.is_empty(), "{changes:?}");
}

#[test]
fn without_a_ceiling_the_alert_says_so() {
    let mut e = Engine::new(cfg(), BTreeMap::new());
    let changes = run(&mut e, 0, 100, |t| t as i64);
    let Some((_, Change::Fired(v))) = changes.first() else { panic!("{changes:?}") };
    assert!(v.annotations["description"].contains("no ceiling"), "{v:?}");
}

#[test]
fn a_flapping_condition_does_not_flap_the_alert() {
    let mut c = cfg();
    c.accept_queue_saturated.for_duration = Dur(Duration::from_secs(10));
    c.accept_queue_saturated.clear_for = Dur(Duration::from_secs(10));
    let mut e = Engine::new(c, BTreeMap::new());
    let mut listener = crate::model::listeners::tests_support::listener(4, 4);
    let mut events = Vec::new();
    for t in 0..60u64 {
        // Full for 20 s, then alternating every second for 40 s.
        listener.depth = if t < 20 || t % 2 == 0 { 4 } else { 0 };
        let ls = [listener.clone()];
        for ch in evaluate_listeners(&mut e, t as f64, &ls) {
            events.push((t, ch));
        }
    }
    let names: Vec<(u64, bool)> = events.iter().map(|(t, c)| (*t, matches!(c, Change::Fired(_)))).collect();
    assert_eq!(names, vec![(10, true)], "fires once after for, never resolves while flapping: {events:?}");
}

/// The queued count feeds two rules (in-flight growth and slow failure): one sample per
/// evaluation in one series, so neither sees each evaluation twice.
#[test]
fn a_listener_series_gets_one_sample_per_evaluation() {
    let mut e = Engine::new(cfg(), BTreeMap::new());
    let mut listener = crate::model::listeners::tests_support::listener(1, 8);
    for t in 0..4u64 {
        listener.queued = Some(10 * t);
        let ls = [listener.clone()];
        evaluate_listeners(&mut e, t as f64 * 5.0, &ls);
    }
    let kinds = &e.series[&listener_labels(&listener)];
    for kind in ["queued", "abandoned", "drops", "established", "depth"] {
        assert_eq!(kinds[kind].len(), 4, "{kind}: {:?}", kinds[kind]);
    }
}

/// Feeds one listener every 5 s up to `to` with the default rules; returns when InFlightGrowth
/// fired, if it did. `established(t)` and `queued(t)` (connections queued since start) shape it.
fn inflight_fired(to: u64, established: impl Fn(u64) -> u32, queued: impl Fn(u64) -> u64) -> Option<u64> {
    let mut e = Engine::new(AlertsConfig::default(), BTreeMap::new());
    let mut listener = crate::model::listeners::tests_support::listener(0, 128);
    for t in (0..=to).step_by(5) {
        listener.established = established(t);
        listener.queued = Some(queued(t));
        let ls = [listener.clone()];
        let fired = evaluate_listeners(&mut e, t as f64, &ls)
            .into_iter()
            .any(|c| matches!(c, Change::Fired(a) if a.alertname == "InFlightGrowth"));
        if fired {
            return Some(t);
        }
    }
    None
}

#[test]
fn in_flight_work_growing_at_a_steady_accept_rate_fires_after_the_window_and_for() {
    // Little's law after a spike: 5 accepts/s, and 2 more connections held every minute.
    let at = inflight_fired(900, |t| 40 + (t / 30) as u32, |t| 5 * t);
    // 80% of the 10m window (480 s) must be seen, then `for` (2m) must pass.
    assert!(at.is_some_and(|t| (600..=620).contains(&t)), "fired at {at:?}");
}

#[test]
fn in_flight_work_that_is_flat_or_follows_the_load_stays_silent() {
    assert_eq!(inflight_fired(900, |_| 40, |t| 5 * t), None, "flat at 40");
    // Connections grow because arrivals grow: the accept rate doubles over the window.
    assert_eq!(inflight_fired(900, |t| 40 + (t / 30) as u32, |t| t * t / 120), None, "growing with the load");
}
