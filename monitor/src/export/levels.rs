//! From a scan to the budget's plan: each listener's and pool's candidate figures (what makes it
//! notable now, how busy it is, what its series cost at each level), the accepts of each listener
//! (looked up once per scrape through a port index instead of a scan of every listener per
//! accept key), and an estimate of the series the exposition has besides listeners and pools.
use std::collections::HashMap;

use super::{
    budget::{self, AlertsByAnchor, Candidate, DestinationsPaid, Plan, Selector},
    pools::{PoolsSection, Row},
    Context,
};
use crate::{
    alerts::Alert,
    model::{
        destinations::Destination,
        listeners::{self, Listener},
        pools::{CLIENT_CLASSES, LOST_REASON_NAMES},
    },
    scan::netstat::TCP_EXT_COUNTERS,
};

/// Accepts per listener (index into the snapshot's listeners): (client class, count).
pub(crate) type Accepts = Vec<Vec<(&'static str, u64)>>;

/// Attributes each accept key to the listener that owns its port (accepts land on the child
/// socket), as `listeners::ListenerIndex::owner` decides (exact address, then the wildcards).
pub(crate) fn accepts_per_listener(listeners: &[Listener], section: &PoolsSection<'_>) -> Accepts {
    let mut out: Accepts = vec![Vec::new(); listeners.len()];
    let Some(extras) = section.extras else { return out };
    let index = listeners::ListenerIndex::new(listeners);
    for (key, n) in &extras.accepts {
        let addr = listeners::key_addr(&monitor_common::ListenerKey {
            cookie: 0,
            netns: key.netns,
            port: key.port,
            family: key.family,
            addr: key.addr,
        });
        let Some(i) = index.owner(u64::from(key.netns), addr, key.port) else { continue };
        let class = CLIENT_CLASSES.get(key.client_class as usize).copied().unwrap_or("public");
        let slot = &mut out[i];
        match slot.iter_mut().find(|(c, _)| *c == class) {
            Some((_, m)) => *m += n,
            None => slot.push((class, *n)),
        }
    }
    out
}

/// Series besides listeners and pools: namespaces, probes, alerts, the agent's own (an upper
/// bound where it depends on what the scan found).
fn fixed_series(ctx: &Context<'_>, namespaces: usize, cgroups: usize, destinations: usize) -> usize {
    let per_ns = 2 + TCP_EXT_COUNTERS.len() + 4;
    let cluster = ctx.cluster.map_or(0, |v| 3 * v.resources.len() + destinations);
    namespaces * per_ns
        + ctx.probes.len()
        + crate::kernel::maps::read_errors().len()
        + ctx.alerts.len()
        + Alert::ALL.len()
        + LOST_REASON_NAMES.len()
        + 1
        + cgroups
        + cluster
        // build info, scan duration and age, failed namespaces, dropped, folded, budget, left out
        + 12
}

/// The plan for this scrape: listeners beyond `ctx.max_listener_series` and pool rows beyond
/// `section.max_series` are left out before the budget is applied.
pub(crate) fn plan(
    selector: &mut Selector,
    listeners: &[Listener],
    accepts: &Accepts,
    rows: &[([String; 5], Row)],
    section: &PoolsSection<'_>,
    ctx: &Context<'_>,
    namespaces: usize,
) -> Plan {
    let probed = section.extras.is_some();
    let l_cap = listeners.len().min(ctx.max_listener_series);
    let by_port = AlertsByAnchor::new(ctx.alerts, "port");
    let by_dst_port = AlertsByAnchor::new(ctx.alerts, "dst_port");
    let l_cands: Vec<_> = listeners[..l_cap]
        .iter()
        .zip(accepts)
        .map(|(l, acc)| {
            let sig = section.listener_signals.get(&l.id);
            let q = &l.queue;
            let (summary_cost, detail_cost) = budget::listener_costs(l, acc.len(), sig);
            // A listener's labels are built only when an alert names its port (most renders: none).
            let alerted = by_port.anchors(&l.port_label()) && {
                let values = l.label_values();
                let identity: Vec<(&str, &str)> =
                    listeners::LISTENER_LABELS.iter().copied().zip(values.iter().map(String::as_str)).collect();
                by_port.name(&identity)
            };
            let c = Candidate {
                trouble: l.drops + l.synack_retransmits.unwrap_or(0) + q.stats.abandoned_fin + q.stats.abandoned_rst,
                connections: i64::from(l.established),
                // A connection passing through the queue is not queueing: a peak of a tenth of the
                // backlog, or a wait a client notices, is. The measured wait comes first: Little's
                // law over a few accepts in 10 s makes one late accept look like a long queue.
                busy_now: u64::from(l.peak_depth) * 10 > u64::from(l.backlog).max(10)
                    || q.wait_measured_seconds.or(q.wait_seconds).is_some_and(|w| w >= 0.1)
                    || q.slow_drain
                    || sig.is_some_and(|s| s.in_storm || s.score.overall > 0.5),
                hint: l.depth > 0 || l.syn_queue > 0,
                alerted,
                weight: i64::from(l.established) + acc.iter().map(|(_, n)| *n as i64).sum::<i64>(),
                summary_cost,
                detail_cost,
            };
            (l.id, c)
        })
        .collect();

    let dests: HashMap<(String, String), &Destination> =
        section.destinations.iter().map(|d| ((d.key.dst_addr.to_string(), d.key.dst_port.to_string()), d)).collect();
    let mut paid = DestinationsPaid::new();
    let p_cap = rows.len().min(section.max_series);
    let p_cands: Vec<_> = rows[..p_cap]
        .iter()
        .map(|(values, r)| {
            let sig = super::storms::strongest(&r.keys, section.signals);
            let s = r.stats.unwrap_or_default();
            let failures_seen = s.failures.iter().filter(|n| **n > 0).count();
            let died_seen = usize::from(s.died_reset > 0) + usize::from(s.died_server_closed > 0);
            let (mut summary_cost, mut detail_cost) =
                budget::pool_costs(failures_seen, died_seen, probed, sig.as_ref());
            if paid.first(&values[1], &values[2]) {
                let (ds, dd) = match dests.get(&(values[1].clone(), values[2].clone())) {
                    Some(d) => budget::destination_costs(
                        d.evidence.rejections.iter().filter(|n| **n > 0).count(),
                        d.ceiling_observed.is_some(),
                        probed,
                    ),
                    None => budget::destination_costs(0, false, probed),
                };
                summary_cost += ds;
                detail_cost += dd;
            }
            let identity: Vec<(&str, &str)> =
                crate::model::pools::POOL_LABELS.iter().copied().zip(values.iter().map(String::as_str)).collect();
            let c = Candidate {
                trouble: s.failures.iter().sum::<u64>() + s.died_reset + s.died_server_closed + s.resets_received,
                connections: r.active,
                busy_now: sig.as_ref().is_some_and(|s| s.in_storm || s.score.overall > 0.5),
                hint: r.pending > 0,
                alerted: by_dst_port.name(&identity),
                weight: r.active,
                summary_cost,
                detail_cost,
            };
            (values.clone(), c)
        })
        .collect();
    // `other`: a pool in detail with a destination of its own.
    let other_cost = budget::pool_costs(5, 2, probed, None).1 + budget::destination_costs(5, true, probed).1;
    let cgroups: std::collections::HashSet<&str> = listeners[..l_cap]
        .iter()
        .filter_map(|l| l.cgroup.as_deref())
        .chain(rows[..p_cap].iter().map(|(v, _)| v[4].as_str()))
        .collect();
    let cgroups = cgroups.len();
    let fixed = fixed_series(ctx, namespaces, cgroups, p_cap);
    let mut plan = selector.plan(&l_cands, &p_cands, fixed, other_cost);
    plan.listeners.resize(listeners.len(), None);
    plan.pools.resize(rows.len(), None);
    // Entities beyond the caps are left out too.
    for (kind, levels) in [("listener", plan.listeners.clone()), ("pool", plan.pools.clone())] {
        let none = levels.iter().filter(|l| l.is_none()).count();
        let summary = levels.iter().filter(|l| **l == Some(budget::Level::Summary)).count();
        plan.left_out.retain(|(k, _, _)| *k != kind);
        plan.left_out.push((kind, "detail", summary));
        plan.left_out.push((kind, "all", none));
    }
    plan
}
