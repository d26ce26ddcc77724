//! A real Alertmanager (the Debian package's `prometheus-alertmanager`, 0.25) for the alert tests,
//! RAII, with a webhook receiver inside the test process so the tests also see what Alertmanager
//! itself notifies (firing, and resolved once an alert's `endsAt` has passed).
//!
//! Alertmanager 0.25 facts the tests rely on (checked by hand against the packaged binary):
//! - GET /api/v2/alerts lists alerts whose `endsAt` is still in the future, whatever the
//!   `active`/`silenced`/`inhibited`/`unprocessed` filters say. An alert pushed without `endsAt`
//!   gets `endsAt` = receipt + `resolve_timeout` (5m by default) and `status.state` "active".
//! - An alert pushed with `endsAt` in the past is resolved: it disappears from that list at once,
//!   `alertmanager_alerts_received_total{status="resolved"}` counts it, and receivers with
//!   `send_resolved` get a notification whose `status` is "resolved".
//! - `--cluster.listen-address=` (empty) disables clustering (no gossip port needed).
//!
//! The waits at the end ([`wait_am_alert`], [`wait_webhook`], [`assert_resent`]) are how the alert
//! tests observe what the agent pushed.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::scrape::sum_of;
use super::{deadline, free_local_port, http_get, poll_until, TempDir};

pub const ALERTMANAGER_BIN: &str = "/usr/bin/prometheus-alertmanager";

// ---------------------------------------------------------------------------------------------
// Webhook receiver

/// An HTTP endpoint on 127.0.0.1 that records the JSON body of every POST (Alertmanager's webhook
/// notifications) and answers 200.
pub struct WebhookSink {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

fn read_request(s: &mut TcpStream) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let len: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while raw.len() < head_end + len {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    Some(raw[head_end..head_end + len].to_vec())
}

impl WebhookSink {
    pub fn start() -> WebhookSink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind webhook sink");
        listener.set_nonblocking(true).expect("webhook sink non-blocking");
        let addr = listener.local_addr().expect("webhook sink address");
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (b2, s2) = (bodies.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        if let Some(body) = read_request(&mut s) {
                            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                                b2.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                            }
                        }
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        WebhookSink { addr, bodies, stop, handle: Some(handle) }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Every notification received so far.
    pub fn notifications(&self) -> Vec<Value> {
        self.bodies.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every alert of every notification so far (each with its own `status`).
    pub fn alerts(&self) -> Vec<Value> {
        self.notifications().iter().flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default()).collect()
    }

    /// The notified alerts named `alertname` whose labels include `labels`.
    pub fn alerts_matching(&self, alertname: &str, labels: &[(&str, &str)]) -> Vec<Value> {
        self.alerts().into_iter().filter(|a| alert_matches(&a["labels"], alertname, labels)).collect()
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Alertmanager

/// `prometheus-alertmanager` on 127.0.0.1:PORT, clustering off, one route that sends every alert
/// (its own group: `group_by: ["..."]`, 1 s group wait and interval) to a [`WebhookSink`] with
/// `send_resolved`. Drop kills it; if the test is panicking, its log is printed.
pub struct Alertmanager {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
    pub webhook: WebhookSink,
}

impl Alertmanager {
    /// Starts on a free port.
    pub fn start() -> Alertmanager {
        for attempt in 1.. {
            match Alertmanager::try_start(free_local_port()) {
                Ok(am) => return am,
                Err(log) if attempt < 3 && log.contains("address already in use") => {
                    eprintln!("alertmanager could not bind its port (attempt {attempt}), retrying");
                }
                Err(log) => panic!("alertmanager did not start; log:\n{log}"),
            }
        }
        unreachable!()
    }

    /// Starts on 127.0.0.1:`port` (which must be free); panics if it does not become ready.
    pub fn start_on(port: u16) -> Alertmanager {
        Alertmanager::try_start(port)
            .unwrap_or_else(|log| panic!("alertmanager on port {port} did not start; log:\n{log}"))
    }

    fn try_start(port: u16) -> Result<Alertmanager, String> {
        let webhook = WebhookSink::start();
        let dir = TempDir::new("cmam");
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: hook\n  group_by: ['...']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
                 receivers:\n  - name: hook\n    webhook_configs:\n      - url: '{}'\n        send_resolved: true\n",
                webhook.url()
            ),
        )
        .expect("write alertmanager.yml");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = File::create(dir.path().join("alertmanager.log")).expect("create alertmanager log");
        let mut cmd = Command::new(ALERTMANAGER_BIN);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let mut am = Alertmanager { child, addr, dir, webhook };
        let exited = poll_until(deadline(30), &format!("alertmanager on {addr} to answer 200 on /-/ready"), || {
            if let Some(st) = am.child.try_wait().expect("try_wait alertmanager") {
                return Ok(Some(format!("alertmanager exited with {st}\n{}", am.log())));
            }
            match http_get(addr, "/-/ready", &[]) {
                Ok(r) if r.status == 200 => Ok(None),
                Ok(r) => Err(format!("/-/ready answered {}: {}", r.status, r.body)),
                Err(e) => Err(format!("GET /-/ready: {e}")),
            }
        });
        match exited {
            None => Ok(am),
            Some(msg) => Err(msg),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id (for SIGSTOP/SIGCONT: an Alertmanager that hangs but keeps its state).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The base URL to give `connmon run --alertmanager.url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }

    /// GET /api/v2/alerts with every filter open: the alerts Alertmanager holds whose `endsAt` has
    /// not passed.
    pub fn alerts(&self) -> Result<Vec<Value>, String> {
        get_alert_list(self.addr, "/api/v2/alerts?active=true&silenced=true&inhibited=true&unprocessed=true")
    }

    /// Alerts named `alertname` whose labels include `labels`.
    pub fn find(&self, alertname: &str, labels: &[(&str, &str)]) -> Result<Vec<Value>, String> {
        Ok(self.alerts()?.into_iter().filter(|a| alert_matches(&a["labels"], alertname, labels)).collect())
    }

    /// Alertmanager's own `/metrics` sample `name{labels}` (0 if absent).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let r = http_get(self.addr, "/metrics", &[]).unwrap_or_else(|e| panic!("GET alertmanager /metrics: {e}"));
        let samples = super::parse_metrics(&r.body);
        sum_of(&samples, name, labels).unwrap_or(0.0)
    }
}

/// GET `path` on `addr`, a JSON list of alerts (the agent's /api/v1/alerts, Alertmanager's
/// /api/v2/alerts); `Err` says what came back instead.
pub fn get_alert_list(addr: SocketAddr, path: &str) -> Result<Vec<Value>, String> {
    let name = path.split('?').next().unwrap_or(path);
    let r = http_get(addr, path, &[]).map_err(|e| format!("GET {name}: {e}"))?;
    if r.status != 200 {
        return Err(format!("{name} answered {}: {}", r.status, r.body));
    }
    let v: Value = serde_json::from_str(&r.body).map_err(|e| format!("{name} is not JSON ({e}): {}", r.body))?;
    v.as_array().cloned().ok_or_else(|| format!("{name} is not a list: {}", r.body))
}

/// `labels` (a JSON object) has alertname `alertname` and every pair of `want`.
pub fn alert_matches(labels: &Value, alertname: &str, want: &[(&str, &str)]) -> bool {
    labels["alertname"].as_str() == Some(alertname) && want.iter().all(|(k, v)| labels[*k].as_str() == Some(*v))
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- alertmanager ({}) log, last {} lines ----", self.addr, tail.len());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            let alerts = self.webhook.alerts();
            eprintln!("---- webhook: {} alerts notified; the last 20 (status, labels):", alerts.len());
            for a in alerts.iter().rev().take(20).rev() {
                eprintln!("{} {}", a["status"], a["labels"]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Waiting for what the agent pushed

/// Waits until Alertmanager holds exactly one alert `alertname{labels}`.
pub fn wait_am_alert(am: &Alertmanager, within: Instant, alertname: &str, labels: &[(&str, &str)]) -> Value {
    wait_am_alert_where(am, within, alertname, labels, |_| true)
}

/// Like [`wait_am_alert`], but the alert has no labels besides alertname and `labels`.
pub fn wait_am_alert_exact(am: &Alertmanager, within: Instant, alertname: &str, labels: &[(&str, &str)]) -> Value {
    wait_am_alert_where(am, within, alertname, labels, |a| {
        a["labels"].as_object().is_some_and(|o| o.len() == labels.len() + 1)
    })
}

/// The one alert `alertname{labels}` Alertmanager holds that also passes `also`.
fn wait_am_alert_where(
    am: &Alertmanager,
    within: Instant,
    alertname: &str,
    labels: &[(&str, &str)],
    also: impl Fn(&Value) -> bool,
) -> Value {
    poll_until(within, &format!("Alertmanager /api/v2/alerts to hold {alertname}{labels:?}"), || {
        let list = am.alerts()?;
        let mine: Vec<&Value> =
            list.iter().filter(|a| alert_matches(&a["labels"], alertname, labels) && also(a)).collect();
        match mine.as_slice() {
            [a] => Ok((*a).clone()),
            _ => Err(format!(
                "matching: {mine:?}; all labels: {:?}",
                list.iter().map(|a| a["labels"].clone()).collect::<Vec<_>>()
            )),
        }
    })
}

/// Waits until Alertmanager has notified its webhook of `alertname{labels}` with `status`
/// ("firing" or "resolved"); returns the first such alert.
pub fn wait_webhook(
    am: &Alertmanager,
    within: Instant,
    alertname: &str,
    labels: &[(&str, &str)],
    status: &str,
) -> Value {
    poll_until(within, &format!("a {status} webhook notification for {alertname}{labels:?}"), || {
        let hits: Vec<Value> =
            am.webhook.alerts_matching(alertname, labels).into_iter().filter(|a| a["status"] == status).collect();
        hits.first().cloned().ok_or_else(|| format!("{:?}", am.webhook.notifications()))
    })
}

/// Watches Alertmanager's `updatedAt` for `alertname{labels}` for `over`: the agent must push the
/// firing alert again at least every `resend` (plus slack for polling and HTTP). Returns how many
/// pushes were seen.
pub fn assert_resent(
    am: &Alertmanager,
    alertname: &str,
    labels: &[(&str, &str)],
    resend: Duration,
    over: Duration,
) -> usize {
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
