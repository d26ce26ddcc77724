//! How long connections wait in each listener's accept queue, and who gives up waiting. Two
//! figures, each labelled with its method: Little's law over a sliding window (W = mean depth /
//! accept rate, with accepts = connections queued − growth of the queue, both exact where the
//! `listen_peak` probe counts every enqueue) and, where the `accept_wait` probe runs, the mean of
//! the waits measured per connection from enqueue to `accept()`. Also the drain time of a full
//! queue (backlog / accept rate: the worst wait a client can meet), the connections abandoned
//! while queued and accepted already closed, and the backlog asked for in `listen()` beside the
//! one the kernel kept.
use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::{Duration, Instant},
};

use monitor_common::{QueueKey, QueueStats, AF_INET};

use crate::{
    kernel::probes::{add_queue_stats, KernelListenerStats},
    model::listeners::{self, Listener, ListenerId},
};

/// Span the queue-wait figures are computed over.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Least span of samples before any figure is given: one sample says nothing about a rate.
const MIN_SPAN: f64 = 2.0;

pub const METHOD_LITTLE: &str = "littles_law";
pub const METHOD_ACCEPT: &str = "accept";

#[derive(Debug, Clone, Copy)]
struct Sample {
    t: f64,
    depth: f64,
    queued: Option<u64>,
    accepted: Option<(u64, u64)>,
}

/// Keeps a window of samples per listener and fills in `Listener::queue`.
#[derive(Debug)]
pub struct QueueTracker {
    history: HashMap<ListenerId, VecDeque<Sample>, foldhash::fast::RandomState>,
    started: Instant,
    /// Seconds clients wait before giving up (the slow-failure alert's `client_timeout`).
    client_timeout: f64,
}

impl Default for QueueTracker {
    fn default() -> Self {
        Self::new(Duration::from_secs(1))
    }
}

/// Which probes the figures may rely on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sources {
    /// `pools` (inet_sock_set_state): abandonment.
    pub states: bool,
    /// `accept_wait`: per-connection waits, accepted-closed.
    pub accepts: bool,
    /// `listen_backlog`: requested backlogs.
    pub listens: bool,
}

impl QueueTracker {
    pub fn new(client_timeout: Duration) -> Self {
        Self { history: HashMap::default(), started: Instant::now(), client_timeout: client_timeout.as_secs_f64() }
    }

    /// Folds the kernel's counters into `listeners` (whose `queued` the peak tracker has set)
    /// and records a sample for each; call on every scan.
    pub fn observe(&mut self, listeners: &mut [Listener], kernel: &KernelListenerStats, src: Sources) {
        let now = self.started.elapsed().as_secs_f64();
        self.observe_at(now, listeners, kernel, src);
    }

    pub fn observe_at(&mut self, now: f64, listeners: &mut [Listener], kernel: &KernelListenerStats, src: Sources) {
        let per_listener = fold_queue_stats(listeners, &kernel.queues);
        let mut seen = std::collections::HashSet::new();
        for (i, l) in listeners.iter_mut().enumerate() {
            let stats = per_listener.get(&i).copied().unwrap_or_default();
            let tcp = !l.is_unix();
            let (inode, backlog) = (l.inode, l.backlog);
            let q = &mut l.queue;
            q.abandoned = (src.states && tcp).then_some(stats.abandoned_fin + stats.abandoned_rst);
            q.stats = stats;
            q.accepted_closed = (src.accepts && tcp).then_some(stats.accepted_closed);
            if src.listens {
                q.requested_backlog = kernel.requested.get(&inode).copied();
            }
            q.clamped = q.requested_backlog.is_some_and(|r| r > i64::from(backlog));
            let sample = Sample {
                t: now,
                depth: f64::from(l.depth),
                queued: l.queued,
                accepted: (src.accepts && tcp).then_some((stats.accepted, stats.wait_ns_sum)),
            };
            let h = self.history.entry(l.id).or_default();
            h.push_back(sample);
            while h.front().is_some_and(|s| now - s.t > WINDOW.as_secs_f64()) {
                h.pop_front();
            }
            let f = figures(h, l.backlog);
            q.wait_seconds = f.wait;
            q.accept_rate = f.rate;
            q.drain_seconds = f.drain;
            q.slow_drain = f.drain.is_some_and(|d| d > self.client_timeout);
            q.wait_measured_seconds = f.measured;
            seen.insert(l.id);
        }
        self.history.retain(|id, _| seen.contains(id));
    }
}

#[derive(Debug, Default, PartialEq)]
struct Figures {
    wait: Option<f64>,
    rate: Option<f64>,
    drain: Option<f64>,
    measured: Option<f64>,
}

/// Pure: the window's figures from its samples (oldest first).
fn figures(h: &VecDeque<Sample>, backlog: u32) -> Figures {
    let (Some(first), Some(last)) = (h.front(), h.back()) else {
        return Figures::default();
    };
    let span = last.t - first.t;
    if span < MIN_SPAN {
        return Figures::default();
    }
    // Time-weighted mean depth (trapezoids between samples).
    let area: f64 = h.iter().zip(h.iter().skip(1)).map(|(a, b)| (b.t - a.t) * (a.depth + b.depth) / 2.0).sum();
    let mean_depth = area / span;
    let mut out = Figures::default();
    if let (Some(q0), Some(q1)) = (first.queued, last.queued) {
        // Every queued connection leaves through accept() (an abandoned one too), so what left
        // is what arrived minus what the queue grew by.
        let accepts = (q1.saturating_sub(q0) as f64 - (last.depth - first.depth)).max(0.0);
        let rate = accepts / span;
        out.rate = Some(rate);
        out.wait = Some(if rate > 0.0 {
            mean_depth / rate
        } else if mean_depth > 0.0 {
            f64::INFINITY
        } else {
            0.0
        });
        out.drain = (rate > 0.0 && backlog > 0).then(|| f64::from(backlog) / rate);
    }
    if let (Some((a0, w0)), Some((a1, w1))) = (first.accepted, last.accepted) {
        let n = a1.saturating_sub(a0);
        if n > 0 {
            out.measured = Some(w1.saturating_sub(w0) as f64 / n as f64 / 1e9);
        }
    }
    out
}

/// The kernel's per-(netns, address, port) queue counters summed per listener index.
fn fold_queue_stats(listeners: &[Listener], queues: &HashMap<QueueKey, QueueStats>) -> HashMap<usize, QueueStats> {
    let mut out: HashMap<usize, QueueStats> = HashMap::new();
    let index = listeners::ListenerIndex::new(listeners);
    for (key, stats) in queues {
        let addr = queue_key_addr(key);
        if let Some(i) = index.owner(u64::from(key.netns), addr, key.port) {
            add_queue_stats(out.entry(i).or_default(), stats);
        }
    }
    out
}

fn queue_key_addr(key: &QueueKey) -> IpAddr {
    if key.family == AF_INET {
        IpAddr::from([key.addr[0], key.addr[1], key.addr[2], key.addr[3]])
    } else {
        let v6 = std::net::Ipv6Addr::from(key.addr);
        // A dual-stack listener's IPv4 clients arrive as IPv4-mapped addresses.
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, depth: f64, queued: u64) -> Sample {
        Sample { t, depth, queued: Some(queued), accepted: None }
    }

    #[test]
    fn littles_law_on_a_steady_full_queue() {
        // 100 queued, 50 accepted/s (arrivals match accepts): W = 100 / 50 = 2 s.
        let h: VecDeque<Sample> = (0..=10).map(|i| s(i as f64, 100.0, 1000 + 50 * i)).collect();
        let f = figures(&h, 200);
        assert_eq!(f.rate, Some(50.0));
        assert_eq!(f.wait, Some(2.0));
        assert_eq!(f.drain, Some(4.0));
    }

    #[test]
    fn a_filling_queue_counts_only_what_left() {
        // 100 arrivals/s, queue grows 50/s: 50 accepted/s, mean depth 250 → 5 s.
        let h: VecDeque<Sample> = (0..=10).map(|i| s(i as f64, 50.0 * i as f64, 100 * i)).collect();
        let f = figures(&h, 4096);
        assert_eq!(f.rate, Some(50.0));
        assert_eq!(f.wait, Some(5.0));
    }

    #[test]
    fn stuck_and_idle_listeners() {
        let stuck: VecDeque<Sample> = (0..=5).map(|i| s(i as f64, 8.0, 8)).collect();
        assert_eq!(figures(&stuck, 8).wait, Some(f64::INFINITY));
        assert_eq!(figures(&stuck, 8).drain, None);
        let idle: VecDeque<Sample> = (0..=5).map(|i| s(i as f64, 0.0, 0)).collect();
        assert_eq!(figures(&idle, 8).wait, Some(0.0));
        let short: VecDeque<Sample> = [s(0.0, 1.0, 0), s(1.0, 1.0, 5)].into();
        assert_eq!(figures(&short, 8), Figures::default());
    }

    #[test]
    fn measured_wait_is_the_mean_over_the_window() {
        let mut h: VecDeque<Sample> = VecDeque::new();
        h.push_back(Sample { t: 0.0, depth: 0.0, queued: None, accepted: Some((10, 5_000_000_000)) });
        h.push_back(Sample { t: 5.0, depth: 0.0, queued: None, accepted: Some((14, 7_000_000_000)) });
        let f = figures(&h, 8);
        assert_eq!(f.measured, Some(0.5));
        assert_eq!(f.wait, None);
    }

    #[test]
    fn queue_keys_reach_wildcard_and_dual_stack_listeners() {
        let mut ls = vec![crate::model::listeners::tests_support::listener(0, 8)];
        ls[0].addr = "::".parse().unwrap();
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[127, 0, 0, 1]);
        let key = QueueKey { netns: 7, port: 8080, family: 10, addr: mapped };
        let stats = QueueStats { abandoned_fin: 3, ..Default::default() };
        let folded = fold_queue_stats(&ls, &HashMap::from([(key, stats)]));
        assert_eq!(folded.get(&0).map(|s| s.abandoned_fin), Some(3));
    }
}
