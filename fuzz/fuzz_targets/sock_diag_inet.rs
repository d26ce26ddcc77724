//! inet_diag replies (TCP sockets from NETLINK_SOCK_DIAG), as `scan::diag::dump_tcp` receives one
//! recv() buffer. Asserts: a one-line error or sockets; no more sockets than the buffer holds
//! messages; and a round trip: the sockets encoded back into the kernel's format parse to the same
//! sockets, ending on DONE.
#![no_main]

use connmon::scan::diag::parse_messages;
use connmon_fuzz::{assert_one_line, done, encode_inet};
use libfuzzer_sys::fuzz_target;

/// nlmsghdr and struct inet_diag_msg: the least one socket takes.
const MIN_SOCKET_MSG: usize = 16 + 72;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    match parse_messages(data, &mut out) {
        Err(e) => assert_one_line(&e),
        Ok(_) => {
            assert!(out.len() <= data.len() / MIN_SOCKET_MSG, "{} sockets from {} bytes", out.len(), data.len());
            let mut again = Vec::new();
            for s in &out {
                assert!(s.family == 2 || s.family == 10, "family {} accepted", s.family);
                encode_inet(s, &mut again);
            }
            done(&mut again);
            let mut reparsed = Vec::new();
            assert!(parse_messages(&again, &mut reparsed).expect("re-encoded reply parses"), "DONE seen");
            assert_eq!(out, reparsed);
        }
    }
});
