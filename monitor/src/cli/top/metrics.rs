//! `connmon top --agent`: the agent's /metrics read back into top's rows. The exposition is the
//! Prometheus text format (samples `name{label="value",…} value`, `#` lines skipped); only the
//! handful of families top shows are kept. Reading /metrics rather than a private endpoint means
//! top works against any agent that Prometheus can scrape, through the same TLS and auth.
use std::collections::BTreeMap;

use super::model::{Row, Tab};
use crate::cli::names::Namer;

type Labels = BTreeMap<String, String>;

/// The samples of the families top uses, by family name.
#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: BTreeMap<String, Vec<(Labels, f64)>>,
}

const WANTED: &[&str] = &[
    "connmon_listen_queue_depth",
    "connmon_listen_queue_max",
    "connmon_listen_drops_total",
    "connmon_listen_queue_wait_seconds",
    "connmon_retry_storm",
    "connmon_retry_storm_score",
    "connmon_pool_connections",
    "connmon_pool_connects_pending",
    "connmon_pool_connect_failures_total",
    "connmon_destination_connections",
    "connmon_destination_ceiling_observed",
    "connmon_destination_rejections_total",
];

impl Exposition {
    /// Parses the text format; lines it cannot read are skipped (they are not top's families).
    pub fn parse(text: &str) -> Self {
        let mut e = Exposition::default();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if let Some((name, labels, value)) = sample(line) {
                if WANTED.contains(&name) {
                    e.samples.entry(name.to_string()).or_default().push((labels, value));
                }
            }
        }
        e
    }

    fn family(&self, name: &str) -> &[(Labels, f64)] {
        self.samples.get(name).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// One sample line: name, labels, value (a timestamp after the value is ignored).
fn sample(line: &str) -> Option<(&str, Labels, f64)> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    let mut labels = Labels::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let end;
        loop {
            // name="value" pairs separated by commas, closed by }.
            while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                chars.next();
            }
            let (start, c) = chars.next()?;
            if c == '}' {
                end = start + 1;
                break;
            }
            let eq = body[start..].find('=')? + start;
            let key = body[start..eq].to_string();
            while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                chars.next();
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    c => value.push(c),
                }
            }
            labels.insert(key, value);
        }
        rest = &body[end..];
    }
    let v = rest.split_whitespace().next()?;
    let value = match v {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => v.parse().ok()?,
    };
    Some((name, labels, value))
}

fn pick(l: &Labels, keys: &[&str]) -> Labels {
    keys.iter().map(|k| (k.to_string(), l.get(*k).cloned().unwrap_or_default())).collect()
}

/// Sums `family` per identity (`keys`), skipping samples whose other labels `skip` rejects.
fn sum_by(e: &Exposition, family: &str, keys: &[&str], skip: impl Fn(&Labels) -> bool) -> BTreeMap<Labels, f64> {
    let mut out = BTreeMap::new();
    for (l, v) in e.family(family).iter().filter(|(l, _)| !skip(l)) {
        *out.entry(pick(l, keys)).or_insert(0.0) += v;
    }
    out
}

fn max_by(e: &Exposition, family: &str, keys: &[&str], skip: impl Fn(&Labels) -> bool) -> BTreeMap<Labels, f64> {
    let mut out: BTreeMap<Labels, f64> = BTreeMap::new();
    for (l, v) in e.family(family).iter().filter(|(l, _)| !skip(l)) {
        let e = out.entry(pick(l, keys)).or_insert(f64::NEG_INFINITY);
        *e = e.max(*v);
    }
    out
}

const LISTENER: &[&str] = &["netns", "family", "addr", "port", "comm"];
const POOL: &[&str] = &["service", "dst_addr", "dst_port", "comm", "cgroup"];
const DEST: &[&str] = &["service", "dst_addr", "dst_port"];

fn key_of(labels: &Labels) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.into()
    }
}

/// The three tabs' rows from an agent's exposition.
pub fn rows(e: &Exposition, namer: &mut Namer) -> BTreeMap<Tab, Vec<Row>> {
    let none = |_: &Labels| false;
    let target = |t: &'static str| move |l: &Labels| l.get("target").map(String::as_str) != Some(t);
    let overall = |t: &'static str| {
        move |l: &Labels| {
            l.get("target").map(String::as_str) != Some(t) || l.get("component").map(String::as_str) != Some("overall")
        }
    };

    let depth = sum_by(e, "connmon_listen_queue_depth", LISTENER, none);
    let max = sum_by(e, "connmon_listen_queue_max", LISTENER, none);
    let drops = sum_by(e, "connmon_listen_drops_total", LISTENER, none);
    let wait = max_by(e, "connmon_listen_queue_wait_seconds", LISTENER, none);
    let lstorm = max_by(e, "connmon_retry_storm", LISTENER, target("listener"));
    let lscore = max_by(e, "connmon_retry_storm_score", LISTENER, overall("listener"));
    let listeners = depth
        .iter()
        .map(|(l, d)| {
            let (addr, port) = (&l["addr"], &l["port"]);
            let local = match () {
                _ if port.is_empty() => addr.clone(),
                _ if addr.contains(':') => format!("[{addr}]:{port}"),
                _ => format!("{addr}:{port}"),
            };
            let name = namer.name(&l["comm"], "", None);
            Row {
                key: key_of(l),
                search: format!("{local} {name} {}", l["comm"]),
                labels: l.clone(),
                text: vec![local, l["netns"].clone(), dash(&name)],
                gauge: *d,
                limit: max.get(l).copied(),
                wait: wait.get(l).copied(),
                bad_total: drops.get(l).map(|v| *v as u64),
                storm_score: lscore.get(l).copied(),
                in_storm: lstorm.get(l).is_some_and(|v| *v >= 1.0),
                ..Default::default()
            }
        })
        .collect();

    let conns = sum_by(e, "connmon_pool_connections", POOL, none);
    let pending = sum_by(e, "connmon_pool_connects_pending", POOL, none);
    let fails = sum_by(e, "connmon_pool_connect_failures_total", POOL, none);
    let pstorm = max_by(e, "connmon_retry_storm", POOL, target("pool"));
    let pscore = max_by(e, "connmon_retry_storm_score", POOL, overall("pool"));
    let mut by_dest: BTreeMap<Labels, Vec<(String, f64)>> = BTreeMap::new();
    let pools = conns
        .iter()
        .map(|(l, a)| {
            let name = namer.name(&l["comm"], &l["cgroup"], None);
            by_dest.entry(pick(l, DEST)).or_default().push((name.clone(), *a));
            let dst = format!("{}:{}", l["dst_addr"], l["dst_port"]);
            Row {
                key: key_of(l),
                search: format!("{} {dst} {name} {} {}", l["service"], l["comm"], l["cgroup"]),
                labels: l.clone(),
                text: vec![l["service"].clone(), dst, dash(&name), dash(&l["cgroup"])],
                gauge: *a,
                second: pending.get(l).copied(),
                bad_total: fails.get(l).map(|v| *v as u64),
                storm_score: pscore.get(l).copied(),
                in_storm: pstorm.get(l).is_some_and(|v| *v >= 1.0),
                ..Default::default()
            }
        })
        .collect();

    let dconns = sum_by(e, "connmon_destination_connections", DEST, none);
    let ceiling = sum_by(e, "connmon_destination_ceiling_observed", DEST, none);
    // What the saturation rule counts: every kind of rejection but unreachable.
    let rejected = sum_by(e, "connmon_destination_rejections_total", DEST, |l| l.values().any(|v| v == "unreachable"));
    let dests = dconns
        .iter()
        .map(|(l, c)| {
            let mut top = by_dest.get(l).cloned().unwrap_or_default();
            top.sort_by(|a, b| b.1.total_cmp(&a.1));
            let top: Vec<String> = top.iter().take(3).map(|(n, v)| format!("{}={v:.0}", dash(n))).collect();
            let dst = format!("{}:{}", l["dst_addr"], l["dst_port"]);
            Row {
                key: key_of(l),
                search: format!("{} {dst} {}", l["service"], top.join(" ")),
                labels: l.clone(),
                text: vec![l["service"].clone(), dst, dash(&top.join(","))],
                gauge: *c,
                limit: ceiling.get(l).copied(),
                bad_total: rejected.get(l).map(|v| *v as u64),
                ..Default::default()
            }
        })
        .collect();
    [(Tab::Listeners, listeners), (Tab::Pools, pools), (Tab::Destinations, dests)].into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_format() {
        let text = r#"# HELP connmon_listen_queue_depth x
# TYPE connmon_listen_queue_depth gauge
connmon_listen_queue_depth{netns="4026531840",family="ipv4",addr="0.0.0.0",port="8080",comm="python3"} 7
connmon_listen_queue_max{netns="4026531840",family="ipv4",addr="0.0.0.0",port="8080",comm="python3"} 8
connmon_listen_queue_wait_seconds{netns="4026531840",family="ipv4",addr="0.0.0.0",port="8080",comm="python3",method="littles_law"} +Inf
connmon_pool_connections{service="redis",dst_addr="127.0.0.1",dst_port="6379",comm="a \"b\"\\c",cgroup="/x"} 3 1700000000000
connmon_destination_rejections_total{service="redis",dst_addr="127.0.0.1",dst_port="6379",how="refused"} 5
connmon_destination_rejections_total{service="redis",dst_addr="127.0.0.1",dst_port="6379",how="unreachable"} 9
connmon_destination_connections{service="redis",dst_addr="127.0.0.1",dst_port="6379"} 3
connmon_build_info{version="0.1.0"} 1
"#;
        let e = Exposition::parse(text);
        assert!(!e.samples.contains_key("connmon_build_info"));
        let rows = rows(&e, &mut Namer::default());
        let l = &rows[&Tab::Listeners][0];
        assert_eq!((l.gauge, l.limit, l.wait), (7.0, Some(8.0), Some(f64::INFINITY)));
        assert_eq!(l.text[0], "0.0.0.0:8080");
        let p = &rows[&Tab::Pools][0];
        assert_eq!(p.labels["comm"], "a \"b\"\\c");
        assert_eq!(p.gauge, 3.0);
        let d = &rows[&Tab::Destinations][0];
        assert_eq!((d.gauge, d.bad_total), (3.0, Some(5)));
        assert!(sample("bad{x=1} 2").is_none() && sample("x{y=\"unterminated} 1").is_none());
    }
}
