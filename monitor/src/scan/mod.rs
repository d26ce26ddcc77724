//! One pass over every network namespace: the sock_diag dumps (listening sockets with memory info,
//! and connected sockets) and the namespace's TcpExt counters. Listeners, pools and the server-side
//! view are all built from the same pass, so a scrape enters each namespace once; the agent's
//! connection dumps, the costly part, run in the background within a CPU budget (`FullScans`).
pub mod diag;
pub mod netns;
pub mod netstat;
pub mod procs;
pub mod unix_diag;

use std::collections::{BTreeMap, HashMap, HashSet};

use monitor_common::{TCP_ESTABLISHED, TCP_LISTEN, TCP_SYN_RECV};

use self::{diag::DiagSocket, netns::Netns, procs::Owner};

// Kernel TCP state numbers of a connection that is still held open (include/net/tcp_states.h).
const TCP_FIN_WAIT1: u8 = 4;
const TCP_FIN_WAIT2: u8 = 5;
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_LAST_ACK: u8 = 9;
const TCP_CLOSING: u8 = 11;

/// States in which a connection counts as active: from the handshake until the socket closes,
/// the same span the kernel probe counts (TIME_WAIT is after the socket closed).
pub const CONNECTED: &[u8] =
    &[TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_CLOSING];

#[derive(Debug, Clone, Default)]
pub struct NsScan {
    pub inode: u64,
    pub name: Option<String>,
    /// LISTEN sockets (with sk_drops) and SYN_RECV requests.
    pub listening: Vec<DiagSocket>,
    /// Connections in CONNECTED states; empty unless asked for.
    pub connected: Connections,
    pub tcp_ext: BTreeMap<String, u64>,
    /// Listening unix stream and seqpacket sockets.
    pub unix: Vec<crate::scan::unix_diag::UnixListenerSock>,
    /// The namespace's listen-related sysctls (`SYSCTLS`), those that could be read.
    pub sysctls: BTreeMap<&'static str, i64>,
}

/// Per-namespace sysctls that decide what listen() gets and what a full queue does.
pub const SYSCTLS: [(&str, &str); 4] = [
    ("net.core.somaxconn", "/proc/sys/net/core/somaxconn"),
    ("net.ipv4.tcp_max_syn_backlog", "/proc/sys/net/ipv4/tcp_max_syn_backlog"),
    ("net.ipv4.tcp_abort_on_overflow", "/proc/sys/net/ipv4/tcp_abort_on_overflow"),
    ("net.ipv4.tcp_syncookies", "/proc/sys/net/ipv4/tcp_syncookies"),
];

/// The calling thread's namespace's SYSCTLS (/proc/sys/net follows the thread's namespace).
fn read_sysctls() -> BTreeMap<&'static str, i64> {
    SYSCTLS
        .iter()
        .filter_map(|(name, path)| Some((*name, std::fs::read_to_string(path).ok()?.trim().parse().ok()?)))
        .collect()
}

#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub namespaces: Vec<NsScan>,
    /// Namespaces that vanished mid-scan or could not be entered.
    pub failed: u64,
}

pub fn matches_filter(ns: &Netns, filter: &str) -> bool {
    ns.name.as_deref() == Some(filter) || ns.inode.to_string() == filter
}

/// How much a scan dumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// LISTEN sockets only: the kernel walks just the listening hash, so this stays cheap with
    /// hundreds of thousands of connections (scrapes, which take connections from the last dump).
    Listeners,
    /// `Listeners` without the namespaces' TcpExt counters and sysctls, which only scrapes and
    /// alert evaluation use (the periodic tick: reading and parsing /proc/net/netstat every
    /// second was a tenth of the agent's CPU at 10k connections/s).
    Queues,
    /// Listeners, their SYN queues and every connection (one-shot commands, seeding the pools).
    Full,
    /// SYN_RECV requests (in `listening`) and connections only: no listeners, TcpExt counters,
    /// unix listeners or sysctls (the background dump, which a listener scan completes).
    Connections,
}

/// Scans the namespaces matching `filter` (all when None).
pub fn scan(filter: Option<&str>, depth: Depth) -> Scan {
    let connected = matches!(depth, Depth::Full | Depth::Connections);
    let listeners = depth != Depth::Connections;
    let counters = matches!(depth, Depth::Full | Depth::Listeners);
    let mut nss = netns::discover_reusing();
    if let Some(f) = filter {
        nss.retain(|ns| matches_filter(ns, f));
    }
    // SYN_RECV requests live in the established hash, like connections: one dump walks it for
    // both (once per address family, in every namespace: the hash is shared by all of them, which
    // makes this walk the scan's main cost), and the requests join the listeners' list.
    let listening_states = diag::state_mask(&[TCP_LISTEN]);
    let mut connected_states = diag::state_mask(CONNECTED);
    connected_states |= diag::state_mask(&[TCP_SYN_RECV]);
    let results = netns::run_in_each(&nss, |_| {
        let mut listening = if listeners { diag::dump_tcp(listening_states, true)? } else { Vec::new() };
        let conns = if connected {
            let (requests, conns): (Vec<_>, Vec<_>) =
                diag::dump_tcp(connected_states, false)?.into_iter().partition(|s| s.state == TCP_SYN_RECV);
            listening.extend(requests);
            conns
        } else {
            Vec::new()
        };
        if !listeners {
            return anyhow::Ok((listening, conns, BTreeMap::new(), Vec::new(), BTreeMap::new()));
        }
        // A kernel without unix_diag should not hide the TCP listeners.
        let unix = crate::scan::unix_diag::dump_unix_listeners().unwrap_or_else(|e| {
            warn_unix_once(&e);
            Vec::new()
        });
        if !counters {
            return anyhow::Ok((listening, conns, BTreeMap::new(), unix, BTreeMap::new()));
        }
        // netstat is per namespace; a failure here should not hide the sockets.
        let ext = netstat::read_tcp_ext().unwrap_or_default();
        anyhow::Ok((listening, conns, ext, unix, read_sysctls()))
    });
    let mut out = Scan::default();
    for (inode, result) in results {
        let (listening, connected, tcp_ext, unix, sysctls) = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) | Err(e) => {
                out.failed += 1;
                warn_once(inode, &e);
                continue;
            }
        };
        let name = nss.iter().find(|n| n.inode == inode).and_then(|n| n.name.clone());
        let connected = Connections::new(connected);
        out.namespaces.push(NsScan { inode, name, listening, connected, tcp_ext, unix, sysctls });
    }
    out
}

fn warn_unix_once(e: &anyhow::Error) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| log::warn!("unix listeners are not shown: {e:#}"));
}

/// Logs why a namespace was skipped, once per namespace; vanished ones are normal churn.
fn warn_once(inode: u64, e: &anyhow::Error) {
    static WARNED: std::sync::Mutex<Option<HashSet<u64>>> = std::sync::Mutex::new(None);
    let text = format!("{e:#}");
    if text.contains("is gone") {
        return;
    }
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if warned.get_or_insert_with(HashSet::new).insert(inode) {
        log::warn!("skipping network namespace {inode}: {text}");
    }
}

/// How long an owner found by walking /proc is trusted before it is checked again. A socket
/// inode keeps its owner for its life but for fd passing and exits of pre-fork masters, which
/// this bounds. The check is one readlink of the fd the socket was found at; only when the owner
/// no longer holds it is /proc walked again. Walking again instead cost the 64k-socket host a
/// walk of every fd on the host every 30 s (a quarter of a second of CPU, inside a scrape).
const OWNER_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// How long "no owner found" is trusted. Finding out again walks every fd on the host (the
/// answer is only known once every process has been looked at), and a socket whose owner is not
/// visible (another PID namespace, the kernel) stays so: on the 64k-socket host one such
/// listener cost a 0.7 s walk inside a scrape every 30 s.
const NO_OWNER_TTL: std::time::Duration = std::time::Duration::from_secs(300);
const OWNER_CACHE_MAX: usize = 200_000;

/// Owners of the given socket inodes (0 = none, skipped). Walking every process's fds costs in
/// proportion to all fds on the host, so answers (also "no owner found") are cached by inode for
/// OWNER_TTL (NO_OWNER_TTL) and only unknown inodes trigger a walk: the 1 s tick sees the same
/// listeners again. An owner older than OWNER_TTL that still holds its socket is kept for another
/// OWNER_TTL.
pub fn owners(inodes: impl IntoIterator<Item = u64>) -> HashMap<u64, Owner> {
    type Cache = HashMap<u64, (Option<(Owner, i32)>, std::time::Instant)>;
    static CACHE: std::sync::Mutex<Option<Cache>> = std::sync::Mutex::new(None);
    let wanted: HashSet<u64> = inodes.into_iter().filter(|&i| i != 0).collect();
    if wanted.is_empty() {
        return HashMap::new();
    }
    let mut guard = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let cache = guard.get_or_insert_with(HashMap::new);
    let now = std::time::Instant::now();
    cache.retain(|ino, (owner, at)| {
        let ttl = if owner.is_some() { OWNER_TTL } else { NO_OWNER_TTL };
        if now.duration_since(*at) < ttl {
            return true;
        }
        // Inodes no longer asked for are dropped rather than checked.
        let held = wanted.contains(ino) && owner.as_ref().is_some_and(|(o, fd)| procs::still_holds(o.pid, *fd, *ino));
        if held {
            *at = now;
        }
        held
    });
    if cache.len() > OWNER_CACHE_MAX {
        cache.clear();
    }
    let missing: HashSet<u64> = wanted.iter().copied().filter(|i| !cache.contains_key(i)).collect();
    if !missing.is_empty() {
        let mut found = procs::socket_owners(&missing);
        for ino in missing {
            cache.insert(ino, (found.remove(&ino), now));
        }
    }
    wanted
        .into_iter()
        .filter_map(|i| cache.get(&i).and_then(|(o, _)| o.as_ref()).map(|(o, _)| (i, o.clone())))
        .collect()
}

/// Full scans held to a CPU budget, with the connection dump off the caller's path. Dumping
/// connections walks the kernel's established hash, TIME_WAIT entries included, once per address
/// family in every namespace: at 10k connections/s that is tens of milliseconds, at 64k sockets
/// a tenth of a second. A scan always dumps listeners afresh and takes connections and SYN_RECV
/// requests from the last completed dump. When a dump is due (`last duration / budget` after
/// the last one started), it is started on a thread of its own and the scan goes on with the
/// previous one; the next scan after it completes gets it (and reconciles against it). So the
/// dumps use at most `budget` of one core whoever asks how often, and neither a scrape nor the
/// lock it holds waits for one, except for the very first, which has nothing to reuse.
pub struct FullScans {
    budget: f64,
    dumps: std::sync::Arc<std::sync::Mutex<Dumps>>,
    /// Generation of the last dump a scan handed out as fresh.
    handed: u64,
}

#[derive(Default)]
struct Dumps {
    last: Option<std::sync::Arc<LastFull>>,
    /// A dump is running on its thread.
    running: bool,
    /// Dumps completed.
    generation: u64,
}

struct LastFull {
    at: std::time::Instant,
    /// CLOCK_MONOTONIC when the dump started (bpf_ktime_get_ns's clock), for reconciliation.
    started_ns: u64,
    took: std::time::Duration,
    /// Per namespace inode: SYN_RECV requests and connections.
    by_ns: HashMap<u64, (Vec<DiagSocket>, Connections)>,
}

impl LastFull {
    fn due(&self, budget: f64) -> bool {
        self.at.elapsed().as_secs_f64() * budget >= self.took.as_secs_f64()
    }
}

/// Connected sockets of one namespace, shared between the dump and every scan that reuses it
/// (a copy per scrape was 64k sockets, 6 MB, on the 64k-socket host).
#[derive(Debug, Clone, Default)]
pub struct Connections(std::sync::Arc<Vec<DiagSocket>>);

impl Connections {
    pub fn new(socks: Vec<DiagSocket>) -> Self {
        Self(std::sync::Arc::new(socks))
    }
}

impl std::ops::Deref for Connections {
    type Target = [DiagSocket];
    fn deref(&self) -> &[DiagSocket] {
        &self.0
    }
}

impl<'a> IntoIterator for &'a Connections {
    type Item = &'a DiagSocket;
    type IntoIter = std::slice::Iter<'a, DiagSocket>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Dumps connections and SYN_RECV requests in every namespace, timed.
fn dump_connections() -> LastFull {
    let at = std::time::Instant::now();
    let started_ns = monotonic_ns();
    let scan = scan(None, Depth::Connections);
    let by_ns = scan
        .namespaces
        .into_iter()
        .map(|ns| {
            let requests = ns.listening.into_iter().filter(|s| s.state == TCP_SYN_RECV).collect();
            (ns.inode, (requests, ns.connected))
        })
        .collect();
    LastFull { at, started_ns, took: at.elapsed(), by_ns }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// Marks the dump finished even when it panicked, so the next one can start.
struct Finish(std::sync::Arc<std::sync::Mutex<Dumps>>, Option<LastFull>);

impl Drop for Finish {
    fn drop(&mut self) {
        let mut d = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = self.1.take() {
            d.last = Some(std::sync::Arc::new(last));
            d.generation += 1;
        }
        d.running = false;
    }
}

impl FullScans {
    /// `budget`: share of one core the connection dumps may use; 1 or more means a dump is
    /// started on every scan (each scan still gets the one before it, except the first).
    pub fn new(budget: f64) -> Self {
        Self { budget: budget.max(1e-6), dumps: Default::default(), handed: 0 }
    }

    fn dumps(&self) -> std::sync::MutexGuard<'_, Dumps> {
        self.dumps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a dump on a thread of its own when one is due and none is running (also called by
    /// the periodic tick, so a scrape finds a recent dump without starting one).
    pub fn start_if_due(&self) {
        let mut d = self.dumps();
        if d.running || d.last.as_ref().is_some_and(|l| !l.due(self.budget)) {
            return;
        }
        d.running = true;
        let shared = std::sync::Arc::clone(&self.dumps);
        let spawned = std::thread::Builder::new().name("connmon-dump".into()).spawn(move || {
            let mut finish = Finish(shared, None);
            finish.1 = Some(dump_connections());
        });
        if let Err(e) = spawned {
            d.running = false;
            log::warn!("cannot start the connection dump's thread: {e}");
        }
    }

    /// A scan with connections: listeners dumped now, connections and SYN_RECV requests from
    /// the last completed dump.
    pub fn scan(&mut self) -> Scan {
        let mut last = self.dumps().last.clone();
        if last.is_none() {
            // Nothing to reuse yet: the first scan dumps for itself (a dump the tick started
            // meanwhile replaces it when done).
            let first = std::sync::Arc::new(dump_connections());
            let mut d = self.dumps();
            d.last = Some(std::sync::Arc::clone(&first));
            d.generation += 1;
            last = Some(first);
        }
        self.start_if_due();
        let mut scan = scan(None, Depth::Listeners);
        if let Some(last) = &last {
            for ns in &mut scan.namespaces {
                if let Some((requests, connected)) = last.by_ns.get(&ns.inode) {
                    ns.listening.extend(requests.iter().cloned());
                    ns.connected = connected.clone();
                }
            }
        }
        scan
    }

    /// The last dump's connections (a scan with nothing else) and when it started
    /// (CLOCK_MONOTONIC ns), when it is new since the last call: what the pools are reconciled
    /// against, once per dump.
    pub fn fresh_dump(&mut self) -> Option<(Scan, u64)> {
        let (last, generation) = {
            let d = self.dumps();
            (d.last.clone()?, d.generation)
        };
        if generation <= self.handed {
            return None;
        }
        self.handed = generation;
        let namespaces = last
            .by_ns
            .iter()
            .map(|(inode, (_, connected))| NsScan { inode: *inode, connected: connected.clone(), ..Default::default() })
            .collect();
        Some((Scan { namespaces, failed: 0 }, last.started_ns))
    }

    /// Seconds since the connections handed out last were dumped.
    pub fn age(&self) -> f64 {
        self.dumps().last.as_ref().map_or(0.0, |l| l.at.elapsed().as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny budget makes the second scan reuse the first one's connections, while listeners
    /// are dumped afresh, and starts no dump; a budget of 1 keeps dumping in the background, and
    /// a later scan hands out a dump that has a connection opened after the first.
    #[test]
    fn full_scans_reuse_connections_within_budget() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let _c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let has_conn = |s: &Scan, port: u16| s.namespaces.iter().any(|ns| ns.connected.iter().any(|c| c.dport == port));
        let mut thrifty = FullScans::new(1e-6);
        let first = thrifty.scan();
        assert!(has_conn(&first, port), "the first scan dumps connections");
        assert!(thrifty.fresh_dump().is_some_and(|(d, _)| has_conn(&d, port)), "its dump is fresh once");
        assert!(thrifty.fresh_dump().is_none(), "and only once");
        let late = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let late_port = late.local_addr().unwrap().port();
        let second = thrifty.scan();
        assert!(thrifty.fresh_dump().is_none(), "within the budget the second scan reuses the dump");
        assert!(!thrifty.dumps().running, "no dump is due within the budget");
        assert!(has_conn(&second, port), "reused connections are carried over");
        let listens = |s: &Scan, p: u16| {
            s.namespaces.iter().any(|ns| ns.listening.iter().any(|x| x.sport == p && x.state == TCP_LISTEN))
        };
        assert!(listens(&second, late_port), "listeners are dumped afresh");

        let mut always = FullScans::new(1.0);
        assert!(has_conn(&always.scan(), port), "the first scan dumps connections");
        let _late_conn = std::net::TcpStream::connect(("127.0.0.1", late_port)).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let s = always.scan();
            if always.fresh_dump().is_some_and(|(d, _)| has_conn(&d, late_port)) && has_conn(&s, late_port) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no background dump handed out the late connection");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
