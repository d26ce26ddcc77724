//! Drawing `connmon top`: a pure function of the model, either onto a ratatui frame (the live
//! view) or as plain text (one frame per refresh when stdout is not a terminal). Both show the
//! same cells, so what a test reads in a pipe is what a person sees on screen.
use std::io::{self, Write};

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row as TRow, Table, Tabs},
    Frame,
};

use super::model::{Model, Shown, Tab};
use crate::alerts::AlertState;

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
/// Samples in a row's sparkline (the newest ones of its history).
const SPARK_WIDTH: usize = 20;

/// Whether the tab shows a fill column (there is a limit to fill) and a queue-wait column.
fn has_fill(tab: Tab) -> bool {
    tab != Tab::Pools
}

pub fn headers(tab: Tab) -> Vec<&'static str> {
    let (text, [gauge, second, bad]) = tab.headers();
    let mut h: Vec<&str> = text.to_vec();
    h.extend([gauge, second]);
    if has_fill(tab) {
        h.push("FILL");
    }
    if tab == Tab::Listeners {
        h.push("WAIT");
    }
    h.extend([bad, "GROWTH/M", "STORM", "HISTORY", "ALERT"]);
    h
}

fn num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_infinite() => "inf".into(),
        Some(v) if (v - v.round()).abs() < 1e-9 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "-".into(),
    }
}

pub fn sparkline(history: &[f64]) -> String {
    let recent = &history[history.len().saturating_sub(SPARK_WIDTH)..];
    let max = recent.iter().copied().fold(0.0, f64::max);
    recent
        .iter()
        .map(|v| if max <= 0.0 { BARS[0] } else { BARS[((v / max) * 7.0).round().clamp(0.0, 7.0) as usize] })
        .collect()
}

pub fn cells(tab: Tab, s: &Shown) -> Vec<String> {
    let r = &s.row;
    let mut c = r.text.clone();
    c.push(num(Some(r.gauge)));
    c.push(num(r.limit.or(r.second)));
    if has_fill(tab) {
        c.push(s.fill.map_or("-".into(), |f| format!("{:.0}%", f * 100.0)));
    }
    if tab == Tab::Listeners {
        c.push(r.wait.map_or("-".into(), |w| if w.is_infinite() { "inf".into() } else { format!("{w:.3}s") }));
    }
    c.push(s.bad_rate.map_or("-".into(), |b| format!("{b:.1}")));
    c.push(s.growth.map_or("-".into(), |g| format!("{g:+.1}")));
    c.push(match (r.in_storm, r.storm_score) {
        (true, Some(v)) => format!("STORM {v:.2}"),
        (true, None) => "STORM".into(),
        (false, v) => v.map_or("-".into(), |v| format!("{v:.2}")),
    });
    c.push(sparkline(&s.history));
    c.push(s.alert.as_ref().map_or("-".into(), |(st, name)| format!("{} {name}", st.as_str())));
    c
}

fn style_of(s: &Shown) -> Style {
    match &s.alert {
        Some((AlertState::Firing, _)) => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        Some((AlertState::Pending, _)) => Style::default().fg(Color::Yellow),
        _ if s.row.in_storm => Style::default().fg(Color::Magenta).add_modifier(Modifier::BOLD),
        _ => Style::default(),
    }
}

fn status(m: &Model) -> String {
    let mut s =
        format!("connmon top · {} · {} · every {}s · sort: {}", m.source, m.updated, m.interval_secs, m.sort.name());
    if !m.filter.is_empty() {
        s.push_str(&format!(" · filter: {}", m.filter));
    }
    if m.paused {
        s.push_str(&format!(" · PAUSED ({} refreshes held)", m.held));
    }
    s
}

/// The live view.
pub fn render(m: &Model, f: &mut Frame) {
    let alerts: Vec<&crate::alerts::AlertView> =
        m.frame.alerts.iter().filter(|a| a.state != AlertState::Resolved).collect();
    let alert_lines = (alerts.len().min(5) + m.frame.notes.len().min(3)) as u16;
    let [top, tabs, body, pane, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(alert_lines + 2),
        Constraint::Length(1),
    ])
    .areas(f.area());
    f.render_widget(Paragraph::new(status(m)).style(Style::default().add_modifier(Modifier::BOLD)), top);
    let titles: Vec<String> = Tab::ALL.iter().map(|t| format!("{} ({})", t.title(), m.shown(*t).len())).collect();
    let selected = Tab::ALL.iter().position(|t| *t == m.tab).unwrap_or(0);
    f.render_widget(
        Tabs::new(titles).select(selected).highlight_style(Style::default().add_modifier(Modifier::REVERSED)),
        tabs,
    );
    let shown = m.shown(m.tab);
    let heads = headers(m.tab);
    let rows: Vec<Vec<String>> = shown.iter().map(|s| cells(m.tab, s)).collect();
    let widths: Vec<Constraint> = (0..heads.len())
        .map(|i| {
            let w = rows.iter().map(|r| r[i].chars().count()).chain([heads[i].len()]).max().unwrap_or(1);
            Constraint::Length(w.min(40) as u16)
        })
        .collect();
    let table = Table::new(
        shown.iter().zip(&rows).map(|(s, r)| TRow::new(r.iter().map(|c| Cell::from(c.clone()))).style(style_of(s))),
        widths,
    )
    .header(TRow::new(heads.iter().map(|h| Cell::from(*h))).style(Style::default().add_modifier(Modifier::REVERSED)))
    .column_spacing(1);
    f.render_widget(table, body);
    let mut lines: Vec<Line> = alerts
        .iter()
        .take(5)
        .map(|a| {
            let st = if a.state == AlertState::Firing { Color::Red } else { Color::Yellow };
            Line::from(vec![
                Span::styled(format!("{:<8}", a.state.as_str()), Style::default().fg(st).add_modifier(Modifier::BOLD)),
                Span::raw(format!("{} {}", a.alertname, a.annotations.get("summary").cloned().unwrap_or_default())),
            ])
        })
        .collect();
    lines.extend(
        m.frame.notes.iter().take(3).map(|n| Line::from(Span::styled(n.clone(), Style::default().fg(Color::Yellow)))),
    );
    let storms: usize = m.frame.rows.values().flatten().filter(|r| r.in_storm).count();
    let mut title = format!(" Alerts: {} · storms: {storms} · history: {} rows", alerts.len(), m.tracked());
    if m.forgotten > 0 {
        // The bound on rows tracked was hit: say so, with how many histories were dropped.
        title.push_str(&format!(" (limit {}, {} forgotten)", super::model::MAX_TRACKED, m.forgotten));
    }
    title.push(' ');
    f.render_widget(Paragraph::new(lines).block(Block::default().borders(Borders::TOP).title(title)), pane);
    let footer = match &m.editing {
        Some(text) => format!("filter (workload or destination): {text}_   Enter apply · Esc cancel"),
        None => "q quit · Tab/1-3 tabs · s sort · / filter · space pause · ? help".into(),
    };
    f.render_widget(Paragraph::new(footer).style(Style::default().add_modifier(Modifier::REVERSED)), foot);
    if m.help {
        help(f);
    }
}

const HELP: &[&str] = &[
    "connmon top: listeners, pools and destinations, worst first",
    "",
    "Tab, Shift-Tab, ←/→, 1 2 3   switch tab",
    "s / S                        next / previous sort (worst, fill, wait, growth, rejections, storm, name)",
    "/                            filter by workload or destination (substring); Enter applies, Esc cancels",
    "c                            clear the filter",
    "space or p                   pause (the screen stays; data is not read)",
    "? or h                       this help",
    "q, Esc, Ctrl-C               quit",
    "",
    "Worst first: alerts firing, then pending, then retry storms, then the highest of",
    "fill, storm score, queue wait (1 s = 100%), bad events (10/s = 100%), growth (60/min = 100%).",
    "HISTORY: the row's gauge (depth, connections) over the last 20 refreshes.",
];

fn help(f: &mut Frame) {
    let area = f.area();
    let w = (HELP.iter().map(|l| l.chars().count()).max().unwrap_or(40) as u16 + 4).min(area.width);
    let h = (HELP.len() as u16 + 2).min(area.height);
    let r = Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h };
    f.render_widget(Clear, r);
    let text: Vec<Line> = HELP.iter().map(|l| Line::from(*l)).collect();
    f.render_widget(Paragraph::new(text).block(Block::default().borders(Borders::ALL).title(" Help ")), r);
}

/// The plain view: the status line, each tab as an aligned table, then alerts and notes.
pub fn plain(m: &Model, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "{}", status(m))?;
    for tab in Tab::ALL {
        let shown = m.shown(tab);
        writeln!(out, "\n{} ({})", tab.title(), shown.len())?;
        let rows: Vec<Vec<String>> = shown.iter().map(|s| cells(tab, s)).collect();
        crate::cli::table::print(out, &headers(tab), &rows)?;
    }
    let alerts: Vec<_> = m.frame.alerts.iter().filter(|a| a.state != AlertState::Resolved).collect();
    writeln!(out, "\nAlerts ({})", alerts.len())?;
    for a in alerts {
        writeln!(
            out,
            "{} {} {}",
            a.state.as_str(),
            a.alertname,
            a.annotations.get("summary").cloned().unwrap_or_default()
        )?;
    }
    for n in &m.frame.notes {
        writeln!(out, "note: {n}")?;
    }
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use ratatui::{backend::TestBackend, Terminal};

    use super::*;
    use crate::cli::top::model::{Frame as Data, Row, Sort};

    fn screen(m: &Model) -> String {
        let mut t = Terminal::new(TestBackend::new(150, 20)).unwrap();
        t.draw(|f| render(m, f)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>().trim_end().to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn listener(addr: &str, depth: f64, backlog: f64) -> Row {
        Row {
            key: addr.into(),
            labels: [("addr".to_string(), addr.to_string())].into(),
            text: vec![addr.into(), "4026531840".into(), "worker.py".into()],
            search: format!("{addr} worker.py"),
            gauge: depth,
            limit: Some(backlog),
            bad_total: Some(0),
            ..Default::default()
        }
    }

    #[test]
    fn renders_rows_worst_first_with_sparklines_and_keys() {
        let mut m = Model::new("probes on this host".into(), 1.0);
        for i in 0..5 {
            let rows = vec![listener("0.0.0.0:8080", 2.0 * i as f64, 10.0), listener("127.0.0.1:9000", 1.0, 100.0)];
            m.update(
                Data { rows: [(Tab::Listeners, rows)].into(), ..Default::default() },
                i as f64,
                format!("12:00:0{i}"),
            );
        }
        let s = screen(&m);
        let a = s.find("0.0.0.0:8080").expect(&s);
        let b = s.find("127.0.0.1:9000").expect(&s);
        assert!(a < b, "the 80% full queue comes first:\n{s}");
        assert!(s.contains("80%") && s.contains("▁▃▅▆█"), "fill and sparkline:\n{s}");
        assert!(s.contains("Listeners (2)") && s.contains("sort: worst"), "{s}");
        m.sort = Sort::Name;
        m.filter = "9000".into();
        m.paused = true;
        let s = screen(&m);
        assert!(!s.contains("0.0.0.0:8080") && s.contains("filter: 9000") && s.contains("PAUSED"), "{s}");
        m.help = true;
        assert!(screen(&m).contains(" Help "));
        let mut plain_out = Vec::new();
        plain(&m, &mut plain_out).unwrap();
        let text = String::from_utf8(plain_out).unwrap();
        assert!(!text.contains('\x1b') && text.contains("127.0.0.1:9000"), "{text}");
    }
}
