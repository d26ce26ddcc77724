//! A small reader for the kernel's BTF type information, written for one job: finding the byte
//! offsets of the `struct sock` (and related) fields that the eBPF probes read with
//! `bpf_probe_read_kernel`. Those offsets change between kernel versions and configurations, so the
//! agent resolves them at start-up from `/sys/kernel/btf/vmlinux` and writes them into the eBPF
//! object as [`monitor_common::SockOffsets`]. This module owns parsing the BTF blob (header, type
//! section, string section), resolving dotted member paths through anonymous structs/unions and
//! typedefs, and the table that maps each `SockOffsets` field to its kernel member path.

use std::collections::HashMap;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use monitor_common::{SockOffsets, OFFSET_UNKNOWN};

/// Where the running kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xEB9F;
/// Header fields up to and including `str_len`; later kernels may append fields, which `hdr_len`
/// lets us skip without understanding them.
const HEADER_MIN_LEN: usize = 24;
/// Every type starts with name_off, info and size/type, each a u32.
const TYPE_HEADER_LEN: usize = 12;
/// Bound on typedef/modifier chains and anonymous-member nesting: real kernels need a handful, and a
/// bound keeps a malformed or cyclic blob from looping forever.
const MAX_DEPTH: usize = 32;
/// Bound on the members one [`Btf::member_offset`] visits, anonymous members' included. The
/// deepest path in a real kernel visits a few hundred; corrupt BTF whose anonymous members fan
/// out to the same types again and again would otherwise take exponential time (a hang at
/// start-up, found by fuzzing).
const MAX_MEMBER_VISITS: usize = 100_000;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One entry of the type section; the kind-specific trailing data stays in `Btf::type_data` and is
/// decoded only for the few types a lookup touches, which keeps parsing a single cheap pass.
#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    info: u32,
    size_or_type: u32,
    /// Offset of the kind-specific trailing data inside the type section.
    data: usize,
}

impl Type {
    const VOID: Type = Type { name_off: 0, info: 0, size_or_type: 0, data: 0 };

    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }

    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }

    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }

    fn is_composite(&self) -> bool {
        matches!(self.kind(), KIND_STRUCT | KIND_UNION)
    }

    fn is_modifier(&self) -> bool {
        matches!(self.kind(), KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG)
    }
}

/// A struct/union member with its position already split into bit offset and bitfield width.
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u64,
    bitfield_size: u32,
}

/// Parsed BTF: the type table (indexed by type id, id 0 being `void`) and the string section.
pub struct Btf {
    types: Vec<Type>,
    type_data: Vec<u8>,
    strings: Vec<u8>,
    /// Built on first lookup: most agent runs resolve a dozen paths, so indexing every name of
    /// ~100k types up front would cost more than it saves.
    by_name: OnceLock<HashMap<String, Vec<u32>>>,
}

impl std::fmt::Debug for Btf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Btf").field("types", &self.types.len()).field("strings_len", &self.strings.len()).finish()
    }
}

fn u16_at(bytes: &[u8], off: usize) -> Option<u16> {
    let b = bytes.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(bytes: &[u8], off: usize) -> Option<u32> {
    let b = bytes.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Size of the data that follows a type's 12-byte header, or None for a kind we cannot skip.
fn trailing_len(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
        KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_FUNC | KIND_FLOAT
        | KIND_TYPE_TAG => 0,
        _ => return None,
    })
}

/// The byte range of one header-described section, checked against the blob.
fn section(bytes: &[u8], hdr_len: usize, off: u32, len: u32, what: &str) -> Result<(usize, usize)> {
    let start = hdr_len.checked_add(off as usize);
    let end = start.and_then(|s| s.checked_add(len as usize));
    match (start, end) {
        (Some(s), Some(e)) if e <= bytes.len() => Ok((s, e)),
        _ => bail!(
            "BTF {what} section (offset {off}, length {len}) runs past the end of the {}-byte blob: the BTF data is truncated or corrupt",
            bytes.len()
        ),
    }
}

impl Btf {
    /// Parses a raw BTF blob (as found in `/sys/kernel/btf/vmlinux`). Only little-endian BTF is
    /// accepted, since that is what every kernel connmon targets produces.
    pub fn parse(bytes: &[u8]) -> Result<Btf> {
        if bytes.len() < HEADER_MIN_LEN {
            bail!(
                "BTF blob is {} bytes, too short for the {HEADER_MIN_LEN}-byte header: the BTF data is truncated",
                bytes.len()
            );
        }
        let magic = u16_at(bytes, 0).unwrap_or(0);
        if magic != MAGIC {
            if magic.swap_bytes() == MAGIC {
                bail!("BTF blob is big-endian, which connmon does not support: run on a little-endian kernel");
            }
            bail!("not a BTF blob: magic is {magic:#06x}, expected {MAGIC:#06x}");
        }
        let version = bytes.get(2).copied().unwrap_or(0);
        if version != 1 {
            bail!("unsupported BTF version {version} (connmon understands version 1)");
        }
        let field = |off| u32_at(bytes, off).unwrap_or(0);
        let hdr_len = field(4) as usize;
        if hdr_len < HEADER_MIN_LEN || hdr_len > bytes.len() {
            bail!("BTF header length {hdr_len} is invalid for a {}-byte blob: the BTF data is corrupt", bytes.len());
        }
        let (ts, te) = section(bytes, hdr_len, field(8), field(12), "type")?;
        let (ss, se) = section(bytes, hdr_len, field(16), field(20), "string")?;
        let type_data = bytes[ts..te].to_vec();
        let strings = bytes[ss..se].to_vec();
        if strings.first().is_some_and(|&b| b != 0) {
            bail!("BTF string section does not start with an empty string: the BTF data is corrupt");
        }

        // Roughly 40 bytes per type in vmlinux; reserving avoids repeated reallocation of ~150k
        // entries.
        let mut types = Vec::with_capacity(type_data.len() / 40 + 1);
        types.push(Type::VOID);
        let mut pos = 0usize;
        while pos < type_data.len() {
            let id = types.len();
            let (Some(name_off), Some(info), Some(size_or_type)) =
                (u32_at(&type_data, pos), u32_at(&type_data, pos + 4), u32_at(&type_data, pos + 8))
            else {
                bail!("BTF type section ends inside the header of type {id}: the BTF data is truncated");
            };
            let t = Type { name_off, info, size_or_type, data: pos + TYPE_HEADER_LEN };
            let extra = trailing_len(t.kind(), t.vlen()).ok_or_else(|| {
                anyhow!(
                    "BTF type {id} has unknown kind {}: this BTF is newer than connmon understands: upgrade connmon",
                    t.kind()
                )
            })?;
            let next = t.data + extra;
            if next > type_data.len() {
                bail!("BTF type section ends inside type {id}: the BTF data is truncated");
            }
            // Ids are u32 in the format; more types than that cannot be referenced anyway.
            if u32::try_from(id).is_err() {
                bail!("BTF has more than u32::MAX types: the BTF data is corrupt");
            }
            types.push(t);
            pos = next;
        }
        Ok(Btf { types, type_data, strings, by_name: OnceLock::new() })
    }

    /// Reads and parses the running kernel's BTF.
    pub fn from_sys() -> Result<Btf> {
        let bytes = match std::fs::read(VMLINUX_BTF) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no kernel BTF at {VMLINUX_BTF} (kernel built without CONFIG_DEBUG_INFO_BTF): connmon needs it to locate struct sock fields; run a kernel built with CONFIG_DEBUG_INFO_BTF=y"
            ),
            Err(e) => bail!("cannot read kernel BTF at {VMLINUX_BTF}: {e}: run connmon as root"),
        };
        Btf::parse(&bytes).with_context(|| format!("kernel BTF at {VMLINUX_BTF} is unusable"))
    }

    fn ty(&self, id: u32) -> Option<&Type> {
        self.types.get(id as usize)
    }

    fn name(&self, off: u32) -> &str {
        let Some(tail) = self.strings.get(off as usize..) else {
            return "";
        };
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).unwrap_or("")
    }

    fn names(&self) -> &HashMap<String, Vec<u32>> {
        self.by_name.get_or_init(|| {
            let mut map: HashMap<String, Vec<u32>> = HashMap::new();
            for (id, t) in self.types.iter().enumerate().skip(1) {
                if !matches!(t.kind(), KIND_STRUCT | KIND_UNION | KIND_TYPEDEF) {
                    continue;
                }
                let name = self.name(t.name_off);
                if !name.is_empty() {
                    // `id` fits in u32: parse rejects larger tables.
                    map.entry(name.to_owned()).or_default().push(id as u32);
                }
            }
            map
        })
    }

    /// Follows typedefs and qualifiers down to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<(u32, &Type)> {
        for _ in 0..MAX_DEPTH {
            let t = self.ty(id)?;
            if !t.is_modifier() {
                return Some((id, t));
            }
            id = t.size_or_type;
        }
        None
    }

    fn members<'a>(&'a self, t: &'a Type) -> impl Iterator<Item = Member> + 'a {
        let kind_flag = t.kind_flag();
        (0..t.vlen()).filter_map(move |i| {
            let base = t.data + i * 12;
            let name_off = u32_at(&self.type_data, base)?;
            let type_id = u32_at(&self.type_data, base + 4)?;
            let raw = u32_at(&self.type_data, base + 8)?;
            // With kind_flag set the offset word packs the bitfield width in its top byte.
            let (bit_offset, bitfield_size) = if kind_flag { (raw & 0x00ff_ffff, raw >> 24) } else { (raw, 0) };
            Some(Member { name_off, type_id, bit_offset: u64::from(bit_offset), bitfield_size })
        })
    }

    /// Whether a member is a bitfield, covering both encodings: an explicit width (kind_flag
    /// structs) or, in older BTF, an INT type narrower than its storage.
    fn is_bitfield(&self, m: &Member) -> bool {
        if m.bitfield_size != 0 {
            return true;
        }
        match self.resolve(m.type_id) {
            Some((_, t)) if t.kind() == KIND_INT => {
                let enc = u32_at(&self.type_data, t.data).unwrap_or(0);
                let bits = enc & 0xff;
                let offset = (enc >> 16) & 0xff;
                offset != 0 || u64::from(bits) != u64::from(t.size_or_type) * 8
            }
            _ => false,
        }
    }

    /// Finds `name` among the members of composite `t`, looking inside anonymous struct/union
    /// members the way C name lookup does. Returns the member and its bit offset within `t`.
    /// `budget` counts down the members visited (see [`MAX_MEMBER_VISITS`]).
    fn find_member(&self, t: &Type, name: &str, depth: usize, budget: &mut usize) -> Option<(Member, u64)> {
        if depth > MAX_DEPTH {
            return None;
        }
        for m in self.members(t) {
            if *budget == 0 {
                return None;
            }
            *budget -= 1;
            if m.name_off == 0 || self.name(m.name_off).is_empty() {
                if let Some((_, inner)) = self.resolve(m.type_id) {
                    if inner.is_composite() {
                        if let Some((found, off)) = self.find_member(inner, name, depth + 1, budget) {
                            return Some((found, m.bit_offset + off));
                        }
                    }
                }
            } else if self.name(m.name_off) == name {
                let off = m.bit_offset;
                return Some((m, off));
            }
        }
        None
    }

    /// Bit offset of `path` inside composite type `id`, or an error naming what went wrong.
    fn path_bits(&self, strukt: &str, id: u32, path: &str, budget: &mut usize) -> Result<u64> {
        let mut cur = id;
        let mut bits = 0u64;
        let mut walked = String::new();
        for comp in path.split('.') {
            let Some((_, t)) = self.resolve(cur).filter(|(_, t)| t.is_composite()) else {
                bail!(
                    "{strukt}.{walked} is not a struct or union in kernel BTF, so it has no member {comp} (path {strukt}.{path})"
                );
            };
            let Some((m, off)) = self.find_member(t, comp, 0, budget) else {
                if *budget == 0 {
                    bail!(
                        "struct {strukt} in kernel BTF has more than {MAX_MEMBER_VISITS} nested anonymous members to search for {path}: the BTF data is corrupt"
                    );
                }
                let within = if walked.is_empty() { String::new() } else { format!(" (in {strukt}.{walked})") };
                bail!("struct {strukt} has no member {path} in kernel BTF: no {comp}{within}");
            };
            if !walked.is_empty() {
                walked.push('.');
            }
            walked.push_str(comp);
            if self.is_bitfield(&m) {
                bail!("{strukt}.{walked} is a bitfield in kernel BTF; connmon only reads whole fields");
            }
            bits += off;
            cur = m.type_id;
        }
        Ok(bits)
    }

    /// Byte offset of a dotted member path inside the named struct, e.g.
    /// `("sock", "__sk_common.skc_net")`. Anonymous struct/union members are searched
    /// transparently; typedefs and qualifiers are followed when descending. Bitfields are an error.
    pub fn member_offset(&self, strukt: &str, path: &str) -> Result<u32> {
        if path.is_empty() || path.split('.').any(str::is_empty) {
            bail!("member path {path:?} for struct {strukt} is malformed: use dot-separated member names like \"a.b\"");
        }
        // Several types can share a name (a forward declaration, a typedef, or same-named private
        // structs in different compilation units). Only complete definitions count, and the first
        // one that actually has the path wins.
        let ids = self.names().get(strukt).map(Vec::as_slice).unwrap_or(&[]);
        let mut first_err = None;
        // One budget for every candidate: many same-named structs must not multiply it.
        let mut budget = MAX_MEMBER_VISITS;
        for &id in ids {
            let Some((rid, t)) = self.resolve(id) else {
                continue;
            };
            if !t.is_composite() || (t.vlen() == 0 && t.size_or_type == 0) {
                continue;
            }
            match self.path_bits(strukt, rid, path, &mut budget) {
                Ok(bits) if bits % 8 == 0 => {
                    return u32::try_from(bits / 8).map_err(|_| {
                        anyhow!("{strukt}.{path} has an impossible offset of {bits} bits: the BTF data is corrupt")
                    })
                }
                Ok(bits) => {
                    first_err.get_or_insert_with(|| {
                        anyhow!("{strukt}.{path} starts at bit {bits}, not on a byte boundary; connmon only reads whole fields")
                    });
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or_else(|| {
            anyhow!(
                "kernel BTF has no struct {strukt} (needed for {strukt}.{path}): this kernel's layout is not supported"
            )
        }))
    }
}

/// Resolves one field trying each candidate path in order; logs why it could not when none match.
fn resolve_field(btf: &Btf, field: &str, strukt: &str, paths: &[&str]) -> u32 {
    let mut first_err = None;
    for path in paths {
        match btf.member_offset(strukt, path) {
            Ok(off) => return off,
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let err = first_err.map(|e| format!("{e:#}")).unwrap_or_default();
    log::warn!("SockOffsets.{field} is unknown on this kernel, the probes will skip it: {err}");
    OFFSET_UNKNOWN
}

/// Resolves every field of [`SockOffsets`] from `btf`. A field that cannot be resolved gets
/// [`OFFSET_UNKNOWN`] and one warning naming it; the probes then skip that read rather than read
/// the wrong bytes.
/// Resolves `task_struct.group_leader` and `task_struct.comm`; unknown fields make the kernel side
/// fall back to the calling thread's name.
pub fn task_offsets(btf: &Btf) -> monitor_common::TaskOffsets {
    monitor_common::TaskOffsets {
        group_leader: resolve_field(btf, "group_leader", "task_struct", &["group_leader"]),
        comm: resolve_field(btf, "comm", "task_struct", &["comm"]),
    }
}

/// Offsets for following a descriptor to its socket (accept-queue probes). The tracepoint record
/// fields are filled in by the loader from the format files.
pub fn fd_offsets(btf: &Btf) -> monitor_common::FdOffsets {
    monitor_common::FdOffsets {
        task_files: resolve_field(btf, "files", "task_struct", &["files"]),
        files_fdt: resolve_field(btf, "fdt", "files_struct", &["fdt"]),
        fdt_fd: resolve_field(btf, "fd", "fdtable", &["fd"]),
        fdt_max_fds: resolve_field(btf, "max_fds", "fdtable", &["max_fds"]),
        file_private: resolve_field(btf, "private_data", "file", &["private_data"]),
        file_inode: resolve_field(btf, "f_inode", "file", &["f_inode"]),
        inode_ino: resolve_field(btf, "i_ino", "inode", &["i_ino"]),
        socket_sk: resolve_field(btf, "sk", "socket", &["sk"]),
        sock_socket: resolve_field(btf, "sk_socket", "sock", &["sk_socket"]),
        // tcp_sock and inet_sock begin with struct sock, so both are offsets from sk too.
        child_stamp: resolve_field(btf, "child_stamp", "tcp_sock", &["rcvq_space.time"]),
        inet_sport: resolve_field(btf, "inet_sport", "inet_sock", &["inet_sport"]),
        ..monitor_common::FdOffsets::UNKNOWN
    }
}

pub fn sock_offsets(btf: &Btf) -> SockOffsets {
    let sock = |field, paths: &[&str]| resolve_field(btf, field, "sock", paths);
    SockOffsets {
        family: sock("family", &["__sk_common.skc_family"]),
        state: sock("state", &["__sk_common.skc_state"]),
        num: sock("num", &["__sk_common.skc_num"]),
        rcv_saddr: sock("rcv_saddr", &["__sk_common.skc_rcv_saddr"]),
        v6_rcv_saddr: sock("v6_rcv_saddr", &["__sk_common.skc_v6_rcv_saddr"]),
        // possible_net_t wraps the pointer so that !CONFIG_NET_NS kernels can make it empty; there
        // the field is legitimately unknown.
        net: sock("net", &["__sk_common.skc_net.net"]),
        // Since 3.19 the inode lives in `struct ns_common ns`; 6.18 reshaped ns_common (new
        // ns_type/ns_tree members) but kept `inum` reachable as ns.inum, and anonymous wrappers
        // would be looked through anyway. `proc_inum` is the pre-3.19 name, kept as a fallback.
        net_inum: resolve_field(btf, "net_inum", "net", &["ns.inum", "proc_inum"]),
        ack_backlog: sock("ack_backlog", &["sk_ack_backlog"]),
        max_ack_backlog: sock("max_ack_backlog", &["sk_max_ack_backlog"]),
        // `sk_cookie` is a #define for `__sk_common.skc_cookie` in every kernel so far, so BTF only
        // knows the latter; the plain name is tried first in case it ever becomes a real member.
        cookie: sock("cookie", &["sk_cookie", "__sk_common.skc_cookie"]),
        // struct inet_connection_sock begins with struct sock, so this is also an offset from sk.
        syn_qlen: resolve_field(btf, "syn_qlen", "inet_connection_sock", &["icsk_accept_queue.qlen"]),
        err: sock("err", &["sk_err"]),
        daddr: sock("daddr", &["__sk_common.skc_daddr"]),
        dport: sock("dport", &["__sk_common.skc_dport"]),
        v6_daddr: sock("v6_daddr", &["__sk_common.skc_v6_daddr"]),
        protocol: sock("protocol", &["sk_protocol"]),
    }
}

#[path = "btf_funcs.rs"]
mod funcs;
pub use funcs::{check_signature, has_helper};

#[cfg(test)]
#[path = "btf_tests.rs"]
mod tests;
