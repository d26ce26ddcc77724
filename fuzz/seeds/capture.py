#!/usr/bin/env python3
"""Captures seed inputs for the fuzz targets from the machine it runs on (root, Linux):
raw sock_diag replies (inet and unix, the requests connmon sends), tracepoint format files,
/proc netstat/snmp, /proc/<pid>/cgroup files and fd link texts, and small slices of the kernel's
BTF (the structs the agent resolves, with pointers cut to void). Writes into fuzz/corpus/<target>/
under content-hash names, as libFuzzer names corpus files. Run: python3 fuzz/seeds/capture.py
"""
import glob, hashlib, os, socket, struct, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")


def save(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def dump(request, keep=3):
    """Sends one sock_diag request; returns up to `keep` raw recv() buffers (the last has DONE)."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4)  # NETLINK_SOCK_DIAG
    s.sendto(request, (0, 0))
    chunks, done = [], False
    while not done:
        buf = s.recv(65536)
        off = 0
        while off + 16 <= len(buf):
            ln, ty = struct.unpack_from("=IH", buf, off)
            if ty in (2, 3) or ln < 16:
                done = True
            off += (ln + 3) & ~3
        chunks.append(buf)
    s.close()
    return chunks[:keep - 1] + chunks[-1:] if len(chunks) > keep else chunks


def inet_request(family, states, meminfo):
    req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 1 << (7 - 1) if meminfo else 0, 0, states)
    req += b"\0" * 48  # socket id
    return struct.pack("=IHHII", 16 + len(req), 20, 0x301, 1, 0) + req


def unix_request():
    req = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 1 << 10, 0, 1 | 16, 0xFFFFFFFF, 0xFFFFFFFF)
    return struct.pack("=IHHII", 16 + len(req), 20, 0x301, 3, 0) + req


def sock_diag():
    # Listeners and a queued connection of our own, so every dump has something in it.
    l4 = socket.socket(); l4.bind(("127.0.0.1", 0)); l4.listen(7)
    c = socket.create_connection(l4.getsockname())
    l6 = socket.socket(socket.AF_INET6); l6.bind(("::1", 0)); l6.listen(3)
    u = socket.socket(socket.AF_UNIX); u.bind("\0connmon-fuzz-seed\0x"); u.listen(5)
    path = "/tmp/connmon-fuzz-seed.sock"
    if os.path.exists(path):
        os.unlink(path)
    p = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); p.bind(path); p.listen(2)
    listen, everything = 1 << 10, 0xFFF
    for family in (socket.AF_INET, socket.AF_INET6):
        for states, meminfo in ((listen, True), (listen, False), (everything, True)):
            for chunk in dump(inet_request(family, states, meminfo)):
                save("sock_diag_inet", chunk)
    for chunk in dump(unix_request()):
        save("sock_diag_unix", chunk)
    for s in (c, l4, l6, u, p):
        s.close()
    os.unlink(path)


def tracefs():
    for group, name in [("sock", "inet_sock_set_state"), ("sock", "sk_data_ready"), ("tcp", "tcp_retransmit_synack"),
                        ("tcp", "tcp_retransmit_skb"), ("tcp", "tcp_receive_reset"), ("tcp", "tcp_send_reset"),
                        ("tcp", "tcp_destroy_sock"), ("skb", "kfree_skb"), ("syscalls", "sys_enter_accept4"),
                        ("syscalls", "sys_exit_accept4"), ("sched", "sched_process_exit")]:
        f = f"/sys/kernel/tracing/events/{group}/{name}/format"
        if os.path.exists(f):
            save("tracefs_format", open(f, "rb").read())


def proc():
    for f in ("/proc/net/netstat", "/proc/net/snmp", "/proc/net/snmp6"):
        save("proc_netstat", open(f, "rb").read())
    seen = set()
    for f in glob.glob("/proc/[0-9]*/cgroup"):
        try:
            text = open(f, "rb").read()
        except OSError:
            continue
        if text not in seen and len(seen) < 6:
            seen.add(text)
            save("proc_cgroup", text)
            for line in text.decode().splitlines():
                save("cgroup_path", line.split(":", 2)[2])
    kinds = set()
    for f in glob.glob("/proc/[0-9]*/fd/*"):
        try:
            link = os.readlink(f)
        except OSError:
            continue
        kind = link.split(":", 1)[0] if ":" in link else link[:5]
        if kind not in kinds:
            kinds.add(kind)
            save("proc_fd_link", link)


# ---- BTF slices ----
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, PROTO, VAR, DATASEC, FLOAT, \
    DECL_TAG, TYPE_TAG, ENUM64 = range(1, 20)


def btf_types(blob):
    hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<IIIII", blob, 4)
    types = blob[hdr_len + type_off:hdr_len + type_off + type_len]
    strings = blob[hdr_len + str_off:hdr_len + str_off + str_len]
    out, pos = [None], 0
    while pos < len(types):
        name_off, info, size = struct.unpack_from("<III", types, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        extra = {INT: 4, VAR: 4, DECL_TAG: 4, ARRAY: 12, STRUCT: 12 * vlen, UNION: 12 * vlen, DATASEC: 12 * vlen,
                 ENUM64: 12 * vlen, ENUM: 8 * vlen, PROTO: 8 * vlen}.get(kind, 0)
        out.append((name_off, info, size, types[pos + 12:pos + 12 + extra]))
        pos += 12 + extra
    return out, strings


def name(strings, off):
    return strings[off:strings.index(b"\0", off)].decode()


def btf_slice(blob, roots):
    """The named structs and everything they embed by value; pointers point to void."""
    types, strings = btf_types(blob)
    by_name = {}
    for i, (n, info, _, _) in enumerate(types[1:], 1):
        if (info >> 24) & 0x1F in (STRUCT, UNION) and (info & 0xFFFF):
            by_name.setdefault(name(strings, n), i)
    keep, todo = {}, [by_name[r] for r in roots if r in by_name]
    while todo:
        i = todo.pop()
        if i == 0 or i in keep:
            continue
        keep[i] = len(keep) + 1
        n, info, size, extra = types[i]
        kind = (info >> 24) & 0x1F
        if kind in (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG):
            todo.append(size)
        elif kind == ARRAY:
            todo.append(struct.unpack_from("<I", extra, 0)[0])
        elif kind in (STRUCT, UNION):
            todo.extend(struct.unpack_from("<I", extra, 12 * m + 4)[0] for m in range(info & 0xFFFF))
    new_strings, str_map = bytearray(b"\0"), {0: 0}

    def s(off):
        if off not in str_map:
            str_map[off] = len(new_strings)
            new_strings.extend(strings[off:strings.index(b"\0", off) + 1])
        return str_map[off]

    def t(i):
        return keep.get(i, 0)

    out = bytearray()
    for i in sorted(keep, key=keep.get):
        n, info, size, extra = types[i]
        kind = (info >> 24) & 0x1F
        if kind == PTR:
            size = 0
        elif kind in (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG):
            size = t(size)
        elif kind == ARRAY:
            elem, index, nelems = struct.unpack_from("<III", extra)
            extra = struct.pack("<III", t(elem), 0, nelems)
        elif kind in (STRUCT, UNION):
            members = bytearray()
            for m in range(info & 0xFFFF):
                mn, mt, mo = struct.unpack_from("<III", extra, 12 * m)
                members += struct.pack("<III", s(mn), t(mt), mo)
            extra = bytes(members)
        elif kind == ENUM:
            extra = b"".join(struct.pack("<Ii", s(struct.unpack_from("<I", extra, 8 * m)[0]),
                                         struct.unpack_from("<i", extra, 8 * m + 4)[0]) for m in range(info & 0xFFFF))
        out += struct.pack("<III", s(n), info, size) + extra
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(out), len(out), len(new_strings))
    return hdr + bytes(out) + bytes(new_strings)


def btf():
    blob = open("/sys/kernel/btf/vmlinux", "rb").read()
    for roots in (["sock_common"], ["net"], ["socket", "fdtable", "files_struct"], ["sock"], ["inet_connection_sock"],
                  ["task_struct"]):
        data = btf_slice(blob, roots)
        if len(data) < 256 * 1024:
            save("btf", data)
        print(f"btf slice {roots}: {len(data)} bytes", file=sys.stderr)


if __name__ == "__main__":
    sock_diag()
    tracefs()
    proc()
    btf()
