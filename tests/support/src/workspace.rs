//! Where the workspace is and reading its files: the tests that check shipped files (manifests,
//! dashboard, rules, Dockerfile) name them relative to the workspace root, as the README does.

use std::fs;
use std::path::{Path, PathBuf};

/// The workspace root (this crate lives in `tests/support`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn read(rel: &str) -> String {
    let path = root().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}
