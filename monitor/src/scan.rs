//! One pass over every network namespace: the sock_diag dumps (listening sockets with memory info,
//! and connected sockets) and the namespace's TcpExt counters. Listeners, pools and the server-side
//! view are all built from the same pass, so a scrape enters each namespace once.
use std::collections::{BTreeMap, HashMap, HashSet};

use monitor_common::{TCP_ESTABLISHED, TCP_LISTEN, TCP_SYN_RECV};

use crate::{
    diag::{self, DiagSocket},
    netns::{self, Netns},
    netstat,
    procs::{self, Owner},
};

// Kernel TCP state numbers of a connection that is still held open (include/net/tcp_states.h).
const TCP_FIN_WAIT1: u8 = 4;
const TCP_FIN_WAIT2: u8 = 5;
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_LAST_ACK: u8 = 9;
const TCP_CLOSING: u8 = 11;

/// States in which a connection counts as active: from the handshake until the socket closes,
/// the same span the kernel probe counts (TIME_WAIT is after the socket closed).
pub const CONNECTED: &[u8] = &[TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_CLOSING];

#[derive(Debug, Clone, Default)]
pub struct NsScan {
    pub inode: u64,
    pub name: Option<String>,
    /// LISTEN sockets (with sk_drops) and SYN_RECV requests.
    pub listening: Vec<DiagSocket>,
    /// Connections in CONNECTED states; empty unless asked for.
    pub connected: Vec<DiagSocket>,
    pub tcp_ext: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub namespaces: Vec<NsScan>,
    /// Namespaces that vanished mid-scan or could not be entered.
    pub failed: u64,
}

pub fn matches_filter(ns: &Netns, filter: &str) -> bool {
    ns.name.as_deref() == Some(filter) || ns.inode.to_string() == filter
}

/// How much a scan dumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// LISTEN sockets only: the kernel walks just the listening hash, so this stays cheap with
    /// hundreds of thousands of connections (the periodic tick).
    Listeners,
    /// Listeners, their SYN queues and every connection (scrapes, alerts, one-shot commands).
    Full,
}

/// Scans the namespaces matching `filter` (all when None).
pub fn scan(filter: Option<&str>, depth: Depth) -> Scan {
    let connected = depth == Depth::Full;
    let mut nss = netns::discover();
    if let Some(f) = filter {
        nss.retain(|ns| matches_filter(ns, f));
    }
    // SYN_RECV requests live in the established hash: asking for them walks it whole.
    let listening_states = if connected { diag::state_mask(&[TCP_LISTEN, TCP_SYN_RECV]) } else { diag::state_mask(&[TCP_LISTEN]) };
    let connected_states = diag::state_mask(CONNECTED);
    let results = netns::run_in_each(&nss, |_| {
        let listening = diag::dump_tcp(listening_states, true)?;
        let conns = if connected { diag::dump_tcp(connected_states, false)? } else { Vec::new() };
        // netstat is per namespace; a failure here should not hide the sockets.
        let ext = netstat::read_tcp_ext().unwrap_or_default();
        anyhow::Ok((listening, conns, ext))
    });
    let mut out = Scan::default();
    for (inode, result) in results {
        let (listening, connected, tcp_ext) = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) | Err(e) => {
                out.failed += 1;
                warn_once(inode, &e);
                continue;
            }
        };
        let name = nss.iter().find(|n| n.inode == inode).and_then(|n| n.name.clone());
        out.namespaces.push(NsScan { inode, name, listening, connected, tcp_ext });
    }
    out
}

/// Logs why a namespace was skipped, once per namespace; vanished ones are normal churn.
fn warn_once(inode: u64, e: &anyhow::Error) {
    static WARNED: std::sync::Mutex<Option<HashSet<u64>>> = std::sync::Mutex::new(None);
    let text = format!("{e:#}");
    if text.contains("is gone") {
        return;
    }
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    if warned.get_or_insert_with(HashSet::new).insert(inode) {
        log::warn!("skipping network namespace {inode}: {text}");
    }
}

/// Owners of the given socket inodes (0 = none, skipped).
pub fn owners(inodes: impl IntoIterator<Item = u64>) -> HashMap<u64, Owner> {
    let wanted: HashSet<u64> = inodes.into_iter().filter(|&i| i != 0).collect();
    if wanted.is_empty() {
        return HashMap::new();
    }
    procs::socket_owners(&wanted)
}
