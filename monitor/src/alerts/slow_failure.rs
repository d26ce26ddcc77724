//! AcceptQueueSlowFailure: a listener whose queue makes clients wait longer than they are willing
//! to (queue wait above the client timeout), or whose clients are seen giving up while queued.
//! Either way the server spends its time on connections nobody waits for. The annotation says
//! which backlog would fail fast instead: about accept rate × client timeout, so a client that
//! gets in is served before it gives up and the rest are refused at once.
use super::{increased, labels, Labels};
use crate::{config::SlowFailureRule, model::listeners::Listener};

/// Whether the rule holds for `l`, with its annotations. `abandoned` is the recorded series of
/// the listener's abandoned-connection counter.
pub(super) fn judge(
    l: &Listener,
    local: &str,
    abandoned: &[(f64, f64)],
    now: f64,
    rule: &SlowFailureRule,
) -> (bool, Labels) {
    let timeout = rule.client_timeout.0.as_secs_f64();
    let window = rule.window.0.as_secs_f64();
    let q = &l.queue;
    let wait = q.worst_wait();
    let (_, gave_up) = increased(abandoned, now, window);
    let too_slow = wait.is_some_and(|w| w > timeout);
    let cond = too_slow || gave_up >= rule.min_abandoned;
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
