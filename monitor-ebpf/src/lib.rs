//! Empty library target: `monitor` lists this crate as a build-dependency so cargo rebuilds the
//! eBPF object when its sources change; that needs a lib target to exist.
#![no_std]
