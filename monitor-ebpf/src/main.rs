//! connmon's kernel programs. They keep per-listener high-water marks and counters in per-CPU LRU
//! maps (no locks, no per-event traffic to userspace, bounded memory) and read `struct sock` at
//! offsets the agent resolved from the running kernel's BTF, because struct layouts move between
//! kernels and aya has no CO-RE for Rust programs.
#![no_std]
#![no_main]
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod counters;
mod fields;
mod listeners;
mod pools;
mod proto;
mod storms;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// bpf_probe_read_kernel is GPL-only.
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
