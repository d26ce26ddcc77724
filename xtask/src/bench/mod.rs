//! `cargo xtask bench [<target>]`: overhead measurements of the release agent. Each target is a
//! module (`kernel`, `pools`, `scale`); with no target, every one runs in turn. This one holds what they
//! share: prerequisites, the release build, the log directory and a free port, with the rest in
//! submodules: [`probe`] (starting and stopping the agent and bpftrace), [`bpf_stats`] (the
//! kernel's run time of each eBPF program), [`proc_stats`] (/proc accounting of CPU and RSS), [`scrape`] (a tiny HTTP
//! client and the 1/s scraper), [`load`] (the load generator `connload`, src/bin/connload.rs) and
//! [`stats`] (small statistics and formatting).

mod bpf_stats;
mod kernel;
mod load;
mod pools;
mod probe;
mod proc_stats;
mod scale;
mod scrape;
mod stats;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use crate::util::{is_root, run_inherit, target_dir, which, workspace_root};

#[derive(Subcommand)]
pub enum Target {
    /// Kernel ns per connection from bpf_stats: connmon, an empty bpftrace program and the
    /// bpftrace one-liner on `sock:inet_sock_set_state`, interleaved, under RST-close and echo
    /// churn at a fixed rate. About two minutes.
    Kernel(kernel::KernelArgs),
    /// Connection-pool tracking under loopback connection churn: throughput with no probe, with
    /// the agent (scraped every second) and with a bpftrace one-liner on the same tracepoint,
    /// then the agent's CPU at a fixed connection rate.
    Pools(pools::PoolsArgs),
    /// The agent on a big host, default settings: 1,500 listeners and 1,500 client pools (series,
    /// bytes and time per scrape, RSS, CPU), then 64k established sockets (RSS, scrape time).
    Scale(scale::ScaleArgs),
}

/// With no target, every target with its defaults, kernel cost first.
pub fn run(target: Option<Target>) -> Result<()> {
    match target {
        Some(Target::Kernel(args)) => kernel::run(&args),
        Some(Target::Pools(args)) => pools::run(&args),
        Some(Target::Scale(args)) => scale::run(&args),
        None => {
            kernel::run(&defaults())?;
            pools::run(&defaults())?;
            scale::run(&defaults())
        }
    }
}

/// A target's arguments as if none were given on the command line (clap's defaults, so they are
/// written once, in the `#[arg]` attributes).
fn defaults<T: clap::Args>() -> T {
    #[derive(clap::Parser)]
    struct NoArgs<T: clap::Args> {
        #[command(flatten)]
        args: T,
    }
    <NoArgs<T> as clap::Parser>::parse_from(["bench"]).args
}

// ---------------------------------------------------------------------------------------------
// Prerequisites and build

const TRACEFS: &str = "/sys/kernel/tracing";

/// Root, bpftrace and tracefs, each with a one-line error that says what to do.
fn preflight() -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask bench` needs root (it loads eBPF programs: the agent and bpftrace); run it as root");
    }
    if which("bpftrace").is_none() {
        bail!(
            "bpftrace is not on PATH (the bench compares the agent with a bpftrace one-liner): run `cargo xtask setup`"
        );
    }
    if !Path::new(TRACEFS).join("events").is_dir() {
        bail!("tracefs is not mounted at {TRACEFS} (bpftrace needs it): run `cargo xtask setup`");
    }
    Ok(())
}

struct Binaries {
    connmon: PathBuf,
    connload: PathBuf,
    connfleet: PathBuf,
}

/// `cargo build --release` of the agent and of the load generators (connload, connfleet).
fn build_release() -> Result<Binaries> {
    println!("building the release agent and connload");
    for args in [
        &["build", "--release", "-p", "connmon"][..],
        &["build", "--release", "-p", "xtask", "--bin", "connload", "--bin", "connfleet"][..],
    ] {
        run_inherit(Command::new("cargo").args(args).current_dir(workspace_root()))?;
    }
    built_release().context("the build succeeded")
}

/// The release agent and connload as the last `cargo build --release` left them.
fn built_release() -> Result<Binaries> {
    let release = target_dir().join("release");
    let bins = Binaries {
        connmon: release.join("connmon"),
        connload: release.join("connload"),
        connfleet: release.join("connfleet"),
    };
    for bin in [&bins.connmon, &bins.connload, &bins.connfleet] {
        if !bin.is_file() {
            bail!("{} is missing: run `cargo build --release -p connmon -p xtask`", bin.display());
        }
    }
    Ok(bins)
}

/// Where the bench keeps probe logs and raw connload output, emptied at each run.
fn log_dir(target: &str) -> Result<PathBuf> {
    let dir = target_dir().join("bench").join(target);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// A loopback port nobody listens on right now (the kernel's pick; racy, but only in theory here).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
