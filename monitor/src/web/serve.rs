//! The HTTP/1.1 server loop, in place of `axum::serve`, for one setting it does not expose: a
//! header read timeout. Each connection holds a slot of `--web.max-connections`; without a
//! timeout a client that sends half a request (or keeps an idle connection open) would hold its
//! slot for ever, and a few hundred of them would lock every scraper out. hyper's
//! `header_read_timeout` closes a connection that has not sent a complete request head within
//! `HEADER_READ_TIMEOUT`, idle keep-alive connections included (Prometheus reconnects).
use std::time::Duration;

use axum::{body::Body, extract::Request, Router};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use log::debug;
use tokio::sync::watch;
use tower::ServiceExt as _;

/// How long a connection may take to send a request head, or stay idle between requests.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long in-flight requests get to finish once shutdown begins.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `shutdown` completes, then lets open connections finish
/// their requests (for at most `DRAIN`).
pub async fn serve<L>(mut listener: L, app: Router, shutdown: impl std::future::Future<Output = ()>)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            conn = listener.accept() => conn,
            () = &mut shutdown => break,
        };
        let app = app.clone().map_request(|r: Request<Incoming>| r.map(Body::new));
        let service = TowerToHyperService::new(app);
        let conn = http.serve_connection(TokioIo::new(io), service);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        debug!("connection from {peer:?}: {e}");
                    }
                    return;
                }
                _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(true);
    // Each connection task holds a receiver: wait until they have all finished, or DRAIN passes.
    let _ = tokio::time::timeout(DRAIN, stop_tx.closed()).await;
}
