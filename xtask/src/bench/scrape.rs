//! HTTP as Prometheus speaks it, just enough for the bench: GET /readyz and /metrics over a fresh
//! connection with Prometheus's Accept header (chunked bodies decoded), the sum of a metric's
//! samples that carry a given label, and the `Scraper` thread that scrapes /metrics every second
//! during a round, so the agent's userspace side is part of what is measured.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Prometheus 2.x's Accept header (OpenMetrics preferred, classic text as fallback).
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// GET `path` over a fresh connection (`Connection: close`); the status and the body.
pub(super) fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let mut sock = TcpStream::connect_timeout(&addr, timeout)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.set_write_timeout(Some(timeout))?;
    write!(
        sock,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: xtask-bench\r\n\
         Accept: {PROMETHEUS_ACCEPT}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw)?;
    parse_http_response(&String::from_utf8_lossy(&raw))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed HTTP response"))
}

fn parse_http_response(text: &str) -> Option<(u16, String)> {
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked { dechunk(body)? } else { body.to_owned() };
    Some((status, body))
}

/// Body of a `Transfer-Encoding: chunked` response.
fn dechunk(mut rest: &str) -> Option<String> {
    let mut body = String::new();
    loop {
        let (size_line, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(body);
        }
        body.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// Sum of the samples of `metric` whose labels contain `label` (e.g. `comm="connload"`).
pub(super) fn metric_sum(body: &str, metric: &str, label: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) || !rest.contains(label) {
            continue;
        }
        // `name{labels} value [timestamp]`: label values may contain spaces, the value follows
        // the closing brace.
        let after = rest.rsplit_once('}').map_or(rest, |(_, v)| v);
        if let Some(v) = after.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
            sum += v;
            found = true;
        }
    }
    found.then_some(sum)
}

#[derive(Default, Clone, Copy)]
pub(super) struct ScrapeStats {
    pub(super) ok: u32,
    pub(super) failed: u32,
    pub(super) max_ms: f64,
    pub(super) max_bytes: usize,
}

/// Scrapes /metrics every second (absolute deadlines, first one at once) until stopped.
pub(super) struct Scraper {
    stop: Sender<()>,
    handle: JoinHandle<ScrapeStats>,
}

impl Scraper {
    pub(super) fn start(web: SocketAddr) -> Scraper {
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = thread::spawn(move || {
            let mut stats = ScrapeStats::default();
            let start = Instant::now();
            for k in 0u32.. {
                let due = start + Duration::from_secs(u64::from(k));
                match stopped.recv_timeout(due.saturating_duration_since(Instant::now())) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => break,
                }
                let t = Instant::now();
                match http_get(web, "/metrics", Duration::from_secs(5)) {
                    Ok((200, body)) => {
                        stats.ok += 1;
                        stats.max_bytes = stats.max_bytes.max(body.len());
                    }
                    _ => stats.failed += 1,
                }
                stats.max_ms = stats.max_ms.max(t.elapsed().as_secs_f64() * 1e3);
            }
            stats
        });
        Scraper { stop, handle }
    }

    pub(super) fn finish(self) -> ScrapeStats {
        let _ = self.stop.send(());
        self.handle.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_responses() {
        let plain = "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
        assert_eq!(parse_http_response(plain), Some((200, "ok\n".into())));
        let chunked =
            "HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nstar\r\n3\r\nts\n\r\n0\r\n\r\n";
        assert_eq!(parse_http_response(chunked), Some((503, "starts\n".into())));
        assert_eq!(parse_http_response("garbage"), None);
    }

    #[test]
    fn sums_metric_samples() {
        let body = "# TYPE connmon_pool_opens counter\n\
            connmon_pool_opens_total{service=\"other\",comm=\"connload\",cgroup=\"/a b\"} 10\n\
            connmon_pool_opens_total{service=\"other\",comm=\"connload\",cgroup=\"/\"} 5 1700000000\n\
            connmon_pool_opens_total{service=\"other\",comm=\"curl\",cgroup=\"/\"} 7\n\
            connmon_pool_opens_total_extra{comm=\"connload\"} 100\n";
        assert_eq!(metric_sum(body, "connmon_pool_opens_total", "comm=\"connload\""), Some(15.0));
        assert_eq!(metric_sum(body, "connmon_pool_opens_total", "comm=\"nobody\""), None);
    }
}
