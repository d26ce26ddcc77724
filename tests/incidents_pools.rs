//! The pool-side incidents, replayed with the client libraries that caused them, against real
//! servers, with the agent's DEFAULT settings (no config file; only --alertmanager.url):
//! - an asyncio service creating a task per message, with redis-py's default unbounded pool
//!   (max_connections 2**31), against redis-server with a small `maxclients`: once handlers slow
//!   down the pool grows to the ceiling and every new connection gets redis-py's own
//!   "max number of clients reached". DestinationSaturated must fire within 30 s of the client's
//!   first such error; a bounded twin (max_connections + semaphore + jittered backoff) against
//!   an identical server stays silent for the same time;
//! - the same with psycopg against PostgreSQL at `max_connections` ("too many clients");
//! - three client workloads whose shared dependency (Redis) is stopped: DependencyFailing within
//!   30 s, naming the three; one workload alone against another stopped server stays silent;
//! - a blackholed destination (a listener whose accept queue is full drops every SYN): the
//!   pending-connects gauges equal `ss state syn-sent`.
//!
//! Truth: the client library's own errors and the time it first raised them, `ss`, and the
//! agent's alert list (`since` is when it fired), plus Alertmanager for the Redis case. Clients
//! are python processes (tests/clients/pool_incidents.py, see `common::py_client`), each in a
//! cgroup of its own; every agent sees every pool on the host, so assertions pick destinations by
//! port and pools by process name. Needs root, python3 with redis-py 5 and psycopg 3 (installed
//! by `cargo xtask setup`), redis-server, PostgreSQL 15 and prometheus-alertmanager.

use connmon_test_support as common;

use std::time::Duration;

use common::alert_views::*;
use common::alertmanager::*;
use common::incidents::*;
use common::py_client::PyClient;
use common::scrape::{scrape_until, sum_of};
use common::*;

#[test]
fn redis_unbounded_asyncio_pool_at_maxclients_fires_destination_saturated() {
    let am = Alertmanager::start();
    let agent = Agent::start(&["--alertmanager.url", &am.url()]);
    let maxclients = 24;
    let redis = Redis::start(free_local_port(), &["--maxclients", &maxclients.to_string()]);
    let twin_redis = Redis::start(free_local_port(), &["--maxclients", &maxclients.to_string()]);
    for r in [&redis, &twin_redis] {
        poll_until(deadline(10), "redis-server to have no clients", || match r.connected_clients_but_me() {
            0 => Ok(()),
            n => Err(format!("{n} clients")),
        });
    }
    let (port, twin_port) = (redis.port().to_string(), twin_redis.port().to_string());
    let common_args = ["--rate", "4", "--hold", "30", "--fast-secs", "3"];
    let mut bad = PyClient::spawn("rdu", "redis-unbounded", &[&["--port", &port][..], &common_args].concat(), None);
    let twin = PyClient::spawn(
        "rdb",
        "redis-bounded",
        &[&["--port", &twin_port, "--limit", "8"][..], &common_args].concat(),
        None,
    );
    assert_eq!(bad.figure("max_connections"), Some(2f64.powi(31)), "redis-py's default pool is unbounded");

    let (took, fired) = saturation(&agent, "redis", &mut bad, redis.port(), REDIS_MAXCLIENTS, &twin, twin_redis.port());
    check_saturated(&agent, "redis", &fired, &bad, redis.port(), f64::from(maxclients));
    let labels = dest_labels("redis", &port);
    let in_am = wait_am_alert(&am, deadline(20), DESTINATION_SATURATED, &labels);
    eprintln!("redis: Alertmanager has it: {}", in_am["annotations"]);

    // The retry-storm floor: the pool's whole traffic is rejected at about 4/s, with no backoff.
    let first = bad.first_error(REDIS_MAXCLIENTS).expect("first error");
    let storm = scrape_until(&agent, instant_at(first + BOUND_SECS), &format!("{RETRY_STORM} for {}", bad.name), |s| {
        match sum_of(s, RETRY_STORM, &[("comm", &bad.name), ("target", "pool")]) {
            Some(1.0) => Ok(now_epoch() - first),
            v => Err(format!("{v:?}")),
        }
    });
    eprintln!("redis: {} flagged as a retry storm {storm:.1}s after the first rejection (seen by a scrape)", bad.name);

    // The twin stays silent for as long as the unbounded pool has been rejected, at least 30 s.
    let until = first + took.max(BOUND_SECS) + 5.0;
    while now_epoch() < until {
        assert_silent(&agent, &twin_port, &twin.name, "after the unbounded pool's alert");
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(twin.all_errors(), serde_json::json!({}), "the bounded twin saw errors from redis-py");
    check_rejections_counted(&agent, "redis", &mut bad, true);
    let ok = twin.figure("ok").unwrap_or(0.0);
    assert!(ok >= 5.0, "the bounded twin completed only {ok} messages");
    eprintln!(
        "redis: bounded twin {}: {ok} messages done, no error, no alert over {:.0}s; unbounded {}: errors {}",
        twin.name,
        twin.started.elapsed().as_secs_f64(),
        bad.name,
        bad.all_errors()
    );
}

#[test]
fn postgres_at_max_connections_fires_destination_saturated() {
    let agent = Agent::start(&[]);
    let max = 20;
    let pg = Postgres::start_with(free_local_port(), max);
    let twin_pg = Postgres::start_with(free_local_port(), max);
    let (port, twin_port) = (pg.port().to_string(), twin_pg.port().to_string());
    let common_args = ["--rate", "4", "--hold", "30", "--fast-secs", "3"];
    let mut bad = PyClient::spawn("pgu", "pg-unbounded", &[&["--port", &port][..], &common_args].concat(), None);
    let twin = PyClient::spawn(
        "pgb",
        "pg-bounded",
        &[&["--port", &twin_port, "--limit", "8"][..], &common_args].concat(),
        None,
    );

    let (took, fired) = saturation(&agent, "postgres", &mut bad, pg.port(), PG_TOO_MANY, &twin, twin_pg.port());
    check_saturated(&agent, "postgres", &fired, &bad, pg.port(), f64::from(max));
    let first = bad.first_error(PG_TOO_MANY).expect("first error");
    let until = first + took.max(BOUND_SECS) + 5.0;
    while now_epoch() < until {
        assert_silent(&agent, &twin_port, &twin.name, "after the unbounded pool's alert");
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(twin.all_errors(), serde_json::json!({}), "the bounded twin saw errors from psycopg");
    check_rejections_counted(&agent, "postgres", &mut bad, false);
    let held = twin_pg.count_by_application(&twin.name);
    assert!(held <= 8, "pg_stat_activity shows {held} backends of the bounded twin (limit 8)");
    eprintln!(
        "postgres: bounded twin {}: {} queries, no error, no alert; {held} backends in pg_stat_activity",
        twin.name,
        twin.figure("ok").unwrap_or(0.0)
    );
}

#[test]
fn three_workloads_losing_their_dependency_fire_dependency_failing_one_does_not() {
    let agent = Agent::start(&[]);
    let shared = Redis::start(free_local_port(), &[]);
    let lone = Redis::start(free_local_port(), &[]);
    let (port, lone_port) = (shared.port().to_string(), lone.port().to_string());
    let three: Vec<PyClient> =
        ["hca", "hcb", "hcc"].iter().map(|p| PyClient::spawn(p, "health", &["--port", &port], None)).collect();
    let alone = PyClient::spawn("hcl", "health", &["--port", &lone_port], None);
    // Healthy: every check passes, nothing fires.
    poll_until(deadline(20), "every readiness check to pass a few times", || {
        let oks: Vec<f64> = three.iter().chain([&alone]).map(|c| c.figure("ok").unwrap_or(0.0)).collect();
        if oks.iter().all(|n| *n >= 3.0) {
            Ok(())
        } else {
            Err(format!("{oks:?}"))
        }
    });
    for p in [&port, &lone_port] {
        let mine = agent_alerts_for(&agent, DEPENDENCY_FAILING, p);
        assert!(mine.is_empty(), "{DEPENDENCY_FAILING} while the dependency is healthy: {mine:#?}");
    }

    let stopped = now_epoch();
    drop(shared);
    drop(lone);
    let fired = poll_every(
        Duration::from_secs(1),
        instant_at(stopped + BOUND_SECS + 10.0),
        &format!("{DEPENDENCY_FAILING} for port {port}"),
        || {
            let l = agent_alerts_for(&agent, DEPENDENCY_FAILING, &lone_port);
            assert!(l.is_empty(), "{DEPENDENCY_FAILING} for a single workload's dependency: {l:#?}");
            let mine = agent_alerts_for(&agent, DEPENDENCY_FAILING, &port);
            match mine.as_slice() {
                [a] if a["state"] == "firing" => Ok(a.clone()),
                _ => Err(format!("{mine:?}")),
            }
        },
    );
    let took = epoch(fired["since"].as_str().expect("since")) - stopped;
    eprintln!("dependency: {DEPENDENCY_FAILING} fired {took:.1}s after redis-server was stopped: {fired}");
    assert!(took <= BOUND_SECS, "{DEPENDENCY_FAILING} took {took:.1}s, want <= {BOUND_SECS}s");
    assert_eq!(ann(&fired, "workloads_count"), "3", "{fired}");
    let list = ann(&fired, "workloads");
    for c in &three {
        assert!(list.contains(c.cgroup()), "workloads {list:?} lacks {}", c.cgroup());
        assert!(
            c.latest().is_some_and(|v| v["errors"].as_object().is_some_and(|e| !e.is_empty())),
            "{} saw no error from redis-py: {:?}",
            c.name,
            c.latest()
        );
    }
    assert!(!list.contains(alone.cgroup()), "the lone workload is listed: {list:?}");
    // A dead server holds nothing: that is not a server at its ceiling.
    assert!(
        agent_alerts_for(&agent, DESTINATION_SATURATED, &port).is_empty(),
        "{DESTINATION_SATURATED} for a stopped server"
    );
    // The lone workload's dependency is just as dead, for as long again: silent.
    let until = stopped + BOUND_SECS + 5.0;
    while now_epoch() < until {
        let l = agent_alerts_for(&agent, DEPENDENCY_FAILING, &lone_port);
        assert!(l.is_empty(), "{DEPENDENCY_FAILING} for a single workload's dependency: {l:#?}");
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "dependency: the lone workload {} ({}) silent for {:.0}s after its server stopped",
        alone.name,
        alone.all_errors(),
        now_epoch() - stopped
    );
}

#[test]
fn blackholed_destination_shows_connects_pending_as_ss_does() {
    let agent = Agent::start(&[]);
    let ns = Netns::new();
    let port = unique_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // A listener that never accepts, its queue filled (backlog 1 admits 2): every further SYN is
    // dropped, so connects to it stay in SYN_SENT: a blackhole on loopback.
    let listener = ns.run(|| listen_tcp(addr, 1));
    let _fill: Vec<_> = (0..2).map(|_| ns.run(|| connect_nonblocking(addr))).collect();
    poll_until(deadline(10), "the accept queue to fill", || match ss_listener(&ns, "127.0.0.1", port) {
        Some(l) if l.recv_q == 2 => Ok(()),
        l => Err(format!("{l:?}")),
    });
    let n = 6;
    let c = PyClient::spawn("pnd", "pending", &["--port", &port.to_string(), "--count", &n.to_string()], Some(&ns));
    let port_s = port.to_string();
    let ss_syn_sent = || {
        let out = ns.exec_ok(&["ss", "-Htn", "state", "syn-sent", &format!("( dport = :{port} )")]);
        out.lines().filter(|l| !l.trim().is_empty()).count()
    };
    let (before, v, d, after) =
        poll_until(deadline(20), &format!("{POOL_PENDING} of {} to equal ss state syn-sent", c.name), || {
            let before = ss_syn_sent();
            let s = agent.samples();
            let after = ss_syn_sent();
            let v = sum_of(&s, POOL_PENDING, &[("comm", &c.name), ("dst_port", &port_s)]).unwrap_or(-1.0);
            let d = sample(&s, DEST_PENDING, &dest_labels("other", &port_s)).unwrap_or(-1.0);
            if before == n && after == n && v == n as f64 && d == n as f64 {
                Ok((before, v, d, after))
            } else {
                Err(format!("ss {before}..{after}, pool {v}, destination {d}"))
            }
        });
    eprintln!("blackhole: {n} connects in flight: ss {before}..{after}, {POOL_PENDING} {v}, {DEST_PENDING} {d}");
    // And it goes back to 0 once the client gives up (its sockets close).
    drop(c);
    poll_until(deadline(20), "pending connects to drain", || {
        let s = agent.samples();
        let d = sample(&s, DEST_PENDING, &dest_labels("other", &port_s)).unwrap_or(0.0);
        let ss = ss_syn_sent();
        if d == 0.0 && ss == 0 {
            Ok(())
        } else {
            Err(format!("agent {d}, ss {ss}"))
        }
    });
    drop(listener);
}

#[test]
fn fast_growth_toward_a_configured_ceiling_fires_before_reaching_it() {
    // Only a ceiling is configured; every rule keeps its defaults.
    let dir = TempDir::new("cminc");
    let cfg = dir.path().join("connmon.toml");
    std::fs::write(&cfg, "[ceilings]\nredis = 200\n").expect("write config");
    let agent = Agent::start(&["--config.file", &cfg.display().to_string()]);
    let redis = Redis::start(free_local_port(), &["--maxclients", "1000"]);
    let steady_redis = Redis::start(free_local_port(), &[]);
    let (port, steady_port) = (redis.port().to_string(), steady_redis.port().to_string());
    // 4 new connections a second, each held for 2 minutes: 0 -> 200 in 50 s.
    let grow = PyClient::spawn(
        "fgu",
        "redis-unbounded",
        &["--port", &port, "--rate", "4", "--hold", "120", "--fast-secs", "0"],
        None,
    );
    let steady = PyClient::spawn(
        "fgs",
        "redis-bounded",
        &["--port", &steady_port, "--rate", "4", "--hold", "120", "--fast-secs", "0", "--limit", "8"],
        None,
    );
    let fired =
        poll_every(Duration::from_secs(1), deadline(60), &format!("ConnectionPoolNearCeiling for port {port}"), || {
            let s = agent_alerts_for(&agent, NEAR_CEILING, &steady_port);
            assert!(s.is_empty(), "ConnectionPoolNearCeiling for a steady pool of 8: {s:#?}");
            let mine = agent_alerts_for(&agent, NEAR_CEILING, &port);
            match mine.as_slice() {
                [a] if a["state"] == "firing" => Ok(a.clone()),
                _ => Err(format!("{mine:?}; client in use {:?}", grow.figure("in_use"))),
            }
        });
    let held = grow.figure("in_use").unwrap_or(0.0);
    let current = ann_f64(&fired, "current");
    eprintln!("fast growth: ConnectionPoolNearCeiling fired {:.1}s after the client started, at {current} connections (client holds {held}) of 200: {fired}", grow.started.elapsed().as_secs_f64());
    assert!(current < 200.0 && held < 200.0, "fired only at the ceiling: {fired}");
    assert_eq!(ann(&fired, "ceiling"), "200", "{fired}");
    let ttc = parse_human(ann(&fired, "time_to_ceiling")).unwrap_or_else(|| panic!("time_to_ceiling: {fired}"));
    assert!(ttc <= 120.0, "time_to_ceiling {ttc}s: {fired}");
    assert!(agent_alerts_for(&agent, NEAR_CEILING, &steady_port).is_empty());
    assert_eq!(steady.all_errors(), serde_json::json!({}));
}
