//! The Kubernetes manifests in deploy/kubernetes/ (a kustomize base) and the Dockerfile, checked
//! without a cluster or a Docker engine (neither runs here):
//! - every manifest passes `kubernetes-validate --strict` against the Kubernetes API schemas of
//!   [`K8S_VERSION`]; only the Prometheus operator's CRDs (PodMonitor, PrometheusRule), which it
//!   has no schemas for, may go unvalidated, so a mistyped apiVersion or kind still fails;
//! - the kustomization lists every manifest and renders: with `kubectl kustomize` (or
//!   `kustomize build`) when one is on PATH, which also applies the namespace and labels; else by
//!   concatenating the listed files, applying nothing (Debian 12 packages no kustomize, and the
//!   project installs no kubectl); the rendering passes kubernetes-validate too;
//! - the Dockerfile is one FROM scratch stage copying the binary `cargo xtask dist` writes
//!   (`cargo xtask image` builds it as it is, and tests/container.rs runs the result).
//!
//! What operators rely on in the DaemonSet, RBAC, Service and PodMonitor is checked in
//! manifests_security.rs.
//!
//! The manifests are read with a small YAML reader (block mappings and sequences, flow
//! sequences, quoted and block scalars: what these files use), checked against PyYAML's reading
//! of the same files, so the assertions see what Kubernetes would see.
//!
//! Needs python3 with kubernetes-validate (and its PyYAML): `cargo xtask setup` installs it;
//! `PYTHON=/path/to/python3` picks another interpreter. Does not need root.

use connmon_test_support as common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::process::Command;

use common::kube::*;
use common::workspace::{read, root};
use common::yaml::{parse_yaml, Yaml};

const CLUSTER_SCOPED_KINDS: &[&str] = &["Namespace", "ClusterRole", "ClusterRoleBinding"];

#[test]
fn yaml_reader_agrees_with_pyyaml() {
    let mut files: Vec<String> = fs::read_dir(root().join(DIR))
        .expect("deploy/kubernetes")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    files.sort();
    assert_reads_like_pyyaml(&root().join(DIR), &files);
}

#[test]
fn kustomization_lists_every_manifest() {
    let k = kustomization();
    assert_eq!(k.str_at("namespace"), Some(NAMESPACE), "kustomization namespace");
    // `labels: [{pairs: {...}, includeSelectors: true}]`, or the older `commonLabels: {...}`.
    let mut labels = BTreeMap::new();
    for entry in k.seq_at("labels") {
        assert_eq!(
            entry.str_at("includeSelectors"),
            Some("true"),
            "labels must reach the selectors too, as commonLabels did"
        );
        labels.extend(entry.at("pairs").map(Yaml::string_map).unwrap_or_default());
    }
    labels.extend(k.at("commonLabels").map(Yaml::string_map).unwrap_or_default());
    assert_eq!(labels.get(APP_LABEL.0), Some(&APP_LABEL.1), "kustomization labels: {labels:?}");

    let listed = listed_resources();
    let unique: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "a resource is listed twice: {listed:?}");
    let on_disk: BTreeSet<String> = fs::read_dir(root().join(DIR))
        .expect("deploy/kubernetes")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| (n.ends_with(".yaml") || n.ends_with(".yml")) && !n.starts_with("kustomization."))
        .collect();
    let listed: BTreeSet<String> = listed.into_iter().collect();
    assert_eq!(listed, on_disk, "kustomization.yaml resources (left) and the manifests in {DIR} (right) differ");
    for required in [
        "namespace.yaml",
        "serviceaccount.yaml",
        "clusterrole.yaml",
        "clusterrolebinding.yaml",
        "daemonset.yaml",
        "service.yaml",
        "podmonitor.yaml",
        "prometheusrule.yaml",
    ] {
        assert!(listed.contains(required), "{required} is not listed");
    }
}

#[test]
fn manifests_pass_kubernetes_validate_strict() {
    validate(&root().join(DIR), &listed_resources(), &manifests());
}

/// `kubectl kustomize` or `kustomize build` when either is on PATH (`KUBECTL` / `KUSTOMIZE` name
/// others); else the listed files concatenated, which applies neither namespace nor labels.
fn render() -> (String, &'static str) {
    let dir = root().join(DIR);
    let tools: [(&str, &str, &[&str], &'static str); 2] = [
        ("KUBECTL", "kubectl", &["kustomize"], "kubectl kustomize"),
        ("KUSTOMIZE", "kustomize", &["build"], "kustomize build"),
    ];
    for (env, default, args, how) in tools {
        let bin = std::env::var_os(env).unwrap_or_else(|| OsString::from(default));
        match Command::new(&bin).args(args).arg(&dir).output() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("running {how}: {e}"),
            Ok(out) => {
                assert!(out.status.success(), "{how} {DIR} failed ({}):\n{}", out.status, text_of(&out));
                let warnings = String::from_utf8_lossy(&out.stderr);
                if !warnings.trim().is_empty() {
                    eprintln!("{how} warned:\n{warnings}");
                }
                return (String::from_utf8(out.stdout).expect("UTF-8"), how);
            }
        }
    }
    eprintln!(
        "neither kubectl nor kustomize is installed: rendering by concatenating the listed \
         resources (no namespace or labels applied)"
    );
    let parts: Vec<String> = listed_resources().iter().map(|f| read(&format!("{DIR}/{f}"))).collect();
    (parts.join("\n---\n"), "concatenation")
}

#[test]
fn rendered_kustomization_validates() {
    let (rendered, how) = render();
    let docs = parse_yaml(&rendered).unwrap_or_else(|e| panic!("rendering ({how}): {e}"));
    let expected: usize = listed_resources().iter().map(|f| parse_file(&format!("{DIR}/{f}")).len()).sum();
    assert_eq!(docs.len(), expected, "documents rendered by {how}");
    let kustomized = how != "concatenation";
    for doc in &docs {
        let kind = doc.str_at("kind").unwrap_or_default();
        let name = doc.str_at("metadata.name").unwrap_or_default();
        let labels = doc.at("metadata.labels").map(Yaml::string_map).unwrap_or_default();
        assert_eq!(labels.get(APP_LABEL.0), Some(&APP_LABEL.1), "{kind}/{name} rendered by {how} lacks the app label");
        let namespace = doc.str_at("metadata.namespace");
        if CLUSTER_SCOPED_KINDS.contains(&kind) {
            assert_eq!(namespace, None, "{kind}/{name} is cluster-scoped");
        } else if kustomized {
            assert_eq!(namespace, Some(NAMESPACE), "{kind}/{name} rendered by {how}");
        } else if let Some(ns) = namespace {
            assert_eq!(ns, NAMESPACE, "{kind}/{name}");
        }
    }
    let file = format!("connmon-manifests-{}.yaml", std::process::id());
    let dir = std::env::temp_dir();
    fs::write(dir.join(&file), &rendered).expect("writing the rendering");
    assert_reads_like_pyyaml(&dir, std::slice::from_ref(&file));
    let tagged: Vec<(String, Yaml)> = docs.into_iter().map(|d| (file.clone(), d)).collect();
    validate(&dir, std::slice::from_ref(&file), &tagged);
    let _ = fs::remove_file(dir.join(&file));
    eprintln!("rendered with {how}: {} documents valid", tagged.len());
}

/// `[...]` JSON-array form of a Dockerfile instruction, as its strings.
fn exec_form(args: &str) -> Vec<String> {
    let inner = args.trim().strip_prefix('[').and_then(|a| a.strip_suffix(']'));
    let inner = inner.unwrap_or_else(|| panic!("not in exec (JSON array) form: {args}"));
    inner.split(',').map(|s| s.trim().trim_matches('"').to_string()).collect()
}

#[test]
fn dockerfile_uses_what_the_workspace_has() {
    let dockerfile = read("Dockerfile");
    // Instructions, with `\` continuations joined and comments dropped.
    let mut instructions: Vec<(String, String)> = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(&format!("{part} ")),
            None => {
                current.push_str(line);
                let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
                instructions.push((op.to_uppercase(), args.trim().to_string()));
                current.clear();
            }
        }
    }
    let all =
        |op: &str| -> Vec<&str> { instructions.iter().filter(|(o, _)| o == op).map(|(_, a)| a.as_str()).collect() };

    let from = all("FROM");
    assert_eq!(from, ["scratch"], "one stage: the static binary alone, nothing built or pulled");
    assert!(all("RUN").is_empty(), "FROM scratch has no shell to RUN with");

    // The binary is the one `cargo xtask dist` writes (xtask/src/dist.rs), copied in as it is.
    let copy = all("COPY");
    assert_eq!(copy, ["target/dist/connmon /usr/local/bin/connmon"], "the runtime stage copies only the binary");
    let dist = read("xtask/src/dist.rs");
    assert!(dist.contains("target_dir().join(\"dist\").join(\"connmon\")"), "xtask dist writes <target>/dist/connmon");
    assert!(read("xtask/src/main.rs").contains("Cmd::Dist =>"), "`cargo xtask dist` exists");
    assert!(read(".cargo/config.toml").contains("xtask = \"run --quiet --package xtask --\""));
    let monitor = read("monitor/Cargo.toml");
    assert!(monitor.contains("[package]\nname = \"connmon\"") && monitor.contains("[[bin]]\nname = \"connmon\""));

    let entrypoint = exec_form(all("ENTRYPOINT").last().expect("ENTRYPOINT"));
    assert_eq!(entrypoint, ["/usr/local/bin/connmon"]);
    assert_eq!(exec_form(all("CMD").last().expect("CMD")), ["run"]);
    let cli = <connmon::cli::Cli as clap::Parser>::try_parse_from(["connmon", "run"]).expect("`connmon run` exists");
    let connmon::cli::Command::Run(run) = cli.command else { panic!("`connmon run` parses as Run") };
    assert_eq!(all("EXPOSE"), [METRICS_PORT]);
    assert_eq!(run.listen_address, format!(":{METRICS_PORT}"), "the agent's default listen port is {METRICS_PORT}");
    assert_eq!(all("USER"), ["0"], "eBPF needs root");

    // The build context is that one file: everything else (sources, target/) stays out.
    let ignore = read(".dockerignore");
    let ignore: Vec<&str> = ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert_eq!(ignore, ["*", "!target/dist/connmon"], ".dockerignore sends only the binary");

    // The DaemonSet runs this image's `run` on the exposed port.
    let ds = the("DaemonSet");
    let c = &ds.seq_at("spec.template.spec.containers")[0];
    assert_eq!(c.strs_at("args").first(), Some(&"run"));
    assert_eq!(container_port(c, "metrics"), METRICS_PORT);
}

#[test]
fn yaml_reader_rejects_what_it_does_not_understand() {
    assert!(parse_yaml("a: 1\na: 2\n").is_err(), "duplicate key");
    assert!(parse_yaml("a:\n  b: 1\n   c: 2\n").is_err(), "bad indentation");
    assert!(parse_yaml("a: &x 1\n").is_err(), "anchor");
    assert!(parse_yaml("a: one\n  b: 2\n").is_err(), "mis-indented key");
    let folded = parse_yaml("a: one\n  two\n\n  three\nb: 'x\n  ''y'' # z'\n").unwrap();
    assert_eq!(folded[0].str_at("a"), Some("one two\nthree"));
    assert_eq!(folded[0].str_at("b"), Some("x 'y' # z"));
    let docs = parse_yaml("# c\na: \"x # y\" # z\nb:\n- 1\n- k: v\n  l: [p, 'q']\n---\nc: |\n  x\n\n  y\n").unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0].str_at("a"), Some("x # y"));
    assert_eq!(docs[0].seq_at("b")[1].strs_at("l"), ["p", "q"]);
    assert_eq!(docs[1].str_at("c"), Some("x\n\ny\n"));
}
