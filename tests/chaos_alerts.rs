//! Chaos around alerting (issue 14): a real Alertmanager (prometheus-alertmanager) killed and
//! restarted three times while an alert fires, then hung (SIGSTOP) while it resolves (both
//! eventually delivered, the queue bounded, no drops), and the agent's wall clock stepped an hour forward and back while an alert is
//! pending (its `for` must be timed on the monotonic clock). The clock is stepped for the agent
//! only, with libfaketime (Debian package `faketime`): `date -s` would step the whole shared host,
//! and a time namespace (`unshare --time`) offsets only the monotonic and boot clocks, not the
//! wall clock. Needs root.
//!
//! Timings are shortened in a test config (1 s evaluation, 2-20 s `for`): these tests are about
//! delivery and clocks, not about when the rules should fire.

use connmon_test_support as common;

use std::{
    net::SocketAddr,
    os::fd::OwnedFd,
    path::Path,
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use common::alert_views::*;
use common::alertmanager::*;
use common::*;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn write_config(dir: &TempDir, text: &str) -> String {
    let p = dir.path().join("connmon.toml");
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p.display().to_string()
}

/// A listener (backlog 4) in `ns` that never accepts, with 10 clients: a full accept queue.
fn full_queue(ns: &Netns) -> (OwnedFd, Vec<OwnedFd>, Vec<(String, String)>) {
    let port = unique_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (l, cs) = ns.run(|| {
        let l = listen_tcp(addr, 4);
        let cs: Vec<_> = (0..10).map(|_| connect_nonblocking(addr)).collect();
        (l, cs)
    });
    wait_recv_q(ns, addr, 5);
    let labels = vec![
        ("netns".to_string(), ns.inode().to_string()),
        ("addr".to_string(), "127.0.0.1".to_string()),
        ("port".to_string(), port.to_string()),
    ];
    (l, cs, labels)
}

fn refs(labels: &[(String, String)]) -> Vec<(&str, &str)> {
    labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[test]
fn alertmanager_flapping_while_an_alert_fires_and_resolves() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let am = Alertmanager::start();
    let port = am.addr().port();
    let dir = TempDir::new("cmchaos");
    let cfg = write_config(
        &dir,
        "[alerts]\ninterval = \"1s\"\nresend = \"3s\"\n\n\
         [alerts.accept_queue_saturated]\nfill = 0.9\nfor = \"2s\"\nclear_for = \"2s\"\n",
    );
    let agent = Agent::start(&["--config.file", &cfg, "--alertmanager.url", &am.url()]);
    let ns = Netns::new();
    let (listener, clients, labels) = full_queue(&ns);
    let l = refs(&labels);
    wait_agent_firing(&agent, deadline(30), QUEUE_SATURATED, &l);

    // Down and up three times while it fires: each new Alertmanager starts empty and must get
    // the alert from the agent's resends.
    drop(am);
    let mut am = None;
    for round in 1..=3 {
        std::thread::sleep(Duration::from_secs(4));
        let up = Alertmanager::start_on(port);
        let a = wait_am_alert(&up, deadline(90), QUEUE_SATURATED, &l);
        eprintln!("round {round}: a fresh Alertmanager got the firing alert: {}", a["labels"]);
        if round < 3 {
            drop(up);
        } else {
            am = Some(up);
        }
    }
    let am = am.unwrap();
    // Alertmanager sends a resolved notice only for what it notified as firing: wait for that
    // notification before hanging it.
    poll_until(deadline(30), "the webhook to get the firing notification", || {
        let firing = am.webhook.alerts_matching(QUEUE_SATURATED, &l).into_iter().any(|a| a["status"] == "firing");
        if firing {
            Ok(())
        } else {
            Err("not yet")
        }
    });

    // Resolve it while Alertmanager hangs (SIGSTOP: connections queue, nothing answers, the
    // agent's pushes time out): the resolved notice waits in the agent's bounded queue. A hung
    // instance keeps its notification log, so after SIGCONT it notifies the webhook of the
    // resolution; a freshly started one never sends a resolved-only notice.
    signal(am.pid(), libc::SIGSTOP);
    drop(clients);
    drop(listener);
    poll_until(deadline(30), "the agent to resolve the alert", || {
        let list = agent_alerts(&agent)?;
        match agent_matching(&list, QUEUE_SATURATED, &l).len() {
            0 => Ok(()),
            n => Err(format!("{n} still active")),
        }
    });
    let queued = sample(&agent.samples(), "connmon_alertmanager_resolved_queued", &[]);
    assert!(queued.is_some_and(|q| q >= 1.0), "the resolved notice is not queued: {queued:?}");
    std::thread::sleep(Duration::from_secs(12));
    signal(am.pid(), libc::SIGCONT);
    let resolved = poll_until(deadline(90), "Alertmanager's webhook to get the resolved notice", || {
        let hits: Vec<_> =
            am.webhook.alerts_matching(QUEUE_SATURATED, &l).into_iter().filter(|a| a["status"] == "resolved").collect();
        // What Alertmanager itself holds (an alert is listed while its endsAt is in the future),
        // and how many resolved alerts it has received: the observation a failure reports.
        hits.first().cloned().ok_or_else(|| {
            let held = am.find(QUEUE_SATURATED, &l).map(|v| v.iter().map(|a| a["endsAt"].clone()).collect::<Vec<_>>());
            let received = am.metric("alertmanager_alerts_received_total", &[("status", "resolved")]);
            format!("not yet; Alertmanager holds it with endsAt {held:?}; resolved alerts received: {received}")
        })
    });
    eprintln!("resolved notice delivered after the hang: endsAt {}", resolved["endsAt"]);
    let s = agent.wait_metrics(deadline(10), "the resolved queue to drain", |s| {
        match sample(s, "connmon_alertmanager_resolved_queued", &[]) {
            Some(0.0) => Ok(s.to_vec()),
            other => Err(format!("{other:?}")),
        }
    });
    let failed = sample(&s, "connmon_alertmanager_pushes_total", &[("result", "failed")]).unwrap_or(0.0);
    let delivered = sample(&s, "connmon_alertmanager_pushes_total", &[("result", "delivered")]).unwrap_or(0.0);
    let dropped = sample(&s, "connmon_alertmanager_resolved_dropped_total", &[]);
    eprintln!("pushes: {delivered} delivered, {failed} failed (retried); resolved dropped {dropped:?}");
    assert!(failed >= 3.0 && delivered >= 4.0, "pushes delivered {delivered}, failed {failed}");
    assert_eq!(dropped, Some(0.0), "a resolved notice was dropped below the queue's bound");
    assert_eq!(sample(&s, "connmon_alertmanager_resolved_queue_limit", &[]), Some(1000.0));
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill -{sig} {pid}");
}

/// How far the agent's wall clock is from ours, from the `Date` header of its answer (whole
/// seconds), while the alert is still pending.
fn agent_wall_offset(agent: &Agent, l: &[(&str, &str)]) -> Result<f64, String> {
    let r = agent.request("/api/v1/alerts", &[]);
    let date = r.header("date").ok_or("no Date header")?.to_string();
    let list: Vec<serde_json::Value> = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
    match agent_matching(&list, QUEUE_SATURATED, l).first() {
        Some(a) if a["state"] == "pending" => Ok(epoch(&date) - now_epoch()),
        Some(a) => Err(format!("state {}", a["state"])),
        None => Err(summarize(&list)),
    }
}

fn step(file: &Path, offset: &str) {
    std::fs::write(file, offset).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
}

#[test]
fn wall_clock_steps_do_not_move_a_pending_alert() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    assert!(Path::new(FAKETIME_LIB).exists(), "{FAKETIME_LIB} missing: apt-get install faketime");
    let dir = TempDir::new("cmclock");
    let cfg = write_config(
        &dir,
        "[alerts]\ninterval = \"1s\"\n\n[alerts.accept_queue_saturated]\nfill = 0.9\nfor = \"20s\"\nclear_for = \"5s\"\n",
    );
    let offset = dir.path().join("faketime");
    step(&offset, "+0");
    let agent = Agent::start_wrapped(&["--config.file", &cfg], |argv| {
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..])
            .env("LD_PRELOAD", FAKETIME_LIB)
            .env("FAKETIME_TIMESTAMP_FILE", &offset)
            // Re-read the file on every call, so a step takes effect at once.
            .env("FAKETIME_NO_CACHE", "1")
            // Only the wall clock steps, as `date -s` would: CLOCK_MONOTONIC (and the kernel's
            // clock, which the eBPF programs use) run on.
            .env("DONT_FAKE_MONOTONIC", "1");
        c
    });
    let ns = Netns::new();
    let (_listener, _clients, labels) = full_queue(&ns);
    let l = refs(&labels);
    let off0 = poll_until(deadline(15), "the alert pending", || agent_wall_offset(&agent, &l));
    let pending = Instant::now();
    assert!(off0.abs() < 5.0, "the agent's clock is {off0} s off before any step");
    let since0 = agent_matching(&agent_alerts(&agent).unwrap(), QUEUE_SATURATED, &l)[0]["since"].clone();

    // An hour forward: a wall-clock `for` would fire at once.
    step(&offset, "+3600");
    let off1 = poll_until(deadline(5), "the agent's clock an hour ahead", || match agent_wall_offset(&agent, &l)? {
        o if o > 3500.0 => Ok(o),
        o => Err(format!("offset {o}")),
    });
    std::thread::sleep(Duration::from_secs(6));
    let list = agent_alerts(&agent).unwrap();
    let a = &agent_matching(&list, QUEUE_SATURATED, &l)[0];
    assert_eq!(
        a["state"],
        "pending",
        "fired {:?} after pending began, with the clock stepped +1h: `for` runs on the wall clock",
        pending.elapsed()
    );
    // A pending alert's `since` is when it became pending, not "now" on the stepped clock.
    assert_eq!(a["since"], since0, "pending since moved with the clock step");
    // And two hours back (an hour behind real time): a wall-clock `for` would never be reached.
    // (The Date header cannot show this step: hyper refreshes its cached date only once the
    // clock passes the next whole second it expected, two hours away now. The firing alert's
    // `since` below shows the agent's clock instead.)
    step(&offset, "-3600");
    let fired = wait_agent_firing(&agent, deadline(40), QUEUE_SATURATED, &l);
    let after = pending.elapsed();
    eprintln!(
        "clock offsets seen by the agent: {off0:.1} s, {off1:.1} s, then -3600 s; fired {after:?} after pending \
         began (for = 20s); since {}",
        fired["since"]
    );
    assert!(
        after >= Duration::from_secs(19) && after <= Duration::from_secs(24),
        "fired {after:?} after pending began, want its 20 s `for` (1 s evaluation interval)"
    );
    // Firing timestamps are wall-clock ones, of the clock the agent has: an hour behind.
    assert!(epoch(fired["since"].as_str().unwrap()) < now_epoch() - 3500.0, "{fired}");
}
