//! The kustomize base in deploy/kubernetes/ as the manifest tests see it: its constants (directory,
//! namespace, app label, metrics port, the Kubernetes version and the kinds kubernetes-validate has
//! no schemas for), its listed documents parsed with [`super::yaml`], and the Python tools that
//! judge it: `kubernetes-validate --strict` and PyYAML's reading of the same files.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use super::workspace::read;
use super::yaml::{parse_yaml, Yaml};

pub const DIR: &str = "deploy/kubernetes";
/// Newest Kubernetes whose schemas kubernetes-validate (1.37.0) bundles; `kubernetes-validate
/// --help` names its default, the newest.
pub const K8S_VERSION: &str = "1.37.0";
/// Kinds without a schema in kubernetes-validate that may appear (apiVersion, kind).
pub const UNVALIDATED_KINDS: &[(&str, &str)] =
    &[("monitoring.coreos.com/v1", "PodMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")];
pub const NAMESPACE: &str = "connmon";
pub const APP_LABEL: (&str, &str) = ("app.kubernetes.io/name", "connmon");
pub const METRICS_PORT: &str = "9977";

pub fn parse_file(rel: &str) -> Vec<Yaml> {
    parse_yaml(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

pub fn kustomization() -> Yaml {
    let docs = parse_file(&format!("{DIR}/kustomization.yaml"));
    assert_eq!(docs.len(), 1, "kustomization.yaml must be one document");
    docs.into_iter().next().unwrap()
}

/// The `resources:` of kustomization.yaml, in order.
pub fn listed_resources() -> Vec<String> {
    let k = kustomization();
    let items = k.seq_at("resources");
    assert!(!items.is_empty(), "kustomization.yaml lists no resources");
    items
        .iter()
        .map(|i| i.as_str().unwrap_or_else(|| panic!("resources: entry {i:?} is not a file name")).to_string())
        .collect()
}

/// Every document of every listed manifest, with its file name.
pub fn manifests() -> Vec<(String, Yaml)> {
    listed_resources()
        .into_iter()
        .flat_map(|file| parse_file(&format!("{DIR}/{file}")).into_iter().map(move |doc| (file.clone(), doc)))
        .collect()
}

/// The one document of this kind.
pub fn the(kind: &str) -> Yaml {
    let mut found: Vec<Yaml> =
        manifests().into_iter().filter(|(_, d)| d.str_at("kind") == Some(kind)).map(|(_, d)| d).collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind} in {DIR}");
    found.pop().unwrap()
}

pub fn python() -> Command {
    Command::new(std::env::var_os("PYTHON").unwrap_or_else(|| OsString::from("python3")))
}

pub fn output_of(mut cmd: Command, what: &str) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("running {what}: {e}; run `cargo xtask setup` (installs python3's kubernetes-validate) or set PYTHON")
    })
}

pub fn text_of(out: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs kubernetes-validate --strict on `files` (relative to `dir`) and checks its verdict: exit
/// status 0, no ERROR or FATAL, schemas missing only for [`UNVALIDATED_KINDS`], and every other
/// document reported as passed against [`K8S_VERSION`].
pub fn validate(dir: &Path, files: &[String], docs: &[(String, Yaml)]) {
    let mut cmd = python();
    cmd.args(["-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION]).args(files).current_dir(dir);
    let out = output_of(cmd, "python3 -m kubernetes_validate");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = text_of(&out);
    assert!(out.status.success(), "kubernetes-validate failed ({}):\n{report}", out.status);
    let minor = K8S_VERSION.rsplit_once('.').unwrap().0;
    let mut passed = BTreeSet::new();
    for line in stdout.lines() {
        assert!(!line.starts_with("ERROR") && !line.starts_with("FATAL"), "kubernetes-validate: {line}\n{report}");
        if let Some(rest) = line.strip_prefix("WARN ") {
            let allowed = UNVALIDATED_KINDS
                .iter()
                .any(|(api, kind)| rest.contains(&format!("kind {kind} with api version {api} ")));
            assert!(
                allowed,
                "kubernetes-validate has no schema for: {rest}\n(a mistyped apiVersion or kind? \
                 only {UNVALIDATED_KINDS:?} may go unvalidated)"
            );
        }
        if let Some(rest) = line.strip_prefix("INFO ") {
            // "<file> passed for resource <kind>/<name> against version <major.minor>"
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let [file, "passed", "for", "resource", resource, "against", "version", version] = words[..] {
                assert_eq!(version, minor, "validated against {version}, not {minor}: {line}");
                passed.insert((file.to_string(), resource.to_string()));
            }
        }
    }
    for (file, doc) in docs {
        let api = doc.str_at("apiVersion").unwrap_or_default();
        let kind = doc.str_at("kind").unwrap_or_default();
        if UNVALIDATED_KINDS.contains(&(api, kind)) {
            continue;
        }
        let resource = format!("{}/{}", kind.to_lowercase(), doc.str_at("metadata.name").unwrap_or_default());
        assert!(
            passed.contains(&(file.clone(), resource.clone())),
            "{file}: {resource} was not reported as passed\n{report}"
        );
    }
}

/// The YAML reader of [`super::yaml`] and PyYAML read `files` (in `dir`) alike.
pub fn assert_reads_like_pyyaml(dir: &Path, files: &[String]) {
    const SCRIPT: &str = r#"
import json, sys, yaml
def norm(x):
    if isinstance(x, dict):
        return {str(k): norm(v) for k, v in x.items()}
    if isinstance(x, list):
        return [norm(v) for v in x]
    if isinstance(x, bool):
        return "true" if x else "false"
    if x is None:
        return ""
    return str(x)
for name in sys.argv[1:]:
    with open(name) as f:
        docs = [norm(d) for d in yaml.safe_load_all(f) if d is not None]
    print(json.dumps(docs, ensure_ascii=False, separators=(",", ":")))
"#;
    let mut cmd = python();
    cmd.args(["-c", SCRIPT]).args(files).current_dir(dir);
    let out = output_of(cmd, "python3 (PyYAML)");
    assert!(out.status.success(), "PyYAML failed:\n{}", text_of(&out));
    let theirs = String::from_utf8(out.stdout).expect("UTF-8 JSON");
    let theirs: Vec<&str> = theirs.lines().collect();
    assert_eq!(theirs.len(), files.len());
    for (file, their_json) in files.iter().zip(theirs) {
        let path = dir.join(file);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let docs = parse_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut ours = String::from("[");
        for (i, doc) in docs.iter().enumerate() {
            if i > 0 {
                ours.push(',');
            }
            doc.to_json(&mut ours);
        }
        ours.push(']');
        assert_eq!(
            ours,
            their_json,
            "{}: this test's YAML reader (left) and PyYAML (right) read it differently; \
             YAML 1.1 turns yes/no/on/off into booleans and 0755 into 493: quote such values",
            path.display()
        );
    }
}

/// The container port named `port` (or a number), as a number.
pub fn container_port(container: &Yaml, port: &str) -> String {
    if port.chars().all(|c| c.is_ascii_digit()) {
        return port.to_string();
    }
    Yaml::named(container.seq_at("ports"), port)
        .and_then(|p| p.str_at("containerPort"))
        .unwrap_or_else(|| panic!("no container port named {port}"))
        .to_string()
}
