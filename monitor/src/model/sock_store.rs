//! The pools probe's socket-local storage (SOCK_STORE) as the agent sees it. Under its tp_btf row
//! the probe keeps each client socket's record in the socket itself instead of the SOCKS hash, so
//! there is no table to iterate: connects in flight come from the pool counters (attempts minus
//! handshakes ended), and the records themselves are read, when needed, through a sock_diag dump
//! that asks for them (INET_DIAG_REQ_SK_BPF_STORAGES): to tell sockets the probe already follows
//! from ones to seed at start-up, and to reconcile the live count after the kernel skipped a
//! transition (its `recursion_misses` grew).
use std::{
    collections::{HashMap, HashSet},
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{anyhow, Context as _};
use aya::{
    maps::{Map, MapFd},
    Ebpf,
};
use monitor_common::{
    names::maps::{POOL_LIVE, SEEDED, SOCK_STORE},
    PoolKey, PoolStats, SockInfo, SOCK_DONE, TCP_CLOSE, TCP_SYN_SENT,
};

use crate::{
    kernel::maps::{ok, open as map},
    model::pool_ids,
    scan::{
        diag::{self, DiagSocket},
        netns,
    },
};

/// TCP_TIME_WAIT: not a full socket, so it never carries storage.
const TCP_TIME_WAIT: u8 = 6;

/// An fd of SOCK_STORE to name it in sock_diag requests.
pub fn open(ebpf: &Ebpf) -> anyhow::Result<MapFd> {
    match ebpf.map(SOCK_STORE) {
        Some(Map::SkStorage(data)) => {
            data.info().and_then(|i| i.fd()).with_context(|| format!("open an fd of map {SOCK_STORE}"))
        }
        Some(_) => Err(anyhow!("map {SOCK_STORE} is not socket-local storage")),
        None => Err(anyhow!("map {SOCK_STORE} missing from the eBPF object")),
    }
}

/// One socket with a record: its network namespace, what sock_diag says of it, and the record.
pub struct Record {
    pub netns: u64,
    pub sock: DiagSocket,
    pub info: SockInfo,
}

/// Every socket that has a record, in every network namespace.
pub fn records(store: &MapFd) -> anyhow::Result<Vec<Record>> {
    let fd = store.as_fd().as_raw_fd() as u32;
    // TIME_WAIT sockets are not full sockets and carry no storage.
    let states = diag::state_mask(&(1..=12).filter(|&s| s != TCP_TIME_WAIT).collect::<Vec<u8>>());
    let mut out = Vec::new();
    for (ns, dumped) in netns::run_in_each(&netns::discover_reusing(), |_| diag::dump_tcp_storage(states, fd)) {
        let Ok(Ok(socks)) = dumped else { continue };
        out.extend(
            socks.into_iter().filter_map(|(sock, value)| Some(Record { netns: ns, sock, info: decode(&value?)? })),
        );
    }
    Ok(out)
}

/// Pure: a record from the bytes sock_diag returned (None if they are not one).
pub fn decode(value: &[u8]) -> Option<SockInfo> {
    (value.len() == size_of::<SockInfo>())
        // SAFETY: SockInfo is repr(C) plain data (any bytes valid) and the length matches.
        .then(|| unsafe { std::ptr::read_unaligned(value.as_ptr().cast::<SockInfo>()) })
}

/// Pure: (netns, local address, local port) of the sockets the probe counts as open: the
/// sockets the seed must skip.
pub fn tracked(records: &[Record]) -> HashSet<(u32, [u8; 16], u16)> {
    records.iter().filter(|r| counted_open(r)).map(|r| (r.netns as u32, r.info.saddr, r.info.sport)).collect()
}

/// The probe counted this socket's open and not yet its close, and the socket is still open.
fn counted_open(r: &Record) -> bool {
    r.info.established_ns != 0 && r.info.flags & SOCK_DONE == 0 && r.sock.state != TCP_CLOSE
}

/// Pure: connects in flight of a pool by its counters: connect() calls minus handshakes that
/// ended (completed or failed), minus those reconciliation found lost.
pub fn pending(s: &PoolStats, lost: i64) -> i64 {
    let ended = s.opens + s.failures.iter().sum::<u64>();
    (s.attempts as i64 - ended as i64 - lost).max(0)
}

/// What one reconciliation found, per pool.
#[derive(Debug, Default, PartialEq)]
pub struct Found {
    /// Closes the probe missed: its live count says open, no open socket has a live record.
    pub missed_closes: HashMap<PoolKey, i64>,
    /// Handshake ends the probe missed: the counters say in flight, no socket is connecting.
    pub missed_handshakes: HashMap<PoolKey, i64>,
}

/// Pure: compares each pool's counted figures with the records. `counted_live` is the agent's
/// active count (kernel live plus start-up offset), `counted_pending` the counters' connects in
/// flight, `seeded_open` the start-up connections still open; `steady` the pools whose counters
/// did not move while the records were read (the others are left for the next time: a
/// transition in between would look like a missed one).
pub fn reconcile(
    records: &[Record],
    counted_live: &HashMap<PoolKey, i64>,
    counted_pending: &HashMap<PoolKey, i64>,
    seeded_open: &HashMap<PoolKey, i64>,
    steady: &HashSet<PoolKey>,
) -> Found {
    let mut open: HashMap<PoolKey, i64> = HashMap::new();
    let mut connecting: HashMap<PoolKey, i64> = HashMap::new();
    for r in records {
        if counted_open(r) {
            *open.entry(r.info.pool).or_default() += 1;
        } else if r.info.established_ns == 0 && r.info.flags & SOCK_DONE == 0 && r.sock.state == TCP_SYN_SENT {
            *connecting.entry(r.info.pool).or_default() += 1;
        }
    }
    let mut found = Found::default();
    for key in steady {
        let truth = open.get(key).copied().unwrap_or(0) + seeded_open.get(key).copied().unwrap_or(0);
        let extra = counted_live.get(key).copied().unwrap_or(0) - truth;
        if extra > 0 {
            found.missed_closes.insert(*key, extra);
        }
        let stuck = counted_pending.get(key).copied().unwrap_or(0) - connecting.get(key).copied().unwrap_or(0);
        if stuck > 0 {
            found.missed_handshakes.insert(*key, stuck);
        }
    }
    found
}

/// Reads the records between two reads of the pool counters and reconciles the pools whose
/// counters did not move in between. `seeded` is the agent's start-up offset per pool (active =
/// kernel live + offset), `lost_handshakes` what earlier runs found. Returns what was found and
/// whether every pool was steady (nothing left to look at later).
pub fn reconcile_now(
    ebpf: &Ebpf,
    store: &MapFd,
    seeded: &HashMap<PoolKey, i64>,
    lost_handshakes: &HashMap<PoolKey, i64>,
) -> anyhow::Result<(Found, bool)> {
    let ids = pool_ids::ids(ebpf);
    let before = (pool_ids::stats(ebpf, &ids), pool_ids::values(ebpf, POOL_LIVE, &ids));
    let mut seeded_open: HashMap<PoolKey, i64> = HashMap::new();
    if let Ok(m) = map::<aya::maps::HashMap<&aya::maps::MapData, u64, PoolKey>>(ebpf, SEEDED) {
        for (_, key) in m.iter().filter_map(|r| ok(SEEDED, r)) {
            *seeded_open.entry(key).or_default() += 1;
        }
    }
    let recs = records(store)?;
    let (stats, live) = (pool_ids::stats(ebpf, &ids), pool_ids::values(ebpf, POOL_LIVE, &ids));
    let moved = |k: &PoolKey| {
        let sig = |s: Option<&PoolStats>| s.map(|s| (s.attempts, s.opens, s.closes, s.failures));
        sig(before.0.get(k)) != sig(stats.get(k)) || before.1.get(k) != live.get(k)
    };
    let steady: HashSet<PoolKey> = ids.keys().filter(|k| !moved(k)).copied().collect();
    let counted_live =
        ids.keys().map(|k| (*k, live.get(k).copied().unwrap_or(0) + seeded.get(k).copied().unwrap_or(0))).collect();
    let counted_pending =
        stats.iter().map(|(k, s)| (*k, pending(s, lost_handshakes.get(k).copied().unwrap_or(0)))).collect();
    let all_steady = steady.len() == ids.len();
    Ok((reconcile(&recs, &counted_live, &counted_pending, &seeded_open, &steady), all_steady))
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_common::{TCP_ESTABLISHED, TCP_SYN_SENT};

    fn key(port: u16) -> PoolKey {
        PoolKey { cgroup_id: 1, netns: 1, dport: port, family: 2, daddr: [0; 16], comm: [0; 16] }
    }

    fn record(port: u16, sport: u16, established: bool, flags: u16, state: u8) -> Record {
        let info = SockInfo {
            pool: key(port),
            connect_ns: 1,
            established_ns: u64::from(established),
            saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport,
            flags,
            pool_id: 0,
        };
        let sock = DiagSocket {
            family: 2,
            state,
            src: "127.0.0.1".parse().unwrap(),
            sport,
            dst: "127.0.0.1".parse().unwrap(),
            dport: port,
            inode: 0,
            cookie: 0,
            uid: 0,
            rqueue: 0,
            wqueue: 0,
            sk_drops: None,
            cgroup_id: None,
        };
        Record { netns: 1, sock, info }
    }

    #[test]
    fn a_record_round_trips_through_its_bytes() {
        let r = record(6379, 4000, true, 0, TCP_ESTABLISHED);
        // SAFETY: reading a repr(C) value's bytes.
        let bytes =
            unsafe { std::slice::from_raw_parts((&raw const r.info).cast::<u8>(), size_of::<SockInfo>()) }.to_vec();
        assert_eq!(decode(&bytes), Some(r.info));
        assert_eq!(decode(&bytes[1..]), None);
    }

    #[test]
    fn only_open_counted_sockets_are_tracked() {
        let recs = [
            record(6379, 1, true, 0, TCP_ESTABLISHED),
            record(6379, 2, true, SOCK_DONE, TCP_CLOSE),
            record(6379, 3, false, 0, TCP_SYN_SENT),
            record(6379, 4, true, 0, TCP_CLOSE),
        ];
        let t = tracked(&recs);
        assert_eq!(t.len(), 1);
        assert!(t.contains(&(1, recs[0].info.saddr, 1)));
    }

    #[test]
    fn pending_is_attempts_minus_ended_handshakes() {
        let mut s = PoolStats { attempts: 10, opens: 6, ..Default::default() };
        s.failures[1] = 3;
        assert_eq!(pending(&s, 0), 1);
        assert_eq!(pending(&s, 1), 0);
        assert_eq!(pending(&s, 5), 0);
    }

    #[test]
    fn reconciliation_finds_missed_closes_and_handshakes_in_steady_pools_only() {
        // Pool 1: counted 3 live (one seeded, still open) but only one socket has a live record
        // and one has a record whose close was missed (socket CLOSE): one missed close.
        // Counted 2 pending, one socket connecting: one missed handshake end.
        // Pool 2: the same mismatch, but its counters moved while the records were read.
        let recs = [
            record(1, 1, true, 0, TCP_ESTABLISHED),
            record(1, 2, true, 0, TCP_CLOSE),
            record(1, 3, false, 0, TCP_SYN_SENT),
            record(2, 4, true, 0, TCP_ESTABLISHED),
        ];
        let live = HashMap::from([(key(1), 3), (key(2), 5)]);
        let pending = HashMap::from([(key(1), 2), (key(2), 2)]);
        let seeded = HashMap::from([(key(1), 1)]);
        let steady = HashSet::from([key(1)]);
        let found = reconcile(&recs, &live, &pending, &seeded, &steady);
        assert_eq!(found.missed_closes, HashMap::from([(key(1), 1)]));
        assert_eq!(found.missed_handshakes, HashMap::from([(key(1), 1)]));
        // Nothing missed: nothing found.
        let exact = HashMap::from([(key(1), 2)]);
        let one = HashMap::from([(key(1), 1)]);
        assert_eq!(reconcile(&recs, &exact, &one, &seeded, &steady), Found::default());
    }
}
