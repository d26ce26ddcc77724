//! Tests for tracefs format parsing, fed with format files captured verbatim from a 6.18 kernel
//! (tabs and the trailing print fmt included) so the parser is checked against the real syntax.

use super::*;

/// `events/sock/inet_sock_set_state/format` as captured.
const INET_SOCK_SET_STATE: &str = r#"name: inet_sock_set_state
ID: 2287
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skaddr;	offset:8;	size:8;	signed:0;
	field:int oldstate;	offset:16;	size:4;	signed:1;
	field:int newstate;	offset:20;	size:4;	signed:1;
	field:__u16 sport;	offset:24;	size:2;	signed:0;
	field:__u16 dport;	offset:26;	size:2;	signed:0;
	field:__u16 family;	offset:28;	size:2;	signed:0;
	field:__u16 protocol;	offset:30;	size:2;	signed:0;
	field:__u8 saddr[4];	offset:32;	size:4;	signed:0;
	field:__u8 daddr[4];	offset:36;	size:4;	signed:0;
	field:__u8 saddr_v6[16];	offset:40;	size:16;	signed:0;
	field:__u8 daddr_v6[16];	offset:56;	size:16;	signed:0;

print fmt: "family=%s protocol=%s sport=%hu dport=%hu saddr=%pI4 daddr=%pI4 saddrv6=%pI6c daddrv6=%pI6c oldstate=%s newstate=%s", __print_symbolic(REC->family, { 2, "AF_INET" }, { 10, "AF_INET6" }), __print_symbolic(REC->protocol, { 6, "IPPROTO_TCP" }, { 132, "IPPROTO_SCTP" }, { 262, "IPPROTO_MPTCP" }), REC->sport, REC->dport, REC->saddr, REC->daddr, REC->saddr_v6, REC->daddr_v6, __print_symbolic(REC->oldstate, { 1, "TCP_ESTABLISHED" }, { 2, "TCP_SYN_SENT" }, { 3, "TCP_SYN_RECV" }, { 4, "TCP_FIN_WAIT1" }, { 5, "TCP_FIN_WAIT2" }, { 6, "TCP_TIME_WAIT" }, { 7, "TCP_CLOSE" }, { 8, "TCP_CLOSE_WAIT" }, { 9, "TCP_LAST_ACK" }, { 10, "TCP_LISTEN" }, { 11, "TCP_CLOSING" }, { 12, "TCP_NEW_SYN_RECV" }), __print_symbolic(REC->newstate, { 1, "TCP_ESTABLISHED" }, { 2, "TCP_SYN_SENT" }, { 3, "TCP_SYN_RECV" }, { 4, "TCP_FIN_WAIT1" }, { 5, "TCP_FIN_WAIT2" }, { 6, "TCP_TIME_WAIT" }, { 7, "TCP_CLOSE" }, { 8, "TCP_CLOSE_WAIT" }, { 9, "TCP_LAST_ACK" }, { 10, "TCP_LISTEN" }, { 11, "TCP_CLOSING" }, { 12, "TCP_NEW_SYN_RECV" })
"#;

/// `events/tcp/tcp_retransmit_synack/format` as captured.
const TCP_RETRANSMIT_SYNACK: &str = r#"name: tcp_retransmit_synack
ID: 2275
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skaddr;	offset:8;	size:8;	signed:0;
	field:const void * req;	offset:16;	size:8;	signed:0;
	field:__u16 sport;	offset:24;	size:2;	signed:0;
	field:__u16 dport;	offset:26;	size:2;	signed:0;
	field:__u16 family;	offset:28;	size:2;	signed:0;
	field:__u8 saddr[4];	offset:30;	size:4;	signed:0;
	field:__u8 daddr[4];	offset:34;	size:4;	signed:0;
	field:__u8 saddr_v6[16];	offset:38;	size:16;	signed:0;
	field:__u8 daddr_v6[16];	offset:54;	size:16;	signed:0;

print fmt: "family=%s sport=%hu dport=%hu saddr=%pI4 daddr=%pI4 saddrv6=%pI6c daddrv6=%pI6c", __print_symbolic(REC->family, { 2, "AF_INET" }, { 10, "AF_INET6" }), REC->sport, REC->dport, REC->saddr, REC->daddr, REC->saddr_v6, REC->daddr_v6
"#;

/// `events/sock/sk_data_ready/format` as captured.
const SK_DATA_READY: &str = r#"name: sk_data_ready
ID: 2285
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skaddr;	offset:8;	size:8;	signed:0;
	field:__u16 family;	offset:16;	size:2;	signed:0;
	field:__u16 protocol;	offset:18;	size:2;	signed:0;
	field:unsigned long ip;	offset:24;	size:8;	signed:0;

print fmt: "family=%u protocol=%u func=%ps", REC->family, REC->protocol, (void *)REC->ip
"#;

/// `events/sched/sched_process_exec/format` as captured.
const SCHED_PROCESS_EXEC: &str = r#"name: sched_process_exec
ID: 365
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:__data_loc char[] filename;	offset:8;	size:4;	signed:0;
	field:pid_t pid;	offset:12;	size:4;	signed:1;
	field:pid_t old_pid;	offset:16;	size:4;	signed:1;

print fmt: "filename=%s pid=%d old_pid=%d", __get_str(filename), REC->pid, REC->old_pid
"#;
fn field(f: &Format, name: &str) -> (u32, u32, bool, String) {
    let x = f.field(name).unwrap();
    (x.offset, x.size, x.signed, x.ty.clone())
}

#[test]
fn inet_sock_set_state() {
    let f = parse_format(INET_SOCK_SET_STATE).unwrap();
    assert_eq!(f.name, "inet_sock_set_state");
    assert_eq!(f.id, Some(2287));
    assert_eq!(f.fields.len(), 15);
    assert_eq!(field(&f, "common_type"), (0, 2, false, "unsigned short".into()));
    assert_eq!(field(&f, "common_pid"), (4, 4, true, "int".into()));
    assert_eq!(field(&f, "skaddr"), (8, 8, false, "const void *".into()));
    assert_eq!(field(&f, "oldstate"), (16, 4, true, "int".into()));
    assert_eq!(field(&f, "newstate"), (20, 4, true, "int".into()));
    assert_eq!(field(&f, "sport"), (24, 2, false, "__u16".into()));
    assert_eq!(field(&f, "family"), (28, 2, false, "__u16".into()));
    assert_eq!(field(&f, "saddr"), (32, 4, false, "__u8[4]".into()));
    assert_eq!(field(&f, "saddr_v6"), (40, 16, false, "__u8[16]".into()));
    assert_eq!(field(&f, "daddr_v6"), (56, 16, false, "__u8[16]".into()));
}

#[test]
fn tcp_retransmit_synack() {
    let f = parse_format(TCP_RETRANSMIT_SYNACK).unwrap();
    assert_eq!(f.name, "tcp_retransmit_synack");
    assert_eq!(f.id, Some(2275));
    assert_eq!(field(&f, "skaddr"), (8, 8, false, "const void *".into()));
    assert_eq!(field(&f, "req"), (16, 8, false, "const void *".into()));
    assert_eq!(field(&f, "saddr"), (30, 4, false, "__u8[4]".into()));
    assert_eq!(field(&f, "daddr_v6"), (54, 16, false, "__u8[16]".into()));
}

#[test]
fn sk_data_ready() {
    let f = parse_format(SK_DATA_READY).unwrap();
    assert_eq!(f.name, "sk_data_ready");
    assert_eq!(f.id, Some(2285));
    assert_eq!(f.fields.len(), 8);
    assert_eq!(field(&f, "skaddr"), (8, 8, false, "const void *".into()));
    assert_eq!(field(&f, "protocol"), (18, 2, false, "__u16".into()));
    assert_eq!(field(&f, "ip"), (24, 8, false, "unsigned long".into()));
}

#[test]
fn data_loc_field() {
    let f = parse_format(SCHED_PROCESS_EXEC).unwrap();
    assert_eq!(field(&f, "filename"), (8, 4, false, "__data_loc char[]".into()));
    assert_eq!(field(&f, "old_pid"), (16, 4, true, "pid_t".into()));
}

#[test]
fn missing_field_names_tracepoint_and_field() {
    let f = parse_format(SK_DATA_READY).unwrap();
    let e = f.field("newstate").unwrap_err().to_string();
    assert!(e.contains("sk_data_ready") && e.contains("newstate"), "{e}");
    assert!(!e.contains('\n'));
}

#[test]
fn signed_attribute_is_optional_and_id_too() {
    let f = parse_format("name: old\nformat:\n\tfield:int x;\toffset:8;\tsize:4;\n").unwrap();
    assert_eq!(f.id, None);
    assert_eq!(field(&f, "x"), (8, 4, false, "int".into()));
}

#[test]
fn malformed_input_is_an_error() {
    let cases = [
        "",
        "garbage\n",
        // No name line.
        "ID: 1\nformat:\n\tfield:int x;\toffset:8;\tsize:4;\tsigned:1;\n",
        // Name but no fields.
        "name: x\nID: 1\nformat:\n\nprint fmt: \"\"\n",
        "name: x\nID: one\nformat:\n\tfield:int x;\toffset:8;\tsize:4;\tsigned:1;\n",
        "name: x\nformat:\n\tfield:int x;\toffset:eight;\tsize:4;\tsigned:1;\n",
        "name: x\nformat:\n\tfield:int x;\tsize:4;\tsigned:1;\n",
        "name: x\nformat:\n\tfield:int x;\toffset:8;\tsigned:1;\n",
        // A declaration without a type, or without a name.
        "name: x\nformat:\n\tfield:x;\toffset:8;\tsize:4;\tsigned:1;\n",
        "name: x\nformat:\n\tfield:int *;\toffset:8;\tsize:4;\tsigned:1;\n",
        "name: x\nformat:\n\tfield:__u8 a4];\toffset:8;\tsize:4;\tsigned:1;\n",
        "name: x\nformat:\n\tfield:int x;\toffset:-8;\tsize:4;\tsigned:1;\n",
        "name: x\nformat:\n\tfield int x offset 8\n",
    ];
    for c in cases {
        let e = parse_format(c).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{c:?}: {e}");
    }
    // Truncating a real file anywhere must give an error or a subset, never a panic.
    for n in 0..INET_SOCK_SET_STATE.len() {
        if let Some(t) = INET_SOCK_SET_STATE.get(..n) {
            let _ = parse_format(t);
        }
    }
}

#[test]
fn print_fmt_is_not_parsed_as_fields() {
    let text = "name: x\nformat:\n\tfield:int a;\toffset:8;\tsize:4;\tsigned:1;\n\nprint fmt: \"field:%d\", REC->a\n\tfield:bogus\n";
    assert_eq!(parse_format(text).unwrap().fields.len(), 1);
}

#[test]
fn non_default_dir_is_never_mounted() {
    let dir = std::env::temp_dir().join(format!("connmon-tracefs-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let e = ensure_mounted(&dir).unwrap_err().to_string();
    assert!(e.contains("no events/ directory"), "{e}");
    std::fs::create_dir_all(dir.join("events")).unwrap();
    assert_eq!(ensure_mounted(&dir).unwrap(), dir);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn read_format_from_a_directory_tree() {
    let dir = std::env::temp_dir().join(format!("connmon-tracefs-fmt-{}", std::process::id()));
    let tp = dir.join("events/sock/sk_data_ready");
    std::fs::create_dir_all(&tp).unwrap();
    std::fs::write(tp.join("format"), SK_DATA_READY).unwrap();
    let f = read_format(&dir, "sock", "sk_data_ready").unwrap();
    assert_eq!(f.field("skaddr").unwrap().offset, 8);
    let e = read_format(&dir, "tcp", "tcp_nope").unwrap_err().to_string();
    assert!(
        e.starts_with("tracepoint tcp:tcp_nope not found at ") && e.ends_with("this kernel does not have it"),
        "{e}"
    );
    std::fs::write(tp.join("format"), "name: sk_data_ready\n").unwrap();
    let e = format!("{:#}", read_format(&dir, "sock", "sk_data_ready").unwrap_err());
    assert!(e.contains("sock:sk_data_ready") && e.contains("no fields"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Found by fuzz/ (tracefs_format): a declaration ending in a multi-byte character sliced inside
/// it and panicked.
#[test]
fn non_ascii_declarations_do_not_panic() {
    let crasher = "namread: 85\nfield:\u{18f}\n\tfiam;\n\tbiame$\u{18f}\n\tfiameID: 02\n\u{18f}";
    let e = parse_format(crasher).unwrap_err().to_string();
    assert!(e.contains("line 2") && !e.contains('\n'), "{e}");
    let f = parse_format("name: x\n\tfield:\u{18f}nm;\toffset:0;\tsize:4;\tsigned:0;\n").unwrap();
    assert_eq!((f.fields[0].name.as_str(), f.fields[0].ty.as_str()), ("nm", "\u{18f}"));
}

#[test]
fn running_kernel_tracepoints() {
    // As root this may mount tracefs at the default place, exactly as the agent would; elsewhere
    // (unprivileged, no tracefs) the test has nothing to check.
    let Ok(dir) = ensure_mounted(Path::new(DEFAULT_TRACEFS)) else {
        eprintln!("skipping: tracefs not available");
        return;
    };
    for (g, n) in [("sock", "inet_sock_set_state"), ("tcp", "tcp_retransmit_synack"), ("sock", "sk_data_ready")] {
        let f = read_format(&dir, g, n).unwrap();
        assert_eq!(f.name, n);
        assert_eq!(f.field("skaddr").unwrap().size, 8);
    }
}
