//! cgroup paths (from /proc/<pid>/cgroup and the cgroup2 tree): container runtime, container id,
//! pod UID, QoS class, systemd unit. Asserts: every field is empty or well-formed (ids are hex
//! and found in the path, UIDs are UUIDs found in the path, QoS and runtime from fixed
//! sets, a unit only outside pods), and the Kubernetes lookup of the result never panics.
#![no_main]

use connmon::attribution::{cluster_map::Names, workload::parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let w = parse(path);
    assert!(["", "containerd", "cri-o", "docker"].contains(&w.runtime.as_str()), "{w:?}");
    assert!(["", "guaranteed", "burstable", "besteffort"].contains(&w.qos_class.as_str()), "{w:?}");
    if !w.container_id.is_empty() {
        assert!(w.container_id.len() >= 32 && w.container_id.bytes().all(|b| b.is_ascii_hexdigit()), "{w:?}");
        assert!(path.contains(&w.container_id), "{w:?}");
    }
    if !w.pod_uid.is_empty() {
        let dashes = w.pod_uid.bytes().enumerate().filter(|&(_, b)| b == b'-').map(|(i, _)| i);
        assert!(w.pod_uid.len() == 36 && dashes.eq([8, 13, 18, 23]), "{w:?}");
        // The systemd driver writes the UID with underscores.
        assert!(path.replace('_', "-").contains(&w.pod_uid), "{w:?}");
    }
    if !w.unit.is_empty() {
        assert!(w.container_id.is_empty() && path.contains(&w.unit), "{w:?}");
        assert!(w.unit.ends_with(".service") || w.unit.ends_with(".scope"), "{w:?}");
    }
    assert_eq!(Names::default().workload(&w), Default::default());
});
