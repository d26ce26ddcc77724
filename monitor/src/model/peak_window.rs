//! The peak gauges' period: the highest value seen in the last `--peaks.window` (default 1m),
//! whoever scrapes. It used to be "since the previous scrape", which two scrapers (an HA pair of
//! Prometheus servers, or Prometheus plus `curl`) shared: each reset the other's period, so a burst
//! showed only to whichever scraped first. A fixed window is the same for every scraper, lets
//! concurrent scrapes share one rendered body, and shows each peak to every scraper whose
//! interval is at most the window. Kept as a few time buckets of per-series maxima: a value stays
//! visible for at least the window and at most one bucket longer.
use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    time::{Duration, Instant},
};

/// The windows of the three peak gauges: listener accept-queue depth, pool connections and
/// destination connections.
#[derive(Debug)]
pub struct PeakWindows {
    pub listeners: PeakWindow<crate::model::listeners::ListenerId>,
    pub pools: PeakWindow<[String; 5]>,
    pub destinations: PeakWindow<crate::model::destinations::DestKey>,
}

impl PeakWindows {
    pub fn new(window: Duration) -> Self {
        Self {
            listeners: PeakWindow::new(window),
            pools: PeakWindow::new(window),
            destinations: PeakWindow::new(window),
        }
    }

    pub fn advance(&mut self, now: Instant) {
        self.listeners.advance(now);
        self.pools.advance(now);
        self.destinations.advance(now);
    }

    /// Series held in all three (each once per bucket it appears in).
    pub fn entries(&self) -> usize {
        self.listeners.entries() + self.pools.entries() + self.destinations.entries()
    }
}

/// Buckets per window: how much longer than the window a peak may linger (a sixth of it).
const BUCKETS: u32 = 6;

/// Highest value per series over a sliding window.
#[derive(Debug)]
pub struct PeakWindow<K> {
    window: Duration,
    width: Duration,
    buckets: VecDeque<(Instant, HashMap<K, i64, foldhash::fast::RandomState>)>,
}

impl<K: Hash + Eq + Clone> PeakWindow<K> {
    pub fn new(window: Duration) -> Self {
        Self { window, width: (window / BUCKETS).max(Duration::from_millis(1)), buckets: VecDeque::new() }
    }

    /// Starts a new bucket when the current one is full and drops buckets wholly older than
    /// the window. Call once per collection, before `observe`.
    pub fn advance(&mut self, now: Instant) {
        if self.buckets.back().is_none_or(|(start, _)| now.saturating_duration_since(*start) >= self.width) {
            self.buckets.push_back((now, HashMap::default()));
        }
        while self
            .buckets
            .front()
            .is_some_and(|(start, _)| now.saturating_duration_since(*start) > self.window + self.width)
        {
            self.buckets.pop_front();
        }
    }

    /// Records `value` (the highest seen since the previous collection) and returns the highest
    /// recorded for `key` within the window.
    pub fn observe(&mut self, key: &K, value: i64) -> i64 {
        if self.buckets.is_empty() {
            self.advance(Instant::now());
        }
        let mut best = value;
        let last = self.buckets.len() - 1;
        for (i, (_, b)) in self.buckets.iter_mut().enumerate() {
            if i == last {
                // The key is cloned only when new to the bucket (a pool's key is five strings).
                match b.get_mut(key) {
                    Some(e) => *e = (*e).max(value),
                    None => {
                        b.insert(key.clone(), value);
                    }
                }
            }
            if let Some(v) = b.get(key) {
                best = best.max(*v);
            }
        }
        best
    }

    /// Series held, over all buckets (each series counts once per bucket it appears in).
    pub fn entries(&self) -> usize {
        self.buckets.iter().map(|(_, b)| b.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peak_shows_for_the_whole_window_then_goes() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut w = PeakWindow::<&str>::new(Duration::from_secs(60));
        w.advance(s(0));
        assert_eq!(w.observe(&"a", 9), 9);
        // Two scrapers, one after the other, both see the burst: reading does not reset it.
        for t in [1, 2, 15, 30, 59, 60] {
            w.advance(s(t));
            assert_eq!(w.observe(&"a", 1), 9, "at {t} s");
        }
        // Gone once its bucket is wholly older than the window (60 s plus one 10 s bucket at most).
        w.advance(s(71));
        assert_eq!(w.observe(&"a", 2), 2);
        // A series not seen any more is forgotten with its buckets: the window holds live series.
        for t in 72..200 {
            w.advance(s(t));
            w.observe(&"b", 1);
        }
        assert!(w.buckets.iter().all(|(_, b)| !b.contains_key(&"a")));
        assert!(w.buckets.len() <= BUCKETS as usize + 2, "{}", w.buckets.len());
    }
}
