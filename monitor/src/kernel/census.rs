//! How full each hash map of the kernel programs is: entries counted by walking the keys
//! (BPF_MAP_GET_NEXT_KEY, one syscall per entry, no values read) against the map's
//! `max_entries`. A full non-LRU map refuses new entries (and the programs count that in
//! `connmon_events_lost_total`); a full LRU map evicts its oldest entries silently, so its fill
//! is the only sign. The walk costs a syscall per entry (about 30 ms for a full 64k-entry table),
//! so it runs at most every `EVERY`, not per scrape.
use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _},
    time::{Duration, Instant},
};

use aya::{maps::Map, Ebpf};

/// How often the maps are walked at most.
pub const EVERY: Duration = Duration::from_secs(30);

/// One map's fill at the last walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    pub entries: u32,
    pub max_entries: u32,
}

/// The last walk of every hash map, by map name.
#[derive(Debug, Default)]
pub struct Census {
    pub maps: BTreeMap<String, Fill>,
    last: Option<Instant>,
}

impl Census {
    /// Walks the maps when the last walk is older than `EVERY`.
    pub fn refresh(&mut self, ebpf: &Ebpf) {
        if self.last.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        for (name, map) in ebpf.maps() {
            let data = match map {
                Map::HashMap(d) | Map::LruHashMap(d) | Map::PerCpuHashMap(d) | Map::PerCpuLruHashMap(d) => d,
                _ => continue,
            };
            let Ok(info) = data.info() else { continue };
            if let Some(entries) = count_keys(data.fd().as_fd().as_raw_fd(), info.key_size() as usize) {
                // Entries deleted during the walk restart it from the first key: clamp the overcount.
                let max_entries = info.max_entries();
                self.maps.insert(name.to_string(), Fill { entries: entries.min(max_entries), max_entries });
            }
        }
    }
}

/// Keys in the map behind `fd`, or None when the walk fails.
fn count_keys(fd: i32, key_size: usize) -> Option<u32> {
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
        _rest: [u64; 13],
    }
    let mut key = vec![0u8; key_size.max(1)];
    let mut next = vec![0u8; key_size.max(1)];
    let mut n = 0u32;
    let mut first = true;
    loop {
        let attr = Attr {
            map_fd: fd as u32,
            _pad: 0,
            // A null key asks for the first one.
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
            _rest: [0; 13],
        };
        // SAFETY: BPF_MAP_GET_NEXT_KEY (4) reads `key_size` bytes at `key` and writes as many at
        // `next_key`; both buffers are that long and live across the call.
        let r = unsafe { libc::syscall(libc::SYS_bpf, 4, &attr as *const Attr, std::mem::size_of::<Attr>() as u32) };
        if r != 0 {
            return match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::ENOENT) => Some(n),
                _ => None,
            };
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
        // A map being filled as fast as it is walked cannot keep this going for ever.
        if n > 1 << 24 {
            return Some(n);
        }
    }
}
