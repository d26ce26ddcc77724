use super::*;
use crate::model::destinations::{Evidence, Tracker};
use crate::model::pools::{tests_support::pool, Pool};
use crate::model::services;
use monitor_common::PoolStats;

fn tracker() -> Tracker {
    Tracker::new(DestinationSaturatedRule::default(), DependencyFailingRule::default(), NearCeilingRule::default())
}

/// A redis pool of `comm` in cgroup `/comm` holding `active`, with `attempts` connects of which
/// `closed_young` were hung up on young and `refused` refused.
fn p(comm: &str, active: i64, attempts: u64, closed_young: u64, refused: u64) -> Pool {
    let mut s =
        PoolStats { attempts, died_server_closed: closed_young, short_lived: closed_young, ..Default::default() };
    s.failures[0] = refused;
    s.resets_received = refused;
    Pool { cgroup: format!("/{comm}"), stats: Some(s), ..pool(comm, active) }
}

fn judge(t: &mut Tracker, now: f64, pools: &[Pool]) -> (bool, bool) {
    let d = t.update(now, pools, true, false);
    let d = &d[0];
    let (sat, _) = saturated(d, &DestinationSaturatedRule::default(), None);
    let (dep, _) = dependency_failing(d, &DependencyFailingRule::default(), None);
    (sat, dep)
}

#[test]
fn a_server_at_its_ceiling_is_saturated_at_four_rejections_a_second() {
    let mut t = tracker();
    // Grows to 50 in 20 s, then every new connection (4/s) is hung up on young.
    let mut fired = None;
    for step in 0..12 {
        let now = step as f64 * 5.0;
        let (active, attempts, rejected) = if now <= 20.0 {
            ((now * 2.5) as i64, (now * 2.5) as u64, 0)
        } else {
            (50, 50 + ((now - 20.0) * 4.0) as u64, ((now - 20.0) * 4.0) as u64)
        };
        let (sat, _) = judge(&mut t, now, &[p("api", active, attempts, rejected, 0)]);
        if sat && fired.is_none() {
            fired = Some(now);
        }
    }
    // First rejections at 20 s; seen at 25 s, sustained at 30 s.
    assert_eq!(fired, Some(30.0));
    let d = t.update(60.0, &[p("api", 50, 210, 160, 0)], true, false);
    assert_eq!(d[0].ceiling_observed, Some(50));
    let (_, ann) = saturated(&d[0], &DestinationSaturatedRule::default(), Some(64.0));
    assert_eq!(ann["ceiling_observed"], "50");
    assert_eq!(ann["ceiling_configured"], "64");
    assert_eq!(ann["top_workloads"], "/api=50");
}

#[test]
fn healthy_pools_and_a_dead_server_are_not_saturated() {
    let mut t = tracker();
    for step in 0..12 {
        let now = step as f64 * 5.0;
        // Steady 20 connections, no rejections.
        let (sat, dep) = judge(&mut t, now, &[p("api", 20, 20 + step, 0, 0)]);
        assert!(!sat && !dep, "healthy at {now}");
    }
    let mut t = tracker();
    for step in 0..12 {
        let now = step as f64 * 5.0;
        // Nothing held, everything refused: a dependency down, not a server at its ceiling.
        let (sat, _) = judge(&mut t, now, &[p("api", 0, step * 10, 0, step * 10)]);
        assert!(!sat, "dead server called saturated at {now}");
    }
}

#[test]
fn a_pool_still_growing_is_not_saturated() {
    let mut t = tracker();
    for step in 0..12 {
        let now = step as f64 * 5.0;
        // Grows 10 every 5 s while a few connects are refused.
        let (sat, _) = judge(&mut t, now, &[p("api", 10 * step as i64, 20 * step, 0, 2 * step)]);
        assert!(!sat, "growing pool called saturated at {now}");
    }
}

#[test]
fn three_workloads_failing_against_one_destination_is_a_failing_dependency_one_is_not() {
    let mut t = tracker();
    let mut one = tracker();
    let mut fired = None;
    for step in 0..8u64 {
        let now = step as f64 * 5.0;
        let f = if step >= 2 { (step - 1) * 3 } else { 0 };
        let pools = [p("a", 0, 10 + f, 0, f), p("b", 0, 10 + f, 0, f), p("c", 0, 10 + f, 0, f)];
        let (_, dep) = judge(&mut t, now, &pools);
        if dep && fired.is_none() {
            fired = Some(now);
        }
        let (_, alone) = judge(&mut one, now, &pools[..1]);
        assert!(!alone, "a single workload fired at {now}");
    }
    assert_eq!(fired, Some(10.0));
    let d = t.update(40.0, &[p("a", 0, 40, 0, 30), p("b", 0, 40, 0, 30), p("c", 0, 40, 0, 30)], true, false);
    let (_, ann) = dependency_failing(&d[0], &DependencyFailingRule::default(), Some("service data/redis".into()));
    assert_eq!(ann["workloads_count"], "3");
    assert_eq!(ann["workloads"], "/a, /b, /c");
    assert!(ann["summary"].starts_with("service data/redis (127.0.0.1:6379)"), "{ann:?}");
}

#[test]
fn other_services_hanging_up_young_is_not_evidence() {
    let mut q = p("web", 5, 100, 100, 0);
    q.service = services::OTHER.into();
    assert_eq!(Evidence::of(&q).rejected(), 0);
    assert_eq!(Evidence::of(&p("web", 5, 100, 100, 0)).rejected(), 100);
}

#[test]
fn near_ceiling_fires_on_fast_growth_before_the_ceiling() {
    let mut t = tracker();
    let rule = NearCeilingRule::default();
    let mut fired = None;
    // 0 -> 100 in 60 s against a ceiling of 100.
    for step in 0..=12 {
        let now = step as f64 * 5.0;
        let active = (now * 100.0 / 60.0) as i64;
        let d = t.update(now, &[p("api", active, active as u64, 0, 0)], true, false);
        if near_ceiling(&d[0], &rule, 100.0).0 && fired.is_none() {
            fired = Some(active);
        }
    }
    assert!(fired.is_some_and(|a| a < 100), "fired at {fired:?}");
    // A steady pool at half the ceiling does not fire.
    let mut t = tracker();
    for step in 0..12 {
        let d = t.update(step as f64 * 5.0, &[p("api", 50, 50, 0, 0)], true, false);
        assert!(!near_ceiling(&d[0], &rule, 100.0).0);
    }
}

#[test]
fn a_stray_rejection_while_warming_up_does_not_hide_the_ceiling_later() {
    let mut t = tracker();
    let mut fired = None;
    for step in 0..12u64 {
        let now = step as f64 * 5.0;
        // One connection hung up on young at 5 s while 5 were held; then growth to 50 by 20 s,
        // and from 25 s every new connection is rejected, 4 a second, without a quiet interval.
        let active = ((step * 12) as i64).min(50);
        let rejected = if step >= 1 { 1 } else { 0 } + if step >= 5 { (step - 4) * 20 } else { 0 };
        let (sat, _) = judge(&mut t, now, &[p("api", active, 60 + step * 20, rejected, 0)]);
        if sat && fired.is_none() {
            fired = Some(now);
        }
    }
    assert!(fired.is_some_and(|f| f <= 35.0), "fired at {fired:?}");
}
