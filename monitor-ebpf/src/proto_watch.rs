//! The protocol recogniser's watch list: the pools probe registers a client flow when its
//! handshake completes and unregisters it at close; the cgroup_skb program looks only at
//! registered flows. A counter of pending flows lets every other packet leave after one array read.
use monitor_common::{proto, FlowKey, PoolKey};

use crate::{
    counters,
    maps::{PENDING, PENDING_N, PROTO_SEEN},
};

/// Registers a flow of `pool` unless the pool is already classed or has given up (see
/// `monitor_common::proto::worth_watching`). Returns whether the flow was registered, so the
/// close knows whether to unregister it.
pub(crate) fn watch(flow: &FlowKey, pool: &PoolKey) -> bool {
    // SAFETY: entry pointer from the map, read at once.
    let seen = PROTO_SEEN.get_ptr(pool).map(|seen| unsafe { *seen });
    if !proto::worth_watching(seen) {
        return false;
    }
    if PENDING.insert(flow, pool, 0).is_ok() {
        counters::add(&PENDING_N, 1);
        return true;
    }
    false
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
