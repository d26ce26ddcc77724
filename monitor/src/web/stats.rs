//! The serving side's own metrics: its caps (connections, requests in flight, blocking threads),
//! how often each was reached, and how many scrapes shared a collection. Rendered as a second
//! OpenMetrics block and spliced in before the exposition's `# EOF`, so the exporter in export/
//! needs to know nothing about the HTTP server.
use std::sync::atomic::Ordering;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{flight::SingleFlight, limits::Limits};

pub const WEB_CONNECTIONS: &str = "connmon_web_connections";
pub const WEB_CONNECTIONS_LIMIT: &str = "connmon_web_connections_limit";
pub const WEB_CONNECTION_WAITS: &str = "connmon_web_connection_limit_hits_total";
pub const WEB_REQUESTS: &str = "connmon_web_requests_in_flight";
pub const WEB_REQUESTS_LIMIT: &str = "connmon_web_requests_limit";
pub const WEB_REQUEST_WAITS: &str = "connmon_web_request_limit_hits_total";
pub const WEB_REQUESTS_REJECTED: &str = "connmon_web_requests_rejected_total";
pub const SCRAPE_COLLECTIONS: &str = "connmon_scrape_collections_total";
pub const BLOCKING_THREADS_LIMIT: &str = "connmon_blocking_threads_limit";

/// Every metric this module exports.
pub const METRICS: &[&str] = &[
    WEB_CONNECTIONS,
    WEB_CONNECTIONS_LIMIT,
    WEB_CONNECTION_WAITS,
    WEB_REQUESTS,
    WEB_REQUESTS_LIMIT,
    WEB_REQUEST_WAITS,
    WEB_REQUESTS_REJECTED,
    SCRAPE_COLLECTIONS,
    BLOCKING_THREADS_LIMIT,
];

/// What `render` reads.
pub struct Serving<'a> {
    pub limits: &'a Limits,
    pub flight: &'a SingleFlight<super::Rendered>,
    pub blocking_threads: usize,
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: usize) {
    let g = Gauge::<i64>::default();
    g.set(v as i64);
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    reg.register(name.strip_suffix("_total").unwrap_or(name), help, c);
}

/// The serving metrics as OpenMetrics text, without the final `# EOF`.
pub fn render(s: &Serving<'_>) -> String {
    let l = s.limits;
    let mut reg = Registry::default();
    gauge(&mut reg, WEB_CONNECTIONS, "HTTP connections open on the metrics endpoint", l.open_connections());
    gauge(
        &mut reg,
        WEB_CONNECTIONS_LIMIT,
        "Most HTTP connections served at once (--web.max-connections); more wait in the kernel's accept queue",
        l.max_connections,
    );
    counter(
        &mut reg,
        WEB_CONNECTION_WAITS,
        "Times a new HTTP connection waited because --web.max-connections were open",
        l.connection_waits.load(Ordering::Relaxed),
    );
    gauge(&mut reg, WEB_REQUESTS, "HTTP requests being served now", l.requests_in_flight());
    gauge(&mut reg, WEB_REQUESTS_LIMIT, "Most HTTP requests served at once (--web.max-requests)", l.max_requests);
    counter(
        &mut reg,
        WEB_REQUEST_WAITS,
        "HTTP requests that waited because --web.max-requests were in flight",
        l.request_waits.load(Ordering::Relaxed),
    );
    counter(
        &mut reg,
        WEB_REQUESTS_REJECTED,
        "HTTP requests answered 503 after waiting 8 s for a free slot",
        l.requests_rejected.load(Ordering::Relaxed),
    );
    let scrapes = Family::<Vec<(String, String)>, Counter>::default();
    reg.register(
        SCRAPE_COLLECTIONS.strip_suffix("_total").unwrap_or(SCRAPE_COLLECTIONS),
        "Scrapes of /metrics by how they were served: started a collection, or shared one already running",
        scrapes.clone(),
    );
    for (how, n) in [("started", &s.flight.started), ("shared", &s.flight.shared)] {
        scrapes.get_or_create(&vec![("collection".to_string(), how.to_string())]).inc_by(n.load(Ordering::Relaxed));
    }
    gauge(
        &mut reg,
        BLOCKING_THREADS_LIMIT,
        "Most threads the agent runs scans and other blocking work on",
        s.blocking_threads,
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out.strip_suffix("# EOF\n").map(str::to_string).unwrap_or(out)
}

/// `exposition` (OpenMetrics, ending in `# EOF`) with `extra` inserted before its end.
pub fn splice(mut exposition: String, extra: &str) -> String {
    let end = exposition.rfind("# EOF").unwrap_or(exposition.len());
    exposition.insert_str(end, extra);
    exposition
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_metrics_join_the_exposition_once() {
        let limits = Limits::new(8, 4);
        limits.request_waits.fetch_add(3, Ordering::Relaxed);
        let flight = SingleFlight::default();
        flight.shared.fetch_add(5, Ordering::Relaxed);
        let extra = render(&Serving { limits: &limits, flight: &flight, blocking_threads: 4 });
        let body = splice("# TYPE a gauge\na 1\n# EOF\n".to_string(), &extra);
        assert!(body.starts_with("# TYPE a gauge\na 1\n"), "{body}");
        assert!(body.ends_with("\n# EOF\n") && body.matches("# EOF").count() == 1, "{body}");
        for line in [
            "connmon_web_connections_limit 8",
            "connmon_web_requests_limit 4",
            "connmon_web_request_limit_hits_total 3",
            "connmon_scrape_collections_total{collection=\"shared\"} 5",
            "connmon_blocking_threads_limit 4",
        ] {
            assert!(body.contains(&format!("\n{line}\n")), "{line} missing in {body}");
        }
    }
}
