use std::time::Duration;

use super::*;

const MS: u64 = 1_000_000;

/// A tiny deterministic generator, so tests need no crate and always see the same "random" gaps.
fn lcg(seed: &mut u64) -> f64 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 11) as f64) / ((1u64 << 53) as f64)
}

fn times(gaps: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let mut t = 1_000 * MS;
    let mut out = vec![t];
    for g in gaps {
        t += g;
        out.push(t);
    }
    out
}

#[test]
fn flat_retries_show_no_backoff_and_no_jitter() {
    let e = estimate(&times(std::iter::repeat_n(10 * MS, 20))).unwrap();
    assert!((e.backoff - 1.0).abs() < 1e-9, "{e:?}");
    assert!(e.jitter < 1e-9, "{e:?}");
}

#[test]
fn exponential_backoff_with_full_jitter_shows_growth_and_jitter() {
    let mut seed = 7;
    let gaps: Vec<u64> = (0..12).map(|i| ((lcg(&mut seed) * 10.0 * 2f64.powi(i)) as u64 + 1) * MS).collect();
    let e = estimate(&times(gaps)).unwrap();
    assert!(e.backoff > 1.5 && e.backoff < 3.0, "{e:?}");
    assert!(e.jitter > 0.2, "{e:?}");
}

#[test]
fn doubling_without_jitter_is_exactly_two() {
    let e = estimate(&times((0..8).map(|i| (10 << i) * MS))).unwrap();
    assert!((e.backoff - 2.0).abs() < 1e-9, "{e:?}");
    assert!(e.jitter < 1e-9, "{e:?}");
}

#[test]
fn too_few_attempts_give_no_estimate() {
    assert_eq!(estimate(&times([MS, MS])), None);
}

fn cfg() -> StormSettings {
    StormSettings { for_duration: Duration::from_secs(2), hold_down: Duration::from_secs(5), ..Default::default() }
}

/// Drives a detector one tick per second with `per_sec` attempts, `bad_share` of them failing
/// `gap_ms` apart; returns the transitions with their times.
fn drive(
    d: &mut Detector,
    from: u64,
    secs: u64,
    per_sec: u64,
    bad_share: f64,
    gap_ms: u64,
    r: &mut Reading,
) -> Vec<(u64, Transition)> {
    let mut out = Vec::new();
    for s in from..from + secs {
        r.attempts += per_sec;
        let bad = (per_sec as f64 * bad_share) as u64;
        r.hard += bad;
        for k in 0..bad {
            d.failure(s * 1000 * MS + k * gap_ms * MS);
        }
        if let Some(t) = d.tick(s as f64, *r, &cfg()) {
            out.push((s, t));
        }
    }
    out
}

#[test]
fn tight_failing_loop_starts_a_storm_after_for_and_ends_after_hold_down() {
    let mut d = Detector::default();
    let mut r = Reading::default();
    let started = drive(&mut d, 0, 10, 100, 1.0, 10, &mut r);
    assert_eq!(started.first().map(|t| t.1), Some(Transition::Started), "{started:?}");
    assert!(started[0].0 <= 4, "flagged within a few seconds: {started:?}");
    assert!(d.signals.in_storm && d.signals.score.overall > 0.9, "{:?}", d.signals);
    // The clients stop: nothing happens any more.
    let calm = drive(&mut d, 10, 30, 0, 0.0, 0, &mut r);
    assert_eq!(calm.iter().map(|t| t.1).collect::<Vec<_>>(), vec![Transition::Ended], "{calm:?}");
    assert!(!d.signals.in_storm);
}

#[test]
fn healthy_churn_is_never_a_storm() {
    let mut d = Detector::default();
    let mut r = Reading::default();
    let t = drive(&mut d, 0, 60, 5000, 0.0, 0, &mut r);
    assert!(t.is_empty(), "{t:?}");
    assert_eq!(d.signals.score.failures, 0.0);
}

#[test]
fn a_short_blip_under_the_for_duration_does_not_flap() {
    let mut d = Detector::default();
    let mut r = Reading::default();
    drive(&mut d, 0, 20, 10, 0.0, 0, &mut r);
    let t = drive(&mut d, 20, 1, 200, 1.0, 5, &mut r);
    let t2 = drive(&mut d, 21, 20, 10, 0.0, 0, &mut r);
    assert!(t.is_empty() && t2.is_empty(), "{t:?} {t2:?}");
}

#[test]
fn backoff_clients_are_not_flagged() {
    let mut d = Detector::default();
    let mut r = Reading::default();
    // Failures whose gaps double: feed them directly, with a high attempt rate.
    for i in 0..10u64 {
        d.failure((1u64 << i) * 10 * MS);
    }
    for s in 0..10 {
        r.attempts += 50;
        r.hard += 50;
        assert_eq!(d.tick(s as f64, r, &cfg()), None);
    }
    assert!(d.signals.estimate.unwrap().backoff > 1.9, "{:?}", d.signals);
    assert_eq!(d.signals.score.backoff, 0.0);
}

#[test]
fn server_hangups_count_only_against_an_established_baseline() {
    let mut d = Detector::default();
    let mut r = Reading::default();
    // A new pool whose server closes every connection young (a server that closes after each
    // response looks the same): not a storm, there is no baseline yet.
    for s in 0..30u64 {
        r.attempts += 500;
        r.soft += 500;
        assert_eq!(d.tick(s as f64, r, &cfg()), None, "tick {s}: {:?}", d.signals);
    }
    // A quiet pool (a held pool reconnecting now and then) whose server starts hanging up on a
    // flood of reconnects: elevated against its baseline, so a storm.
    let mut d = Detector::default();
    let mut r = Reading::default();
    for s in 0..20u64 {
        r.attempts += 1;
        d.tick(s as f64, r, &cfg());
    }
    let mut started = None;
    for s in 20..30u64 {
        r.attempts += 200;
        r.soft += 200;
        for k in 0..20 {
            d.failure(s * 1000 * MS + k * 50 * MS);
        }
        if d.tick(s as f64, r, &cfg()) == Some(Transition::Started) {
            started = Some(s);
        }
    }
    assert!(started.is_some_and(|s| s <= 24), "{:?} {:?}", started, d.signals);
}

#[test]
fn a_pool_whose_whole_traffic_is_rejected_is_a_storm_at_four_a_second() {
    // A pool that grew healthily (connections held), then every reconnect is hung up on young at
    // 4/s, flat: below --storm.min-rate, and its baseline is higher still, yet a storm.
    let mut d = Detector::default();
    let mut r = Reading::default();
    for s in 0..20u64 {
        r.attempts += 10;
        d.tick(s as f64, r, &cfg());
    }
    let mut started = None;
    for s in 20..30u64 {
        r.attempts += 4;
        r.soft += 4;
        for k in 0..4 {
            d.failure(s * 1000 * MS + k * 250 * MS);
        }
        if d.tick(s as f64, r, &cfg()) == Some(Transition::Started) {
            started = Some(s);
        }
    }
    assert!(started.is_some_and(|s| s <= 23), "{started:?} {:?}", d.signals);
    // The same rate rejected with hard evidence from the start (refused): a storm too.
    let mut d = Detector::default();
    let mut r = Reading::default();
    let mut started = None;
    for s in 0..10u64 {
        r.attempts += 3;
        r.hard += 3;
        for k in 0..3 {
            d.failure(s * 1000 * MS + k * 333 * MS);
        }
        if d.tick(s as f64, r, &cfg()) == Some(Transition::Started) {
            started = Some(s);
        }
    }
    assert!(started.is_some_and(|s| s <= 4), "{started:?} {:?}", d.signals);
    // One refused attempt a second, or a slower pace: below the floor, never a storm.
    let mut d = Detector::default();
    let mut r = Reading::default();
    for s in 0..30u64 {
        r.attempts += 1;
        r.hard += 1;
        d.failure(s * 1000 * MS);
        assert_eq!(d.tick(s as f64, r, &cfg()), None, "tick {s}: {:?}", d.signals);
    }
}
