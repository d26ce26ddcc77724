//! The harness of connmon's integration tests, as a library (`connmon-test-support`, a
//! dev-dependency of the `connmon` package) that every test binary links instead of compiling its
//! own copy of the harness. Its items are public, so nothing here is dead code; names and types
//! the agent defines (metric names, alert names) come from the `connmon` library itself.
//!
//! A test file uses it under the name `common`, so paths read `common::agent::Agent`,
//! `common::storm_lock::alone()` and so on:
//!
//! ```ignore
//! use connmon_test_support as common;
//! use common::*;
//! ```
//!
//! That one line is what a test file that still says `mod common;` needs instead: the module paths
//! here are those of the former `tests/common` folder.
//!
//! Style: set up real things (network namespaces, sockets, the agent), trigger real traffic, then
//! compare connmon's view with the kernel's own tools (`ss`, `nstat`), which are the truth here.
//! Nothing sleeps in place of synchronisation: conditions are polled against a deadline, and a
//! timeout panics naming what was awaited and the last thing seen.
//!
//! Submodules:
//! - [`netns`]: `Netns`, an RAII network namespace made with `ip netns add`.
//! - [`sock`]: listening/connecting sockets, draining accept queues, raw SYNs for half-open requests.
//! - [`oracle`]: `ss` and `nstat` output parsed into numbers.
//! - [`agent`]: the `connmon run` agent as a child process, the harness's HTTP client (ureq),
//!   `connmon listeners`.
//! - [`metrics`]: a parser for the Prometheus text exposition (classic and OpenMetrics).
//! - [`client`]: client workloads as separate processes (own comm, cgroup, optional netns).
//! - [`servers`]: redis-server, PostgreSQL and a plain accept loop, RAII.
//! - [`pool_fixtures`]: the pool binaries' socket-table lock, holding clients, the pool balance.
//! - [`pool_metrics`]: one pool's series, lost-event counters, and the pool oracles (`ss -tnp`).
//! - [`prometheus`]: a real Prometheus server (RAII), PromQL instant queries, scrape targets.
//! - [`proc_setup`]: what every re-executed client process shares: identity (cgroup, comm, netns)
//!   and the parent's handle on it.
//! - [`wire`]: the Redis and PostgreSQL protocol bits the clients speak.
//! - [`listen`]: overflowing listeners and bracketed comparisons for the listener tests.
//! - [`storm_clients`], [`storm_loops`], [`storm_view`], [`storm_lock`]: retry-storm clients, their
//!   loops, the storm metrics and log lines, and the lock that keeps host-wide scenarios apart
//!   (a static: one per test binary, since each binary is its own process).
//! - [`py_client`], [`incidents`]: the incidents' real client libraries (redis-py asyncio,
//!   psycopg) in python, and the incident suite's checks.
//! - [`leak_client`], [`alertmanager`], [`alert_views`], [`agent_log`], [`scrape`]: the alert tests'
//!   leaking client, a real Alertmanager, the agent's alert list, log-line waits, paced scraping.
//! - [`yaml`], [`kube`]: a small YAML reader and the Kubernetes manifests' checks.
//! - [`tls`]: a test PKI (openssl CLI), bcrypt hashes (htpasswd), curl and `openssl s_client`.
//! - [`kube_api`]: a stand-in Kubernetes API server (lists and watches of pods and services).
//! - [`pod_spec`], [`podman`]: the DaemonSet's container translated into podman flags, and the
//!   agent's image run with podman under them.
//! - [`grafana`], [`promql`], [`exports`], [`workspace`]: dashboard parts, PromQL checks, the
//!   agent's exported metric names (`connmon::export::METRICS`), repository paths.

// `new()` here makes real things (a network namespace, a cgroup, a PKI with openssl): a `Default`
// that did so would surprise.
#![allow(clippy::new_without_default)]

pub mod agent;
pub mod agent_log;
pub mod alert_views;
pub mod alertmanager;
pub mod client;
pub mod exports;
pub mod grafana;
pub mod incidents;
pub mod inflight;
pub mod kube;
pub mod kube_api;
pub mod leak_client;
pub mod listen;
pub mod metrics;
pub mod netns;
pub mod oracle;
pub mod pod_spec;
pub mod podman;
pub mod pool_fixtures;
pub mod pool_metrics;
pub mod proc_setup;
pub mod prometheus;
pub mod promql;
pub mod py_client;
pub mod scrape;
pub mod servers;
pub mod sock;
pub mod storm_clients;
pub mod storm_lock;
pub mod storm_loops;
pub mod storm_view;
pub mod tls;
pub mod wire;
pub mod workspace;
pub mod yaml;

pub use agent::*;
pub use client::*;
pub use listen::*;
pub use metrics::*;
pub use netns::*;
pub use oracle::*;
pub use pool_metrics::*;
pub use proc_setup::{cgroup2_root, KillOnDrop, KubeCgroup, TestCgroup};
pub use prometheus::*;
pub use servers::*;
pub use sock::*;
pub use wire::*;

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How often conditions are re-checked while waiting.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// An instant `secs` seconds from now.
pub fn deadline(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// Polls `f` until it returns `Some`, or panics with `what` once `deadline` has passed.
pub fn wait_until<T>(deadline: Instant, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    poll_until(deadline, what, || f().ok_or_else(|| "condition not met".to_string()))
}

/// Like [`wait_until`], but `f` explains why it is not done yet (`Err(last observation)`),
/// and the timeout panic quotes the last explanation.
pub fn poll_until<T, E: Display>(deadline: Instant, what: &str, f: impl FnMut() -> Result<T, E>) -> T {
    poll_every(POLL_INTERVAL, deadline, what, f)
}

/// [`poll_until`] with its own pause between tries (scrapes are costlier than most checks).
pub fn poll_every<T, E: Display>(
    every: Duration,
    deadline: Instant,
    what: &str,
    mut f: impl FnMut() -> Result<T, E>,
) -> T {
    let start = Instant::now();
    loop {
        let last = match f() {
            Ok(v) => return v,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            panic!(
                "timed out after {:.1}s waiting for {what}; last observation: {last}",
                start.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(every);
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique within this test process (tests run as threads of one process).
pub fn unique_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A name unique across concurrently running test processes: prefix + pid + counter.
/// Kept short: interface names and some tools limit lengths.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id(), unique_id())
}

/// A TCP port derived from pid + counter, in 20000..60000. Listeners the tests make live in the
/// test's own network namespace, so collisions with other processes are impossible there; the
/// spread only keeps parallel tests' listeners apart in connmon's all-namespace output.
/// (In the host namespace bind port 0 instead and read the port back with [`local_addr`].)
pub fn unique_port() -> u16 {
    let pid = std::process::id();
    let n = unique_id();
    (20000 + (pid.wrapping_mul(7919).wrapping_add(n.wrapping_mul(131))) % 40000) as u16
}

/// This process's command name as the kernel reports it (`/proc/self/comm`, at most 15 bytes).
pub fn self_comm() -> String {
    std::fs::read_to_string("/proc/self/comm").expect("read /proc/self/comm").trim_end_matches('\n').to_string()
}

/// This process's cgroup v2 path (the `0::/path` line of `/proc/self/cgroup`), if any.
pub fn self_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string)
}

/// Runs a command to completion; panics only if it cannot be started.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// Runs a command, panics (quoting stderr) unless it exits 0, returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{cmd:?} printed non-UTF-8: {e}"))
}

/// `true` if `program` is found on PATH.
pub fn have_program(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            std::fs::metadata(dir.join(program)).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    })
}

/// A directory under the system temp dir, removed (recursively) on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `true` if `text` contains `n` as a whole number (not part of a longer digit run).
pub fn contains_number(text: &str, n: u64) -> bool {
    text.split(|c: char| !c.is_ascii_digit()).any(|tok| tok == n.to_string())
}
