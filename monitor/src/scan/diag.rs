//! TCP socket inventory through the kernel's sock_diag netlink interface (inet_diag).
//! This module owns the dump: it builds the `TCPDIAG_GETSOCK` request (both address families in
//! one walk of the kernel's socket tables), turns the `inet_diag_msg` replies (with their
//! `INET_DIAG_SKMEMINFO` and `INET_DIAG_CGROUP_ID` attributes) into [`DiagSocket`]s, and runs the
//! dump over a `NETLINK_SOCK_DIAG` socket. The wire format is rust-netlink's where it has one:
//! `netlink-packet-sock-diag` for the reply header, `netlink-packet-core` for netlink framing,
//! attributes, DONE and ERROR, `netlink-sys` for the socket. Building and
//! parsing are pure functions fed with bytes so they can be unit-tested without a kernel;
//! [`dump_tcp`] is the only code that talks to one, and it reports the namespace of the calling
//! thread because netlink sockets belong to their creator's.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use anyhow::{anyhow, bail, Result};
use netlink_packet_core::{
    DoneBuffer, DoneMessage, ErrorBuffer, ErrorMessage, NetlinkBuffer, NlasIterator, Parseable, NLMSG_DONE,
    NLMSG_ERROR, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    inet::{nlas::MemInfo, InetResponseHeader},
    INET_DIAG_SKMEMINFO, SOCK_DIAG_BY_FAMILY,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagSocket {
    /// AF_INET / AF_INET6
    pub family: u16,
    /// Kernel TCP state number as reported (SYN_RECV=3 for request socks, LISTEN=10, ...).
    pub state: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// idiag_inode (0 for request socks / timewait).
    pub inode: u64,
    /// idiag_cookie[0] | idiag_cookie[1] << 32
    pub cookie: u64,
    pub uid: u32,
    /// Listeners: accept-queue depth.
    pub rqueue: u32,
    /// Listeners: configured backlog.
    pub wqueue: u32,
    /// SK_MEMINFO_DROPS from INET_DIAG_SKMEMINFO (what `ss -m` shows as dN).
    pub sk_drops: Option<u32>,
    /// INET_DIAG_CGROUP_ID: the cgroup v2 id the socket was created in (what `ss --cgroup`
    /// shows). Absent for request and timewait sockets, and before Linux 5.7.
    pub cgroup_id: Option<u64>,
}

/// Not in netlink-packet-sock-diag 0.5 (added to the kernel in 5.7).
const INET_DIAG_CGROUP_ID: u16 = 21;
#[cfg(test)]
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_msg`; its attributes follow at this (already 4-aligned) offset.
const INET_DIAG_MSG_LEN: usize = 72;
/// The kernel caps dump skbs at 32 KiB; twice that leaves room and MSG_TRUNC still catches surprises.
const RECV_BUF_LEN: usize = 64 * 1024;

/// Bitmask of TCP states for idiag_states.
pub fn state_mask(states: &[u8]) -> u32 {
    states.iter().filter(|&&s| s < 32).fold(0u32, |mask, &s| mask | (1u32 << s))
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The legacy request type (`struct inet_diag_req`). The kernel answers its dump with
/// `sdiag_family = AF_UNSPEC` (inet_diag_dump_compat in net/ipv4/inet_diag.c): both families in
/// one walk of the socket hashes, where a `SOCK_DIAG_BY_FAMILY` dump per family walks them twice.
/// It carries what the agent asks for: the states mask and the extension bits (SKMEMINFO is bit
/// 6 of the one-byte `idiag_ext`); the cookie, uid, inode and INET_DIAG_CGROUP_ID come with every
/// socket, and request attributes (bytecode) may follow it as they follow `inet_diag_req_v2`.
/// Replies carry the request's type.
const TCPDIAG_GETSOCK: u16 = 18;
/// `struct inet_diag_req`: family, src_len, dst_len, ext, a 48-byte `inet_diag_sockid`, states, dbs.
const INET_DIAG_REQ_LEN: usize = 60;

/// Pure: one netlink request (nlmsghdr + inet_diag_req) for a TCP dump of both families in
/// `states`, asking for INET_DIAG_SKMEMINFO when `meminfo`. netlink-packet-sock-diag builds only
/// the v2 request, so this one is laid out by hand.
pub fn build_request(states: u32, meminfo: bool, seq: u32) -> Vec<u8> {
    let len = 16 + INET_DIAG_REQ_LEN;
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    buf.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
                                                // idiag_family is ignored by a dump; src_len and dst_len 0; the socket id stays zeroed.
    let ext = if meminfo { 1u8 << (INET_DIAG_SKMEMINFO - 1) } else { 0 };
    buf.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, ext]);
    buf.extend_from_slice(&[0u8; 48]);
    buf.extend_from_slice(&states.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // idiag_dbs: unused by the kernel
    buf
}

fn errno_name(errno: i32) -> String {
    format!("{} ({})", crate::errno::name(errno).unwrap_or("errno"), io::Error::from_raw_os_error(errno))
}

/// Pure: parse one recv() buffer of netlink messages; appends sockets; returns Ok(true) when
/// NLMSG_DONE was seen; NLMSG_ERROR with errno -> Err naming the errno.
pub fn parse_messages(buf: &[u8], out: &mut Vec<DiagSocket>) -> Result<bool> {
    let mut off = 0usize;
    while off < buf.len() {
        let rest = buf.get(off..).unwrap_or_default();
        let msg = NetlinkBuffer::new_checked(rest)
            .map_err(|e| anyhow!("sock_diag reply is malformed at byte {off} of {}: {e}", buf.len()))?;
        let len = msg.length() as usize;
        let payload = msg.payload();
        match msg.message_type() {
            NLMSG_DONE => {
                // Since Linux 4.x the DONE payload carries the dump's final status; older ones
                // send none.
                if !payload.is_empty() {
                    let done = DoneBuffer::new_checked(&payload)
                        .and_then(|b| DoneMessage::parse(&b))
                        .map_err(|e| anyhow!("sock_diag reply is malformed: bad NLMSG_DONE: {e}"))?;
                    if done.code < 0 {
                        // saturating: -i32::MIN overflows (a panic in debug builds).
                        bail!("sock_diag dump failed: {}", errno_name(done.code.saturating_neg()));
                    }
                }
                return Ok(true);
            }
            NLMSG_ERROR => {
                let err = ErrorBuffer::new_checked(&payload)
                    .and_then(|b| ErrorMessage::parse(&b))
                    .map_err(|e| anyhow!("sock_diag reply is malformed: bad NLMSG_ERROR: {e}"))?;
                // No code is an ACK, which a dump does not end on.
                if let Some(code) = err.code {
                    bail!("sock_diag request failed: {}", errno_name(code.get().saturating_neg()));
                }
            }
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => out.push(parse_socket(payload)?),
            // NLMSG_NOOP and unknown control messages carry nothing we use; skipping keeps us
            // forward-compatible.
            _ => {}
        }
        off = off.saturating_add(align4(len));
    }
    Ok(false)
}

/// One `struct inet_diag_msg` followed by its attributes.
fn parse_socket(p: &[u8]) -> Result<DiagSocket> {
    let h = InetResponseHeader::parse(p).map_err(|e| anyhow!("sock_diag reply is malformed: inet_diag_msg: {e}"))?;
    let id = &h.socket_id;
    let cookie_half =
        |i: usize| u64::from(u32::from_ne_bytes([id.cookie[i], id.cookie[i + 1], id.cookie[i + 2], id.cookie[i + 3]]));
    let mut sock = DiagSocket {
        family: u16::from(h.family),
        state: h.state,
        src: id.source_address,
        sport: id.source_port,
        dst: id.destination_address,
        dport: id.destination_port,
        inode: u64::from(h.inode),
        cookie: cookie_half(0) | (cookie_half(4) << 32),
        uid: h.uid,
        rqueue: h.recv_queue,
        wqueue: h.send_queue,
        sk_drops: None,
        cgroup_id: None,
    };
    for nla in NlasIterator::new(p.get(INET_DIAG_MSG_LEN..).unwrap_or_default()) {
        let nla = nla.map_err(|e| anyhow!("sock_diag reply is malformed: attribute: {e}"))?;
        match nla.kind() {
            // Older kernels send fewer counters; a missing DROPS slot means "unknown", not 0.
            INET_DIAG_SKMEMINFO => sock.sk_drops = MemInfo::parse(nla.value()).ok().map(|m| m.drops),
            INET_DIAG_CGROUP_ID => {
                sock.cgroup_id = nla.value().get(..8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes)
            }
            _ => {}
        }
    }
    Ok(sock)
}

/// A NETLINK_SOCK_DIAG socket in the calling thread's network namespace, with a receive timeout.
pub(crate) fn open_sock_diag() -> Result<Socket> {
    let sock = Socket::new(NETLINK_SOCK_DIAG).map_err(|e| {
        anyhow!(
            "cannot open a NETLINK_SOCK_DIAG socket ({e}): the kernel needs CONFIG_INET_DIAG (try `modprobe tcp_diag`)"
        )
    })?;
    // A dump that stalls must not hang a scrape forever.
    let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
    // SAFETY: tv outlives the call and the length matches its type.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        bail!("cannot set a receive timeout on the sock_diag socket: {}", io::Error::last_os_error());
    }
    Ok(sock)
}

pub(crate) fn send_request(sock: &Socket, req: &[u8]) -> Result<()> {
    // Port 0 addresses the kernel.
    let kernel = SocketAddr::new(0, 0);
    loop {
        match sock.send_to(req, &kernel, 0) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => bail!("cannot send the sock_diag request: {e}"),
        }
    }
}

pub(crate) fn recv_chunk(sock: &Socket, buf: &mut [u8]) -> Result<usize> {
    let cap = buf.len();
    loop {
        // MSG_TRUNC makes recv return the real datagram size, so an oversized one is detected
        // instead of silently parsed as a cut-off message.
        match sock.recv(&mut &mut buf[..], libc::MSG_TRUNC) {
            Ok(n) if n > cap => {
                bail!("sock_diag reply of {n} bytes does not fit the {cap} byte buffer")
            }
            Ok(0) => bail!("sock_diag socket returned an empty read before the dump finished"),
            Ok(n) => return Ok(n),
            Err(e) => match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    bail!("sock_diag dump got no reply for 5 s: the kernel's inet_diag is not answering")
                }
                _ => bail!("cannot read the sock_diag reply: {e}"),
            },
        }
    }
}

/// Fetch: dumps TCP sockets of both families in the given states, in the network namespace of the
/// *calling thread* (netlink sockets bind to the creator's netns). One request, read until DONE.
pub fn dump_tcp(states: u32, meminfo: bool) -> Result<Vec<DiagSocket>> {
    let sock = open_sock_diag()?;
    let mut buf = vec![0u8; RECV_BUF_LEN];
    let mut out = Vec::new();
    send_request(&sock, &build_request(states, meminfo, 1))?;
    let mut reads = 0usize;
    loop {
        let n = recv_chunk(&sock, &mut buf)?;
        reads += 1;
        let chunk = buf.get(..n).unwrap_or_default();
        if parse_messages(chunk, &mut out)? {
            break;
        }
    }
    log::trace!("sock_diag: {reads} reads, {} sockets", out.len());
    Ok(out)
}

#[cfg(test)]
#[path = "diag_tests.rs"]
mod tests;
