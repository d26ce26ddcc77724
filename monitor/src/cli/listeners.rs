//! `connmon listeners`: one scan of every listening socket in every network namespace (or one),
//! printed as a table or JSON lines.
use clap::Args;

use crate::{
    attribution::cgroups,
    model::listeners,
    scan::{self, netns},
};

#[derive(Debug, Args)]
pub struct ListenersArgs {
    /// One JSON object per listener, one per line.
    #[arg(long)]
    pub json: bool,
    /// Only this network namespace: its /run/netns name or its inode.
    #[arg(long)]
    pub netns: Option<String>,
}

pub fn run(args: &ListenersArgs) -> anyhow::Result<()> {
    if let Some(filter) = &args.netns {
        if !netns::discover().iter().any(|ns| scan::matches_filter(ns, filter)) {
            anyhow::bail!("no network namespace matches {filter:?}: give a name from /run/netns or an inode");
        }
    }
    let snap = listeners::build(&scan::scan(args.netns.as_deref(), scan::Depth::Full), &mut cgroups::CgroupNames::default());
    super::print_rows(&snap.listeners, args.json, super::table::print_listeners)
}
