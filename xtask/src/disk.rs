//! Free disk space for the builds a purpose implies, checked before anything is built. A build
//! that runs out of disk fails far from its cause: the linker dies with "signal 7 [Bus error]"
//! while writing a mapped output file (one CI run failed that way after 4 minutes). Setup says it
//! up front, in one line, with what to free. The budgets are measured sizes of a target dir
//! (`du -s target`) after a whole run, with some headroom: `cargo xtask test` (debug tests,
//! clippy's metadata, the release agent, the eBPF object, the guest kernels of the matrix test)
//! 9.4 GB; a release build of the agent alone 1.3 GB.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::needs::Purpose;
use crate::util::target_dir;

const GB: u64 = 1_000_000_000;
/// What a whole `cargo xtask test` run leaves on the disk (9.4 GB measured, the fuzz targets'
/// build included), with a little headroom: too much and a disk that would do gets refused.
const FOR_TESTS: u64 = 10 * GB;
/// Target dir size after `cargo xtask run`'s release build (1.3 GB measured), with headroom.
const FOR_BUILD: u64 = 2 * GB;

/// What the target dir may grow to for these purposes, if any of them builds.
fn budget(purposes: &[Purpose]) -> Option<u64> {
    if purposes.contains(&Purpose::Test) {
        Some(FOR_TESTS)
    } else if purposes.contains(&Purpose::Build) {
        Some(FOR_BUILD)
    } else {
        None
    }
}

/// How much more the target dir needs, given what it holds already and what the disk has free;
/// `None` when it fits.
fn shortfall(budget: u64, used: u64, free: u64) -> Option<u64> {
    let needed = budget.saturating_sub(used);
    (free < needed).then(|| needed - free)
}

/// Check that the filesystem of the target dir can hold the builds of `purposes`. Prints one line;
/// errors with what to free when it cannot.
pub fn check(purposes: &[Purpose]) -> Result<()> {
    let Some(budget) = budget(purposes) else { return Ok(()) };
    let target = target_dir();
    let Some(free) = free_bytes(&existing_ancestor(&target)) else {
        println!("warning: cannot read the free space under {}; builds need up to {}", target.display(), gb(budget));
        return Ok(());
    };
    let used = tree_bytes(&target);
    match shortfall(budget, used, free) {
        None => {
            println!("ok disk space: {} free for {} (holds {}, grows to about {})", gb(free), target.display(), gb(used), gb(budget));
            Ok(())
        }
        Some(short) => bail!(
            "only {} free for {} (holds {}); the build grows it to about {}: free {} more or set CARGO_TARGET_DIR to a larger disk",
            gb(free),
            target.display(),
            gb(used),
            gb(budget),
            gb(short)
        ),
    }
}

fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / GB as f64)
}

/// The target dir itself, or the nearest parent that exists (a fresh checkout has none yet).
fn existing_ancestor(path: &Path) -> PathBuf {
    path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/")).to_path_buf()
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path` (statvfs f_bavail).
fn free_bytes(path: &Path) -> Option<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes only into `stat`, which is a properly sized, owned struct.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    (rc == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Disk blocks under `path` (like `du -s`), without following symlinks; 0 when it does not exist.
fn tree_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let children = std::fs::read_dir(path).into_iter().flatten().flatten();
    own + children.map(|entry| tree_bytes(&entry.path())).sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_target_needs_the_whole_budget() {
        assert_eq!(shortfall(11 * GB, 0, 5 * GB), Some(6 * GB));
        assert_eq!(shortfall(11 * GB, 0, 11 * GB), None);
    }

    #[test]
    fn what_the_target_holds_already_counts_toward_the_budget() {
        assert_eq!(shortfall(11 * GB, 8 * GB, 4 * GB), None);
        assert_eq!(shortfall(11 * GB, 8 * GB, 2 * GB), Some(GB));
        assert_eq!(shortfall(11 * GB, 20 * GB, 0), None);
    }

    #[test]
    fn only_purposes_that_build_have_a_budget() {
        assert_eq!(budget(&[Purpose::Tools, Purpose::Lint]), None);
        assert_eq!(budget(&[Purpose::Build, Purpose::Run]), Some(FOR_BUILD));
        assert_eq!(budget(&[Purpose::Build, Purpose::Test]), Some(FOR_TESTS));
    }

    #[test]
    fn the_tree_size_counts_files_below_and_missing_paths_are_empty() {
        let dir = std::env::temp_dir().join(format!("connmon-disk-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/f"), vec![1u8; 64 * 1024]).unwrap();
        let size = tree_bytes(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(size >= 64 * 1024, "{size}");
        assert_eq!(tree_bytes(&dir), 0);
        assert!(existing_ancestor(&dir.join("x/y")).exists());
    }
}
