//! Who a socket belongs to: cgroup ids and paths, what a cgroup path says about its container,
//! pod or systemd unit, and, when the Kubernetes API is used, the namespace, pod and container
//! names of this node's workloads and the pod or Service behind a destination address. The API
//! watch (`cluster`) is kept apart from the pure mapping of API objects (`cluster_map`).
pub mod cgroups;
pub mod cluster;
pub mod cluster_map;
pub mod workload;
