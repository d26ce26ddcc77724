//! Who the workloads and peers are: `connmon_workload_info` per cgroup on an exported listener or
//! pool (cgroup-path attribution, plus namespace, pod and container names from the Kubernetes API
//! when it is used), `connmon_peer_info` per exported destination that is a pod or Service, and
//! the API watches' health. Info series to join on `cgroup` or `dst_addr`, so pool and listener
//! series keep one label for each instead of many.
use std::{collections::BTreeSet, net::IpAddr};

use prometheus_client::registry::Registry;

use super::{float_family, gauge_family, labels, WORKLOAD_INFO};
use crate::{attribution::cluster::View, attribution::cluster_map::WorkloadNames};

pub const PEER_INFO: &str = "connmon_peer_info";
pub const KUBERNETES_UP: &str = "connmon_kubernetes_up";
pub const KUBERNETES_OBJECTS: &str = "connmon_kubernetes_objects";
pub const KUBERNETES_LAST_SYNC: &str = "connmon_kubernetes_last_sync_timestamp_seconds";

/// `cgroups` and `destinations` come from the exported series only, which bounds these series by
/// the same caps. Without `view` (no Kubernetes API) names are empty and no health is exported.
pub fn register(reg: &mut Registry, cgroups: &BTreeSet<&str>, destinations: &BTreeSet<IpAddr>, view: Option<&View>) {
    let workload = gauge_family(
        reg,
        WORKLOAD_INFO,
        "What each cgroup seen on a listener or pool is: container runtime, container id, pod UID and QoS class from the kubelet's cgroup naming, or the systemd unit of a host process; namespace, pod and container names from the Kubernetes API when it is used (empty when unknown); join on cgroup",
    );
    for c in cgroups {
        let w = crate::attribution::workload::parse(c);
        let n = view.map(|v| v.names.workload(&w)).unwrap_or_default();
        let WorkloadNames { namespace, pod, container } = &n;
        workload
            .get_or_create(labels(&[
                ("cgroup", c),
                ("runtime", &w.runtime),
                ("container_id", &w.container_id),
                ("pod_uid", &w.pod_uid),
                ("qos_class", &w.qos_class),
                ("unit", &w.unit),
                ("namespace", namespace),
                ("pod", pod),
                ("container", container),
            ]))
            .set(1);
    }
    let Some(view) = view else { return };
    let peers = gauge_family(
        reg,
        PEER_INFO,
        "Destinations of exported pools that the Kubernetes API names: kind=service for a Service cluster IP (any node), kind=pod for the IP of a pod on this node; join on dst_addr",
    );
    for addr in destinations {
        if let Some(p) = view.names.peer(*addr) {
            peers
                .get_or_create(labels(&[
                    ("dst_addr", &addr.to_string()),
                    ("kind", p.kind.as_str()),
                    ("namespace", &p.namespace),
                    ("name", &p.name),
                ]))
                .set(1);
        }
    }
    let up = gauge_family(reg, KUBERNETES_UP, "1 while the watch of this resource on the Kubernetes API works (its last list or event succeeded), 0 while it fails and the last known objects are used");
    let objects = gauge_family(
        reg,
        KUBERNETES_OBJECTS,
        "Objects of this resource cached from the Kubernetes API (pods of this node, all services)",
    );
    let synced = float_family(
        reg,
        KUBERNETES_LAST_SYNC,
        "Unix time at which the last complete list of this resource from the Kubernetes API finished",
    );
    for r in &view.resources {
        let l = labels(&[("resource", r.resource)]);
        up.get_or_create(&l).set(i64::from(r.up));
        objects.get_or_create(&l).set(r.objects as i64);
        if let Some(t) = r.last_sync {
            synced.get_or_create(&l).set(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prometheus_client::encoding::text::encode;
    use serde_json::json;

    use super::*;
    use crate::{attribution::cluster::ResourceView, attribution::cluster_map::Names};

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "3f6c1a2e-8b4d-4c1e-9f7a-2b5d6e8f9a0b";

    fn text(cgroups: &[&str], destinations: &[&str], view: Option<&View>) -> String {
        let mut reg = Registry::default();
        let cgroups = cgroups.iter().copied().collect();
        let destinations = destinations.iter().map(|d| d.parse().unwrap()).collect();
        register(&mut reg, &cgroups, &destinations, view);
        let mut out = String::new();
        encode(&mut out, &reg).unwrap();
        out
    }

    #[test]
    fn names_join_the_workload_and_name_exported_destinations() {
        let pod = serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": UID},
            "spec": {"nodeName": "n", "containers": []},
            "status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}],
                       "containerStatuses": [{"name": "app", "containerID": format!("containerd://{ID}"), "image": "x", "imageID": "",
                                              "ready": true, "restartCount": 0}]}
        }))
        .unwrap();
        let svc = serde_json::from_value(json!({
            "metadata": {"name": "redis", "namespace": "data"}, "spec": {"clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"]}
        }))
        .unwrap();
        let view = View {
            names: Arc::new(Names::build([&pod], [&svc])),
            resources: vec![
                ResourceView { resource: "pods", up: true, objects: 1, last_sync: Some(1.8e9) },
                ResourceView { resource: "services", up: false, objects: 1, last_sync: None },
            ],
        };
        let cg = format!("/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope", UID.replace('-', "_"));
        let out = text(&[&cg], &["10.244.1.5", "10.96.0.9", "10.0.0.1"], Some(&view));
        assert!(out.contains(&format!("pod_uid=\"{UID}\",qos_class=\"guaranteed\",unit=\"\",namespace=\"shop\",pod=\"web-0\",container=\"app\"}} 1")), "{out}");
        assert!(
            out.contains("connmon_peer_info{dst_addr=\"10.244.1.5\",kind=\"pod\",namespace=\"shop\",name=\"web-0\"} 1"),
            "{out}"
        );
        assert!(
            out.contains(
                "connmon_peer_info{dst_addr=\"10.96.0.9\",kind=\"service\",namespace=\"data\",name=\"redis\"} 1"
            ),
            "{out}"
        );
        assert!(!out.contains("10.0.0.1"), "an unknown destination has no peer series: {out}");
        assert!(
            out.contains("connmon_kubernetes_up{resource=\"pods\"} 1")
                && out.contains("connmon_kubernetes_up{resource=\"services\"} 0"),
            "{out}"
        );
        assert!(out.contains("connmon_kubernetes_objects{resource=\"services\"} 1"), "{out}");
        assert!(out.contains("connmon_kubernetes_last_sync_timestamp_seconds{resource=\"pods\"} 1800000000"), "{out}");
        assert!(!out.contains("connmon_kubernetes_last_sync_timestamp_seconds{resource=\"services\"}"), "{out}");
    }

    #[test]
    fn without_the_api_names_are_empty_and_no_health_is_exported() {
        let out = text(&["/system.slice/nginx.service"], &["10.96.0.9"], None);
        assert!(out.contains("unit=\"nginx.service\",namespace=\"\",pod=\"\",container=\"\"} 1"), "{out}");
        assert!(!out.contains("connmon_peer_info") && !out.contains("connmon_kubernetes"), "{out}");
    }
}
