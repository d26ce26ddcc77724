//! `/proc/<pid>/net/netstat` and `/proc/net/snmp` (the "Prefix: names / Prefix: values" pairs).
//! Asserts: a one-line error, or sections whose every name came from the text, never more values
//! than the text has words; the TcpExt reader agrees with the full parse.
#![no_main]

use connmon::scan::netstat::{parse_pairs, tcp_ext};
use connmon_fuzz::assert_one_line;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_pairs(text) {
        Err(e) => {
            assert_one_line(&e);
            assert!(tcp_ext(text).is_err(), "tcp_ext accepted what parse_pairs refused");
        }
        Ok(sections) => {
            let words = text.split_whitespace().count();
            let values: usize = sections.values().map(|s| s.len()).sum();
            assert!(values <= words / 2, "{values} values from {words} words");
            for (prefix, counters) in &sections {
                assert!(text.contains(prefix.as_str()) && !prefix.contains(char::is_whitespace), "{prefix:?}");
                for name in counters.keys() {
                    assert!(text.contains(name.as_str()), "{name}");
                }
            }
            match tcp_ext(text) {
                Ok(ext) => assert_eq!(Some(&ext), sections.get("TcpExt")),
                Err(e) => {
                    assert_one_line(&e);
                    assert!(!sections.contains_key("TcpExt"));
                }
            }
        }
    }
});
