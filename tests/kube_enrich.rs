//! Names from the Kubernetes API, end to end. No cluster or kube-apiserver runs here, so the agent
//! is pointed (`--kubernetes.kubeconfig`) at a stand-in API server on loopback
//! (`common::kube_api`) that serves pod and service lists and watch streams in the real API's JSON
//! shapes. Real client processes sit in cgroups named the way kubelet and containerd name them and
//! hold connections to a real redis-server, so the pools, their cgroups and their destinations are
//! the kernel's. Checked: the pods request carries this node's field selector; workloads get their
//! namespace, pod and container; destinations that are a pod of this node or a Service cluster IP
//! get `connmon_peer_info`, a host-network pod's IP does not; a watch event arrives; an outage keeps
//! the names, turns `connmon_kubernetes_up` to 0, is logged once and never slows /metrics; the API
//! coming back with a changed pod brings the change. Also: a bad kubeconfig and no API at all.
//! Needs root (cgroups, probes).

use connmon::export::cluster::{
    KUBERNETES_LAST_SYNC as LAST_SYNC, KUBERNETES_OBJECTS as OBJECTS, KUBERNETES_UP as UP, PEER_INFO,
};
use connmon::export::{PROBE_UP, WORKLOAD_INFO};
use connmon_test_support as common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::agent_log::lines_with;
use common::kube_api::{Kind, StandInApi};
use common::*;
use serde_json::{json, Value};

/// How long one scrape may take while the API is down (a scrape waiting on the API would take
/// the client's connect timeout or forever).
const QUICK: Duration = Duration::from_secs(2);

/// A running container's status as the kubelet writes it.
fn container(name: &str, id: &str) -> Value {
    json!({"name": name, "containerID": format!("containerd://{id}"), "image": format!("registry.example/{name}:1"),
           "imageID": format!("registry.example/{name}@sha256:{}", "5b".repeat(32)), "ready": true, "restartCount": 0,
           "started": true, "state": {"running": {"startedAt": "2026-11-20T09:14:03Z"}}, "lastState": {}})
}

/// A Pod (`[name, namespace, uid]`) as the API serves it (the stand-in sets its resourceVersion).
fn pod([name, ns, uid]: [&str; 3], node: &str, ip: &str, host_network: bool, created: &str, status: Value) -> Value {
    let mut st = json!({"phase": "Running", "hostIP": "127.0.0.3", "hostIPs": [{"ip": "127.0.0.3"}], "podIP": ip,
                        "podIPs": [{"ip": ip}], "qosClass": "Burstable", "startTime": created,
                        "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": created}]});
    for (k, v) in status.as_object().unwrap() {
        st[k] = v.clone();
    }
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "creationTimestamp": created, "labels": {"app": name},
                     "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": created,
                                        "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}, "subresource": "status"}]},
        "spec": {"nodeName": node, "hostNetwork": host_network, "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
                 "containers": [{"name": "main", "image": "registry.example/main:1", "resources": {}}]},
        "status": st
    })
}

fn service(name: &str, ns: &str, cluster_ip: &str) -> Value {
    json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "uid": "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9", "creationTimestamp": "2026-11-01T12:00:00Z"},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ipFamilies": ["IPv4"],
                 "ipFamilyPolicy": "SingleStack", "selector": {"app": name}, "sessionAffinity": "None",
                 "ports": [{"name": "redis", "port": 6379, "protocol": "TCP", "targetPort": 6379}]},
        "status": {"loadBalancer": {}}
    })
}

/// `connmon run` with the Kubernetes flags given and the in-cluster variables unset.
fn agent(args: &[&str]) -> Agent {
    Agent::start_wrapped(args, |argv| {
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]).env_remove("KUBERNETES_SERVICE_HOST").env_remove("NODE_NAME");
        c
    })
}

/// `redis-cli SUBSCRIBE` (holds its one connection) to `host`, moved into `cgroup` first.
fn client(cgroup: &KubeCgroup, host: &str, port: u16) -> KillOnDrop {
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec redis-cli -h {host} -p {port} subscribe connmon-kube-test",
            cgroup.dir.display()
        ))
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn redis-cli");
    KillOnDrop(child)
}

/// Labels of the one sample named `name` matching `by`, as (label, value) for `keys`.
fn labels_of(s: &[Sample], name: &str, by: &[(&str, &str)], keys: &[&str]) -> Result<Vec<String>, String> {
    match samples_matching(s, name, by)[..] {
        [one] => Ok(keys.iter().map(|k| one.label(k).unwrap_or("<absent>").to_string()).collect()),
        ref other => Err(format!("{} samples {name}{by:?}: {other:?}", other.len())),
    }
}

fn up(s: &[Sample], resource: &str) -> Option<f64> {
    sample(s, UP, &[("resource", resource)])
}

struct Pod0 {
    uid: String,
    app_id: String,
    envoy_id: String,
}

fn objects(node: &str, p: &Pod0, redis_pod: (&str, &str)) -> (Vec<Value>, Vec<Value>) {
    let (redis_name, redis_uid) = redis_pod;
    let pods = vec![
        pod(
            ["web-6d4cf56db6-x7k2p", "shop", &p.uid],
            node,
            "10.244.7.10",
            false,
            "2026-11-20T09:13:57Z",
            json!({
            "initContainerStatuses": [{"name": "migrate", "containerID": format!("containerd://{}", "1".repeat(64)),
                "image": "registry.example/migrate:1", "imageID": "", "ready": true, "restartCount": 0, "started": false,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": "2026-11-20T09:13:58Z", "finishedAt": "2026-11-20T09:14:01Z"}}}],
            "containerStatuses": [container("app", &p.app_id), container("envoy", &p.envoy_id)]}),
        ),
        pod(
            [redis_name, "data", redis_uid],
            node,
            "127.0.0.2",
            false,
            "2026-11-20T08:00:00Z",
            json!({"containerStatuses": [container("redis", &"2".repeat(64))]}),
        ),
        // The node's address stands at 127.0.0.3: a host-network pod has it too, and must not name it.
        pod(
            ["kube-proxy-8xq4z", "kube-system", "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"],
            node,
            "127.0.0.3",
            true,
            "2026-11-19T00:00:00Z",
            json!({"containerStatuses": [container("kube-proxy", &"3".repeat(64))]}),
        ),
        // Another node's pod on the same address, newer and running: seen only without the selector.
        pod(
            ["elsewhere-0", "shop", "2d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f6a"],
            "some-other-node",
            "127.0.0.2",
            false,
            "2026-11-21T00:00:00Z",
            json!({}),
        ),
    ];
    let services = vec![service("kubernetes", "default", "10.96.0.1"), service("redis-headless", "data", "None")];
    (pods, services)
}

#[test]
fn names_from_the_api_survive_an_outage_and_follow_changes() {
    let pid = std::process::id();
    let node = format!("node-{pid}");
    let p = Pod0 {
        uid: format!("00000000-0000-4000-9000-{pid:012x}"),
        app_id: format!("aa{pid:062x}"),
        envoy_id: format!("bb{pid:062x}"),
    };
    let redis = Redis::start(free_local_port(), &["--bind", "127.0.0.1", "127.0.0.2", "127.0.0.3"]);
    let slice =
        format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice", p.uid.replace('-', "_"));
    let app_cg = format!("{slice}/cri-containerd-{}.scope", p.app_id);
    let envoy_cg = format!("{slice}/cri-containerd-{}.scope", p.envoy_id);
    // Declared in this order so that clients die first, then the leaf cgroups, then the pod's.
    let app_dir = KubeCgroup::create(&app_cg);
    let envoy_dir = KubeCgroup::create(&envoy_cg);
    let _clients = [
        client(&app_dir, "127.0.0.1", redis.port()),
        client(&app_dir, "127.0.0.3", redis.port()),
        client(&envoy_dir, "127.0.0.2", redis.port()),
    ];
    let (pods, services) = objects(&node, &p, ("redis-0", "3e4f5a6b-7c8d-4e9f-8a1b-2c3d4e5f6a7b"));
    let api = StandInApi::start(0, 100, pods, services);
    let port = api.port();
    let dir = TempDir::new("cmkube");
    let kubeconfig = api.kubeconfig(dir.path());
    let agent = agent(&["--kubernetes.kubeconfig", kubeconfig.to_str().unwrap(), "--kubernetes.node-name", &node]);

    let names = |s: &[Sample], cg: &str| {
        labels_of(s, WORKLOAD_INFO, &[("cgroup", cg)], &["namespace", "pod", "container", "pod_uid"])
    };
    let peer =
        |s: &[Sample], addr: &str| labels_of(s, PEER_INFO, &[("dst_addr", addr)], &["kind", "namespace", "name"]);
    let app = vec!["shop".to_string(), "web-6d4cf56db6-x7k2p".into(), "app".into(), p.uid.clone()];
    let envoy = vec!["shop".to_string(), "web-6d4cf56db6-x7k2p".into(), "envoy".into(), p.uid.clone()];
    let redis_0 = vec!["pod".to_string(), "data".into(), "redis-0".into()];
    let named = |s: &[Sample], peer_want: &[String]| -> Result<(), String> {
        let got = (names(s, &app_cg)?, names(s, &envoy_cg)?, peer(s, "127.0.0.2")?);
        if got == (app.clone(), envoy.clone(), peer_want.to_vec()) {
            Ok(())
        } else {
            Err(format!("workloads and peer: {got:?}"))
        }
    };
    let s = agent.wait_metrics(deadline(60), "pods named from the stand-in API", |s| {
        named(s, &redis_0)?;
        match (up(s, "pods"), up(s, "services")) {
            (Some(1.0), Some(1.0)) => Ok(s.to_vec()),
            got => Err(format!("connmon_kubernetes_up pods, services: {got:?}")),
        }
    });
    assert_eq!(sample_expect(&s, OBJECTS, &[("resource", "pods")]), 3.0, "this node's pods only");
    assert_eq!(sample_expect(&s, OBJECTS, &[("resource", "services")]), 2.0);
    let host = samples_matching(&s, PEER_INFO, &[("dst_addr", "127.0.0.3")]);
    assert!(host.is_empty(), "the host-network pod's (node's) address named a peer: {host:?}");
    let synced = sample_expect(&s, LAST_SYNC, &[("resource", "pods")]);

    // A Service added while the agent watches arrives as a watch event.
    api.apply(Kind::Services, service("redis", "data", "127.0.0.1"));
    agent.wait_metrics(deadline(30), "the Service from a watch event", |s| match peer(s, "127.0.0.1")?[..] {
        [ref k, ref ns, ref n] if k == "service" && ns == "data" && n == "redis" => Ok(()),
        ref got => Err(format!("{got:?}")),
    });
    let requests = api.requests();
    let pods_requests: Vec<&String> = requests.iter().filter(|r| r.starts_with("/api/v1/pods")).collect();
    assert!(!pods_requests.is_empty(), "no pods request: {requests:#?}");
    for r in &pods_requests {
        assert!(
            r.contains(&format!("fieldSelector=spec.nodeName={node}")),
            "pods request without this node's field selector: {r}"
        );
    }
    for kind in ["pods", "services"] {
        assert!(
            requests.iter().any(|r| r.starts_with(&format!("/api/v1/{kind}?")) && r.contains("watch=true")),
            "no {kind} watch: {requests:#?}"
        );
    }

    // Outage: names stay, up goes 0, scrapes stay quick, the failure is logged once per watch
    // however often it is retried.
    api.stop();
    let outage = Instant::now();
    let mut scrapes = 0;
    let mut down = false;
    while !down || outage.elapsed() < Duration::from_secs(6) {
        assert!(
            outage.elapsed() < Duration::from_secs(40),
            "connmon_kubernetes_up still not 0 after 40 s: {:?}",
            agent.samples().iter().filter(|x| x.name == UP).collect::<Vec<_>>()
        );
        let t = Instant::now();
        let s = agent.samples();
        let took = t.elapsed();
        assert!(took < QUICK, "a scrape during the outage took {took:?}");
        scrapes += 1;
        if let Err(e) = named(&s, &redis_0) {
            panic!("{:.1}s into the outage the names changed: {e}", outage.elapsed().as_secs_f64());
        }
        assert_eq!(peer(&s, "127.0.0.1").unwrap()[2], "redis");
        down = up(&s, "pods") == Some(0.0) && up(&s, "services") == Some(0.0);
        std::thread::sleep(Duration::from_millis(250)); // pacing the scrapes, not waiting on a condition
    }
    let log = agent.stderr();
    for kind in ["pods", "services"] {
        let lines = lines_with(&log, &[format!("kubernetes: {kind} watch failed")]);
        assert_eq!(lines.len(), 1, "{kind}: one warning for the outage, got {lines:#?}");
    }
    eprintln!("{scrapes} scrapes during a {:.1}s outage, each under {QUICK:?}", outage.elapsed().as_secs_f64());

    // The API returns with redis-0 replaced by redis-1 on the same IP; its resource versions are
    // newer than any the agent saw, so the watch from the old one gets 410 Gone and relists.
    let (pods, mut services) = objects(&node, &p, ("redis-1", "4f5a6b7c-8d9e-4f0a-9b1c-3d4e5f6a7b8c"));
    services.push(service("redis", "data", "127.0.0.1"));
    let api = StandInApi::start(port, 1000, pods, services);
    let redis_1 = vec!["pod".to_string(), "data".into(), "redis-1".into()];
    let s = agent.wait_metrics(deadline(60), "the changed pod after the API came back", |s| {
        named(s, &redis_1)?;
        match (up(s, "pods"), up(s, "services")) {
            (Some(1.0), Some(1.0)) => Ok(s.to_vec()),
            got => Err(format!("connmon_kubernetes_up pods, services: {got:?}")),
        }
    });
    assert!(
        sample_expect(&s, LAST_SYNC, &[("resource", "pods")]) > synced,
        "the relist did not move the last sync time"
    );
    assert_eq!(peer(&s, "127.0.0.1").unwrap(), ["service", "data", "redis"]);
    let log = agent.stderr();
    assert_eq!(lines_with(&log, &["kubernetes: pods watch recovered"]).len(), 1, "{log}");
    drop(api);
}

#[test]
fn a_bad_kubeconfig_is_one_line_and_everything_else_serves() {
    let dir = TempDir::new("cmkube");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, "apiVersion: v1\nkind: Config\nclusters: [ {name: x, cluster: {server: 42\n").unwrap();
    let agent = agent(&["--kubernetes.kubeconfig", path.to_str().unwrap(), "--kubernetes.node-name", "node-x"]);
    let s = agent.wait_metrics(deadline(30), "metrics without the API", |s| {
        if s.iter().any(|x| x.name == PROBE_UP) {
            Ok(s.to_vec())
        } else {
            Err("no connmon_probe_up".into())
        }
    });
    let log = agent.stderr();
    let lines = lines_with(&log, &["kubernetes:"]);
    assert_eq!(lines.len(), 1, "one line about the API: {lines:#?}");
    assert!(lines[0].contains(&format!("cannot use kubeconfig {}", path.display())), "{}", lines[0]);
    assert!(lines[0].contains("naming workloads by cgroup ids and comm"), "{}", lines[0]);
    // The watches never started: no health series claims otherwise.
    for r in ["pods", "services"] {
        assert_ne!(up(&s, r), Some(1.0));
    }
}

#[test]
fn without_the_api_attribution_falls_back_and_says_so_once() {
    let agent = agent(&[]);
    let s = agent.samples();
    assert!(
        s.iter().all(|x| !x.name.starts_with("connmon_kubernetes_") && x.name != PEER_INFO),
        "API series without an API"
    );
    let log = agent.stderr();
    let lines = lines_with(&log, &["kubernetes:"]);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("not in a cluster") && lines[0].contains("naming workloads by cgroup ids and comm"),
        "{}",
        lines[0]
    );

    // Asked for explicitly without a node name: a one-line error at start.
    let mut cmd = Command::new(connmon_bin());
    cmd.args(["run", "--web.listen-address", "127.0.0.1:0", "--kubernetes.enabled=true"])
        .env_remove("NODE_NAME")
        .env("RUST_LOG", "warn");
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without a node name: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--kubernetes.node-name") && err.contains("NODE_NAME"), "{err}");
}
