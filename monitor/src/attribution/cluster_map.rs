//! Names from the Kubernetes API as pure data: which namespace, pod and container a cgroup's
//! container id or pod UID belongs to, and which pod or Service an IP address is. [`Names::build`]
//! indexes Pod and Service objects (k8s-openapi types, as the API serves them); [`slim_pod`] and
//! [`slim_service`] cut cached objects down to the fields read here. No I/O: `cluster.rs` owns the
//! watches and the cache.
use std::{collections::HashMap, net::IpAddr};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodSpec, PodStatus, Service, ServiceSpec};

use crate::attribution::workload::Workload;

/// Namespace, pod and container of a workload; empty strings where unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadNames {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerKind {
    Pod,
    Service,
}

impl PeerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerKind::Pod => "pod",
            PeerKind::Service => "service",
        }
    }
}

/// What a destination address is in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub kind: PeerKind,
    pub namespace: String,
    pub name: String,
}

/// The lookups a scrape makes, built from the cached objects. Comparable, so the fuzz target can
/// check that slimming objects never changes what they map to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// Pod UID → (namespace, name).
    pods: HashMap<String, (String, String)>,
    /// Container id (hex, without the runtime's `containerd://` prefix) → (pod UID, container name).
    containers: HashMap<String, (String, String)>,
    peers: HashMap<IpAddr, Peer>,
}

/// How strongly a pod claims its IP: a running pod beats a pending one, then the newest wins
/// (an IP freed by a deleted pod can be handed to a new one before the old object is gone).
type Claim = (bool, Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>, String);

impl Names {
    pub fn build<'a>(
        pods: impl IntoIterator<Item = &'a Pod>,
        services: impl IntoIterator<Item = &'a Service>,
    ) -> Names {
        let mut names = Names::default();
        let mut claims: HashMap<IpAddr, Claim> = HashMap::new();
        for pod in pods {
            let meta = &pod.metadata;
            let (Some(uid), Some(name)) = (&meta.uid, &meta.name) else { continue };
            let namespace = meta.namespace.clone().unwrap_or_default();
            names.pods.insert(uid.clone(), (namespace.clone(), name.clone()));
            let Some(status) = &pod.status else { continue };
            let all =
                [&status.init_container_statuses, &status.container_statuses, &status.ephemeral_container_statuses];
            for c in all.into_iter().flatten().flatten() {
                if let Some(id) = c.container_id.as_deref().and_then(container_id) {
                    names.containers.insert(id.to_string(), (uid.clone(), c.name.clone()));
                }
            }
            // A hostNetwork pod's IP is its node's: connections to it are not connections to it.
            // A finished pod's IP may already belong to another pod.
            let host_network = pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
            let phase = status.phase.as_deref().unwrap_or("");
            if host_network || phase == "Succeeded" || phase == "Failed" {
                continue;
            }
            let claim: Claim = (phase == "Running", meta.creation_timestamp.clone(), name.clone());
            for ip in pod_ips(status) {
                if claims.get(&ip).is_some_and(|c| *c >= claim) {
                    continue;
                }
                claims.insert(ip, claim.clone());
                names.peers.insert(ip, Peer { kind: PeerKind::Pod, namespace: namespace.clone(), name: name.clone() });
            }
        }
        // Cluster IPs and pod IPs come from disjoint ranges; should they meet, the Service (the
        // address clients are given) wins.
        for svc in services {
            let (Some(name), Some(spec)) = (&svc.metadata.name, &svc.spec) else { continue };
            let namespace = svc.metadata.namespace.clone().unwrap_or_default();
            for ip in cluster_ips(spec) {
                names
                    .peers
                    .insert(ip, Peer { kind: PeerKind::Service, namespace: namespace.clone(), name: name.clone() });
            }
        }
        names
    }

    /// The names of the workload a cgroup path was parsed into: by container id first (which
    /// also names the container), else by pod UID (a pod-level cgroup, e.g. the sandbox).
    pub fn workload(&self, w: &Workload) -> WorkloadNames {
        let by_container = (!w.container_id.is_empty())
            .then(|| self.containers.get(&w.container_id.to_ascii_lowercase()))
            .flatten()
            .and_then(|(uid, container)| self.pods.get(uid).map(|p| (p, container.as_str())));
        let by_uid = || self.pods.get(&w.pod_uid).map(|p| (p, ""));
        match by_container.or_else(by_uid) {
            Some(((namespace, pod), container)) => {
                WorkloadNames { namespace: namespace.clone(), pod: pod.clone(), container: container.to_string() }
            }
            None => WorkloadNames::default(),
        }
    }

    /// The pod or Service an address belongs to (IPv4-mapped IPv6 is looked up as IPv4).
    pub fn peer(&self, addr: IpAddr) -> Option<&Peer> {
        self.peers.get(&addr.to_canonical())
    }
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` → `<id>` (lower case, as cgroup paths have it).
pub fn container_id(status_id: &str) -> Option<&str> {
    let id = status_id.rsplit_once("://").map_or(status_id, |(_, id)| id);
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit())).then_some(id)
}

fn pod_ips(status: &PodStatus) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = status.pod_ips.iter().flatten().filter_map(|p| p.ip.parse().ok()).collect();
    if let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok()) {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

/// `clusterIPs` (dual stack: one per family), else `clusterIP`; headless (`None`) and
/// ExternalName Services have none.
fn cluster_ips(spec: &ServiceSpec) -> Vec<IpAddr> {
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let listed = spec.cluster_ips.iter().flatten().chain(spec.cluster_ip.iter());
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in listed.filter_map(|s| s.parse::<IpAddr>().ok()) {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

/// Keeps what [`Names::build`] reads (and what the reflector keys on); the cache then holds a
/// few hundred bytes per pod instead of its whole spec, managed fields and annotations.
pub fn slim_pod(pod: &mut Pod) {
    slim_meta(&mut pod.metadata);
    pod.spec =
        pod.spec.take().map(|s| PodSpec { host_network: s.host_network, node_name: s.node_name, ..Default::default() });
    let slim = |v: Option<Vec<ContainerStatus>>| {
        v.map(|v| {
            v.into_iter()
                .map(|c| ContainerStatus { name: c.name, container_id: c.container_id, ..Default::default() })
                .collect()
        })
    };
    pod.status = pod.status.take().map(|s| PodStatus {
        phase: s.phase,
        pod_ip: s.pod_ip,
        pod_ips: s.pod_ips,
        container_statuses: slim(s.container_statuses),
        init_container_statuses: slim(s.init_container_statuses),
        ephemeral_container_statuses: slim(s.ephemeral_container_statuses),
        ..Default::default()
    });
}

/// Keeps a Service's names, type and cluster IPs.
pub fn slim_service(svc: &mut Service) {
    slim_meta(&mut svc.metadata);
    svc.spec = svc.spec.take().map(|s| ServiceSpec {
        cluster_ip: s.cluster_ip,
        cluster_ips: s.cluster_ips,
        type_: s.type_,
        ..Default::default()
    });
    svc.status = None;
}

fn slim_meta(m: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    m.managed_fields = None;
    m.annotations = None;
    m.labels = None;
    m.owner_references = None;
    m.finalizers = None;
}

#[cfg(test)]
#[path = "cluster_map_tests.rs"]
mod tests;
