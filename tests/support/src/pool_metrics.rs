//! Reading connmon's pool series for one test's own client (its comm + cgroup + destination are
//! unique, so parallel tests never see each other's numbers), and the oracles to compare with.

use std::fmt;
use std::net::SocketAddr;

use serde_json::Value;

use super::{connmon_ok, parse_json_lines, sample, samples_matching, ClientProc, Netns, Sample};

// The names as the agent spells them: a renamed metric changes here too, and the dashboard and
// rules tests (which check shipped files against `connmon::export::METRICS`) catch the rest.
pub use connmon::export::pools::{
    EVENTS_LOST, LISTEN_ACCEPTS, LISTEN_ESTABLISHED, POOL_ATTEMPTS, POOL_CLOSES, POOL_CONNECTIONS,
    POOL_CONNECT_DURATION, POOL_FAILURES, POOL_FOLDED, POOL_LIFETIME, POOL_OPENS, POOL_PEAK, POOL_SERVICE_INFO,
};
pub use connmon::model::pools::FAILURE_REASONS;

/// The lost-event reasons the pool tests provoke and read (the agent has more:
/// `connmon::model::pools::LOST_REASON_NAMES`).
pub const LOST_REASONS: [&str; 3] = [
    connmon::model::pools::LOST_REASON_NAMES[0],
    connmon::model::pools::LOST_REASON_NAMES[1],
    connmon::model::pools::LOST_REASON_NAMES[2],
];

/// A [`PoolRef::cgroup`] that matches any cgroup label.
pub const ANY_CGROUP: &str = "*";

/// One pool's identifying labels (all but `service`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRef {
    pub comm: String,
    /// [`ANY_CGROUP`] ("*") matches any cgroup label (see [`PoolRef::any_cgroup`]).
    pub cgroup: String,
    pub dst_addr: String,
    pub dst_port: String,
}

/// Everything connmon exports for one pool; `None` where the series is absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolFigures {
    pub service: Option<String>,
    pub active: Option<f64>,
    pub peak: Option<f64>,
    pub attempts: Option<f64>,
    pub opens: Option<f64>,
    pub closes: Option<f64>,
    /// (reason, value) for every reason exported.
    pub failures: Vec<(String, f64)>,
    pub connect_count: Option<f64>,
    pub connect_sum: Option<f64>,
    pub lifetime_count: Option<f64>,
    pub lifetime_sum: Option<f64>,
}

impl PoolFigures {
    pub fn failure(&self, reason: &str) -> f64 {
        self.failures.iter().find(|(r, _)| r == reason).map_or(0.0, |(_, v)| *v)
    }

    pub fn failures_total(&self) -> f64 {
        self.failures.iter().map(|(_, v)| v).sum()
    }
}

impl fmt::Display for PoolFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = |v: Option<f64>| v.map_or("-".to_string(), |v| v.to_string());
        write!(
            f,
            "service={} active={} peak={} attempts={} opens={} closes={} failures={:?} connect_count={} lifetime_count={}",
            self.service.as_deref().unwrap_or("-"),
            o(self.active),
            o(self.peak),
            o(self.attempts),
            o(self.opens),
            o(self.closes),
            self.failures.iter().filter(|(_, v)| *v != 0.0).collect::<Vec<_>>(),
            o(self.connect_count),
            o(self.lifetime_count)
        )
    }
}

impl PoolRef {
    /// The pool of `client`'s connections to `dst`.
    pub fn of(client: &ClientProc, dst: SocketAddr) -> PoolRef {
        PoolRef {
            comm: client.name.clone(),
            cgroup: client.cgroup().to_string(),
            dst_addr: dst.ip().to_string(),
            dst_port: dst.port().to_string(),
        }
    }

    /// The same pool matched by comm and destination only, whatever its cgroup label says (for
    /// tests about something else than cgroup attribution).
    pub fn any_cgroup(&self) -> PoolRef {
        PoolRef { cgroup: ANY_CGROUP.to_string(), ..self.clone() }
    }

    pub fn labels(&self) -> Vec<(&str, &str)> {
        let mut l = vec![
            ("comm", self.comm.as_str()),
            ("dst_addr", self.dst_addr.as_str()),
            ("dst_port", self.dst_port.as_str()),
        ];
        if self.cgroup != ANY_CGROUP {
            l.push(("cgroup", self.cgroup.as_str()));
        }
        l
    }

    /// The one sample `name` of this pool (None if absent).
    pub fn get(&self, samples: &[Sample], name: &str) -> Option<f64> {
        sample(samples, name, &self.labels())
    }

    pub fn figures(&self, samples: &[Sample]) -> PoolFigures {
        let l = self.labels();
        let service = samples_matching(samples, POOL_CONNECTIONS, &l)
            .first()
            .and_then(|s| s.label("service").map(str::to_string));
        let failures = samples_matching(samples, POOL_FAILURES, &l)
            .into_iter()
            .map(|s| (s.label("reason").unwrap_or("?").to_string(), s.value))
            .collect();
        PoolFigures {
            service,
            active: self.get(samples, POOL_CONNECTIONS),
            peak: self.get(samples, POOL_PEAK),
            attempts: self.get(samples, POOL_ATTEMPTS),
            opens: self.get(samples, POOL_OPENS),
            closes: self.get(samples, POOL_CLOSES),
            failures,
            connect_count: self.get(samples, &format!("{POOL_CONNECT_DURATION}_count")),
            connect_sum: self.get(samples, &format!("{POOL_CONNECT_DURATION}_sum")),
            lifetime_count: self.get(samples, &format!("{POOL_LIFETIME}_count")),
            lifetime_sum: self.get(samples, &format!("{POOL_LIFETIME}_sum")),
        }
    }
}

impl fmt::Display for PoolRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pool{{comm={},cgroup={},dst={}:{}}}", self.comm, self.cgroup, self.dst_addr, self.dst_port)
    }
}

/// connmon_events_lost_total{reason} (0 if absent).
pub fn lost(samples: &[Sample], reason: &str) -> f64 {
    sample(samples, EVENTS_LOST, &[("reason", reason)]).unwrap_or(0.0)
}

/// Every lost-events counter, in [`LOST_REASONS`] order.
pub fn lost_all(samples: &[Sample]) -> [f64; 3] {
    LOST_REASONS.map(|r| lost(samples, r))
}

/// connmon_pool_service_info samples for `dst`.
pub fn service_info(samples: &[Sample], dst: SocketAddr) -> Vec<&Sample> {
    let (a, p) = (dst.ip().to_string(), dst.port().to_string());
    samples_matching(samples, POOL_SERVICE_INFO, &[("dst_addr", a.as_str()), ("dst_port", p.as_str())])
}

/// ESTABLISHED TCP sockets in `ns` with destination port `dport` that `pid` holds (`ss -tnp`).
pub fn ss_estab_owned_by(ns: &Netns, pid: u32, dport: u16) -> usize {
    let d = format!(":{dport}");
    let text = ns.exec_ok(&["ss", "-H", "-tnp", "state", "established", "dport", "=", &d]);
    let needle = format!("pid={pid},");
    text.lines().filter(|l| l.contains(&needle)).count()
}

/// Current VmRSS of `pid` in bytes.
pub fn vm_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    kb * 1024
}

/// `connmon pools --json` (one-shot scan), parsed.
pub fn connmon_pools_json(args: &[&str]) -> Vec<Value> {
    let mut full = vec!["pools", "--json"];
    full.extend_from_slice(args);
    parse_json_lines(&connmon_ok(&full))
}

/// Rows of `connmon pools --json` output that belong to `pool`.
pub fn pool_rows<'a>(rows: &'a [Value], pool: &PoolRef) -> Vec<&'a Value> {
    rows.iter()
        .filter(|r| {
            r["comm"].as_str() == Some(pool.comm.as_str())
                && (pool.cgroup == ANY_CGROUP || r["cgroup"].as_str() == Some(pool.cgroup.as_str()))
                && r["dst_addr"].as_str() == Some(pool.dst_addr.as_str())
                && r["dst_port"].as_u64().map(|p| p.to_string()).as_deref() == Some(pool.dst_port.as_str())
        })
        .collect()
}

/// One eBPF program a process holds, from /proc/<pid>/fdinfo (name from `bpftool`, if installed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfProgInfo {
    pub prog_id: u64,
    /// enum bpf_prog_type: 5 = tracepoint, 8 = cgroup_skb, 26 = tracing (tp_btf), ...
    pub prog_type: u64,
    pub name: Option<String>,
    /// Runs the kernel skipped because a BPF program was already running on that CPU
    /// (bpf_prog_active for tracepoint programs): events the program never saw.
    pub recursion_misses: u64,
}

/// The eBPF programs `pid` holds open, with their recursion-miss counters.
pub fn bpf_programs(pid: u32) -> Vec<BpfProgInfo> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    let mut out: Vec<BpfProgInfo> = Vec::new();
    for e in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix(':')))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(prog_id), Some(prog_type)) = (field("prog_id"), field("prog_type")) {
            if out.iter().any(|p| p.prog_id == prog_id) {
                continue;
            }
            let name = std::process::Command::new("bpftool")
                .args(["prog", "show", "id", &prog_id.to_string()])
                .output()
                .ok()
                .and_then(|o| {
                    let t = String::from_utf8_lossy(&o.stdout).into_owned();
                    let f: Vec<&str> = t.split_whitespace().collect();
                    f.iter().position(|w| *w == "name").and_then(|i| f.get(i + 1)).map(|n| n.to_string())
                });
            out.push(BpfProgInfo {
                prog_id,
                prog_type,
                name,
                recursion_misses: field("recursion_misses").unwrap_or(0),
            });
        }
    }
    out.sort_by_key(|p| p.prog_id);
    out
}

/// Recursion misses per program name (or id) that rose between two [`bpf_programs`] readings.
pub fn recursion_misses_delta(before: &[BpfProgInfo], after: &[BpfProgInfo]) -> Vec<(String, u64)> {
    after
        .iter()
        .filter_map(|a| {
            let b = before.iter().find(|b| b.prog_id == a.prog_id).map_or(0, |b| b.recursion_misses);
            let d = a.recursion_misses.saturating_sub(b);
            (d > 0).then(|| (a.name.clone().unwrap_or_else(|| format!("prog {}", a.prog_id)), d))
        })
        .collect()
}
