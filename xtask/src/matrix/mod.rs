//! `cargo xtask matrix`: the kernel smoke suite (tests/kernel_smoke.rs) on the kernels users run.
//! Debian's 5.10 (bullseye), 6.1 and 6.12 (bookworm) images are fetched and cached
//! (`kernels`), each boots under qemu with software emulation through virtme-ng (nested KVM
//! hangs on the machines this runs on) with the host's root filesystem shared read-only, so the
//! suite's binary and the agent built here run there unchanged; the suite writes what it saw into
//! a directory shared read-write. The same binary also runs on the host's kernel. Each kernel's
//! feature table is printed and compared with what it must have (`expect`): a probe down or
//! attached through another program than the table says, or a figure that disagrees with its
//! oracle (the suite fails then), makes the run fail.

mod expect;
mod kernels;
mod table;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::{display, is_root, target_dir, workspace_root};
use expect::Expected;
use kernels::Series;

/// The guests, oldest first.
pub const SERIES: &[Series] = &[
    Series { name: "5.10", distro: "Debian 11", prefix: "linux-image-5.10.0-", suffix: "-amd64-unsigned" },
    Series { name: "6.1", distro: "Debian 12", prefix: "linux-image-6.1.0-", suffix: "-amd64-unsigned" },
    Series { name: "6.12", distro: "Debian 12", prefix: "linux-image-6.12.", suffix: "+deb12-amd64-unsigned" },
];

/// How long one guest may take to boot and run the suite before it counts as hung.
const GUEST_TIMEOUT: Duration = Duration::from_secs(600);

pub struct Options {
    /// Series names to boot (all when empty).
    pub kernels: Vec<String>,
    /// Skip the host kernel's run.
    pub no_host: bool,
    /// Boot the guests one after another instead of all at once.
    pub sequential: bool,
}

/// One kernel's run: where its results are and how long it took.
struct Run {
    label: String,
    series: &'static str,
    out: PathBuf,
    child: Child,
    started: Instant,
    elapsed: Option<Duration>,
    timed_out: bool,
}

/// The guests' kernels, fetched and their modules installed ([`prepare`]).
pub struct Guests {
    kernels: Vec<(&'static Series, kernels::Kernel)>,
    /// How long fetching them took.
    fetched: Duration,
}

/// The kernels of the chosen series (all when `names` is empty), downloaded into the cache when
/// missing, their modules installed: everything a guest needs but the suite's binary. Network
/// and disk only, so `cargo xtask test` does it while the tests build.
pub fn prepare(names: &[String]) -> Result<Guests> {
    if !is_root() {
        bail!("the matrix installs kernel modules, boots guests and loads eBPF: run it as root");
    }
    let t0 = Instant::now();
    let series: Vec<&'static Series> = if names.is_empty() {
        SERIES.iter().collect()
    } else {
        let picked: Vec<&Series> = SERIES.iter().filter(|s| names.iter().any(|k| k == s.name)).collect();
        if picked.len() != names.len() {
            let known: Vec<&str> = SERIES.iter().map(|s| s.name).collect();
            bail!("unknown kernel in --kernels {names:?}; known: {}", known.join(", "));
        }
        picked
    };
    let cache = target_dir().join("kernels");
    std::fs::create_dir_all(&cache)?;
    let fetched = kernels::fetch_all(&series, &cache)?;
    let mut guests = Vec::new();
    for (s, k) in series.into_iter().zip(fetched) {
        kernels::install_modules(&k, &cache)?;
        guests.push((s, k));
    }
    Ok(Guests { kernels: guests, fetched: t0.elapsed() })
}

pub fn run(opts: &Options) -> Result<()> {
    let guests = prepare(&opts.kernels)?;
    let t0 = Instant::now();
    let suite = build_suite()?;
    println!(
        "matrix: kernels ready in {:.0} s, suite built in {:.0} s",
        guests.fetched.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    run_suite(guests, &suite, opts)
}

/// Boots every guest (and, unless `no_host`, runs on the host) with the kernel_smoke binary
/// `suite`, then shows and checks each kernel's table.
pub fn run_suite(guests: Guests, suite: &Path, opts: &Options) -> Result<()> {
    let results = target_dir().join("kernels").join("results");
    let mut runs = Vec::new();
    let t_runs = Instant::now();
    for (s, k) in &guests.kernels {
        let out = fresh_dir(&results.join(&k.release))?;
        let child = boot(&k.vmlinuz, suite, &out)?;
        let label = format!("{} ({} {})", k.release, s.distro, s.name);
        runs.push(Run { label, series: s.name, out, child, started: Instant::now(), elapsed: None, timed_out: false });
        if opts.sequential {
            wait_all(&mut runs);
        }
    }
    if !opts.no_host {
        let out = fresh_dir(&results.join("host"))?;
        let child = host_run(suite, &out)?;
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let label = format!("{} (this host)", release.trim());
        runs.push(Run { label, series: "host", out, child, started: Instant::now(), elapsed: None, timed_out: false });
    }
    wait_all(&mut runs);
    let wall = t_runs.elapsed();

    let mut failed = Vec::new();
    for r in &runs {
        let expected = Expected::of(r.series);
        let verdict = table::show(&r.label, &r.out, r.elapsed.unwrap_or_default(), r.timed_out, &expected);
        if let Err(why) = verdict {
            failed.push(format!("{}: {why}", r.label));
        }
    }
    println!(
        "matrix: {} kernels in {:.0} s ({}; fetching the kernels took {:.0} s before)",
        runs.len(),
        wall.as_secs_f64(),
        if opts.sequential { "one after another" } else { "side by side" },
        guests.fetched.as_secs_f64()
    );
    if !failed.is_empty() {
        bail!("kernel matrix regressions:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

fn fresh_dir(dir: &Path) -> Result<PathBuf> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir.to_path_buf())
}

/// Builds the suite (and the agent it starts) and returns the suite's binary. Selected from the
/// whole workspace as `cargo xtask test` builds it: `-p connmon` alone unifies features
/// differently and rebuilds connmon and the test support crate.
fn build_suite() -> Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "monitor-ebpf",
        "--test",
        "kernel_smoke",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ])
    .current_dir(workspace_root())
    .stderr(Stdio::inherit());
    let out = cmd.output().with_context(|| format!("cannot run `{}`", display(&cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed", display(&cmd));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\"") && l.contains("\"name\":\"kernel_smoke\""))
        .find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v["executable"].as_str().map(PathBuf::from)
        })
        .context("cargo built no kernel_smoke test binary")
}

/// The suite's command line, writing its output and exit status into `out`.
fn suite_script(suite: &Path, out: &Path) -> String {
    format!(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; cd {root}; \
         CONNMON_SMOKE_OUT={out} {suite} --exact kernel_smoke --nocapture --test-threads=1 >{out}/test.log 2>&1; \
         echo $? >{out}/exit",
        root = workspace_root().display(),
        out = out.display(),
        suite = suite.display(),
    )
}

/// Boots `vmlinuz` with virtme-ng (qemu TCG) running the suite.
fn boot(vmlinuz: &Path, suite: &Path, out: &Path) -> Result<Child> {
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "virtme_ng.run", "--run"])
        .arg(vmlinuz)
        .args(["--disable-kvm", "--memory", "2G", "--cpus", "2", "--rwdir"])
        .arg(out)
        .arg("--exec")
        .arg(suite_script(suite, out))
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out.join("vng.log"))?)
        .stderr(std::fs::File::create(out.join("vng.err"))?);
    println!("matrix: booting {}", vmlinuz.display());
    cmd.spawn().with_context(|| format!("cannot run `{}` (cargo xtask setup installs virtme-ng)", display(&cmd)))
}

/// The suite on this host's kernel.
fn host_run(suite: &Path, out: &Path) -> Result<Child> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(suite_script(suite, out)).stdin(Stdio::null());
    println!("matrix: running the suite on the host kernel");
    cmd.spawn().with_context(|| format!("cannot run `{}`", display(&cmd)))
}

/// Waits for every run still going; a run past GUEST_TIMEOUT is killed.
fn wait_all(runs: &mut [Run]) {
    loop {
        let mut pending = false;
        for r in runs.iter_mut().filter(|r| r.elapsed.is_none()) {
            match r.child.try_wait() {
                Ok(Some(_)) | Err(_) => r.elapsed = Some(r.started.elapsed()),
                Ok(None) if r.started.elapsed() > GUEST_TIMEOUT => {
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                    r.timed_out = true;
                    r.elapsed = Some(r.started.elapsed());
                }
                Ok(None) => pending = true,
            }
        }
        if !pending {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
