//! `connmon destinations`: this host's client pools summed per destination, from one scan (open
//! connections and the workloads holding them), or live from the kernel probes with `--watch`
//! (connects in flight, the server's rejections, and the ceiling learned when they began).
use std::time::Instant;

use super::pools::{show, PoolsArgs};
use crate::model::{
    destinations::{workload_of, DestKey, Destination, Tracker},
    pools::Pool,
};

pub fn run(args: &PoolsArgs) -> anyhow::Result<()> {
    let mut tracker = Tracker::new(Default::default(), Default::default(), Default::default());
    let mut namer = super::names::Namer::default();
    let started = Instant::now();
    show(args, |pools, live| {
        let dests = tracker.update(started.elapsed().as_secs_f64(), pools, live, true);
        // A workload's recognisable name: its pool's process (worker.py), by the pool's comm and cgroup.
        let mut name = |d: &Destination, w: &str| {
            pools
                .iter()
                .find(|p: &&Pool| DestKey::of(p) == d.key && workload_of(p) == w)
                .map(|p| namer.name(&p.comm, &p.cgroup, None))
                .unwrap_or_else(|| w.to_string())
        };
        if args.json {
            let rows: Vec<serde_json::Value> = dests
                .iter()
                .map(|d| {
                    let mut v = serde_json::to_value(d).unwrap_or_default();
                    if !d.probed {
                        // A scan has no kernel counters: unknown, not zero.
                        v["evidence"] = serde_json::Value::Null;
                        v["pending"] = serde_json::Value::Null;
                    }
                    v["workloads"] = d
                        .workloads
                        .iter()
                        .map(|(w, n)| serde_json::json!({"workload": w, "name": name(d, w), "connections": n}))
                        .collect();
                    v
                })
                .collect();
            return super::print_json(rows.into_iter());
        }
        let named: Vec<Destination> = dests
            .iter()
            .map(|d| Destination {
                workloads: d.workloads.iter().map(|(w, n)| (name(d, w), *n)).collect(),
                ..d.clone()
            })
            .collect();
        super::print_rows(&named, false, super::table::print_destinations)
    })
}
