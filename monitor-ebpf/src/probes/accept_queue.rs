//! Accept-queue programs: `accept()`/`accept4()` returning a descriptor, followed through the
//! calling process's file table (`current->files->fdt->fd[ret]->private_data->sk`) to the child
//! socket, whose wait is the time since the kernel stamped its handshake's end (or since
//! `queue_table` remembered it, where that stamp is unknown); and `listen()`, whose descriptor is
//! followed to its socket inode to record the backlog asked for.
use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use monitor_common::{
    hist, QueueKey, AF_INET, AF_INET6, LOST_QUEUE_UNTRACKED, OFFSET_UNKNOWN, TCP_CLOSE, TCP_CLOSE_WAIT,
};

use crate::{
    access::{read, read_ctx, read_ctx_u64},
    maps::{check_program_name, off, LISTEN_REQUESTS, QUEUED_CHILDREN},
    pool_table::lost,
    queue_table::with_stats,
};

const IPPROTO_TCP: u16 = 6;

#[tracepoint]
pub fn accept_exit(ctx: TracePointContext) -> u32 {
    let _ = try_accept_exit(&ctx);
    0
}
check_program_name!(accept_exit, ACCEPT_EXIT);

#[tracepoint]
pub fn listen_enter(ctx: TracePointContext) -> u32 {
    let _ = try_listen_enter(&ctx);
    0
}
check_program_name!(listen_enter, LISTEN_ENTER);

fn try_accept_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let ret = read_ctx_u64(ctx, off!(FD_OFFSETS.accept_ret))? as i64;
    if ret < 0 {
        return Ok(());
    }
    let file = fd_file(ret as u32)?;
    let socket: *const u8 = read(file, off!(FD_OFFSETS.file_private))?;
    let sk: *const u8 = read(socket, off!(FD_OFFSETS.socket_sk))?;
    let stamp_off = off!(FD_OFFSETS.child_stamp);
    if stamp_off == OFFSET_UNKNOWN {
        return from_queued_children(sk);
    }
    let head = Head::read(sk)?;
    // Unix sockets are accepted through the same calls.
    let family: u16 = head.field(sk, off!(SOCK_OFFSETS.family))?;
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    // An MPTCP connection is accepted as its MPTCP socket, which is no tcp_sock: no stamp to read.
    let protocol: u16 = read(sk, off!(SOCK_OFFSETS.protocol))?;
    let stamp_us: u64 = if protocol == IPPROTO_TCP { read(sk, stamp_off)? } else { 0 };
    if stamp_us == 0 {
        lost(LOST_QUEUE_UNTRACKED);
        return Ok(());
    }
    // The child's local end names its listener. The port comes from inet_sport: a child reset
    // while queued has released skc_num already.
    let port: u16 = read(sk, off!(FD_OFFSETS.inet_sport))?;
    let netns = match head.field::<*const u8>(sk, off!(SOCK_OFFSETS.net)) {
        Ok(net) if !net.is_null() => read::<u32>(net, off!(SOCK_OFFSETS.net_inum)).unwrap_or(0),
        _ => 0,
    };
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[..4].copy_from_slice(&head.field::<[u8; 4]>(sk, off!(SOCK_OFFSETS.rcv_saddr))?);
    } else {
        addr = head.field(sk, off!(SOCK_OFFSETS.v6_rcv_saddr))?;
    }
    let key = QueueKey { netns, port: u16::from_be(port), family, addr };
    // SAFETY: plain helper call. tcp_clock_us is CLOCK_MONOTONIC in µs, as bpf_ktime_get_ns in ns.
    let wait = unsafe { bpf_ktime_get_ns() }.saturating_sub(stamp_us.wrapping_mul(1000));
    let state: u8 = head.field(sk, off!(SOCK_OFFSETS.state)).unwrap_or(0);
    count_accept(state, &key, wait);
    Ok(())
}

/// The head of `struct sock_common` in one bpf_probe_read_kernel instead of one call per field:
/// family, state, the bound addresses and the netns pointer lie in its first 88 bytes (the
/// IPv6 bound address ends there on x86-64 kernels with IPv6); a field the loader found
/// elsewhere is read on its own.
struct Head([u64; HEAD_BYTES / 8]);
const HEAD_BYTES: usize = 88;

impl Head {
    #[inline(always)]
    fn read(sk: *const u8) -> Result<Self, i64> {
        read(sk, 0).map(Head)
    }
    #[inline(always)]
    fn field<T: Copy>(&self, sk: *const u8, off: u32) -> Result<T, i64> {
        if off as usize + core::mem::size_of::<T>() <= HEAD_BYTES {
            // SAFETY: in bounds (checked above); unaligned, as the offset may be.
            Ok(unsafe { core::ptr::read_unaligned((self.0.as_ptr() as *const u8).add(off as usize) as *const T) })
        } else {
            read(sk, off)
        }
    }
}

/// The wait from QUEUED_CHILDREN, for kernels whose BTF lacks the child's own stamp.
#[inline(always)]
fn from_queued_children(sk: *const u8) -> Result<(), i64> {
    // An entry with enqueued_ns 0 was taken by an earlier accept() of a socket at this address
    // (see queue_table): this child's enqueue was not seen.
    let entry = QUEUED_CHILDREN.get_ptr_mut(&(sk as u64));
    // SAFETY: entry pointer from the map, copied out at once.
    let child = entry.map(|c| unsafe { *c }).filter(|c| c.enqueued_ns != 0);
    let (Some(entry), Some(child)) = (entry, child) else {
        // Unix sockets are accepted through the same calls; only TCP children should be known.
        let family: u16 = read(sk, off!(SOCK_OFFSETS.family))?;
        if family == AF_INET || family == AF_INET6 {
            lost(LOST_QUEUE_UNTRACKED);
        }
        return Ok(());
    };
    // SAFETY: as above; this socket is owned now, so no enqueue writes its entry concurrently.
    unsafe { (*entry).enqueued_ns = 0 };
    // SAFETY: plain helper call.
    let wait = unsafe { bpf_ktime_get_ns() }.saturating_sub(child.enqueued_ns);
    let state: u8 = read(sk, off!(SOCK_OFFSETS.state)).unwrap_or(0);
    count_accept(state, &child.key, wait);
    Ok(())
}

#[inline(always)]
fn count_accept(state: u8, key: &QueueKey, wait: u64) {
    let closed = state == TCP_CLOSE_WAIT || state == TCP_CLOSE;
    with_stats(key, |s| {
        s.accepted += 1;
        s.wait_ns_sum += wait;
        s.wait_us[hist::bucket(wait / 1000)] += 1;
        s.accepted_closed += u64::from(closed);
    });
}

fn try_listen_enter(ctx: &TracePointContext) -> Result<(), i64> {
    let fd: u64 = read_ctx(ctx, off!(FD_OFFSETS.listen_fd))?;
    let backlog: u64 = read_ctx(ctx, off!(FD_OFFSETS.listen_backlog))?;
    let file = fd_file(fd as u32)?;
    let inode: *const u8 = read(file, off!(FD_OFFSETS.file_inode))?;
    let ino: u64 = read(inode, off!(FD_OFFSETS.inode_ino))?;
    // listen() takes an int: -1 and other negative values mean "as many as allowed".
    let requested = i64::from(backlog as u32 as i32);
    LISTEN_REQUESTS.insert(&ino, &requested, 0).map_err(|e| e as i64)
}

/// `struct file *` of descriptor `fd` of the calling process.
#[inline(always)]
fn fd_file(fd: u32) -> Result<*const u8, i64> {
    // SAFETY: valid in tracepoint programs; every read below goes through bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files: *const u8 = read(task, off!(FD_OFFSETS.task_files))?;
    let fdt: *const u8 = read(files, off!(FD_OFFSETS.files_fdt))?;
    let (max_off, fd_off) = (off!(FD_OFFSETS.fdt_max_fds), off!(FD_OFFSETS.fdt_fd));
    // `struct fdtable` opens with max_fds and then fd on every kernel so far: one read for both.
    let (max, fds) = if fd_off == max_off.wrapping_add(8) {
        let pair: [u64; 2] = read(fdt, max_off)?;
        (pair[0] as u32, pair[1] as *const u8)
    } else {
        (read::<u32>(fdt, max_off)?, read::<*const u8>(fdt, fd_off)?)
    };
    if fd >= max {
        return Err(-1);
    }
    // SAFETY: pointer arithmetic only; the read below checks the address.
    let slot = unsafe { fds.add(fd as usize * 8) };
    let file: *const u8 = read(slot, 0)?;
    if file.is_null() {
        return Err(-1);
    }
    Ok(file)
}
