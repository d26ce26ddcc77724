//! Types that cross the kernel/user boundary: map keys and values, and the configuration the agent
//! writes into the eBPF object's globals before load. Everything here is `#[repr(C)]`, free of
//! `bool`, enums and padding, so both sides agree on the bytes; each type's size is pinned by a
//! compile-time assertion so a layout change fails the build instead of corrupting a map.
//!
//! Besides the types: the names of every map, program and global ([`names`]), and the pure
//! decisions the kernel programs make ([`hist`], [`addr`], [`proto`], [`errno`], [`tcp`],
//! [`retry`]), kept here so host unit tests run them and the agent can share them.
#![cfg_attr(not(test), no_std)]

pub mod addr;
pub mod errno;
pub mod hist;
pub mod names;
pub mod proto;
pub mod retry;
pub mod tcp;

use core::mem::size_of;

/// Marker for "offset not known": the kernel program skips a read whose offset is this.
pub const OFFSET_UNKNOWN: u32 = u32::MAX;

/// TCP states as the kernel numbers them (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_SYN_RECV: u8 = 3;
pub const TCP_FIN_WAIT1: u8 = 4;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_LAST_ACK: u8 = 9;
pub const TCP_LISTEN: u8 = 10;
pub const TCP_CLOSING: u8 = 11;
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
    /// `sk_err` (int): the error a failed connect ended with (ECONNREFUSED, ETIMEDOUT, ...).
    pub err: u32,
    /// `__sk_common.skc_daddr`: peer IPv4 address (4 bytes, network order).
    pub daddr: u32,
    /// `__sk_common.skc_dport`: peer port (u16, network order).
    pub dport: u32,
    /// `__sk_common.skc_v6_daddr`: peer IPv6 address (16 bytes).
    pub v6_daddr: u32,
    /// `sk_protocol` (u16 since Linux 5.6; a bitfield before, which BTF offsets cannot reach).
    pub protocol: u32,
}
const _: () = assert!(size_of::<SockOffsets>() == 64);

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
        err: OFFSET_UNKNOWN,
        daddr: OFFSET_UNKNOWN,
        dport: OFFSET_UNKNOWN,
        v6_daddr: OFFSET_UNKNOWN,
        protocol: OFFSET_UNKNOWN,
    };
}

/// Offsets into `struct task_struct`, from BTF: the process (thread-group leader) name is the
/// workload's name; the calling thread's own name (`tokio-runtime-w`, `java`) often is not.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskOffsets {
    pub group_leader: u32,
    pub comm: u32,
}
const _: () = assert!(size_of::<TaskOffsets>() == 8);

impl TaskOffsets {
    pub const UNKNOWN: Self = Self { group_leader: OFFSET_UNKNOWN, comm: OFFSET_UNKNOWN };
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
    /// `sock:inet_sock_set_state` fields.
    pub state: StateTpOffsets,
    /// `tcp:tcp_retransmit_skb` → `skaddr`, `state`.
    pub retrans_skaddr: u32,
    pub retrans_state: u32,
    /// `tcp:tcp_receive_reset` → `skaddr`.
    pub rx_reset_skaddr: u32,
    /// `tcp:tcp_send_reset` → `skaddr` (NULL for resets not sent on behalf of a socket).
    pub tx_reset_skaddr: u32,
}
const _: () = assert!(size_of::<TracepointOffsets>() == 72);

/// Record offsets of `sock:inet_sock_set_state`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateTpOffsets {
    pub skaddr: u32,
    pub oldstate: u32,
    pub newstate: u32,
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub protocol: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
    pub _reserved: u32,
}
const _: () = assert!(size_of::<StateTpOffsets>() == 48);

impl TracepointOffsets {
    pub const UNKNOWN: Self = Self {
        data_ready_skaddr: OFFSET_UNKNOWN,
        synack_skaddr: OFFSET_UNKNOWN,
        state: StateTpOffsets {
            skaddr: OFFSET_UNKNOWN,
            oldstate: OFFSET_UNKNOWN,
            newstate: OFFSET_UNKNOWN,
            sport: OFFSET_UNKNOWN,
            dport: OFFSET_UNKNOWN,
            family: OFFSET_UNKNOWN,
            protocol: OFFSET_UNKNOWN,
            saddr: OFFSET_UNKNOWN,
            daddr: OFFSET_UNKNOWN,
            saddr_v6: OFFSET_UNKNOWN,
            daddr_v6: OFFSET_UNKNOWN,
            _reserved: 0,
        },
        retrans_skaddr: OFFSET_UNKNOWN,
        retrans_state: OFFSET_UNKNOWN,
        rx_reset_skaddr: OFFSET_UNKNOWN,
        tx_reset_skaddr: OFFSET_UNKNOWN,
    };
}

/// Storm-detection settings written by the agent before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StormConfig {
    /// Connections that close within this time of their handshake count as short-lived.
    pub short_lived_ns: u64,
}
const _: () = assert!(size_of::<StormConfig>() == 8);

impl StormConfig {
    pub const DEFAULT: Self = Self { short_lived_ns: 1_000_000_000 };
}

/// A failed connect, or the first successful connect after failures, of a pool: the raw material
/// of the backoff and jitter estimates. Only failures produce these, so healthy churn costs none.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryEvent {
    pub pool: PoolKey,
    pub ts_ns: u64,
    /// RETRY_FAILED or RETRY_RECOVERED.
    pub kind: u32,
    /// FAIL_* for failures.
    pub reason: u32,
}
const _: () = assert!(size_of::<RetryEvent>() == 64);

pub const RETRY_FAILED: u32 = 0;
pub const RETRY_RECOVERED: u32 = 1;
/// Size of the retry-event ring buffer (power of two, a multiple of the page size): 16k events
/// between the agent's 1 s drains, with each pool sending at most 100 a second.
pub const RETRY_RING_BYTES: u32 = 1024 * 1024;

/// Identity of a listening socket as the agent matches it. `cookie` is the socket cookie
/// (`idiag_cookie`); 0 when the kernel side keyed the listener by socket address because it had
/// no cookie yet (see [`LISTENER_BY_ADDRESS`]), and the agent then matches on (netns, family,
/// addr, port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub cookie: u64,
    pub netns: u32,
    pub port: u16,
    pub family: u16,
    /// IPv4 in the first 4 bytes (network order), or the full IPv6 address.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<ListenerKey>() == 32);

/// High-water marks for one listener (per CPU in the kernel, max over CPUs in the agent).
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

impl ListenerPeak {
    /// Raises each mark to the given value where that is higher.
    #[inline(always)]
    pub fn raise(&mut self, depth: u32, backlog: u32, syn_queue: u32) {
        if depth > self.depth {
            self.depth = depth;
        }
        if backlog > self.backlog {
            self.backlog = backlog;
        }
        if syn_queue > self.syn_queue {
            self.syn_queue = syn_queue;
        }
    }
}

/// Running counters for one listener, summed over CPUs; never cleared (Prometheus counters).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerCounters {
    /// Connections queued on the listener (each `sk_data_ready` on it).
    pub queued: u64,
    /// SYN-ACKs retransmitted for this listener's half-open requests.
    pub synack_retransmits: u64,
}
const _: () = assert!(size_of::<ListenerCounters>() == 16);

/// One CPU's figures for one listening socket in LISTENERS, keyed by socket cookie (or by socket
/// address, see [`LISTENER_BY_ADDRESS`]). Counters only grow. The peaks belong to the period
/// `epoch` names: the agent starts a new period by raising LISTEN_EPOCH instead of deleting
/// entries, and the kernel side restarts a CPU's peaks when it finds them from an older period,
/// so one map operation per event serves both.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// LISTEN_EPOCH when `peak` was last written on this CPU.
    pub epoch: u64,
    pub counters: ListenerCounters,
    pub peak: ListenerPeak,
    /// Set (family non-zero) only for entries keyed by socket address: the listener's name.
    pub name: ListenerKey,
}
const _: () = assert!(size_of::<ListenerStats>() == 72);

impl ListenerStats {
    /// Folds one event's marks in, restarting them if they are from an older period.
    #[inline(always)]
    pub fn raise(&mut self, epoch: u64, depth: u32, backlog: u32, syn_queue: u32) {
        if self.epoch != epoch {
            self.epoch = epoch;
            self.peak = ListenerPeak { depth, backlog, syn_queue, _reserved: 0 };
        } else {
            self.peak.raise(depth, backlog, syn_queue);
        }
    }
}

/// A LISTENERS key with this bit set is a socket's kernel address, not its cookie: the kernel side
/// had no cookie for it (hooks without the `bpf_get_socket_cookie` helper, before the agent's
/// first scan of the listener) and wrote the listener's name into the value. Cookies come from a
/// counter and never reach this bit; kernel addresses (upper half of the address space on x86-64
/// and arm64) always have it.
pub const LISTENER_BY_ADDRESS: u64 = 1 << 63;

/// A connection pool as the kernel aggregates it: the workload that called connect() (cgroup and
/// command name, captured in process context at the SYN_SENT transition) and the destination as
/// it dialled it, within one network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub cgroup_id: u64,
    pub netns: u32,
    pub dport: u16,
    pub family: u16,
    pub daddr: [u8; 16],
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<PoolKey>() == 48);

/// One CPU's memory of the last pool key a connect() resolved to an id (POOL_ID_CACHE), so a
/// pool that connects again on this CPU skips the POOL_IDS hash lookup on its 48-byte key.
/// Valid only while `epoch` equals POOL_EPOCH, which the agent raises after it takes keys out
/// of POOL_IDS: an id it is about to recycle is never served from here.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolIdCache {
    pub key: PoolKey,
    pub epoch: u64,
    pub id: u32,
    /// Non-zero once `key` and `id` were written (the zeroed entry matches no pool).
    pub filled: u32,
}
const _: () = assert!(size_of::<PoolIdCache>() == 64);

/// Failure reasons of a connect, from `sk_err` when the SYN_SENT socket closed.
pub const FAIL_REFUSED: usize = 0;
pub const FAIL_TIMEOUT: usize = 1;
pub const FAIL_UNREACHABLE: usize = 2;
/// Closed by the application before the handshake finished (sk_err 0): client-side timeouts.
pub const FAIL_ABORTED: usize = 3;
pub const FAIL_OTHER: usize = 4;
pub const FAIL_REASONS: usize = 5;
/// Not connect failures: the `reason` of a RetryEvent for a connection that died young, reset by
/// the server or hung up by it first.
pub const FAIL_DIED_RESET: usize = 5;
pub const FAIL_DIED_SERVER_CLOSED: usize = 6;
/// Retry events of one pool closer together than this are not sent: at such rates the retries
/// plainly have no backoff, and the ring buffer must not carry a storm's every attempt.
pub const RETRY_EVENT_MIN_GAP_NS: u64 = 10_000_000;

/// Histogram buckets: bucket i counts values below 4^(i+1) units (µs for connect time, ms for
/// lifetime); the last bucket counts everything larger.
pub const HIST_BUCKETS: usize = 12;

/// Per-CPU running counters of one pool; never cleared.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// connect() calls (CLOSE -> SYN_SENT).
    pub attempts: u64,
    /// Handshakes completed (SYN_SENT -> ESTABLISHED).
    pub opens: u64,
    /// Established connections that closed (including ones seeded at start-up).
    pub closes: u64,
    /// Connects that failed, by reason (FAIL_*).
    pub failures: [u64; FAIL_REASONS],
    /// Connect latency histogram (µs buckets).
    pub connect_us: [u64; HIST_BUCKETS],
    /// Sum of connect latencies, µs.
    pub connect_us_sum: u64,
    /// Connection lifetime histogram (ms buckets), for connections opened while probed.
    pub lifetime_ms: [u64; HIST_BUCKETS],
    /// Sum of lifetimes, ms.
    pub lifetime_ms_sum: u64,
    /// SYNs of the pool's connects retransmitted (the server did not answer in time).
    pub syn_retransmits: u64,
    /// Resets received and sent on the pool's connections (received includes refused connects).
    pub resets_received: u64,
    pub resets_sent: u64,
    /// Connections that closed within StormConfig::short_lived_ns of their handshake.
    pub short_lived: u64,
    /// Short-lived connections the server reset: they "died young" (hard evidence of rejection).
    pub died_reset: u64,
    /// Short-lived connections the server hung up first. Soft evidence: a server rejecting
    /// clients looks like this, and so does a server that closes after each response.
    pub died_server_closed: u64,
    /// Not a counter (never summed): non-zero once this CPU found the pool's protocol settled
    /// (recognised, or given up on), so its later handshakes on this CPU skip the PROTO_SEEN
    /// lookup. Kept here because the handshake looks these counters up anyway.
    pub proto_settled: u64,
    /// Not a counter (never summed): the start of the pool's last reported retry event as this
    /// CPU last read or wrote it in LAST_FAILED. That value only grows (short of an LRU
    /// eviction), so this copy is never newer: when it already says "too soon" (`retry::due`),
    /// so would the table, and the close of a connection that died young skips the lookup.
    pub retry_last_ns: u64,
}
const _: () = assert!(size_of::<PoolStats>() == 8 * (3 + FAIL_REASONS + 2 * HIST_BUCKETS + 2 + 6 + 2));

/// What the kernel remembers of one client socket between its transitions.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockInfo {
    pub pool: PoolKey,
    /// When connect() was called (bpf_ktime_get_ns).
    pub connect_ns: u64,
    /// When the handshake completed; 0 until then.
    pub established_ns: u64,
    /// Local address and port, recorded at ESTABLISHED (the port may still be 0 at connect()):
    /// lets the agent tell sockets it already tracks from ones to seed.
    pub saddr: [u8; 16],
    pub sport: u16,
    /// SOCK_* flags.
    pub flags: u16,
    /// The pool's index in the per-pool arrays (POOL_STATS, POOL_LIVE, POOL_PEAK), resolved from
    /// POOL_IDS once at connect(); `pool` stays for the tables keyed by pool (retry events,
    /// protocol recognition) and for the agent.
    pub pool_id: u32,
}
const _: () = assert!(size_of::<SockInfo>() == 88);

/// The flow was registered with the protocol recogniser and may still be pending there.
pub const SOCK_PROTO_PENDING: u16 = 2;
// Bit 1 once marked a peer that hung up first; a close's old state tells that now
// (`tcp::peer_closed_first`).

/// Events the kernel side could not account, by reason (index into the LOST array).
pub const LOST_SOCK_TABLE_FULL: u32 = 0;
/// A client socket finished its handshake but is not in the socket table (its connect() was refused
/// a table entry, or happened before the probe attached).
pub const LOST_SOCK_UNTRACKED: u32 = 1;
pub const LOST_POOL_TABLE_FULL: u32 = 2;
pub const LOST_REASONS: u32 = 7;

/// Default sizes of the socket and pool tables (the agent can override the socket table at load).
/// MAX_POOLS bounds the pool ids: POOL_IDS, the free-id queue and the per-pool arrays.
pub const MAX_SOCKS: u32 = 65536;
pub const MAX_POOLS: u32 = 4096;

/// Server side: handshakes completed on a local listener, by client address class.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AcceptKey {
    pub netns: u32,
    pub port: u16,
    pub family: u16,
    pub addr: [u8; 16],
    /// CLIENT_* below.
    pub client_class: u32,
    pub _reserved: u32,
}
const _: () = assert!(size_of::<AcceptKey>() == 32);

pub const CLIENT_LOOPBACK: u32 = 0;
pub const CLIENT_PRIVATE: u32 = 1;
pub const CLIENT_LINK_LOCAL: u32 = 2;
pub const CLIENT_PUBLIC: u32 = 3;

/// A TCP flow as seen on an egress packet: addresses (IPv4 in the first 4 bytes; IPv4-mapped
/// IPv6 sockets are normalised to IPv4, as their packets are), ports in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub _reserved: u16,
}
const _: () = assert!(size_of::<FlowKey>() == 40);

/// Protocols recognised from a connection's first bytes.
pub const PROTO_UNKNOWN: u32 = 0;
pub const PROTO_REDIS: u32 = 1;
pub const PROTO_POSTGRES: u32 = 2;

/// Flows waiting for their first payload to be classified.
pub const MAX_PENDING_FLOWS: u32 = 4096;
/// PROTO_SEEN values from this up count a pool's connections that closed before sending
/// anything; after PROTO_MAX_TRIES of them the pool is no longer watched (classed by port).
pub const PROTO_TRIES_BASE: u32 = 0x100;
pub const PROTO_MAX_TRIES: u32 = 3;

/// Events the kernel side could not deliver: the retry ring buffer was full.
pub const LOST_RETRY_RING_FULL: u32 = 3;
/// A connection closed whose handshake the probe never saw: its close is not counted.
pub const LOST_UNSEEN_HANDSHAKE: u32 = 4;
/// A close the probe missed, found when the socket's memory was reused for a new connect(): the
/// close is counted then (without a lifetime).
pub const LOST_MISSED_CLOSE: u32 = 5;

/// A TCP connection accepted with no enqueue time: the kernel's stamp was 0, or, on the
/// QUEUED_CHILDREN fallback, its enqueue was not seen (queued before the probe attached, or
/// evicted by a longer queue than the map holds). No wait measured.
pub const LOST_QUEUE_UNTRACKED: u32 = 6;

/// Offsets (from BTF) for following a file descriptor of the calling process to its socket:
/// `current->files->fdt->fd[n]->private_data` is the `struct socket *`, `->sk` its sock.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdOffsets {
    /// `task_struct.files`.
    pub task_files: u32,
    /// `files_struct.fdt`.
    pub files_fdt: u32,
    /// `fdtable.fd` (array of `struct file *`).
    pub fdt_fd: u32,
    /// `fdtable.max_fds`.
    pub fdt_max_fds: u32,
    /// `file.private_data` (the `struct socket *` of a socket file).
    pub file_private: u32,
    /// `file.f_inode`.
    pub file_inode: u32,
    /// `inode.i_ino`: the socket inode sock_diag reports.
    pub inode_ino: u32,
    /// `socket.sk`.
    pub socket_sk: u32,
    /// `sock.sk_socket`: NULL while a child socket waits in an accept queue (no process owns it).
    pub sock_socket: u32,
    /// Record offsets of `syscalls:sys_exit_accept4` / `sys_exit_accept` → `ret`, and of
    /// `syscalls:sys_enter_listen` → `fd`, `backlog`, from their format files.
    pub accept_ret: u32,
    pub listen_fd: u32,
    pub listen_backlog: u32,
    /// `tcp_sock.rcvq_space.time` (u64, µs on CLOCK_MONOTONIC, `tcp_clock_us`): the kernel's own
    /// stamp of when a passive child joined its accept queue. `tcp_init_buffer_space` sets it
    /// (after a `tcp_mstamp_refresh`) when the handshake completes, or when a TCP Fast Open child
    /// is created and queued; only `tcp_rcv_space_adjust`, which runs as the owner reads data,
    /// moves it later. Unknown: the accept probe falls back to QUEUED_CHILDREN.
    pub child_stamp: u32,
    /// `inet_sock.inet_sport` (be16): a child's local port, which stays when a reset releases
    /// `skc_num` (0 after `inet_put_port`).
    pub inet_sport: u32,
}
const _: () = assert!(size_of::<FdOffsets>() == 56);

impl FdOffsets {
    pub const UNKNOWN: Self = Self {
        task_files: OFFSET_UNKNOWN,
        files_fdt: OFFSET_UNKNOWN,
        fdt_fd: OFFSET_UNKNOWN,
        fdt_max_fds: OFFSET_UNKNOWN,
        file_private: OFFSET_UNKNOWN,
        file_inode: OFFSET_UNKNOWN,
        inode_ino: OFFSET_UNKNOWN,
        socket_sk: OFFSET_UNKNOWN,
        sock_socket: OFFSET_UNKNOWN,
        accept_ret: OFFSET_UNKNOWN,
        listen_fd: OFFSET_UNKNOWN,
        listen_backlog: OFFSET_UNKNOWN,
        child_stamp: OFFSET_UNKNOWN,
        inet_sport: OFFSET_UNKNOWN,
    };
}

/// The local end of a passive (accepted) TCP connection: the listener it was queued on, as
/// (netns, address, port); the agent finds the listener with the same rule as for accepts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QueueKey {
    pub netns: u32,
    pub port: u16,
    pub family: u16,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<QueueKey>() == 24);

/// A child socket waiting in an accept queue: when it was queued (its SYN_RECV -> ESTABLISHED
/// transition, right after the kernel adds it to the queue) and where.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuedChild {
    pub enqueued_ns: u64,
    pub key: QueueKey,
}
const _: () = assert!(size_of::<QueuedChild>() == 32);

/// Per-CPU running counters of one accept queue; never cleared.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Connections taken by accept() whose enqueue was seen.
    pub accepted: u64,
    /// Sum of their waits in the queue, ns.
    pub wait_ns_sum: u64,
    /// Children whose client sent FIN while still queued (ESTABLISHED -> CLOSE_WAIT, no owner).
    pub abandoned_fin: u64,
    /// Children reset by their client while still queued (ESTABLISHED -> CLOSE with ECONNRESET).
    pub abandoned_rst: u64,
    /// Connections accept() returned already closed or reset by their client.
    pub accepted_closed: u64,
    pub _reserved: u64,
    /// Wait histogram: bucket i counts waits below 4^(i+1) µs (as the pools' connect times).
    pub wait_us: [u64; HIST_BUCKETS],
}
const _: () = assert!(size_of::<QueueStats>() == 8 * (6 + HIST_BUCKETS));

/// Child sockets followed from enqueue to accept at once; the map is LRU, so children that are
/// never accepted (their listener closed) age out.
pub const MAX_QUEUED_CHILDREN: u32 = 16384;

/// Upper bound on listeners tracked in kernel maps; LRU maps evict the coldest past this.
pub const MAX_LISTENERS: u32 = 16384;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, with no padding (sizes asserted above) and valid for any bytes.
    unsafe impl aya::Pod for super::SockOffsets {}
    unsafe impl aya::Pod for super::TracepointOffsets {}
    unsafe impl aya::Pod for super::TaskOffsets {}
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::ListenerPeak {}
    unsafe impl aya::Pod for super::ListenerCounters {}
    unsafe impl aya::Pod for super::ListenerStats {}
    unsafe impl aya::Pod for super::PoolKey {}
    unsafe impl aya::Pod for super::PoolStats {}
    unsafe impl aya::Pod for super::SockInfo {}
    unsafe impl aya::Pod for super::AcceptKey {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::StormConfig {}
    unsafe impl aya::Pod for super::RetryEvent {}
    unsafe impl aya::Pod for super::FdOffsets {}
    unsafe impl aya::Pod for super::QueueKey {}
    unsafe impl aya::Pod for super::QueuedChild {}
    unsafe impl aya::Pod for super::QueueStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_only_rise() {
        let mut p = ListenerPeak { depth: 5, backlog: 128, syn_queue: 0, _reserved: 0 };
        p.raise(3, 128, 7);
        assert_eq!((p.depth, p.backlog, p.syn_queue), (5, 128, 7));
        p.raise(9, 4096, 0);
        assert_eq!((p.depth, p.backlog, p.syn_queue), (9, 4096, 7));
    }

    #[test]
    fn listener_peaks_restart_in_a_new_epoch() {
        let mut s = ListenerStats::default();
        s.raise(0, 5, 128, 2);
        s.raise(0, 3, 128, 1);
        assert_eq!((s.peak.depth, s.peak.syn_queue), (5, 2));
        s.raise(1, 3, 128, 1);
        assert_eq!((s.epoch, s.peak.depth, s.peak.syn_queue), (1, 3, 1));
    }
}
