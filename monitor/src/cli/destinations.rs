//! `connmon destinations`: this host's client pools summed per destination, from one scan (open
//! connections and the workloads holding them), or live from the kernel probes with `--watch`
//! (connects in flight, the server's rejections, and the ceiling learned when they began).
use std::time::Instant;

use super::pools::{show, PoolsArgs};
use crate::model::destinations::Tracker;

pub fn run(args: &PoolsArgs) -> anyhow::Result<()> {
    let mut tracker = Tracker::new(Default::default(), Default::default(), Default::default());
    let started = Instant::now();
    show(args, |pools, live| {
        let dests = tracker.update(started.elapsed().as_secs_f64(), pools, live, true);
        super::print_rows(&dests, args.json, super::table::print_destinations)
    })
}
