//! The budget on a fleet-sized host, rendered for real: 1,500 listeners and 1,500 pools with
//! counters, a few failing pools and queued listeners.
use std::{collections::HashMap, time::Instant};

use monitor_common::PoolStats;

use super::{budget, pools::PoolsSection, render, Context};
use crate::model::{
    listeners::{tests_support::listener, Snapshot},
    pools::{tests_support::pool, KernelExtras, Pool},
};

const N: usize = 1500;

fn snapshot() -> Snapshot {
    let mut snap = Snapshot::default();
    for i in 0..N {
        let mut l = listener(u32::from(i < 5) * 3, 128);
        l.port = 20_000 + i as u16;
        l.id.port = l.port;
        l.id.cookie = i as u64;
        l.established = 1;
        snap.listeners.push(l);
    }
    snap
}

/// Pools to every listener; pools 0..20 fail `round` times more each scrape.
fn pools(round: u64) -> Vec<Pool> {
    (0..N)
        .map(|i| {
            let mut p = pool("app", 1);
            p.service = "other".into();
            p.dst_port = 20_000 + i as u16;
            let mut s = PoolStats { attempts: 10, opens: 10, closes: 9, ..Default::default() };
            s.connect_us[2] = 10;
            s.lifetime_ms[3] = 9;
            if i < 20 {
                s.failures[0] = 5 * round;
                s.attempts += 5 * round;
            }
            p.stats = Some(s);
            p
        })
        .collect()
}

fn scrape(selector: &mut budget::Selector, snap: &Snapshot, round: u64) -> (String, f64) {
    let pools = pools(round);
    let extras = KernelExtras::default();
    let (signals, listener_signals) = (HashMap::new(), HashMap::new());
    let section = PoolsSection {
        pools: &pools,
        destinations: &[],
        signals: &signals,
        extras: Some(&extras),
        listener_signals: &listener_signals,
        max_series: 1000,
    };
    let (probes, fired) = (Default::default(), Default::default());
    let ctx = Context {
        probes: &probes,
        scan_seconds: 0.0,
        connections_age: 0.0,
        max_listener_series: 5000,
        alerts: &[],
        alerts_fired: &fired,
        cluster: None,
    };
    let t = Instant::now();
    let text = render(snap, &section, &ctx, selector);
    (text, t.elapsed().as_secs_f64() * 1e3)
}

fn samples(text: &str) -> usize {
    text.lines().filter(|l| !l.starts_with('#')).count()
}

#[test]
fn a_fleet_host_stays_within_the_default_budget() {
    let snap = snapshot();
    let mut full = budget::Selector::new(budget::Settings { budget: 0, hold: budget::DEFAULT_HOLD });
    let (all, ms_all) = scrape(&mut full, &snap, 1);
    let mut sel = budget::Selector::default();
    scrape(&mut sel, &snap, 1);
    let (text, ms) = scrape(&mut sel, &snap, 2);
    eprintln!(
        "no budget: {} series, {} bytes, {ms_all:.1} ms; default budget: {} series, {} bytes, {ms:.1} ms",
        samples(&all),
        all.len(),
        samples(&text),
        text.len()
    );
    assert!(samples(&all) > 2 * budget::DEFAULT_BUDGET, "the fleet should need a budget: {}", samples(&all));
    assert!(samples(&text) <= budget::DEFAULT_BUDGET, "{} series", samples(&text));
    // The failing pools and the queued listeners keep their detail.
    for port in [20_000, 20_019] {
        let bucket = format!(
            "connmon_pool_connect_duration_seconds_count{{service=\"other\",dst_addr=\"127.0.0.1\",dst_port=\"{port}\""
        );
        assert!(text.contains(&bucket), "failing pool {port} lost its histogram");
        let timeout = format!("dst_port=\"{port}\",comm=\"app\",cgroup=\"/\",reason=\"timeout\"}} 0");
        assert!(text.contains(&timeout), "failing pool {port} lost its zero failure reasons");
    }
    assert_eq!(
        text.matches("connmon_listen_queue_fill_ratio{").count(),
        text.matches("connmon_listen_queue_peak_depth{").count()
    );
    assert!(text.contains("port=\"20004\",comm=\"\"} 3") || text.contains("port=\"20004\""), "queued listener missing");
    // What was left out is said, and adds up.
    let left = |kind: &str, level: &str| -> usize {
        let needle = format!("connmon_series_left_out{{kind=\"{kind}\",level=\"{level}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(needle.as_str())?.parse().ok()).unwrap_or(usize::MAX)
    };
    let shown_listeners = text.matches("connmon_listen_queue_depth{").count();
    assert_eq!(shown_listeners + left("listener", "all"), N);
    assert!(left("listener", "detail") > 0 && left("pool", "detail") > 0);
    let shown_pools = text.matches("connmon_pool_connections{").count();
    let folded: usize =
        text.lines().find_map(|l| l.strip_prefix("connmon_pool_series_folded{} ")?.parse().ok()).expect("folded gauge");
    assert_eq!(shown_pools - usize::from(folded > 0) + folded, N);
}
