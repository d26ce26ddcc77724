//! The storm client process (see [`super::storm_clients`] for the parent's side and the
//! protocol): its entry point, [`storm_client_main`], and the reconnect loops each
//! [`StormMode`](super::storm_clients::StormMode) runs. The loops count how every attempt ended
//! instead of panicking, since failing connects are what these clients are for; they stop on end
//! of stdin, except the backoff schedule, which ends by itself.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::proc_setup::{entry_spec, say_line, spec_str, spec_u64, take_identity};
use super::storm_clients::{backoff_sleeps, LINE_PREFIX, STORM_CLIENT};
use super::to_sockaddr;
use super::wire::resp_command;

fn say(line: &str) {
    say_line(LINE_PREFIX, line);
}

/// CLOCK_MONOTONIC in ns (the clock of bpf_ktime_get_ns).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime: {}", io::Error::last_os_error());
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

type Outcomes = BTreeMap<String, u64>;

fn bump(o: &mut Outcomes, what: &str) {
    *o.entry(what.to_string()).or_default() += 1;
}

fn error_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::ETIMEDOUT) => "timedout".into(),
        Some(libc::ECONNRESET) => "reset".into(),
        Some(n) => format!("errno{n}"),
        None => format!("{:?}", e.kind()),
    }
}

/// The body of `#[test] fn storm_client_entry()`: runs the client described by
/// [`STORM_CLIENT_ENV`](super::storm_clients::STORM_CLIENT_ENV) and exits the process; returns at
/// once when the variable is not set.
pub fn storm_client_main() {
    let Some(spec) = entry_spec(&STORM_CLIENT) else {
        return;
    };
    let s = |k: &str| spec_str(&spec, k);
    take_identity(&spec);

    let target: SocketAddr = s("target").parse().expect("target address");
    let mode = &spec["mode"];
    // A fixed-interval loop should be regular even on a busy host: real-time priority for the
    // thread that runs it (it sleeps nearly all the time), so wake-ups are not delayed by
    // CPU-bound neighbours.
    if mode["kind"].as_str() == Some("tight") {
        let param = libc::sched_param { sched_priority: 10 };
        // SAFETY: plain syscall on the calling thread with a valid sched_param.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
            eprintln!(
                "warning: SCHED_FIFO refused ({}); the loop's timing follows the host's load",
                io::Error::last_os_error()
            );
        }
    }
    let u = |k: &str| spec_u64(mode, k);

    // End of stdin (or any line) stops the endless modes.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = io::stdin().lock().read_line(&mut line);
        stop2.store(true, Ordering::Relaxed);
    });

    say(&format!("started {}", SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis()));
    let t0 = Instant::now();
    let (outcomes, times_ns) = match mode["kind"].as_str().unwrap_or_default() {
        "tight" => tight_loop(target, Duration::from_millis(u("pause_ms")), &stop),
        "backoff" => {
            let sleeps = backoff_sleeps(
                Duration::from_millis(u("base_ms")),
                Duration::from_millis(u("cap_ms")),
                u("attempts") as u32,
                u("seed"),
            );
            backoff(target, &sleeps)
        }
        "connect_timeout" => {
            let timeout = Duration::from_millis(u("timeout_ms"));
            (
                in_threads(u("threads") as usize, &stop, move |stop| connect_timeout_loop(target, timeout, stop)),
                Vec::new(),
            )
        }
        "redis_reconnect" => {
            (in_threads(u("threads") as usize, &stop, move |stop| redis_reconnect_loop(target, stop)), Vec::new())
        }
        k => panic!("unknown storm mode {k:?} in {mode}"),
    };
    let attempts: u64 = outcomes.values().sum();
    let report = json!({
        "attempts": attempts,
        "outcomes": outcomes,
        "times_ns": times_ns,
        "elapsed_s": t0.elapsed().as_secs_f64(),
    });
    say(&format!("done {report}"));
    std::process::exit(0);
}

/// Runs `n` copies of `body` on threads (they inherit name, cgroup and namespace) and merges what
/// they counted.
fn in_threads(
    n: usize,
    stop: &Arc<AtomicBool>,
    body: impl Fn(&AtomicBool) -> Outcomes + Send + Sync + Clone + 'static,
) -> Outcomes {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let stop = stop.clone();
            let body = body.clone();
            std::thread::spawn(move || body(&stop))
        })
        .collect();
    let mut all = Outcomes::new();
    for h in handles {
        for (k, v) in h.join().expect("storm client thread panicked") {
            *all.entry(k).or_default() += v;
        }
    }
    all
}

fn tight_loop(target: SocketAddr, pause: Duration, stop: &AtomicBool) -> (Outcomes, Vec<u64>) {
    let mut o = Outcomes::new();
    let mut times = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        times.push(monotonic_ns());
        match TcpStream::connect(target) {
            Ok(s) => {
                bump(&mut o, "connected");
                drop(s);
            }
            Err(e) => bump(&mut o, &error_name(&e)),
        }
        std::thread::sleep(pause);
    }
    (o, times)
}

fn backoff(target: SocketAddr, sleeps: &[Duration]) -> (Outcomes, Vec<u64>) {
    let mut o = Outcomes::new();
    let mut times = Vec::new();
    for k in 0..=sleeps.len() {
        times.push(monotonic_ns());
        match TcpStream::connect(target) {
            Ok(s) => {
                bump(&mut o, "connected");
                drop(s);
            }
            Err(e) => bump(&mut o, &error_name(&e)),
        }
        if let Some(d) = sleeps.get(k) {
            std::thread::sleep(*d);
        }
    }
    (o, times)
}

/// A non-blocking connect; Ok(None) while in progress, Ok(Some(outcome)) if it ended at once.
fn start_connect(target: SocketAddr) -> (OwnedFd, Option<String>) {
    let family = if target.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain syscalls; the fd is owned by an OwnedFd.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let (sa, len) = to_sockaddr(&target);
        let rc = libc::connect(fd.as_raw_fd(), &sa as *const _ as *const libc::sockaddr, len);
        if rc == 0 {
            return (fd, Some("connected".into()));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINPROGRESS) {
            (fd, None)
        } else {
            (fd, Some(error_name(&e)))
        }
    }
}

fn connect_timeout_loop(target: SocketAddr, timeout: Duration, stop: &AtomicBool) -> Outcomes {
    let mut o = Outcomes::new();
    while !stop.load(Ordering::Relaxed) {
        let (fd, done) = start_connect(target);
        let outcome = done.unwrap_or_else(|| {
            let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
            if n == 0 {
                return "timeout".into();
            }
            let mut err: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: SO_ERROR writes one int.
            unsafe {
                libc::getsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    &mut err as *mut _ as *mut libc::c_void,
                    &mut len,
                )
            };
            if err == 0 {
                "connected".into()
            } else {
                error_name(&io::Error::from_raw_os_error(err))
            }
        });
        bump(&mut o, &outcome);
        drop(fd); // give up (or hang up) and try again at once
    }
    o
}

fn redis_reconnect_loop(target: SocketAddr, stop: &AtomicBool) -> Outcomes {
    let mut o = Outcomes::new();
    let ping = resp_command(&["PING"]);
    while !stop.load(Ordering::Relaxed) {
        let mut s = match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
            Ok(s) => s,
            Err(e) => {
                bump(&mut o, &format!("connect:{}", error_name(&e)));
                continue;
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).expect("SO_RCVTIMEO");
        // The server may have hung up already (and answer the PING with a reset): what it said
        // before that is still in the receive queue.
        let wrote = s.write_all(&ping);
        let outcome = match read_reply_line(&mut s) {
            Ok(line) => line,
            Err(e) => match wrote {
                Err(w) => format!("write:{}", error_name(&w)),
                Ok(()) => format!("read:{e}"),
            },
        };
        bump(&mut o, &outcome);
        drop(s);
    }
    o
}

/// One CRLF-terminated line (without the CRLF); Err describes an early end or error.
fn read_reply_line(s: &mut impl Read) -> Result<String, String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(b"\r\n") {
        match s.read(&mut b) {
            Ok(0) => return Err(format!("eof after {:?}", String::from_utf8_lossy(&out))),
            Ok(_) => out.push(b[0]),
            Err(e) => return Err(error_name(&e)),
        }
        if out.len() > 4096 {
            return Err("reply line too long".into());
        }
    }
    out.truncate(out.len() - 2);
    Ok(String::from_utf8_lossy(&out).into_owned())
}
