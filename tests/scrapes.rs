//! Scrapes under load and from several scrapers (issue 14): 100 concurrent scrapes share
//! collections on a bounded pool (threads, RSS and completeness measured on the real agent from
//! /proc), and two scrapers each see a burst that came and went before either scraped. Needs root.

use connmon_test_support as common;

use std::{
    net::SocketAddr,
    os::fd::OwnedFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::*;
use connmon::export::LISTEN_QUEUE_PEAK;

const MIB: f64 = 1024.0 * 1024.0;
const CONCURRENCY: usize = 100;
const SCRAPES: usize = 200;

/// Threads and VmRSS (bytes) of `pid` from /proc.
fn threads_and_rss(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some((field("Threads:")?, field("VmRSS:")? * 1024))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `SCRAPES` scrapes of /metrics, `CONCURRENCY` at a time, each over a fresh connection (half ask
/// for OpenMetrics, half for the classic format); the agent's threads and RSS sampled every 2 ms.
#[test]
fn hundred_concurrent_scrapes_stay_bounded() {
    let agent = Agent::start(&[]);
    let pid = agent.pid();
    // Idle: after a few sequential scrapes, so lazily built state (caches, the first full dump)
    // exists before the baseline is taken.
    for _ in 0..3 {
        assert_eq!(agent.get("/metrics").0, 200);
    }
    std::thread::sleep(Duration::from_millis(500));
    let (threads0, rss0) = threads_and_rss(pid).expect("agent status");

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut threads, mut rss) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                if let Some((t, r)) = threads_and_rss(pid) {
                    threads = threads.max(t);
                    rss = rss.max(r);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (threads, rss)
        })
    };
    let addr = agent.addr();
    let t0 = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|w| {
            std::thread::spawn(move || {
                (0..SCRAPES / CONCURRENCY)
                    .map(|i| {
                        let openmetrics = (w + i) % 2 == 0;
                        let accept: &[(&str, &str)] = if openmetrics {
                            &[("accept", "application/openmetrics-text; version=1.0.0")]
                        } else {
                            &[]
                        };
                        let t = Instant::now();
                        let r = http_get(addr, "/metrics", accept);
                        (t.elapsed(), openmetrics, r)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<_> = workers.into_iter().flat_map(|w| w.join().expect("scrape thread")).collect();
    let wall = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (threads_max, rss_max) = sampler.join().expect("sampler");

    let mut latencies = Vec::new();
    for (took, openmetrics, r) in &results {
        let r = r.as_ref().unwrap_or_else(|e| panic!("a scrape failed after {took:?}: {e}"));
        assert_eq!(r.status, 200, "a scrape answered {}: {}", r.status, r.body);
        // Complete: ureq checked the length against Content-Length; families from the start and
        // the end of the exposition are there, and OpenMetrics ends in # EOF.
        assert!(
            r.body.contains("connmon_build_info") && r.body.contains("connmon_probe_up"),
            "incomplete exposition:\n{}",
            r.body
        );
        if *openmetrics {
            assert!(r.body.ends_with("# EOF\n"), "OpenMetrics body without its # EOF");
        } else {
            assert!(!r.body.contains("# EOF"), "classic body with an OpenMetrics # EOF");
        }
        latencies.push(*took);
    }
    latencies.sort();
    let s = agent.samples();
    let started = sample(&s, "connmon_scrape_collections_total", &[("collection", "started")]).unwrap_or(0.0);
    let shared = sample(&s, "connmon_scrape_collections_total", &[("collection", "shared")]).unwrap_or(0.0);
    eprintln!(
        "{SCRAPES} scrapes, {CONCURRENCY} at a time, in {wall:?}: latency median {:?} p90 {:?} max {:?}; \
         agent threads {threads0} idle, {threads_max} max; RSS {:.1} MiB idle, {:.1} MiB max (+{:.1} MiB); \
         collections started {started}, scrapes that shared one {shared}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        latencies.last().unwrap(),
        rss0 as f64 / MIB,
        rss_max as f64 / MIB,
        rss_max.saturating_sub(rss0) as f64 / MIB,
    );
    assert!(threads_max <= 32, "the agent reached {threads_max} threads under {CONCURRENCY} concurrent scrapes");
    assert!(
        rss_max.saturating_sub(rss0) as f64 <= 16.0 * MIB,
        "agent RSS rose {:.1} MiB over idle ({:.1} MiB) under load",
        rss_max.saturating_sub(rss0) as f64 / MIB,
        rss0 as f64 / MIB
    );
    assert!(shared > 0.0, "no scrape shared a collection (started {started}): single-flight is not working");
    assert!(started + shared >= SCRAPES as f64, "scrapes counted {started} + {shared} < {SCRAPES}");
}

/// In `ns`: a listener with backlog 4 on a fresh port, a burst of 5 connects queued on it and
/// drained (accepted) again, as `ss` confirms. Returns the listener's peak labels.
fn burst(agent: &Agent, ns: &Netns) -> (OwnedFd, Vec<(String, String)>) {
    let port = unique_port();
    let a: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listener = ns.run(|| listen_tcp(a, 4));
    let labels: Vec<(String, String)> = [
        ("netns", ns.inode().to_string()),
        ("addr", "127.0.0.1".to_string()),
        ("port", port.to_string()),
        ("source", "ebpf".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    agent.wait_metrics(deadline(30), "the listener's peak series", |s| {
        sample(s, LISTEN_QUEUE_PEAK, &l).ok_or("absent".to_string())
    });
    let clients: Vec<OwnedFd> = ns.run(|| (0..5).map(|_| connect_nonblocking(a)).collect());
    wait_recv_q(ns, a, 5);
    assert_eq!(accept_all(&listener), 5, "accepted connections");
    wait_recv_q(ns, a, 0);
    drop(clients);
    (listener, labels)
}

/// Two scrapers (think: an HA pair of Prometheus servers) scrape one after the other after a
/// burst that came and went: both see it. Under "peak since the previous scrape" the first scrape
/// reset the period and the second saw 0.
#[test]
fn two_scrapers_both_see_a_peak() {
    let agent = Agent::start(&[]);
    let ns = Netns::new();
    let (_listener, labels) = burst(&agent, &ns);
    let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for scraper in ["first", "second", "third"] {
        // A fresh connection each: separate scrapers as the agent sees them.
        let r = http_get(agent.addr(), "/metrics", &[]).expect("scrape");
        let peak = sample(&parse_metrics(&r.body), LISTEN_QUEUE_PEAK, &l);
        assert!(
            peak.is_some_and(|p| (4.0..=5.0).contains(&p)),
            "the {scraper} scraper sees peak {peak:?}, want 4..=5 (ss saw 5 queued, then drained)"
        );
    }
}

/// The window ends: with --peaks.window 6s, the burst's peak is gone (back to the depth, 0)
/// within the window plus one bucket, and not before the window.
#[test]
fn a_peak_leaves_after_its_window() {
    let agent = Agent::start(&["--peaks.window", "6s"]);
    let ns = Netns::new();
    let (_listener, labels) = burst(&agent, &ns);
    let drained = Instant::now();
    let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let gone = poll_every(Duration::from_millis(250), deadline(20), "the peak to fall back to 0", || {
        match sample(&agent.samples(), LISTEN_QUEUE_PEAK, &l) {
            Some(0.0) => Ok(drained.elapsed()),
            other => Err(format!("peak {other:?} {:?} after the drain", drained.elapsed())),
        }
    });
    // The burst was recorded at the latest at the first collection after the drain; it must
    // last the window (6 s), less the time between the burst and the drain being confirmed.
    assert!(gone >= Duration::from_secs(5), "the peak left after {gone:?}, before its 6 s window");
    eprintln!("peak of the burst visible for {gone:?} after the drain (window 6 s, bucket 1 s)");
}

/// `n` connections to the agent that each send half a request head and then nothing.
fn half_sent(addr: SocketAddr, n: usize) -> Vec<std::net::TcpStream> {
    use std::io::Write as _;
    (0..n)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(addr).expect("connect to the agent");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: connmon\r\n").expect("half a request");
            s
        })
        .collect()
}

/// 300 connections holding half-sent requests (default caps) do not delay a scrape.
#[test]
fn half_sent_requests_do_not_delay_a_scrape() {
    let agent = Agent::start(&[]);
    let _slow = half_sent(agent.addr(), 300);
    let t = Instant::now();
    let r = http_get(agent.addr(), "/metrics", &[]).expect("scrape");
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < Duration::from_secs(3), "a scrape took {:?} beside 300 half-sent requests", t.elapsed());
    let s = parse_metrics(&r.body);
    assert_eq!(sample(&s, "connmon_web_connections_limit", &[]), Some(512.0));
    assert!(sample(&s, "connmon_web_connections", &[]).is_some_and(|n| n >= 300.0), "open connections not counted");
    // Nothing was prepared for this first scrape: the age is its own collection's time.
    let age = sample(&s, "connmon_exposition_age_seconds", &[]);
    assert!(age.is_some_and(|a| (0.0..3.0).contains(&a)), "exposition age {age:?}");
}

/// With every connection slot held by a half-sent request, a scrape waits in the kernel's accept
/// queue until the agent closes them (10 s header read timeout), then is served; the wait is
/// counted.
#[test]
fn a_full_connection_cap_waits_and_is_counted() {
    use std::io::Read as _;
    let agent = Agent::start(&["--web.max-connections", "8"]);
    let mut slow = half_sent(agent.addr(), 8);
    let t = Instant::now();
    let r = http_get(agent.addr(), "/metrics", &[]).expect("scrape behind a full cap");
    let waited = t.elapsed();
    assert_eq!(r.status, 200);
    let s = parse_metrics(&r.body);
    let hits = sample(&s, "connmon_web_connection_limit_hits_total", &[]);
    eprintln!("a scrape behind 8 half-sent requests (cap 8) was served after {waited:?}; limit hits {hits:?}");
    assert!(hits.is_some_and(|h| h >= 1.0), "the full cap was not counted: {hits:?}");
    assert!(waited >= Duration::from_secs(5) && waited <= Duration::from_secs(15), "served after {waited:?}");
    // The half-sent connections were closed by the agent (EOF, or a 408 and then EOF).
    for c in &mut slow {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        assert!(
            buf.is_empty() || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&buf)
        );
    }
}
