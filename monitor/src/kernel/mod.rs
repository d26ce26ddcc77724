//! Everything that touches the kernel's eBPF machinery: the declarative probe table and its
//! loader (warn-and-skip, one line per probe that cannot run), typed access to the maps the
//! programs fill (by the names in `monitor_common::names`; a failed read is logged once and
//! counted, never a silent zero), the BTF reader that finds `struct sock` offsets for this
//! kernel, tracefs and its tracepoint format files, and the capability drop once the programs are
//! attached. Nothing here
//! knows about pools or listeners as the user sees them; `model/` builds those from what this
//! module reads.
pub mod attach;
pub mod batch;
pub mod btf;
pub mod census;
pub mod cgroupfs;
pub mod maps;
pub mod privs;
pub mod probes;
pub mod tracefs;
