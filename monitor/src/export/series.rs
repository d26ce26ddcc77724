//! Metric families for one exposition: rows of (labels, value) in the order they were set,
//! encoded by prometheus-client's text encoder through its `Collector` interface.
//!
//! prometheus-client's own `Family` is made for long-lived metrics updated in place: every series
//! is a hash-map entry behind a lock with an `Arc`'d atomic of its own, and is found again by
//! hashing its labels. An exposition built afresh per scrape needs none of that, and at tens of
//! thousands of series those allocations and hashes were most of a scrape's time; a row is one
//! push. Rows are written in insertion order (the families' was hash order), and a label set
//! given twice gives two rows, so callers set each series once.
use std::{
    cell::RefCell,
    collections::HashMap,
    fmt::Write as _,
    rc::Rc,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{text::encode, DescriptorEncoder, EncodeLabelSet, LabelSetEncoder, NoLabelSet},
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
    rows: Vec<(Arc<Labels>, Extra, Value)>,
}

/// Labels a row has after its entity's (a failure reason, a storm's target and component): at
/// most two, all of them fixed names. Kept beside the entity's shared set instead of in a copy of
/// it with one more pair (about twelve strings per row, for a third of a fleet host's rows).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Extra {
    pairs: [(&'static str, &'static str); 2],
    len: u8,
}

impl Extra {
    pub(crate) fn of(pairs: &[(&'static str, &'static str)]) -> Extra {
        debug_assert!(pairs.len() <= 2, "at most two extra labels");
        let mut e = Extra::default();
        for p in pairs.iter().take(2) {
            e.pairs[usize::from(e.len)] = *p;
            e.len += 1;
        }
        e
    }

    fn pairs(&self) -> &[(&'static str, &'static str)] {
        &self.pairs[..usize::from(self.len)]
    }
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
/// entity's identity built once per render (`export::Shown`, a pool row's set): a reference
/// count, no copy and no compare.
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
    extra: Extra,
}

impl Fam {
    pub(crate) fn register(reg: &mut Registry, name: &'static str, help: &'static str, kind: MetricType) -> Fam {
        let fam = Fam(Arc::new(Mutex::new(Inner { name, help, kind, rows: Vec::new() })));
        reg.register_collector(Box::new(fam.clone()));
        fam
    }

    pub(crate) fn get_or_create(&self, labels: impl RowLabels) -> Slot<'_> {
        Slot { fam: self, labels: labels.into_shared(), extra: Extra::default() }
    }

    /// The series of `labels` followed by `extra` (at most two pairs).
    pub(crate) fn with(&self, labels: &Arc<Labels>, extra: &[(&'static str, &'static str)]) -> Slot<'_> {
        Slot { fam: self, labels: Arc::clone(labels), extra: Extra::of(extra) }
    }

    fn push(&self, labels: Arc<Labels>, extra: Extra, v: Value) {
        // Only this scrape's thread touches the family: the lock is never contended.
        self.0.lock().unwrap_or_else(|p| p.into_inner()).rows.push((labels, extra, v));
    }
}

impl Slot<'_> {
    pub(crate) fn set(self, v: impl Into<Value>) {
        self.fam.push(self.labels, self.extra, v.into());
    }

    pub(crate) fn inc_by(self, n: u64) {
        self.fam.push(self.labels, self.extra, Value::Count(n));
    }
}

impl Collector for Fam {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Prometheus-client appends `_total` to counters itself.
        let name = inner.name.strip_suffix("_total").unwrap_or(inner.name);
        let mut family = encoder.encode_descriptor(name, inner.help, None, inner.kind)?;
        for (labels, extra, v) in &inner.rows {
            let text = shared_text(labels);
            let set = LabelText::of(labels, text.as_deref()).and(extra.pairs());
            let mut m = family.encode_family(&set)?;
            match v {
                Value::Int(i) => m.encode_gauge(i)?,
                Value::Float(f) => m.encode_gauge(f)?,
                Value::Count(n) => m.encode_counter::<NoLabelSet, _, u64>(n, None)?,
            }
        }
        Ok(())
    }
}

thread_local! {
    /// While `encode_exposition` runs on this thread: the text of each label set that several rows
    /// share (a listener's or pool's identity, in ten families or more), by the set's address.
    /// The sets are alive in the registry being encoded, so an address names one set throughout;
    /// the map is dropped when the encoding ends.
    static SHARED_TEXT: RefCell<Option<HashMap<usize, Rc<str>, foldhash::fast::RandomState>>> =
        const { RefCell::new(None) };
}

/// Encodes `reg` as OpenMetrics text into `out`, writing each label set shared by several rows
/// once and copying its text into the rows after (escaping and writing label by label was a fifth
/// of a fleet host's render); `shared_sets` is about how many such sets there are. The text is
/// the same as `prometheus_client::encoding::text::encode`'s.
pub(crate) fn encode_exposition(out: &mut String, reg: &Registry, shared_sets: usize) -> std::fmt::Result {
    SHARED_TEXT.with(|t| *t.borrow_mut() = Some(HashMap::with_capacity_and_hasher(shared_sets, Default::default())));
    let result = encode(out, reg);
    SHARED_TEXT.with(|t| *t.borrow_mut() = None);
    result
}

/// `labels` as text (`k="v",k="v"`) when shared with other rows and an exposition is being encoded.
pub(crate) fn shared_text(labels: &Arc<Labels>) -> Option<Rc<str>> {
    if labels.is_empty() || Arc::strong_count(labels) < 2 {
        return None;
    }
    SHARED_TEXT.with(|t| {
        let mut t = t.borrow_mut();
        let map = t.as_mut()?;
        let text = map.entry(Arc::as_ptr(labels) as usize).or_insert_with(|| {
            let mut text = String::new();
            for (i, (k, v)) in labels.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                // Writing into a String cannot fail.
                let _ = write!(text, "{sep}{k}=\"");
                let _ = write_escaped(&mut text, v);
                text.push('"');
            }
            Rc::from(text)
        });
        Some(Rc::clone(text))
    })
}

/// A row's label set for the encoder: label by label, or the set's text written before
/// (`shared_text`), given to prometheus-client as one label whose value holds the others: it
/// writes `key="value"` around it, which gives back the text exactly.
pub(crate) struct LabelText<'a> {
    set: SetText<'a>,
    /// Pairs after the set's (`Extra`).
    extra: &'a [(&'static str, &'static str)],
}

enum SetText<'a> {
    Escaped(&'a Labels),
    Written { first_key: &'a str, rest: &'a str },
}

impl<'a> LabelText<'a> {
    pub(crate) fn of(labels: &'a Labels, text: Option<&'a str>) -> Self {
        let set = match (text, labels.first()) {
            (Some(text), Some((k, _))) => SetText::Written { first_key: k, rest: &text[k.len() + 2..text.len() - 1] },
            _ => SetText::Escaped(labels),
        };
        LabelText { set, extra: &[] }
    }

    fn and(self, extra: &'a [(&'static str, &'static str)]) -> Self {
        LabelText { extra, ..self }
    }
}

impl EncodeLabelSet for LabelText<'_> {
    fn encode(&self, mut encoder: LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let own: &[(String, String)] = match &self.set {
            SetText::Escaped(labels) => labels,
            SetText::Written { first_key, rest } => {
                let mut label = encoder.encode_label();
                let mut key = label.encode_label_key()?;
                key.write_str(first_key)?;
                let mut value = key.encode_label_value()?;
                value.write_str(rest)?;
                value.finish()?;
                &[]
            }
        };
        let pairs = own.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(self.extra.iter().copied());
        for (k, v) in pairs {
            let mut label = encoder.encode_label();
            let mut key = label.encode_label_key()?;
            key.write_str(k)?;
            let mut value = key.encode_label_value()?;
            write_escaped(&mut value, v)?;
            value.finish()?;
        }
        Ok(())
    }
}

/// `v` escaped as the text format requires (`\\`, `\"`, `\n`). prometheus-client 0.23 writes
/// label values raw, so a cgroup or systemd unit with a backslash (`dev-disk-by\x2duuid-….swap`)
/// or a quote would make the whole scrape unparsable.
fn write_escaped(out: &mut impl std::fmt::Write, v: &str) -> std::fmt::Result {
    if !v.contains(['\\', '"', '\n']) {
        return out.write_str(v);
    }
    for c in v.chars() {
        match c {
            '\\' => out.write_str("\\\\")?,
            '"' => out.write_str("\\\"")?,
            '\n' => out.write_str("\\n")?,
            c => out.write_char(c)?,
        }
    }
    Ok(())
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
        g.get_or_create(vec![]).set(0.5f64);
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
    fn shared_label_sets_written_once_encode_as_label_by_label() {
        let mut reg = Registry::default();
        let g = Fam::register(&mut reg, "connmon_g", "A gauge.", MetricType::Gauge);
        let c = Fam::register(&mut reg, "connmon_c_total", "A counter.", MetricType::Counter);
        let l: Arc<Labels> = Arc::new(vec![
            ("comm".into(), "a\"b\\c\nd".into()),
            ("port".into(), "80".into()),
            ("cgroup".into(), String::new()),
        ]);
        g.get_or_create(&l).set(1i64);
        c.get_or_create(&l).inc_by(2);
        c.with(&l, &[("target", "pool"), ("how", "re\"set")]).inc_by(4);
        g.get_or_create(vec![]).set(0.5f64);
        let mut plain = String::new();
        encode(&mut plain, &reg).unwrap();
        let mut shared = String::new();
        encode_exposition(&mut shared, &reg, 1).unwrap();
        assert_eq!(shared, plain);
        assert!(plain.contains(r#"connmon_g{comm="a\"b\\c\nd",port="80",cgroup=""} 1"#), "{plain}");
        // Extra labels follow the set's, escaped too.
        assert!(
            plain.contains(r#"connmon_c_total{comm="a\"b\\c\nd",port="80",cgroup="",target="pool",how="re\"set"} 4"#),
            "{plain}"
        );
        // The written text is what was used: shared (the registry's rows hold the set too) and
        // only while an exposition is encoded.
        assert!(shared_text(&l).is_none());
        SHARED_TEXT.with(|t| *t.borrow_mut() = Some(HashMap::default()));
        let text = shared_text(&l);
        SHARED_TEXT.with(|t| *t.borrow_mut() = None);
        assert_eq!(text.as_deref(), Some(r#"comm="a\"b\\c\nd",port="80",cgroup="""#));
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
