//! The web config file (`--web.config.file`, exporter-toolkit's YAML: TLS, basic auth, headers,
//! rate limit). Asserts: a one-line `invalid web config …` error, or a configuration whose users
//! all have valid bcrypt hashes, whose headers are among the allowed ones with valid values, and
//! whose rate limit allows at least one request; with inline PEM, building the rustls
//! configuration is a one-line error or works.
#![no_main]

use std::path::Path;

use connmon::web::config::{parse, Pem};
use connmon::web::tls::server_config;
use connmon_fuzz::assert_one_line;
use libfuzzer_sys::fuzz_target;

const ALLOWED_HEADERS: &[&str] = &[
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let config = match parse(text, "web.yml", Path::new("/nonexistent/connmon-fuzz")) {
        Ok(c) => c,
        Err(e) => {
            assert_one_line(&e);
            assert!(e.to_string().starts_with("invalid web config web.yml: "), "{e}");
            return;
        }
    };
    for hash in config.users.values() {
        assert!(hash.starts_with('$'), "{hash:?} accepted as bcrypt");
    }
    for (name, value) in &config.headers {
        assert!(ALLOWED_HEADERS.contains(&name.as_str()), "{name}");
        assert!(!value.is_empty() && axum_value_ok(value), "{name}: {value:?}");
    }
    if let Some(r) = config.rate_limit {
        assert!(r.burst >= 1 && !r.interval.is_zero(), "{r:?}");
    }
    for w in &config.warnings {
        assert!(!w.contains('\n'), "{w:?}");
    }
    // Only inline PEM: a file name from the input could name /dev/zero on the fuzzing host.
    if let Some(tls) = &config.tls {
        let inline = |p: &Pem| matches!(p, Pem::Inline(_));
        if inline(&tls.cert) && inline(&tls.key) && tls.client_ca.as_ref().is_none_or(inline) {
            if let Err(e) = server_config(tls) {
                assert!(!e.contains('\n') && !e.is_empty(), "{e:?}");
            }
        }
    }
});

/// What HeaderValue accepts: visible ASCII, spaces and tabs, obs-text; no control characters.
fn axum_value_ok(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}
