//! Capabilities after start-up. Loading and attaching eBPF programs needs CAP_BPF, CAP_PERFMON
//! and CAP_NET_ADMIN (the cgroup_skb program); once they are attached, the agent only reads maps
//! through file descriptors it already holds, which needs no capability. What it keeps is what
//! every scan needs: CAP_SYS_ADMIN for setns(2) into pod network namespaces, CAP_SYS_PTRACE and
//! CAP_DAC_READ_SEARCH for other processes' /proc/<pid>/{fd,ns,net}. Everything else leaves the
//! effective, permitted and inheritable sets for good, so a bug in the HTTP side cannot load
//! programs or touch the network configuration. Capabilities belong to threads, so the drop must
//! happen while the calling thread is the process's only one; [`drop_unneeded`] checks that.
use anyhow::{bail, Context as _};

pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;

/// Capabilities kept after the probes are attached, and why (for the log line).
pub const KEPT: &[(u32, &str)] = &[
    (CAP_SYS_ADMIN, "setns into pod network namespaces"),
    (CAP_SYS_PTRACE, "/proc/<pid>/fd and ns of other processes"),
    (CAP_DAC_READ_SEARCH, "/proc/<pid>/fd of other users"),
];

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's (effective, permitted) sets as 64-bit masks.
pub fn current() -> anyhow::Result<(u64, u64)> {
    let mut hdr = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: capget fills two Data structs for version 3, as given.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if rc != 0 {
        bail!("capget: {}", std::io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    Ok((join(data[0].effective, data[1].effective), join(data[0].permitted, data[1].permitted)))
}

/// Sets the calling thread's effective and permitted sets (64-bit masks); inheritable becomes empty.
pub fn capset(effective: u64, permitted: u64) -> anyhow::Result<()> {
    let mut hdr = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [
        Data { effective: effective as u32, permitted: permitted as u32, inheritable: 0 },
        Data { effective: (effective >> 32) as u32, permitted: (permitted >> 32) as u32, inheritable: 0 },
    ];
    // SAFETY: capset reads two Data structs for version 3, as given.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("capset");
    }
    Ok(())
}

/// Pure: the sets to keep, given the permitted set: `KEPT` where it is held, nothing else.
pub fn kept_mask(permitted: u64) -> u64 {
    KEPT.iter().fold(0u64, |m, (cap, _)| m | (1u64 << cap)) & permitted
}

/// Drops every capability but [`KEPT`] from this thread, which must be the process's only
/// thread so that threads started later inherit the reduced sets. Returns how many were dropped.
pub fn drop_unneeded() -> anyhow::Result<u32> {
    let threads = std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(1);
    if threads > 1 {
        bail!("{threads} threads are running; capabilities are per thread, so the others would keep theirs");
    }
    let (effective, permitted) = current()?;
    let keep = kept_mask(permitted);
    let dropped = ((effective | permitted) & !keep).count_ones();
    if dropped == 0 {
        return Ok(0);
    }
    capset(keep, keep)?;
    // Ambient capabilities would survive an exec; the agent never execs, but leave none behind.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    Ok(dropped)
}

/// Drops what the running agent no longer needs and says so in one log line; a failure is only
/// logged, because the agent works the same with more privilege than it needs.
pub fn drop_after_attach() {
    match drop_unneeded() {
        Ok(0) => {}
        Ok(n) => {
            let kept: Vec<String> = KEPT.iter().map(|(c, why)| format!("{} ({why})", name(*c))).collect();
            log::info!("probes attached: dropped {n} capabilities; kept {}", kept.join(", "));
        }
        Err(e) => log::warn!("probes attached, but dropping capabilities failed: {e:#}"),
    }
}

fn name(cap: u32) -> &'static str {
    match cap {
        CAP_DAC_READ_SEARCH => "CAP_DAC_READ_SEARCH",
        CAP_SYS_PTRACE => "CAP_SYS_PTRACE",
        CAP_SYS_ADMIN => "CAP_SYS_ADMIN",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_what_scans_need_and_only_if_held() {
        let all = u64::MAX >> 23; // CAP_LAST_CAP is 40 on Linux 6.x
        let keep = kept_mask(all);
        assert_eq!(keep, (1 << 2) | (1 << 19) | (1 << 21));
        assert_eq!(kept_mask(1 << 21 | 1 << 39), 1 << 21, "a capability never held is not kept");
        assert_eq!(kept_mask(0), 0);
    }

    #[test]
    fn reads_own_sets() {
        let (eff, perm) = current().expect("capget on self");
        assert_eq!(eff & !perm, 0, "effective is a subset of permitted");
    }
}
