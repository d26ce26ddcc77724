//! The request side of `--web.config.file`, as exporter-toolkit does it for every path: the rate
//! limit (429), then HTTP basic auth against the file's bcrypt hashes (401 with
//! `WWW-Authenticate: Basic`), and the configured security headers on every response, 401s
//! included. bcrypt is slow on purpose (tens of milliseconds at cost 10), so each outcome is cached by
//! SHA-256 of (user, hash, password): a scraper pays once, and no password is kept in memory. An
//! unknown user is checked against a fixed hash so that timing does not tell which users exist;
//! bcrypt runs on the blocking pool, one at a time, and compares in constant time.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine as _;

use crate::{web::config::RateLimit, web::tls::WebConfigSource};

/// bcrypt (cost 10) of a password no user has: what an unknown user name is checked against.
#[cfg(not(fuzzing))]
const DECOY_HASH: &str = "$2y$10$BZTEQcrhM4oPENsxuAi7Ne24gLl5R5KubxbZgbLRVBeej03unBsEi";
/// The fuzz build (cargo-fuzz sets `--cfg fuzzing`) checks unknown users at cost 4: at cost 10
/// every request naming a new user costs ~100 ms, and the fuzzer would spend its time in bcrypt.
#[cfg(fuzzing)]
const DECOY_HASH: &str = "$2y$04$bNIv6cAUQ.773Vz6xhZMtOhE6//bGaFBaUP/caDRaPa.PdvybWgli";

/// Cached outcomes kept at most; the cache is emptied when full (scrapers re-verify once).
const CACHE_MAX: usize = 100;

type Digest = [u8; 32];

pub struct Guard {
    source: Arc<WebConfigSource>,
    /// Shared with the blocking task, which stores its outcome even if the client has gone.
    cache: Arc<Mutex<HashMap<Digest, bool>>>,
    /// One bcrypt at a time: it is CPU-bound and the machine's cores belong to the workloads.
    bcrypt: Arc<Mutex<()>>,
    bucket: Mutex<Bucket>,
}

impl Guard {
    pub fn new(source: Arc<WebConfigSource>) -> Arc<Self> {
        Arc::new(Self { source, cache: Arc::default(), bcrypt: Arc::default(), bucket: Mutex::new(Bucket::default()) })
    }

    /// Whether `headers` carry the credentials of one of `users`.
    async fn authorized(&self, users: &std::collections::BTreeMap<String, String>, headers: &HeaderMap) -> bool {
        let Some((user, pass)) = credentials(headers) else { return false };
        let (hash, known) = match users.get(&user) {
            Some(h) => (h.clone(), true),
            None => (DECOY_HASH.to_string(), false),
        };
        let key = digest(&user, &hash, &pass);
        let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key).copied();
        let ok = match cached {
            Some(ok) => ok,
            None => {
                // The outcome is cached by the blocking task itself: a scraper that timed out
                // while bcrypt ran (slow machine, short scrape_timeout) finds it next time.
                let (lock, cache) = (Arc::clone(&self.bcrypt), Arc::clone(&self.cache));
                tokio::task::spawn_blocking(move || {
                    let _one = lock.lock().unwrap_or_else(|p| p.into_inner());
                    let ok = bcrypt::verify(pass.as_bytes(), &hash).unwrap_or(false);
                    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
                    if cache.len() >= CACHE_MAX {
                        cache.clear();
                    }
                    cache.insert(key, ok);
                    ok
                })
                .await
                .unwrap_or(false)
            }
        };
        ok && known
    }

    fn allow(&self, limit: Option<RateLimit>) -> bool {
        self.bucket.lock().unwrap_or_else(|p| p.into_inner()).take(limit, Instant::now())
    }
}

/// The middleware: `axum::middleware::from_fn_with_state(guard, auth::guard)`.
pub async fn guard(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let active = g.source.current();
    let config = &active.config;
    let mut resp = if !g.allow(config.rate_limit) {
        (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n").into_response()
    } else if config.users.is_empty() || g.authorized(&config.users, req.headers()).await {
        next.run(req).await
    } else {
        let mut r = (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
        r
    };
    for (name, value) in &config.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            resp.headers_mut().insert(n, v);
        }
    }
    resp
}

/// User and password of an `Authorization: Basic …` header.
fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let (user, pass) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

fn digest(user: &str, hash: &str, pass: &str) -> Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [user, hash, pass] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// A token bucket like Go's rate.Limiter: `burst` tokens, one more every `interval`.
#[derive(Debug, Default)]
struct Bucket {
    limit: Option<RateLimit>,
    tokens: f64,
    last: Option<Instant>,
}

impl Bucket {
    fn take(&mut self, limit: Option<RateLimit>, now: Instant) -> bool {
        let Some(l) = limit else { return true };
        if self.limit != limit {
            // New or changed limit: start full.
            *self = Bucket { limit, tokens: f64::from(l.burst), last: Some(now) };
        }
        let elapsed = self.last.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.tokens = (self.tokens + elapsed / l.interval.as_secs_f64()).min(f64::from(l.burst));
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn basic(user_pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass));
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&v).unwrap());
        h
    }

    #[test]
    fn credentials_from_header() {
        assert_eq!(credentials(&basic("alice:s3:cret")), Some(("alice".into(), "s3:cret".into())));
        assert_eq!(credentials(&basic("nocolon")), None);
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(credentials(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("basic !!!"));
        assert_eq!(credentials(&h), None);
        assert_eq!(credentials(&HeaderMap::new()), None);
    }

    #[test]
    fn digest_separates_fields() {
        assert_ne!(digest("ab", "h", "c"), digest("a", "h", "bc"));
        assert_eq!(digest("a", "h", "b"), digest("a", "h", "b"));
    }

    #[test]
    fn decoy_hash_is_valid_bcrypt() {
        assert!(!bcrypt::verify("anything", DECOY_HASH).unwrap());
    }

    #[test]
    fn bucket_allows_burst_then_one_per_interval() {
        let limit = Some(RateLimit { interval: Duration::from_secs(1), burst: 2 });
        let mut b = Bucket::default();
        let t0 = Instant::now();
        assert!(b.take(limit, t0));
        assert!(b.take(limit, t0));
        assert!(!b.take(limit, t0));
        assert!(!b.take(limit, t0 + Duration::from_millis(500)));
        assert!(b.take(limit, t0 + Duration::from_millis(1000)));
        assert!(!b.take(limit, t0 + Duration::from_millis(1100)));
        assert!(b.take(None, t0), "no limit allows everything");
    }
}
