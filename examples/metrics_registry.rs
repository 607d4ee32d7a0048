//! A `metrics` recorder whose counters and gauges are percid shards, rendered in the
//! Prometheus text exposition format.
//!
//! ```text
//! cargo run --release --example metrics_registry --features metrics
//! ```
//!
//! With the `metrics` feature, `percid::Counter` implements `metrics::CounterFn` and
//! `percid::SignedCounter` implements `metrics::GaugeFn`, so a recorder only has to
//! keep one `Arc` per key and hand out `metrics::Counter::from_arc(..)` /
//! `metrics::Gauge::from_arc(..)`. Every `increment` is then one rseq critical
//! section on the caller's cid: the threads of a busy server no longer bounce one
//! cache line per counter between their CPUs.
//!
//! percid gauges are integer gauges (`f64` updates round to the nearest integer),
//! and histograms are out of scope here: this recorder hands out no-op histograms.

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};

/// A metric's identity: its name and its labels, sorted by label name (so
/// `{a="1",b="2"}` and `{b="2",a="1"}` are one metric).
type Id = (String, Vec<(String, String)>);

fn id(key: &Key) -> Id {
    let mut labels: Vec<_> = key
        .labels()
        .map(|l| (l.key().to_owned(), l.value().to_owned()))
        .collect();
    labels.sort();
    (key.name().to_owned(), labels)
}

/// The registry: one percid counter or gauge per metric, and the descriptions given
/// with `describe_counter!` / `describe_gauge!`.
#[derive(Default)]
struct PercidRecorder {
    counters: RwLock<BTreeMap<Id, Arc<percid::Counter>>>,
    gauges: RwLock<BTreeMap<Id, Arc<percid::SignedCounter>>>,
    help: RwLock<BTreeMap<String, String>>,
}

/// The shard behind `key`, created on first registration. Registration takes a
/// lock; the handle it returns does not, so call sites keep their handles.
fn get_or_create<T: Default>(map: &RwLock<BTreeMap<Id, Arc<T>>>, key: &Key) -> Arc<T> {
    let id = id(key);
    if let Some(existing) = map.read().unwrap().get(&id) {
        return Arc::clone(existing);
    }
    Arc::clone(map.write().unwrap().entry(id).or_default())
}

impl Recorder for PercidRecorder {
    fn describe_counter(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }

    fn describe_gauge(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(key, description);
    }

    fn describe_histogram(&self, _key: KeyName, _unit: Option<Unit>, _description: SharedString) {}

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        Counter::from_arc(get_or_create(&self.counters, key))
    }

    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(get_or_create(&self.gauges, key))
    }

    fn register_histogram(&self, _key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

impl PercidRecorder {
    fn describe(&self, key: KeyName, description: SharedString) {
        let mut help = self.help.write().unwrap();
        help.insert(key.as_str().to_owned(), description.into_owned());
    }

    /// The registry in the Prometheus text exposition format (version 0.0.4):
    /// `# HELP` and `# TYPE` once per name, then one `name{labels} value` per key.
    fn render(&self) -> String {
        let mut out = String::new();
        let help = self.help.read().unwrap();
        let counters = self.counters.read().unwrap();
        let gauges = self.gauges.read().unwrap();
        let counters = counters
            .iter()
            .map(|(id, c)| (id, "counter", i128::from(c.sum())));
        let gauges = gauges
            .iter()
            .map(|(id, g)| (id, "gauge", i128::from(g.sum())));
        // The maps are ordered by name first, so the samples of one name are adjacent.
        let mut last_name = None;
        for ((name, labels), kind, value) in counters.chain(gauges) {
            let metric = sanitize_name(name);
            if last_name != Some(name) {
                if let Some(text) = help.get(name) {
                    let _ = writeln!(out, "# HELP {metric} {}", escape(text, false));
                }
                let _ = writeln!(out, "# TYPE {metric} {kind}");
                last_name = Some(name);
            }
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{}=\"{}\"", sanitize_name(k), escape(v, true)))
                .collect();
            if labels.is_empty() {
                let _ = writeln!(out, "{metric} {value}");
            } else {
                let _ = writeln!(out, "{metric}{{{}}} {value}", labels.join(","));
            }
        }
        out
    }
}

/// Prometheus names are `[a-zA-Z_:][a-zA-Z0-9_:]*`: anything else becomes `_`.
fn sanitize_name(name: &str) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| match c {
            'a'..='z' | 'A'..='Z' | '_' | ':' => c,
            '0'..='9' if i > 0 => c,
            _ => '_',
        })
        .collect()
}

/// Escapes `\` and newlines (HELP text), and `"` too in label values.
fn escape(text: &str, quotes: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            _ => out.push(c),
        }
    }
    out
}

const WORKERS: usize = 4;
const REQUESTS_PER_WORKER: u64 = 50_000;

fn main() {
    let recorder = Arc::new(PercidRecorder::default());
    metrics::set_global_recorder(Arc::clone(&recorder)).expect("no other recorder installed");

    metrics::describe_counter!("requests_total", "Requests handled, by method.");
    metrics::describe_counter!(
        "response_bytes_total",
        Unit::Bytes,
        "Bytes sent in responses."
    );
    metrics::describe_gauge!("requests_in_flight", "Requests being handled right now.");
    metrics::describe_gauge!("workers_busy", "Worker threads inside a request.");

    std::thread::scope(|s| {
        for worker in 0..WORKERS {
            s.spawn(move || {
                // Register once per thread and keep the handles: `counter!` looks the
                // key up in the registry every time it runs, the handle does not.
                let gets = metrics::counter!("requests_total", "method" => "GET");
                let posts = metrics::counter!("requests_total", "method" => "POST");
                let bytes = metrics::counter!("response_bytes_total");
                let in_flight = metrics::gauge!("requests_in_flight");
                let busy = metrics::gauge!("workers_busy", "pool" => "http");
                busy.increment(1.0);
                for i in 0..REQUESTS_PER_WORKER {
                    in_flight.increment(1.0);
                    if (i + worker as u64).is_multiple_of(4) {
                        posts.increment(1);
                    } else {
                        gets.increment(1);
                    }
                    bytes.increment(100 + i % 900);
                    in_flight.decrement(1.0);
                }
                busy.decrement(1.0);
            });
        }
    });

    // The facade's two "set" operations, emulated on shards.
    // `absolute` raises a counter mirrored from elsewhere (never lowers it) ...
    let restarts = metrics::counter!("upstream_restarts_total", "upstream" => "db");
    restarts.absolute(7);
    restarts.absolute(5); // an older reading arriving late: ignored
    // ... and `set` replaces a gauge's value.
    metrics::gauge!("config_max_connections").set(1024.0);

    // Every increment is in the totals once the threads have joined.
    let requests: u64 = (recorder.counters.read().unwrap().iter())
        .filter(|((name, _), _)| name == "requests_total")
        .map(|(_, c)| c.sum())
        .sum();
    assert_eq!(requests, WORKERS as u64 * REQUESTS_PER_WORKER);
    let in_flight = get_or_create(&recorder.gauges, &Key::from_name("requests_in_flight"));
    assert_eq!(in_flight.sum(), 0);

    // A comment line (ignored by Prometheus parsers), then the exposition.
    println!("# percid backend: {}", percid::rseq::status());
    print!("{}", recorder.render());
}
