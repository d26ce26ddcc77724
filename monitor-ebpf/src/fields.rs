//! Where the pools probe reads a socket's addresses from. Under tp_btf (`inet_sock_set_state`
//! as a BTF raw tracepoint) the hook passes only `struct sock *`, old and new state, and the tuple
//! is read from the socket at BTF offsets; under the classic tracepoint the kernel has already
//! copied the tuple into the trace record, at offsets from the format file. One trait lets the
//! handlers in `probes::pools` serve both hooks. Ports come out in host byte order and IPv4 addresses in
//! the first four bytes, as the tracepoint presents them.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, generated::bpf_get_current_task_btf},
    programs::TracePointContext,
};
use monitor_common::AF_INET;

use crate::{
    access::{direct, netns_of, process_comm, read, read_ctx},
    maps::off,
};

pub(crate) trait Fields {
    /// The socket's network namespace inode (0 if unknown).
    fn netns(&self) -> u32;
    /// `sk_err`: the error a connect or a connection ended with.
    fn err(&self) -> Result<i32, i64>;
    /// The socket cookie (0 until someone asked for it, e.g. sock_diag).
    fn cookie(&self) -> u64;
    /// Name of the calling process (its thread-group leader), else of the calling thread.
    fn process_comm(&self) -> [u8; 16];
    fn protocol(&self) -> Result<u16, i64>;
    fn family(&self) -> Result<u16, i64>;
    fn dport(&self) -> Result<u16, i64>;
    fn sport(&self) -> Result<u16, i64>;
    fn daddr(&self, family: u16) -> Result<[u8; 16], i64>;
    fn saddr(&self, family: u16) -> Result<[u8; 16], i64>;
    /// No process owns the socket (`sk_socket` NULL): a child still in its accept queue, or an
    /// orphan. False when the offset is unknown.
    fn unowned(&self) -> bool;
    /// `sk_max_ack_backlog`: a listener's backlog, which its children inherit (0 elsewhere).
    fn max_ack_backlog(&self) -> Result<u32, i64>;
}

/// The socket itself, as tp_btf passes it: a pointer the verifier knows to be a `struct sock`,
/// so fields load directly (the JIT guards such loads with an exception table) instead of
/// through a bpf_probe_read_kernel call each. The offsets come from read-only globals whose
/// values the verifier sees, so it checks every load against the kernel's own BTF.
pub(crate) struct Sock(pub *const u8);

impl Fields for Sock {
    #[inline(always)]
    fn netns(&self) -> u32 {
        match direct::<*const u8>(self.0, off!(SOCK_OFFSETS.net)) {
            Ok(net) if !net.is_null() => direct::<u32>(net, off!(SOCK_OFFSETS.net_inum)).unwrap_or(0),
            _ => 0,
        }
    }
    #[inline(always)]
    fn err(&self) -> Result<i32, i64> {
        direct(self.0, off!(SOCK_OFFSETS.err))
    }
    #[inline(always)]
    fn cookie(&self) -> u64 {
        direct(self.0, off!(SOCK_OFFSETS.cookie)).unwrap_or(0)
    }
    #[inline(always)]
    fn process_comm(&self) -> [u8; 16] {
        // SAFETY: valid in tracing programs; returns a BTF-typed task_struct pointer.
        let task = unsafe { bpf_get_current_task_btf() } as *const u8;
        if let Ok(leader) = direct::<*const u8>(task, off!(TASK_OFFSETS.group_leader)) {
            let comm = off!(TASK_OFFSETS.comm);
            if let (Ok(a), Ok(b)) = (direct::<u64>(leader, comm), direct::<u64>(leader, comm.wrapping_add(8))) {
                let mut out = [0u8; 16];
                out[..8].copy_from_slice(&a.to_ne_bytes());
                out[8..].copy_from_slice(&b.to_ne_bytes());
                return out;
            }
        }
        bpf_get_current_comm().unwrap_or([0; 16])
    }
    #[inline(always)]
    fn protocol(&self) -> Result<u16, i64> {
        direct(self.0, off!(SOCK_OFFSETS.protocol))
    }
    #[inline(always)]
    fn family(&self) -> Result<u16, i64> {
        direct(self.0, off!(SOCK_OFFSETS.family))
    }
    #[inline(always)]
    fn dport(&self) -> Result<u16, i64> {
        // skc_dport is kept in network byte order.
        direct::<u16>(self.0, off!(SOCK_OFFSETS.dport)).map(u16::from_be)
    }
    #[inline(always)]
    fn sport(&self) -> Result<u16, i64> {
        direct(self.0, off!(SOCK_OFFSETS.num))
    }
    #[inline(always)]
    fn daddr(&self, family: u16) -> Result<[u8; 16], i64> {
        if family == AF_INET {
            v4(direct(self.0, off!(SOCK_OFFSETS.daddr))?)
        } else {
            v6(self.0, off!(SOCK_OFFSETS.v6_daddr))
        }
    }
    #[inline(always)]
    fn saddr(&self, family: u16) -> Result<[u8; 16], i64> {
        if family == AF_INET {
            v4(direct(self.0, off!(SOCK_OFFSETS.rcv_saddr))?)
        } else {
            v6(self.0, off!(SOCK_OFFSETS.v6_rcv_saddr))
        }
    }
    #[inline(always)]
    fn unowned(&self) -> bool {
        direct::<u64>(self.0, off!(FD_OFFSETS.sock_socket)) == Ok(0)
    }
    #[inline(always)]
    fn max_ack_backlog(&self) -> Result<u32, i64> {
        direct(self.0, off!(SOCK_OFFSETS.max_ack_backlog))
    }
}

/// An IPv6 address as four 32-bit loads (in6_addr is 4-byte aligned).
#[inline(always)]
fn v6(base: *const u8, off: u32) -> Result<[u8; 16], i64> {
    let mut out = [0u8; 16];
    for i in 0..4u32 {
        let w: u32 = direct(base, off.wrapping_add(i * 4))?;
        out[(i * 4) as usize..(i * 4 + 4) as usize].copy_from_slice(&w.to_ne_bytes());
    }
    Ok(out)
}

/// The classic tracepoint's record; fields of the socket itself are read through
/// bpf_probe_read_kernel, since the record's pointer carries no type.
pub(crate) struct Record<'a> {
    pub ctx: &'a TracePointContext,
    /// The record's `skaddr`, read once by the caller.
    pub sk: *const u8,
}

impl Fields for Record<'_> {
    #[inline(always)]
    fn netns(&self) -> u32 {
        netns_of(self.sk)
    }
    #[inline(always)]
    fn err(&self) -> Result<i32, i64> {
        read(self.sk, off!(SOCK_OFFSETS.err))
    }
    #[inline(always)]
    fn cookie(&self) -> u64 {
        read(self.sk, off!(SOCK_OFFSETS.cookie)).unwrap_or(0)
    }
    #[inline(always)]
    fn process_comm(&self) -> [u8; 16] {
        process_comm()
    }
    #[inline(always)]
    fn protocol(&self) -> Result<u16, i64> {
        read_ctx(self.ctx, off!(TP_OFFSETS.state.protocol))
    }
    #[inline(always)]
    fn family(&self) -> Result<u16, i64> {
        read_ctx(self.ctx, off!(TP_OFFSETS.state.family))
    }
    #[inline(always)]
    fn dport(&self) -> Result<u16, i64> {
        read_ctx(self.ctx, off!(TP_OFFSETS.state.dport))
    }
    #[inline(always)]
    fn sport(&self) -> Result<u16, i64> {
        read_ctx(self.ctx, off!(TP_OFFSETS.state.sport))
    }
    #[inline(always)]
    fn daddr(&self, family: u16) -> Result<[u8; 16], i64> {
        if family == AF_INET {
            v4(read_ctx(self.ctx, off!(TP_OFFSETS.state.daddr))?)
        } else {
            read_ctx(self.ctx, off!(TP_OFFSETS.state.daddr_v6))
        }
    }
    #[inline(always)]
    fn saddr(&self, family: u16) -> Result<[u8; 16], i64> {
        if family == AF_INET {
            v4(read_ctx(self.ctx, off!(TP_OFFSETS.state.saddr))?)
        } else {
            read_ctx(self.ctx, off!(TP_OFFSETS.state.saddr_v6))
        }
    }
    #[inline(always)]
    fn unowned(&self) -> bool {
        read::<u64>(self.sk, off!(FD_OFFSETS.sock_socket)) == Ok(0)
    }
    #[inline(always)]
    fn max_ack_backlog(&self) -> Result<u32, i64> {
        read(self.sk, off!(SOCK_OFFSETS.max_ack_backlog))
    }
}

#[inline(always)]
fn v4(a: [u8; 4]) -> Result<[u8; 16], i64> {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a);
    Ok(out)
}
