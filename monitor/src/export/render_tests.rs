//! The exposition's text, byte for byte, for a host with a bit of everything (queued and failing
//! listeners and pools, storms, accepts, destinations, alerts, a label that needs escaping) under
//! a small series budget, so every level is used. The fixture was rendered by the build before
//! the render's shared label sets (`export::Shown`, `series::Extra`, `series::encode_exposition`):
//! they must not change a byte.
use std::collections::{BTreeMap, HashMap};

use monitor_common::{AcceptKey, PoolKey, PoolStats};

use super::{budget, pools::PoolsSection, render, Context};
use crate::{
    alerts::{AlertState, AlertView},
    kernel::probes::ProbeState,
    model::{
        destinations::{DestKey, Destination, Evidence},
        listeners::{tests_support::listener, NetnsStats, Snapshot},
        pools::{tests_support::pool, KernelExtras, Pool},
        storms::{RetryEstimate, Score, Signals},
    },
};

const N: usize = 40;

fn snapshot() -> Snapshot {
    let mut snap = Snapshot::default();
    for i in 0..N {
        let mut l = listener(u32::from(i % 7 == 0) * 5, 128);
        l.port = 20_000 + i as u16;
        l.id.port = l.port;
        l.id.cookie = i as u64;
        l.established = i as u32 % 4;
        l.drops = (i % 5) as u64;
        l.peak_depth = (i % 9) as u32;
        if i == 3 {
            l.comm = Some("we\"ird\\name".into());
            l.cgroup = Some("/system.slice/a.service".into());
        }
        if i % 3 == 0 {
            let q = &mut l.queue;
            q.wait_seconds = Some(0.01 * i as f64);
            q.wait_measured_seconds = Some(0.002 * i as f64);
            q.accept_rate = Some(10.0 + i as f64);
            q.drain_seconds = Some(0.5);
            q.slow_drain = i == 9;
            q.abandoned = Some(1);
            q.accepted_closed = Some(2);
            q.requested_backlog = Some(4096);
            q.clamped = true;
            q.stats.abandoned_fin = (i % 2) as u64;
            q.stats.accepted_closed = 2;
            q.stats.wait_us[1] = 3;
            q.stats.wait_ns_sum = 12_345_000;
            l.synack_retransmits = Some(i as u64);
        }
        snap.listeners.push(l);
    }
    snap.namespaces.push(NetnsStats {
        inode: 7,
        name: Some("blue".into()),
        tcp_ext: [("ListenOverflows".to_string(), 4)].into(),
        sysctls: [("net.core.somaxconn", 4096)].into(),
    });
    snap
}

fn key(i: usize) -> PoolKey {
    PoolKey { cgroup_id: 1, netns: 7, dport: 20_000 + i as u16, family: 2, daddr: [0; 16], comm: [0; 16] }
}

fn pools(round: u64) -> Vec<Pool> {
    (0..N)
        .map(|i| {
            let mut p = pool(if i % 2 == 0 { "app" } else { "worker" }, i as i64 % 6);
            p.service = if i % 4 == 0 { "redis".into() } else { "other".into() };
            p.dst_port = 20_000 + i as u16;
            p.pending = i64::from(i == 5);
            p.key = Some(key(i));
            let mut s = PoolStats { attempts: 10, opens: 10, closes: 9, short_lived: 1, ..Default::default() };
            s.connect_us[2] = 10;
            s.lifetime_ms[3] = 9;
            if i < 6 {
                s.failures[i % 5] = 5 * round;
                s.attempts += 5 * round;
                s.died_reset = round;
            }
            p.stats = Some(s);
            p
        })
        .collect()
}

fn destinations() -> Vec<Destination> {
    (0..N / 2)
        .map(|i| Destination {
            key: DestKey {
                service: if i % 4 == 0 { "redis".into() } else { "other".into() },
                dst_addr: "127.0.0.1".parse().unwrap(),
                dst_port: 20_000 + i as u16,
            },
            connections: i as i64,
            peak: i as i64 + 1,
            pending: 0,
            probed: true,
            evidence: Evidence { attempts: 10, rejections: [i as u64 % 3, 0, 1, 0, 0], resets: 0 },
            ceiling_observed: (i == 2).then_some(40),
            workloads: Vec::new(),
            recent: Default::default(),
        })
        .collect()
}

fn signals(storm: bool) -> Signals {
    Signals {
        attempt_rate: 12.5,
        bad_ratio: 0.75,
        baseline_rate: 1.0,
        estimate: Some(RetryEstimate { backoff: 1.0, jitter: 0.1, gaps: 4 }),
        score: Score { rate: 0.9, failures: 0.8, backoff: 0.7, overall: 0.7 },
        in_storm: storm,
    }
}

fn alert(name: &str, labels: &[(&str, &str)]) -> AlertView {
    AlertView {
        alertname: name.into(),
        state: AlertState::Firing,
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        annotations: Default::default(),
        since: "2026-12-04T00:00:00Z".into(),
        ended: None,
    }
}

fn scrape(selector: &mut budget::Selector, snap: &Snapshot, round: u64) -> String {
    let pools = pools(round);
    let dests = destinations();
    let mut extras = KernelExtras::default();
    // One class per listener: a listener's classes come in the accepts map's (random) order.
    for (i, class) in [(0u16, 0u32), (6, 1), (3, 2), (12, 0)] {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let k = AcceptKey { netns: 7, port: 20_000 + i, family: 2, addr, client_class: class, _reserved: 0 };
        extras.accepts.insert(k, 3 + u64::from(i));
    }
    extras.lost[0] = 2;
    let pool_signals: HashMap<PoolKey, Signals> = [(key(1), signals(true)), (key(7), signals(false))].into();
    let listener_signals = snap.listeners.iter().take(4).map(|l| (l.id, signals(l.port % 2 == 0))).collect();
    let section = PoolsSection {
        pools: &pools,
        destinations: &dests,
        signals: &pool_signals,
        extras: Some(&extras),
        listener_signals: &listener_signals,
        max_series: 30,
    };
    let mut probes = BTreeMap::new();
    probes.insert("pools", ProbeState::Up { program: "x" });
    let alerts = [
        alert("ListenQueueFull", &[("netns", "7"), ("port", "20021")]),
        alert("PoolConnectFailures", &[("dst_port", "20033"), ("comm", "worker")]),
    ];
    let fired = BTreeMap::new();
    let ctx = Context {
        probes: &probes,
        scan_seconds: 0.25,
        connections_age: 1.5,
        max_listener_series: 36,
        alerts: &alerts,
        alerts_fired: &fired,
        cluster: None,
    };
    render(snap, &section, &ctx, selector)
}

/// Build info carries the crate's version: left out of the comparison.
fn without_version(text: &str) -> String {
    text.lines().filter(|l| !l.starts_with("connmon_build_info{")).map(|l| format!("{l}\n")).collect()
}

#[test]
fn the_exposition_is_byte_for_byte_what_it_was_before_the_label_caches() {
    let snap = snapshot();
    let mut sel = budget::Selector::new(budget::Settings { budget: 900, hold: budget::DEFAULT_HOLD });
    let first = scrape(&mut sel, &snap, 1);
    let second = scrape(&mut sel, &snap, 2);
    let got = format!("{}{}", without_version(&first), without_version(&second));
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/export/testdata/render_fixture.txt");
    if std::env::var_os("CONNMON_WRITE_FIXTURE").is_some() {
        std::fs::write(path, &got).unwrap();
    }
    let want = std::fs::read_to_string(path).expect("the fixture (CONNMON_WRITE_FIXTURE=1 writes it)");
    // Every level in use, so the comparison covers them all.
    assert!(
        got.contains("connmon_series_left_out{kind=\"pool\",level=\"all\"} ") && !got.contains("level=\"all\"} 0\n"),
        "{got}"
    );
    assert!(got.contains("level=\"detail\"} ") && got.contains("connmon_pool_series_folded{} "), "{got}");
    if got != want {
        let line = got.lines().zip(want.lines()).position(|(a, b)| a != b).unwrap_or(0);
        panic!(
            "the exposition changed at line {line}: got {:?}, want {:?}",
            got.lines().nth(line),
            want.lines().nth(line)
        );
    }
}
