//! The DaemonSet's container as a container runtime sees it, read from
//! deploy/kubernetes/daemonset.yaml ([`PodSpec::from_daemonset`]) and translated into `podman run`
//! flags ([`PodSpec::podman_flags`]), so that tests/container.rs runs what the manifest says and
//! the two cannot drift. Every field that changes how the container runs is either translated or
//! refused with a panic naming it, so a new setting in the manifest cannot be silently left out.

use std::collections::BTreeMap;

use super::kube::{container_port, the};
use super::yaml::Yaml;

/// An httpGet probe of the manifest.
#[derive(Debug, Clone)]
pub struct HttpProbe {
    pub path: String,
    pub port: u16,
    pub initial_delay_s: u64,
    pub period_s: u64,
    pub timeout_s: u64,
    pub failure_threshold: u64,
}

/// A hostPath volume mounted into the container.
#[derive(Debug, Clone)]
pub struct HostMount {
    pub volume: String,
    pub host_path: String,
    /// hostPath `type`: `Directory` must exist, `DirectoryOrCreate` is created.
    pub host_type: String,
    pub container_path: String,
    pub read_only: bool,
    /// `HostToContainer` (rslave) or none (rprivate).
    pub propagation: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PodSpec {
    pub host_pid: bool,
    pub host_network: bool,
    pub args: Vec<String>,
    /// Literal values; `fieldRef: spec.nodeName` becomes this host's name.
    pub env: Vec<(String, String)>,
    /// The port named `metrics`.
    pub metrics_port: u16,
    pub liveness: HttpProbe,
    pub readiness: HttpProbe,
    pub no_new_privileges: bool,
    pub read_only_root: bool,
    pub run_as: (String, String),
    pub caps_drop: Vec<String>,
    pub caps_add: Vec<String>,
    pub mounts: Vec<HostMount>,
    pub memory_request: String,
    pub memory_limit: String,
    pub cpu_request: String,
    /// Flags a test adds beyond the manifest (e.g. a seccomp profile).
    pub extra_flags: Vec<String>,
}

fn req<'a>(y: &'a Yaml, path: &str) -> &'a str {
    y.str_at(path).unwrap_or_else(|| panic!("daemonset.yaml: {path} is missing"))
}

fn num(y: &Yaml, path: &str, default: u64) -> u64 {
    y.str_at(path)
        .map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("daemonset.yaml: {path}: {v} is not a number")))
}

/// Kubernetes quantity (`64Mi`, `256Mi`, `1Gi`) in bytes.
pub fn bytes_of(quantity: &str) -> u64 {
    let (n, mult) = [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)]
        .iter()
        .find_map(|(suffix, m)| quantity.strip_suffix(suffix).map(|n| (n, *m)))
        .unwrap_or((quantity, 1));
    n.parse::<u64>().unwrap_or_else(|_| panic!("quantity {quantity}: only plain, Ki, Mi and Gi are read here")) * mult
}

/// Kubernetes CPU quantity (`50m`, `1`) in cores.
pub fn cores_of(quantity: &str) -> f64 {
    match quantity.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().expect("CPU millicores") / 1000.0,
        None => quantity.parse().expect("CPU cores"),
    }
}

fn http_probe(c: &Yaml, which: &str) -> HttpProbe {
    let p = c.get(which).unwrap_or_else(|| panic!("daemonset.yaml: the container has no {which}"));
    let port = container_port(c, req(p, "httpGet.port"));
    assert!(p.str_at("httpGet.scheme").is_none_or(|s| s == "HTTP"), "{which}: only plain HTTP probes are translated");
    HttpProbe {
        path: req(p, "httpGet.path").to_string(),
        port: port.parse().expect("probe port"),
        // The API's defaults (core/v1 Probe).
        initial_delay_s: num(p, "initialDelaySeconds", 0),
        period_s: num(p, "periodSeconds", 10),
        timeout_s: num(p, "timeoutSeconds", 1),
        failure_threshold: num(p, "failureThreshold", 3),
    }
}

impl PodSpec {
    pub fn from_daemonset() -> PodSpec {
        let ds = the("DaemonSet");
        let pod = ds.at("spec.template.spec").expect("pod template spec");
        let containers = pod.seq_at("containers");
        assert_eq!(containers.len(), 1, "one container: the agent");
        assert!(pod.seq_at("initContainers").is_empty(), "init containers are not translated");
        let c = &containers[0];
        let sc = c.get("securityContext").expect("container securityContext");
        assert_eq!(sc.str_at("privileged"), Some("false"));
        for key in ["seccompProfile", "appArmorProfile", "seLinuxOptions", "procMount"] {
            assert!(sc.get(key).is_none(), "securityContext.{key} is not translated");
        }
        let bool_at = |y: &Yaml, path: &str| y.str_at(path) == Some("true");

        let volumes: BTreeMap<&str, &Yaml> = pod.seq_at("volumes").iter().map(|v| (req(v, "name"), v)).collect();
        let mounts = c
            .seq_at("volumeMounts")
            .iter()
            .map(|m| {
                let name = req(m, "name");
                let v = volumes.get(name).unwrap_or_else(|| panic!("volumeMount {name} has no volume"));
                let host_path = v
                    .str_at("hostPath.path")
                    .unwrap_or_else(|| panic!("volume {name}: only hostPath volumes are translated"));
                assert!(m.get("subPath").is_none(), "volumeMount {name}: subPath is not translated");
                let propagation = m.str_at("mountPropagation").map(str::to_string);
                assert!(
                    propagation.as_deref().is_none_or(|p| p == "HostToContainer" || p == "None"),
                    "volumeMount {name}: mountPropagation {propagation:?} is not translated"
                );
                HostMount {
                    volume: name.to_string(),
                    host_path: host_path.to_string(),
                    host_type: v.str_at("hostPath.type").unwrap_or("").to_string(),
                    container_path: req(m, "mountPath").to_string(),
                    read_only: bool_at(m, "readOnly"),
                    propagation,
                }
            })
            .collect();

        let node =
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        let env = c
            .seq_at("env")
            .iter()
            .map(|e| {
                let name = req(e, "name").to_string();
                let value = match (e.str_at("value"), e.str_at("valueFrom.fieldRef.fieldPath")) {
                    (Some(v), None) => v.to_string(),
                    (None, Some("spec.nodeName")) => node.clone(),
                    other => panic!("env {name}: {other:?} is not translated"),
                };
                (name, value)
            })
            .collect();

        PodSpec {
            host_pid: bool_at(pod, "hostPID"),
            host_network: bool_at(pod, "hostNetwork"),
            args: c.strs_at("args").iter().map(|s| s.to_string()).collect(),
            env,
            metrics_port: container_port(c, "metrics").parse().expect("metrics port"),
            liveness: http_probe(c, "livenessProbe"),
            readiness: http_probe(c, "readinessProbe"),
            no_new_privileges: sc.str_at("allowPrivilegeEscalation") == Some("false"),
            read_only_root: bool_at(sc, "readOnlyRootFilesystem"),
            run_as: (req(sc, "runAsUser").to_string(), req(sc, "runAsGroup").to_string()),
            caps_drop: sc.strs_at("capabilities.drop").iter().map(|s| s.to_string()).collect(),
            caps_add: sc.strs_at("capabilities.add").iter().map(|s| s.to_string()).collect(),
            mounts,
            memory_request: req(c, "resources.requests.memory").to_string(),
            memory_limit: req(c, "resources.limits.memory").to_string(),
            cpu_request: req(c, "resources.requests.cpu").to_string(),
            extra_flags: Vec::new(),
        }
    }

    /// The `--web.listen-address` argument's port.
    pub fn listen_port(&self) -> u16 {
        let addr = self
            .args
            .iter()
            .find_map(|a| a.strip_prefix("--web.listen-address="))
            .expect("args set --web.listen-address=ADDR");
        addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port in --web.listen-address")
    }

    /// The same pod listening on `port` instead (args and probes alike), so that tests running
    /// side by side on the host network do not fight over the manifest's port.
    pub fn on_port(mut self, port: u16) -> PodSpec {
        let old = self.listen_port();
        for a in &mut self.args {
            if let Some(addr) = a.strip_prefix("--web.listen-address=") {
                let host = addr.rsplit_once(':').map_or("", |(h, _)| h);
                *a = format!("--web.listen-address={host}:{port}");
            }
        }
        for p in [&mut self.liveness, &mut self.readiness] {
            assert_eq!(p.port, old, "probes query the port the agent listens on");
            p.port = port;
        }
        self.metrics_port = port;
        self
    }

    /// Flags for `podman run` that give the container what the manifest gives it.
    pub fn podman_flags(&self) -> Vec<String> {
        let mut f: Vec<String> = Vec::new();
        if self.host_network {
            f.push("--network=host".into());
        }
        if self.host_pid {
            f.push("--pid=host".into());
        }
        if self.read_only_root {
            // Kubernetes adds no tmpfs on /tmp, /run and /var/tmp as podman does by default.
            f.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
        }
        if self.no_new_privileges {
            f.push("--security-opt=no-new-privileges".into());
        }
        f.push(format!("--user={}:{}", self.run_as.0, self.run_as.1));
        for cap in &self.caps_drop {
            f.push(format!("--cap-drop={cap}"));
        }
        if !self.caps_add.is_empty() {
            f.push(format!("--cap-add={}", self.caps_add.join(",")));
        }
        for m in &self.mounts {
            if m.host_type == "DirectoryOrCreate" {
                std::fs::create_dir_all(&m.host_path).unwrap_or_else(|e| panic!("create {}: {e}", m.host_path));
            }
            let mut opts = vec![if m.read_only { "ro" } else { "rw" }];
            if m.propagation.as_deref() == Some("HostToContainer") {
                opts.push("rslave");
            }
            f.push(format!("--volume={}:{}:{}", m.host_path, m.container_path, opts.join(",")));
        }
        for (k, v) in &self.env {
            f.push(format!("--env={k}={v}"));
        }
        f.push(format!("--memory={}", bytes_of(&self.memory_limit)));
        f.extend(self.extra_flags.iter().cloned());
        f
    }

    pub fn without_caps(mut self, caps: &[&str]) -> PodSpec {
        let before = self.caps_add.len();
        self.caps_add.retain(|c| !caps.contains(&c.as_str()));
        assert_eq!(before - self.caps_add.len(), caps.len(), "the manifest adds {caps:?}");
        self
    }

    pub fn without_mount(mut self, volume: &str) -> PodSpec {
        let before = self.mounts.len();
        self.mounts.retain(|m| m.volume != volume);
        assert_eq!(before, self.mounts.len() + 1, "the manifest mounts {volume}");
        self
    }
}
