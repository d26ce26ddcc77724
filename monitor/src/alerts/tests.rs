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
    let none = HashMap::new();
    let none_l = HashMap::new();
    let mut listener = crate::model::listeners::tests_support::listener(4, 4);
    let mut events = Vec::new();
    for t in 0..60u64 {
        // Full for 20 s, then alternating every second for 40 s.
        listener.depth = if t < 20 || t % 2 == 0 { 4 } else { 0 };
        let ls = [listener.clone()];
        let inputs = Inputs {
            pools: &[],
            listeners: &ls,
            namespaces: &[],
            pool_signals: &none,
            listener_signals: &none_l,
            destinations: &[],
            peer_names: &HashMap::new(),
        };
        for ch in e.evaluate(t as f64, &inputs) {
            events.push((t, ch));
        }
    }
    let names: Vec<(u64, bool)> = events.iter().map(|(t, c)| (*t, matches!(c, Change::Fired(_)))).collect();
    assert_eq!(names, vec![(10, true)], "fires once after for, never resolves while flapping: {events:?}");
}
