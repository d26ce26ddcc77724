//! The embedded eBPF object against `monitor_common::names`: parsed the way aya's loader parses
//! it (aya-obj, no kernel needed), so renaming a map, program or global on one side only fails
//! here instead of loading fine and exporting zeros.
use std::collections::{BTreeSet, HashMap};

use aya::Pod;
use monitor_common::{
    names::{globals, maps, programs},
    FdOffsets, SockOffsets, StormConfig, TaskOffsets, TracepointOffsets,
};

use super::{EBPF_OBJECT, PROBES};

fn object() -> aya_obj::Object {
    aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded eBPF object parses")
}

#[test]
fn maps_in_the_object_are_exactly_the_named_ones() {
    let obj = object();
    // Sections of globals (.rodata, .bss, .data) are maps too, named after the section.
    let in_object: BTreeSet<&str> = obj.maps.keys().map(String::as_str).filter(|n| !n.starts_with('.')).collect();
    let named: BTreeSet<&str> = maps::ALL.iter().copied().collect();
    assert_eq!(in_object, named);
}

#[test]
fn programs_in_the_object_are_exactly_the_named_ones_and_the_probe_table_uses_them_all() {
    let obj = object();
    let in_object: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
    let named: BTreeSet<&str> = programs::ALL.iter().copied().collect();
    assert_eq!(in_object, named);
    let in_table: BTreeSet<&str> = PROBES.iter().map(|p| p.program).collect();
    assert_eq!(in_table, named, "a program is not attached by any probe, or the table names one that does not exist");
}

fn bytes<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: Pod types are plain bytes without padding.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

#[test]
fn globals_exist_with_the_size_of_their_type() {
    let mut obj = object();
    let (sock, task, tp, storm, fd) = (
        SockOffsets::UNKNOWN,
        TaskOffsets::UNKNOWN,
        TracepointOffsets::UNKNOWN,
        StormConfig::DEFAULT,
        FdOffsets::UNKNOWN,
    );
    let values: HashMap<&str, (&[u8], bool)> = HashMap::from([
        (globals::SOCK_OFFSETS, (bytes(&sock), true)),
        (globals::TASK_OFFSETS, (bytes(&task), true)),
        (globals::TP_OFFSETS, (bytes(&tp), true)),
        (globals::STORM_CONFIG, (bytes(&storm), true)),
        (globals::FD_OFFSETS, (bytes(&fd), true)),
    ]);
    assert_eq!(values.len(), globals::ALL.len(), "a global has no value in this test");
    // The loader's own check (EbpfLoader::override_global with must_exist): the symbol exists
    // and has exactly the size of the value written into it.
    obj.patch_map_data(values).expect("every global exists with the size of its type");
}

/// The probe table users read (docs/requirements.md) is this table: same rows, same order, same
/// programs and minimum kernels.
#[test]
fn documented_probe_table_matches() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/requirements.md");
    let doc = std::fs::read_to_string(path).expect("read docs/requirements.md");
    let table = &doc[doc.find("| Probe | Program |").expect("probe table in docs/requirements.md")..];
    let rows: Vec<(String, String, String)> = table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').into(), cells[2].trim_matches('`').into(), cells[4].into())
        })
        .collect();
    let code: Vec<(String, String, String)> =
        PROBES.iter().map(|p| (p.probe.into(), p.program.into(), p.min_kernel.into())).collect();
    assert_eq!(rows, code, "docs/requirements.md's probe table differs from PROBES");
}
