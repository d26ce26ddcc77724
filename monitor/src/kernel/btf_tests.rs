//! Tests for the BTF reader: synthetic blobs built in code for the edge cases, and the running
//! kernel's BTF (when present) for the offsets connmon actually uses.

use super::*;

/// Encodes BTF blobs for tests, so each case states exactly the types it needs.
struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
}

impl Builder {
    fn new() -> Self {
        Builder { types: Vec::new(), strings: vec![0], next_id: 1 }
    }

    fn str(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    fn raw(&mut self, name: &str, kind: u32, kind_flag: bool, vlen: u32, size_or_type: u32, tail: &[u32]) -> u32 {
        let name_off = self.str(name);
        let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
        for w in [name_off, info, size_or_type].iter().chain(tail) {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
        self.next_id += 1;
        self.next_id - 1
    }

    fn int(&mut self, name: &str, size: u32) -> u32 {
        self.raw(name, KIND_INT, false, 0, size, &[size * 8])
    }

    fn composite(&mut self, kind: u32, name: &str, size: u32, kind_flag: bool, members: &[(&str, u32, u32)]) -> u32 {
        let mut tail = Vec::new();
        for &(n, ty, off) in members {
            tail.extend([self.str(n), ty, off]);
        }
        self.raw(name, kind, kind_flag, members.len() as u32, size, &tail)
    }

    fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
        self.composite(KIND_STRUCT, name, size, false, members)
    }

    fn union(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
        self.composite(KIND_UNION, name, size, false, members)
    }

    fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [24u32, 0, self.types.len() as u32, self.types.len() as u32, self.strings.len() as u32] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// A miniature of the kernel's sock/sock_common/net layout, including the shapes that make
/// resolution tricky: nested anonymous union+struct, a typedef'd anonymous struct, a qualifier,
/// a bitfield and a same-named forward declaration listed before the real struct.
fn kernel_like() -> Vec<u8> {
    let mut b = Builder::new();
    let u8t = b.int("unsigned char", 1);
    let u16t = b.int("unsigned short", 2);
    let u32t = b.int("unsigned int", 4);
    let vol_u8 = b.raw("", KIND_VOLATILE, false, 0, u8t, &[]);
    b.raw("sock", KIND_FWD, false, 0, 0, &[]);
    b.raw("net", KIND_FWD, false, 0, 0, &[]);
    // An empty same-named struct must not shadow the real one either.
    b.strukt("net", 0, &[]);
    let ns_common = b.strukt("ns_common", 8, &[("stashed", u32t, 0), ("inum", u32t, 32)]);
    let net = b.strukt("net", 24, &[("passive", u32t, 0), ("ns", ns_common, 64)]);
    let net_ptr = b.raw("", KIND_PTR, false, 0, net, &[]);
    let pnet_anon = b.strukt("", 8, &[("net", net_ptr, 0)]);
    let possible_net = b.raw("possible_net_t", KIND_TYPEDEF, false, 0, pnet_anon, &[]);
    let ports = b.strukt("", 4, &[("skc_dport", u16t, 0), ("skc_num", u16t, 16)]);
    let portpair = b.union("", 4, &[("skc_portpair", u32t, 0), ("", ports, 0)]);
    let const_pnet = b.raw("", KIND_CONST, false, 0, possible_net, &[]);
    // kind_flag composite: offsets carry bitfield widths in the top byte.
    let sk_common = b.composite(
        KIND_STRUCT,
        "sock_common",
        32,
        true,
        &[
            ("skc_hash", u32t, 0),
            ("", portpair, 32),
            ("skc_family", u16t, 64),
            ("skc_state", vol_u8, 80),
            ("skc_reuse", u8t, (4 << 24) | 88),
            ("skc_net", const_pnet, 128),
        ],
    );
    b.strukt("sock", 48, &[("__sk_common", sk_common, 0), ("sk_ack_backlog", u32t, 256)]);
    // Old-style bitfield (no kind_flag): an INT narrower than its storage.
    let narrow = b.raw("", KIND_INT, false, 0, 4, &[3]);
    b.strukt("old_bits", 4, &[("flags", narrow, 0)]);
    b.strukt("unaligned", 4, &[("x", u8t, 4)]);
    b.build()
}

#[test]
fn resolves_members_through_anonymous_unions_and_structs() {
    let btf = Btf::parse(&kernel_like()).unwrap();
    assert_eq!(btf.member_offset("sock", "__sk_common.skc_num").unwrap(), 6);
    assert_eq!(btf.member_offset("sock", "__sk_common.skc_portpair").unwrap(), 4);
    assert_eq!(btf.member_offset("sock", "__sk_common.skc_family").unwrap(), 8);
    assert_eq!(btf.member_offset("sock", "__sk_common.skc_state").unwrap(), 10);
    assert_eq!(btf.member_offset("sock", "sk_ack_backlog").unwrap(), 32);
    assert_eq!(btf.member_offset("sock_common", "skc_num").unwrap(), 6);
}

#[test]
fn descends_through_typedef_and_const() {
    let btf = Btf::parse(&kernel_like()).unwrap();
    assert_eq!(btf.member_offset("sock", "__sk_common.skc_net.net").unwrap(), 16);
    assert_eq!(btf.member_offset("net", "ns.inum").unwrap(), 12);
    // Looking up a typedef name reaches the struct behind it.
    assert_eq!(btf.member_offset("possible_net_t", "net").unwrap(), 0);
}

#[test]
fn prefers_complete_struct_over_forward_declaration() {
    // "sock" and "net" have a FWD (and "net" an empty struct) listed before the definition.
    let btf = Btf::parse(&kernel_like()).unwrap();
    assert_eq!(btf.member_offset("net", "passive").unwrap(), 0);
}

#[test]
fn bitfields_are_rejected() {
    let btf = Btf::parse(&kernel_like()).unwrap();
    let e = btf.member_offset("sock", "__sk_common.skc_reuse").unwrap_err().to_string();
    assert!(e.contains("bitfield") && e.contains("sock.__sk_common.skc_reuse"), "{e}");
    let e = btf.member_offset("old_bits", "flags").unwrap_err().to_string();
    assert!(e.contains("bitfield"), "{e}");
    let e = btf.member_offset("unaligned", "x").unwrap_err().to_string();
    assert!(e.contains("byte boundary"), "{e}");
}

/// Found by fuzz/ (btf): anonymous members that fan out to the same types at every level made a
/// lookup take exponential time (4^24 visits here); now it is a one-line error, at once.
#[test]
fn fanned_out_anonymous_members_are_an_error_not_a_hang() {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    let mut inner = b.strukt("", 4, &[("leaf", int, 0)]);
    for _ in 0..24 {
        inner = b.strukt("", 4, &[("", inner, 0), ("", inner, 0), ("", inner, 0), ("", inner, 0)]);
    }
    b.strukt("sock", 4, &[("", inner, 0)]);
    let btf = Btf::parse(&b.build()).unwrap();
    let started = std::time::Instant::now();
    let e = btf.member_offset("sock", "missing").unwrap_err().to_string();
    assert!(e.contains("nested anonymous members") && !e.contains('\n'), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    // The first leaf is found long before the budget runs out.
    assert_eq!(btf.member_offset("sock", "leaf").unwrap(), 0);
}

#[test]
fn missing_members_and_structs_are_named() {
    let btf = Btf::parse(&kernel_like()).unwrap();
    let e = btf.member_offset("sock", "__sk_common.skc_nope").unwrap_err().to_string();
    assert!(e.contains("sock") && e.contains("__sk_common.skc_nope"), "{e}");
    assert!(!e.contains('\n'));
    let e = btf.member_offset("sock", "sk_ack_backlog.x").unwrap_err().to_string();
    assert!(e.contains("not a struct or union"), "{e}");
    // Descending through a pointer would need a second read, so it is not an offset.
    let e = btf.member_offset("sock", "__sk_common.skc_net.net.passive").unwrap_err().to_string();
    assert!(e.contains("not a struct or union"), "{e}");
    let e = btf.member_offset("no_such_struct", "a").unwrap_err().to_string();
    assert!(e.contains("no struct no_such_struct"), "{e}");
    assert!(btf.member_offset("sock", "").is_err());
    assert!(btf.member_offset("sock", "__sk_common..skc_num").is_err());
}

#[test]
fn sock_offsets_on_synthetic_btf_marks_missing_fields_unknown() {
    let btf = Btf::parse(&kernel_like()).unwrap();
    let o = sock_offsets(&btf);
    assert_eq!(o.family, 8);
    assert_eq!(o.state, 10);
    assert_eq!(o.num, 6);
    assert_eq!(o.net, 16);
    assert_eq!(o.net_inum, 12);
    assert_eq!(o.ack_backlog, 32);
    assert_eq!(o.rcv_saddr, OFFSET_UNKNOWN);
    assert_eq!(o.cookie, OFFSET_UNKNOWN);
    assert_eq!(o.syn_qlen, OFFSET_UNKNOWN);
    assert_eq!(o.err, OFFSET_UNKNOWN);
}

#[test]
fn skips_trailing_data_of_every_kind() {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    b.raw("", KIND_PTR, false, 0, int, &[]);
    b.raw("", KIND_ARRAY, false, 0, 0, &[int, int, 4]);
    b.raw("e", KIND_ENUM, false, 2, 4, &[b.strings.len() as u32, 0, 0, 1]);
    b.raw("f", KIND_FWD, true, 0, 0, &[]);
    b.raw("r", KIND_RESTRICT, false, 0, int, &[]);
    let proto = b.raw("", KIND_FUNC_PROTO, false, 2, int, &[0, int, 0, int]);
    b.raw("fn", KIND_FUNC, false, 0, proto, &[]);
    let var = b.raw("v", KIND_VAR, false, 0, int, &[1]);
    b.raw(".data", KIND_DATASEC, false, 1, 4, &[var, 0, 4]);
    b.raw("double", KIND_FLOAT, false, 0, 8, &[]);
    b.raw("tag", KIND_DECL_TAG, false, 0, int, &[u32::MAX]);
    b.raw("tt", KIND_TYPE_TAG, false, 0, int, &[]);
    b.raw("e64", KIND_ENUM64, false, 1, 8, &[0, 1, 2]);
    b.strukt("after", 8, &[("a", int, 0), ("b", int, 32)]);
    let btf = Btf::parse(&b.build()).unwrap();
    assert_eq!(btf.member_offset("after", "b").unwrap(), 4);
}

#[test]
fn truncated_input_is_an_error_at_every_length() {
    let blob = kernel_like();
    for n in 0..blob.len() {
        let e = Btf::parse(&blob[..n]).unwrap_err().to_string();
        assert!(!e.is_empty() && !e.contains('\n'), "{n}: {e}");
    }
}

#[test]
fn inconsistent_type_section_is_an_error() {
    let mut b = Builder::new();
    b.strukt("s", 4, &[("a", 1, 0)]);
    let mut blob = b.build();
    // Claim one byte less of type data than the struct needs (string section still fits).
    blob[12] -= 1;
    blob[16] -= 1;
    let e = Btf::parse(&blob).unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn bad_magic_big_endian_and_unknown_kind_are_errors() {
    let blob = kernel_like();
    let mut bad = blob.clone();
    bad[0] = 0;
    assert!(Btf::parse(&bad).unwrap_err().to_string().contains("magic"));
    let mut be = blob.clone();
    be.swap(0, 1);
    assert!(Btf::parse(&be).unwrap_err().to_string().contains("big-endian"));
    let mut b = Builder::new();
    b.raw("x", 30, false, 0, 0, &[]);
    assert!(Btf::parse(&b.build()).unwrap_err().to_string().contains("unknown kind 30"));
}

#[test]
fn corrupted_blobs_never_panic() {
    // Deterministic byte flips over the whole blob: any outcome but a panic is acceptable.
    let blob = kernel_like();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut m = blob.clone();
        let i = (seed as usize) % m.len();
        m[i] = (seed >> 32) as u8;
        if let Ok(btf) = Btf::parse(&m) {
            let _ = sock_offsets(&btf);
            let _ = btf.member_offset("sock", "__sk_common.skc_net.net");
        }
    }
}

#[test]
fn running_kernel_sock_offsets() {
    if !std::path::Path::new(VMLINUX_BTF).exists() {
        eprintln!("skipping: no {VMLINUX_BTF}");
        return;
    }
    let start = std::time::Instant::now();
    let btf = Btf::from_sys().unwrap();
    let parsed = start.elapsed();
    let o = sock_offsets(&btf);
    eprintln!("vmlinux BTF: {} types parsed in {parsed:?}, resolved in {:?}: {o:?}", btf.types.len(), start.elapsed());
    let all = [
        o.family,
        o.state,
        o.num,
        o.rcv_saddr,
        o.v6_rcv_saddr,
        o.net,
        o.net_inum,
        o.ack_backlog,
        o.max_ack_backlog,
        o.cookie,
        o.syn_qlen,
        o.daddr,
        o.dport,
        o.v6_daddr,
        o.protocol,
    ];
    assert!(all.iter().all(|&f| f != OFFSET_UNKNOWN), "{o:?}");
    // sock_common opens with skc_addrpair (daddr, then rcv_saddr) and, after skc_hash, the
    // skc_portpair (dport, then num); the two IPv6 addresses sit together likewise.
    assert_eq!((o.daddr, o.rcv_saddr), (0, 4), "{o:?}");
    assert_eq!(o.num, o.dport + 2, "{o:?}");
    assert_eq!(o.v6_rcv_saddr, o.v6_daddr + 16, "{o:?}");
    assert!(o.protocol > 64 && o.protocol < 1024, "sk_protocol lies past sock_common: {o:?}");
    // These all sit inside struct sock_common, which is well under 256 bytes on every kernel.
    assert!(o.family < 64 && o.state < 64 && o.num < 64 && o.rcv_saddr < 64, "{o:?}");
    assert!(o.net < 256 && o.v6_rcv_saddr < 256 && o.cookie < 256, "{o:?}");
    // skc_state directly follows the u16 skc_family; skc_num is the high half of skc_portpair.
    assert_eq!(o.state, o.family + 2);
    assert_eq!(o.max_ack_backlog, o.ack_backlog + 4);
    assert!(o.syn_qlen > o.max_ack_backlog, "{o:?}");
    assert!(o.net_inum < 65536, "{o:?}");
    // The accept probe's stamp and port lie in tcp_sock and inet_sock, past struct sock.
    let f = super::fd_offsets(&btf);
    assert!(f.inet_sport != OFFSET_UNKNOWN && f.inet_sport > o.protocol, "{f:?}");
    assert!(
        f.child_stamp != OFFSET_UNKNOWN && f.child_stamp > f.inet_sport && f.child_stamp.is_multiple_of(8),
        "{f:?}"
    );
}

#[test]
fn function_signatures_and_enum_values() {
    let mut b = Builder::new();
    let int = b.int("int", 4);
    let boolean = b.int("_Bool", 1);
    let bool_t = b.raw("bool", KIND_TYPEDEF, false, 0, boolean, &[]);
    let sock = b.strukt("sock", 8, &[("x", int, 0)]);
    let req = b.raw("request_sock", KIND_FWD, false, 0, 0, &[]);
    let cnst = b.raw("", KIND_CONST, false, 0, sock, &[]);
    let p_sock = b.raw("", KIND_PTR, false, 0, sock, &[]);
    let p_const_sock = b.raw("", KIND_PTR, false, 0, cnst, &[]);
    let p_req = b.raw("", KIND_PTR, false, 0, req, &[]);
    let (a, c, r, o) = (b.str("sk"), b.str("child"), b.str("req"), b.str("own_req"));
    let proto = b.raw("", KIND_FUNC_PROTO, false, 4, p_sock, &[a, p_const_sock, c, p_sock, r, p_req, o, bool_t]);
    b.raw("inet_csk_complete_hashdance", KIND_FUNC, false, 0, proto, &[]);
    let (v1, v2) = (b.str("BPF_FUNC_unspec"), b.str("BPF_FUNC_get_current_task_btf"));
    b.raw("bpf_func_id", KIND_ENUM, false, 2, 4, &[v1, 0, v2, 158]);
    let btf = Btf::parse(&b.build()).unwrap();

    let (ret, args) = btf.func_signature("inet_csk_complete_hashdance").unwrap();
    assert_eq!(ret, "struct sock *");
    assert_eq!(args, ["struct sock *", "struct sock *", "struct request_sock *", "bool"]);
    let want = ["struct sock *", "struct sock *", "struct request_sock *", "bool"];
    check_signature(&btf, "inet_csk_complete_hashdance", "struct sock *", &want).unwrap();
    let err = check_signature(&btf, "inet_csk_complete_hashdance", "struct sock *", &want[..3]).unwrap_err();
    assert!(err.to_string().contains("the program reads"), "{err}");
    let err = btf.func_signature("inet_csk_reqsk_queue_add").unwrap_err();
    assert!(err.to_string().contains("no function inet_csk_reqsk_queue_add"), "{err}");

    assert!(has_helper(&btf, "get_current_task_btf"));
    assert!(!has_helper(&btf, "get_func_ret"));
    assert!(!btf.enum_has("bpf_map_type", "BPF_MAP_TYPE_HASH"));
}

/// The hooked function and the helper exist on the running kernel as the probe table says.
#[test]
fn running_kernel_hook_signatures() {
    if !std::path::Path::new(VMLINUX_BTF).exists() {
        eprintln!("skipping: no {VMLINUX_BTF}");
        return;
    }
    let btf = Btf::from_sys().unwrap();
    for spec in crate::kernel::probes::PROBES {
        if let crate::kernel::attach::Hook::FExit(f) | crate::kernel::attach::Hook::KProbe(f) = spec.hook {
            check_signature(&btf, f.name, f.ret, f.args).unwrap();
        }
        if let Some(helper) = spec.helper {
            assert!(has_helper(&btf, helper), "{}: no bpf_{helper} on the running kernel", spec.program);
        }
    }
}
