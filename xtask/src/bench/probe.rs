//! The probes the bench measures, as child processes it starts, watches and stops: the release
//! agent (`connmon run`, ready once /readyz answers 200) and a bpftrace one-liner (ready once it
//! prints "Attaching", its stdout collected by a reader thread). A probe is stopped with SIGINT so
//! it exits cleanly (SIGKILL after 10 s), and killed when dropped on an error path.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::scrape::http_get;
use crate::util::display;

/// A running probe process. Dropping it kills the process (error paths); `stop` ends it cleanly.
pub(super) struct Probe {
    pub(super) name: &'static str,
    child: Option<Child>,
    log: PathBuf,
    /// bpftrace's stdout, line by line, from a reader thread (`early_lines`: those read while
    /// waiting for it to attach).
    lines: Option<Receiver<String>>,
    early_lines: Vec<String>,
    reader: Option<JoinHandle<()>>,
}

/// What a probe left when it stopped.
pub(super) struct Stopped {
    pub(super) status: ExitStatus,
    pub(super) stdout: Vec<String>,
}

impl Probe {
    pub(super) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// The last lines of the probe's log, for error messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n  ");
        format!("{} (log {}):\n  {tail}", self.name, self.log.display())
    }

    /// Error unless the process is still running.
    pub(super) fn check_alive(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else { bail!("{} is not running", self.name) };
        if let Some(status) = child.try_wait()? {
            self.child = None;
            bail!("{} exited unexpectedly ({status}); {}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// SIGINT (both the agent and bpftrace shut down cleanly on it), then SIGKILL after 10 s.
    pub(super) fn stop(mut self) -> Result<Stopped> {
        let mut child = self.child.take().context("probe already stopped")?;
        signal(child.id(), libc::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                eprintln!("warning: {} ignored SIGINT for 10 s; killing it", self.name);
                let _ = child.kill();
                break child.wait()?;
            }
            thread::sleep(Duration::from_millis(20));
        };
        // The reader ends at EOF, which the exit brings.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let mut stdout = std::mem::take(&mut self.early_lines);
        if let Some(rx) = self.lines.take() {
            stdout.extend(rx.try_iter());
        }
        Ok(Stopped { status, stdout })
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) on a child of ours that has not been reaped yet.
        unsafe { libc::kill(pid, sig) };
    }
}

fn log_file(path: &Path) -> Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))
}

/// `connmon run --web.listen-address <web>`, ready once /readyz answers 200.
pub(super) fn start_agent(connmon: &Path, web: SocketAddr, log: PathBuf, extra: &[&str]) -> Result<Probe> {
    let out = log_file(&log)?;
    let mut cmd = Command::new(connmon);
    cmd.arg("run")
        .arg("--web.listen-address")
        .arg(web.to_string())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let shown = display(&cmd);
    let child = cmd.spawn().with_context(|| format!("cannot start `{shown}`"))?;
    let mut probe =
        Probe { name: "connmon", child: Some(child), log, lines: None, early_lines: Vec::new(), reader: None };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        probe.check_alive()?;
        if let Ok((200, _)) = http_get(web, "/readyz", Duration::from_secs(2)) {
            return Ok(probe);
        }
        if Instant::now() > deadline {
            bail!("connmon was not ready within 30 s (/readyz never answered 200); {}", probe.log_tail());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `bpftrace -e PROGRAM`, ready once it prints "Attaching".
pub(super) fn start_bpftrace(program: &str, log: PathBuf) -> Result<Probe> {
    let mut cmd = Command::new("bpftrace");
    cmd.arg("-e").arg(program).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log_file(&log)?);
    let mut child = cmd.spawn().context("cannot start bpftrace")?;
    let stdout = child.stdout.take().context("bpftrace stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut probe =
        Probe { name: "bpftrace", child: Some(child), log, lines: None, early_lines: Vec::new(), reader: Some(reader) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let ready = line.contains("Attaching");
                seen.push(line);
                if ready {
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                thread::sleep(Duration::from_millis(50));
            }
        }
        probe.check_alive()?;
        if Instant::now() > deadline {
            bail!("bpftrace did not print \"Attaching\" within 30 s; {}", probe.log_tail());
        }
    }
    probe.early_lines = seen;
    probe.lines = Some(rx);
    Ok(probe)
}

#[cfg(test)]
mod tests {
    use super::super::free_port;
    use super::*;

    #[test]
    fn agent_that_exits_at_start_is_an_error() {
        let log = std::env::temp_dir().join(format!("xtask-bench-test-{}.log", std::process::id()));
        let web = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
        let err = start_agent(Path::new("/bin/false"), web, log.clone(), &[]).err().expect("must fail");
        let _ = std::fs::remove_file(&log);
        assert!(err.to_string().contains("exited unexpectedly"), "{err:#}");
    }
}
