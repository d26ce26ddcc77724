//! The agent's image (`cargo xtask image`, an OCI archive) run with podman as the kubelet would run
//! it: [`Podman`] is podman with this sandbox's settings (runc, the cgroupfs manager, vfs storage
//! of its own under the target directory, no default ulimits: PLATFORM.md "Containers"), and
//! [`Container`] one running agent (RAII: removed on drop, its log printed if the test panics).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::agent::{connmon_bin, http_get, HttpResponse};
use super::pod_spec::PodSpec;
use super::{deadline, parse_metrics, poll_until, unique_name, Sample};

/// Set by `cargo xtask test` to the archive it built.
pub const IMAGE_ENV: &str = "CONNMON_IMAGE_ARCHIVE";

/// The target directory of this build (`<target>/debug/connmon` is the agent under test).
fn target_dir() -> PathBuf {
    Path::new(connmon_bin()).ancestors().nth(2).expect("target dir").to_path_buf()
}

/// The image archive: `$CONNMON_IMAGE_ARCHIVE`, else `<target>/connmon-image.oci.tar`.
pub fn image_archive() -> PathBuf {
    let path =
        std::env::var_os(IMAGE_ENV).map(PathBuf::from).unwrap_or_else(|| target_dir().join("connmon-image.oci.tar"));
    assert!(
        path.is_file(),
        "no image archive at {}: run `cargo xtask image` (or `cargo xtask test`, which builds it)",
        path.display()
    );
    path
}

pub struct Podman {
    dir: PathBuf,
    /// The loaded image's name.
    pub image: String,
}

impl Podman {
    /// Podman with its own storage, the image loaded once per test binary.
    pub fn get() -> &'static Podman {
        static PODMAN: OnceLock<Podman> = OnceLock::new();
        PODMAN.get_or_init(|| {
            let dir = target_dir().join("container-test");
            std::fs::create_dir_all(&dir).expect("create the podman directory");
            // No CAP_SYS_RESOURCE in this sandbox: podman's default ulimits cannot be applied.
            std::fs::write(dir.join("containers.conf"), "[containers]\ndefault_ulimits = []\n")
                .expect("write containers.conf");
            let mut p = Podman { dir, image: String::new() };
            let archive = image_archive();
            let out = p.ok(&["load", "--quiet", "--input", &archive.to_string_lossy()]);
            // "Loaded image: localhost/connmon:latest"
            p.image = out
                .lines()
                .find_map(|l| l.strip_prefix("Loaded image: ").or_else(|| l.strip_prefix("Loaded image(s): ")))
                .unwrap_or_else(|| panic!("podman load said: {out}"))
                .trim()
                .to_string();
            // Images the name pointed at before (older builds) would pile up in the storage.
            p.ok(&["image", "prune", "--force"]);
            p
        })
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--storage-driver=vfs", "--runtime=runc", "--cgroup-manager=cgroupfs", "--events-backend=file"])
            .args(args);
        c
    }

    pub fn output(&self, args: &[&str]) -> Output {
        let mut c = self.command(args);
        c.output().unwrap_or_else(|e| panic!("cannot run podman {args:?}: {e} (run `cargo xtask setup`)"))
    }

    /// stdout; panics with stderr unless podman exits 0.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(out.status.success(), "podman {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// One running agent container.
pub struct Container {
    pub name: String,
    pub spec: PodSpec,
    /// The agent's pid on the host (the container's first process: the image has no init).
    pub pid: u32,
    /// When `podman run` returned.
    pub started: Instant,
    podman: &'static Podman,
}

impl Container {
    /// `podman run -d` of the image with `spec`'s flags and args.
    pub fn run(spec: PodSpec) -> Container {
        let podman = Podman::get();
        let name = unique_name("connmon-ct");
        let mut args: Vec<String> = vec!["run".into(), "--detach".into(), format!("--name={name}")];
        args.extend(spec.podman_flags());
        args.push(podman.image.clone());
        args.extend(spec.args.iter().cloned());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        podman.ok(&argv);
        let started = Instant::now();
        let mut c = Container { name, spec, pid: 0, started, podman };
        c.pid = c
            .inspect("{{.State.Pid}}")
            .parse()
            .unwrap_or_else(|_| panic!("no pid for {}: {}", c.name, c.inspect("{{.State.Status}}")));
        eprintln!("container {} (host pid {}): podman {}", c.name, c.pid, args.join(" "));
        c
    }

    pub fn inspect(&self, format: &str) -> String {
        self.podman.ok(&["inspect", "--format", format, &self.name]).trim().to_string()
    }

    /// (status, restart count): `running` and 0 while it is healthy.
    pub fn state(&self) -> (String, String) {
        let s = self.inspect("{{.State.Status}} {{.RestartCount}}");
        let (a, b) = s.split_once(' ').unwrap_or((&s, ""));
        (a.to_string(), b.to_string())
    }

    /// The agent's output so far (stdout and stderr).
    pub fn logs(&self) -> String {
        let out = self.podman.output(&["logs", &self.name]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.spec.metrics_port))
    }

    pub fn get(&self, path: &str) -> std::io::Result<HttpResponse> {
        http_get(self.addr(), path, &[])
    }

    pub fn samples(&self) -> Vec<Sample> {
        let r = self.get("/metrics").expect("GET /metrics");
        assert_eq!(r.status, 200, "/metrics: {}", r.body);
        parse_metrics(&r.body)
    }

    /// Scrapes until `f` accepts (see `Agent::wait_metrics`).
    pub fn wait_metrics<T>(&self, secs: u64, what: &str, mut f: impl FnMut(&[Sample]) -> Result<T, String>) -> T {
        poll_until(deadline(secs), what, || {
            let (status, _) = self.state();
            assert_eq!(status, "running", "the container stopped; log:\n{}", self.logs());
            f(&self.samples())
        })
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str, secs: u64) -> String {
        poll_until(deadline(secs), &format!("a log line with {needle:?}"), || {
            let logs = self.logs();
            match logs.lines().find(|l| l.contains(needle)) {
                Some(l) => Ok(l.to_string()),
                None => Err(logs.lines().rev().take(5).collect::<Vec<_>>().join(" | ")),
            }
        })
    }

    /// The container's root filesystem on the host (vfs: a plain directory).
    pub fn rootfs(&self) -> PathBuf {
        PathBuf::from(self.podman.ok(&["mount", &self.name]).trim())
    }

    /// The host cgroup (v1 hierarchy `controller`) the agent is in, as a directory.
    pub fn cgroup_dir(&self, controller: &str) -> PathBuf {
        let text = std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid)).expect("cgroup");
        let path = text
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
                ctrls.split(',').any(|c| c == controller).then(|| path.to_string())
            })
            .unwrap_or_else(|| panic!("no {controller} cgroup in {text}"));
        PathBuf::from(format!("/sys/fs/cgroup/{controller}{path}"))
    }

    /// How long the agent took to answer `path` with 2xx/3xx (the kubelet's success) after start.
    pub fn time_to_answer(&self, path: &str, within: Duration) -> Duration {
        poll_until(self.started + within, &format!("{path} to answer 2xx/3xx"), || match self.get(path) {
            Ok(r) if (200..400).contains(&r.status) => Ok(self.started.elapsed()),
            Ok(r) => Err(format!("{} {}", r.status, r.body.trim())),
            Err(e) => Err(e.to_string()),
        })
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- container {} log ----\n{}---- end ----", self.name, self.logs());
        }
        let _ = self.podman.output(&["rm", "--force", "--time", "0", &self.name]);
    }
}
