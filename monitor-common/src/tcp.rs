//! Which TCP state transitions the pools probe acts on, and as what. Half of a connection's
//! transitions (FIN_WAIT1, FIN_WAIT2, LAST_ACK, ...) are not among them: the probe leaves on
//! those before reading anything, so this check sits first on the hot path.
use crate::{TCP_CLOSE, TCP_CLOSE_WAIT, TCP_CLOSING, TCP_ESTABLISHED, TCP_LAST_ACK, TCP_SYN_RECV, TCP_SYN_SENT};

/// What a transition means to the pools probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// CLOSE -> SYN_SENT: connect(), in the caller's process context.
    Connect,
    /// SYN_RECV -> ESTABLISHED: a handshake completed on a local listener.
    Accept,
    /// SYN_SENT -> anything: the client's handshake ended (ESTABLISHED, or CLOSE on failure).
    HandshakeEnd,
    /// ESTABLISHED -> CLOSE_WAIT: the peer hung up first. Only a child still in an accept queue
    /// needs this transition (its client gave up); a client socket's close tells the same from
    /// its old state (`peer_closed_first`), so no record is touched here.
    PeerClosed,
    /// Anything else -> CLOSE.
    Close,
    Ignored,
}

/// The meaning of `old` -> `new` (kernel TCP state numbers).
#[inline(always)]
pub fn transition(old: u8, new: u8) -> Transition {
    if old == TCP_CLOSE && new == TCP_SYN_SENT {
        Transition::Connect
    } else if old == TCP_SYN_RECV && new == TCP_ESTABLISHED {
        Transition::Accept
    } else if old == TCP_SYN_SENT {
        Transition::HandshakeEnd
    } else if old == TCP_ESTABLISHED && new == TCP_CLOSE_WAIT {
        Transition::PeerClosed
    } else if new == TCP_CLOSE {
        Transition::Close
    } else {
        Transition::Ignored
    }
}

/// At the transition to CLOSE, whether the peer hung up before this end did, from the state
/// left (`old`): CLOSE_WAIT and LAST_ACK come only after the peer's FIN (ESTABLISHED ->
/// CLOSE_WAIT), CLOSING only after a simultaneous close (FIN_WAIT1 -> CLOSING: the peer's FIN
/// left before it saw ours, so it hung up too). A client that closes as soon as it has read the
/// server's refusal (libpq after "too many clients") often closes before the server's FIN is in.
/// A client that closed first leaves from FIN_WAIT1, FIN_WAIT2 or ESTABLISHED (an abort).
#[inline(always)]
pub fn peer_closed_first(old: u8) -> bool {
    old == TCP_CLOSE_WAIT || old == TCP_LAST_ACK || old == TCP_CLOSING
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TCP_LISTEN, TCP_NEW_SYN_RECV};

    const FIN_WAIT1: u8 = 4;
    const FIN_WAIT2: u8 = 5;
    const TIME_WAIT: u8 = 6;

    #[test]
    fn a_client_connection_lifecycle() {
        use Transition::*;
        // connect, handshake, the server closes first, the client closes.
        assert_eq!(transition(TCP_CLOSE, TCP_SYN_SENT), Connect);
        assert_eq!(transition(TCP_SYN_SENT, TCP_ESTABLISHED), HandshakeEnd);
        assert_eq!(transition(TCP_ESTABLISHED, TCP_CLOSE_WAIT), PeerClosed);
        assert_eq!(transition(TCP_CLOSE_WAIT, TCP_LAST_ACK), Ignored);
        assert_eq!(transition(TCP_LAST_ACK, TCP_CLOSE), Close);
        // A refused or timed-out connect ends the handshake, not a connection.
        assert_eq!(transition(TCP_SYN_SENT, TCP_CLOSE), HandshakeEnd);
        // The client closing first.
        assert_eq!(transition(TCP_ESTABLISHED, FIN_WAIT1), Ignored);
        assert_eq!(transition(FIN_WAIT1, FIN_WAIT2), Ignored);
        assert_eq!(transition(FIN_WAIT2, TIME_WAIT), Ignored);
        assert_eq!(transition(TCP_ESTABLISHED, TCP_CLOSE), Close);
        // Both closing at once: nothing to do until the close.
        assert_eq!(transition(FIN_WAIT1, TCP_CLOSING), Ignored);
        assert_eq!(transition(TCP_CLOSING, TIME_WAIT), Ignored);
        assert_eq!(transition(TCP_CLOSING, TCP_CLOSE), Close);
    }

    #[test]
    fn who_hung_up_first_shows_in_the_state_a_close_leaves() {
        // The peer first: CLOSE_WAIT -> TCP_LAST_ACK -> CLOSE, or an abort from CLOSE_WAIT.
        assert!(peer_closed_first(TCP_LAST_ACK));
        assert!(peer_closed_first(TCP_CLOSE_WAIT));
        // Both at once.
        assert!(peer_closed_first(TCP_CLOSING));
        // This end first (the full socket closes on entering TIME_WAIT from FIN_WAIT2), or an
        // abort or reset while established or closing.
        for old in [FIN_WAIT2, FIN_WAIT1, TCP_ESTABLISHED, TCP_SYN_SENT, TCP_LISTEN] {
            assert!(!peer_closed_first(old), "{old}");
        }
    }

    #[test]
    fn server_side_transitions() {
        assert_eq!(transition(TCP_SYN_RECV, TCP_ESTABLISHED), Transition::Accept);
        assert_eq!(transition(TCP_CLOSE, TCP_LISTEN), Transition::Ignored);
        assert_eq!(transition(TCP_LISTEN, TCP_CLOSE), Transition::Close);
        assert_eq!(transition(TCP_NEW_SYN_RECV, TCP_SYN_RECV), Transition::Ignored);
    }
}
