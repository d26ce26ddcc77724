//! The programs the agent attaches, one module per feature. Each `#[tracepoint]`,
//! `#[btf_tracepoint]` or `#[cgroup_skb]` function is a thin wrapper around a `try_*` function
//! returning `Result`; the work shared between programs (maps, field access, pool tables, retry
//! events, the protocol watch list) lives in the crate's other modules, so these modules depend
//! on those and never on each other.
pub mod accept_queue;
pub mod listeners;
pub mod pools;
pub mod proto;
pub mod queued_child;
pub mod storms;
