//! Unix-domain listeners (stream and seqpacket) through sock_diag's AF_UNIX family, as `ss -xl`
//! reads them: UNIX_DIAG_RQLEN gives a listener's queue depth (connections not yet accepted) and
//! its backlog, UNIX_DIAG_NAME its path or abstract name. The message types are
//! rust-netlink's (`netlink-packet-sock-diag`); this module builds the dump request, parses
//! replies with a pure function fed bytes, and [`dump_unix_listeners`] is the only code that talks
//! to the kernel, in the network namespace of the calling thread.
use anyhow::{bail, Result};
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::{
    constants::{SOCK_SEQPACKET, SOCK_STREAM, TCP_LISTEN},
    unix::{nlas::UnixDiagName, ShowFlags, StateFlags, UnixRequest},
    SockDiagMessage,
};
use serde::Serialize;

/// One listening unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnixListenerSock {
    pub inode: u64,
    pub cookie: u64,
    /// "stream" or "seqpacket".
    pub kind: &'static str,
    /// Filesystem path, or `@name` for an abstract address (NULs inside it shown as `@`, as `ss`
    /// does); empty for an unbound socket.
    pub name: String,
    /// Connections waiting for accept() (`ss -xl` Recv-Q).
    pub depth: u32,
    /// Backlog the kernel keeps (`ss -xl` Send-Q).
    pub backlog: u32,
}

/// Pure: the dump request for listening unix sockets with their names and queue lengths.
pub fn build_request(seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let request = UnixRequest {
        state_flags: StateFlags::LISTEN,
        inode: 0,
        show_flags: ShowFlags::NAME | ShowFlags::RQLEN,
        cookie: [0xff; 8],
    };
    let mut msg = NetlinkMessage::new(header, SockDiagMessage::UnixRequest(request).into());
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// Pure: parses one recv() buffer of replies, appending listeners; Ok(true) once the dump is done.
pub fn parse_messages(buf: &[u8], out: &mut Vec<UnixListenerSock>) -> Result<bool> {
    let mut off = 0usize;
    while off < buf.len() {
        let rest = &buf[off..];
        let msg = match NetlinkMessage::<SockDiagMessage>::deserialize(rest) {
            Ok(m) => m,
            Err(e) => bail!("unix sock_diag reply is malformed at byte {off}: {e}"),
        };
        let len = msg.header.length as usize;
        if len < 16 {
            bail!("unix sock_diag reply is malformed: netlink message claims {len} bytes");
        }
        match msg.payload {
            // saturating_neg: -i32::MIN overflows (a panic in debug builds); so does the
            // `abs()` inside netlink-packet-core's ErrorMessage::to_io, hence not used.
            NetlinkPayload::Done(d) if d.code < 0 => {
                bail!("unix sock_diag dump failed: {}", std::io::Error::from_raw_os_error(d.code.saturating_neg()))
            }
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) if e.code.is_some() => {
                bail!(
                    "unix sock_diag request failed: {} (the kernel needs CONFIG_UNIX_DIAG; try `modprobe unix_diag`)",
                    std::io::Error::from_raw_os_error(e.raw_code().saturating_neg())
                )
            }
            NetlinkPayload::InnerMessage(SockDiagMessage::UnixResponse(r)) => {
                let kind = match r.header.kind {
                    SOCK_STREAM => "stream",
                    SOCK_SEQPACKET => "seqpacket",
                    _ => "",
                };
                if r.header.state == TCP_LISTEN && !kind.is_empty() {
                    out.push(UnixListenerSock {
                        inode: u64::from(r.header.inode),
                        cookie: u64::from_ne_bytes(r.header.cookie),
                        kind,
                        name: r.name().map(display_name).unwrap_or_default(),
                        depth: r.number_of_pending_connection().unwrap_or(0),
                        backlog: r.max_number_of_pending_connection().unwrap_or(0),
                    });
                }
            }
            _ => {}
        }
        off = off.saturating_add((len + 3) & !3);
    }
    Ok(false)
}

fn display_name(name: &UnixDiagName) -> String {
    match name {
        UnixDiagName::Pathname(p) => p.to_string_lossy().into_owned(),
        UnixDiagName::Abstract(a) => {
            let shown: Vec<u8> = a.iter().map(|&b| if b == 0 { b'@' } else { b }).collect();
            format!("@{}", String::from_utf8_lossy(&shown))
        }
    }
}

/// Fetch: every listening stream and seqpacket unix socket in the calling thread's namespace.
pub fn dump_unix_listeners() -> Result<Vec<UnixListenerSock>> {
    let fd = super::diag::open_sock_diag()?;
    super::diag::send_request(&fd, &build_request(3))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    loop {
        let n = super::diag::recv_chunk(&fd, &mut buf)?;
        if parse_messages(&buf[..n], &mut out)? {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply as a 6.18 kernel sends it for `socket(AF_UNIX, SOCK_STREAM)`, bound to the abstract
    /// name "\0cm\0x" and listening with backlog 7, three connections queued, then DONE.
    fn reply() -> Vec<u8> {
        let mut b = Vec::new();
        // unix_diag_msg: family, type, state, pad, ino, cookie[2]
        let mut payload = vec![1u8, 1, 10, 0];
        payload.extend_from_slice(&4242u32.to_ne_bytes());
        payload.extend_from_slice(&7u32.to_ne_bytes());
        payload.extend_from_slice(&0u32.to_ne_bytes());
        // UNIX_DIAG_NAME (0): "\0cm\0x"
        let name = b"\0cm\0x";
        payload.extend_from_slice(&((4 + name.len()) as u16).to_ne_bytes());
        payload.extend_from_slice(&0u16.to_ne_bytes());
        payload.extend_from_slice(name);
        while payload.len() % 4 != 0 {
            payload.push(0);
        }
        // UNIX_DIAG_RQLEN (4): queued, backlog
        payload.extend_from_slice(&12u16.to_ne_bytes());
        payload.extend_from_slice(&4u16.to_ne_bytes());
        payload.extend_from_slice(&3u32.to_ne_bytes());
        payload.extend_from_slice(&7u32.to_ne_bytes());
        let mut push = |ty: u16, p: &[u8]| {
            b.extend_from_slice(&((16 + p.len()) as u32).to_ne_bytes());
            b.extend_from_slice(&ty.to_ne_bytes());
            b.extend_from_slice(&2u16.to_ne_bytes());
            b.extend_from_slice(&3u32.to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
            b.extend_from_slice(p);
        };
        push(20, &payload);
        push(3, &0i32.to_ne_bytes());
        b
    }

    #[test]
    fn parses_an_abstract_listener_and_done() {
        let mut out = Vec::new();
        assert!(parse_messages(&reply(), &mut out).unwrap());
        assert_eq!(
            out,
            vec![UnixListenerSock {
                inode: 4242,
                cookie: 7,
                kind: "stream",
                name: "@cm@x".into(),
                depth: 3,
                backlog: 7
            }]
        );
    }

    #[test]
    fn request_asks_for_listeners_with_names_and_queue_lengths() {
        let req = build_request(9);
        assert_eq!(req.len(), 16 + 24);
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), 20, "SOCK_DIAG_BY_FAMILY");
        assert_eq!(req[16], 1, "AF_UNIX");
        assert_eq!(u32::from_ne_bytes(req[20..24].try_into().unwrap()), 1 << 10, "LISTEN only");
        assert_eq!(u32::from_ne_bytes(req[28..32].try_into().unwrap()), 1 | 1 << 4, "NAME | RQLEN");
    }

    #[test]
    fn errors_and_garbage_are_one_line_errors() {
        let mut nack = vec![];
        nack.extend_from_slice(&36u32.to_ne_bytes());
        nack.extend_from_slice(&2u16.to_ne_bytes());
        nack.extend_from_slice(&[0; 10]);
        nack.extend_from_slice(&(-2i32).to_ne_bytes());
        nack.extend_from_slice(&[0; 16]);
        for bad in [&nack[..], &[1, 2, 3][..]] {
            let e = parse_messages(bad, &mut Vec::new()).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
        }
    }

    /// Found by fuzz/ (sock_diag_unix): DONE with i32::MIN, whose negation overflowed.
    #[test]
    fn done_with_the_most_negative_code_is_an_error() {
        let crasher = [20, 0, 0, 0, 3, 0, 2, 0, 3, 0, 0, 0, 0, 0x3d, 0xfb, 0, 0, 0, 0, 0x80];
        let e = parse_messages(&crasher, &mut Vec::new()).unwrap_err().to_string();
        assert!(e.starts_with("unix sock_diag dump failed") && !e.contains('\n'), "{e}");
        let mut nack = vec![];
        nack.extend_from_slice(&36u32.to_ne_bytes());
        nack.extend_from_slice(&2u16.to_ne_bytes());
        nack.extend_from_slice(&[0; 10]);
        nack.extend_from_slice(&i32::MIN.to_ne_bytes());
        nack.extend_from_slice(&[0; 16]);
        assert!(parse_messages(&nack, &mut Vec::new()).is_err());
    }

    #[test]
    fn live_dump_sees_an_abstract_listener() {
        use std::os::unix::net::UnixListener;
        let name = format!("connmon-unit-{}", std::process::id());
        let addr =
            <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name.as_bytes())
                .unwrap();
        let _l = UnixListener::bind_addr(&addr).unwrap();
        let found = dump_unix_listeners().unwrap();
        let me = found.iter().find(|s| s.name == format!("@{name}")).expect("listed");
        assert_eq!((me.kind, me.depth), ("stream", 0));
        assert!(me.backlog > 0);
    }
}
