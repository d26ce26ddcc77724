//! `--web.config.file` end to end: a real agent serving HTTPS with the exporter-toolkit file
//! format, checked with real TLS clients (curl, `openssl s_client`) and a real Prometheus. The
//! certificates come from the openssl CLI and the bcrypt hashes from htpasswd, so nothing here
//! checks connmon against code connmon's authors wrote.
//!
//! The kernel probes are switched off (the subject is the HTTP side, and loading them would only
//! load the shared machine). Needs root like every agent test, plus openssl, apache2-utils, curl
//! and prometheus (all installed by `cargo xtask setup`).

use connmon::export::{BUILD_INFO, PROBE_UP};
use connmon_test_support as common;

use std::net::SocketAddr;
use std::path::Path;

use common::tls::{bcrypt_hash, curl, https, served_certificate, Curl, Pki};
use common::*;

const PROBES_OFF: [&str; 14] = [
    "--probes.disable",
    "listen_peak",
    "--probes.disable",
    "synack_retransmit",
    "--probes.disable",
    "pools",
    "--probes.disable",
    "connect_retransmit",
    "--probes.disable",
    "resets_received",
    "--probes.disable",
    "resets_sent",
    "--probes.disable",
    "protocol",
];

/// Starts the agent with `--web.config.file web_config` (plus `extra` flags); ready once
/// `curl <client args> https://…/readyz` answers 200.
fn start_tls_agent(web_config: &Path, client: &[&str], extra: &[&str]) -> Agent {
    let mut args: Vec<&str> = PROBES_OFF.to_vec();
    let path = web_config.display().to_string();
    args.extend(["--web.config.file", &path]);
    args.extend_from_slice(extra);
    Agent::start_with_ready(&args, |addr| {
        let r = curl(client, &https(addr, "/readyz"));
        if r.exit == 0 && r.status == 200 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    })
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn assert_401(r: &Curl, what: &str) {
    r.expect_status(401, what);
    assert!(r.headers.contains("www-authenticate: basic"), "{what}: no WWW-Authenticate: Basic in {r:#?}");
}

#[test]
fn https_with_basic_auth_protects_every_endpoint() {
    let pki = Pki::new();
    let hash = bcrypt_hash("s3cret");
    let web = pki.dir().join("web.yml");
    // Relative paths: relative to the web config's directory, as in exporter-toolkit.
    write(&web, &format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
         http_server_config:\n  headers:\n    Strict-Transport-Security: max-age=31536000\n    X-Content-Type-Options: nosniff\n\
         basic_auth_users:\n  alice: {hash}\n"
    ));
    let ca = pki.path("ca.crt");
    let good = ["--cacert", ca.as_str(), "-u", "alice:s3cret"];
    let agent = start_tls_agent(&web, &good, &[]);
    let addr = agent.addr();

    let r = curl(&good, &https(addr, "/metrics"));
    r.expect_status(200, "right password");
    assert!(r.body.contains(BUILD_INFO), "no metric text: {}", &r.body[..r.body.len().min(500)]);
    assert!(r.headers.contains("strict-transport-security: max-age=31536000"), "{}", r.headers);
    assert!(r.headers.contains("x-content-type-options: nosniff"), "{}", r.headers);

    for (what, creds) in
        [("wrong password", Some("alice:wrong")), ("unknown user", Some("mallory:s3cret")), ("no password", None)]
    {
        let mut args = vec!["--cacert", ca.as_str()];
        if let Some(c) = creds {
            args.extend(["-u", c]);
        }
        // exporter-toolkit protects every path; so does connmon.
        for path in ["/metrics", "/healthz", "/readyz", "/api/v1/alerts", "/"] {
            let r = curl(&args, &https(addr, path));
            assert_401(&r, &format!("{what} on {path}"));
            assert!(r.headers.contains("strict-transport-security"), "headers on the 401 too: {}", r.headers);
        }
    }
    // The same wrong password again: answered from the cache, still 401.
    assert_401(&curl(&["--cacert", &ca, "-u", "alice:wrong"], &https(addr, "/metrics")), "cached wrong password");

    curl(&[&good[..], &["--tlsv1.2", "--tls-max", "1.2"]].concat(), &https(addr, "/metrics"))
        .expect_status(200, "TLS 1.2 (the default min_version)");
    curl(&[&good[..], &["--tlsv1.3"]].concat(), &https(addr, "/metrics")).expect_status(200, "TLS 1.3");
    curl(&[&good[..], &["--http2"]].concat(), &https(addr, "/metrics"))
        .expect_status(200, "a client offering h2 gets HTTP/1.1");

    let r = curl(&["-u", "alice:s3cret"], &https(addr, "/metrics"));
    r.expect_refused("a client that does not trust the test CA");
    assert_eq!(r.exit, 60, "curl's certificate verification error: {r:#?}");

    curl(&["-u", "alice:s3cret"], &format!("http://{addr}/metrics")).expect_refused("plain HTTP to the TLS port");
    assert!(http_get(addr, "/healthz", &[]).is_err(), "plain HTTP to the TLS port must not get an HTTP answer");
}

#[test]
fn client_certificates_and_tls13_only() {
    let pki = Pki::new();
    pki.issue("other-client", "ca", "grafana", 2002, "client");
    let web = pki.dir().join("web-mtls.yml");
    write(&web, &format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n  \
         client_allowed_sans: [prometheus]\n  min_version: TLS13\n",
        pki.path("server.crt"), pki.path("server.key"), pki.path("ca.crt")
    ));
    let (ca, crt, key) = (pki.path("ca.crt"), pki.path("client.crt"), pki.path("client.key"));
    let with_cert = ["--cacert", ca.as_str(), "--cert", crt.as_str(), "--key", key.as_str()];
    let agent = start_tls_agent(&web, &with_cert, &[]);
    let addr = agent.addr();

    let r = curl(&with_cert, &https(addr, "/metrics"));
    r.expect_status(200, "client certificate from the CA, SAN in client_allowed_sans");
    assert!(r.body.contains(PROBE_UP), "no metric text");

    curl(&["--cacert", &ca], &https(addr, "/metrics")).expect_refused("no client certificate");
    let (rc, rk) = (pki.path("rogue-client.crt"), pki.path("rogue-client.key"));
    curl(&["--cacert", &ca, "--cert", &rc, "--key", &rk], &https(addr, "/metrics"))
        .expect_refused("client certificate from another CA");
    let (oc, ok) = (pki.path("other-client.crt"), pki.path("other-client.key"));
    curl(&["--cacert", &ca, "--cert", &oc, "--key", &ok], &https(addr, "/metrics"))
        .expect_refused("client certificate whose SAN is not in client_allowed_sans");

    let r = curl(&[&with_cert[..], &["--tlsv1.2", "--tls-max", "1.2"]].concat(), &https(addr, "/metrics"));
    r.expect_refused("TLS 1.2 when min_version is TLS13");
    assert_eq!(r.exit, 35, "curl's handshake error: {r:#?}");
}

#[test]
fn certificate_rotation_and_reloads() {
    let pki = Pki::new();
    pki.issue("server2", "ca", "connmon-server-2", 1002, "server-rsa");
    let (live_crt, live_key) = (pki.dir().join("live.crt"), pki.dir().join("live.key"));
    let copy = |from: &str, to: &Path| {
        std::fs::copy(pki.dir().join(from), to).unwrap_or_else(|e| panic!("copy {from}: {e}"));
    };
    copy("server.crt", &live_crt);
    copy("server.key", &live_key);
    let web = pki.dir().join("web.yml");
    let config = |users: &str| {
        format!("tls_server_config:\n  cert_file: live.crt\n  key_file: live.key\nbasic_auth_users:\n{users}")
    };
    write(&web, &config(&format!("  alice: {}\n", bcrypt_hash("one"))));
    let ca = pki.path("ca.crt");
    let one = ["--cacert", ca.as_str(), "-u", "alice:one"];
    let mut agent = start_tls_agent(&web, &one, &[]);
    let addr = agent.addr();
    let first = served_certificate(addr).expect("certificate served");
    assert!(first.contains("serial=03E9") && first.contains("connmon-server-1"), "{first}");

    // Rotation, written in place the way an operator's `cp` would: key first, then certificate.
    copy("server2.key", &live_key);
    copy("server2.crt", &live_crt);
    let rotated = poll_until(deadline(15), "the next connection to get the new certificate", || {
        served_certificate(addr).and_then(|s| if s.contains("serial=03EA") { Ok(s) } else { Err(s) })
    });
    assert!(rotated.contains("connmon-server-2"), "{rotated}");
    curl(&one, &https(addr, "/metrics")).expect_status(200, "the rotated certificate verifies");

    // A key that does not belong to the certificate: the reload fails, the last good pair stays.
    // (The rotation above may have warned once already, between its two writes.)
    let mismatch = "does not belong to the certificate";
    let warned_before = agent.stderr().matches(mismatch).count();
    copy("server.key", &live_key);
    poll_until(deadline(15), "a warning about the mismatched key", || {
        curl(&one, &https(addr, "/metrics")).expect_status(200, "still serving during a bad rotation");
        let log = agent.stderr();
        let warned = log
            .lines()
            .filter(|l| l.contains(mismatch) && l.contains("keeping the previous web configuration"))
            .count();
        if warned > warned_before {
            Ok(())
        } else {
            Err(format!("{warned} warnings"))
        }
    });
    assert!(served_certificate(addr).unwrap().contains("serial=03EA"), "the last good certificate is still served");
    copy("server2.key", &live_key);

    // A broken file: warned about, the last good configuration serves on.
    write(&web, "tls_server_config:\n  cert_file: live.crt\n  key_file: live.key\n  bogus_key: 1\n");
    poll_until(deadline(15), "a warning naming the bad key", || {
        curl(&one, &https(addr, "/metrics")).expect_status(200, "old config while the file is broken");
        let log = agent.stderr();
        if log.contains(&format!("invalid web config {}", web.display())) && log.contains("bogus_key") {
            Ok(())
        } else {
            Err("no warning yet".to_string())
        }
    });

    // Fixed with a new password: the users change without a restart.
    write(&web, &config(&format!("  alice: {}\n", bcrypt_hash("two"))));
    poll_until(deadline(15), "the new password to work", || {
        let r = curl(&["--cacert", &ca, "-u", "alice:two"], &https(addr, "/metrics"));
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    assert_401(&curl(&one, &https(addr, "/metrics")), "the old password after the reload");
    assert!(agent.exited().is_none(), "the agent survived every reload");
}

#[test]
fn basic_auth_over_plain_http_from_the_toml_config() {
    let pki = Pki::new();
    let web = pki.dir().join("users-only.yml");
    write(&web, &format!("basic_auth_users:\n  bob: {}\n", bcrypt_hash("pw")));
    let toml = pki.dir().join("connmon.toml");
    write(&toml, "[web]\nconfig_file = \"users-only.yml\"\n");
    let toml_path = toml.display().to_string();
    let mut args: Vec<&str> = PROBES_OFF.to_vec();
    args.extend(["--config.file", &toml_path]);
    let agent = Agent::start_with_ready(&args, |addr: SocketAddr| {
        let r = curl(&["-u", "bob:pw"], &format!("http://{addr}/readyz"));
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    let url = format!("http://{}/metrics", agent.addr());
    let r = curl(&["-u", "bob:pw"], &url);
    r.expect_status(200, "right password over plain HTTP");
    assert!(r.body.contains(BUILD_INFO));
    assert_401(&curl(&[], &url), "no password over plain HTTP");
    assert_401(&curl(&["-u", "bob:nope"], &url), "wrong password over plain HTTP");
}

#[test]
fn bad_web_config_fails_at_start_in_one_line() {
    let pki = Pki::new();
    let hash = bcrypt_hash("pw");
    let tls = |extra: &str| format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{extra}");
    let cases = [
        ("unknown-key.yml", tls("  cert_fle: x\n"), "unknown field `cert_fle`"),
        (
            "missing-cert.yml",
            "tls_server_config:\n  cert_file: nowhere.crt\n  key_file: server.key\n".to_string(),
            "cannot read tls_server_config.cert_file",
        ),
        (
            "wrong-key.yml",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n".to_string(),
            "does not belong to the certificate",
        ),
        (
            "bad-hash.yml",
            format!("basic_auth_users:\n  alice: {}\n", &hash[..40]),
            "basic_auth_users.alice: not a bcrypt hash",
        ),
        ("tls10.yml", tls("  min_version: TLS10\n"), "implements only TLS 1.2 and 1.3"),
    ];
    for (name, text, want) in &cases {
        let path = pki.dir().join(name);
        write(&path, text);
        let out =
            connmon(&["run", "--web.listen-address", "127.0.0.1:0", "--web.config.file", &path.display().to_string()]);
        check_one_line(&out, name, &path.display().to_string(), want);
    }
    // The environment variable, and a file that is not there.
    let missing = pki.dir().join("absent.yml").display().to_string();
    let mut cmd = std::process::Command::new(connmon_bin());
    cmd.args(["run", "--web.listen-address", "127.0.0.1:0"])
        .env("CONNMON_WEB_CONFIG_FILE", &missing)
        .env("RUST_LOG", "warn");
    let out = run_with_timeout(&mut cmd, std::time::Duration::from_secs(60));
    check_one_line(&out, "CONNMON_WEB_CONFIG_FILE", &missing, "cannot read web config");
}

fn check_one_line(out: &std::process::Output, case: &str, path: &str, want: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{case}: connmon run exited 0; stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{case}: want one line on stderr, got:\n{stderr}");
    assert!(lines[0].contains(path) && lines[0].contains(want), "{case}: want {path:?} and {want:?} in {:?}", lines[0]);
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{case}: {stderr}");
}

#[test]
fn prometheus_scrapes_over_https_with_basic_auth_and_a_client_certificate() {
    let pki = Pki::new();
    let web = pki.dir().join("web.yml");
    write(&web, &format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n\
         basic_auth_users:\n  prometheus: {}\n",
        bcrypt_hash("scrape-pw")
    ));
    let (ca, crt, key) = (pki.path("ca.crt"), pki.path("client.crt"), pki.path("client.key"));
    let client = ["--cacert", ca.as_str(), "--cert", crt.as_str(), "--key", key.as_str(), "-u", "prometheus:scrape-pw"];
    let agent = start_tls_agent(&web, &client, &[]);
    let job = "connmon-tls";
    let tls_job = format!(
        "    scheme: https\n    tls_config:\n      ca_file: {ca}\n      cert_file: {crt}\n      key_file: {key}\n    \
         basic_auth:\n      username: prometheus\n      password: scrape-pw\n"
    );
    let prom = Prometheus::start(&scrape_config_with(job, "1s", &[agent.addr()], &tls_job));
    let up = poll_until(deadline(30), "Prometheus to scrape the agent over HTTPS", || {
        let target = prom.active_targets()?.into_iter().find(|t| t["labels"]["job"] == job).ok_or("no target")?;
        match prom.query_one(&format!("up{{job=\"{job}\"}}")) {
            Ok(s) if s.value == 1.0 => Ok(target),
            other => Err(format!("up: {other:?}; target: {target}")),
        }
    });
    assert!(up["scrapeUrl"].as_str().is_some_and(|u| u.starts_with("https://")), "{up}");
    let info = poll_until(deadline(30), "a connmon metric in Prometheus", || {
        prom.query_one(&format!("connmon_build_info{{job=\"{job}\"}}"))
    });
    assert_eq!(info.value, 1.0, "{info}");
}
