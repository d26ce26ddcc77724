//! `connmon top` in a real terminal (tmux: `send-keys` and `capture-pane`), against real things:
//! a listener overflowing in a test network namespace (oracle: `ss -tlnmi`), and a python3
//! worker (`worker.py`, in a cgroup of its own) holding connections to a real redis-server
//! (oracle: Redis `CLIENT LIST`). Keys (filter, tab, sort, pause) must change the screen; the
//! plain mode (stdout not a terminal) must print frames without escape codes; `--agent` must read
//! a real agent over HTTPS with a client certificate and basic auth. Needs root, tmux, python3,
//! redis-server and openssl.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use common::{tls::Pki, *};
use connmon_test_support as common;

const WORKER: &str = r#"
import socket, sys
port = int(sys.argv[1])
conns = []
for line in sys.stdin:
    for _ in range(int(line.split()[1])):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"CLIENT SETNAME topworker\r\n")
        assert s.recv(64).startswith(b"+OK")
        conns.append(s)
    print("ok", len(conns), flush=True)
"#;

/// python3 worker.py in a cgroup of its own, opening connections to Redis when told.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    _cgroup: TestCgroup,
    _dir: TempDir,
}

impl Worker {
    fn start(port: u16) -> Worker {
        let dir = TempDir::new("top-worker");
        let script = dir.path().join("worker.py");
        std::fs::write(&script, WORKER).unwrap();
        let cgroup = TestCgroup::new();
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (cargo xtask setup installs it)");
        std::fs::write(cgroup.dir().join("cgroup.procs"), child.id().to_string()).unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Worker { child, stdin, stdout, _cgroup: cgroup, _dir: dir }
    }

    /// Opens `n` more connections; returns how many it holds.
    fn open(&mut self, n: usize) -> usize {
        writeln!(self.stdin, "open {n}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().strip_prefix("ok ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("worker said {line:?}"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A tmux server of its own (-L) running one command in a 200×50 window.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(cmd: &str) -> Tmux {
        need_tmux();
        let socket = format!("connmon-top-{}", unique_id());
        let t = Tmux { socket };
        let out = t.tmux(&["new-session", "-d", "-s", "top", "-x", "200", "-y", "50", cmd]);
        assert!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
        t
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux").arg("-L").arg(&self.socket).args(args).output().expect("tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        assert!(self.tmux(&args).status.success());
    }

    fn alive(&self) -> bool {
        self.tmux(&["has-session", "-t", "top"]).status.success()
    }

    /// Polls the screen until `f` finds what it wants; panics with the last screen.
    fn wait<T>(&self, secs: u64, what: &str, mut f: impl FnMut(&str) -> Option<T>) -> T {
        let end = deadline(secs);
        loop {
            let s = self.screen();
            if let Some(v) = f(&s) {
                return v;
            }
            assert!(Instant::now() < end, "timed out waiting for {what}; screen:\n{s}");
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.tmux(&["kill-server"]);
    }
}

fn need_tmux() {
    assert!(have_program("tmux"), "tmux is needed (cargo xtask setup installs it)");
}

/// The whitespace-separated cells of the first screen line containing every one of `needles`.
fn row(screen: &str, needles: &[&str]) -> Option<Vec<String>> {
    screen
        .lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .map(|l| l.split_whitespace().map(String::from).collect())
}

fn cell_u64(cells: &[String], i: usize) -> u64 {
    cells[i].parse().unwrap_or_else(|e| panic!("cell {i} of {cells:?}: {e}"))
}

fn redis_named(redis: &Redis) -> u64 {
    redis.clients_named("topworker") as u64
}

#[test]
fn top_shows_what_ss_and_redis_show_and_keys_change_the_screen() {
    let _g = storm_lock::alone();
    let ns = Netns::new();
    let laddr: SocketAddr = format!("127.0.0.1:{}", unique_port()).parse().unwrap();
    let (_listener, _clients) = overflowing_listener(&ns, laddr, 3, 8);
    let ss = ss_listener(&ns, "127.0.0.1", laddr.port()).expect("ss shows the listener");
    let redis = Redis::start(free_local_port(), &[]);
    let mut worker = Worker::start(redis.port());
    assert_eq!(worker.open(5), 5);
    assert_eq!(redis_named(&redis), 5, "CLIENT LIST: the worker's connections");
    let dst = format!("127.0.0.1:{}", redis.port());
    let local = laddr.to_string();

    let started = Instant::now();
    let term = Tmux::start(&format!("exec {} top --interval 1s", connmon_bin()));
    // Listeners tab first: our listener's depth and backlog as ss shows them.
    let cells = term.wait(60, "the overflowing listener on screen", |s| row(s, &[&local, ns.name()]));
    eprintln!("top: first frame with our listener after {} ms", started.elapsed().as_millis());
    assert_eq!(cells[0], local);
    assert_eq!(
        (cell_u64(&cells, 3), cell_u64(&cells, 4)),
        (ss.recv_q, ss.send_q),
        "DEPTH and BACKLOG vs ss: {cells:?}"
    );
    let fill = format!("{:.0}%", ss.recv_q as f64 / ss.send_q as f64 * 100.0);
    assert_eq!(cells[5], fill, "FILL is Recv-Q / Send-Q (a full queue holds backlog + 1): {cells:?}");
    // Worst first: it is saturated (an alert pending after one evaluation), so only rows with an
    // alert or a storm may come before it.
    let screen = term.wait(30, "AcceptQueueSaturated on our listener", |s| {
        row(s, &[&local, "AcceptQueueSaturated"]).map(|_| s.to_string())
    });
    eprintln!("top: listeners tab:\n{screen}");
    let header = screen.lines().position(|l| l.starts_with("LOCAL")).expect(&screen);
    for l in screen.lines().skip(header + 1).take_while(|l| !l.contains(&local)) {
        assert!(
            l.contains("firing") || l.contains("pending") || l.contains("STORM"),
            "a calm row ranks first:\n{screen}"
        );
    }

    // Filter by the destination: our listener disappears from the listeners tab.
    term.keys(&["/"]);
    term.keys(&["-l", &redis.port().to_string()]);
    term.keys(&["Enter"]);
    term.wait(10, "the filter applied", |s| {
        // (The alerts pane below the table still names it: alerts are not filtered.)
        (s.contains(&format!("filter: {}", redis.port())) && !s.lines().any(|l| l.starts_with(&local))).then_some(())
    });
    // Pools tab: the worker by its script name, with as many connections as CLIENT LIST shows.
    term.keys(&["2"]);
    let cells = term.wait(30, "the worker's pool row", |s| row(s, &[&dst, "worker.py"]));
    assert_eq!(cell_u64(&cells, 4), redis_named(&redis), "ACTIVE vs Redis CLIENT LIST: {cells:?}");
    assert!(!term.screen().contains(" python3 "), "the worker shows as python3:\n{}", term.screen());
    term.keys(&["s"]);
    term.wait(10, "sort: fill", |s| s.contains("sort: fill").then_some(()));

    // Pause: the screen holds while the worker opens more and two refreshes arrive.
    term.keys(&["Space"]);
    assert_eq!(worker.open(3), 8);
    assert_eq!(redis_named(&redis), 8);
    term.wait(20, "two refreshes held", |s| s.contains("PAUSED (2 refreshes held)").then_some(()));
    let cells = row(&term.screen(), &[&dst, "worker.py"]).expect("row while paused");
    assert_eq!(cell_u64(&cells, 4), 5, "paused, yet the screen changed: {cells:?}");
    term.keys(&["Space"]);
    let cells = term.wait(20, "8 connections after resuming", |s| {
        row(s, &[&dst, "worker.py"]).filter(|c| c[4] == redis_named(&redis).to_string())
    });
    eprintln!("top: pool row after resuming: {cells:?}\n{}", term.screen());
    // Destinations tab: the destination sums the worker's pool.
    term.keys(&["3"]);
    let cells = term.wait(20, "the destination row", |s| row(s, &[&dst, "worker.py=8"]));
    // The destination sums its workloads' pools: the worker's 8, plus the test's own redis-cli
    // (CLIENT LIST) when a refresh caught it connected (CI saw `worker.py=8,redis-cli=1`, 9).
    let parts: u64 = cells[2]
        .split(',')
        .map(|p| p.rsplit_once('=').and_then(|(_, n)| n.parse::<u64>().ok()).expect("workload=N"))
        .sum();
    assert_eq!(cell_u64(&cells, 3), parts, "CONNS is not the sum of the workloads shown: {cells:?}");
    assert!(parts >= 8, "the destination row lacks the worker's 8: {cells:?}");
    term.keys(&["?"]);
    term.wait(10, "help", |s| s.contains(" Help ").then_some(()));
    term.keys(&["q"]);
    term.keys(&["q"]);
    let end = deadline(10);
    while term.alive() {
        assert!(Instant::now() < end, "top did not quit on q:\n{}", term.screen());
        std::thread::sleep(POLL_INTERVAL);
    }

    // Not a terminal: plain frames, no escape codes, the same figures.
    let t0 = Instant::now();
    let out = run_with_timeout(
        Command::new(connmon_bin()).args(["top", "--interval", "1s", "-n", "2"]).stdout(Stdio::piped()),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "connmon top | cat: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    eprintln!("top -n 2 in a pipe: {} ms", t0.elapsed().as_millis());
    assert!(!text.contains('\x1b'), "escape codes in a pipe:\n{text}");
    assert_eq!(text.matches("\nListeners (").count(), 2, "two frames:\n{text}");
    let cells = row(&text, &[&local]).expect(&text);
    assert_eq!(cell_u64(&cells, 3), ss_listener(&ns, "127.0.0.1", laddr.port()).unwrap().recv_q);
    let cells = row(&text, &[&dst, "worker.py"]).expect(&text);
    assert_eq!(cell_u64(&cells, 4), redis_named(&redis));

    // --agent over HTTPS with a client certificate and basic auth, as Prometheus would scrape.
    let pki = Pki::new();
    let hash = common::tls::bcrypt_hash("s3cret");
    let web = pki.dir().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\nbasic_auth_users:\n  alice: {hash}\n"
        ),
    )
    .unwrap();
    let client_cfg = pki.dir().join("client.yml");
    std::fs::write(
        &client_cfg,
        "basic_auth:\n  username: alice\n  password: s3cret\ntls_config:\n  ca_file: ca.crt\n  cert_file: client.crt\n  key_file: client.key\n",
    )
    .unwrap();
    let ca = pki.path("ca.crt");
    let (crt, key) = (pki.path("client.crt"), pki.path("client.key"));
    let curl_args = ["--cacert", ca.as_str(), "--cert", crt.as_str(), "--key", key.as_str(), "-u", "alice:s3cret"];
    let agent = Agent::start_with_ready(&["--web.config.file", &web.display().to_string()], |addr| {
        let r = common::tls::curl(&curl_args, &common::tls::https(addr, "/readyz"));
        if r.exit == 0 && r.status == 200 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    let url = format!("https://127.0.0.1:{}", agent.addr().port());
    let cfg = client_cfg.display().to_string();
    let t0 = Instant::now();
    let out = connmon(&["top", "--agent", &url, "--http.config.file", &cfg, "-n", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "top --agent: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("top --agent -n 1: {} ms", t0.elapsed().as_millis());
    let cells = row(&text, &[&dst, "worker.py"]).expect(&text);
    assert_eq!(cell_u64(&cells, 4), redis_named(&redis), "ACTIVE through the agent: {cells:?}");
    let cells = row(&text, &[&local]).expect(&text);
    assert_eq!(cell_u64(&cells, 4), ss.send_q, "BACKLOG through the agent: {cells:?}");
    let alerts = connmon(&["alerts", "--agent", &url, "--http.config.file", &cfg, "--json"]);
    assert!(alerts.status.success(), "alerts --agent over TLS: {}", String::from_utf8_lossy(&alerts.stderr));
    // Without the client file: one line saying what to do.
    let out = connmon(&["top", "--agent", &url, "-n", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.trim().lines().count() == 1 && err.contains("--http.config.file"), "{err}");
}
