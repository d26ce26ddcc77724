//! HTTP requests to the agent: raw bytes from a client, served in-process by hyper's HTTP/1 server
//! (as axum::serve does) through the agent's router behind a web config with basic auth and
//! security headers. Asserts: every response is a well-formed HTTP/1.1 response; no 5xx (the
//! endpoints here always succeed); a 2xx only for a request carrying the configured credentials;
//! and every response the router answers (200, 401, 404, 405) carries the configured header.
#![no_main]

use std::os::fd::AsRawFd as _;
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use connmon::alerts::AlertView;
use connmon::web::{auth::Guard, limits::Limits, router, tls::WebConfigSource, Endpoints, Web};
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const USER: &str = "prometheus";
const PASSWORD: &str = "s3cret";
/// bcrypt cost 4 of PASSWORD (`htpasswd -nbBC 4 "" s3cret`): cheap enough to verify per input.
const HASH: &str = "$2y$04$SGt2FqeTPpCKSc.B7nTVjuvoZThwYSztTB/aL4xDG8dlEhx.jtJb.";

/// The endpoints with fixed answers: what is fuzzed is the HTTP layer in front of them.
struct Agent;

impl Endpoints for Agent {
    fn collect(&self) -> String {
        "# TYPE connmon_up gauge\nconnmon_up 1\n# EOF\n".to_string()
    }
    fn alerts(&self) -> Vec<AlertView> {
        Vec::new()
    }
    fn is_ready(&self) -> bool {
        true
    }
}

struct World {
    runtime: tokio::runtime::Runtime,
    source: Arc<WebConfigSource>,
    credentials: String,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let yaml = format!(
            "basic_auth_users:\n  {USER}: {HASH}\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n"
        );
        // The agent reads its web config from a path (and re-reads it when it changes). The file
        // is unlinked at once and read through /proc/self/fd, so nothing is left behind however
        // the fuzzer ends (a crash or a libFuzzer timeout runs no cleanup).
        let path = std::env::temp_dir().join(format!("connmon-fuzz-web-{}.yml", std::process::id()));
        std::fs::write(&path, yaml).expect("write the web config");
        let file = std::fs::File::open(&path).expect("open the web config");
        std::fs::remove_file(&path).expect("unlink the web config");
        let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let source = Arc::new(WebConfigSource::open(&path).expect("the web config loads"));
        // The descriptor must outlive the source, which lives as long as the process.
        std::mem::forget(file);
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
        World { runtime, source, credentials }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let out = w.runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        // The agent's default caps are far above one connection's requests: no 503 is expected.
        let web = Web::new(Arc::new(Agent), Limits::new(64, 64), 2);
        let app = router(web, Some(Guard::new(Arc::clone(&w.source))));
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server), TowerToHyperService::new(app));
        let talk = async {
            // The server may close early (a 400): what it wrote is still read below.
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut out = Vec::new();
            let _ = client.read_to_end(&mut out).await;
            out
        };
        let (_, out) = tokio::join!(conn, talk);
        out
    });
    check(data, &out, &w.credentials);
});

fn check(input: &[u8], mut out: &[u8], credentials: &str) {
    let authorized = contains(input, credentials.as_bytes());
    while !out.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("malformed response ({other:?}): {:?}", String::from_utf8_lossy(out)),
        };
        let code = resp.code.expect("status code");
        assert!(code < 500, "status {code} for {:?}", String::from_utf8_lossy(input));
        if (200..300).contains(&code) {
            assert!(authorized, "status {code} without the credentials: {:?}", String::from_utf8_lossy(input));
        }
        let header = |name: &str| resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
        if [200, 401, 404, 405].contains(&code) {
            assert_eq!(header("x-frame-options"), Some(&b"deny"[..]), "status {code} lacks the configured header");
        }
        if code == 401 {
            assert_eq!(header("www-authenticate"), Some(&b"Basic"[..]));
        }
        let Some(len) = header("content-length").and_then(|v| std::str::from_utf8(v).ok()?.parse::<usize>().ok())
        else {
            return; // chunked or close-delimited: the rest is this response's body
        };
        let rest = out.get(head_len..).unwrap_or_default();
        // A HEAD response has a length but no body; no body here starts like a status line.
        out = if rest.starts_with(b"HTTP/1.") { rest } else { rest.get(len..).unwrap_or_default() };
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
