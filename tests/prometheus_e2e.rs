//! A real Prometheus scraping a real agent: the exposition must survive Prometheus's own parser
//! (2.42 asks for OpenMetrics first), and what PromQL then answers must be what the workload is.
//!
//! Workload: redis-server and PostgreSQL 15 with one client process each (6 and 4 held connections,
//! each client with a comm and cgroup of its own), and a listener in a test network namespace with
//! backlog 2 and 5 clients that are never accepted (queue full at 3, the rest dropped). Prometheus
//! scrapes the agent every second; after two scrapes the checks go through /api/v1/query.
//! Needs root (agent, cgroups, netns) and Prometheus (Debian: package `prometheus`; `PROMETHEUS`
//! overrides the binary).

use connmon::export::pools::{POOL_CONNECTIONS, POOL_OPENS};
use connmon::export::{
    BUILD_INFO, LISTEN_DROPS, LISTEN_QUEUE_DEPTH, LISTEN_QUEUE_FILL, LISTEN_QUEUE_MAX, NETNS_INFO, PROBE_UP,
    SCAN_DURATION,
};
use connmon_test_support as common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

/// The client process (does nothing in a normal run; see `common::client`).
#[test]
fn client_entry() {
    client_main()
}

/// What Prometheus 2.42 sends as `Accept` when it scrapes (scrape.go, `scrapeAcceptHeader`).
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

const JOB: &str = "connmon";

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `expr` until `check` accepts its result, or panics after 30 s quoting the last answer.
fn wait_query<T>(
    prom: &Prometheus,
    what: &str,
    expr: &str,
    mut check: impl FnMut(&[PromSample]) -> Result<T, String>,
) -> T {
    poll_until(deadline(30), &format!("{what} (PromQL: {expr})"), || {
        let got = prom.query(expr)?;
        check(&got).map_err(|e| {
            let shown: Vec<String> = got.iter().map(|s| s.to_string()).collect();
            format!("{e}; result: [{}]", shown.join(", "))
        })
    })
}

/// `expr` must return exactly one series whose value passes `ok`; returns it.
fn wait_one(prom: &Prometheus, what: &str, expr: &str, ok: impl Fn(f64) -> bool) -> PromSample {
    wait_query(prom, what, expr, |v| match v {
        [s] if ok(s.value) => Ok(s.clone()),
        [s] => Err(format!("value {}", s.value)),
        _ => Err(format!("{} series, want 1", v.len())),
    })
}

/// The target of job `JOB` from /api/v1/targets.
fn connmon_target(prom: &Prometheus) -> Result<serde_json::Value, String> {
    let targets = prom.active_targets()?;
    let mine: Vec<&serde_json::Value> = targets.iter().filter(|t| t["labels"]["job"] == JOB).collect();
    match mine.as_slice() {
        [t] => Ok((*t).clone()),
        _ => Err(format!("{} targets of job {JOB}: {targets:?}", mine.len())),
    }
}

const DASHBOARD: &str = "deploy/grafana/connmon.json";

/// Metrics this test's workload certainly produces: every dashboard query reading one of them must
/// return data.
const MUST_SHOW_DATA: [&str; 10] = [
    LISTEN_QUEUE_DEPTH,
    LISTEN_QUEUE_MAX,
    LISTEN_QUEUE_FILL,
    LISTEN_DROPS,
    POOL_CONNECTIONS,
    POOL_OPENS,
    PROBE_UP,
    BUILD_INFO,
    SCAN_DURATION,
    NETNS_INFO,
];

/// (panel and query, expr) of every query in the Grafana dashboard, with the template variables
/// filled in as "All" would (`.*`) and the interval variables as 1m / 1h.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(DASHBOARD);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    fn walk(list: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            walk(&p["panels"], out);
            for t in p["targets"].as_array().into_iter().flatten() {
                let Some(expr) = t["expr"].as_str() else {
                    continue;
                };
                let mut e = expr.to_string();
                for (var, value) in [("$__rate_interval", "1m"), ("$__interval", "1m"), ("$__range", "1h")] {
                    e = e.replace(var, value);
                }
                // Every other variable sits in a `=~"…"` matcher.
                while let Some(i) = e.find('$') {
                    let rest = &e[i + 1..];
                    let len = if rest.starts_with('{') {
                        rest.find('}').map_or(rest.len(), |j| j + 1)
                    } else {
                        rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len())
                    };
                    e.replace_range(i..i + 1 + len, ".*");
                }
                out.push((
                    format!(
                        "panel {:?} query {}",
                        p["title"].as_str().unwrap_or("?"),
                        t["refId"].as_str().unwrap_or("?")
                    ),
                    e,
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

#[test]
fn prometheus_scrapes_the_agent() {
    assert!(
        have_program(&prometheus_bin()) || std::path::Path::new(&prometheus_bin()).is_file(),
        "{} not found; install Prometheus (Debian: apt install prometheus) or set PROMETHEUS",
        prometheus_bin()
    );

    // Servers on ports nobody else uses, classified by port for this agent (and by protocol where
    // the protocol probe recognises the wire format: both say the same).
    let redis = Redis::start(free_local_port(), &[]);
    let pg = Postgres::start(free_local_port());
    let redis_svc = format!("redis={}", redis.port());
    let pg_svc = format!("postgres={}", pg.port());
    let agent = Agent::start(&["--service", &redis_svc, "--service", &pg_svc]);

    let rc = ClientProc::spawn(ClientSpec::new("pmr", redis.addr(), Proto::Redis, Mode::Hold { count: 6 }));
    let pc = ClientProc::spawn(ClientSpec::new("pmp", pg.addr(), Proto::Postgres, Mode::Hold { count: 4 }));
    assert_eq!(redis.clients_named(&rc.name), 6, "redis CLIENT LIST");
    assert_eq!(pg.count_by_application(&pc.name), 4, "pg_stat_activity");

    // Backlog 2: the accept queue holds 3; the other 2 clients' SYNs are dropped (and retried).
    let ns = Netns::new();
    let port = unique_port();
    let (_listener, _clients) = overflowing_listener(&ns, local(port), 2, 5);
    let (ino, port_s) = (ns.inode().to_string(), port.to_string());

    // Prometheus, scraping the agent every second.
    let prom = Prometheus::start(&scrape_config(JOB, "1s", &[agent.addr()]));
    eprintln!("prometheus on {} scraping agent {} (pid {})", prom.addr(), agent.addr(), agent.pid());

    // Two scrapes done, the last one good.
    let target = poll_until(deadline(60), &format!("prometheus to scrape job {JOB} at least twice"), || {
        let t = connmon_target(&prom)?;
        let last = t["lastScrape"].as_str().unwrap_or("");
        if t["health"] != "up" || last.is_empty() || last.starts_with("0001-") {
            return Err(format!("target not scraped successfully yet: {t}"));
        }
        let n = prom.query_one(&format!("count_over_time(up{{job=\"{JOB}\"}}[1m])"))?;
        if n.value < 2.0 {
            return Err(format!("{} scrapes so far; target {t}", n.value));
        }
        Ok(t)
    });
    eprintln!("target: {target}");
    let want_url = format!("http://{}/metrics", agent.addr());
    assert_eq!(target["scrapeUrl"], want_url.as_str(), "{target}");

    // Pools: one series per client, with the right service.
    for (client, n, service, dst) in [(&rc, 6.0, "redis", redis.addr()), (&pc, 4.0, "postgres", pg.addr())] {
        let expr = format!("connmon_pool_connections{{comm=\"{}\"}}", client.name);
        let s = wait_one(&prom, &format!("{} open connections of {}", n, client.name), &expr, |v| v == n);
        assert_eq!(s.label("service"), Some(service), "{expr}: {s}");
        assert_eq!(s.label("job"), Some(JOB), "{expr}: {s}");
        assert_eq!(s.label("dst_addr"), Some("127.0.0.1"), "{expr}: {s}");
        assert_eq!(s.label("dst_port"), Some(dst.port().to_string().as_str()), "{expr}: {s}");
        assert_eq!(s.label("cgroup"), Some(client.cgroup()), "{expr}: {s}");
        let peak = format!("connmon_pool_connections_peak{{comm=\"{}\"}}", client.name);
        wait_one(&prom, "peak >= open connections", &peak, |v| v >= n);
        // Opened while the agent watched: a histogram sample per handshake.
        let count = format!("connmon_pool_connect_duration_seconds_count{{comm=\"{}\"}}", client.name);
        wait_one(&prom, "one connect-latency sample per connection", &count, |v| v == n);
    }

    // The listener.
    let sel = format!("{{netns=\"{ino}\",port=\"{port_s}\"}}");
    let depth =
        wait_one(&prom, "accept queue depth 3 (backlog 2 + 1)", &format!("connmon_listen_queue_depth{sel}"), |v| {
            v == 3.0
        });
    assert_eq!(depth.label("addr"), Some("127.0.0.1"), "{depth}");
    assert_eq!(depth.label("comm"), Some(self_comm().as_str()), "{depth}");
    wait_one(&prom, "backlog 2", &format!("connmon_listen_queue_max{sel}"), |v| v == 2.0);
    wait_one(&prom, "fill ratio 3/2", &format!("connmon_listen_queue_fill_ratio{sel}"), |v| (v - 1.5).abs() < 1e-9);
    wait_one(&prom, "drops > 0", &format!("connmon_listen_drops_total{sel}"), |v| v > 0.0);
    // The peak covers the last --peaks.window (1m); the queue has been full all along.
    wait_one(&prom, "peak depth >= depth", &format!("connmon_listen_queue_peak_depth{sel}"), |v| v >= 3.0);

    // The agent itself, and the scrape.
    wait_one(&prom, "the pools probe attached", "connmon_probe_up{probe=\"pools\"}", |v| v == 1.0);
    wait_one(
        &prom,
        "connmon_build_info (an info metric in OpenMetrics)",
        &format!("connmon_build_info{{job=\"{JOB}\"}}"),
        |v| v == 1.0,
    );
    wait_one(&prom, "up", &format!("up{{job=\"{JOB}\"}}"), |v| v == 1.0);
    wait_one(&prom, "samples in the last scrape", &format!("scrape_samples_scraped{{job=\"{JOB}\"}}"), |v| v > 0.0);
    let target = connmon_target(&prom).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(target["health"], "up", "{target}");
    assert_eq!(target["lastError"], "", "the last scrape of the agent failed: {target}");

    // Samples Prometheus read but rejected do not fail a scrape; its own counters tell.
    let own = http_get(prom.addr(), "/metrics", &[]).unwrap_or_else(|e| panic!("GET prometheus /metrics: {e}"));
    let own = parse_metrics(&own.body);
    for counter in [
        "prometheus_target_scrapes_sample_duplicate_timestamp_total",
        "prometheus_target_scrapes_sample_out_of_order_total",
        "prometheus_target_scrapes_sample_out_of_bounds_total",
        "prometheus_target_scrapes_exceeded_sample_limit_total",
        "prometheus_target_scrapes_exceeded_body_size_limit_total",
    ] {
        if let Some(v) = sample(&own, counter, &[]) {
            assert_eq!(v, 0.0, "prometheus rejected samples of the agent: {counter} = {v}");
        }
    }

    // Which format that scrape negotiated: ask the agent the way Prometheus does.
    let r = agent.request("/metrics", &[("Accept", PROMETHEUS_ACCEPT)]);
    assert_eq!(r.status, 200, "{}", r.body);
    let ct = r.header("content-type").unwrap_or_default().to_string();
    if ct.starts_with("application/openmetrics-text") {
        assert!(
            r.body.ends_with("# EOF\n"),
            "OpenMetrics body does not end in `# EOF`: ...{}",
            &r.body[r.body.len().saturating_sub(200)..]
        );
    } else {
        assert!(
            ct.starts_with("text/plain") && ct.contains("version=0.0.4"),
            "unexpected Content-Type {ct:?} for Prometheus's Accept"
        );
    }
    eprintln!("agent answered Prometheus's Accept with {ct}");

    // The Grafana dashboard's queries, on this live data: every one evaluates, and the panels for
    // what this workload produces show it (label values such as counter="ListenOverflows" and the
    // netns_info join are only checked here: promtool in tests/dashboard.rs checks syntax).
    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "{DASHBOARD}: {} queries", queries.len());
    let mut empty = Vec::new();
    for (what, expr) in &queries {
        let got = prom.query(expr).unwrap_or_else(|e| panic!("{what}: Prometheus rejects {expr}: {e}"));
        if got.is_empty() {
            empty.push(format!("{what}: {expr}"));
        }
    }
    for metric in MUST_SHOW_DATA {
        let hits: Vec<&(String, String)> = queries.iter().filter(|(_, e)| e.contains(&format!("{metric}{{"))).collect();
        assert!(!hits.is_empty(), "{DASHBOARD}: no query reads {metric}");
        for (what, expr) in hits {
            assert!(
                !empty.iter().any(|e| e.starts_with(&format!("{what}: "))),
                "{what} shows no data although this test's workload produces {metric}: {expr}"
            );
        }
    }
    eprintln!(
        "{} dashboard queries evaluated; {} empty on this workload:\n  {}",
        queries.len(),
        empty.len(),
        empty.join("\n  ")
    );
    // The per-namespace overflow panel joins with connmon_netns_info for the namespace's name.
    let (what, expr) = queries
        .iter()
        .find(|(w, e)| w.contains("ListenOverflows") && e.contains(NETNS_INFO))
        .unwrap_or_else(|| panic!("{DASHBOARD}: no ListenOverflows panel joined with connmon_netns_info"));
    wait_query(&prom, what, expr, |v| {
        v.iter()
            .find(|s| s.label("netns") == Some(ino.as_str()))
            .map(|s| {
                assert_eq!(s.label("name"), Some(ns.name()), "{what}: {s}");
            })
            .ok_or_else(|| format!("no series for netns {ino}"))
    });

    // One more good scrape after all of the above (the direct request shares the scrape period).
    std::thread::sleep(Duration::from_millis(1500));
    let target = connmon_target(&prom).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(target["health"], "up", "{target}");
    assert_eq!(target["lastError"], "", "{target}");
}

#[test]
fn url_encoding_keeps_only_unreserved_characters() {
    assert_eq!(url_encode("up{job=\"a b\"} >= 2"), "up%7Bjob%3D%22a%20b%22%7D%20%3E%3D%202");
    assert_eq!(url_encode("a-b.c_d~e09"), "a-b.c_d~e09");
    assert_eq!(url_encode("rate(x[1m])/é+"), "rate%28x%5B1m%5D%29%2F%C3%A9%2B");
}

#[test]
fn scrape_config_is_valid_for_promtool() {
    if !have_program("promtool") {
        eprintln!("promtool not found; skipping");
        return;
    }
    let dir = TempDir::new("cmpromcfg");
    let path = dir.path().join("prometheus.yml");
    std::fs::write(&path, scrape_config(JOB, "1s", &[local(9977)])).expect("write config");
    let out = run(std::process::Command::new("promtool").args(["check", "config"]).arg(&path));
    assert!(
        out.status.success(),
        "promtool check config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
