//! Types that cross the kernel/user boundary: map keys and values, and the configuration the agent
//! writes into the eBPF object's globals before load. Everything here is `#[repr(C)]`, free of
//! `bool`, enums and padding, so both sides agree on the bytes; each type's size is pinned by a
//! compile-time assertion so a layout change fails the build instead of corrupting a map.
#![no_std]

use core::mem::size_of;

/// Marker for "offset not known": the kernel program skips a read whose offset is this.
pub const OFFSET_UNKNOWN: u32 = u32::MAX;

/// TCP states as the kernel numbers them (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_SYN_RECV: u8 = 3;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_LISTEN: u8 = 10;
pub const TCP_NEW_SYN_RECV: u8 = 12;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Byte offsets of the `struct sock` fields the probes read, resolved from the running kernel's BTF
/// at start-up (never hard-coded: they move between kernel versions and configs). Every field is an
/// offset from the start of `struct sock` unless its name says otherwise.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOffsets {
    /// `__sk_common.skc_family` (u16).
    pub family: u32,
    /// `__sk_common.skc_state` (u8).
    pub state: u32,
    /// `__sk_common.skc_num`: local port in host byte order (u16).
    pub num: u32,
    /// `__sk_common.skc_rcv_saddr`: bound IPv4 address (4 bytes, network order).
    pub rcv_saddr: u32,
    /// `__sk_common.skc_v6_rcv_saddr`: bound IPv6 address (16 bytes).
    pub v6_rcv_saddr: u32,
    /// `__sk_common.skc_net`: `struct net *` of the socket's network namespace.
    pub net: u32,
    /// Offset of `ns.inum` inside `struct net` (the namespace inode, as `/proc/<pid>/ns/net` shows).
    pub net_inum: u32,
    /// `sk_ack_backlog` (u32): accept-queue depth.
    pub ack_backlog: u32,
    /// `sk_max_ack_backlog` (u32): configured backlog.
    pub max_ack_backlog: u32,
    /// `sk_cookie` (atomic64): the socket cookie sock_diag reports as `idiag_cookie`.
    pub cookie: u32,
    /// `icsk_accept_queue.qlen` (atomic_t) counted from the start of `struct sock`
    /// (`struct inet_connection_sock` begins with it): SYN-queue length.
    pub syn_qlen: u32,
    pub _reserved: u32,
}
const _: () = assert!(size_of::<SockOffsets>() == 48);

impl SockOffsets {
    pub const UNKNOWN: Self = Self {
        family: OFFSET_UNKNOWN,
        state: OFFSET_UNKNOWN,
        num: OFFSET_UNKNOWN,
        rcv_saddr: OFFSET_UNKNOWN,
        v6_rcv_saddr: OFFSET_UNKNOWN,
        net: OFFSET_UNKNOWN,
        net_inum: OFFSET_UNKNOWN,
        ack_backlog: OFFSET_UNKNOWN,
        max_ack_backlog: OFFSET_UNKNOWN,
        cookie: OFFSET_UNKNOWN,
        syn_qlen: OFFSET_UNKNOWN,
        _reserved: 0,
    };
}

/// Offsets of tracepoint record fields, read from `/sys/kernel/tracing/events/<g>/<n>/format`.
/// Each is the byte offset of the field inside the record the tracepoint program receives.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointOffsets {
    /// `sock:sk_data_ready` → `skaddr`.
    pub data_ready_skaddr: u32,
    /// `tcp:tcp_retransmit_synack` → `skaddr` (the listener).
    pub synack_skaddr: u32,
}
const _: () = assert!(size_of::<TracepointOffsets>() == 8);

impl TracepointOffsets {
    pub const UNKNOWN: Self = Self {
        data_ready_skaddr: OFFSET_UNKNOWN,
        synack_skaddr: OFFSET_UNKNOWN,
    };
}

/// Identity of a listening socket as the kernel side sees it. `cookie` is the socket cookie
/// (`idiag_cookie`), 0 while the kernel has not assigned one yet (the agent's sock_diag scan assigns
/// it); the agent then matches on (netns, family, addr, port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub cookie: u64,
    pub netns: u32,
    pub port: u16,
    pub family: u16,
    /// IPv4 in the first 4 bytes (network order), or the full IPv6 address.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<ListenerKey>() == 32);

/// Per-CPU high-water marks for one listener since the agent last read and cleared them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerPeak {
    /// Largest accept-queue depth seen when a connection was queued.
    pub depth: u32,
    /// `sk_max_ack_backlog` at that moment.
    pub backlog: u32,
    /// Largest SYN-queue length seen.
    pub syn_queue: u32,
    pub _reserved: u32,
}
const _: () = assert!(size_of::<ListenerPeak>() == 16);

/// Per-CPU running counters for one listener; never cleared (Prometheus counters).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerCounters {
    /// Connections queued on the listener (each `sk_data_ready` on it).
    pub queued: u64,
    /// SYN-ACKs retransmitted for this listener's half-open requests.
    pub synack_retransmits: u64,
}
const _: () = assert!(size_of::<ListenerCounters>() == 16);

/// Upper bound on listeners tracked in kernel maps; LRU maps evict the coldest past this.
pub const MAX_LISTENERS: u32 = 16384;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, with no padding (sizes asserted above) and valid for any bytes.
    unsafe impl aya::Pod for super::SockOffsets {}
    unsafe impl aya::Pod for super::TracepointOffsets {}
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::ListenerPeak {}
    unsafe impl aya::Pod for super::ListenerCounters {}
}
