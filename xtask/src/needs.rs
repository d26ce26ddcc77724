//! What each command needs installed: the purposes a machine is set up for ([`Purpose`]), what
//! each implies, and the Debian packages of each. `cargo xtask run` asks for [`FOR_RUN`] (a build
//! toolchain, tracefs), not for the test servers; `setup` without `--for` asks for [`EVERYTHING`].

/// What a command needs the machine for. Each setup step and package group serves one purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Purpose {
    /// Compiling the agent: LLVM 22 for bpf-linker, the pinned eBPF nightly, bpf-linker.
    Build,
    /// Running it: tracefs mounted (the agent also mounts it itself when it can).
    Run,
    /// The static musl binary of `cargo xtask dist` and `image`: musl-tools, strip, the target.
    Static,
    /// The OCI image of `cargo xtask image`: buildah, podman and runc (tests/container.rs).
    Image,
    /// The test suite: real servers, oracles (ss, nstat, promtool), the incidents' Python clients.
    Test,
    /// `cargo xtask demo`: python3 for the replayed incident's server and clients.
    Demo,
    /// `cargo xtask lint`: rustfmt and clippy for the workspace's toolchain.
    Lint,
    /// Poking at a running agent by hand: jq.
    Tools,
}

impl Purpose {
    /// This purpose and what it cannot do without (running needs a build, tests build the image).
    pub fn with_implied(self) -> &'static [Purpose] {
        match self {
            Purpose::Build => &[Purpose::Build],
            Purpose::Run => FOR_RUN,
            Purpose::Static => FOR_DIST,
            Purpose::Image => FOR_IMAGE,
            Purpose::Test => FOR_TEST,
            Purpose::Demo => FOR_DEMO,
            Purpose::Lint => &[Purpose::Lint],
            Purpose::Tools => &[Purpose::Tools],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Purpose::Build => "build",
            Purpose::Run => "run",
            Purpose::Static => "static binary",
            Purpose::Image => "image",
            Purpose::Test => "tests",
            Purpose::Demo => "demo",
            Purpose::Lint => "lint",
            Purpose::Tools => "tools",
        }
    }
}

/// `cargo xtask setup` without `--for`: every purpose.
pub const EVERYTHING: &[Purpose] = &[
    Purpose::Build,
    Purpose::Run,
    Purpose::Static,
    Purpose::Image,
    Purpose::Test,
    Purpose::Demo,
    Purpose::Lint,
    Purpose::Tools,
];
/// `cargo xtask run`.
pub const FOR_RUN: &[Purpose] = &[Purpose::Build, Purpose::Run];
/// `cargo xtask demo`.
pub const FOR_DEMO: &[Purpose] = &[Purpose::Build, Purpose::Run, Purpose::Demo];
/// `cargo xtask dist`.
pub const FOR_DIST: &[Purpose] = &[Purpose::Build, Purpose::Static];
/// `cargo xtask image`.
pub const FOR_IMAGE: &[Purpose] = &[Purpose::Build, Purpose::Static, Purpose::Image];
/// `cargo xtask test`: it builds the image (tests/container.rs) and the test fixtures are Python.
pub const FOR_TEST: &[Purpose] =
    &[Purpose::Build, Purpose::Run, Purpose::Static, Purpose::Image, Purpose::Test, Purpose::Demo];

pub struct PackageGroup {
    pub needed_by: Purpose,
    pub packages: &'static [&'static str],
}

/// Debian 12 (bookworm) packages; llvm-22 comes from bookworm-security.
pub const DEBIAN_PACKAGES: &[PackageGroup] = &[
    // Building bpf-linker with `--features llvm-22` (LLVM_PREFIX=/usr/lib/llvm-22): it links
    // libLLVM 22 and Polly, and LLVM's compression libraries.
    PackageGroup {
        needed_by: Purpose::Build,
        packages: &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev", "zlib1g-dev", "pkg-config"],
    },
    // Integration tests, kernel side: network namespaces and the ss/nstat oracles (iproute2),
    // bpftrace as an independent tracer, setcap to run the agent with capabilities only.
    // bpftool: tests/chaos.rs checks nothing stays attached after kill -9; `cargo xtask bench kernel`
    // reads run_time_ns/run_cnt with it.
    PackageGroup { needed_by: Purpose::Test, packages: &["iproute2", "bpftrace", "libcap2-bin", "bpftool"] },
    // Integration tests, real servers whose connections and accept queues the agent watches,
    // and Prometheus tooling (promtool, alertmanager) to check the metrics and alert rules.
    PackageGroup {
        needed_by: Purpose::Test,
        packages: &["redis-server", "postgresql", "prometheus", "prometheus-alertmanager"],
    },
    // The --web.config.file tests: certificates from the openssl CLI, bcrypt hashes from htpasswd
    // (apache2-utils), curl as the TLS client. `file` says whether the release binary is static
    // (tests/dist.rs).
    PackageGroup { needed_by: Purpose::Test, packages: &["openssl", "apache2-utils", "curl", "file"] },
    // `cargo xtask matrix` (part of `cargo xtask test`): Debian kernels booted under qemu with
    // virtme-ng, which needs kmod (depmod for the guest's 9p and virtio modules) and busybox (its
    // initramfs).
    PackageGroup { needed_by: Purpose::Test, packages: &["qemu-system-x86", "kmod", "busybox-static"] },
    // tests/top.rs: `connmon top` in a real terminal (send-keys, capture-pane).
    PackageGroup { needed_by: Purpose::Test, packages: &["tmux"] },
    // tests/chaos_alerts.rs: libfaketime steps the wall clock for the agent alone (`date -s` would
    // step the whole host).
    PackageGroup { needed_by: Purpose::Test, packages: &["faketime"] },
    // musl-gcc compiles ring's C and assembly for the static musl binary; binutils' strip takes
    // its symbols out (dist tarball and image).
    PackageGroup { needed_by: Purpose::Static, packages: &["musl-tools", "binutils"] },
    // `cargo xtask image` and tests/container.rs: buildah builds the image offline, podman runs
    // it with runc (crun cannot use hybrid cgroups).
    PackageGroup { needed_by: Purpose::Image, packages: &["buildah", "podman", "runc"] },
    // The demo's and the tests' pre-fork server and clients (tests/fixtures/*.py, stdlib only).
    PackageGroup { needed_by: Purpose::Demo, packages: &["python3"] },
    // For people poking at a running agent by hand.
    PackageGroup { needed_by: Purpose::Tools, packages: &["jq"] },
];

/// The packages of the groups `purposes` need.
pub fn packages_for(purposes: &[Purpose]) -> Vec<&'static str> {
    let mut all: Vec<&'static str> = DEBIAN_PACKAGES
        .iter()
        .filter(|g| purposes.contains(&g.needed_by))
        .flat_map(|g| g.packages.iter().copied())
        .collect();
    all.dedup();
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn package_table_has_no_duplicates() {
        let all = packages_for(EVERYTHING);
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), unique.len());
    }

    #[test]
    fn running_needs_no_test_servers() {
        let run = packages_for(FOR_RUN);
        for server in ["redis-server", "postgresql", "prometheus", "prometheus-alertmanager", "bpftrace", "buildah"] {
            assert!(!run.contains(&server), "`cargo xtask run` would install {server}");
        }
        assert!(run.contains(&"llvm-22-dev"), "bpf-linker needs LLVM 22 to build");
        let test = packages_for(FOR_TEST);
        assert!(run.iter().all(|p| test.contains(p)), "the tests run the agent too");
        for p in ["redis-server", "postgresql", "prometheus-alertmanager", "buildah", "python3"] {
            assert!(test.contains(&p), "`cargo xtask test` needs {p}");
        }
        assert!(!FOR_RUN.contains(&Purpose::Test) && FOR_TEST.contains(&Purpose::Test));
    }

    #[test]
    fn each_purpose_brings_what_it_cannot_do_without() {
        for p in EVERYTHING {
            assert!(p.with_implied().contains(p), "{p:?}");
            for q in p.with_implied() {
                assert!(
                    q.with_implied().iter().all(|r| p.with_implied().contains(r)),
                    "{p:?} implies {q:?} but not all of it"
                );
            }
        }
        assert_eq!(Purpose::Run.with_implied(), [Purpose::Build, Purpose::Run]);
    }
}
