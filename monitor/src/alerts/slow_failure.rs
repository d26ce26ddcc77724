//! AcceptQueueSlowFailure: a listener whose queue makes clients wait longer than they are willing
//! to (queue wait above the client timeout), or whose clients are seen giving up while queued (a
//! number of them, and a share of those queued meanwhile).
//! Either way the server spends its time on connections nobody waits for. The annotation says
//! which backlog would fail fast instead: about accept rate × client timeout, so a client that
//! gets in is served before it gives up and the rest are refused at once.
use super::{increased, labels, Labels};
use crate::{config::SlowFailureRule, model::listeners::Listener};

/// Whether the rule holds for `l`, with its annotations. `abandoned` and `queued` are the
/// recorded series of the listener's abandoned-connection and queued-connection counters
/// (`queued` None where the peak probe does not count them: the abandoned count alone decides).
pub(super) fn judge(
    l: &Listener,
    local: &str,
    abandoned: &[(f64, f64)],
    queued: Option<&[(f64, f64)]>,
    now: f64,
    rule: &SlowFailureRule,
) -> (bool, Labels) {
    let timeout = rule.client_timeout.0.as_secs_f64();
    let window = rule.window.0.as_secs_f64();
    let q = &l.queue;
    let wait = q.worst_wait();
    let (_, gave_up) = increased(abandoned, now, window);
    let came = queued.map(|s| increased(s, now, window).1);
    let too_slow = wait.is_some_and(|w| w > timeout);
    let many =
        gave_up >= rule.min_abandoned && came.is_none_or(|n| gave_up as f64 >= rule.min_abandoned_ratio.0 * n as f64);
    let cond = too_slow || many;
    let shown = |w: f64| {
        if w.is_infinite() {
            "forever (nothing accepted)".to_string()
        } else {
            format!("{w:.2}s")
        }
    };
    let mut ann = labels(&[
        (
            "summary",
            format!(
                "connections wait {} in the accept queue of {local} (client timeout {timeout}s); {gave_up} abandoned while queued in the last {window}s",
                wait.map_or("an unknown time".to_string(), shown)
            ),
        ),
        ("abandoned", gave_up.to_string()),
        ("queued", came.map_or_else(|| "unknown".to_string(), |n| n.to_string())),
        ("backlog", l.backlog.to_string()),
    ]);
    if let Some(w) = wait {
        ann.insert("queue_wait_seconds".into(), if w.is_infinite() { "+Inf".into() } else { format!("{w:.3}") });
    }
    if let Some(rate) = q.accept_rate.filter(|r| *r > 0.0) {
        let suggested = (rate * timeout).ceil().max(1.0) as u64;
        ann.insert("accept_rate".into(), format!("{rate:.1}"));
        ann.insert("suggested_backlog".into(), suggested.to_string());
        ann.insert(
            "description".into(),
            format!(
                "at {rate:.1} accepts/s a backlog of {} takes {:.1}s to drain, longer than clients wait; listen(fd, {suggested}) (about accept rate x client timeout) would refuse the excess at once instead of serving clients that have left",
                l.backlog,
                f64::from(l.backlog) / rate
            ),
        );
    }
    (cond, ann)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::listeners::tests_support::listener;

    /// A counter's samples, one a second over 30 s, growing by `per_s`.
    fn counter(per_s: f64) -> Vec<(f64, f64)> {
        (0..=30).map(|t| (f64::from(t), f64::from(t) * per_s)).collect()
    }

    fn fires(abandoned_per_s: f64, queued: Option<f64>) -> bool {
        let mut l = listener(2, 8);
        l.queue.wait_seconds = Some(0.1);
        let queued = queued.map(counter);
        judge(&l, "127.0.0.1:8080", &counter(abandoned_per_s), queued.as_deref(), 30.0, &SlowFailureRule::default()).0
    }

    #[test]
    fn a_short_queue_that_takes_in_thousands_and_loses_a_few_stays_silent() {
        // The short-backlog replay: about 80 queued a second, 4–13 abandoned in 35 s (the ACKs
        // dropped while the queue was full); here 12 in 30 s, over min_abandoned on its own.
        assert!(!fires(0.4, Some(80.0)));
    }

    #[test]
    fn many_clients_giving_up_of_those_queued_fire() {
        // The deep-backlog replay: nearly every client queued gives up.
        assert!(fires(30.0, Some(33.0)));
        // 5% of those queued, and at least 10.
        assert!(fires(1.0, Some(20.0)));
        assert!(!fires(0.2, Some(1.0)), "6 abandoned is under min_abandoned whatever the share");
    }

    #[test]
    fn without_a_queued_count_the_abandoned_count_decides() {
        assert!(fires(0.4, None));
        assert!(!fires(0.3, None));
    }

    #[test]
    fn a_wait_over_the_client_timeout_fires_whatever_the_counts() {
        let mut l = listener(8, 8);
        l.queue.wait_seconds = Some(2.5);
        let (cond, ann) =
            judge(&l, "127.0.0.1:8080", &counter(0.0), Some(&counter(80.0)), 30.0, &SlowFailureRule::default());
        assert!(cond);
        assert_eq!((ann["abandoned"].as_str(), ann["queued"].as_str()), ("0", "2400"));
    }
}
