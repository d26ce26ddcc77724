//! The HTTP side of the agent: `/metrics` with content negotiation, `/healthz` (shallow: the
//! process serves), `/readyz` (probes attached and first scan done), and a landing page. With
//! `--web.config.file`, every path goes through `auth::guard` and, with TLS, `tls` serves. Scrapes
//! share collections (`flight`), and connections and requests are capped (`limits`).
pub mod auth;
pub mod config;
pub mod flight;
pub mod limits;
pub mod serve;
pub mod stats;
pub mod tls;

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use anyhow::{anyhow, Context as _};
use axum::{
    body::Bytes,
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::get,
    Router,
};

use self::flight::SingleFlight;
use crate::{alerts::AlertView, export};

/// What the endpoints serve, implemented by the agent. Each method may block (it scans), so the
/// handlers call it on the blocking pool.
pub trait Endpoints: Send + Sync + 'static {
    /// OpenMetrics text of a fresh collection.
    fn collect(&self) -> String;
    /// Pending and firing alerts.
    fn alerts(&self) -> Vec<AlertView>;
    /// Probes attached and the first scan done.
    fn is_ready(&self) -> bool;
}

/// One collection rendered, shared by every scrape that joined it. Bytes clone without copying,
/// so 100 scrapes of one collection hold one body, not 100.
pub struct Rendered {
    openmetrics: Bytes,
    /// The classic text format, made by the first scrape that asks for it.
    classic: OnceLock<Bytes>,
}

/// What the handlers share: the agent, the collection in flight and the caps.
pub struct Web<E> {
    agent: Arc<E>,
    flight: SingleFlight<Rendered>,
    limits: Arc<limits::Limits>,
    /// The blocking pool's size, as the runtime was built.
    blocking_threads: usize,
}

impl<E: Endpoints> Web<E> {
    pub fn new(agent: Arc<E>, limits: Arc<limits::Limits>, blocking_threads: usize) -> Arc<Self> {
        Arc::new(Self { agent, flight: SingleFlight::default(), limits, blocking_threads })
    }

    /// A fresh collection, or the one running now, with the serving metrics added.
    async fn collect(self: &Arc<Self>) -> Option<Arc<Rendered>> {
        let web = Arc::clone(self);
        self.flight
            .run(move || {
                let body = web.agent.collect();
                let serving =
                    stats::Serving { limits: &web.limits, flight: &web.flight, blocking_threads: web.blocking_threads };
                let body = stats::splice(body, &stats::render(&serving));
                Rendered { openmetrics: Bytes::from(body), classic: OnceLock::new() }
            })
            .await
    }
}

/// The endpoints; with a `guard` (a web config), each of them behind its auth and headers. Every
/// request takes one of `--web.max-requests` slots first.
pub fn router<E: Endpoints>(web: Arc<Web<E>>, guard: Option<Arc<auth::Guard>>) -> Router {
    let limits = Arc::clone(&web.limits);
    let router = Router::new()
        .route("/", get(landing))
        .route("/metrics", get(metrics::<E>))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<E>))
        .route("/api/v1/alerts", get(alerts::<E>))
        .with_state(web);
    let router = match guard {
        Some(g) => router.layer(axum::middleware::from_fn_with_state(g, auth::guard)),
        None => router,
    };
    router.layer(axum::middleware::from_fn_with_state(limits, limits::limit_requests))
}

/// Accepts `HOST:PORT`, `[V6]:PORT` and `:PORT` (all interfaces), as exporters do.
pub fn parse_listen_address(text: &str) -> anyhow::Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs as _;
    let bad =
        || anyhow!("invalid --web.listen-address {text:?}: expected HOST:PORT or :PORT, e.g. :9977 or 127.0.0.1:9977");
    let full = if text.starts_with(':') { format!("0.0.0.0{text}") } else { text.to_string() };
    let (_, port) = full.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let addrs: Vec<SocketAddr> = full.to_socket_addrs().map_err(|e| anyhow!("{}: {e}", bad()))?.collect();
    if addrs.is_empty() {
        return Err(bad());
    }
    Ok(addrs)
}

pub async fn bind(text: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let addrs = parse_listen_address(text)?;
    // ":PORT" means every interface: the IPv6 wildcard takes IPv4 too (dual stack) where the host
    // has IPv6; elsewhere fall back to the IPv4 wildcard.
    if text.starts_with(':') {
        let v6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, addrs[0].port()));
        if let Ok(l) = tokio::net::TcpListener::bind(v6).await {
            return Ok(l);
        }
    }
    tokio::net::TcpListener::bind(&addrs[..])
        .await
        .with_context(|| format!("cannot listen on --web.listen-address {text:?}"))
}

async fn landing() -> Html<&'static str> {
    Html("<html><head><title>connmon</title></head><body><h1>connmon</h1>\
          <p><a href=\"/metrics\">Metrics</a> · <a href=\"/healthz\">Health</a> · <a href=\"/readyz\">Ready</a></p></body></html>\n")
}

async fn alerts<E: Endpoints>(State(web): State<Arc<Web<E>>>) -> Response {
    let agent = Arc::clone(&web.agent);
    match tokio::task::spawn_blocking(move || agent.alerts()).await {
        Ok(list) => axum::Json(list).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn readyz<E: Endpoints>(State(web): State<Arc<Web<E>>>) -> (StatusCode, &'static str) {
    if web.agent.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting: probes not attached or first scan not done\n")
    }
}

async fn metrics<E: Endpoints>(State(web): State<Arc<Web<E>>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let Some(r) = web.collect().await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "collection failed (the agent log says why)\n").into_response();
    };
    if openmetrics {
        ([(header::CONTENT_TYPE, export::OPENMETRICS_CONTENT_TYPE)], r.openmetrics.clone()).into_response()
    } else {
        let classic = r
            .classic
            .get_or_init(|| Bytes::from(export::to_classic(std::str::from_utf8(&r.openmetrics).unwrap_or_default())));
        ([(header::CONTENT_TYPE, export::CLASSIC_CONTENT_TYPE)], classic.clone()).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen_address(":9977").unwrap()[0].to_string(), "0.0.0.0:9977");
        assert_eq!(parse_listen_address("[::1]:80").unwrap()[0].to_string(), "[::1]:80");
        let err = parse_listen_address("nonsense:abc").unwrap_err().to_string();
        assert!(err.contains("\"nonsense:abc\""), "{err}");
        assert!(parse_listen_address("9977").is_err());
    }
}
