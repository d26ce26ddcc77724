//! The kernel probes: a declarative table of what connmon attaches (program, hook, what the hook
//! needs, what happens without it), the loader that walks it with warn-and-skip, and read access to
//! the maps the programs fill. One probe failing never stops the agent: its `connmon_probe_up` is 0,
//! the reason is logged once with a hint, and the features behind it fall back (listener peaks to
//! sampling) or are reported as unavailable.
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, PerCpuHashMap},
    Ebpf, EbpfLoader,
};
use log::{debug, info, warn};
use monitor_common::{
    names::{globals, maps, programs},
    FdOffsets, ListenerCounters, ListenerKey, ListenerPeak, ListenerStats, QueueKey, QueueStats, SockOffsets,
    StateTpOffsets, TaskOffsets, TracepointOffsets, LISTENER_BY_ADDRESS, MAX_QUEUED_CHILDREN, OFFSET_UNKNOWN,
};

pub use crate::kernel::attach::{hook_name, Hook, KernelFn, ProbeSpec};
use crate::kernel::{
    attach::{self, AttachEnv},
    btf, maps as map_access, tracefs,
};

pub const LISTEN_PEAK: &str = "listen_peak";
pub const SYNACK_RETRANSMIT: &str = "synack_retransmit";
pub const POOLS: &str = "pools";
pub const PROTOCOL: &str = "protocol";
pub const CONNECT_RETRANSMIT: &str = "connect_retransmit";
pub const RESETS_RECEIVED: &str = "resets_received";
pub const RESETS_SENT: &str = "resets_sent";
pub const ACCEPT_WAIT: &str = "accept_wait";
pub const LISTEN_BACKLOG: &str = "listen_backlog";

/// Every child that completes its handshake passes here on its way into the listener's accept
/// queue (`probes::queued_child` on the kernel side).
const COMPLETE_HASHDANCE: KernelFn = KernelFn {
    name: "inet_csk_complete_hashdance",
    ret: "struct sock *",
    args: &["struct sock *", "struct sock *", "struct request_sock *", "bool"],
};

pub const PROBES: &[ProbeSpec] = &[
    ProbeSpec {
        probe: LISTEN_PEAK,
        program: programs::SK_DATA_READY_BTF,
        hook: Hook::BtfTracepoint("sk_data_ready"),
        min_kernel: "6.6",
        fallback: "tracepoint sock:sk_data_ready",
        helper: None,
    },
    ProbeSpec {
        probe: LISTEN_PEAK,
        program: programs::SK_DATA_READY_TP,
        hook: Hook::Tracepoint { group: "sock", name: "sk_data_ready" },
        min_kernel: "6.6",
        fallback: "fexit inet_csk_complete_hashdance",
        helper: None,
    },
    ProbeSpec {
        probe: LISTEN_PEAK,
        program: programs::QUEUED_CHILD_FEXIT,
        hook: Hook::FExit(COMPLETE_HASHDANCE),
        min_kernel: "5.5",
        fallback: "kprobe inet_csk_complete_hashdance",
        helper: None,
    },
    ProbeSpec {
        probe: LISTEN_PEAK,
        program: programs::QUEUED_CHILD_KPROBE,
        hook: Hook::KProbe(COMPLETE_HASHDANCE),
        min_kernel: "4.4",
        fallback: "peak accept-queue depth sampled at each scan (source=\"sampled\"); no listener storms",
        helper: None,
    },
    ProbeSpec {
        probe: SYNACK_RETRANSMIT,
        program: programs::TCP_RETRANSMIT_SYNACK,
        hook: Hook::Tracepoint { group: "tcp", name: "tcp_retransmit_synack" },
        min_kernel: "4.15",
        fallback: "no per-listener SYN-ACK retransmit counts",
        helper: None,
    },
    ProbeSpec {
        probe: POOLS,
        program: programs::INET_SOCK_SET_STATE_BTF,
        hook: Hook::BtfTracepoint("inet_sock_set_state"),
        min_kernel: "5.11",
        fallback: "tracepoint sock:inet_sock_set_state",
        helper: Some("get_current_task_btf"),
    },
    ProbeSpec {
        probe: POOLS,
        program: programs::INET_SOCK_SET_STATE,
        hook: Hook::Tracepoint { group: "sock", name: "inet_sock_set_state" },
        min_kernel: "4.16",
        fallback: "pool sizes from sock_diag scans only (no opens, closes, failures or latencies)",
        helper: None,
    },
    ProbeSpec {
        probe: CONNECT_RETRANSMIT,
        program: programs::TCP_RETRANSMIT_SKB_BTF,
        hook: Hook::BtfTracepoint("tcp_retransmit_skb"),
        min_kernel: "5.5",
        fallback: "tracepoint tcp:tcp_retransmit_skb",
        helper: None,
    },
    ProbeSpec {
        probe: CONNECT_RETRANSMIT,
        program: programs::TCP_RETRANSMIT_SKB,
        hook: Hook::Tracepoint { group: "tcp", name: "tcp_retransmit_skb" },
        min_kernel: "4.15",
        fallback: "no SYN retransmit counts per pool",
        helper: None,
    },
    ProbeSpec {
        probe: RESETS_RECEIVED,
        program: programs::TCP_RECEIVE_RESET_BTF,
        hook: Hook::BtfTracepoint("tcp_receive_reset"),
        min_kernel: "5.5",
        fallback: "tracepoint tcp:tcp_receive_reset",
        helper: None,
    },
    ProbeSpec {
        probe: RESETS_RECEIVED,
        program: programs::TCP_RECEIVE_RESET,
        hook: Hook::Tracepoint { group: "tcp", name: "tcp_receive_reset" },
        min_kernel: "4.15",
        fallback: "no received-reset counts per pool",
        helper: None,
    },
    ProbeSpec {
        probe: RESETS_SENT,
        program: programs::TCP_SEND_RESET_BTF,
        hook: Hook::BtfTracepoint("tcp_send_reset"),
        min_kernel: "5.5",
        fallback: "tracepoint tcp:tcp_send_reset",
        helper: None,
    },
    ProbeSpec {
        probe: RESETS_SENT,
        program: programs::TCP_SEND_RESET,
        hook: Hook::Tracepoint { group: "tcp", name: "tcp_send_reset" },
        min_kernel: "4.15",
        fallback: "no sent-reset counts per pool",
        helper: None,
    },
    ProbeSpec {
        probe: ACCEPT_WAIT,
        program: programs::ACCEPT_EXIT,
        hook: Hook::Tracepoints { group: "syscalls", names: &["sys_exit_accept4", "sys_exit_accept"] },
        min_kernel: "4.17",
        fallback: "queue wait from Little's law only (method=\"littles_law\"); no accepted-closed counts",
        helper: None,
    },
    ProbeSpec {
        probe: LISTEN_BACKLOG,
        program: programs::LISTEN_ENTER,
        hook: Hook::Tracepoint { group: "syscalls", name: "sys_enter_listen" },
        min_kernel: "4.17",
        fallback: "no requested backlog, no clamp flag",
        helper: None,
    },
    ProbeSpec {
        probe: PROTOCOL,
        program: programs::CLASSIFY_EGRESS,
        hook: Hook::CgroupSkbEgress,
        min_kernel: "4.10",
        fallback: "services classed by destination port only",
        helper: None,
    },
];

/// Names of every probe in the table, each once, in table order.
pub fn probe_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for spec in PROBES {
        if !names.contains(&spec.probe) {
            names.push(spec.probe);
        }
    }
    names
}

/// What `--probes.disable` accepts: a probe (all its rows), or the program of one row of a probe
/// that has alternatives (to force the next one, e.g. the kprobe where fexit misbehaves).
pub fn disable_values() -> Vec<&'static str> {
    let mut values = probe_names();
    for spec in PROBES {
        if PROBES.iter().filter(|s| s.probe == spec.probe).count() > 1 {
            values.push(spec.program);
        }
    }
    values
}

/// State of one probe after start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeState {
    /// Attached through this program.
    Up {
        program: &'static str,
    },
    Down {
        reason: String,
    },
}

pub struct ProbeOptions {
    pub tracefs: PathBuf,
    /// Size of the kernel's client-socket table (live client connections it can follow).
    pub max_sockets: u32,
    /// The cgroup2 mount, where the protocol probe attaches.
    pub cgroup_root: Option<PathBuf>,
    /// Probes the operator turned off.
    pub disabled: Vec<String>,
    /// Connections shorter than this count as short-lived.
    pub short_lived: std::time::Duration,
}

/// The loaded object, kept alive for as long as the probes should stay attached.
pub struct Probes {
    ebpf: Option<Ebpf>,
    pub states: BTreeMap<&'static str, ProbeState>,
    /// The listener peak period the kernel side is writing (LISTEN_EPOCH).
    listen_epoch: u64,
}

/// Per-listener figures the kernel side gathered.
#[derive(Debug, Default)]
pub struct KernelListenerStats {
    /// Peaks since the last `take_listener_stats`, max over CPUs.
    pub peaks: HashMap<ListenerKey, ListenerPeak>,
    /// Running counters, summed over CPUs.
    pub counters: HashMap<ListenerKey, ListenerCounters>,
    /// Accept-queue waits and abandonment by the queued connections' local end, summed over CPUs.
    pub queues: HashMap<QueueKey, QueueStats>,
    /// Backlog asked for in listen(), by socket inode.
    pub requested: HashMap<u64, i64>,
}

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/connmon"));

impl Probes {
    /// No probes at all: for one-shot commands and as the state when loading is impossible.
    pub fn none(reason: &str) -> Self {
        let states = probe_names().into_iter().map(|p| (p, ProbeState::Down { reason: reason.to_string() })).collect();
        Self { ebpf: None, states, listen_epoch: 0 }
    }

    pub fn load(opts: &ProbeOptions) -> Self {
        raise_memlock_limit();
        let own_btf = btf::Btf::from_sys().map_err(|e| warn!("{e:#}; probes that read sockets are off")).ok();
        let (sock, task, mut fd) = match &own_btf {
            Some(b) => (btf::sock_offsets(b), btf::task_offsets(b), btf::fd_offsets(b)),
            None => (SockOffsets::UNKNOWN, TaskOffsets::UNKNOWN, FdOffsets::UNKNOWN),
        };
        let (tp, tracefs_dir) = tracepoint_offsets(&opts.tracefs);
        if let Some(dir) = &tracefs_dir {
            syscall_offsets(dir, &mut fd);
        }
        // The kernel side follows queued children only while something will take them out again.
        if opts.disabled.iter().any(|d| d == ACCEPT_WAIT) {
            fd.accept_ret = OFFSET_UNKNOWN;
        }
        // The accept probe reads the child's own enqueue stamp only once it has told a TCP child
        // from an MPTCP one (not a tcp_sock) by protocol, and named its listener by port.
        if sock.protocol == OFFSET_UNKNOWN || fd.inet_sport == OFFSET_UNKNOWN {
            fd.child_stamp = OFFSET_UNKNOWN;
        }
        // QUEUED_CHILDREN is the fallback for kernels without that stamp: one entry otherwise.
        let queued_children = if fd.child_stamp == OFFSET_UNKNOWN { MAX_QUEUED_CHILDREN } else { 1 };
        let mut ebpf = match EbpfLoader::new()
            .override_global(globals::SOCK_OFFSETS, &sock, true)
            .override_global(globals::TP_OFFSETS, &tp, true)
            .override_global(globals::TASK_OFFSETS, &task, true)
            .override_global(globals::FD_OFFSETS, &fd, true)
            .override_global(
                globals::STORM_CONFIG,
                &monitor_common::StormConfig {
                    short_lived_ns: opts.short_lived.as_nanos().min(u128::from(u64::MAX)) as u64,
                },
                true,
            )
            .map_max_entries(maps::SOCKS, opts.max_sockets)
            .map_max_entries(maps::SEEDED, opts.max_sockets)
            .map_max_entries(maps::QUEUED_CHILDREN, queued_children)
            .load(EBPF_OBJECT)
        {
            Ok(ebpf) => ebpf,
            Err(e) => {
                let reason = format!("loading eBPF maps failed: {e}");
                warn!("{reason}; run as root or grant CAP_BPF and CAP_PERFMON; every probe is off");
                return Self::none(&reason);
            }
        };
        fill_free_pool_ids(&mut ebpf);
        let kernel_btf = aya::Btf::from_sys_fs().ok();
        let mut states: BTreeMap<&'static str, ProbeState> = BTreeMap::new();
        for (i, spec) in PROBES.iter().enumerate() {
            if matches!(states.get(spec.probe), Some(ProbeState::Up { .. })) {
                continue;
            }
            if opts.disabled.iter().any(|d| d == spec.probe) {
                info!("probe {} disabled by --probes.disable; {}", spec.probe, spec.fallback);
                states.insert(spec.probe, ProbeState::Down { reason: "disabled by --probes.disable".into() });
                continue;
            }
            // A failed alternative costs nothing while a later row may still attach: say so at
            // info; only the probe's last row failing loses a feature.
            let last_row = !PROBES[i + 1..].iter().any(|s| s.probe == spec.probe);
            let level = if last_row { log::Level::Warn } else { log::Level::Info };
            if opts.disabled.iter().any(|d| d == spec.program) {
                log::log!(
                    level,
                    "probe {}: program {} disabled by --probes.disable; falling back to: {}",
                    spec.probe,
                    spec.program,
                    spec.fallback
                );
                states.insert(
                    spec.probe,
                    ProbeState::Down { reason: format!("{} disabled by --probes.disable", spec.program) },
                );
                continue;
            }
            let env = AttachEnv {
                sock: &sock,
                tp: &tp,
                fd: &fd,
                kernel_btf: kernel_btf.as_ref(),
                tracefs: tracefs_dir.as_deref(),
                cgroup_root: opts.cgroup_root.as_deref(),
            };
            let result = attach::precheck(spec, own_btf.as_ref()).and_then(|()| attach::attach(&mut ebpf, spec, &env));
            let state = match result {
                Ok(()) => {
                    info!("probe {} attached via {} ({})", spec.probe, spec.program, attach::hook_name(spec.hook));
                    ProbeState::Up { program: spec.program }
                }
                Err(e) => {
                    let (reason, verifier_log) = attach::summarize(&e);
                    let log_hint = match &verifier_log {
                        Some(_) => " (verifier log at debug level: RUST_LOG=connmon::kernel=debug)",
                        None => "",
                    };
                    log::log!(
                        level,
                        "probe {} could not attach {} ({}, kernel >= {}): {reason}{log_hint}; falling back to: {}",
                        spec.probe,
                        spec.program,
                        attach::hook_name(spec.hook),
                        spec.min_kernel,
                        spec.fallback
                    );
                    if let Some(log) = verifier_log {
                        debug!("verifier log of {}:\n{log}", spec.program);
                    }
                    ProbeState::Down { reason }
                }
            };
            states.insert(spec.probe, state);
        }
        Self { ebpf: Some(ebpf), states, listen_epoch: 0 }
    }

    /// The loaded object, for modules that read their own maps.
    pub fn ebpf_mut(&mut self) -> Option<&mut Ebpf> {
        self.ebpf.as_mut()
    }

    /// Sum of the kernel's `recursion_misses` over connmon's programs (from /proc/self/fdinfo).
    pub fn recursion_misses(&self) -> u64 {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let Some(ebpf) = self.ebpf.as_ref() else { return 0 };
        ebpf.programs()
            .filter_map(|(_, p)| p.fd().ok())
            .filter_map(|fd| std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd())).ok())
            .filter_map(|text| fdinfo_value(&text, "recursion_misses"))
            .sum()
    }

    pub fn is_up(&self, probe: &str) -> bool {
        matches!(self.states.get(probe), Some(ProbeState::Up { .. }))
    }

    /// Reads the listener maps. Peaks are per period: each call starts a new one (LISTEN_EPOCH)
    /// and reports the peaks of the period it closes, so the next call sees only what happened
    /// since (an event whose program read the old epoch before the switch but wrote after this
    /// read loses that one sample).
    pub fn take_listener_stats(&mut self) -> KernelListenerStats {
        let mut out = KernelListenerStats::default();
        let Some(ebpf) = self.ebpf.as_mut() else { return out };
        let closing = self.listen_epoch;
        if let Ok(mut epoch) = map_access::open_mut::<aya::maps::Array<&mut MapData, u64>>(ebpf, maps::LISTEN_EPOCH) {
            match epoch.set(0, closing + 1, 0) {
                Ok(()) => self.listen_epoch = closing + 1,
                Err(e) => map_access::record(maps::LISTEN_EPOCH, &e),
            }
        }
        if let Ok(listeners) = map_access::open::<PerCpuHashMap<&MapData, u64, ListenerStats>>(ebpf, maps::LISTENERS) {
            for (key, values) in super::batch::per_cpu_hash(maps::LISTENERS, &listeners).iter() {
                let (id, counters, peak) = fold_listener(key, values.iter(), closing);
                let c = out.counters.entry(id).or_default();
                c.queued += counters.queued;
                c.synack_retransmits += counters.synack_retransmits;
                if let Some(p) = peak {
                    out.peaks.entry(id).or_default().raise(p.depth, p.backlog, p.syn_queue);
                }
            }
        }
        if let Ok(stats) = map_access::open::<PerCpuHashMap<&MapData, QueueKey, QueueStats>>(ebpf, maps::QUEUE_STATS) {
            for (key, values) in super::batch::per_cpu_hash(maps::QUEUE_STATS, &stats).iter() {
                let mut sum = QueueStats::default();
                for v in values.iter() {
                    add_queue_stats(&mut sum, v);
                }
                out.queues.insert(key, sum);
            }
        }
        if let Ok(requests) = map_access::open::<aya::maps::HashMap<&MapData, u64, i64>>(ebpf, maps::LISTEN_REQUESTS) {
            out.requested = super::batch::hash(maps::LISTEN_REQUESTS, &requests).into_iter().collect();
        }
        out
    }
}

/// Pure: one LISTENERS entry's per-CPU values folded into the listener it names (by cookie, or
/// by the name written into an entry keyed by address), its counters summed, and its peaks of
/// period `closing` (or the one just started) at their max; None when no CPU recorded any.
fn fold_listener<'a>(
    key: u64,
    values: impl Iterator<Item = &'a ListenerStats>,
    closing: u64,
) -> (ListenerKey, ListenerCounters, Option<ListenerPeak>) {
    let mut id = ListenerKey { cookie: key, ..ListenerKey::default() };
    let mut counters = ListenerCounters::default();
    let mut peak: Option<ListenerPeak> = None;
    for v in values {
        if key & LISTENER_BY_ADDRESS != 0 && v.name.family != 0 {
            id = ListenerKey { cookie: 0, ..v.name };
        }
        counters.queued += v.counters.queued;
        counters.synack_retransmits += v.counters.synack_retransmits;
        if v.epoch >= closing {
            peak.get_or_insert_default().raise(v.peak.depth, v.peak.backlog, v.peak.syn_queue);
        }
    }
    (id, counters, peak)
}

pub fn add_queue_stats(sum: &mut QueueStats, v: &QueueStats) {
    sum.accepted += v.accepted;
    sum.wait_ns_sum += v.wait_ns_sum;
    sum.abandoned_fin += v.abandoned_fin;
    sum.abandoned_rst += v.abandoned_rst;
    sum.accepted_closed += v.accepted_closed;
    for (a, b) in sum.wait_us.iter_mut().zip(v.wait_us) {
        *a += b;
    }
}

/// Record offsets of the tracepoints the programs read, from their format files. Missing pieces
/// stay OFFSET_UNKNOWN and the matching probe reports why at attach time.
fn tracepoint_offsets(dir: &Path) -> (TracepointOffsets, Option<std::path::PathBuf>) {
    let mut tp = TracepointOffsets::UNKNOWN;
    let dir = match tracefs::ensure_mounted(dir) {
        Ok(d) => d,
        Err(e) => {
            warn!("{e:#}; tracepoint probes are off");
            return (tp, None);
        }
    };
    let skaddr = |group: &str, name: &str| -> u32 {
        tracefs::read_format(&dir, group, name)
            .and_then(|f| f.field("skaddr").map(|f| f.offset))
            .unwrap_or(OFFSET_UNKNOWN)
    };
    tp.data_ready_skaddr = skaddr("sock", "sk_data_ready");
    tp.synack_skaddr = skaddr("tcp", "tcp_retransmit_synack");
    tp.rx_reset_skaddr = skaddr("tcp", "tcp_receive_reset");
    tp.tx_reset_skaddr = skaddr("tcp", "tcp_send_reset");
    if let Ok(f) = tracefs::read_format(&dir, "tcp", "tcp_retransmit_skb") {
        tp.retrans_skaddr = f.field("skaddr").map(|f| f.offset).unwrap_or(OFFSET_UNKNOWN);
        tp.retrans_state = f.field("state").map(|f| f.offset).unwrap_or(OFFSET_UNKNOWN);
    }
    if let Ok(f) = tracefs::read_format(&dir, "sock", "inet_sock_set_state") {
        let off = |name: &str| f.field(name).map(|f| f.offset).unwrap_or(OFFSET_UNKNOWN);
        tp.state = StateTpOffsets {
            skaddr: off("skaddr"),
            oldstate: off("oldstate"),
            newstate: off("newstate"),
            sport: off("sport"),
            dport: off("dport"),
            family: off("family"),
            protocol: off("protocol"),
            saddr: off("saddr"),
            daddr: off("daddr"),
            saddr_v6: off("saddr_v6"),
            daddr_v6: off("daddr_v6"),
            _reserved: 0,
        };
    }
    (tp, Some(dir))
}

/// Record offsets of the syscall tracepoints the accept-queue programs read.
fn syscall_offsets(dir: &Path, fd: &mut FdOffsets) {
    let field = |name: &str, field: &str| {
        tracefs::read_format(dir, "syscalls", name)
            .ok()
            .and_then(|f| f.field(field).map(|f| f.offset).ok())
            .unwrap_or(OFFSET_UNKNOWN)
    };
    fd.accept_ret = field("sys_exit_accept4", "ret");
    // accept() and accept4() share the exit record's layout; attach refuses if they ever differ.
    if field("sys_exit_accept", "ret") != fd.accept_ret {
        fd.accept_ret = OFFSET_UNKNOWN;
    }
    fd.listen_fd = field("sys_enter_listen", "fd");
    fd.listen_backlog = field("sys_enter_listen", "backlog");
}

/// Pure: the value of `key:` in an fdinfo text.
fn fdinfo_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.trim().parse().ok())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so they load there too.
fn raise_memlock_limit() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit with a valid struct; failure only matters on old kernels and is logged there.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK: {}", std::io::Error::last_os_error());
    }
}

#[cfg(test)]
#[path = "object_tests.rs"]
mod object_tests;

/// Hands the pools probe every pool id before any program attaches: the kernel side takes a free
/// id for each new pool and has no other source (fetch-and-add needs kernel 5.12). A failure
/// leaves pools without ids, which the kernel counts in `connmon_events_lost_total{reason=
/// "pool_table_full"}`.
fn fill_free_pool_ids(ebpf: &mut aya::Ebpf) {
    let queue = ebpf.map_mut(maps::FREE_POOL_IDS).map(aya::maps::Queue::<_, u32>::try_from);
    let result = match queue {
        Some(Ok(mut q)) => (0..monitor_common::MAX_POOLS).try_for_each(|id| q.push(id, 0)).map_err(|e| e.to_string()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("map missing from the eBPF object".into()),
    };
    if let Err(e) = result {
        warn!("filling {}: {e}; new pools are not counted", maps::FREE_POOL_IDS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(epoch: u64, queued: u64, depth: u32) -> ListenerStats {
        ListenerStats {
            epoch,
            counters: ListenerCounters { queued, synack_retransmits: 1 },
            peak: ListenerPeak { depth, backlog: 8, syn_queue: 0, _reserved: 0 },
            name: ListenerKey::default(),
        }
    }

    #[test]
    fn listener_entries_fold_counters_always_and_peaks_of_the_closing_period_only() {
        // CPU 0 wrote in the closing period 4, CPU 1 last in period 3 (already reported), CPU 2
        // after the switch to period 5.
        let (id, c, p) = fold_listener(77, [cpu(4, 10, 6), cpu(3, 5, 9), cpu(5, 1, 2)].iter(), 4);
        assert_eq!((id.cookie, c.queued, c.synack_retransmits), (77, 16, 3));
        assert_eq!(p.map(|p| p.depth), Some(6));
        let (_, _, none) = fold_listener(77, [cpu(3, 5, 9)].iter(), 4);
        assert_eq!(none, None);
    }

    #[test]
    fn an_entry_keyed_by_address_names_its_listener() {
        let name = ListenerKey {
            cookie: 0,
            netns: 9,
            port: 8080,
            family: 2,
            addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        let named = ListenerStats { name, ..cpu(0, 1, 1) };
        let (id, _, _) = fold_listener(0xffff_8880_1234_5678, [cpu(0, 0, 0), named].iter(), 0);
        assert_eq!(id, name);
    }
}
