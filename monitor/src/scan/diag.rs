//! TCP socket inventory through the kernel's sock_diag netlink interface (inet_diag).
//! This module owns the wire format: it builds `SOCK_DIAG_BY_FAMILY` dump requests, parses the
//! `inet_diag_msg` replies (with their `INET_DIAG_SKMEMINFO` attribute) into [`DiagSocket`]s, and
//! runs the dump over a `NETLINK_SOCK_DIAG` socket. Building and parsing are pure functions fed with
//! bytes so they can be unit-tested without a kernel; [`dump_tcp`] is the only code that talks to one,
//! and it reports the namespace of the calling thread because netlink sockets belong to their creator's.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};


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

// Not all of these are exported by the libc crate for every target, so spell them out.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300; // NLM_F_ROOT | NLM_F_MATCH
const NLMSG_HDRLEN: usize = 16;
const INET_DIAG_REQ_V2_LEN: usize = 56;
const INET_DIAG_MSG_LEN: usize = 72;
const INET_DIAG_SKMEMINFO: u16 = 7;
const INET_DIAG_CGROUP_ID: u16 = 21;
const SK_MEMINFO_DROPS: usize = 8;
const NLA_TYPE_MASK: u16 = 0x3fff;
/// The kernel caps dump skbs at 32 KiB; twice that leaves room and MSG_TRUNC still catches surprises.
const RECV_BUF_LEN: usize = 64 * 1024;

/// Bitmask of TCP states for idiag_states.
pub fn state_mask(states: &[u8]) -> u32 {
    states
        .iter()
        .filter(|&&s| s < 32)
        .fold(0u32, |mask, &s| mask | (1u32 << s))
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Pure: one netlink request (nlmsghdr + inet_diag_req_v2) for a TCP dump of `family` in `states`,
/// asking for INET_DIAG_SKMEMINFO when `meminfo`.
pub fn build_request(family: u8, states: u32, meminfo: bool, seq: u32) -> Vec<u8> {
    let total = NLMSG_HDRLEN + INET_DIAG_REQ_V2_LEN;
    let mut b = Vec::with_capacity(total);
    // struct nlmsghdr
    b.extend_from_slice(&(total as u32).to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: 0 addresses the kernel
                                              // struct inet_diag_req_v2
    b.push(family);
    b.push(libc::IPPROTO_TCP as u8);
    // idiag_ext bits are (1 << (attribute - 1)).
    b.push(if meminfo {
        1 << (INET_DIAG_SKMEMINFO - 1)
    } else {
        0
    });
    b.push(0); // pad
    b.extend_from_slice(&states.to_ne_bytes());
    // struct inet_diag_sockid stays zeroed: a dump matches on family/states only.
    b.resize(total, 0);
    b
}

fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2)?.try_into().ok().map(u16::from_ne_bytes)
}

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2)?.try_into().ok().map(u16::from_be_bytes)
}

fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)?.try_into().ok().map(u32::from_ne_bytes)
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
        let (Some(len), Some(ty)) = (ne_u32(rest, 0), ne_u16(rest, 4)) else {
            bail!(
                "sock_diag reply is truncated: {} bytes left where a netlink header needs {NLMSG_HDRLEN}",
                rest.len()
            );
        };
        let len = len as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            bail!(
                "sock_diag reply is malformed: netlink message claims {len} bytes, {} available",
                rest.len()
            );
        }
        let payload = rest.get(NLMSG_HDRLEN..len).unwrap_or_default();
        match ty {
            NLMSG_DONE => {
                // Since Linux 4.x the DONE payload carries the dump's final status.
                if let Some(status) = ne_u32(payload, 0).map(|v| v as i32) {
                    if status < 0 {
                        bail!("sock_diag dump failed: {}", errno_name(-status));
                    }
                }
                return Ok(true);
            }
            NLMSG_ERROR => {
                let Some(status) = ne_u32(payload, 0).map(|v| v as i32) else {
                    bail!("sock_diag reply is malformed: NLMSG_ERROR without an error code");
                };
                // status 0 is an ACK, which a dump does not end on.
                if status != 0 {
                    bail!("sock_diag request failed: {}", errno_name(-status));
                }
            }
            SOCK_DIAG_BY_FAMILY => out.push(parse_socket(payload)?),
            // NLMSG_NOOP and unknown control messages carry nothing we use; skipping keeps us
            // forward-compatible.
            _ => {}
        }
        off = off.saturating_add(align4(len));
    }
    Ok(false)
}

/// One `struct inet_diag_msg` followed by its rtattrs.
fn parse_socket(p: &[u8]) -> Result<DiagSocket> {
    let fixed = p.get(..INET_DIAG_MSG_LEN).with_context(|| {
        format!(
            "sock_diag reply is truncated: inet_diag_msg has {} bytes, needs {INET_DIAG_MSG_LEN}",
            p.len()
        )
    })?;
    // Layout: family, state, timer, retrans, sockid{sport, dport, src[16], dst[16], if, cookie[2]},
    // expires, rqueue, wqueue, uid, inode.
    let family = fixed.first().copied().unwrap_or_default();
    let state = fixed.get(1).copied().unwrap_or_default();
    let addr = |at: usize| -> Result<IpAddr> {
        match i32::from(family) {
            libc::AF_INET => {
                let o: [u8; 4] = fixed
                    .get(at..at + 4)
                    .and_then(|s| s.try_into().ok())
                    .unwrap_or_default();
                Ok(IpAddr::V4(Ipv4Addr::from(o)))
            }
            libc::AF_INET6 => {
                let o: [u8; 16] = fixed
                    .get(at..at + 16)
                    .and_then(|s| s.try_into().ok())
                    .unwrap_or_default();
                Ok(IpAddr::V6(Ipv6Addr::from(o)))
            }
            other => bail!("sock_diag reply has unexpected address family {other}"),
        }
    };
    let field = |at: usize| ne_u32(fixed, at).unwrap_or_default();
    let mut sock = DiagSocket {
        family: u16::from(family),
        state,
        sport: be_u16(fixed, 4).unwrap_or_default(),
        dport: be_u16(fixed, 6).unwrap_or_default(),
        src: addr(8)?,
        dst: addr(24)?,
        cookie: u64::from(field(44)) | (u64::from(field(48)) << 32),
        rqueue: field(56),
        wqueue: field(60),
        uid: field(64),
        inode: u64::from(field(68)),
        sk_drops: None,
        cgroup_id: None,
    };

    let mut off = align4(INET_DIAG_MSG_LEN);
    while off < p.len() {
        let rest = p.get(off..).unwrap_or_default();
        let (Some(rta_len), Some(rta_type)) = (ne_u16(rest, 0), ne_u16(rest, 2)) else {
            bail!(
                "sock_diag reply is truncated: {} bytes left where an rtattr header needs 4",
                rest.len()
            );
        };
        let rta_len = usize::from(rta_len);
        if rta_len < 4 || rta_len > rest.len() {
            bail!(
                "sock_diag reply is malformed: rtattr claims {rta_len} bytes, {} available",
                rest.len()
            );
        }
        let data = rest.get(4..rta_len).unwrap_or_default();
        if rta_type & NLA_TYPE_MASK == INET_DIAG_SKMEMINFO {
            // Older kernels send fewer counters; a missing DROPS slot means "unknown", not 0.
            sock.sk_drops = ne_u32(data, SK_MEMINFO_DROPS * 4);
        } else if rta_type & NLA_TYPE_MASK == INET_DIAG_CGROUP_ID {
            sock.cgroup_id = data.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes);
        }
        off = off.saturating_add(align4(rta_len));
    }
    Ok(sock)
}

fn open_sock_diag() -> Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the returned fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        bail!(
            "cannot open a NETLINK_SOCK_DIAG socket ({}): the kernel needs CONFIG_INET_DIAG (try `modprobe tcp_diag`)",
            io::Error::last_os_error()
        );
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // A dump that stalls must not hang a scrape forever.
    let tv = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: tv outlives the call and the length matches its type.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        bail!(
            "cannot set a receive timeout on the sock_diag socket: {}",
            io::Error::last_os_error()
        );
    }
    Ok(fd)
}

fn send_request(fd: &OwnedFd, req: &[u8]) -> Result<()> {
    // SAFETY: zeroed sockaddr_nl is valid; nl_pid 0 addresses the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    loop {
        // SAFETY: req and kernel are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            bail!("cannot send the sock_diag request: {err}");
        }
    }
}

fn recv_chunk(fd: &OwnedFd, buf: &mut [u8]) -> Result<usize> {
    loop {
        // MSG_TRUNC makes recv return the real datagram size, so an oversized one is detected
        // instead of silently parsed as a cut-off message.
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if n >= 0 {
            let n = n as usize;
            if n > buf.len() {
                bail!(
                    "sock_diag reply of {n} bytes does not fit the {} byte buffer",
                    buf.len()
                );
            }
            if n == 0 {
                bail!("sock_diag socket returned an empty read before the dump finished");
            }
            return Ok(n);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                bail!(
                    "sock_diag dump got no reply for 5 s: the kernel's inet_diag is not answering"
                )
            }
            _ => bail!("cannot read the sock_diag reply: {err}"),
        }
    }
}

/// Fetch: dumps TCP sockets of both families in the given states, in the network namespace of the
/// *calling thread* (netlink sockets bind to the creator's netns). One socket, two requests
/// (v4 then v6), reads until DONE each.
pub fn dump_tcp(states: u32, meminfo: bool) -> Result<Vec<DiagSocket>> {
    let fd = open_sock_diag()?;
    let mut buf = vec![0u8; RECV_BUF_LEN];
    let mut out = Vec::new();
    for (seq, family) in [(1u32, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        send_request(&fd, &build_request(family, states, meminfo, seq))?;
        let mut reads = 0usize;
        loop {
            let n = recv_chunk(&fd, &mut buf)?;
            reads += 1;
            let chunk = buf.get(..n).unwrap_or_default();
            if parse_messages(chunk, &mut out)? {
                break;
            }
        }
        log::trace!(
            "sock_diag family {family}: {reads} reads, {} sockets so far",
            out.len()
        );
    }
    Ok(out)
}

#[cfg(test)]
#[path = "diag_tests.rs"]
mod tests;
