//! `connmon alerts`: asks a running agent for the alerts it has pending or firing. With `--json`,
//! one object per alert with its labels as top-level fields (see docs/json.md).
use clap::Args;

use super::client::{AgentArgs, AgentClient};
use crate::alerts::AlertView;

/// Where `connmon alerts` asks when no --agent is given.
pub const DEFAULT_AGENT: &str = "http://127.0.0.1:9977";

#[derive(Debug, Args)]
pub struct AlertsArgs {
    #[command(flatten)]
    pub agent: AgentArgs,
    /// One JSON object per alert, one per line.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &AlertsArgs) -> anyhow::Result<()> {
    let client = AgentClient::from_args(&args.agent, DEFAULT_AGENT)?;
    let alerts: Vec<AlertView> = client.get_json("/api/v1/alerts")?;
    if args.json {
        return super::print_json(alerts.iter().map(json_row));
    }
    super::print_rows(&alerts, false, super::table::print_alerts)
}

/// An alert as one flat object: alertname, state, since, ended, then its labels (top-level, as
/// the metric labels are named), and the annotations under `annotations`.
pub fn json_row(a: &AlertView) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    o.insert("alertname".into(), a.alertname.clone().into());
    o.insert("state".into(), a.state.as_str().into());
    o.insert("since".into(), a.since.clone().into());
    o.insert("ended".into(), a.ended.clone().into());
    for (k, v) in &a.labels {
        o.entry(k.clone()).or_insert_with(|| v.clone().into());
    }
    o.insert("annotations".into(), serde_json::to_value(&a.annotations).unwrap_or_default());
    o.into()
}
