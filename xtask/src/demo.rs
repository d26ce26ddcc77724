//! `cargo xtask demo`: an outage replayed on this machine until a real alert fires, with the
//! agent's default settings. The outage is the pre-fork incident of tests/incidents_listeners.rs,
//! run with that test's own server and clients (tests/fixtures/*.py, Python's standard library
//! only): `listen(2048)`, 4 workers of 50 ms (at most 80 requests/s), and 60 clients that give
//! each attempt 500 ms and retry at once (about 120 requests/s). The queue fills, a connection
//! waits in it longer than its client does, and `AcceptQueueSlowFailure` fires. The demo then
//! shows what to look at and stops everything it started when it ends or fails; on Ctrl-C the
//! terminal's SIGINT reaches the agent, the server and the clients as well, and each exits on it.

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::util::{elapsed, is_root, log_path, workspace_root};

/// The alert the replay must fire.
const ALERT: &str = "AcceptQueueSlowFailure";
/// As in tests/incidents_listeners.rs (`deep_backlog_fails_slowly_and_the_alert_fires_within_30s`).
const BACKLOG: u32 = 2048;
const WORKERS: u32 = 4;
const SERVICE_MS: u32 = 50;
const CLIENTS: u32 = 60;
const CLIENT_TIMEOUT_MS: u32 = 500;
/// How long the demo waits for the alert; the test allows 30 s and it fires in 15–20 s.
const ALERT_DEADLINE: Duration = Duration::from_secs(90);
/// How long the agent may take to load its probes and finish its first scan.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// Children of the demo, stopped (SIGTERM, then waited for) when this is dropped, whatever
/// happened: the pre-fork server kills its workers on SIGTERM, the agent detaches its probes.
#[derive(Default)]
struct Started(Vec<(&'static str, Child)>);

impl Drop for Started {
    fn drop(&mut self) {
        // Clients first, the agent last, so it sees the load stop.
        for (_, child) in self.0.iter_mut().rev() {
            // SAFETY: kill(2) on a child of this process, not yet waited for.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        if !self.0.is_empty() {
            let names: Vec<&str> = self.0.iter().rev().map(|(n, _)| *n).collect();
            println!("stopped {}", names.join(", "));
        }
    }
}

pub fn run(agent_bin: &Path) -> Result<()> {
    let started_at = Instant::now();
    let mut started = Started::default();
    let agent_port = free_port()?;
    let server_port = free_port()?;
    let agent_url = format!("http://127.0.0.1:{agent_port}");

    let agent_log = log_path("demo-agent");
    let log = std::fs::File::create(&agent_log).with_context(|| format!("cannot write {}", agent_log.display()))?;
    println!("starting the agent, default settings, on 127.0.0.1:{agent_port} (log {})", agent_log.display());
    let agent = Command::new(agent_bin)
        .args(["run", "--web.listen-address", &format!("127.0.0.1:{agent_port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", agent_bin.display()))?;
    started.0.push(("the agent", agent));
    wait_ready(&agent_url, &mut started.0[0].1, &agent_log)?;

    let fixtures = workspace_root().join("tests").join("fixtures");
    let mut server = Command::new("python3")
        .arg(fixtures.join("prefork_server.py"))
        .args(["127.0.0.1", &server_port.to_string()])
        .args([BACKLOG, WORKERS, SERVICE_MS].map(|n| n.to_string()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start python3 (the demo's server): run `cargo xtask setup --for demo`")?;
    let stdout = server.stdout.take().context("server stdout")?;
    started.0.push(("the pre-fork server", server));
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).context("reading the pre-fork server's first line")?;
    if line.trim() != "listening" {
        bail!("tests/fixtures/prefork_server.py did not start (it said {line:?})");
    }
    println!(
        "a pre-fork server listens on 127.0.0.1:{server_port}: listen({BACKLOG}), {WORKERS} workers of \
         {SERVICE_MS} ms, so at most {} requests/s",
        WORKERS * 1000 / SERVICE_MS
    );

    let overload = Instant::now();
    let overload_wall = SystemTime::now();
    let clients = Command::new("python3")
        .arg(fixtures.join("timeout_clients.py"))
        .args(["127.0.0.1", &server_port.to_string()])
        .args([CLIENTS, CLIENT_TIMEOUT_MS, ALERT_DEADLINE.as_secs() as u32 + 30].map(|n| n.to_string()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start tests/fixtures/timeout_clients.py")?;
    started.0.push(("the clients", clients));
    println!(
        "{CLIENTS} clients now ask about {} requests/s; each gives up after {CLIENT_TIMEOUT_MS} ms and retries at once",
        CLIENTS * 1000 / CLIENT_TIMEOUT_MS
    );

    let port = server_port.to_string();
    let alert = wait_firing(&agent_url, &port, overload)?;
    // The agent's own firing time (`since`), not when this loop noticed it.
    let took = alert["since"]
        .as_str()
        .and_then(|s| humantime::parse_rfc3339(s).ok())
        .and_then(|since| since.duration_since(overload_wall).ok())
        .unwrap_or_else(|| overload.elapsed());
    println!("\n{ALERT} fired {} after the overload began.\n", elapsed(took));

    let annotations = &alert["annotations"];
    for key in ["queue_wait_seconds", "abandoned", "accept_rate", "suggested_backlog", "description"] {
        if let Some(v) = annotations.get(key) {
            println!("  {key}: {}", v.as_str().map_or_else(|| v.to_string(), str::to_owned));
        }
    }

    println!("\n$ connmon alerts --agent {agent_url}");
    let _ = Command::new(agent_bin).args(["alerts", "--agent", &agent_url]).status();

    println!("\nThe listener's series in {agent_url}/metrics:");
    let metrics = get(&format!("{agent_url}/metrics"))?;
    for line in listener_lines(&metrics, &port) {
        println!("  {line}");
    }
    println!(
        "\nWhat to look at on a real host:\n  \
         connmon alerts                 the alerts the agent has pending or firing\n  \
         connmon listeners --for 5s     WAIT above the clients' timeout, ABANDONED rising, the slow-drain flag\n  \
         connmon_listen_queue_wait_seconds, connmon_listen_abandoned_total, connmon_listen_queue_drain_seconds\n  \
         and the fix, in docs/alerts.md (Runbook: AcceptQueueSlowFailure): a backlog of about accept rate x client timeout"
    );
    drop(started);
    println!("demo done in {}", elapsed(started_at.elapsed()));
    Ok(())
}

/// A port nothing listens on now (the kernel's choice for port 0).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?.local_addr()?.port())
}

/// GET a URL of the local agent; the body, or an error for a failure or a non-2xx status.
fn get(url: &str) -> Result<String> {
    let agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().new_agent();
    let mut response = agent.get(url).call().with_context(|| format!("GET {url}"))?;
    Ok(response.body_mut().read_to_string()?)
}

/// Polls /readyz until it answers 200; fails early with the log's tail if the agent exits.
fn wait_ready(url: &str, agent: &mut Child, log: &Path) -> Result<()> {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        if get(&format!("{url}/readyz")).is_ok() {
            return Ok(());
        }
        if let Some(status) = agent.try_wait()? {
            bail!("the agent exited ({status}) before it was ready:\n{}", tail(log, 15));
        }
        if Instant::now() > deadline {
            bail!("the agent was not ready within {} s:\n{}", READY_DEADLINE.as_secs(), tail(log, 15));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls /api/v1/alerts every second until the demo's listener has the alert firing; prints the
/// listener's queue every 5 s meanwhile.
fn wait_firing(url: &str, port: &str, overload: Instant) -> Result<Value> {
    let deadline = overload + ALERT_DEADLINE;
    let mut shown = Duration::ZERO;
    let mut last_state = String::new();
    loop {
        let list: Vec<Value> = serde_json::from_str(&get(&format!("{url}/api/v1/alerts"))?)
            .context("the agent's /api/v1/alerts is not a JSON list")?;
        let mine = list.into_iter().find(|a| a["alertname"] == ALERT && a["labels"]["port"] == port);
        let state = mine.as_ref().and_then(|a| a["state"].as_str()).unwrap_or("inactive").to_owned();
        if let Some(alert) = mine.filter(|_| state == "firing") {
            return Ok(alert);
        }
        let now = overload.elapsed();
        if now >= shown + Duration::from_secs(5) || state != last_state {
            shown = now;
            let metrics = get(&format!("{url}/metrics")).unwrap_or_default();
            let v = |name: &str, extra: &str| series_value(&metrics, name, port, extra);
            println!(
                "  {:>4.0} s  queue depth {:>5}  wait (Little's law) {:>6} s  abandoned {:>5}  {ALERT}: {state}",
                now.as_secs_f64(),
                v("connmon_listen_queue_depth", ""),
                v("connmon_listen_queue_wait_seconds", "method=\"littles_law\""),
                v("connmon_listen_abandoned_total", ""),
            );
            last_state = state;
        }
        if Instant::now() > deadline {
            bail!(
                "{ALERT} did not fire within {} s of the overload: see {}",
                ALERT_DEADLINE.as_secs(),
                log_path("demo-agent").display()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Sample lines of `metrics` (text format) for the listener on `port`.
fn listener_lines<'a>(metrics: &'a str, port: &str) -> Vec<&'a str> {
    let label = format!("port=\"{port}\"");
    let wanted = [
        "connmon_listen_queue_depth",
        "connmon_listen_queue_max",
        "connmon_listen_queue_wait_seconds",
        "connmon_listen_accept_rate",
        "connmon_listen_queue_drain_seconds",
        "connmon_listen_abandoned_total",
        "connmon_listen_accepted_closed_total",
        "connmon_alert_active",
    ];
    metrics.lines().filter(|l| l.contains(&label) && wanted.iter().any(|w| l.starts_with(&format!("{w}{{")))).collect()
}

/// Sum of the samples of `name` for the listener on `port` whose labels also contain `extra`,
/// formatted for a progress line ("-" when absent).
fn series_value(metrics: &str, name: &str, port: &str, extra: &str) -> String {
    let label = format!("port=\"{port}\"");
    let values: Vec<f64> = metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label) && l.contains(extra))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    match values.is_empty() {
        true => "-".into(),
        false => {
            let sum: f64 = values.iter().sum();
            if sum.fract() == 0.0 {
                format!("{sum:.0}")
            } else {
                format!("{sum:.2}")
            }
        }
    }
}

/// The demo's checks before it installs or starts anything: root, and the fixtures it reuses.
pub fn preflight() -> Result<()> {
    if !is_root() {
        bail!("the demo loads eBPF programs: run it as root");
    }
    let fixtures = workspace_root().join("tests").join("fixtures");
    for f in ["prefork_server.py", "timeout_clients.py"] {
        if !fixtures.join(f).is_file() {
            bail!("{} is missing: run the demo from a full checkout", fixtures.join(f).display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "\
connmon_listen_queue_depth{netns=\"1\",family=\"ipv4\",addr=\"127.0.0.1\",port=\"4000\",comm=\"python3\"} 1500
connmon_listen_queue_depth{netns=\"1\",family=\"ipv4\",addr=\"127.0.0.1\",port=\"40000\",comm=\"x\"} 7
connmon_listen_queue_wait_seconds{netns=\"1\",family=\"ipv4\",addr=\"127.0.0.1\",port=\"4000\",comm=\"python3\",method=\"littles_law\"} 18.25
connmon_listen_queue_wait_seconds{netns=\"1\",family=\"ipv4\",addr=\"127.0.0.1\",port=\"4000\",comm=\"python3\",method=\"accept\"} 12.5
connmon_listen_abandoned_total{netns=\"1\",family=\"ipv4\",addr=\"127.0.0.1\",port=\"4000\",comm=\"python3\",how=\"fin\"} 30
connmon_listen_abandoned_total{netns=\"1\",family=\"ipv4\",addr=\"127.0.0.1\",port=\"4000\",comm=\"python3\",how=\"rst\"} 2
";

    #[test]
    fn the_agents_since_parses() {
        // The agent writes `since` with humantime::format_rfc3339_millis (alerts::rfc3339).
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_299_884_145);
        let text = humantime::format_rfc3339_millis(t).to_string();
        assert_eq!(humantime::parse_rfc3339(&text).unwrap(), t, "{text}");
    }

    #[test]
    fn progress_reads_only_the_demos_listener() {
        assert_eq!(series_value(METRICS, "connmon_listen_queue_depth", "4000", ""), "1500");
        assert_eq!(
            series_value(METRICS, "connmon_listen_queue_wait_seconds", "4000", "method=\"littles_law\""),
            "18.25"
        );
        assert_eq!(series_value(METRICS, "connmon_listen_abandoned_total", "4000", ""), "32");
        assert_eq!(series_value(METRICS, "connmon_listen_queue_drain_seconds", "4000", ""), "-");
        assert_eq!(listener_lines(METRICS, "40000").len(), 1);
        assert_eq!(listener_lines(METRICS, "4000").len(), 5);
    }
}
