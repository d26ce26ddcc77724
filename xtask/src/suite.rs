//! `cargo xtask test` without test arguments: the whole suite, as CI runs it, in an order that
//! keeps a 2-CPU machine busy. The integration tests spend most of their wall time waiting on real
//! alert windows and real servers, one binary after another, so the builds that only the end of
//! the run needs are made beside them at the lowest CPU priority (`nice -n 19`: the tests get the
//! CPU whenever they want it, the builds take what is left):
//!
//! 1. the kernel matrix's Debian kernels are fetched (network and disk) while
//! 2. every test binary is built (`cargo test --no-run`);
//! 3. in the background, niced, one after another, each into its log under
//!    `<target>/xtask-logs/`: `cargo xtask dist` (the static release binary and tarball),
//!    `cargo xtask image` and `cargo xtask fuzz --build-only`;
//! 4. every test binary but the two that check step 3's artifacts (`tests/dist.rs`,
//!    `tests/container.rs`) and the long one of step 5, one after another as `cargo test` runs
//!    them;
//! 5. those two once the tarball and the image exist; then the one that waits out a real
//!    ten-minute alert window (`tests/incidents_inflight.rs`) starts, beside steps 6 to 8, which
//!    load no eBPF on this host (its output goes into
//!    `<target>/xtask-logs/test-incidents_inflight.log`, and onto the terminal when it ends);
//! 6. the doc tests;
//! 7. the kernel matrix's guests (`tests/kernel_smoke.rs` under qemu; the host's run is step 4's);
//! 8. once step 3 has built them, every fuzz target's corpus and 10 s of fuzzing each, one
//!    target per CPU at a time; then step 5's long test is waited for.
//!
//! Every step runs even when an earlier one failed (one run shows everything); the command fails
//! at the end if any did, after a table of how long each step took. With `CONNMON_TEST_LOCK=FILE`
//! (shared development machines), steps 4 and 5 hold an exclusive `flock` on FILE until step 5's
//! long test ends (let go between steps 4 and 5 only to wait for step 3's artifacts), so tests
//! that load eBPF programs never overlap another checkout's, and no wait for a build holds it.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::{display, elapsed, log_path, run_inherit, run_logged, target_dir, workspace_root};
use crate::{dist, fuzz, image, matrix};

/// Where tests/container.rs finds the image archive (it defaults to the same path).
pub const CONTAINER_IMAGE_ENV: &str = "CONNMON_IMAGE_ARCHIVE";
/// Where tests/dist.rs finds the release tarball (it defaults to `<target>/dist/`).
pub const DIST_TARBALL_ENV: &str = "CONNMON_DIST_TARBALL";
/// A file to `flock` while test binaries run (unset: no lock).
pub const LOCK_ENV: &str = "CONNMON_TEST_LOCK";
/// The integration tests that check the release tarball and the image: they run once the
/// background builds made them.
const NEED_ARTIFACTS: &[&str] = &["dist", "container"];
/// The integration test that waits out a default ten-minute alert window. It needs the clock, not
/// the CPU, so it runs beside the steps after the test binaries: not beside them, where its agent
/// would be a second tracer of every connection and its pool of a thousand connections the
/// busiest on the host (which `pools_limits`' series cap must find to be its own).
const BESIDE: &str = "incidents_inflight";

/// `cargo test` over the workspace's user-space crates, the root of every test command here.
fn cargo_test() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(["test", "--workspace", "--exclude", "monitor-ebpf"]).current_dir(workspace_root());
    cmd
}

/// The paths tests/dist.rs and tests/container.rs read, as env for their `cargo test`.
fn with_artifacts(cmd: &mut Command) -> &mut Command {
    let tarball = target_dir().join("dist").join(format!("{}.tar.gz", dist::release_name()));
    cmd.env(CONTAINER_IMAGE_ENV, target_dir().join(image::ARCHIVE)).env(DIST_TARBALL_ENV, tarball)
}

/// `cargo xtask test -- ARGS`: the tarball and the image first (the chosen tests may need them),
/// then `cargo test` with ARGS; nothing else.
pub fn subset(cargo_args: &[String]) -> Result<()> {
    dist::build()?;
    image::build()?;
    let mut cmd = cargo_test();
    cmd.arg("--no-fail-fast").args(cargo_args);
    let _lock = TestLock::acquire()?;
    run_inherit(with_artifacts(&mut cmd))
}

/// Steps' names, how long each took and whether it passed, for the closing table.
#[derive(Default)]
struct Steps(Vec<(String, Duration, bool)>);

impl Steps {
    fn record<T>(&mut self, name: &str, started: Instant, result: &Result<T>) {
        self.0.push((name.to_string(), started.elapsed(), result.is_ok()));
    }
}

pub fn run() -> Result<()> {
    let t0 = Instant::now();
    let mut steps = Steps::default();
    let mut failed: Vec<String> = Vec::new();
    let mut note = |name: &str, result: Result<()>| {
        if let Err(e) = result {
            eprintln!("error: {name}: {e:#}");
            failed.push(name.to_string());
        }
    };

    let kernels = thread::spawn(|| matrix::prepare(&[]));
    let started = Instant::now();
    let built = build_tests();
    steps.record("build the test binaries", started, &built);
    let built = built?;
    let background = Background::start();

    let started = Instant::now();
    let lock = Some(TestLock::acquire()?);
    let waited = started.elapsed();
    let started = Instant::now();
    let mut first = cargo_test();
    first.args(["--no-fail-fast", "--lib", "--bins"]);
    for name in built.tests.iter().filter(|t| !NEED_ARTIFACTS.contains(&t.as_str()) && t.as_str() != BESIDE) {
        first.args(["--test", name]);
    }
    let result = run_inherit(&mut first);
    steps.record("test binaries (all but dist, container)", started, &result);
    note("tests", result);
    let mut held = started.elapsed();

    // The tarball and the image are usually ready by now: then the lock is kept for their two
    // tests. Otherwise it is let go while they build (another checkout's tests may run meanwhile).
    let started = Instant::now();
    let (artifacts, lock) = match background.artifacts.try_recv() {
        Ok(ready) => (ready, lock),
        Err(_) => {
            drop(lock);
            let ready =
                background.artifacts.recv().unwrap_or_else(|_| Err(anyhow::anyhow!("the background builds stopped")));
            (ready, None)
        }
    };
    steps.record("wait for the tarball and the image", started, &artifacts);
    let started = Instant::now();
    let lock = match lock {
        Some(held) => Some(held),
        None => Some(TestLock::acquire()?),
    };
    let waited = waited + started.elapsed();
    let started = Instant::now();
    let result = artifacts.and_then(|()| {
        let mut second = cargo_test();
        second.arg("--no-fail-fast");
        for name in built.tests.iter().filter(|t| NEED_ARTIFACTS.contains(&t.as_str())) {
            second.args(["--test", name]);
        }
        run_inherit(with_artifacts(&mut second))
    });
    steps.record("tests/dist.rs and tests/container.rs", started, &result);
    note("tests (dist, container)", result);
    held += started.elapsed();
    // From here to the end no other step loads eBPF on this host: the long test runs beside them,
    // holding the lock.
    let beside_started = Instant::now();
    let beside = Beside::start(&built);
    let started = Instant::now();
    let result = run_inherit(cargo_test().args(["--no-fail-fast", "--doc"]));
    steps.record("doc tests", started, &result);
    note("doc tests", result);

    // The guests run the same kernel_smoke binary the suite ran on the host above.
    let started = Instant::now();
    let options = matrix::Options { kernels: Vec::new(), no_host: true, sequential: false };
    let result = match (kernels.join(), &built.kernel_smoke) {
        (Ok(Ok(guests)), Some(suite)) => matrix::run_suite(guests, suite, &options),
        (Ok(Err(e)), _) => Err(e.context("fetching the matrix's kernels")),
        (Err(_), _) => Err(anyhow::anyhow!("fetching the matrix's kernels panicked")),
        (_, None) => Err(anyhow::anyhow!("cargo built no kernel_smoke test binary")),
    };
    steps.record("kernel matrix", started, &result);
    note("kernel matrix", result);

    let started = Instant::now();
    let fuzz_built = background.fuzz.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the background builds panicked")));
    steps.record("wait for the fuzz build", started, &fuzz_built);
    // Run even if the background build failed: its build step then shows the error here.
    let started = Instant::now();
    let fuzz_opts = fuzz::RunOptions { seconds: fuzz::DEFAULT_SECONDS, jobs: fuzz::default_jobs(), build_only: false };
    let result = fuzz::run(&fuzz_opts, &[]);
    steps.record("fuzz targets", started, &result);
    note("fuzz", result);
    let started = Instant::now();
    let result = beside.wait();
    steps.record(&format!("wait for tests/{BESIDE}.rs (started after tests/container.rs)"), started, &result);
    note(&format!("tests ({BESIDE})"), result);
    drop(lock);
    held += beside_started.elapsed();

    println!("\n=== test: {} in all", elapsed(t0.elapsed()));
    for (name, took, ok) in &steps.0 {
        println!("{:>12}  {}{name}", elapsed(*took), if *ok { "" } else { "FAILED: " });
    }
    if let Some(lock) = std::env::var_os(LOCK_ENV).filter(|l| !l.is_empty()) {
        let lock = lock.to_string_lossy();
        println!("{:>12}  holding {lock}, after {} waiting for it", elapsed(held), elapsed(waited));
    }
    for (what, took) in background.took.lock().map(|t| t.clone()).unwrap_or_default() {
        println!("{:>12}  in the background: {what}", elapsed(took));
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

/// What `cargo test --no-run` built.
struct Built {
    /// Integration test targets (`tests/*.rs`) by name.
    tests: Vec<String>,
    kernel_smoke: Option<PathBuf>,
    /// The executable of [`BESIDE`], run without cargo (a second `cargo test` would wait for the
    /// first one's lock on the target dir).
    beside: Option<PathBuf>,
}

fn build_tests() -> Result<Built> {
    println!("=== test: building every test binary");
    let mut cmd = cargo_test();
    cmd.args(["--no-run", "--message-format=json-render-diagnostics"]).stderr(Stdio::inherit());
    let out = cmd.output().with_context(|| format!("cannot run `{}`", display(&cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed", display(&cmd));
    }
    parse_built(&String::from_utf8_lossy(&out.stdout))
}

/// The test targets in cargo's JSON messages.
fn parse_built(json_lines: &str) -> Result<Built> {
    let mut built = Built { tests: Vec::new(), kernel_smoke: None, beside: None };
    for line in json_lines.lines().filter(|l| l.contains("\"reason\":\"compiler-artifact\"")) {
        let v: serde_json::Value = serde_json::from_str(line).context("cargo's JSON message")?;
        if v["profile"]["test"] != true || v["target"]["kind"][0] != "test" {
            continue;
        }
        let name = v["target"]["name"].as_str().context("a test target without a name")?.to_string();
        let executable = v["executable"].as_str().map(PathBuf::from);
        if name == "kernel_smoke" {
            built.kernel_smoke = executable;
        } else if name == BESIDE {
            built.beside = executable;
        }
        built.tests.push(name);
    }
    built.tests.sort();
    built.tests.dedup();
    if built.tests.is_empty() {
        bail!("cargo built no integration test binary");
    }
    Ok(built)
}

/// Step 5's long test, running beside the later steps: its thread, and its log.
struct Beside {
    run: thread::JoinHandle<Result<()>>,
    log: PathBuf,
}

impl Beside {
    fn start(built: &Built) -> Beside {
        let log = log_path(&format!("test-{BESIDE}"));
        let _ = std::fs::remove_file(&log);
        let exe = built.beside.clone();
        let to = log.clone();
        let run = thread::spawn(move || {
            let exe = exe.with_context(|| format!("cargo built no {BESIDE} test binary"))?;
            // As cargo runs an integration test: from its package's folder.
            let mut cmd = Command::new(exe);
            cmd.arg("--nocapture").current_dir(workspace_root().join("monitor"));
            let hint = format!("tests/{BESIDE}.rs failed: its log says why");
            run_logged(&mut cmd, &to, &hint)
        });
        println!("=== test: started tests/{BESIDE}.rs, beside the steps that follow (log {})", log.display());
        Beside { run, log }
    }

    /// Waits for it; shows its log when it passed (a failure's tail is shown by `run_logged`).
    fn wait(self) -> Result<()> {
        let result = self.run.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the thread running it panicked")));
        if result.is_ok() {
            println!("=== test: tests/{BESIDE}.rs\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
        result
    }
}

/// The niced builds of step 3.
struct Background {
    /// The tarball and the image: ready (or failed).
    artifacts: mpsc::Receiver<Result<()>>,
    /// The fuzz targets' build.
    fuzz: thread::JoinHandle<Result<()>>,
    /// How long each build took, for the closing table.
    took: std::sync::Arc<std::sync::Mutex<Vec<(String, Duration)>>>,
}

impl Background {
    fn start() -> Background {
        let (tx, artifacts) = mpsc::channel();
        let took = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let times = std::sync::Arc::clone(&took);
        let fuzz = thread::spawn(move || {
            let run = |args: &[&str]| {
                let started = Instant::now();
                let result = niced(args);
                if let Ok(mut t) = times.lock() {
                    t.push((format!("cargo xtask {}", args.join(" ")), started.elapsed()));
                }
                result
            };
            let ready = run(&["dist"]).and_then(|()| run(&["image"]));
            let _ = tx.send(ready);
            run(&["fuzz", "--build-only"])
        });
        Background { artifacts, fuzz, took }
    }
}

/// `nice -n 19 cargo xtask ARGS` (this binary), its output into `<target>/xtask-logs/test-ARGS.log`;
/// one line on the terminal when it ends.
fn niced(args: &[&str]) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find this program's own binary")?;
    let log = log_path(&format!("test-{}", args[0]));
    let _ = std::fs::remove_file(&log);
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "19"]).arg(&exe).args(args).current_dir(workspace_root());
    println!("=== test: started `cargo xtask {}` in the background, niced (log {})", args.join(" "), log.display());
    let started = Instant::now();
    let hint = format!("`cargo xtask {}` failed in the background: its log says why", args.join(" "));
    let result = run_logged(&mut cmd, &log, &hint);
    let verdict = if result.is_ok() { "done" } else { "FAILED" };
    println!("=== test: background `cargo xtask {}` {verdict} after {}", args.join(" "), elapsed(started.elapsed()));
    result
}

/// An exclusive `flock` on `$CONNMON_TEST_LOCK` while held (nothing when it is unset).
struct TestLock {
    /// Closing it releases the lock.
    _file: Option<File>,
}

impl TestLock {
    fn acquire() -> Result<TestLock> {
        let Some(path) = std::env::var_os(LOCK_ENV).filter(|p| !p.is_empty()) else {
            return Ok(TestLock { _file: None });
        };
        let path = Path::new(&path);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open the test lock {} (${LOCK_ENV})", path.display()))?;
        // SAFETY: flock(2) on a descriptor this File owns; it stays open while the lock is held.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            println!(
                "=== test: waiting for the test lock {} (another checkout's tests; if this run is itself under \
                 `flock` on that file, unset {LOCK_ENV})",
                path.display()
            );
            // SAFETY: as above; blocks until the other holder closes its descriptor.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error()).with_context(|| format!("flock {}", path.display()));
            }
        }
        Ok(TestLock { _file: Some(file) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_targets_from_cargos_messages() {
        let lines = [
            r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"connmon"},"profile":{"test":true},"executable":"/t/connmon-1"}"#,
            r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"kernel_smoke"},"profile":{"test":true},"executable":"/t/kernel_smoke-2"}"#,
            r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"dist"},"profile":{"test":true},"executable":"/t/dist-3"}"#,
            r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"incidents_inflight"},"profile":{"test":true},"executable":"/t/incidents_inflight-4"}"#,
            r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"serde"},"profile":{"test":false},"executable":null}"#,
            r#"{"reason":"build-finished","success":true}"#,
        ];
        let built = parse_built(&lines.join("\n")).unwrap();
        assert_eq!(built.tests, ["dist", "incidents_inflight", "kernel_smoke"]);
        assert_eq!(built.beside, Some(PathBuf::from("/t/incidents_inflight-4")));
        assert_eq!(built.kernel_smoke, Some(PathBuf::from("/t/kernel_smoke-2")));
        assert!(parse_built(lines[0]).is_err(), "no integration test at all is an error");
    }

    #[test]
    fn the_lock_is_exclusive() {
        let path = std::env::temp_dir().join(format!("xtask-lock-{}", std::process::id()));
        let file = File::options().create(true).truncate(false).write(true).open(&path).unwrap();
        // SAFETY: flock on descriptors owned by the Files here.
        assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
        let other = File::open(&path).unwrap();
        assert_ne!(unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
        drop(file);
        assert_eq!(unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
        std::fs::remove_file(&path).unwrap();
    }
}
