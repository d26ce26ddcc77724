//! Kubernetes API objects as the agent's watches receive them (JSON: a Pod, a Service, a list of
//! either, or a watch event wrapping one), then indexed by `cluster_map::Names`. Asserts: slimming
//! the objects (what the cache keeps) changes none of the lookups, slimming twice is slimming
//! once, and every lookup of a pod's addresses and of its containers' cgroup paths terminates.
#![no_main]

use connmon::attribution::{cluster_map, workload::Workload};
use k8s_openapi::api::core::v1::{Pod, Service};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Objects are sorted by kind from their JSON; the watch event's `object` is unwrapped.
fn collect(v: Value, pods: &mut Vec<Pod>, services: &mut Vec<Service>, depth: usize) {
    if depth > 4 {
        return;
    }
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
    match kind.as_str() {
        "Pod" => pods.extend(serde_json::from_value::<Pod>(v).ok()),
        "Service" => services.extend(serde_json::from_value::<Service>(v).ok()),
        "PodList" | "ServiceList" | "List" => {
            if let Some(Value::Array(items)) = v.get("items").cloned() {
                for mut item in items {
                    // Items of a typed list come without kind.
                    if let (Some(obj), Some(k)) = (item.as_object_mut(), kind.strip_suffix("List")) {
                        if !k.is_empty() {
                            obj.entry("kind").or_insert_with(|| Value::String(k.to_string()));
                        }
                    }
                    collect(item, pods, services, depth + 1);
                }
            }
        }
        _ => {
            if let Some(obj) = v.get("object").cloned() {
                collect(obj, pods, services, depth + 1);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    let (mut pods, mut services) = (Vec::new(), Vec::new());
    collect(value, &mut pods, &mut services, 0);
    if pods.is_empty() && services.is_empty() {
        return;
    }
    let full = cluster_map::Names::build(&pods, &services);
    let (mut slim_pods, mut slim_services) = (pods.clone(), services.clone());
    slim_pods.iter_mut().for_each(cluster_map::slim_pod);
    slim_services.iter_mut().for_each(cluster_map::slim_service);
    let slim = cluster_map::Names::build(&slim_pods, &slim_services);
    assert_eq!(full, slim, "slimming changed the lookups");
    let (mut twice_pods, mut twice_services) = (slim_pods.clone(), slim_services.clone());
    twice_pods.iter_mut().for_each(cluster_map::slim_pod);
    twice_services.iter_mut().for_each(cluster_map::slim_service);
    assert_eq!((&twice_pods, &twice_services), (&slim_pods, &slim_services), "slimming is not idempotent");
    for pod in &pods {
        let status = pod.status.as_ref();
        let ips =
            status.into_iter().flat_map(|s| s.pod_ips.iter().flatten().map(|p| p.ip.clone()).chain(s.pod_ip.clone()));
        for ip in ips {
            if let Ok(addr) = ip.parse() {
                let _ = full.peer(addr);
            }
        }
        let statuses = status.into_iter().flat_map(|s| s.container_statuses.iter().flatten());
        for c in statuses {
            if let Some(id) = c.container_id.as_deref().and_then(cluster_map::container_id) {
                assert!(id.bytes().all(|b| b.is_ascii_hexdigit()) && !id.is_empty());
                let w = Workload { container_id: id.to_string(), ..Default::default() };
                let names = full.workload(&w);
                assert!(
                    names.pod.is_empty() || pods.iter().any(|p| p.metadata.name.as_deref() == Some(names.pod.as_str()))
                );
            }
        }
    }
});
