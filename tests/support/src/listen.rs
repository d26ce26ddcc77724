//! Listener fixtures shared by the listener and agent tests: an overflowing listener, waiting
//! for `ss` to show a queue depth, and bracketed comparisons against a moving oracle.
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use super::*;

/// In `ns`: a listener on `addr` with `backlog`, and `clients` non-blocking connects that are never
/// accepted. The accept queue holds backlog + 1 connections; the other clients' SYNs are dropped
/// (and retransmitted, so drops keep rising). Waits until `ss` shows the full queue and drops.
pub fn overflowing_listener(ns: &Netns, addr: SocketAddr, backlog: i32, clients: usize) -> (OwnedFd, Vec<OwnedFd>) {
    assert!(clients > backlog as usize + 1, "need more clients than the accept queue holds");
    let (listener, clients) = ns.run(|| {
        let l = listen_tcp(addr, backlog);
        let cs: Vec<OwnedFd> = (0..clients).map(|_| connect_nonblocking(addr)).collect();
        (l, cs)
    });
    let ip = addr.ip().to_string();
    poll_until(deadline(15), &format!("ss to show a full accept queue ({}) and drops on {addr}", backlog + 1), || {
        match ss_listener(ns, &ip, addr.port()) {
            Some(l) if l.recv_q == backlog as u64 + 1 && l.drops > 0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    (listener, clients)
}

/// Waits until `ss` shows `n` connections in the accept queue of `addr` in `ns`.
pub fn wait_recv_q(ns: &Netns, addr: SocketAddr, n: u64) {
    let ip = addr.ip().to_string();
    poll_until(deadline(15), &format!("ss Recv-Q == {n} on {addr}"), || match ss_listener(ns, &ip, addr.port()) {
        Some(l) if l.recv_q == n => Ok(()),
        other => Err(format!("{other:?}")),
    });
}

/// In `ns`: `n` clients connect to `addr`, `ss` shows them queued on `listener`, all are accepted,
/// `ss` shows the queue empty again, and the clients close: a burst that comes and goes between
/// two scrapes, so only an eBPF peak can see it.
pub fn queue_burst(ns: &Netns, listener: &OwnedFd, addr: SocketAddr, n: usize) {
    let clients: Vec<OwnedFd> = ns.run(|| (0..n).map(|_| connect_nonblocking(addr)).collect());
    wait_recv_q(ns, addr, n as u64);
    assert_eq!(accept_all(listener), n, "accepted connections");
    wait_recv_q(ns, addr, 0);
    drop(clients);
}

pub fn assert_between(what: &str, low: u64, value: f64, high: u64) {
    assert!(
        low as f64 <= value && value <= high as f64,
        "{what}: {value} is not within the oracle's bracket [{low}, {high}]"
    );
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("bad address {s:?}: {e}"))
}

/// `tests/fixtures/SCRIPT ARGS` under Debian's python3 in `ns`, not yet spawned.
pub fn fixture_command(ns: &Netns, script: &str, args: &[String]) -> std::process::Command {
    let script = super::workspace::root().join("tests/fixtures").join(script).display().to_string();
    let mut argv = vec!["/usr/bin/python3", script.as_str()];
    argv.extend(args.iter().map(String::as_str));
    ns.command(&argv)
}

/// [`fixture_command`] spawned with its stdin a pipe (the servers exit when it closes) and its
/// first line of output read: they print `listening` once they listen.
pub fn start_fixture_server(ns: &Netns, script: &str, args: &[String]) -> std::process::Child {
    use std::io::BufRead as _;
    let mut cmd = fixture_command(ns, script, args);
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped stdout");
    std::io::BufReader::new(stdout).read_line(&mut line).unwrap_or_else(|e| panic!("read from {cmd:?}: {e}"));
    assert_eq!(line.trim(), "listening", "{cmd:?} did not start");
    child
}

/// The pre-fork server of `tests/fixtures/prefork_server.py` (Debian's python3), started in `ns`:
/// it listens with the backlog asked for and forks `workers` that accept, send a greeting byte,
/// work `service_ms` and reply. `addr` is an IP address, a unix path or `@abstract-name`. Killed
/// with its workers on drop.
pub struct PreforkServer {
    child: std::process::Child,
}

impl PreforkServer {
    pub fn start(ns: &Netns, addr: &str, port: u16, backlog: i32, workers: u32, service_ms: u32) -> PreforkServer {
        let args =
            [addr.to_string(), port.to_string(), backlog.to_string(), workers.to_string(), service_ms.to_string()];
        PreforkServer { child: start_fixture_server(ns, "prefork_server.py", &args) }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PreforkServer {
    fn drop(&mut self) {
        // The parent kills its workers on SIGTERM (a SIGKILL would orphan them).
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// One connection attempt of [`TimeoutClients`].
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// Wall-clock start (Unix epoch seconds).
    pub start: f64,
    /// "ok", "timeout" or "error".
    pub outcome: String,
    /// Seconds from connect() to the server's first byte (its greeting, sent at accept()); None
    /// when no byte came.
    pub first_byte: Option<f64>,
}

/// The clients of `tests/fixtures/timeout_clients.py` in `ns`: `threads` threads connect to
/// `addr:port`, give each attempt `timeout_ms` from connect() to the full reply, and retry at once,
/// for `seconds`. Each attempt is a line in a file, read as they end.
pub struct TimeoutClients {
    child: std::process::Child,
    out: std::path::PathBuf,
    _dir: TempDir,
}

impl TimeoutClients {
    pub fn start(ns: &Netns, addr: &str, port: u16, threads: u32, timeout_ms: u32, seconds: u32) -> TimeoutClients {
        let dir = TempDir::new("connmon-clients");
        let out = dir.path().join("attempts.txt");
        let file = std::fs::File::create(&out).unwrap_or_else(|e| panic!("create {}: {e}", out.display()));
        let args =
            [addr.to_string(), port.to_string(), threads.to_string(), timeout_ms.to_string(), seconds.to_string()];
        let mut cmd = fixture_command(ns, "timeout_clients.py", &args);
        let child = cmd.stdout(file).spawn().unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        TimeoutClients { child, out, _dir: dir }
    }

    /// Attempts that have ended so far.
    pub fn attempts(&self) -> Vec<Attempt> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let start = f.next()?.parse().ok()?;
                let outcome = f.next()?.to_string();
                let first: f64 = f.next()?.parse().ok()?;
                Some(Attempt { start, outcome, first_byte: (first >= 0.0).then_some(first) })
            })
            .collect()
    }

    /// Waits for the clients to finish on their own; returns every attempt.
    pub fn wait(mut self) -> Vec<Attempt> {
        let status = self.child.wait().unwrap_or_else(|e| panic!("wait for the clients: {e}"));
        assert!(status.success(), "timeout_clients.py failed: {status}");
        self.attempts()
    }
}

impl Drop for TimeoutClients {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
