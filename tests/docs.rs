//! The documentation as a reader meets it: the front page (README.md) stays short and in the
//! order a newcomer needs it, and every link in it and in docs/*.md leads somewhere: the file
//! exists and, for `file.md#anchor`, the heading does (GitHub's anchor for it). Markdown is
//! parsed with pulldown-cmark, so links in code blocks are not links and reference links count.
//! Needs neither root nor a build of the agent.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use connmon_test_support as common;
use pulldown_cmark::{Event, HeadingLevel, Parser, Tag, TagEnd};

use common::workspace::{read, root};

/// The front page's budget: the issue asks for under 25 KB.
const FRONT_PAGE_MAX_BYTES: usize = 25_000;

/// README.md and every docs/*.md, as paths relative to the workspace root.
fn documents() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|e| PathBuf::from("docs").join(e.expect("docs/ entry").file_name()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    assert!(!docs.is_empty(), "docs/ has no .md file");
    docs.insert(0, PathBuf::from("README.md"));
    docs
}

/// GitHub's anchor for a heading: lower case, only letters, digits, `-` and `_` kept, each space
/// a `-` (so "`connmon storms [--for 5s]`" is `connmon-storms---for-5s`).
fn slug(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// (level, text) of every heading, in order.
fn headings(markdown: &str) -> Vec<(HeadingLevel, String)> {
    let mut out = Vec::new();
    let mut current: Option<(HeadingLevel, String)> = None;
    for event in Parser::new(markdown) {
        match event {
            Event::Start(Tag::Heading { level, .. }) => current = Some((level, String::new())),
            Event::Text(t) | Event::Code(t) => {
                if let Some((_, text)) = current.as_mut() {
                    text.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => out.extend(current.take()),
            _ => {}
        }
    }
    out
}

/// The anchors a file offers, duplicates numbered as GitHub numbers them (`x`, `x-1`, ...).
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (_, text) in headings(markdown) {
        let base = slug(&text);
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

/// Every link destination in a document (inline, reference and autolinks; not code).
fn links(markdown: &str) -> Vec<String> {
    Parser::new(markdown)
        .filter_map(|e| match e {
            Event::Start(Tag::Link { dest_url, .. }) => Some(dest_url.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn front_page_is_short() {
    let size = read("README.md").len();
    assert!(
        size < FRONT_PAGE_MAX_BYTES,
        "README.md is {size} bytes; move detail to docs/ (limit {FRONT_PAGE_MAX_BYTES})"
    );
}

#[test]
fn front_page_sections_come_in_the_newcomers_order() {
    let readme = read("README.md");
    let sections: Vec<String> =
        headings(&readme).into_iter().filter(|(l, _)| *l == HeadingLevel::H2).map(|(_, t)| t).collect();
    let wanted =
        ["What it catches", "Cost", "Quick start", "Two-minute demo", "connmon top", "Runbook", "CLI", "Documentation"];
    let at: Vec<usize> = wanted
        .iter()
        .map(|w| {
            sections.iter().position(|s| s == w).unwrap_or_else(|| panic!("no `## {w}` in README.md: {sections:?}"))
        })
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "README.md sections out of order: {sections:?}, want {wanted:?}");
    // The quick start keeps the two commands CI runs (.ci/run).
    let quick = &readme[readme.find("## Quick start").unwrap()..readme.find("## Two-minute demo").unwrap()];
    for command in ["cargo xtask run", "cargo xtask test"] {
        assert!(quick.contains(command), "the quick start lost `{command}`");
    }
    let ci = read(".ci/run");
    assert!(ci.contains("cargo xtask test"), ".ci/run no longer runs the README's test command");
}

/// The text of `## NAME` in `markdown`, up to the next `## ` heading.
fn section<'a>(markdown: &'a str, name: &str) -> &'a str {
    let start = markdown.find(&format!("\n## {name}\n")).unwrap_or_else(|| panic!("no `## {name}`")) + 1;
    let body = &markdown[start..];
    let end = body[3..].find("\n## ").map_or(body.len(), |i| i + 4);
    &body[..end]
}

/// Issue 17: the front page's cost section leads with one table putting connmon's kernel time per
/// connection beside the two bpftrace programs, with the agent's CPU, RSS at 64k sockets and
/// scrape time, and names the command that reproduces it. Its figures are docs/benchmarks.md's
/// ("Cost at a glance"), so a refreshed benchmark cannot leave stale numbers on the front page.
#[test]
fn cost_section_leads_with_the_benchmark_table() {
    let readme = read("README.md");
    let cost = section(&readme, "Cost");
    let first = cost.lines().skip(1).find(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(first.starts_with('|'), "`## Cost` must open with its table, not {first:?}");
    let table: Vec<&str> =
        cost.lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|')).collect();
    let header = table[0].to_lowercase();
    for column in ["kernel ns per connection", "cpu", "rss at 64k", "scrape time"] {
        assert!(header.contains(column), "the cost table has no `{column}` column: {header}");
    }
    let rows = &table[2..];
    for row in ["empty bpftrace program", "bpftrace one-liner", "connmon"] {
        assert!(rows.iter().any(|r| r.contains(row)), "the cost table has no row for `{row}`");
    }
    for needle in ["`cargo xtask bench kernel", "docs/benchmarks.md"] {
        assert!(cost.contains(needle), "`## Cost` does not name {needle}");
    }
    let benchmarks = read("docs/benchmarks.md");
    let glance = section(&benchmarks, "Cost at a glance");
    let mut figures = 0;
    for row in rows {
        for cell in row.split('|').skip(2) {
            let words = cell.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','));
            for figure in words.map(|w| w.trim_matches(|c| c == '.' || c == ',')).filter(|w| !w.is_empty()) {
                assert!(
                    glance.contains(figure),
                    "README's cost table says {figure} ({}), which docs/benchmarks.md's Cost at a glance does not",
                    cell.trim()
                );
                figures += 1;
            }
        }
    }
    assert!(figures >= 8, "only {figures} figures in the cost table");
}

#[test]
fn every_doc_is_linked_from_the_front_page() {
    let linked: BTreeSet<String> =
        links(&read("README.md")).into_iter().map(|l| l.split('#').next().unwrap().to_string()).collect();
    for doc in documents().into_iter().skip(1) {
        let doc = doc.to_str().unwrap().to_string();
        assert!(linked.contains(&doc), "{doc} is not in README.md's Documentation list");
    }
}

#[test]
fn every_link_resolves() {
    let mut checked = 0;
    for doc in documents() {
        let text = read(doc.to_str().unwrap());
        let dir = doc.parent().unwrap_or(Path::new(""));
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = link.split_once('#').map_or((link.as_str(), None), |(p, a)| (p, Some(a)));
            let target = if path.is_empty() { doc.clone() } else { normalize(&dir.join(path)) };
            let on_disk = root().join(&target);
            assert!(
                on_disk.exists(),
                "{}: link `{link}` points at {}, which does not exist",
                doc.display(),
                target.display()
            );
            if let Some(anchor) = anchor {
                assert!(
                    target.extension().is_some_and(|x| x == "md"),
                    "{}: anchor on a non-Markdown file: {link}",
                    doc.display()
                );
                let offered = anchors(&read(target.to_str().unwrap()));
                assert!(
                    offered.contains(anchor),
                    "{}: link `{link}`: {} has no heading with anchor #{anchor}; it has {offered:?}",
                    doc.display(),
                    target.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} links found: is the parser reading the files?");
}

/// `docs/../deploy/x` → `deploy/x`, so paths stay relative to the workspace root.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => assert!(out.pop(), "link leaves the workspace: {}", path.display()),
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn slugs_match_githubs() {
    assert_eq!(slug("TLS and basic auth (--web.config.file)"), "tls-and-basic-auth---webconfigfile");
    assert_eq!(slug("connmon storms [--for 5s] [--json]"), "connmon-storms---for-5s---json");
    assert_eq!(slug("Runbook: AcceptQueueSlowFailure"), "runbook-acceptqueueslowfailure");
    assert_eq!(anchors("# A\n## A\n"), BTreeSet::from(["a".to_string(), "a-1".to_string()]));
}
