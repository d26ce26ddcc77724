//! Client workloads as separate processes, so that connmon attributes their connections to a
//! process name and a cgroup of their own.
//!
//! The client is this very test binary, re-executed with `--exact client_entry` and a JSON spec in
//! the environment variable [`CLIENT_ENV`]; every test binary that spawns clients defines
//! `#[test] fn client_entry() { common::client_main() }`, which does nothing unless the variable is
//! set. Before its first connect the client takes on the cgroup, process name and optional network
//! namespace the test gave it (see [`super::proc_setup`]); then it runs one [`Mode`] speaking the
//! real protocol ([`Proto`]).
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
use std::io::{self, BufRead, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::proc_setup::{
    entry_spec, protocol_lines, say_line, spec_str, spec_u64, take_identity, EntryPoint, ReexecProc,
};
use super::wire::{pg_startup, redis_hello, redis_ping};
use super::{connect_nonblocking, tcp_state, Netns, TCP_SYN_SENT};

/// Environment variable carrying a client's JSON spec.
pub const CLIENT_ENV: &str = "CONNMON_TEST_CLIENT";
/// Prefix of the client's protocol lines on stdout.
const LINE_PREFIX: &str = "@@client ";

const CLIENT: EntryPoint = EntryPoint { kind: "client", test: "client_entry", env: CLIENT_ENV, tmp_prefix: "cmclient" };

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
    Hold {
        count: usize,
    },
    Churn {
        count: usize,
        max_secs: f64,
    },
    Refused {
        count: usize,
    },
    /// Connects that fail with EHOSTUNREACH (an ICMP host unreachable answers the SYN).
    Unreachable {
        count: usize,
    },
    Timeout {
        count: usize,
    },
    Abort {
        count: usize,
        after_ms: u64,
    },
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
        ClientSpec { prefix: prefix.to_string(), target, proto, mode, netns: None }
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
    proc: ReexecProc,
    lines: mpsc::Receiver<String>,
    /// Protocol lines that arrived while waiting for another word.
    pending: VecDeque<String>,
}

impl ClientProc {
    /// Spawns the client; for hold mode waits (30 s) for its `ready` line and checks that it holds
    /// `count` connections.
    pub fn spawn(spec: ClientSpec) -> ClientProc {
        let (mode, count, max_secs, after_ms) = match spec.mode {
            Mode::Hold { count } => ("hold", count, 0.0, 0),
            Mode::Churn { count, max_secs } => ("churn", count, max_secs, 0),
            Mode::Refused { count } => ("refused", count, 0.0, 0),
            Mode::Unreachable { count } => ("unreachable", count, 0.0, 0),
            Mode::Timeout { count } => ("timeout", count, 0.0, 0),
            Mode::Abort { count, after_ms } => ("abort", count, 0.0, after_ms),
        };
        let json = json!({
            "netns": spec.netns.as_ref().map(|n| format!("/run/netns/{n}")),
            "target": spec.target.to_string(),
            "proto": spec.proto.as_str(),
            "mode": mode,
            "count": count,
            "max_secs": max_secs,
            "after_ms": after_ms,
        });
        let (proc, stdout) = ReexecProc::spawn(&CLIENT, &spec.prefix, json);
        let mut c = ClientProc {
            name: proc.name.clone(),
            target: spec.target,
            proc,
            lines: protocol_lines(stdout, LINE_PREFIX),
            pending: VecDeque::new(),
        };
        if let Mode::Hold { count } = spec.mode {
            let n: usize = c.expect("ready", Duration::from_secs(60)).parse().expect("ready N");
            assert_eq!(n, count, "client {} holds {n} connections, asked for {count}", c.name);
        }
        c
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The cgroup label connmon should give this client's connections.
    pub fn cgroup(&self) -> &str {
        self.proc.cgroup()
    }

    /// Everything the client wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    /// Waits for the next line starting with `word` and returns the rest of it; panics (quoting
    /// the client's stderr) if the client exits first or `within` passes.
    pub fn expect(&mut self, word: &str, within: Duration) -> String {
        self.try_expect(word, within).unwrap_or_else(|| {
            panic!("client {} did not say {word:?} within {within:?}; stderr:\n{}", self.name, self.stderr())
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
                    let st = self.proc.wait();
                    panic!("client {} exited ({st:?}) before saying {word:?}; stderr:\n{}", self.name, self.stderr())
                }
            }
        }
    }

    /// Sends one command line to the client.
    pub fn send(&mut self, cmd: &str) {
        let stdin = self.proc.stdin().expect("client stdin already closed");
        writeln!(stdin, "{cmd}")
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| panic!("write {cmd:?} to client {}: {e}\n{}", self.name, self.stderr()));
    }

    /// Makes a holding client close `k` connections (close(2) returned for each); returns how many
    /// it still holds.
    pub fn close(&mut self, k: usize) -> usize {
        self.send(&format!("close {k}"));
        let rest = self.expect("closed", Duration::from_secs(30));
        let f: Vec<usize> = rest.split_whitespace().map(|t| t.parse().expect("closed K LEFT")).collect();
        assert_eq!(f.first(), Some(&k), "client {} closed {rest:?}, asked for {k}", self.name);
        f[1]
    }

    /// For the one-shot modes: waits (within `within`) for `done N`, then for the process to exit
    /// with success; returns N.
    pub fn finish(&mut self, within: Duration) -> usize {
        let n = self.expect("done", within).parse().expect("done N");
        self.proc.wait_exit(Duration::from_secs(30));
        n
    }

    /// Closes the client's stdin (a holding client then closes everything and exits) and waits for
    /// it to exit successfully.
    pub fn exit(&mut self) {
        self.proc.close_stdin();
        self.proc.wait_exit(Duration::from_secs(30));
    }
}

// ---------------------------------------------------------------------------------------------
// The client process

fn say(line: &str) {
    say_line(LINE_PREFIX, line);
}

/// The body of `#[test] fn client_entry()`: runs the client described by [`CLIENT_ENV`] and exits
/// the process; returns at once when the variable is not set (a normal test run).
pub fn client_main() {
    let Some(spec) = entry_spec(&CLIENT) else {
        return;
    };
    let s = |k: &str| spec_str(&spec, k);
    let u = |k: &str| spec_u64(&spec, k);
    let name = take_identity(&spec);

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
        "refused" => fail_fast(target, count, libc::ECONNREFUSED),
        "unreachable" => fail_fast(target, count, libc::EHOSTUNREACH),
        "timeout" => timeout(target, count),
        "abort" => abort(target, count, Duration::from_millis(u("after_ms"))),
        m => panic!("unknown mode {m}"),
    }
    std::process::exit(0);
}

fn open(target: SocketAddr, proto: Proto, name: &str) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect {target}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("SO_RCVTIMEO");
    match proto {
        Proto::Redis => redis_hello(&mut s, name),
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
        let mut s = TcpStream::connect(target).unwrap_or_else(|e| panic!("connect {target} (cycle {done}): {e}"));
        if proto == Proto::Redis {
            s.set_read_timeout(Some(Duration::from_secs(10))).expect("SO_RCVTIMEO");
            redis_ping(&mut s);
        } else if proto == Proto::Postgres {
            pg_startup(&mut s, "churn");
        }
        drop(s);
        done += 1;
    }
    say(&format!("done {done}"));
}

/// `count` connects, one after another, each failing with `errno`.
fn fail_fast(target: SocketAddr, count: usize, errno: i32) {
    for i in 0..count {
        match TcpStream::connect(target) {
            Err(e) if e.raw_os_error() == Some(errno) => {}
            other => panic!("connect {target} #{i}: expected errno {errno}, got {other:?}"),
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
        assert_eq!(tcp_state(s), TCP_SYN_SENT, "socket #{i} to {target} left SYN-SENT before the abort");
    }
    drop(socks);
    say(&format!("done {count}"));
}
