//! Integration tests for connmon's connection-pool view (client workload × destination).
//!
//! Real servers (redis-server, PostgreSQL 15, plain accept loops) and real client processes: each
//! client is this test binary re-executed (see `common::client`), in a cgroup of its own and with a
//! process name of its own, so every assertion filters connmon's series by that client's labels and
//! parallel tests (listener tests included) cannot move the numbers. The truth is what the servers
//! and the kernel say: redis `CLIENT LIST` / `INFO clients`, `pg_stat_activity`, `ss -tnp`, and the
//! errors connect() returned to the client. Needs root.

mod common;

use std::net::SocketAddr;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use common::*;

/// The client process (does nothing in a normal run; see `common::client`).
#[test]
fn client_entry() {
    client_main()
}

/// The kernel's live-socket table of an agent is shared by every connect on the host. The test that
/// shrinks it to 16 entries takes this lock exclusively so that this binary's other tests (which
/// hold it shared) do not fill the table under it.
static SOCKET_TABLE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    SOCKET_TABLE.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    SOCKET_TABLE.write().unwrap_or_else(|e| e.into_inner())
}

/// Ports connmon classifies by default (redis=6379,6380,26379 postgres=5432,6432). 6380 and 6432
/// rather than 6379 and 5432, which a developer's own servers are likelier to hold.
const REDIS_WELL_KNOWN_PORT: u16 = 6380;
const POSTGRES_WELL_KNOWN_PORT: u16 = 6432;

fn hold(prefix: &str, target: SocketAddr, proto: Proto, count: usize) -> ClientProc {
    ClientProc::spawn(ClientSpec::new(prefix, target, proto, Mode::Hold { count }))
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The invariant that makes a pool's gauge trustworthy: what opened minus what closed while
/// connmon watched equals what is open now minus what was open when it started.
fn balance(p: &PoolRef, f: &PoolFigures, seeded: f64) -> Result<(), String> {
    let (Some(o), Some(c), Some(a)) = (f.opens, f.closes, f.active) else {
        return Err(format!("{p}: missing series: {f}"));
    };
    if o - c == a - seeded {
        Ok(())
    } else {
        Err(format!(
            "{p}: opens {o} - closes {c} != active {a} - seeded {seeded}: {f}"
        ))
    }
}

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

    let samples = agent.wait_metrics(
        deadline(30),
        "pool connections 7 (A, seeded), 13 (B), 5 (C)",
        |s| {
            let got: Vec<Option<f64>> = cases
                .iter()
                .map(|(_, p, ..)| p.get(s, POOL_CONNECTIONS))
                .collect();
            if cases
                .iter()
                .zip(&got)
                .all(|((_, _, _, n, _), g)| *g == Some(*n))
            {
                Ok(s.to_vec())
            } else {
                Err(format!("{got:?}"))
            }
        },
    );

    // The servers' and the kernel's counts (the clients hold still, so these are exact).
    let host = Netns::host();
    let client_list = redis.client_list();
    let named = |n: &str| {
        client_list
            .iter()
            .filter(|c| c.get("name").map(String::as_str) == Some(n))
            .count()
    };
    let oracle = [
        (named(&a.name), "redis CLIENT LIST"),
        (named(&b.name), "redis CLIENT LIST"),
        (pg.count_by_application(&c.name), "pg_stat_activity"),
    ];
    for ((client, pool, port, n, service), (server_count, server_what)) in cases.iter().zip(oracle)
    {
        let f = pool.figures(&samples);
        let ss = ss_estab_owned_by(&host, client.pid(), *port);
        eprintln!("{pool}: connmon {f}; {server_what} {server_count}; ss {ss}");
        assert_eq!(
            f.active,
            Some(server_count as f64),
            "{pool}: connmon vs {server_what} ({server_count}): {f}"
        );
        assert_eq!(
            f.active,
            Some(ss as f64),
            "{pool}: connmon vs ss -tnp ESTAB owned by pid {} ({ss}): {f}",
            client.pid()
        );
        assert_eq!(f.active, Some(*n), "{pool}: {f}");
        assert_eq!(
            f.service.as_deref(),
            Some(*service),
            "{pool}: service label (by port {port}): {f}"
        );
        let peak = f
            .peak
            .unwrap_or_else(|| panic!("{pool}: no peak series: {f}"));
        assert!(peak >= *n, "{pool}: peak {peak} < active {n}: {f}");
    }
    // Opened while the agent watched: every handshake counted once, attempts == opens.
    for (_, pool, _, n, _) in &cases[1..] {
        let f = pool.figures(&samples);
        assert_eq!(f.opens, Some(*n), "{pool}: opens: {f}");
        assert_eq!(f.attempts, f.opens, "{pool}: attempts vs opens: {f}");
        assert_eq!(
            f.connect_count,
            Some(*n),
            "{pool}: connect_duration _count: {f}"
        );
        assert_eq!(f.closes, Some(0.0), "{pool}: closes: {f}");
        assert_eq!(f.failures_total(), 0.0, "{pool}: failures: {f}");
    }
    // Seeded: in the gauge, not in the counters.
    let fa = cases[0].1.figures(&samples);
    assert_eq!(
        fa.opens.unwrap_or(0.0),
        0.0,
        "{}: seeded connections counted as opens: {fa}",
        cases[0].1
    );
    assert_eq!(
        fa.attempts.unwrap_or(0.0),
        0.0,
        "{}: seeded connections counted as attempts: {fa}",
        cases[0].1
    );

    // The service of each destination, decided by the well-known port (or, where connmon already
    // recognises the protocol on the wire, by the protocol: both must say the same service).
    for (dst, service) in [(rdst, "redis"), (pdst, "postgres")] {
        let info = service_info(&samples, dst);
        assert_eq!(
            info.len(),
            1,
            "one {POOL_SERVICE_INFO} for {dst}: {info:#?}"
        );
        assert_eq!(info[0].label("service"), Some(service), "{dst}: {info:#?}");
        assert!(
            matches!(
                info[0].label("classified_by"),
                Some("port") | Some("protocol")
            ),
            "{dst}: classified_by: {info:#?}"
        );
        assert_eq!(info[0].value, 1.0, "{dst}: {info:#?}");
    }

    // The one-shot scan sees the same pools.
    let rows = connmon_pools_json(&[]);
    for (_, pool, _, n, service) in &cases {
        let mine = pool_rows(&rows, pool);
        assert_eq!(
            mine.len(),
            1,
            "{pool}: one row in connmon pools --json, got {mine:#?}"
        );
        let r = mine[0];
        assert_eq!(
            json_u64(r, "active") as f64,
            *n,
            "{pool}: connmon pools --json active: {r}"
        );
        assert_eq!(json_str(r, "service"), *service, "{pool}: {r}");
        assert!(
            r["opens"].is_null() && r["closes"].is_null(),
            "{pool}: one-shot scan has no counters: {r}"
        );
    }

    // Server side: redis-server's accepted connections still open. INFO clients before and after
    // (each through a redis-cli that is itself one client, not counted) brackets connmon's value.
    let ino = host.inode().to_string();
    let port = rdst.port().to_string();
    let labels = [
        ("netns", ino.as_str()),
        ("addr", "127.0.0.1"),
        ("port", port.as_str()),
        ("comm", "redis-server"),
    ];
    let (oracle, seen) = poll_until(
        deadline(20),
        "connmon_listen_established_connections == redis connected_clients",
        || {
            let before = redis.connected_clients_but_me();
            let v = sample(&agent.samples(), LISTEN_ESTABLISHED, &labels);
            let after = redis.connected_clients_but_me();
            match v {
                Some(v) if before == after && v == before as f64 => Ok((before, v)),
                _ => Err(format!(
                    "INFO clients before {before}, after {after}; connmon {v:?}"
                )),
            }
        },
    );
    eprintln!("redis listener: connmon established {seen}, INFO connected_clients (minus redis-cli) {oracle}");
    assert!(
        oracle >= 20,
        "A and B hold 20 connections, redis reports {oracle}"
    );
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
            if (f.active, f.opens.unwrap_or(0.0), f.closes.unwrap_or(0.0))
                != (Some(*active), *opens, *closes)
            {
                return Err(format!(
                    "{p}: want active {active} opens {opens} closes {closes}; {f}"
                ));
            }
        }
        Ok(())
    };

    agent.wait_metrics(deadline(30), "A 7 (seeded), B 13", |s| {
        check(s, &[(&pa, 7.0, 0.0, 0.0, 7.0), (&pb, 13.0, 13.0, 0.0, 0.0)])
    });

    assert_eq!(b.close(5), 8);
    assert_eq!(a.close(3), 4);
    let s = agent.wait_metrics(
        deadline(30),
        "B: 8 open after closing 5; A: 4 open after closing 3 seeded",
        |s| check(s, &[(&pa, 4.0, 0.0, 3.0, 7.0), (&pb, 8.0, 13.0, 5.0, 0.0)]).map(|_| s.to_vec()),
    );
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
    eprintln!(
        "after closes: {pa} {}; {pb} {}",
        pa.figures(&s),
        pb.figures(&s)
    );

    // Everything closed: both back to 0, seeded closes counted once each.
    a.exit();
    b.exit();
    let s = agent.wait_metrics(deadline(30), "A and B back to 0", |s| {
        check(s, &[(&pa, 0.0, 0.0, 7.0, 7.0), (&pb, 0.0, 13.0, 13.0, 0.0)]).map(|_| s.to_vec())
    });
    eprintln!(
        "after exit: {pa} {}; {pb} {}",
        pa.figures(&s),
        pb.figures(&s)
    );
    for p in [&pa, &pb] {
        let f = p.figures(&s);
        assert!(f.peak.is_some_and(|v| v >= 0.0), "{p}: peak: {f}");
    }
    // B's 13 closed connections were all opened under the agent: 13 lifetimes; A's were seeded.
    assert_eq!(
        pb.figures(&s).lifetime_count,
        Some(13.0),
        "{pb}: lifetime _count"
    );
    assert_eq!(
        pa.figures(&s).lifetime_count.unwrap_or(0.0),
        0.0,
        "{pa}: seeded connections have no lifetime"
    );
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
    let mut c = ClientProc::spawn(ClientSpec::new(
        "ch",
        dst,
        Proto::Redis,
        Mode::Churn {
            count: 200,
            max_secs: 0.0,
        },
    ));
    assert_eq!(
        c.finish(Duration::from_secs(60)),
        200,
        "the client completes 200 cycles"
    );
    let churned = t.elapsed();
    let p = PoolRef::of(&c, dst);
    let s = agent.wait_metrics(
        deadline(30),
        "200 opens, 200 closes, 200 lifetimes, 0 open",
        |s| {
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
        },
    );
    let f = p.figures(&s);
    eprintln!(
        "churn of 200 took {churned:?}, counted in {:?}: {f}",
        t.elapsed()
    );
    assert_eq!(f.failures_total(), 0.0, "{p}: no connect failed: {f}");
    assert!(
        f.lifetime_sum.is_some_and(|v| v >= 0.0) && f.connect_sum.is_some_and(|v| v > 0.0),
        "{p}: sums: {f}"
    );
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
    let mut tc = ClientProc::spawn(
        ClientSpec::new("ft", hole_t, Proto::Silent, Mode::Timeout { count: 3 }).in_netns(&ns),
    );
    let mut ac = ClientProc::spawn(
        ClientSpec::new(
            "fa",
            hole_a,
            Proto::Silent,
            Mode::Abort {
                count: 4,
                after_ms: 100,
            },
        )
        .in_netns(&ns),
    );
    let mut rc = ClientProc::spawn(ClientSpec::new(
        "fr",
        closed,
        Proto::Silent,
        Mode::Refused { count: 20 },
    ));
    assert_eq!(rc.finish(Duration::from_secs(30)), 20);
    assert_eq!(ac.finish(Duration::from_secs(30)), 4);
    assert_eq!(tc.finish(Duration::from_secs(30)), 3);
    let timeout_took = t0.elapsed();

    let cases = [
        (PoolRef::of(&rc, closed), "refused", 20.0),
        (PoolRef::of(&tc, hole_t), "timeout", 3.0),
        (PoolRef::of(&ac, hole_a), "aborted", 4.0),
    ];
    let s = agent.wait_metrics(
        deadline(20),
        "failures: refused 20, timeout 3, aborted 4",
        |s| {
            for (p, reason, n) in &cases {
                let f = p.figures(s);
                let ok = f.failure(reason) == *n
                    && f.failures_total() == *n
                    && f.attempts == Some(*n)
                    && f.opens.unwrap_or(0.0) == 0.0
                    && f.active.unwrap_or(0.0) == 0.0;
                if !ok {
                    return Err(format!(
                        "{p}: want {reason}={n} (and attempts {n}, nothing else): {f}"
                    ));
                }
            }
            Ok(s.to_vec())
        },
    );
    for (p, reason, _) in &cases {
        eprintln!("{reason}: {p} {}", p.figures(&s));
    }
    eprintln!("timeouts took {timeout_took:?}");
    for (p, ..) in &cases {
        let f = p.figures(&s);
        let reasons: Vec<&str> = f.failures.iter().map(|(r, _)| r.as_str()).collect();
        for r in FAILURE_REASONS {
            assert!(
                reasons.contains(&r),
                "{p}: reason {r} not exported (every reason should be): {f}"
            );
        }
    }
}

// -------------------------------------------------------------------------------------------------
// e.

#[test]
fn service_override_and_cardinality_cap() {
    let _g = shared();
    let redis = Redis::start(free_local_port(), &[]);
    let plain = AcceptLoop::start(&Netns::host(), local(0), true);
    let (rdst, pdst) = (redis.addr(), plain.addr());

    // --service: a redis on a non-standard port. The clients send nothing, so only the port can
    // classify the destination.
    {
        let spec = format!("redis={}", redis.port());
        let agent = Agent::start(&["--service", &spec]);
        let s1 = hold("so", rdst, Proto::Silent, 3);
        let s2 = hold("sn", pdst, Proto::Silent, 2);
        let (p1, p2) = (PoolRef::of(&s1, rdst), PoolRef::of(&s2, pdst));
        let s = agent.wait_metrics(deadline(30), "pools of 3 and 2", |s| {
            match (p1.get(s, POOL_CONNECTIONS), p2.get(s, POOL_CONNECTIONS)) {
                (Some(a), Some(b)) if a == 3.0 && b == 2.0 => Ok(s.to_vec()),
                got => Err(format!("{got:?}")),
            }
        });
        assert_eq!(
            p1.figures(&s).service.as_deref(),
            Some("redis"),
            "{p1} with --service {spec}: {}",
            p1.figures(&s)
        );
        assert_eq!(
            p2.figures(&s).service.as_deref(),
            Some("other"),
            "{p2} (no rule): {}",
            p2.figures(&s)
        );
        for (dst, service, by) in [(rdst, "redis", "port"), (pdst, "other", "none")] {
            let info = service_info(&s, dst);
            assert_eq!(
                info.len(),
                1,
                "one {POOL_SERVICE_INFO} for {dst}: {info:#?}"
            );
            assert_eq!(
                (info[0].label("service"), info[0].label("classified_by")),
                (Some(service), Some(by)),
                "{dst} with --service {spec}: {info:#?}"
            );
        }
    }

    // --pools.max-series 1: one pool exported (the busiest on the host), the rest folded.
    let agent = Agent::start(&["--pools.max-series", "1"]);
    let big = hold("cb", rdst, Proto::Silent, 120);
    let mid = hold("cm", rdst, Proto::Silent, 4);
    let small = hold("cs", pdst, Proto::Silent, 2);
    let (pbig, pmid, psmall) = (
        PoolRef::of(&big, rdst),
        PoolRef::of(&mid, rdst),
        PoolRef::of(&small, pdst),
    );
    let is_other = |s: &Sample| {
        ["service", "dst_addr", "dst_port", "comm", "cgroup"]
            .iter()
            .all(|k| s.label(k) == Some("other"))
    };
    let (s, other) = agent.wait_metrics(
        deadline(30),
        "two pool series: the 120-connection pool and other",
        |s| {
            let series = samples_matching(s, POOL_CONNECTIONS, &[]);
            let others: Vec<&&Sample> = series.iter().filter(|x| is_other(x)).collect();
            if series.len() == 2
                && others.len() == 1
                && pbig.get(s, POOL_CONNECTIONS) == Some(120.0)
            {
                Ok((s.to_vec(), others[0].value))
            } else {
                Err(format!("{series:#?}"))
            }
        },
    );
    let folded = sample_expect(&s, POOL_FOLDED, &[]);
    eprintln!("cap 1: exported {pbig} = 120, other = {other}, folded = {folded}");
    assert!(
        folded >= 2.0,
        "{POOL_FOLDED} = {folded}; at least this test's two smaller pools are folded"
    );
    assert!(
        other >= 6.0,
        "the other pool has {other} connections, fewer than {pmid} (4) + {psmall} (2)"
    );
    for p in [&pmid, &psmall] {
        assert_eq!(
            p.get(&s, POOL_CONNECTIONS),
            None,
            "{p} should be folded into other"
        );
    }
    // Busiest overall: no pool on the host (one-shot scan) has more than the exported one.
    let rows = connmon_pools_json(&[]);
    let busiest = rows
        .iter()
        .max_by_key(|r| json_u64(r, "active"))
        .expect("pools exist");
    assert!(
        json_u64(busiest, "active") <= 120,
        "connmon exported {pbig} (120) but the busiest pool on the host is {busiest}"
    );
    assert_eq!(
        pool_rows(&rows, &pbig).len(),
        1,
        "{pbig} in connmon pools --json"
    );
}

/// Redis and PostgreSQL on ports no rule names: only the first bytes the clients send (a RESP
/// array; a StartupMessage) can class them, so `classified_by` must say `protocol`.
#[test]
fn protocol_recognised_on_non_standard_ports() {
    let _g = shared();
    let redis = Redis::start(free_local_port(), &[]);
    let pg = Postgres::start(free_local_port());
    let agent = Agent::start(&[]);
    let r = hold("pr", redis.addr(), Proto::Redis, 2);
    let q = hold("pq", pg.addr(), Proto::Postgres, 2);
    let (pr, pq) = (PoolRef::of(&r, redis.addr()), PoolRef::of(&q, pg.addr()));
    let s = agent.wait_metrics(deadline(30), "both pools classed by protocol", |s| {
        let classed = |dst: SocketAddr| -> Option<(String, String)> {
            let info = service_info(s, dst);
            let i = info.first()?;
            Some((i.label("service")?.to_string(), i.label("classified_by")?.to_string()))
        };
        match (classed(redis.addr()), classed(pg.addr())) {
            (Some(a), Some(b)) if a.1 == "protocol" && b.1 == "protocol" => Ok(s.to_vec()),
            got => Err(format!("{got:?}")),
        }
    });
    for (dst, service) in [(redis.addr(), "redis"), (pg.addr(), "postgres")] {
        let info = service_info(&s, dst);
        assert_eq!(
            (info[0].label("service"), info[0].label("classified_by")),
            (Some(service), Some("protocol")),
            "{dst}: {info:#?}"
        );
    }
    assert_eq!(pr.figures(&s).service.as_deref(), Some("redis"), "{pr}: {}", pr.figures(&s));
    assert_eq!(pq.figures(&s).service.as_deref(), Some("postgres"), "{pq}: {}", pq.figures(&s));
}

// -------------------------------------------------------------------------------------------------
// g.

#[test]
fn table_overflow_is_counted() {
    let _x = exclusive();
    let sink = AcceptLoop::start(&Netns::host(), local(0), true);
    let dst = sink.addr();
    let agent = Agent::start(&["--pools.max-sockets", "16"]);
    let lost0 = lost(&agent.samples(), "socket_table_full");
    let mut c = hold("ov", dst, Proto::Silent, 40);
    // Matched by comm and destination: this test is about the table, not about how fast a new
    // cgroup's name is resolved (see new_cgroup_labelled_at_first_scrape).
    let p = PoolRef::of(&c, dst).any_cgroup();
    // Every connect was counted (or refused a table slot) before connect() returned, so one
    // scrape is exact. That scrape's own connection (test -> agent) is one more connect on the host.
    let s = agent.samples();
    let f = p.figures(&s);
    let lost1 = lost(&s, "socket_table_full");
    let k = f.active.unwrap_or(0.0);
    let rose = lost1 - lost0;
    eprintln!(
        "40 connects, table of 16: {p} {f}; socket_table_full +{rose} (40 - {k} of the client's, + 1 for the scrape's \
         own connect if the table is full: {} expected without other traffic); untracked {}",
        40.0 - k + if k == 16.0 { 1.0 } else { 0.0 },
        lost(&s, "socket_untracked")
    );
    assert!(
        (1.0..=16.0).contains(&k),
        "{p}: {k} connections counted with a 16-entry table: {f}"
    );
    assert!(
        rose >= 40.0 - k,
        "socket_table_full rose by {rose} while {} of the 40 connects were not counted: {f}",
        40.0 - k
    );
    assert!(rose >= 24.0, "socket_table_full rose by only {rose}");
    assert_eq!(f.opens, Some(k), "{p}: opens vs connections: {f}");
    assert_eq!(f.attempts, Some(k), "{p}: attempts vs connections: {f}");
    assert!(
        f.peak.is_some_and(|v| v <= 16.0),
        "{p}: peak above the table size: {f}"
    );

    // Closing everything (tracked and untracked) brings the pool back to 0, never below.
    assert_eq!(c.close(40), 0);
    let mut lowest = f64::INFINITY;
    let s = agent.wait_metrics(
        deadline(30),
        "the pool back to 0 open after closing all 40",
        |s| {
            let f = p.figures(s);
            let a = f.active.unwrap_or(0.0);
            lowest = lowest.min(a);
            assert!(a >= 0.0, "{p}: negative connection count: {f}");
            if a == 0.0 && f.closes == Some(k) {
                Ok(s.to_vec())
            } else {
                Err(format!("{p}: {f}"))
            }
        },
    );
    let f = p.figures(&s);
    eprintln!("after closing: {p} {f} (lowest seen {lowest})");
    balance(&p, &f, 0.0).unwrap_or_else(|e| panic!("{e}"));
    c.exit();
}

// -------------------------------------------------------------------------------------------------
// Labels: a pool carries its client's cgroup from the first scrape on, and keeps it.

#[test]
fn new_cgroup_labelled_at_first_scrape() {
    let _g = shared();
    let sink = AcceptLoop::start(&Netns::host(), local(0), true);
    let dst = sink.addr();
    let agent = Agent::start(&[]);
    agent.samples(); // connmon resolves the cgroups it meets in this scrape
    let c = hold("ng", dst, Proto::Silent, 3);
    // The three connections were counted before connect() returned, and the client's cgroup
    // existed before its first connect: the very next scrape must label them with it.
    let s = agent.samples();
    let mine = samples_matching(&s, POOL_CONNECTIONS, &[("comm", c.name.as_str())]);
    assert_eq!(
        mine.len(),
        1,
        "one pool series for comm {}: {mine:#?}",
        c.name
    );
    assert_eq!(
        (mine[0].label("cgroup"), mine[0].value),
        (Some(c.cgroup()), 3.0),
        "the first scrape after the connects labels the pool of {} (cgroup {}) as {mine:#?}",
        c.name,
        c.cgroup()
    );
}

#[test]
fn pool_keeps_cgroup_label_after_cgroup_removed() {
    let _g = shared();
    let sink = AcceptLoop::start(&Netns::host(), local(0), true);
    let dst = sink.addr();
    let agent = Agent::start(&[]);
    let mut c = hold("gr", dst, Proto::Silent, 2);
    let p = PoolRef::of(&c, dst);
    agent.wait_metrics(deadline(15), "the pool exported with its cgroup", |s| {
        let f = p.figures(s);
        if f.active == Some(2.0) {
            Ok(())
        } else {
            Err(format!("{p}: {f}"))
        }
    });
    c.exit();
    drop(c); // removes the cgroup
    let gone = cgroup2_root().join(p.cgroup.trim_start_matches('/'));
    assert!(!gone.exists(), "{} still exists", gone.display());
    // New cgroups keep appearing on a node (here: short-lived clients in fresh cgroups, about
    // two a second), so connmon re-reads the cgroup tree. The closed pool's series must keep its labels
    // (its counters would otherwise jump to another series, merged with other unknown cgroups).
    let t = Instant::now();
    let mut checks = 0;
    while t.elapsed() < Duration::from_secs(12) {
        let mut other = ClientProc::spawn(ClientSpec::new(
            "gn",
            dst,
            Proto::Silent,
            Mode::Churn {
                count: 1,
                max_secs: 0.0,
            },
        ));
        assert_eq!(other.finish(Duration::from_secs(10)), 1);
        let s = agent.samples();
        let mine = samples_matching(&s, POOL_CLOSES, &[("comm", p.comm.as_str())]);
        assert!(
            mine.len() == 1
                && mine[0].label("cgroup") == Some(p.cgroup.as_str())
                && mine[0].value == 2.0,
            "{:.1}s after its cgroup was removed, the closed pool {p} is exported as {mine:#?}",
            t.elapsed().as_secs_f64()
        );
        checks += 1;
        drop(other);
        std::thread::sleep(Duration::from_millis(500)); // pacing the new-cgroup arrivals
    }
    eprintln!(
        "{p}: labels kept through {checks} scrapes over {:?}",
        t.elapsed()
    );
}
