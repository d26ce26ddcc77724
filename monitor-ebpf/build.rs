use which::which;

/// Cargo does not know the eBPF object depends on bpf-linker; rebuild when the linker changes
/// (for example after `cargo xtask setup` installs a new one).
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
