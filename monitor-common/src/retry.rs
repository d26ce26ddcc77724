//! The per-pool rate limit on retry events: at rates above one event per
//! [`crate::RETRY_EVENT_MIN_GAP_NS`] the retries plainly have no backoff, and the ring buffer
//! must not carry a storm's every attempt.
use crate::RETRY_EVENT_MIN_GAP_NS;

/// Whether a failed attempt that started at `connect_ns` is reported, given the start of the last
/// one reported for its pool (`last_ns`, 0 or absent for none). Concurrent connections close out
/// of order, so an attempt that started before the last one reported is "too soon" as well, not a
/// huge unsigned gap.
#[inline(always)]
pub fn due(last_ns: Option<u64>, connect_ns: u64) -> bool {
    match last_ns {
        Some(last) if last != 0 => connect_ns >= last.saturating_add(RETRY_EVENT_MIN_GAP_NS),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_gap() {
        let gap = RETRY_EVENT_MIN_GAP_NS;
        assert!(due(None, 5));
        assert!(due(Some(0), 5));
        assert!(!due(Some(1_000), 1_000 + gap - 1));
        assert!(due(Some(1_000), 1_000 + gap));
        assert!(!due(Some(1_000 + gap), 1_000), "an earlier attempt closing late");
    }
}
