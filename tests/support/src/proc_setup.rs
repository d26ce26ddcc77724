//! What every client process of the tests shares, on both sides of the re-exec. A client is this
//! very test binary re-executed to run one `#[test]` entry point (an [`EntryPoint`]), with a JSON
//! spec in an environment variable; the entry point does nothing in a normal run, where the
//! variable is unset. The parent side ([`ReexecProc`]) gives each client a unique process name and
//! a fresh cgroup ([`TestCgroup`]), pipes its stdin and stdout, keeps its stderr in a file, and on
//! drop kills it (printing that stderr if the test is failing). The client side reads the spec
//! ([`entry_spec`]) and, before its first connect, takes on that identity ([`take_identity`]):
//! cgroup, comm (prctl(PR_SET_NAME) and /proc/self/comm, so the thread-group leader carries it)
//! and optionally a test network namespace; threads it spawns later inherit all three.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{unique_id, unique_name, TempDir};

// ---------------------------------------------------------------------------------------------
// cgroups

/// Where the cgroup2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a
/// hybrid host), from /proc/self/mounts.
pub fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && f[2] == "cgroup2").then(|| PathBuf::from(f[1].replace("\\040", " ")))
        })
        .unwrap_or_else(|| panic!("no cgroup2 filesystem mounted; /proc/self/mounts:\n{mounts}"))
}

/// A fresh cgroup `connmon-t-<pid>-<n>` directly under the cgroup2 root; removed on drop (once the
/// processes in it have exited; the client owning it is killed first).
pub struct TestCgroup {
    dir: PathBuf,
    rel: String,
}

impl TestCgroup {
    pub fn new() -> TestCgroup {
        let name = format!("connmon-t-{}-{}", std::process::id(), unique_id());
        let dir = cgroup2_root().join(&name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TestCgroup { dir, rel: format!("/{name}") }
    }

    /// The path relative to the cgroup2 root, as connmon labels it ("/connmon-t-123-4").
    pub fn rel(&self) -> &str {
        &self.rel
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Pids currently in the cgroup.
    pub fn procs(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // A reaped process may take a moment to leave the cgroup: rmdir says EBUSY until then.
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= end => {
                    eprintln!("warning: cannot remove cgroup {}: {e} (procs: {:?})", self.dir.display(), self.procs());
                    return;
                }
                Err(_) => std::thread::sleep(super::POLL_INTERVAL),
            }
        }
    }
}

/// A nested cgroup path (e.g. one named the way kubelet and containerd name a container's) made
/// for one test under the cgroup2 root; the directories it created are removed, deepest first,
/// when it is dropped.
pub struct KubeCgroup {
    dirs: Vec<PathBuf>,
    /// The deepest directory: write a pid to its `cgroup.procs` to move the process in.
    pub dir: PathBuf,
}

impl KubeCgroup {
    pub fn create(rel: &str) -> KubeCgroup {
        let mut dirs = Vec::new();
        let mut dir = cgroup2_root();
        for part in rel.trim_start_matches('/').split('/') {
            dir = dir.join(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                dirs.push(dir.clone());
            }
        }
        KubeCgroup { dirs, dir }
    }
}

impl Drop for KubeCgroup {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            // A killed process leaves its cgroup a moment after it is reaped: retry EBUSY briefly.
            let end = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir(d).is_err() && Instant::now() < end {
                std::thread::sleep(super::POLL_INTERVAL);
            }
        }
    }
}

/// A child process killed and reaped on drop.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The parent's side

/// One kind of client process: the `#[test]` function that runs it in a re-executed test binary
/// and the environment variable that carries its spec.
pub struct EntryPoint {
    /// How messages name it ("storm client").
    pub kind: &'static str,
    /// The `#[test]` function each test binary that spawns this kind must define.
    pub test: &'static str,
    pub env: &'static str,
    /// Prefix of the temp dir that keeps the client's stderr.
    pub tmp_prefix: &'static str,
}

/// A running client process (RAII: dropping it closes stdin, kills and reaps the process, then
/// removes its cgroup). If the test is panicking, the client's stderr is printed.
pub struct ReexecProc {
    /// The process name (comm) the client gives itself.
    pub name: String,
    kind: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    stderr_path: PathBuf,
    _dir: TempDir,
    // Declared last: dropped after the process is gone.
    cgroup: TestCgroup,
}

impl ReexecProc {
    /// Spawns a client of kind `entry` named `prefix` + a unique suffix, in a fresh cgroup. `spec`
    /// (a JSON object) gets the `name` and `cgroup_procs` that [`take_identity`] reads. Returns the
    /// client's stdout for the caller's protocol reader.
    pub fn spawn(entry: &EntryPoint, prefix: &str, mut spec: Value) -> (ReexecProc, ChildStdout) {
        let name = unique_name(prefix);
        assert!(name.len() <= 15, "client name {name:?} is longer than a comm (15 bytes)");
        let cgroup = TestCgroup::new();
        let Some(fields) = spec.as_object_mut() else { panic!("{} spec is not a JSON object", entry.kind) };
        fields.insert("name".into(), name.clone().into());
        fields.insert("cgroup_procs".into(), cgroup.dir().join("cgroup.procs").display().to_string().into());
        let dir = TempDir::new(entry.tmp_prefix);
        let stderr_path = dir.path().join("stderr");
        let exe = std::env::current_exe().expect("current_exe");
        let stderr = File::create(&stderr_path).unwrap_or_else(|e| panic!("create {} stderr file: {e}", entry.kind));
        let mut child = Command::new(&exe)
            .args(["--exact", entry.test, "--nocapture", "--test-threads", "1", "-q"])
            .env(entry.env, spec.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} {}: {e}", entry.kind, exe.display()));
        let stdout = child.stdout.take().expect("client stdout");
        let stdin = child.stdin.take();
        let proc = ReexecProc { name, kind: entry.kind, child, stdin, stderr_path, _dir: dir, cgroup };
        (proc, stdout)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The cgroup label connmon should give this client's connections.
    pub fn cgroup(&self) -> &str {
        self.cgroup.rel()
    }

    /// Everything the client wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The client's stdin, unless it has been closed.
    pub fn stdin(&mut self) -> Option<&mut ChildStdin> {
        self.stdin.as_mut()
    }

    /// Closes the client's stdin: end of input tells every kind of client to stop.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap_or_else(|e| panic!("try_wait on {}: {e}", self.kind))
    }

    /// Waits for it to exit (None if waiting fails).
    pub fn wait(&mut self) -> Option<ExitStatus> {
        self.child.wait().ok()
    }

    /// Waits (within `within`) for it to exit, which it must do successfully.
    pub fn wait_exit(&mut self, within: Duration) {
        let end = Instant::now() + within;
        loop {
            if let Some(st) = self.try_wait() {
                assert!(st.success(), "{} {} exited with {st}; stderr:\n{}", self.kind, self.name, self.stderr());
                return;
            }
            assert!(
                Instant::now() < end,
                "{} {} did not exit within {within:?}; stderr:\n{}",
                self.kind,
                self.name,
                self.stderr()
            );
            std::thread::sleep(super::POLL_INTERVAL);
        }
    }
}

impl Drop for ReexecProc {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} {} stderr ----\n{}---- end ----", self.kind, self.name, self.stderr());
        }
    }
}

/// Reads the client's stdout on a thread of its own and hands `f` every line that starts with
/// `prefix` (without it), until `f` returns false or the output ends. Lines without the prefix
/// are libtest's own and are dropped.
pub fn read_protocol(stdout: ChildStdout, prefix: &'static str, mut f: impl FnMut(&str) -> bool + Send + 'static) {
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix(prefix) {
                if !f(rest) {
                    break;
                }
            }
        }
    });
}

/// The client's protocol lines (see [`read_protocol`]), in order, for a parent that waits on them.
pub fn protocol_lines(stdout: ChildStdout, prefix: &'static str) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    read_protocol(stdout, prefix, move |rest| tx.send(rest.to_string()).is_ok());
    rx
}

// ---------------------------------------------------------------------------------------------
// The client's side

/// The spec of the client `entry` describes, when this process is one (its variable is set).
pub fn entry_spec(entry: &EntryPoint) -> Option<Value> {
    let text = std::env::var(entry.env).ok()?;
    let spec = serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad {} ({e}): {text}", entry.env));
    Some(spec)
}

/// The string `spec[key]`; panics if it is missing.
pub fn spec_str(spec: &Value, key: &str) -> String {
    spec[key].as_str().unwrap_or_else(|| panic!("{key} missing in {spec}")).to_string()
}

/// The number `spec[key]`; panics if it is missing.
pub fn spec_u64(spec: &Value, key: &str) -> u64 {
    spec[key].as_u64().unwrap_or_else(|| panic!("{key} missing in {spec}"))
}

/// Makes this process the client [`ReexecProc::spawn`] described; returns its name.
pub fn take_identity(spec: &Value) -> String {
    let name = spec_str(spec, "name");

    // 1. Own cgroup (moves every thread of the process).
    let procs = spec_str(spec, "cgroup_procs");
    std::fs::write(&procs, std::process::id().to_string()).unwrap_or_else(|e| panic!("write {procs}: {e}"));
    // 2. Own name: this thread's (threads spawned later inherit it), and the thread-group
    //    leader's (what /proc/<pid>/comm shows and what connmon labels connections with), since
    //    libtest may run us on a non-main thread.
    let cname = CString::new(name.clone()).expect("name without NUL");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    let rc = unsafe { libc::prctl(libc::PR_SET_NAME, cname.as_ptr() as libc::c_ulong, 0, 0, 0) };
    assert_eq!(rc, 0, "prctl(PR_SET_NAME): {}", io::Error::last_os_error());
    std::fs::write("/proc/self/comm", &name).expect("write /proc/self/comm");
    let comm = std::fs::read_to_string("/proc/self/comm").expect("read /proc/self/comm");
    assert_eq!(comm.trim_end(), name, "comm did not take");
    // 3. Network namespace (this thread, and threads it spawns, create sockets there).
    if let Some(path) = spec["netns"].as_str() {
        let f = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: plain syscall on a valid fd.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({path}): {}", io::Error::last_os_error());
    }
    name
}

/// Writes one protocol line (`prefix` + `line`) to stdout, flushed at once: the parent waits on it.
pub fn say_line(prefix: &str, line: &str) {
    let mut out = io::stdout().lock();
    writeln!(out, "{prefix}{line}").and_then(|_| out.flush()).expect("write to stdout");
}
