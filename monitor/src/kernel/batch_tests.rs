//! Batched reads against aya's per-key reads of the same live maps (created here with
//! BPF_MAP_CREATE; needs root, as the agent does).
use std::os::fd::{FromRawFd, OwnedFd};

use aya::maps::{Map, MapData, PerCpuValues};

use super::*;

const HASH: u32 = 1;
const ARRAY: u32 = 2;
const PERCPU_HASH: u32 = 5;
const PERCPU_ARRAY: u32 = 6;
const LRU_HASH: u32 = 9;

/// A value that is not a multiple of 8 bytes, so per-CPU strides are exercised.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Val {
    a: u64,
    b: u32,
}
// SAFETY: plain integers, no padding that matters to the kernel (it copies value_size bytes).
unsafe impl Pod for Val {}

fn create(map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> MapData {
    #[repr(C)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    let attr = CreateAttr { map_type, key_size, value_size, max_entries, map_flags: 0 };
    // SAFETY: BPF_MAP_CREATE (0) reads the attr it is given; the result is a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, &attr as *const CreateAttr, size_of::<CreateAttr>() as u32) };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE failed: {} (these tests need root, as the agent does)",
        io::Error::last_os_error()
    );
    // SAFETY: a fresh fd the kernel just returned, owned by nobody else.
    MapData::from_fd(unsafe { OwnedFd::from_raw_fd(fd as i32) }).expect("map from fd")
}

fn cpus() -> usize {
    aya::util::nr_cpus().unwrap()
}

#[test]
fn hash_reads_match_per_key_reads_across_many_chunks() {
    for kind in [HASH, LRU_HASH] {
        // More entries than one call returns, so the batch token is followed.
        let mut map = Map::HashMap(create(kind, 8, size_of::<Val>() as u32, 20_000));
        {
            let mut m = HashMap::<&mut MapData, u64, Val>::try_from(&mut map).unwrap();
            for k in 0..10_000u64 {
                m.insert(k * 7919, Val { a: k, b: k as u32 ^ 0xabcd }, 0).unwrap();
            }
        }
        let m = HashMap::<&MapData, u64, Val>::try_from(&map).unwrap();
        let mut batched = hash("test", &m);
        let mut per_key: Vec<(u64, Val)> = m.iter().map(Result::unwrap).collect();
        batched.sort();
        per_key.sort();
        assert_eq!(batched.len(), 10_000, "map type {kind}");
        assert_eq!(batched, per_key, "map type {kind}");
        assert!(!REFUSED.load(Relaxed), "this kernel (5.6+) should batch");
    }
}

#[test]
fn per_cpu_hash_reads_match_per_key_reads() {
    let mut map = Map::PerCpuHashMap(create(PERCPU_HASH, 8, size_of::<Val>() as u32, 4096));
    let n = cpus();
    {
        let mut m = PerCpuHashMap::<&mut MapData, u64, Val>::try_from(&mut map).unwrap();
        for k in 0..3000u64 {
            let values: Vec<Val> = (0..n).map(|c| Val { a: k * 100 + c as u64, b: c as u32 }).collect();
            m.insert(k, PerCpuValues::try_from(values).unwrap(), 0).unwrap();
        }
    }
    let m = PerCpuHashMap::<&MapData, u64, Val>::try_from(&map).unwrap();
    let batched = per_cpu_hash("test", &m);
    let mut got: Vec<(u64, Vec<Val>)> = batched.iter().map(|(k, v)| (k, v.to_vec())).collect();
    let mut want: Vec<(u64, Vec<Val>)> = m.iter().map(Result::unwrap).map(|(k, v)| (k, v.to_vec())).collect();
    got.sort();
    want.sort();
    assert_eq!(got.len(), 3000);
    assert_eq!(got, want);
    assert_eq!(got[5].1.len(), n);
}

#[test]
fn array_prefixes_match_per_key_reads() {
    let mut map = Map::Array(create(ARRAY, 4, 8, 5000));
    {
        let mut m = Array::<&mut MapData, i64>::try_from(&mut map).unwrap();
        for i in 0..5000u32 {
            m.set(i, i64::from(i) * -3, 0).unwrap();
        }
    }
    let m = Array::<&MapData, i64>::try_from(&map).unwrap();
    for n in [0, 1, 37, 4097, 5000, 6000] {
        let want: Vec<i64> = (0..n.min(5000)).map(|i| m.get(&i, 0).unwrap()).collect();
        assert_eq!(array_prefix("test", &m, n), want, "prefix {n}");
    }

    let mut map = Map::PerCpuArray(create(PERCPU_ARRAY, 4, size_of::<Val>() as u32, 300));
    let cpus = cpus();
    {
        let mut m = PerCpuArray::<&mut MapData, Val>::try_from(&mut map).unwrap();
        for i in 0..300u32 {
            let values: Vec<Val> = (0..cpus).map(|c| Val { a: u64::from(i), b: c as u32 + 1 }).collect();
            m.set(i, PerCpuValues::try_from(values).unwrap(), 0).unwrap();
        }
    }
    let m = PerCpuArray::<&MapData, Val>::try_from(&map).unwrap();
    let got = per_cpu_array_prefix("test", &m, 200);
    let got: Vec<(u32, Vec<Val>)> = got.iter().map(|(k, v)| (k, v.to_vec())).collect();
    let want: Vec<(u32, Vec<Val>)> = (0..200).map(|i| (i, m.get(&i, 0).unwrap().to_vec())).collect();
    assert_eq!(got, want);
}

#[test]
fn lookup_and_delete_empties_a_hash_map() {
    let mut map = Map::HashMap(create(HASH, 8, 8, 8192));
    {
        let mut m = HashMap::<&mut MapData, u64, u64>::try_from(&mut map).unwrap();
        for k in 0..6000u64 {
            m.insert(k, k + 1, 0).unwrap();
        }
    }
    let m = HashMap::<&MapData, u64, u64>::try_from(&map).unwrap();
    let raw = read_raw(m.map().fd(), Op::LookupAndDelete, 8, 8, None).unwrap();
    assert_eq!(raw.count, 6000);
    let mut pairs: Vec<(u64, u64)> = unpack::<u64>(&raw.keys, 8).zip(unpack::<u64>(&raw.values, 8)).collect();
    pairs.sort();
    assert!(pairs.iter().enumerate().all(|(i, &(k, v))| k == i as u64 && v == k + 1));
    assert_eq!(m.keys().count(), 0, "every entry returned was deleted");
}

#[test]
fn a_map_type_without_batches_is_reported_as_unsupported() {
    // Arrays cannot delete: the kernel refuses LOOKUP_AND_DELETE on them.
    let map = create(ARRAY, 4, 8, 4);
    let e = read_raw(map.fd(), Op::LookupAndDelete, 4, 8, None).err().expect("refused");
    assert!(is_unsupported(&e), "{e}");
}
