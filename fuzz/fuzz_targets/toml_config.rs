//! The agent's TOML configuration file (`--config`). Asserts: a one-line `invalid config …` error
//! naming the file, or a configuration that passed validation (every window and interval longer
//! than zero) and whose storm settings resolve.
#![no_main]

use connmon::config::parse;
use connmon_fuzz::assert_one_line;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse(text, "connmon.toml") {
        Err(e) => {
            assert_one_line(&e);
            assert!(e.to_string().starts_with("invalid config connmon.toml: "), "{e}");
        }
        Ok(c) => {
            assert!(!c.alerts.interval.0.is_zero());
            assert!(!c.alerts.pool_growth.window.0.is_zero());
            let _ = c.storm.resolve();
        }
    }
});
