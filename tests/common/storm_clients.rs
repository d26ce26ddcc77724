//! Client programs for the retry-storm tests (tests/storms.rs): reconnect loops with and without
//! backoff, as separate processes so that connmon sees them as pools of their own.
//!
//! Like [`super::client`], a storm client is this test binary re-executed (`--exact
//! storm_client_entry`) with a JSON spec in [`STORM_CLIENT_ENV`]; the test binary defines
//! `#[test] fn storm_client_entry() { common::storm_client_main() }`, which does nothing unless the
//! variable is set. Before its first connect the client moves into a fresh cgroup ([`TestCgroup`]),
//! renames itself (prctl(PR_SET_NAME) and /proc/self/comm) and optionally enters a test network
//! namespace; its threads inherit all three.
//!
//! Protocol: the client writes `@@storm started UNIX_MS` to stdout just before its first connect, and
//! `@@storm done {json}` ([`StormReport`]) when it stops: on end of stdin (the parent's
//! [`StormClient::stop`]) for the endless modes, by itself for [`StormMode::Backoff`].

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{resp_command, to_sockaddr, unique_name, Netns, PoolRef, TempDir, TestCgroup};

/// Environment variable carrying a storm client's JSON spec.
pub const STORM_CLIENT_ENV: &str = "CONNMON_TEST_STORM_CLIENT";
/// Prefix of the storm client's protocol lines on stdout.
const LINE_PREFIX: &str = "@@storm ";

/// What a storm client does, over and over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StormMode {
    /// One loop: blocking connect, close, sleep `pause_ms`, again: retries with no backoff at all.
    TightLoop { pause_ms: u64 },
    /// "Full jitter" exponential backoff: after the k-th failed attempt (k from 0) sleep
    /// uniform(0, min(cap, base·2^k)); `attempts` connects in all, then the client says done by
    /// itself. The uniform draws come from SplitMix64 seeded with `seed` (see [`backoff_sleeps`]).
    Backoff {
        base_ms: u64,
        cap_ms: u64,
        attempts: u32,
        seed: u64,
    },
    /// `threads` loops: non-blocking connect, wait up to `timeout_ms` for it (poll), close, and
    /// connect again at once.
    ConnectTimeout { threads: usize, timeout_ms: u64 },
    /// `threads` loops: connect, send PING, read one reply line, close, and connect again at once.
    RedisReconnect { threads: usize },
}

/// What a storm client reports when it stops.
#[derive(Debug, Clone, Default)]
pub struct StormReport {
    /// connect() calls made.
    pub attempts: u64,
    /// How attempts ended: "refused", "connected", "timeout" (still connecting when the client gave
    /// up), a Redis reply line ("+PONG", "-ERR max number of clients reached"), or an error.
    pub outcomes: BTreeMap<String, u64>,
    /// CLOCK_MONOTONIC time (ns) at which each attempt started (TightLoop and Backoff modes).
    pub times_ns: Vec<u64>,
    /// Seconds from the first attempt to the stop.
    pub elapsed_s: f64,
}

impl StormReport {
    pub fn outcome(&self, what: &str) -> u64 {
        self.outcomes.get(what).copied().unwrap_or(0)
    }

    fn from_json(v: &Value) -> StormReport {
        StormReport {
            attempts: v["attempts"]
                .as_u64()
                .unwrap_or_else(|| panic!("attempts missing in {v}")),
            outcomes: v["outcomes"]
                .as_object()
                .unwrap_or_else(|| panic!("outcomes missing in {v}"))
                .iter()
                .map(|(k, n)| (k.clone(), n.as_u64().expect("outcome count")))
                .collect(),
            times_ns: v["times_ns"]
                .as_array()
                .map(|a| a.iter().map(|t| t.as_u64().expect("time")).collect())
                .unwrap_or_default(),
            elapsed_s: v["elapsed_s"].as_f64().unwrap_or(0.0),
        }
    }
}

/// SplitMix64: a tiny, well-mixed PRNG, so that a seed fixes the whole backoff schedule.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The sleeps of a full-jitter backoff: the one after failure k is uniform(0, min(cap, base·2^k)).
/// `attempts - 1` sleeps (none after the last attempt).
pub fn backoff_sleeps(base: Duration, cap: Duration, attempts: u32, seed: u64) -> Vec<Duration> {
    let mut rng = SplitMix64(seed);
    (0..attempts.saturating_sub(1))
        .map(|k| {
            let ceiling = cap.min(base.saturating_mul(1u32.checked_shl(k).unwrap_or(u32::MAX)));
            ceiling.mul_f64(rng.unit())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The parent's handle

/// A running storm client (RAII: dropping it closes stdin, kills and reaps the process, then
/// removes its cgroup). If the test is panicking, the client's stderr is printed.
pub struct StormClient {
    /// The process name (comm) the client gave itself.
    pub name: String,
    pub target: SocketAddr,
    /// When the parent heard `started` (the client's first connect follows at once).
    pub started: Instant,
    /// The wall-clock time the client said `started` (to compare with the agent's log timestamps).
    pub started_wall: SystemTime,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr_path: PathBuf,
    _dir: TempDir,
    // Declared last: dropped after the process is gone.
    cgroup: TestCgroup,
}

impl StormClient {
    /// Spawns the client (in `netns` if given) and waits (60 s) until it says it is about to connect.
    pub fn spawn(
        prefix: &str,
        target: SocketAddr,
        mode: StormMode,
        netns: Option<&Netns>,
    ) -> StormClient {
        let name = unique_name(prefix);
        assert!(
            name.len() <= 15,
            "client name {name:?} is longer than a comm (15 bytes)"
        );
        let cgroup = TestCgroup::new();
        let mode_json = match mode {
            StormMode::TightLoop { pause_ms } => json!({"kind": "tight", "pause_ms": pause_ms}),
            StormMode::Backoff {
                base_ms,
                cap_ms,
                attempts,
                seed,
            } => {
                json!({"kind": "backoff", "base_ms": base_ms, "cap_ms": cap_ms, "attempts": attempts, "seed": seed})
            }
            StormMode::ConnectTimeout {
                threads,
                timeout_ms,
            } => {
                json!({"kind": "connect_timeout", "threads": threads, "timeout_ms": timeout_ms})
            }
            StormMode::RedisReconnect { threads } => {
                json!({"kind": "redis_reconnect", "threads": threads})
            }
        };
        let spec = json!({
            "name": name,
            "cgroup_procs": cgroup.dir().join("cgroup.procs"),
            "netns": netns.map(|n| n.path()),
            "target": target.to_string(),
            "mode": mode_json,
        });
        let dir = TempDir::new("cmstorm");
        let stderr_path = dir.path().join("stderr");
        let exe = std::env::current_exe().expect("current_exe");
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "storm_client_entry",
                "--nocapture",
                "--test-threads",
                "1",
                "-q",
            ])
            .env(STORM_CLIENT_ENV, spec.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr_path).expect("create storm client stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start storm client {}: {e}", exe.display()));
        let stdout = child.stdout.take().expect("storm client stdout");
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
        let mut c = StormClient {
            name,
            target,
            started: Instant::now(),
            started_wall: SystemTime::now(),
            child,
            stdin,
            lines: rx,
            stderr_path,
            _dir: dir,
            cgroup,
        };
        let rest = c
            .next_line(Duration::from_secs(60), "started")
            .unwrap_or_else(|| {
                panic!(
                    "storm client {} did not start within 60 s; stderr:\n{}",
                    c.name,
                    c.stderr()
                )
            });
        c.started = Instant::now();
        let ms: u64 = rest
            .strip_prefix("started ")
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("storm client {} said {rest:?} before starting", c.name));
        c.started_wall = UNIX_EPOCH + Duration::from_millis(ms);
        c
    }

    /// The cgroup label connmon should give this client's connections.
    pub fn cgroup(&self) -> &str {
        self.cgroup.rel()
    }

    /// The pool of this client's connections (its comm, cgroup and target).
    pub fn pool(&self) -> PoolRef {
        PoolRef {
            comm: self.name.clone(),
            cgroup: self.cgroup.rel().to_string(),
            dst_addr: self.target.ip().to_string(),
            dst_port: self.target.port().to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the client wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The next protocol line within `within` (None on timeout); panics if the client exits first.
    fn next_line(&mut self, within: Duration, waiting_for: &str) -> Option<String> {
        match self.lines.recv_timeout(within) {
            Ok(l) => Some(l),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let st = self.child.wait().ok();
                panic!(
                    "storm client {} exited ({st:?}) before saying {waiting_for:?}; stderr:\n{}",
                    self.name,
                    self.stderr()
                )
            }
        }
    }

    /// For a client that stops by itself (Backoff): its report if it says `done` within `within`,
    /// else None. Once done, the process is reaped (it must exit successfully).
    pub fn try_done(&mut self, within: Duration) -> Option<StormReport> {
        let line = self.next_line(within, "done")?;
        let json = line
            .strip_prefix("done ")
            .unwrap_or_else(|| panic!("storm client {} said {line:?}, expected done", self.name));
        let v: Value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("bad done line ({e}): {line}"));
        self.wait_exit(Duration::from_secs(30));
        Some(StormReport::from_json(&v))
    }

    /// Stops an endless client (closes its stdin) and returns its report.
    pub fn stop(&mut self) -> StormReport {
        self.stdin = None;
        self.try_done(Duration::from_secs(30)).unwrap_or_else(|| {
            panic!(
                "storm client {} did not stop within 30 s; stderr:\n{}",
                self.name,
                self.stderr()
            )
        })
    }

    fn wait_exit(&mut self, within: Duration) {
        let end = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait on storm client") {
                assert!(
                    st.success(),
                    "storm client {} exited with {st}; stderr:\n{}",
                    self.name,
                    self.stderr()
                );
                return;
            }
            assert!(
                Instant::now() < end,
                "storm client {} did not exit within {within:?}; stderr:\n{}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(super::POLL_INTERVAL);
        }
    }
}

impl Drop for StormClient {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- storm client {} stderr ----\n{}---- end ----",
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

/// CLOCK_MONOTONIC in ns (the clock of bpf_ktime_get_ns).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime: {}", io::Error::last_os_error());
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

type Outcomes = BTreeMap<String, u64>;

fn bump(o: &mut Outcomes, what: &str) {
    *o.entry(what.to_string()).or_default() += 1;
}

fn error_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::ETIMEDOUT) => "timedout".into(),
        Some(libc::ECONNRESET) => "reset".into(),
        Some(n) => format!("errno{n}"),
        None => format!("{:?}", e.kind()),
    }
}

/// The body of `#[test] fn storm_client_entry()`: runs the client described by
/// [`STORM_CLIENT_ENV`] and exits the process; returns at once when the variable is not set.
pub fn storm_client_main() {
    let Ok(text) = std::env::var(STORM_CLIENT_ENV) else {
        return;
    };
    let spec: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("bad {STORM_CLIENT_ENV} ({e}): {text}"));
    let s = |k: &str| {
        spec[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k} missing in {spec}"))
            .to_string()
    };
    let name = s("name");

    // 1. Own cgroup (moves every thread of the process).
    let procs = s("cgroup_procs");
    std::fs::write(&procs, std::process::id().to_string())
        .unwrap_or_else(|e| panic!("write {procs}: {e}"));
    // 2. Own name: this thread's (threads spawned below inherit it) and the thread-group leader's
    //    (what connmon labels connections with; libtest may run us on a non-main thread).
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
    let mode = &spec["mode"];
    // 4. A fixed-interval loop should be regular even on a busy host: real-time priority for the
    //    thread that runs it (it sleeps nearly all the time), so wake-ups are not delayed by
    //    CPU-bound neighbours.
    if mode["kind"].as_str() == Some("tight") {
        let param = libc::sched_param { sched_priority: 10 };
        // SAFETY: plain syscall on the calling thread with a valid sched_param.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
            eprintln!(
                "warning: SCHED_FIFO refused ({}); the loop's timing follows the host's load",
                io::Error::last_os_error()
            );
        }
    }
    let u = |k: &str| {
        mode[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} missing in {mode}"))
    };

    // End of stdin (or any line) stops the endless modes.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = io::stdin().lock().read_line(&mut line);
        stop2.store(true, Ordering::Relaxed);
    });

    say(&format!(
        "started {}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis()
    ));
    let t0 = Instant::now();
    let (outcomes, times_ns) = match mode["kind"].as_str().unwrap_or_default() {
        "tight" => tight_loop(target, Duration::from_millis(u("pause_ms")), &stop),
        "backoff" => {
            let sleeps = backoff_sleeps(
                Duration::from_millis(u("base_ms")),
                Duration::from_millis(u("cap_ms")),
                u("attempts") as u32,
                u("seed"),
            );
            backoff(target, &sleeps)
        }
        "connect_timeout" => {
            let timeout = Duration::from_millis(u("timeout_ms"));
            (
                in_threads(u("threads") as usize, &stop, move |stop| {
                    connect_timeout_loop(target, timeout, stop)
                }),
                Vec::new(),
            )
        }
        "redis_reconnect" => (
            in_threads(u("threads") as usize, &stop, move |stop| {
                redis_reconnect_loop(target, stop)
            }),
            Vec::new(),
        ),
        k => panic!("unknown storm mode {k:?} in {mode}"),
    };
    let attempts: u64 = outcomes.values().sum();
    let report = json!({
        "attempts": attempts,
        "outcomes": outcomes,
        "times_ns": times_ns,
        "elapsed_s": t0.elapsed().as_secs_f64(),
    });
    say(&format!("done {report}"));
    std::process::exit(0);
}

/// Runs `n` copies of `body` on threads (they inherit name, cgroup and namespace) and merges what
/// they counted.
fn in_threads(
    n: usize,
    stop: &Arc<AtomicBool>,
    body: impl Fn(&AtomicBool) -> Outcomes + Send + Sync + Clone + 'static,
) -> Outcomes {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let stop = stop.clone();
            let body = body.clone();
            std::thread::spawn(move || body(&stop))
        })
        .collect();
    let mut all = Outcomes::new();
    for h in handles {
        for (k, v) in h.join().expect("storm client thread panicked") {
            *all.entry(k).or_default() += v;
        }
    }
    all
}

fn tight_loop(target: SocketAddr, pause: Duration, stop: &AtomicBool) -> (Outcomes, Vec<u64>) {
    let mut o = Outcomes::new();
    let mut times = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        times.push(monotonic_ns());
        match TcpStream::connect(target) {
            Ok(s) => {
                bump(&mut o, "connected");
                drop(s);
            }
            Err(e) => bump(&mut o, &error_name(&e)),
        }
        std::thread::sleep(pause);
    }
    (o, times)
}

fn backoff(target: SocketAddr, sleeps: &[Duration]) -> (Outcomes, Vec<u64>) {
    let mut o = Outcomes::new();
    let mut times = Vec::new();
    for k in 0..=sleeps.len() {
        times.push(monotonic_ns());
        match TcpStream::connect(target) {
            Ok(s) => {
                bump(&mut o, "connected");
                drop(s);
            }
            Err(e) => bump(&mut o, &error_name(&e)),
        }
        if let Some(d) = sleeps.get(k) {
            std::thread::sleep(*d);
        }
    }
    (o, times)
}

/// A non-blocking connect; Ok(None) while in progress, Ok(Some(outcome)) if it ended at once.
fn start_connect(target: SocketAddr) -> (OwnedFd, Option<String>) {
    let family = if target.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscalls; the fd is owned by an OwnedFd.
    unsafe {
        let fd = libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let (sa, len) = to_sockaddr(&target);
        let rc = libc::connect(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            len,
        );
        if rc == 0 {
            return (fd, Some("connected".into()));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINPROGRESS) {
            (fd, None)
        } else {
            (fd, Some(error_name(&e)))
        }
    }
}

fn connect_timeout_loop(target: SocketAddr, timeout: Duration, stop: &AtomicBool) -> Outcomes {
    let mut o = Outcomes::new();
    while !stop.load(Ordering::Relaxed) {
        let (fd, done) = start_connect(target);
        let outcome = done.unwrap_or_else(|| {
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
            if n == 0 {
                return "timeout".into();
            }
            let mut err: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: SO_ERROR writes one int.
            unsafe {
                libc::getsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    &mut err as *mut _ as *mut libc::c_void,
                    &mut len,
                )
            };
            if err == 0 {
                "connected".into()
            } else {
                error_name(&io::Error::from_raw_os_error(err))
            }
        });
        bump(&mut o, &outcome);
        drop(fd); // give up (or hang up) and try again at once
    }
    o
}

fn redis_reconnect_loop(target: SocketAddr, stop: &AtomicBool) -> Outcomes {
    let mut o = Outcomes::new();
    let ping = resp_command(&["PING"]);
    while !stop.load(Ordering::Relaxed) {
        let mut s = match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
            Ok(s) => s,
            Err(e) => {
                bump(&mut o, &format!("connect:{}", error_name(&e)));
                continue;
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("SO_RCVTIMEO");
        // The server may have hung up already (and answer the PING with a reset): what it said
        // before that is still in the receive queue.
        let wrote = s.write_all(&ping);
        let outcome = match read_reply_line(&mut s) {
            Ok(line) => line,
            Err(e) => match wrote {
                Err(w) => format!("write:{}", error_name(&w)),
                Ok(()) => format!("read:{e}"),
            },
        };
        bump(&mut o, &outcome);
        drop(s);
    }
    o
}

/// One CRLF-terminated line (without the CRLF); Err describes an early end or error.
fn read_reply_line(s: &mut impl Read) -> Result<String, String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(b"\r\n") {
        match s.read(&mut b) {
            Ok(0) => return Err(format!("eof after {:?}", String::from_utf8_lossy(&out))),
            Ok(_) => out.push(b[0]),
            Err(e) => return Err(error_name(&e)),
        }
        if out.len() > 4096 {
            return Err("reply line too long".into());
        }
    }
    out.truncate(out.len() - 2);
    Ok(String::from_utf8_lossy(&out).into_owned())
}
