//! The command line: the `connmon` subcommands, one file each, and the plumbing they share
//! (one JSON object per line or an aligned table, a closed pipe taken as success).
use std::io::Write as _;

use clap::{Parser, Subcommand};

use crate::config::flags::RunArgs;

mod alerts;
pub mod client;
mod destinations;
mod listeners;
pub mod names;
mod pools;
mod storms;
pub mod table;
pub mod top;

#[derive(Debug, Parser)]
#[command(name = "connmon", version, about = "TCP connection and listen-backlog monitor (eBPF)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: attach probes and serve Prometheus metrics.
    Run(Box<RunArgs>),
    /// Scan every listening socket (TCP, and unix stream and seqpacket) once and print it.
    Listeners(listeners::ListenersArgs),
    /// Show connection pools (client workload × destination), busiest first.
    Pools(pools::PoolsArgs),
    /// Show destinations (service, address, port): this host's pools summed, with the server's
    /// rejections, connects in flight and the ceiling learned when rejections began.
    Destinations(pools::PoolsArgs),
    /// Watch pools and listeners for a while and show their retry-storm signals, storms first.
    Storms(storms::StormsArgs),
    /// Show the alerts a running agent has pending or firing.
    Alerts(alerts::AlertsArgs),
    /// Live view of listeners, pools and destinations, worst first, with alerts and storms
    /// (attaches the probes like `pools --watch`, or reads a running agent with --agent).
    Top(Box<top::TopArgs>),
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => crate::agent::run(*args),
        Command::Listeners(args) => listeners::run(&args),
        Command::Pools(args) => pools::run(&args),
        Command::Destinations(args) => destinations::run(&args),
        Command::Storms(args) => storms::run(&args),
        Command::Alerts(args) => alerts::run(&args),
        Command::Top(args) => top::run(&args),
    }
}

/// One JSON object per line with `json`, else the aligned table `table` prints.
fn print_rows<T: serde::Serialize>(
    rows: &[T],
    json: bool,
    table: fn(&mut std::io::StdoutLock<'static>, &[T]) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        for r in rows {
            serde_json::to_writer(&mut out, r)?;
            writeln!(out)?;
        }
    } else {
        table(&mut out, rows)?;
    }
    out.flush()?;
    Ok(())
}

/// JSON Lines: one object per row (the shape is documented in docs/json.md).
fn print_json(rows: impl Iterator<Item = serde_json::Value>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for r in rows {
        serde_json::to_writer(&mut out, &r)?;
        writeln!(out)?;
    }
    out.flush()?;
    Ok(())
}

/// `row` serialized, with the recognisable `name` of its process added (see names.rs; null
/// when the process is unknown).
fn with_name(row: &impl serde::Serialize, name: Option<String>) -> serde_json::Value {
    let mut v = serde_json::to_value(row).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("name".into(), name.into());
    }
    v
}

/// Whether the error is a closed stdout (`connmon listeners | head`), which is success.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|j| j.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
    })
}
