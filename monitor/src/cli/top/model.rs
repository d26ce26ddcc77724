//! What `connmon top` shows, apart from where it comes from and how it is drawn: the rows of the
//! three tabs as the last refresh delivered them, each row's recent history (a bounded ring per
//! row, a bounded number of rows), the rates and growth derived from that history, the alerts
//! matched to rows, and the viewer's state (tab, sort, filter, pause, help). Pure data: the data
//! sources fill a `Frame`, `view` renders the model, and the tests drive both without a terminal.
use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::alerts::{AlertState, AlertView};

/// Samples of history kept per row: a minute at the default 2 s refresh is 30; 60 covers two.
pub const HISTORY: usize = 60;
/// Rows whose history is kept at most; the ones unseen longest are forgotten first.
pub const MAX_TRACKED: usize = 2048;
/// Refreshes a row may be absent before its history is forgotten.
const FORGET_AFTER: u64 = 30;
/// Window of the growth figure, in samples.
const GROWTH_SAMPLES: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tab {
    Listeners,
    Pools,
    Destinations,
}

impl Tab {
    pub const ALL: [Tab; 3] = [Tab::Listeners, Tab::Pools, Tab::Destinations];

    pub fn title(self) -> &'static str {
        match self {
            Tab::Listeners => "Listeners",
            Tab::Pools => "Pools",
            Tab::Destinations => "Destinations",
        }
    }

    /// Headers of the descriptive cells, then of the gauge, its limit and the bad-event rate.
    pub fn headers(self) -> (&'static [&'static str], [&'static str; 3]) {
        match self {
            Tab::Listeners => (&["LOCAL", "NETNS", "PROCESS"], ["DEPTH", "BACKLOG", "DROPS/S"]),
            Tab::Pools => (&["SERVICE", "DESTINATION", "PROCESS", "CGROUP"], ["ACTIVE", "PENDING", "FAILS/S"]),
            Tab::Destinations => (&["SERVICE", "DESTINATION", "TOP WORKLOADS"], ["CONNS", "CEILING", "REJECTS/S"]),
        }
    }
}

/// Orders a tab's rows; `Worst` is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Alerts firing, then pending, then storms, then the highest of the row's normalised figures.
    Worst,
    Fill,
    Wait,
    Growth,
    Rejections,
    Storm,
    Name,
}

impl Sort {
    pub const ALL: [Sort; 7] =
        [Sort::Worst, Sort::Fill, Sort::Wait, Sort::Growth, Sort::Rejections, Sort::Storm, Sort::Name];

    pub fn name(self) -> &'static str {
        match self {
            Sort::Worst => "worst",
            Sort::Fill => "fill",
            Sort::Wait => "wait",
            Sort::Growth => "growth",
            Sort::Rejections => "rejections",
            Sort::Storm => "storm",
            Sort::Name => "name",
        }
    }

    pub fn next(self) -> Sort {
        let i = Sort::ALL.iter().position(|s| *s == self).unwrap_or(0);
        Sort::ALL[(i + 1) % Sort::ALL.len()]
    }
}

/// One row as a data source delivers it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    /// Identity across refreshes (the metric labels joined).
    pub key: String,
    /// The metric labels of the row, to match alerts.
    pub labels: BTreeMap<String, String>,
    /// Descriptive cells, as many as the tab's headers.
    pub text: Vec<String>,
    /// What filtering by workload or destination looks at.
    pub search: String,
    /// The figure the sparkline and growth follow (queue depth, connections).
    pub gauge: f64,
    /// What the gauge fills (backlog, observed ceiling); second figure column otherwise.
    pub limit: Option<f64>,
    /// Shown in the limit column when there is no limit (a pool's connects pending).
    pub second: Option<f64>,
    /// Queue wait in seconds (listeners).
    pub wait: Option<f64>,
    /// Cumulative bad events (drops, failures, rejections): the model turns them into a rate.
    pub bad_total: Option<u64>,
    pub storm_score: Option<f64>,
    pub in_storm: bool,
}

/// What one refresh delivers.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub rows: BTreeMap<Tab, Vec<Row>>,
    pub alerts: Vec<AlertView>,
    /// Problems worth a line on screen (a probe not loaded, the agent unreachable).
    pub notes: Vec<String>,
}

/// A row with what the model derived for it.
#[derive(Debug, Clone)]
pub struct Shown {
    pub row: Row,
    pub fill: Option<f64>,
    pub bad_rate: Option<f64>,
    /// Change of the gauge per minute over the last GROWTH_SAMPLES refreshes.
    pub growth: Option<f64>,
    pub history: Vec<f64>,
    /// The worst alert on this row: (state, alertname).
    pub alert: Option<(AlertState, String)>,
}

#[derive(Debug, Default)]
struct Track {
    samples: VecDeque<(f64, f64)>,
    last_bad: Option<(f64, u64)>,
    bad_rate: Option<f64>,
    seen: u64,
}

/// The whole state of the viewer.
#[derive(Debug)]
pub struct Model {
    pub tab: Tab,
    pub sort: Sort,
    /// Applied filter (substring of workload or destination), case-insensitive.
    pub filter: String,
    /// Text being typed after `/`, until Enter or Esc.
    pub editing: Option<String>,
    pub paused: bool,
    /// Refreshes that arrived while paused and were not shown.
    pub held: u64,
    pub help: bool,
    /// Where the data comes from, for the title line.
    pub source: String,
    /// Wall-clock time of the last refresh shown (HH:MM:SS).
    pub updated: String,
    pub interval_secs: f64,
    pub frame: Frame,
    tracks: HashMap<(Tab, String), Track>,
    refreshes: u64,
    /// Rows whose history was dropped because MAX_TRACKED was reached.
    pub forgotten: u64,
}

impl Model {
    pub fn new(source: String, interval_secs: f64) -> Self {
        Self {
            tab: Tab::Listeners,
            sort: Sort::Worst,
            filter: String::new(),
            editing: None,
            paused: false,
            held: 0,
            help: false,
            source,
            updated: String::new(),
            interval_secs,
            frame: Frame::default(),
            tracks: HashMap::new(),
            refreshes: 0,
            forgotten: 0,
        }
    }

    /// Rows whose history is kept now.
    pub fn tracked(&self) -> usize {
        self.tracks.len()
    }

    /// Takes a refresh taken at `now` (seconds, any monotonic origin); ignored while paused.
    pub fn update(&mut self, frame: Frame, now: f64, updated: String) {
        if self.paused {
            self.held += 1;
            return;
        }
        self.held = 0;
        self.refreshes += 1;
        for (tab, rows) in &frame.rows {
            for r in rows {
                let t = self.tracks.entry((*tab, r.key.clone())).or_default();
                t.seen = self.refreshes;
                t.samples.push_back((now, r.gauge));
                while t.samples.len() > HISTORY {
                    t.samples.pop_front();
                }
                if let Some(total) = r.bad_total {
                    t.bad_rate = match t.last_bad {
                        Some((t0, b0)) if now > t0 => Some(total.saturating_sub(b0) as f64 / (now - t0)),
                        _ => None,
                    };
                    t.last_bad = Some((now, total));
                }
            }
        }
        let refreshes = self.refreshes;
        self.tracks.retain(|_, t| refreshes - t.seen <= FORGET_AFTER);
        if self.tracks.len() > MAX_TRACKED {
            let mut ages: Vec<u64> = self.tracks.values().map(|t| t.seen).collect();
            ages.sort_unstable();
            let cut = ages[self.tracks.len() - MAX_TRACKED];
            let before = self.tracks.len();
            self.tracks.retain(|_, t| t.seen >= cut);
            // Ties at the cut keep a few more than the bound; drop arbitrary ones of those.
            let extra = self.tracks.len().saturating_sub(MAX_TRACKED);
            let drop: Vec<(Tab, String)> =
                self.tracks.iter().filter(|(_, t)| t.seen == cut).map(|(k, _)| k.clone()).take(extra).collect();
            for k in &drop {
                self.tracks.remove(k);
            }
            self.forgotten += (before - self.tracks.len()) as u64;
        }
        self.frame = frame;
        self.updated = updated;
    }

    /// The rows of `tab` as shown: filtered, derived figures added, sorted.
    pub fn shown(&self, tab: Tab) -> Vec<Shown> {
        let needle = self.filter.to_lowercase();
        let mut out: Vec<Shown> = self
            .frame
            .rows
            .get(&tab)
            .into_iter()
            .flatten()
            .filter(|r| needle.is_empty() || r.search.to_lowercase().contains(&needle))
            .map(|r| self.derive(tab, r))
            .collect();
        let key = |s: &Shown| -> f64 {
            match self.sort {
                Sort::Worst => worst(s),
                Sort::Fill => s.fill.unwrap_or(-1.0),
                Sort::Wait => s.row.wait.unwrap_or(-1.0),
                Sort::Growth => s.growth.unwrap_or(f64::MIN),
                Sort::Rejections => s.bad_rate.unwrap_or(-1.0),
                Sort::Storm => s.row.storm_score.unwrap_or(-1.0) + if s.row.in_storm { 10.0 } else { 0.0 },
                Sort::Name => 0.0,
            }
        };
        out.sort_by(|a, b| key(b).total_cmp(&key(a)).then_with(|| a.row.text.cmp(&b.row.text)));
        out
    }

    fn derive(&self, tab: Tab, r: &Row) -> Shown {
        let t = self.tracks.get(&(tab, r.key.clone()));
        let history: Vec<f64> = t.map(|t| t.samples.iter().map(|s| s.1).collect()).unwrap_or_default();
        let growth = t.and_then(|t| {
            let n = t.samples.len();
            let (t0, v0) = *t.samples.get(n.saturating_sub(GROWTH_SAMPLES))?;
            let (t1, v1) = *t.samples.back()?;
            (n >= 2 && t1 > t0).then(|| (v1 - v0) / (t1 - t0) * 60.0)
        });
        let fill = r.limit.filter(|l| *l > 0.0).map(|l| r.gauge / l);
        Shown {
            row: r.clone(),
            fill,
            bad_rate: t.and_then(|t| t.bad_rate),
            growth,
            history,
            alert: self.alert_for(&r.labels),
        }
    }

    /// The worst alert whose labels and the row's agree on every name they share: a
    /// destination's alert lights its pools too, a pool's alert its destination.
    fn alert_for(&self, labels: &BTreeMap<String, String>) -> Option<(AlertState, String)> {
        self.frame
            .alerts
            .iter()
            .filter(|a| a.state != AlertState::Resolved)
            .filter(|a| {
                let shared = a.labels.iter().filter(|(k, _)| labels.contains_key(*k)).count();
                shared > 0
                    && a.labels.iter().all(|(k, v)| labels.get(k).is_none_or(|mine| mine == v))
                    && (shared == labels.len() || shared == a.labels.iter().filter(|(_, v)| !v.is_empty()).count())
            })
            .map(|a| (a.state, a.alertname.clone()))
            .min()
    }

    // Keys. Each returns nothing; the caller redraws.
    pub fn next_tab(&mut self, step: isize) {
        let i = Tab::ALL.iter().position(|t| *t == self.tab).unwrap_or(0) as isize;
        self.tab = Tab::ALL[(i + step).rem_euclid(Tab::ALL.len() as isize) as usize];
    }
}

/// Alerts firing rank above pending ones, those above storms, those above the rest; within a
/// rank the highest of fill, storm score, wait (against 1 s), rejections (against 10/s) and
/// growth (against 60/min), each capped at 1.
pub fn worst(s: &Shown) -> f64 {
    let rank = match &s.alert {
        Some((AlertState::Firing, _)) => 4.0,
        Some((AlertState::Pending, _)) => 3.0,
        _ if s.row.in_storm => 2.0,
        _ => 0.0,
    };
    let parts = [
        s.fill.unwrap_or(0.0),
        s.row.storm_score.unwrap_or(0.0),
        s.row.wait.unwrap_or(0.0),
        s.bad_rate.unwrap_or(0.0) / 10.0,
        s.growth.unwrap_or(0.0) / 60.0,
    ];
    rank + parts.iter().map(|p| p.clamp(0.0, 1.0)).fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn row(key: &str, gauge: f64, limit: Option<f64>) -> Row {
        Row {
            key: key.into(),
            labels: [("addr".to_string(), key.to_string())].into(),
            text: vec![key.into(), "1".into(), "proc".into()],
            search: key.into(),
            gauge,
            limit,
            ..Default::default()
        }
    }

    fn frame(rows: Vec<Row>) -> Frame {
        Frame { rows: [(Tab::Listeners, rows)].into(), ..Default::default() }
    }

    #[test]
    fn history_is_bounded_and_growth_and_rates_come_from_it() {
        let mut m = Model::new("test".into(), 1.0);
        for i in 0..(HISTORY as u64 + 10) {
            let mut r = row("a", i as f64, Some(1000.0));
            r.bad_total = Some(i * 5);
            m.update(frame(vec![r]), i as f64, String::new());
        }
        let s = &m.shown(Tab::Listeners)[0];
        assert_eq!(s.history.len(), HISTORY);
        assert_eq!(s.growth, Some(60.0), "one more per second is 60 a minute");
        assert_eq!(s.bad_rate, Some(5.0));
        m.paused = true;
        m.update(frame(vec![row("a", 0.0, None)]), 1000.0, String::new());
        assert_eq!(m.shown(Tab::Listeners)[0].row.gauge, (HISTORY + 9) as f64, "paused keeps the frame");
    }

    #[test]
    fn rows_tracked_are_bounded() {
        let mut m = Model::new("test".into(), 1.0);
        for i in 0..3 {
            let rows = (0..MAX_TRACKED).map(|k| row(&format!("{i}-{k}"), 1.0, None)).collect();
            m.update(frame(rows), i as f64, String::new());
            assert!(m.tracked() <= MAX_TRACKED, "{}", m.tracked());
        }
        assert_eq!(m.forgotten, 2 * MAX_TRACKED as u64);
    }

    #[test]
    fn worst_first_filter_and_alert_matching() {
        let mut m = Model::new("test".into(), 1.0);
        let mut stormy = row("10.0.0.3:80", 1.0, Some(100.0));
        stormy.in_storm = true;
        let rows = vec![row("10.0.0.1:80", 10.0, Some(100.0)), row("10.0.0.2:80", 90.0, Some(100.0)), stormy];
        let mut f = frame(rows);
        let labels = [("addr".to_string(), "10.0.0.1:80".to_string()), ("netns".to_string(), "1".to_string())];
        f.alerts.push(AlertView {
            alertname: "AcceptQueueSaturated".into(),
            state: AlertState::Pending,
            labels: labels.into(),
            annotations: Default::default(),
            since: String::new(),
            ended: None,
        });
        m.update(f, 0.0, String::new());
        let order: Vec<String> = m.shown(Tab::Listeners).iter().map(|s| s.row.key.clone()).collect();
        assert_eq!(order, ["10.0.0.1:80", "10.0.0.3:80", "10.0.0.2:80"], "pending alert, storm, 90% full");
        m.sort = Sort::Fill;
        assert_eq!(m.shown(Tab::Listeners)[0].row.key, "10.0.0.2:80");
        m.filter = "0.0.3".into();
        assert_eq!(m.shown(Tab::Listeners).len(), 1);
    }
}
