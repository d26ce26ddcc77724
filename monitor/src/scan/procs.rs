//! Socket ownership: maps socket inodes (as sock_diag reports them in `idiag_inode`) to the process
//! holding them, by walking `/proc/<pid>/fd` the way `ss -p` and `lsof` do, and names that process
//! by its `comm` and cgroup path (which identifies the container/pod on Kubernetes nodes). The
//! `/proc` walk is kept apart from [`parse_cgroup`], a pure parser the unit tests feed with text.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    pub cgroup: Option<String>,
}

/// "socket:[12345]" -> 12345
fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Every pid in /proc, ascending. Pid order is what makes "lowest pid wins" for shared sockets
/// (pre-fork servers share the listener with their workers; the master usually has the lowest
/// pid) and makes a namespace's reported pid the oldest-looking (usually the pod's pause process).
pub fn pids() -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// Scans /proc/<pid>/fd/* for "socket:[N]" links whose N is in `wanted`; stops early when all are
/// found. Lowest pid wins for shared sockets (e.g. pre-fork servers). Vanishing processes/fds are
/// skipped silently. comm from /proc/<pid>/comm (trimmed), cgroup via parse_cgroup(/proc/<pid>/cgroup).
pub fn socket_owners(wanted: &HashSet<u64>) -> HashMap<u64, Owner> {
    let mut found: HashMap<u64, Owner> = HashMap::new();
    if wanted.is_empty() {
        return found;
    }
    for pid in pids() {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let mut hits: Vec<u64> = fds
            .flatten()
            .filter_map(|fd| fs::read_link(fd.path()).ok())
            .filter_map(|target| socket_inode(target.as_os_str().as_bytes()))
            .filter(|ino| wanted.contains(ino) && !found.contains_key(ino))
            .collect();
        if hits.is_empty() {
            continue;
        }
        // An unreadable comm means the process exited under us: its sockets will be found in
        // whichever process still holds them, or reported as ownerless.
        let Ok(comm) = fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|t| parse_cgroup(&t));
        let owner = Owner {
            pid,
            comm: comm.trim().to_string(),
            cgroup,
        };
        hits.dedup();
        for ino in hits {
            found.entry(ino).or_insert_with(|| owner.clone());
        }
        if found.len() >= wanted.len() {
            break;
        }
    }
    found
}

/// Pure: the cgroup v2 path ("0::/path") if present, else the first v1 hierarchy's path (prefer
/// the "name=systemd" line); None when empty.
pub fn parse_cgroup(text: &str) -> Option<String> {
    let mut systemd: Option<&str> = None;
    let mut first_v1: Option<&str> = None;
    for line in text.lines() {
        // hierarchy-ID:controller-list:path; the path itself may contain ':'.
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = path.trim_end();
        if path.is_empty() {
            continue;
        }
        if id == "0" && controllers.is_empty() {
            return Some(path.to_string());
        }
        if systemd.is_none() && controllers.split(',').any(|c| c == "name=systemd") {
            systemd = Some(path);
        }
        first_v1.get_or_insert(path);
    }
    systemd.or(first_v1).map(str::to_string)
}

#[cfg(test)]
#[path = "procs_tests.rs"]
mod tests;
