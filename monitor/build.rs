//! Builds the kernel programs (monitor-ebpf) for bpfel-unknown-none and places the object in OUT_DIR,
//! where `include_bytes_aligned!` picks it up. Missing prerequisites fail with one line saying how
//! to install them, instead of a page of linker errors.
use std::process::Command;

use anyhow::anyhow;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    check_prerequisites()?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("monitor has no parent directory"))?
        .join("monitor-ebpf");
    let root = root.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [Package { name: "monitor-ebpf", root_dir: root, ..Default::default() }],
        Toolchain::default(),
    )
}

fn check_prerequisites() -> anyhow::Result<()> {
    if Command::new("bpf-linker").arg("--version").output().is_err() {
        return Err(anyhow!(
            "bpf-linker not found on PATH (needed to link the eBPF programs): run `cargo xtask setup`"
        ));
    }
    let src = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output();
    match src {
        Ok(out) if String::from_utf8_lossy(&out.stdout).contains("rust-src") => Ok(()),
        _ => Err(anyhow!(
            "nightly toolchain with rust-src missing (needed for -Z build-std=core): run `cargo xtask setup`"
        )),
    }
}
