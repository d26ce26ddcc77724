//! Connection pools (client workload × destination): seeding the kernel tables with connections
//! that were open before the agent started, reading what the probe aggregated, and the scan-only
//! view used by the one-shot command and when the probe is unavailable. A pool's active count is
//! the kernel's opened-minus-closed since start-up plus what was open at start-up, so it never
//! drifts from the live count as long as no event is lost (lost events are counted).
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    Ebpf,
};
use monitor_common::{
    names::maps::{ACCEPTS, LOST, POOL_LIVE, POOL_PEAK, PROTO_SEEN, RETRY_EVENTS, SEEDED, SEEDED_LEFT, SOCKS},
    AcceptKey, PoolKey, PoolStats, RetryEvent, SockInfo, AF_INET, FAIL_REASONS, LOST_REASONS, PROTO_POSTGRES,
    PROTO_REDIS, TCP_LISTEN,
};
use serde::Serialize;

use crate::{
    attribution::cgroups::CgroupNames,
    kernel::{
        batch,
        maps::{ok, open as map, open_mut as map_mut},
    },
    model::pool_ids::{self, Recycler},
    model::services::{self, Services},
    scan::diag::DiagSocket,
    scan::{self, Scan},
};

/// Names of the labels that identify a pool in metrics and alerts, in [`Pool::label_values`] order.
pub const POOL_LABELS: [&str; 5] = ["service", "dst_addr", "dst_port", "comm", "cgroup"];

pub const FAILURE_REASONS: [&str; FAIL_REASONS] = ["refused", "timeout", "unreachable", "aborted", "other"];
pub const CLIENT_CLASSES: [&str; 4] = ["loopback", "private", "link_local", "public"];
pub const LOST_REASON_NAMES: [&str; LOST_REASONS as usize] = [
    "socket_table_full",
    "socket_untracked",
    "pool_table_full",
    "retry_ring_full",
    "unseen_handshake",
    "missed_close",
    "queue_untracked",
];

#[derive(Debug, Clone, Serialize)]
pub struct Pool {
    pub service: String,
    pub classified_by: &'static str,
    pub dst_addr: IpAddr,
    pub dst_port: u16,
    pub comm: String,
    pub cgroup: String,
    pub netns: u64,
    pub active: i64,
    pub peak: i64,
    /// Connects in flight now (SYN_SENT: connect() called, handshake not complete), from the
    /// kernel's socket table; 0 without the pools probe.
    pub pending: i64,
    /// Connections already open when counting began.
    pub seeded: i64,
    pub attempts: Option<u64>,
    pub opens: Option<u64>,
    pub closes: Option<u64>,
    pub failures: Option<u64>,
    pub failure_reasons: Option<BTreeMap<&'static str, u64>>,
    #[serde(skip)]
    pub stats: Option<PoolStats>,
    #[serde(skip)]
    pub key: Option<PoolKey>,
}

impl Pool {
    /// Values of [`POOL_LABELS`]: the one place a pool's identity labels are built.
    pub fn label_values(&self) -> [String; 5] {
        [
            self.service.clone(),
            self.dst_addr.to_string(),
            self.dst_port.to_string(),
            self.comm.clone(),
            self.cgroup.clone(),
        ]
    }
}

/// What one collection of the kernel tables yields besides the pools.
#[derive(Debug, Default)]
pub struct KernelExtras {
    pub lost: [u64; LOST_REASONS as usize],
    pub accepts: HashMap<AcceptKey, u64>,
    /// Closes the probe missed and reconciliation found (the sockets were gone from sock_diag).
    pub missed_closes: u64,
    /// Times the kernel skipped one of connmon's programs because another tracing program was
    /// running on the same CPU.
    pub recursion_misses: u64,
}

pub fn comm_str(c: &[u8; 16]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

/// The kernel keeps TASK_COMM_LEN - 1 = 15 bytes of a name.
fn comm_bytes(s: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let b = s.as_bytes();
    let n = b.len().min(15);
    out[..n].copy_from_slice(&b[..n]);
    out
}

pub fn addr_of(family: u16, bytes: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(*bytes)
    }
}

fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out = a.octets(),
    }
    out
}

/// Connected sockets of a scan that are the client end: their local port is not a listener's.
fn client_sockets(scan: &Scan) -> Vec<(u64, &DiagSocket)> {
    let mut out = Vec::new();
    for ns in &scan.namespaces {
        let listening = ns.listening.iter().map(|s| (s.state == TCP_LISTEN).then_some((s.src, s.sport)));
        for c in &ns.connected {
            // The rule that attributes accepted connections to listeners tells server ends apart.
            if crate::model::listeners::owner_among(listening.clone(), c.src, c.sport).is_none() {
                out.push((ns.inode, c));
            }
        }
    }
    out
}

/// Pool keys of the scan's client sockets, by socket cookie, with owners resolved.
fn keys_of(scan: &Scan, cgroups: &CgroupNames, skip: &HashSet<(u32, [u8; 16], u16)>) -> Vec<(u64, PoolKey)> {
    let clients = client_sockets(scan);
    let owners = scan::owners(clients.iter().map(|(_, c)| c.inode));
    clients
        .into_iter()
        .filter(|(netns, c)| !skip.contains(&(*netns as u32, addr_bytes(c.src), c.sport)))
        .map(|(netns, c)| {
            let owner = owners.get(&c.inode);
            let comm = owner.map(|o| o.comm.as_str()).unwrap_or("");
            // The socket's own cgroup id from sock_diag needs no path lookup, which a private
            // cgroup namespace (a pod) would break; older kernels fall back to the owner's path.
            let cgroup_id = c
                .cgroup_id
                .or_else(|| owner.and_then(|o| o.cgroup.as_deref()).and_then(|p| cgroups.id_of(p)))
                .unwrap_or(0);
            let key = PoolKey {
                cgroup_id,
                netns: netns as u32,
                dport: c.dport,
                family: c.family,
                daddr: addr_bytes(c.dst),
                comm: comm_bytes(comm),
            };
            (c.cookie, key)
        })
        .collect()
}

fn pool_of(key: &PoolKey, services: &Services, cgroups: &mut CgroupNames, protocol: Option<&str>) -> Pool {
    let (service, classified_by) = services.classify(key.dport, protocol);
    Pool {
        service,
        classified_by,
        dst_addr: addr_of(key.family, &key.daddr),
        dst_port: key.dport,
        comm: comm_str(&key.comm),
        cgroup: if key.cgroup_id == 0 { String::new() } else { cgroups.path(key.cgroup_id).unwrap_or_default() },
        netns: u64::from(key.netns),
        active: 0,
        peak: 0,
        pending: 0,
        seeded: 0,
        attempts: None,
        opens: None,
        closes: None,
        failures: None,
        failure_reasons: None,
        stats: None,
        key: Some(*key),
    }
}

fn sort(pools: &mut [Pool]) {
    super::order::sort_by_index(pools, |a, b| {
        b.active.cmp(&a.active).then(a.dst_port.cmp(&b.dst_port)).then(a.comm.cmp(&b.comm))
    });
}

/// Pools as one scan sees them: active connections only (no probe, so no counters).
pub fn from_scan(scan: &Scan, services: &Services, cgroups: &mut CgroupNames) -> Vec<Pool> {
    let mut counts: HashMap<PoolKey, i64> = HashMap::new();
    for (_, key) in keys_of(scan, cgroups, &HashSet::new()) {
        *counts.entry(key).or_default() += 1;
    }
    let mut pools: Vec<Pool> = counts
        .into_iter()
        .map(|(key, n)| Pool { active: n, peak: n, seeded: n, ..pool_of(&key, services, cgroups, None) })
        .collect();
    sort(&mut pools);
    pools
}

/// The agent's side of the kernel pool tables.
pub struct PoolTracker {
    services: Services,
    cgroups: CgroupNames,
    /// Connections open at start-up per pool, still open or closed since (the kernel counts their
    /// closes, so this offset stays fixed).
    seeded: HashMap<PoolKey, i64>,
    /// Last time each pool's counters moved, to drop pools idle for longer than `idle_expiry`.
    last_change: HashMap<PoolKey, (u64, Instant)>,
    idle_expiry: Duration,
    /// Protocol recognised per destination; kept here because the kernel table is per pool and
    /// forgets, while a destination's protocol does not change.
    protocols: HashMap<(IpAddr, u16), &'static str>,
    /// Closes found by reconciliation, per pool (added to the kernel's closes).
    missed: HashMap<PoolKey, u64>,
    missed_total: u64,
    /// Socket-table entries absent from the previous scan: removed if absent again.
    suspects: HashSet<u64>,
    /// Ids of forgotten pools on their way back to the kernel.
    recycler: Recycler,
}

/// A connect() that has not finished its handshake for this long is abandoned in the table: its
/// failure event was missed.
const STALE_CONNECT_NS: u64 = 300_000_000_000;

/// Most destinations whose protocol is remembered; at the bound the memory is emptied (counted in
/// `PROTOCOL_RESETS`) and relearned from the kernel's table.
pub const MAX_PROTOCOL_DESTINATIONS: usize = 65536;

pub static PROTOCOL_RESETS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl PoolTracker {
    pub fn new(services: Services, idle_expiry: Duration) -> Self {
        Self {
            services,
            cgroups: CgroupNames::default(),
            seeded: HashMap::new(),
            last_change: HashMap::new(),
            idle_expiry,
            protocols: HashMap::new(),
            missed: HashMap::new(),
            missed_total: 0,
            suspects: HashSet::new(),
            recycler: Recycler::default(),
        }
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Destinations whose protocol is remembered, and cgroup names remembered.
    pub fn cache_sizes(&self) -> (usize, usize) {
        (self.protocols.len(), self.cgroups.remembered())
    }

    pub fn cgroups(&mut self) -> &mut CgroupNames {
        &mut self.cgroups
    }

    /// Counts the connections that were open before the probe attached. Run once, right after
    /// attaching: sockets the probe already tracks are skipped, and a second scan catches those
    /// that closed before their seed entry existed (exactly one side removes each entry, so each
    /// close is counted once).
    pub fn seed(&mut self, ebpf: &mut Ebpf) -> anyhow::Result<usize> {
        let first = scan::scan(None, scan::Depth::Full);
        let tracked: HashSet<(u32, [u8; 16], u16)> = {
            let socks: BpfHashMap<&MapData, u64, SockInfo> = map(ebpf, SOCKS)?;
            socks
                .iter()
                .filter_map(|r| ok(SOCKS, r))
                .filter(|(_, i)| i.established_ns != 0)
                .map(|(_, i)| (i.pool.netns, i.saddr, i.sport))
                .collect()
        };
        let keys = keys_of(&first, &self.cgroups, &tracked);
        // Before any insert: the kernel skips its SEEDED lookup while this reads 0. An upper
        // bound is all it needs, so the entries removed below are not subtracted.
        let mut left: aya::maps::Array<&mut MapData, i64> = map_mut(ebpf, SEEDED_LEFT)?;
        left.set(0, keys.len() as i64, 0)?;
        {
            let mut seeded: BpfHashMap<&mut MapData, u64, PoolKey> = map_mut(ebpf, SEEDED)?;
            for (cookie, key) in &keys {
                if *cookie != 0 && seeded.insert(cookie, key, 0).is_ok() {
                    *self.seeded.entry(*key).or_default() += 1;
                }
            }
        }
        let second = scan::scan(None, scan::Depth::Full);
        let open: HashSet<u64> =
            second.namespaces.iter().flat_map(|ns| ns.connected.iter().map(|c| c.cookie)).collect();
        let mut seeded: BpfHashMap<&mut MapData, u64, PoolKey> = map_mut(ebpf, SEEDED)?;
        for (cookie, key) in &keys {
            if !open.contains(cookie) && seeded.remove(cookie).is_ok() {
                *self.seeded.entry(*key).or_default() -= 1;
            }
        }
        Ok(keys.len())
    }

    /// Fixes the socket table against a scan taken after `scan_started_ns` (CLOCK_MONOTONIC, as
    /// bpf_ktime_get_ns): the kernel skips a tracing program that would nest inside another on
    /// the same CPU, so a close can be missed, leaving its pool counted one too high. An entry
    /// whose socket is missing from two consecutive scans (and that was established before the
    /// scan began) is removed here; whichever side removes an entry first counts its close, so a
    /// close is never counted twice.
    pub fn reconcile(&mut self, ebpf: &mut Ebpf, scan: &Scan, scan_started_ns: u64) {
        let live: HashSet<(u32, [u8; 16], u16)> = scan
            .namespaces
            .iter()
            .flat_map(|ns| ns.connected.iter().map(move |c| (ns.inode as u32, addr_bytes(c.src), c.sport)))
            .collect();
        // Read in a few batched calls (two system calls per key were 64k-socket hosts' slowest
        // scrape); only the entries found stale are then removed one by one.
        let entries = match map::<BpfHashMap<&MapData, u64, SockInfo>>(ebpf, SOCKS) {
            Ok(socks) => batch::hash(SOCKS, &socks),
            Err(_) => return,
        };
        let Ok(mut socks) = map_mut::<BpfHashMap<&mut MapData, u64, SockInfo>>(ebpf, SOCKS) else { return };
        let mut absent = HashSet::new();
        let mut abandoned = Vec::new();
        for (sk, info) in entries {
            if info.established_ns == 0 {
                if scan_started_ns.saturating_sub(info.connect_ns) > STALE_CONNECT_NS {
                    abandoned.push(sk);
                }
            } else if info.established_ns < scan_started_ns
                && !live.contains(&(info.pool.netns, info.saddr, info.sport))
            {
                absent.insert((sk, info.pool));
            }
        }
        for sk in abandoned {
            let _ = socks.remove(&sk);
        }
        let mut suspects = HashSet::new();
        for (sk, pool) in absent {
            if !self.suspects.contains(&sk) {
                suspects.insert(sk);
            } else if socks.remove(&sk).is_ok() {
                *self.seeded.entry(pool).or_default() -= 1;
                *self.missed.entry(pool).or_default() += 1;
                self.missed_total += 1;
            }
        }
        self.suspects = suspects;
    }

    /// Reads the kernel tables: every pool with its counters, live count and peak. With
    /// `reset_peaks` the peak is reset to the live count, so the next read sees the next period's.
    pub fn collect(&mut self, ebpf: &mut Ebpf, reset_peaks: bool) -> (Vec<Pool>, KernelExtras) {
        let mut extras = KernelExtras { missed_closes: self.missed_total, ..Default::default() };
        let (pending, in_use) = pending_connects(ebpf);
        self.recycler.release(ebpf, &in_use);
        let ids = pool_ids::ids(ebpf);
        let stats = pool_ids::stats(ebpf, &ids);
        let live = pool_ids::values(ebpf, POOL_LIVE, &ids);
        let peaks = pool_ids::values(ebpf, POOL_PEAK, &ids);
        if reset_peaks {
            pool_ids::reset_peaks(ebpf, &ids, &live);
        }
        self.learn_protocols(ebpf);
        let mut keys: HashSet<PoolKey, foldhash::fast::RandomState> = stats.keys().copied().collect();
        keys.extend(live.keys().copied());
        keys.extend(self.seeded.keys().copied());
        let now = Instant::now();
        let mut idle = Vec::new();
        let mut pools = Vec::with_capacity(keys.len());
        for key in keys {
            let mut s = stats.get(&key).copied().unwrap_or_default();
            s.closes += self.missed.get(&key).copied().unwrap_or(0);
            let seeded = self.seeded.get(&key).copied().unwrap_or(0);
            let active = live.get(&key).copied().unwrap_or(0) + seeded;
            let peak = peaks.get(&key).map_or(active, |p| p + seeded).max(active);
            let signature = s.attempts + s.closes + s.failures.iter().sum::<u64>();
            let entry = self.last_change.entry(key).or_insert((signature, now));
            if entry.0 != signature {
                *entry = (signature, now);
            }
            // A pool with a connect in flight keeps its id: that socket's handshake writes to it.
            if active == 0 && now.duration_since(entry.1) >= self.idle_expiry && !pending.contains_key(&key) {
                idle.push(key);
                continue;
            }
            let failures: u64 = s.failures.iter().sum();
            let reasons = FAILURE_REASONS.iter().zip(s.failures).map(|(r, n)| (*r, n)).collect();
            pools.push(Pool {
                active,
                peak,
                pending: pending.get(&key).copied().unwrap_or(0),
                seeded,
                attempts: Some(s.attempts),
                opens: Some(s.opens),
                closes: Some(s.closes),
                failures: Some(failures),
                failure_reasons: Some(reasons),
                stats: Some(s),
                ..pool_of(
                    &key,
                    &self.services,
                    &mut self.cgroups,
                    self.protocols.get(&(addr_of(key.family, &key.daddr), key.dport)).copied(),
                )
            });
        }
        self.forget(ebpf, &idle, &ids);
        if let Ok(lost) = map::<PerCpuArray<&MapData, u64>>(ebpf, LOST) {
            for (i, slot) in extras.lost.iter_mut().enumerate() {
                if let Some(v) = ok(LOST, lost.get(&(i as u32), 0)) {
                    *slot = v.iter().sum();
                }
            }
        }
        if let Ok(acc) = map::<PerCpuHashMap<&MapData, AcceptKey, u64>>(ebpf, ACCEPTS) {
            extras.accepts = batch::per_cpu_hash(ACCEPTS, &acc).iter().map(|(k, v)| (k, v.iter().sum())).collect();
        }
        sort(&mut pools);
        (pools, extras)
    }

    /// The pool `key` names, without figures (its labels).
    pub fn pool_for(&mut self, key: &PoolKey) -> Pool {
        pool_of(
            key,
            &self.services,
            &mut self.cgroups,
            self.protocols.get(&(addr_of(key.family, &key.daddr), key.dport)).copied(),
        )
    }

    /// "service=… dst=… comm=… cgroup=…" for log lines.
    pub fn describe(&mut self, key: &PoolKey) -> String {
        let p = self.pool_for(key);
        format!(
            "service={} dst_addr={} dst_port={} comm={} cgroup={}",
            p.service, p.dst_addr, p.dst_port, p.comm, p.cgroup
        )
    }

    /// Moves what the protocol probe recognised into the per-destination memory.
    fn learn_protocols(&mut self, ebpf: &Ebpf) {
        let Ok(seen) = map::<BpfHashMap<&MapData, PoolKey, u32>>(ebpf, PROTO_SEEN) else { return };
        for (key, proto) in batch::hash(PROTO_SEEN, &seen) {
            let name = match proto {
                PROTO_REDIS => services::REDIS,
                PROTO_POSTGRES => services::POSTGRES,
                _ => continue,
            };
            if self.protocols.len() >= MAX_PROTOCOL_DESTINATIONS {
                self.protocols.clear();
                PROTOCOL_RESETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            self.protocols.insert((addr_of(key.family, &key.daddr), key.dport), name);
        }
    }

    /// Drops idle pools from the kernel tables so they do not fill up: the pool's id leaves
    /// POOL_IDS and is recycled later (`pool_ids::Recycler`). A connect racing the removal keeps
    /// the old id, which is then given back to its pool or kept out of use while it is open.
    fn forget(&mut self, ebpf: &mut Ebpf, keys: &[PoolKey], ids: &pool_ids::HashMap<PoolKey, u32>) {
        if keys.is_empty() {
            return;
        }
        self.recycler.forget(ebpf, keys, ids);
        for k in keys {
            self.seeded.remove(k);
            self.missed.remove(k);
            self.last_change.remove(k);
        }
    }
}

/// Connects in flight per pool: socket-table entries whose handshake has not completed. A failed
/// connect leaves the table at once, so a blackholed server shows here from its first SYN; an
/// entry whose failure event was missed is removed by reconciliation after STALE_CONNECT_NS.
/// Also every pool id the table refers to, with its pool (ids still being written).
fn pending_connects(ebpf: &Ebpf) -> (pool_ids::HashMap<PoolKey, i64>, pool_ids::HashMap<u32, PoolKey>) {
    let mut out = pool_ids::HashMap::default();
    let mut in_use = pool_ids::HashMap::default();
    if let Ok(socks) = map::<BpfHashMap<&MapData, u64, SockInfo>>(ebpf, SOCKS) {
        for (_, info) in batch::hash(SOCKS, &socks) {
            in_use.insert(info.pool_id, info.pool);
            if info.established_ns == 0 {
                *out.entry(info.pool).or_default() += 1;
            }
        }
    }
    (out, in_use)
}

/// Every pool's counters, summed over CPUs.
pub fn read_stats(ebpf: &Ebpf) -> pool_ids::HashMap<PoolKey, PoolStats> {
    pool_ids::stats(ebpf, &pool_ids::ids(ebpf))
}

pub use pool_ids::add_stats;

/// Retry events the kernel queued since the last call.
pub fn drain_retry_events(ebpf: &mut Ebpf) -> Vec<RetryEvent> {
    let Ok(mut ring) = map_mut::<RingBuf<&mut MapData>>(ebpf, RETRY_EVENTS) else { return Vec::new() };
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<RetryEvent>() {
            // SAFETY: the kernel wrote a RetryEvent (repr(C), any bytes valid); read unaligned.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<RetryEvent>()) });
        }
    }
    out
}

/// A pool for other modules' unit tests.
#[cfg(test)]
pub mod tests_support {
    use super::*;

    pub fn pool(comm: &str, active: i64) -> Pool {
        Pool {
            service: "redis".into(),
            classified_by: "port",
            dst_addr: "127.0.0.1".parse().unwrap(),
            dst_port: 6379,
            comm: comm.into(),
            cgroup: "/".into(),
            netns: 1,
            active,
            peak: active,
            pending: 0,
            seeded: 0,
            attempts: None,
            opens: None,
            closes: None,
            failures: None,
            failure_reasons: None,
            stats: None,
            key: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_round_trip_truncates_like_the_kernel() {
        assert_eq!(comm_str(&comm_bytes("redis-benchmark-client")), "redis-benchmark");
        assert_eq!(comm_str(&comm_bytes("py")), "py");
    }

    #[test]
    fn addresses_round_trip() {
        for a in ["10.1.2.3", "::1", "::ffff:127.0.0.1"] {
            let ip: IpAddr = a.parse().unwrap();
            let fam = if ip.is_ipv4() { AF_INET } else { 10 };
            assert_eq!(addr_of(fam, &addr_bytes(ip)), ip);
        }
    }
}
