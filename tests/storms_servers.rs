//! Integration tests for connmon's retry-storm detector, part 2: clients retrying against real
//! peers. Real retry behaviour from client programs written for these tests (this binary
//! re-executed, see `common::storm_clients`, plus the pool tests' churn and hold clients from
//! `common::client`), against a listener with backlog 1 that never accepts and redis-server
//! (healthy, and turned away by `--maxclients`). Each client has a process name and a cgroup of
//! its own, so every assertion filters connmon's series by that client's pool. What the clients
//! saw (timeouts, Redis replies) is the truth to compare with. The closed-port scenarios are in
//! tests/storms.rs. Needs root.
//!
//! Every agent traces every connection on the host, and the detector's timing figures ride on a
//! ring buffer of failed attempts that a flood of failures elsewhere can overflow; so the tests that
//! flood (healthy churn, maxclients) run alone within this binary (see `common::storm_lock`).

use connmon::export::LISTEN_DROPS;
use connmon_test_support as common;

use std::time::{Duration, Instant, SystemTime};

use common::agent_log::{lines_with, log_time, secs_between};
use common::scrape::scrape_until;
use common::storm_clients::*;
use common::storm_lock::{alone, beside_others};
use common::storm_view::*;
use common::*;

/// The pool tests' client process (does nothing in a normal run; see `common::client`).
#[test]
fn client_entry() {
    client_main()
}

/// The storm client process (does nothing in a normal run; see `common::storm_clients`).
#[test]
fn storm_client_entry() {
    storm_client_main()
}

const MAXCLIENTS_ERR: &str = "-ERR max number of clients reached";

// -------------------------------------------------------------------------------------------------
// 2.

#[test]
fn backlog_one_never_accepting_is_flagged() {
    let _g = beside_others();
    let agent = Agent::start(&[]);
    let ns = Netns::new();
    let port = unique_port();
    let addr = local(port);
    let _listener = ns.run(|| listen_tcp(addr, 1));
    let ino = ns.inode().to_string();
    let port_s = port.to_string();
    let listener = [("netns", ino.as_str()), ("port", port_s.as_str())];
    let drops_before = scrape_until(
        &agent,
        deadline(15),
        &format!("the agent to export {LISTEN_DROPS} for {addr} in {}", ns.name()),
        |s| sample(s, LISTEN_DROPS, &listener).ok_or_else(|| "absent".to_string()),
    );

    let mut c = StormClient::spawn("sbl", addr, StormMode::ConnectTimeout { threads: 4, timeout_ms: 200 }, Some(&ns));
    let p = c.pool();
    let (took, v) = wait_storm(&agent, &p, 1.0, c.started, c.started + Duration::from_secs(15));
    eprintln!("backlog 1: {p} flagged {:.2}s after the client started: {v}", took.as_secs_f64());
    assert!(
        v.syn_retrans.unwrap_or(0.0) > 0.0 || v.aborted.unwrap_or(0.0) > 0.0,
        "{p}: SYNs into a full accept queue are dropped, yet neither SYN retransmits nor aborted connects: {v}"
    );

    let ss_before = ss_listener(&ns, "127.0.0.1", port).expect("ss lost the listener");
    let s = agent.samples();
    let ss_after = ss_listener(&ns, "127.0.0.1", port).expect("ss lost the listener");
    let drops = sample_expect(&s, LISTEN_DROPS, &listener);
    eprintln!(
        "backlog 1: listener {addr}: {LISTEN_DROPS} {drops_before} -> {drops} (ss: {ss_before:?} .. {ss_after:?})"
    );
    assert!(
        drops > drops_before,
        "{LISTEN_DROPS} of {addr} did not increase ({drops_before} -> {drops}); ss: {ss_after:?}"
    );
    assert!(
        ss_before.drops as f64 <= drops && drops <= ss_after.drops as f64,
        "{LISTEN_DROPS} {drops} is not within ss's bracket [{}, {}]",
        ss_before.drops,
        ss_after.drops
    );
    // From the server's side the same storm: nearly every attempt on the listener is a drop.
    let storm_labels = [listener[0], listener[1], ("target", "listener")];
    let listener_storm =
        scrape_until(&agent, deadline(10), &format!("{RETRY_STORM}{{target=\"listener\"}} == 1 for {addr}"), |s| {
            match sample(s, RETRY_STORM, &storm_labels) {
                Some(v) if v == 1.0 => Ok(v),
                other => Err(format!("{other:?}")),
            }
        });
    let listener_line = lines_with(
        &agent.stderr(),
        &["retry_storm=start target=listener ".to_string(), format!("netns={ino} "), format!(" port={port} ")],
    )
    .into_iter()
    .next();
    eprintln!(
        "backlog 1: listener {addr} in a storm too ({RETRY_STORM}={listener_storm}); agent logged: {listener_line:?}"
    );

    let r = c.stop();
    eprintln!(
        "backlog 1: client made {} attempts in {:.1}s ({:.1}/s): {:?}",
        r.attempts,
        r.elapsed_s,
        r.attempts as f64 / r.elapsed_s,
        r.outcomes
    );
    assert!(r.outcome("timeout") > 0, "test setup: no connect timed out against the full queue: {:?}", r.outcomes);
    let v = scrape_until(
        &agent,
        deadline(10),
        &format!("{p}: attempts = {} as the client counted, and its cgroup label", r.attempts),
        |s| {
            let v = StormView::of(&p, s);
            if v.attempts == Some(r.attempts as f64) && v.cgroup_is(&p) {
                Ok(v)
            } else {
                Err(v.to_string())
            }
        },
    );
    eprintln!("backlog 1: after the stop: {v}");
}

// -------------------------------------------------------------------------------------------------
// 4.

#[test]
fn healthy_churn_against_redis_is_never_flagged() {
    let _g = alone();
    let redis = Redis::start(free_local_port(), &[]);
    let dst = redis.addr();
    let agent = Agent::start(&[]);
    let mut c = ClientProc::spawn(ClientSpec::new(
        "sch",
        dst,
        Proto::Redis,
        Mode::Churn { count: 100_000_000, max_secs: 30.0 },
    ));
    let p = PoolRef::of(&c, dst);
    let t0 = Instant::now();
    let mut views: Vec<(f64, StormView)> = Vec::new();
    // One scrape a second, on a fixed schedule (a scrape itself takes a while on a busy host).
    let cycles: u64 = loop {
        views.push((t0.elapsed().as_secs_f64(), StormView::of(&p, &agent.samples())));
        let next = t0 + Duration::from_secs(views.len() as u64);
        if let Some(n) = c.try_expect("done", next.saturating_duration_since(Instant::now())) {
            break n.parse().expect("done N");
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the churn client is still running after 60 s");
    };
    let churned = t0.elapsed();
    c.exit();
    let n = cycles as f64;
    let fin = scrape_until(&agent, deadline(20), &format!("{p}: {cycles} opens and closes counted"), |s| {
        let v = StormView::of(&p, s);
        if v.opens == Some(n) && v.closes == Some(n) {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    });
    for (t, v) in views.iter().step_by(5) {
        eprintln!("churn: t={t:5.2}s {v}");
    }
    eprintln!(
        "churn: {cycles} cycles in {:.1}s ({:.0}/s); final: {fin}",
        churned.as_secs_f64(),
        n / churned.as_secs_f64()
    );

    let seen: Vec<f64> = views.iter().filter_map(|(_, v)| v.storm).collect();
    assert!(views.iter().all(|(_, v)| !v.in_storm()), "{p}: healthy churn was flagged as a retry storm at some scrape");
    assert!(
        seen.len() >= 25,
        "{p}: {RETRY_STORM} present in only {} of {} scrapes (want >= 25)",
        seen.len(),
        views.len()
    );
    assert!(n > 1000.0, "{p}: only {cycles} connections opened; churn should be fast");
    assert_eq!(fin.failures, 0.0, "{p}: a healthy Redis refused nothing: {fin}");
    assert_eq!(fin.died_young, Some(0.0), "{p}: the client closed every connection itself; none died young: {fin}");
    let short = fin.short_lived.unwrap_or(0.0);
    assert!(short > 1000.0 && short <= n, "{p}: churn should show in {SHORT_LIVED} (got {short} of {cycles}): {fin}");
    let worst_bad = views.iter().filter_map(|(_, v)| v.bad).fold(0.0, f64::max);
    let worst_score = views.iter().filter_map(|(_, v)| v.score).fold(0.0, f64::max);
    eprintln!(
        "churn: {RETRY_STORM} = 0 at all {} scrapes that had it ({} in all); highest {BAD_RATIO} {worst_bad}, highest overall score {worst_score}",
        seen.len(),
        views.len()
    );
}

// -------------------------------------------------------------------------------------------------
// 5.

#[test]
fn redis_maxclients_storm_starts_and_ends() {
    let _g = alone();
    let redis = Redis::start(free_local_port(), &["--maxclients", "2"]);
    let dst = redis.addr();
    // Redis::start's own PING connection must be gone before the holders take both slots.
    poll_until(deadline(10), "redis-server to have no clients", || match redis.connected_clients_but_me() {
        0 => Ok(()),
        n => Err(format!("{n} clients")),
    });
    let holders = ClientProc::spawn(ClientSpec::new("shd", dst, Proto::Redis, Mode::Hold { count: 2 }));
    let hold_down = 5;
    let agent = Agent::start(&["--storm.hold-down", &format!("{hold_down}s")]);

    let mut c = StormClient::spawn("srd", dst, StormMode::RedisReconnect { threads: 4 }, None);
    let p = c.pool();
    let (took, v) = wait_storm(&agent, &p, 1.0, c.started, c.started + Duration::from_secs(10));
    let line = wait_storm_log(&agent, "start", &c.name);
    eprintln!(
        "maxclients: {p} seen flagged {:.2}s after the clients started (logged at {:.2}s): {v}",
        took.as_secs_f64(),
        secs_between(c.started_wall, log_time(&line))
    );
    eprintln!("maxclients: agent logged: {line}");
    assert!(
        took <= Duration::from_secs(10),
        "{p}: {RETRY_STORM} read 1 only {took:?} after the clients started, want within 10 s: {v}"
    );
    let young = v.died_young.unwrap_or(0.0);
    assert!(young > 0.0, "{p}: Redis hangs up on every reconnect, yet {DIED_YOUNG} = {young}: {v}");

    let r = c.stop();
    let stopped = Instant::now();
    eprintln!(
        "maxclients: clients made {} attempts in {:.1}s ({:.0}/s): {:?}",
        r.attempts,
        r.elapsed_s,
        r.attempts as f64 / r.elapsed_s,
        r.outcomes
    );
    assert!(
        r.outcome(MAXCLIENTS_ERR) * 2 > r.attempts,
        "test setup: Redis should turn most reconnects away with {MAXCLIENTS_ERR:?}: {:?}",
        r.outcomes
    );

    let stopped_wall = SystemTime::now();
    let (calmed, v_end) = wait_storm(&agent, &p, 0.0, stopped, stopped + Duration::from_secs(hold_down + 10));
    let line = wait_storm_log(&agent, "end", &c.name);
    eprintln!(
        "maxclients: storm seen over {:.2}s after the clients stopped (logged at {:.2}s; hold-down {hold_down}s): {v_end}",
        calmed.as_secs_f64(),
        secs_between(stopped_wall, log_time(&line))
    );
    eprintln!("maxclients: agent logged: {line}");
    assert!(
        calmed >= Duration::from_secs(hold_down - 1),
        "{p}: the storm ended {calmed:?} after the clients stopped, sooner than the {hold_down}s hold-down"
    );
    let young_end = v_end.died_young.unwrap_or(0.0);
    assert!(young_end > young, "{p}: {DIED_YOUNG} did not grow while the storm went on ({young} -> {young_end})");
    drop(holders);
}
