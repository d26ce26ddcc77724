//! `cargo xtask lint`: what CI checks before the tests. `cargo fmt --check` on every crate,
//! clippy with `-D warnings` on the user-space crates (all targets), and clippy with `-D warnings`
//! on the eBPF crate (with monitor-common as the kernel side compiles it), which only builds for
//! bpfel-unknown-none with the pinned nightly and `-Z build-std=core`; and no import cycle in any
//! crate (`cycles`). Every step runs; the command fails at the end if any did.

use std::process::Command;

use anyhow::{bail, Result};

use crate::util::{run_inherit, workspace_root};
use crate::{cycles, toolchain};

pub fn run() -> Result<()> {
    let t = toolchain::ebpf_toolchain()?;
    let root = workspace_root();
    let steps: Vec<(&str, Command)> = vec![
        ("fmt", {
            let mut c = Command::new("cargo");
            c.args(["fmt", "--all", "--check"]);
            c
        }),
        ("fmt (fuzz targets)", {
            // fuzz/ is a workspace of its own (cargo-fuzz's layout), outside `--all`.
            let mut c = Command::new("cargo");
            c.args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--all", "--check"]);
            c
        }),
        ("clippy (user space)", {
            let mut c = Command::new("cargo");
            c.args(["clippy", "--workspace", "--exclude", "monitor-ebpf", "--all-targets", "--", "-D", "warnings"]);
            c
        }),
        ("clippy (eBPF)", {
            // `rustup run` rather than `cargo +…`: the same form monitor/build.rs (aya-build) uses.
            let mut c = Command::new("rustup");
            c.args(["run", &t.channel, "cargo", "clippy"])
                .args(ebpf_clippy_args())
                // Build scripts of host crates must not pick up the stable toolchain's rustc.
                .env_remove("RUSTC")
                .env_remove("RUSTC_WORKSPACE_WRAPPER");
            c
        }),
    ];
    let mut failed = Vec::new();
    for (name, mut cmd) in steps {
        println!("=== lint: {name}");
        if let Err(e) = run_inherit(cmd.current_dir(&root)) {
            eprintln!("lint step {name} failed: {e:#}");
            failed.push(name);
        }
    }
    println!("=== lint: import cycles");
    for krate in cycles::CRATES {
        if let Err(e) = cycles::check(&root.join(krate)) {
            eprintln!("{e:#}");
            failed.push("import cycles");
        }
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Everything after `cargo clippy` for the eBPF crate (and monitor-common as the kernel side
/// compiles it: `no_std`, without the `user` feature).
fn ebpf_clippy_args() -> [&'static str; 12] {
    [
        "-p",
        "monitor-ebpf",
        "-p",
        "monitor-common",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
        "--",
        "-D",
        "warnings",
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ebpf_clippy_builds_core_for_the_bpf_target_and_denies_warnings() {
        let args = ebpf_clippy_args().join(" ");
        assert!(args.contains("--target bpfel-unknown-none"), "{args}");
        assert!(args.contains("-Z build-std=core"), "{args}");
        assert!(args.ends_with("-- -D warnings"), "{args}");
    }
}
