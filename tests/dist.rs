//! The release artifact of `cargo xtask dist`, as someone who downloads it meets it: the tarball
//! holds the binary, every deploy file, README.md and every page of docs/, and no sources or build
//! output; the binary in it is static (no ELF interpreter; `file`, which nobody here wrote, agrees),
//! carries the eBPF object (an ELF for machine BPF embedded in it), prints this version and scans
//! this host's listeners. `cargo xtask test` builds the tarball first and passes its path in
//! `CONNMON_DIST_TARBALL`; without it the test looks in `<target>/dist/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use connmon_test_support as common;

use common::workspace::root;
use common::{connmon_bin, run_ok, TempDir};

const TARBALL_ENV: &str = "CONNMON_DIST_TARBALL";
/// `connmon-<version>-x86_64-unknown-linux-musl`, as xtask/src/dist.rs names it.
fn release_name() -> String {
    format!("connmon-{}-x86_64-unknown-linux-musl", env!("CARGO_PKG_VERSION"))
}

fn tarball() -> PathBuf {
    let path = std::env::var_os(TARBALL_ENV).map(PathBuf::from).unwrap_or_else(|| {
        let target = Path::new(connmon_bin()).ancestors().nth(2).expect("target dir").to_path_buf();
        target.join("dist").join(format!("{}.tar.gz", release_name()))
    });
    assert!(
        path.is_file(),
        "no release tarball at {}: run `cargo xtask dist` (or `cargo xtask test`, which builds it)",
        path.display()
    );
    path
}

/// Files under `dir` (relative to the workspace root), recursively.
fn files_under(dir: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root().join(dir)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(root()).expect("under the workspace").display().to_string());
            }
        }
    }
    out
}

#[test]
fn tarball_holds_the_binary_deploy_files_and_docs_only() {
    let listing = run_ok(Command::new("tar").arg("-tzf").arg(tarball()));
    let top = format!("{}/", release_name());
    let files: BTreeSet<String> = listing
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(|l| l.strip_prefix(&top).unwrap_or_else(|| panic!("{l} is outside {top}")).to_string())
        .collect();
    let mut wanted: BTreeSet<String> = ["connmon", "README.md"].map(String::from).into();
    wanted.extend(files_under("deploy"));
    wanted.extend(files_under("docs"));
    assert!(wanted.iter().any(|f| f.ends_with("daemonset.yaml")) && wanted.iter().any(|f| f.ends_with(".md")));
    let missing: Vec<_> = wanted.difference(&files).collect();
    assert!(missing.is_empty(), "missing from the tarball: {missing:?}");
    let extra: Vec<_> = files.difference(&wanted).filter(|f| !f.starts_with("LICENSE")).collect();
    assert!(extra.is_empty(), "unexpected in the tarball (sources or build output?): {extra:?}");
}

/// PT_INTERP in a 64-bit little-endian ELF's program headers.
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..6], b"\x7fELF\x02\x01", "not a 64-bit little-endian ELF");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    (0..u16_at(0x38)).any(|i| {
        let ph = phoff + i * u16_at(0x36);
        u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap()) == 3
    })
}

#[test]
fn binary_is_static_embeds_the_ebpf_object_and_runs() {
    let dir = TempDir::new("connmon-dist");
    run_ok(Command::new("tar").arg("-xzf").arg(tarball()).arg("-C").arg(dir.path()));
    let bin = dir.path().join(release_name()).join("connmon");
    let elf = std::fs::read(&bin).expect("read the binary");
    assert!(!has_interpreter(&elf), "{} has an ELF interpreter: it is not static", bin.display());
    let described = run_ok(Command::new("file").arg(&bin));
    assert!(described.contains("statically linked") || described.contains("static-pie"), "file says: {described}");
    assert!(!described.contains("interpreter"), "file says: {described}");

    // An ELF header for e_machine EM_BPF (247) inside the binary: monitor/build.rs embedded the
    // kernel programs (include_bytes_aligned!), so the binary needs no object file beside it.
    let bpf_elf = elf.windows(20).any(|w| w.starts_with(b"\x7fELF\x02\x01\x01") && w[18] == 247 && w[19] == 0);
    assert!(bpf_elf, "no eBPF object (ELF, machine BPF) embedded in {}", bin.display());

    let version = run_ok(Command::new(&bin).arg("--version"));
    assert_eq!(version.trim(), format!("connmon {}", env!("CARGO_PKG_VERSION")));
    // A one-shot scan of this host's listeners (sock_diag; no probes): every host has one, the
    // loopback listener made here at least.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let table = run_ok(Command::new(&bin).arg("listeners"));
    assert!(table.lines().next().is_some_and(|h| h.contains("LOCAL")), "no header: {table}");
    assert!(table.contains(&format!("127.0.0.1:{port}")), "the listener on {port} is not listed:\n{table}");
}
