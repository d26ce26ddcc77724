//! `/proc/<pid>/fd/*` link texts (`socket:[12345]`, `pipe:[7]`, paths), from which socket owners
//! are found. Asserts: an inode is returned exactly for `socket:[DIGITS]` and is those digits.
#![no_main]

use connmon::scan::procs::socket_inode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let got = socket_inode(data);
    let expected = std::str::from_utf8(data)
        .ok()
        .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']'))
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<u64>().ok());
    assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(data));
});
