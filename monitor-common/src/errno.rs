//! What the error the kernel left on a socket (`sk_err`) says about how its connection ended.
//! Linux errno values: the kernel side has no libc, and these never change.
use crate::{FAIL_ABORTED, FAIL_OTHER, FAIL_REFUSED, FAIL_TIMEOUT, FAIL_UNREACHABLE};

pub const EPIPE: i32 = 32;
pub const ENETUNREACH: i32 = 101;
pub const ECONNRESET: i32 = 104;
pub const ETIMEDOUT: i32 = 110;
pub const ECONNREFUSED: i32 = 111;
pub const EHOSTDOWN: i32 = 112;
pub const EHOSTUNREACH: i32 = 113;

/// Why a SYN_SENT socket closed (FAIL_*), from its `sk_err` (-1 when it could not be read).
#[inline(always)]
pub fn connect_failure(err: i32) -> usize {
    match err {
        // Closed by the application before the handshake finished: client-side timeouts.
        0 => FAIL_ABORTED,
        // RST answered the SYN.
        ECONNREFUSED => FAIL_REFUSED,
        // SYN retries exhausted.
        ETIMEDOUT => FAIL_TIMEOUT,
        ENETUNREACH | EHOSTDOWN | EHOSTUNREACH => FAIL_UNREACHABLE,
        _ => FAIL_OTHER,
    }
}

/// Whether an established connection ended by a reset: ECONNRESET, or EPIPE (written to after
/// the peer's RST).
#[inline(always)]
pub fn ended_by_reset(err: i32) -> bool {
    matches!(err, ECONNRESET | EPIPE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn numbers_are_the_ones_std_decodes() {
        let kind = |e| Error::from_raw_os_error(e).kind();
        assert_eq!(kind(EPIPE), ErrorKind::BrokenPipe);
        assert_eq!(kind(ENETUNREACH), ErrorKind::NetworkUnreachable);
        assert_eq!(kind(ECONNRESET), ErrorKind::ConnectionReset);
        assert_eq!(kind(ETIMEDOUT), ErrorKind::TimedOut);
        assert_eq!(kind(ECONNREFUSED), ErrorKind::ConnectionRefused);
        assert_eq!(kind(EHOSTUNREACH), ErrorKind::HostUnreachable);
        assert!(Error::from_raw_os_error(EHOSTDOWN).to_string().contains("Host is down"));
    }

    #[test]
    fn connect_failures() {
        assert_eq!(connect_failure(ECONNREFUSED), FAIL_REFUSED);
        assert_eq!(connect_failure(ETIMEDOUT), FAIL_TIMEOUT);
        for e in [ENETUNREACH, EHOSTDOWN, EHOSTUNREACH] {
            assert_eq!(connect_failure(e), FAIL_UNREACHABLE, "{e}");
        }
        assert_eq!(connect_failure(0), FAIL_ABORTED);
        assert_eq!(connect_failure(-1), FAIL_OTHER);
        assert_eq!(connect_failure(ECONNRESET), FAIL_OTHER);
    }

    #[test]
    fn resets() {
        assert!(ended_by_reset(ECONNRESET) && ended_by_reset(EPIPE));
        assert!(!ended_by_reset(0) && !ended_by_reset(ETIMEDOUT) && !ended_by_reset(-1));
    }
}
