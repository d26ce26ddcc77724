//! Destination series: per (service, dst_addr, dst_port), this host's client pools summed (open
//! connections, their peak, connects in flight), the server's rejection evidence, and the ceiling
//! learned when rejections began. Only destinations of exported (not folded) pools get series, so
//! `--pools.max-series` bounds these too.
use std::{collections::BTreeMap, sync::Arc};

use prometheus_client::registry::Registry;

use super::{budget::Level, counter_family, gauge_family, Labels};
use crate::model::destinations::{Destination, REJECTION_KINDS};

pub const DEST_CONNECTIONS: &str = "connmon_destination_connections";
pub const DEST_PEAK: &str = "connmon_destination_connections_peak";
pub const DEST_PENDING: &str = "connmon_destination_connects_pending";
pub const DEST_REJECTIONS: &str = "connmon_destination_rejections_total";
pub const DEST_CEILING: &str = "connmon_destination_ceiling_observed";

fn dest_labels(d: &Destination) -> Labels {
    vec![
        ("service".into(), d.key.service.clone()),
        ("dst_addr".into(), d.key.dst_addr.to_string()),
        ("dst_port".into(), d.key.dst_port.to_string()),
    ]
}

/// `exported`: (dst_addr, dst_port) of the pools exported, at the highest level of their pools: a
/// summary has open connections, the rejections seen and the ceiling. `probed`: the pools probe
/// is up, so there are counters (and connects in flight) to export.
pub fn register(reg: &mut Registry, dests: &[Destination], exported: &BTreeMap<(String, String), Level>, probed: bool) {
    let conns = gauge_family(
        reg,
        DEST_CONNECTIONS,
        "Open connections from this host to the destination, summed over its client pools",
    );
    let peak = gauge_family(reg, DEST_PEAK, "Highest summed open-connection count to the destination in the last --peaks.window (default 1m) (at the agent's collections; at least its busiest pool's own peak)");
    let ceiling = gauge_family(reg, DEST_CEILING, "Connections this host held to the destination when its server last began rejecting new ones: the ceiling learned from the server (absent until rejections are seen)");
    let shown = dests
        .iter()
        .filter_map(|d| Some((d, *exported.get(&(d.key.dst_addr.to_string(), d.key.dst_port.to_string()))?)));
    let (pending, rejections) = if probed {
        (
            Some(gauge_family(reg, DEST_PENDING, "Connects to the destination in flight now (SYN_SENT), summed over its client pools")),
            Some(counter_family(reg, DEST_REJECTIONS, "New connections to the destination the server rejected, by how: reset_young or closed_young (the server reset or hung up within --storm.short-lived of the handshake; closed_young only for recognised services), refused (RST to the SYN), timeout (no answer: the kernel's SYN retries or the client's own connect timeout), unreachable (ICMP, other failures)")),
        )
    } else {
        (None, None)
    };
    for (d, level) in shown {
        let detail = level == Level::Detail;
        let l = Arc::new(dest_labels(d));
        conns.get_or_create(&l).set(d.connections);
        if let Some(c) = d.ceiling_observed {
            ceiling.get_or_create(&l).set(c);
        }
        if detail {
            peak.get_or_create(&l).set(d.peak);
            if let Some(p) = &pending {
                p.get_or_create(&l).set(d.pending);
            }
        }
        if let Some(r) = &rejections {
            for (how, n) in REJECTION_KINDS.iter().zip(d.evidence.rejections) {
                if !detail && n == 0 {
                    continue;
                }
                r.with(&l, &[("how", how)]).inc_by(n);
            }
        }
    }
}
