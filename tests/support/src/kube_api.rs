//! A stand-in for the Kubernetes API server (no cluster or kube-apiserver can run here): plain
//! HTTP on loopback serving `GET /api/v1/pods` and `/api/v1/services` as the real API does, as a
//! list (`PodList` with `metadata.resourceVersion`, items without kind) or, with `watch=true`, a
//! chunked stream of `{"type":"ADDED|MODIFIED|DELETED","object":…}` lines that replays the changes
//! after the `resourceVersion` asked for, follows new ones, and answers a version older than its
//! history with the `ERROR` event of a 410 Gone, as a compacted etcd does. `fieldSelector=
//! spec.nodeName=X` is honoured for pods. Every request target is recorded for the test to check.
//! `stop` closes the port and every open watch (an API outage); a new one can start on the same
//! port. The objects themselves are the caller's, in the real API's JSON shapes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Pods,
    Services,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Pods => "/api/v1/pods",
            Kind::Services => "/api/v1/services",
        }
    }

    fn list_kind(self) -> &'static str {
        match self {
            Kind::Pods => "PodList",
            Kind::Services => "ServiceList",
        }
    }

    fn object_kind(self) -> &'static str {
        match self {
            Kind::Pods => "Pod",
            Kind::Services => "Service",
        }
    }
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Oldest resourceVersion a watch may resume from.
    first_rv: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    /// (resourceVersion, kind, event type, object), oldest first.
    history: Vec<(u64, Kind, &'static str, Value)>,
    requests: Vec<String>,
}

struct Inner {
    state: Mutex<State>,
    changed: Condvar,
    stopped: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

pub struct StandInApi {
    addr: SocketAddr,
    inner: Arc<Inner>,
    accept: Option<JoinHandle<()>>,
}

fn key(obj: &Value) -> (String, String) {
    let m = &obj["metadata"];
    (m["namespace"].as_str().unwrap_or("").to_string(), m["name"].as_str().expect("object without a name").to_string())
}

impl StandInApi {
    /// Serves `pods` and `services` on 127.0.0.1:`port` (0: any), at resourceVersion
    /// `first_rv` (make it higher than any earlier server's, as etcd's only grow).
    pub fn start(port: u16, first_rv: u64, pods: Vec<Value>, services: Vec<Value>) -> StandInApi {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("stand-in API: bind 127.0.0.1:{port}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking listener");
        let addr = listener.local_addr().unwrap();
        let mut state = State { rv: first_rv, first_rv, ..State::default() };
        for (kind, list) in [(Kind::Pods, pods), (Kind::Services, services)] {
            for mut obj in list {
                obj["metadata"]["resourceVersion"] = json!(first_rv.to_string());
                let (ns, name) = key(&obj);
                state.objects.insert((kind, ns, name), obj);
            }
        }
        let inner = Arc::new(Inner {
            state: Mutex::new(state),
            changed: Condvar::new(),
            stopped: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let shared = Arc::clone(&inner);
        let accept = std::thread::spawn(move || {
            while !shared.stopped.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).expect("blocking stream");
                        shared.conns.lock().unwrap().push(stream.try_clone().expect("clone stream"));
                        let s = Arc::clone(&shared);
                        std::thread::spawn(move || serve(&s, stream));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => panic!("stand-in API: accept: {e}"),
                }
            }
        });
        StandInApi { addr, inner, accept: Some(accept) }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Adds or replaces an object: the next resourceVersion, an ADDED or MODIFIED event.
    pub fn apply(&self, kind: Kind, mut obj: Value) {
        let mut st = self.inner.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let (ns, name) = key(&obj);
        let ty = if st.objects.insert((kind, ns, name), obj.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        st.history.push((rv, kind, ty, obj));
        drop(st);
        self.inner.changed.notify_all();
    }

    /// Every request target so far, percent-decoded (`/api/v1/pods?fieldSelector=spec.nodeName=n…`).
    pub fn requests(&self) -> Vec<String> {
        self.inner.state.lock().unwrap().requests.clone()
    }

    /// A kubeconfig in `dir` that points at this server over plain HTTP, without credentials.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n\
             current-context: standin\nusers:\n- name: standin\n  user: {{}}\n",
            self.addr
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// An outage: the port closes and every open list or watch connection is cut.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.inner.stopped.store(true, Ordering::Release);
        self.inner.changed.notify_all();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for c in self.inner.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for StandInApi {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

fn respond(stream: &mut TcpStream, code: u16, body: &Value) {
    let text = body.to_string();
    let _ = write!(
        stream,
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        if code == 200 { "OK" } else { "Error" },
        text.len()
    );
}

/// One request per connection (each answer closes it).
fn serve(inner: &Inner, mut stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
    }
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params: BTreeMap<String, String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let decoded = percent_decode(&target);
    inner.state.lock().unwrap().requests.push(decoded);
    let Some(kind) = [Kind::Pods, Kind::Services].into_iter().find(|k| k.path() == path) else {
        respond(
            &mut stream,
            404,
            &status(404, "NotFound", &format!("the server could not find the requested resource ({path})")),
        );
        return;
    };
    let node = match params.get("fieldSelector").map(String::as_str) {
        None | Some("") => None,
        Some(sel) => match sel.strip_prefix("spec.nodeName=") {
            Some(node) if kind == Kind::Pods => Some(node.to_string()),
            _ => {
                respond(
                    &mut stream,
                    400,
                    &status(400, "BadRequest", &format!("unable to parse requested field selector {sel:?}")),
                );
                return;
            }
        },
    };
    let selected = |obj: &Value| node.as_deref().is_none_or(|n| obj["spec"]["nodeName"].as_str() == Some(n));
    if params.get("watch").map(String::as_str) == Some("true") {
        let from: u64 = params.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let timeout = Duration::from_secs(params.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(290));
        watch(inner, &mut stream, kind, from, timeout, &selected);
    } else {
        let st = inner.state.lock().unwrap();
        let items: Vec<Value> = st
            .objects
            .iter()
            .filter(|((k, _, _), obj)| *k == kind && selected(obj))
            .map(|(_, obj)| {
                // List items carry no kind or apiVersion; the list does.
                let mut item = obj.clone();
                let m = item.as_object_mut().unwrap();
                m.remove("kind");
                m.remove("apiVersion");
                item
            })
            .collect();
        let body = json!({"kind": kind.list_kind(), "apiVersion": "v1", "metadata": {"resourceVersion": st.rv.to_string()}, "items": items});
        drop(st);
        respond(&mut stream, 200, &body);
    }
}

fn watch(
    inner: &Inner,
    stream: &mut TcpStream,
    kind: Kind,
    from: u64,
    timeout: Duration,
    selected: &dyn Fn(&Value) -> bool,
) {
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let send = |stream: &mut TcpStream, event: &Value| {
        let line = format!("{event}\n");
        stream.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes()).and_then(|_| stream.flush()).is_ok()
    };
    let end = Instant::now() + timeout;
    let mut st = inner.state.lock().unwrap();
    if from < st.first_rv {
        let gone = status(410, "Expired", &format!("too old resource version: {from} ({})", st.first_rv));
        drop(st);
        send(stream, &json!({"type": "ERROR", "object": gone}));
        let _ = stream.write_all(b"0\r\n\r\n");
        return;
    }
    let mut seen = from;
    while !inner.stopped.load(Ordering::Acquire) && Instant::now() < end {
        let events: Vec<Value> = st
            .history
            .iter()
            .filter(|(rv, k, _, obj)| *rv > seen && *k == kind && selected(obj))
            .map(|(_, _, ty, obj)| {
                let mut obj = obj.clone();
                obj["kind"] = json!(kind.object_kind());
                obj["apiVersion"] = json!("v1");
                json!({"type": ty, "object": obj})
            })
            .collect();
        seen = st.rv;
        drop(st);
        for e in &events {
            if !send(stream, e) {
                return;
            }
        }
        st = inner.state.lock().unwrap();
        if st.rv == seen {
            st = inner.changed.wait_timeout(st, Duration::from_millis(100)).unwrap().0;
        }
    }
    drop(st);
    let _ = stream.write_all(b"0\r\n\r\n");
}
