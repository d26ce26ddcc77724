//! The protocol recogniser's watch list: the pools probe registers a client flow when its
//! handshake completes and unregisters it at close; the cgroup_skb program looks only at
//! registered flows. A counter of pending flows lets every other packet leave after one array read.
use monitor_common::{proto, FlowKey, PoolKey};

use crate::{
    counters,
    maps::{PENDING, PENDING_N, PROTO_SEEN},
};

/// What `watch` did with a flow.
pub(crate) enum Watch {
    /// Registered: the close must unregister it.
    Registered,
    /// Not registered, and no later flow of the pool will be: its protocol is known, or it has
    /// given up (see `monitor_common::proto::worth_watching`).
    Settled,
    /// Not registered this time (the watch list refused it).
    NotNow,
}

/// Registers a flow of `pool` unless the pool is already classed or has given up.
pub(crate) fn watch(flow: &FlowKey, pool: &PoolKey) -> Watch {
    // SAFETY: entry pointer from the map, read at once.
    let seen = PROTO_SEEN.get_ptr(pool).map(|seen| unsafe { *seen });
    if !proto::worth_watching(seen) {
        return Watch::Settled;
    }
    if PENDING.insert(flow, pool, 0).is_ok() {
        counters::add(&PENDING_N, 1);
        return Watch::Registered;
    }
    Watch::NotNow
}

/// Called by the pools probe when a client connection closes; a flow still pending sent nothing.
pub(crate) fn unwatch(flow: &FlowKey, pool: &PoolKey) {
    if PENDING.remove(flow).is_ok() {
        counters::add(&PENDING_N, -1);
        // SAFETY: as above.
        let seen = PROTO_SEEN.get_ptr(pool).map(|seen| unsafe { *seen });
        let _ = PROTO_SEEN.insert(pool, &proto::after_silent_close(seen), 0);
    }
}
