//! Just enough of the Redis (RESP) and PostgreSQL (protocol 3.0) wire protocols for the test
//! clients and servers to hold real sessions: a command, a reply line, PING, and a startup up to
//! ReadyForQuery. Anything unexpected panics, since these talk only to servers the tests started.

use std::io::{Read, Write};
use std::net::TcpStream;

/// A RESP array of bulk strings.
pub fn resp_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Reads one CRLF-terminated line (without the CRLF).
pub fn read_line(s: &mut impl Read) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(b"\r\n") {
        match s.read(&mut b) {
            Ok(0) => panic!("connection closed after {:?}", String::from_utf8_lossy(&out)),
            Ok(_) => out.push(b[0]),
            Err(e) => panic!("read after {:?}: {e}", String::from_utf8_lossy(&out)),
        }
    }
    out.truncate(out.len() - 2);
    String::from_utf8_lossy(&out).into_owned()
}

fn expect_reply(s: &mut TcpStream, want: &str) {
    let got = read_line(s);
    assert_eq!(got, want, "unexpected reply from {:?}", s.peer_addr());
}

/// Names the connection (`CLIENT SETNAME name`, +OK), then PINGs it (+PONG).
pub fn redis_hello(s: &mut TcpStream, name: &str) {
    s.write_all(&resp_command(&["CLIENT", "SETNAME", name])).expect("send CLIENT SETNAME");
    expect_reply(s, "+OK");
    redis_ping(s);
}

pub fn redis_ping(s: &mut TcpStream) {
    s.write_all(&resp_command(&["PING"])).expect("send PING");
    expect_reply(s, "+PONG");
}

/// PostgreSQL StartupMessage (protocol 3.0); reads messages up to ReadyForQuery. Trust auth only.
pub fn pg_startup(s: &mut TcpStream, application_name: &str) {
    let mut body = 196608u32.to_be_bytes().to_vec();
    for (k, v) in [("user", "postgres"), ("database", "postgres"), ("application_name", application_name)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    s.write_all(&msg).expect("send StartupMessage");
    loop {
        let mut hdr = [0u8; 5];
        s.read_exact(&mut hdr).expect("read PostgreSQL message header");
        let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
        let mut payload = vec![0u8; len.saturating_sub(4)];
        s.read_exact(&mut payload).expect("read PostgreSQL message");
        match hdr[0] {
            b'R' => {
                let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                assert_eq!(code, 0, "server asked for authentication method {code}; tests need trust");
            }
            b'E' => panic!("PostgreSQL error: {}", String::from_utf8_lossy(&payload)),
            b'Z' => return,
            _ => {} // ParameterStatus, BackendKeyData, NoticeResponse
        }
    }
}
