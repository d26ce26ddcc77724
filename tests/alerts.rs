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

mod common;

use std::ffi::CString;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::alertmanager::*;
use common::*;

const POOL_GROWTH: &str = "ConnectionPoolGrowthUnbounded";
const QUEUE_SATURATED: &str = "AcceptQueueSaturated";
const LISTEN_OVERFLOW: &str = "ListenOverflow";
const ALERT_ACTIVE: &str = "connmon_alert_active";
const ALERTS_FIRED: &str = "connmon_alerts_fired_total";

/// The client process of the harness (hold mode; does nothing in a normal run).
#[test]
fn client_entry() {
    client_main()
}

/// The leaking client (does nothing in a normal run; see [`LeakClient`]).
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
// A client that leaks connections: one more every `every`, never closing any.

const LEAK_ENV: &str = "CONNMON_TEST_LEAK_CLIENT";
const LEAK_PREFIX: &str = "@@leak ";

/// A client process that opens one Redis connection (CLIENT SETNAME + PING) every `every` and
/// never closes any, for `grow_for` or until it holds `max`; then it holds them all, flat, until
/// it is dropped. Like the harness's clients it lives in a cgroup of its own and gives itself a
/// unique process name, which becomes the pool's `comm` label.
///
/// Protocol on stdout: `@@leak open N` after each connection, `@@leak plateau N` when it stops
/// growing. End of stdin ends it.
struct LeakClient {
    name: String,
    child: Child,
    _stdin: Option<ChildStdin>,
    opened: Arc<AtomicUsize>,
    plateau: Arc<Mutex<Option<(Instant, usize)>>>,
    started: Instant,
    stderr_path: PathBuf,
    _dir: TempDir,
    // Last: removed once the process is gone.
    cgroup: TestCgroup,
}

impl LeakClient {
    fn spawn(prefix: &str, target: SocketAddr, every: Duration, grow_for: Duration, max: usize) -> LeakClient {
        let name = unique_name(prefix);
        assert!(name.len() <= 15, "client name {name:?} is longer than a comm (15 bytes)");
        let cgroup = TestCgroup::new();
        let spec = json!({
            "name": name,
            "cgroup_procs": cgroup.dir().join("cgroup.procs"),
            "target": target.to_string(),
            "every_ms": every.as_millis() as u64,
            "grow_ms": grow_for.as_millis() as u64,
            "max": max,
        });
        let dir = TempDir::new("cmleak");
        let stderr_path = dir.path().join("stderr");
        let exe = std::env::current_exe().expect("current_exe");
        let mut child = Command::new(&exe)
            .args(["--exact", "leak_client_entry", "--nocapture", "--test-threads", "1", "-q"])
            .env(LEAK_ENV, spec.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).expect("create leak client stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start leak client {}: {e}", exe.display()));
        let stdout = child.stdout.take().expect("leak client stdout");
        let opened = Arc::new(AtomicUsize::new(0));
        let plateau = Arc::new(Mutex::new(None));
        let (o2, p2) = (opened.clone(), plateau.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Some(rest) = line.strip_prefix(LEAK_PREFIX) else { continue };
                let f: Vec<&str> = rest.split_whitespace().collect();
                match f.as_slice() {
                    ["open", n] => o2.store(n.parse().expect("open N"), Ordering::Relaxed),
                    ["plateau", n] => {
                        let n: usize = n.parse().expect("plateau N");
                        o2.store(n, Ordering::Relaxed);
                        *p2.lock().unwrap() = Some((Instant::now(), n));
                    }
                    _ => {}
                }
            }
        });
        let stdin = child.stdin.take();
        LeakClient { name, child, _stdin: stdin, opened, plateau, started: Instant::now(), stderr_path, _dir: dir, cgroup }
    }

    /// Connections opened (and all still held) so far.
    fn opened(&self) -> usize {
        self.opened.load(Ordering::Relaxed)
    }

    /// When it stopped growing, and at how many connections.
    fn plateau(&self) -> Option<(Instant, usize)> {
        *self.plateau.lock().unwrap()
    }

    fn cgroup(&self) -> &str {
        self.cgroup.rel()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Panics (with its stderr) if the client has died: a dead client would make a test wait for
    /// the wrong reason.
    fn check_alive(&mut self) {
        if let Some(st) = self.child.try_wait().expect("try_wait leak client") {
            panic!("leak client {} exited with {st} after {} connections; stderr:\n{}", self.name, self.opened(), self.stderr());
        }
    }
}

impl Drop for LeakClient {
    fn drop(&mut self) {
        self._stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- leak client {} stderr ----\n{}---- end ----", self.name, self.stderr());
        }
    }
}

fn leak_say(line: &str) {
    let mut out = io::stdout().lock();
    writeln!(out, "{LEAK_PREFIX}{line}").and_then(|_| out.flush()).expect("write to stdout");
}

fn leak_client_main() {
    let Ok(text) = std::env::var(LEAK_ENV) else { return };
    let spec: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad {LEAK_ENV} ({e}): {text}"));
    let s = |k: &str| spec[k].as_str().unwrap_or_else(|| panic!("{k} missing in {spec}")).to_string();
    let u = |k: &str| spec[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {spec}"));
    let name = s("name");
    let procs = s("cgroup_procs");
    std::fs::write(&procs, std::process::id().to_string()).unwrap_or_else(|e| panic!("write {procs}: {e}"));
    let cname = CString::new(name.clone()).expect("name without NUL");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    let rc = unsafe { libc::prctl(libc::PR_SET_NAME, cname.as_ptr() as libc::c_ulong, 0, 0, 0) };
    assert_eq!(rc, 0, "prctl(PR_SET_NAME): {}", io::Error::last_os_error());
    std::fs::write("/proc/self/comm", &name).expect("write /proc/self/comm");
    let target: SocketAddr = s("target").parse().expect("target address");
    let every = Duration::from_millis(u("every_ms"));
    let grow_for = Duration::from_millis(u("grow_ms"));
    let max = u("max") as usize;

    let start = Instant::now();
    let mut conns: Vec<TcpStream> = Vec::new();
    while conns.len() < max && start.elapsed() < grow_for {
        let mut c = TcpStream::connect_timeout(&target, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect {target} (#{}): {e}", conns.len() + 1));
        c.set_read_timeout(Some(Duration::from_secs(10))).expect("SO_RCVTIMEO");
        c.write_all(&resp_command(&["CLIENT", "SETNAME", &name])).expect("send CLIENT SETNAME");
        assert_eq!(read_line(&mut c), "+OK", "CLIENT SETNAME");
        redis_ping(&mut c);
        conns.push(c);
        leak_say(&format!("open {}", conns.len()));
        // Paced against the start, so slow handshakes do not slow the leak down.
        let next = every * conns.len() as u32;
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    leak_say(&format!("plateau {}", conns.len()));
    // Hold until the parent closes stdin (or dies).
    let mut sink = String::new();
    while io::stdin().read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
        sink.clear();
    }
    drop(conns);
    std::process::exit(0);
}

// -------------------------------------------------------------------------------------------------
// Configuration and views of the agent's alerts

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

/// The agent's GET /api/v1/alerts.
fn agent_alerts(agent: &Agent) -> Result<Vec<Value>, String> {
    let r = http_get(agent.addr(), "/api/v1/alerts", &[]).map_err(|e| format!("GET /api/v1/alerts: {e}"))?;
    if r.status != 200 {
        return Err(format!("/api/v1/alerts answered {}: {}", r.status, r.body));
    }
    let v: Value = serde_json::from_str(&r.body).map_err(|e| format!("/api/v1/alerts is not JSON ({e}): {}", r.body))?;
    v.as_array().cloned().ok_or_else(|| format!("/api/v1/alerts is not a list: {}", r.body))
}

/// Alerts in the agent's format (alertname beside the labels) named `alertname` with `labels`.
fn agent_matching(list: &[Value], alertname: &str, labels: &[(&str, &str)]) -> Vec<Value> {
    list.iter()
        .filter(|a| a["alertname"].as_str() == Some(alertname) && labels.iter().all(|(k, v)| a["labels"][*k].as_str() == Some(*v)))
        .cloned()
        .collect()
}

/// Waits until the agent lists exactly one alert `alertname{labels}` in state "firing".
fn wait_agent_firing(agent: &Agent, within: Instant, alertname: &str, labels: &[(&str, &str)]) -> Value {
    poll_until(within, &format!("agent /api/v1/alerts to list {alertname}{labels:?} firing"), || {
        let list = agent_alerts(agent)?;
        let mine = agent_matching(&list, alertname, labels);
        match mine.as_slice() {
            [a] if a["state"] == "firing" => Ok(a.clone()),
            _ => Err(format!("matching: {mine:?}; all: {}", summarize(&list))),
        }
    })
}

/// Waits until Alertmanager holds exactly one alert `alertname{labels}`.
fn wait_am_alert(am: &Alertmanager, within: Instant, alertname: &str, labels: &[(&str, &str)]) -> Value {
    wait_am_alert_where(am, within, alertname, labels, |_| true)
}

/// Like [`wait_am_alert`], but the alert has no labels besides alertname and `labels`.
fn wait_am_alert_exact(am: &Alertmanager, within: Instant, alertname: &str, labels: &[(&str, &str)]) -> Value {
    wait_am_alert_where(am, within, alertname, labels, |a| a["labels"].as_object().is_some_and(|o| o.len() == labels.len() + 1))
}

fn wait_am_alert_where(am: &Alertmanager, within: Instant, alertname: &str, labels: &[(&str, &str)], also: impl Fn(&Value) -> bool) -> Value {
    poll_until(within, &format!("Alertmanager /api/v2/alerts to hold {alertname}{labels:?}"), || {
        let list = am.alerts()?;
        let mine: Vec<&Value> = list.iter().filter(|a| alert_matches(&a["labels"], alertname, labels) && also(a)).collect();
        match mine.as_slice() {
            [a] => Ok((*a).clone()),
            _ => Err(format!("matching: {mine:?}; all labels: {:?}", list.iter().map(|a| a["labels"].clone()).collect::<Vec<_>>())),
        }
    })
}

/// alertname + state + comm/port of each alert, for timeout messages.
fn summarize(list: &[Value]) -> String {
    let v: Vec<String> = list
        .iter()
        .map(|a| format!("{}:{}:{}", a["alertname"].as_str().unwrap_or("?"), a["state"].as_str().unwrap_or("?"), a["labels"]))
        .collect();
    format!("{v:?}")
}

/// Sum of connmon_alert_active{alertname, labels} (0 when absent).
fn alert_active(samples: &[Sample], alertname: &str, labels: &[(&str, &str)]) -> f64 {
    let mut l = vec![("alertname", alertname)];
    l.extend_from_slice(labels);
    samples_matching(samples, ALERT_ACTIVE, &l).iter().map(|s| s.value).sum()
}

/// Agent stderr lines `alert=<what> alertname=<alertname> ...` that contain every `needle`.
fn log_lines(agent: &Agent, what: &str, alertname: &str, needles: &[String]) -> Vec<String> {
    let head = format!("alert={what} alertname={alertname} ");
    agent.stderr().lines().filter(|l| l.contains(&head) && needles.iter().all(|n| l.contains(n.as_str()))).map(str::to_string).collect()
}

/// Seconds since the Unix epoch of an RFC 3339 time.
fn epoch(rfc3339: &str) -> f64 {
    let out = Command::new("date").args(["-u", "-d", rfc3339, "+%s.%N"]).output().expect("run date");
    assert!(out.status.success(), "date cannot parse {rfc3339:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("date +%s.%N")
}

fn now_epoch() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A humantime duration ("1m 20s", "2h 5m", "45s") in seconds; None if it is not one.
fn parse_human(text: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut any = false;
    for tok in text.split_whitespace() {
        let split = tok.find(|c: char| !c.is_ascii_digit())?;
        let (n, unit) = tok.split_at(split);
        let n: f64 = n.parse().ok()?;
        total += n * match unit {
            "ns" => 1e-9,
            "us" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return None,
        };
        any = true;
    }
    any.then_some(total)
}

fn ann<'a>(alert: &'a Value, key: &str) -> &'a str {
    alert["annotations"][key].as_str().unwrap_or_else(|| panic!("annotation {key} missing in {alert}"))
}

fn ann_f64(alert: &Value, key: &str) -> f64 {
    let s = ann(alert, key);
    s.parse().unwrap_or_else(|e| panic!("annotation {key}={s:?} is not a number ({e}) in {alert}"))
}

/// The pool-growth annotations the contract promises, with a 500-connection redis ceiling and a
/// client that opens about 5 connections a second.
fn check_pool_annotations(alert: &Value, where_: &str) {
    let summary = ann(alert, "summary");
    assert!(!summary.is_empty(), "{where_}: empty summary: {alert}");
    assert!(!ann(alert, "description").is_empty(), "{where_}: empty description: {alert}");
    let current = ann_f64(alert, "current");
    let slope = ann_f64(alert, "slope_per_minute");
    assert!(current >= 1.0, "{where_}: current {current}: {alert}");
    // 5 connections/s = 300/min; allow for scheduling jitter on a loaded machine.
    assert!((150.0..=450.0).contains(&slope), "{where_}: slope_per_minute {slope}, the client opens ~300/min: {alert}");
    assert_eq!(ann(alert, "ceiling"), "500", "{where_}: ceiling: {alert}");
    let ttc = ann(alert, "time_to_ceiling");
    assert!(!ttc.is_empty() && ttc != "reached", "{where_}: time_to_ceiling {ttc:?}: {alert}");
    let secs = parse_human(ttc).unwrap_or_else(|| panic!("{where_}: time_to_ceiling {ttc:?} is not a duration: {alert}"));
    let expect = (500.0 - current) / (slope / 60.0);
    assert!(
        (secs - expect).abs() <= 2.0 + 0.02 * expect,
        "{where_}: time_to_ceiling {ttc} ({secs}s) vs (500 - current {current}) / slope {slope}/min = {expect:.1}s: {alert}"
    );
}

/// Watches Alertmanager's `updatedAt` for `alertname{labels}` for `over`: the agent must push the
/// firing alert again at least every `resend` (plus slack for polling and HTTP). Returns how many
/// pushes were seen.
fn assert_resent(am: &Alertmanager, alertname: &str, labels: &[(&str, &str)], resend: Duration, over: Duration) -> usize {
    let slack = Duration::from_secs(2);
    let start = Instant::now();
    let mut last = String::new();
    let mut last_change = Instant::now();
    let mut changes = 0;
    while start.elapsed() < over {
        let a = wait_am_alert(am, deadline(5), alertname, labels);
        let u = a["updatedAt"].as_str().unwrap_or_else(|| panic!("no updatedAt in {a}")).to_string();
        if u != last {
            if !last.is_empty() {
                changes += 1;
            }
            last = u;
            last_change = Instant::now();
        }
        assert!(
            last_change.elapsed() <= resend + slack,
            "{alertname}: Alertmanager's updatedAt stayed {last} for {:.1}s; resend is {resend:?}",
            last_change.elapsed().as_secs_f64()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(changes >= 2, "{alertname}: only {changes} re-sends seen in {over:?} (resend {resend:?})");
    changes
}

fn pool_labels<'a>(leak_name: &'a str, cgroup: &'a str, dst_port: &'a str) -> [(&'a str, &'a str); 5] {
    [("service", "redis"), ("dst_addr", "127.0.0.1"), ("dst_port", dst_port), ("comm", leak_name), ("cgroup", cgroup)]
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
    eprintln!("{POOL_GROWTH} for {name} reached Alertmanager {arrived:.1}s after the leak started ({} connections open)", leak.opened());
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
    assert!((starts - since).abs() < 0.01, "Alertmanager startsAt {} vs agent since {}", am_alert["startsAt"], a["since"]);
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
    assert_eq!(alert_active(&s, POOL_GROWTH, &[("comm", &name)]), 1.0, "{ALERT_ACTIVE} for {name}: {:#?}", samples_matching(&s, ALERT_ACTIVE, &[]));
    assert_eq!(alert_active(&s, POOL_GROWTH, &labels), 1.0, "{ALERT_ACTIVE} with every pool label");
    let fired = sample(&s, ALERTS_FIRED, &[("alertname", POOL_GROWTH)]).unwrap_or(0.0);
    assert!(fired >= 1.0, "{ALERTS_FIRED}{{alertname={POOL_GROWTH}}} = {fired}");

    let url = format!("http://{}", agent.addr());
    let rows = parse_json_lines(&connmon_ok(&["alerts", "--agent", &url, "--json"]));
    let mine = agent_matching(&rows, POOL_GROWTH, &labels);
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
    poll_until(deadline(10), "a firing webhook notification for the pool", || {
        let hits: Vec<Value> =
            am.webhook.alerts().into_iter().filter(|a| alert_matches(&a["labels"], POOL_GROWTH, &labels) && a["status"] == "firing").collect();
        if hits.is_empty() { Err(format!("{:?}", am.webhook.alerts())) } else { Ok(()) }
    });
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
        Some(v) if v == 500.0 => Ok(()),
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
        assert!(mine.is_empty(), "{:.0}s into a flat pool of 500, the agent lists {mine:#?}", start.elapsed().as_secs_f64());
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
    let hooks: Vec<Value> = am.webhook.alerts().into_iter().filter(|a| alert_matches(&a["labels"], POOL_GROWTH, &comm)).collect();
    assert!(hooks.is_empty(), "Alertmanager notified about the flat pool: {hooks:#?}");
    assert_eq!(redis.clients_named(&client.name), 500, "redis CLIENT LIST for {}", client.name);
    eprintln!("flat pool of 500 ({name}): {checks} checks over {:.0}s, never pending or firing", start.elapsed().as_secs_f64());
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
    let resolved_line = poll_until(plateau_at + Duration::from_secs(35), "agent log `alert=resolved` for the pool", || {
        let l = log_lines(&agent, "resolved", POOL_GROWTH, &comm_needle);
        l.first().cloned().ok_or_else(|| format!("{} firing line(s)", log_lines(&agent, "firing", POOL_GROWTH, &comm_needle).len()))
    });
    let resolved_after = plateau_at.elapsed().as_secs_f64();
    eprintln!("{name}: resolved {resolved_after:.1}s after the plateau: {resolved_line}");
    assert!(resolved_after >= 9.0, "resolved {resolved_after:.1}s after the plateau, before clear_for (10s) could pass");
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
    assert!(agent_matching(&rows, POOL_GROWTH, &labels).is_empty(), "connmon alerts --json after resolution: {rows:#?}");

    // Alertmanager 0.25: the pushed endsAt (in the past) drops the alert from /api/v2/alerts at once
    // (without it the alert would stay until resolve_timeout, 5m), counts it as received resolved,
    // and sends the receiver a "resolved" notification carrying that endsAt.
    poll_until(deadline(15), "Alertmanager to drop the resolved alert from /api/v2/alerts", || {
        let v = am.find(POOL_GROWTH, &labels)?;
        if v.is_empty() { Ok(()) } else { Err(format!("{v:?}")) }
    });
    let hook = poll_until(deadline(15), "a resolved webhook notification for the pool", || {
        let hits: Vec<Value> =
            am.webhook.alerts().into_iter().filter(|a| alert_matches(&a["labels"], POOL_GROWTH, &labels) && a["status"] == "resolved").collect();
        hits.first().cloned().ok_or_else(|| format!("{:?}", am.webhook.notifications()))
    });
    let ends = epoch(hook["endsAt"].as_str().expect("endsAt"));
    let starts = epoch(hook["startsAt"].as_str().expect("startsAt"));
    assert!(ends > starts && (now_epoch() - ends).abs() < 30.0, "resolved notification's times: {hook}");
    assert!(ends - starts >= 9.0, "resolved notification: firing lasted only {:.1}s (clear_for is 10s): {hook}", ends - starts);
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
    let ss = poll_until(deadline(15), "ss to show a full accept queue (5) and drops", || match ss_listener(&ns, "127.0.0.1", port) {
        Some(l) if l.recv_q == 5 && l.drops > 0 => Ok(l),
        other => Err(format!("{other:?}")),
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
    assert!(drops >= 1.0 && drops <= ss_now.drops as f64, "drops annotation {drops}, ss says {} dropped in all", ss_now.drops);

    let s = agent.samples();
    assert_eq!(alert_active(&s, QUEUE_SATURATED, &labels), 1.0, "{ALERT_ACTIVE}: {:#?}", samples_matching(&s, ALERT_ACTIVE, &[]));
    assert_eq!(alert_active(&s, LISTEN_OVERFLOW, &labels), 1.0, "{ALERT_ACTIVE}: {:#?}", samples_matching(&s, ALERT_ACTIVE, &[]));

    let a = wait_am_alert(&am, deadline(15), QUEUE_SATURATED, &labels);
    assert_eq!(a["annotations"]["backlog"], "4", "{a}");
    let o = wait_am_alert(&am, deadline(15), LISTEN_OVERFLOW, &labels);
    assert!(o["annotations"]["drops"].as_str().is_some_and(|d| d != "0"), "{o}");
    for (name, l) in [(QUEUE_SATURATED, &a["labels"]), (LISTEN_OVERFLOW, &o["labels"])] {
        let keys: Vec<&String> = l.as_object().expect("labels").keys().collect();
        assert_eq!(keys, ["addr", "alertname", "comm", "netns", "port"], "{name} labels in Alertmanager: {l}");
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
    eprintln!("{name}: firing in the agent {:.1}s after the start, Alertmanager down (at {})", leak.started.elapsed().as_secs_f64(), now_epoch());
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
        assert_eq!(alert_active(&samples, POOL_GROWTH, &[("comm", &name)]), 1.0, "{ALERT_ACTIVE} while Alertmanager is down");
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
    eprintln!("{scrapes} scrapes in {:.1}s while Alertmanager was down, slowest {slowest:?} (at {})", t.elapsed().as_secs_f64(), now_epoch());
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
    poll_until(deadline(10), "agent log: delivering again", || {
        let e = agent.stderr();
        if e.contains("alertmanager: delivering again") { Ok(()) } else { Err("no `delivering again` line".to_string()) }
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
        ("unknown key", "[ceilings]\nredis = 500\n\n[alerts]\ninterval = \"1s\"\nresnd = \"5s\"\n", 6, "resnd", &["unknown"]),
        ("bad duration", "[alerts]\ninterval = \"1s\"\n\n[alerts.pool_growth]\nwindow = \"10x\"\n", 5, "window", &["10x"]),
        ("negative threshold", "[alerts.pool_growth]\nwindow = \"20s\"\nmin_slope_per_min = -6\n", 3, "min_slope_per_min", &["positive", "-6"]),
        ("ratio above 1", "[alerts]\ninterval = \"1s\"\n[alerts.accept_queue_saturated]\nfor = \"2s\"\nfill = 1.5\n", 5, "fill", &["between 0 and 1", "1.5"]),
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
