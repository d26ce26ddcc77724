//! `cargo xtask setup [--for PURPOSE] [--check]`: make a Debian 12 machine able to build, run,
//! test or package connmon. Each command asks only for what its purpose needs ([`Purpose`]):
//! `run` gets the build toolchain and tracefs, not the test servers; `test` gets those too;
//! `setup` without `--for` installs everything (CI runs it).
//!
//! Each step prints one line: `ok <what>`, `installing <what> ... ok (12 s)` or (with `--check`)
//! `missing <what>`. apt-get, rustup, cargo install and pip write into a log under
//! `<target>/xtask-logs/`; only a failing step shows its log's tail and a hint. When nothing is
//! missing the whole run only queries (dpkg-query, rustup, bpf-linker --version, python3 -m
//! kubernetes_validate --version) and takes under a second. First of all it checks that the
//! target dir's disk can hold the builds ([`crate::disk`]).

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::needs::{packages_for, Purpose, DEBIAN_PACKAGES, EVERYTHING};
use crate::toolchain;
use crate::util::{is_root, log_path, run_logged, stdout_of, step, which};

/// LLVM major that bpf-linker must be built against: the one of the pinned nightly that builds the
/// eBPF crate (monitor-ebpf/rust-toolchain.toml; rustc 1.97 nightly uses LLVM 22; bpf-linker's
/// LLVM must be >= rustc's, which setup checks).
const LLVM_MAJOR: u32 = 22;
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Check,
    Install,
}

/// Run every step `purposes` need; in check mode, error at the end if anything is missing.
/// `with_tracefs`: also mount (or check) tracefs when running is a purpose (image builds cannot).
pub fn run(purposes: &[Purpose], check: bool, with_tracefs: bool) -> Result<()> {
    let mode = if check { Mode::Check } else { Mode::Install };
    let expanded: Vec<Purpose> =
        EVERYTHING.iter().copied().filter(|p| purposes.iter().any(|q| q.with_implied().contains(p))).collect();
    let purposes = &expanded[..];
    let needs = |p: Purpose| purposes.contains(&p);
    crate::disk::check(purposes)?;
    let mut missing = Vec::new();
    debian_packages(purposes, mode, &mut missing)?;
    if needs(Purpose::Build) {
        rust_nightly(mode, &mut missing)?;
    }
    if needs(Purpose::Static) {
        musl_target(mode, &mut missing)?;
    }
    if needs(Purpose::Lint) {
        lint_components(mode, &mut missing)?;
    }
    if needs(Purpose::Build) {
        bpf_linker(mode, &mut missing)?;
    }
    if needs(Purpose::Test) {
        crate::fuzz::ensure_cargo_fuzz(mode == Mode::Check, &mut missing)?;
        python_packages(mode, &mut missing)?;
    }
    if needs(Purpose::Run) {
        if with_tracefs {
            tracefs(mode, &mut missing)?;
        } else {
            println!("skipped tracefs (--no-tracefs)");
        }
    }
    if !missing.is_empty() {
        let root_hint = if is_root() { "" } else { " as root" };
        bail!("missing: {}; run `cargo xtask setup`{root_hint}", missing.join(", "));
    }
    Ok(())
}

/// Packages of `wanted` that are not "install ok installed" (one dpkg-query for all of them).
fn missing_packages(wanted: &[&'static str]) -> Result<Vec<&'static str>> {
    // Unknown packages make dpkg-query exit 1 while still printing the known ones: read stdout
    // whatever the exit status.
    let out = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package}\t${Status}\n")
        .args(wanted)
        .stderr(std::process::Stdio::null())
        .output()
        .context("cannot run dpkg-query (setup supports Debian and Ubuntu only)")?;
    let installed: HashSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(_, status)| status.trim() == "install ok installed")
        .map(|(name, _)| name.to_owned())
        .collect();
    Ok(wanted.iter().copied().filter(|p| !installed.contains(*p)).collect())
}

/// Runs apt-get quietly into the setup log (update first, once per setup run).
fn apt_get_install(packages: &[&str]) -> Result<()> {
    let log = log_path("setup-apt");
    let hint = "apt-get could not install them: check the machine's apt sources and network \
                (`apt-get install PACKAGE` by hand shows the whole error)";
    run_logged(Command::new("apt-get").arg("update").env("DEBIAN_FRONTEND", "noninteractive"), &log, hint)?;
    run_logged(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &log,
        hint,
    )
}

fn debian_packages(purposes: &[Purpose], mode: Mode, missing: &mut Vec<String>) -> Result<()> {
    let wanted = packages_for(purposes);
    if wanted.is_empty() {
        return Ok(());
    }
    let mut groups: Vec<&str> =
        DEBIAN_PACKAGES.iter().filter(|g| purposes.contains(&g.needed_by)).map(|g| g.needed_by.name()).collect();
    groups.dedup();
    let groups = groups.join(", ");
    let absent = missing_packages(&wanted)?;
    if absent.is_empty() {
        println!("ok Debian packages ({} for {groups})", wanted.len());
        return Ok(());
    }
    let list = absent.join(" ");
    if mode == Mode::Check {
        println!("missing Debian packages: {list}");
        missing.push("Debian packages".into());
        return Ok(());
    }
    if !is_root() {
        bail!("missing Debian packages: {list}; run `cargo xtask setup` as root");
    }
    step(&format!("installing Debian packages for {groups}: {list}"), || apt_get_install(&absent))?;
    let still = missing_packages(&wanted)?;
    if !still.is_empty() {
        bail!("apt-get install succeeded but these are still not installed: {}", still.join(" "));
    }
    Ok(())
}

/// What to do when rustup fails.
const RUSTUP_HINT: &str = "rustup downloads from static.rust-lang.org: check the network (or a proxy in \
                           HTTPS_PROXY), then run the same command again";

/// The eBPF crate is built with `rustup run <pinned nightly> cargo build -Z build-std=core`: the
/// dated nightly of monitor-ebpf/rust-toolchain.toml with its components (rust-src; clippy for
/// `cargo xtask lint`).
fn rust_nightly(mode: Mode, missing: &mut Vec<String>) -> Result<()> {
    let t = toolchain::ebpf_toolchain()?;
    let what = format!("Rust {} (the eBPF toolchain)", t.channel);
    if t.installed()? {
        println!("ok {what}");
    } else if mode == Mode::Check {
        println!("missing {what}");
        missing.push(t.channel.clone());
        return Ok(());
    } else {
        let mut cmd = Command::new("rustup");
        cmd.args(["toolchain", "install", &t.channel, "--profile", "minimal"]);
        if !t.components.is_empty() {
            cmd.args(["--component", &t.components.join(",")]);
        }
        step(&format!("installing {what} (rustup, minimal profile)"), || {
            run_logged(&mut cmd, &log_path("setup-rustup"), RUSTUP_HINT)
        })?;
    }

    let lacking = t.missing_components();
    if lacking.is_empty() {
        println!("ok {} for {}", t.components.join(", "), t.channel);
    } else if mode == Mode::Check {
        println!("missing {} for {}", lacking.join(", "), t.channel);
        missing.extend(lacking.iter().map(|c| format!("{} {c}", t.channel)));
    } else {
        step(&format!("installing {} for {}", lacking.join(", "), t.channel), || {
            run_logged(
                Command::new("rustup").args(["component", "add", "--toolchain", &t.channel]).args(&lacking),
                &log_path("setup-rustup"),
                RUSTUP_HINT,
            )
        })?;
    }

    // bpf-linker reads the bitcode this rustc writes: its LLVM must not be older.
    let version = stdout_of(Command::new("rustup").args(["run", &t.channel, "rustc", "-Vv"]));
    if let Some(llvm) = version.as_deref().and_then(llvm_major_in) {
        if llvm > LLVM_MAJOR {
            bail!(
                "{} uses LLVM {llvm}, newer than the LLVM {LLVM_MAJOR} bpf-linker is built against: \
                 raise LLVM_MAJOR and LLVM_PREFIX in xtask/src/setup.rs with the pin",
                t.channel
            );
        }
    }
    Ok(())
}

/// The static release binary (`cargo xtask image`) is built for the musl target of the toolchain
/// that builds the workspace.
fn musl_target(mode: Mode, missing: &mut Vec<String>) -> Result<()> {
    let target = crate::dist::MUSL_TARGET;
    // From the workspace root, whose toolchain builds the agent (monitor-ebpf pins its own).
    let root = crate::util::workspace_root();
    let installed = stdout_of(Command::new("rustup").args(["target", "list", "--installed"]).current_dir(&root))
        .is_some_and(|list| list.lines().any(|l| l.trim() == target));
    if installed {
        println!("ok Rust target {target}");
    } else if mode == Mode::Check {
        println!("missing Rust target {target}");
        missing.push(format!("Rust target {target}"));
    } else {
        step(&format!("installing Rust target {target}"), || {
            run_logged(
                Command::new("rustup").args(["target", "add", target]).current_dir(&root),
                &log_path("setup-rustup"),
                RUSTUP_HINT,
            )
        })?;
    }
    Ok(())
}

/// `cargo xtask lint` (which CI runs) needs rustfmt and clippy on the toolchain that builds the
/// workspace; a minimal rustup profile has neither.
fn lint_components(mode: Mode, missing: &mut Vec<String>) -> Result<()> {
    let root = crate::util::workspace_root();
    let installed = stdout_of(Command::new("rustup").args(["component", "list", "--installed"]).current_dir(&root))
        .unwrap_or_default();
    let absent: Vec<&str> = ["rustfmt", "clippy"]
        .into_iter()
        .filter(|c| {
            !installed.lines().any(|l| l.split_whitespace().next().is_some_and(|n| n.starts_with(&format!("{c}-"))))
        })
        .collect();
    if absent.is_empty() {
        println!("ok rustfmt and clippy");
    } else if mode == Mode::Check {
        println!("missing {}", absent.join(" and "));
        missing.push(absent.join(" and "));
    } else {
        step(&format!("installing {} (rustup component add)", absent.join(" and ")), || {
            run_logged(
                Command::new("rustup").args(["component", "add"]).args(&absent).current_dir(&root),
                &log_path("setup-rustup"),
                RUSTUP_HINT,
            )
        })?;
    }
    Ok(())
}

enum Linker {
    Ok { version: String, llvm: Option<u32> },
    Missing,
    WrongLlvm { version: String, llvm: u32 },
}

/// First number after "LLVM" in `text`, e.g. "LLVM version 22.1.8" -> 22.
fn llvm_major_in(text: &str) -> Option<u32> {
    text.match_indices("LLVM").find_map(|(i, _)| {
        let rest = text[i + 4..].trim_start_matches(|c: char| !c.is_ascii_digit() && c != '\n');
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// LLVM major of the libLLVM a binary is dynamically linked to ("libLLVM.so.22.1", "libLLVM-14.so").
fn linked_llvm_major(binary: &Path) -> Option<u32> {
    let ldd = stdout_of(Command::new("ldd").arg(binary))?;
    ldd.split_whitespace().filter_map(|word| word.strip_prefix("libLLVM")).find_map(|rest| {
        let digits: String =
            rest.chars().skip_while(|c| !c.is_ascii_digit()).take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

fn linker_status() -> Linker {
    // PATH already starts with ~/.cargo/bin (see util::prepend_cargo_bin_to_path).
    let Some(path) = which("bpf-linker") else {
        return Linker::Missing;
    };
    let Some(out) = stdout_of(Command::new(&path).arg("--version")) else {
        return Linker::Missing;
    };
    let version = out.lines().next().unwrap_or("bpf-linker").trim().to_owned();
    // bpf-linker 0.13 prints only "bpf-linker 0.13.0"; use the LLVM major if a version prints
    // it, else the libLLVM it is linked to (the llvm-22 feature links /usr/lib/llvm-22's).
    let llvm = llvm_major_in(&out).or_else(|| linked_llvm_major(&path));
    match llvm {
        Some(major) if major != LLVM_MAJOR => Linker::WrongLlvm { version, llvm: major },
        llvm => Linker::Ok { version, llvm },
    }
}

fn bpf_linker(mode: Mode, missing: &mut Vec<String>) -> Result<()> {
    let replace = match linker_status() {
        Linker::Ok { version, llvm } => {
            match llvm {
                Some(major) => println!("ok {version} (LLVM {major})"),
                None => println!("ok {version}"),
            }
            return Ok(());
        }
        Linker::Missing => {
            if mode == Mode::Check {
                println!("missing bpf-linker");
            }
            false
        }
        Linker::WrongLlvm { version, llvm } => {
            if mode == Mode::Check {
                println!("missing bpf-linker for LLVM {LLVM_MAJOR} ({version} uses LLVM {llvm})");
            }
            true
        }
    };
    if mode == Mode::Check {
        missing.push("bpf-linker".into());
        return Ok(());
    }
    let mut cmd = Command::new("cargo");
    cmd.args(["install", "bpf-linker", "--locked", "--no-default-features", "--features"])
        .arg(format!("llvm-{LLVM_MAJOR}"))
        .env("LLVM_PREFIX", LLVM_PREFIX)
        // Away from the workspace, so its .cargo/config.toml does not apply to the install.
        .current_dir(std::env::temp_dir());
    if replace {
        cmd.arg("--force");
    }
    let hint = format!(
        "bpf-linker builds against LLVM {LLVM_MAJOR} in {LLVM_PREFIX} (Debian's llvm-{LLVM_MAJOR}-dev and \
         libpolly-{LLVM_MAJOR}-dev, from bookworm-security): check that they are installed"
    );
    step(&format!("installing bpf-linker for LLVM {LLVM_MAJOR} (cargo install, about 4 minutes)"), || {
        run_logged(&mut cmd, &log_path("setup-bpf-linker"), &hint)
    })?;
    match linker_status() {
        Linker::Ok { .. } => Ok(()),
        Linker::Missing => {
            bail!("bpf-linker was installed but `bpf-linker --version` does not run")
        }
        Linker::WrongLlvm { llvm, .. } => bail!("the installed bpf-linker still uses LLVM {llvm}"),
    }
}

/// A package from PyPI that tests use through the `python3` on PATH.
struct PyPackage {
    /// Its name in setup's output.
    name: &'static str,
    /// The requirement given to pip.
    requirement: &'static str,
    /// `python3` arguments that print its version, and fail unless the right one is installed.
    version: &'static [&'static str],
    needed_by: &'static str,
}

const PY_PACKAGES: &[PyPackage] = &[
    // `cargo xtask matrix`: boots a kernel image with the host's root filesystem (command `vng`).
    PyPackage {
        name: "virtme-ng",
        requirement: "virtme-ng",
        version: &["-m", "virtme_ng.run", "--version"],
        needed_by: "cargo xtask matrix (older kernels under qemu)",
    },
    PyPackage {
        name: "kubernetes-validate",
        requirement: "kubernetes-validate",
        version: &["-m", "kubernetes_validate", "--version"],
        needed_by: "tests/manifests.rs (Kubernetes manifests against the API schemas)",
    },
    // The incidents' client libraries. redis-py 5, whose asyncio pool defaults to
    // max_connections 2**31 (the incident); 6 changed its retry defaults.
    PyPackage {
        name: "redis-py",
        requirement: "redis>=5,<6",
        version: &[
            "-c",
            "import redis; assert redis.__version__.split('.')[0] == '5', redis.__version__; print(redis.__version__)",
        ],
        needed_by: "tests/incidents_pools.rs (the asyncio pool at maxclients)",
    },
    // psycopg 3 with its binary wheel, which carries its own libpq.
    PyPackage {
        name: "psycopg",
        requirement: "psycopg[binary]>=3.1,<4",
        version: &["-c", "import psycopg; print(psycopg.__version__, psycopg.pq.__impl__)"],
        needed_by: "tests/incidents_pools.rs (PostgreSQL at max_connections)",
    },
];

/// What `python3 ARGS` prints when it succeeds.
fn py_version(p: &PyPackage) -> Option<String> {
    stdout_of(Command::new("python3").args(p.version)).map(|out| out.trim().to_owned())
}

/// The PyPI packages of PY_PACKAGES, installed with pip for the `python3` on PATH; where that
/// python has no pip (Debian's own python3, e.g. in the Dockerfile's builder), Debian's
/// python3-pip is installed first. One pip run installs everything missing.
fn python_packages(mode: Mode, missing: &mut Vec<String>) -> Result<()> {
    let mut absent = Vec::new();
    for p in PY_PACKAGES {
        match py_version(p) {
            Some(version) => println!("ok {} {version}", p.name),
            None if mode == Mode::Check => {
                println!("missing {} (python3 -m pip install '{}'; for {})", p.name, p.requirement, p.needed_by);
                missing.push(p.name.into());
            }
            None => absent.push(p),
        }
    }
    if absent.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = absent.iter().map(|p| p.name).collect();
    let has_pip = stdout_of(Command::new("python3").args(["-m", "pip", "--version"])).is_some();
    if !has_pip {
        if !is_root() {
            bail!("python3 has no pip to install {} with; run `cargo xtask setup` as root (it installs Debian's python3-pip)", names.join(", "));
        }
        step("installing Debian's python3-pip (python3 has no pip)", || apt_get_install(&["python3-pip"]))?;
    }
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "install", "--quiet"])
        .args(absent.iter().map(|p| p.requirement))
        // Debian's own python3 refuses `pip install` outside a virtualenv (PEP 668); as root
        // the packages go to /usr/local, apart from Debian's. Older pips ignore this.
        .env("PIP_BREAK_SYSTEM_PACKAGES", "1")
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1");
    let hint = "pip downloads from PyPI: check the network (or PIP_INDEX_URL for a mirror)";
    step(&format!("installing {} (python3 -m pip install)", names.join(", ")), || {
        run_logged(&mut pip, &log_path("setup-pip"), hint)
    })?;
    for p in absent {
        match py_version(p) {
            Some(version) => println!("ok {} {version}", p.name),
            None => bail!("pip installed {} but `python3 {}` does not run", p.requirement, p.version.join(" ")),
        }
    }
    Ok(())
}

/// Listed in /proc/self/mounts (a non-root user cannot look inside it), or its events are visible.
fn tracefs_mounted(at: &str) -> bool {
    let listed = std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            let mut fields = line.split_whitespace().skip(1);
            fields.next() == Some(at) && fields.next() == Some("tracefs")
        })
    });
    listed || Path::new(at).join("events").is_dir()
}

/// The agent reads tracepoint formats from /sys/kernel/tracing/events (not mounted at boot here).
fn tracefs(mode: Mode, missing: &mut Vec<String>) -> Result<()> {
    const TRACING: &str = "/sys/kernel/tracing";
    if tracefs_mounted(TRACING) {
        println!("ok tracefs at {TRACING}");
        return Ok(());
    }
    if !is_root() {
        // Not an error: the agent (which runs as root) mounts it itself when it is missing.
        println!("warning: tracefs is not mounted at {TRACING} and mounting it needs root; the agent will try itself");
        return Ok(());
    }
    if mode == Mode::Check {
        println!("missing tracefs at {TRACING}");
        missing.push("tracefs".into());
        return Ok(());
    }
    step(&format!("mounting tracefs at {TRACING}"), || {
        run_logged(
            Command::new("mount").args(["-t", "tracefs", "nodev", TRACING]),
            &log_path("setup-tracefs"),
            "the kernel needs CONFIG_TRACING; without tracefs the agent runs with its tp_btf probes only",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_version_text() {
        assert_eq!(llvm_major_in("bpf-linker 0.13.0"), None);
        assert_eq!(llvm_major_in("bpf-linker 0.14.0\nLLVM version 22.1.8"), Some(22));
        assert_eq!(llvm_major_in("bpf-linker 0.9.0 (LLVM 21)"), Some(21));
    }
}
