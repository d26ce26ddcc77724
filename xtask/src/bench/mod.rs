//! `cargo xtask bench <target>`: overhead measurements of the release agent. Each target is a
//! module; this one holds what they share: prerequisites, the release build, starting and
//! stopping probes (the agent, bpftrace), /proc accounting, a tiny HTTP client, the load
//! generator (`connload`, src/bin/connload.rs) and small statistics.

mod pools;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use crate::util::{display, is_root, run_inherit, target_dir, which, workspace_root};

#[derive(Subcommand)]
pub enum Target {
    /// Connection-pool tracking under loopback connection churn: throughput with no probe, with
    /// the agent (scraped every second) and with a bpftrace one-liner on the same tracepoint,
    /// then the agent's CPU at a fixed connection rate.
    Pools(pools::PoolsArgs),
}

pub fn run(target: Target) -> Result<()> {
    match target {
        Target::Pools(args) => pools::run(&args),
    }
}

// ---------------------------------------------------------------------------------------------
// Prerequisites and build

const TRACEFS: &str = "/sys/kernel/tracing";

/// Root, bpftrace and tracefs, each with a one-line error that says what to do.
fn preflight() -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask bench` needs root (it loads eBPF programs: the agent and bpftrace); run it as root");
    }
    if which("bpftrace").is_none() {
        bail!("bpftrace is not on PATH (the bench compares the agent with a bpftrace one-liner): run `cargo xtask setup`");
    }
    if !Path::new(TRACEFS).join("events").is_dir() {
        bail!("tracefs is not mounted at {TRACEFS} (bpftrace needs it): run `cargo xtask setup`");
    }
    Ok(())
}

struct Binaries {
    connmon: PathBuf,
    connload: PathBuf,
}

/// `cargo build --release` of the agent and of connload.
fn build_release() -> Result<Binaries> {
    println!("building the release agent and connload");
    for args in [
        &["build", "--release", "-p", "monitor"][..],
        &["build", "--release", "-p", "xtask", "--bin", "connload"][..],
    ] {
        run_inherit(
            Command::new("cargo")
                .args(args)
                .current_dir(workspace_root()),
        )?;
    }
    let release = target_dir().join("release");
    let bins = Binaries {
        connmon: release.join("connmon"),
        connload: release.join("connload"),
    };
    for bin in [&bins.connmon, &bins.connload] {
        if !bin.is_file() {
            bail!("the build succeeded but {} is missing", bin.display());
        }
    }
    Ok(bins)
}

/// Where the bench keeps probe logs and raw connload output, emptied at each run.
fn log_dir(target: &str) -> Result<PathBuf> {
    let dir = target_dir().join("bench").join(target);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// A loopback port nobody listens on right now (the kernel's pick; racy, but only in theory here).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------------
// /proc accounting

/// Clock ticks per second, the unit of utime/stime in /proc/<pid>/stat.
fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of the whole process (all threads), in ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: fields 3.. follow the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` field of /proc/<pid>/status (VmHWM: peak resident set size), in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Other processes named like a tracer (they add their probes' cost to every variant).
fn other_tracers(own: &[&str]) -> Vec<String> {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<(u32, String)> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let pid: u32 = name.parse().ok()?;
            if name == me {
                return None;
            }
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let comm = comm.trim();
            own.contains(&comm).then(|| (pid, comm.to_owned()))
        })
        .collect();
    found.sort();
    found
        .into_iter()
        .map(|(pid, comm)| format!("{comm} (pid {pid})"))
        .collect()
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn cpu_count() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

// ---------------------------------------------------------------------------------------------
// Probes: the agent and bpftrace, as children we start, watch and stop

/// A running probe process. Dropping it kills the process (error paths); `stop` ends it cleanly.
struct Probe {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
    /// bpftrace's stdout, line by line, from a reader thread (`early_lines`: those read while
    /// waiting for it to attach).
    lines: Option<Receiver<String>>,
    early_lines: Vec<String>,
    reader: Option<JoinHandle<()>>,
}

/// What a probe left when it stopped.
struct Stopped {
    status: ExitStatus,
    stdout: Vec<String>,
}

impl Probe {
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// The last lines of the probe's log, for error messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n  ");
        format!("{} (log {}):\n  {tail}", self.name, self.log.display())
    }

    /// Error unless the process is still running.
    fn check_alive(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} is not running", self.name)
        };
        if let Some(status) = child.try_wait()? {
            self.child = None;
            bail!(
                "{} exited unexpectedly ({status}); {}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// SIGINT (both the agent and bpftrace shut down cleanly on it), then SIGKILL after 10 s.
    fn stop(mut self) -> Result<Stopped> {
        let mut child = self.child.take().context("probe already stopped")?;
        signal(child.id(), libc::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                eprintln!("warning: {} ignored SIGINT for 10 s; killing it", self.name);
                let _ = child.kill();
                break child.wait()?;
            }
            thread::sleep(Duration::from_millis(20));
        };
        // The reader ends at EOF, which the exit brings.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let mut stdout = std::mem::take(&mut self.early_lines);
        if let Some(rx) = self.lines.take() {
            stdout.extend(rx.try_iter());
        }
        Ok(Stopped { status, stdout })
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) on a child of ours that has not been reaped yet.
        unsafe { libc::kill(pid, sig) };
    }
}

fn log_file(path: &Path) -> Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))
}

/// `connmon run --web.listen-address <web>`, ready once /readyz answers 200.
fn start_agent(connmon: &Path, web: SocketAddr, log: PathBuf) -> Result<Probe> {
    let out = log_file(&log)?;
    let mut cmd = Command::new(connmon);
    cmd.arg("run")
        .arg("--web.listen-address")
        .arg(web.to_string())
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let shown = display(&cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let mut probe = Probe {
        name: "connmon",
        child: Some(child),
        log,
        lines: None,
        early_lines: Vec::new(),
        reader: None,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        probe.check_alive()?;
        if let Ok((200, _)) = http_get(web, "/readyz", Duration::from_secs(2)) {
            return Ok(probe);
        }
        if Instant::now() > deadline {
            bail!(
                "connmon was not ready within 30 s (/readyz never answered 200); {}",
                probe.log_tail()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `bpftrace -e PROGRAM`, ready once it prints "Attaching".
fn start_bpftrace(program: &str, log: PathBuf) -> Result<Probe> {
    let mut cmd = Command::new("bpftrace");
    cmd.arg("-e")
        .arg(program)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file(&log)?);
    let mut child = cmd.spawn().context("cannot start bpftrace")?;
    let stdout = child.stdout.take().context("bpftrace stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut probe = Probe {
        name: "bpftrace",
        child: Some(child),
        log,
        lines: None,
        early_lines: Vec::new(),
        reader: Some(reader),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let ready = line.contains("Attaching");
                seen.push(line);
                if ready {
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                thread::sleep(Duration::from_millis(50));
            }
        }
        probe.check_alive()?;
        if Instant::now() > deadline {
            bail!(
                "bpftrace did not print \"Attaching\" within 30 s; {}",
                probe.log_tail()
            );
        }
    }
    probe.early_lines = seen;
    probe.lines = Some(rx);
    Ok(probe)
}

// ---------------------------------------------------------------------------------------------
// HTTP: /readyz and /metrics, as Prometheus asks for them

/// Prometheus 2.x's Accept header (OpenMetrics preferred, classic text as fallback).
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// GET `path` over a fresh connection (`Connection: close`); the status and the body.
fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let mut sock = TcpStream::connect_timeout(&addr, timeout)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.set_write_timeout(Some(timeout))?;
    write!(
        sock,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: xtask-bench\r\n\
         Accept: {PROMETHEUS_ACCEPT}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw)?;
    parse_http_response(&String::from_utf8_lossy(&raw))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed HTTP response"))
}

fn parse_http_response(text: &str) -> Option<(u16, String)> {
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Some((status, body))
}

/// Body of a `Transfer-Encoding: chunked` response.
fn dechunk(mut rest: &str) -> Option<String> {
    let mut body = String::new();
    loop {
        let (size_line, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(body);
        }
        body.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// Sum of the samples of `metric` whose labels contain `label` (e.g. `comm="connload"`).
fn metric_sum(body: &str, metric: &str, label: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) || !rest.contains(label) {
            continue;
        }
        // `name{labels} value [timestamp]`: label values may contain spaces, the value follows
        // the closing brace.
        let after = rest.rsplit_once('}').map_or(rest, |(_, v)| v);
        if let Some(v) = after
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            sum += v;
            found = true;
        }
    }
    found.then_some(sum)
}

#[derive(Default, Clone, Copy)]
struct ScrapeStats {
    ok: u32,
    failed: u32,
    max_ms: f64,
    max_bytes: usize,
}

/// Scrapes /metrics every second (absolute deadlines, first one at once) until stopped.
struct Scraper {
    stop: Sender<()>,
    handle: JoinHandle<ScrapeStats>,
}

impl Scraper {
    fn start(web: SocketAddr) -> Scraper {
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = thread::spawn(move || {
            let mut stats = ScrapeStats::default();
            let start = Instant::now();
            for k in 0u32.. {
                let due = start + Duration::from_secs(u64::from(k));
                match stopped.recv_timeout(due.saturating_duration_since(Instant::now())) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => break,
                }
                let t = Instant::now();
                match http_get(web, "/metrics", Duration::from_secs(5)) {
                    Ok((200, body)) => {
                        stats.ok += 1;
                        stats.max_bytes = stats.max_bytes.max(body.len());
                    }
                    _ => stats.failed += 1,
                }
                stats.max_ms = stats.max_ms.max(t.elapsed().as_secs_f64() * 1e3);
            }
            stats
        });
        Scraper { stop, handle }
    }

    fn finish(self) -> ScrapeStats {
        let _ = self.stop.send(());
        self.handle.join().unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// The load generator

/// connload's JSON line, the fields the bench uses.
#[derive(Clone, Debug)]
struct Load {
    connections: u64,
    errors: u64,
    elapsed_s: f64,
    rate: f64,
    late_max_ms: f64,
    first_error: Option<String>,
}

/// Runs connload with `args` (it prints one JSON line) and appends that line to `record`.
fn run_connload(connload: &Path, args: &[String], record: &Path) -> Result<Load> {
    let mut cmd = Command::new(connload);
    cmd.args(args).stdin(Stdio::null()).stderr(Stdio::inherit());
    let shown = display(&cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot run `{shown}`"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("`{shown}` failed ({}): {}", out.status, stdout.trim());
    }
    let line = stdout
        .lines()
        .rfind(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("`{shown}` printed no JSON line"))?;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(record)
    {
        let _ = writeln!(f, "{line}");
    }
    parse_load(line).with_context(|| format!("cannot read connload's output: {line}"))
}

fn parse_load(line: &str) -> Option<Load> {
    Some(Load {
        connections: json_number(line, "connections")? as u64,
        errors: json_number(line, "errors")? as u64,
        elapsed_s: json_number(line, "elapsed_s")?,
        rate: json_number(line, "rate")?,
        late_max_ms: json_number(line, "late_max_ms").unwrap_or(0.0),
        first_error: json_string_field(line, "first_error"),
    })
}

/// The number after `"key":` in a flat JSON object.
fn json_number(line: &str, key: &str) -> Option<f64> {
    let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &line[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The string after `"key":` in a flat JSON object (escapes kept as written); None for null.
fn json_string_field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let rest = &line[start..];
    let mut end = None;
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => {
                end = Some(i);
                break;
            }
            _ => {}
        }
    }
    Some(rest[..end?].to_owned())
}

// ---------------------------------------------------------------------------------------------
// Statistics and formatting

/// Median, min and max of `v` (None when empty).
fn summary(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some((median, s[0], s[n - 1]))
}

/// 1234567.8 -> "1,234,568".
fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connload_output() {
        let line = r#"{"mode":"saturate","secs":5,"target_rate":0,"clients":4,"acceptors":1,"echo":false,"connections":123456,"accepted":123456,"errors":2,"elapsed_s":5.0012,"rate":24684.9,"late_max_ms":0.000,"late_over_1ms":0,"first_error":"Cannot assign \"requested\" address"}"#;
        let load = parse_load(line).unwrap();
        assert_eq!(load.connections, 123456);
        assert_eq!(load.errors, 2);
        assert_eq!(load.rate, 24684.9);
        assert_eq!(load.elapsed_s, 5.0012);
        assert_eq!(
            load.first_error.as_deref(),
            Some(r#"Cannot assign \"requested\" address"#)
        );
        let none = line.replace(r#""Cannot assign \"requested\" address""#, "null");
        assert_eq!(parse_load(&none).unwrap().first_error, None);
    }

    #[test]
    fn http_responses() {
        let plain = "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
        assert_eq!(parse_http_response(plain), Some((200, "ok\n".into())));
        let chunked =
            "HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nstar\r\n3\r\nts\n\r\n0\r\n\r\n";
        assert_eq!(parse_http_response(chunked), Some((503, "starts\n".into())));
        assert_eq!(parse_http_response("garbage"), None);
    }

    #[test]
    fn sums_metric_samples() {
        let body = "# TYPE connmon_pool_opens counter\n\
            connmon_pool_opens_total{service=\"other\",comm=\"connload\",cgroup=\"/a b\"} 10\n\
            connmon_pool_opens_total{service=\"other\",comm=\"connload\",cgroup=\"/\"} 5 1700000000\n\
            connmon_pool_opens_total{service=\"other\",comm=\"curl\",cgroup=\"/\"} 7\n\
            connmon_pool_opens_total_extra{comm=\"connload\"} 100\n";
        assert_eq!(
            metric_sum(body, "connmon_pool_opens_total", "comm=\"connload\""),
            Some(15.0)
        );
        assert_eq!(
            metric_sum(body, "connmon_pool_opens_total", "comm=\"nobody\""),
            None
        );
    }

    #[test]
    fn statistics_and_formatting() {
        assert_eq!(summary(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(summary(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(summary(&[]), None);
        assert_eq!(thousands(1234567.8), "1,234,568");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1000.0), "-1,000");
    }

    #[test]
    fn agent_that_exits_at_start_is_an_error() {
        let log = std::env::temp_dir().join(format!("xtask-bench-test-{}.log", std::process::id()));
        let web = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
        let err = start_agent(Path::new("/bin/false"), web, log.clone())
            .err()
            .expect("must fail");
        let _ = std::fs::remove_file(&log);
        assert!(err.to_string().contains("exited unexpectedly"), "{err:#}");
    }

    #[test]
    fn proc_stat_of_self() {
        assert!(cpu_ticks(std::process::id()).is_some());
        assert!(status_kib(std::process::id(), "VmHWM").is_some_and(|k| k > 0));
        assert!(clk_tck() > 0.0);
    }
}
