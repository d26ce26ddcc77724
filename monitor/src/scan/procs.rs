//! Socket ownership: maps socket inodes (as sock_diag reports them in `idiag_inode`) to the process
//! holding them, by walking `/proc/<pid>/fd` the way `ss -p` and `lsof` do, and names that process
//! by its `comm` and cgroup path (which identifies the container/pod on Kubernetes nodes). /proc is
//! read through the `procfs` crate (processes, fd links, `stat`, `cgroup`); which cgroup line names
//! a process is [`pick_cgroup`]'s choice, and [`parse_cgroup`] is the pure text-to-path step the unit
//! tests feed with sample files.

use std::collections::{HashMap, HashSet};

use procfs::process::{FDTarget, Process};
use procfs::FromRead;
use procfs::{ProcessCGroup, ProcessCGroups};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    pub cgroup: Option<String>,
}

/// The socket inode an fd points at ("socket:[12345]" -> 12345).
fn socket_of(target: &FDTarget) -> Option<u64> {
    match target {
        FDTarget::Socket(inode) => Some(*inode),
        _ => None,
    }
}

/// Pure: an fd link's text as the socket inode it names, the way procfs reads the link (public
/// for the fuzz targets in fuzz/).
pub fn socket_inode(link: &[u8]) -> Option<u64> {
    socket_of(&std::str::from_utf8(link).ok()?.parse::<FDTarget>().ok()?)
}

/// Every pid in /proc, ascending. Pid order is what makes "lowest pid wins" for shared sockets
/// (pre-fork servers share the listener with their workers; the master usually has the lowest
/// pid) and makes a namespace's reported pid the oldest-looking (usually the pod's pause process).
///
/// The directory listing only: procfs's `all_processes` also opens and stats every process's
/// directory, which tripled the cost of namespace discovery (run twice a second).
pub fn pids() -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// Scans /proc/<pid>/fd/* for "socket:[N]" links whose N is in `wanted`; stops early when all are
/// found. Lowest pid wins for shared sockets (e.g. pre-fork servers). Vanishing processes/fds are
/// skipped silently. comm from /proc/<pid>/stat, cgroup from /proc/<pid>/cgroup. With each owner,
/// the fd number it holds the socket at, so a later [`still_holds`] can check the answer with one
/// readlink instead of another walk.
pub fn socket_owners(wanted: &HashSet<u64>) -> HashMap<u64, (Owner, i32)> {
    let mut found: HashMap<u64, (Owner, i32)> = HashMap::new();
    if wanted.is_empty() {
        return found;
    }
    for pid in pids() {
        let Ok(process) = Process::new(pid as i32) else {
            continue;
        };
        let Ok(fds) = process.fd() else {
            continue;
        };
        let hits: Vec<(u64, i32)> = fds
            .flatten()
            .filter_map(|fd| Some((socket_of(&fd.target)?, fd.fd)))
            .filter(|(ino, _)| wanted.contains(ino) && !found.contains_key(ino))
            .collect();
        if hits.is_empty() {
            continue;
        }
        // An unreadable stat means the process exited under us: its sockets will be found in
        // whichever process still holds them, or reported as ownerless.
        let Ok(stat) = process.stat() else {
            continue;
        };
        let cgroup = process.cgroups().ok().and_then(|c| pick_cgroup(&c.0));
        let owner = Owner { pid, comm: stat.comm, cgroup };
        for (ino, fd) in hits {
            found.entry(ino).or_insert_with(|| (owner.clone(), fd));
        }
        if found.len() >= wanted.len() {
            break;
        }
    }
    found
}

/// Whether `pid` still holds socket `inode` at descriptor `fd`: one readlink.
pub fn still_holds(pid: u32, fd: i32, inode: u64) -> bool {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .is_ok_and(|t| t.as_os_str().as_encoded_bytes() == format!("socket:[{inode}]").as_bytes())
}

/// Pure: the cgroup v2 path ("0::/path") if present, else the first v1 hierarchy's path (prefer
/// the "name=systemd" line); None when empty or unreadable.
pub fn parse_cgroup(text: &str) -> Option<String> {
    pick_cgroup(&ProcessCGroups::from_read(text.as_bytes()).ok()?.0)
}

/// The cgroup that names a process: v2's, else v1's systemd hierarchy, else the first v1 one;
/// hierarchies without a path do not count.
pub fn pick_cgroup(lines: &[ProcessCGroup]) -> Option<String> {
    let mut systemd: Option<&str> = None;
    let mut first_v1: Option<&str> = None;
    for line in lines {
        let path = line.pathname.trim_end();
        if path.is_empty() {
            continue;
        }
        if line.hierarchy == 0 && line.controllers.is_empty() {
            return Some(path.to_string());
        }
        if systemd.is_none() && line.controllers.iter().any(|c| c == "name=systemd") {
            systemd = Some(path);
        }
        first_v1.get_or_insert(path);
    }
    systemd.or(first_v1).map(str::to_string)
}

#[cfg(test)]
#[path = "procs_tests.rs"]
mod tests;

/// Why this process is not in the host's PID namespace, if it can tell: it is PID 1 of its own
/// (a container without hostPID, where the agent is the first process), or PID 1 is a pod's
/// `pause` process (a pod sharing one PID namespace). The host's PID 1 is an init system, never
/// either. Other pods' network namespaces are found through their processes in /proc, so in a
/// PID namespace of its own the agent sees only its own pod's.
pub fn own_pid_namespace(self_pid: u32, pid1_comm: &str) -> Option<&'static str> {
    if self_pid == 1 {
        Some("connmon is PID 1")
    } else if pid1_comm.trim_end() == "pause" {
        Some("PID 1 is a pod's pause process")
    } else {
        None
    }
}

/// One warning at start-up when [`own_pid_namespace`] says so.
pub fn warn_if_own_pid_namespace() {
    let pid1 = Process::new(1).and_then(|p| p.stat()).map(|s| s.comm).unwrap_or_default();
    if let Some(why) = own_pid_namespace(std::process::id(), &pid1) {
        log::warn!(
            "not in the host's PID namespace ({why}): /proc shows only this pod's processes, so other pods' network namespaces and socket owners are not seen; run with hostPID: true (docker/podman: --pid=host)"
        );
    }
}
