//! A client that leaks Redis connections, for the alert tests (tests/alerts.rs): one more
//! connection every `every`, never closing any, so its pool grows without bound until it stops
//! and holds them all, flat. Like the other test clients it is this test binary re-executed, with
//! a cgroup and a unique process name of its own (see [`super::proc_setup`]); the test binary
//! defines `#[test] fn leak_client_entry() { leak_client_main() }`, which does nothing in a normal
//! run. The parent follows its progress from stdout, so a test can tell when it stopped growing.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::proc_setup::{
    entry_spec, read_protocol, say_line, spec_str, spec_u64, take_identity, EntryPoint, ReexecProc,
};
use super::wire::redis_hello;

const LEAK_ENV: &str = "CONNMON_TEST_LEAK_CLIENT";
const LEAK_PREFIX: &str = "@@leak ";

const LEAK_CLIENT: EntryPoint =
    EntryPoint { kind: "leak client", test: "leak_client_entry", env: LEAK_ENV, tmp_prefix: "cmleak" };

/// A client process that opens one Redis connection (CLIENT SETNAME + PING) every `every` and
/// never closes any, for `grow_for` or until it holds `max`; then it holds them all, flat, until
/// it is dropped. Like the harness's clients it lives in a cgroup of its own and gives itself a
/// unique process name, which becomes the pool's `comm` label.
///
/// Protocol on stdout: `@@leak open N` after each connection, `@@leak plateau N` when it stops
/// growing. End of stdin ends it.
pub struct LeakClient {
    pub name: String,
    pub started: Instant,
    proc: ReexecProc,
    opened: Arc<AtomicUsize>,
    plateau: Arc<Mutex<Option<(Instant, usize)>>>,
}

impl LeakClient {
    pub fn spawn(prefix: &str, target: SocketAddr, every: Duration, grow_for: Duration, max: usize) -> LeakClient {
        let spec = json!({
            "target": target.to_string(),
            "every_ms": every.as_millis() as u64,
            "grow_ms": grow_for.as_millis() as u64,
            "max": max,
        });
        let (proc, stdout) = ReexecProc::spawn(&LEAK_CLIENT, prefix, spec);
        let opened = Arc::new(AtomicUsize::new(0));
        let plateau = Arc::new(Mutex::new(None));
        let (o2, p2) = (opened.clone(), plateau.clone());
        read_protocol(stdout, LEAK_PREFIX, move |rest| {
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
            true
        });
        LeakClient { name: proc.name.clone(), started: Instant::now(), proc, opened, plateau }
    }

    /// Connections opened (and all still held) so far.
    pub fn opened(&self) -> usize {
        self.opened.load(Ordering::Relaxed)
    }

    /// When it stopped growing, and at how many connections.
    pub fn plateau(&self) -> Option<(Instant, usize)> {
        *self.plateau.lock().unwrap()
    }

    pub fn cgroup(&self) -> &str {
        self.proc.cgroup()
    }

    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    /// Panics (with its stderr) if the client has died: a dead client would make a test wait for
    /// the wrong reason.
    pub fn check_alive(&mut self) {
        if let Some(st) = self.proc.try_wait() {
            panic!(
                "leak client {} exited with {st} after {} connections; stderr:\n{}",
                self.name,
                self.opened(),
                self.stderr()
            );
        }
    }
}

fn leak_say(line: &str) {
    say_line(LEAK_PREFIX, line);
}

/// The body of `#[test] fn leak_client_entry()`: runs the leaking client and exits the process;
/// returns at once in a normal test run.
pub fn leak_client_main() {
    let Some(spec) = entry_spec(&LEAK_CLIENT) else { return };
    let s = |k: &str| spec_str(&spec, k);
    let u = |k: &str| spec_u64(&spec, k);
    let name = take_identity(&spec);
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
        redis_hello(&mut c, &name);
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
