//! Expositions prepared ahead of the scrapes that will ask for them. On a big host a collection
//! (gather and render) takes tens of milliseconds of CPU, too long for a scrape to wait for.
//! Scrapers come at a steady interval, so the agent remembers when scrapes came and, on the
//! periodic tick before the next one is due, gathers and renders then; the scrape is answered
//! with that text. The tick prepares nothing when no scrape is expected before the next tick, so
//! a host nobody scrapes pays for no series. What a scrape is served is at most one tick old;
//! a scrape nobody expected (the first, or one after a pause) collects afresh, as before.
use std::time::{Duration, Instant};

/// When scrapes came: the last one and the two intervals before it. Two, so that two scrapers
/// at the same interval and different offsets (a Prometheus pair) are both expected: their
/// intervals alternate, and each next scrape is one of the last two intervals after the last.
#[derive(Debug, Default)]
pub struct ScrapeClock {
    last: Option<Instant>,
    intervals: [Option<Duration>; 2],
}

impl ScrapeClock {
    /// A scrape that collects (one that shared a collection running already does not count).
    pub fn arrived(&mut self, now: Instant) {
        if let Some(last) = self.last {
            self.intervals = [Some(now.saturating_duration_since(last)), self.intervals[0]];
        }
        self.last = Some(now);
    }

    /// Whether a scrape is expected before the next tick, `tick` after `now`. A scrape up to a
    /// quarter of a tick late is still expected (scrapers jitter, and a tick can be late), and
    /// so is the one after a single missed scrape; a scraper silent for longer paused or went
    /// away, and nothing is prepared for it. Intervals shorter than the tick are not scrapers to
    /// prepare for: something polling (a person, a test waiting for a figure to change) wants the
    /// figures of now, and a scraper that fast would be served the same tick's text repeatedly.
    pub fn expects(&self, now: Instant, tick: Duration) -> bool {
        let Some(last) = self.last else { return false };
        self.intervals.iter().flatten().filter(|interval| **interval >= tick).any(|interval| {
            let mut due = last + *interval;
            if due + tick / 4 < now && now.saturating_duration_since(last) < *interval * 2 + tick {
                due += *interval;
            }
            due + tick / 4 >= now && due < now + tick
        })
    }
}

/// An exposition a tick rendered, and when its gather began.
pub struct Prepared {
    pub text: String,
    pub at: Instant,
}

impl Prepared {
    /// The text if it is at most `tick` old.
    pub fn fresh(&self, tick: Duration) -> Option<&str> {
        (self.at.elapsed() <= tick).then_some(self.text.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_secs(1);

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn nothing_is_expected_before_two_scrapes() {
        let t0 = Instant::now();
        let mut c = ScrapeClock::default();
        assert!(!c.expects(t0, TICK));
        c.arrived(t0);
        assert!(!c.expects(at(t0, 500), TICK), "one scrape gives no interval");
    }

    #[test]
    fn the_tick_before_the_next_scrape_prepares_and_no_other() {
        let t0 = Instant::now();
        let mut c = ScrapeClock::default();
        c.arrived(t0);
        c.arrived(at(t0, 15_000));
        // Next due at 30.0 s: the tick at 29.3 s prepares, those before do not.
        assert!(!c.expects(at(t0, 16_300), TICK));
        assert!(!c.expects(at(t0, 28_300), TICK));
        assert!(c.expects(at(t0, 29_300), TICK));
        // A little late still counts; a scraper gone for longer does not.
        assert!(c.expects(at(t0, 30_200), TICK));
        assert!(!c.expects(at(t0, 31_300), TICK));
        assert!(!c.expects(at(t0, 120_000), TICK));
    }

    #[test]
    fn two_scrapers_at_offsets_are_both_expected() {
        let t0 = Instant::now();
        let mut c = ScrapeClock::default();
        // A at 0, 15, 30; B at 4, 19: intervals alternate 4 s and 11 s.
        for ms in [0, 4_000, 15_000, 19_000] {
            c.arrived(at(t0, ms));
        }
        assert!(c.expects(at(t0, 29_500), TICK), "A's next scrape at 30 s");
        c.arrived(at(t0, 30_000));
        assert!(c.expects(at(t0, 33_500), TICK), "B's next scrape at 34 s");
        assert!(!c.expects(at(t0, 31_500), TICK));
    }

    #[test]
    fn nothing_is_prepared_for_polls_faster_than_the_tick() {
        let t0 = Instant::now();
        let mut c = ScrapeClock::default();
        for ms in [0, 200, 400, 600] {
            c.arrived(at(t0, ms));
        }
        assert!(!c.expects(at(t0, 700), TICK));
        assert!(!c.expects(at(t0, 1_000), TICK));
    }

    #[test]
    fn the_scrape_after_a_missed_one_is_still_expected() {
        let t0 = Instant::now();
        let mut c = ScrapeClock::default();
        c.arrived(t0);
        c.arrived(at(t0, 2_000));
        // Due at 4 s, missed; the one at 6 s is expected, and nothing after a longer silence.
        assert!(c.expects(at(t0, 5_500), TICK));
        assert!(!c.expects(at(t0, 9_500), TICK));
    }

    #[test]
    fn a_prepared_exposition_is_served_for_one_tick() {
        let p = Prepared { text: "x".into(), at: Instant::now() };
        assert_eq!(p.fresh(TICK), Some("x"));
        let old = Prepared { text: "x".into(), at: Instant::now() - Duration::from_millis(1_100) };
        assert_eq!(old.fresh(TICK), None);
    }
}
