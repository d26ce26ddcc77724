//! connfleet: a busy host's connection layout in one process on loopback, the load of
//! `cargo xtask bench scale`.
//!
//! `--listeners N` TCP listeners on 127.0.0.1 (one port each) and `--pools M` client pools: pool i
//! holds `--conns` connections to listener i mod N, so every pool has its own destination
//! (dst_port) and connmon sees M pools and N listeners. `--failing K` more pools connect to ports
//! that are bound but not listening (each connect is refused), like clients of a dead dependency.
//! `--churn R` connections a second, over all pools in turn, are closed and opened again, so the
//! pools' counters and histograms (connect time, lifetime) move as on a live host.
//!
//! One thread serves every listener: it accepts without blocking and closes an accepted socket
//! once its client has closed (read returns 0), so no CLOSE_WAIT piles up. When everything is open
//! it prints one JSON line (`{"ready":true,"listeners":N,"pools":M,"sockets":S,...}`), then runs
//! until `--secs` have passed (0: until killed) and prints a closing line with the churn done.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
#[command(name = "connfleet", about = "Many listeners and client pools on loopback, in one process")]
struct Args {
    /// Listeners to open on 127.0.0.1.
    #[arg(long, default_value_t = 1500)]
    listeners: usize,
    /// Client pools, each to its own listener (round robin when there are more pools).
    #[arg(long, default_value_t = 1500)]
    pools: usize,
    /// Open connections each pool holds.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Pools whose every connect is refused (to a bound port that does not listen).
    #[arg(long, default_value_t = 0)]
    failing: usize,
    /// Connections a second closed and opened again, over all pools in turn (and connects a
    /// second of the failing pools, over them in turn).
    #[arg(long, default_value_t = 100.0)]
    churn: f64,
    /// How long to run after everything is open, in seconds (0: until killed).
    #[arg(long, default_value_t = 0.0)]
    secs: f64,
}

/// File descriptors this layout needs, with room to spare, up to the hard limit.
fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid struct; failure only leaves the old limit.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if want > lim.rlim_max {
        eprintln!(
            "connfleet: needs {want} file descriptors, the hard limit is {}: run fewer per process",
            lim.rlim_max
        );
        std::process::exit(2);
    }
    lim.rlim_cur = want;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        eprintln!("connfleet: cannot raise RLIMIT_NOFILE to {want}: {}", io::Error::last_os_error());
    }
}

/// Accepts on every listener without blocking and closes accepted sockets their client closed.
fn serve(listeners: Vec<TcpListener>, accepted: Arc<AtomicU64>) {
    let mut open: Vec<TcpStream> = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        let mut busy = false;
        for l in &listeners {
            while let Ok((s, _)) = l.accept() {
                let _ = s.set_nonblocking(true);
                open.push(s);
                accepted.fetch_add(1, Relaxed);
                busy = true;
            }
        }
        open.retain_mut(|s| match s.read(&mut buf) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted,
        });
        if !busy {
            thread::sleep(Duration::from_millis(5));
        }
    }
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2))
}

fn main() {
    let args = Args::parse();
    if args.listeners == 0 || !(args.churn >= 0.0 && args.churn.is_finite()) || args.secs < 0.0 {
        eprintln!("connfleet: --listeners must be > 0, --churn and --secs >= 0");
        std::process::exit(2);
    }
    let sockets = args.listeners + args.failing + 2 * args.pools * args.conns;
    raise_fd_limit(sockets as u64 + 1024);

    let mut listeners = Vec::with_capacity(args.listeners);
    let mut addrs = Vec::with_capacity(args.listeners);
    for _ in 0..args.listeners {
        let l = match TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => {
                eprintln!("connfleet: cannot listen on 127.0.0.1 ({} listeners open): {e}", listeners.len());
                std::process::exit(1);
            }
        };
        // SAFETY: listen(2) on a socket we own: a deeper backlog than std's 128 for the opening burst.
        unsafe { libc::listen(l.as_raw_fd(), 1024) };
        l.set_nonblocking(true).expect("nonblocking listener");
        addrs.push(l.local_addr().expect("listener address"));
        listeners.push(l);
    }
    // Bound, never listening: a connect to these ports is answered with an RST.
    let mut dead_ports = Vec::new();
    let mut held = Vec::new();
    for _ in 0..args.failing {
        // SAFETY: a plain TCP socket bound to an ephemeral loopback port and kept open (not listening).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: fd is ours; sa and len are valid for the calls.
        let ok = unsafe {
            libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), len) == 0
                && libc::getsockname(fd, (&mut sa as *mut libc::sockaddr_in).cast(), &mut len) == 0
        };
        if !ok {
            eprintln!("connfleet: cannot bind a port for a failing pool: {}", io::Error::last_os_error());
            std::process::exit(1);
        }
        dead_ports.push(SocketAddr::from(([127, 0, 0, 1], u16::from_be(sa.sin_port))));
        held.push(fd);
    }

    let accepted = Arc::new(AtomicU64::new(0));
    {
        let accepted = Arc::clone(&accepted);
        thread::spawn(move || serve(listeners, accepted));
    }

    let started = Instant::now();
    let mut pools: Vec<(SocketAddr, VecDeque<TcpStream>)> =
        (0..args.pools).map(|i| (addrs[i % addrs.len()], VecDeque::with_capacity(args.conns))).collect();
    let mut errors = 0u64;
    for _ in 0..args.conns {
        for (addr, conns) in &mut pools {
            match connect(*addr) {
                Ok(s) => conns.push_back(s),
                Err(_) => errors += 1,
            }
        }
    }
    let open: usize = pools.iter().map(|(_, c)| c.len()).sum();
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted.load(Relaxed) < open as u64 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    println!(
        "{{\"ready\":true,\"listeners\":{},\"pools\":{},\"failing\":{},\"connections\":{open},\"accepted\":{},\
         \"errors\":{errors},\"setup_s\":{:.3}}}",
        args.listeners,
        args.pools,
        args.failing,
        accepted.load(Relaxed),
        started.elapsed().as_secs_f64()
    );

    let start = Instant::now();
    let end = (args.secs > 0.0).then(|| start + Duration::from_secs_f64(args.secs));
    let (mut churned, mut refused) = (0u64, 0u64);
    if args.churn > 0.0 && (!pools.is_empty() || !dead_ports.is_empty()) {
        let period = Duration::from_secs_f64(1.0 / args.churn);
        for k in 0u64.. {
            let due = start + period.mul_f64(k as f64);
            if end.is_some_and(|e| due >= e) {
                break;
            }
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            if !pools.is_empty() {
                let n = pools.len();
                let (addr, conns) = &mut pools[(k as usize) % n];
                drop(conns.pop_front());
                match connect(*addr) {
                    Ok(s) => {
                        conns.push_back(s);
                        churned += 1;
                    }
                    Err(_) => errors += 1,
                }
            }
            if !dead_ports.is_empty() && connect(dead_ports[(k as usize) % dead_ports.len()]).is_err() {
                refused += 1;
            }
        }
    } else if let Some(e) = end {
        thread::sleep(e.saturating_duration_since(Instant::now()));
    } else {
        loop {
            thread::sleep(Duration::from_secs(3600));
        }
    }
    println!("{{\"done\":true,\"churned\":{churned},\"refused\":{refused},\"errors\":{errors}}}");
    for fd in held {
        // SAFETY: closing fds we opened above.
        unsafe { libc::close(fd) };
    }
}
