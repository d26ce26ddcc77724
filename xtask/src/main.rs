//! Project tasks: `cargo xtask <command>` (the alias lives in `.cargo/config.toml`).
//!
//! - `setup [--for PURPOSE] [--check]`: install (or, with `--check`, only verify) what a purpose
//!   needs on a Debian 12 machine (everything without `--for`).
//! - `test [-- ARGS]`: setup for the tests, then the whole test suite as root, the release
//!   tarball, the image, the kernel matrix and the fuzz targets (`suite`); with ARGS, only
//!   `cargo test ARGS` (after the tarball and the image).
//! - `run [-- ARGS]`: setup for building and running only, release build, then `connmon run ARGS`.
//! - `demo`: an outage replayed on this machine until the agent's alert fires (needs root).
//! - `dist`: the static release binary (`target/dist/connmon`) and the release tarball.
//! - `image [--binary-only]`: setup, the dist binary, then the OCI image built with buildah from
//!   the Dockerfile (`target/connmon-image.oci.tar`).
//! - `bench [kernel|pools|scale]`: kernel ns per connection from bpf_stats next to two bpftrace
//!   programs (`kernel`), the agent's overhead under connection churn (`pools`), the agent at scale
//!   (`scale`); all when no target is named (needs root, bpftrace and bpftool).
//! - `matrix [--kernels 5.10,6.1,6.12] [--no-host] [--sequential]`: the kernel smoke suite on
//!   Debian's 5.10, 6.1 and 6.12 under qemu (virtme-ng) and on the host kernel, one feature table
//!   per kernel; fails on a regression. `test` runs it after the test suite.
//! - `fuzz [--seconds N] [--jobs N] [--build-only] [TARGET...]`: build the cargo-fuzz targets in
//!   fuzz/ and run each for N seconds (default 10) after replaying its corpus, one per CPU at a
//!   time. `test` runs it after the test suite.
//! - `lint`: `cargo fmt --check` on every crate, clippy `-D warnings` on the user-space crates and
//!   on the eBPF crate (pinned nightly, bpfel-unknown-none), no import cycles in any crate.

mod bench;
mod cycles;
mod demo;
mod disk;
mod dist;
mod fuzz;
mod image;
mod lint;
mod matrix;
mod needs;
mod setup;
mod suite;
mod toolchain;
mod util;

use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::util::{is_root, workspace_root, ChildFailed};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "connmon project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

// A new task (e.g. `bench`) is one more variant here, its `Args` struct and one arm in `run`.
#[derive(Subcommand)]
enum Cmd {
    /// Install what building, running, testing and packaging need (Debian packages, the pinned
    /// eBPF nightly with rust-src and clippy, bpf-linker, tracefs, the tests' servers and Python
    /// clients), or with --for only what one purpose needs; quick and idempotent when nothing is
    /// missing.
    Setup(SetupArgs),
    /// Install what the tests need, then run the test suite (needs root: it loads eBPF programs
    /// and creates netns).
    Test(TestArgs),
    /// Install only what building and running need, build the agent in release mode and run it
    /// (`connmon run ARGS`).
    Run(RunArgs),
    /// Measure the agent's overhead (release build; needs root and bpftrace).
    Bench(BenchArgs),
    /// fmt --check on every crate; clippy -D warnings on user space and on the eBPF crate; no
    /// import cycles.
    Lint,
    /// Boot Debian's 5.10, 6.1 and 6.12 kernels under qemu (virtme-ng, software emulation) and
    /// run the kernel smoke suite in each and on the host: one feature table per kernel,
    /// non-zero exit on a regression (needs root).
    Matrix(MatrixArgs),
    /// Build the fuzz targets (fuzz/, cargo-fuzz on the pinned nightly) and run each for a fixed
    /// time after replaying its corpus; fails on any panic, hang or memory blow-up.
    Fuzz(FuzzArgs),
    /// Run setup, build the static release agent and its image (FROM scratch, buildah, offline),
    /// written as an OCI archive at target/connmon-image.oci.tar.
    Image(ImageArgs),
    /// Replay the pre-fork incident on this machine until the agent (default settings) fires
    /// AcceptQueueSlowFailure; print what to look at; stop everything (needs root and python3).
    Demo,
    /// The release artifact: target/dist/connmon (static, musl, eBPF object embedded) and
    /// target/dist/connmon-VERSION-x86_64-unknown-linux-musl.tar.gz (binary, deploy/, README, docs/).
    Dist,
}

#[derive(Args)]
struct ImageArgs {
    /// Only build the static binary the image holds (target/dist/connmon, as `dist` does).
    #[arg(long = "binary-only")]
    binary_only: bool,
}

#[derive(Args)]
struct MatrixArgs {
    /// Only these kernel series (comma-separated: 5.10, 6.1, 6.12).
    #[arg(long, value_delimiter = ',')]
    kernels: Vec<String>,
    /// Leave out the run on the host's own kernel.
    #[arg(long = "no-host")]
    no_host: bool,
    /// Boot the guests one after another (default: all at once).
    #[arg(long)]
    sequential: bool,
}

#[derive(Args)]
struct FuzzArgs {
    /// Seconds of fuzzing per target (0: only replay the corpus).
    #[arg(long, default_value_t = fuzz::DEFAULT_SECONDS)]
    seconds: u64,
    /// Targets fuzzed at the same time (default: one per CPU).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..256))]
    jobs: Option<usize>,
    /// Only build the targets.
    #[arg(long = "build-only")]
    build_only: bool,
    /// Targets to run (default: all of fuzz/fuzz_targets/).
    targets: Vec<String>,
}

#[derive(Args)]
struct BenchArgs {
    /// What to measure; none runs every target in turn.
    #[command(subcommand)]
    target: Option<bench::Target>,
}

#[derive(Args)]
struct SetupArgs {
    /// Only report; exit non-zero if something is missing.
    #[arg(long)]
    check: bool,
    /// Only what this purpose needs (repeatable); without it, everything.
    #[arg(long = "for", value_enum)]
    purposes: Vec<needs::Purpose>,
    /// Leave tracefs alone: for image builds, which cannot mount it (the agent mounts it itself
    /// at start-up when it runs with CAP_SYS_ADMIN).
    #[arg(long = "no-tracefs")]
    no_tracefs: bool,
}

#[derive(Args)]
struct TestArgs {
    /// Extra arguments for `cargo test` (after `--`), e.g. `-- --test listeners -- --nocapture`.
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

#[derive(Args)]
struct RunArgs {
    /// Arguments for `connmon run` (after `--`); none means the agent's defaults.
    #[arg(last = true)]
    agent_args: Vec<String>,
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so a print to a closed pipe (`cargo xtask … | head`) panics. Let the
    // signal end the process quietly, as it does `ls` or `grep`. xtask writes to no pipe or
    // socket besides its output that could raise it: sockets go through std's TcpStream
    // (MSG_NOSIGNAL), and its children get their own default disposition.
    // SAFETY: setting a signal disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            match err.downcast_ref::<ChildFailed>() {
                Some(failed) => failed.exit_code(),
                None => ExitCode::FAILURE,
            }
        }
    }
}

fn run(command: Cmd) -> Result<()> {
    // Children (cargo building monitor-ebpf through aya-build) must find bpf-linker, which
    // `cargo install` puts in ~/.cargo/bin; put it first on PATH for this process and its children.
    util::prepend_cargo_bin_to_path();

    match command {
        Cmd::Setup(args) => {
            let purposes = if args.purposes.is_empty() { needs::EVERYTHING } else { &args.purposes[..] };
            setup::run(purposes, args.check, !args.no_tracefs)
        }
        Cmd::Test(args) => test(&args.cargo_args),
        Cmd::Run(args) => run_agent(&args.agent_args),
        Cmd::Bench(args) => bench::run(args.target),
        Cmd::Lint => lint::run(),
        Cmd::Matrix(args) => {
            // The guests need qemu, kmod, busybox and virtme-ng, which the tests' setup installs.
            setup::run(needs::FOR_TEST, false, true)?;
            matrix::run(&matrix::Options { kernels: args.kernels, no_host: args.no_host, sequential: args.sequential })
        }
        Cmd::Fuzz(args) => {
            let jobs = args.jobs.unwrap_or_else(fuzz::default_jobs);
            fuzz::run(&fuzz::RunOptions { seconds: args.seconds, jobs, build_only: args.build_only }, &args.targets)
        }
        Cmd::Image(args) => {
            setup::run(needs::FOR_IMAGE, false, false)?;
            if args.binary_only {
                dist::binary().map(|bin| println!("{}", bin.display()))
            } else {
                image::build().map(drop)
            }
        }
        Cmd::Dist => {
            setup::run(needs::FOR_DIST, false, false)?;
            dist::build().map(drop)
        }
        Cmd::Demo => {
            demo::preflight()?;
            setup::run(needs::FOR_DEMO, false, true)?;
            demo::run(&build_release()?)
        }
    }
}

fn test(cargo_args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the test suite loads eBPF programs and creates network namespaces: run it as root");
    }
    setup::run(needs::FOR_TEST, false, true)?;
    if cargo_args.is_empty() {
        suite::run()
    } else {
        // A chosen subset of the tests: no matrix, no fuzzing.
        suite::subset(cargo_args)
    }
}

fn run_agent(agent_args: &[String]) -> Result<()> {
    if !is_root() {
        eprintln!(
            "warning: not root: connmon needs root (or CAP_BPF and CAP_PERFMON for its probes, \
             CAP_NET_ADMIN for protocol recognition, CAP_SYS_ADMIN and CAP_SYS_PTRACE for other \
             namespaces and processes); trying anyway"
        );
    }
    setup::run(needs::FOR_RUN, false, true)?;
    let agent = build_release()?;
    let mut cmd = Command::new(&agent);
    cmd.arg("run").args(agent_args);
    use std::os::unix::process::CommandExt;
    // exec only returns on failure.
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot execute {}", agent.display()))
}

/// `cargo build --release -p connmon`, its output in a log (shown only when it fails); returns
/// the binary.
fn build_release() -> Result<std::path::PathBuf> {
    let log = util::log_path("build-release");
    let _ = std::fs::remove_file(&log);
    let mut build = Command::new("cargo");
    build.args(["build", "--release", "-p", "connmon"]).current_dir(workspace_root());
    let hint = "the log above says what failed; `cargo build --release -p connmon` shows it in full";
    util::step(&format!("building connmon (release; log {})", log.display()), || {
        util::run_logged(&mut build, &log, hint)
    })?;
    Ok(util::target_dir().join("release").join("connmon"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cmd {
        Cli::try_parse_from(std::iter::once("cargo xtask").chain(args.iter().copied())).unwrap().command
    }

    #[test]
    fn test_forwards_everything_after_the_separator() {
        let Cmd::Test(t) = parse(&["test", "--", "--test", "listen", "--", "--nocapture"]) else { panic!("not test") };
        assert_eq!(t.cargo_args, ["--test", "listen", "--", "--nocapture"]);
        let Cmd::Test(t) = parse(&["test"]) else { panic!("not test") };
        assert!(t.cargo_args.is_empty());
    }

    #[test]
    fn run_and_setup_flags() {
        let Cmd::Run(r) = parse(&["run", "--", "--listen", "0.0.0.0:9000"]) else { panic!("not run") };
        assert_eq!(r.agent_args, ["--listen", "0.0.0.0:9000"]);
        assert!(matches!(parse(&["setup", "--check"]), Cmd::Setup(SetupArgs { check: true, no_tracefs: false, .. })));
        let Cmd::Setup(s) = parse(&["setup", "--for", "run", "--for", "static"]) else { panic!("not setup") };
        assert_eq!(s.purposes, [needs::Purpose::Run, needs::Purpose::Static]);
        assert!(Cli::try_parse_from(["cargo xtask", "setup", "--for", "everything"]).is_err());
        assert!(Cli::try_parse_from(["cargo xtask", "test", "--release"]).is_err());
        assert!(matches!(parse(&["lint"]), Cmd::Lint));
        let Cmd::Fuzz(f) = parse(&["fuzz", "--seconds", "3", "btf"]) else { panic!("not fuzz") };
        assert_eq!((f.seconds, f.targets), (3, vec!["btf".to_string()]));
        let Cmd::Fuzz(f) = parse(&["fuzz"]) else { panic!("not fuzz") };
        assert_eq!((f.seconds, f.targets.len(), f.jobs, f.build_only), (fuzz::DEFAULT_SECONDS, 0, None, false));
        let Cmd::Fuzz(f) = parse(&["fuzz", "--jobs", "2", "--build-only"]) else { panic!("not fuzz") };
        assert_eq!((f.jobs, f.build_only), (Some(2), true));
        assert!(Cli::try_parse_from(["cargo xtask", "fuzz", "--jobs", "0"]).is_err());
        assert!(Cli::try_parse_from(["cargo xtask", "lint", "--fix"]).is_err());
    }

    #[test]
    fn bench_targets_and_flags() {
        assert!(matches!(parse(&["bench", "pools", "--rounds", "4", "--secs", "2.5"]), Cmd::Bench(_)));
        // No target: every target with its defaults.
        assert!(matches!(parse(&["bench"]), Cmd::Bench(BenchArgs { target: None })));
        assert!(matches!(parse(&["bench", "kernel", "--rounds", "5", "--no-build"]), Cmd::Bench(_)));
        assert!(Cli::try_parse_from(["cargo xtask", "bench", "kernel", "--rate", "0"]).is_err());
        assert!(Cli::try_parse_from(["cargo xtask", "bench", "nothing"]).is_err());
        assert!(Cli::try_parse_from(["cargo xtask", "bench", "pools", "--rounds", "0"]).is_err());
        assert!(Cli::try_parse_from(["cargo xtask", "bench", "pools", "--secs", "0"]).is_err());
    }
}
