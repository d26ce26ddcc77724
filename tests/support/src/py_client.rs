//! Python client workloads (tests/clients/pool_incidents.py): the real client libraries of the
//! incidents (redis-py's asyncio client, psycopg 3) as processes of their own, each in a fresh
//! cgroup with a unique process name, optionally in a test network namespace. The script prints a
//! JSON line of figures every 0.25 s; [`PyClient`] keeps the latest and every error kind's first
//! time, as the client library reported it. Dropping it closes its stdin (the script stops) and
//! kills it.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{poll_until, unique_name, workspace::root, Netns, TempDir, TestCgroup};

/// The script, from the workspace root.
pub const SCRIPT: &str = "tests/clients/pool_incidents.py";

pub struct PyClient {
    pub name: String,
    pub started: Instant,
    child: Child,
    stdin: Option<ChildStdin>,
    latest: Arc<Mutex<Option<Value>>>,
    stderr_path: std::path::PathBuf,
    _dir: TempDir,
    // Dropped after the process is gone.
    cgroup: TestCgroup,
}

impl PyClient {
    /// Starts `python3 SCRIPT MODE --name NAME --cgroup-procs … [--netns …] ARGS`.
    pub fn spawn(prefix: &str, mode: &str, args: &[&str], netns: Option<&Netns>) -> PyClient {
        let name = unique_name(prefix);
        assert!(name.len() <= 15, "client name {name:?} is longer than a comm (15 bytes)");
        let cgroup = TestCgroup::new();
        let dir = TempDir::new("cmpy");
        let stderr_path = dir.path().join("stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("create python client stderr");
        let procs = cgroup.dir().join("cgroup.procs");
        let mut cmd = Command::new("python3");
        cmd.arg(root().join(SCRIPT))
            .arg(mode)
            .args(["--name", &name])
            .arg("--cgroup-procs")
            .arg(&procs)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(ns) = netns {
            cmd.arg("--netns").arg(ns.path());
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("python client stdout");
        let latest = Arc::new(Mutex::new(None));
        let sink = Arc::clone(&latest);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    *sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
                }
            }
        });
        let stdin = child.stdin.take();
        let c = PyClient { name, started: Instant::now(), child, stdin, latest, stderr_path, _dir: dir, cgroup };
        // Up and reporting (imports done, identity taken) before the test goes on.
        poll_until(super::deadline(30), &format!("python client {} ({mode}) to report", c.name), || {
            c.latest().map(|_| ()).ok_or_else(|| format!("nothing yet; stderr: {}", c.stderr()))
        });
        c
    }

    /// The cgroup label connmon gives this client's connections.
    pub fn cgroup(&self) -> &str {
        self.cgroup.rel()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The latest figures line; panics if the process died.
    pub fn latest(&self) -> Option<Value> {
        self.latest.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Errors of `kind` the client library raised so far.
    pub fn errors(&self, kind: &str) -> u64 {
        self.latest().and_then(|v| v["errors"][kind].as_u64()).unwrap_or(0)
    }

    /// Every error kind with its count.
    pub fn all_errors(&self) -> Value {
        self.latest().map(|v| v["errors"].clone()).unwrap_or(Value::Null)
    }

    /// Unix time of the first error of `kind`, if there was one.
    pub fn first_error(&self, kind: &str) -> Option<f64> {
        self.latest().and_then(|v| v["first_error"][kind].as_f64())
    }

    pub fn figure(&self, key: &str) -> Option<f64> {
        self.latest().and_then(|v| v[key].as_f64())
    }

    /// Waits until the client has reported an error of `kind`; its Unix time.
    pub fn wait_first_error(&mut self, kind: &str, within: Duration) -> f64 {
        let end = Instant::now() + within;
        poll_until(end, &format!("{} to see {kind:?} from its client library", self.name), || {
            if let Some(st) = self.child.try_wait().expect("try_wait python client") {
                panic!("python client {} exited with {st}; stderr:\n{}", self.name, self.stderr());
            }
            self.first_error(kind).ok_or_else(|| format!("{:?}", self.latest()))
        })
    }

    /// Closes its stdin (the script stops its work and prints its last figures) and waits for
    /// it to exit; returns the last figures.
    pub fn stop(&mut self) -> Value {
        self.stdin = None;
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait python client") {
                assert!(st.success(), "python client {} exited with {st}; stderr:\n{}", self.name, self.stderr());
                break;
            }
            assert!(Instant::now() < end, "python client {} did not stop within 20 s", self.name);
            std::thread::sleep(super::POLL_INTERVAL);
        }
        // The reader thread may still be handing over the last line.
        std::thread::sleep(Duration::from_millis(200));
        self.latest().expect("figures")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PyClient {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- python client {} stderr ----\n{}---- end ----", self.name, self.stderr());
        }
    }
}
