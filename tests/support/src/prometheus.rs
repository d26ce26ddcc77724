//! A real Prometheus server (Debian's `prometheus` 2.x) as a child process (RAII) and the bits of its
//! HTTP API the tests use: instant PromQL queries and the scrape targets. Requests go through the
//! harness's HTTP client ([`http_get`], ureq); query strings are percent-encoded here.
//!
//! `PROMETHEUS=/path/to/prometheus` overrides the binary on PATH.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};

use serde_json::Value;

use super::{deadline, free_local_port, http_get, poll_until, TempDir};

/// The Prometheus binary: `$PROMETHEUS`, else `prometheus` on PATH.
pub fn prometheus_bin() -> String {
    std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".to_string())
}

/// Percent-encodes `s` for a URL query component: every byte except the unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`, RFC 3986) becomes `%XX`.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A `prometheus.yml` with one job scraping `targets` every `interval` (which is also the scrape
/// timeout and the global interval, so the file is valid for any interval).
pub fn scrape_config(job: &str, interval: &str, targets: &[SocketAddr]) -> String {
    scrape_config_with(job, interval, targets, "")
}

/// [`scrape_config`] with `job_yaml` added to the job: keys at the job's level, each line
/// indented by 4 spaces (e.g. `    scheme: https\n    basic_auth: …`).
pub fn scrape_config_with(job: &str, interval: &str, targets: &[SocketAddr], job_yaml: &str) -> String {
    let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    format!(
        "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  evaluation_interval: {interval}\n\
         scrape_configs:\n  - job_name: '{job}'\n    scrape_interval: {interval}\n    scrape_timeout: {interval}\n{job_yaml}    \
         static_configs:\n      - targets: [{}]\n",
        list.join(", ")
    )
}

/// One element of an instant-vector result.
#[derive(Debug, Clone, PartialEq)]
pub struct PromSample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl PromSample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

impl fmt::Display for PromSample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<String> = self.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        write!(f, "{{{}}} {}", labels.join(","), self.value)
    }
}

/// A sample value as the API writes it (a string: "6", "NaN", "+Inf", "1.5e-05").
fn api_value(v: &Value) -> Result<f64, String> {
    let s = v.as_str().ok_or_else(|| format!("sample value is not a string: {v}"))?;
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        s => s.parse().map_err(|e| format!("bad sample value {s:?}: {e}")),
    }
}

/// `prometheus` on 127.0.0.1:<free port> with its config and TSDB in a temp dir. Dropping it kills
/// the process; if the test is panicking, its log is printed.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log_path: PathBuf,
    dir: TempDir,
}

impl Prometheus {
    /// Writes `config` (prometheus.yml text) and starts
    /// `prometheus --config.file=… --storage.tsdb.path=… --web.listen-address=127.0.0.1:PORT`, then
    /// waits (60 s) until GET /-/ready answers 200.
    pub fn start(config: &str) -> Prometheus {
        // The port was free a moment ago; should another process take it meanwhile, try another.
        for attempt in 1.. {
            match Prometheus::try_start(config) {
                Ok(p) => return p,
                Err(log) if attempt < 3 && log.contains("address already in use") => {
                    eprintln!("prometheus could not bind its port (attempt {attempt}), retrying:\n{log}");
                }
                Err(log) => panic!("prometheus exited before it was ready; log:\n{log}"),
            }
        }
        unreachable!()
    }

    fn try_start(config: &str) -> Result<Prometheus, String> {
        let dir = TempDir::new("cmprom");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("write {}: {e}", config_path.display()));
        let addr: SocketAddr = format!("127.0.0.1:{}", free_local_port()).parse().unwrap();
        let log_path = dir.path().join("prometheus.log");
        let log = File::create(&log_path).expect("create prometheus log");
        let mut cmd = Command::new(prometheus_bin());
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .current_dir(dir.path());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start {cmd:?}: {e}; install Prometheus (Debian: apt install prometheus) or set PROMETHEUS")
        });
        let mut p = Prometheus { child, addr, log_path, dir };
        let exited = poll_until(deadline(60), &format!("prometheus on {addr} to answer 200 on /-/ready"), || {
            if let Some(st) = p.exited() {
                return Ok(Some(format!("prometheus exited with {st}; log:\n{}", p.log())));
            }
            match http_get(p.addr, "/-/ready", &[]) {
                Ok(r) if r.status == 200 => Ok(None),
                Ok(r) => Err(format!("/-/ready answered {}: {:?}", r.status, r.body)),
                Err(e) => Err(format!("GET /-/ready: {e}")),
            }
        });
        match exited {
            None => Ok(p),
            Some(msg) => Err(msg),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The temp dir holding prometheus.yml, the TSDB and the log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait on prometheus")
    }

    /// Everything Prometheus has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// GET `path` (with query string) and parse the JSON envelope of the HTTP API: `Ok(data)` when
    /// `status` is `success`, `Err(errorType: error)` otherwise (transport errors too).
    pub fn api(&self, path: &str) -> Result<Value, String> {
        let r = http_get(self.addr, path, &[]).map_err(|e| format!("GET {path}: {e}"))?;
        let v: Value = serde_json::from_str(&r.body)
            .map_err(|e| format!("GET {path} answered {} with non-JSON ({e}): {}", r.status, r.body))?;
        if v["status"] == "success" {
            Ok(v["data"].clone())
        } else {
            Err(format!(
                "GET {path} answered {}: {}: {}",
                r.status,
                v["errorType"].as_str().unwrap_or("?"),
                v["error"].as_str().unwrap_or(&r.body)
            ))
        }
    }

    /// An instant query (`/api/v1/query`, evaluated now). A vector result gives one
    /// [`PromSample`] per series; a scalar gives one sample without labels.
    pub fn query(&self, expr: &str) -> Result<Vec<PromSample>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(expr)))?;
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .ok_or_else(|| format!("{expr}: result is not an array: {data}"))?
                .iter()
                .map(|s| {
                    let labels = s["metric"]
                        .as_object()
                        .ok_or_else(|| format!("{expr}: no metric object in {s}"))?
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect();
                    Ok(PromSample { labels, value: api_value(&s["value"][1])? })
                })
                .collect(),
            Some("scalar") => Ok(vec![PromSample { labels: BTreeMap::new(), value: api_value(&data["result"][1])? }]),
            other => Err(format!("{expr}: unexpected result type {other:?}: {data}")),
        }
    }

    /// The value of the only series `expr` returns; `Err` (naming what came back) unless exactly one.
    pub fn query_one(&self, expr: &str) -> Result<PromSample, String> {
        let mut v = self.query(expr)?;
        if v.len() == 1 {
            Ok(v.remove(0))
        } else {
            let shown: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            Err(format!("{expr}: {} series, want 1: [{}]", v.len(), shown.join(", ")))
        }
    }

    /// `/api/v1/targets` active targets (objects with labels, health, lastError, lastScrape, ...).
    pub fn active_targets(&self) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/targets?state=active")?;
        data["activeTargets"].as_array().cloned().ok_or_else(|| format!("no activeTargets in {data}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = self.log();
            let tail: Vec<&str> = text.lines().rev().take(100).collect();
            eprintln!("---- prometheus log (last {} lines) ----", tail.len());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            eprintln!("---- end of prometheus log ----");
        }
        // self.dir (config, TSDB) is removed after this, once the server is down.
    }
}
