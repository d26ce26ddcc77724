//! Debian's kernel images for the matrix, with the ordinary package tools: `apt-get update`,
//! `apt-cache search` and `apt-get download` against a private apt directory and sources list
//! under `target/kernels/apt` (never the machine's own sources, which stay untouched), then
//! `dpkg-deb -x`. The repositories' addresses come from the machine's own apt configuration. An
//! extracted kernel stays cached under `target/kernels/<package>`: a second run downloads nothing.
//! Guests load 9p and virtio as modules, so the image's `lib/modules/VERSION` is copied to the
//! host's `/lib/modules` (where virtme-ng looks) and indexed with `depmod`. What apt-get and
//! dpkg-deb print goes to `<target>/xtask-logs/matrix-kernels.log`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{log_path, run_logged, stdout_of};

/// One kernel series of the matrix.
pub struct Series {
    /// Short name in the tables ("5.10").
    pub name: &'static str,
    /// Where users run it.
    pub distro: &'static str,
    /// Prefix and suffix of the image package's name, with only digits between them (which
    /// leaves out the cloud and rt flavours); the newest package wins.
    pub prefix: &'static str,
    pub suffix: &'static str,
}

impl Series {
    fn names(&self, name: &str) -> bool {
        name.strip_prefix(self.prefix)
            .and_then(|rest| rest.strip_suffix(self.suffix))
            .is_some_and(|mid| !mid.is_empty() && mid.bytes().all(|b| b.is_ascii_digit()))
    }
}

/// A kernel ready to boot.
pub struct Kernel {
    pub vmlinuz: PathBuf,
    /// `uname -r` inside the guest.
    pub release: String,
    pub package: String,
}

const SUITES: &[&str] = &["bullseye", "bookworm", "bookworm-updates", "bookworm-security"];

/// The kernel of each series, from the cache or downloaded into it (one `apt-get update` for all
/// that are missing).
pub fn fetch_all(series: &[&Series], cache: &Path) -> Result<Vec<Kernel>> {
    let mut apt: Option<Apt> = None;
    let mut kernels = Vec::new();
    for s in series {
        let kernel = match cached(s, cache)? {
            Some(k) => k,
            None => {
                if apt.is_none() {
                    apt = Some(Apt::new(cache)?);
                }
                download(s, cache, apt.as_ref().expect("just set"))
                    .with_context(|| format!("fetching the {} kernel", s.name))?
            }
        };
        kernels.push(kernel);
    }
    Ok(kernels)
}

fn download(series: &Series, cache: &Path, apt: &Apt) -> Result<Kernel> {
    let package = apt.newest(series)?;
    println!("matrix: downloading {package}");
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs)?;
    let log = log_path("matrix-kernels");
    let hint = "apt-get could not download the kernel image: is the machine's Debian mirror reachable?";
    run_logged(apt.command("apt-get").args(["download", "-q", &package]).current_dir(&debs), &log, hint)?;
    let deb = std::fs::read_dir(&debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{package}_"))))
        .with_context(|| format!("apt-get download left no {package}_*.deb in {}", debs.display()))?;
    let dir = cache.join(&package);
    let partial = cache.join(format!("{package}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    run_logged(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial), &log, "dpkg-deb could not unpack it")?;
    std::fs::rename(&partial, &dir)?;
    std::fs::remove_file(&deb)?;
    cached(series, cache)?.with_context(|| format!("{} holds no boot/vmlinuz-*", dir.display()))
}

/// The newest extracted package of `series` in the cache.
fn cached(series: &Series, cache: &Path) -> Result<Option<Kernel>> {
    let Ok(entries) = std::fs::read_dir(cache) else { return Ok(None) };
    let mut found: Vec<String> =
        entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| series.names(n)).collect();
    found.sort_by_key(|n| version_key(n));
    let Some(package) = found.pop() else { return Ok(None) };
    let boot = cache.join(&package).join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .with_context(|| format!("read {}", boot.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")));
    let Some(vmlinuz) = vmlinuz else { return Ok(None) };
    let release = vmlinuz.file_name().and_then(|n| n.to_str()).unwrap_or("").trim_start_matches("vmlinuz-").to_string();
    Ok(Some(Kernel { vmlinuz, release, package }))
}

/// Numbers in a package name, for ordering ABI and upload numbers (`6.12.118+deb12` after
/// `6.12.107+deb12`, `5.10.0-32` after `5.10.0-30`).
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}

/// Copies the kernel's modules to `/lib/modules/RELEASE` and runs depmod, unless already there.
pub fn install_modules(kernel: &Kernel, cache: &Path) -> Result<()> {
    let target = Path::new("/lib/modules").join(&kernel.release);
    if target.join("modules.dep").is_file() {
        return Ok(());
    }
    let src = cache.join(&kernel.package).join("lib/modules").join(&kernel.release);
    std::fs::create_dir_all("/lib/modules")?;
    println!("matrix: installing modules of {} into {}", kernel.release, target.display());
    let log = log_path("matrix-kernels");
    run_logged(Command::new("cp").arg("-a").arg(&src).arg("/lib/modules/"), &log, "cannot copy the modules")?;
    run_logged(Command::new("depmod").arg(&kernel.release), &log, "depmod failed (Debian's kmod)")
}

/// apt-get and apt-cache on a private state, cache and sources list.
struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn new(cache: &Path) -> Result<Apt> {
        let dir = cache.join("apt");
        for sub in ["lists/partial", "archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let (main, security) = machine_uris()?;
        let mut list = String::new();
        for suite in SUITES {
            let uri = if suite.ends_with("-security") { &security } else { &main };
            list.push_str(&format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {uri} {suite} main\n"
            ));
        }
        std::fs::write(dir.join("sources.list"), list)?;
        let apt = Apt { dir };
        println!("matrix: apt-get update (private lists in {})", apt.dir.display());
        let hint = "apt-get update failed on the private lists: is the machine's Debian mirror reachable?";
        run_logged(apt.command("apt-get").args(["update", "-q"]), &log_path("matrix-kernels"), hint)?;
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        let d = self.dir.display();
        c.arg("-o")
            .arg(format!("Dir::Etc::SourceList={d}/sources.list"))
            .args(["-o", "Dir::Etc::SourceParts=/dev/null"])
            .arg("-o")
            .arg(format!("Dir::State={d}"))
            .arg("-o")
            .arg(format!("Dir::Cache={d}"))
            .args(["-o", "Dir::State::status=/dev/null"]);
        c
    }

    /// The newest package of `series` the lists offer.
    fn newest(&self, series: &Series) -> Result<String> {
        let pattern = format!("^{}.*{}$", regex_escape(series.prefix), regex_escape(series.suffix));
        let out = stdout_of(self.command("apt-cache").args(["search", "--names-only", &pattern]))
            .context("apt-cache search failed")?;
        let mut names: Vec<&str> = out.lines().filter_map(|l| l.split_whitespace().next()).collect();
        names.retain(|n| series.names(n));
        names.sort_by_key(|n| version_key(n));
        match names.pop() {
            Some(n) => Ok(n.to_string()),
            None => bail!("no package {}*{} in {}", series.prefix, series.suffix, SUITES.join(", ")),
        }
    }
}

fn regex_escape(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_string() } else { format!("\\{c}") }).collect()
}

/// The Debian archive and security archive URIs the machine's own apt sources use.
fn machine_uris() -> Result<(String, String)> {
    let mut uris = Vec::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(dir.filter_map(|e| e.ok().map(|e| e.path())));
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else { continue };
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("URIs:") {
                uris.extend(rest.split_whitespace().map(str::to_string));
            } else if let Some(rest) = line.strip_prefix("deb ") {
                let rest = if rest.starts_with('[') { rest.split_once(']').map_or("", |(_, r)| r) } else { rest };
                uris.extend(rest.split_whitespace().next().map(str::to_string));
            }
        }
    }
    let is_debian = |u: &&String| u.trim_end_matches('/').ends_with("/debian");
    let is_security = |u: &&String| u.trim_end_matches('/').ends_with("/debian-security");
    match (uris.iter().find(is_debian), uris.iter().find(is_security)) {
        (Some(m), Some(s)) => Ok((m.clone(), s.clone())),
        _ => bail!(
            "the machine's apt sources name no Debian archive and security archive (found {uris:?}); the matrix reuses them for its private sources list"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_package_by_numbers() {
        let mut v = ["linux-image-6.12.118+deb12-amd64-unsigned", "linux-image-6.12.107+deb12-amd64-unsigned"];
        v.sort_by_key(|n| version_key(n));
        assert_eq!(v[1], "linux-image-6.12.118+deb12-amd64-unsigned");
        let mut v = ["linux-image-5.10.0-32-amd64-unsigned", "linux-image-5.10.0-9-amd64-unsigned"];
        v.sort_by_key(|n| version_key(n));
        assert_eq!(v[1], "linux-image-5.10.0-32-amd64-unsigned");
    }

    #[test]
    fn series_leave_out_other_flavours() {
        let s = Series { name: "6.1", distro: "", prefix: "linux-image-6.1.0-", suffix: "-amd64-unsigned" };
        assert!(s.names("linux-image-6.1.0-57-amd64-unsigned"));
        assert!(!s.names("linux-image-6.1.0-57-cloud-amd64-unsigned"));
        assert!(!s.names("linux-image-6.1.0-57-rt-amd64-unsigned"));
        assert!(!s.names("linux-image-6.1.0-57-amd64-unsigned.partial"));
    }

    #[test]
    fn escapes_apt_search_patterns() {
        assert_eq!(regex_escape("linux-image-6.12."), "linux-image-6\\.12\\.");
        assert_eq!(regex_escape("+deb12-amd64"), "\\+deb12-amd64");
    }
}
