//! Reading the kernel's TCP extended counters (the `TcpExt` section of `/proc/<pid>/net/netstat`).
//! Counters such as ListenOverflows and ListenDrops are the kernel's own tally of connections lost
//! to full accept or SYN queues; connmon exports them per network namespace next to its
//! per-listener eBPF view, so that drops the probes cannot attribute to a socket still show up.
//! This module owns the list of exported counters and parsing of the two-line "Prefix: names" /
//! "Prefix: values" format shared by `/proc/net/netstat` and `/proc/net/snmp`.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};

/// The TcpExt counters connmon exports per network namespace, in export order.
pub const TCP_EXT_COUNTERS: &[&str] = &[
    "ListenOverflows",
    "ListenDrops",
    "SyncookiesSent",
    "SyncookiesRecv",
    "SyncookiesFailed",
    "TCPReqQFullDrop",
    "TCPReqQFullDoCookies",
    "TCPBacklogDrop",
];

/// The calling thread's namespace, not the process's: the agent visits namespaces with setns() on
/// one thread, and /proc/self/net follows the main thread instead.
const NETSTAT_PATH: &str = "/proc/thread-self/net/netstat";

/// Parses one value. `/proc/net/snmp` prints a few fields signed (Tcp MaxConn is -1 meaning "no
/// limit"); those are kept as their two's-complement bit pattern so the whole file parses, and
/// none of them is a counter connmon exports.
fn parse_value(s: &str) -> Option<u64> {
    s.parse::<u64>().ok().or_else(|| s.parse::<i64>().ok().map(|v| v as u64))
}

fn split_prefix(line: &str) -> Option<(&str, &str)> {
    let (prefix, rest) = line.split_once(':')?;
    let prefix = prefix.trim();
    (!prefix.is_empty() && !prefix.contains(char::is_whitespace)).then_some((prefix, rest))
}

/// Pure: parses the "Prefix: names...\nPrefix: values...\n" pair format (netstat and snmp files).
/// Returns prefix -> (name -> value). Mismatched line pairs, non-numeric values or an odd number of
/// lines for a prefix are an error naming the prefix.
pub fn parse_pairs(text: &str) -> Result<BTreeMap<String, BTreeMap<String, u64>>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    // The names line waiting for its values line.
    let mut pending: Option<(&str, Vec<&str>)> = None;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (prefix, rest) = split_prefix(line).ok_or_else(|| {
            anyhow!(
                "line {} of the counters text has no `Prefix:` label: the file is not in netstat/snmp format",
                n + 1
            )
        })?;
        let Some((names_prefix, names)) = pending.take() else {
            pending = Some((prefix, rest.split_whitespace().collect()));
            continue;
        };
        if names_prefix != prefix {
            bail!(
                "{names_prefix}: names line is not followed by a {names_prefix} values line (next is {prefix}, line {}): the counters text is malformed",
                n + 1
            );
        }
        let values: Vec<&str> = rest.split_whitespace().collect();
        if values.len() != names.len() {
            bail!(
                "{prefix}: {} names but {} values (line {}): the counters text is malformed",
                names.len(),
                values.len(),
                n + 1
            );
        }
        let section = out.entry(prefix.to_owned()).or_default();
        for (name, value) in names.into_iter().zip(values) {
            let v = parse_value(value).ok_or_else(|| {
                anyhow!(
                    "{prefix}: value {value:?} of {name} is not a number (line {}): the counters text is malformed",
                    n + 1
                )
            })?;
            section.insert(name.to_owned(), v);
        }
    }
    if let Some((prefix, _)) = pending {
        bail!("{prefix}: names line has no values line (odd number of {prefix} lines): the counters text is truncated");
    }
    Ok(out)
}

/// The TcpExt section only; missing section is an error.
pub fn tcp_ext(text: &str) -> Result<BTreeMap<String, u64>> {
    parse_pairs(text)?
        .remove("TcpExt")
        .ok_or_else(|| anyhow!("netstat text has no TcpExt section: the kernel did not report TCP extended counters"))
}

/// Reads /proc/thread-self/net/netstat, i.e. the namespace of the calling thread (callers setns
/// first).
pub fn read_tcp_ext() -> Result<BTreeMap<String, u64>> {
    let text = std::fs::read_to_string(NETSTAT_PATH)
        .map_err(|e| anyhow!("cannot read {NETSTAT_PATH}: {e}: connmon needs /proc mounted (kernel 3.17 or newer)"))?;
    tcp_ext(&text).with_context(|| format!("parsing {NETSTAT_PATH}"))
}

#[cfg(test)]
#[path = "netstat_tests.rs"]
mod tests;
