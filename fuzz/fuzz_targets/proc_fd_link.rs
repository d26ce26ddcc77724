//! `/proc/<pid>/fd/*` link texts (`socket:[12345]`, `pipe:[7]`, paths), from which socket owners
//! are found. Asserts: every `socket:[DIGITS]` link gives exactly that inode, and an inode only
//! comes from a `socket:` link holding its digits (procfs's parser does not check the brackets
//! around them, which the kernel always writes).
#![no_main]

use connmon::scan::procs::socket_inode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let got = socket_inode(data);
    let text = std::str::from_utf8(data).ok();
    let well_formed = text
        .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']'))
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<u64>().ok());
    if let Some(inode) = well_formed {
        assert_eq!(got, Some(inode), "{text:?}");
    }
    if let Some(inode) = got {
        let t = text.expect("an inode from a non-UTF-8 link");
        assert!(t.starts_with("socket:") && t.contains(&inode.to_string()), "{t:?} gave {inode}");
    }
});
