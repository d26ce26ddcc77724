//! The in-flight incident's fixtures (tests/incidents_inflight.rs): the processor-sharing server
//! of `tests/fixtures/inflight_server.py`, the steady-rate clients of
//! `tests/fixtures/steady_clients.py` with their own count of what they started and got back, and
//! `ss`'s count of the server's open connections, the oracle for the agent's.

use std::path::PathBuf;
use std::process::{Child, Stdio};

use super::{fixture_command, start_fixture_server, Netns, TempDir};

/// `inflight_server.py ADDR PORT CAPACITY KNEE` in `ns` (Debian's python3): accepts everything,
/// completes `capacity / (1 + L / knee)` requests a second with L in flight. Killed on drop.
pub struct InflightServer {
    child: Child,
}

impl InflightServer {
    pub fn start(ns: &Netns, addr: &str, port: u16, capacity: f64, knee: f64) -> InflightServer {
        let args = [addr.to_string(), port.to_string(), capacity.to_string(), knee.to_string()];
        InflightServer { child: start_fixture_server(ns, "inflight_server.py", &args) }
    }
}

impl Drop for InflightServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the clients counted, as of `at` (Unix epoch seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientCounts {
    pub at: f64,
    pub started: u64,
    pub done: u64,
    pub failed: u64,
}

impl ClientCounts {
    /// Requests started and not yet answered (or failed): the clients' own in-flight count.
    pub fn waiting(&self) -> u64 {
        self.started - self.done - self.failed
    }
}

/// `steady_clients.py` in `ns`: `rate` new connections a second to `addr:port` for `seconds`,
/// each waiting for its reply without a timeout, and `spike` = (after how many seconds, how
/// many) extra requests at once. Killed on drop.
pub struct SteadyClients {
    child: Child,
    status: PathBuf,
    _dir: TempDir,
}

impl SteadyClients {
    pub fn start(
        ns: &Netns,
        addr: &str,
        port: u16,
        rate: f64,
        seconds: u32,
        spike: Option<(f64, u32)>,
    ) -> SteadyClients {
        let dir = TempDir::new("connmon-steady");
        let status = dir.path().join("status.txt");
        let mut args = vec![addr.to_string(), port.to_string(), rate.to_string(), seconds.to_string()];
        args.push(status.display().to_string());
        if let Some((at, n)) = spike {
            args.extend([at.to_string(), n.to_string()]);
        }
        let mut cmd = fixture_command(ns, "steady_clients.py", &args);
        let child = cmd.stdout(Stdio::null()).spawn().unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        SteadyClients { child, status, _dir: dir }
    }

    /// Every count the clients wrote (one a second), oldest first.
    pub fn history(&self) -> Vec<ClientCounts> {
        let text = std::fs::read_to_string(&self.status).unwrap_or_default();
        text.lines().filter_map(parse_counts).collect()
    }

    /// The clients' latest count, if any yet.
    pub fn counts(&self) -> Option<ClientCounts> {
        self.history().pop()
    }
}

/// `EPOCH STARTED DONE FAILED`; None for a line cut short by a write in progress.
fn parse_counts(line: &str) -> Option<ClientCounts> {
    let mut f = line.split_whitespace().map(str::parse::<f64>);
    let mut next = || f.next().and_then(Result::ok);
    let at = next()?;
    let (started, done, failed) = (next()? as u64, next()? as u64, next()? as u64);
    Some(ClientCounts { at, started, done, failed })
}

impl Drop for SteadyClients {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Established TCP connections in `ns` whose local port is `port`: the server's end of every
/// connection accepted from the listener on it and still open.
pub fn ss_established_from(ns: &Netns, port: u16) -> u64 {
    let filter = format!("( sport = :{port} )");
    let text = ns.exec_ok(&["ss", "-Htn", "state", "established", &filter]);
    text.lines().filter(|l| !l.trim().is_empty()).count() as u64
}
