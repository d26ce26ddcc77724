//! unix_diag replies (listening unix sockets), as `scan::unix_diag::dump_unix_listeners` receives
//! one recv() buffer. Asserts: a one-line error or listeners; each is a stream or seqpacket socket;
//! no more listeners than the buffer holds messages; and a round trip through the kernel's format
//! (names as `ss -xl` shows them turned back into addresses) gives the same listeners.
#![no_main]

use connmon::scan::unix_diag::parse_messages;
use connmon_fuzz::{assert_one_line, done, encode_unix};
use libfuzzer_sys::fuzz_target;

/// nlmsghdr and struct unix_diag_msg.
const MIN_SOCKET_MSG: usize = 16 + 16;
/// Longer names (lossy UTF-8 can triple a name) would not fit a netlink attribute when encoded.
const MAX_NAME: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    match parse_messages(data, &mut out) {
        Err(e) => assert_one_line(&e),
        Ok(_) => {
            assert!(out.len() <= data.len() / MIN_SOCKET_MSG, "{} listeners from {} bytes", out.len(), data.len());
            if out.iter().any(|s| s.name.len() > MAX_NAME) {
                return;
            }
            let mut again = Vec::new();
            for s in &out {
                encode_unix(s, &mut again);
            }
            done(&mut again);
            let mut reparsed = Vec::new();
            assert!(parse_messages(&again, &mut reparsed).expect("re-encoded reply parses"), "DONE seen");
            assert_eq!(out, reparsed);
        }
    }
});
