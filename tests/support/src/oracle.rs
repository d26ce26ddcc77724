//! The kernel's own tools as the truth: `ss` and `nstat`, run inside a namespace, parsed to numbers.

use std::collections::HashMap;

use super::Netns;

/// One listening TCP socket as `ss -tlnmi` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsListener {
    /// Without brackets: "127.0.0.1", "::1", "0.0.0.0", "*", "::".
    pub addr: String,
    pub port: u16,
    /// Accept-queue depth (Recv-Q of a LISTEN socket).
    pub recv_q: u64,
    /// Configured backlog (Send-Q of a LISTEN socket).
    pub send_q: u64,
    /// `dN` inside `skmem:(...)`: the socket's sk_drops (listen drops); 0 when absent.
    pub drops: u64,
}

/// Splits "127.0.0.1:80", "[::1]:80", "*:80", "10.0.0.1%eth0:80" into (addr, port).
fn split_addr_port(s: &str) -> (String, u16) {
    let (addr, port) = s.rsplit_once(':').unwrap_or_else(|| panic!("ss address without port: {s:?}"));
    let port = port.parse().unwrap_or_else(|e| panic!("ss port {port:?} in {s:?}: {e}"));
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    let addr = addr.split('%').next().unwrap_or(addr);
    (addr.to_string(), port)
}

/// Parses `ss -H -tlnmi` output: a "LISTEN recvq sendq local peer" line, then indented lines
/// carrying `skmem:(r0,rb..,t0,tb..,f0,w0,o0,bl0,dN)` and TCP info.
pub fn parse_ss_listeners(text: &str) -> Vec<SsListener> {
    let mut out: Vec<SsListener> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert!(f.len() >= 5 && f[0] == "LISTEN", "unexpected ss line: {line:?}");
            let (addr, port) = split_addr_port(f[3]);
            out.push(SsListener {
                addr,
                port,
                recv_q: f[1].parse().unwrap_or_else(|e| panic!("Recv-Q in {line:?}: {e}")),
                send_q: f[2].parse().unwrap_or_else(|e| panic!("Send-Q in {line:?}: {e}")),
                drops: 0,
            });
        } else if let Some(start) = line.find("skmem:(") {
            let rest = &line[start + "skmem:(".len()..];
            let inner = &rest[..rest.find(')').unwrap_or_else(|| panic!("unclosed skmem in {line:?}"))];
            let cur = out.last_mut().unwrap_or_else(|| panic!("skmem before any socket: {line:?}"));
            for field in inner.split(',') {
                if let Some(d) = field.strip_prefix('d') {
                    if !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) {
                        cur.drops = d.parse().expect("digits");
                    }
                }
            }
        }
    }
    out
}

/// Every listening TCP socket in `ns` (`ss -H -tlnmi`).
pub fn ss_listeners(ns: &Netns) -> Vec<SsListener> {
    parse_ss_listeners(&ns.exec_ok(&["ss", "-H", "-tlnmi"]))
}

/// The listener on `addr`:`port` in `ns` (addr without brackets), if `ss` shows it.
pub fn ss_listener(ns: &Netns, addr: &str, port: u16) -> Option<SsListener> {
    pick_listener(&ss_listeners(ns), addr, port)
}

/// The one entry of `list` on `addr`:`port`; panics if there are several.
pub fn pick_listener(list: &[SsListener], addr: &str, port: u16) -> Option<SsListener> {
    let mut hits = list.iter().filter(|l| l.addr == addr && l.port == port);
    let first = hits.next().cloned();
    assert!(hits.next().is_none(), "several ss listeners on {addr}:{port}: {list:?}");
    first
}

/// Connections in SYN-RECV whose local port is `port` (`ss -H -tn state syn-recv sport = :PORT`):
/// the requests waiting in that listener's SYN queue.
pub fn ss_syn_recv_count(ns: &Netns, port: u16) -> usize {
    let sport = format!(":{port}");
    let text = ns.exec_ok(&["ss", "-H", "-tn", "state", "syn-recv", "sport", "=", &sport]);
    text.lines().filter(|l| !l.trim().is_empty()).count()
}

/// Parses `nstat` output: "#kernel" then "Name value rate" lines.
pub fn parse_nstat(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next().expect("nstat name").to_string();
            let value = f
                .next()
                .unwrap_or_else(|| panic!("nstat line without value: {l:?}"))
                .parse()
                .unwrap_or_else(|e| panic!("nstat value in {l:?}: {e}"));
            (name, value)
        })
        .collect()
}

/// Absolute SNMP/netstat counters of `ns` (keys like "TcpExtListenOverflows").
/// `nstat -asz`: -a ignores the history file (absolute values), -s does not update it, -z keeps zeros;
/// so parallel tests and earlier runs cannot turn the numbers into deltas.
pub fn nstat(ns: &Netns) -> HashMap<String, u64> {
    parse_nstat(&ns.exec_ok(&["nstat", "-asz"]))
}

/// `counters[name]`, panicking with a useful message if the kernel has no such counter.
pub fn counter(counters: &HashMap<String, u64>, name: &str) -> u64 {
    *counters.get(name).unwrap_or_else(|| panic!("nstat has no {name}; it has {} counters", counters.len()))
}

/// One counter from [`nstat`]; panics if nstat does not know it.
pub fn nstat_counter(ns: &Netns, name: &str) -> u64 {
    counter(&nstat(ns), name)
}

/// One listening unix socket as `ss -xl` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsUnixListener {
    /// "u_str" or "u_seq".
    pub netid: String,
    /// Path, or `@name` for an abstract socket.
    pub name: String,
    /// Connections waiting for accept() (Recv-Q).
    pub recv_q: u64,
    /// Backlog (Send-Q).
    pub send_q: u64,
    pub inode: u64,
}

/// Parses `ss -H -xl` output: `u_str LISTEN recvq sendq name inode peer peer-inode`.
pub fn parse_ss_unix_listeners(text: &str) -> Vec<SsUnixListener> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                [netid, "LISTEN", rq, sq, name, ino, ..] => Some(SsUnixListener {
                    netid: netid.to_string(),
                    name: name.to_string(),
                    recv_q: rq.parse().ok()?,
                    send_q: sq.parse().ok()?,
                    inode: ino.parse().ok()?,
                }),
                _ => None,
            }
        })
        .collect()
}

/// Listening unix sockets in `ns`, as `ss -H -xl` shows them.
pub fn ss_unix_listeners(ns: &Netns) -> Vec<SsUnixListener> {
    parse_ss_unix_listeners(&ns.exec_ok(&["ss", "-H", "-xl"]))
}
