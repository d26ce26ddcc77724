//! Client programs for the retry-storm tests (tests/storms.rs, tests/storms_servers.rs): reconnect
//! loops with and without backoff, as separate processes so that connmon sees them as pools of
//! their own.
//!
//! Like [`super::client`], a storm client is this test binary re-executed (`--exact
//! storm_client_entry`) with a JSON spec in [`STORM_CLIENT_ENV`]; the test binary defines
//! `#[test] fn storm_client_entry() { storm_client_main() }`, which does nothing unless the
//! variable is set. Before its first connect the client takes on the cgroup, process name and
//! optional network namespace the test gave it (see [`super::proc_setup`]); its threads inherit
//! all three. This module is the parent's side; the client's retry loops are in
//! [`super::storm_loops`].
//!
//! Protocol: the client writes `@@storm started UNIX_MS` to stdout just before its first connect, and
//! `@@storm done {json}` ([`StormReport`]) when it stops: on end of stdin (the parent's
//! [`StormClient::stop`]) for the endless modes, by itself for [`StormMode::Backoff`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::proc_setup::{protocol_lines, EntryPoint, ReexecProc};
use super::{Netns, PoolRef};

pub use super::storm_loops::{monotonic_ns, storm_client_main};

/// Environment variable carrying a storm client's JSON spec.
pub const STORM_CLIENT_ENV: &str = "CONNMON_TEST_STORM_CLIENT";
/// Prefix of the storm client's protocol lines on stdout.
pub(super) const LINE_PREFIX: &str = "@@storm ";

pub(super) const STORM_CLIENT: EntryPoint =
    EntryPoint { kind: "storm client", test: "storm_client_entry", env: STORM_CLIENT_ENV, tmp_prefix: "cmstorm" };

/// 127.0.0.1:`port`, where the storm tests aim their clients.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// What a storm client does, over and over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StormMode {
    /// One loop: blocking connect, close, sleep `pause_ms`, again: retries with no backoff at all.
    TightLoop { pause_ms: u64 },
    /// "Full jitter" exponential backoff: after the k-th failed attempt (k from 0) sleep
    /// uniform(0, min(cap, base·2^k)); `attempts` connects in all, then the client says done by
    /// itself. The uniform draws come from SplitMix64 seeded with `seed` (see [`backoff_sleeps`]).
    Backoff { base_ms: u64, cap_ms: u64, attempts: u32, seed: u64 },
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
            attempts: v["attempts"].as_u64().unwrap_or_else(|| panic!("attempts missing in {v}")),
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
    proc: ReexecProc,
    lines: mpsc::Receiver<String>,
}

impl StormClient {
    /// Spawns the client (in `netns` if given) and waits (60 s) until it says it is about to connect.
    pub fn spawn(prefix: &str, target: SocketAddr, mode: StormMode, netns: Option<&Netns>) -> StormClient {
        let mode_json = match mode {
            StormMode::TightLoop { pause_ms } => json!({"kind": "tight", "pause_ms": pause_ms}),
            StormMode::Backoff { base_ms, cap_ms, attempts, seed } => {
                json!({"kind": "backoff", "base_ms": base_ms, "cap_ms": cap_ms, "attempts": attempts, "seed": seed})
            }
            StormMode::ConnectTimeout { threads, timeout_ms } => {
                json!({"kind": "connect_timeout", "threads": threads, "timeout_ms": timeout_ms})
            }
            StormMode::RedisReconnect { threads } => {
                json!({"kind": "redis_reconnect", "threads": threads})
            }
        };
        let spec = json!({
            "netns": netns.map(|n| n.path()),
            "target": target.to_string(),
            "mode": mode_json,
        });
        let (proc, stdout) = ReexecProc::spawn(&STORM_CLIENT, prefix, spec);
        let mut c = StormClient {
            name: proc.name.clone(),
            target,
            started: Instant::now(),
            started_wall: SystemTime::now(),
            proc,
            lines: protocol_lines(stdout, LINE_PREFIX),
        };
        let rest = c
            .next_line(Duration::from_secs(60), "started")
            .unwrap_or_else(|| panic!("storm client {} did not start within 60 s; stderr:\n{}", c.name, c.stderr()));
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
        self.proc.cgroup()
    }

    /// The pool of this client's connections (its comm, cgroup and target).
    pub fn pool(&self) -> PoolRef {
        PoolRef {
            comm: self.name.clone(),
            cgroup: self.proc.cgroup().to_string(),
            dst_addr: self.target.ip().to_string(),
            dst_port: self.target.port().to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Everything the client wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    /// The next protocol line within `within` (None on timeout); panics if the client exits first.
    fn next_line(&mut self, within: Duration, waiting_for: &str) -> Option<String> {
        match self.lines.recv_timeout(within) {
            Ok(l) => Some(l),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let st = self.proc.wait();
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
        let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("bad done line ({e}): {line}"));
        self.proc.wait_exit(Duration::from_secs(30));
        Some(StormReport::from_json(&v))
    }

    /// Stops an endless client (closes its stdin) and returns its report.
    pub fn stop(&mut self) -> StormReport {
        self.proc.close_stdin();
        self.try_done(Duration::from_secs(30)).unwrap_or_else(|| {
            panic!("storm client {} did not stop within 30 s; stderr:\n{}", self.name, self.stderr())
        })
    }
}
