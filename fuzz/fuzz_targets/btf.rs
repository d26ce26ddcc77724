//! Kernel BTF (`/sys/kernel/btf/vmlinux`), from which the agent resolves struct sock offsets.
//! Asserts: a one-line error or a parsed blob; then resolving every offset the agent needs (and a
//! few malformed member paths) terminates without a panic, each failure a one-line error, and a
//! resolved offset is deterministic.
#![no_main]

use connmon::kernel::btf::{fd_offsets, sock_offsets, task_offsets, Btf};
use connmon_fuzz::assert_one_line;
use libfuzzer_sys::fuzz_target;

const PATHS: &[(&str, &str)] = &[
    ("sock", "__sk_common.skc_family"),
    ("sock", "__sk_common.skc_net.net"),
    ("sock", "sk_ack_backlog"),
    ("net", "ns.inum"),
    ("inet_connection_sock", "icsk_accept_queue.qlen"),
    ("task_struct", "comm"),
    ("sock", "a..b"),
    ("sock", ""),
];

fuzz_target!(|data: &[u8]| {
    let btf = match Btf::parse(data) {
        Ok(b) => b,
        Err(e) => return assert_one_line(&e),
    };
    for (strukt, path) in PATHS {
        match btf.member_offset(strukt, path) {
            Ok(off) => assert_eq!(btf.member_offset(strukt, path).ok(), Some(off)),
            Err(e) => assert_one_line(&e),
        }
    }
    let _ = (sock_offsets(&btf), task_offsets(&btf), fd_offsets(&btf));
});
