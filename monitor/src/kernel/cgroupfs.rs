//! Where this host's cgroup2 filesystem is mounted: the protocol probe (cgroup_skb) attaches at
//! its root, and workload attribution walks it to name cgroup ids.
use std::path::PathBuf;

/// Where this host's cgroup2 filesystem is mounted, if it is.
pub fn cgroup2_root() -> Option<PathBuf> {
    std::fs::read_to_string("/proc/self/mounts").ok().and_then(|m| cgroup2_mount(&m))
}

/// Pure: the mount point of the cgroup2 filesystem in a /proc/mounts text (the unified hierarchy
/// of a hybrid host counts too).
pub fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir.replace("\\040", " ")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unified_mount() {
        let v2 = "sysfs /sys sysfs rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(cgroup2_mount(v2), Some(PathBuf::from("/sys/fs/cgroup")));
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs ro 0 0\ncgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(cgroup2_mount("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"), None);
    }
}
