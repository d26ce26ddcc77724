//! Who a cgroup is: the container runtime, container id, pod UID and QoS class encoded in the
//! cgroup paths that kubelet and container runtimes create (cgroup v1 and v2, systemd and cgroupfs
//! drivers; containerd, CRI-O and Docker naming), or the systemd unit of a host process. Pure
//! parsing of the path; names from the Kubernetes API are a separate, optional step.
use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// containerd, cri-o, docker, or empty.
    pub runtime: String,
    /// Full container id (64 hex digits where the path has it).
    pub container_id: String,
    /// Pod UID with dashes (the systemd driver writes underscores).
    pub pod_uid: String,
    /// guaranteed, burstable, besteffort, or empty when not a pod.
    pub qos_class: String,
    /// The systemd unit for host processes (`nginx.service`, `session-3.scope`), else empty.
    pub unit: String,
}

/// Pure: what a cgroup path (as /proc/<pid>/cgroup or the cgroup2 tree shows it) says.
pub fn parse(path: &str) -> Workload {
    // A private cgroup namespace shows paths relative to the agent's own cgroup ("/../../x");
    // the components that name pods and containers are the same, so only those are read.
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != "..").collect();
    let mut w = Workload::default();
    let in_pods = parts.iter().any(|p| p.starts_with("kubepods"));
    for (i, part) in parts.iter().enumerate() {
        if let Some(uid) = pod_uid(part) {
            w.pod_uid = uid;
        }
        if in_pods {
            if let Some(q) = qos(part) {
                w.qos_class = q.into();
            }
        }
        if let Some((runtime, id)) = container(part) {
            w.runtime = runtime.into();
            w.container_id = id;
        } else if i > 0 && parts[i - 1] == "docker" && is_container_id(part) {
            // Docker's cgroupfs layout: /docker/<id>.
            w.runtime = "docker".into();
            w.container_id = (*part).into();
        } else if in_pods && i + 1 == parts.len() && is_container_id(part) {
            // cgroupfs driver: the last component is the bare container id.
            w.container_id = (*part).into();
        }
    }
    if in_pods && w.qos_class.is_empty() && !w.pod_uid.is_empty() {
        // Guaranteed pods sit directly under kubepods, with no QoS level of their own.
        w.qos_class = "guaranteed".into();
    }
    if !in_pods && w.container_id.is_empty() {
        if let Some(unit) = parts.iter().rev().find(|p| p.ends_with(".service") || p.ends_with(".scope")) {
            w.unit = (*unit).into();
        }
    }
    w
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd): the UID
/// follows the last "pod" (the first is inside "kubepods").
fn pod_uid(part: &str) -> Option<String> {
    let at = part.rfind("pod")?;
    let own_word = at == 0 || part[..at].ends_with('-');
    let rest = &part[at + 3..];
    let uid = rest.strip_suffix(".slice").unwrap_or(rest).replace('_', "-");
    (own_word && is_uuid(&uid)).then_some(uid)
}

/// 8-4-4-4-12 hex digits: what kubelet's pod UIDs are.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes()
            .enumerate()
            .all(|(i, b)| if [8, 13, 18, 23].contains(&i) { b == b'-' } else { b.is_ascii_hexdigit() })
}

fn qos(part: &str) -> Option<&'static str> {
    if part.contains("burstable") {
        Some("burstable")
    } else if part.contains("besteffort") {
        Some("besteffort")
    } else {
        None
    }
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`, `crio-conmon-…` is not a
/// container; v1 cgroupfs Docker uses `/docker/<id>`.
fn container(part: &str) -> Option<(&'static str, String)> {
    let base = part.strip_suffix(".scope").unwrap_or(part);
    for (prefix, runtime) in [("cri-containerd-", "containerd"), ("crio-", "cri-o"), ("docker-", "docker")] {
        if let Some(id) = base.strip_prefix(prefix) {
            if is_container_id(id) {
                return Some((runtime, id.into()));
            }
        }
    }
    None
}

fn is_container_id(s: &str) -> bool {
    s.len() >= 32 && s.chars().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn w(runtime: &str, id: &str, uid: &str, qos: &str, unit: &str) -> Workload {
        Workload {
            runtime: runtime.into(),
            container_id: id.into(),
            pod_uid: uid.into(),
            qos_class: qos.into(),
            unit: unit.into(),
        }
    }

    #[test]
    fn real_world_layouts() {
        let uid = "3f6c1a2e-8b4d-4c1e-9f7a-2b5d6e8f9a0b";
        let uid_ = uid.replace('-', "_");
        let cases = [
            // cgroup v2, systemd driver, containerd
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"),
             w("containerd", ID, uid, "burstable", "")),
            // systemd driver, CRI-O, besteffort
            (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-{ID}.scope"),
             w("cri-o", ID, uid, "besteffort", "")),
            // systemd driver, guaranteed (no QoS level), docker (dockershim / cri-dockerd)
            (format!("/kubepods.slice/kubepods-pod{uid_}.slice/docker-{ID}.scope"), w("docker", ID, uid, "guaranteed", "")),
            // cgroupfs driver (v1 or v2): bare id
            (format!("/kubepods/burstable/pod{uid}/{ID}"), w("", ID, uid, "burstable", "")),
            (format!("/kubepods/pod{uid}/{ID}"), w("", ID, uid, "guaranteed", "")),
            // the pod's own cgroup (pause/sandbox level)
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice"), w("", "", uid, "burstable", "")),
            // private cgroup namespace: relative path
            (format!("/../../kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"), w("containerd", ID, uid, "besteffort", "")),
            // plain Docker on a host
            (format!("/system.slice/docker-{ID}.scope"), w("docker", ID, "", "", "")),
            (format!("/docker/{ID}"), w("docker", ID, "", "", "")),
            // host processes
            ("/system.slice/nginx.service".into(), w("", "", "", "", "nginx.service")),
            ("/user.slice/user-1000.slice/session-3.scope".into(), w("", "", "", "", "session-3.scope")),
            ("/".into(), w("", "", "", "", "")),
        ];
        for (path, want) in cases {
            assert_eq!(parse(&path), want, "{path}");
        }
    }

    /// Found by fuzz/ (cgroup_path): 36 hex digits and dashes in the wrong places were a pod UID.
    #[test]
    fn pod_uids_have_the_uuid_shape() {
        assert_eq!(parse("/kubepods.slice/kubepods-pod3f6c1a2e_8b4d_4c1e_9f-a_2b5d6e8f9a0b.slice").pod_uid, "");
        assert_eq!(parse("/kubepods/pod------------------------------------").pod_uid, "");
        let ok = parse("/kubepods/pod3f6c1a2e-8b4d-4c1e-9f7a-2b5d6e8f9a0b");
        assert_eq!(ok.pod_uid, "3f6c1a2e-8b4d-4c1e-9f7a-2b5d6e8f9a0b");
    }

    #[test]
    fn conmon_and_short_names_are_not_containers() {
        assert_eq!(parse(&format!("/system.slice/crio-conmon-{ID}.scope")).container_id, "");
        assert_eq!(parse("/system.slice/docker-abc.scope").container_id, "");
    }
}
