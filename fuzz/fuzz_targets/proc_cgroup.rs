//! `/proc/<pid>/cgroup`: which line names a process (v2's, else v1's systemd hierarchy, else the
//! first). Asserts: the chosen path is one of the file's paths (trimmed, never empty), and a v2
//! line, when the file has one with a path, always wins.
#![no_main]

use connmon::scan::procs::parse_cgroup;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Some(path) = parse_cgroup(text) else { return };
    assert!(!path.is_empty());
    assert_eq!(path.trim_end(), path);
    assert!(text.contains(path.as_str()), "{path:?} is not in the file");
    // The first "0::PATH" line with a path is v2's, as procfs reads lines: hierarchy numbers as
    // Rust parses them ("+0"), controllers split on commas with empty names dropped (",,").
    let v2 = text.lines().find_map(|l| {
        let mut fields = l.splitn(3, ':');
        let (hierarchy, controllers, path) = (fields.next()?, fields.next()?, fields.next()?.trim_end());
        let v2 = hierarchy.parse::<u32>() == Ok(0) && controllers.split(',').all(str::is_empty);
        (v2 && !path.is_empty()).then_some(path)
    });
    if let Some(v2) = v2 {
        assert_eq!(path, v2, "v2 line present but another path chosen");
    }
});
