//! Client workloads as separate processes, so that connmon attributes their connections to a
//! process name and a cgroup of their own.
//!
//! The client is this very test binary, re-executed with `--exact client_entry` and a JSON spec in
//! the environment variable [`CLIENT_ENV`]; every test binary that spawns clients defines
//! `#[test] fn client_entry() { common::client_main() }`, which does nothing unless the variable is
//! set. Before its first connect the client moves itself into a fresh cgroup the test made
//! ([`TestCgroup`]), renames itself (prctl(PR_SET_NAME) and /proc/self/comm, so the thread-group
//! leader carries the name), and optionally enters a test network namespace; then it runs one
//! [`Mode`] speaking the real protocol ([`Proto`]).
//!
//! Protocol on the pipes: the client writes lines `@@client WORD ...` to stdout (libtest's own
//! output is ignored) and reads commands from stdin: `close K` (close K of the held connections;
//! answers `closed K LEFT`), `exit`; end of input also ends it.
//! - hold: opens `count` connections, then says `ready N` and holds them.
//! - churn: `count` sequential connect / one request / close cycles (stops early after `max_secs`),
//!   then says `done N` with the number of cycles completed.
//! - refused: `count` blocking connects that must fail with ECONNREFUSED; `done N`.
//! - timeout: `count` blocking connects at once (one thread each) that must fail with ETIMEDOUT;
//!   `done N`.
//! - abort: `count` non-blocking connects, closed by the client `abort_after_ms` later while still
//!   in SYN-SENT; `done N`.

use std::collections::VecDeque;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{connect_nonblocking, tcp_state, unique_id, unique_name, Netns, TempDir, TCP_SYN_SENT};

/// Environment variable carrying a client's JSON spec.
pub const CLIENT_ENV: &str = "CONNMON_TEST_CLIENT";
/// Prefix of the client's protocol lines on stdout.
const LINE_PREFIX: &str = "@@client ";

// ---------------------------------------------------------------------------------------------
// cgroups

/// Where the cgroup2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a
/// hybrid host), from /proc/self/mounts.
pub fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && f[2] == "cgroup2").then(|| PathBuf::from(f[1].replace("\\040", " ")))
        })
        .unwrap_or_else(|| panic!("no cgroup2 filesystem mounted; /proc/self/mounts:\n{mounts}"))
}

/// A fresh cgroup `connmon-t-<pid>-<n>` directly under the cgroup2 root; removed on drop (once the
/// processes in it have exited; the client owning it is killed first).
pub struct TestCgroup {
    dir: PathBuf,
    rel: String,
}

impl TestCgroup {
    pub fn new() -> TestCgroup {
        let name = format!("connmon-t-{}-{}", std::process::id(), unique_id());
        let dir = cgroup2_root().join(&name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TestCgroup {
            dir,
            rel: format!("/{name}"),
        }
    }

    /// The path relative to the cgroup2 root, as connmon labels it ("/connmon-t-123-4").
    pub fn rel(&self) -> &str {
        &self.rel
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Pids currently in the cgroup.
    pub fn procs(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // A reaped process may take a moment to leave the cgroup: rmdir says EBUSY until then.
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= end => {
                    eprintln!(
                        "warning: cannot remove cgroup {}: {e} (procs: {:?})",
                        self.dir.display(),
                        self.procs()
                    );
                    return;
                }
                Err(_) => std::thread::sleep(super::POLL_INTERVAL),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Specs

/// What the client says after connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// `CLIENT SETNAME <name>` (+OK) then `PING` (+PONG); churn cycles send only PING.
    Redis,
    /// StartupMessage v3 (user=postgres database=postgres application_name=<name>), read up to
    /// ReadyForQuery.
    Postgres,
    /// Nothing: a bare TCP connection.
    Silent,
}

impl Proto {
    fn as_str(self) -> &'static str {
        match self {
            Proto::Redis => "redis",
            Proto::Postgres => "postgres",
            Proto::Silent => "silent",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Hold { count: usize },
    Churn { count: usize, max_secs: f64 },
    Refused { count: usize },
    Timeout { count: usize },
    Abort { count: usize, after_ms: u64 },
}

/// A client process to spawn: its name prefix (a unique suffix is added), target and behaviour.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub prefix: String,
    pub target: SocketAddr,
    pub proto: Proto,
    pub mode: Mode,
    /// `ip netns` name to enter before connecting (None: the host's namespace).
    pub netns: Option<String>,
}

impl ClientSpec {
    pub fn new(prefix: &str, target: SocketAddr, proto: Proto, mode: Mode) -> ClientSpec {
        ClientSpec {
            prefix: prefix.to_string(),
            target,
            proto,
            mode,
            netns: None,
        }
    }

    pub fn in_netns(mut self, ns: &Netns) -> ClientSpec {
        self.netns = Some(ns.name().to_string());
        self
    }
}

// ---------------------------------------------------------------------------------------------
// The parent's handle

/// A running client process (RAII: dropping it closes stdin, kills and reaps the process, then
/// removes its cgroup). If the test is panicking, the client's stderr is printed.
pub struct ClientProc {
    /// The process name (comm) the client gave itself; also its Redis client name and PostgreSQL
    /// application_name.
    pub name: String,
    pub target: SocketAddr,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Protocol lines that arrived while waiting for another word.
    pending: VecDeque<String>,
    stderr_path: PathBuf,
    _dir: TempDir,
    // Declared last: dropped after the process is gone.
    cgroup: TestCgroup,
}

impl ClientProc {
    /// Spawns the client; for hold mode waits (30 s) for its `ready` line and checks that it holds
    /// `count` connections.
    pub fn spawn(spec: ClientSpec) -> ClientProc {
        let name = unique_name(&spec.prefix);
        assert!(
            name.len() <= 15,
            "client name {name:?} is longer than a comm (15 bytes)"
        );
        let cgroup = TestCgroup::new();
        let (mode, count, max_secs, after_ms) = match spec.mode {
            Mode::Hold { count } => ("hold", count, 0.0, 0),
            Mode::Churn { count, max_secs } => ("churn", count, max_secs, 0),
            Mode::Refused { count } => ("refused", count, 0.0, 0),
            Mode::Timeout { count } => ("timeout", count, 0.0, 0),
            Mode::Abort { count, after_ms } => ("abort", count, 0.0, after_ms),
        };
        let json = json!({
            "name": name,
            "cgroup_procs": cgroup.dir().join("cgroup.procs"),
            "netns": spec.netns.as_ref().map(|n| format!("/run/netns/{n}")),
            "target": spec.target.to_string(),
            "proto": spec.proto.as_str(),
            "mode": mode,
            "count": count,
            "max_secs": max_secs,
            "after_ms": after_ms,
        });
        let dir = TempDir::new("cmclient");
        let stderr_path = dir.path().join("stderr");
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(&exe);
        cmd.args([
            "--exact",
            "client_entry",
            "--nocapture",
            "--test-threads",
            "1",
            "-q",
        ])
        .env(CLIENT_ENV, json.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr_path).expect("create client stderr file"));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start client {}: {e}", exe.display()));
        let stdout = child.stdout.take().expect("client stdout");
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix(LINE_PREFIX) {
                    if tx.send(rest.to_string()).is_err() {
                        break;
                    }
                }
            }
        });
        let mut c = ClientProc {
            name,
            target: spec.target,
            child,
            stdin,
            lines: rx,
            pending: VecDeque::new(),
            stderr_path,
            _dir: dir,
            cgroup,
        };
        if let Mode::Hold { count } = spec.mode {
            let n: usize = c
                .expect("ready", Duration::from_secs(60))
                .parse()
                .expect("ready N");
            assert_eq!(
                n, count,
                "client {} holds {n} connections, asked for {count}",
                c.name
            );
        }
        c
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The cgroup label connmon should give this client's connections.
    pub fn cgroup(&self) -> &str {
        self.cgroup.rel()
    }

    /// Everything the client wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits for the next line starting with `word` and returns the rest of it; panics (quoting
    /// the client's stderr) if the client exits first or `within` passes.
    pub fn expect(&mut self, word: &str, within: Duration) -> String {
        self.try_expect(word, within).unwrap_or_else(|| {
            panic!(
                "client {} did not say {word:?} within {within:?}; stderr:\n{}",
                self.name,
                self.stderr()
            )
        })
    }

    /// Like [`ClientProc::expect`], but `None` when `within` passes first (the client exiting
    /// first, or reporting an error, still panics).
    pub fn try_expect(&mut self, word: &str, within: Duration) -> Option<String> {
        let matches = |l: &str| l == word || l.starts_with(&format!("{word} "));
        if let Some(i) = self.pending.iter().position(|l| matches(l)) {
            let l = self.pending.remove(i).unwrap();
            return Some(l[word.len()..].trim().to_string());
        }
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if matches(&l) => return Some(l[word.len()..].trim().to_string()),
                Ok(l) => self.pending.push_back(l),
                Err(mpsc::RecvTimeoutError::Timeout) => return None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = self.child.wait().ok();
                    panic!(
                        "client {} exited ({st:?}) before saying {word:?}; stderr:\n{}",
                        self.name,
                        self.stderr()
                    )
                }
            }
        }
    }

    /// Sends one command line to the client.
    pub fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("client stdin already closed");
        writeln!(stdin, "{cmd}")
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| {
                panic!(
                    "write {cmd:?} to client {}: {e}\n{}",
                    self.name,
                    self.stderr()
                )
            });
    }

    /// Makes a holding client close `k` connections (close(2) returned for each); returns how many
    /// it still holds.
    pub fn close(&mut self, k: usize) -> usize {
        self.send(&format!("close {k}"));
        let rest = self.expect("closed", Duration::from_secs(30));
        let f: Vec<usize> = rest
            .split_whitespace()
            .map(|t| t.parse().expect("closed K LEFT"))
            .collect();
        assert_eq!(
            f.first(),
            Some(&k),
            "client {} closed {rest:?}, asked for {k}",
            self.name
        );
        f[1]
    }

    /// For the one-shot modes: waits (within `within`) for `done N`, then for the process to exit
    /// with success; returns N.
    pub fn finish(&mut self, within: Duration) -> usize {
        let n = self.expect("done", within).parse().expect("done N");
        self.wait_exit(Duration::from_secs(30));
        n
    }

    /// Closes the client's stdin (a holding client then closes everything and exits) and waits for
    /// it to exit successfully.
    pub fn exit(&mut self) {
        self.stdin = None;
        self.wait_exit(Duration::from_secs(30));
    }

    fn wait_exit(&mut self, within: Duration) {
        let end = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait on client") {
                assert!(
                    st.success(),
                    "client {} exited with {st}; stderr:\n{}",
                    self.name,
                    self.stderr()
                );
                return;
            }
            if Instant::now() >= end {
                panic!(
                    "client {} did not exit within {within:?}; stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            std::thread::sleep(super::POLL_INTERVAL);
        }
    }
}

impl Drop for ClientProc {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- client {} stderr ----\n{}---- end ----",
                self.name,
                self.stderr()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The client process

fn say(line: &str) {
    let mut out = io::stdout().lock();
    writeln!(out, "{LINE_PREFIX}{line}")
        .and_then(|_| out.flush())
        .expect("write to stdout");
}

/// The body of `#[test] fn client_entry()`: runs the client described by [`CLIENT_ENV`] and exits
/// the process; returns at once when the variable is not set (a normal test run).
pub fn client_main() {
    let Ok(text) = std::env::var(CLIENT_ENV) else {
        return;
    };
    let spec: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad {CLIENT_ENV} ({e}): {text}"));
    let s = |k: &str| {
        spec[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k} missing in {spec}"))
            .to_string()
    };
    let u = |k: &str| {
        spec[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} missing in {spec}"))
    };
    let name = s("name");

    // 1. Own cgroup (moves every thread of the process).
    let procs = s("cgroup_procs");
    std::fs::write(&procs, std::process::id().to_string())
        .unwrap_or_else(|e| panic!("write {procs}: {e}"));
    // 2. Own name: this thread's, and the thread-group leader's (what /proc/<pid>/comm shows and
    //    what connmon labels connections with), since libtest may run us on a non-main thread.
    let cname = CString::new(name.clone()).expect("name without NUL");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    let rc = unsafe { libc::prctl(libc::PR_SET_NAME, cname.as_ptr() as libc::c_ulong, 0, 0, 0) };
    assert_eq!(rc, 0, "prctl(PR_SET_NAME): {}", io::Error::last_os_error());
    std::fs::write("/proc/self/comm", &name).expect("write /proc/self/comm");
    let comm = std::fs::read_to_string("/proc/self/comm").expect("read /proc/self/comm");
    assert_eq!(comm.trim_end(), name, "comm did not take");
    // 3. Network namespace (this thread, and threads it spawns, create sockets there).
    if let Some(path) = spec["netns"].as_str() {
        let f = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: plain syscall on a valid fd.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({path}): {}", io::Error::last_os_error());
    }

    let target: SocketAddr = s("target").parse().expect("target address");
    let proto = match s("proto").as_str() {
        "redis" => Proto::Redis,
        "postgres" => Proto::Postgres,
        "silent" => Proto::Silent,
        p => panic!("unknown proto {p}"),
    };
    let count = u("count") as usize;
    match s("mode").as_str() {
        "hold" => hold(target, proto, &name, count),
        "churn" => {
            let max = Duration::from_secs_f64(spec["max_secs"].as_f64().unwrap_or(0.0));
            churn(target, proto, count, max)
        }
        "refused" => refused(target, count),
        "timeout" => timeout(target, count),
        "abort" => abort(target, count, Duration::from_millis(u("after_ms"))),
        m => panic!("unknown mode {m}"),
    }
    std::process::exit(0);
}

fn open(target: SocketAddr, proto: Proto, name: &str) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect {target}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("SO_RCVTIMEO");
    match proto {
        Proto::Redis => {
            s.write_all(&resp_command(&["CLIENT", "SETNAME", name]))
                .expect("send CLIENT SETNAME");
            expect_reply(&mut s, "+OK");
            redis_ping(&mut s);
        }
        Proto::Postgres => pg_startup(&mut s, name),
        Proto::Silent => {}
    }
    s
}

fn hold(target: SocketAddr, proto: Proto, name: &str, count: usize) {
    let mut conns: Vec<TcpStream> = (0..count).map(|_| open(target, proto, name)).collect();
    say(&format!("ready {}", conns.len()));
    let stdin = io::stdin();
    for line in stdin.lock().lines() {
        let line = line.expect("read stdin");
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["close", k] => {
                let k: usize = k.parse().expect("close K");
                assert!(k <= conns.len(), "asked to close {k} of {}", conns.len());
                for c in conns.drain(..k) {
                    if proto == Proto::Postgres {
                        // Terminate, as a well-behaved client says goodbye.
                        let _ = (&c).write_all(&[b'X', 0, 0, 0, 4]);
                    }
                    drop(c);
                }
                say(&format!("closed {k} {}", conns.len()));
            }
            ["exit"] => break,
            _ => panic!("unknown command {line:?}"),
        }
    }
}

fn churn(target: SocketAddr, proto: Proto, count: usize, max: Duration) {
    let start = Instant::now();
    let mut done = 0;
    while done < count && (max.is_zero() || start.elapsed() < max) {
        let mut s = TcpStream::connect(target)
            .unwrap_or_else(|e| panic!("connect {target} (cycle {done}): {e}"));
        if proto == Proto::Redis {
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("SO_RCVTIMEO");
            redis_ping(&mut s);
        } else if proto == Proto::Postgres {
            pg_startup(&mut s, "churn");
        }
        drop(s);
        done += 1;
    }
    say(&format!("done {done}"));
}

fn refused(target: SocketAddr, count: usize) {
    for i in 0..count {
        match TcpStream::connect(target) {
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
            other => panic!("connect {target} #{i}: expected ECONNREFUSED, got {other:?}"),
        }
    }
    say(&format!("done {count}"));
}

fn timeout(target: SocketAddr, count: usize) {
    // Threads inherit this thread's network namespace.
    let handles: Vec<_> = (0..count)
        .map(|i| {
            std::thread::spawn(move || match TcpStream::connect(target) {
                Err(e) if e.raw_os_error() == Some(libc::ETIMEDOUT) => {}
                other => panic!("connect {target} #{i}: expected ETIMEDOUT, got {other:?}"),
            })
        })
        .collect();
    for h in handles {
        h.join().expect("timeout thread panicked");
    }
    say(&format!("done {count}"));
}

fn abort(target: SocketAddr, count: usize, after: Duration) {
    let socks: Vec<OwnedFd> = (0..count).map(|_| connect_nonblocking(target)).collect();
    // The scenario itself: the application gives up after `after`.
    std::thread::sleep(after);
    for (i, s) in socks.iter().enumerate() {
        assert_eq!(
            tcp_state(s),
            TCP_SYN_SENT,
            "socket #{i} to {target} left SYN-SENT before the abort"
        );
    }
    drop(socks);
    say(&format!("done {count}"));
}

// ---------------------------------------------------------------------------------------------
// Wire protocols (just enough of them)

/// A RESP array of bulk strings.
pub fn resp_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Reads one CRLF-terminated line (without the CRLF).
pub fn read_line(s: &mut impl Read) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(b"\r\n") {
        match s.read(&mut b) {
            Ok(0) => panic!(
                "connection closed after {:?}",
                String::from_utf8_lossy(&out)
            ),
            Ok(_) => out.push(b[0]),
            Err(e) => panic!("read after {:?}: {e}", String::from_utf8_lossy(&out)),
        }
    }
    out.truncate(out.len() - 2);
    String::from_utf8_lossy(&out).into_owned()
}

fn expect_reply(s: &mut TcpStream, want: &str) {
    let got = read_line(s);
    assert_eq!(got, want, "unexpected reply from {:?}", s.peer_addr());
}

pub fn redis_ping(s: &mut TcpStream) {
    s.write_all(&resp_command(&["PING"])).expect("send PING");
    expect_reply(s, "+PONG");
}

/// PostgreSQL StartupMessage (protocol 3.0); reads messages up to ReadyForQuery. Trust auth only.
pub fn pg_startup(s: &mut TcpStream, application_name: &str) {
    let mut body = 196608u32.to_be_bytes().to_vec();
    for (k, v) in [
        ("user", "postgres"),
        ("database", "postgres"),
        ("application_name", application_name),
    ] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    s.write_all(&msg).expect("send StartupMessage");
    loop {
        let mut hdr = [0u8; 5];
        s.read_exact(&mut hdr)
            .expect("read PostgreSQL message header");
        let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
        let mut payload = vec![0u8; len.saturating_sub(4)];
        s.read_exact(&mut payload).expect("read PostgreSQL message");
        match hdr[0] {
            b'R' => {
                let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                assert_eq!(
                    code, 0,
                    "server asked for authentication method {code}; tests need trust"
                );
            }
            b'E' => panic!("PostgreSQL error: {}", String::from_utf8_lossy(&payload)),
            b'Z' => return,
            _ => {} // ParameterStatus, BackendKeyData, NoticeResponse
        }
    }
}
