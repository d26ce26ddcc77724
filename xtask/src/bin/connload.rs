//! connload: loopback TCP connection churn, the load of `cargo xtask bench`.
//!
//! A listener on 127.0.0.1 with its own accept thread(s), and client threads that each loop
//! connect → (optionally write one byte and read the echo) → read until EOF → close, either as fast
//! as they can (`--rate 0`, the default) or paced to `--rate` connections per second over all
//! clients. At the end it prints one JSON line:
//!
//! ```text
//! {"mode":"saturate","secs":5,"target_rate":0,"clients":2,"acceptors":1,"echo":false,
//!  "connections":123456,"accepted":123456,"errors":0,"elapsed_s":5.0001,"rate":24690.9,
//!  "late_max_ms":0.000,"late_over_1ms":0,"first_error":null}
//! ```
//!
//! `connections` counts client connections that completed the whole exchange; `rate` is
//! `connections / elapsed_s`. `late_*` (paced mode) say how far behind schedule connections
//! started. Exit status 0 unless the listener cannot be set up or a client is stuck.
//!
//! Who closes first, and why: the server (the accept thread) closes as soon as it has accepted
//! (and, with `--echo`, answered), and the client closes after reading EOF. So every connection
//! goes CLOSE → SYN_SENT → ESTABLISHED → CLOSE_WAIT → LAST_ACK → CLOSE on the client and
//! SYN_RECV → ESTABLISHED → FIN_WAIT1 → FIN_WAIT2 → CLOSE on the server: a full, ordinary FIN
//! lifecycle, no RST, that the monitor sees end to end. TIME_WAIT lands on the server side,
//! where it is harmless for a churn loop that lasts minutes:
//! - the client's ephemeral port is free the moment its socket reaches CLOSE, so the ~28k ports
//!   of ip_local_port_range are never exhausted (client-side TIME_WAIT would hold each port for
//!   60 s: ~470 connections/s sustained, or a dependence on net.ipv4.tcp_tw_reuse and its 1 s
//!   reuse delay, plus a connect() that slows down searching a nearly full port space);
//! - a server TIME_WAIT entry never blocks the client's port choice (it is keyed from the server's
//!   side), and a new SYN for the same 4-tuple recycles it (newer timestamp / higher ISN);
//! - so with one server port the TIME_WAIT entries number about the ephemeral ports in use (one
//!   per client port, recycled), reached within seconds: the bench passes the same `--port` to
//!   every run and warms up first, so every measured round sees the same kernel tables (which
//!   matters: sock_diag dumps walk TIME_WAIT entries too). Past net.ipv4.tcp_max_tw_buckets the
//!   kernel would simply close without TIME_WAIT.
//!
//! SO_LINGER {1, 0} would avoid TIME_WAIT altogether, but it ends every connection with an RST
//! (ESTABLISHED → CLOSE), which is not the lifecycle of a normal connection pool and skips the
//! FIN states the probe also has to handle.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
#[command(name = "connload", about = "Loopback TCP connection churn: connect, close, repeat")]
struct Args {
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Connections per second over all clients, paced by absolute deadlines; 0 = as fast as
    /// possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Client threads [default: twice the number of CPUs]. Each waits for the server's FIN in
    /// turn, so saturating the CPUs takes more clients than CPUs.
    #[arg(long)]
    clients: Option<usize>,
    /// Accepting threads.
    #[arg(long, default_value_t = 1)]
    acceptors: usize,
    /// Send one byte and wait for the server's echo before reading EOF.
    #[arg(long, conflicts_with = "rst")]
    echo: bool,
    /// Connect/close churn ending in a reset: the client closes right after connect() with
    /// SO_LINGER {1, 0}, so its socket goes ESTABLISHED → CLOSE and the server's child is reset
    /// (the shortest lifecycle a probe can see; no TIME_WAIT anywhere).
    #[arg(long)]
    rst: bool,
    /// Port to listen on at 127.0.0.1 (0 = any free port). Reusing one port across runs keeps
    /// the server-side TIME_WAIT population bounded (see above); SO_REUSEADDR (std's default
    /// for listeners) lets a new run bind it while the last one's TIME_WAITs remain.
    #[arg(long, default_value_t = 0)]
    port: u16,
}

/// Accepted sockets are closed at once (after the echo with `--echo`): the server closes first.
fn accept_loop(listener: &TcpListener, echo: bool, accepted: &AtomicU64) {
    loop {
        match listener.accept() {
            Ok((mut sock, _)) => {
                if echo {
                    // Never wait long for a client that went away; the byte must be read before
                    // close, or the kernel answers the unread data with an RST instead of a FIN.
                    let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut byte = [0u8; 1];
                    if sock.read_exact(&mut byte).is_ok() {
                        let _ = sock.write_all(&byte);
                    }
                }
                accepted.fetch_add(1, Relaxed);
                drop(sock);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // EMFILE, ENOBUFS...: back off a little rather than spin.
            Err(_) => thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// One connection: connect, optional one-byte exchange, read until the server's FIN, close
/// (with `rst`: connect, then close at once with a reset).
fn one_connection(addr: SocketAddr, echo: bool, rst: bool) -> io::Result<()> {
    let mut sock = TcpStream::connect(addr)?;
    if rst {
        return reset_close(sock);
    }
    if echo {
        sock.write_all(b"x")?;
    }
    let mut buf = [0u8; 16];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Closes `sock` with SO_LINGER {1, 0}: the kernel sends an RST and frees the socket at once.
fn reset_close(sock: TcpStream) -> io::Result<()> {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt on a socket we own, with a pointer to a live value of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    drop(sock);
    Ok(())
}

#[derive(Default)]
struct ClientTally {
    connections: u64,
    errors: u64,
    late_max: Duration,
    late_over_1ms: u64,
}

struct Shared {
    addr: SocketAddr,
    echo: bool,
    rst: bool,
    start: Instant,
    end: Instant,
    /// Nanoseconds between scheduled connections (paced mode only).
    period_ns: Option<f64>,
    /// Next connection number to schedule (paced mode): connection i is due at start + i·period.
    next: AtomicU64,
    first_error: Mutex<Option<String>>,
}

fn client_loop(shared: &Shared) -> ClientTally {
    let mut tally = ClientTally::default();
    if shared.period_ns.is_some() {
        // Sleep to the microsecond rather than the default 50 µs timer slack: at 10k/s the
        // whole budget between two connections is 100 µs.
        // SAFETY: prctl with integer arguments only affects the calling thread.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
    }
    loop {
        match shared.period_ns {
            None => {
                if Instant::now() >= shared.end {
                    break;
                }
            }
            Some(period) => {
                // Absolute deadlines from a shared counter: no drift from sleep overshoot, and a
                // client that fell behind catches up instead of silently lowering the rate.
                let i = shared.next.fetch_add(1, Relaxed);
                let due = shared.start + Duration::from_nanos((i as f64 * period) as u64);
                if due >= shared.end {
                    break;
                }
                let now = Instant::now();
                if due > now {
                    thread::sleep(due - now);
                }
                let late = Instant::now().saturating_duration_since(due);
                tally.late_max = tally.late_max.max(late);
                if late > Duration::from_millis(1) {
                    tally.late_over_1ms += 1;
                }
            }
        }
        match one_connection(shared.addr, shared.echo, shared.rst) {
            Ok(()) => tally.connections += 1,
            Err(e) => {
                tally.errors += 1;
                let mut first = shared.first_error.lock().unwrap_or_else(|p| p.into_inner());
                if first.is_none() {
                    *first = Some(e.to_string());
                }
                drop(first);
                // EADDRNOTAVAIL and friends: do not spin on a failing connect.
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
    tally
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn main() {
    let args = Args::parse();
    let valid = args.secs > 0.0 && args.secs.is_finite() && args.rate >= 0.0 && args.rate.is_finite();
    if !valid {
        eprintln!("connload: --secs must be > 0 and --rate >= 0");
        std::process::exit(2);
    }
    let clients = args.clients.unwrap_or_else(|| 2 * thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let acceptors = args.acceptors.max(1);

    let listener = match TcpListener::bind(("127.0.0.1", args.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("connload: cannot listen on 127.0.0.1:{}: {e}", args.port);
            std::process::exit(1);
        }
    };
    // std listens with a backlog of 128; a deeper accept queue (capped by net.core.somaxconn)
    // keeps a briefly descheduled accept thread from turning into SYN drops and 1 s retries.
    // SAFETY: listen(2) on a socket we own; calling it again only changes the backlog.
    unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    let addr = listener.local_addr().expect("listener address");
    let listener = Arc::new(listener);
    let accepted = Arc::new(AtomicU64::new(0));
    for _ in 0..acceptors {
        let (listener, accepted) = (Arc::clone(&listener), Arc::clone(&accepted));
        // Detached: the process exits with them still blocked in accept().
        thread::spawn(move || accept_loop(&listener, args.echo, &accepted));
    }

    // A client blocked forever (it should never be) must not hang the caller.
    let watchdog = Duration::from_secs_f64(args.secs) + Duration::from_secs(30);
    thread::spawn(move || {
        thread::sleep(watchdog);
        eprintln!("connload: clients still running {watchdog:?} after the start; giving up");
        std::process::exit(3);
    });

    let start = Instant::now();
    let shared = Arc::new(Shared {
        addr,
        echo: args.echo,
        rst: args.rst,
        start,
        end: start + Duration::from_secs_f64(args.secs),
        period_ns: (args.rate > 0.0).then(|| 1e9 / args.rate),
        next: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let shared = Arc::clone(&shared);
            thread::spawn(move || client_loop(&shared))
        })
        .collect();
    let mut total = ClientTally::default();
    for h in handles {
        let t = h.join().expect("client thread panicked");
        total.connections += t.connections;
        total.errors += t.errors;
        total.late_max = total.late_max.max(t.late_max);
        total.late_over_1ms += t.late_over_1ms;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let first_error = shared
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_deref()
        .map_or_else(|| "null".to_owned(), json_string);

    println!(
        "{{\"mode\":\"{}\",\"secs\":{},\"target_rate\":{},\"clients\":{clients},\"acceptors\":{acceptors},\
         \"echo\":{},\"rst\":{},\"connections\":{},\"accepted\":{},\"errors\":{},\"elapsed_s\":{elapsed:.4},\
         \"rate\":{:.1},\"late_max_ms\":{:.3},\"late_over_1ms\":{},\"first_error\":{first_error}}}",
        if args.rate > 0.0 { "paced" } else { "saturate" },
        args.secs,
        args.rate,
        args.echo,
        args.rst,
        total.connections,
        accepted.load(Relaxed),
        total.errors,
        total.connections as f64 / elapsed,
        total.late_max.as_secs_f64() * 1e3,
        total.late_over_1ms,
    );
}
