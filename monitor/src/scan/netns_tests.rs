//! Tests for netns: discovery and setns against a scratch `ip netns` namespace (needs root).

use super::*;
use std::process::Command;

/// Owns a scratch named namespace and deletes it even when the test panics.
struct ScratchNetns(String);

impl ScratchNetns {
    fn new(tag: &str) -> Self {
        let name = format!("connmon-ut-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(std::process::Stdio::null()).status();
        let st = Command::new("ip").args(["netns", "add", &name]).status().expect("run ip");
        assert!(st.success(), "ip netns add {name} failed");
        ScratchNetns(name)
    }
}

impl Drop for ScratchNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn thread_netns_inode() -> u64 {
    ns_inode(Path::new("/proc/thread-self/ns/net")).expect("own netns readable")
}

fn find(name: &str) -> Netns {
    discover().into_iter().find(|n| n.name.as_deref() == Some(name)).unwrap_or_else(|| panic!("{name} not discovered"))
}

#[test]
fn discover_puts_host_first_and_dedups() {
    let all = discover();
    let host = all.first().expect("at least the host namespace");
    assert_eq!(host.inode, thread_netns_inode());
    let mut inodes: Vec<u64> = all.iter().map(|n| n.inode).collect();
    inodes.sort_unstable();
    let before = inodes.len();
    inodes.dedup();
    assert_eq!(before, inodes.len(), "duplicate inodes in {all:?}");
}

#[test]
fn named_namespace_is_discovered_and_entered() {
    let scratch = ScratchNetns::new("ns");
    let ns = find(&scratch.0);
    assert_eq!(ns.path, Path::new(NAMED_NS_DIR).join(&scratch.0));
    assert_eq!(ns.pid, None, "nothing runs in a fresh namespace");
    assert_ne!(ns.inode, discover()[0].inode);

    let mine = thread_netns_inode();
    let inside = run_in(&ns, thread_netns_inode).unwrap();
    assert_eq!(inside, ns.inode);
    assert_eq!(thread_netns_inode(), mine, "caller's thread stays where it was");

    // The scratch namespace has only a down loopback device: a visible difference from the host.
    let links = run_in(&ns, || fs::read_to_string("/proc/thread-self/net/dev").unwrap()).unwrap();
    assert_eq!(links.lines().count(), 3, "{links}");
}

#[test]
fn pid_found_namespace_gets_its_name() {
    let scratch = ScratchNetns::new("pid");
    let mut child =
        Command::new("ip").args(["netns", "exec", &scratch.0, "sleep", "30"]).spawn().expect("spawn sleep in netns");
    let named = find(&scratch.0);
    // Wait for `ip netns exec` to have switched (it setns()es and then execs sleep).
    let mut seen = None;
    for _ in 0..100 {
        if ns_inode(Path::new(&format!("/proc/{}/ns/net", child.id()))) == Some(named.inode) {
            seen = find(&scratch.0).pid;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.is_some(), "the pid-found entry and the /run/netns entry were merged with a pid");
    assert_eq!(discover().iter().filter(|n| n.inode == named.inode).count(), 1);
}

#[test]
fn run_in_each_reports_failures_per_namespace() {
    let scratch = ScratchNetns::new("each");
    let host = discover().remove(0);
    let named = find(&scratch.0);
    let vanished =
        Netns { inode: 12345, name: None, path: PathBuf::from("/proc/999999999/ns/net"), pid: Some(999_999_999) };
    // Right path, wrong inode: what a recycled pid looks like.
    let recycled = Netns { inode: 1, ..host.clone() };
    let caller = thread_netns_inode();
    let res = run_in_each(&[host.clone(), vanished, named.clone(), recycled], |ns| (ns.inode, thread_netns_inode()));
    assert_eq!(thread_netns_inode(), caller);
    let got: Vec<_> = res.iter().map(|(i, r)| (*i, r.as_ref().map_err(|e| e.to_string()).cloned())).collect();
    assert_eq!(
        got,
        vec![
            (host.inode, Ok((host.inode, host.inode))),
            (12345, Err("network namespace 12345 is gone".to_string())),
            (named.inode, Ok((named.inode, named.inode))),
            (1, Err("network namespace 1 is gone".to_string())),
        ]
    );
    let err = run_in(&Netns { inode: 7, name: None, path: "/run/netns/connmon-no-such".into(), pid: None }, || ())
        .unwrap_err();
    assert_eq!(err.to_string(), "network namespace 7 is gone");
}

/// Drops CAP_SYS_ADMIN from this thread's effective set; threads it spawns inherit that.
fn drop_sys_admin_on_this_thread() {
    use crate::kernel::privs::{capset, current, CAP_SYS_ADMIN};
    let (effective, permitted) = current().expect("capget");
    capset(effective & !(1 << CAP_SYS_ADMIN), permitted).expect("capset");
}

#[test]
fn missing_cap_sys_admin_is_explained() {
    let scratch = ScratchNetns::new("perm");
    let ns = find(&scratch.0);
    let err = std::thread::spawn(move || {
        drop_sys_admin_on_this_thread();
        run_in(&ns, || ()).unwrap_err().to_string()
    })
    .join()
    .unwrap();
    let inode = find(&scratch.0).inode;
    assert_eq!(err, format!("entering network namespace {inode} needs CAP_SYS_ADMIN: run as root or grant it"));
}

#[test]
fn links_name_the_inode_stat_reports() {
    assert_eq!(parse_link(b"net:[4026531840]"), Some(4026531840));
    assert_eq!(parse_link(b"mnt:[4026531840]"), None);
    assert_eq!(parse_link(b"net:[x]"), None);
    let own = Path::new("/proc/self/ns/net");
    assert_eq!(link_inode(own), ns_inode(own));
}

/// A namespace known only through a process (`unshare -n`) is found within PID_WALK_REUSE by the
/// scans' discovery, and is gone from it as soon as its process is.
#[test]
fn reused_walk_finds_new_namespaces_and_drops_gone_ones_at_once() {
    let mut child = Command::new("unshare").args(["-n", "sleep", "30"]).spawn().expect("spawn unshare -n sleep");
    let host = thread_netns_inode();
    let link = PathBuf::from(format!("/proc/{}/ns/net", child.id()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let inode = loop {
        match link_inode(&link) {
            Some(i) if i != host => break i,
            _ => assert!(std::time::Instant::now() < deadline, "unshare -n did not switch namespaces"),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let deadline = std::time::Instant::now() + PID_WALK_REUSE + std::time::Duration::from_secs(2);
    while !discover_reusing().iter().any(|n| n.inode == inode) {
        assert!(std::time::Instant::now() < deadline, "namespace {inode} not found within {PID_WALK_REUSE:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(!discover_reusing().iter().any(|n| n.inode == inode), "a gone namespace was still listed");
    assert!(!discover().iter().any(|n| n.inode == inode));
}
