//! Tests for procs: cgroup parsing on sample texts, and owner lookup of this test's own listener.

use super::*;
use crate::scan::diag;
use std::fs;

#[test]
fn cgroup_v2() {
    let t = "0::/kubepods.slice/kubepods-burstable.slice/cri-containerd-abc.scope\n";
    assert_eq!(parse_cgroup(t).as_deref(), Some("/kubepods.slice/kubepods-burstable.slice/cri-containerd-abc.scope"));
    assert_eq!(parse_cgroup("0::/\n").as_deref(), Some("/"));
}

#[test]
fn cgroup_v1_prefers_systemd_line() {
    let t = "\
12:cpuset:/docker/0123
11:memory:/docker/0123
4:cpu,cpuacct:/docker/0123
1:name=systemd:/system.slice/docker-0123.scope
";
    assert_eq!(parse_cgroup(t).as_deref(), Some("/system.slice/docker-0123.scope"));
    // Without a systemd line the first hierarchy wins.
    let t = "5:pids:/a\n3:memory:/b\n";
    assert_eq!(parse_cgroup(t).as_deref(), Some("/a"));
}

#[test]
fn cgroup_hybrid_prefers_v2_line() {
    let t = "\
12:blkio:/user.slice
1:name=systemd:/user.slice/user-0.slice/session-1.scope
0::/user.slice/user-0.slice/session-1.scope
";
    assert_eq!(parse_cgroup(t).as_deref(), Some("/user.slice/user-0.slice/session-1.scope"));
}

#[test]
fn cgroup_edge_cases() {
    assert_eq!(parse_cgroup(""), None);
    assert_eq!(parse_cgroup("\n\n"), None);
    assert_eq!(parse_cgroup("garbage\n1:x\n"), None);
    assert_eq!(parse_cgroup("0::\n"), None, "empty path is no path");
    assert_eq!(parse_cgroup("0::/a:b (deleted)\n").as_deref(), Some("/a:b (deleted)"));
}

#[test]
fn socket_link_parsing() {
    assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
    assert_eq!(socket_inode(b"pipe:[12345]"), None);
    assert_eq!(socket_inode(b"socket:[]"), None);
    assert_eq!(socket_inode(b"socket:[12x]"), None);
    assert_eq!(socket_inode(b"/dev/null"), None);
}

#[test]
fn finds_own_listener() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let socks = diag::dump_tcp(diag::state_mask(&[monitor_common::TCP_LISTEN]), false).unwrap();
    let inode = socks.iter().find(|s| s.sport == port).expect("listener in sock_diag dump").inode;
    assert_ne!(inode, 0);
    let wanted: HashSet<u64> = [inode, u64::MAX].into_iter().collect();
    let owners = socket_owners(&wanted);
    let (me, fd) = owners.get(&inode).expect("owner found");
    assert_eq!(me.pid, std::process::id());
    assert_eq!(me.comm, fs::read_to_string("/proc/self/comm").unwrap().trim());
    assert_eq!(me.cgroup, parse_cgroup(&fs::read_to_string("/proc/self/cgroup").unwrap()));
    assert!(!owners.contains_key(&u64::MAX));
    assert!(socket_owners(&HashSet::new()).is_empty());
    // The answer is checked later at the fd it was found at.
    assert_eq!(*fd, std::os::fd::AsRawFd::as_raw_fd(&l));
    assert!(still_holds(me.pid, *fd, inode));
    assert!(!still_holds(me.pid, *fd, inode + 1), "another inode at that fd");
    let (pid, fd) = (me.pid, *fd);
    drop(l);
    assert!(!still_holds(pid, fd, inode), "closed");
}

#[test]
fn lowest_pid_wins_for_shared_sockets() {
    // A child started after us inherits the listener: same socket, two holders.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
    // Clear CLOEXEC so the child keeps the socket.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let socks = diag::dump_tcp(diag::state_mask(&[monitor_common::TCP_LISTEN]), false).unwrap();
    let inode = socks.iter().find(|s| s.sport == port).unwrap().inode;
    let link = format!("socket:[{inode}]");
    let child_has_it = (0..100).any(|_| {
        let held = fs::read_dir(format!("/proc/{}/fd", child.id()))
            .map(|d| d.flatten().any(|e| fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == link.as_str())))
            .unwrap_or(false);
        if !held {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        held
    });
    let owner = socket_owners(&[inode].into_iter().collect()).remove(&inode).map(|(o, _)| o);
    let _ = child.kill();
    let _ = child.wait();
    assert!(child_has_it, "child inherited the listener");
    let expect = std::process::id().min(child.id());
    assert_eq!(owner.map(|o| o.pid), Some(expect));
}

#[test]
fn own_pid_namespace_from_pid_1() {
    assert!(own_pid_namespace(1, "connmon\n").is_some());
    assert!(own_pid_namespace(4242, "pause\n").is_some());
    assert!(own_pid_namespace(4242, "systemd\n").is_none());
    assert!(own_pid_namespace(4242, "").is_none());
}
