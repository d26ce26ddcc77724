//! The DaemonSet, really run: the agent's image (`cargo xtask image`, FROM scratch, static binary)
//! run with podman under what deploy/kubernetes/daemonset.yaml gives its container (host PID and
//! network, read-only root, `--cap-drop=ALL` plus its capabilities, no-new-privileges, its
//! hostPath mounts, args, env and memory limit: `common::pod_spec` reads them from the manifest).
//!
//! The oracles are the kernel and the servers: `ss`, redis `CLIENT LIST`, `/proc/<pid>/status`
//! capability sets decoded by `capsh`, the container's mount table. No Kubernetes cluster runs
//! here (docs/testing.md), so the kubelet's part is played by the probes' own figures: the
//! endpoints must answer within the manifest's timeouts, /healthz before the liveness probe would
//! restart the container. Needs root, podman, runc and the image archive; `cargo xtask test` builds
//! the image first.

use connmon_test_support as common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::pod_spec::{bytes_of, PodSpec};
use common::podman::Container;
use common::pool_fixtures::hold;
use common::workspace::read;
use common::*;

/// The client process (does nothing in a normal run; see `common::client`).
#[test]
fn client_entry() {
    client_main()
}

/// The manifest's pod on a free port (the host network is shared with every other test).
fn daemonset_pod() -> PodSpec {
    let spec = PodSpec::from_daemonset();
    assert_eq!(spec.listen_port(), spec.metrics_port, "--web.listen-address and the container port named metrics");
    spec.on_port(free_local_port())
}

/// Capability names in the documentation's sentence on what the agent keeps after attaching.
fn readme_kept_caps() -> BTreeSet<String> {
    let readme = read("docs/requirements.md");
    let at = readme
        .find("drops every capability except")
        .expect("docs/requirements.md says which capabilities the agent keeps");
    let sentence = &readme[at..at + readme[at..].find('.').expect("end of sentence")];
    let caps: BTreeSet<String> =
        sentence.split('`').filter_map(|w| w.strip_prefix("CAP_")).map(str::to_string).collect();
    assert!(!caps.is_empty(), "no CAP_ names in: {sentence}");
    caps
}

/// Probe names in the probe table of docs/requirements.md (rows `| `name` | `program` | ...`).
fn readme_probes() -> BTreeSet<String> {
    let readme = read("docs/requirements.md");
    let table = &readme[readme.find("| Probe | Program |").expect("probe table")..];
    table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('`').nth(1).map(str::to_string))
        .collect()
}

/// `capsh --decode` of a capability mask: the names, upper case without `CAP_`.
fn decode_caps(hex: &str) -> BTreeSet<String> {
    let out = run_ok(Command::new("capsh").arg(format!("--decode={hex}")));
    // "0x00000000002a0004=cap_dac_read_search,cap_sys_ptrace,cap_sys_admin"
    let names = out.trim().split_once('=').map_or("", |(_, n)| n);
    names.split(',').filter(|n| !n.is_empty()).map(|n| n.trim_start_matches("cap_").to_uppercase()).collect()
}

/// (CapEff, CapPrm, CapBnd) of every thread of `pid`, decoded.
fn thread_caps(pid: u32) -> Vec<(String, [BTreeSet<String>; 3])> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("read the agent's tasks");
    tasks
        .filter_map(Result::ok)
        .map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).expect("task status");
            let field = |name: &str| {
                let hex = status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or_else(|| panic!("no {name} in task status"))
                    .trim();
                decode_caps(hex)
            };
            (t.file_name().to_string_lossy().into_owned(), [field("CapEff:"), field("CapPrm:"), field("CapBnd:")])
        })
        .collect()
}

/// Every file under `root` with its size and mtime: what a write would change.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let e = e.unwrap();
            let m = e.path().symlink_metadata().unwrap();
            out.push(format!(
                "{} {} {} {}",
                e.path().strip_prefix(root).unwrap().display(),
                m.len(),
                m.mtime(),
                m.mtime_nsec()
            ));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The options of the mount at `/` in the agent's mount namespace.
fn root_mount_options(pid: u32) -> String {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ..."; the last mount at / is the one in effect.
    info.lines()
        .rfind(|l| l.split_whitespace().nth(4) == Some("/"))
        .and_then(|l| l.split_whitespace().nth(5))
        .expect("a mount at /")
        .to_string()
}

/// A process holding a listener (backlog `backlog`) in a network namespace that has no name
/// (it was deleted after the process entered it): reachable only through /proc/<pid>/ns/net.
struct HiddenNs {
    child: Child,
    inode: u64,
    port: u16,
}

impl HiddenNs {
    fn start(backlog: u32) -> HiddenNs {
        let mut ns = Netns::new();
        let port = unique_port();
        let script = format!(
            "import socket,sys\ns=socket.socket()\ns.bind(('127.0.0.1',{port}))\ns.listen({backlog})\nprint('ready',flush=True)\nsys.stdin.read()\n"
        );
        let mut child = ns
            .command(&["python3", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 in the test namespace");
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        ns.delete();
        let inode = std::fs::metadata(format!("/proc/{}/ns/net", child.id())).unwrap().ino();
        HiddenNs { child, inode, port }
    }

    /// `ss -tln` in the process's namespace (nsenter through its pid): the backlog (Send-Q).
    fn ss_backlog(&self) -> u64 {
        let out =
            run_ok(Command::new("nsenter").args(["-t", &self.child.id().to_string(), "-n", "ss", "-H", "-tlnmi"]));
        let l = parse_ss_listeners(&out);
        pick_listener(&l, "127.0.0.1", self.port)
            .unwrap_or_else(|| panic!("ss shows no listener on {}: {out}", self.port))
            .send_q
    }
}

impl Drop for HiddenNs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A listener on the host with `queued` connections waiting in its accept queue.
fn host_listener(backlog: i32, queued: usize) -> (OwnedFd, Vec<OwnedFd>, SocketAddr) {
    let l = listen_tcp("127.0.0.1:0".parse().unwrap(), backlog);
    let addr = local_addr(&l);
    let clients: Vec<OwnedFd> = (0..queued).map(|_| connect_nonblocking(addr)).collect();
    wait_recv_q(&Netns::host(), addr, queued as u64);
    (l, clients, addr)
}

fn netns_listed(s: &[Sample], inode: u64) -> bool {
    sample(s, "connmon_netns_info", &[("netns", &inode.to_string())]).is_some()
}

#[test]
fn daemonset_container_runs_as_the_manifest_says() {
    let spec = daemonset_pod();
    let (liveness, readiness) = (spec.liveness.clone(), spec.readiness.clone());
    let redis = Redis::start(free_local_port(), &[]);
    let client = hold("ctpool", redis.addr(), Proto::Redis, 9);
    let (_l, _queued, laddr) = host_listener(11, 5);
    let hidden = HiddenNs::start(7);

    let c = Container::run(spec);
    let root_before = c.rootfs();
    // The kubelet restarts the container once the liveness probe has failed failureThreshold
    // times after initialDelaySeconds; /healthz must answer before that.
    let live_by = Duration::from_secs(liveness.initial_delay_s + liveness.period_s * liveness.failure_threshold);
    let healthz = c.time_to_answer(&liveness.path, live_by);
    let readyz = c.time_to_answer(&readiness.path, Duration::from_secs(60));
    eprintln!("{}: 2xx after {healthz:?}; {}: 2xx after {readyz:?}", liveness.path, readiness.path);
    for p in [&liveness, &readiness] {
        let t = Instant::now();
        let r = c.get(&p.path).expect("probe request");
        assert!((200..400).contains(&r.status), "{}: {}", p.path, r.status);
        assert!(
            t.elapsed() < Duration::from_secs(p.timeout_s),
            "{} took {:?}, the probe's timeout is {}s",
            p.path,
            t.elapsed(),
            p.timeout_s
        );
    }
    let listed = tree(&root_before);

    // Every probe attached.
    let probes = readme_probes();
    c.wait_metrics(30, "connmon_probe_up 1 for every probe in docs/requirements.md", |s| {
        let up: BTreeSet<String> = samples_matching(s, "connmon_probe_up", &[])
            .iter()
            .filter(|x| x.value == 1.0)
            .filter_map(|x| x.label("probe").map(str::to_string))
            .collect();
        (up == probes).then_some(()).ok_or(format!("up {up:?}, documented {probes:?}"))
    });

    // A pool and a listener made on the host, counted exactly.
    let pool = PoolRef::of(&client, redis.addr());
    let host_ns = Netns::host().inode().to_string();
    let port = laddr.port().to_string();
    let l_labels = [("netns", host_ns.as_str()), ("addr", "127.0.0.1"), ("port", port.as_str())];
    let s = c.wait_metrics(30, "the pool (9) and the listener (5 queued)", |s| {
        let got = (
            pool.get(s, POOL_CONNECTIONS),
            sample(s, "connmon_listen_queue_depth", &l_labels),
            netns_listed(s, hidden.inode),
        );
        (got == (Some(9.0), Some(5.0), true)).then(|| s.to_vec()).ok_or(format!("{got:?}"))
    });
    let named = redis.client_list().iter().filter(|c| c.get("name") == Some(&client.name)).count();
    let ss = ss_estab_owned_by(&Netns::host(), client.pid(), redis.port());
    assert_eq!((named, ss), (9, 9), "CLIENT LIST and ss -tnp");
    let ssl = ss_listener(&Netns::host(), "127.0.0.1", laddr.port()).expect("ss shows the listener");
    assert_eq!(ssl.recv_q, 5);
    assert_eq!(sample(&s, "connmon_listen_queue_max", &l_labels), Some(ssl.send_q as f64));

    // The unnamed namespace, found only through the host's /proc.
    let hidden_ns = hidden.inode.to_string();
    let hport = hidden.port.to_string();
    let backlog = sample(&s, "connmon_listen_queue_max", &[("netns", &hidden_ns), ("port", &hport)]);
    assert_eq!(backlog, Some(hidden.ss_backlog() as f64), "backlog in the hidden namespace (ss)");
    assert_eq!(sample(&s, "connmon_scan_netns_failed", &[]), Some(0.0));

    // Capabilities: all seven of the manifest at start (the bounding set), only the documented
    // three once the probes are attached, on every thread.
    let kept = readme_kept_caps();
    // What a runtime can grant is bounded by its own bounding set: this sandbox has no
    // CAP_SYS_RESOURCE (PLATFORM.md), so podman gives six of the seven here.
    let own_bnd = thread_caps(std::process::id())[0].1[2].clone();
    let granted: BTreeSet<String> = c.spec.caps_add.iter().filter(|cap| own_bnd.contains(*cap)).cloned().collect();
    let missing: Vec<&String> = c.spec.caps_add.iter().filter(|cap| !own_bnd.contains(*cap)).collect();
    if !missing.is_empty() {
        eprintln!("not in this host's bounding set, so not granted: {missing:?}");
    }
    let threads = thread_caps(c.pid);
    assert!(threads.len() > 1, "the agent runs threads");
    for (tid, [eff, prm, bnd]) in &threads {
        assert_eq!(eff, &kept, "thread {tid}: CapEff");
        assert_eq!(prm, &kept, "thread {tid}: CapPrm");
        assert_eq!(bnd, &granted, "thread {tid}: CapBnd (what the container was given)");
    }
    c.wait_log("probes attached: dropped", 5);

    // The root filesystem: mounted read-only, and nothing in it changed while the agent ran.
    let opts = root_mount_options(c.pid);
    assert!(opts.split(',').any(|o| o == "ro"), "/ is mounted {opts}");
    assert_eq!(tree(&c.rootfs()), listed, "the root filesystem changed");

    let (status, restarts) = c.state();
    assert_eq!((status.as_str(), restarts.as_str()), ("running", "0"));
    let logs = c.logs();
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    assert!(warnings.is_empty(), "warnings from the agent: {warnings:#?}");

    // Memory against the manifest: the container's memory cgroup (the agent's heap and its eBPF
    // maps) under the limit.
    let usage: u64 = std::fs::read_to_string(c.cgroup_dir("memory").join("memory.usage_in_bytes"))
        .expect("memory.usage_in_bytes")
        .trim()
        .parse()
        .unwrap();
    let limit = bytes_of(&c.spec.memory_limit);
    eprintln!(
        "memory cgroup: {:.1} MiB (request {}, limit {})",
        usage as f64 / 1048576.0,
        c.spec.memory_request,
        c.spec.memory_limit
    );
    assert!(usage < limit, "{usage} bytes against a limit of {limit}");
}

/// A degraded start: one log line saying what is missing, the container keeps running and
/// answering, and `check` sees the degraded metrics.
fn degraded(spec: PodSpec, line: &str, check: impl Fn(&[Sample]) -> Result<(), String>) -> Container {
    let c = Container::run(spec);
    c.time_to_answer(&c.spec.readiness.path.clone(), Duration::from_secs(60));
    let found = c.wait_log(line, 10);
    eprintln!("{}: {found}", c.name);
    assert_eq!(c.logs().matches(line).count(), 1, "one line with {line:?}");
    c.wait_metrics(30, "the degraded metrics", check);
    let (status, restarts) = c.state();
    assert_eq!((status.as_str(), restarts.as_str()), ("running", "0"));
    c
}

fn probes_up(s: &[Sample]) -> Vec<(String, f64)> {
    samples_matching(s, "connmon_probe_up", &[])
        .iter()
        .map(|x| (x.label("probe").unwrap_or("").to_string(), x.value))
        .collect()
}

fn all_probes_up(s: &[Sample]) -> Result<(), String> {
    let up = probes_up(s);
    (up.len() == readme_probes().len() && up.iter().all(|(_, v)| *v == 1.0)).then_some(()).ok_or(format!("{up:?}"))
}

/// The kernel's bpf_capable() and perfmon_capable() accept CAP_SYS_ADMIN in their place, and the
/// agent keeps CAP_SYS_ADMIN for setns: without BPF and PERFMON every probe still attaches.
#[test]
fn without_bpf_and_perfmon_sys_admin_still_loads_the_probes() {
    let c = Container::run(daemonset_pod().without_caps(&["BPF", "PERFMON"]));
    c.time_to_answer(&c.spec.readiness.path.clone(), Duration::from_secs(60));
    c.wait_metrics(30, "every probe up", all_probes_up);
    assert!(!c.logs().contains(" WARN "), "{}", c.logs());
}

#[test]
fn without_bpf_perfmon_and_sys_admin_only_scans_run() {
    let spec = daemonset_pod().without_caps(&["BPF", "PERFMON", "SYS_ADMIN"]);
    let (_l, _q, laddr) = host_listener(13, 3);
    let port = laddr.port().to_string();
    degraded(spec, "run as root or grant CAP_BPF and CAP_PERFMON; every probe is off", |s| {
        let up = probes_up(s);
        let depth = sample(s, "connmon_listen_queue_depth", &[("port", &port)]);
        (up.len() == readme_probes().len() && up.iter().all(|(_, v)| *v == 0.0) && depth == Some(3.0))
            .then_some(())
            .ok_or(format!("probes {up:?}, listener depth {depth:?}"))
    });
}

/// Without the hostPath, the agent mounts tracefs itself (CAP_SYS_ADMIN, its own mount namespace).
#[test]
fn without_the_tracefs_mount_the_agent_mounts_it() {
    let spec = daemonset_pod().without_mount("tracefs");
    degraded(spec, "tracefs was not mounted at /sys/kernel/tracing: mounted it", all_probes_up);
}

/// Without the hostPath and with mount(2) refused (as container runtimes' AppArmor profiles do;
/// here a seccomp filter): the tracepoint probes are off, the tp_btf ones stay.
#[test]
fn without_the_tracefs_mount_and_no_mount_tracepoint_probes_are_off() {
    let dir = TempDir::new("ctseccomp");
    let profile = dir.path().join("no-mount.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mount","fsopen","fsmount","move_mount"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let mut spec = daemonset_pod().without_mount("tracefs");
    spec.extra_flags.push(format!("--security-opt=seccomp={}", profile.display()));
    degraded(spec, "tracepoint probes are off", |s| {
        let up = probes_up(s);
        let state = |p: &str| up.iter().find(|(n, _)| n == p).map(|(_, v)| *v);
        // tp_btf (listen_peak, pools, connect_retransmit and the resets) and cgroup_skb
        // (protocol) need no tracefs; the classic tracepoints (synack_retransmit and the
        // syscalls) do.
        let want = [
            ("listen_peak", 1.0),
            ("pools", 1.0),
            ("protocol", 1.0),
            ("connect_retransmit", 1.0),
            ("resets_received", 1.0),
            ("resets_sent", 1.0),
            ("synack_retransmit", 0.0),
            ("accept_wait", 0.0),
            ("listen_backlog", 0.0),
        ];
        want.iter().all(|(p, v)| state(p) == Some(*v)).then_some(()).ok_or(format!("{up:?}"))
    });
}

#[test]
fn without_host_pid_other_namespaces_are_not_seen() {
    let mut spec = daemonset_pod();
    spec.host_pid = false;
    let hidden = HiddenNs::start(5);
    let host_ns = Netns::host().inode();
    let c = degraded(spec, "not in the host's PID namespace", |s| {
        (netns_listed(s, host_ns) && !netns_listed(s, hidden.inode))
            .then_some(())
            .ok_or("want the host namespace listed, the unnamed one not".to_string())
    });
    // Scans go on; still not there.
    let s = c.samples();
    assert!(!netns_listed(&s, hidden.inode) && netns_listed(&s, host_ns));
}
