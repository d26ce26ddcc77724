//! Builds the kernel programs (monitor-ebpf) for bpfel-unknown-none with the dated nightly pinned
//! in monitor-ebpf/rust-toolchain.toml, and places the object in OUT_DIR, where
//! `include_bytes_aligned!` picks it up. aya-build relays every line of its nested cargo as a
//! `cargo:warning`, which floods a first build with `Compiling …` lines; its output goes to
//! `target/<profile>/ebpf-build.log` instead, and only real diagnostics reach the terminal (all
//! of the log's tail when the build fails). Missing prerequisites fail with one line saying how
//! to install them, instead of a page of linker errors.
use std::{
    fs::File,
    io::{self, Write as _},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// Lines of the log shown when the eBPF build fails.
const FAILURE_TAIL: usize = 40;

fn main() {
    // Printed by hand: anyhow's `main` would add a backtrace of this script under RUST_BACKTRACE.
    if let Err(e) = build() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn build() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    let ebpf_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("monitor has no parent directory"))?
        .join("monitor-ebpf");
    let toolchain = pinned_toolchain(&ebpf_dir.join("rust-toolchain.toml"))?;
    check_prerequisites(&toolchain)?;
    let root = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let raw_path = out_dir.join("ebpf-build.raw");
    let raw = File::create(&raw_path).with_context(|| format!("create {}", raw_path.display()))?;
    let built = with_stdout_to(&raw, || {
        aya_build::build_ebpf(
            [Package { name: "monitor-ebpf", root_dir: root, ..Default::default() }],
            Toolchain::Custom(&toolchain),
        )
    })
    .context("redirect the eBPF build's output")?;
    let captured = std::fs::read_to_string(&raw_path).with_context(|| format!("read {}", raw_path.display()))?;
    let log_path = log_path(&out_dir);
    let split = split_output(&captured);
    std::fs::write(&log_path, split.log.join("\n") + "\n").with_context(|| format!("write {}", log_path.display()))?;
    // Cargo's own directives (rerun-if-changed on the eBPF crate, ...) pass through unchanged.
    for line in &split.directives {
        println!("{line}");
    }
    match built {
        Ok(()) => {
            for line in &split.diagnostics {
                println!("cargo:warning={line}");
            }
            Ok(())
        }
        Err(e) => {
            let tail = &split.log[split.log.len().saturating_sub(FAILURE_TAIL)..];
            Err(anyhow!(
                "building the eBPF programs failed ({e:#})\n--- last {} lines of {} ---\n{}",
                tail.len(),
                log_path.display(),
                tail.join("\n")
            ))
        }
    }
}

/// `channel` of the `[toolchain]` table: the one name of the eBPF toolchain, shared with
/// `cargo xtask setup`.
fn pinned_toolchain(file: &Path) -> anyhow::Result<String> {
    println!("cargo:rerun-if-changed={}", file.display());
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let doc: toml::Table = text.parse().with_context(|| format!("parse {}", file.display()))?;
    doc.get("toolchain")
        .and_then(|t| t.get("channel"))
        .and_then(|c| c.as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{}: no [toolchain] channel", file.display()))
}

fn check_prerequisites(toolchain: &str) -> anyhow::Result<()> {
    if Command::new("bpf-linker").arg("--version").output().is_err() {
        return Err(anyhow!(
            "bpf-linker not found on PATH (needed to link the eBPF programs): run `cargo xtask setup`"
        ));
    }
    let src = Command::new("rustup").args(["component", "list", "--toolchain", toolchain, "--installed"]).output();
    match src {
        Ok(out) if out.status.success() && String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("rust-src")) => {
            Ok(())
        }
        _ => Err(anyhow!(
            "toolchain {toolchain} with rust-src missing (it builds the eBPF programs with -Z build-std=core): run `cargo xtask setup`"
        )),
    }
}

/// `target/<profile>/ebpf-build.log`: next to the binaries, found without knowing the build hash.
fn log_path(out_dir: &Path) -> PathBuf {
    let profile_dir = out_dir.ancestors().find(|p| p.file_name().is_some_and(|n| n == "build")).and_then(Path::parent);
    profile_dir.unwrap_or(out_dir).join("ebpf-build.log")
}

/// Runs `f` with this process's stdout (fd 1, where aya-build prints) going to `file`.
fn with_stdout_to<R>(file: &File, f: impl FnOnce() -> R) -> io::Result<R> {
    io::stdout().flush()?;
    // SAFETY: dup/dup2/close on descriptors this process owns; fd 1 is restored before returning.
    let saved = unsafe { libc::dup(1) };
    if saved < 0 || unsafe { libc::dup2(file.as_raw_fd(), 1) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let result = f();
    let flushed = io::stdout().flush();
    // SAFETY: as above.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    flushed.map(|()| result)
}

/// What aya-build printed, sorted out.
#[derive(Debug, Default, PartialEq)]
struct Split {
    /// Everything the nested build said, for the log file.
    log: Vec<String>,
    /// Compiler and cargo diagnostics, for the terminal.
    diagnostics: Vec<String>,
    /// Other `cargo:` instructions, passed through.
    directives: Vec<String>,
}

/// Cargo's progress lines: the flood this build script exists to keep off the terminal.
const PROGRESS: &[&str] = &[
    "Compiling ",
    "Checking ",
    "Finished ",
    "Fresh ",
    "Running ",
    "Updating ",
    "Downloading ",
    "Downloaded ",
    "Locking ",
    "Adding ",
    "Blocking ",
    "Building ",
    "Unpacking ",
];

fn split_output(captured: &str) -> Split {
    let mut out = Split::default();
    for line in captured.lines() {
        let Some(text) = line.strip_prefix("cargo:warning=") else {
            if line.starts_with("cargo:") {
                out.directives.push(line.to_owned());
            } else if !line.is_empty() {
                out.log.push(line.to_owned());
            }
            continue;
        };
        out.log.push(text.to_owned());
        let trimmed = text.trim_start();
        if !trimmed.is_empty() && !PROGRESS.iter().any(|p| trimmed.starts_with(p)) {
            out.diagnostics.push(text.to_owned());
        }
    }
    out
}
