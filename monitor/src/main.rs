//! connmon: TCP connection and listen-backlog monitor. `main` only maps the outcome of the command
//! to an exit code: errors print as one line, and a closed pipe (`connmon listeners | head`) is
//! success.
use std::process::ExitCode;

use clap::Parser as _;
use connmon::cli;

fn main() -> ExitCode {
    tune_allocator();
    let args = cli::Cli::parse();
    init_logging();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("connmon: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc malloc keeps what a thread freed in that thread's arena (up to 8 per core), and raises its
/// mmap threshold to the largest block freed so far (up to 32 MiB). The agent's big buffers are
/// short-lived (a sock_diag dump of 64k sockets is ~6 MiB, built on whichever blocking thread runs
/// the scan), so with the defaults each thread's arena kept its own high-water mark and RSS grew
/// with the thread count. Two arenas, and blocks over 256 KiB mapped and unmapped on their own,
/// hand that memory back as soon as a scan is done. (The static image links musl, whose allocator
/// returns freed memory by itself and has no such knobs.)
#[cfg(target_env = "gnu")]
fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
    }
}

#[cfg(not(target_env = "gnu"))]
fn tune_allocator() {}

fn init_logging() {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    // kube-rs logs every failed request of a retried watch (at ERROR); attribution/cluster.rs logs
    // each change of a watch's state once instead. A RUST_LOG that names a kube crate still gets them.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("kube")) {
        builder
            .filter_module("kube_client", log::LevelFilter::Off)
            .filter_module("kube_runtime", log::LevelFilter::Off);
    }
    builder.format_timestamp_millis().format_target(false).init();
}
