//! Small helpers: running commands (quietly into a log, or on the terminal), finding files,
//! privileges.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A child process that ran and exited unsuccessfully; `main` exits with its code.
#[derive(Debug)]
pub struct ChildFailed {
    pub command: String,
    pub code: Option<i32>,
}

impl ChildFailed {
    pub fn exit_code(&self) -> ExitCode {
        match self.code {
            Some(code) if (1..=255).contains(&code) => ExitCode::from(code as u8),
            _ => ExitCode::FAILURE,
        }
    }
}

impl fmt::Display for ChildFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "`{}` failed with exit code {code}", self.command),
            None => write!(f, "`{}` was killed by a signal", self.command),
        }
    }
}

impl std::error::Error for ChildFailed {}

/// The workspace root (xtask lives in `<root>/xtask`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace root), else `<root>/target`.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// `$CARGO_HOME`, else `~/.cargo`.
pub fn cargo_home() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(home));
    }
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".cargo"))
}

/// Put `<cargo home>/bin` first on this process's PATH (children inherit it).
pub fn prepend_cargo_bin_to_path() {
    let Some(bin) = cargo_home().map(|h| h.join("bin")) else {
        return;
    };
    let current = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = vec![bin.clone()];
    dirs.extend(std::env::split_paths(&current).filter(|d| *d != bin));
    if let Ok(path) = std::env::join_paths(dirs) {
        std::env::set_var("PATH", path);
    }
}

/// The first executable named `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| {
        candidate.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    })
}

/// Effective uid is 0 (read from /proc/self/status: no libc dependency for one call).
pub fn is_root() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

/// `prog arg...` as a shell-like string, for messages.
pub fn display(cmd: &Command) -> String {
    let mut parts: Vec<OsString> = vec![cmd.get_program().to_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_owned()));
    parts.iter().map(|p| p.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

/// Run with inherited stdio; error (a `ChildFailed`) unless it exits 0.
pub fn run_inherit(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    let status = cmd.status().with_context(|| format!("cannot run `{shown}`"))?;
    if status.success() {
        Ok(())
    } else {
        Err(ChildFailed { command: shown, code: status.code() }.into())
    }
}

/// Run quietly and return stdout when it exits 0; `None` if it cannot run or fails.
pub fn stdout_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Lines of a failed step's log shown on the terminal.
const FAILURE_TAIL: usize = 25;

/// Where a step's output goes: `<target>/xtask-logs/NAME.log`.
pub fn log_path(name: &str) -> PathBuf {
    target_dir().join("xtask-logs").join(format!("{name}.log"))
}

/// One line of progress for a step that may take a while: prints `what …` now and, when `step`
/// returns, ` ok (42 s)` on the same line (or ` failed` and the error below it).
pub fn step<T>(what: &str, step: impl FnOnce() -> Result<T>) -> Result<T> {
    print!("{what} ...");
    let _ = std::io::stdout().flush();
    let started = Instant::now();
    let result = step();
    match &result {
        Ok(_) => println!(" ok ({})", elapsed(started.elapsed())),
        Err(_) => println!(" failed after {}", elapsed(started.elapsed())),
    }
    result
}

/// Run with stdout and stderr going to `log` (appended; the command line first), so that
/// apt-get, rustup, pip and cargo print nothing on success. On failure: the log's last lines,
/// then `hint` (one line: what to do), and a `ChildFailed` naming the log.
pub fn run_logged(cmd: &mut Command, log: &Path, hint: &str) -> Result<()> {
    let shown = display(cmd);
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot write {}", log.display()))?;
    writeln!(file, "$ {shown}")?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("cannot run `{shown}`"))?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(FAILURE_TAIL)..];
    eprintln!("\n--- last {} lines of {} ---\n{}\n---", tail.len(), log.display(), tail.join("\n"));
    eprintln!("hint: {hint}");
    Err(ChildFailed { command: shown, code: status.code() }.into())
}

/// `42 s`, `3 min 05 s`: how long a step took, for progress lines.
pub fn elapsed(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 10.0 {
        format!("{secs:.1} s")
    } else if secs < 60.0 {
        format!("{secs:.0} s")
    } else {
        let s = secs.round() as u64;
        format!("{} min {:02} s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(elapsed(Duration::from_millis(420)), "0.4 s");
        assert_eq!(elapsed(Duration::from_secs(42)), "42 s");
        assert_eq!(elapsed(Duration::from_secs(185)), "3 min 05 s");
    }

    #[test]
    fn a_failing_command_keeps_its_output_in_the_log() {
        let log = std::env::temp_dir().join(format!("xtask-run-logged-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&log);
        run_logged(Command::new("sh").args(["-c", "echo quiet"]), &log, "unused").unwrap();
        let err = run_logged(Command::new("sh").args(["-c", "echo broken >&2; exit 3"]), &log, "fix it").unwrap_err();
        let failed = err.downcast_ref::<ChildFailed>().expect("a ChildFailed");
        assert_eq!(failed.code, Some(3));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("$ sh -c echo quiet\nquiet\n") && text.contains("broken\n"), "{text}");
        std::fs::remove_file(&log).unwrap();
    }
}
