//! connmon's kernel programs. They keep per-listener high-water marks and counters in per-CPU LRU
//! maps (no locks, no per-event traffic to userspace, bounded memory) and read `struct sock` at
//! offsets the agent resolved from the running kernel's BTF, because struct layouts move between
//! kernels and aya has no CO-RE for Rust programs.
//!
//! Layout: `probes/` holds the programs, one module per feature; they depend on the shared
//! modules below and never on each other. `maps` declares every map and global; `access` and
//! `fields` read kernel memory; `counters`, `listen_table`, `pool_table`, `retry_events` and `proto_watch` are
//! the table updates several programs make. Pure decisions (buckets, address classes, protocol
//! bytes, errno meanings, which transitions matter) live in `monitor_common`, where host tests run.
#![no_std]
#![no_main]
#![allow(internal_features)]
#![feature(core_intrinsics)]
// aya-ebpf's map methods take `impl Borrow<K>`; a key or value passed by value is copied into the
// callee's frame, and the verifier caps the BPF stack at 512 bytes. Keep passing references.
#![allow(clippy::needless_borrows_for_generic_args)]

mod access;
mod counters;
mod fields;
mod listen_table;
mod maps;
mod pool_table;
mod probes;
mod proto_watch;
mod queue_table;
mod retry_events;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// bpf_probe_read_kernel is GPL-only.
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
