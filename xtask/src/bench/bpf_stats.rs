//! The kernel's own accounting of eBPF programs: with statistics on, every program keeps
//! `run_time_ns` and `run_cnt`, which `bpftool -j prog show` reports. Statistics are switched on
//! with `bpf(BPF_ENABLE_STATS)`, which holds them on only while its descriptor is open: the kernel
//! switches them back off when the bench exits, however it exits, and the
//! `kernel.bpf_stats_enabled` sysctl keeps whatever someone else set. Kernels without that command
//! (before 5.8) get the sysctl, put back as it was when the guard is dropped.

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::which;

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// `enum bpf_cmd`: BPF_ENABLE_STATS.
const BPF_ENABLE_STATS: libc::c_long = 32;
/// `enum bpf_stats_type`: BPF_STATS_RUN_TIME.
const BPF_STATS_RUN_TIME: u32 = 0;

/// Keeps statistics on while alive.
pub(super) enum StatsOn {
    /// The descriptor from BPF_ENABLE_STATS; closing it ends this holder's share.
    Fd(#[allow(dead_code)] OwnedFd),
    /// The sysctl was written; the value it had before.
    Sysctl(String),
}

impl StatsOn {
    pub(super) fn enable() -> Result<StatsOn> {
        // union bpf_attr's enable_stats member: one u32, padded like the kernel expects.
        let attr: [u32; 2] = [BPF_STATS_RUN_TIME, 0];
        // SAFETY: bpf(2) with a pointer to a live, correctly sized attribute block.
        let fd = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, attr.as_ptr(), std::mem::size_of_val(&attr) as libc::c_uint)
        };
        if fd >= 0 {
            // SAFETY: a descriptor the kernel just gave us, owned by nobody else.
            return Ok(StatsOn::Fd(unsafe { OwnedFd::from_raw_fd(fd as i32) }));
        }
        let before = std::fs::read_to_string(SYSCTL)
            .with_context(|| format!("cannot read {SYSCTL} (kernel without eBPF statistics?)"))?;
        std::fs::write(SYSCTL, "1").with_context(|| format!("cannot turn eBPF statistics on: write 1 to {SYSCTL}"))?;
        Ok(StatsOn::Sysctl(before.trim().to_owned()))
    }

    pub(super) fn how(&self) -> &'static str {
        match self {
            StatsOn::Fd(_) => "bpf(BPF_ENABLE_STATS), off again when the bench exits",
            StatsOn::Sysctl(_) => "kernel.bpf_stats_enabled=1, put back at the end",
        }
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        if let StatsOn::Sysctl(before) = self {
            if let Err(e) = std::fs::write(SYSCTL, before.as_bytes()) {
                eprintln!("warning: cannot put {SYSCTL} back to {before}: {e}; run `sysctl -w kernel.bpf_stats_enabled={before}`");
            }
        }
    }
}

/// One program's counters at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct ProgStats {
    pub(super) name: String,
    pub(super) run_time_ns: u64,
    pub(super) run_cnt: u64,
}

/// Every loaded program's counters, by program id.
pub(super) type Snapshot = BTreeMap<u64, ProgStats>;

pub(super) fn preflight() -> Result<()> {
    if which("bpftool").is_none() {
        bail!("bpftool is not on PATH (the bench reads eBPF run times with it): run `cargo xtask setup` (or `apt-get install -y bpftool`)");
    }
    Ok(())
}

/// `bpftool -j prog show`, parsed.
pub(super) fn snapshot() -> Result<Snapshot> {
    let out = Command::new("bpftool").args(["-j", "prog", "show"]).output().context("cannot run bpftool")?;
    if !out.status.success() {
        bail!("`bpftool -j prog show` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    parse(&out.stdout).context("cannot read `bpftool -j prog show` output")
}

fn parse(json: &[u8]) -> Result<Snapshot> {
    let v: serde_json::Value = serde_json::from_slice(json)?;
    let progs = v.as_array().context("not a JSON array")?;
    let mut snap = Snapshot::new();
    for p in progs {
        let Some(id) = p.get("id").and_then(|x| x.as_u64()) else { continue };
        // bpftool leaves both counters out while a program has not run with statistics on.
        let num = |k: &str| p.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        let name = p.get("name").and_then(|x| x.as_str()).unwrap_or("").to_owned();
        snap.insert(id, ProgStats { name, run_time_ns: num("run_time_ns"), run_cnt: num("run_cnt") });
    }
    Ok(snap)
}

/// What the programs in `ids` ran between `before` and `after`, by program name (programs that
/// share a name are added up; one gone from `after` is an error: it was unloaded mid-round).
pub(super) fn delta(ids: &[u64], before: &Snapshot, after: &Snapshot) -> Result<BTreeMap<String, ProgStats>> {
    let mut by_name: BTreeMap<String, ProgStats> = BTreeMap::new();
    for id in ids {
        let (Some(a), Some(b)) = (before.get(id), after.get(id)) else {
            bail!("eBPF program {id} was unloaded during the round");
        };
        let e =
            by_name.entry(b.name.clone()).or_insert_with(|| ProgStats { name: b.name.clone(), ..Default::default() });
        e.run_time_ns += b.run_time_ns.saturating_sub(a.run_time_ns);
        e.run_cnt += b.run_cnt.saturating_sub(a.run_cnt);
    }
    Ok(by_name)
}

/// Programs in `now` that were not in `before`: those a probe just loaded.
pub(super) fn new_ids(before: &Snapshot, now: &Snapshot) -> Vec<u64> {
    now.keys().filter(|id| !before.contains_key(id)).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bpftool_and_takes_deltas() {
        let before = parse(
            br#"[{"id":7,"type":"tracing","name":"sk_data_ready_b"},
            {"id":9,"type":"tracepoint","name":"inet_sock_set_s","run_time_ns":100,"run_cnt":2}]"#,
        )
        .unwrap();
        let after = parse(
            br#"[{"id":7,"type":"tracing","name":"sk_data_ready_b","run_time_ns":50,"run_cnt":5},
            {"id":9,"type":"tracepoint","name":"inet_sock_set_s","run_time_ns":400,"run_cnt":8},
            {"id":11,"type":"tracepoint","name":"other"}]"#,
        )
        .unwrap();
        assert_eq!(new_ids(&before, &after), vec![11]);
        let d = delta(&[7, 9], &before, &after).unwrap();
        assert_eq!(d["sk_data_ready_b"].run_time_ns, 50);
        assert_eq!(d["sk_data_ready_b"].run_cnt, 5);
        assert_eq!(d["inet_sock_set_s"].run_time_ns, 300);
        assert_eq!(d["inet_sock_set_s"].run_cnt, 6);
        assert!(delta(&[11], &before, &after).is_err());
        assert!(parse(b"{}").is_err());
    }
}
