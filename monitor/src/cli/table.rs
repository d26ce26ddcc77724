//! Human output for the one-shot commands: aligned columns, widest value decides the width.
use std::io::{self, Write};

use crate::{
    alerts::AlertView, model::destinations::Destination, model::listeners::Listener, model::pools::Pool,
    model::storms::ReportRow,
};

/// Prints rows under headers with each column as wide as its widest cell; numbers right-aligned.
pub fn print(out: &mut impl Write, headers: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let numeric = !cell.is_empty() && cell.chars().all(|c| c.is_ascii_digit() || c == '.' || c == '%');
            if numeric {
                s.push_str(&format!("{cell:>w$}"));
            } else if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}"));
            }
        }
        s.trim_end().to_string()
    };
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    writeln!(out, "{}", line(&header))?;
    for row in rows {
        writeln!(out, "{}", line(row))?;
    }
    Ok(())
}

pub fn print_listeners(out: &mut impl Write, listeners: &[Listener]) -> io::Result<()> {
    let headers = [
        "NETNS",
        "FAMILY",
        "LOCAL",
        "DEPTH",
        "BACKLOG",
        "REQUESTED",
        "FILL",
        "DROPS",
        "SYNQ",
        "WAIT",
        "WAIT_MEASURED",
        "DRAIN",
        "ABANDONED",
        "FLAGS",
        "PID",
        "PROCESS",
    ];
    let secs = |v: Option<f64>| match v {
        Some(w) if w.is_infinite() => "inf".to_string(),
        Some(w) => format!("{w:.3}"),
        None => "-".into(),
    };
    let rows: Vec<Vec<String>> = listeners
        .iter()
        .map(|l| {
            let q = &l.queue;
            let local = match &l.path {
                Some(p) if l.is_unix() => p.clone(),
                _ => std::net::SocketAddr::new(l.addr, l.port).to_string(),
            };
            let flags: Vec<&str> =
                [(q.clamped, "clamped"), (q.slow_drain, "slow-drain")].iter().filter(|f| f.0).map(|f| f.1).collect();
            vec![
                l.netns_name.clone().unwrap_or_else(|| l.netns.to_string()),
                l.family.to_string(),
                local,
                l.depth.to_string(),
                l.backlog.to_string(),
                q.requested_backlog.map_or("-".into(), |r| r.to_string()),
                format!("{:.0}%", l.fill * 100.0),
                l.drops.to_string(),
                l.syn_queue.to_string(),
                secs(q.wait_seconds),
                secs(q.wait_measured_seconds),
                secs(q.drain_seconds),
                q.abandoned.map_or("-".into(), |n| n.to_string()),
                if flags.is_empty() { "-".into() } else { flags.join(",") },
                l.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                l.comm.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print(out, &headers, &rows)
}

pub fn print_pools(out: &mut impl Write, pools: &[Pool]) -> io::Result<()> {
    let headers = ["SERVICE", "DESTINATION", "PROCESS", "CGROUP", "ACTIVE", "PEAK", "OPENS", "CLOSES", "FAILS"];
    let opt = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            let dst = std::net::SocketAddr::new(p.dst_addr, p.dst_port).to_string();
            vec![
                p.service.clone(),
                dst,
                if p.comm.is_empty() { "-".into() } else { p.comm.clone() },
                if p.cgroup.is_empty() { "-".into() } else { p.cgroup.clone() },
                p.active.to_string(),
                p.peak.to_string(),
                opt(p.opens),
                opt(p.closes),
                opt(p.failures),
            ]
        })
        .collect();
    print(out, &headers, &rows)
}

pub fn print_destinations(out: &mut impl Write, dests: &[Destination]) -> io::Result<()> {
    let headers =
        ["SERVICE", "DESTINATION", "CONNECTIONS", "PEAK", "PENDING", "REJECTED", "CEILING", "WORKLOADS", "TOP"];
    let rows: Vec<Vec<String>> = dests
        .iter()
        .map(|d| {
            let counted = |v: String| if d.probed { v } else { "-".into() };
            let top: Vec<String> = d
                .workloads
                .iter()
                .take(3)
                .map(|(w, n)| format!("{}={n}", if w.is_empty() { "-" } else { w }))
                .collect();
            vec![
                d.key.service.clone(),
                std::net::SocketAddr::new(d.key.dst_addr, d.key.dst_port).to_string(),
                d.connections.to_string(),
                d.peak.to_string(),
                counted(d.pending.to_string()),
                counted(d.evidence.rejected().to_string()),
                d.ceiling_observed.map_or("-".into(), |c| c.to_string()),
                d.workloads.len().to_string(),
                top.join(","),
            ]
        })
        .collect();
    print(out, &headers, &rows)
}

pub fn print_storms(out: &mut impl Write, rows: &[ReportRow]) -> io::Result<()> {
    let headers = ["STORM", "TARGET", "ATTEMPTS/S", "BAD", "BASELINE/S", "BACKOFF", "JITTER", "SCORE", "WHAT"];
    let est = |f: fn(&crate::model::storms::RetryEstimate) -> f64, r: &ReportRow| {
        r.signals.estimate.as_ref().map_or("-".into(), |e| format!("{:.2}", f(e)))
    };
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                if r.signals.in_storm { "STORM".into() } else { "-".into() },
                r.target.into(),
                format!("{:.1}", r.signals.attempt_rate),
                format!("{:.0}%", r.signals.bad_ratio * 100.0),
                format!("{:.1}", r.signals.baseline_rate),
                est(|e| e.backoff, r),
                est(|e| e.jitter, r),
                format!("{:.2}", r.signals.score.overall),
                r.what.clone(),
            ]
        })
        .collect();
    print(out, &headers, &lines)
}

pub fn print_alerts(out: &mut impl Write, alerts: &[AlertView]) -> io::Result<()> {
    let headers = ["STATE", "ALERT", "SINCE", "LABELS", "SUMMARY"];
    let rows: Vec<Vec<String>> = alerts
        .iter()
        .map(|a| {
            let labels: Vec<String> =
                a.labels.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                a.state.as_str().to_string(),
                a.alertname.clone(),
                a.since.clone(),
                labels.join(","),
                a.annotations.get("summary").cloned().unwrap_or_default(),
            ]
        })
        .collect();
    print(out, &headers, &rows)
}
