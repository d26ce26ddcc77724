//! The connmon binary: the `run` agent as a child process (RAII), a tiny HTTP/1.0 client for its
//! endpoints, and the one-shot `connmon listeners` command.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{deadline, parse_metrics, poll_until, Sample, TempDir, POLL_INTERVAL};

/// The freshly built agent binary.
pub fn connmon_bin() -> &'static str {
    env!("CARGO_BIN_EXE_connmon")
}

/// Scan interval passed to every agent the tests start (unless a test passes its own), so that
/// listeners made after the agent started show up quickly.
pub const TEST_SCAN_INTERVAL: &str = "1s";

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
pub fn free_local_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
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
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn decode_chunked(mut body: &[u8]) -> io::Result<Vec<u8>> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut out = Vec::new();
    loop {
        let nl = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("chunk size line"))?;
        let size_str = std::str::from_utf8(&body[..nl]).map_err(|_| bad("chunk size utf8"))?;
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("chunk size hex"))?;
        body = &body[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err(bad("truncated chunk"));
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// `GET path HTTP/1.0` to `addr` with extra request `headers`; reads until the server closes.
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;

    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            bad(format!(
                "no end of headers in {:?}",
                String::from_utf8_lossy(&raw)
            ))
        })?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = decode_chunked(&body)?;
    }
    let body = String::from_utf8(body).map_err(|e| bad(format!("body is not UTF-8: {e}")))?;
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
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
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
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
    row[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not an unsigned integer in {row}"))
}

/// `row[key]` as f64; panics naming the key and row.
pub fn json_f64(row: &Value, key: &str) -> f64 {
    row[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {row}"))
}

/// `row[key]` as str; panics naming the key and row.
pub fn json_str<'a>(row: &'a Value, key: &str) -> &'a str {
    row[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {row}"))
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
        Agent::start_custom(args, |argv| {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }, ready)
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
                    eprintln!(
                        "agent could not bind its port (attempt {attempt}), retrying:\n{stderr}"
                    );
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
        let mut argv: Vec<String> = vec![
            connmon_bin().to_string(),
            "run".into(),
            "--web.listen-address".into(),
            addr.to_string(),
        ];
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
        let mut agent = Agent {
            child,
            addr,
            stderr_path,
            _dir: dir,
        };

        let exited = poll_until(
            deadline(60),
            &format!("agent {argv:?} to answer 200 on /readyz"),
            || {
                if let Some(st) = agent.exited() {
                    return Ok(Some(format!(
                        "agent {argv:?} exited with {st}; stderr:\n{}",
                        agent.stderr()
                    )));
                }
                ready(agent.addr).map(|()| None)
            },
        );
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
        http_get(self.addr, path, headers)
            .unwrap_or_else(|e| panic!("GET {path} from agent at {}: {e}", self.addr))
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
