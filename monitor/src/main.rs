//! connmon: TCP connection and listen-backlog monitor. `main` only maps the outcome of the command
//! to an exit code: errors print as one line, and a closed pipe (`connmon listeners | head`) is
//! success.
use std::process::ExitCode;

use clap::Parser as _;
use connmon::cli;

fn main() -> ExitCode {
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
