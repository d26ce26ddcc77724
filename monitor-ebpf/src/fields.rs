//! Where the pools probe reads a socket's addresses from. Under tp_btf (`inet_sock_set_state`
//! as a BTF raw tracepoint) the hook passes only `struct sock *`, old and new state, and the tuple
//! is read from the socket at BTF offsets; under the classic tracepoint the kernel has already
//! copied the tuple into the trace record, at offsets from the format file. One trait lets the
//! handlers in `pools` serve both hooks. Ports come out in host byte order and IPv4 addresses in
//! the first four bytes, as the tracepoint presents them.
use aya_ebpf::programs::TracePointContext;
use monitor_common::AF_INET;

use crate::listeners::{off, read, read_ctx};

pub(crate) trait Fields {
    fn protocol(&self) -> Result<u16, i64>;
    fn family(&self) -> Result<u16, i64>;
    fn dport(&self) -> Result<u16, i64>;
    fn sport(&self) -> Result<u16, i64>;
    fn daddr(&self, family: u16) -> Result<[u8; 16], i64>;
    fn saddr(&self, family: u16) -> Result<[u8; 16], i64>;
}

/// The socket itself (tp_btf).
pub(crate) struct Sock(pub *const u8);

impl Fields for Sock {
    #[inline(always)]
    fn protocol(&self) -> Result<u16, i64> {
        read(self.0, off!(SOCK_OFFSETS.protocol))
    }
    #[inline(always)]
    fn family(&self) -> Result<u16, i64> {
        read(self.0, off!(SOCK_OFFSETS.family))
    }
    #[inline(always)]
    fn dport(&self) -> Result<u16, i64> {
        // skc_dport is kept in network byte order.
        read::<u16>(self.0, off!(SOCK_OFFSETS.dport)).map(u16::from_be)
    }
    #[inline(always)]
    fn sport(&self) -> Result<u16, i64> {
        read(self.0, off!(SOCK_OFFSETS.num))
    }
    #[inline(always)]
    fn daddr(&self, family: u16) -> Result<[u8; 16], i64> {
        if family == AF_INET {
            v4(read(self.0, off!(SOCK_OFFSETS.daddr))?)
        } else {
            read(self.0, off!(SOCK_OFFSETS.v6_daddr))
        }
    }
    #[inline(always)]
    fn saddr(&self, family: u16) -> Result<[u8; 16], i64> {
        if family == AF_INET {
            v4(read(self.0, off!(SOCK_OFFSETS.rcv_saddr))?)
        } else {
            read(self.0, off!(SOCK_OFFSETS.v6_rcv_saddr))
        }
    }
}

/// The classic tracepoint's record.
pub(crate) struct Record<'a>(pub &'a TracePointContext);

impl Fields for Record<'_> {
    #[inline(always)]
    fn protocol(&self) -> Result<u16, i64> {
        read_ctx(self.0, off!(TP_OFFSETS.state.protocol))
    }
    #[inline(always)]
    fn family(&self) -> Result<u16, i64> {
        read_ctx(self.0, off!(TP_OFFSETS.state.family))
    }
    #[inline(always)]
    fn dport(&self) -> Result<u16, i64> {
        read_ctx(self.0, off!(TP_OFFSETS.state.dport))
    }
    #[inline(always)]
    fn sport(&self) -> Result<u16, i64> {
        read_ctx(self.0, off!(TP_OFFSETS.state.sport))
    }
    #[inline(always)]
    fn daddr(&self, family: u16) -> Result<[u8; 16], i64> {
        if family == AF_INET {
            v4(read_ctx(self.0, off!(TP_OFFSETS.state.daddr))?)
        } else {
            read_ctx(self.0, off!(TP_OFFSETS.state.daddr_v6))
        }
    }
    #[inline(always)]
    fn saddr(&self, family: u16) -> Result<[u8; 16], i64> {
        if family == AF_INET {
            v4(read_ctx(self.0, off!(TP_OFFSETS.state.saddr))?)
        } else {
            read_ctx(self.0, off!(TP_OFFSETS.state.saddr_v6))
        }
    }
}

#[inline(always)]
fn v4(a: [u8; 4]) -> Result<[u8; 16], i64> {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a);
    Ok(out)
}
