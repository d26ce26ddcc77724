use std::net::IpAddr;

use serde_json::json;

use super::*;
use crate::attribution::workload;

const APP_ID: &str = "4c9b1f0e2a7d3c5b8e6f1a2d4c7b9e0f3a5d8c1b6e2f4a7d9c0b3e5f8a1d2c4b";
const SIDECAR_ID: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0";
const INIT_ID: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const CRIO_ID: &str = "2f3e4d5c6b7a8f9e0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a6f7e8d9c0b1a2f3e";
const DOCKER_ID: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const DEBUG_ID: &str = "d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0";
const WEB_UID: &str = "7d3f5a2c-1b4e-4c8d-9a6f-0e2b3c4d5e6f";
const CRIO_UID: &str = "0a1b2c3d-4e5f-4061-8273-8495a6b7c8d9";

/// A container status as the kubelet reports it (running).
fn status(name: &str, id: &str, image: &str) -> serde_json::Value {
    json!({
        "name": name,
        "containerID": id,
        "image": image,
        "imageID": format!("{image}@sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270"),
        "ready": true,
        "restartCount": 0,
        "started": true,
        "state": {"running": {"startedAt": "2026-11-20T09:14:03Z"}},
        "lastState": {}
    })
}

/// A Pod as `kubectl get pod -o json` shows one scheduled to node-a: metadata with managed
/// fields and owner references, a spec with containers, and the status the kubelet writes.
fn pod(name: &str, ns: &str, uid: &str, phase: &str, ips: &[&str], statuses: serde_json::Value) -> Pod {
    let mut status = json!({
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-11-20T09:14:05Z"}],
        "hostIP": "10.0.4.17",
        "hostIPs": [{"ip": "10.0.4.17"}],
        "qosClass": "Burstable",
        "startTime": "2026-11-20T09:13:58Z"
    });
    if let Some(first) = ips.first() {
        status["podIP"] = json!(first);
        status["podIPs"] = json!(ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>());
    }
    for (k, v) in statuses.as_object().unwrap() {
        status[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": uid,
            "resourceVersion": "48213",
            "creationTimestamp": "2026-11-20T09:13:57Z",
            "generateName": "web-6d4cf56db6-",
            "labels": {"app": "web", "pod-template-hash": "6d4cf56db6"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-20T09:13:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-6d4cf56db6",
                                 "uid": "e2b9a6f1-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
                               "time": "2026-11-20T09:14:05Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}, "subresource": "status"}]
        },
        "spec": {
            "nodeName": "node-a",
            "containers": [{"name": "app", "image": "registry.example/web:1.4", "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}],
            "restartPolicy": "Always",
            "serviceAccountName": "default",
            "dnsPolicy": "ClusterFirst"
        },
        "status": status
    }))
    .expect("pod JSON")
}

fn web_pod() -> Pod {
    pod(
        "web-6d4cf56db6-x7k2p",
        "shop",
        WEB_UID,
        "Running",
        &["10.244.1.23", "fd00:10:244:1::17"],
        json!({
            "initContainerStatuses": [{
                "name": "migrate", "containerID": format!("containerd://{INIT_ID}"), "image": "registry.example/migrate:1",
                "imageID": "", "ready": true, "restartCount": 0, "started": false,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": "2026-11-20T09:13:59Z",
                                         "finishedAt": "2026-11-20T09:14:02Z", "containerID": format!("containerd://{INIT_ID}")}}
            }],
            "containerStatuses": [status("app", &format!("containerd://{APP_ID}"), "registry.example/web:1.4"),
                                  status("envoy", &format!("containerd://{SIDECAR_ID}"), "envoyproxy/envoy:v1.31")],
            "ephemeralContainerStatuses": [status("debugger", &format!("containerd://{DEBUG_ID}"), "busybox:1.36")]
        }),
    )
}

fn service(name: &str, ns: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name, "namespace": ns, "uid": "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9", "resourceVersion": "731",
            "creationTimestamp": "2026-11-01T12:00:00Z", "labels": {"app": name},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\",\"kind\":\"Service\"}"}
        },
        "spec": spec,
        "status": {"loadBalancer": {}}
    }))
    .expect("service JSON")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn peer(names: &Names, addr: &str) -> Option<(&'static str, String, String)> {
    names.peer(ip(addr)).map(|p| (p.kind.as_str(), p.namespace.clone(), p.name.clone()))
}

fn names_of(cgroup: &str, names: &Names) -> (String, String, String) {
    let n = names.workload(&workload::parse(cgroup));
    (n.namespace, n.pod, n.container)
}

fn owned(a: &str, b: &str, c: &str) -> (String, String, String) {
    (a.into(), b.into(), c.into())
}

#[test]
fn containers_are_named_by_the_id_in_their_cgroup_path() {
    let crio = pod(
        "api-0",
        "payments",
        CRIO_UID,
        "Running",
        &["10.244.1.40"],
        json!({"containerStatuses": [status("api", &format!("cri-o://{CRIO_ID}"), "quay.io/pay/api:2")]}),
    );
    let docker = pod(
        "legacy-7f9c",
        "old",
        "6b7c8d9e-0f1a-4b2c-8d3e-4f5a6b7c8d9e",
        "Running",
        &["10.244.1.41"],
        json!({"containerStatuses": [status("legacy", &format!("docker://{DOCKER_ID}"), "legacy:1")]}),
    );
    let pods = [web_pod(), crio, docker];
    let names = Names::build(&pods, []);
    let web_ = WEB_UID.replace('-', "_");
    let slice = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{web_}.slice");
    assert_eq!(
        names_of(&format!("{slice}/cri-containerd-{APP_ID}.scope"), &names),
        owned("shop", "web-6d4cf56db6-x7k2p", "app")
    );
    assert_eq!(
        names_of(&format!("{slice}/cri-containerd-{SIDECAR_ID}.scope"), &names),
        owned("shop", "web-6d4cf56db6-x7k2p", "envoy")
    );
    // Init and ephemeral (kubectl debug) containers have cgroups of their own too.
    assert_eq!(names_of(&format!("{slice}/cri-containerd-{INIT_ID}.scope"), &names).2, "migrate");
    assert_eq!(names_of(&format!("{slice}/cri-containerd-{DEBUG_ID}.scope"), &names).2, "debugger");
    // The pod's own cgroup (sandbox level): the pod, no container.
    assert_eq!(names_of(&slice, &names), owned("shop", "web-6d4cf56db6-x7k2p", ""));
    // From inside a private cgroup namespace (the DaemonSet's view).
    assert_eq!(
        names_of(&format!("/../../kubepods-burstable-pod{web_}.slice/cri-containerd-{APP_ID}.scope"), &names).2,
        "app"
    );
    let crio_ = CRIO_UID.replace('-', "_");
    assert_eq!(
        names_of(
            &format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{crio_}.slice/crio-{CRIO_ID}.scope"
            ),
            &names
        ),
        owned("payments", "api-0", "api")
    );
    // cgroupfs driver with Docker (cri-dockerd): bare id under the pod directory.
    assert_eq!(
        names_of(&format!("/kubepods/burstable/pod6b7c8d9e-0f1a-4b2c-8d3e-4f5a6b7c8d9e/{DOCKER_ID}"), &names),
        owned("old", "legacy-7f9c", "legacy")
    );
    // A container the cache does not know in a pod it knows: the pod's names, no container.
    let unknown = "e".repeat(64);
    assert_eq!(
        names_of(&format!("{slice}/cri-containerd-{unknown}.scope"), &names),
        owned("shop", "web-6d4cf56db6-x7k2p", "")
    );
    // Host processes and unknown pods: nothing.
    assert_eq!(names_of("/system.slice/kubelet.service", &names), owned("", "", ""));
    assert_eq!(names_of(&format!("/system.slice/docker-{}.scope", "c".repeat(64)), &names), owned("", "", ""));
}

#[test]
fn pod_ips_name_pods_but_not_host_network_or_finished_pods() {
    let mut kube_proxy = pod(
        "kube-proxy-8xq4z",
        "kube-system",
        "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
        "Running",
        &["10.0.4.17"],
        json!({"containerStatuses": [status("kube-proxy", "containerd://3333333333333333333333333333333333333333333333333333333333333333", "registry.k8s.io/kube-proxy:v1.37.0")]}),
    );
    kube_proxy.spec.as_mut().unwrap().host_network = Some(true);
    let pending = pod("queue-0", "shop", "2d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f6a", "Pending", &[], json!({}));
    // A Job pod that completed; its IP went to a new pod that is still starting.
    let mut done =
        pod("report-29k1x", "batch", "3e4f5a6b-7c8d-4e9f-8a1b-2c3d4e5f6a7b", "Succeeded", &["10.244.1.50"], json!({}));
    done.metadata.creation_timestamp = serde_json::from_value(json!("2026-11-20T08:00:00Z")).unwrap();
    let reused =
        pod("cache-5c7d9", "shop", "4f5a6b7c-8d9e-4f0a-9b1c-3d4e5f6a7b8c", "Pending", &["10.244.1.50"], json!({}));
    let pods = [web_pod(), kube_proxy, pending, done, reused];
    let names = Names::build(&pods, []);
    assert_eq!(peer(&names, "10.244.1.23"), Some(("pod", "shop".into(), "web-6d4cf56db6-x7k2p".into())));
    // Dual stack: the IPv6 address too, and IPv4 written as IPv4-mapped IPv6.
    assert_eq!(peer(&names, "fd00:10:244:1::17").map(|p| p.2), Some("web-6d4cf56db6-x7k2p".into()));
    assert_eq!(peer(&names, "::ffff:10.244.1.23").map(|p| p.2), Some("web-6d4cf56db6-x7k2p".into()));
    // The node's IP is not kube-proxy: every host-network pod and the kubelet share it.
    assert_eq!(peer(&names, "10.0.4.17"), None);
    assert_eq!(peer(&names, "10.244.1.50").map(|p| p.2), Some("cache-5c7d9".into()));
    // The host-network pod is still named by its container.
    assert_eq!(
        names_of("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1c2d3e4f_5a6b_4c7d_8e9f_0a1b2c3d4e5f.slice/cri-containerd-3333333333333333333333333333333333333333333333333333333333333333.scope", &names),
        owned("kube-system", "kube-proxy-8xq4z", "kube-proxy")
    );
}

#[test]
fn two_live_pods_on_one_ip_prefer_the_running_then_the_newest() {
    let old = pod("a-old", "x", "5a6b7c8d-9e0f-4a1b-8c2d-4e5f6a7b8c9d", "Running", &["10.244.2.9"], json!({}));
    let mut new = pod("a-new", "x", "6b7c8d9e-0f1a-4b2c-9d3e-5f6a7b8c9d0e", "Running", &["10.244.2.9"], json!({}));
    new.metadata.creation_timestamp = serde_json::from_value(json!("2026-11-21T00:00:00Z")).unwrap();
    let starting = pod("a-pending", "x", "7c8d9e0f-1a2b-4c3d-8e4f-6a7b8c9d0e1f", "Pending", &["10.244.2.9"], json!({}));
    for order in [[&old, &new, &starting], [&starting, &new, &old], [&new, &starting, &old]] {
        let names = Names::build(order, []);
        assert_eq!(peer(&names, "10.244.2.9").map(|p| p.2), Some("a-new".into()));
    }
}

#[test]
fn services_are_named_by_every_cluster_ip() {
    let services = [
        service(
            "kubernetes",
            "default",
            json!({"type": "ClusterIP", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"],
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}], "sessionAffinity": "None"}),
        ),
        service(
            "redis",
            "data",
            json!({"type": "ClusterIP", "clusterIP": "10.96.12.7", "clusterIPs": ["10.96.12.7", "fd00:10:96::c07"],
            "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack", "selector": {"app": "redis"},
            "ports": [{"port": 6379, "protocol": "TCP", "targetPort": 6379}]}),
        ),
        service(
            "redis-headless",
            "data",
            json!({"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"],
            "selector": {"app": "redis"}, "ports": [{"port": 6379}]}),
        ),
        service("db", "data", json!({"type": "ExternalName", "externalName": "db.example.com"})),
        // Older objects have only clusterIP.
        service(
            "pg",
            "data",
            json!({"type": "NodePort", "clusterIP": "10.96.30.2", "ports": [{"port": 5432, "nodePort": 30432}]}),
        ),
    ];
    let names = Names::build([], &services);
    assert_eq!(peer(&names, "10.96.0.1"), Some(("service", "default".into(), "kubernetes".into())));
    assert_eq!(peer(&names, "10.96.12.7"), Some(("service", "data".into(), "redis".into())));
    assert_eq!(peer(&names, "fd00:10:96::c07").map(|p| p.2), Some("redis".into()));
    assert_eq!(peer(&names, "10.96.30.2").map(|p| p.2), Some("pg".into()));
    assert_eq!(names.peers.len(), 4, "{:?}", names.peers);
}

#[test]
fn slimmed_objects_name_the_same_and_drop_the_rest() {
    let services = [service(
        "redis",
        "data",
        json!({"type": "ClusterIP", "clusterIP": "10.96.12.7", "clusterIPs": ["10.96.12.7"],
        "selector": {"app": "redis"}, "ports": [{"port": 6379}]}),
    )];
    let pods = [web_pod()];
    let full = Names::build(&pods, &services);
    let mut slim_pods = pods.clone();
    let mut slim_services = services.clone();
    slim_pods.iter_mut().for_each(slim_pod);
    slim_services.iter_mut().for_each(slim_service);
    let slim = Names::build(&slim_pods, &slim_services);
    assert_eq!(slim.pods, full.pods);
    assert_eq!(slim.containers, full.containers);
    assert_eq!(slim.peers, full.peers);
    let p = &slim_pods[0];
    assert!(
        p.metadata.managed_fields.is_none()
            && p.metadata.annotations.is_none()
            && p.metadata.owner_references.is_none()
    );
    assert!(p.spec.as_ref().unwrap().containers.is_empty());
    assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("node-a"));
    let statuses = p.status.as_ref().unwrap().container_statuses.as_ref().unwrap();
    assert!(statuses.iter().all(|c| c.state.is_none() && c.image.is_empty()));
    // The reflector keys objects by name and namespace; the watcher needs the resourceVersion.
    assert_eq!(p.metadata.name.as_deref(), Some("web-6d4cf56db6-x7k2p"));
    assert_eq!(p.metadata.resource_version.as_deref(), Some("48213"));
    let full_len = serde_json::to_string(&pods[0]).unwrap().len();
    let slim_len = serde_json::to_string(p).unwrap().len();
    assert!(slim_len * 2 < full_len, "slim {slim_len} bytes vs {full_len}");
}

#[test]
fn container_ids_lose_their_runtime_prefix() {
    assert_eq!(container_id(&format!("containerd://{APP_ID}")), Some(APP_ID));
    assert_eq!(container_id(&format!("cri-o://{CRIO_ID}")), Some(CRIO_ID));
    assert_eq!(container_id(&format!("docker://{DOCKER_ID}")), Some(DOCKER_ID));
    // A container not started yet has no id.
    assert_eq!(container_id(""), None);
    assert_eq!(container_id("containerd://"), None);
}
