//! Whole-map reads in a few `bpf()` calls: `BPF_MAP_LOOKUP_BATCH` and
//! `BPF_MAP_LOOKUP_AND_DELETE_BATCH` (Linux 5.6+), which aya 0.14 does not expose. aya's
//! iterators make two system calls per key (next key, then lookup); on a host with 1,500 pools and
//! 1,500 listeners those reads were a sixth of the agent's CPU, and the socket table at 64k
//! sockets is 64k entries. Here a chunk of entries comes back per call. Where the kernel refuses
//! (older kernels, a map type without batch support) the typed readers fall back to aya's per-key
//! reads, say so once at debug level, and do not try again.
use std::{
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicBool, Ordering::Relaxed},
};

use aya::{
    maps::{Array, HashMap, IterableMap, MapData, PerCpuArray, PerCpuHashMap},
    Pod,
};

use super::maps::ok;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;
/// The kernel's internal ENOTSUPP, which some map types return to user space.
const ENOTSUPP: i32 = 524;
/// Bytes of values one call may return: bounds the buffer on hosts with many CPUs (per-CPU maps
/// return a value per possible CPU for each key).
const CHUNK_BYTES: usize = 1 << 20;
/// Entries asked for by the first call of a read.
const FIRST_CHUNK: usize = 128;

/// The `batch` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
const _: () = assert!(size_of::<BatchAttr>() == 56);

/// What a batched call does to the entries it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Lookup,
    /// Hash maps only: the entries returned are deleted.
    LookupAndDelete,
}

/// Entries as the kernel laid them out: keys packed, each key's value (or values, one per
/// possible CPU, each rounded up to 8 bytes) packed.
pub struct Raw {
    pub keys: Vec<u8>,
    pub values: Vec<u8>,
    pub count: usize,
}

/// Every entry of the map behind `fd` (or the first `limit`), `key_size` and `value_size` bytes
/// each (`value_size` covers every CPU's copy for per-CPU maps). Err when the kernel refuses or a
/// call fails; the entries read before a failure are lost, so callers read again another way.
pub fn read_raw(fd: impl AsFd, op: Op, key_size: usize, value_size: usize, limit: Option<usize>) -> io::Result<Raw> {
    let cmd = match op {
        Op::Lookup => BPF_MAP_LOOKUP_BATCH,
        Op::LookupAndDelete => BPF_MAP_LOOKUP_AND_DELETE_BATCH,
    };
    let limit = limit.unwrap_or(usize::MAX);
    // Start small and double: most maps hold far fewer entries than they may, and a buffer sized
    // for the most (half a megabyte for the socket table) costs page faults on every read.
    let most = (CHUNK_BYTES / value_size.max(1)).clamp(16, 4096);
    let mut chunk = FIRST_CHUNK.min(most).min(limit.max(1));
    // Hash maps keep a bucket index in the token, arrays the last key.
    let token_size = key_size.max(8);
    let (mut token_in, mut token_out) = (vec![0u8; token_size], vec![0u8; token_size]);
    let mut out = Raw { keys: Vec::new(), values: Vec::new(), count: 0 };
    let mut first = true;
    loop {
        let want = chunk.min(limit - out.count);
        // Spare capacity, not zeroed: the kernel writes the entries it returns, and only those
        // become part of the vectors.
        out.keys.reserve(want * key_size);
        out.values.reserve(want * value_size);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: out.keys.spare_capacity_mut().as_mut_ptr() as u64,
            values: out.values.spare_capacity_mut().as_mut_ptr() as u64,
            count: want as u32,
            map_fd: fd.as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: attr points at spare capacity for `want` keys and values and two tokens of at
        // least the key size, all alive for the call; the kernel writes only within them.
        let r = unsafe {
            libc::syscall(libc::SYS_bpf, cmd, &mut attr as *mut BatchAttr, size_of::<BatchAttr>() as libc::c_uint)
        };
        let err = (r < 0).then(io::Error::last_os_error);
        let got = (attr.count as usize).min(want);
        let errno = err.as_ref().and_then(io::Error::raw_os_error);
        if matches!(errno, None | Some(libc::ENOENT)) {
            // SAFETY: the kernel wrote `got` keys and values into the spare capacity.
            unsafe {
                out.keys.set_len((out.count + got) * key_size);
                out.values.set_len((out.count + got) * value_size);
            }
            out.count += got;
        }
        match errno {
            None => {}
            Some(libc::ENOENT) => break,
            // A hash bucket holds more entries than `want`: ask for more at once.
            Some(libc::ENOSPC) if got == 0 && want < 1 << 20 && want < limit - out.count => {
                chunk = want * 2;
                continue;
            }
            Some(_) => return Err(err.unwrap_or_else(|| io::Error::other("bpf()"))),
        }
        first = false;
        std::mem::swap(&mut token_in, &mut token_out);
        if out.count >= limit {
            break;
        }
        chunk = (chunk * 2).min(most.max(chunk));
    }
    Ok(out)
}

/// Set once the kernel refused a batched read: every later read goes key by key.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// A batched read of `map`, or None (and a debug line the first time) when the kernel refuses.
fn try_batch(name: &str, map: &MapData, key_size: usize, value_size: usize, limit: Option<usize>) -> Option<Raw> {
    if REFUSED.load(Relaxed) {
        return None;
    }
    match read_raw(map.fd(), Op::Lookup, key_size, value_size, limit) {
        Ok(raw) => Some(raw),
        Err(e) if is_unsupported(&e) => {
            if !REFUSED.swap(true, Relaxed) {
                log::debug!("batched read of eBPF map {name} refused ({e}): reading maps one key per bpf() call");
            }
            None
        }
        Err(e) => {
            log::debug!("batched read of eBPF map {name} failed ({e}): reading it one key per bpf() call this time");
            None
        }
    }
}

/// Whether `e` means the kernel has no batched operation for the map (as opposed to a failure).
pub fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS | ENOTSUPP))
}

/// Values per key in a per-CPU map's buffers: one per possible CPU.
fn possible_cpus() -> usize {
    aya::util::nr_cpus().unwrap_or(1).max(1)
}

const fn stride<V>() -> usize {
    size_of::<V>().div_ceil(8) * 8
}

fn unpack<T: Pod>(bytes: &[u8], size: usize) -> impl Iterator<Item = T> + '_ {
    // SAFETY: T is Pod (any bit pattern is valid) and each chunk holds size >= size_of::<T>() bytes.
    bytes.chunks_exact(size).map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<T>()) })
}

/// Every entry of a hash map (plain or LRU).
pub fn hash<K: Pod, V: Pod>(name: &'static str, m: &HashMap<&MapData, K, V>) -> Vec<(K, V)> {
    match try_batch(name, m.map(), size_of::<K>(), size_of::<V>(), None) {
        Some(raw) => unpack(&raw.keys, size_of::<K>()).zip(unpack(&raw.values, size_of::<V>())).collect(),
        None => m.iter().filter_map(|r| ok(name, r)).collect(),
    }
}

/// Keys with one value per possible CPU each, as flat vectors.
#[derive(Debug, Default)]
pub struct PerCpu<K, V> {
    pub keys: Vec<K>,
    values: Vec<V>,
    cpus: usize,
}

impl<K: Copy, V> PerCpu<K, V> {
    pub fn iter(&self) -> impl Iterator<Item = (K, &[V])> + '_ {
        self.keys.iter().copied().zip(self.values.chunks_exact(self.cpus.max(1)))
    }

    fn from_raw(raw: &Raw, cpus: usize) -> Self
    where
        K: Pod,
        V: Pod,
    {
        Self {
            keys: unpack(&raw.keys, size_of::<K>()).collect(),
            values: unpack(&raw.values, stride::<V>()).collect(),
            cpus,
        }
    }

    fn push(&mut self, key: K, values: impl IntoIterator<Item = V>) {
        self.keys.push(key);
        self.values.extend(values);
    }
}

/// Every entry of a per-CPU hash map (plain or LRU).
pub fn per_cpu_hash<K: Pod, V: Pod>(name: &'static str, m: &PerCpuHashMap<&MapData, K, V>) -> PerCpu<K, V> {
    let cpus = possible_cpus();
    if let Some(raw) = try_batch(name, m.map(), size_of::<K>(), stride::<V>() * cpus, None) {
        return PerCpu::from_raw(&raw, cpus);
    }
    let mut out = PerCpu { keys: Vec::new(), values: Vec::new(), cpus };
    for (k, v) in m.iter().filter_map(|r| ok(name, r)) {
        out.push(k, v.iter().copied());
    }
    out
}

/// The values of keys `0..n` of an array.
pub fn array_prefix<V: Pod>(name: &'static str, m: &Array<&MapData, V>, n: u32) -> Vec<V> {
    if n == 0 {
        return Vec::new();
    }
    match try_batch(name, m.map(), size_of::<u32>(), size_of::<V>(), Some(n as usize)) {
        Some(raw) => unpack(&raw.values, size_of::<V>()).collect(),
        None => (0..n).map_while(|i| ok(name, m.get(&i, 0))).collect(),
    }
}

/// The values of keys `0..n` of a per-CPU array.
pub fn per_cpu_array_prefix<V: Pod>(name: &'static str, m: &PerCpuArray<&MapData, V>, n: u32) -> PerCpu<u32, V> {
    let cpus = possible_cpus();
    if n == 0 {
        return PerCpu { keys: Vec::new(), values: Vec::new(), cpus };
    }
    if let Some(raw) = try_batch(name, m.map(), size_of::<u32>(), stride::<V>() * cpus, Some(n as usize)) {
        return PerCpu::from_raw(&raw, cpus);
    }
    let mut out = PerCpu { keys: Vec::new(), values: Vec::new(), cpus };
    for i in 0..n {
        let Some(v) = ok(name, m.get(&i, 0)) else { break };
        out.push(i, v.iter().copied());
    }
    out
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
