//! The web configuration file (`--web.config.file`): TLS, basic auth and extra response headers for
//! the agent's HTTP endpoints, in the YAML format of the Prometheus exporter-toolkit
//! (`docs/web-configuration.md` there), so one file serves node_exporter and connmon alike. This
//! module only parses and validates text (pure: it reads no file); `tls` loads the certificates
//! it names and serves. As in exporter-toolkit, unknown keys are errors, a file with neither TLS nor
//! users means plain HTTP, relative paths are relative to the file's directory, and only five
//! security headers may be set. Where rustls cannot do what Go's crypto/tls does (TLS 1.0/1.1, CBC
//! cipher suites, P-521), the file is rejected or the part is dropped with a warning, never
//! silently. Every error is one line naming the file, the key and what to do.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    str::FromStr as _,
    time::Duration,
};

use anyhow::anyhow;
use serde::Deserialize;

/// The file as written; every key optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    interval: Option<String>,
    burst: Option<u32>,
}

/// A validated web configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct WebConfig {
    /// `None`: plain HTTP.
    pub tls: Option<TlsSettings>,
    /// Extra response headers (name, value), set on every response.
    pub headers: Vec<(String, String)>,
    /// User name → bcrypt hash; empty means no authentication.
    pub users: BTreeMap<String, String>,
    pub rate_limit: Option<RateLimit>,
    /// Parts of the file that are accepted but have no effect here, one line each.
    pub warnings: Vec<String>,
}

/// PEM text: a file (made absolute against the config file's directory) or inline.
#[derive(Debug, Clone, PartialEq)]
pub enum Pem {
    File(PathBuf),
    Inline(String),
}

impl Pem {
    pub fn describe(&self, key: &str) -> String {
        match self {
            Pem::File(p) => format!("{key} {}", p.display()),
            Pem::Inline(_) => format!("inline {key}"),
        }
    }
}

/// Go's tls.ClientAuthType, by exporter-toolkit's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    /// Ask for a certificate, accept none and do not verify one.
    RequestClientCert,
    /// Require a certificate, do not verify it against the CA.
    RequireAnyClientCert,
    /// Verify a certificate if one is sent.
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "" | "NoClientCert" => Self::NoClientCert,
            "RequestClientCert" => Self::RequestClientCert,
            // "RequireClientCert" is exporter-toolkit's older spelling.
            "RequireAnyClientCert" | "RequireClientCert" => Self::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => Self::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => Self::RequireAndVerifyClientCert,
            _ => return None,
        })
    }

    /// Whether the client's certificate is checked against `client_ca`.
    pub fn verifies(self) -> bool {
        matches!(self, Self::VerifyClientCertIfGiven | Self::RequireAndVerifyClientCert)
    }

    pub fn requires(self) -> bool {
        matches!(self, Self::RequireAnyClientCert | Self::RequireAndVerifyClientCert)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// Key exchange groups rustls (ring) implements, by Go's curve names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    X25519,
    P256,
    P384,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub cert: Pem,
    pub key: Pem,
    pub client_ca: Option<Pem>,
    pub client_auth: ClientAuth,
    /// Client certificates must carry one of these SANs (DNS names or IP addresses).
    pub client_allowed_sans: Vec<String>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// TLS 1.2 suites by their Go (= IANA) names, in preference order; empty: rustls's defaults.
    /// TLS 1.3 suites are always on, as in Go.
    pub cipher_suites: Vec<&'static str>,
    /// The server's suite order wins (rustls `ignore_client_order`); exporter-toolkit's default.
    pub prefer_server_cipher_suites: bool,
    /// Key exchange groups in preference order; empty: rustls's defaults.
    pub curves: Vec<Curve>,
}

/// exporter-toolkit's token bucket: one request per `interval`, bursts of `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub interval: Duration,
    pub burst: u32,
}

/// The headers exporter-toolkit lets a file set, with the values it accepts (empty: any).
const HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// TLS 1.2 suites rustls implements (with ring), by their Go names.
const RUSTLS_TLS12_SUITES: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// Go's TLS 1.3 suite names: accepted by Go, but its config cannot turn them off.
const TLS13_SUITES: &[&str] = &["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"];

/// Other suites Go knows (CBC, RSA key exchange, 3DES, RC4): valid in the file, not in rustls.
const GO_ONLY_SUITES: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
];

/// Parses and validates the text of a web config file. `name` is the file as the user gave it (for
/// messages); `dir` is its directory, which relative certificate paths are joined to. Errors are
/// one line: `invalid web config NAME: …`.
pub fn parse(text: &str, name: &str, dir: &Path) -> anyhow::Result<WebConfig> {
    let fail = |msg: String| anyhow!("invalid web config {name}: {msg}");
    // An empty file (or one holding only comments) is a valid, empty configuration.
    let raw: RawConfig = if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
        RawConfig::default()
    } else {
        serde_saphyr::from_str(text).map_err(|e| fail(yaml_error(&e, text)))?
    };
    let mut warnings = Vec::new();
    let tls = match raw.tls_server_config {
        Some(t) => tls_settings(t, dir, &mut warnings).map_err(fail)?,
        None => None,
    };
    let http = raw.http_server_config.unwrap_or_default();
    if http.http2 == Some(true) {
        warnings.push("http_server_config.http2: connmon serves HTTP/1.1 only (HTTP/2 is not offered)".into());
    }
    let headers = headers(http.headers.unwrap_or_default()).map_err(fail)?;
    let users = raw.basic_auth_users.unwrap_or_default();
    for (user, hash) in &users {
        let problem = match bcrypt::HashParts::from_str(hash) {
            Err(e) => Some(e.to_string()),
            Ok(p) if !(4..=31).contains(&p.get_cost()) => Some(format!("cost {} is outside 4..31", p.get_cost())),
            Ok(_) => None,
        };
        if let Some(problem) = problem {
            return Err(fail(format!(
                "basic_auth_users.{user}: not a bcrypt hash ({problem}); make one with `htpasswd -nbBC 10 \"\" PASSWORD | tr -d ':\\n'`"
            )));
        }
    }
    let rate_limit = match raw.rate_limit {
        Some(r) => rate_limit(r).map_err(fail)?,
        None => None,
    };
    Ok(WebConfig { tls, headers, users, rate_limit, warnings })
}

/// One line from a YAML error: where (line and its text, as `config` does for TOML) and what.
fn yaml_error(e: &serde_saphyr::Error, text: &str) -> String {
    let msg = e.without_snippet().to_string();
    let mut msg = msg
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace(", set DuplicateKeyPolicy in Options if acceptable", "");
    let Some(loc) = e.location().filter(|l| l.line() > 0) else { return msg };
    if let Some(i) = msg.rfind(" at line ") {
        msg.truncate(i);
    }
    let snippet = text.lines().nth(loc.line() as usize - 1).unwrap_or("").trim();
    format!("line {} (`{snippet}`): {msg}", loc.line())
}

fn tls_settings(t: RawTls, dir: &Path, warnings: &mut Vec<String>) -> Result<Option<TlsSettings>, String> {
    let pem =
        |file: &Option<String>, inline: &Option<String>, file_key: &str, key: &str| -> Result<Option<Pem>, String> {
            match (non_empty(file), non_empty(inline)) {
                (Some(_), Some(_)) => Err(format!("tls_server_config: give {file_key} or {key}, not both")),
                (Some(f), None) => Ok(Some(Pem::File(dir.join(f)))),
                (None, Some(text)) => Ok(Some(Pem::Inline(text.to_string()))),
                (None, None) => Ok(None),
            }
        };
    let cert = pem(&t.cert_file, &t.cert, "cert_file", "cert")?;
    let key = pem(&t.key_file, &t.key, "key_file", "key")?;
    let client_ca = pem(&t.client_ca_file, &t.client_ca, "client_ca_file", "client_ca")?;
    let auth_name = t.client_auth_type.clone().unwrap_or_default();
    let enabled = cert.is_some() || key.is_some() || client_ca.is_some() || !auth_name.is_empty();
    if !enabled {
        if t.min_version.is_some()
            || t.max_version.is_some()
            || t.cipher_suites.is_some()
            || t.curve_preferences.is_some()
            || t.client_allowed_sans.is_some()
        {
            warnings.push(
                "tls_server_config has no cert_file/key_file: serving plain HTTP, its other settings have no effect"
                    .into(),
            );
        }
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (cert, key) else {
        return Err("tls_server_config: TLS needs both cert_file (or cert) and key_file (or key)".into());
    };
    let client_auth = ClientAuth::parse(&auth_name).ok_or_else(|| {
        format!("tls_server_config.client_auth_type {auth_name:?} is unknown; use NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert")
    })?;
    if client_ca.is_some() && client_auth == ClientAuth::NoClientCert {
        return Err("tls_server_config: client_ca_file is set but client_auth_type is NoClientCert; set client_auth_type (e.g. RequireAndVerifyClientCert) or remove client_ca_file".into());
    }
    if client_auth.verifies() && client_ca.is_none() {
        return Err(format!("tls_server_config.client_auth_type {auth_name} verifies client certificates: set client_ca_file to the CA that signs them"));
    }
    let client_allowed_sans = t.client_allowed_sans.unwrap_or_default();
    if !client_allowed_sans.is_empty() && !client_auth.requires() {
        return Err("tls_server_config.client_allowed_sans needs client_auth_type RequireAnyClientCert or RequireAndVerifyClientCert".into());
    }
    for san in &client_allowed_sans {
        if rustls::pki_types::ServerName::try_from(san.as_str()).is_err() {
            return Err(format!("tls_server_config.client_allowed_sans: {san:?} is not a DNS name or IP address (e-mail and URI SANs are not supported)"));
        }
    }
    let min_version = version(t.min_version.as_deref(), "min_version", TlsVersion::Tls12)?;
    let max_version = version(t.max_version.as_deref(), "max_version", TlsVersion::Tls13)?;
    if min_version > max_version {
        return Err("tls_server_config: min_version is above max_version".into());
    }
    let mut cipher_suites = Vec::new();
    let mut dropped = Vec::new();
    for s in t.cipher_suites.unwrap_or_default() {
        if let Some(known) = RUSTLS_TLS12_SUITES.iter().find(|k| **k == s) {
            cipher_suites.push(*known);
        } else if TLS13_SUITES.contains(&s.as_str()) || GO_ONLY_SUITES.contains(&s.as_str()) {
            dropped.push(s);
        } else {
            return Err(format!(
                "tls_server_config.cipher_suites: unknown cipher suite {s:?}; rustls implements {}",
                RUSTLS_TLS12_SUITES.join(", ")
            ));
        }
    }
    if !dropped.is_empty() {
        warnings.push(format!(
            "tls_server_config.cipher_suites: ignoring {} (TLS 1.3 suites are always on; the others are not implemented by rustls)",
            dropped.join(", ")
        ));
        if cipher_suites.is_empty() && min_version == TlsVersion::Tls12 {
            return Err("tls_server_config.cipher_suites: none of the listed TLS 1.2 suites is implemented by rustls; list some of ".to_string()
                + &RUSTLS_TLS12_SUITES.join(", ")
                + ", remove cipher_suites, or set min_version: TLS13");
        }
    }
    let mut curves = Vec::new();
    let mut p521 = false;
    for c in t.curve_preferences.unwrap_or_default() {
        match c.as_str() {
            "X25519" => curves.push(Curve::X25519),
            "CurveP256" => curves.push(Curve::P256),
            "CurveP384" => curves.push(Curve::P384),
            "CurveP521" => p521 = true,
            other => {
                return Err(format!(
                    "tls_server_config.curve_preferences: unknown curve {other:?}; use X25519, CurveP256, CurveP384"
                ))
            }
        }
    }
    if p521 {
        if curves.is_empty() {
            return Err("tls_server_config.curve_preferences: CurveP521 is not implemented by rustls (ring); add X25519, CurveP256 or CurveP384".into());
        }
        warnings.push(
            "tls_server_config.curve_preferences: ignoring CurveP521 (not implemented by rustls with ring)".into(),
        );
    }
    Ok(Some(TlsSettings {
        cert,
        key,
        client_ca,
        client_auth,
        client_allowed_sans,
        min_version,
        max_version,
        cipher_suites,
        prefer_server_cipher_suites: t.prefer_server_cipher_suites.unwrap_or(true),
        curves,
    }))
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

fn version(name: Option<&str>, key: &str, default: TlsVersion) -> Result<TlsVersion, String> {
    match name.unwrap_or("") {
        "" => Ok(default),
        "TLS12" => Ok(TlsVersion::Tls12),
        "TLS13" => Ok(TlsVersion::Tls13),
        old @ ("TLS10" | "TLS11") => Err(format!(
            "tls_server_config.{key} {old}: connmon's TLS library (rustls) implements only TLS 1.2 and 1.3; use TLS12 or TLS13"
        )),
        other => Err(format!("tls_server_config.{key} {other:?} is unknown; use TLS12 or TLS13")),
    }
}

fn headers(given: BTreeMap<String, String>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (name, value) in given {
        let Some((_, allowed)) = HEADERS.iter().find(|(h, _)| *h == name) else {
            let names: Vec<&str> = HEADERS.iter().map(|(h, _)| *h).collect();
            return Err(format!(
                "http_server_config.headers: {name:?} can not be configured; allowed: {}",
                names.join(", ")
            ));
        };
        if value.is_empty() {
            continue; // "Unset if blank."
        }
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            return Err(format!(
                "http_server_config.headers.{name}: {value:?} is not allowed; use one of {}",
                allowed.join(", ")
            ));
        }
        if axum::http::HeaderValue::from_str(&value).is_err() {
            return Err(format!("http_server_config.headers.{name}: {value:?} is not a valid header value"));
        }
        out.push((name, value));
    }
    Ok(out)
}

fn rate_limit(r: RawRateLimit) -> Result<Option<RateLimit>, String> {
    let interval = match r.interval.as_deref().map(str::trim) {
        None | Some("") | Some("0") => Duration::ZERO,
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| format!("rate_limit.interval {text:?}: {e}; write e.g. 100ms or 1s"))?,
    };
    if interval.is_zero() {
        return Ok(None);
    }
    match r.burst.unwrap_or(0) {
        0 => {
            Err("rate_limit.burst must be at least 1 when rate_limit.interval is set (0 would refuse every request)"
                .into())
        }
        burst => Ok(Some(RateLimit { interval, burst })),
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
