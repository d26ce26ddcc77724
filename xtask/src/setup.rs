//! `cargo xtask setup [--check]`: make a Debian 12 machine able to build and test connmon.
//!
//! Each step prints one line: `ok <what>`, `installing <what>` or (with `--check`) `missing <what>`.
//! When nothing is missing the whole run only queries (dpkg-query, rustup, bpf-linker --version,
//! python3 -m kubernetes_validate --version) and takes under a second.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::toolchain;
use crate::util::{is_root, run_inherit, stdout_of, which};

/// LLVM major that bpf-linker must be built against: the one of the pinned nightly that builds the
/// eBPF crate (monitor-ebpf/rust-toolchain.toml; rustc 1.97 nightly uses LLVM 22; bpf-linker's
/// LLVM must be >= rustc's, which setup checks).
const LLVM_MAJOR: u32 = 22;
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

struct PackageGroup {
    needed_by: &'static str,
    packages: &'static [&'static str],
}

/// Debian 12 (bookworm) packages; llvm-22 comes from bookworm-security.
const DEBIAN_PACKAGES: &[PackageGroup] = &[
    // Building bpf-linker with `--features llvm-22` (LLVM_PREFIX=/usr/lib/llvm-22): it links
    // libLLVM 22 and Polly, and LLVM's compression libraries.
    PackageGroup {
        needed_by: "build",
        packages: &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev", "zlib1g-dev", "pkg-config"],
    },
    // Integration tests, kernel side: network namespaces and the ss/nstat oracles (iproute2),
    // bpftrace as an independent tracer, setcap to run the agent with capabilities only.
    // bpftool: tests/chaos.rs checks nothing stays attached after kill -9; `cargo xtask bench kernel`
    // reads run_time_ns/run_cnt with it.
    PackageGroup { needed_by: "test", packages: &["iproute2", "bpftrace", "libcap2-bin", "bpftool"] },
    // Integration tests, real servers whose connections and accept queues the agent watches,
    // and Prometheus tooling (promtool, alertmanager) to check the metrics and alert rules.
    PackageGroup {
        needed_by: "test",
        packages: &["redis-server", "postgresql", "prometheus", "prometheus-alertmanager"],
    },
    // The --web.config.file tests: certificates from the openssl CLI, bcrypt hashes from htpasswd
    // (apache2-utils), curl as the TLS client. curl is also in the README's examples.
    PackageGroup { needed_by: "test", packages: &["openssl", "apache2-utils", "curl"] },
    // `cargo xtask matrix` (part of `cargo xtask test`): Debian kernels booted under qemu with
    // virtme-ng, which needs kmod (depmod for the guest's 9p and virtio modules) and busybox (its
    // initramfs).
    PackageGroup { needed_by: "test", packages: &["qemu-system-x86", "kmod", "busybox-static"] },
    // tests/top.rs: `connmon top` in a real terminal (send-keys, capture-pane).
    PackageGroup { needed_by: "test", packages: &["tmux"] },
    // tests/chaos_alerts.rs: libfaketime steps the wall clock for the agent alone (`date -s` would
    // step the whole host).
    PackageGroup { needed_by: "test", packages: &["faketime"] },
    // `cargo xtask image` and tests/container.rs: buildah builds the image offline, podman runs
    // it with runc (crun cannot use hybrid cgroups); musl-gcc compiles ring's C and assembly for
    // the static musl binary; binutils' strip takes its symbols out of the image.
    PackageGroup { needed_by: "image", packages: &["buildah", "podman", "runc", "musl-tools", "binutils"] },
    // For people poking at a running agent by hand (the README's examples use them).
    PackageGroup { needed_by: "run", packages: &["jq"] },
];

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Check,
    Install,
}

/// Run every step; in check mode, error at the end if anything is missing. `with_tracefs`: also
/// mount (or check) tracefs, which image builds cannot do.
pub fn run(check: bool, with_tracefs: bool) -> Result<()> {
    let mode = if check { Mode::Check } else { Mode::Install };
    let mut missing = Vec::new();
    debian_packages(mode, &mut missing)?;
    rust_nightly(mode, &mut missing)?;
    musl_target(mode, &mut missing)?;
    lint_components(mode, &mut missing)?;
    bpf_linker(mode, &mut missing)?;
    crate::fuzz::ensure_cargo_fuzz(mode == Mode::Check, &mut missing)?;
    python_packages(mode, &mut missing)?;
    if with_tracefs {
        tracefs(mode, &mut missing)?;
    } else {
        println!("skipped tracefs (--no-tracefs)");
    }
    if !missing.is_empty() {
        let root_hint = if is_root() { "" } else { " as root" };
        bail!("missing: {}; run `cargo xtask setup`{root_hint}", missing.join(", "));
    }
    Ok(())
}

fn all_packages() -> Vec<&'static str> {
    DEBIAN_PACKAGES.iter().flat_map(|g| g.packages.iter().copied()).collect()
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

fn debian_packages(mode: Mode, missing: &mut Vec<String>) -> Result<()> {
    let wanted = all_packages();
    let absent = missing_packages(&wanted)?;
    if absent.is_empty() {
        let mut groups: Vec<&str> = DEBIAN_PACKAGES.iter().map(|g| g.needed_by).collect();
        groups.dedup();
        println!("ok Debian packages ({} for {})", wanted.len(), groups.join(" and "));
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
    println!("installing Debian packages: {list}");
    run_inherit(Command::new("apt-get").arg("update").env("DEBIAN_FRONTEND", "noninteractive"))?;
    run_inherit(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&absent)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let still = missing_packages(&wanted)?;
    if !still.is_empty() {
        bail!("apt-get install succeeded but these are still not installed: {}", still.join(" "));
    }
    Ok(())
}

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
        println!("installing {what} (rustup, minimal profile)");
        let mut cmd = Command::new("rustup");
        cmd.args(["toolchain", "install", &t.channel, "--profile", "minimal"]);
        if !t.components.is_empty() {
            cmd.args(["--component", &t.components.join(",")]);
        }
        run_inherit(&mut cmd)?;
    }

    let lacking = t.missing_components();
    if lacking.is_empty() {
        println!("ok {} for {}", t.components.join(", "), t.channel);
    } else if mode == Mode::Check {
        println!("missing {} for {}", lacking.join(", "), t.channel);
        missing.extend(lacking.iter().map(|c| format!("{} {c}", t.channel)));
    } else {
        println!("installing {} for {}", lacking.join(", "), t.channel);
        run_inherit(Command::new("rustup").args(["component", "add", "--toolchain", &t.channel]).args(&lacking))?;
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
    let target = crate::image::MUSL_TARGET;
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
        println!("installing Rust target {target}");
        run_inherit(Command::new("rustup").args(["target", "add", target]).current_dir(&root))?;
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
        println!("installing {} (rustup component add)", absent.join(" and "));
        run_inherit(Command::new("rustup").args(["component", "add"]).args(&absent).current_dir(&root))?;
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
    println!("installing bpf-linker for LLVM {LLVM_MAJOR} (cargo install: this takes about 4 minutes)");
    let mut cmd = Command::new("cargo");
    cmd.args(["install", "bpf-linker", "--locked", "--no-default-features", "--features"])
        .arg(format!("llvm-{LLVM_MAJOR}"))
        .env("LLVM_PREFIX", LLVM_PREFIX)
        // Away from the workspace, so its .cargo/config.toml does not apply to the install.
        .current_dir(std::env::temp_dir());
    if replace {
        cmd.arg("--force");
    }
    run_inherit(&mut cmd)?;
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
    if has_pip {
        println!("installing {} (python3 -m pip install)", names.join(", "));
    } else {
        if !is_root() {
            bail!("python3 has no pip to install {} with; run `cargo xtask setup` as root (it installs Debian's python3-pip)", names.join(", "));
        }
        println!("installing {} (python3 -m pip install, after Debian's python3-pip)", names.join(", "));
        run_inherit(Command::new("apt-get").arg("update").env("DEBIAN_FRONTEND", "noninteractive"))?;
        run_inherit(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "python3-pip"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    run_inherit(
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet"])
            .args(absent.iter().map(|p| p.requirement))
            // Debian's own python3 refuses `pip install` outside a virtualenv (PEP 668); as root
            // the packages go to /usr/local, apart from Debian's. Older pips ignore this.
            .env("PIP_BREAK_SYSTEM_PACKAGES", "1")
            .env("PIP_ROOT_USER_ACTION", "ignore")
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
    )?;
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
    println!("installing tracefs at {TRACING} (mount -t tracefs nodev {TRACING})");
    run_inherit(Command::new("mount").args(["-t", "tracefs", "nodev", TRACING]))
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

    #[test]
    fn package_table_has_no_duplicates() {
        let all = all_packages();
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), unique.len());
    }
}
