//! Every map and every loader-written global of the kernel programs, in one place, each declared
//! through a macro that checks at compile time that its identifier (the name the agent looks up)
//! equals its constant in `monitor_common::names`. Program modules and helpers use these; none of
//! them declares its own.
use aya_ebpf::maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, Queue, RingBuf};
use monitor_common::{
    AcceptKey, FdOffsets, FlowKey, ListenerStats, PoolIdCache, PoolKey, PoolStats, QueueKey, QueueStats, QueuedChild,
    SockInfo, SockOffsets, StormConfig, TaskOffsets, TracepointOffsets, LOST_REASONS, MAX_LISTENERS, MAX_PENDING_FLOWS,
    MAX_POOLS, MAX_QUEUED_CHILDREN, MAX_SOCKS, RETRY_RING_BYTES,
};

/// A map whose identifier must equal `monitor_common::names::maps::<identifier>`.
macro_rules! declare_map {
    ($(#[$meta:meta])* $name:ident: $ty:ty = $init:expr;) => {
        $(#[$meta])*
        #[aya_ebpf::macros::map]
        pub(crate) static $name: $ty = $init;
        const _: () = assert!(
            monitor_common::names::same(stringify!($name), monitor_common::names::maps::$name),
            "map identifier differs from its name in monitor_common::names::maps"
        );
    };
}

/// A global the agent writes before load; its identifier must equal
/// `monitor_common::names::globals::<identifier>`. Read it through `off!`/`read_volatile` so the
/// compiler cannot fold the placeholder value into the program.
macro_rules! declare_global {
    ($(#[$meta:meta])* $name:ident: $ty:ty = $init:expr;) => {
        $(#[$meta])*
        #[no_mangle]
        pub(crate) static $name: $ty = $init;
        const _: () = assert!(
            monitor_common::names::same(stringify!($name), monitor_common::names::globals::$name),
            "global identifier differs from its name in monitor_common::names::globals"
        );
    };
}

/// Checks that program function `$f` exists and is named `monitor_common::names::programs::$name`.
macro_rules! check_program_name {
    ($f:ident, $name:ident) => {
        const _: () = {
            let _ = $f;
            assert!(
                monitor_common::names::same(stringify!($f), monitor_common::names::programs::$name),
                "program function differs from its name in monitor_common::names::programs"
            );
        };
    };
}
pub(crate) use check_program_name;

/// One offset from the loader-written globals. Field by field, because copying the whole struct
/// costs stack the verifier caps at 512 bytes.
macro_rules! off {
    ($($path:tt)+) => {
        // SAFETY: a plain read of a static the loader initialised.
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::$($path)+) }
    };
}
pub(crate) use off;

// Globals: resolved by the agent for the running kernel.
declare_global! { SOCK_OFFSETS: SockOffsets = SockOffsets::UNKNOWN; }
declare_global! { TASK_OFFSETS: TaskOffsets = TaskOffsets::UNKNOWN; }
declare_global! { TP_OFFSETS: TracepointOffsets = TracepointOffsets::UNKNOWN; }
declare_global! { STORM_CONFIG: StormConfig = StormConfig::DEFAULT; }
declare_global! { FD_OFFSETS: FdOffsets = FdOffsets::UNKNOWN; }

// Listeners.
declare_map! {
    /// One entry per listening socket, by socket cookie: 8-byte keys and one map operation per
    /// queued connection. LRU, so listeners that closed age out.
    LISTENERS: LruPerCpuHashMap<u64, ListenerStats> = LruPerCpuHashMap::with_max_entries(MAX_LISTENERS, 0);
}
declare_map! {
    /// The agent's current peak period (`ListenerStats::epoch`).
    LISTEN_EPOCH: Array<u64> = Array::with_max_entries(1, 0);
}

// Pools.
declare_map! {
    /// Client sockets from connect() to close. Not LRU: evicting a live socket would lose its close
    /// and leave its pool's count too high forever; a full table instead refuses new sockets, which
    /// are then not counted at all, and says so in LOST.
    SOCKS: HashMap<u64, SockInfo> = HashMap::with_max_entries(MAX_SOCKS, 0);
}
declare_map! {
    /// Connections open when the agent started, by socket cookie; filled by the agent from
    /// sock_diag, emptied here as they close.
    SEEDED: HashMap<u64, PoolKey> = HashMap::with_max_entries(MAX_SOCKS, 0);
}
declare_map! {
    /// Seeded connections the kernel has not yet seen close: the agent sets it when it seeds, only
    /// the kernel side decrements it, so it never falls below what SEEDED holds.
    SEEDED_LEFT: Array<i64> = Array::with_max_entries(1, 0);
}
declare_map! {
    /// Pool key -> pool id, the index into the per-pool arrays. Not LRU, for the same reason as
    /// SOCKS: the agent removes idle pools; a full table is counted in LOST (pool_table_full).
    POOL_IDS: HashMap<PoolKey, u32> = HashMap::with_max_entries(MAX_POOLS, 0);
}
declare_map! {
    /// Ids no pool holds: all of 0..MAX_POOLS at load (the agent pushes them before attaching),
    /// then the ids of forgotten pools, zeroed, a collect cycle after they were forgotten.
    FREE_POOL_IDS: Queue<u32> = Queue::with_max_entries(MAX_POOLS, 0);
}
declare_map! {
    /// Per CPU, the last pool a connect() resolved (`pool_table::pool_id`).
    POOL_ID_CACHE: PerCpuArray<PoolIdCache> = PerCpuArray::with_max_entries(1, 0);
}
declare_map! {
    /// Raised by the agent after it takes keys out of POOL_IDS; cached ids of an older epoch are
    /// looked up again.
    POOL_EPOCH: Array<u64> = Array::with_max_entries(1, 0);
}
declare_map! {
    POOL_STATS: PerCpuArray<PoolStats> = PerCpuArray::with_max_entries(MAX_POOLS, 0);
}
declare_map! {
    /// Connections opened minus closed while probed (the agent adds those open at start-up).
    POOL_LIVE: Array<i64> = Array::with_max_entries(MAX_POOLS, 0);
}
declare_map! {
    /// Highest POOL_LIVE value since the agent last reset it.
    POOL_PEAK: Array<i64> = Array::with_max_entries(MAX_POOLS, 0);
}
declare_map! {
    ACCEPTS: LruPerCpuHashMap<AcceptKey, u64> = LruPerCpuHashMap::with_max_entries(MAX_LISTENERS, 0);
}
declare_map! {
    LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_REASONS, 0);
}

// Protocol recognition.
declare_map! {
    PENDING: LruHashMap<FlowKey, PoolKey> = LruHashMap::with_max_entries(MAX_PENDING_FLOWS, 0);
}
declare_map! {
    /// Flows added to PENDING minus flows removed. LRU evictions are not subtracted, so it can stay
    /// above zero: that only costs lookups, never a missed flow.
    PENDING_N: Array<i64> = Array::with_max_entries(1, 0);
}
declare_map! {
    /// Protocol seen per pool (PROTO_*); read by the agent.
    PROTO_SEEN: LruHashMap<PoolKey, u32> = LruHashMap::with_max_entries(MAX_POOLS, 0);
}

// Retry storms.
declare_map! {
    RETRY_EVENTS: RingBuf = RingBuf::with_byte_size(RETRY_RING_BYTES, 0);
}
declare_map! {
    /// When each pool's last retry event was sent: the per-pool rate limit.
    LAST_FAILED: LruHashMap<PoolKey, u64> = LruHashMap::with_max_entries(MAX_POOLS, 0);
}
declare_map! {
    /// Pools with a reported connect failure not yet followed by a success: the next completed
    /// handshake is reported as a recovery. Connections that died young do not enter: they did
    /// complete their handshake, and a server rejecting every client is not "recovering" in between.
    FAILING: LruHashMap<PoolKey, u32> = LruHashMap::with_max_entries(MAX_POOLS, 0);
}
declare_map! {
    /// Entries added to FAILING minus entries removed (LRU evictions are not subtracted): an upper
    /// bound, so a healthy host skips the FAILING lookup on every completed handshake.
    FAILING_N: Array<i64> = Array::with_max_entries(1, 0);
}

// Accept queues.
declare_map! {
    /// TCP children from enqueue (SYN_RECV -> ESTABLISHED) to accept(), by socket address. Entries
    /// are reused, not deleted (see `queue_table`): it holds the socket addresses children had
    /// recently; LRU, so addresses no longer used age out.
    QUEUED_CHILDREN: LruHashMap<u64, QueuedChild> = LruHashMap::with_max_entries(MAX_QUEUED_CHILDREN, 0);
}
declare_map! {
    QUEUE_STATS: LruPerCpuHashMap<QueueKey, QueueStats> = LruPerCpuHashMap::with_max_entries(MAX_LISTENERS, 0);
}
declare_map! {
    /// Backlog passed to listen(), by socket inode (the agent matches it to sock_diag's inode).
    LISTEN_REQUESTS: LruHashMap<u64, i64> = LruHashMap::with_max_entries(MAX_LISTENERS, 0);
}
