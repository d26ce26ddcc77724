//! `connmon top`: a live view of listeners, pools and destinations, worst first, with the alerts
//! and storms of the moment. This file owns the loop: it picks the data source (probes attached
//! here, or `--agent`), feeds its frames to the model, maps keys to model changes, and draws with
//! ratatui on a terminal or as plain text, one frame per refresh, when stdout is not one.
use std::{
    io::{IsTerminal as _, Write as _},
    sync::mpsc::{Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use clap::Args;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::{
    cli::client::{AgentArgs, AgentClient},
    config::{
        flags::{PoolArgs, ProbeArgs},
        values::parse_duration,
    },
    model::services::Services,
};

pub mod metrics;
pub mod model;
pub mod source;
pub mod view;

use model::{Model, Sort, Tab};

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Refresh period.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Stop after this many refreshes (0: run until quit).
    #[arg(long, short = 'n', default_value_t = 0)]
    pub iterations: u64,
    #[command(flatten)]
    pub agent: AgentArgs,
    #[command(flatten)]
    pub pool: PoolArgs,
    #[command(flatten)]
    pub probes: ProbeArgs,
}

pub fn run(args: &TopArgs) -> anyhow::Result<()> {
    if args.interval < Duration::from_millis(200) {
        anyhow::bail!("--interval {:?} is too short: give 200ms or more (the default is 2s)", args.interval);
    }
    let (rx, source) = match &args.agent.agent {
        Some(url) => {
            let client = AgentClient::new(url, args.agent.http_config.as_deref())?;
            let name = format!("agent {}", client.base());
            (source::agent(client, args.interval), name)
        }
        None if args.agent.http_config.is_some() => {
            anyhow::bail!("--http.config.file is for reading an agent: give --agent URL too, or drop it to attach the probes here")
        }
        None => {
            let services = Services::with_overrides(&args.pool.services)?;
            (source::local(services, args.probes.clone(), args.interval)?, "probes on this host".to_string())
        }
    };
    let model = Model::new(source, args.interval.as_secs_f64());
    if std::io::stdout().is_terminal() {
        // Log lines would tear the screen; what matters (probes missing) shows as notes on it.
        log::set_max_level(log::LevelFilter::Off);
        live(model, rx, args.iterations)
    } else {
        plain(model, rx, args.iterations)
    }
}

fn now_hms() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("{:02}:{:02}:{:02} UTC", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

/// One frame per refresh, no escape codes: for pipes, logs and `watch`-less terminals.
fn plain(mut model: Model, rx: Receiver<source::Update>, iterations: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut shown = 0;
    for update in rx {
        let frame = update.map_err(|e| anyhow::anyhow!(e))?;
        model.update(frame, started.elapsed().as_secs_f64(), now_hms());
        let mut out = std::io::stdout().lock();
        view::plain(&model, &mut out)?;
        out.flush()?;
        shown += 1;
        if iterations > 0 && shown >= iterations {
            break;
        }
    }
    Ok(())
}

fn live(mut model: Model, rx: Receiver<source::Update>, iterations: u64) -> anyhow::Result<()> {
    let mut terminal = ratatui::init();
    let result = (|| -> anyhow::Result<()> {
        let started = Instant::now();
        let mut shown = 0;
        model.frame.notes = vec!["reading the first refresh…".into()];
        let mut dirty = true;
        loop {
            if dirty {
                terminal.draw(|f| view::render(&model, f))?;
                dirty = false;
            }
            match rx.recv_timeout(Duration::from_millis(0)) {
                Ok(update) => {
                    let frame = update.map_err(|e| anyhow::anyhow!(e))?;
                    if !model.paused {
                        shown += 1;
                    }
                    model.update(frame, started.elapsed().as_secs_f64(), now_hms());
                    dirty = true;
                    if iterations > 0 && shown >= iterations {
                        terminal.draw(|f| view::render(&model, f))?;
                        return Ok(());
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => anyhow::bail!("the data source stopped"),
                Err(RecvTimeoutError::Timeout) => {}
            }
            if event::poll(Duration::from_millis(100))? {
                match event::read()? {
                    Event::Key(k) if k.kind != KeyEventKind::Release => {
                        if key(&mut model, k) {
                            return Ok(());
                        }
                        dirty = true;
                    }
                    Event::Resize(..) => dirty = true,
                    _ => {}
                }
            }
        }
    })();
    ratatui::restore();
    result
}

/// Applies a key to the model; true to quit.
pub fn key(m: &mut Model, k: KeyEvent) -> bool {
    if let Some(text) = m.editing.as_mut() {
        match k.code {
            KeyCode::Enter => {
                m.filter = m.editing.take().unwrap_or_default();
            }
            KeyCode::Esc => m.editing = None,
            KeyCode::Backspace => {
                text.pop();
            }
            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => return true,
            KeyCode::Char(c) => text.push(c),
            _ => {}
        }
        return false;
    }
    if m.help {
        m.help = false;
        return matches!(k.code, KeyCode::Char('q'));
    }
    match k.code {
        KeyCode::Char('q') | KeyCode::Esc => return true,
        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => return true,
        KeyCode::Tab | KeyCode::Right => m.next_tab(1),
        KeyCode::BackTab | KeyCode::Left => m.next_tab(-1),
        KeyCode::Char(c @ '1'..='3') => m.tab = Tab::ALL[c as usize - '1' as usize],
        KeyCode::Char('s') => m.sort = m.sort.next(),
        KeyCode::Char('S') => {
            m.sort = Sort::ALL
                [(Sort::ALL.iter().position(|s| *s == m.sort).unwrap_or(0) + Sort::ALL.len() - 1) % Sort::ALL.len()]
        }
        KeyCode::Char('/') => m.editing = Some(m.filter.clone()),
        KeyCode::Char('c') => m.filter.clear(),
        KeyCode::Char(' ') | KeyCode::Char('p') => m.paused = !m.paused,
        KeyCode::Char('?') | KeyCode::Char('h') => m.help = true,
        _ => {}
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(m: &mut Model, code: KeyCode) -> bool {
        key(m, KeyEvent::new(code, KeyModifiers::NONE))
    }

    #[test]
    fn keys_change_the_model() {
        let mut m = Model::new("t".into(), 1.0);
        press(&mut m, KeyCode::Tab);
        assert_eq!(m.tab, Tab::Pools);
        press(&mut m, KeyCode::Char('3'));
        assert_eq!(m.tab, Tab::Destinations);
        press(&mut m, KeyCode::Char('s'));
        assert_eq!(m.sort, Sort::Fill);
        press(&mut m, KeyCode::Char('S'));
        assert_eq!(m.sort, Sort::Worst);
        for c in ['/', 'r', 'e', 'd', 'q'] {
            assert!(!press(&mut m, KeyCode::Char(c)), "q inside the filter prompt is text");
        }
        press(&mut m, KeyCode::Enter);
        assert_eq!(m.filter, "redq");
        press(&mut m, KeyCode::Char(' '));
        assert!(m.paused);
        press(&mut m, KeyCode::Char('?'));
        assert!(m.help);
        assert!(!press(&mut m, KeyCode::Char('x')), "x closes help, does not quit");
        assert!(!m.help, "any key closes help");
        assert!(press(&mut m, KeyCode::Char('q')));
    }
}
