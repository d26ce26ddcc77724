//! Unit tests of the web config parser: every key, and the one-line errors for bad input.
use super::*;

const HASH: &str = "$2y$10$BZTEQcrhM4oPENsxuAi7Ne24gLl5R5KubxbZgbLRVBeej03unBsEi";

fn ok(text: &str) -> WebConfig {
    parse(text, "web.yml", Path::new("/etc/connmon")).unwrap_or_else(|e| panic!("{text}\n→ {e}"))
}

fn err(text: &str) -> String {
    let e = parse(text, "web.yml", Path::new("/etc/connmon")).expect_err(text).to_string();
    assert!(e.starts_with("invalid web config web.yml: "), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

#[test]
fn empty_file_and_empty_sections_mean_plain_http() {
    for text in ["", "# nothing\n", "tls_server_config:\n", "basic_auth_users: {}\n", "http_server_config: {}\n"] {
        let c = ok(text);
        assert_eq!(c.tls, None, "{text}");
        assert!(c.users.is_empty() && c.headers.is_empty() && c.rate_limit.is_none(), "{text}");
    }
}

#[test]
fn full_file() {
    let c = ok(&format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: /abs/server.key\n  client_auth_type: RequireAndVerifyClientCert\n  \
         client_ca_file: ca.crt\n  client_allowed_sans: [prometheus.example, 10.0.0.1]\n  min_version: TLS13\n  max_version: TLS13\n  \
         cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n  \
         prefer_server_cipher_suites: false\n  curve_preferences: [CurveP384, X25519]\n\
         http_server_config:\n  http2: false\n  headers:\n    Strict-Transport-Security: max-age=31536000\n    X-Frame-Options: deny\n    \
         X-Content-Type-Options: nosniff\n    X-XSS-Protection: '1; mode=block'\n    Content-Security-Policy: \"default-src 'self'\"\n\
         basic_auth_users:\n  alice: {HASH}\n  bob: '{HASH}'\n\
         rate_limit:\n  interval: 100ms\n  burst: 5\n"
    ));
    let t = c.tls.expect("TLS");
    assert_eq!(t.cert, Pem::File("/etc/connmon/server.crt".into()), "relative to the file's directory");
    assert_eq!(t.key, Pem::File("/abs/server.key".into()));
    assert_eq!(t.client_ca, Some(Pem::File("/etc/connmon/ca.crt".into())));
    assert_eq!(t.client_auth, ClientAuth::RequireAndVerifyClientCert);
    assert_eq!(t.client_allowed_sans, ["prometheus.example", "10.0.0.1"]);
    assert_eq!((t.min_version, t.max_version), (TlsVersion::Tls13, TlsVersion::Tls13));
    assert_eq!(t.cipher_suites, ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"]);
    assert!(!t.prefer_server_cipher_suites);
    assert_eq!(t.curves, [Curve::P384, Curve::X25519]);
    assert_eq!(c.headers.len(), 5);
    assert!(c.headers.contains(&("X-Frame-Options".into(), "deny".into())));
    assert_eq!(c.users.keys().collect::<Vec<_>>(), ["alice", "bob"]);
    assert_eq!(c.rate_limit, Some(RateLimit { interval: Duration::from_millis(100), burst: 5 }));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn tls_defaults_and_inline_pem() {
    let c = ok("tls_server_config:\n  cert: |\n    -----BEGIN CERTIFICATE-----\n    AA==\n    -----END CERTIFICATE-----\n  key: secret\n");
    let t = c.tls.unwrap();
    assert!(matches!(t.cert, Pem::Inline(ref s) if s.starts_with("-----BEGIN CERTIFICATE-----\n")));
    assert_eq!(t.key, Pem::Inline("secret".into()));
    assert_eq!(t.client_auth, ClientAuth::NoClientCert);
    assert_eq!((t.min_version, t.max_version), (TlsVersion::Tls12, TlsVersion::Tls13));
    assert!(t.prefer_server_cipher_suites && t.cipher_suites.is_empty() && t.curves.is_empty());
}

#[test]
fn client_auth_types() {
    let base = "tls_server_config:\n  cert_file: a\n  key_file: b\n";
    for (name, want) in [
        ("NoClientCert", ClientAuth::NoClientCert),
        ("RequestClientCert", ClientAuth::RequestClientCert),
        ("RequireAnyClientCert", ClientAuth::RequireAnyClientCert),
        ("RequireClientCert", ClientAuth::RequireAnyClientCert),
    ] {
        assert_eq!(ok(&format!("{base}  client_auth_type: {name}\n")).tls.unwrap().client_auth, want, "{name}");
    }
    let c = ok(&format!("{base}  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca\n"));
    assert_eq!(c.tls.unwrap().client_auth, ClientAuth::VerifyClientCertIfGiven);
}

#[test]
fn warnings_for_what_has_no_effect() {
    let c = ok("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]\n  curve_preferences: [CurveP521, CurveP256]\nhttp_server_config:\n  http2: true\n");
    let t = c.tls.as_ref().unwrap();
    assert_eq!(t.cipher_suites, ["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"]);
    assert_eq!(t.curves, [Curve::P256]);
    let w = c.warnings.join("\n");
    assert!(w.contains("ignoring TLS_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"), "{w}");
    assert!(w.contains("CurveP521") && w.contains("HTTP/1.1"), "{w}");
    assert!(c.warnings.iter().all(|l| !l.contains('\n')));
    let c = ok("tls_server_config:\n  min_version: TLS13\n");
    assert_eq!(c.tls, None);
    assert!(c.warnings[0].contains("plain HTTP"), "{:?}", c.warnings);
    // Only TLS 1.3 suites listed with TLS 1.3 only: nothing lost.
    let c = ok("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n  cipher_suites: [TLS_AES_256_GCM_SHA384]\n");
    assert!(c.tls.unwrap().cipher_suites.is_empty());
}

#[test]
fn errors_name_the_key_and_what_to_do() {
    let tls = "tls_server_config:\n  cert_file: a\n  key_file: b\n";
    let cases: Vec<(String, &str)> = vec![
        ("tls_server_confg:\n  cert_file: a\n".into(), "tls_server_confg"),
        (format!("{tls}  cert_fle: x\n"), "cert_fle"),
        ("basic_auth_users:\n  alice: hunter2\n".into(), "basic_auth_users.alice: not a bcrypt hash"),
        (
            "basic_auth_users:\n  alice: $2y$99$BZTEQcrhM4oPENsxuAi7Ne24gLl5R5KubxbZgbLRVBeej03unBsEi\n".into(),
            "basic_auth_users.alice",
        ),
        (
            format!("{tls}  min_version: TLS10\n"),
            "min_version TLS10: connmon's TLS library (rustls) implements only TLS 1.2 and 1.3; use TLS12 or TLS13",
        ),
        (format!("{tls}  max_version: TLS11\n"), "TLS11"),
        (format!("{tls}  min_version: TLS14\n"), "min_version \"TLS14\" is unknown"),
        (format!("{tls}  min_version: TLS13\n  max_version: TLS12\n"), "min_version is above max_version"),
        ("tls_server_config:\n  cert_file: a\n".into(), "needs both cert_file (or cert) and key_file"),
        (format!("{tls}  cert: inline\n"), "give cert_file or cert, not both"),
        (format!("{tls}  client_auth_type: Sometimes\n"), "client_auth_type \"Sometimes\" is unknown"),
        (format!("{tls}  client_ca_file: ca\n"), "client_ca_file is set but client_auth_type is NoClientCert"),
        (format!("{tls}  client_auth_type: RequireAndVerifyClientCert\n"), "set client_ca_file"),
        (
            format!(
                "{tls}  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca\n  client_allowed_sans: [x]\n"
            ),
            "client_allowed_sans needs",
        ),
        (
            format!("{tls}  client_auth_type: RequireAnyClientCert\n  client_allowed_sans: ['mailto:a@b']\n"),
            "not a DNS name or IP",
        ),
        (format!("{tls}  cipher_suites: [TLS_FAKE_SUITE]\n"), "unknown cipher suite \"TLS_FAKE_SUITE\""),
        (format!("{tls}  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n"), "none of the listed TLS 1.2 suites"),
        (format!("{tls}  curve_preferences: [CurveP521]\n"), "CurveP521 is not implemented"),
        (format!("{tls}  curve_preferences: [Curve25519]\n"), "unknown curve"),
        ("http_server_config:\n  headers:\n    Server: x\n".into(), "\"Server\" can not be configured"),
        ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n".into(), "use one of deny, sameorigin"),
        ("http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n".into(), "nosniff"),
        ("http_server_config:\n  http3: true\n".into(), "http3"),
        ("rate_limit:\n  interval: 1s\n".into(), "rate_limit.burst must be at least 1"),
        ("rate_limit:\n  interval: soon\n  burst: 1\n".into(), "rate_limit.interval \"soon\""),
        ("rate_limit:\n  burst: -1\n".into(), "burst"),
        ("tls_server_config: [a, b]\n".into(), "tls_server_config"),
        ("basic_auth_users:\n  alice: x\n  alice: y\n".into(), "alice"),
        ("tls_server_config:\n  cert_file: [unclosed\n".into(), "line"),
    ];
    for (text, want) in &cases {
        let e = err(text);
        assert!(e.contains(want), "{text:?}: want {want:?} in\n{e}");
    }
}

#[test]
fn rate_limit_zero_interval_is_off() {
    assert_eq!(ok("rate_limit:\n  interval: 0s\n  burst: 0\n").rate_limit, None);
    assert_eq!(
        ok("rate_limit:\n  interval: 1m30s\n  burst: 2\n").rate_limit.unwrap().interval,
        Duration::from_secs(90)
    );
}

#[test]
fn readme_example_parses() {
    let section = include_str!("../../../docs/tls.md");
    let start = section.find("```yaml\n").expect("yaml block") + "```yaml\n".len();
    let text = &section[start..start + section[start..].find("```").expect("end of block")];
    let c = ok(text);
    let t = c.tls.expect("TLS");
    assert_eq!(t.client_auth, ClientAuth::RequireAndVerifyClientCert);
    assert_eq!(c.users.len(), 1);
    assert_eq!(c.headers.len(), 3);
    assert!(c.rate_limit.is_some() && c.warnings.is_empty(), "{:?}", c.warnings);
}
