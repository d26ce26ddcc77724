//! The HTTP server's bounds: open connections (a semaphore taken before each accept, so excess
//! connections wait in the kernel's accept queue instead of in the agent; with TLS it is taken
//! before the handshake, so connections in handshake count too), requests being served
//! at once (a semaphore in a middleware; a request that waits longer than `REQUEST_WAIT` gets a
//! 503), and the counters saying how often each bound was reached, exported with every scrape.
use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore},
};

/// How long a request may wait for a free slot before it is answered 503: longer than any scan
/// takes, shorter than Prometheus' default scrape timeout (10 s).
pub const REQUEST_WAIT: Duration = Duration::from_secs(8);

/// The caps and how often they were reached.
pub struct Limits {
    connections: Arc<Semaphore>,
    requests: Arc<Semaphore>,
    pub max_connections: usize,
    pub max_requests: usize,
    /// Accepts that had to wait for a connection to close first.
    pub connection_waits: AtomicU64,
    /// Requests that had to wait for another request to finish first.
    pub request_waits: AtomicU64,
    /// Requests answered 503 after waiting `REQUEST_WAIT` for a slot.
    pub requests_rejected: AtomicU64,
}

impl Limits {
    pub fn new(max_connections: usize, max_requests: usize) -> Arc<Self> {
        Arc::new(Self {
            connections: Arc::new(Semaphore::new(max_connections)),
            requests: Arc::new(Semaphore::new(max_requests)),
            max_connections,
            max_requests,
            connection_waits: AtomicU64::new(0),
            request_waits: AtomicU64::new(0),
            requests_rejected: AtomicU64::new(0),
        })
    }

    pub fn open_connections(&self) -> usize {
        self.max_connections - self.connections.available_permits()
    }

    pub fn requests_in_flight(&self) -> usize {
        self.max_requests - self.requests.available_permits()
    }

    /// A connection slot, waiting (and counting the wait) when all are taken.
    pub async fn connection_slot(&self) -> OwnedSemaphorePermit {
        if let Ok(p) = Arc::clone(&self.connections).try_acquire_owned() {
            return p;
        }
        self.connection_waits.fetch_add(1, Ordering::Relaxed);
        match Arc::clone(&self.connections).acquire_owned().await {
            Ok(p) => p,
            // The semaphore is never closed.
            Err(_) => std::future::pending().await,
        }
    }
}

/// Takes a request slot (waiting up to `REQUEST_WAIT`) for the rest of the request.
pub async fn limit_requests(State(limits): State<Arc<Limits>>, req: Request, next: Next) -> Response {
    let permit = match Arc::clone(&limits.requests).try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            limits.request_waits.fetch_add(1, Ordering::Relaxed);
            match tokio::time::timeout(REQUEST_WAIT, Arc::clone(&limits.requests).acquire_owned()).await {
                Ok(Ok(p)) => p,
                _ => {
                    limits.requests_rejected.fetch_add(1, Ordering::Relaxed);
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [("retry-after", "1")],
                        format!("too many requests in flight (--web.max-requests={})\n", limits.max_requests),
                    )
                        .into_response();
                }
            }
        }
    };
    let resp = next.run(req).await;
    drop(permit);
    resp
}

/// A listener that holds a connection slot for each connection it hands out.
pub struct Limited<L> {
    inner: L,
    limits: Arc<Limits>,
}

impl<L> Limited<L> {
    pub fn new(inner: L, limits: Arc<Limits>) -> Self {
        Self { inner, limits }
    }
}

impl<L: axum::serve::Listener> axum::serve::Listener for Limited<L> {
    type Io = Counted<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let slot = self.limits.connection_slot().await;
        let (io, addr) = self.inner.accept().await;
        (Counted::new(io, slot), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection holding its slot until it is dropped (closed).
pub struct Counted<I> {
    io: I,
    _slot: OwnedSemaphorePermit,
}

impl<I> Counted<I> {
    pub fn new(io: I, slot: OwnedSemaphorePermit) -> Self {
        Self { io, _slot: slot }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
