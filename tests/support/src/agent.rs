//! The connmon binary: the `run` agent as a child process (RAII), the harness's HTTP client for its
//! endpoints (and Prometheus's and Alertmanager's: ureq), and the one-shot `connmon listeners` command.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{deadline, parse_metrics, poll_until, Sample, TempDir, POLL_INTERVAL};

/// The freshly built agent binary. Cargo names it to an integration test at build time
/// (`CARGO_BIN_EXE_connmon`), which a library cannot see; recent cargo also sets it in the test's
/// environment, and otherwise it lies where cargo put it: next to the `deps/` folder that holds the
/// running test binary.
pub fn connmon_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("CARGO_BIN_EXE_connmon") {
            return bin.to_string_lossy().into_owned();
        }
        let exe = std::env::current_exe().expect("the test binary's path (current_exe)");
        let dir = exe.parent().expect("the test binary's folder");
        let dir = if dir.ends_with("deps") { dir.parent().unwrap_or(dir) } else { dir };
        let bin = dir.join("connmon");
        assert!(
            bin.is_file(),
            "no agent binary at {}: run the tests with `cargo test -p connmon`, which builds it",
            bin.display()
        );
        bin.to_string_lossy().into_owned()
    })
}

/// Scan interval passed to every agent the tests start (unless a test passes its own), so that
/// listeners made after the agent started show up quickly.
pub const TEST_SCAN_INTERVAL: &str = "1s";

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
pub fn free_local_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0 to find a free port").port()
}

// ---------------------------------------------------------------------------------------------
// HTTP

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// `GET path` to `addr` with extra request `headers`, over a fresh connection that is closed
/// afterwards (no keep-alive, so every scrape is one connection as Prometheus makes them). Any
/// status is an answer; only transport and protocol failures are errors.
pub fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> io::Result<HttpResponse> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections(0)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_send_request(Some(Duration::from_secs(5)))
        .timeout_recv_response(Some(Duration::from_secs(20)))
        .timeout_recv_body(Some(Duration::from_secs(20)))
        .build()
        .into();
    let mut req = agent.get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.call().map_err(ureq::Error::into_io)?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    // /metrics of a busy host is large; the default 10 MB cap is not what is being tested.
    let body = resp.body_mut().with_config().limit(u64::MAX).read_to_string().map_err(ureq::Error::into_io)?;
    Ok(HttpResponse { status, headers, body })
}

// ---------------------------------------------------------------------------------------------
// Running the binary

/// Runs `cmd` with stdout/stderr captured, killing it and panicking if it takes longer than
/// `timeout`. Returns the output whatever the exit status.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let dir = TempDir::new("cmout");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create stdout file"))
        .stderr(File::create(&err_path).expect("create stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).expect("read stdout file"),
        stderr: std::fs::read(&err_path).expect("read stderr file"),
    }
}

/// `connmon <args>` (60 s limit); output whatever the exit status.
pub fn connmon(args: &[&str]) -> Output {
    let mut cmd = Command::new(connmon_bin());
    cmd.args(args);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    run_with_timeout(&mut cmd, Duration::from_secs(60))
}

/// `connmon <args>`; panics (quoting stderr) unless it exits 0; returns stdout.
pub fn connmon_ok(args: &[&str]) -> String {
    let out = connmon(args);
    assert!(
        out.status.success(),
        "connmon {args:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("connmon printed non-UTF-8")
}

/// Parses JSON Lines: every non-empty line must be one JSON object.
pub fn parse_json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
            assert!(v.is_object(), "JSON line is not an object: {l}");
            v
        })
        .collect()
}

/// `connmon listeners --json <args>`, parsed.
pub fn connmon_listeners_json(args: &[&str]) -> Vec<Value> {
    let mut full = vec!["listeners", "--json"];
    full.extend_from_slice(args);
    parse_json_lines(&connmon_ok(&full))
}

/// The one row of `rows` for netns `netns`, `addr`, `port`; panics (listing rows) if not exactly one.
pub fn find_row<'a>(rows: &'a [Value], netns: u64, addr: &str, port: u16) -> &'a Value {
    let hits: Vec<&Value> = rows
        .iter()
        .filter(|r| {
            r["netns"].as_u64() == Some(netns)
                && r["addr"].as_str() == Some(addr)
                && r["port"].as_u64() == Some(port.into())
        })
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "expected one listener row for netns {netns} {addr}:{port}, got {}; rows: {rows:#?}",
        hits.len()
    );
    hits[0]
}

/// `row[key]` as u64; panics naming the key and row.
pub fn json_u64(row: &Value, key: &str) -> u64 {
    row[key].as_u64().unwrap_or_else(|| panic!("{key} is not an unsigned integer in {row}"))
}

/// `row[key]` as f64; panics naming the key and row.
pub fn json_f64(row: &Value, key: &str) -> f64 {
    row[key].as_f64().unwrap_or_else(|| panic!("{key} is not a number in {row}"))
}

/// `row[key]` as str; panics naming the key and row.
pub fn json_str<'a>(row: &'a Value, key: &str) -> &'a str {
    row[key].as_str().unwrap_or_else(|| panic!("{key} is not a string in {row}"))
}

// ---------------------------------------------------------------------------------------------
// The agent

/// The default readiness check: GET /readyz over plain HTTP answers 200.
fn plain_readyz(addr: SocketAddr) -> Result<(), String> {
    match http_get(addr, "/readyz", &[]) {
        Ok(r) if r.status == 200 => Ok(()),
        Ok(r) => Err(format!("/readyz answered {}: {:?}", r.status, r.body)),
        Err(e) => Err(format!("GET /readyz: {e}")),
    }
}

/// `connmon run` on 127.0.0.1:<free port>. Dropping it kills the process; if the test is
/// panicking, the agent's stderr is printed.
pub struct Agent {
    child: Child,
    addr: SocketAddr,
    stderr_path: PathBuf,
    _dir: TempDir,
}

impl Agent {
    /// Starts `connmon run --web.listen-address 127.0.0.1:PORT --scan.interval 1s <args>` and waits
    /// (60 s) until GET /readyz answers 200.
    pub fn start(args: &[&str]) -> Agent {
        Agent::start_wrapped(args, |argv| {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        })
    }

    /// Like [`Agent::start`], but `wrap` turns the agent's argv into the command to spawn
    /// (e.g. under `capsh`). The wrapper must `exec` the agent so that killing the child kills it
    /// (and so that [`Agent::pid`] is the agent's pid).
    pub fn start_wrapped(args: &[&str], wrap: impl Fn(&[String]) -> Command) -> Agent {
        Agent::start_custom(args, wrap, plain_readyz)
    }

    /// Like [`Agent::start`], but readiness is `ready(addr)` returning `Ok` (e.g. /readyz over
    /// HTTPS with credentials, for an agent started with `--web.config.file`).
    pub fn start_with_ready(args: &[&str], ready: impl Fn(SocketAddr) -> Result<(), String>) -> Agent {
        Agent::start_custom(
            args,
            |argv| {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            },
            ready,
        )
    }

    fn start_custom(
        args: &[&str],
        wrap: impl Fn(&[String]) -> Command,
        ready: impl Fn(SocketAddr) -> Result<(), String>,
    ) -> Agent {
        // The port was free a moment ago; should another process take it meanwhile, try another.
        for attempt in 1.. {
            match Agent::try_start(args, &wrap, &ready) {
                Ok(agent) => return agent,
                Err(stderr) if attempt < 3 && stderr.contains("in use") => {
                    eprintln!("agent could not bind its port (attempt {attempt}), retrying:\n{stderr}");
                }
                Err(stderr) => panic!("agent exited before it was ready; stderr:\n{stderr}"),
            }
        }
        unreachable!()
    }

    /// Starts the agent and waits for /readyz; `Err(stderr)` if it exits first.
    fn try_start(
        args: &[&str],
        wrap: &impl Fn(&[String]) -> Command,
        ready: &impl Fn(SocketAddr) -> Result<(), String>,
    ) -> Result<Agent, String> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_local_port()).parse().unwrap();
        let mut argv: Vec<String> =
            vec![connmon_bin().to_string(), "run".into(), "--web.listen-address".into(), addr.to_string()];
        if !args.iter().any(|a| a.starts_with("--scan.interval")) {
            argv.push("--scan.interval".into());
            argv.push(TEST_SCAN_INTERVAL.into());
        }
        argv.extend(args.iter().map(|s| s.to_string()));

        let dir = TempDir::new("cmagent");
        let stderr_path = dir.path().join("stderr");
        let mut cmd = wrap(&argv);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("stdout")).expect("create agent stdout file"))
            .stderr(File::create(&stderr_path).expect("create agent stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start agent {cmd:?}: {e}"));
        let mut agent = Agent { child, addr, stderr_path, _dir: dir };

        let exited = poll_until(deadline(60), &format!("agent {argv:?} to answer 200 on /readyz"), || {
            if let Some(st) = agent.exited() {
                return Ok(Some(format!("agent {argv:?} exited with {st}; stderr:\n{}", agent.stderr())));
            }
            ready(agent.addr).map(|()| None)
        });
        match exited {
            None => Ok(agent),
            Some(msg) => Err(msg),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the agent has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait on agent")
    }

    /// Everything the agent has written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// GET `path` with extra request headers; panics on transport errors.
    pub fn request(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        http_get(self.addr, path, headers).unwrap_or_else(|e| panic!("GET {path} from agent at {}: {e}", self.addr))
    }

    /// GET `path` -> (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let r = self.request(path, &[]);
        (r.status, r.body)
    }

    /// GET /metrics; panics unless 200.
    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "GET /metrics answered {status}: {body}");
        body
    }

    /// GET /metrics, parsed.
    pub fn samples(&self) -> Vec<Sample> {
        parse_metrics(&self.metrics())
    }

    /// Scrapes /metrics until `f` accepts the samples (Ok), or panics at `deadline` with `what`
    /// and `f`'s last explanation.
    pub fn wait_metrics<T>(
        &self,
        deadline: Instant,
        what: &str,
        mut f: impl FnMut(&[Sample]) -> Result<T, String>,
    ) -> T {
        poll_until(deadline, what, || f(&self.samples()))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = self.stderr();
            let tail: Vec<&str> = text.lines().rev().take(200).collect();
            eprintln!("---- agent stderr (last {} lines) ----", tail.len());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            eprintln!("---- end of agent stderr ----");
        }
    }
}
