//! Real servers for the pool tests (RAII): redis-server and PostgreSQL 15 in temp dirs, and a plain
//! accept loop for tests that need a TCP peer and nothing more.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{deadline, listen_tcp, local_addr, poll_until, read_line, resp_command, run, run_ok, Netns, TempDir};

/// Panics unless 127.0.0.1:`port` can be bound right now (a fixed port another process holds
/// would make the test measure someone else's server).
pub fn assert_port_free(port: u16) {
    if let Err(e) = TcpListener::bind(("127.0.0.1", port)) {
        panic!("127.0.0.1:{port} is not free ({e}); ss -tlnp:\n{}", run_ok(Command::new("ss").arg("-tlnp")));
    }
}

// ---------------------------------------------------------------------------------------------
// Redis

/// `redis-server` on 127.0.0.1:PORT with no persistence, in a temp dir. Drop kills it.
pub struct Redis {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Redis {
    /// Starts redis-server (`--save "" --appendonly no --port P --bind 127.0.0.1` + `extra_args`)
    /// and waits (20 s) until it answers PING.
    pub fn start(port: u16, extra_args: &[&str]) -> Redis {
        let dir = TempDir::new("cmredis");
        let log = File::create(dir.path().join("redis.log")).expect("create redis log");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--save", "", "--appendonly", "no", "--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--daemonize", "no", "--protected-mode", "no", "--dir"])
            .arg(dir.path())
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let mut r = Redis { child, port, dir };
        poll_until(deadline(20), &format!("redis-server on port {port} to answer PING"), || {
            if let Some(st) = r.child.try_wait().expect("try_wait redis") {
                panic!("redis-server exited with {st}; log:\n{}", r.log());
            }
            r.command(&["PING"]).and_then(|l| if l == "+PONG" { Ok(()) } else { Err(l) })
        });
        r
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// One command over a fresh connection from this test process; the first reply line.
    fn command(&self, args: &[&str]) -> Result<String, String> {
        let mut s = TcpStream::connect_timeout(&self.addr(), Duration::from_secs(2)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        s.write_all(&resp_command(args)).map_err(|e| e.to_string())?;
        Ok(read_line(&mut s))
    }

    /// `redis-cli -p P <args>`; stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        run_ok(Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", &self.port.to_string()]).args(args))
    }

    /// `CLIENT LIST` (through redis-cli, whose own connection is in the list: its `cmd` is
    /// `client|list`), one map of fields per client.
    pub fn client_list(&self) -> Vec<BTreeMap<String, String>> {
        self.cli(&["CLIENT", "LIST"])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .collect()
    }

    /// Clients named `name` (CLIENT SETNAME) per CLIENT LIST.
    pub fn clients_named(&self, name: &str) -> usize {
        self.client_list().iter().filter(|c| c.get("name").map(String::as_str) == Some(name)).count()
    }

    /// `INFO clients` (through redis-cli, which is one of the connected clients) as key -> value.
    pub fn info_clients(&self) -> BTreeMap<String, String> {
        self.cli(&["INFO", "clients"])
            .lines()
            .filter_map(|l| l.trim_end().split_once(':'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// connected_clients from INFO clients, not counting the redis-cli asking.
    pub fn connected_clients_but_me(&self) -> u64 {
        let info = self.info_clients();
        let n: u64 = info
            .get("connected_clients")
            .unwrap_or_else(|| panic!("INFO clients without connected_clients: {info:?}"))
            .parse()
            .expect("connected_clients");
        n - 1
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- redis-server (port {}) log ----\n{}---- end ----", self.port, self.log());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn postgres_ids() -> (u32, u32) {
    let uid = run_ok(Command::new("id").args(["-u", "postgres"])).trim().parse().expect("uid");
    let gid = run_ok(Command::new("id").args(["-g", "postgres"])).trim().parse().expect("gid");
    (uid, gid)
}

/// A `runuser -u postgres -- PG_BIN/<tool>` command.
fn as_postgres(tool: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(Path::new(PG_BIN).join(tool));
    c
}

/// A PostgreSQL 15 cluster made with initdb in a temp dir (trust auth), listening on
/// 127.0.0.1:PORT with its Unix socket in the temp dir. Drop stops it (`-m immediate`).
pub struct Postgres {
    port: u16,
    data: PathBuf,
    run_dir: PathBuf,
    /// Held for its Drop: the cluster's files go once the server is down.
    _dir: TempDir,
}

impl Postgres {
    pub fn start(port: u16) -> Postgres {
        Postgres::start_with(port, 100)
    }

    /// [`Postgres::start`] with its own `max_connections` (its superuser_reserved_connections
    /// stay 3; the tests connect as the superuser, so all of them can be used).
    pub fn start_with(port: u16, max_connections: u32) -> Postgres {
        let dir = TempDir::new("cmpg");
        let data = dir.path().join("data");
        let run_dir = dir.path().join("run");
        let (uid, gid) = postgres_ids();
        for d in [&data, &run_dir] {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
            std::os::unix::fs::chown(d, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", d.display()));
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod data dir");
        run_ok(as_postgres("initdb").arg("-D").arg(&data).args([
            "--auth=trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]));
        let pg = Postgres { port, data, run_dir, _dir: dir };
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections={max_connections} -c fsync=off",
            pg.run_dir.display()
        );
        let out = run(as_postgres("pg_ctl")
            .arg("-D")
            .arg(&pg.data)
            .arg("-l")
            .arg(pg.run_dir.join("postgres.log"))
            .args(["-o", &opts, "-w", "-t", "60", "start"])
            .stdin(Stdio::null()));
        assert!(
            out.status.success(),
            "pg_ctl start failed ({}): {}{}\nlog:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            pg.log()
        );
        pg
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.run_dir.join("postgres.log")).unwrap_or_default()
    }

    /// `psql -Atc SQL` over TCP as postgres; trimmed stdout.
    pub fn query(&self, sql: &str) -> String {
        run_ok(
            Command::new("psql")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", "postgres"])
                .args(["-Atc", sql])
                .env("PGCONNECT_TIMEOUT", "10"),
        )
        .trim()
        .to_string()
    }

    /// Backends in pg_stat_activity whose application_name is `name`.
    pub fn count_by_application(&self, name: &str) -> usize {
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "odd name {name:?}");
        self.query(&format!("select count(*) from pg_stat_activity where application_name='{name}'"))
            .parse()
            .expect("count(*)")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let out = run(as_postgres("pg_ctl").arg("-D").arg(&self.data).args(["stop", "-m", "immediate", "-w"]));
        if !out.status.success() {
            eprintln!("warning: pg_ctl stop failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        if std::thread::panicking() {
            eprintln!("---- postgres (port {}) log ----\n{}---- end ----", self.port, self.log());
        }
        // self.dir (the cluster's files) is removed after this, once the server is down.
    }
}

// ---------------------------------------------------------------------------------------------
// A plain TCP peer

/// A listener (in a namespace of the test's choosing) with a thread accepting from it: accepted
/// connections are either closed at once or held until drop.
pub struct AcceptLoop {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<u64>>,
}

impl AcceptLoop {
    /// Listens on `addr` in `ns` (port 0: any free port; read it back with [`AcceptLoop::addr`])
    /// with a 4096 backlog. `hold`: keep accepted connections open until drop.
    pub fn start(ns: &Netns, addr: SocketAddr, hold: bool) -> AcceptLoop {
        let listener = ns.run(|| listen_tcp(addr, 4096));
        let addr = local_addr(&listener);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut held: Vec<OwnedFd> = Vec::new();
            let mut n = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 100) };
                loop {
                    // SAFETY: accept4 with null address pointers is allowed.
                    let fd = unsafe {
                        libc::accept4(
                            listener.as_raw_fd(),
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_CLOEXEC,
                        )
                    };
                    if fd < 0 {
                        break;
                    }
                    n += 1;
                    // SAFETY: a fresh fd we own.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    if hold {
                        held.push(fd);
                    }
                }
            }
            n
        });
        AcceptLoop { addr, stop, handle: Some(handle) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the loop; returns how many connections it accepted.
    pub fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().map(|h| h.join().expect("accept loop panicked")).unwrap_or(0)
    }
}

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        self.stop();
    }
}
