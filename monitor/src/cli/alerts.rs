//! `connmon alerts`: asks a running agent for the alerts it has pending or firing.
use clap::Args;

use crate::alerts::AlertView;

#[derive(Debug, Args)]
pub struct AlertsArgs {
    /// The agent's address.
    #[arg(long, default_value = "http://127.0.0.1:9977")]
    pub agent: String,
    /// One JSON object per alert, one per line.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &AlertsArgs) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/alerts", args.agent.trim_end_matches('/'));
    let alerts: Vec<AlertView> = ureq::get(&url).call().and_then(|mut r| r.body_mut().read_json()).map_err(|e| {
        anyhow::anyhow!("cannot read alerts from {url}: {e} (is `connmon run` serving there? see --agent)")
    })?;
    super::print_rows(&alerts, args.json, super::table::print_alerts)
}
