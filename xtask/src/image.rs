//! `cargo xtask image`: the agent's OCI image, built offline with buildah from the repository's
//! Dockerfile as it is, around the binary of `cargo xtask dist` ([`crate::dist::binary`]).
//!
//! The binary is linked statically against musl (`x86_64-unknown-linux-musl`, eBPF object
//! embedded by monitor/build.rs), so the image is `FROM scratch` with one file in it: no libc to
//! copy in, no registry to pull a base from. The Dockerfile copies `target/dist/connmon`; the build
//! context here holds exactly that file at that path, so Docker users (`cargo xtask dist`, then
//! `docker build .`) and this command build the same image from the same binary.
//! buildah runs with a storage of its own under the target directory (vfs: no overlay mounts
//! needed), which is removed once the OCI archive is written.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{log_path, run_logged, step, target_dir, which, workspace_root};

/// The image's name and tag inside the archive (the DaemonSet's `image:`).
pub const IMAGE_REF: &str = "connmon:latest";
/// The OCI archive, relative to the target directory.
pub const ARCHIVE: &str = "connmon-image.oci.tar";

/// Builds the image and writes it as an OCI archive; returns the archive's path.
pub fn build() -> Result<PathBuf> {
    if which("buildah").is_none() {
        bail!("buildah is not on PATH (it builds the image): run `cargo xtask setup --for image`");
    }
    let dockerfile = workspace_root().join("Dockerfile");
    let text = std::fs::read_to_string(&dockerfile).with_context(|| format!("cannot read {}", dockerfile.display()))?;
    let source = binary_source(&text).with_context(|| format!("in {}", dockerfile.display()))?;

    let bin = crate::dist::binary()?;
    let work = target_dir().join("image");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("cannot clear {}", work.display()))?;
    }
    // The context holds the dist binary where the Dockerfile's COPY looks for it, and nothing else.
    let context = work.join("context");
    let in_context = context.join(&source);
    std::fs::create_dir_all(in_context.parent().expect("COPY source has a directory"))
        .with_context(|| format!("cannot create {}", context.display()))?;
    std::fs::copy(&bin, &in_context)
        .with_context(|| format!("cannot copy {} into the build context", bin.display()))?;

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
    let ctx = context.to_string_lossy().into_owned();
    let file = dockerfile.to_string_lossy().into_owned();
    let log = log_path("image");
    let hint = "buildah failed: the log above says why (`buildah bud` needs no network for FROM scratch)";
    step(&format!("building the image {IMAGE_REF} (buildah, FROM scratch, no network)"), || {
        // --timestamp 0: the same binary gives the same image digest.
        run_logged(
            &mut buildah(&[
                "bud",
                "--quiet",
                // chroot: no user namespace or runtime needed; the stage has no RUN step anyway.
                "--isolation",
                "chroot",
                "--pull=never",
                "--timestamp",
                "0",
                "-f",
                &file,
                "-t",
                IMAGE_REF,
                &ctx,
            ]),
            &log,
            hint,
        )?;
        let dest = format!("oci-archive:{}:{IMAGE_REF}", archive.display());
        run_logged(&mut buildah(&["push", "--quiet", IMAGE_REF, &dest]), &log, hint)?;
        // The archive is the product; the storage was only the way to it.
        run_logged(&mut buildah(&["rmi", "--all", "--force"]), &log, hint)
    })?;

    let mib = |p: &Path| std::fs::metadata(p).map_or(0.0, |m| m.len() as f64 / (1024.0 * 1024.0));
    println!(
        "image {IMAGE_REF}: {} ({:.1} MiB; the stripped binary in it {:.1} MiB)",
        archive.display(),
        mib(&archive),
        mib(&bin)
    );
    println!("load it with `podman load -i {0}` or `docker load -i {0}`", archive.display());
    let _ = std::fs::remove_dir_all(&work);
    Ok(archive)
}

/// The source of the Dockerfile's one `COPY SRC DST`: the dist binary, relative to the context.
/// The Dockerfile must be one `FROM scratch` stage: nothing can be pulled or built here.
fn binary_source(dockerfile: &str) -> Result<String> {
    let words: Vec<Vec<&str>> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let of = |op: &str| words.iter().filter(|w| w[0].eq_ignore_ascii_case(op)).collect::<Vec<_>>();
    let from = of("FROM");
    if from.len() != 1 || from[0].get(1) != Some(&"scratch") {
        bail!("expected one stage, FROM scratch (buildah here has no registry to pull from): {from:?}");
    }
    if !of("RUN").is_empty() {
        bail!("a FROM scratch stage has no shell for RUN");
    }
    match of("COPY").as_slice() {
        [copy] if copy.len() == 3 && !copy[1].starts_with("--") => Ok(copy[1].to_string()),
        copies => bail!("expected one `COPY SRC DST` (the dist binary), found {copies:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dockerfile_copies_the_dist_binary() {
        let text = std::fs::read_to_string(workspace_root().join("Dockerfile")).unwrap();
        assert_eq!(binary_source(&text).unwrap(), "target/dist/connmon");
        let dist = crate::dist::binary_path();
        assert!(dist.ends_with("dist/connmon"), "{}", dist.display());
    }

    #[test]
    fn a_dockerfile_that_builds_or_pulls_is_refused() {
        let err = binary_source("FROM debian:12\nCOPY a /b\n").unwrap_err();
        assert!(err.to_string().contains("FROM scratch"), "{err}");
        let err = binary_source("FROM rust AS builder\nFROM scratch\nCOPY --from=builder /a /b\n").unwrap_err();
        assert!(err.to_string().contains("one stage"), "{err}");
        let err = binary_source("FROM scratch\nCOPY --from=builder /a /b\n").unwrap_err();
        assert!(err.to_string().contains("one `COPY"), "{err}");
        assert!(binary_source("FROM scratch\nRUN true\nCOPY a /b\n").is_err());
    }
}
