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

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

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
        self.notifications()
            .iter()
            .flat_map(|n| n["alerts"].as_array().cloned().unwrap_or_default())
            .collect()
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
        Alertmanager::try_start(port).unwrap_or_else(|log| panic!("alertmanager on port {port} did not start; log:\n{log}"))
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
        let r = http_get(self.addr, "/api/v2/alerts?active=true&silenced=true&inhibited=true&unprocessed=true", &[])
            .map_err(|e| format!("GET /api/v2/alerts: {e}"))?;
        if r.status != 200 {
            return Err(format!("GET /api/v2/alerts answered {}: {}", r.status, r.body));
        }
        let v: Value = serde_json::from_str(&r.body).map_err(|e| format!("/api/v2/alerts is not JSON ({e}): {}", r.body))?;
        v.as_array().cloned().ok_or_else(|| format!("/api/v2/alerts is not a list: {}", r.body))
    }

    /// Alerts named `alertname` whose labels include `labels`.
    pub fn find(&self, alertname: &str, labels: &[(&str, &str)]) -> Result<Vec<Value>, String> {
        Ok(self.alerts()?.into_iter().filter(|a| alert_matches(&a["labels"], alertname, labels)).collect())
    }

    /// Alertmanager's own `/metrics` sample `name{labels}` (0 if absent).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let r = http_get(self.addr, "/metrics", &[]).unwrap_or_else(|e| panic!("GET alertmanager /metrics: {e}"));
        let samples = super::parse_metrics(&r.body);
        super::samples_matching(&samples, name, labels).iter().map(|s| s.value).sum()
    }
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
