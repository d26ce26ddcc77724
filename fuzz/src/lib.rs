//! What the fuzz targets share: the checks every parser's error must pass, and encoders that turn
//! parsed sock_diag sockets back into the kernel's wire format, so the sock_diag targets can assert
//! a round trip (parse, encode, parse again: the same sockets) and not only "no crash".

use connmon::scan::{diag::DiagSocket, unix_diag::UnixListenerSock};

/// The project's standard for bad input: a clear one-line error. A panic is caught by libFuzzer
/// itself; this catches the error that would print as several lines or as nothing.
pub fn assert_one_line(err: &anyhow::Error) {
    let text = format!("{err:#}");
    assert!(!text.trim().is_empty(), "empty error message");
    assert!(!text.contains('\n'), "error message spans several lines: {text:?}");
}

/// `struct nlmsghdr` for one reply message of `payload_len` bytes.
fn nlmsghdr(out: &mut Vec<u8>, kind: u16, payload_len: usize) {
    let len = u32::try_from(16 + payload_len).expect("message fits u32");
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    // NLM_F_MULTI, as every message of a dump reply carries.
    out.extend_from_slice(&2u16.to_ne_bytes());
    out.extend_from_slice(&1u32.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = u16::try_from(4 + value.len()).expect("attribute fits u16");
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    pad4(out);
}

/// The NLMSG_DONE that ends a dump (status 0).
pub fn done(out: &mut Vec<u8>) {
    nlmsghdr(out, 3, 4);
    out.extend_from_slice(&0i32.to_ne_bytes());
}

/// One SOCK_DIAG_BY_FAMILY reply (`struct inet_diag_msg` and attributes) for `s`, as the kernel
/// writes it.
pub fn encode_inet(s: &DiagSocket, out: &mut Vec<u8>) {
    let mut p = vec![u8::try_from(s.family).expect("family was parsed from a u8"), s.state, 0, 0];
    p.extend_from_slice(&s.sport.to_be_bytes());
    p.extend_from_slice(&s.dport.to_be_bytes());
    for addr in [s.src, s.dst] {
        let mut a = [0u8; 16];
        match addr {
            std::net::IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
            std::net::IpAddr::V6(v6) => a = v6.octets(),
        }
        p.extend_from_slice(&a);
    }
    p.extend_from_slice(&0u32.to_ne_bytes()); // interface
    p.extend_from_slice(&(s.cookie as u32).to_ne_bytes());
    p.extend_from_slice(&((s.cookie >> 32) as u32).to_ne_bytes());
    p.extend_from_slice(&0u32.to_ne_bytes()); // expires
    p.extend_from_slice(&s.rqueue.to_ne_bytes());
    p.extend_from_slice(&s.wqueue.to_ne_bytes());
    p.extend_from_slice(&s.uid.to_ne_bytes());
    p.extend_from_slice(&u32::try_from(s.inode).expect("inode was parsed from a u32").to_ne_bytes());
    assert_eq!(p.len(), 72);
    if let Some(drops) = s.sk_drops {
        // INET_DIAG_SKMEMINFO: SK_MEMINFO_VARS u32s, drops last.
        let mut mem = [0u8; 36];
        mem[32..].copy_from_slice(&drops.to_ne_bytes());
        attr(&mut p, 7, &mem);
    }
    if let Some(id) = s.cgroup_id {
        attr(&mut p, 21, &id.to_ne_bytes());
    }
    nlmsghdr(out, 20, p.len());
    out.extend_from_slice(&p);
}

/// One unix_diag reply for a listener as [`UnixListenerSock`] describes it: its name as `ss -xl`
/// shows it turned back into the address (`@…` abstract, else a path).
pub fn encode_unix(s: &UnixListenerSock, out: &mut Vec<u8>) {
    let kind = match s.kind {
        "stream" => 1u8,
        "seqpacket" => 5,
        other => panic!("parser produced a listener of kind {other:?}"),
    };
    let mut p = vec![1u8, kind, 10, 0];
    p.extend_from_slice(&u32::try_from(s.inode).expect("inode was parsed from a u32").to_ne_bytes());
    p.extend_from_slice(&s.cookie.to_ne_bytes());
    if let Some(abstract_name) = s.name.strip_prefix('@') {
        let mut v = vec![0u8];
        v.extend_from_slice(abstract_name.as_bytes());
        attr(&mut p, 0, &v);
    } else if !s.name.is_empty() {
        let mut v = s.name.as_bytes().to_vec();
        v.push(0);
        attr(&mut p, 0, &v);
    }
    let mut rq = s.depth.to_ne_bytes().to_vec();
    rq.extend_from_slice(&s.backlog.to_ne_bytes());
    attr(&mut p, 4, &rq);
    nlmsghdr(out, 20, p.len());
    out.extend_from_slice(&p);
}
