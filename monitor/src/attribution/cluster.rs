//! Optional enrichment from the Kubernetes API. This module owns the decision whether to use the
//! API at all (`--kubernetes.*` flags, the in-cluster environment), the client, and two watches
//! that run on a thread and runtime of their own: the pods of this node only (field selector
//! `spec.nodeName`) and every Service (for cluster IPs). Each watch feeds a kube-rs reflector
//! store, which keeps the last complete state through API outages; a failed watch is logged once
//! per change of state, retried with client-go's jittered exponential backoff, and relists when
//! it comes back. Scrapes read the stores synchronously through [`Cluster::view`] and never wait
//! on the API. What the cached objects mean (names of cgroups and addresses) is `cluster_map.rs`.
use std::{
    fmt::Debug,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::{
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        reflector::{self, store::Writer, Store},
        watcher::{self, DefaultBackoff},
    },
    Api, Client, Config, Resource,
};
use log::{debug, info, warn};
use serde::de::DeserializeOwned;

use crate::{
    attribution::cluster_map::Names,
    config::flags::{KubeArgs, KubeEnabled},
};

/// The `resource` label of the health series, in the order of [`Shared::health`].
pub const RESOURCES: [&str; 2] = ["pods", "services"];
const PODS: usize = 0;
const SERVICES: usize = 1;

/// Where the API's address and credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Kubeconfig(PathBuf),
    /// The service account of the pod (KUBERNETES_SERVICE_HOST and the mounted token).
    InCluster,
    /// `--kubernetes.enabled=true` elsewhere: KUBECONFIG, ~/.kube/config, then in-cluster.
    Infer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub node: String,
    pub source: Source,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not used; the reason is logged once.
    Off(&'static str),
    On(Settings),
}

/// Pure: whether and how to use the API. `in_cluster` is whether KUBERNETES_SERVICE_HOST is set.
/// A missing node name is an error: watching without the field selector would cache every pod
/// of the cluster on every node.
pub fn decide(args: &KubeArgs, in_cluster: bool) -> anyhow::Result<Decision> {
    let source = match (args.enabled, &args.kubeconfig) {
        (KubeEnabled::False, _) => return Ok(Decision::Off("turned off by --kubernetes.enabled=false")),
        (_, Some(path)) => Source::Kubeconfig(path.clone()),
        (_, None) if in_cluster => Source::InCluster,
        (KubeEnabled::Auto, None) => {
            return Ok(Decision::Off("not in a cluster (no KUBERNETES_SERVICE_HOST) and no --kubernetes.kubeconfig"))
        }
        (KubeEnabled::True, None) => Source::Infer,
    };
    match args.node_name.as_deref().map(str::trim) {
        Some(node) if !node.is_empty() => Ok(Decision::On(Settings { node: node.to_string(), source })),
        _ => anyhow::bail!(
            "the Kubernetes API is in use but the node name is unknown: set --kubernetes.node-name or NODE_NAME \
             (the DaemonSet sets it from spec.nodeName), or pass --kubernetes.enabled=false"
        ),
    }
}

/// One watch's state, as exported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Starting,
    Up,
    Down,
}

#[derive(Debug, Clone, Default)]
struct Health {
    phase: Phase,
    /// When the last complete list finished.
    last_sync: Option<SystemTime>,
}

/// What the watch thread and scrapes share.
#[derive(Debug, Default)]
struct Shared {
    /// Bumped on every change to a store, so scrapes rebuild the index only when needed.
    generation: AtomicU64,
    health: Mutex<[Health; 2]>,
}

impl Shared {
    fn health(&self) -> std::sync::MutexGuard<'_, [Health; 2]> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One resource's health in a [`View`].
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceView {
    pub resource: &'static str,
    pub up: bool,
    pub objects: usize,
    /// Unix time of the last complete list.
    pub last_sync: Option<f64>,
}

/// What a scrape needs: the names, and each watch's health.
#[derive(Debug, Clone)]
pub struct View {
    pub names: Arc<Names>,
    pub resources: Vec<ResourceView>,
}

/// The running enrichment: stores filled by the watch thread, read by scrapes.
pub struct Cluster {
    pods: Store<Pod>,
    services: Store<Service>,
    shared: Arc<Shared>,
    /// The index and the generation it was built at.
    index: Mutex<(u64, Arc<Names>)>,
}

impl Cluster {
    /// Starts the watches on a thread of their own and returns at once; nothing here waits on
    /// the API, and a client that cannot be built only leaves the stores empty (logged once).
    pub fn start(settings: Settings) -> Cluster {
        let (pods, pods_writer) = reflector::store::<Pod>();
        let (services, services_writer) = reflector::store::<Service>();
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new().name("kubernetes".into()).spawn(move || {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(run(settings, pods_writer, services_writer, thread_shared)),
                Err(e) => warn!("kubernetes: cannot start a runtime for the API watches: {e}; naming workloads by cgroup ids and comm"),
            }
        });
        if let Err(e) = spawned {
            warn!("kubernetes: cannot start the API watch thread: {e}; naming workloads by cgroup ids and comm");
        }
        Cluster { pods, services, shared, index: Mutex::new((u64::MAX, Arc::new(Names::default()))) }
    }

    /// The names as last cached, and the watches' health. Never waits on the API: it reads the
    /// stores (rebuilding the index only if they changed since the last call).
    pub fn view(&self) -> View {
        let generation = self.shared.generation.load(Ordering::Acquire);
        let names = {
            let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            if index.0 != generation {
                let pods = self.pods.state();
                let services = self.services.state();
                *index = (generation, Arc::new(Names::build(pods.iter().map(|p| &**p), services.iter().map(|s| &**s))));
            }
            Arc::clone(&index.1)
        };
        let health = self.shared.health().clone();
        let counts = [self.pods.len(), self.services.len()];
        let resources = RESOURCES
            .iter()
            .zip(health.iter().zip(counts))
            .map(|(resource, (h, objects))| ResourceView {
                resource,
                up: h.phase == Phase::Up,
                objects,
                last_sync: h
                    .last_sync
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs_f64()),
            })
            .collect();
        View { names, resources }
    }
}

async fn run(settings: Settings, pods: Writer<Pod>, services: Writer<Service>, shared: Arc<Shared>) {
    let client = match connect(&settings.source).await {
        Ok(c) => c,
        Err(e) => {
            warn!("kubernetes: {}; naming workloads by cgroup ids and comm", chain(e.as_ref()));
            return;
        }
    };
    info!("kubernetes: watching the pods of node {:?} and all services", settings.node);
    let node_pods = watcher::Config::default().fields(&format!("spec.nodeName={}", settings.node));
    tokio::join!(
        watch(
            Api::<Pod>::all(client.clone()),
            node_pods,
            pods,
            crate::attribution::cluster_map::slim_pod,
            PODS,
            &shared
        ),
        watch(
            Api::<Service>::all(client),
            watcher::Config::default(),
            services,
            crate::attribution::cluster_map::slim_service,
            SERVICES,
            &shared
        ),
    );
}

async fn connect(source: &Source) -> anyhow::Result<Client> {
    let config = match source {
        Source::Kubeconfig(path) => {
            let what = || format!("cannot use kubeconfig {}", path.display());
            let kc = Kubeconfig::read_from(path).with_context(what)?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.with_context(what)?
        }
        Source::InCluster => Config::incluster().context("cannot use the in-cluster service account")?,
        Source::Infer => Config::infer().await.context("cannot find the API (no kubeconfig and not in a cluster)")?,
    };
    Client::try_from(config).context("cannot build the API client")
}

/// Lists and watches one resource into its store, forever. An error ends the watcher: after a
/// backoff a new one relists, so the store is replaced only by a complete list (until then it
/// keeps the last known state). A 410 Gone (resource version compacted away) is not an outage:
/// the watcher relists by itself.
async fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    mut store: Writer<K>,
    slim: fn(&mut K),
    i: usize,
    shared: &Shared,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let what = RESOURCES[i];
    let mut backoff = DefaultBackoff::default();
    loop {
        let mut events = watcher::watcher(api.clone(), config.clone()).boxed();
        while let Some(item) = events.next().await {
            match item {
                Ok(event) => {
                    let event = event.modify(slim);
                    store.apply_watcher_event(&event);
                    shared.generation.fetch_add(1, Ordering::Release);
                    match event {
                        // Init is emitted before the list is requested, and pages of a list are
                        // not a complete state yet.
                        watcher::Event::Init | watcher::Event::InitApply(_) => {}
                        watcher::Event::InitDone => {
                            succeeded(shared, i, true, store.as_reader().len());
                            kube::runtime::utils::Backoff::reset(&mut backoff);
                        }
                        watcher::Event::Apply(_) | watcher::Event::Delete(_) => {
                            succeeded(shared, i, false, store.as_reader().len())
                        }
                    }
                }
                Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                    debug!("kubernetes: {what} watch expired ({}); relisting", status.message);
                }
                Err(e) => {
                    failed(shared, i, &e, store.as_reader().len());
                    break;
                }
            }
        }
        tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(30))).await;
    }
}

/// A list or watch event arrived; logs only a change of state.
fn succeeded(shared: &Shared, i: usize, listed: bool, objects: usize) {
    let what = RESOURCES[i];
    let mut health = shared.health();
    let h = &mut health[i];
    if listed {
        h.last_sync = Some(SystemTime::now());
    }
    match h.phase {
        Phase::Up => {}
        Phase::Starting => info!("kubernetes: {objects} {what} cached"),
        Phase::Down => info!("kubernetes: {what} watch recovered; {objects} {what} cached"),
    }
    h.phase = Phase::Up;
}

/// The watch failed; logs only a change of state (retries are silent).
fn failed(shared: &Shared, i: usize, e: &watcher::Error, objects: usize) {
    let what = RESOURCES[i];
    let mut health = shared.health();
    let h = &mut health[i];
    match h.phase {
        Phase::Down => debug!("kubernetes: {what} watch still failing: {}", chain(e)),
        Phase::Starting => warn!(
            "kubernetes: cannot list {what}: {}; retrying with backoff, names from the API missing until then",
            chain(e)
        ),
        Phase::Up => warn!(
            "kubernetes: {what} watch failed: {}; keeping the last known {objects} {what}, retrying with backoff",
            chain(e)
        ),
    }
    h.phase = Phase::Down;
}

/// An error and its sources on one line: the first line of each (a YAML parser's error goes on
/// with a snippet of the file, which may hold credentials), repeats left out.
fn chain(e: &dyn std::error::Error) -> String {
    let first = |e: &dyn std::error::Error| e.to_string().lines().next().unwrap_or("").trim().to_string();
    let mut text = first(e);
    let mut source = e.source();
    while let Some(s) = source {
        let next = first(s);
        if !next.is_empty() && !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(enabled: KubeEnabled, node: Option<&str>, kubeconfig: Option<&str>) -> KubeArgs {
        KubeArgs { enabled, node_name: node.map(String::from), kubeconfig: kubeconfig.map(PathBuf::from) }
    }

    #[test]
    fn auto_turns_on_in_a_cluster_or_with_a_kubeconfig() {
        use KubeEnabled::*;
        let on = |node: &str, source| Decision::On(Settings { node: node.into(), source });
        assert!(
            matches!(decide(&args(Auto, None, None), false).unwrap(), Decision::Off(why) if why.contains("not in a cluster"))
        );
        assert!(matches!(decide(&args(False, Some("n"), Some("/k")), true).unwrap(), Decision::Off(_)));
        assert_eq!(decide(&args(Auto, Some("n1"), None), true).unwrap(), on("n1", Source::InCluster));
        assert_eq!(
            decide(&args(Auto, Some("n1"), Some("/k")), false).unwrap(),
            on("n1", Source::Kubeconfig("/k".into()))
        );
        assert_eq!(decide(&args(True, Some("n1"), None), false).unwrap(), on("n1", Source::Infer));
        assert_eq!(decide(&args(True, Some("n1"), None), true).unwrap(), on("n1", Source::InCluster));
    }

    #[test]
    fn the_node_name_is_required_when_on() {
        use KubeEnabled::*;
        for (a, in_cluster) in [
            (args(Auto, None, None), true),
            (args(True, Some(" "), None), false),
            (args(Auto, None, Some("/k")), false),
        ] {
            let err = decide(&a, in_cluster).unwrap_err().to_string();
            assert!(
                err.contains("--kubernetes.node-name") && err.contains("NODE_NAME") && !err.contains('\n'),
                "{err}"
            );
        }
    }

    #[test]
    fn errors_read_as_one_line_with_their_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = anyhow::Error::new(io).context("client error (Connect)");
        let text = chain(e.as_ref());
        assert_eq!(text, "client error (Connect): connection refused");
        let yaml =
            anyhow::anyhow!("error: line 3 column 32: unclosed bracket '{{'\n --> <input>:3:32\n 3 | token: s3cret")
                .context("cannot use kubeconfig /k");
        assert_eq!(chain(yaml.as_ref()), "cannot use kubeconfig /k: error: line 3 column 32: unclosed bracket '{'");
    }
}
