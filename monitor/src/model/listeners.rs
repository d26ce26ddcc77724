//! The listener view: one scan over every network namespace that joins sock_diag's listening
//! sockets (accept-queue depth, backlog, drops), their half-open requests (SYN queue), the owning
//! process, the namespace's TcpExt counters, and what the kernel probes saw between scans (peak
//! depth, SYN-ACK retransmits). `PeakTracker` turns instantaneous depths and probe peaks into "the
//! highest depth since the previous collection", whichever of the two is available;
//! model/peak_window.rs widens that to the peak gauges' window.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use monitor_common::{ListenerKey, QueueStats, AF_INET, TCP_LISTEN, TCP_SYN_RECV};
use serde::Serialize;

use crate::{
    kernel::probes::KernelListenerStats,
    scan::diag::DiagSocket,
    scan::procs::Owner,
    scan::{self, Scan},
};

/// Names of the labels that identify a listener in metrics and alerts, in [`Listener::label_values`] order.
/// A unix listener's `addr` is its path (or `@name`) and its `port` is empty.
pub const LISTENER_LABELS: [&str; 5] = ["netns", "family", "addr", "port", "comm"];

/// What identifies a listening socket across scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId {
    pub netns: u64,
    pub addr: IpAddr,
    pub port: u16,
    pub cookie: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Listener {
    #[serde(skip)]
    pub id: ListenerId,
    /// Socket inode, to find the owning process.
    #[serde(skip)]
    pub inode: u64,
    pub netns: u64,
    pub netns_name: Option<String>,
    /// TCP: the bound address (unspecified for unix listeners, which have `path`).
    pub addr: IpAddr,
    pub port: u16,
    /// "ipv4", "ipv6" or "unix".
    pub family: &'static str,
    /// Unix listeners: the socket path, or `@name` for an abstract one.
    pub path: Option<String>,
    /// Unix listeners: "stream" or "seqpacket".
    pub kind: Option<&'static str>,
    pub depth: u32,
    pub backlog: u32,
    pub fill: f64,
    pub drops: u64,
    pub syn_queue: u32,
    /// Connections accepted from this listener that are still open (scans with connections only).
    pub established: u32,
    pub synack_retransmits: Option<u64>,
    /// Connections queued on the listener since the probe attached (handshakes completed).
    #[serde(skip)]
    pub queued: Option<u64>,
    pub peak_depth: u32,
    pub peak_source: PeakSource,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup: Option<String>,
    /// The listening socket's cgroup id (sock_diag), to name `cgroup` when /proc cannot.
    #[serde(skip)]
    pub cgroup_id: Option<u64>,
    /// Queue wait, abandonment and requested backlog (see `queue_wait`).
    #[serde(flatten)]
    pub queue: QueueFigures,
}

impl Listener {
    /// Values of [`LISTENER_LABELS`]: the one place a listener's identity labels are built.
    pub fn label_values(&self) -> [String; 5] {
        let (addr, port) = self.local_labels();
        [self.netns.to_string(), self.family.to_string(), addr, port, self.comm.clone().unwrap_or_default()]
    }

    pub fn is_unix(&self) -> bool {
        self.family == FAMILY_UNIX
    }

    /// The `addr` and `port` labels: a unix listener's path stands in the address, with no port.
    pub fn local_labels(&self) -> (String, String) {
        match &self.path {
            Some(p) if self.is_unix() => (p.clone(), String::new()),
            _ => (self.addr.to_string(), self.port_label()),
        }
    }

    /// The `port` label alone (see `local_labels`).
    pub fn port_label(&self) -> String {
        match &self.path {
            Some(_) if self.is_unix() => String::new(),
            _ => self.port.to_string(),
        }
    }
}

pub const FAMILY_UNIX: &str = "unix";

/// Accept-queue figures of a listener, filled in by `model::queue_wait` (None: unknown, because
/// the probe behind it is not running or the window is still too short).
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueFigures {
    /// Little's law estimate of the current wait in the queue, seconds (+Inf: connections are
    /// queued and none was accepted during the window).
    pub wait_seconds: Option<f64>,
    /// Mean wait of the connections accept() took during the window, measured one by one.
    pub wait_measured_seconds: Option<f64>,
    /// Connections taken off the queue per second over the window.
    pub accept_rate: Option<f64>,
    /// Time to drain a full queue at the current accept rate: backlog / accept rate.
    pub drain_seconds: Option<f64>,
    /// Connections whose client closed (FIN) or reset them while they were still queued.
    pub abandoned: Option<u64>,
    /// Connections accept() returned already closed or reset by their client.
    pub accepted_closed: Option<u64>,
    /// Backlog the owner passed to listen() (negative: "the most allowed"); None when the
    /// `listen()` call happened before the probe attached.
    pub requested_backlog: Option<i64>,
    /// The kernel kept a smaller backlog than was asked for (capped by net.core.somaxconn).
    pub clamped: bool,
    /// The kernel's running counters behind these figures (abandoned by how, the wait
    /// histogram), summed over the listener's addresses.
    #[serde(skip)]
    pub stats: QueueStats,
    /// Draining a full queue takes longer than the client timeout: clients give up first.
    pub slow_drain: bool,
}

impl QueueFigures {
    /// The larger of the two wait figures, for alerts.
    pub fn worst_wait(&self) -> Option<f64> {
        match (self.wait_seconds, self.wait_measured_seconds) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NetnsStats {
    pub inode: u64,
    pub name: Option<String>,
    pub tcp_ext: BTreeMap<String, u64>,
    pub sysctls: BTreeMap<&'static str, i64>,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub listeners: Vec<Listener>,
    pub namespaces: Vec<NetnsStats>,
    /// Namespaces that could not be scanned (vanished mid-scan, or no permission to enter).
    pub netns_errors: u64,
}

/// Builds the listener view from a scan: per-namespace listeners with their SYN queues and
/// established connections, owners resolved, fullest queues first.
pub fn build(scan: &Scan, cgroups: &mut crate::attribution::cgroups::CgroupNames) -> Snapshot {
    let mut snap = Snapshot { netns_errors: scan.failed, ..Default::default() };
    for ns in &scan.namespaces {
        let mut ls = listeners_of(ns.inode, ns.name.clone(), &ns.listening);
        let index = ListenerIndex::new(&ls);
        for c in &ns.connected {
            if let Some(i) = index.owner(ns.inode, c.src, c.sport) {
                ls[i].established += 1;
            }
        }
        snap.listeners.extend(ls);
        snap.listeners.extend(ns.unix.iter().map(|u| unix_listener(ns.inode, ns.name.clone(), u)));
        snap.namespaces.push(NetnsStats {
            inode: ns.inode,
            name: ns.name.clone(),
            tcp_ext: ns.tcp_ext.clone(),
            sysctls: ns.sysctls.clone(),
        });
    }
    let owners = scan::owners(snap.listeners.iter().map(|l| l.inode));
    for l in &mut snap.listeners {
        if let Some(Owner { pid, comm, cgroup }) = owners.get(&l.inode) {
            l.pid = Some(*pid);
            l.comm = Some(comm.clone());
            l.cgroup = cgroup.clone();
        }
        // In a private cgroup namespace (the agent in a pod) /proc shows other cgroups relative
        // to ours ("/../../kubepods.slice/..."); the socket's cgroup id names it from the host's
        // mount instead.
        let relative = l.cgroup.as_deref().is_none_or(|c| c.starts_with("/.."));
        if let Some(id) = l.cgroup_id.filter(|_| relative) {
            if let Some(path) = cgroups.path(id) {
                l.cgroup = Some(path);
            }
        }
    }
    super::order::sort_by_index(&mut snap.listeners, |a, b| {
        b.fill.total_cmp(&a.fill).then(a.netns.cmp(&b.netns)).then(a.port.cmp(&b.port))
    });
    snap
}

/// Listeners of one namespace, with their SYN-queue length counted from the request sockets
/// (`ss -tn state syn-recv` counts the same entries).
fn listeners_of(netns: u64, netns_name: Option<String>, socks: &[DiagSocket]) -> Vec<Listener> {
    let mut out: Vec<Listener> = socks
        .iter()
        .filter(|s| s.state == TCP_LISTEN)
        .map(|s| Listener {
            id: ListenerId { netns, addr: s.src, port: s.sport, cookie: s.cookie },
            inode: s.inode,
            netns,
            netns_name: netns_name.clone(),
            addr: s.src,
            port: s.sport,
            family: if s.family == AF_INET { "ipv4" } else { "ipv6" },
            path: None,
            kind: None,
            depth: s.rqueue,
            backlog: s.wqueue,
            fill: if s.wqueue == 0 { 0.0 } else { f64::from(s.rqueue) / f64::from(s.wqueue) },
            drops: u64::from(s.sk_drops.unwrap_or(0)),
            syn_queue: 0,
            established: 0,
            synack_retransmits: None,
            queued: None,
            peak_depth: s.rqueue,
            peak_source: PeakSource::Sampled,
            pid: None,
            comm: None,
            cgroup: None,
            cgroup_id: s.cgroup_id,
            queue: QueueFigures::default(),
        })
        .collect();
    let index = ListenerIndex::new(&out);
    for req in socks.iter().filter(|s| s.state == TCP_SYN_RECV) {
        if let Some(i) = index.owner(netns, req.src, req.sport) {
            out[i].syn_queue += 1;
        }
    }
    out
}

/// A unix listener from sock_diag. It has no address or port: its identity is its cookie.
fn unix_listener(netns: u64, netns_name: Option<String>, u: &crate::scan::unix_diag::UnixListenerSock) -> Listener {
    let unspecified = IpAddr::from([0, 0, 0, 0]);
    Listener {
        id: ListenerId { netns, addr: unspecified, port: 0, cookie: u.cookie },
        inode: u.inode,
        netns,
        netns_name,
        addr: unspecified,
        port: 0,
        family: FAMILY_UNIX,
        path: Some(u.name.clone()),
        kind: Some(u.kind),
        depth: u.depth,
        backlog: u.backlog,
        fill: if u.backlog == 0 { 0.0 } else { f64::from(u.depth) / f64::from(u.backlog) },
        // A full unix queue blocks connect() or fails it with EAGAIN; the kernel counts no drops.
        drops: 0,
        syn_queue: 0,
        established: 0,
        synack_retransmits: None,
        queued: None,
        peak_depth: u.depth,
        peak_source: PeakSource::Sampled,
        pid: None,
        comm: None,
        cgroup: None,
        cgroup_id: None,
        queue: QueueFigures::default(),
    }
}

/// The TCP listener in namespace `netns` that a connection to `addr:port` belongs to: an exact
/// address match first, then a wildcard of the same family, then a dual-stack IPv6 wildcard.
/// Linear: the reference [`ListenerIndex::owner`] is tested against.
#[cfg(test)]
fn owning_listener(listeners: &[Listener], netns: u64, addr: IpAddr, port: u16) -> Option<usize> {
    owner_among(listeners.iter().map(|l| (l.netns == netns && !l.is_unix()).then_some((l.addr, l.port))), addr, port)
}

/// The same rule over bare (address, port) pairs of one namespace (None: not a candidate); the
/// index is the position in `listening`.
pub fn owner_among<I>(listening: I, addr: IpAddr, port: u16) -> Option<usize>
where
    I: Iterator<Item = Option<(IpAddr, u16)>> + Clone,
{
    let candidates =
        || listening.clone().enumerate().filter_map(move |(i, l)| l.filter(|(_, p)| *p == port).map(|(a, _)| (i, a)));
    candidates()
        .find(|(_, a)| *a == addr)
        .or_else(|| candidates().find(|(_, a)| a.is_unspecified() && a.is_ipv4() == addr.is_ipv4()))
        .or_else(|| candidates().find(|(_, a)| a.is_unspecified() && a.is_ipv6()))
        .map(|(i, _)| i)
}

/// Converts a kernel-side key to the address it names.
pub fn key_addr(key: &ListenerKey) -> IpAddr {
    if key.family == AF_INET {
        IpAddr::from([key.addr[0], key.addr[1], key.addr[2], key.addr[3]])
    } else {
        IpAddr::from(key.addr)
    }
}

/// Finds the listener a kernel key refers to: by socket cookie when the kernel had one, else by
/// namespace, address and port (the first scan assigns cookies, so this is the rare case).
/// Linear; [`ListenerIndex::find`] answers the same through its maps.
#[cfg(test)]
fn find_listener(listeners: &[Listener], key: &ListenerKey) -> Option<usize> {
    if key.cookie != 0 {
        if let Some(i) = listeners.iter().position(|l| l.id.cookie == key.cookie) {
            return Some(i);
        }
    }
    let addr = key_addr(key);
    listeners
        .iter()
        .position(|l| !l.is_unix() && l.netns == u64::from(key.netns) && l.port == key.port && l.addr == addr)
}

/// Positions of a listener list's TCP listeners by (namespace, port), and of every listener by
/// cookie, so that matching each connection, SYN_RECV request and kernel key to its listener is a
/// hash lookup instead of a scan of the list (on a host with thousands of listeners, the scans
/// were a tenth of the agent's CPU). Answers exactly as [`owning_listener`] and the linear
/// search by key did: the candidates of a (namespace, port) keep the list's order, and the same
/// rule picks among them.
pub struct ListenerIndex {
    by_port: HashMap<(u64, u16), Vec<(IpAddr, usize)>, foldhash::fast::RandomState>,
    by_cookie: HashMap<u64, usize, foldhash::fast::RandomState>,
}

impl ListenerIndex {
    pub fn new(listeners: &[Listener]) -> Self {
        let mut by_port: HashMap<_, Vec<_>, _> = HashMap::with_capacity_and_hasher(listeners.len(), Default::default());
        let mut by_cookie = HashMap::with_capacity_and_hasher(listeners.len(), Default::default());
        for (i, l) in listeners.iter().enumerate() {
            if !l.is_unix() {
                by_port.entry((l.netns, l.port)).or_default().push((l.addr, i));
            }
            // The first listener with a cookie wins, as the linear search's `position` did.
            by_cookie.entry(l.id.cookie).or_insert(i);
        }
        Self { by_port, by_cookie }
    }

    /// [`owning_listener`] for the indexed list.
    pub fn owner(&self, netns: u64, addr: IpAddr, port: u16) -> Option<usize> {
        let candidates = self.by_port.get(&(netns, port))?;
        owner_among(candidates.iter().map(|&(a, _)| Some((a, port))), addr, port).map(|j| candidates[j].1)
    }

    /// The listener a kernel key refers to: by socket cookie when the kernel had one, else by
    /// namespace, address and port (the first scan assigns cookies, so this is the rare case).
    pub fn find(&self, key: &ListenerKey) -> Option<usize> {
        if key.cookie != 0 {
            if let Some(&i) = self.by_cookie.get(&key.cookie) {
                return Some(i);
            }
        }
        let addr = key_addr(key);
        let candidates = self.by_port.get(&(u64::from(key.netns), key.port))?;
        candidates.iter().find(|(a, _)| *a == addr).map(|&(_, i)| i)
    }
}

/// Where a listener's peak depth came from: the kernel's per-enqueue probe, or scans only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeakSource {
    Ebpf,
    Sampled,
}

impl PeakSource {
    /// The `source` label.
    pub fn as_str(self) -> &'static str {
        match self {
            PeakSource::Ebpf => "ebpf",
            PeakSource::Sampled => "sampled",
        }
    }
}

/// Keeps "highest accept-queue depth since the previous collection" per listener. Fed with each
/// scan's instantaneous depths and, when the `listen_peak` probe is up, the kernel's per-event peaks, so
/// a burst that was queued and drained between two scrapes still shows.
#[derive(Debug)]
pub struct PeakTracker {
    acc: HashMap<ListenerId, u32>,
    source: PeakSource,
}

impl PeakTracker {
    pub fn new(probe_up: bool) -> Self {
        Self { acc: HashMap::new(), source: if probe_up { PeakSource::Ebpf } else { PeakSource::Sampled } }
    }

    /// Folds one scan (and what the probes saw since the last one) into the running maxima and
    /// fills in the per-listener kernel counters.
    pub fn observe(&mut self, listeners: &mut [Listener], kernel: &KernelListenerStats, counters_up: bool) {
        let index = ListenerIndex::new(listeners);
        if self.source == PeakSource::Ebpf {
            for l in listeners.iter_mut() {
                l.queued = Some(0);
            }
            for (key, c) in &kernel.counters {
                if let Some(i) = index.find(key) {
                    *listeners[i].queued.get_or_insert(0) += c.queued;
                }
            }
        }
        for l in listeners.iter() {
            let e = self.acc.entry(l.id).or_insert(0);
            *e = (*e).max(l.depth);
        }
        for (key, peak) in &kernel.peaks {
            if let Some(i) = index.find(key) {
                let e = self.acc.entry(listeners[i].id).or_insert(0);
                *e = (*e).max(peak.depth);
            }
        }
        if counters_up {
            for l in listeners.iter_mut() {
                l.synack_retransmits = Some(0);
            }
            for (key, c) in &kernel.counters {
                if let Some(i) = index.find(key) {
                    *listeners[i].synack_retransmits.get_or_insert(0) += c.synack_retransmits;
                }
            }
        }
    }

    /// Writes the peaks into `listeners` and starts a new period.
    pub fn report(&mut self, listeners: &mut [Listener]) {
        for l in listeners.iter_mut() {
            l.peak_depth = self.acc.get(&l.id).copied().unwrap_or(l.depth).max(l.depth);
            l.peak_source = self.source;
        }
        self.acc.clear();
    }
}

/// "netns=… addr=… port=… comm=…", naming a listener in log lines and reports.
pub fn describe(l: &Listener) -> String {
    let (addr, port) = l.local_labels();
    format!("netns={} addr={addr} port={port} comm={}", l.netns, l.comm.as_deref().unwrap_or(""))
}

/// A listener for other modules' unit tests.
#[cfg(test)]
pub mod tests_support {
    use super::*;

    pub fn listener(depth: u32, backlog: u32) -> Listener {
        let s = DiagSocket {
            family: 2,
            state: TCP_LISTEN,
            src: "127.0.0.1".parse().unwrap(),
            sport: 8080,
            dst: "0.0.0.0".parse().unwrap(),
            dport: 0,
            inode: 1,
            cookie: 9,
            uid: 0,
            rqueue: depth,
            wqueue: backlog,
            sk_drops: Some(0),
            cgroup_id: None,
        };
        listeners_of(7, None, &[s]).remove(0)
    }
}

#[cfg(test)]
#[path = "listeners_tests.rs"]
mod tests;
