//! What operators rely on in the Kubernetes manifests of deploy/kubernetes/, read as documents
//! (no cluster runs here): the DaemonSet is not privileged, drops ALL capabilities and adds
//! exactly the documented set (docs/requirements.md), has a read-only root filesystem, the host's
//! PID namespace, liveness on /healthz and readiness on /readyz at the metrics port, NODE_NAME
//! from spec.nodeName, resources, read-only host mounts; the Namespace admits such pods; the
//! ClusterRole only reads pods and services; the Service, PodMonitor and probes agree on the port.
//!
//! Schema validation, the kustomization and the Dockerfile are checked in manifests.rs, which
//! also holds the YAML reader's own tests. Needs neither python3 nor root.

use connmon_test_support as common;

use std::collections::{BTreeMap, BTreeSet};

use common::kube::*;
use common::workspace::read;
use common::yaml::Yaml;

/// The capabilities of docs/requirements.md (without the CAP_ prefix, as Kubernetes spells them).
const CAPABILITIES: &[&str] =
    &["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH", "SYS_RESOURCE"];
/// Host paths the DaemonSet mounts (read-only, at the same path), and which need mounts made on
/// the host later to show up (HostToContainer propagation).
const HOST_MOUNTS: &[(&str, bool)] =
    &[("/sys/kernel/btf", false), ("/sys/kernel/tracing", true), ("/sys/fs/cgroup", false), ("/run/netns", true)];

/// Kubernetes memory quantity in bytes (binary and decimal suffixes).
fn bytes(quantity: &str) -> u64 {
    let suffixes: &[(&str, u64)] =
        &[("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("k", 1_000), ("M", 1_000_000), ("G", 1_000_000_000)];
    for (suffix, unit) in suffixes {
        if let Some(n) = quantity.strip_suffix(suffix) {
            return n.parse::<u64>().expect("memory quantity") * unit;
        }
    }
    quantity.parse().expect("memory quantity")
}

fn is_subset(small: &BTreeMap<&str, &str>, big: &BTreeMap<&str, &str>) -> bool {
    !small.is_empty() && small.iter().all(|(k, v)| big.get(k) == Some(v))
}

#[test]
fn namespace_admits_privileged_pods() {
    let ns = the("Namespace");
    assert_eq!(ns.str_at("metadata.name"), Some(NAMESPACE));
    let labels = ns.at("metadata.labels").map(Yaml::string_map).unwrap_or_default();
    assert_eq!(
        labels.get("pod-security.kubernetes.io/enforce"),
        Some(&"privileged"),
        "hostPID, hostNetwork, hostPath and added capabilities need the privileged Pod Security level"
    );
}

#[test]
fn daemonset_is_unprivileged_with_exactly_the_documented_capabilities() {
    let ds = the("DaemonSet");
    let pod = ds.at("spec.template.spec").expect("pod spec");
    let containers = pod.seq_at("containers");
    assert_eq!(containers.len(), 1, "one container");
    let c = &containers[0];
    assert!(pod.at("initContainers").is_none(), "no init containers expected");

    assert_eq!(pod.str_at("hostPID"), Some("true"), "the agent reads every process's /proc");
    let sc = c.at("securityContext").expect("container securityContext");
    assert_ne!(sc.str_at("privileged"), Some("true"), "the agent must not run privileged");
    assert_eq!(sc.str_at("readOnlyRootFilesystem"), Some("true"));
    assert_eq!(sc.str_at("runAsUser"), Some("0"), "capabilities apply to uid 0");
    assert!(pod.at("securityContext.privileged").is_none(), "privileged is a container setting");

    assert_eq!(sc.strs_at("capabilities.drop"), ["ALL"], "drop ALL, then add");
    let added = sc.strs_at("capabilities.add");
    let added_set: BTreeSet<&str> = added.iter().copied().collect();
    assert_eq!(added_set.len(), added.len(), "a capability is added twice: {added:?}");
    let expected: BTreeSet<&str> = CAPABILITIES.iter().copied().collect();
    assert_eq!(added_set, expected, "capabilities added (left) vs docs/requirements.md (right)");
    for cap in &added {
        // The API refuses allowPrivilegeEscalation: false with "CAP_SYS_ADMIN" (not "SYS_ADMIN").
        assert!(
            !cap.starts_with("CAP_") && cap.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
            "spell capabilities as Kubernetes does (SYS_ADMIN, not CAP_SYS_ADMIN): {cap}"
        );
    }

    // docs/requirements.md is where the set is documented.
    let section = read("docs/requirements.md");
    let documented: BTreeSet<String> = section
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter_map(|w| w.strip_prefix("CAP_"))
        .map(str::to_string)
        .collect();
    let expected: BTreeSet<String> = CAPABILITIES.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        documented, expected,
        "docs/requirements.md names these capabilities (left); update the DaemonSet and \
         CAPABILITIES here together with it"
    );
}

#[test]
fn daemonset_host_access_is_read_only() {
    let ds = the("DaemonSet");
    let pod = ds.at("spec.template.spec").expect("pod spec");
    let c = &pod.seq_at("containers")[0];
    let volumes = pod.seq_at("volumes");
    let mounts = c.seq_at("volumeMounts");
    let mut mounted = BTreeSet::new();
    for m in mounts {
        let name = m.str_at("name").expect("volumeMount name");
        let path = m.str_at("mountPath").expect("mountPath");
        let volume = Yaml::named(volumes, name).unwrap_or_else(|| panic!("volumeMount {name} has no volume"));
        assert_eq!(m.str_at("readOnly"), Some("true"), "{path} must be mounted read-only");
        let propagation = m.str_at("mountPropagation").unwrap_or("None");
        assert!(
            ["None", "HostToContainer"].contains(&propagation),
            "{path}: mountPropagation {propagation} (Bidirectional needs a privileged container)"
        );
        if let Some(host) = volume.str_at("hostPath.path") {
            assert_eq!(host, path, "host paths are mounted where the agent expects them");
            let kind = volume.str_at("hostPath.type").unwrap_or("");
            assert!(
                ["", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice", "BlockDevice"]
                    .contains(&kind),
                "{host}: hostPath type {kind:?} is not one Kubernetes knows"
            );
            mounted.insert((host.to_string(), propagation.to_string()));
        }
        assert!(
            !["/", "/proc", "/sys", "/var/run/docker.sock", "/run/containerd"].contains(&path),
            "{path} gives away more of the host than the agent needs"
        );
    }
    for v in volumes {
        let name = v.str_at("name").expect("volume name");
        assert!(Yaml::named(mounts, name).is_some(), "volume {name} is not mounted");
    }
    for (path, propagate) in HOST_MOUNTS {
        let want = if *propagate { "HostToContainer" } else { "None" };
        assert!(
            mounted.contains(&(path.to_string(), want.to_string())),
            "host path {path} mounted read-only with mountPropagation {want}; mounted: {mounted:?}"
        );
    }
}

#[test]
fn daemonset_probes_env_ports_and_resources() {
    let ds = the("DaemonSet");
    let pod = ds.at("spec.template.spec").expect("pod spec");
    let c = &pod.seq_at("containers")[0];

    let metrics = Yaml::named(c.seq_at("ports"), "metrics").expect("a port named metrics");
    assert_eq!(metrics.str_at("containerPort"), Some(METRICS_PORT));
    assert_eq!(metrics.str_at("protocol").unwrap_or("TCP"), "TCP");
    if let Some(host_port) = metrics.str_at("hostPort") {
        assert_eq!(host_port, METRICS_PORT, "with hostNetwork, hostPort must equal containerPort");
    }

    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = c.at(&format!("{probe}.httpGet")).unwrap_or_else(|| panic!("{probe}.httpGet"));
        assert_eq!(get.str_at("path"), Some(path), "{probe} path");
        let port = get.str_at("port").unwrap_or_else(|| panic!("{probe} port"));
        assert_eq!(container_port(c, port), METRICS_PORT, "{probe} port");
    }

    let args = c.strs_at("args");
    assert_eq!(args.first(), Some(&"run"), "the container runs `connmon run`: {args:?}");
    for arg in &args {
        if let Some(addr) = arg.strip_prefix("--web.listen-address=") {
            assert!(addr.ends_with(&format!(":{METRICS_PORT}")), "{arg} vs port {METRICS_PORT}");
        }
    }

    let node = Yaml::named(c.seq_at("env"), "NODE_NAME").expect("env NODE_NAME");
    assert_eq!(node.str_at("valueFrom.fieldRef.fieldPath"), Some("spec.nodeName"));

    let requests = c.at("resources.requests").expect("resources.requests");
    assert!(requests.str_at("cpu").is_some(), "cpu request");
    let request = bytes(requests.str_at("memory").expect("memory request"));
    let limit = bytes(c.str_at("resources.limits.memory").expect("memory limit"));
    assert!(request <= limit, "memory request {request} > limit {limit}");

    assert!(c.str_at("image").is_some_and(|i| !i.is_empty()), "image");
    let tolerates_all =
        pod.seq_at("tolerations").iter().any(|t| t.str_at("operator") == Some("Exists") && t.at("key").is_none());
    assert!(tolerates_all, "the agent must run on every node (toleration operator: Exists)");
    if pod.str_at("hostNetwork") == Some("true") {
        assert_eq!(
            pod.str_at("dnsPolicy"),
            Some("ClusterFirstWithHostNet"),
            "host-network pods need ClusterFirstWithHostNet to resolve cluster names"
        );
    }

    let selector = ds.at("spec.selector.matchLabels").map(Yaml::string_map).unwrap_or_default();
    let template = ds.at("spec.template.metadata.labels").map(Yaml::string_map).unwrap_or_default();
    assert!(is_subset(&selector, &template), "selector {selector:?} vs template {template:?}");
}

#[test]
fn rbac_only_reads_pods_and_services() {
    for (file, doc) in manifests() {
        let kind = doc.str_at("kind").unwrap_or_default();
        assert!(
            !["Role", "RoleBinding"].contains(&kind),
            "{file}: unexpected {kind}; the agent's only grant is the ClusterRole"
        );
    }
    let role = the("ClusterRole");
    let rules = role.seq_at("rules");
    assert_eq!(rules.len(), 1, "one rule: {rules:?}");
    let rule = &rules[0];
    let Yaml::Map(entries) = rule else { panic!("rule is not a mapping") };
    let keys: BTreeSet<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, BTreeSet::from(["apiGroups", "resources", "verbs"]), "no resourceNames or nonResourceURLs");
    assert_eq!(rule.strs_at("apiGroups"), [""], "core API group only");
    // Pods of this node name workloads; Services name ClusterIP destinations.
    assert_eq!(rule.strs_at("resources"), ["pods", "services"], "pods and services only (no subresources, no secrets)");
    let verbs: BTreeSet<&str> = rule.strs_at("verbs").into_iter().collect();
    assert_eq!(verbs, BTreeSet::from(["get", "list", "watch"]), "read-only verbs");
    assert!(role.at("aggregationRule").is_none());

    let binding = the("ClusterRoleBinding");
    let sa = the("ServiceAccount");
    let sa_name = sa.str_at("metadata.name").expect("ServiceAccount name");
    assert_eq!(binding.str_at("roleRef.kind"), Some("ClusterRole"));
    assert_eq!(binding.str_at("roleRef.apiGroup"), Some("rbac.authorization.k8s.io"));
    assert_eq!(binding.str_at("roleRef.name"), role.str_at("metadata.name"));
    let subjects = binding.seq_at("subjects");
    assert_eq!(subjects.len(), 1, "one subject");
    assert_eq!(subjects[0].str_at("kind"), Some("ServiceAccount"));
    assert_eq!(subjects[0].str_at("name"), Some(sa_name));
    assert_eq!(subjects[0].str_at("namespace"), Some(NAMESPACE));
    assert_eq!(sa.str_at("metadata.namespace"), Some(NAMESPACE));
    let ds = the("DaemonSet");
    assert_eq!(ds.str_at("spec.template.spec.serviceAccountName"), Some(sa_name));
}

#[test]
fn service_and_podmonitor_scrape_the_metrics_port() {
    let ds = the("DaemonSet");
    let template = ds.at("spec.template.metadata.labels").map(Yaml::string_map).unwrap_or_default();
    let container = &ds.seq_at("spec.template.spec.containers")[0];

    let svc = the("Service");
    assert_eq!(svc.str_at("spec.clusterIP"), Some("None"), "headless");
    let selector = svc.at("spec.selector").map(Yaml::string_map).unwrap_or_default();
    assert!(is_subset(&selector, &template), "Service selector {selector:?} vs pods {template:?}");
    let port = Yaml::named(svc.seq_at("spec.ports"), "metrics").expect("Service port metrics");
    assert_eq!(port.str_at("port"), Some(METRICS_PORT));
    let target = port.str_at("targetPort").unwrap_or(METRICS_PORT);
    assert_eq!(container_port(container, target), METRICS_PORT, "Service targetPort");

    let pm = the("PodMonitor");
    assert_eq!(pm.str_at("apiVersion"), Some("monitoring.coreos.com/v1"));
    assert_eq!(pm.str_at("metadata.namespace"), ds.str_at("metadata.namespace"));
    let selector = pm.at("spec.selector.matchLabels").map(Yaml::string_map).unwrap_or_default();
    assert!(is_subset(&selector, &template), "PodMonitor selector {selector:?} vs pods {template:?}");
    let endpoints = pm.seq_at("spec.podMetricsEndpoints");
    assert_eq!(endpoints.len(), 1);
    let ep = &endpoints[0];
    assert_eq!(ep.str_at("port"), Some("metrics"));
    assert_eq!(container_port(container, "metrics"), METRICS_PORT);
    assert_eq!(ep.str_at("path"), Some("/metrics"));
    assert_eq!(ep.str_at("interval"), Some("30s"));
    assert!(
        read(&format!("{DIR}/podmonitor.yaml")).contains("Prometheus operator"),
        "podmonitor.yaml says that it needs the Prometheus operator"
    );
}
