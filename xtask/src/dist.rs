//! `cargo xtask dist`: the release artifact. One static binary (musl, the eBPF object embedded by
//! monitor/build.rs, symbols stripped) at `<target>/dist/connmon`, and a tarball beside it with
//! that binary, the deploy files (Kubernetes manifests, Prometheus rules and their tests, the
//! Grafana dashboard, the example config), README.md and docs/. The image (`cargo xtask image`,
//! and the Dockerfile for Docker users) copies this same binary.
//!
//! Before it writes the tarball, it checks what can be checked without a kernel of its own: the
//! binary has no ELF interpreter (it runs where there is no C library, e.g. FROM scratch) and
//! `connmon --version` runs and names this version.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{log_path, run_logged, stdout_of, step, target_dir, which, workspace_root};

/// The Rust target of the release binary: static, so it needs no C library (the image is
/// FROM scratch).
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// What goes into the tarball besides the binary, relative to the workspace root: everything an
/// operator deploys or reads. `LICENSE*` files are added too when the repository has any.
pub const CONTENTS: &[&str] = &["README.md", "docs", "deploy"];

/// The binary the image copies: `<target>/dist/connmon` (the Dockerfile names it for the default
/// target directory as `target/dist/connmon`).
pub fn binary_path() -> PathBuf {
    target_dir().join("dist").join("connmon")
}

/// `connmon-<version>-x86_64-unknown-linux-musl`: the tarball's name and its top directory.
pub fn release_name() -> String {
    format!("connmon-{}-{MUSL_TARGET}", env!("CARGO_PKG_VERSION"))
}

/// `cargo build --release -p connmon --target x86_64-unknown-linux-musl`, its output in a log
/// (shown when it fails); returns the binary, checked to be static (no ELF interpreter).
fn release_binary() -> Result<PathBuf> {
    let log = log_path("build-musl");
    let _ = std::fs::remove_file(&log);
    let mut cargo = Command::new("cargo");
    cargo.args(["build", "--release", "-p", "connmon", "--target", MUSL_TARGET]).current_dir(workspace_root());
    step(&format!("building the static release agent ({MUSL_TARGET}; log {})", log.display()), || {
        run_logged(&mut cargo, &log, "the log above says what failed; musl builds need Debian's musl-tools")
    })?;
    let bin = target_dir().join(MUSL_TARGET).join("release").join("connmon");
    let elf = std::fs::read(&bin).with_context(|| format!("the build succeeded but {} is missing", bin.display()))?;
    if let Some(interp) = elf_interpreter(&elf)? {
        bail!(
            "{} is dynamically linked (interpreter {interp}); the image has no C library to load it with",
            bin.display()
        );
    }
    Ok(bin)
}

/// The ELF program interpreter (PT_INTERP) of a 64-bit little-endian ELF file, if it has one.
fn elf_interpreter(elf: &[u8]) -> Result<Option<String>> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        bail!("not a 64-bit little-endian ELF file");
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
    let phoff = u64_at(0x20).context("truncated ELF header")?;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let Some(kind) = elf.get(ph..ph + 4) else {
            bail!("truncated program headers");
        };
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes(kind.try_into().unwrap()) == PT_INTERP {
            let (off, size) = (u64_at(ph + 8).context("truncated")?, u64_at(ph + 32).context("truncated")?);
            let path = elf.get(off..off + size).context("truncated PT_INTERP")?;
            let path = String::from_utf8_lossy(path).trim_end_matches('\0').to_string();
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// The stripped static binary at [`binary_path`], checked; returns its path.
pub fn binary() -> Result<PathBuf> {
    let built = release_binary()?;
    let bin = binary_path();
    std::fs::create_dir_all(bin.parent().expect("dist dir"))?;
    std::fs::copy(&built, &bin).with_context(|| format!("cannot copy {} to {}", built.display(), bin.display()))?;
    if which("strip").is_none() {
        bail!("strip is not on PATH: run `cargo xtask setup --for static` (Debian's binutils)");
    }
    // Symbols only serve debuggers: about 20 MiB -> 16 MiB. Panic messages keep file and line.
    run_logged(
        Command::new("strip").arg("--strip-all").arg(&bin),
        &log_path("dist"),
        "strip could not rewrite the binary; is binutils for x86_64 installed?",
    )?;
    check_binary(&bin)?;
    Ok(bin)
}

/// Static (no PT_INTERP) and runnable here: `connmon --version` prints this version.
pub fn check_binary(bin: &Path) -> Result<()> {
    let elf = std::fs::read(bin).with_context(|| format!("cannot read {}", bin.display()))?;
    if let Some(interp) = elf_interpreter(&elf)? {
        bail!("{} is dynamically linked (interpreter {interp}); a release binary must be static", bin.display());
    }
    let version = stdout_of(Command::new(bin).arg("--version"))
        .with_context(|| format!("`{} --version` did not run", bin.display()))?;
    if !version.contains(env!("CARGO_PKG_VERSION")) {
        bail!("`{} --version` printed {version:?}, not version {}", bin.display(), env!("CARGO_PKG_VERSION"));
    }
    Ok(())
}

/// The binary and the tarball; returns the tarball's path.
pub fn build() -> Result<PathBuf> {
    let bin = binary()?;
    let root = workspace_root();
    let dist = target_dir().join("dist");
    let name = release_name();
    let stage = dist.join(&name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("cannot clear {}", stage.display()))?;
    }
    std::fs::create_dir_all(&stage)?;
    std::fs::copy(&bin, stage.join("connmon"))?;
    let mut contents: Vec<String> = CONTENTS.iter().map(|s| s.to_string()).collect();
    contents.extend(licenses(&root)?);
    for item in &contents {
        copy_tree(&root.join(item), &stage.join(item))?;
    }

    let tarball = dist.join(format!("{name}.tar.gz"));
    let _ = std::fs::remove_file(&tarball);
    // Reproducible: sorted names, root ownership, one fixed mtime (the last commit's, else 0).
    let mtime = stdout_of(Command::new("git").args(["log", "-1", "--format=%ct"]).current_dir(&root))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "0".into());
    let mut tar = Command::new("tar");
    tar.args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
        .arg(format!("--mtime=@{mtime}"))
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&dist)
        .arg(&name);
    step(&format!("writing {}", tarball.display()), || {
        run_logged(&mut tar, &log_path("dist"), "GNU tar writes the tarball: is it installed?")
    })?;
    std::fs::remove_dir_all(&stage)?;
    let mib = |p: &Path| std::fs::metadata(p).map_or(0.0, |m| m.len() as f64 / (1024.0 * 1024.0));
    println!("static binary: {} ({:.1} MiB, no ELF interpreter)", bin.display(), mib(&bin));
    println!("tarball: {} ({:.1} MiB: connmon, {})", tarball.display(), mib(&tarball), contents.join(", "));
    Ok(tarball)
}

/// `LICENSE`, `LICENSE-MIT`, ... at the workspace root, if any.
fn licenses(root: &Path) -> Result<Vec<String>> {
    let mut found: Vec<String> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("LICENSE") || n.starts_with("COPYING"))
        .collect();
    found.sort();
    Ok(found)
}

/// Copies a file, or a directory recursively (regular files and directories only).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let meta = std::fs::metadata(from).with_context(|| format!("{} is missing", from.display()))?;
    if meta.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(from, to).with_context(|| format!("cannot copy {}", from.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tarball_holds_what_operators_deploy() {
        let root = workspace_root();
        for item in CONTENTS {
            assert!(root.join(item).exists(), "{item} is listed for the tarball but missing");
        }
        for file in
            ["deploy/kubernetes/daemonset.yaml", "deploy/prometheus/connmon-rules.yml", "deploy/grafana/connmon.json"]
        {
            assert!(CONTENTS.iter().any(|c| file.starts_with(c)), "{file} would not be in the tarball");
        }
        assert!(release_name().starts_with("connmon-") && release_name().ends_with(MUSL_TARGET));
    }

    #[test]
    fn copies_a_tree() {
        let dir = std::env::temp_dir().join(format!("xtask-dist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/c.txt"), "x").unwrap();
        copy_tree(&dir.join("a"), &dir.join("copy")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("copy/b/c.txt")).unwrap(), "x");
        assert!(copy_tree(&dir.join("nothing"), &dir.join("n")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn interpreter_of_dynamic_and_static_binaries() {
        // This test binary is linked like any host binary: dynamically, against glibc.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let interp = elf_interpreter(&me).unwrap();
        assert!(interp.is_some_and(|p| p.contains("ld-linux")));
        assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
    }
}
