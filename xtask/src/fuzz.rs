//! `cargo xtask fuzz [--seconds N] [--jobs N] [--build-only] [TARGET...]`: builds the cargo-fuzz
//! targets in `fuzz/` (one per parser of outside bytes; libFuzzer, on the pinned nightly of
//! monitor-ebpf/rust-toolchain.toml) and runs each for a fixed time, one per CPU at once. Every run first replays the target's corpus in
//! `fuzz/corpus/<target>/` (seeds, minimized finds and former crashers), so a regression fails
//! here even with `--seconds 0`. New inputs go to `<target dir>/fuzz/new/<target>/`, never into the
//! repository; a crash leaves its input in `<target dir>/fuzz/artifacts/<target>/` and fails the
//! command with the line that replays it. `fuzz/dicts/<target>.dict`, where present, gives
//! libFuzzer the format's keywords. This module also owns installing cargo-fuzz (setup).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::toolchain;
use crate::util::{display, run_inherit, stdout_of, target_dir, workspace_root};

/// The cargo-fuzz release setup installs (`cargo install --locked`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Per target in CI: 12 targets, two at a time on a 2-CPU machine, take about a minute after the
/// build.
pub const DEFAULT_SECONDS: u64 = 10;
/// libFuzzer limits: an input taking longer than this is a hang; more memory is a leak or a
/// quadratic blow-up. Both are findings, like a panic.
const TIMEOUT_SECS: u64 = 10;
const RSS_LIMIT_MB: u64 = 2048;
/// Inputs larger than the biggest seed rarely reach new code and slow every run down.
const MAX_LEN: usize = 64 * 1024;

/// Setup's step: cargo-fuzz present (installed when missing, unless only checking).
pub fn ensure_cargo_fuzz(check: bool, missing: &mut Vec<String>) -> Result<()> {
    let have = stdout_of(Command::new("cargo").args(["fuzz", "--version"]));
    if let Some(v) = have.as_deref().filter(|v| v.contains(CARGO_FUZZ_VERSION)) {
        println!("ok {}", v.trim());
        return Ok(());
    }
    if check {
        println!("missing cargo-fuzz {CARGO_FUZZ_VERSION} (for `cargo xtask fuzz`)");
        missing.push("cargo-fuzz".into());
        return Ok(());
    }
    println!("installing cargo-fuzz {CARGO_FUZZ_VERSION} (cargo install: about 2 minutes)");
    let mut cmd = Command::new("cargo");
    cmd.args(["install", "cargo-fuzz", "--locked", "--force", "--version", CARGO_FUZZ_VERSION])
        // Away from the workspace, so its .cargo/config.toml does not apply to the install.
        .current_dir(std::env::temp_dir());
    run_inherit(&mut cmd)
}

/// The fuzz targets: `fuzz/fuzz_targets/*.rs`, sorted.
pub fn targets() -> Result<Vec<String>> {
    let dir = workspace_root().join("fuzz").join("fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("read {}", dir.display()))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rs").map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// What one run reported (libFuzzer's `-print_final_stats` and its last status line).
#[derive(Debug, Default, PartialEq)]
struct Stats {
    execs: Option<u64>,
    /// Coverage counters (`cov:`) and features (`ft:`) at the end.
    cov: Option<u64>,
    ft: Option<u64>,
    corpus: Option<u64>,
}

fn parse_stats(log: &str) -> Stats {
    let mut s = Stats::default();
    for line in log.lines() {
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            s.execs = v.trim().parse().ok();
        }
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            let slot = match w {
                "cov:" => &mut s.cov,
                "ft:" => &mut s.ft,
                "corp:" => &mut s.corpus,
                _ => continue,
            };
            // `corp: 57/3104b`: the count before the slash.
            if let Some(n) = words.next().and_then(|n| n.split('/').next()?.parse().ok()) {
                *slot = Some(n);
            }
        }
    }
    s
}

/// How the targets run: for `seconds` each (after the corpus replay), `jobs` of them at once.
pub struct RunOptions {
    pub seconds: u64,
    pub jobs: usize,
    /// Build only; run nothing.
    pub build_only: bool,
}

/// One target's libFuzzer process.
struct Running {
    target: String,
    child: Child,
    log: PathBuf,
    artifacts: PathBuf,
}

pub fn run(opts: &RunOptions, only: &[String]) -> Result<()> {
    let all = targets()?;
    if let Some(unknown) = only.iter().find(|t| !all.contains(t)) {
        bail!("no fuzz target {unknown:?}; the targets are: {}", all.join(", "));
    }
    let chosen: Vec<&String> = all.iter().filter(|t| only.is_empty() || only.contains(t)).collect();
    let mut missing = Vec::new();
    ensure_cargo_fuzz(true, &mut missing)?;
    if !missing.is_empty() {
        bail!("cargo-fuzz {CARGO_FUZZ_VERSION} is not installed: run `cargo xtask setup`");
    }
    let channel = toolchain::ebpf_toolchain()?.channel;
    let out = target_dir().join("fuzz");
    build(&channel, &out)?;
    if opts.build_only {
        return Ok(());
    }

    let bin_dir = out.join("x86_64-unknown-linux-gnu").join("release");
    let mut failed = Vec::new();
    let mut rows = Vec::new();
    // Each libFuzzer process is one thread: `jobs` of them side by side (one per CPU by default)
    // each still get a CPU of their own for their `seconds`.
    for batch in chosen.chunks(opts.jobs.max(1)) {
        let mut running = Vec::new();
        for target in batch {
            running.push(start(target, &bin_dir, &out, opts.seconds)?);
        }
        for r in running {
            let Running { target, mut child, log, artifacts } = r;
            let status = child.wait().with_context(|| format!("waiting for fuzz target {target}"))?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let stats = parse_stats(&text);
            if !status.success() {
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
                eprintln!(
                    "fuzz target {target} failed ({status}); the input is in {}; replay it with `{} FILE`",
                    artifacts.display(),
                    bin_dir.join(&target).display()
                );
                failed.push(target.clone());
            }
            rows.push((target, status.success(), stats));
        }
    }
    println!("{:<16} {:>6} {:>10} {:>6} {:>7} {:>7}", "target", "result", "execs", "cov", "ft", "corpus");
    for (target, ok, s) in &rows {
        let n = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        let result = if *ok { "ok" } else { "FAILED" };
        println!("{target:<16} {result:>6} {:>10} {:>6} {:>7} {:>7}", n(s.execs), n(s.cov), n(s.ft), n(s.corpus));
    }
    if !failed.is_empty() {
        bail!("fuzzing found a problem in: {}", failed.join(", "));
    }
    Ok(())
}

/// Starts one target: its corpus replayed, then `seconds` of fuzzing; output into its log.
fn start(target: &str, bin_dir: &Path, out: &Path, seconds: u64) -> Result<Running> {
    let corpus = workspace_root().join("fuzz").join("corpus").join(target);
    let new = fresh_dir(&out.join("new").join(target))?;
    let artifacts = out.join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts).with_context(|| format!("create {}", artifacts.display()))?;
    let log_path = out.join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
    let mut cmd = Command::new(bin_dir.join(target));
    let dict = workspace_root().join("fuzz").join("dicts").join(format!("{target}.dict"));
    if dict.exists() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    cmd.arg(&new)
        .arg(&corpus)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={TIMEOUT_SECS}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-max_len={MAX_LEN}"))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    println!("=== fuzz: {target} for {seconds} s (log: {})", log_path.display());
    let child = cmd.spawn().with_context(|| format!("cannot run `{}`", display(&cmd)))?;
    Ok(Running { target: target.to_string(), child, log: log_path, artifacts })
}

/// One libFuzzer process per CPU.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `cargo fuzz build` for every target: no sanitizer (the parsers are safe Rust; a panic,
/// overflow, hang or blow-up is what is looked for, and uninstrumented memory runs twice as fast),
/// 16 codegen units (a 2-core CI machine builds the agent's whole dependency tree here). Without
/// `-O`, cargo-fuzz keeps debug assertions and overflow checks in the optimized build: they are
/// oracles, so `-O` (which drops them) is not used to save build time.
fn build(channel: &str, out: &Path) -> Result<()> {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", channel, "cargo", "fuzz", "build", "--sanitizer", "none", "--codegen-units", "16"])
        .arg("--target-dir")
        .arg(out)
        .current_dir(workspace_root())
        // Build scripts must not pick up the stable toolchain's rustc (as in `lint`).
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    println!("=== fuzz: building the targets ({channel}, cargo-fuzz)");
    run_inherit(&mut cmd)
}

fn fresh_dir(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_from_a_libfuzzer_log() {
        let log = "#2\tINITED cov: 210 ft: 260 corp: 8/2114b exec/s: 0 rss: 40Mb\n\
                   #4096\tpulse  cov: 231 ft: 301 corp: 12/2440b lim: 43 exec/s: 2048 rss: 41Mb\n\
                   Done 5000 runs in 3 second(s)\n\
                   stat::number_of_executed_units: 5000\n\
                   stat::average_exec_per_sec:     1666\n";
        assert_eq!(parse_stats(log), Stats { execs: Some(5000), cov: Some(231), ft: Some(301), corpus: Some(12) });
        assert_eq!(parse_stats(""), Stats::default());
    }

    #[test]
    fn every_target_has_a_corpus() {
        let names = targets().unwrap();
        assert!(names.len() >= 12, "{names:?}");
        for t in names {
            let dir = workspace_root().join("fuzz").join("corpus").join(&t);
            let seeds = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
            assert!(seeds > 0, "fuzz/corpus/{t} has no seeds");
        }
    }
}
