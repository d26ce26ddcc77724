//! The listener-side incident, replayed (issue 12): a pre-fork server with `listen(2048)` and a
//! fixed service time (tests/fixtures/prefork_server.py), driven above capacity by clients that
//! give each attempt 500 ms and retry at once (tests/fixtures/timeout_clients.py), as nginx in
//! front of uWSGI does. With the deep backlog the overload shows up as slow timeouts: connections
//! wait seconds, clients give up while queued, and AcceptQueueSlowFailure must fire within 30 s
//! with the agent's DEFAULT settings. The same server with a short backlog fails fast instead
//! (overflows, ListenOverflow) and the slow-failure alert stays silent. Also: the queue-wait
//! figures against the clients' own connect()->first-byte times, and a backlog clamped by a
//! namespace's somaxconn against `ss`. Needs root.
//!
//! Truth here: the clients' own log of every attempt (outcome, time to the greeting the server
//! sends at accept()), `ss -tln` and `nstat` in the test's namespace.

use connmon_test_support as common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::alert_views::*;
use common::*;

/// The scenarios load the CPU (60 client threads, a pre-fork server); one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const SLOW: &str = "AcceptQueueSlowFailure";

fn now() -> f64 {
    now_epoch()
}

fn listener_labels<'a>(ino: &'a str, port: &'a str) -> [(&'a str, &'a str); 3] {
    [("netns", ino), ("addr", "127.0.0.1"), ("port", port)]
}

fn timeouts(attempts: &[Attempt]) -> usize {
    attempts.iter().filter(|a| a.outcome == "timeout").count()
}

#[test]
fn deep_backlog_fails_slowly_and_the_alert_fires_within_30s() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let agent = Agent::start(&[]);
    let ns = Netns::new();
    let port = unique_port();
    let (ino, port_s) = (ns.inode().to_string(), port.to_string());
    let labels = listener_labels(&ino, &port_s);
    // 4 workers x 50 ms: 80 requests/s at most. 60 clients retrying every 500 ms ask ~120/s.
    let _server = PreforkServer::start(&ns, "127.0.0.1", port, 2048, 4, 50);
    let t0 = now();
    let clients = TimeoutClients::start(&ns, "127.0.0.1", port, 60, 500, 45);

    let alert = wait_agent_firing(&agent, Instant::now() + Duration::from_secs(40), SLOW, &labels);
    let after = epoch(alert["since"].as_str().expect("since")) - t0;
    eprintln!(
        "AcceptQueueSlowFailure fired {after:.1}s after the overload started; annotations: {}",
        alert["annotations"]
    );
    assert!(after <= 30.0, "fired {after:.1}s after the overload started, more than 30s");
    let suggested = ann_f64(&alert, "suggested_backlog");
    assert!(
        (40.0..=120.0).contains(&suggested),
        "suggested backlog {suggested} is not about accept rate (<= 80/s) x 1s"
    );

    let before = clients.attempts();
    let s = agent.samples();
    let after_scrape = clients.attempts();
    let abandoned: f64 = samples_matching(&s, "connmon_listen_abandoned_total", &labels).iter().map(|x| x.value).sum();
    let little = sample_expect(
        &s,
        "connmon_listen_queue_wait_seconds",
        &[labels[0], labels[1], labels[2], ("method", "littles_law")],
    );
    let measured = sample_expect(
        &s,
        "connmon_listen_queue_wait_seconds",
        &[labels[0], labels[1], labels[2], ("method", "accept")],
    );
    let closed = sample_expect(&s, "connmon_listen_accepted_closed_total", &labels);
    eprintln!(
        "deep backlog: wait {little:.2}s (Little) {measured:.2}s (measured at accept), abandoned {abandoned}, accepted closed {closed}; clients: {} timeouts of {} attempts",
        timeouts(&after_scrape),
        after_scrape.len()
    );
    assert!(little > 0.5 && measured > 0.5, "queue wait {little}/{measured} is not above the clients' 500 ms");
    assert!(abandoned > 0.0, "no connection counted abandoned");
    // Every connection abandoned in the queue is an attempt its client gave up on.
    assert!(
        abandoned <= timeouts(&after_scrape) as f64,
        "abandoned {abandoned} > client timeouts {}",
        timeouts(&after_scrape)
    );
    assert!(
        abandoned >= 0.5 * timeouts(&before) as f64,
        "abandoned {abandoned} is far below the client timeouts {}",
        timeouts(&before)
    );
    assert!(closed > 0.0, "no connection accepted already closed");
    assert_eq!(sample(&s, "connmon_listen_queue_drain_exceeds_client_timeout", &labels), Some(1.0));
    assert_eq!(sample(&s, "connmon_listen_backlog_requested", &labels), Some(2048.0));
    assert_eq!(sample(&s, "connmon_listen_backlog_clamped", &labels), Some(0.0));
    let ss = ss_listener(&ns, "127.0.0.1", port).expect("ss lost the listener");
    assert_eq!(sample(&s, "connmon_listen_queue_max", &labels), Some(ss.send_q as f64));
    drop(clients);
}

#[test]
fn short_backlog_fails_fast_and_the_slow_failure_alert_stays_silent() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let agent = Agent::start(&[]);
    let ns = Netns::new();
    let port = unique_port();
    let (ino, port_s) = (ns.inode().to_string(), port.to_string());
    let labels = listener_labels(&ino, &port_s);
    let overflows_before = nstat_counter(&ns, "TcpExtListenOverflows");
    let _server = PreforkServer::start(&ns, "127.0.0.1", port, 8, 4, 50);
    let clients = TimeoutClients::start(&ns, "127.0.0.1", port, 60, 500, 35);
    let until = Instant::now() + Duration::from_secs(35);
    let mut overflow_seen = false;
    let mut worst_wait: f64 = 0.0;
    while Instant::now() < until {
        let list = agent_alerts(&agent).expect("agent alerts");
        let slow = agent_matching(&list, SLOW, &labels);
        assert!(slow.is_empty(), "the short backlog fails fast, yet {SLOW} is {slow:?}");
        overflow_seen |= !agent_matching(&list, "ListenOverflow", &labels).is_empty();
        let s = agent.samples();
        if let Some(w) = sample(
            &s,
            "connmon_listen_queue_wait_seconds",
            &[labels[0], labels[1], labels[2], ("method", "littles_law")],
        ) {
            worst_wait = worst_wait.max(w);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let attempts = clients.wait();
    let overflows = nstat_counter(&ns, "TcpExtListenOverflows") - overflows_before;
    let s = agent.samples();
    let abandoned: f64 = samples_matching(&s, "connmon_listen_abandoned_total", &labels).iter().map(|x| x.value).sum();
    eprintln!(
        "short backlog: ListenOverflows {overflows}, worst queue wait {worst_wait:.3}s, abandoned {abandoned}; clients: {} ok, {} timeouts of {}",
        attempts.iter().filter(|a| a.outcome == "ok").count(),
        timeouts(&attempts),
        attempts.len()
    );
    assert!(overflows > 0, "no ListenOverflows in the namespace");
    assert!(overflow_seen, "ListenOverflow never fired for the short backlog");
    assert!(worst_wait < 0.5, "queue wait reached {worst_wait}s with a backlog of 8");
    assert!(sample_expect(&s, "connmon_listen_drops_total", &labels) > 0.0);
}

#[test]
fn queue_wait_agrees_with_what_clients_measured() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let agent = Agent::start(&[]);
    let ns = Netns::new();
    let port = unique_port();
    let (ino, port_s) = (ns.inode().to_string(), port.to_string());
    let labels = listener_labels(&ino, &port_s);
    // 2 workers x 100 ms: 20 accepts/s. 22 patient clients keep ~20 queued: about 1 s each.
    let _server = PreforkServer::start(&ns, "127.0.0.1", port, 2048, 2, 100);
    let clients = TimeoutClients::start(&ns, "127.0.0.1", port, 22, 30_000, 40);
    // Past the ramp-up, the agent's 10 s window holds steady-state samples only.
    std::thread::sleep(Duration::from_secs(20));
    let mut rows = Vec::new();
    for _ in 0..3 {
        let s = agent.samples();
        let t = now();
        let get = |m: &str| {
            sample_expect(&s, "connmon_listen_queue_wait_seconds", &[labels[0], labels[1], labels[2], ("method", m)])
        };
        let (little, measured) = (get("littles_law"), get("accept"));
        let rate = sample_expect(&s, "connmon_listen_accept_rate", &labels);
        // The clients' waits for greetings that came in the agent's window.
        let waits: Vec<f64> = clients
            .attempts()
            .iter()
            .filter_map(|a| a.first_byte.map(|f| (a.start + f, f)))
            .filter(|(at, _)| (t - 10.0..=t).contains(at))
            .map(|(_, f)| f)
            .collect();
        assert!(waits.len() > 50, "only {} greetings in the window", waits.len());
        let truth = waits.iter().sum::<f64>() / waits.len() as f64;
        rows.push((truth, little, measured, rate));
        std::thread::sleep(Duration::from_secs(4));
    }
    let cli = connmon_listeners_json(&["--netns", ns.name(), "--for", "4s"]);
    let row = find_row(&cli, ns.inode(), "127.0.0.1", port);
    let cli_wait = json_f64(row, "wait_seconds");
    drop(clients);
    for (truth, little, measured, rate) in &rows {
        let err = |v: f64| (v - truth) / truth * 100.0;
        eprintln!(
            "clients measured {truth:.3}s; Little {little:.3}s ({:+.1}%), at accept {measured:.3}s ({:+.1}%); accept rate {rate:.1}/s",
            err(*little),
            err(*measured)
        );
        assert!((rate - 20.0).abs() < 3.0, "accept rate {rate} is not the server's 20/s");
        assert!(err(*little).abs() <= 15.0, "Little's-law wait {little} is more than 15% off the clients' {truth}");
        assert!(err(*measured).abs() <= 10.0, "measured wait {measured} is more than 10% off the clients' {truth}");
    }
    eprintln!("connmon listeners --for 4s: wait {cli_wait:.3}s");
    assert!((cli_wait - rows[2].0).abs() <= 0.2 * rows[2].0, "connmon listeners shows {cli_wait}s");
}

#[test]
fn a_backlog_clamped_by_somaxconn_is_flagged() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let agent = Agent::start(&[]);
    let ns = Netns::new();
    ns.exec_ok(&["sysctl", "-qw", "net.core.somaxconn=128"]);
    let port = unique_port();
    let (ino, port_s) = (ns.inode().to_string(), port.to_string());
    let labels = listener_labels(&ino, &port_s);
    let _server = PreforkServer::start(&ns, "127.0.0.1", port, 4096, 1, 10);
    let ss = ss_listener(&ns, "127.0.0.1", port).expect("ss shows the listener");
    assert_eq!(ss.send_q, 128, "test setup: somaxconn caps the backlog");
    let sysctl = [("netns", ino.as_str()), ("name", "net.core.somaxconn")];
    agent.wait_metrics(deadline(20), "the clamp flagged", |s| {
        let got = (
            sample(s, "connmon_listen_backlog_requested", &labels),
            sample(s, "connmon_listen_queue_max", &labels),
            sample(s, "connmon_listen_backlog_clamped", &labels),
            sample(s, "connmon_netns_sysctl", &sysctl),
        );
        let want = (Some(4096.0), Some(ss.send_q as f64), Some(1.0), Some(128.0));
        if got == want {
            Ok(())
        } else {
            Err(format!("got {got:?}, want {want:?}"))
        }
    });
    // The host's own value, read in the host's namespace, is not the test namespace's.
    let host = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse::<f64>().unwrap();
    let s = agent.samples();
    let host_ino = Netns::host().inode().to_string();
    assert_eq!(
        sample(&s, "connmon_netns_sysctl", &[("netns", host_ino.as_str()), ("name", "net.core.somaxconn")]),
        Some(host)
    );
}

/// Clients that give up while queued, one by one: 3 close (FIN), 2 reset (SO_LINGER 0), 2 stay.
/// The counts are the clients' own actions; after accept() the 5 gone are counted closed and all
/// 7 waits are measured.
#[test]
fn each_client_that_gives_up_in_the_queue_is_counted_once() {
    use std::net::TcpStream;
    use std::os::fd::AsRawFd as _;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let agent = Agent::start(&[]);
    let ns = Netns::new();
    let port = unique_port();
    let a = addr(&format!("127.0.0.1:{port}"));
    let (ino, port_s) = (ns.inode().to_string(), port.to_string());
    let labels = listener_labels(&ino, &port_s);
    let (listener, clients) = ns.run(|| {
        let l = listen_tcp(a, 16);
        let cs: Vec<TcpStream> = (0..7).map(|_| TcpStream::connect(a).expect("connect")).collect();
        (l, cs)
    });
    wait_recv_q(&ns, a, 7);
    let mut clients = clients.into_iter();
    for c in clients.by_ref().take(3) {
        drop(c);
    }
    for c in clients.by_ref().take(2) {
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: setsockopt with a valid struct of the size given.
        let rc = unsafe {
            libc::setsockopt(
                c.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_LINGER");
        drop(c);
    }
    let staying: Vec<TcpStream> = clients.collect();
    assert_eq!(staying.len(), 2);
    let how = |h: &'static str| [labels[0], labels[1], labels[2], ("how", h)];
    agent.wait_metrics(deadline(15), "3 abandoned by FIN and 2 by RST", |s| {
        let got = (
            sample(s, "connmon_listen_abandoned_total", &how("fin")),
            sample(s, "connmon_listen_abandoned_total", &how("rst")),
        );
        if got == (Some(3.0), Some(2.0)) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
    assert_eq!(ns.run(|| accept_all(&listener)), 7);
    agent.wait_metrics(deadline(15), "5 accepted closed, 7 waits measured", |s| {
        let got = (
            sample(s, "connmon_listen_accepted_closed_total", &labels),
            sample(s, "connmon_listen_queue_wait_measured_seconds_count", &labels),
            sample(s, "connmon_listen_abandoned_total", &how("fin")),
        );
        if got == (Some(5.0), Some(7.0), Some(3.0)) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
    drop(staying);
}
