//! Names people recognise, for the CLI only: a process whose comm is an interpreter (python3, node,
//! java, ruby, php, perl) is shown by the script or jar it runs (`python3 worker.py` →
//! `worker.py`, from /proc/<pid>/cmdline), else by its systemd unit, container or pod (from the
//! cgroup path), else by its comm. Metric labels keep the comm: this is presentation, and a
//! script name per series would multiply the series.
use std::{collections::HashMap, time::Instant};

use crate::attribution::workload;

/// Whether `comm` is an interpreter whose comm says nothing about the program it runs.
pub fn is_interpreter(comm: &str) -> bool {
    let base = comm.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    matches!(base, "python" | "node" | "nodejs" | "java" | "ruby" | "php" | "php-fpm" | "perl" | "pypy")
}

/// The program an interpreter's command line runs: the first argument that is not an option
/// (or an option's value), as its file name; `-m module` gives the module, `-jar x.jar` the jar.
pub fn script_of(argv: &[String]) -> Option<String> {
    let interp = argv.first().map(|a| a.rsplit('/').next().unwrap_or(a)).unwrap_or_default();
    // Options that take the next argument as their value, per interpreter family.
    let with_value: &[&str] = if interp.starts_with("java") {
        &["-cp", "-classpath", "--class-path", "-p", "--module-path", "--add-modules", "-javaagent"]
    } else if interp.starts_with("node") {
        &["-r", "--require", "--import", "--loader", "--experimental-loader", "--env-file"]
    } else if interp.starts_with("python") || interp.starts_with("pypy") {
        &["-W", "-X", "-Q"]
    } else if interp.starts_with("ruby") {
        &["-I", "-r", "-C"]
    } else if interp.starts_with("php") {
        &["-c", "-d", "-z"]
    } else {
        &["-I", "-M", "-m"]
    };
    let mut args = argv.iter().skip(1);
    while let Some(a) = args.next() {
        if a == "-m" && (interp.starts_with("python") || interp.starts_with("pypy")) {
            return args.next().cloned();
        }
        if a == "-jar" || (a == "-m" || a == "--module") && interp.starts_with("java") {
            return args.next().map(|j| base(j));
        }
        if a == "-c" && !interp.starts_with("php") || a == "-e" {
            return None;
        }
        if with_value.contains(&a.as_str()) {
            args.next();
            continue;
        }
        if a.starts_with('-') {
            continue;
        }
        return Some(base(a));
    }
    None
}

fn base(path: &str) -> String {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or(path).to_string()
}

/// A recognisable name from a cgroup path: the systemd unit (not a login session's scope), or
/// the container or pod id, shortened as `docker ps` and `crictl pods` show them.
pub fn cgroup_name(cgroup: &str) -> Option<String> {
    let w = workload::parse(cgroup);
    if !w.container_id.is_empty() {
        return Some(format!("container {}", &w.container_id[..w.container_id.len().min(12)]));
    }
    if !w.pod_uid.is_empty() {
        return Some(format!("pod {}", &w.pod_uid[..w.pod_uid.len().min(8)]));
    }
    let generic = w.unit.starts_with("session-") || w.unit.starts_with("user@") || w.unit.starts_with("init.scope");
    (!w.unit.is_empty() && !generic).then_some(w.unit)
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
        })
        .unwrap_or_default()
}

fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim_end().to_string()).unwrap_or_default()
}

/// Pids a cgroup holds that look at most this many: the root cgroup can hold every process.
const MAX_PIDS_READ: usize = 4096;
/// Names remembered at most; the cache is emptied when it is reached.
const MAX_CACHED: usize = 4096;
/// How long a name is reused before /proc is read again: processes come and go.
const CACHE_SECS: u64 = 10;

/// Resolves and caches display names for (comm, cgroup, pid) triples.
#[derive(Default)]
pub struct Namer {
    cache: HashMap<(String, String, Option<u32>), (Instant, String)>,
}

impl Namer {
    /// What to show for a process named `comm` in `cgroup` (`pid` when the row has one).
    pub fn name(&mut self, comm: &str, cgroup: &str, pid: Option<u32>) -> String {
        if !is_interpreter(comm) {
            return comm.to_string();
        }
        let key = (comm.to_string(), cgroup.to_string(), pid);
        if let Some((at, n)) = self.cache.get(&key) {
            if at.elapsed().as_secs() < CACHE_SECS {
                return n.clone();
            }
        }
        let n = resolve(comm, cgroup, pid);
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(key, (Instant::now(), n.clone()));
        n
    }
}

fn resolve(comm: &str, cgroup: &str, pid: Option<u32>) -> String {
    let pids: Vec<u32> = match pid {
        Some(p) => vec![p],
        None if !cgroup.is_empty() => crate::kernel::cgroupfs::cgroup2_root()
            .and_then(|root| {
                std::fs::read_to_string(root.join(cgroup.trim_start_matches('/')).join("cgroup.procs")).ok()
            })
            .unwrap_or_default()
            .lines()
            .take(MAX_PIDS_READ)
            .filter_map(|l| l.trim().parse().ok())
            .filter(|p| comm_of(*p) == comm)
            .collect(),
        None => Vec::new(),
    };
    let mut scripts: Vec<String> = pids.iter().filter_map(|p| script_of(&cmdline(*p))).collect();
    scripts.sort();
    scripts.dedup();
    match scripts.as_slice() {
        [one] => return one.clone(),
        [first, rest @ ..] => return format!("{first}+{}", rest.len()),
        [] => {}
    }
    cgroup_name(cgroup).unwrap_or_else(|| comm.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn scripts_from_command_lines() {
        let cases = [
            ("python3 worker.py --queue a", Some("worker.py")),
            ("/usr/bin/python3.11 -u -W ignore /srv/app/worker.py", Some("worker.py")),
            ("python3 -m celery worker", Some("celery")),
            ("python3 -c import_this", None),
            ("python3", None),
            ("node --require ./otel.js server.js", Some("server.js")),
            ("java -Xmx1g -cp lib/* -jar /opt/app/billing.jar", Some("billing.jar")),
            ("java -cp a.jar com.example.Main", Some("com.example.Main")),
            ("ruby -I lib bin/sidekiq", Some("sidekiq")),
            ("perl -e print", None),
            ("php -d memory_limit=1G artisan queue:work", Some("artisan")),
        ];
        for (cmd, want) in cases {
            assert_eq!(script_of(&argv(cmd)).as_deref(), want, "{cmd}");
        }
    }

    #[test]
    fn interpreters_and_cgroups() {
        for c in ["python3", "python3.11", "python", "node", "java", "ruby", "php8.2", "php-fpm8.2", "perl"] {
            assert!(is_interpreter(c), "{c}");
        }
        for c in ["redis-server", "nginx", "postgres", "pythonista"] {
            assert!(!is_interpreter(c), "{c}");
        }
        assert_eq!(cgroup_name("/system.slice/worker.service").as_deref(), Some("worker.service"));
        assert_eq!(cgroup_name("/user.slice/user-0.slice/session-3.scope"), None);
        assert_eq!(cgroup_name("/"), None);
        let pod = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1a2b3c4d_0000_1111_2222_333344445555.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope";
        assert_eq!(cgroup_name(pod).as_deref(), Some("container 0123456789ab"));
    }

    #[test]
    fn a_real_python_process_is_named_by_its_script() {
        let dir = std::env::temp_dir().join(format!("connmon-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("worker.py");
        std::fs::write(&script, "import time\ntime.sleep(30)\n").unwrap();
        // The interpreter itself, not a wrapper (pyenv's shim is a bash script named python3).
        let Ok(exe) = std::process::Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output()
        else {
            panic!("python3 is needed for this test (cargo xtask setup installs it)");
        };
        let exe = String::from_utf8_lossy(&exe.stdout).trim().to_string();
        let mut child = std::process::Command::new(&exe).arg(&script).spawn().unwrap();
        let pid = child.id();
        // exec sets the comm before the new command line is in place: wait for both.
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while !(comm_of(pid).starts_with("python") && cmdline(pid).len() == 2) && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let comm = comm_of(pid);
        let name = Namer::default().name(&comm, "", Some(pid));
        child.kill().ok();
        child.wait().ok();
        std::fs::remove_dir_all(&dir).ok();
        assert!(comm.starts_with("python"), "comm of the python child: {comm:?}");
        assert_eq!(name, "worker.py");
    }
}
