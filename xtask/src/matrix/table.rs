//! One kernel's feature table, from what the suite wrote (`smoke.json`, its output and exit
//! status), and the verdict against what that kernel must have.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::expect::Expected;

/// Prints the table; `Err` says what regressed.
pub fn show(label: &str, out: &Path, took: Duration, timed_out: bool, expected: &Expected) -> Result<(), String> {
    let report: Value = std::fs::read_to_string(out.join("smoke.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let exit = std::fs::read_to_string(out.join("exit")).ok().and_then(|t| t.trim().parse::<i32>().ok());
    let mut problems: Vec<String> = Vec::new();
    if timed_out {
        problems.push(format!("no result within {} s", took.as_secs()));
    }
    match exit {
        Some(0) => {}
        Some(code) => problems.push(format!("the suite failed (exit {code}): {}", failure_line(out))),
        None if !timed_out => problems.push(format!("the guest never ran the suite: {}", guest_tail(out))),
        None => {}
    }

    let verdict = if problems.is_empty() { "ok" } else { "FAILED" };
    println!();
    let what = if label.ends_with("(this host)") { "suite" } else { "boot + suite" };
    println!("== {label}: {verdict}, {what} {:.0} s", took.as_secs_f64());
    println!("   {:<20} {:<6} {:<62} expected", "probe", "state", "program (hook)");
    let probes = &report["probes"];
    for (probe, want) in &expected.programs {
        let p = &probes[*probe];
        let up = p["up"].as_bool();
        let via = p["via"].as_str().unwrap_or("-");
        let program = via.split_whitespace().next().unwrap_or("-");
        let state = match up {
            Some(true) => "up",
            Some(false) => "down",
            None => "?",
        };
        let mark = if up == Some(true) && program == *want { "ok".to_string() } else { format!("WANT {want}") };
        println!("   {probe:<20} {state:<6} {via:<62} {mark}");
        for f in p["failed"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            println!("   {:<27} tried {}", "", f);
        }
        if up == Some(false) {
            problems.push(format!("probe {probe} down, want it up via {want}"));
        } else if up == Some(true) && program != *want {
            problems.push(format!("probe {probe} up via {program}, the table says {want}"));
        }
    }
    let f = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let (pool, l, peak, storm, proto) =
        (&report["pool"], &report["listener"], &report["peak"], &report["storm"], &report["protocol"]);
    println!(
        "   pool size            connmon {}, redis CLIENT LIST {}",
        f(&pool["connections"]),
        f(&pool["redis_client_list"])
    );
    println!(
        "   listener (backlog 3) depth {} (ss Recv-Q {}), drops {} (ss skmem d {})",
        f(&l["depth"]),
        f(&l["ss_recv_q"]),
        f(&l["drops"]),
        f(&l["ss_drops"])
    );
    println!(
        "   peak                 source={} depth {} ({} queued and accepted between scrapes)",
        f(&peak["source"]),
        f(&peak["depth"]),
        f(&peak["ss_queued"])
    );
    let wait = &report["peak_accept_wait"];
    println!(
        "   accept wait          {} measured, {} s in all, in a burst of {} s",
        f(&wait["measured"]),
        f(&wait["sum_seconds"]).chars().take(8).collect::<String>(),
        f(&wait["burst_seconds"]).chars().take(5).collect::<String>()
    );
    println!(
        "   storm                pool flagged {} (after {} s), listener flagged {}",
        f(&storm["pool"]),
        f(&storm["pool_flagged_after_s"]).chars().take(5).collect::<String>(),
        f(&storm["listener"])
    );
    println!("   protocol             service {} (classified by {})", f(&proto["service"]), f(&proto["classified_by"]));
    println!(
        "   start-up log         {} lines; suite {} s inside",
        f(&report["startup_log_lines"]),
        f(&report["elapsed_s"]).chars().take(5).collect::<String>()
    );
    if storm["listener"] != Value::Bool(true) {
        problems.push("listener storm not flagged although listen_peak is up".into());
    }
    // Behind fexit, the kprobe row: the suite ran the peak and storm checks again on it.
    if expected.programs.contains(&("listen_peak", "queued_child_fexit")) {
        let (k, kp, ks) = (&report["kprobe"], &report["kprobe_peak"], &report["kprobe_storm"]);
        println!(
            "   fexit off: listen_peak {} via {}; peak source={} depth {}; listener storm flagged {}",
            if k["up"] == Value::Bool(true) { "up" } else { "down" },
            f(&k["via"]),
            f(&kp["source"]),
            f(&kp["depth"]),
            f(&ks["listener"])
        );
        if k["up"] != Value::Bool(true) || !k["via"].as_str().unwrap_or("").starts_with("queued_child_kprobe ") {
            problems.push(format!("with fexit off, listen_peak is not up via queued_child_kprobe: {k}"));
        } else if kp["source"] != "ebpf" || ks["listener"] != Value::Bool(true) {
            problems.push("the kprobe row did not count the burst or flag the listener storm".into());
        }
    }
    for p in &problems {
        println!("   REGRESSION: {p}");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The first panic message of the suite's output, else its last line.
fn failure_line(out: &Path) -> String {
    let log = std::fs::read_to_string(out.join("test.log")).unwrap_or_default();
    let mut lines = log.lines();
    if let Some(i) = log.lines().position(|l| l.contains("panicked at")) {
        let msg: Vec<&str> = lines.by_ref().skip(i).take(3).collect();
        return format!("{} (full output: {})", msg.join(" "), out.join("test.log").display());
    }
    format!("{} (see {})", log.lines().last().unwrap_or(""), out.join("test.log").display())
}

/// The last lines virtme-ng printed.
fn guest_tail(out: &Path) -> String {
    let mut text = std::fs::read_to_string(out.join("vng.err")).unwrap_or_default();
    text.push_str(&std::fs::read_to_string(out.join("vng.log")).unwrap_or_default());
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A results directory as the suite leaves it on 6.1: every probe up, fexit for listen_peak,
    /// the kprobe pass done.
    fn results(dir: &Path, exit: &str, edit: impl FnOnce(&mut Value)) {
        let expected = Expected::of("6.1");
        let probes: serde_json::Map<String, Value> = expected
            .programs
            .iter()
            .map(|(p, prog)| {
                (p.to_string(), serde_json::json!({"up": true, "via": format!("{prog} (hook)"), "failed": []}))
            })
            .collect();
        let mut v = serde_json::json!({
            "probes": probes,
            "storm": {"pool": true, "listener": true},
            "kprobe": {"up": true, "via": "queued_child_kprobe (kprobe/inet_csk_complete_hashdance)"},
            "kprobe_peak": {"source": "ebpf", "depth": 5.0},
            "kprobe_storm": {"listener": true},
        });
        edit(&mut v);
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("smoke.json"), v.to_string()).unwrap();
        std::fs::write(dir.join("exit"), exit).unwrap();
        std::fs::write(
            dir.join("test.log"),
            "thread 'kernel_smoke' panicked at tests/kernel_smoke.rs:1:1:\nconnmon vs redis CLIENT LIST (6)\n",
        )
        .unwrap();
    }

    fn verdict(name: &str, exit: &str, edit: impl FnOnce(&mut Value)) -> Result<(), String> {
        let dir = std::env::temp_dir().join(format!("xtask-matrix-{}-{name}", std::process::id()));
        results(&dir, exit, edit);
        let r = show("6.1.0-57-amd64 (Debian 12 6.1)", &dir, Duration::from_secs(1), false, &Expected::of("6.1"));
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn regressions_fail_and_a_clean_run_passes() {
        assert_eq!(verdict("clean", "0\n", |_| {}), Ok(()));
        let down = verdict("down", "0\n", |v| v["probes"]["listen_peak"]["up"] = Value::Bool(false)).unwrap_err();
        assert!(down.contains("probe listen_peak down"), "{down}");
        let moved = verdict("moved", "0\n", |v| {
            v["probes"]["pools"]["via"] = Value::from("inet_sock_set_state (tracepoint/sock/inet_sock_set_state)")
        })
        .unwrap_err();
        assert!(moved.contains("pools up via inet_sock_set_state, the table says inet_sock_set_state_btf"), "{moved}");
        let failed = verdict("failed", "101\n", |_| {}).unwrap_err();
        assert!(failed.contains("exit 101") && failed.contains("CLIENT LIST"), "{failed}");
        let kprobe = verdict("kprobe", "0\n", |v| v["kprobe"]["up"] = Value::Bool(false)).unwrap_err();
        let kprobe_storm = verdict("kstorm", "0\n", |v| v["kprobe_storm"]["listener"] = Value::Bool(false));
        assert!(kprobe.contains("queued_child_kprobe") && kprobe_storm.is_err(), "{kprobe}");
        let storm = verdict("storm", "0\n", |v| v["storm"]["listener"] = Value::Bool(false)).unwrap_err();
        assert!(storm.contains("listener storm not flagged"), "{storm}");
    }
}
