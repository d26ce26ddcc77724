//! Metric families for one exposition: rows of (labels, value) in the order they were set,
//! encoded by prometheus-client's text encoder through its `Collector` interface.
//!
//! prometheus-client's own `Family` is made for long-lived metrics updated in place: every series
//! is a hash-map entry behind a lock with an `Arc`'d atomic of its own, and is found again by
//! hashing its labels. An exposition built afresh per scrape needs none of that, and at tens of
//! thousands of series those allocations and hashes were most of a scrape's time; a row is one
//! push. Rows are written in insertion order (the families' was hash order), and a label set
//! given twice gives two rows, so callers set each series once.
use std::sync::{Arc, Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, LabelSetEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use super::Labels;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Value {
    Int(i64),
    Float(f64),
    Count(u64),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

#[derive(Debug)]
struct Inner {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    rows: Vec<(Arc<Labels>, Value)>,
}

/// The label sets pushed last on this thread, shared by the rows that repeat them. Exporters set
/// several families for one entity in a row (a listener's depth, backlog, drops, ...), and a copy
/// of its labels (about ten strings) per row was most of the rows' allocations at 12k series. A
/// few sets are kept because a loop interleaves an entity's plain labels with extended ones (a
/// failure reason). Bounded: at most `RECENT` label sets per thread, replaced as others come.
const RECENT: usize = 4;

thread_local! {
    static LAST: std::cell::RefCell<[Option<Arc<Labels>>; RECENT]> = const { std::cell::RefCell::new([None, None, None, None]) };
}

/// `labels`, shared with an equal set pushed recently on this thread when there is one.
fn shared(labels: &Labels) -> Arc<Labels> {
    recent(labels).unwrap_or_else(|| remember(Arc::new(labels.clone())))
}

fn recent(labels: &Labels) -> Option<Arc<Labels>> {
    LAST.with(|last| last.borrow().iter().flatten().find(|l| ***l == *labels).map(Arc::clone))
}

fn remember(fresh: Arc<Labels>) -> Arc<Labels> {
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        last.rotate_right(1);
        last[0] = Some(Arc::clone(&fresh));
    });
    fresh
}

/// What a series can be given its labels as: a borrowed set (copied, or shared with an equal set
/// pushed recently), a set built for it (moved, not copied), or a set already shared, such as an
/// exporter's per-render label cache (`LabelCache`): a reference count, no copy and no compare.
pub(crate) trait RowLabels {
    fn into_shared(self) -> Arc<Labels>;
}

impl RowLabels for &Labels {
    fn into_shared(self) -> Arc<Labels> {
        shared(self)
    }
}

impl RowLabels for Labels {
    fn into_shared(self) -> Arc<Labels> {
        recent(&self).unwrap_or_else(|| remember(Arc::new(self)))
    }
}

impl RowLabels for &Arc<Labels> {
    fn into_shared(self) -> Arc<Labels> {
        Arc::clone(self)
    }
}

/// One metric family of an exposition: a gauge (integer or float) or a counter.
#[derive(Debug, Clone)]
pub(crate) struct Fam(Arc<Mutex<Inner>>);

/// A series about to be set (the shape of prometheus-client's `Family::get_or_create`, so
/// exporters read the same either way).
pub(crate) struct Slot<'a> {
    fam: &'a Fam,
    labels: Arc<Labels>,
}

impl Fam {
    pub(crate) fn register(reg: &mut Registry, name: &'static str, help: &'static str, kind: MetricType) -> Fam {
        let fam = Fam(Arc::new(Mutex::new(Inner { name, help, kind, rows: Vec::new() })));
        reg.register_collector(Box::new(fam.clone()));
        fam
    }

    pub(crate) fn get_or_create(&self, labels: impl RowLabels) -> Slot<'_> {
        Slot { fam: self, labels: labels.into_shared() }
    }

    fn push(&self, labels: Arc<Labels>, v: Value) {
        // Only this scrape's thread touches the family: the lock is never contended.
        self.0.lock().unwrap_or_else(|p| p.into_inner()).rows.push((labels, v));
    }
}

impl Slot<'_> {
    pub(crate) fn set(self, v: impl Into<Value>) {
        self.fam.push(self.labels, v.into());
    }

    pub(crate) fn inc_by(self, n: u64) {
        self.fam.push(self.labels, Value::Count(n));
    }
}

impl Collector for Fam {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Prometheus-client appends `_total` to counters itself.
        let name = inner.name.strip_suffix("_total").unwrap_or(inner.name);
        let mut family = encoder.encode_descriptor(name, inner.help, None, inner.kind)?;
        for (labels, v) in &inner.rows {
            let escaped = Escaped(labels.as_ref());
            let mut m = family.encode_family(&escaped)?;
            match v {
                Value::Int(i) => m.encode_gauge(i)?,
                Value::Float(f) => m.encode_gauge(f)?,
                Value::Count(n) => m.encode_counter::<NoLabelSet, _, u64>(n, None)?,
            }
        }
        Ok(())
    }
}

/// A label set whose values are escaped as the text format requires (`\\`, `\"`, `\n`).
/// prometheus-client 0.23 writes label values raw, so a cgroup or systemd unit with a backslash
/// (`dev-disk-by\x2duuid-….swap`) or a quote would make the whole scrape unparsable.
pub(crate) struct Escaped<'a>(pub(crate) &'a Labels);

impl EncodeLabelSet for Escaped<'_> {
    fn encode(&self, mut encoder: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        for (k, v) in self.0 {
            let mut label = encoder.encode_label();
            let mut key = label.encode_label_key()?;
            key.write_str(k)?;
            let mut value = key.encode_label_value()?;
            if v.contains(['\\', '"', '\n']) {
                for c in v.chars() {
                    match c {
                        '\\' => value.write_str("\\\\")?,
                        '"' => value.write_str("\\\"")?,
                        '\n' => value.write_str("\\n")?,
                        c => value.write_char(c)?,
                    }
                }
            } else {
                value.write_str(v)?;
            }
            value.finish()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn families_encode_as_prometheus_client_does() {
        let mut reg = Registry::default();
        let g = Fam::register(&mut reg, "connmon_g", "A gauge.", MetricType::Gauge);
        let c = Fam::register(&mut reg, "connmon_c_total", "A counter.", MetricType::Counter);
        let l: Labels = vec![("a".into(), "x".into())];
        g.get_or_create(&l).set(3i64);
        g.get_or_create(&vec![]).set(0.5f64);
        c.get_or_create(&l).inc_by(7);
        let mut out = String::new();
        encode(&mut out, &reg).unwrap();
        assert_eq!(
            out,
            "# HELP connmon_g A gauge.\n# TYPE connmon_g gauge\nconnmon_g{a=\"x\"} 3\nconnmon_g{} 0.5\n\
             # HELP connmon_c A counter.\n# TYPE connmon_c counter\nconnmon_c_total{a=\"x\"} 7\n# EOF\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut reg = Registry::default();
        let g = Fam::register(&mut reg, "connmon_g", "A gauge.", MetricType::Gauge);
        let l: Labels = vec![
            ("cgroup".into(), "/system.slice/dev-disk-by\\x2duuid.swap".into()),
            ("comm".into(), "a\"b\nc".into()),
        ];
        g.get_or_create(&l).set(1i64);
        let mut out = String::new();
        encode(&mut out, &reg).unwrap();
        assert!(
            out.contains(r#"connmon_g{cgroup="/system.slice/dev-disk-by\\x2duuid.swap",comm="a\"b\nc"} 1"#),
            "{out}"
        );
    }
}
