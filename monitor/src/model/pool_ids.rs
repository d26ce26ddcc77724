//! The agent's side of the kernel's pool ids: the kernel resolves a pool key to a small id once
//! per connect() (POOL_IDS) and keeps the pool's counters, live count and peak in arrays indexed
//! by it. This module reads those arrays by key, and recycles the ids of pools the tracker
//! forgets: the key leaves POOL_IDS at once, the id waits in quarantine for at least
//! `QUARANTINE` and until no socket-table entry refers to it (a program that looked the id up
//! just before the removal may still write to it), then its slots are zeroed and it goes back to
//! FREE_POOL_IDS. Each removal raises POOL_EPOCH, which retires every CPU's cached key -> id
//! (POOL_ID_CACHE), so a cached id is never older than a lookup racing the removal.
use std::time::{Duration, Instant};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues, Queue},
    Ebpf,
};
use monitor_common::{
    names::maps::{FREE_POOL_IDS, POOL_EPOCH, POOL_IDS, POOL_LIVE, POOL_PEAK, POOL_STATS},
    PoolKey, PoolStats,
};

use crate::kernel::{
    batch,
    maps::{open as map, open_mut as map_mut},
};

/// Maps keyed by pool key or id, read on every collection: hashed with foldhash (std's SipHash
/// over the 48-byte keys was a tenth of the pool tables' read on a fleet host).
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Least time a forgotten pool's id waits before it is zeroed and handed out again.
pub const QUARANTINE: Duration = Duration::from_secs(1);

/// Pool ids by key, as the kernel assigned them.
pub fn ids(ebpf: &Ebpf) -> HashMap<PoolKey, u32> {
    map::<BpfHashMap<&MapData, PoolKey, u32>>(ebpf, POOL_IDS)
        .map(|m| batch::hash(POOL_IDS, &m).into_iter().collect())
        .unwrap_or_default()
}

/// One more than the highest id in `ids`: the prefix of the per-pool arrays worth reading in one
/// batch (ids are handed out from 0 up, so the prefix is about as long as the pools are many).
fn prefix(ids: &HashMap<PoolKey, u32>) -> u32 {
    ids.values().max().map_or(0, |m| m + 1)
}

/// Every pool's counters, summed over CPUs.
pub fn stats(ebpf: &Ebpf, ids: &HashMap<PoolKey, u32>) -> HashMap<PoolKey, PoolStats> {
    let Ok(m) = map::<PerCpuArray<&MapData, PoolStats>>(ebpf, POOL_STATS) else {
        return HashMap::default();
    };
    let all = batch::per_cpu_array_prefix(POOL_STATS, &m, prefix(ids));
    let by_id: HashMap<u32, &[PoolStats]> = all.iter().collect();
    ids.iter()
        .filter_map(|(key, id)| {
            let per_cpu = by_id.get(id)?;
            let mut sum = PoolStats::default();
            for v in per_cpu.iter() {
                add_stats(&mut sum, v);
            }
            Some((*key, sum))
        })
        .collect()
}

/// Every pool's slot of one of the i64 arrays (POOL_LIVE, POOL_PEAK).
pub fn values(ebpf: &Ebpf, name: &'static str, ids: &HashMap<PoolKey, u32>) -> HashMap<PoolKey, i64> {
    let Ok(m) = map::<Array<&MapData, i64>>(ebpf, name) else {
        return HashMap::default();
    };
    let all = batch::array_prefix(name, &m, prefix(ids));
    ids.iter().filter_map(|(key, id)| Some((*key, *all.get(*id as usize)?))).collect()
}

/// Sets each pool's peak to its live count, so the next read sees the next period's peak.
pub fn reset_peaks(ebpf: &mut Ebpf, ids: &HashMap<PoolKey, u32>, live: &HashMap<PoolKey, i64>) {
    let Ok(mut m) = map_mut::<Array<&mut MapData, i64>>(ebpf, POOL_PEAK) else { return };
    for (key, id) in ids {
        if let Err(e) = m.set(*id, live.get(key).copied().unwrap_or(0), 0) {
            crate::kernel::maps::record(POOL_PEAK, &e);
        }
    }
}

pub fn add_stats(sum: &mut PoolStats, v: &PoolStats) {
    sum.attempts += v.attempts;
    sum.opens += v.opens;
    sum.closes += v.closes;
    for (a, b) in sum.failures.iter_mut().zip(v.failures) {
        *a += b;
    }
    for (a, b) in sum.connect_us.iter_mut().zip(v.connect_us) {
        *a += b;
    }
    for (a, b) in sum.lifetime_ms.iter_mut().zip(v.lifetime_ms) {
        *a += b;
    }
    sum.connect_us_sum += v.connect_us_sum;
    sum.lifetime_ms_sum += v.lifetime_ms_sum;
    sum.syn_retransmits += v.syn_retransmits;
    sum.resets_received += v.resets_received;
    sum.resets_sent += v.resets_sent;
    sum.short_lived += v.short_lived;
    sum.died_reset += v.died_reset;
    sum.died_server_closed += v.died_server_closed;
}

/// Ids of forgotten pools on their way back to the free queue.
#[derive(Debug, Default)]
pub struct Recycler {
    /// Id, the key it had, and when it was forgotten.
    quarantine: Vec<(u32, PoolKey, Instant)>,
    /// The last POOL_EPOCH written.
    epoch: u64,
}

impl Recycler {
    /// Ids waiting (a gauge's worth: they are neither free nor in use).
    pub fn waiting(&self) -> usize {
        self.quarantine.len()
    }

    /// Removes `keys` from POOL_IDS; their ids wait in quarantine.
    pub fn forget(&mut self, ebpf: &mut Ebpf, keys: &[PoolKey], ids: &HashMap<PoolKey, u32>) {
        let Ok(mut m) = map_mut::<BpfHashMap<&mut MapData, PoolKey, u32>>(ebpf, POOL_IDS) else { return };
        let now = Instant::now();
        let mut removed = false;
        for key in keys {
            if let Some(id) = ids.get(key) {
                if m.remove(key).is_ok() {
                    self.quarantine.push((*id, *key, now));
                    removed = true;
                }
            }
        }
        // After the removals: a connect that reads the new epoch also misses the removed keys.
        // Were the raise lost, a CPU could serve a removed pool its old id; a failure is counted
        // in connmon_map_read_errors_total like any other map access.
        if removed {
            self.epoch += 1;
            if let Ok(mut e) = map_mut::<Array<&mut MapData, u64>>(ebpf, POOL_EPOCH) {
                if let Err(err) = e.set(0, self.epoch, 0) {
                    crate::kernel::maps::record(POOL_EPOCH, &err);
                }
            }
        }
    }

    /// Hands back the ids whose quarantine is over. `in_use` is every id the socket table refers
    /// to, with its socket's pool: such an id is still being written. If its pool has no id
    /// again, the id is given back to it (the pool's counters continue); otherwise it waits until
    /// those sockets are gone.
    pub fn release(&mut self, ebpf: &mut Ebpf, in_use: &HashMap<u32, PoolKey>) {
        let (free, adopt) = self.due(Instant::now(), in_use);
        if let Ok(mut m) = map_mut::<BpfHashMap<&mut MapData, PoolKey, u32>>(ebpf, POOL_IDS) {
            for (id, pool) in adopt {
                // Fails when the pool has another id by now: then this one waits for its sockets.
                if m.insert(pool, id, 1 /* BPF_NOEXIST */).is_err() {
                    self.quarantine.push((id, pool, Instant::now()));
                }
            }
        }
        if free.is_empty() {
            return;
        }
        zero(ebpf, &free);
        let Ok(mut q) = map_mut::<Queue<&mut MapData, u32>>(ebpf, FREE_POOL_IDS) else { return };
        for id in free {
            if let Err(e) = q.push(id, 0) {
                crate::kernel::maps::record(FREE_POOL_IDS, &e);
            }
        }
    }

    /// Takes the ids whose quarantine is over out of it: those no socket refers to (to free),
    /// and those a socket still refers to, with that socket's pool (to give back to it).
    fn due(&mut self, now: Instant, in_use: &HashMap<u32, PoolKey>) -> (Vec<u32>, Vec<(u32, PoolKey)>) {
        let (due, wait): (Vec<_>, Vec<_>) =
            self.quarantine.drain(..).partition(|(_, _, at)| now.duration_since(*at) >= QUARANTINE);
        self.quarantine = wait;
        let mut free = Vec::new();
        let mut adopt = Vec::new();
        for (id, _, _) in due {
            match in_use.get(&id) {
                None => free.push(id),
                Some(pool) => adopt.push((id, *pool)),
            }
        }
        (free, adopt)
    }
}

/// Clears the slots of `ids` in every per-pool array, so a pool given one of them starts at zero.
fn zero(ebpf: &mut Ebpf, ids: &[u32]) {
    if let Ok(mut m) = map_mut::<PerCpuArray<&mut MapData, PoolStats>>(ebpf, POOL_STATS) {
        let cpus = aya::util::nr_cpus().map_or(1, |n| n);
        for id in ids {
            let Ok(zeros) = PerCpuValues::try_from(vec![PoolStats::default(); cpus]) else { continue };
            if let Err(e) = m.set(*id, zeros, 0) {
                crate::kernel::maps::record(POOL_STATS, &e);
            }
        }
    }
    for name in [POOL_LIVE, POOL_PEAK] {
        if let Ok(mut m) = map_mut::<Array<&mut MapData, i64>>(ebpf, name) {
            for id in ids {
                if let Err(e) = m.set(*id, 0, 0) {
                    crate::kernel::maps::record(name, &e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> PoolKey {
        PoolKey {
            cgroup_id: 1,
            netns: 2,
            dport: port,
            family: 2,
            daddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            comm: [0; 16],
        }
    }

    #[test]
    fn an_id_is_freed_only_after_its_quarantine_and_while_no_socket_holds_it() {
        let t0 = Instant::now();
        let mut r =
            Recycler { quarantine: vec![(7, key(1), t0), (8, key(2), t0), (9, key(3), t0 + QUARANTINE)], epoch: 0 };
        // Too early for all of them.
        assert_eq!(r.due(t0, &HashMap::default()), (vec![], vec![]));
        assert_eq!(r.waiting(), 3);
        // 7 is free; a socket of pool 2 still writes to 8, so 8 goes back to that pool; 9 waits on.
        let in_use = HashMap::from_iter([(8, key(2))]);
        assert_eq!(r.due(t0 + QUARANTINE, &in_use), (vec![7], vec![(8, key(2))]));
        assert_eq!(r.waiting(), 1);
        assert_eq!(r.due(t0 + 2 * QUARANTINE, &HashMap::default()), (vec![9], vec![]));
        assert_eq!(r.waiting(), 0);
    }
}
