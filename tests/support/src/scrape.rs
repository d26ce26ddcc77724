//! Reading the agent's /metrics beyond a single sample: scraping at a gentle, fixed pace until a
//! condition holds ([`scrape_until`], for tests whose subject is timing-sensitive), and summing a
//! metric's series over the labels a test does not pin down ([`sum_of`]). Both work on the parsed
//! exposition ([`Sample`]), so the same sum serves connmon's metrics and Alertmanager's.

use std::time::{Duration, Instant};

use super::{samples_matching, Agent, Sample};

/// How often [`scrape_until`] scrapes. The storm detector moves once per tick (1 s), and a scrape
/// costs the agent a full collection: scraping back to back would load the host enough to disturb
/// the clients' timing.
pub const SCRAPE_EVERY: Duration = Duration::from_millis(200);

/// Scrapes every [`SCRAPE_EVERY`] until `f` accepts the samples; panics at `deadline` with `what`
/// and `f`'s last explanation.
pub fn scrape_until<T>(
    agent: &Agent,
    deadline: Instant,
    what: &str,
    mut f: impl FnMut(&[Sample]) -> Result<T, String>,
) -> T {
    super::poll_every(SCRAPE_EVERY, deadline, what, || f(&agent.samples()))
}

/// The sum of the samples `name` whose labels include `labels` (over the labels not given, such as
/// `reason`, or `how` where the agent splits died-young connections); `None` if there are none.
pub fn sum_of(s: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let hits = samples_matching(s, name, labels);
    (!hits.is_empty()).then(|| hits.iter().map(|x| x.value).sum())
}
