//! Protocol recognition from the first bytes a client sends, and the policy that decides which
//! pools are still worth watching. The kernel's cgroup_skb program applies both; they are pure so
//! host tests can feed them real protocol bytes.
use crate::{PROTO_MAX_TRIES, PROTO_POSTGRES, PROTO_REDIS, PROTO_TRIES_BASE, PROTO_UNKNOWN};

/// PROTO_* of a connection whose first payload bytes are `b`. RESP: a client command is an array,
/// `*<digits>`. PostgreSQL: a StartupMessage (protocol 3.0), an SSLRequest or a GSSENCRequest,
/// each a big-endian length followed by a well-known code.
#[inline(always)]
pub fn recognise(b: &[u8; 8]) -> u32 {
    if b[0] == b'*' && b[1].is_ascii_digit() {
        return PROTO_REDIS;
    }
    let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let code = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    let startup = code == 0x0003_0000 && (8..10_000).contains(&len);
    let negotiation = len == 8 && (code == 80_877_103 || code == 80_877_104);
    if startup || negotiation {
        return PROTO_POSTGRES;
    }
    PROTO_UNKNOWN
}

/// Whether a new connection of a pool whose PROTO_SEEN entry is `seen` should be watched. A pool
/// already classed, or whose last PROTO_MAX_TRIES connections closed without sending a byte, is
/// not: a pool that never speaks first would otherwise keep every packet paying for the lookup.
#[inline(always)]
pub fn worth_watching(seen: Option<u32>) -> bool {
    match seen {
        None => true,
        Some(seen) => (PROTO_TRIES_BASE..PROTO_TRIES_BASE + PROTO_MAX_TRIES).contains(&seen),
    }
}

/// The PROTO_SEEN value after one more connection closed without sending anything.
#[inline(always)]
pub fn after_silent_close(seen: Option<u32>) -> u32 {
    match seen {
        Some(seen) => seen.max(PROTO_TRIES_BASE) + 1,
        None => PROTO_TRIES_BASE + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first8(b: &[u8]) -> [u8; 8] {
        let mut out = [0u8; 8];
        out.copy_from_slice(&b[..8]);
        out
    }

    #[test]
    fn redis_commands() {
        assert_eq!(recognise(&first8(b"*1\r\n$4\r\nPING\r\n")), PROTO_REDIS);
        assert_eq!(recognise(&first8(b"*3\r\n$3\r\nSET\r\n")), PROTO_REDIS);
        // Inline commands and HTTP are not RESP arrays.
        assert_eq!(recognise(&first8(b"PING\r\n\0\0")), PROTO_UNKNOWN);
        assert_eq!(recognise(&first8(b"GET / HTTP/1.1")), PROTO_UNKNOWN);
        assert_eq!(recognise(&first8(b"*x\r\n\0\0\0\0")), PROTO_UNKNOWN);
    }

    #[test]
    fn postgres_openings() {
        // SSLRequest, GSSENCRequest: length 8 then the code.
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        let gss = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
        assert_eq!(recognise(&ssl), PROTO_POSTGRES);
        assert_eq!(recognise(&gss), PROTO_POSTGRES);
        // A StartupMessage of protocol 3.0, as psycopg sends it.
        let startup = [0, 0, 0, 0x54, 0, 3, 0, 0];
        assert_eq!(recognise(&startup), PROTO_POSTGRES);
        // A huge "length" or protocol 2.0 is something else.
        assert_eq!(recognise(&[0, 1, 0, 0, 0, 3, 0, 0]), PROTO_UNKNOWN);
        assert_eq!(recognise(&[0, 0, 0, 0x54, 0, 2, 0, 0]), PROTO_UNKNOWN);
        assert_eq!(recognise(&[0, 0, 0, 9, 0x04, 0xd2, 0x16, 0x2f]), PROTO_UNKNOWN);
    }

    #[test]
    fn a_pool_that_stays_silent_is_given_up_after_max_tries() {
        assert!(worth_watching(None));
        assert!(!worth_watching(Some(PROTO_REDIS)), "already classed");
        assert!(!worth_watching(Some(PROTO_UNKNOWN)), "classed as unknown");
        let mut seen = None;
        for _ in 0..PROTO_MAX_TRIES {
            seen = Some(after_silent_close(seen));
        }
        assert_eq!(seen, Some(PROTO_TRIES_BASE + PROTO_MAX_TRIES));
        assert!(!worth_watching(seen));
        assert!(worth_watching(Some(PROTO_TRIES_BASE + PROTO_MAX_TRIES - 1)));
        // A classed pool whose flow closes silently restarts the count.
        assert_eq!(after_silent_close(Some(PROTO_REDIS)), PROTO_TRIES_BASE + 1);
    }
}
