//! `cargo xtask image`: the agent's OCI image, built offline with buildah, and the static release
//! binary it holds ([`release_binary`], the one build a release tarball can reuse).
//!
//! The binary is linked statically against musl (`x86_64-unknown-linux-musl`, eBPF object
//! embedded by monitor/build.rs), so the image is `FROM scratch` with one file in it: no libc to
//! copy in, no registry to pull a base from. The image's settings (user, port, entrypoint, where the
//! binary goes) are the runtime stage of the repository's Dockerfile, taken from it verbatim with
//! only its `COPY --from=builder` turned into a copy of the binary built here, so that the image
//! built here and the one Docker users build cannot differ in anything but how the binary was made.
//! buildah runs with a storage of its own under the target directory (vfs: no overlay mounts
//! needed), which is removed once the OCI archive is written.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{run_inherit, target_dir, which, workspace_root};

/// The Rust target of the release binary: static, so the image needs no C library.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// The image's name and tag inside the archive (the DaemonSet's `image:`).
pub const IMAGE_REF: &str = "connmon:latest";
/// The OCI archive, relative to the target directory.
pub const ARCHIVE: &str = "connmon-image.oci.tar";

/// `cargo build --release -p connmon --target x86_64-unknown-linux-musl`; returns the binary,
/// checked to be static (no ELF interpreter).
pub fn release_binary() -> Result<PathBuf> {
    println!("building the static release agent ({MUSL_TARGET})");
    run_inherit(
        Command::new("cargo")
            .args(["build", "--release", "-p", "connmon", "--target", MUSL_TARGET])
            .current_dir(workspace_root()),
    )?;
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

/// Builds the image and writes it as an OCI archive; returns the archive's path.
pub fn build() -> Result<PathBuf> {
    for tool in ["buildah", "strip"] {
        if which(tool).is_none() {
            bail!("{tool} is not on PATH (it builds the image): run `cargo xtask setup`");
        }
    }
    let dockerfile_path = workspace_root().join("Dockerfile");
    let dockerfile = std::fs::read_to_string(&dockerfile_path)
        .with_context(|| format!("cannot read {}", dockerfile_path.display()))?;
    let containerfile = runtime_stage(&dockerfile).with_context(|| format!("in {}", dockerfile_path.display()))?;

    let bin = release_binary()?;
    let work = target_dir().join("image");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("cannot clear {}", work.display()))?;
    }
    let context = work.join("context");
    std::fs::create_dir_all(&context).with_context(|| format!("cannot create {}", context.display()))?;
    std::fs::copy(&bin, context.join("connmon"))
        .with_context(|| format!("cannot copy {} into the build context", bin.display()))?;
    // Symbols only serve debuggers: about 20 MiB -> 16 MiB. Panic messages keep file and line.
    // (The Dockerfile strips with `install -s`, which runs the same `strip`.)
    run_inherit(Command::new("strip").arg("--strip-all").arg(context.join("connmon")))?;
    std::fs::write(context.join("Containerfile"), &containerfile)?;

    let archive = target_dir().join(ARCHIVE);
    let _ = std::fs::remove_file(&archive);
    let buildah = |args: &[&str]| {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(work.join("storage"))
            .arg("--runroot")
            .arg(work.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        cmd
    };
    println!("building the image {IMAGE_REF} (buildah, FROM scratch, no network)");
    let ctx = context.to_string_lossy().into_owned();
    // --timestamp 0: the same binary gives the same image digest.
    run_inherit(&mut buildah(&[
        "bud",
        "--quiet",
        // chroot: no user namespace or runtime needed; the stage has no RUN step anyway.
        "--isolation",
        "chroot",
        "--pull=never",
        "--timestamp",
        "0",
        "-f",
        &format!("{ctx}/Containerfile"),
        "-t",
        IMAGE_REF,
        &ctx,
    ]))?;
    let dest = format!("oci-archive:{}:{IMAGE_REF}", archive.display());
    run_inherit(&mut buildah(&["push", "--quiet", IMAGE_REF, &dest]))?;
    // The archive is the product; the storage was only the way to it.
    run_inherit(&mut buildah(&["rmi", "--all", "--force"]))?;

    let mib = |p: &Path| std::fs::metadata(p).map_or(0.0, |m| m.len() as f64 / (1024.0 * 1024.0));
    println!(
        "image {IMAGE_REF}: {} ({:.1} MiB; the stripped binary in it {:.1} MiB)",
        archive.display(),
        mib(&archive),
        mib(&context.join("connmon"))
    );
    println!("load it with `podman load -i {0}` or `docker load -i {0}`", archive.display());
    let _ = std::fs::remove_dir_all(&work);
    Ok(archive)
}

/// The Dockerfile's last stage, with `COPY --from=builder SRC DST` turned into `COPY connmon DST`
/// (the binary in the build context). It must be `FROM scratch`: nothing can be pulled here.
fn runtime_stage(dockerfile: &str) -> Result<String> {
    let lines: Vec<&str> = dockerfile.lines().collect();
    let start =
        lines.iter().rposition(|l| l.trim_start().to_ascii_uppercase().starts_with("FROM ")).context("no FROM line")?;
    let from = lines[start].split_whitespace().nth(1).unwrap_or("");
    if from != "scratch" {
        bail!("the runtime stage is FROM {from}, not FROM scratch: buildah here has no registry to pull it from");
    }
    let mut out = String::new();
    let mut copies = 0;
    for line in &lines[start..] {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() == 4 && words[0] == "COPY" && words[1] == "--from=builder" {
            out.push_str(&format!("COPY connmon {}\n", words[3]));
            copies += 1;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if copies != 1 {
        bail!("the runtime stage has {copies} `COPY --from=builder SRC DST` lines; expected one (the binary)");
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_stage_of_the_dockerfile() {
        let text = std::fs::read_to_string(workspace_root().join("Dockerfile")).unwrap();
        let stage = runtime_stage(&text).unwrap();
        assert!(stage.starts_with("FROM scratch"), "{stage}");
        assert!(stage.contains("COPY connmon /usr/local/bin/connmon\n"), "{stage}");
        assert!(!stage.contains("--from=builder"), "{stage}");
        assert!(stage.contains("ENTRYPOINT [\"/usr/local/bin/connmon\"]"), "{stage}");
    }

    #[test]
    fn runtime_stage_refuses_a_base_to_pull() {
        let err = runtime_stage("FROM debian:12\nCOPY --from=builder /a /b\n").unwrap_err();
        assert!(err.to_string().contains("not FROM scratch"), "{err}");
        let err = runtime_stage("FROM rust AS builder\nFROM scratch\nUSER 0\n").unwrap_err();
        assert!(err.to_string().contains("0 `COPY"), "{err}");
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
