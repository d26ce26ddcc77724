//! cgroup v2 ids and paths. The kernel side labels a connection with the caller's cgroup id
//! (`bpf_get_current_cgroup_id`, the cgroup directory's inode); users need the path, which later
//! maps to a container or pod. Paths are found by walking the cgroup2 mount, at most once per
//! refresh period when an unknown id shows up.
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use crate::kernel::cgroupfs::cgroup2_root;

const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// Most cgroup names (and unknown ids tried) remembered, removed ones included; at the bound the
/// memory is emptied and rebuilt from the next walk (counted in `RESETS`).
pub const MAX_REMEMBERED: usize = 200_000;

/// Times the names or the tried ids were emptied at `MAX_REMEMBERED`.
pub static RESETS: AtomicU64 = AtomicU64::new(0);

#[derive(Debug)]
pub struct CgroupNames {
    root: Option<PathBuf>,
    by_id: HashMap<u64, String>,
    tried: std::collections::HashSet<u64>,
    refreshed: Option<Instant>,
}

impl Default for CgroupNames {
    fn default() -> Self {
        Self { root: cgroup2_root(), by_id: HashMap::new(), tried: Default::default(), refreshed: None }
    }
}

impl CgroupNames {
    /// Path of a cgroup id relative to the cgroup2 root ("/" for the root), if it still exists.
    pub fn path(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.by_id.get(&id) {
            return Some(p.clone());
        }
        // A new cgroup (a pod just started) is looked for at once, the first time it is seen;
        // ids seen before and still unknown wait for the next periodic refresh.
        let first_time = self.tried.insert(id);
        if self.tried.len() > MAX_REMEMBERED {
            self.tried.clear();
            RESETS.fetch_add(1, Ordering::Relaxed);
        }
        let stale = first_time || self.refreshed.is_none_or(|t| t.elapsed() >= REFRESH_EVERY);
        if stale {
            if let Some(root) = &self.root {
                // Merge rather than replace: a connection can outlive its cgroup directory by a
                // moment, and its series should keep the name it had (ids are never reused).
                if self.by_id.len() > MAX_REMEMBERED {
                    self.by_id.clear();
                    RESETS.fetch_add(1, Ordering::Relaxed);
                }
                self.by_id.extend(walk(root));
            }
            self.refreshed = Some(Instant::now());
        }
        self.by_id.get(&id).cloned()
    }

    /// Names remembered now.
    pub fn remembered(&self) -> usize {
        self.by_id.len()
    }

    /// The id of a cgroup path as /proc/<pid>/cgroup shows it ("0::/path").
    pub fn id_of(&self, path: &str) -> Option<u64> {
        let root = self.root.as_ref()?;
        let full = root.join(path.trim_start_matches('/'));
        std::fs::metadata(full).ok().map(|m| m.ino())
    }
}

fn walk(root: &Path) -> HashMap<u64, String> {
    let mut out = HashMap::new();
    let mut stack = vec![(root.to_path_buf(), "/".to_string())];
    while let Some((dir, rel)) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&dir) else { continue };
        out.insert(meta.ino(), rel.clone());
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let name = e.file_name().to_string_lossy().into_owned();
                let child = if rel == "/" { format!("/{name}") } else { format!("{rel}/{name}") };
                stack.push((e.path(), child));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cgroup_round_trips_through_its_id() {
        let mut names = CgroupNames::default();
        if names.root.is_none() {
            return; // no cgroup2 on this host: nothing to resolve
        }
        let text = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
        let path = crate::scan::procs::parse_cgroup(&text).expect("own cgroup");
        let id = names.id_of(&path).expect("own cgroup id");
        assert_eq!(names.path(id).as_deref(), Some(path.as_str()));
    }
}
