//! Network namespaces made with `ip netns add`, removed on drop (also when a test panics).

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Mutex;

use super::{run, run_ok, unique_name};

/// `ip netns add` mounts /run/netns on first use; concurrent first calls from parallel tests can
/// race, so this process creates and deletes namespaces one at a time.
static IP_NETNS_LOCK: Mutex<()> = Mutex::new(());

fn ip_netns_locked(args: &[&str]) -> Output {
    let _guard = IP_NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    run(Command::new("ip").arg("netns").args(args))
}

/// A named network namespace (`/run/netns/NAME`), or the host's (see [`Netns::host`]).
pub struct Netns {
    /// `None` for the host namespace.
    name: Option<String>,
    deleted: bool,
}

impl Netns {
    /// A fresh namespace with a unique name and `lo` up (so 127.0.0.1 and ::1 work in it).
    pub fn new() -> Netns {
        Netns::with_name(&unique_name("cmt"))
    }

    pub fn with_name(name: &str) -> Netns {
        let out = ip_netns_locked(&["add", name]);
        assert!(out.status.success(), "ip netns add {name} failed: {}", String::from_utf8_lossy(&out.stderr));
        let ns = Netns { name: Some(name.to_string()), deleted: false };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace this test process runs in. Never deleted; `run` and `exec` act directly.
    pub fn host() -> Netns {
        Netns { name: None, deleted: false }
    }

    /// The name given to `ip netns`; panics for the host namespace.
    pub fn name(&self) -> &str {
        self.name.as_deref().expect("the host namespace has no ip-netns name")
    }

    /// `/run/netns/NAME`, or `/proc/self/ns/net` for the host.
    pub fn path(&self) -> PathBuf {
        match &self.name {
            Some(n) => PathBuf::from("/run/netns").join(n),
            None => PathBuf::from("/proc/self/ns/net"),
        }
    }

    /// The namespace's inode number (what connmon reports as `netns`).
    pub fn inode(&self) -> u64 {
        let p = self.path();
        std::fs::metadata(&p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display())).ino()
    }

    /// Runs `f` on a new thread that has entered this namespace (setns CLONE_NEWNET).
    /// Sockets created by `f` belong to this namespace for good and may be used from any thread
    /// afterwards. A panic inside `f` is re-raised here.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        let is_host = self.name.is_none();
        std::thread::scope(|s| {
            let handle = s.spawn(move || {
                if !is_host {
                    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                    // SAFETY: plain syscall on a valid fd.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns({}) failed: {}", path.display(), std::io::Error::last_os_error());
                }
                f()
            });
            match handle.join() {
                Ok(v) => v,
                Err(payload) => std::panic::resume_unwind(payload),
            }
        })
    }

    /// A `Command` that runs `argv` inside this namespace (`ip netns exec NAME ...`).
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = match &self.name {
            Some(n) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", n.as_str()]).args(argv);
                c
            }
            None => {
                let mut c = Command::new(argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        cmd.env("LC_ALL", "C");
        cmd
    }

    /// Runs `argv` in this namespace and returns its output, whatever its exit status.
    pub fn exec(&self, argv: &[&str]) -> Output {
        run(&mut self.command(argv))
    }

    /// Runs `argv` in this namespace; panics (quoting stderr) unless it exits 0; returns stdout.
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        run_ok(&mut self.command(argv))
    }

    /// `ip -n NAME <args>`; panics on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("ip");
        if let Some(n) = &self.name {
            cmd.args(["-n", n.as_str()]);
        }
        run_ok(cmd.args(args))
    }

    /// Adds a "sink" interface `dev` with address `cidr` (e.g. "10.99.0.1/24") and sets it up:
    /// a NOARP device that silently drops whatever is routed out of it, so nothing leaves the
    /// namespace. Uses `dummy`; kernels built without CONFIG_DUMMY (like the CI VMs' 6.18, where
    /// `ip link add .. type dummy` says "Unknown device type") get `ifb`, which drops packets that
    /// were not redirected to it by tc just the same. Returns the device type used.
    pub fn add_sink_device(&self, dev: &str, cidr: &str) -> &'static str {
        assert!(self.name.is_some(), "refusing to add interfaces to the host namespace");
        let mut tried = Vec::new();
        let kind = ["dummy", "ifb"]
            .into_iter()
            .find(|kind| {
                let mut cmd = Command::new("ip");
                cmd.args(["-n", self.name(), "link", "add", dev, "type", kind]);
                let out = run(&mut cmd);
                tried.push(format!("{kind}: {}", String::from_utf8_lossy(&out.stderr).trim()));
                out.status.success()
            })
            .unwrap_or_else(|| panic!("cannot create a sink device in {}: {tried:?}", self.name()));
        self.ip(&["addr", "add", cidr, "dev", dev]);
        self.ip(&["link", "set", dev, "up"]);
        kind
    }

    /// Deletes the namespace now (`ip netns del`); panics on failure. Sockets still open in it keep
    /// the namespace itself alive, but it is no longer reachable by name.
    pub fn delete(&mut self) {
        if let Some(n) = &self.name {
            if !self.deleted {
                self.deleted = true;
                let out = ip_netns_locked(&["del", n]);
                assert!(out.status.success(), "ip netns del {n} failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(n) = &self.name {
            if !self.deleted {
                self.deleted = true;
                let out = ip_netns_locked(&["del", n]);
                if !out.status.success() {
                    eprintln!("warning: ip netns del {n} failed: {}", String::from_utf8_lossy(&out.stderr));
                }
            }
        }
    }
}
