//! Integration tests for connmon's connection-pool view (client workload × destination): pool
//! sizes against the servers' and the kernel's counts, no drift after closes, churn counted
//! exactly, connect failures by reason. The limits (service classes, the series cap, socket-table
//! overflow, cgroup labels) are in `tests/pools_limits.rs`.
//!
//! Real servers (redis-server, PostgreSQL 15, plain accept loops) and real client processes: each
//! client is this test binary re-executed (see `common::client`), in a cgroup of its own and with a
//! process name of its own, so every assertion filters connmon's series by that client's labels and
//! parallel tests (listener tests included) cannot move the numbers. The truth is what the servers
//! and the kernel say: redis `CLIENT LIST` / `INFO clients`, `pg_stat_activity`, `ss -tnp`, and the
//! errors connect() returned to the client. Needs root.

use connmon_test_support as common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::pool_fixtures::{balance, hold, local, shared};
use common::*;

/// The client process (does nothing in a normal run; see `common::client`).
#[test]
fn client_entry() {
    client_main()
}

/// Ports connmon classifies by default (redis=6379,6380,26379 postgres=5432,6432). 6380 and 6432
/// rather than 6379 and 5432, which a developer's own servers are likelier to hold.
const REDIS_WELL_KNOWN_PORT: u16 = 6380;
const POSTGRES_WELL_KNOWN_PORT: u16 = 6432;

// -------------------------------------------------------------------------------------------------
// a.

#[test]
fn pools_match_redis_and_postgres() {
    let _g = shared();
    assert_port_free(REDIS_WELL_KNOWN_PORT);
    assert_port_free(POSTGRES_WELL_KNOWN_PORT);
    let redis = Redis::start(REDIS_WELL_KNOWN_PORT, &[]);
    let pg = Postgres::start(POSTGRES_WELL_KNOWN_PORT);
    let (rdst, pdst) = (redis.addr(), pg.addr());

    // A's connections exist before the agent: connmon must seed them from sock_diag.
    let a = hold("pa", rdst, Proto::Redis, 7);
    let agent = Agent::start(&[]);
    let b = hold("pb", rdst, Proto::Redis, 13);
    let c = hold("pc", pdst, Proto::Postgres, 5);
    let cases: [(&ClientProc, PoolRef, u16, f64, &str); 3] = [
        (&a, PoolRef::of(&a, rdst), rdst.port(), 7.0, "redis"),
        (&b, PoolRef::of(&b, rdst), rdst.port(), 13.0, "redis"),
        (&c, PoolRef::of(&c, pdst), pdst.port(), 5.0, "postgres"),
    ];

    let samples = agent.wait_metrics(deadline(30), "pool connections 7 (A, seeded), 13 (B), 5 (C)", |s| {
        let got: Vec<Option<f64>> = cases.iter().map(|(_, p, ..)| p.get(s, POOL_CONNECTIONS)).collect();
        if cases.iter().zip(&got).all(|((_, _, _, n, _), g)| *g == Some(*n)) {
            Ok(s.to_vec())
        } else {
            Err(format!("{got:?}"))
        }
    });

    // The servers' and the kernel's counts (the clients hold still, so these are exact).
    let host = Netns::host();
    let client_list = redis.client_list();
    let named = |n: &str| client_list.iter().filter(|c| c.get("name").map(String::as_str) == Some(n)).count();
    let oracle = [
        (named(&a.name), "redis CLIENT LIST"),
        (named(&b.name), "redis CLIENT LIST"),
        (pg.count_by_application(&c.name), "pg_stat_activity"),
    ];
    for ((client, pool, port, n, service), (server_count, server_what)) in cases.iter().zip(oracle) {
        let f = pool.figures(&samples);
        let ss = ss_estab_owned_by(&host, client.pid(), *port);
        eprintln!("{pool}: connmon {f}; {server_what} {server_count}; ss {ss}");
        assert_eq!(f.active, Some(server_count as f64), "{pool}: connmon vs {server_what} ({server_count}): {f}");
        assert_eq!(
            f.active,
            Some(ss as f64),
            "{pool}: connmon vs ss -tnp ESTAB owned by pid {} ({ss}): {f}",
            client.pid()
        );
        assert_eq!(f.active, Some(*n), "{pool}: {f}");
        assert_eq!(f.service.as_deref(), Some(*service), "{pool}: service label (by port {port}): {f}");
        let peak = f.peak.unwrap_or_else(|| panic!("{pool}: no peak series: {f}"));
        assert!(peak >= *n, "{pool}: peak {peak} < active {n}: {f}");
    }
    // Opened while the agent watched: every handshake counted once, attempts == opens.
    for (_, pool, _, n, _) in &cases[1..] {
        let f = pool.figures(&samples);
        assert_eq!(f.opens, Some(*n), "{pool}: opens: {f}");
        assert_eq!(f.attempts, f.opens, "{pool}: attempts vs opens: {f}");
        assert_eq!(f.connect_count, Some(*n), "{pool}: connect_duration _count: {f}");
        assert_eq!(f.closes, Some(0.0), "{pool}: closes: {f}");
        assert_eq!(f.failures_total(), 0.0, "{pool}: failures: {f}");
    }
    // Seeded: in the gauge, not in the counters.
    let fa = cases[0].1.figures(&samples);
    assert_eq!(fa.opens.unwrap_or(0.0), 0.0, "{}: seeded connections counted as opens: {fa}", cases[0].1);
    assert_eq!(fa.attempts.unwrap_or(0.0), 0.0, "{}: seeded connections counted as attempts: {fa}", cases[0].1);

    // The service of each destination, decided by the well-known port (or, where connmon already
    // recognises the protocol on the wire, by the protocol: both must say the same service).
    for (dst, service) in [(rdst, "redis"), (pdst, "postgres")] {
        let info = service_info(&samples, dst);
        assert_eq!(info.len(), 1, "one {POOL_SERVICE_INFO} for {dst}: {info:#?}");
        assert_eq!(info[0].label("service"), Some(service), "{dst}: {info:#?}");
        assert!(
            matches!(info[0].label("classified_by"), Some("port") | Some("protocol")),
            "{dst}: classified_by: {info:#?}"
        );
        assert_eq!(info[0].value, 1.0, "{dst}: {info:#?}");
    }

    // The one-shot scan sees the same pools.
    let rows = connmon_pools_json(&[]);
    for (_, pool, _, n, service) in &cases {
        let mine = pool_rows(&rows, pool);
        assert_eq!(mine.len(), 1, "{pool}: one row in connmon pools --json, got {mine:#?}");
        let r = mine[0];
        assert_eq!(json_u64(r, "active") as f64, *n, "{pool}: connmon pools --json active: {r}");
        assert_eq!(json_str(r, "service"), *service, "{pool}: {r}");
        assert!(r["opens"].is_null() && r["closes"].is_null(), "{pool}: one-shot scan has no counters: {r}");
    }

    // Server side: redis-server's accepted connections still open. INFO clients before and after
    // (each through a redis-cli that is itself one client, not counted) brackets connmon's value.
    let ino = host.inode().to_string();
    let port = rdst.port().to_string();
    let labels = [("netns", ino.as_str()), ("addr", "127.0.0.1"), ("port", port.as_str()), ("comm", "redis-server")];
    let (oracle, seen) =
        poll_until(deadline(20), "connmon_listen_established_connections == redis connected_clients", || {
            let before = redis.connected_clients_but_me();
            let v = sample(&agent.samples(), LISTEN_ESTABLISHED, &labels);
            let after = redis.connected_clients_but_me();
            match v {
                Some(v) if before == after && v == before as f64 => Ok((before, v)),
                _ => Err(format!("INFO clients before {before}, after {after}; connmon {v:?}")),
            }
        });
    eprintln!("redis listener: connmon established {seen}, INFO connected_clients (minus redis-cli) {oracle}");
    assert!(oracle >= 20, "A and B hold 20 connections, redis reports {oracle}");
}

// -------------------------------------------------------------------------------------------------
// b.

#[test]
fn no_drift_after_closes() {
    let _g = shared();
    let redis = Redis::start(free_local_port(), &[]);
    let dst = redis.addr();
    let mut a = hold("da", dst, Proto::Redis, 7);
    let agent = Agent::start(&[]);
    let mut b = hold("db", dst, Proto::Redis, 13);
    let (pa, pb) = (PoolRef::of(&a, dst), PoolRef::of(&b, dst));
    let host = Netns::host();

    // (pool, active, opens, closes, seeded)
    let check = |s: &[Sample], want: &[(&PoolRef, f64, f64, f64, f64)]| -> Result<(), String> {
        for (p, active, opens, closes, seeded) in want {
            let f = p.figures(s);
            balance(p, &f, *seeded)?;
            if (f.active, f.opens.unwrap_or(0.0), f.closes.unwrap_or(0.0)) != (Some(*active), *opens, *closes) {
                return Err(format!("{p}: want active {active} opens {opens} closes {closes}; {f}"));
            }
        }
        Ok(())
    };

    agent.wait_metrics(deadline(30), "A 7 (seeded), B 13", |s| {
        check(s, &[(&pa, 7.0, 0.0, 0.0, 7.0), (&pb, 13.0, 13.0, 0.0, 0.0)])
    });

    assert_eq!(b.close(5), 8);
    assert_eq!(a.close(3), 4);
    let s = agent.wait_metrics(deadline(30), "B: 8 open after closing 5; A: 4 open after closing 3 seeded", |s| {
        check(s, &[(&pa, 4.0, 0.0, 3.0, 7.0), (&pb, 8.0, 13.0, 5.0, 0.0)]).map(|_| s.to_vec())
    });
    // The servers agree (redis notices the closes when it reads EOF).
    poll_until(deadline(20), "CLIENT LIST and ss to show A 4, B 8", || {
        let got = (
            redis.clients_named(&a.name),
            redis.clients_named(&b.name),
            ss_estab_owned_by(&host, a.pid(), dst.port()),
            ss_estab_owned_by(&host, b.pid(), dst.port()),
        );
        if got == (4, 8, 4, 8) {
            Ok(())
        } else {
            Err(format!("(CLIENT LIST A, B, ss A, B) = {got:?}"))
        }
    });
    eprintln!("after closes: {pa} {}; {pb} {}", pa.figures(&s), pb.figures(&s));

    // Everything closed: both back to 0, seeded closes counted once each.
    a.exit();
    b.exit();
    let s = agent.wait_metrics(deadline(30), "A and B back to 0", |s| {
        check(s, &[(&pa, 0.0, 0.0, 7.0, 7.0), (&pb, 0.0, 13.0, 13.0, 0.0)]).map(|_| s.to_vec())
    });
    eprintln!("after exit: {pa} {}; {pb} {}", pa.figures(&s), pb.figures(&s));
    for p in [&pa, &pb] {
        let f = p.figures(&s);
        assert!(f.peak.is_some_and(|v| v >= 0.0), "{p}: peak: {f}");
    }
    // B's 13 closed connections were all opened under the agent: 13 lifetimes; A's were seeded.
    assert_eq!(pb.figures(&s).lifetime_count, Some(13.0), "{pb}: lifetime _count");
    assert_eq!(pa.figures(&s).lifetime_count.unwrap_or(0.0), 0.0, "{pa}: seeded connections have no lifetime");
}

// -------------------------------------------------------------------------------------------------
// c.

#[test]
fn churn_counted_exactly() {
    let _g = shared();
    let redis = Redis::start(free_local_port(), &[]);
    let dst = redis.addr();
    let agent = Agent::start(&[]);
    let t = Instant::now();
    let mut c = ClientProc::spawn(ClientSpec::new("ch", dst, Proto::Redis, Mode::Churn { count: 200, max_secs: 0.0 }));
    assert_eq!(c.finish(Duration::from_secs(60)), 200, "the client completes 200 cycles");
    let churned = t.elapsed();
    let p = PoolRef::of(&c, dst);
    let s = agent.wait_metrics(deadline(30), "200 opens, 200 closes, 200 lifetimes, 0 open", |s| {
        let f = p.figures(s);
        let want = Some(200.0);
        if f.opens == want
            && f.closes == want
            && f.attempts == want
            && f.lifetime_count == want
            && f.connect_count == want
            && f.active == Some(0.0)
        {
            Ok(s.to_vec())
        } else {
            Err(format!("{p}: {f}"))
        }
    });
    let f = p.figures(&s);
    eprintln!("churn of 200 took {churned:?}, counted in {:?}: {f}", t.elapsed());
    assert_eq!(f.failures_total(), 0.0, "{p}: no connect failed: {f}");
    assert!(f.lifetime_sum.is_some_and(|v| v >= 0.0) && f.connect_sum.is_some_and(|v| v > 0.0), "{p}: sums: {f}");
}

// -------------------------------------------------------------------------------------------------
// d.

#[test]
fn failures_by_reason() {
    let _g = shared();
    let agent = Agent::start(&[]);
    // A namespace whose SYNs to 10.77.0.2 vanish (sink device, no such host), giving up after one
    // retransmission (SYN at 0 s, again at 1 s, ETIMEDOUT at ~3 s).
    let ns = Netns::new();
    ns.exec_ok(&["sysctl", "-w", "net.ipv4.tcp_syn_retries=1"]);
    ns.add_sink_device("d0", "10.77.0.1/24");
    let closed = local(free_local_port());
    let hole_t: SocketAddr = "10.77.0.2:7001".parse().unwrap();
    let hole_a: SocketAddr = "10.77.0.2:7002".parse().unwrap();

    let t0 = Instant::now();
    let mut tc =
        ClientProc::spawn(ClientSpec::new("ft", hole_t, Proto::Silent, Mode::Timeout { count: 3 }).in_netns(&ns));
    let mut ac = ClientProc::spawn(
        ClientSpec::new("fa", hole_a, Proto::Silent, Mode::Abort { count: 4, after_ms: 100 }).in_netns(&ns),
    );
    let mut rc = ClientProc::spawn(ClientSpec::new("fr", closed, Proto::Silent, Mode::Refused { count: 20 }));
    assert_eq!(rc.finish(Duration::from_secs(30)), 20);
    assert_eq!(ac.finish(Duration::from_secs(30)), 4);
    assert_eq!(tc.finish(Duration::from_secs(30)), 3);
    let timeout_took = t0.elapsed();

    let cases = [
        (PoolRef::of(&rc, closed), "refused", 20.0),
        (PoolRef::of(&tc, hole_t), "timeout", 3.0),
        (PoolRef::of(&ac, hole_a), "aborted", 4.0),
    ];
    let s = agent.wait_metrics(deadline(20), "failures: refused 20, timeout 3, aborted 4", |s| {
        for (p, reason, n) in &cases {
            let f = p.figures(s);
            let ok = f.failure(reason) == *n
                && f.failures_total() == *n
                && f.attempts == Some(*n)
                && f.opens.unwrap_or(0.0) == 0.0
                && f.active.unwrap_or(0.0) == 0.0;
            if !ok {
                // Events the kernel side could not account, by reason (recursion: runs the kernel
                // skipped), so a failure says whether the probe missed transitions or miscounted.
                let lost: Vec<(String, f64)> = ["recursion", "unseen_handshake", "missed_close", "socket_untracked"]
                    .iter()
                    .map(|r| (r.to_string(), sample(s, "connmon_events_lost_total", &[("reason", r)]).unwrap_or(0.0)))
                    .collect();
                return Err(format!(
                    "{p}: want {reason}={n} (and attempts {n}, nothing else): {f}; lost events {lost:?}"
                ));
            }
        }
        Ok(s.to_vec())
    });
    for (p, reason, _) in &cases {
        eprintln!("{reason}: {p} {}", p.figures(&s));
    }
    eprintln!("timeouts took {timeout_took:?}");
    for (p, ..) in &cases {
        let f = p.figures(&s);
        let reasons: Vec<&str> = f.failures.iter().map(|(r, _)| r.as_str()).collect();
        for r in FAILURE_REASONS {
            assert!(reasons.contains(&r), "{p}: reason {r} not exported (every reason should be): {f}");
        }
    }
}

/// A SYN answered by ICMP host unreachable ends the connect with EHOSTUNREACH, counted as
/// `unreachable`. The client's namespace routes 10.98.0.0/24 through a router namespace that
/// has an `unreachable` route for it, so the router answers each SYN with ICMP (rate limit off).
#[test]
fn unreachable_counted_from_icmp() {
    let _g = shared();
    let agent = Agent::start(&[]);
    let client = Netns::new();
    let router = Netns::new();
    Netns::host().ip(&[
        "link",
        "add",
        "cmu0",
        "netns",
        client.name(),
        "type",
        "veth",
        "peer",
        "name",
        "cmu1",
        "netns",
        router.name(),
    ]);
    client.ip(&["addr", "add", "10.97.0.1/24", "dev", "cmu0"]);
    client.ip(&["link", "set", "cmu0", "up"]);
    client.ip(&["route", "add", "10.98.0.0/24", "via", "10.97.0.2"]);
    router.ip(&["addr", "add", "10.97.0.2/24", "dev", "cmu1"]);
    router.ip(&["link", "set", "cmu1", "up"]);
    router.ip(&["route", "add", "unreachable", "10.98.0.0/24"]);
    router.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.icmp_ratelimit=0"]);
    let dst: SocketAddr = "10.98.0.5:7003".parse().unwrap();
    let mut c =
        ClientProc::spawn(ClientSpec::new("fu", dst, Proto::Silent, Mode::Unreachable { count: 5 }).in_netns(&client));
    assert_eq!(c.finish(Duration::from_secs(30)), 5, "test setup: 5 connects fail at once");
    let p = PoolRef::of(&c, dst);
    agent.wait_metrics(deadline(20), "5 failures, all unreachable", |s| {
        let f = p.figures(s);
        if f.failure("unreachable") == 5.0 && f.failures_total() == 5.0 && f.attempts == Some(5.0) {
            Ok(())
        } else {
            Err(format!("{p}: {f}"))
        }
    });
}
