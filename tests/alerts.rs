//! Integration tests for connmon's built-in alerts, end to end: a real redis-server, real client
//! processes (this test binary re-executed, each with a process name and a cgroup of its own), a
//! real Alertmanager (`prometheus-alertmanager` 0.25, see `common::alertmanager`) and the agent in
//! between (`connmon run --config.file F --alertmanager.url U`). Every agent sees every pool on the
//! host, so assertions filter by the test's own client name (comm) or listener (netns/addr/port).
//!
//! What counts as truth: the client's own count of connections it opened, redis `CLIENT LIST`,
//! `ss` for the accept queue, and what Alertmanager reports (its API and the webhook notifications
//! it sends). Needs root.
//!
//! Timings: rule windows are shortened to seconds (pool growth: 20 s window, 6 s plateau window,
//! 3 s `for`, 10 s `clear_for`; evaluation every 1 s, resend every 3 s), so a scenario takes
//! under a minute and the scenarios run in parallel.

use connmon_test_support as common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::agent_log::wait_log_line;
use common::alert_views::*;
use common::alertmanager::*;
use common::leak_client::*;
use common::*;

/// The client process of the harness (hold mode; does nothing in a normal run).
#[test]
fn client_entry() {
    client_main()
}

/// The leaking client (does nothing in a normal run; see `common::leak_client`).
#[test]
fn leak_client_entry() {
    leak_client_main()
}

/// Prints how long the test took (pass or fail) when dropped.
struct Timer(&'static str, Instant);

impl Timer {
    fn new(name: &'static str) -> Timer {
        Timer(name, Instant::now())
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        eprintln!("{}: {:.1}s", self.0, self.1.elapsed().as_secs_f64());
    }
}

// -------------------------------------------------------------------------------------------------
// Configuration

/// Short windows for the pool tests (see the module comment).
const POOL_CONFIG: &str = r#"
[ceilings]
redis = 500

[alerts]
interval = "1s"
resend = "3s"

[alerts.pool_growth]
window = "20s"
plateau_window = "6s"
min_slope_per_min = 6
for = "3s"
clear_for = "10s"
"#;

/// Writes `text` to `dir/connmon.toml`; returns the path.
fn write_config(dir: &TempDir, text: &str) -> String {
    let p = dir.path().join("connmon.toml");
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p.display().to_string()
}

// -------------------------------------------------------------------------------------------------
// 1.

#[test]
fn leaking_pool_fires_and_reaches_alertmanager() {
    let _timer = Timer::new("leaking_pool_fires_and_reaches_alertmanager");
    let redis = Redis::start(free_local_port(), &[]);
    let am = Alertmanager::start();
    let dir = TempDir::new("cmalert");
    let cfg = write_config(&dir, POOL_CONFIG);
    let svc = format!("redis={}", redis.port());
    let agent = Agent::start(&["--config.file", &cfg, "--alertmanager.url", &am.url(), "--service", &svc]);

    let mut leak = LeakClient::spawn("leak", redis.addr(), Duration::from_millis(200), Duration::from_secs(60), 300);
    let port = redis.port().to_string();
    let name = leak.name.clone();
    let cgroup = leak.cgroup().to_string();
    let labels = pool_labels(&name, &cgroup, &port);

    // Alertmanager has it: 20 s window at 80 % coverage + 3 s `for` + push.
    let within = leak.started + Duration::from_secs(45);
    let am_alert = wait_am_alert(&am, within, POOL_GROWTH, &labels);
    let arrived = leak.started.elapsed().as_secs_f64();
    leak.check_alive();
    eprintln!(
        "{POOL_GROWTH} for {name} reached Alertmanager {arrived:.1}s after the leak started ({} connections open)",
        leak.opened()
    );
    eprintln!("alertmanager alert: {am_alert}");
    assert!(arrived >= 16.0, "fired {arrived:.1}s after the leak started: before the 20 s window was 80 % covered");
    check_pool_annotations(&am_alert, "alertmanager");
    assert_eq!(am_alert["status"]["state"], "active", "{am_alert}");
    // Firing, so no endsAt was sent: Alertmanager's own resolve_timeout (5m) is in the future.
    let ends_in = epoch(am_alert["endsAt"].as_str().expect("endsAt")) - now_epoch();
    assert!(ends_in > 60.0, "a firing alert ends in {ends_in:.0}s in Alertmanager: {am_alert}");

    // The agent's own views.
    let a = wait_agent_firing(&agent, deadline(5), POOL_GROWTH, &labels);
    check_pool_annotations(&a, "agent /api/v1/alerts");
    let starts = epoch(am_alert["startsAt"].as_str().expect("startsAt"));
    let since = epoch(a["since"].as_str().expect("since"));
    assert!(
        (starts - since).abs() < 0.01,
        "Alertmanager startsAt {} vs agent since {}",
        am_alert["startsAt"],
        a["since"]
    );
    let before = leak.opened();
    let list = agent_alerts(&agent).expect("alerts");
    let after = leak.opened();
    let a = agent_matching(&list, POOL_GROWTH, &labels).pop().expect("still firing");
    let current = ann_f64(&a, "current");
    assert!(
        current <= after as f64 && current + 15.0 >= before as f64,
        "agent says current {current}, the client had opened {before}..{after}"
    );

    let s = agent.samples();
    assert_eq!(
        alert_active(&s, POOL_GROWTH, &[("comm", &name)]),
        1.0,
        "{ALERT_ACTIVE} for {name}: {:#?}",
        samples_matching(&s, ALERT_ACTIVE, &[])
    );
    assert_eq!(alert_active(&s, POOL_GROWTH, &labels), 1.0, "{ALERT_ACTIVE} with every pool label");
    let fired = sample(&s, ALERTS_FIRED, &[("alertname", POOL_GROWTH)]).unwrap_or(0.0);
    assert!(fired >= 1.0, "{ALERTS_FIRED}{{alertname={POOL_GROWTH}}} = {fired}");

    let url = format!("http://{}", agent.addr());
    let rows = parse_json_lines(&connmon_ok(&["alerts", "--agent", &url, "--json"]));
    let mine = cli_matching(&rows, POOL_GROWTH, &labels);
    assert_eq!(mine.len(), 1, "connmon alerts --json rows for {name}: {rows:#?}");
    assert_eq!(mine[0]["state"], "firing", "{}", mine[0]);
    assert_eq!(mine[0]["annotations"]["ceiling"], "500", "{}", mine[0]);
    let table = connmon_ok(&["alerts", "--agent", &url]);
    assert!(
        table.lines().any(|l| l.contains("firing") && l.contains(POOL_GROWTH) && l.contains(&name)),
        "connmon alerts table has no firing {POOL_GROWTH} row for {name}:\n{table}"
    );

    let lines = log_lines(&agent, "firing", POOL_GROWTH, &[format!("comm={name:?}")]);
    assert_eq!(lines.len(), 1, "agent log lines `alert=firing alertname={POOL_GROWTH}` for {name}: {lines:#?}");

    // Alertmanager notified its receiver too.
    wait_webhook(&am, deadline(10), POOL_GROWTH, &labels, "firing");
}

// -------------------------------------------------------------------------------------------------
// 2.

#[test]
fn steady_pool_of_500_never_fires() {
    let _timer = Timer::new("steady_pool_of_500_never_fires");
    let redis = Redis::start(free_local_port(), &[]);
    let am = Alertmanager::start();
    let dir = TempDir::new("cmalert");
    let cfg = write_config(&dir, POOL_CONFIG);
    let svc = format!("redis={}", redis.port());
    let agent = Agent::start(&["--config.file", &cfg, "--alertmanager.url", &am.url(), "--service", &svc]);

    let client = ClientProc::spawn(ClientSpec::new("steady", redis.addr(), Proto::Redis, Mode::Hold { count: 500 }));
    let pool = PoolRef::of(&client, redis.addr());
    agent.wait_metrics(deadline(30), &format!("{pool} at 500 connections"), |s| match pool.get(s, POOL_CONNECTIONS) {
        Some(500.0) => Ok(()),
        v => Err(format!("{v:?}")),
    });
    assert_eq!(redis.clients_named(&client.name), 500, "redis CLIENT LIST for {}", client.name);

    let name = client.name.clone();
    let comm = [("comm", name.as_str())];
    let start = Instant::now();
    let mut checks = 0;
    while start.elapsed() < Duration::from_secs(42) {
        let t = Instant::now();
        let list = agent_alerts(&agent).unwrap_or_else(|e| panic!("{e}"));
        let mine = agent_matching(&list, POOL_GROWTH, &comm);
        assert!(
            mine.is_empty(),
            "{:.0}s into a flat pool of 500, the agent lists {mine:#?}",
            start.elapsed().as_secs_f64()
        );
        let s = agent.samples();
        assert_eq!(alert_active(&s, POOL_GROWTH, &comm), 0.0, "{ALERT_ACTIVE} for the flat pool {name}");
        assert_eq!(pool.get(&s, POOL_CONNECTIONS), Some(500.0), "{pool} left 500: the test is not holding steady");
        let in_am = am.find(POOL_GROWTH, &comm).unwrap_or_else(|e| panic!("{e}"));
        assert!(in_am.is_empty(), "Alertmanager holds an alert for the flat pool: {in_am:#?}");
        checks += 1;
        std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
    }
    let lines = log_lines(&agent, "firing", POOL_GROWTH, &[format!("comm={name:?}")]);
    assert!(lines.is_empty(), "agent log: {lines:#?}");
    let hooks = am.webhook.alerts_matching(POOL_GROWTH, &comm);
    assert!(hooks.is_empty(), "Alertmanager notified about the flat pool: {hooks:#?}");
    assert_eq!(redis.clients_named(&client.name), 500, "redis CLIENT LIST for {}", client.name);
    eprintln!(
        "flat pool of 500 ({name}): {checks} checks over {:.0}s, never pending or firing",
        start.elapsed().as_secs_f64()
    );
}

// -------------------------------------------------------------------------------------------------
// 3.

#[test]
fn growth_then_plateau_fires_then_resolves() {
    let _timer = Timer::new("growth_then_plateau_fires_then_resolves");
    let redis = Redis::start(free_local_port(), &[]);
    let am = Alertmanager::start();
    let dir = TempDir::new("cmalert");
    let cfg = write_config(&dir, POOL_CONFIG);
    let svc = format!("redis={}", redis.port());
    let agent = Agent::start(&["--config.file", &cfg, "--alertmanager.url", &am.url(), "--service", &svc]);

    let mut leak = LeakClient::spawn("grow", redis.addr(), Duration::from_millis(200), Duration::from_secs(30), 1000);
    let port = redis.port().to_string();
    let name = leak.name.clone();
    let cgroup = leak.cgroup().to_string();
    let labels = pool_labels(&name, &cgroup, &port);
    let comm_needle = [format!("comm={name:?}")];

    // Fires while growing.
    let fired = wait_agent_firing(&agent, leak.started + Duration::from_secs(45), POOL_GROWTH, &labels);
    let fired_at = leak.started.elapsed().as_secs_f64();
    leak.check_alive();
    assert!(leak.plateau().is_none(), "the alert only fired after the client stopped growing ({fired_at:.1}s)");
    eprintln!("{name}: firing {fired_at:.1}s after the start: {fired}");
    let am_alert = wait_am_alert(&am, deadline(15), POOL_GROWTH, &labels);
    assert_eq!(am_alert["status"]["state"], "active", "{am_alert}");
    let ends_in = epoch(am_alert["endsAt"].as_str().expect("endsAt")) - now_epoch();
    assert!(ends_in > 60.0, "a firing alert ends in {ends_in:.0}s in Alertmanager: {am_alert}");

    // Then flat.
    let (plateau_at, n) = poll_until(leak.started + Duration::from_secs(45), "the client to stop growing", || {
        leak.plateau().ok_or_else(|| format!("{} open", leak.opened()))
    });
    assert!(n >= 100, "the client opened only {n} connections in 30 s");
    eprintln!("{name}: flat at {n} connections from {:.1}s", (plateau_at - leak.started).as_secs_f64());
    // Still firing while it waits out clear_for, and pushed again at least every resend (3 s).
    // (The agent pushes its whole firing set whenever any alert in it changes, and it sees other
    // tests' growing pools too, so pushes may come more often than that.)
    let pushes = assert_resent(&am, POOL_GROWTH, &labels, Duration::from_secs(3), Duration::from_secs(8));
    eprintln!("{name}: re-sent {pushes} times in the 8 s after the plateau");

    // Resolves: plateau_window (6 s) for the recent slope to flatten, then clear_for (10 s).
    let resolved_line =
        wait_alert_log(&agent, plateau_at + Duration::from_secs(35), "resolved", POOL_GROWTH, &comm_needle);
    let resolved_after = plateau_at.elapsed().as_secs_f64();
    eprintln!("{name}: resolved {resolved_after:.1}s after the plateau: {resolved_line}");
    assert!(
        resolved_after >= 9.0,
        "resolved {resolved_after:.1}s after the plateau, before clear_for (10s) could pass"
    );
    leak.check_alive();

    // Gone from the agent's views.
    let list = agent_alerts(&agent).expect("alerts");
    let mine = agent_matching(&list, POOL_GROWTH, &labels);
    assert!(mine.is_empty(), "after alert=resolved the agent still lists {mine:#?}");
    let s = agent.samples();
    assert_eq!(alert_active(&s, POOL_GROWTH, &[("comm", &name)]), 0.0, "{ALERT_ACTIVE} after resolution");
    assert!(sample(&s, ALERTS_FIRED, &[("alertname", POOL_GROWTH)]).unwrap_or(0.0) >= 1.0, "{ALERTS_FIRED}");
    let url = format!("http://{}", agent.addr());
    let rows = parse_json_lines(&connmon_ok(&["alerts", "--agent", &url, "--json"]));
    assert!(cli_matching(&rows, POOL_GROWTH, &labels).is_empty(), "connmon alerts --json after resolution: {rows:#?}");

    // Alertmanager 0.25: the pushed endsAt (in the past) drops the alert from /api/v2/alerts at once
    // (without it the alert would stay until resolve_timeout, 5m), counts it as received resolved,
    // and sends the receiver a "resolved" notification carrying that endsAt.
    poll_until(deadline(15), "Alertmanager to drop the resolved alert from /api/v2/alerts", || {
        let v = am.find(POOL_GROWTH, &labels)?;
        if v.is_empty() {
            Ok(())
        } else {
            Err(format!("{v:?}"))
        }
    });
    let hook = wait_webhook(&am, deadline(15), POOL_GROWTH, &labels, "resolved");
    let ends = epoch(hook["endsAt"].as_str().expect("endsAt"));
    let starts = epoch(hook["startsAt"].as_str().expect("startsAt"));
    assert!(ends > starts && (now_epoch() - ends).abs() < 30.0, "resolved notification's times: {hook}");
    assert!(
        ends - starts >= 9.0,
        "resolved notification: firing lasted only {:.1}s (clear_for is 10s): {hook}",
        ends - starts
    );
    let resolved_rx = am.metric("alertmanager_alerts_received_total", &[("status", "resolved")]);
    assert!(resolved_rx >= 1.0, "alertmanager_alerts_received_total{{status=resolved}} = {resolved_rx}");

    // And it stays resolved: no re-send brings it back (resend is 3s), no flapping in the log.
    std::thread::sleep(Duration::from_secs(5));
    let v = am.find(POOL_GROWTH, &labels).expect("alerts");
    assert!(v.is_empty(), "the resolved alert came back to Alertmanager: {v:#?}");
    let firing = log_lines(&agent, "firing", POOL_GROWTH, &comm_needle);
    let resolved = log_lines(&agent, "resolved", POOL_GROWTH, &comm_needle);
    assert_eq!((firing.len(), resolved.len()), (1, 1), "one firing and one resolved line: {firing:#?} {resolved:#?}");
}

// -------------------------------------------------------------------------------------------------
// 4.

#[test]
fn full_accept_queue_fires_saturation_and_overflow() {
    let _timer = Timer::new("full_accept_queue_fires_saturation_and_overflow");
    let am = Alertmanager::start();
    let dir = TempDir::new("cmalert");
    let cfg = write_config(
        &dir,
        r#"
[alerts]
interval = "1s"
resend = "3s"

[alerts.accept_queue_saturated]
fill = 0.9
for = "2s"
clear_for = "10s"

[alerts.listen_overflow]
window = "10s"
for = "0s"
clear_for = "10s"
"#,
    );
    let agent = Agent::start(&["--config.file", &cfg, "--alertmanager.url", &am.url()]);

    // A listener (backlog 4) in a namespace of its own that never accepts, and 10 clients: 5 fill
    // the accept queue, the others' SYNs are dropped and retransmitted (1 s, 3 s, 7 s, 15 s ...).
    let ns = Netns::new();
    let port = unique_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_listener, _clients) = ns.run(|| {
        let l = listen_tcp(addr, 4);
        let cs: Vec<_> = (0..10).map(|_| connect_nonblocking(addr)).collect();
        (l, cs)
    });
    let t0 = Instant::now();
    let ss = poll_until(deadline(15), "ss to show a full accept queue (5) and drops", || {
        match ss_listener(&ns, "127.0.0.1", port) {
            Some(l) if l.recv_q == 5 && l.drops > 0 => Ok(l),
            other => Err(format!("{other:?}")),
        }
    });
    eprintln!("ss: {ss:?}");

    let ino = ns.inode().to_string();
    let port_s = port.to_string();
    let comm = self_comm();
    let labels = [("netns", ino.as_str()), ("addr", "127.0.0.1"), ("port", port_s.as_str()), ("comm", comm.as_str())];

    let sat = wait_agent_firing(&agent, deadline(30), QUEUE_SATURATED, &labels);
    eprintln!("{QUEUE_SATURATED} firing {:.1}s after the clients connected: {sat}", t0.elapsed().as_secs_f64());
    assert!(t0.elapsed() >= Duration::from_secs(2), "{QUEUE_SATURATED} fired before its 2s `for`");
    assert_eq!(ann(&sat, "depth"), "5", "{sat}");
    assert_eq!(ann(&sat, "backlog"), "4", "{sat}");
    let ovf = wait_agent_firing(&agent, deadline(20), LISTEN_OVERFLOW, &labels);
    eprintln!("{LISTEN_OVERFLOW} firing: {ovf}");
    let drops = ann_f64(&ovf, "drops");
    let ss_now = ss_listener(&ns, "127.0.0.1", port).expect("listener");
    assert!(
        drops >= 1.0 && drops <= ss_now.drops as f64,
        "drops annotation {drops}, ss says {} dropped in all",
        ss_now.drops
    );

    let s = agent.samples();
    assert_eq!(
        alert_active(&s, QUEUE_SATURATED, &labels),
        1.0,
        "{ALERT_ACTIVE}: {:#?}",
        samples_matching(&s, ALERT_ACTIVE, &[])
    );
    assert_eq!(
        alert_active(&s, LISTEN_OVERFLOW, &labels),
        1.0,
        "{ALERT_ACTIVE}: {:#?}",
        samples_matching(&s, ALERT_ACTIVE, &[])
    );

    let a = wait_am_alert(&am, deadline(15), QUEUE_SATURATED, &labels);
    assert_eq!(a["annotations"]["backlog"], "4", "{a}");
    let o = wait_am_alert(&am, deadline(15), LISTEN_OVERFLOW, &labels);
    assert!(o["annotations"]["drops"].as_str().is_some_and(|d| d != "0"), "{o}");
    for (name, l) in [(QUEUE_SATURATED, &a["labels"]), (LISTEN_OVERFLOW, &o["labels"])] {
        let keys: Vec<&String> = l.as_object().expect("labels").keys().collect();
        assert_eq!(
            keys,
            ["addr", "alertname", "comm", "family", "netns", "port"],
            "{name} labels in Alertmanager: {l}"
        );
    }

    // The namespace's own counter rose too (the netns variant: label netns only). Only this
    // listener lives in the namespace, so nothing else can have moved it.
    let nsv = poll_until(deadline(20), "the netns ListenOverflow alert", || {
        let list = agent_alerts(&agent)?;
        let v: Vec<Value> = agent_matching(&list, LISTEN_OVERFLOW, &[("netns", &ino)])
            .into_iter()
            .filter(|a| a["labels"].as_object().is_some_and(|o| o.len() == 1) && a["state"] == "firing")
            .collect();
        v.first().cloned().ok_or_else(|| summarize(&list))
    });
    eprintln!("netns variant: {nsv}");
    let nsam = wait_am_alert_exact(&am, deadline(15), LISTEN_OVERFLOW, &[("netns", &ino)]);
    assert!(nsam["annotations"]["overflows"].as_str().is_some_and(|d| d != "0"), "{nsam}");
    let lines = log_lines(&agent, "firing", QUEUE_SATURATED, &[format!("port={port_s:?}")]);
    assert_eq!(lines.len(), 1, "agent log: {lines:#?}");
}

// -------------------------------------------------------------------------------------------------
// 5.

#[test]
fn alertmanager_down_does_not_block() {
    let _timer = Timer::new("alertmanager_down_does_not_block");
    let redis = Redis::start(free_local_port(), &[]);
    let am_port = free_local_port();
    let am_url = format!("http://127.0.0.1:{am_port}");
    let dir = TempDir::new("cmalert");
    let cfg = write_config(&dir, POOL_CONFIG);
    let svc = format!("redis={}", redis.port());
    let agent = Agent::start(&["--config.file", &cfg, "--alertmanager.url", &am_url, "--service", &svc]);

    // Grows for 2 minutes, so the alert is still firing whenever Alertmanager comes up.
    let mut leak = LeakClient::spawn("amdn", redis.addr(), Duration::from_millis(200), Duration::from_secs(120), 600);
    let port = redis.port().to_string();
    let name = leak.name.clone();
    let cgroup = leak.cgroup().to_string();
    let labels = pool_labels(&name, &cgroup, &port);

    wait_agent_firing(&agent, leak.started + Duration::from_secs(45), POOL_GROWTH, &labels);
    eprintln!(
        "{name}: firing in the agent {:.1}s after the start, Alertmanager down (at {})",
        leak.started.elapsed().as_secs_f64(),
        now_epoch()
    );
    // While pushes fail, the agent keeps answering (the sender has a thread of its own). Scrape
    // for at least 4 s and until the sender has failed twice in a row (it logs failures 1, 2, 4,
    // 8, ...), i.e. it is retrying. (Pushes start with the agent's first firing alert of any kind,
    // possibly about someone else's pool or listener, so the backoff may already be longer.)
    let t = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut scrapes = 0;
    loop {
        let s0 = Instant::now();
        let samples = agent.samples();
        let took = s0.elapsed();
        slowest = slowest.max(took);
        assert!(took < Duration::from_secs(2), "GET /metrics took {took:?} while Alertmanager is down");
        assert_eq!(
            alert_active(&samples, POOL_GROWTH, &[("comm", &name)]),
            1.0,
            "{ALERT_ACTIVE} while Alertmanager is down"
        );
        let a0 = Instant::now();
        let list = agent_alerts(&agent).expect("alerts");
        assert!(a0.elapsed() < Duration::from_secs(2), "GET /api/v1/alerts took {:?}", a0.elapsed());
        let mine = agent_matching(&list, POOL_GROWTH, &labels);
        assert!(mine.len() == 1 && mine[0]["state"] == "firing", "{}", summarize(&list));
        scrapes += 1;
        let log = agent.stderr();
        let retried = log.contains("alertmanager: push failed (2 in a row)");
        if retried && t.elapsed() >= Duration::from_secs(4) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "after 20 s of failing pushes the agent has not logged `alertmanager: push failed (2 in a row)`: {:?}",
            log.lines().filter(|l| l.contains("alertmanager")).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "{scrapes} scrapes in {:.1}s while Alertmanager was down, slowest {slowest:?} (at {})",
        t.elapsed().as_secs_f64(),
        now_epoch()
    );
    leak.check_alive();

    // Alertmanager comes up on that port: the sender's next retry (exponential backoff with full
    // jitter, at most 60 s) delivers.
    let starting = Instant::now();
    let am = Alertmanager::start_on(am_port);
    let up = Instant::now();
    eprintln!("Alertmanager up on port {am_port} after {:.1}s, at {}", (up - starting).as_secs_f64(), now_epoch());
    let a = wait_am_alert(&am, deadline(75), POOL_GROWTH, &labels);
    eprintln!("{name}: reached Alertmanager {:.1}s after it came up", up.elapsed().as_secs_f64());
    check_pool_annotations(&a, "alertmanager");
    wait_log_line(&agent, deadline(10), "agent log: delivering again", &["alertmanager: delivering again"], |_| {
        "no `delivering again` line".to_string()
    });
    for l in agent.stderr().lines().filter(|l| l.contains("alertmanager")) {
        eprintln!("agent: {l}");
    }
}

// -------------------------------------------------------------------------------------------------
// 6.

#[test]
fn bad_config_fails_at_start_with_file_key_and_problem() {
    let _timer = Timer::new("bad_config_fails_at_start_with_file_key_and_problem");
    // (what, file text, line, key, words the problem must mention (any of them))
    let cases: [(&str, &str, usize, &str, &[&str]); 4] = [
        (
            "unknown key",
            "[ceilings]\nredis = 500\n\n[alerts]\ninterval = \"1s\"\nresnd = \"5s\"\n",
            6,
            "resnd",
            &["unknown"],
        ),
        (
            "bad duration",
            "[alerts]\ninterval = \"1s\"\n\n[alerts.pool_growth]\nwindow = \"10x\"\n",
            5,
            "window",
            &["10x"],
        ),
        (
            "negative threshold",
            "[alerts.pool_growth]\nwindow = \"20s\"\nmin_slope_per_min = -6\n",
            3,
            "min_slope_per_min",
            &["positive", "-6"],
        ),
        (
            "ratio above 1",
            "[alerts]\ninterval = \"1s\"\n[alerts.accept_queue_saturated]\nfor = \"2s\"\nfill = 1.5\n",
            5,
            "fill",
            &["between 0 and 1", "1.5"],
        ),
    ];
    for (what, text, line, key, problem) in cases {
        let dir = TempDir::new("cmbadcfg");
        let path = write_config(&dir, text);
        let listen = format!("127.0.0.1:{}", free_local_port());
        let mut cmd = Command::new(connmon_bin());
        cmd.args(["run", "--config.file", &path, "--web.listen-address", &listen]).env_remove("RUST_LOG");
        let t = Instant::now();
        let out = run_with_timeout(&mut cmd, Duration::from_secs(10));
        let took = t.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let ctx = format!("{what}: exit {} after {took:?}; stderr:\n{stderr}", out.status);
        assert!(!out.status.success(), "{ctx}");
        assert!(!stderr.contains("panicked"), "{ctx}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one stderr line: {ctx}");
        let l = lines[0];
        assert!(l.contains(&path), "names the file {path}: {ctx}");
        let line_tag = format!("line {line}");
        let at = l.find(&line_tag).unwrap_or_else(|| panic!("says {line_tag:?}: {ctx}"));
        assert!(!l[at + line_tag.len()..].starts_with(|c: char| c.is_ascii_digit()), "says {line_tag:?}: {ctx}");
        assert!(l.contains(key), "names the key {key}: {ctx}");
        assert!(problem.iter().any(|p| l.contains(p)), "says what is wrong ({problem:?}): {ctx}");
        eprintln!("{what}: {l}");
    }
}
