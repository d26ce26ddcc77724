//! Address helpers both sides need: the class of a client address (the `client_class` of
//! [`crate::AcceptKey`]) and the flow key of a socket as its packets show it (IPv4-mapped IPv6
//! sockets send IPv4 packets). Addresses are 16 bytes, IPv4 in the first four, network order.
use crate::{FlowKey, AF_INET, AF_INET6, CLIENT_LINK_LOCAL, CLIENT_LOOPBACK, CLIENT_PRIVATE, CLIENT_PUBLIC};

/// Class of a client address of `family` (CLIENT_*).
#[inline(always)]
pub fn client_class(family: u16, a: &[u8; 16]) -> u32 {
    if family == AF_INET {
        class_v4([a[0], a[1], a[2], a[3]])
    } else {
        class_v6(a)
    }
}

/// Loopback 127/8; private 10/8, 172.16/12, 192.168/16 and carrier-grade NAT 100.64/10 (pod
/// networks often use it); link-local 169.254/16; everything else public.
#[inline(always)]
pub fn class_v4(a: [u8; 4]) -> u32 {
    match a {
        [127, ..] => CLIENT_LOOPBACK,
        [10, ..] | [192, 168, ..] => CLIENT_PRIVATE,
        [172, b, ..] if (16..32).contains(&b) => CLIENT_PRIVATE,
        [100, b, ..] if (64..128).contains(&b) => CLIENT_PRIVATE,
        [169, 254, ..] => CLIENT_LINK_LOCAL,
        _ => CLIENT_PUBLIC,
    }
}

/// IPv4-mapped addresses are classed as IPv4; ::1 loopback, fc00::/7 private, fe80::/10 link-local.
#[inline(always)]
pub fn class_v6(a: &[u8; 16]) -> u32 {
    if is_v4_mapped(a) {
        return class_v4([a[12], a[13], a[14], a[15]]);
    }
    if a[..15].iter().all(|&b| b == 0) && a[15] == 1 {
        CLIENT_LOOPBACK
    } else if a[0] & 0xfe == 0xfc {
        CLIENT_PRIVATE
    } else if a[0] == 0xfe && a[1] & 0xc0 == 0x80 {
        CLIENT_LINK_LOCAL
    } else {
        CLIENT_PUBLIC
    }
}

/// `::ffff:a.b.c.d`.
#[inline(always)]
pub fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10].iter().all(|&b| b == 0) && a[10] == 0xff && a[11] == 0xff
}

/// The flow key of a socket, with IPv4-mapped IPv6 addresses normalised to IPv4.
#[inline(always)]
pub fn flow(family: u16, saddr: &[u8; 16], sport: u16, daddr: &[u8; 16], dport: u16) -> FlowKey {
    let mut f = FlowKey { saddr: *saddr, daddr: *daddr, sport, dport, family, _reserved: 0 };
    if family == AF_INET6 && is_v4_mapped(saddr) && is_v4_mapped(daddr) {
        f.family = AF_INET;
        f.saddr = [0; 16];
        f.daddr = [0; 16];
        f.saddr[..4].copy_from_slice(&saddr[12..16]);
        f.daddr[..4].copy_from_slice(&daddr[12..16]);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn bytes(s: &str) -> (u16, [u8; 16]) {
        let mut out = [0u8; 16];
        match s.parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) => {
                out[..4].copy_from_slice(&a.octets());
                (AF_INET, out)
            }
            IpAddr::V6(a) => (AF_INET6, a.octets()),
        }
    }

    #[test]
    fn classes() {
        let cases = [
            ("127.0.0.1", CLIENT_LOOPBACK),
            ("127.255.0.9", CLIENT_LOOPBACK),
            ("10.0.0.1", CLIENT_PRIVATE),
            ("172.16.0.1", CLIENT_PRIVATE),
            ("172.31.255.255", CLIENT_PRIVATE),
            ("172.32.0.1", CLIENT_PUBLIC),
            ("172.15.0.1", CLIENT_PUBLIC),
            ("192.168.1.1", CLIENT_PRIVATE),
            ("100.64.0.1", CLIENT_PRIVATE),
            ("100.128.0.1", CLIENT_PUBLIC),
            ("169.254.1.1", CLIENT_LINK_LOCAL),
            ("8.8.8.8", CLIENT_PUBLIC),
            ("::1", CLIENT_LOOPBACK),
            ("::2", CLIENT_PUBLIC),
            ("::ffff:127.0.0.1", CLIENT_LOOPBACK),
            ("::ffff:10.1.2.3", CLIENT_PRIVATE),
            ("fd00::1", CLIENT_PRIVATE),
            ("fc00::1", CLIENT_PRIVATE),
            ("fe80::1", CLIENT_LINK_LOCAL),
            ("febf::1", CLIENT_LINK_LOCAL),
            ("fec0::1", CLIENT_PUBLIC),
            ("2001:db8::1", CLIENT_PUBLIC),
        ];
        for (a, want) in cases {
            let (family, b) = bytes(a);
            assert_eq!(client_class(family, &b), want, "{a}");
        }
    }

    #[test]
    fn mapped_flows_become_ipv4_and_others_stay() {
        let (_, s) = bytes("::ffff:127.0.0.1");
        let (_, d) = bytes("::ffff:10.0.0.2");
        let f = flow(AF_INET6, &s, 40000, &d, 6379);
        assert_eq!(f.family, AF_INET);
        assert_eq!(&f.saddr[..4], &[127, 0, 0, 1]);
        assert_eq!(&f.daddr[..4], &[10, 0, 0, 2]);
        assert!(f.saddr[4..].iter().chain(&f.daddr[4..]).all(|&b| b == 0));
        assert_eq!((f.sport, f.dport), (40000, 6379));

        // Only one side mapped: a real IPv6 flow, untouched.
        let (_, d6) = bytes("fd00::2");
        let f = flow(AF_INET6, &s, 1, &d6, 2);
        assert_eq!((f.family, f.saddr, f.daddr), (AF_INET6, s, d6));
        let (_, s4) = bytes("10.0.0.1");
        let f = flow(AF_INET, &s4, 1, &s4, 2);
        assert_eq!((f.family, f.saddr), (AF_INET, s4));
    }
}
