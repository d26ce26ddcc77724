//! Integration tests for connmon's connection-pool view at its limits: how destinations are
//! classed (`--service`, protocol recognition on non-standard ports), the series cap
//! (`--pools.max-series`), socket-table overflow (`--pools.max-sockets`), and cgroup labels that
//! are right from the first scrape and survive the cgroup's removal. Sizes, drift, churn and
//! failures are in `tests/pools.rs`.
//!
//! Same method as there: real servers and real client processes, each client this test binary
//! re-executed (see `common::client`) in a cgroup of its own and with a process name of its own, so
//! every assertion filters connmon's series by that client's labels. Needs root.

use connmon::export::pools::POOL_CONNECTIONS;
use connmon::export::WORKLOAD_INFO;
use connmon_test_support as common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::pool_fixtures::{balance, exclusive, hold, local, shared};
use common::*;

/// The client process (does nothing in a normal run; see `common::client`).
#[test]
fn client_entry() {
    client_main()
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
        assert_eq!(p1.figures(&s).service.as_deref(), Some("redis"), "{p1} with --service {spec}: {}", p1.figures(&s));
        assert_eq!(p2.figures(&s).service.as_deref(), Some("other"), "{p2} (no rule): {}", p2.figures(&s));
        for (dst, service, by) in [(rdst, "redis", "port"), (pdst, "other", "none")] {
            let info = service_info(&s, dst);
            assert_eq!(info.len(), 1, "one {POOL_SERVICE_INFO} for {dst}: {info:#?}");
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
    let (pbig, pmid, psmall) = (PoolRef::of(&big, rdst), PoolRef::of(&mid, rdst), PoolRef::of(&small, pdst));
    let is_other =
        |s: &Sample| ["service", "dst_addr", "dst_port", "comm", "cgroup"].iter().all(|k| s.label(k) == Some("other"));
    let (s, other) = agent.wait_metrics(deadline(30), "two pool series: the 120-connection pool and other", |s| {
        let series = samples_matching(s, POOL_CONNECTIONS, &[]);
        let others: Vec<&&Sample> = series.iter().filter(|x| is_other(x)).collect();
        if series.len() == 2 && others.len() == 1 && pbig.get(s, POOL_CONNECTIONS) == Some(120.0) {
            Ok((s.to_vec(), others[0].value))
        } else {
            Err(format!("{series:#?}"))
        }
    });
    let folded = sample_expect(&s, POOL_FOLDED, &[]);
    eprintln!("cap 1: exported {pbig} = 120, other = {other}, folded = {folded}");
    assert!(folded >= 2.0, "{POOL_FOLDED} = {folded}; at least this test's two smaller pools are folded");
    assert!(other >= 6.0, "the other pool has {other} connections, fewer than {pmid} (4) + {psmall} (2)");
    for p in [&pmid, &psmall] {
        assert_eq!(p.get(&s, POOL_CONNECTIONS), None, "{p} should be folded into other");
    }
    // Busiest overall: no pool on the host (one-shot scan) has more than the exported one.
    let rows = connmon_pools_json(&[]);
    let busiest = rows.iter().max_by_key(|r| json_u64(r, "active")).expect("pools exist");
    assert!(
        json_u64(busiest, "active") <= 120,
        "connmon exported {pbig} (120) but the busiest pool on the host is {busiest}"
    );
    assert_eq!(pool_rows(&rows, &pbig).len(), 1, "{pbig} in connmon pools --json");
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
    assert!((1.0..=16.0).contains(&k), "{p}: {k} connections counted with a 16-entry table: {f}");
    assert!(
        rose >= 40.0 - k,
        "socket_table_full rose by {rose} while {} of the 40 connects were not counted: {f}",
        40.0 - k
    );
    assert!(rose >= 24.0, "socket_table_full rose by only {rose}");
    assert_eq!(f.opens, Some(k), "{p}: opens vs connections: {f}");
    assert_eq!(f.attempts, Some(k), "{p}: attempts vs connections: {f}");
    assert!(f.peak.is_some_and(|v| v <= 16.0), "{p}: peak above the table size: {f}");

    // Closing everything (tracked and untracked) brings the pool back to 0, never below.
    assert_eq!(c.close(40), 0);
    let mut lowest = f64::INFINITY;
    let s = agent.wait_metrics(deadline(30), "the pool back to 0 open after closing all 40", |s| {
        let f = p.figures(s);
        let a = f.active.unwrap_or(0.0);
        lowest = lowest.min(a);
        assert!(a >= 0.0, "{p}: negative connection count: {f}");
        if a == 0.0 && f.closes == Some(k) {
            Ok(s.to_vec())
        } else {
            Err(format!("{p}: {f}"))
        }
    });
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
    assert_eq!(mine.len(), 1, "one pool series for comm {}: {mine:#?}", c.name);
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
        let mut other =
            ClientProc::spawn(ClientSpec::new("gn", dst, Proto::Silent, Mode::Churn { count: 1, max_secs: 0.0 }));
        assert_eq!(other.finish(Duration::from_secs(10)), 1);
        let s = agent.samples();
        let mine = samples_matching(&s, POOL_CLOSES, &[("comm", p.comm.as_str())]);
        assert!(
            mine.len() == 1 && mine[0].label("cgroup") == Some(p.cgroup.as_str()) && mine[0].value == 2.0,
            "{:.1}s after its cgroup was removed, the closed pool {p} is exported as {mine:#?}",
            t.elapsed().as_secs_f64()
        );
        checks += 1;
        drop(other);
        std::thread::sleep(Duration::from_millis(500)); // pacing the new-cgroup arrivals
    }
    eprintln!("{p}: labels kept through {checks} scrapes over {:?}", t.elapsed());
}

/// A client in a cgroup named the way kubelet's systemd driver and containerd name them (real
/// cgroup directories on this host, no cluster needed): connmon_workload_info must read the pod
/// UID, QoS class, runtime and container id out of the pool's cgroup label.
#[test]
fn kubelet_cgroup_names_are_attributed() {
    let _g = shared();
    let redis = Redis::start(free_local_port(), &[]);
    let agent = Agent::start(&[]);
    let pid = std::process::id();
    let uid = format!("00000000-0000-4000-8000-{pid:012x}");
    let id = format!("{pid:064x}");
    let rel = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
        uid.replace('-', "_")
    );
    let cg = KubeCgroup::create(&rel);
    // redis-cli SUBSCRIBE holds its one connection until killed.
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec redis-cli -p {} subscribe connmon-workload-test",
            cg.dir.display(),
            redis.port()
        ))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn redis-cli");
    let _child = KillOnDrop(child);
    let s = agent.wait_metrics(deadline(30), "the pool and its workload attribution", |s| {
        let pool = samples_matching(s, POOL_CONNECTIONS, &[("cgroup", rel.as_str()), ("comm", "redis-cli")]);
        let info = samples_matching(s, WORKLOAD_INFO, &[("cgroup", rel.as_str())]);
        match (pool.first(), info.first()) {
            (Some(p), Some(_)) if p.value == 1.0 => Ok(s.to_vec()),
            got => Err(format!("{got:?}")),
        }
    });
    let info = samples_matching(&s, WORKLOAD_INFO, &[("cgroup", rel.as_str())]);
    let got: Vec<Option<&str>> =
        ["runtime", "container_id", "pod_uid", "qos_class", "unit"].iter().map(|k| info[0].label(k)).collect();
    assert_eq!(
        got,
        vec![Some("containerd"), Some(id.as_str()), Some(uid.as_str()), Some("burstable"), Some("")],
        "{info:#?}"
    );
}

// -------------------------------------------------------------------------------------------------
// IPv6

/// A pool over IPv6 (to Redis on [::1]) is counted like an IPv4 one, with `dst_addr` in IPv6
/// notation: 6 held connections equal Redis `CLIENT LIST` and `ss`, and churn is counted exactly.
/// The tp_btf probe reads the address from `skc_v6_daddr`, the tracepoint from its own record.
#[test]
fn ipv6_pools_match_redis_and_ss() {
    let _g = shared();
    let redis = Redis::start(free_local_port(), &["--bind", "127.0.0.1", "::1"]);
    let dst = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, redis.port()));
    let agent = Agent::start(&[]);
    let held = hold("v6", dst, Proto::Redis, 6);
    let pool = PoolRef::of(&held, dst);
    assert_eq!(pool.dst_addr, "::1", "test setup: the pool is labelled in IPv6 notation");
    let s = agent.wait_metrics(deadline(30), "6 IPv6 connections to [::1]", |s| match pool.get(s, POOL_CONNECTIONS) {
        Some(6.0) => Ok(s.to_vec()),
        other => Err(format!("{pool}: {other:?}")),
    });
    let named =
        redis.client_list().iter().filter(|c| c.get("name").map(String::as_str) == Some(held.name.as_str())).count();
    let ss = ss_estab_owned_by(&Netns::host(), held.pid(), redis.port());
    let f = pool.figures(&s);
    assert_eq!((f.active, named, ss), (Some(6.0), 6, 6), "{pool}: connmon {f}, CLIENT LIST {named}, ss {ss}");
    assert_eq!(f.service.as_deref(), Some("redis"), "{pool}: classed by protocol or port: {f}");

    let mut churn =
        ClientProc::spawn(ClientSpec::new("v6c", dst, Proto::Redis, Mode::Churn { count: 50, max_secs: 0.0 }));
    assert_eq!(churn.finish(Duration::from_secs(60)), 50, "the client completes 50 cycles");
    let p = PoolRef::of(&churn, dst);
    agent.wait_metrics(deadline(30), "50 IPv6 opens and closes, none open", |s| {
        let f = p.figures(s);
        if f.opens == Some(50.0) && f.closes == Some(50.0) && f.active == Some(0.0) {
            Ok(())
        } else {
            Err(format!("{p}: {f}"))
        }
    });
}
