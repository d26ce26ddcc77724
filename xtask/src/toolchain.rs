//! The toolchain that builds the kernel programs: a dated nightly named once, in
//! `monitor-ebpf/rust-toolchain.toml` (monitor/build.rs reads the same file). `setup` installs it
//! with its components, `setup --check` checks them, `lint` runs clippy on the eBPF crate with it.

use std::process::Command;

use anyhow::{anyhow, Context, Result};

use crate::util::{stdout_of, workspace_root};

/// What `monitor-ebpf/rust-toolchain.toml` pins.
#[derive(Debug, PartialEq)]
pub struct EbpfToolchain {
    /// e.g. `nightly-2026-05-20`.
    pub channel: String,
    /// e.g. `rust-src` (needed by `-Z build-std=core`), `clippy`.
    pub components: Vec<String>,
}

pub fn ebpf_toolchain() -> Result<EbpfToolchain> {
    let path = workspace_root().join("monitor-ebpf").join("rust-toolchain.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    parse(&text).with_context(|| format!("{}", path.display()))
}

fn parse(text: &str) -> Result<EbpfToolchain> {
    let doc: toml::Table = text.parse()?;
    let t = doc.get("toolchain").ok_or_else(|| anyhow!("no [toolchain] table"))?;
    let channel = t.get("channel").and_then(|c| c.as_str()).ok_or_else(|| anyhow!("no [toolchain] channel"))?;
    // A moving channel ("nightly") is what the pin exists to avoid.
    let dated = channel
        .strip_prefix("nightly-")
        .is_some_and(|d| d.len() == 10 && d.bytes().filter(|b| *b == b'-').count() == 2);
    if !dated {
        return Err(anyhow!("channel {channel:?} is not a dated nightly (nightly-YYYY-MM-DD)"));
    }
    let components = match t.get("components") {
        None => Vec::new(),
        Some(c) => c
            .as_array()
            .ok_or_else(|| anyhow!("components is not a list"))?
            .iter()
            .map(|c| c.as_str().map(str::to_owned).ok_or_else(|| anyhow!("component {c} is not a string")))
            .collect::<Result<_>>()?,
    };
    Ok(EbpfToolchain { channel: channel.to_owned(), components })
}

impl EbpfToolchain {
    /// Installed, under its dated name (rustup lists it with the host triple appended).
    pub fn installed(&self) -> Result<bool> {
        let list = stdout_of(Command::new("rustup").args(["toolchain", "list"]))
            .context("`rustup toolchain list` failed: setup needs rustup (https://rustup.rs)")?;
        let prefix = format!("{}-", self.channel);
        Ok(list
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .any(|name| name == self.channel || name.starts_with(&prefix)))
    }

    /// Components from the file that the installed toolchain lacks.
    pub fn missing_components(&self) -> Vec<String> {
        let installed =
            stdout_of(Command::new("rustup").args(["component", "list", "--toolchain", &self.channel, "--installed"]))
                .unwrap_or_default();
        let names: Vec<&str> = installed.lines().filter_map(|l| l.split_whitespace().next()).collect();
        self.components
            .iter()
            .filter(|c| !names.iter().any(|n| n == c || n.starts_with(&format!("{c}-"))))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_pins_a_dated_nightly_with_rust_src() {
        let t = ebpf_toolchain().unwrap();
        assert!(t.channel.starts_with("nightly-20"), "{t:?}");
        assert!(t.components.iter().any(|c| c == "rust-src"), "{t:?}");
        assert!(t.components.iter().any(|c| c == "clippy"), "`cargo xtask lint` needs it: {t:?}");
    }

    #[test]
    fn moving_channels_and_bad_files_are_refused() {
        assert!(parse("[toolchain]\nchannel = \"nightly\"\n").is_err());
        assert!(parse("[toolchain]\nchannel = \"stable\"\n").is_err());
        assert!(parse("channel = \"nightly-2026-05-20\"\n").is_err());
        assert!(parse("[toolchain]\nchannel = \"nightly-2026-05-20\"\ncomponents = \"rust-src\"\n").is_err());
        let t = parse("[toolchain]\nchannel = \"nightly-2026-05-20\"\n").unwrap();
        assert_eq!((t.channel.as_str(), t.components.len()), ("nightly-2026-05-20", 0));
    }
}
