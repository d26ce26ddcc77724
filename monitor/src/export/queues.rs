//! Accept-queue series: how long connections wait (by method), how fast a full queue drains,
//! who gave up while queued, requested against kept backlogs, and each namespace's listen sysctls.
use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::MetricType,
    registry::Registry,
};

use super::{
    budget::Level,
    counter_family, float_family, gauge_family, labels,
    pools::{histogram, Hist, HistRef},
    Labels, Shown,
};
use crate::model::{
    listeners::NetnsStats,
    queue_wait::{METHOD_ACCEPT, METHOD_LITTLE},
};

pub const LISTEN_QUEUE_WAIT: &str = "connmon_listen_queue_wait_seconds";
pub const LISTEN_QUEUE_WAIT_HIST: &str = "connmon_listen_queue_wait_measured_seconds";
pub const LISTEN_ACCEPT_RATE: &str = "connmon_listen_accept_rate";
pub const LISTEN_DRAIN: &str = "connmon_listen_queue_drain_seconds";
pub const LISTEN_SLOW_DRAIN: &str = "connmon_listen_queue_drain_exceeds_client_timeout";
pub const LISTEN_ABANDONED: &str = "connmon_listen_abandoned_total";
pub const LISTEN_ACCEPTED_CLOSED: &str = "connmon_listen_accepted_closed_total";
pub const LISTEN_BACKLOG_REQUESTED: &str = "connmon_listen_backlog_requested";
pub const LISTEN_BACKLOG_CLAMPED: &str = "connmon_listen_backlog_clamped";
pub const NETNS_SYSCTL: &str = "connmon_netns_sysctl";

/// Registers the queue series of the exported listeners and the namespaces' sysctls. A summary
/// keeps only the abandoned counts that have counted something (a rule sums them).
pub(crate) fn register(reg: &mut Registry, listeners: &[Shown<'_>], namespaces: &[NetnsStats]) {
    let wait = float_family(reg, LISTEN_QUEUE_WAIT, "How long a connection waits in the accept queue. method=\"littles_law\": mean depth / accept rate over the last 10 s (+Inf: connections queued, none accepted); method=\"accept\": mean of the waits measured from enqueue to accept() for connections accepted in the last 10 s");
    let rate = float_family(
        reg,
        LISTEN_ACCEPT_RATE,
        "Connections taken off the accept queue per second over the last 10 s (queued minus queue growth)",
    );
    let drain = float_family(reg, LISTEN_DRAIN, "Seconds a full queue takes to drain at the current accept rate (backlog / accept rate): the longest wait a client can meet");
    let slow = gauge_family(reg, LISTEN_SLOW_DRAIN, "1 when draining a full queue takes longer than the configured client timeout (alerts.accept_queue_slow_failure.client_timeout): clients time out before a full queue reaches them");
    let abandoned = counter_family(reg, LISTEN_ABANDONED, "Connections whose client closed (how=\"fin\") or reset (how=\"rst\") them while still in the accept queue, before any process accepted them");
    let closed = counter_family(
        reg,
        LISTEN_ACCEPTED_CLOSED,
        "Connections accept() returned already closed or reset by their client",
    );
    let requested = gauge_family(reg, LISTEN_BACKLOG_REQUESTED, "Backlog the owner passed to listen() (negative: the most allowed), recorded when listen() ran while connmon was attached");
    let clamped = gauge_family(
        reg,
        LISTEN_BACKLOG_CLAMPED,
        "1 when the kernel kept a smaller backlog than listen() asked for (capped by net.core.somaxconn)",
    );
    let sysctl = gauge_family(reg, NETNS_SYSCTL, "Listen-related sysctls of the network namespace: net.core.somaxconn, net.ipv4.tcp_max_syn_backlog, net.ipv4.tcp_abort_on_overflow, net.ipv4.tcp_syncookies");
    let mut hist = QueueHistograms::default();
    for Shown { l, level, id, .. } in listeners {
        let q = &l.queue;
        let s = &q.stats;
        if *level == Level::Summary {
            if q.abandoned.is_some() && !l.is_unix() {
                for (how, n) in [("fin", s.abandoned_fin), ("rst", s.abandoned_rst)] {
                    if n > 0 {
                        abandoned.with(id, &[("how", how)]).inc_by(n);
                    }
                }
            }
            continue;
        }
        for (method, v) in [(METHOD_LITTLE, q.wait_seconds), (METHOD_ACCEPT, q.wait_measured_seconds)] {
            if let Some(v) = v {
                wait.with(id, &[("method", method)]).set(v);
            }
        }
        if let Some(r) = q.accept_rate {
            rate.get_or_create(id).set(r);
        }
        if let Some(d) = q.drain_seconds {
            drain.get_or_create(id).set(d);
            slow.get_or_create(id).set(i64::from(q.slow_drain));
        }
        // Unix listeners have no TCP states to watch: no abandonment counted for them.
        if q.abandoned.is_some() && !l.is_unix() {
            for (how, n) in [("fin", s.abandoned_fin), ("rst", s.abandoned_rst)] {
                abandoned.with(id, &[("how", how)]).inc_by(n);
            }
        }
        if q.accepted_closed.is_some() && !l.is_unix() {
            closed.get_or_create(id).inc_by(s.accepted_closed);
            hist.0.push((Arc::clone(id), histogram(&s.wait_us, s.wait_ns_sum / 1000, 1e-6)));
        }
        if let Some(r) = q.requested_backlog {
            requested.get_or_create(id).set(r);
            clamped.get_or_create(id).set(i64::from(q.clamped));
        }
    }
    for ns in namespaces {
        let netns = ns.inode.to_string();
        for (name, v) in &ns.sysctls {
            sysctl.get_or_create(labels(&[("netns", &netns), ("name", name)])).set(*v);
        }
    }
    reg.register_collector(Box::new(hist));
}

#[derive(Debug, Default)]
struct QueueHistograms(Vec<(Arc<Labels>, Hist)>);

impl Collector for QueueHistograms {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.0.is_empty() {
            return Ok(());
        }
        let help = "Waits in the accept queue measured per connection, from enqueue (handshake completed) to accept()";
        let mut family = encoder.encode_descriptor(LISTEN_QUEUE_WAIT_HIST, help, None, MetricType::Histogram)?;
        for (l, h) in &self.0 {
            let text = super::series::shared_text(l);
            HistRef(h).encode(family.encode_family(&super::series::LabelText::of(l, text.as_deref()))?)?;
        }
        Ok(())
    }
}
