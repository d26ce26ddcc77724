//! Network namespace discovery and execution inside a namespace. This module owns the answer to
//! "which network namespaces exist on this node" (the host's, every distinct `/proc/<pid>/ns/net`,
//! and the named bind mounts under `/run/netns/`, deduplicated by nsfs inode) and the only code that
//! calls setns(2). Namespace switches happen on dedicated threads so no caller thread, and in
//! particular no async runtime worker, ever ends up in a foreign namespace.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread;

use anyhow::{anyhow, bail, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    /// nsfs inode: the namespace's identity (what `ls -L -i /proc/<pid>/ns/net` and `lsns` show).
    pub inode: u64,
    /// Name under /run/netns/ (as `ip netns` and CNI plugins create), if any.
    pub name: Option<String>,
    /// Path that setns() opens: the /run/netns/ bind mount when there is one, else /proc/<pid>/ns/net.
    pub path: PathBuf,
    /// A process found in this namespace (the lowest pid), if any.
    pub pid: Option<u32>,
}

const HOST_NS: &str = "/proc/self/ns/net";
const NAMED_NS_DIR: &str = "/run/netns";
const NSFS_MAGIC: i64 = 0x6e73_6673;

fn ns_inode(path: &Path) -> Option<u64> {
    // stat(2) follows the /proc magic link to the nsfs inode.
    fs::metadata(path).ok().map(|m| m.ino())
}

/// The namespace inode a `/proc/<pid>/ns/net` link names (its text is `net:[INODE]`, the same
/// number stat(2) reports as st_ino).
fn link_inode(path: &Path) -> Option<u64> {
    let target = fs::read_link(path).ok()?;
    parse_link(target.as_os_str().as_bytes())
}

/// Pure: `net:[4026531840]` -> 4026531840.
fn parse_link(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text.strip_prefix(b"net:[")?.strip_suffix(b"]")?).ok()?.parse().ok()
}

/// A file under /run/netns/ left behind without its bind mount (e.g. after a crash) is a plain
/// tmpfs file whose inode could collide with a real namespace's; only nsfs files count.
fn is_nsfs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: zeroed statfs is a valid out-buffer; c is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the duration of the call.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    let magic = st.f_type as i64;
    rc == 0 && magic == NSFS_MAGIC
}

/// Host's first (/proc/self/ns/net), then every distinct /proc/<pid>/ns/net, then /run/netns/*
/// entries (name = file name; if a /run/netns entry has the same inode as a pid-found one, keep one
/// entry but set its name). Dedup by inode (stat(2) st_ino). Processes that vanish or can't be read
/// are skipped silently.
pub fn discover() -> Vec<Netns> {
    assemble(walk_pids())
}

/// How long scans reuse the namespaces found by walking /proc. The walk costs in proportion to
/// the host's processes and ran on every scan (the 1 s tick and each scrape): a fifth of the
/// agent's CPU at 10k connections/s. Named namespaces (/run/netns, where `ip netns` and CNI
/// plugins put pods') are listed on every scan all the same, and a reused entry is checked
/// (one readlink per namespace, not per process): when its process has gone or moved, the walk
/// is redone at once. So only a namespace known through processes alone (a container runtime
/// without bind mounts, `unshare -n`) can show up this much later.
pub const PID_WALK_REUSE: std::time::Duration = std::time::Duration::from_secs(5);

/// [`discover`] for the agent's scans: the walk of /proc is reused for [`PID_WALK_REUSE`]. The
/// cache holds one entry per namespace found (what `connmon_netns_info` counts), replaced whole
/// at each walk, so it is bounded by the host's namespaces.
pub fn discover_reusing() -> Vec<Netns> {
    type Walk = Option<(std::time::Instant, Vec<Netns>)>;
    static LAST: std::sync::Mutex<Walk> = std::sync::Mutex::new(None);
    let still = |ns: &Netns| link_inode(&ns.path) == Some(ns.inode);
    let walked = {
        let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        match last.as_ref() {
            Some((at, found)) if at.elapsed() < PID_WALK_REUSE && found.iter().all(still) => found.clone(),
            _ => {
                let found = walk_pids();
                *last = Some((std::time::Instant::now(), found.clone()));
                found
            }
        }
    };
    assemble(walked)
}

/// Every distinct /proc/<pid>/ns/net, lowest pid first.
fn walk_pids() -> Vec<Netns> {
    let mut out: Vec<Netns> = Vec::new();
    let mut seen: std::collections::HashSet<u64> = std::collections::HashSet::new();
    // One readlink per process: procfs's Process::namespaces() stats every namespace link (about
    // ten), which made discovery 12 times dearer (2.3 ms against 0.19 ms of CPU for 110
    // processes), and stat(2) of the link makes the kernel look up the namespace's nsfs dentry,
    // where readlink(2) only prints its inode.
    let mut path = String::with_capacity(32);
    for pid in crate::scan::procs::pids() {
        use std::fmt::Write as _;
        path.clear();
        let _ = write!(path, "/proc/{pid}/ns/net");
        let Some(inode) = link_inode(Path::new(&path)) else {
            continue;
        };
        if seen.insert(inode) {
            out.push(Netns { inode, name: None, path: PathBuf::from(&path), pid: Some(pid) });
        }
    }
    out
}

/// The host's namespace first, then those `walked` found through processes, then the named ones.
fn assemble(walked: Vec<Netns>) -> Vec<Netns> {
    let mut out: Vec<Netns> = Vec::new();
    let mut by_inode: HashMap<u64, usize> = HashMap::new();

    if let Some(inode) = ns_inode(Path::new(HOST_NS)) {
        by_inode.insert(inode, out.len());
        out.push(Netns { inode, name: None, path: PathBuf::from(HOST_NS), pid: Some(std::process::id()) });
    }
    for ns in walked {
        by_inode.entry(ns.inode).or_insert_with(|| {
            out.push(ns);
            out.len() - 1
        });
    }

    let mut named: Vec<(String, PathBuf)> = fs::read_dir(NAMED_NS_DIR)
        .map(|rd| rd.flatten().filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path()))).collect())
        .unwrap_or_default();
    named.sort();
    for (name, path) in named {
        if !is_nsfs(&path) {
            continue;
        }
        let Some(inode) = ns_inode(&path) else {
            continue;
        };
        match by_inode.get(&inode).and_then(|&i| out.get_mut(i)) {
            Some(existing) => {
                if existing.name.is_none() {
                    existing.name = Some(name);
                    // The bind mount outlives any one process, so setns through it is steadier.
                    existing.path = path;
                }
            }
            None => {
                by_inode.insert(inode, out.len());
                out.push(Netns { inode, name: Some(name), path, pid: None });
            }
        }
    }
    out
}

fn gone(ns: &Netns) -> anyhow::Error {
    anyhow!("network namespace {} is gone", ns.inode)
}

/// Moves the calling thread into `ns`. Only ever called on threads this module spawned.
fn enter(ns: &Netns) -> Result<()> {
    let file = match File::open(&ns.path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => return Err(gone(ns)),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => bail!(
            "opening network namespace {} ({}) is not permitted: run as root or grant CAP_SYS_PTRACE",
            ns.inode,
            ns.path.display()
        ),
        Err(e) => bail!("cannot open network namespace {} ({}): {e}", ns.inode, ns.path.display()),
    };
    // A recycled pid (or a re-created /run/netns name) can lead to a different namespace now.
    if file.metadata().map(|m| m.ino()).ok() != Some(ns.inode) {
        return Err(gone(ns));
    }
    // Already there (the agent's own namespace, or the previous one in run_in_each): setns would
    // only add a CAP_SYS_ADMIN requirement, which an unprivileged `connmon listeners` lacks.
    if current_netns() == Some(ns.inode) {
        return Ok(());
    }
    // SAFETY: file is an open descriptor for the duration of the call.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EPERM) => {
                bail!("entering network namespace {} needs CAP_SYS_ADMIN: run as root or grant it", ns.inode)
            }
            Some(libc::EINVAL) => {
                bail!("{} is not a network namespace (inode {}): check the path", ns.path.display(), ns.inode)
            }
            _ => bail!("cannot enter network namespace {}: {err}", ns.inode),
        }
    }
    Ok(())
}

/// Inode of the calling thread's network namespace.
fn current_netns() -> Option<u64> {
    std::fs::metadata("/proc/thread-self/ns/net").ok().map(|m| m.ino())
}

fn spawn_error(e: io::Error) -> anyhow::Error {
    anyhow!("cannot start a thread to enter a network namespace: {e}")
}

/// Runs `f` on a fresh thread that first setns(2)s into `ns` (open ns.path, setns(fd, CLONE_NEWNET)).
/// Errors: namespace vanished -> Err("network namespace <inode> is gone"); EPERM ->
/// Err("entering network namespace <inode> needs CAP_SYS_ADMIN: run as root or grant it").
/// Never changes the caller's thread netns. A panic in `f` is propagated to the caller.
#[cfg(test)]
pub fn run_in<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> Result<T> {
    thread::scope(|s| {
        let handle = thread::Builder::new()
            .name("connmon-netns".into())
            .spawn_scoped(s, || enter(ns).map(|()| f()))
            .map_err(spawn_error)?;
        handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Like run_in for many namespaces, but on ONE thread that setns()s to each in turn (cheaper for
/// hundreds of pods); a namespace that fails is reported in the Vec as Err and the others still run.
/// A panic in `f` is propagated to the caller.
pub fn run_in_each<T: Send>(nss: &[Netns], f: impl Fn(&Netns) -> T + Sync) -> Vec<(u64, Result<T>)> {
    let f = &f;
    let spawned = thread::scope(|s| {
        thread::Builder::new()
            .name("connmon-netns".into())
            .spawn_scoped(s, move || nss.iter().map(|ns| (ns.inode, enter(ns).map(|()| f(ns)))).collect::<Vec<_>>())
            .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    match spawned {
        Ok(results) => results,
        Err(e) => {
            let msg = spawn_error(e).to_string();
            nss.iter().map(|ns| (ns.inode, Err(anyhow!("{msg}")))).collect()
        }
    }
}

#[cfg(test)]
#[path = "netns_tests.rs"]
mod tests;
