//! Tracepoint `format` files (`<tracefs>/events/<group>/<name>/format`), read at start-up for the
//! record layout. Asserts: a one-line error, or a format with a non-empty name and fields whose
//! names and types are non-empty; looking a field up never panics and finds each parsed field.
#![no_main]

use connmon::kernel::tracefs::parse_format;
use connmon_fuzz::assert_one_line;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_format(text) {
        Err(e) => assert_one_line(&e),
        Ok(f) => {
            assert!(!f.name.is_empty() && !f.fields.is_empty());
            for field in &f.fields {
                assert!(!field.name.is_empty() && !field.ty.is_empty(), "{field:?}");
                assert!(field.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{field:?}");
                let found = f.field(&field.name).expect("a parsed field is found by its name");
                assert_eq!(found.name, field.name);
            }
            if let Err(e) = f.field("no such field") {
                assert_one_line(&e);
            }
        }
    }
});
