//! The Kubernetes manifests in deploy/kubernetes/ (a kustomize base) and the Dockerfile, checked
//! without a cluster or a Docker engine (neither runs here):
//! - every manifest passes `kubernetes-validate --strict` against the Kubernetes API schemas of
//!   [`K8S_VERSION`]; only the Prometheus operator's CRDs (PodMonitor, PrometheusRule), which it
//!   has no schemas for, may go unvalidated, so a mistyped apiVersion or kind still fails;
//! - the kustomization lists every manifest and renders: with `kubectl kustomize` (or
//!   `kustomize build`) when one is on PATH, which also applies the namespace and labels; else by
//!   concatenating the listed files, applying nothing (Debian 12 packages no kustomize, and the
//!   project installs no kubectl); the rendering passes kubernetes-validate too;
//! - what operators rely on: the DaemonSet is not privileged, drops ALL capabilities and adds
//!   exactly the README's set, has a read-only root filesystem, the host's PID namespace, liveness
//!   on /healthz and readiness on /readyz at the metrics port, NODE_NAME from spec.nodeName,
//!   resources, read-only host mounts; the ClusterRole only reads pods; the Service, PodMonitor
//!   and probes agree on the port;
//! - the Dockerfile names only paths and commands that exist in the workspace.
//!
//! The manifests are read with a small YAML reader (block mappings and sequences, flow
//! sequences, quoted and block scalars: what these files use), checked against PyYAML's reading
//! of the same files, so the assertions see what Kubernetes would see.
//!
//! Needs python3 with kubernetes-validate (and its PyYAML): `cargo xtask setup` installs it;
//! `PYTHON=/path/to/python3` picks another interpreter. Does not need root.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DIR: &str = "deploy/kubernetes";
/// Newest Kubernetes whose schemas kubernetes-validate (1.37.0) bundles; `kubernetes-validate
/// --help` names its default, the newest.
const K8S_VERSION: &str = "1.37.0";
/// Kinds without a schema in kubernetes-validate that may appear (apiVersion, kind).
const UNVALIDATED_KINDS: &[(&str, &str)] = &[
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
];
const CLUSTER_SCOPED_KINDS: &[&str] = &["Namespace", "ClusterRole", "ClusterRoleBinding"];
const NAMESPACE: &str = "connmon";
const APP_LABEL: (&str, &str) = ("app.kubernetes.io/name", "connmon");
const METRICS_PORT: &str = "9977";
/// The README's "Requirements" capabilities (without the CAP_ prefix, as Kubernetes spells them).
const CAPABILITIES: &[&str] = &[
    "BPF",
    "PERFMON",
    "NET_ADMIN",
    "SYS_ADMIN",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
    "SYS_RESOURCE",
];
/// Host paths the DaemonSet mounts (read-only, at the same path), and which need mounts made on
/// the host later to show up (HostToContainer propagation).
const HOST_MOUNTS: &[(&str, bool)] = &[
    ("/sys/kernel/btf", false),
    ("/sys/kernel/tracing", true),
    ("/sys/fs/cgroup", false),
    ("/run/netns", true),
];

// ---------------------------------------------------------------------------------------------
// A small YAML reader: enough for Kubernetes manifests, and strict about what it does not know.

#[derive(Debug, Clone, PartialEq)]
enum Yaml {
    Map(Vec<(String, Yaml)>),
    Seq(Vec<Yaml>),
    /// Every scalar, as text: `true`, `9977` and `"9977"` alike. Null (empty, `~`, `null`) is "".
    Str(String),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Dotted path of map keys (keys with dots in them need `get`).
    fn at(&self, path: &str) -> Option<&Yaml> {
        path.split('.').try_fold(self, |y, key| y.get(key))
    }

    fn str_at(&self, path: &str) -> Option<&str> {
        self.at(path).and_then(Yaml::as_str)
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Yaml::Str(s) => Some(s),
            _ => None,
        }
    }

    fn items(&self) -> &[Yaml] {
        match self {
            Yaml::Seq(items) => items,
            _ => &[],
        }
    }

    fn seq_at(&self, path: &str) -> &[Yaml] {
        self.at(path).map(Yaml::items).unwrap_or(&[])
    }

    /// The scalars of a sequence.
    fn strs_at(&self, path: &str) -> Vec<&str> {
        self.seq_at(path).iter().filter_map(Yaml::as_str).collect()
    }

    /// The item of a sequence whose `name` is `name`.
    fn named<'a>(items: &'a [Yaml], name: &str) -> Option<&'a Yaml> {
        items.iter().find(|i| i.str_at("name") == Some(name))
    }

    fn string_map(&self) -> BTreeMap<&str, &str> {
        match self {
            Yaml::Map(entries) => entries
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
                .collect(),
            _ => BTreeMap::new(),
        }
    }

    /// Compact JSON, every scalar a string (as `pyyaml_json` prints PyYAML's reading).
    fn to_json(&self, out: &mut String) {
        match self {
            Yaml::Str(s) => json_string(s, out),
            Yaml::Seq(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.to_json(out);
                }
                out.push(']');
            }
            Yaml::Map(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    json_string(k, out);
                    out.push(':');
                    v.to_json(out);
                }
                out.push('}');
            }
        }
    }
}

/// Like Python's json.dumps(ensure_ascii=False).
fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The text of a line without its comment and trailing blanks (a `#` starts a comment at the
/// start of the line or after a blank, outside quotes).
fn strip_comment(line: &str) -> &str {
    let (mut single, mut double, mut prev_blank) = (false, false, true);
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev_blank => return line[..i].trim_end(),
            _ => {}
        }
        prev_blank = c == ' ' || c == '\t';
    }
    line.trim_end()
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_seq_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// `key: rest` (rest may be empty) if `text` is a mapping entry.
fn split_key(text: &str) -> Option<(String, &str)> {
    if text.starts_with('"') || text.starts_with('\'') {
        let quote = text.chars().next()?;
        let end = text[1..].find(quote)? + 1;
        let after = text[end + 1..].strip_prefix(':')?;
        if !(after.is_empty() || after.starts_with(' ')) {
            return None;
        }
        return Some((text[1..end].to_string(), after.trim()));
    }
    if text.starts_with(['[', '{', '|', '>']) {
        return None;
    }
    let colon = text
        .char_indices()
        .find(|&(i, c)| c == ':' && (i + 1 == text.len() || text[i + 1..].starts_with(' ')))?
        .0;
    Some((text[..colon].trim().to_string(), text[colon + 1..].trim()))
}

struct YamlReader {
    lines: Vec<String>,
    pos: usize,
}

impl YamlReader {
    fn err<T>(&self, msg: impl AsRef<str>) -> Result<T, String> {
        Err(format!("line {}: {}", self.pos + 1, msg.as_ref()))
    }

    /// (indent, text without comment) of the next line that has content.
    fn peek(&mut self) -> Result<Option<(usize, String)>, String> {
        while self.pos < self.lines.len() {
            let line = &self.lines[self.pos];
            if line.contains('\t') && line.trim_start().starts_with('\t') {
                return self.err("tab in indentation");
            }
            let text = strip_comment(line);
            if !text.trim().is_empty() {
                return Ok(Some((indent_of(text), text.trim_start().to_string())));
            }
            self.pos += 1;
        }
        Ok(None)
    }

    fn node(&mut self, min_indent: usize) -> Result<Yaml, String> {
        match self.peek()? {
            Some((indent, text)) if indent >= min_indent => {
                if is_seq_item(&text) {
                    self.seq(indent)
                } else {
                    self.map(indent)
                }
            }
            _ => Ok(Yaml::Str(String::new())),
        }
    }

    fn map(&mut self, indent: usize) -> Result<Yaml, String> {
        let mut entries: Vec<(String, Yaml)> = Vec::new();
        while let Some((i, text)) = self.peek()? {
            if i < indent || (i == indent && is_seq_item(&text)) {
                break;
            }
            if i > indent {
                return self.err(format!("unexpected indentation: {text:?}"));
            }
            let Some((key, rest)) = split_key(&text) else {
                return self.err(format!("expected `key: value`, found {text:?}"));
            };
            if entries.iter().any(|(k, _)| *k == key) {
                return self.err(format!("duplicate key {key:?}"));
            }
            let rest = rest.to_string();
            self.pos += 1;
            let value = if rest.is_empty() {
                match self.peek()? {
                    Some((j, _)) if j > indent => self.node(j)?,
                    Some((j, t)) if j == indent && is_seq_item(&t) => self.seq(indent)?,
                    _ => Yaml::Str(String::new()),
                }
            } else {
                self.value(indent, rest)?
            };
            entries.push((key, value));
        }
        Ok(Yaml::Map(entries))
    }

    fn seq(&mut self, indent: usize) -> Result<Yaml, String> {
        let mut items = Vec::new();
        while let Some((i, text)) = self.peek()? {
            if i != indent || !is_seq_item(&text) {
                if i > indent {
                    return self.err(format!("unexpected indentation: {text:?}"));
                }
                break;
            }
            let rest = text[1..].trim_start();
            let column = indent + (text.len() - rest.len());
            if rest.is_empty() {
                self.pos += 1;
                items.push(match self.peek()? {
                    Some((j, _)) if j > indent => self.node(j)?,
                    _ => Yaml::Str(String::new()),
                });
            } else if split_key(rest).is_some() {
                // `- key: value`: a mapping whose first entry starts on this line.
                self.lines[self.pos] = format!("{}{}", " ".repeat(column), rest);
                items.push(self.map(column)?);
            } else if is_seq_item(rest) {
                return self.err("nested `- -` sequences are not supported");
            } else {
                let rest = rest.to_string();
                self.pos += 1;
                items.push(self.value(indent, rest)?);
            }
        }
        Ok(Yaml::Seq(items))
    }

    /// The value that starts with `first` (the rest of the line just consumed) under a key or
    /// `-` at `indent`: a block scalar, a flow sequence, or a quoted or plain scalar, which may
    /// continue on the following lines (as kustomize writes long strings).
    fn value(&mut self, indent: usize, first: String) -> Result<Yaml, String> {
        if is_block_header(&first) {
            return self.block_scalar(indent, &first);
        }
        if first.starts_with(['[', '{']) {
            let value = self.inline(&first)?;
            self.no_continuation(indent)?;
            return Ok(value);
        }
        if first.starts_with(['"', '\'']) {
            // Continuation lines are raw text up to the closing quote (a # there is no comment).
            let mut lines = vec![first];
            let mut text = fold_flow(&lines);
            while closing_quote(&text).is_none() {
                let Some(line) = self.lines.get(self.pos) else {
                    return self.err("unterminated quoted scalar");
                };
                if line.trim_end().ends_with('\\') {
                    return self.err("escaped line breaks are not supported");
                }
                lines.push(line.trim().to_string());
                self.pos += 1;
                text = fold_flow(&lines);
            }
            let end = closing_quote(&text).unwrap();
            let after = text[end + 1..].trim_start();
            if !(after.is_empty() || after.starts_with('#')) {
                return self.err(format!("text after a quoted scalar: {after:?}"));
            }
            let value = self.scalar(&text[..=end])?;
            self.no_continuation(indent)?;
            return Ok(Yaml::Str(value));
        }
        // A plain scalar: deeper-indented lines continue it (not keys or items: those would be
        // mis-indented structure, which YAML would reject or read differently).
        let mut lines = vec![first];
        while let Some(line) = self.lines.get(self.pos) {
            let text = strip_comment(line);
            if !text.trim().is_empty() && indent_of(text) <= indent {
                break;
            }
            let text = text.trim().to_string();
            if split_key(&text).is_some() || is_seq_item(&text) {
                return self.err(format!("mis-indented {text:?}"));
            }
            lines.push(text);
            self.pos += 1;
        }
        Ok(Yaml::Str(self.scalar(&fold_flow(&lines))?))
    }

    /// After a one-line value, nothing may be indented deeper.
    fn no_continuation(&mut self, indent: usize) -> Result<(), String> {
        match self.peek()? {
            Some((j, text)) if j > indent => {
                self.err(format!("unsupported continuation line {text:?}"))
            }
            _ => Ok(()),
        }
    }

    fn inline(&self, text: &str) -> Result<Yaml, String> {
        if let Some(inner) = text.strip_prefix('[') {
            let Some(inner) = inner.strip_suffix(']') else {
                return self.err(format!("unterminated flow sequence {text:?}"));
            };
            if inner.trim().is_empty() {
                return Ok(Yaml::Seq(Vec::new()));
            }
            if inner.contains(['[', '{']) {
                return self.err(format!(
                    "nested flow collections are not supported: {text:?}"
                ));
            }
            let mut items = Vec::new();
            let (mut start, mut single, mut double) = (0, false, false);
            for (i, c) in inner.char_indices().chain([(inner.len(), ',')]) {
                match c {
                    '\'' if !double => single = !single,
                    '"' if !single => double = !double,
                    ',' if !single && !double => {
                        items.push(Yaml::Str(self.scalar(inner[start..i].trim())?));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            return Ok(Yaml::Seq(items));
        }
        if text.starts_with('{') {
            if text.replace(' ', "") == "{}" {
                return Ok(Yaml::Map(Vec::new()));
            }
            return self.err(format!("flow mappings are not supported: {text:?}"));
        }
        Ok(Yaml::Str(self.scalar(text)?))
    }

    fn scalar(&self, text: &str) -> Result<String, String> {
        if let Some(body) = text.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = body.chars();
            while let Some(c) = chars.next() {
                match c {
                    '"' => {
                        return if chars.as_str().is_empty() {
                            Ok(out)
                        } else {
                            self.err(format!("text after a quoted scalar: {text:?}"))
                        }
                    }
                    '\\' => match chars.next() {
                        Some('n') => out.push('\n'),
                        Some('t') => out.push('\t'),
                        Some('"') => out.push('"'),
                        Some('\\') => out.push('\\'),
                        Some('/') => out.push('/'),
                        other => return self.err(format!("unsupported escape \\{other:?}")),
                    },
                    c => out.push(c),
                }
            }
            return self.err(format!("unterminated quoted scalar {text:?}"));
        }
        if let Some(body) = text.strip_prefix('\'') {
            let Some(body) = body.strip_suffix('\'') else {
                return self.err(format!("unterminated quoted scalar {text:?}"));
            };
            if body.replace("''", "").contains('\'') {
                return self.err(format!("text after a quoted scalar: {text:?}"));
            }
            return Ok(body.replace("''", "'"));
        }
        if text.starts_with(['&', '*', '!', '@', '`', '%']) {
            return self.err(format!(
                "anchors, aliases, tags and reserved indicators are not supported: {text:?}"
            ));
        }
        Ok(match text {
            "~" | "null" | "Null" | "NULL" => String::new(),
            _ => text.to_string(),
        })
    }

    /// `|`, `>` with an optional chomping indicator; the lines indented deeper than `indent`.
    fn block_scalar(&mut self, indent: usize, header: &str) -> Result<Yaml, String> {
        let mut raw = Vec::new();
        while self.pos < self.lines.len() {
            let line = &self.lines[self.pos];
            if !line.trim().is_empty() && indent_of(line) <= indent {
                break;
            }
            raw.push(line.trim_end().to_string());
            self.pos += 1;
        }
        let content_indent = raw
            .iter()
            .find(|l| !l.is_empty())
            .map(|l| indent_of(l))
            .unwrap_or(0);
        let mut lines = Vec::new();
        for line in &raw {
            if line.is_empty() {
                lines.push(String::new());
            } else if indent_of(line) < content_indent {
                return self.err("block scalar line indented less than its first line");
            } else {
                lines.push(line[content_indent..].to_string());
            }
        }
        let trailing = lines.iter().rev().take_while(|l| l.is_empty()).count();
        lines.truncate(lines.len() - trailing);
        let mut text = if header.starts_with('|') {
            lines.join("\n")
        } else {
            fold(&lines)
        };
        match header.chars().nth(1) {
            _ if lines.is_empty() => {}
            Some('-') => {}
            Some('+') => text.push_str(&"\n".repeat(trailing + 1)),
            _ => text.push('\n'),
        }
        Ok(Yaml::Str(text))
    }
}

/// Byte index of the quote that closes the quoted scalar `text` starts with.
fn closing_quote(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let quote = *bytes.first()?;
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quote == b'"' => i += 2,
            b if b == quote => {
                if quote == b'\'' && bytes.get(i + 1) == Some(&b'\'') {
                    i += 2;
                } else {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// YAML line folding of a multi-line quoted or plain scalar (lines trimmed): single breaks
/// become spaces, each blank line a newline; trailing blank lines are not part of it.
fn fold_flow(lines: &[String]) -> String {
    let mut out = String::new();
    let (mut first, mut blanks) = (true, 0);
    for line in lines {
        if line.is_empty() {
            blanks += 1;
            continue;
        }
        if !first {
            if blanks == 0 {
                out.push(' ');
            } else {
                out.push_str(&"\n".repeat(blanks));
            }
        }
        out.push_str(line);
        (first, blanks) = (false, 0);
    }
    out
}

fn is_block_header(text: &str) -> bool {
    matches!(text, "|" | "|-" | "|+" | ">" | ">-" | ">+")
}

/// YAML line folding of a `>` scalar's lines (content indentation removed, no trailing blanks).
fn fold(lines: &[String]) -> String {
    let mut out = String::new();
    let (mut first, mut blanks, mut prev_more) = (true, 0, false);
    for line in lines {
        if line.is_empty() {
            blanks += 1;
            continue;
        }
        let more = line.starts_with([' ', '\t']);
        if first {
            out.push_str(&"\n".repeat(blanks));
        } else if blanks == 0 {
            out.push(if more || prev_more { '\n' } else { ' ' });
        } else {
            if more || prev_more {
                out.push('\n');
            }
            out.push_str(&"\n".repeat(blanks));
        }
        out.push_str(line);
        (first, blanks, prev_more) = (false, 0, more);
    }
    out
}

/// The documents of a YAML stream (`---` separated; empty documents dropped).
fn parse_yaml(text: &str) -> Result<Vec<Yaml>, String> {
    let mut docs = Vec::new();
    let mut chunks: Vec<Vec<String>> = vec![Vec::new()];
    for line in text.lines() {
        if line == "---" || line.starts_with("--- ") {
            chunks.push(Vec::new());
        } else {
            chunks.last_mut().unwrap().push(line.to_string());
        }
    }
    let mut first_line = 0;
    for chunk in chunks {
        let len = chunk.len();
        let mut reader = YamlReader {
            lines: chunk,
            pos: 0,
        };
        let wrap = |e: String| format!("document at line {}: {e}", first_line + 1);
        if reader.peek().map_err(wrap)?.is_some() {
            let doc = reader.node(0).map_err(wrap)?;
            if let Some((_, text)) = reader.peek().map_err(wrap)? {
                return Err(wrap(format!(
                    "line {}: unexpected {text:?}",
                    reader.pos + 1
                )));
            }
            docs.push(doc);
        }
        first_line += len + 1;
    }
    Ok(docs)
}

// ---------------------------------------------------------------------------------------------
// Files and tools.

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn parse_file(rel: &str) -> Vec<Yaml> {
    parse_yaml(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn kustomization() -> Yaml {
    let docs = parse_file(&format!("{DIR}/kustomization.yaml"));
    assert_eq!(docs.len(), 1, "kustomization.yaml must be one document");
    docs.into_iter().next().unwrap()
}

/// The `resources:` of kustomization.yaml, in order.
fn listed_resources() -> Vec<String> {
    let k = kustomization();
    let items = k.seq_at("resources");
    assert!(!items.is_empty(), "kustomization.yaml lists no resources");
    items
        .iter()
        .map(|i| {
            i.as_str()
                .unwrap_or_else(|| panic!("resources: entry {i:?} is not a file name"))
                .to_string()
        })
        .collect()
}

/// Every document of every listed manifest, with its file name.
fn manifests() -> Vec<(String, Yaml)> {
    listed_resources()
        .into_iter()
        .flat_map(|file| {
            parse_file(&format!("{DIR}/{file}"))
                .into_iter()
                .map(move |doc| (file.clone(), doc))
        })
        .collect()
}

/// The one document of this kind.
fn the(kind: &str) -> Yaml {
    let mut found: Vec<Yaml> = manifests()
        .into_iter()
        .filter(|(_, d)| d.str_at("kind") == Some(kind))
        .map(|(_, d)| d)
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind} in {DIR}");
    found.pop().unwrap()
}

fn python() -> Command {
    Command::new(std::env::var_os("PYTHON").unwrap_or_else(|| OsString::from("python3")))
}

fn output_of(mut cmd: Command, what: &str) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("running {what}: {e}; run `cargo xtask setup` (installs python3's kubernetes-validate) or set PYTHON")
    })
}

fn text_of(out: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs kubernetes-validate --strict on `files` (relative to `dir`) and checks its verdict: exit
/// status 0, no ERROR or FATAL, schemas missing only for [`UNVALIDATED_KINDS`], and every other
/// document reported as passed against [`K8S_VERSION`].
fn validate(dir: &Path, files: &[String], docs: &[(String, Yaml)]) {
    let mut cmd = python();
    cmd.args(["-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION])
        .args(files)
        .current_dir(dir);
    let out = output_of(cmd, "python3 -m kubernetes_validate");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = text_of(&out);
    assert!(
        out.status.success(),
        "kubernetes-validate failed ({}):\n{report}",
        out.status
    );
    let minor = K8S_VERSION.rsplit_once('.').unwrap().0;
    let mut passed = BTreeSet::new();
    for line in stdout.lines() {
        assert!(
            !line.starts_with("ERROR") && !line.starts_with("FATAL"),
            "kubernetes-validate: {line}\n{report}"
        );
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
            if let [file, "passed", "for", "resource", resource, "against", "version", version] =
                words[..]
            {
                assert_eq!(
                    version, minor,
                    "validated against {version}, not {minor}: {line}"
                );
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
        let resource = format!(
            "{}/{}",
            kind.to_lowercase(),
            doc.str_at("metadata.name").unwrap_or_default()
        );
        assert!(
            passed.contains(&(file.clone(), resource.clone())),
            "{file}: {resource} was not reported as passed\n{report}"
        );
    }
}

/// Kubernetes memory quantity in bytes (binary and decimal suffixes).
fn bytes(quantity: &str) -> u64 {
    let suffixes: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
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

// ---------------------------------------------------------------------------------------------
// Tests.

/// This test's YAML reader and PyYAML read `files` (in `dir`) alike.
fn assert_reads_like_pyyaml(dir: &Path, files: &[String]) {
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
    assert_eq!(
        k.str_at("namespace"),
        Some(NAMESPACE),
        "kustomization namespace"
    );
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
    labels.extend(
        k.at("commonLabels")
            .map(Yaml::string_map)
            .unwrap_or_default(),
    );
    assert_eq!(
        labels.get(APP_LABEL.0),
        Some(&APP_LABEL.1),
        "kustomization labels: {labels:?}"
    );

    let listed = listed_resources();
    let unique: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(
        unique.len(),
        listed.len(),
        "a resource is listed twice: {listed:?}"
    );
    let on_disk: BTreeSet<String> = fs::read_dir(root().join(DIR))
        .expect("deploy/kubernetes")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            (n.ends_with(".yaml") || n.ends_with(".yml")) && !n.starts_with("kustomization.")
        })
        .collect();
    let listed: BTreeSet<String> = listed.into_iter().collect();
    assert_eq!(
        listed, on_disk,
        "kustomization.yaml resources (left) and the manifests in {DIR} (right) differ"
    );
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
                assert!(
                    out.status.success(),
                    "{how} {DIR} failed ({}):\n{}",
                    out.status,
                    text_of(&out)
                );
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
    let parts: Vec<String> = listed_resources()
        .iter()
        .map(|f| read(&format!("{DIR}/{f}")))
        .collect();
    (parts.join("\n---\n"), "concatenation")
}

#[test]
fn rendered_kustomization_validates() {
    let (rendered, how) = render();
    let docs = parse_yaml(&rendered).unwrap_or_else(|e| panic!("rendering ({how}): {e}"));
    let expected: usize = listed_resources()
        .iter()
        .map(|f| parse_file(&format!("{DIR}/{f}")).len())
        .sum();
    assert_eq!(docs.len(), expected, "documents rendered by {how}");
    let kustomized = how != "concatenation";
    for doc in &docs {
        let kind = doc.str_at("kind").unwrap_or_default();
        let name = doc.str_at("metadata.name").unwrap_or_default();
        let labels = doc
            .at("metadata.labels")
            .map(Yaml::string_map)
            .unwrap_or_default();
        assert_eq!(
            labels.get(APP_LABEL.0),
            Some(&APP_LABEL.1),
            "{kind}/{name} rendered by {how} lacks the app label"
        );
        let namespace = doc.str_at("metadata.namespace");
        if CLUSTER_SCOPED_KINDS.contains(&kind) {
            assert_eq!(namespace, None, "{kind}/{name} is cluster-scoped");
        } else if kustomized {
            assert_eq!(
                namespace,
                Some(NAMESPACE),
                "{kind}/{name} rendered by {how}"
            );
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

#[test]
fn namespace_admits_privileged_pods() {
    let ns = the("Namespace");
    assert_eq!(ns.str_at("metadata.name"), Some(NAMESPACE));
    let labels = ns
        .at("metadata.labels")
        .map(Yaml::string_map)
        .unwrap_or_default();
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
    assert!(
        pod.at("initContainers").is_none(),
        "no init containers expected"
    );

    assert_eq!(
        pod.str_at("hostPID"),
        Some("true"),
        "the agent reads every process's /proc"
    );
    let sc = c.at("securityContext").expect("container securityContext");
    assert_ne!(
        sc.str_at("privileged"),
        Some("true"),
        "the agent must not run privileged"
    );
    assert_eq!(sc.str_at("readOnlyRootFilesystem"), Some("true"));
    assert_eq!(
        sc.str_at("runAsUser"),
        Some("0"),
        "capabilities apply to uid 0"
    );
    assert!(
        pod.at("securityContext.privileged").is_none(),
        "privileged is a container setting"
    );

    assert_eq!(
        sc.strs_at("capabilities.drop"),
        ["ALL"],
        "drop ALL, then add"
    );
    let added = sc.strs_at("capabilities.add");
    let added_set: BTreeSet<&str> = added.iter().copied().collect();
    assert_eq!(
        added_set.len(),
        added.len(),
        "a capability is added twice: {added:?}"
    );
    let expected: BTreeSet<&str> = CAPABILITIES.iter().copied().collect();
    assert_eq!(
        added_set, expected,
        "capabilities added (left) vs the README's (right)"
    );
    for cap in &added {
        // The API refuses allowPrivilegeEscalation: false with "CAP_SYS_ADMIN" (not "SYS_ADMIN").
        assert!(
            !cap.starts_with("CAP_") && cap.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
            "spell capabilities as Kubernetes does (SYS_ADMIN, not CAP_SYS_ADMIN): {cap}"
        );
    }

    // The README's Requirements section is where the set is documented.
    let readme = read("README.md");
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Requirements"))
        .expect("README has a Requirements section");
    let documented: BTreeSet<String> = section
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter_map(|w| w.strip_prefix("CAP_"))
        .map(str::to_string)
        .collect();
    let expected: BTreeSet<String> = CAPABILITIES.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        documented, expected,
        "README's Requirements names these capabilities (left); update the DaemonSet and \
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
        let volume = Yaml::named(volumes, name)
            .unwrap_or_else(|| panic!("volumeMount {name} has no volume"));
        assert_eq!(
            m.str_at("readOnly"),
            Some("true"),
            "{path} must be mounted read-only"
        );
        let propagation = m.str_at("mountPropagation").unwrap_or("None");
        assert!(
            ["None", "HostToContainer"].contains(&propagation),
            "{path}: mountPropagation {propagation} (Bidirectional needs a privileged container)"
        );
        if let Some(host) = volume.str_at("hostPath.path") {
            assert_eq!(
                host, path,
                "host paths are mounted where the agent expects them"
            );
            let kind = volume.str_at("hostPath.type").unwrap_or("");
            assert!(
                [
                    "",
                    "DirectoryOrCreate",
                    "Directory",
                    "FileOrCreate",
                    "File",
                    "Socket",
                    "CharDevice",
                    "BlockDevice"
                ]
                .contains(&kind),
                "{host}: hostPath type {kind:?} is not one Kubernetes knows"
            );
            mounted.insert((host.to_string(), propagation.to_string()));
        }
        assert!(
            ![
                "/",
                "/proc",
                "/sys",
                "/var/run/docker.sock",
                "/run/containerd"
            ]
            .contains(&path),
            "{path} gives away more of the host than the agent needs"
        );
    }
    for v in volumes {
        let name = v.str_at("name").expect("volume name");
        assert!(
            Yaml::named(mounts, name).is_some(),
            "volume {name} is not mounted"
        );
    }
    for (path, propagate) in HOST_MOUNTS {
        let want = if *propagate {
            "HostToContainer"
        } else {
            "None"
        };
        assert!(
            mounted.contains(&(path.to_string(), want.to_string())),
            "host path {path} mounted read-only with mountPropagation {want}; mounted: {mounted:?}"
        );
    }
}

/// The container port named `port` (or a number), as a number.
fn container_port(container: &Yaml, port: &str) -> String {
    if port.chars().all(|c| c.is_ascii_digit()) {
        return port.to_string();
    }
    Yaml::named(container.seq_at("ports"), port)
        .and_then(|p| p.str_at("containerPort"))
        .unwrap_or_else(|| panic!("no container port named {port}"))
        .to_string()
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
        assert_eq!(
            host_port, METRICS_PORT,
            "with hostNetwork, hostPort must equal containerPort"
        );
    }

    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = c
            .at(&format!("{probe}.httpGet"))
            .unwrap_or_else(|| panic!("{probe}.httpGet"));
        assert_eq!(get.str_at("path"), Some(path), "{probe} path");
        let port = get.str_at("port").unwrap_or_else(|| panic!("{probe} port"));
        assert_eq!(container_port(c, port), METRICS_PORT, "{probe} port");
    }

    let args = c.strs_at("args");
    assert_eq!(
        args.first(),
        Some(&"run"),
        "the container runs `connmon run`: {args:?}"
    );
    for arg in &args {
        if let Some(addr) = arg.strip_prefix("--web.listen-address=") {
            assert!(
                addr.ends_with(&format!(":{METRICS_PORT}")),
                "{arg} vs port {METRICS_PORT}"
            );
        }
    }

    let node = Yaml::named(c.seq_at("env"), "NODE_NAME").expect("env NODE_NAME");
    assert_eq!(
        node.str_at("valueFrom.fieldRef.fieldPath"),
        Some("spec.nodeName")
    );

    let requests = c.at("resources.requests").expect("resources.requests");
    assert!(requests.str_at("cpu").is_some(), "cpu request");
    let request = bytes(requests.str_at("memory").expect("memory request"));
    let limit = bytes(c.str_at("resources.limits.memory").expect("memory limit"));
    assert!(request <= limit, "memory request {request} > limit {limit}");

    assert!(c.str_at("image").is_some_and(|i| !i.is_empty()), "image");
    let tolerates_all = pod
        .seq_at("tolerations")
        .iter()
        .any(|t| t.str_at("operator") == Some("Exists") && t.at("key").is_none());
    assert!(
        tolerates_all,
        "the agent must run on every node (toleration operator: Exists)"
    );
    if pod.str_at("hostNetwork") == Some("true") {
        assert_eq!(
            pod.str_at("dnsPolicy"),
            Some("ClusterFirstWithHostNet"),
            "host-network pods need ClusterFirstWithHostNet to resolve cluster names"
        );
    }

    let selector = ds
        .at("spec.selector.matchLabels")
        .map(Yaml::string_map)
        .unwrap_or_default();
    let template = ds
        .at("spec.template.metadata.labels")
        .map(Yaml::string_map)
        .unwrap_or_default();
    assert!(
        is_subset(&selector, &template),
        "selector {selector:?} vs template {template:?}"
    );
}

#[test]
fn rbac_only_reads_pods() {
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
    let Yaml::Map(entries) = rule else {
        panic!("rule is not a mapping")
    };
    let keys: BTreeSet<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["apiGroups", "resources", "verbs"]),
        "no resourceNames or nonResourceURLs"
    );
    assert_eq!(rule.strs_at("apiGroups"), [""], "core API group only");
    assert_eq!(
        rule.strs_at("resources"),
        ["pods"],
        "pods only (no subresources)"
    );
    let verbs: BTreeSet<&str> = rule.strs_at("verbs").into_iter().collect();
    assert_eq!(
        verbs,
        BTreeSet::from(["get", "list", "watch"]),
        "read-only verbs"
    );
    assert!(role.at("aggregationRule").is_none());

    let binding = the("ClusterRoleBinding");
    let sa = the("ServiceAccount");
    let sa_name = sa.str_at("metadata.name").expect("ServiceAccount name");
    assert_eq!(binding.str_at("roleRef.kind"), Some("ClusterRole"));
    assert_eq!(
        binding.str_at("roleRef.apiGroup"),
        Some("rbac.authorization.k8s.io")
    );
    assert_eq!(binding.str_at("roleRef.name"), role.str_at("metadata.name"));
    let subjects = binding.seq_at("subjects");
    assert_eq!(subjects.len(), 1, "one subject");
    assert_eq!(subjects[0].str_at("kind"), Some("ServiceAccount"));
    assert_eq!(subjects[0].str_at("name"), Some(sa_name));
    assert_eq!(subjects[0].str_at("namespace"), Some(NAMESPACE));
    assert_eq!(sa.str_at("metadata.namespace"), Some(NAMESPACE));
    let ds = the("DaemonSet");
    assert_eq!(
        ds.str_at("spec.template.spec.serviceAccountName"),
        Some(sa_name)
    );
}

#[test]
fn service_and_podmonitor_scrape_the_metrics_port() {
    let ds = the("DaemonSet");
    let template = ds
        .at("spec.template.metadata.labels")
        .map(Yaml::string_map)
        .unwrap_or_default();
    let container = &ds.seq_at("spec.template.spec.containers")[0];

    let svc = the("Service");
    assert_eq!(svc.str_at("spec.clusterIP"), Some("None"), "headless");
    let selector = svc
        .at("spec.selector")
        .map(Yaml::string_map)
        .unwrap_or_default();
    assert!(
        is_subset(&selector, &template),
        "Service selector {selector:?} vs pods {template:?}"
    );
    let port = Yaml::named(svc.seq_at("spec.ports"), "metrics").expect("Service port metrics");
    assert_eq!(port.str_at("port"), Some(METRICS_PORT));
    let target = port.str_at("targetPort").unwrap_or(METRICS_PORT);
    assert_eq!(
        container_port(container, target),
        METRICS_PORT,
        "Service targetPort"
    );

    let pm = the("PodMonitor");
    assert_eq!(pm.str_at("apiVersion"), Some("monitoring.coreos.com/v1"));
    assert_eq!(
        pm.str_at("metadata.namespace"),
        ds.str_at("metadata.namespace")
    );
    let selector = pm
        .at("spec.selector.matchLabels")
        .map(Yaml::string_map)
        .unwrap_or_default();
    assert!(
        is_subset(&selector, &template),
        "PodMonitor selector {selector:?} vs pods {template:?}"
    );
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

/// `[...]` JSON-array form of a Dockerfile instruction, as its strings.
fn exec_form(args: &str) -> Vec<String> {
    let inner = args
        .trim()
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'));
    let inner = inner.unwrap_or_else(|| panic!("not in exec (JSON array) form: {args}"));
    inner
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .collect()
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
    let all = |op: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    };

    let from = all("FROM");
    assert_eq!(from.len(), 2, "a builder and a runtime stage: {from:?}");
    assert!(
        from[0].contains("bookworm") && from[0].ends_with(" AS builder"),
        "builder: {}",
        from[0]
    );
    assert!(
        from[1].contains("debian12") || from[1].contains("bookworm"),
        "runtime: {}",
        from[1]
    );

    let run = all("RUN").join("\n");
    assert!(
        run.contains("cargo xtask setup"),
        "the builder runs the project's setup"
    );
    assert!(run.contains("cargo build --release -p monitor"));
    // What those commands need: the xtask alias and its setup, the monitor package's connmon bin.
    assert!(read(".cargo/config.toml").contains("xtask = \"run --quiet --package xtask --\""));
    assert!(read("xtask/src/main.rs").contains("Setup(SetupArgs)"));
    assert!(read("xtask/src/setup.rs").contains("pub fn run(check: bool)"));
    let monitor = read("monitor/Cargo.toml");
    assert!(monitor.contains("name = \"monitor\"") && monitor.contains("name = \"connmon\""));
    assert!(
        run.contains("target/release/connmon"),
        "the release binary is target/release/connmon"
    );

    let entrypoint = exec_form(all("ENTRYPOINT").last().expect("ENTRYPOINT"));
    assert_eq!(entrypoint, ["/usr/local/bin/connmon"]);
    assert!(
        run.contains("/usr/local/bin/connmon"),
        "the builder installs it there"
    );
    let copy = all("COPY");
    assert!(
        copy.iter().any(|c| c.starts_with("--from=builder")
            && c.ends_with("/usr/local/bin/connmon /usr/local/bin/connmon")),
        "the runtime stage copies only the binary: {copy:?}"
    );
    assert_eq!(exec_form(all("CMD").last().expect("CMD")), ["run"]);
    assert!(
        read("monitor/src/cli.rs").contains("Run(RunArgs)"),
        "`connmon run` exists"
    );
    assert_eq!(all("EXPOSE"), [METRICS_PORT]);
    assert!(
        read("monitor/src/cli.rs").contains(&format!("default_value = \":{METRICS_PORT}\"")),
        "the agent's default listen port is {METRICS_PORT}"
    );
    assert_eq!(all("USER"), ["0"], "eBPF needs root");

    let ignore = read(".dockerignore");
    assert!(
        ignore
            .lines()
            .any(|l| l.trim() == "target/" || l.trim() == "target"),
        ".dockerignore excludes target/"
    );

    // The DaemonSet runs this image's `run` on the exposed port.
    let ds = the("DaemonSet");
    let c = &ds.seq_at("spec.template.spec.containers")[0];
    assert_eq!(c.strs_at("args").first(), Some(&"run"));
    assert_eq!(container_port(c, "metrics"), METRICS_PORT);
}

#[test]
fn yaml_reader_rejects_what_it_does_not_understand() {
    assert!(parse_yaml("a: 1\na: 2\n").is_err(), "duplicate key");
    assert!(
        parse_yaml("a:\n  b: 1\n   c: 2\n").is_err(),
        "bad indentation"
    );
    assert!(parse_yaml("a: &x 1\n").is_err(), "anchor");
    assert!(parse_yaml("a: one\n  b: 2\n").is_err(), "mis-indented key");
    let folded = parse_yaml("a: one\n  two\n\n  three\nb: 'x\n  ''y'' # z'\n").unwrap();
    assert_eq!(folded[0].str_at("a"), Some("one two\nthree"));
    assert_eq!(folded[0].str_at("b"), Some("x 'y' # z"));
    let docs = parse_yaml(
        "# c\na: \"x # y\" # z\nb:\n- 1\n- k: v\n  l: [p, 'q']\n---\nc: |\n  x\n\n  y\n",
    )
    .unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0].str_at("a"), Some("x # y"));
    assert_eq!(docs[0].seq_at("b")[1].strs_at("l"), ["p", "q"]);
    assert_eq!(docs[1].str_at("c"), Some("x\n\ny\n"));
}
