//! Typed access to the maps the kernel programs fill, by the names in
//! `monitor_common::names::maps`. A read that fails (the map is missing from the object or has
//! another type, a syscall error while iterating) is logged once per map at warn and counted in
//! `connmon_map_read_errors_total{map}`, so a renamed or broken map shows up instead of reading
//! as zero. A key that vanished between listing and reading (LRU eviction, the agent's own
//! deletes) is not an error.
use std::{
    fmt::Display,
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
};

use aya::{
    maps::{Map, MapError},
    Ebpf,
};
use monitor_common::names::maps::ALL;

/// Failed reads per map, in `ALL`'s order.
static ERRORS: [AtomicU64; ALL.len()] = [const { AtomicU64::new(0) }; ALL.len()];
/// Whether the map's first failure was logged.
static WARNED: [AtomicBool; ALL.len()] = [const { AtomicBool::new(false) }; ALL.len()];
/// Whether the agent has read the map at all: only those get a series.
static READ: [AtomicBool; ALL.len()] = [const { AtomicBool::new(false) }; ALL.len()];

fn index(name: &str) -> Option<usize> {
    ALL.iter().position(|n| *n == name)
}

/// Counts a failed read of `map` and logs the first one.
pub fn record(map: &'static str, err: &dyn Display) {
    let Some(i) = index(map) else {
        log::warn!("reading eBPF map {map} (not in monitor_common::names::maps) failed: {err}");
        return;
    };
    READ[i].store(true, Relaxed);
    ERRORS[i].fetch_add(1, Relaxed);
    if !WARNED[i].swap(true, Relaxed) {
        log::warn!(
            "reading eBPF map {map} failed: {err}; its figures are missing or incomplete \
             (counted in connmon_map_read_errors_total, logged once)"
        );
    }
}

fn mark_read(map: &str) {
    if let Some(i) = index(map) {
        READ[i].store(true, Relaxed);
    }
}

/// The map `name` as `T`.
pub fn open<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> anyhow::Result<T>
where
    T: TryFrom<&'a Map>,
    T::Error: Display,
{
    mark_read(name);
    let result = match ebpf.map(name) {
        None => Err(anyhow::anyhow!("map {name} missing from the eBPF object")),
        Some(m) => T::try_from(m).map_err(|e| anyhow::anyhow!("map {name}: {e}")),
    };
    result.inspect_err(|e| record(name, e))
}

/// The map `name` as `T`, writable.
pub fn open_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> anyhow::Result<T>
where
    T: TryFrom<&'a mut Map>,
    T::Error: Display,
{
    mark_read(name);
    let result = match ebpf.map_mut(name) {
        None => Err(anyhow::anyhow!("map {name} missing from the eBPF object")),
        Some(m) => T::try_from(m).map_err(|e| anyhow::anyhow!("map {name}: {e}")),
    };
    result.inspect_err(|e| record(name, e))
}

/// The value of one read or iteration step of `map`; errors are counted, a missing key is not.
pub fn ok<T>(map: &'static str, r: Result<T, MapError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(MapError::KeyNotFound) => None,
        Err(e) => {
            record(map, &e);
            None
        }
    }
}

/// Failed reads so far of every map the agent has read.
pub fn read_errors() -> Vec<(&'static str, u64)> {
    ALL.iter()
        .enumerate()
        .filter(|(i, _)| READ[*i].load(Relaxed))
        .map(|(i, name)| (*name, ERRORS[i].load(Relaxed)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_common::names::maps;

    // The agent never reads LAST_FAILED, so no other test touches its counter.
    #[test]
    fn failures_are_counted_and_a_missing_key_is_not() {
        let before = ERRORS[index(maps::LAST_FAILED).unwrap()].load(Relaxed);
        record(maps::LAST_FAILED, &"boom");
        assert_eq!(ok::<u32>(maps::LAST_FAILED, Err(MapError::KeyNotFound)), None);
        assert_eq!(ok(maps::LAST_FAILED, Ok(7u32)), Some(7));
        let err = MapError::InvalidName { name: "x".into() };
        assert_eq!(ok::<u32>(maps::LAST_FAILED, Err(err)), None);
        let errors: Vec<_> = read_errors().into_iter().filter(|(m, _)| *m == maps::LAST_FAILED).collect();
        assert_eq!(errors, [(maps::LAST_FAILED, before + 2)]);
        assert!(WARNED[index(maps::LAST_FAILED).unwrap()].load(Relaxed));
    }
}
