//! A small YAML reader for the Kubernetes manifests: block mappings and sequences, flow
//! sequences, quoted, plain and block scalars (what deploy/kubernetes/ and kustomize's output use),
//! read into [`Yaml`] values whose scalars are all text. It is strict about what it does not know
//! (anchors, tags, flow mappings, nested flow collections, tabs, duplicate keys) and fails instead
//! of guessing; `kube::assert_reads_like_pyyaml` keeps it honest against PyYAML.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub enum Yaml {
    Map(Vec<(String, Yaml)>),
    Seq(Vec<Yaml>),
    /// Every scalar, as text: `true`, `9977` and `"9977"` alike. Null (empty, `~`, `null`) is "".
    Str(String),
}

impl Yaml {
    pub fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Dotted path of map keys (keys with dots in them need `get`).
    pub fn at(&self, path: &str) -> Option<&Yaml> {
        path.split('.').try_fold(self, |y, key| y.get(key))
    }

    pub fn str_at(&self, path: &str) -> Option<&str> {
        self.at(path).and_then(Yaml::as_str)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Yaml::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn items(&self) -> &[Yaml] {
        match self {
            Yaml::Seq(items) => items,
            _ => &[],
        }
    }

    pub fn seq_at(&self, path: &str) -> &[Yaml] {
        self.at(path).map(Yaml::items).unwrap_or(&[])
    }

    /// The scalars of a sequence.
    pub fn strs_at(&self, path: &str) -> Vec<&str> {
        self.seq_at(path).iter().filter_map(Yaml::as_str).collect()
    }

    /// The item of a sequence whose `name` is `name`.
    pub fn named<'a>(items: &'a [Yaml], name: &str) -> Option<&'a Yaml> {
        items.iter().find(|i| i.str_at("name") == Some(name))
    }

    pub fn string_map(&self) -> BTreeMap<&str, &str> {
        match self {
            Yaml::Map(entries) => entries.iter().filter_map(|(k, v)| Some((k.as_str(), v.as_str()?))).collect(),
            _ => BTreeMap::new(),
        }
    }

    /// Compact JSON, every scalar a string (as `pyyaml_json` prints PyYAML's reading).
    pub fn to_json(&self, out: &mut String) {
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
    let colon =
        text.char_indices().find(|&(i, c)| c == ':' && (i + 1 == text.len() || text[i + 1..].starts_with(' ')))?.0;
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
            Some((j, text)) if j > indent => self.err(format!("unsupported continuation line {text:?}")),
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
                return self.err(format!("nested flow collections are not supported: {text:?}"));
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
            return self.err(format!("anchors, aliases, tags and reserved indicators are not supported: {text:?}"));
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
        let content_indent = raw.iter().find(|l| !l.is_empty()).map(|l| indent_of(l)).unwrap_or(0);
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
        let mut text = if header.starts_with('|') { lines.join("\n") } else { fold(&lines) };
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
pub fn parse_yaml(text: &str) -> Result<Vec<Yaml>, String> {
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
        let mut reader = YamlReader { lines: chunk, pos: 0 };
        let wrap = |e: String| format!("document at line {}: {e}", first_line + 1);
        if reader.peek().map_err(wrap)?.is_some() {
            let doc = reader.node(0).map_err(wrap)?;
            if let Some((_, text)) = reader.peek().map_err(wrap)? {
                return Err(wrap(format!("line {}: unexpected {text:?}", reader.pos + 1)));
            }
            docs.push(doc);
        }
        first_line += len + 1;
    }
    Ok(docs)
}
