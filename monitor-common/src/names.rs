//! Names of everything the agent looks up in the eBPF object: maps, programs and the globals it
//! writes before load. Each is spelled once, here. The kernel side declares its statics through
//! macros that assert at compile time that the static's identifier equals its constant, and a
//! host test in connmon parses the built object and checks that its maps and programs are exactly
//! these, so renaming one side without the other fails the build or a test instead of exporting
//! zeros.

/// Map names (the `static`'s identifier on the kernel side).
pub mod maps {
    /// Per-CPU queued-connection and SYN-ACK retransmit counters and queue high-water marks per
    /// listening socket, by socket cookie.
    pub const LISTENERS: &str = "LISTENERS";
    /// The listener peaks' period, raised by the agent each time it reads them.
    pub const LISTEN_EPOCH: &str = "LISTEN_EPOCH";
    /// Client sockets from connect() to close.
    pub const SOCKS: &str = "SOCKS";
    /// Connections open when the agent started, by socket cookie.
    pub const SEEDED: &str = "SEEDED";
    /// Upper bound on what SEEDED still holds.
    pub const SEEDED_LEFT: &str = "SEEDED_LEFT";
    /// Pool key -> pool id (the index into the per-pool arrays below).
    pub const POOL_IDS: &str = "POOL_IDS";
    /// Pool ids free for the kernel to take (filled by the agent at load and as it forgets pools).
    pub const FREE_POOL_IDS: &str = "FREE_POOL_IDS";
    /// Per CPU, the last pool key a connect resolved and its id (`PoolIdCache`).
    pub const POOL_ID_CACHE: &str = "POOL_ID_CACHE";
    /// Raised by the agent each time it takes keys out of POOL_IDS: cached ids of an older
    /// epoch are not used.
    pub const POOL_EPOCH: &str = "POOL_EPOCH";
    /// Per-CPU counters per pool id.
    pub const POOL_STATS: &str = "POOL_STATS";
    /// Opened minus closed per pool id.
    pub const POOL_LIVE: &str = "POOL_LIVE";
    /// Highest POOL_LIVE since the agent last reset it, per pool id.
    pub const POOL_PEAK: &str = "POOL_PEAK";
    /// Handshakes completed on local listeners, by client address class.
    pub const ACCEPTS: &str = "ACCEPTS";
    /// Events the kernel side could not account, by LOST_* reason.
    pub const LOST: &str = "LOST";
    /// Flows waiting for their first payload bytes.
    pub const PENDING: &str = "PENDING";
    /// Upper bound on what PENDING holds.
    pub const PENDING_N: &str = "PENDING_N";
    /// Protocol recognised per pool.
    pub const PROTO_SEEN: &str = "PROTO_SEEN";
    /// Ring buffer of failed connects and recoveries.
    pub const RETRY_EVENTS: &str = "RETRY_EVENTS";
    /// Per-pool rate limit of retry events.
    pub const LAST_FAILED: &str = "LAST_FAILED";
    /// Pools with a reported failure not yet followed by a success.
    pub const FAILING: &str = "FAILING";
    /// Upper bound on what FAILING holds.
    pub const FAILING_N: &str = "FAILING_N";
    /// TCP children from enqueue to accept().
    pub const QUEUED_CHILDREN: &str = "QUEUED_CHILDREN";
    /// Per-CPU accept-queue waits and abandonment per (netns, address, port).
    pub const QUEUE_STATS: &str = "QUEUE_STATS";
    /// Backlog passed to listen(), by socket inode.
    pub const LISTEN_REQUESTS: &str = "LISTEN_REQUESTS";

    /// Every map, in one list (for tests and per-map metrics).
    pub const ALL: &[&str] = &[
        LISTENERS,
        LISTEN_EPOCH,
        SOCKS,
        SEEDED,
        SEEDED_LEFT,
        POOL_IDS,
        FREE_POOL_IDS,
        POOL_ID_CACHE,
        POOL_EPOCH,
        POOL_STATS,
        POOL_LIVE,
        POOL_PEAK,
        ACCEPTS,
        LOST,
        PENDING,
        PENDING_N,
        PROTO_SEEN,
        RETRY_EVENTS,
        LAST_FAILED,
        FAILING,
        FAILING_N,
        QUEUED_CHILDREN,
        QUEUE_STATS,
        LISTEN_REQUESTS,
    ];
}

/// Program names (the function's identifier on the kernel side).
pub mod programs {
    pub const SK_DATA_READY_BTF: &str = "sk_data_ready_btf";
    pub const SK_DATA_READY_TP: &str = "sk_data_ready_tp";
    pub const TCP_RETRANSMIT_SYNACK: &str = "tcp_retransmit_synack";
    pub const INET_SOCK_SET_STATE_BTF: &str = "inet_sock_set_state_btf";
    pub const INET_SOCK_SET_STATE: &str = "inet_sock_set_state";
    pub const TCP_RETRANSMIT_SKB: &str = "tcp_retransmit_skb";
    pub const TCP_RECEIVE_RESET: &str = "tcp_receive_reset";
    pub const TCP_SEND_RESET: &str = "tcp_send_reset";
    /// tp_btf twins of the three above: the socket pointer comes as an argument, without the
    /// trace record the classic tracepoint fills on every run.
    pub const TCP_RETRANSMIT_SKB_BTF: &str = "tcp_retransmit_skb_btf";
    pub const TCP_RECEIVE_RESET_BTF: &str = "tcp_receive_reset_btf";
    pub const TCP_SEND_RESET_BTF: &str = "tcp_send_reset_btf";
    pub const CLASSIFY_EGRESS: &str = "classify_egress";
    pub const ACCEPT_EXIT: &str = "accept_exit";
    pub const LISTEN_ENTER: &str = "listen_enter";
    /// fexit on inet_csk_complete_hashdance: listener peaks where sk_data_ready has no tracepoint.
    pub const QUEUED_CHILD_FEXIT: &str = "queued_child_fexit";
    /// kprobe on the same function, where fexit cannot attach.
    pub const QUEUED_CHILD_KPROBE: &str = "queued_child_kprobe";

    pub const ALL: &[&str] = &[
        SK_DATA_READY_BTF,
        SK_DATA_READY_TP,
        TCP_RETRANSMIT_SYNACK,
        INET_SOCK_SET_STATE_BTF,
        INET_SOCK_SET_STATE,
        TCP_RETRANSMIT_SKB,
        TCP_RECEIVE_RESET,
        TCP_SEND_RESET,
        TCP_RETRANSMIT_SKB_BTF,
        TCP_RECEIVE_RESET_BTF,
        TCP_SEND_RESET_BTF,
        CLASSIFY_EGRESS,
        ACCEPT_EXIT,
        LISTEN_ENTER,
        QUEUED_CHILD_FEXIT,
        QUEUED_CHILD_KPROBE,
    ];
}

/// Globals the agent writes before load (`#[no_mangle]` statics on the kernel side).
pub mod globals {
    /// [`crate::SockOffsets`].
    pub const SOCK_OFFSETS: &str = "SOCK_OFFSETS";
    /// [`crate::TaskOffsets`].
    pub const TASK_OFFSETS: &str = "TASK_OFFSETS";
    /// [`crate::TracepointOffsets`].
    pub const TP_OFFSETS: &str = "TP_OFFSETS";
    /// [`crate::StormConfig`].
    pub const STORM_CONFIG: &str = "STORM_CONFIG";
    /// [`crate::FdOffsets`].
    pub const FD_OFFSETS: &str = "FD_OFFSETS";

    pub const ALL: &[&str] = &[SOCK_OFFSETS, TASK_OFFSETS, TP_OFFSETS, STORM_CONFIG, FD_OFFSETS];
}

/// `a == b` in a const context, for the kernel side's compile-time name checks.
pub const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_spelled_as_identifiers() {
        for list in [maps::ALL, programs::ALL, globals::ALL] {
            for (i, a) in list.iter().enumerate() {
                assert!(!list[i + 1..].contains(a), "{a} listed twice");
                assert!(a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{a}");
            }
        }
    }

    #[test]
    fn same_compares_whole_strings() {
        assert!(same("SOCKS", "SOCKS"));
        assert!(!same("SOCKS", "SOCK"));
        assert!(!same("SOCKS", "SOCKZ"));
        assert!(same("", ""));
    }
}
