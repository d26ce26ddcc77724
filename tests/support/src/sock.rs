//! Sockets made directly with libc (so backlog, non-blocking connects and raw SYNs are exact).
//! Every fd is close-on-exec, so the `ss`/`ip`/`connmon` children the tests spawn never hold the
//! test's sockets (connmon attributes a socket to the process holding its fd).

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn cvt(rc: libc::c_int, what: &str) -> RawFd {
    if rc < 0 {
        panic!("{what}: {}", io::Error::last_os_error());
    }
    rc
}

/// `SocketAddr` -> (sockaddr_storage, length).
pub fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// sockaddr_storage -> `SocketAddr` (AF_INET / AF_INET6 only).
pub fn from_sockaddr(storage: &libc::sockaddr_storage) -> SocketAddr {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: family says this is a sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: family says this is a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            SocketAddr::V6(SocketAddrV6::new(
                sin6.sin6_addr.s6_addr.into(),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            ))
        }
        f => panic!("unexpected address family {f}"),
    }
}

fn family(addr: &SocketAddr) -> libc::c_int {
    match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    }
}

/// A non-blocking TCP listener on `addr` with `listen(backlog)` (SO_REUSEADDR set).
/// Port 0 picks a free port: read it back with [`local_addr`].
pub fn listen_tcp(addr: SocketAddr, backlog: i32) -> OwnedFd {
    // SAFETY: plain syscalls; the fd is owned by the returned OwnedFd.
    unsafe {
        let fd = cvt(
            libc::socket(family(&addr), libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0),
            "socket(SOCK_STREAM)",
        );
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        cvt(
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                &one as *const _ as *const libc::c_void,
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            ),
            "setsockopt(SO_REUSEADDR)",
        );
        let (sa, len) = to_sockaddr(&addr);
        cvt(libc::bind(fd.as_raw_fd(), &sa as *const _ as *const libc::sockaddr, len), &format!("bind({addr})"));
        cvt(libc::listen(fd.as_raw_fd(), backlog), &format!("listen({addr}, {backlog})"));
        fd
    }
}

/// The address a socket is bound to (getsockname).
pub fn local_addr(fd: &OwnedFd) -> SocketAddr {
    // SAFETY: getsockname writes at most `len` bytes into storage.
    unsafe {
        let mut storage: libc::sockaddr_storage = mem::zeroed();
        let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        cvt(libc::getsockname(fd.as_raw_fd(), &mut storage as *mut _ as *mut libc::sockaddr, &mut len), "getsockname");
        from_sockaddr(&storage)
    }
}

/// Starts a non-blocking TCP connect to `addr` and returns the socket without waiting.
/// Against a listener whose accept queue is full the SYN is dropped and the client keeps
/// retransmitting it (after ~1 s, 3 s, 7 s, ...), which keeps the listener's drop counters rising.
pub fn connect_nonblocking(addr: SocketAddr) -> OwnedFd {
    // SAFETY: plain syscalls; the fd is owned by the returned OwnedFd.
    unsafe {
        let fd = cvt(
            libc::socket(family(&addr), libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0),
            "socket(SOCK_STREAM)",
        );
        let fd = OwnedFd::from_raw_fd(fd);
        let (sa, len) = to_sockaddr(&addr);
        let rc = libc::connect(fd.as_raw_fd(), &sa as *const _ as *const libc::sockaddr, len);
        if rc < 0 {
            let err = io::Error::last_os_error();
            assert_eq!(err.raw_os_error(), Some(libc::EINPROGRESS), "connect({addr}) failed: {err}");
        }
        fd
    }
}

/// Accepts (and closes) every connection waiting in a non-blocking listener's accept queue;
/// returns how many there were.
pub fn accept_all(listener: &OwnedFd) -> usize {
    let mut n = 0;
    loop {
        // SAFETY: accept4 with null address pointers is allowed.
        let rc = unsafe {
            libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)
        };
        if rc >= 0 {
            // SAFETY: rc is a fresh fd we own; dropping it closes it.
            drop(unsafe { OwnedFd::from_raw_fd(rc) });
            n += 1;
            continue;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) => return n,
            Some(libc::EINTR) | Some(libc::ECONNABORTED) => continue,
            _ => panic!("accept4 failed: {err}"),
        }
    }
}

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;

/// The kernel's TCP state of a socket (tcpi_state, the first byte of struct tcp_info).
pub fn tcp_state(fd: &OwnedFd) -> u8 {
    let mut buf = [0u8; 256];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    cvt(rc, "getsockopt(TCP_INFO)");
    buf[0]
}

/// Internet checksum (RFC 1071) over `chunks` concatenated.
fn inet_checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for chunk in chunks {
        for &b in chunk.iter() {
            match odd.take() {
                None => odd = Some(b),
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 + TCP SYN packet (no options), both checksums filled in.
pub fn build_syn(src: SocketAddrV4, dst: SocketAddrV4, seq: u32) -> Vec<u8> {
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    // ack = 0
    tcp[12] = 5 << 4; // data offset: 5 words
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes()); // window
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.ip().octets());
    pseudo[4..8].copy_from_slice(&dst.ip().octets());
    pseudo[9] = libc::IPPROTO_TCP as u8;
    pseudo[10..12].copy_from_slice(&(tcp.len() as u16).to_be_bytes());
    let csum = inet_checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&csum.to_be_bytes());

    let mut ip = [0u8; 20];
    ip[0] = 0x45; // version 4, IHL 5
    let total = (ip.len() + tcp.len()) as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&(seq as u16).to_be_bytes()); // id
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip[8] = 64; // TTL
    ip[9] = libc::IPPROTO_TCP as u8;
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let csum = inet_checksum(&[&ip]);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());

    let mut pkt = ip.to_vec();
    pkt.extend_from_slice(&tcp);
    pkt
}

/// Sends one raw TCP SYN per source port from `src_ip` to `dst` through a raw socket
/// (SOCK_RAW + IP_HDRINCL). Must run inside the test's namespace (`ns.run(|| ...)`).
///
/// Recipe for half-open connections that stay in a listener's SYN queue: give the namespace a
/// sink device (dummy, or ifb where the kernel lacks dummy) holding 10.99.0.1/24
/// (`Netns::add_sink_device`), listen on 10.99.0.1, and send SYNs from the non-existent 10.99.0.2.
/// The SYN-ACKs are routed out of the sink device and vanish, so the requests stay in SYN-RECV and
/// the kernel retransmits SYN-ACKs (first after ~1 s, then 3, 7, 15, 31 s; gone after ~63 s).
pub fn send_raw_syns(src_ip: Ipv4Addr, dst: SocketAddrV4, src_ports: impl IntoIterator<Item = u16>) {
    // SAFETY: plain syscalls; the fd is owned by an OwnedFd.
    unsafe {
        let fd = cvt(
            libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_TCP),
            "socket(AF_INET, SOCK_RAW, IPPROTO_TCP)",
        );
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        cvt(
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_HDRINCL,
                &one as *const _ as *const libc::c_void,
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            ),
            "setsockopt(IP_HDRINCL)",
        );
        // Raw sockets take the port field as 0; the destination port is in the TCP header.
        let (sa, len) = to_sockaddr(&SocketAddr::V4(SocketAddrV4::new(*dst.ip(), 0)));
        for (i, sport) in src_ports.into_iter().enumerate() {
            let seq = 0x1000_0000u32.wrapping_add((sport as u32) << 8).wrapping_add(i as u32);
            let pkt = build_syn(SocketAddrV4::new(src_ip, sport), dst, seq);
            let n = libc::sendto(
                fd.as_raw_fd(),
                pkt.as_ptr() as *const libc::c_void,
                pkt.len(),
                0,
                &sa as *const _ as *const libc::sockaddr,
                len,
            );
            assert_eq!(
                n,
                pkt.len() as isize,
                "sendto raw SYN {src_ip}:{sport} -> {dst}: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// The addresses of the SYN-queue recipe (see [`send_raw_syns`]).
pub const SYNQ_LOCAL: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const SYNQ_PEER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

/// In `ns`: sink device d0 with 10.99.0.1/24, a listener on 10.99.0.1:`port` with `backlog`,
/// and `n` raw SYNs from 10.99.0.2 (source ports 40000..). Returns the listener.
pub fn listener_with_half_open(ns: &super::Netns, port: u16, backlog: i32, n: u16) -> OwnedFd {
    ns.add_sink_device("d0", "10.99.0.1/24");
    let dst = SocketAddrV4::new(SYNQ_LOCAL, port);
    ns.run(|| {
        let l = listen_tcp(SocketAddr::V4(dst), backlog);
        send_raw_syns(SYNQ_PEER, dst, 40000..40000 + n);
        l
    })
}
