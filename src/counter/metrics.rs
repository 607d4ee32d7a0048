//! Feature `metrics`: percid counters behind the [`metrics`] facade, and a recorder
//! that renders them in the Prometheus text exposition format.
//!
//! # A whole recorder: [`PercidRecorder`]
//!
//! [`PercidRecorder`] is a [`metrics::Recorder`]: install it once with
//! [`metrics::set_global_recorder`] (or [`PercidRecorder::install`]) and the
//! standard macros (`metrics::counter!`, `gauge!`, `histogram!`) record into percid
//! shards; [`PercidRecorder::render`] gives every registered metric in the
//! Prometheus text exposition format (version 0.0.4: `# HELP`, `# TYPE`, one
//! `name{labels} value` line per series), ready to serve on `/metrics`.
//!
//! ```
//! use percid::counter::metrics::PercidRecorder;
//! use std::sync::Arc;
//!
//! let recorder = Arc::new(PercidRecorder::new());
//! // In a program: `metrics::set_global_recorder(Arc::clone(&recorder))`, once.
//! // Here a thread-local installation keeps the doc test self-contained.
//! metrics::with_local_recorder(&recorder, || {
//!     metrics::counter!("requests_total", "method" => "GET").increment(2);
//!     metrics::gauge!("in_flight").increment(3.0);
//! });
//! let text = recorder.render();
//! assert!(text.contains("# TYPE requests_total counter\nrequests_total{method=\"GET\"} 2\n"));
//! assert!(text.contains("# TYPE in_flight gauge\nin_flight 3\n"));
//! ```
//!
//! | facade | percid type behind it | cost of an update |
//! |---|---|---|
//! | counter | [`Counter`] | one rseq critical section |
//! | gauge | [`SignedCounter`] (an **integer** gauge: `f64` updates are rounded) | one rseq critical section |
//! | histogram | one [`Counter`] per bucket and a [`SignedCounter`] of the sum in fixed point | two critical sections |
//!
//! Histograms are cumulative Prometheus histograms over fixed bounds
//! ([`PercidRecorder::with_buckets`]; Prometheus' default bounds, 5 ms to 10 s,
//! otherwise). A value goes to the first bucket whose bound is at least the value;
//! the sum is an integer count of `1 / sum_scale` units
//! ([`PercidRecorder::with_sum_scale`], default 10^9: values are rounded to 10^-9,
//! nanoseconds for durations in seconds, and sums beyond about ±9.2 × 10^9 wrap;
//! a histogram of byte sizes wants a scale of 1), NaN is ignored. There are no quantiles (a summary needs
//! a shared sketch, which per-cid shards cannot give).
//!
//! Registration takes a lock (a read lock once the series exists): each
//! `counter!(..)` call looks its key up. Keep the returned handle where a call site
//! runs often; the handle's `increment` takes no lock.
//!
//! # prometheus-client
//!
//! The `prometheus-client` crate's counters and gauges are generic over its `Atomic`
//! traits (`metrics::counter::Atomic`, `metrics::gauge::Atomic`), whose `inc`,
//! `inc_by` (and the gauge's `dec`, `dec_by`, `set`) return the **previous value**,
//! as `fetch_add` does. A per-cid counter has no previous value short of summing every
//! cid on each increment, which is the cost percid exists to avoid. So percid
//! implements neither trait, and cannot sit inside `prometheus_client::Counter` or
//! `Gauge`. What works is a metric type of your own that holds a [`Counter`] and
//! implements `prometheus_client::encoding::EncodeMetric` (`metric_type` returns
//! `MetricType::Counter`, and `encode` calls `encoder.encode_counter(&counter.sum(),
//! None)`), registered with `Registry::register`. Or use this module's recorder with the
//! `metrics` facade.
//!
//! # The handles alone
//!
//! [`Counter`] implements [`metrics::CounterFn`] and [`SignedCounter`] implements
//! [`metrics::GaugeFn`], so any [`metrics::Recorder`] can hand out handles backed by
//! per-cid shards with `metrics::Counter::from_arc(Arc<percid::Counter>)` and
//! `metrics::Gauge::from_arc(Arc<percid::SignedCounter>)` (the facade's blanket
//! impls for `Arc<T>` do the rest). `metrics::counter!("x").increment(1)` then costs
//! one rseq critical section instead of an atomic read-modify-write on a shared line.
//! [`PercidRecorder`] is such a recorder (`examples/prometheus.rs`).
//!
//! Two operations of the facade have no sharded equivalent, and are emulated:
//!
//! * `CounterFn::absolute(v)` ("set to at least `v`") reads the sum and adds the
//!   difference when it is below `v`.
//! * `GaugeFn::set(v)` takes (reads and resets) the total, then adds `v`.
//!
//! Both are read-then-write. Run unguarded, two of them could interleave (two
//! `absolute(100)` both reading 40 would add 60 twice), so each runs under
//! one lock (`EMULATION`) shared by all counters: these are rare operations
//! (syncing with an external source, setting a gauge), and the lock never touches
//! the `add` path. What the lock cannot order is a concurrent `increment`: see each
//! method's documentation.

use super::{Counter, SignedCounter};
use ::metrics::{
    HistogramFn, Key, KeyName, Metadata, Recorder, SetRecorderError, SharedString, Unit,
};
use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Serialises the emulated read-then-write operations (`absolute`, `set`) with each
/// other. Never held across anything but one `sum`/`take` and one `add`.
///
/// A plain `std` lock rather than the `crate::sync` facade: it must be a `const`
/// static, and loom models never enable the `metrics` feature.
static EMULATION: Mutex<()> = Mutex::new(());

fn emulation_lock() -> std::sync::MutexGuard<'static, ()> {
    // Nothing panics while the lock is held, and `()` has no state to corrupt.
    EMULATION.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A counter of the `metrics` facade: `increment` is [`Counter::add`].
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
impl ::metrics::CounterFn for Counter {
    /// [`Counter::add`]: one critical section on the caller's cid.
    #[inline]
    fn increment(&self, value: u64) {
        self.add(value);
    }

    /// Raises the counter to `value` if its total is below it, and never lowers it.
    ///
    /// A sharded counter has no atomic "set": this reads [`Counter::sum`] and, when
    /// it is below `value`, adds the difference. Calls to `absolute` (on any
    /// counter) are serialised with each other, so concurrent callers publishing
    /// the same or reordered external values never overshoot the largest one.
    /// An `increment` running concurrently lands on top: the total becomes
    /// `value` plus that increment, as if it had come just after.
    fn absolute(&self, value: u64) {
        let _guard = emulation_lock();
        let total = self.sum();
        if total < value {
            self.add(value - total);
        }
    }
}

/// Rounds a facade value to the integer a [`SignedCounter`] holds: nearest integer
/// (ties away from zero), saturating at the `i64` range; `None` for NaN.
fn to_integer(value: f64) -> Option<i64> {
    if value.is_nan() {
        None
    } else {
        // `as` saturates for out-of-range values and infinities.
        Some(value.round() as i64)
    }
}

/// A gauge of the `metrics` facade. **percid gauges are integer gauges**: every value
/// passed in is rounded to the nearest integer (ties away from zero) before it is
/// applied, so `increment(0.4)` adds nothing and ten of them still add nothing.
/// Values beyond the `i64` range saturate; NaN is ignored. Keep fractional gauges
/// (ratios, temperatures) on the facade's `f64`-in-`AtomicU64` gauge.
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
impl ::metrics::GaugeFn for SignedCounter {
    /// [`SignedCounter::add`] of `value` rounded to the nearest integer.
    #[inline]
    fn increment(&self, value: f64) {
        if let Some(n) = to_integer(value) {
            self.add(n);
        }
    }

    /// [`SignedCounter::sub`] of `value` rounded to the nearest integer.
    #[inline]
    fn decrement(&self, value: f64) {
        if let Some(n) = to_integer(value) {
            self.sub(n);
        }
    }

    /// Sets the gauge to `value` rounded to the nearest integer:
    /// [`SignedCounter::take`] then [`SignedCounter::add`].
    ///
    /// Calls to `set` are serialised with each other (the last one wins, never a
    /// mix of two). An `increment`/`decrement` running concurrently with a `set` may
    /// land before it (and be overwritten) or after it (and stay, on top of
    /// `value`): the same outcomes as with an atomic gauge, but a `sum` read during
    /// the `set` may also see the gauge briefly at 0 plus concurrent updates.
    fn set(&self, value: f64) {
        let Some(n) = to_integer(value) else {
            return;
        };
        let _guard = emulation_lock();
        self.take();
        self.add(n);
    }
}

/// Prometheus' default histogram bounds (client_golang's `DefBuckets`), in seconds.
const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Default of [`PercidRecorder::with_sum_scale`]: sums in nanounits.
const DEFAULT_SUM_SCALE: f64 = 1e9;

/// A `metrics` histogram on percid counters: one [`Counter`] per bucket (the last
/// one counts the values above every bound) and the sum in `1 / scale` units.
struct Histogram {
    /// Upper bounds, finite, sorted, without duplicates.
    bounds: Arc<[f64]>,
    /// `bounds.len() + 1` counters, not cumulative (the rendering accumulates).
    buckets: Box<[Counter]>,
    /// The sum, in units of `1 / scale`.
    sum: SignedCounter,
    scale: f64,
}

impl Histogram {
    fn new(bounds: Arc<[f64]>, scale: f64) -> Histogram {
        let buckets = (0..=bounds.len()).map(|_| Counter::new()).collect();
        Histogram {
            bounds,
            buckets,
            sum: SignedCounter::new(),
            scale,
        }
    }

    /// The bucket of `value`: the first whose bound is at least `value`.
    fn bucket(&self, value: f64) -> &Counter {
        &self.buckets[self.bounds.partition_point(|&b| b < value)]
    }
}

impl HistogramFn for Histogram {
    fn record(&self, value: f64) {
        self.record_many(value, 1);
    }

    fn record_many(&self, value: f64, count: usize) {
        if value.is_nan() || count == 0 {
            return;
        }
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        self.bucket(value).add(count);
        if let Some(units) = to_integer(value * self.scale) {
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            self.sum.add(units.wrapping_mul(count));
        }
    }
}

/// A metric's identity in the exposition: its name and its labels sorted by label
/// name, so `{a="1",b="2"}` and `{b="2",a="1"}` are one series.
type Id = (String, Vec<(String, String)>);

fn id(key: &Key) -> Id {
    let mut labels: Vec<_> = key
        .labels()
        .map(|l| (l.key().to_owned(), l.value().to_owned()))
        .collect();
    labels.sort();
    (key.name().to_owned(), labels)
}

/// The series of one metric kind: by the facade's key (the lookup of every
/// registration) and by identity (the rendering, in name order).
struct Family<T> {
    by_key: HashMap<Key, Arc<T>>,
    by_id: BTreeMap<Id, Arc<T>>,
}

impl<T> Default for Family<T> {
    fn default() -> Self {
        Family {
            by_key: HashMap::new(),
            by_id: BTreeMap::new(),
        }
    }
}

// Nothing panics while these locks are held but an allocation failure, and the maps
// stay consistent at every step: a poisoned lock is still usable.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// The series behind `key`, created with `make` on its first registration.
fn get_or_create<T>(family: &RwLock<Family<T>>, key: &Key, make: impl FnOnce() -> T) -> Arc<T> {
    if let Some(existing) = read(family).by_key.get(key) {
        return Arc::clone(existing);
    }
    let mut family = write(family);
    let family = &mut *family;
    let series = Arc::clone(
        family
            .by_id
            .entry(id(key))
            .or_insert_with(|| Arc::new(make())),
    );
    family.by_key.insert(key.clone(), Arc::clone(&series));
    series
}

/// A [`metrics::Recorder`] whose counters, gauges and histograms are percid shards,
/// rendered in the Prometheus text exposition format by [`render`](Self::render).
///
/// Counters are [`Counter`]s, gauges [`SignedCounter`]s (integer gauges: see the
/// [`metrics::GaugeFn`] implementation), histograms per-bucket [`Counter`]s (see the
/// [module documentation](self)). A series is created on its first registration and
/// lives as long as the recorder.
///
/// Label sets are one series whatever the order of their labels. One name should be
/// used by one kind of metric only: Prometheus rejects a name with two `# TYPE`s.
///
/// # Examples
///
/// Installed as the global recorder (once per process), with the standard macros:
///
/// ```no_run
/// use percid::counter::metrics::PercidRecorder;
///
/// let recorder = PercidRecorder::new().install().expect("the first recorder");
/// metrics::describe_counter!("jobs_total", "Jobs run.");
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| metrics::counter!("jobs_total").increment(1));
///     }
/// });
/// assert!(recorder.render().contains("\njobs_total 4\n"));
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub struct PercidRecorder {
    counters: RwLock<Family<Counter>>,
    gauges: RwLock<Family<SignedCounter>>,
    histograms: RwLock<Family<Histogram>>,
    /// `# HELP` text by metric name.
    help: RwLock<BTreeMap<String, String>>,
    /// The bounds every histogram of this recorder uses.
    bounds: Arc<[f64]>,
    /// Histogram sums count units of `1 / sum_scale`.
    sum_scale: f64,
}

impl PercidRecorder {
    /// An empty recorder whose histograms use Prometheus' default bounds (0.005,
    /// 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10).
    ///
    /// ```
    /// let recorder = percid::counter::metrics::PercidRecorder::new();
    /// assert_eq!(recorder.render(), "");
    /// ```
    #[must_use]
    pub fn new() -> PercidRecorder {
        PercidRecorder {
            counters: RwLock::default(),
            gauges: RwLock::default(),
            histograms: RwLock::default(),
            help: RwLock::default(),
            bounds: Arc::from(DEFAULT_BUCKETS),
            sum_scale: DEFAULT_SUM_SCALE,
        }
    }

    /// Sets the upper bounds of the histograms registered from now on. They are
    /// sorted and deduplicated; NaN and infinite bounds are left out (the `+Inf`
    /// bucket is always there).
    ///
    /// ```
    /// use percid::counter::metrics::PercidRecorder;
    ///
    /// let recorder = PercidRecorder::new().with_buckets(&[10.0, 1.0, f64::NAN]);
    /// metrics::with_local_recorder(&recorder, || {
    ///     let h = metrics::histogram!("size");
    ///     h.record(0.5);
    ///     h.record(20.0);
    /// });
    /// let text = recorder.render();
    /// assert!(text.contains("size_bucket{le=\"1\"} 1\n"));
    /// assert!(text.contains("size_bucket{le=\"10\"} 1\n"));
    /// assert!(text.contains("size_bucket{le=\"+Inf\"} 2\n"));
    /// assert!(text.contains("size_sum 20.5\nsize_count 2\n"));
    /// ```
    #[must_use]
    pub fn with_buckets(mut self, bounds: &[f64]) -> PercidRecorder {
        let mut bounds: Vec<f64> = bounds.iter().copied().filter(|b| b.is_finite()).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        self.bounds = Arc::from(bounds);
        self
    }

    /// Sets the resolution of the sums of the histograms registered from now on: a
    /// sum is an integer count of `1 / scale` units (each value is rounded to one),
    /// so it wraps beyond about ±9.2 × 10^18 / `scale`. The default, 10^9, keeps
    /// nanoseconds of durations recorded in seconds, up to 292 years in all; a
    /// histogram of sizes in bytes wants 1 (exact, up to 9.2 EB). A scale that is
    /// not finite and positive is ignored.
    ///
    /// ```
    /// use percid::counter::metrics::PercidRecorder;
    ///
    /// let recorder = PercidRecorder::new().with_sum_scale(1.0);
    /// metrics::with_local_recorder(&recorder, || {
    ///     metrics::histogram!("response_bytes").record(1_500_000_000_000.0);
    /// });
    /// assert!(recorder.render().contains("response_bytes_sum 1500000000000\n"));
    /// ```
    #[must_use]
    pub fn with_sum_scale(mut self, scale: f64) -> PercidRecorder {
        if scale.is_finite() && scale > 0.0 {
            self.sum_scale = scale;
        }
        self
    }

    /// Installs the recorder as the process's global `metrics` recorder, and returns
    /// it for rendering.
    ///
    /// # Errors
    ///
    /// [`SetRecorderError`] when a global recorder was installed before (by this
    /// or any other call of [`metrics::set_global_recorder`]); it holds the recorder.
    pub fn install(self) -> Result<Arc<PercidRecorder>, SetRecorderError<Arc<PercidRecorder>>> {
        let recorder = Arc::new(self);
        ::metrics::set_global_recorder(Arc::clone(&recorder))?;
        Ok(recorder)
    }

    /// The total of the counter `name` with exactly these labels (in any order), or
    /// `None` if it was never registered.
    ///
    /// ```
    /// use percid::counter::metrics::PercidRecorder;
    ///
    /// let recorder = PercidRecorder::new();
    /// metrics::with_local_recorder(&recorder, || {
    ///     metrics::counter!("hits", "a" => "1", "b" => "2").increment(5);
    /// });
    /// assert_eq!(recorder.counter_total("hits", &[("b", "2"), ("a", "1")]), Some(5));
    /// assert_eq!(recorder.counter_total("hits", &[]), None);
    /// ```
    pub fn counter_total(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        read(&self.counters)
            .by_id
            .get(&lookup_id(name, labels))
            .map(|c| c.sum())
    }

    /// The value of the gauge `name` with exactly these labels (in any order), or
    /// `None` if it was never registered.
    ///
    /// ```
    /// use percid::counter::metrics::PercidRecorder;
    ///
    /// let recorder = PercidRecorder::new();
    /// metrics::with_local_recorder(&recorder, || {
    ///     let g = metrics::gauge!("in_flight");
    ///     g.increment(3.0);
    ///     g.decrement(1.0);
    /// });
    /// assert_eq!(recorder.gauge_value("in_flight", &[]), Some(2));
    /// ```
    pub fn gauge_value(&self, name: &str, labels: &[(&str, &str)]) -> Option<i64> {
        read(&self.gauges)
            .by_id
            .get(&lookup_id(name, labels))
            .map(|g| g.sum())
    }

    /// Every registered series in the Prometheus text exposition format (version
    /// 0.0.4), counters first, then gauges, then histograms, each kind in name
    /// order: `# HELP` (when described) and `# TYPE` once per name, then one line per
    /// series. Names and label names are made valid (other characters become `_`);
    /// label values and help texts are escaped.
    ///
    /// Each value is read with one `sum` of its shards, so a rendering during
    /// updates is as consistent as a set of relaxed atomic loads: every update that
    /// returned before `render` started is in it. A histogram's `_count` is the sum of
    /// its buckets as rendered; its `_sum` is read separately.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a `String` cannot fail.
        let _ = self.render_to(&mut out);
        out
    }

    fn render_to(&self, out: &mut String) -> fmt::Result {
        let help = read(&self.help);
        let counters = read(&self.counters);
        render_family(
            out,
            &help,
            &counters.by_id,
            "counter",
            |out, (name, labels), c| sample(out, name, "", labels, None, c.sum()),
        )?;
        drop(counters);
        let gauges = read(&self.gauges);
        render_family(
            out,
            &help,
            &gauges.by_id,
            "gauge",
            |out, (name, labels), g| sample(out, name, "", labels, None, g.sum()),
        )?;
        drop(gauges);
        let histograms = read(&self.histograms);
        render_family(
            out,
            &help,
            &histograms.by_id,
            "histogram",
            |out, (name, labels), h| {
                let mut cumulative = 0u64;
                for (i, bucket) in h.buckets.iter().enumerate() {
                    cumulative = cumulative.wrapping_add(bucket.sum());
                    let le = match h.bounds.get(i) {
                        Some(bound) => bound.to_string(),
                        None => "+Inf".to_owned(),
                    };
                    sample(out, name, "_bucket", labels, Some(le.as_str()), cumulative)?;
                }
                // A sum beyond 2^53 units is rounded to the nearest `f64`.
                let sum = h.sum.sum() as f64 / h.scale;
                sample(out, name, "_sum", labels, None, sum)?;
                sample(out, name, "_count", labels, None, cumulative)
            },
        )
    }

    fn describe(&self, key: &KeyName, description: SharedString) {
        write(&self.help).insert(key.as_str().to_owned(), description.into_owned());
    }
}

impl Default for PercidRecorder {
    fn default() -> Self {
        PercidRecorder::new()
    }
}

impl fmt::Debug for PercidRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PercidRecorder")
            .field("counters", &read(&self.counters).by_id.len())
            .field("gauges", &read(&self.gauges).by_id.len())
            .field("histograms", &read(&self.histograms).by_id.len())
            .field("bounds", &self.bounds)
            .field("sum_scale", &self.sum_scale)
            .finish_non_exhaustive()
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
impl Recorder for PercidRecorder {
    /// Keeps `description` as the `# HELP` text of `key` (the unit is not rendered).
    fn describe_counter(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(&key, description);
    }

    /// Keeps `description` as the `# HELP` text of `key` (the unit is not rendered).
    fn describe_gauge(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(&key, description);
    }

    /// Keeps `description` as the `# HELP` text of `key` (the unit is not rendered).
    fn describe_histogram(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.describe(&key, description);
    }

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> ::metrics::Counter {
        ::metrics::Counter::from_arc(get_or_create(&self.counters, key, Counter::new))
    }

    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> ::metrics::Gauge {
        ::metrics::Gauge::from_arc(get_or_create(&self.gauges, key, SignedCounter::new))
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> ::metrics::Histogram {
        let (bounds, scale) = (&self.bounds, self.sum_scale);
        ::metrics::Histogram::from_arc(get_or_create(&self.histograms, key, || {
            Histogram::new(Arc::clone(bounds), scale)
        }))
    }
}

fn lookup_id(name: &str, labels: &[(&str, &str)]) -> Id {
    let mut labels: Vec<_> = labels
        .iter()
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    labels.sort();
    (name.to_owned(), labels)
}

/// Writes the series of one kind; `# HELP` and `# TYPE` before the first series of
/// each name (the map is ordered by name first, so a name's series are adjacent).
fn render_family<T>(
    out: &mut String,
    help: &BTreeMap<String, String>,
    series: &BTreeMap<Id, Arc<T>>,
    kind: &str,
    mut samples: impl FnMut(&mut String, &Id, &T) -> fmt::Result,
) -> fmt::Result {
    let mut last_name: Option<&str> = None;
    for (id, value) in series {
        let name = id.0.as_str();
        if last_name != Some(name) {
            let metric = sanitize(name, true);
            if let Some(text) = help.get(name) {
                writeln!(out, "# HELP {metric} {}", escape(text, false))?;
            }
            writeln!(out, "# TYPE {metric} {kind}")?;
            last_name = Some(name);
        }
        samples(out, id, value)?;
    }
    Ok(())
}

/// One `name<suffix>{labels[,le="…"]} value` line.
fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(String, String)],
    le: Option<&str>,
    value: impl fmt::Display,
) -> fmt::Result {
    write!(out, "{}{suffix}", sanitize(name, true))?;
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        let le = le.map(|le| ("le", le));
        for (k, v) in labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(le)
        {
            if !first {
                out.push(',');
            }
            first = false;
            write!(out, "{}=\"{}\"", sanitize(k, false), escape(v, true))?;
        }
        out.push('}');
    }
    writeln!(out, " {value}")
}

/// Prometheus metric names are `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names the same
/// without `:`; any other character becomes `_`.
fn sanitize(name: &str, colons: bool) -> String {
    let mut out: String = name
        .chars()
        .enumerate()
        .map(|(i, c)| match c {
            'a'..='z' | 'A'..='Z' | '_' => c,
            ':' if colons => c,
            '0'..='9' if i > 0 => c,
            _ => '_',
        })
        .collect();
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// Escapes `\` and newlines (help text), and `"` too in label values.
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use ::metrics::{CounterFn, GaugeFn};
    use std::sync::Arc;

    #[test]
    fn increment_adds() {
        let c = Counter::new();
        CounterFn::increment(&c, 3);
        CounterFn::increment(&c, 4);
        assert_eq!(c.sum(), 7);
    }

    #[test]
    fn absolute_raises_and_never_lowers() {
        let c = Counter::new();
        c.absolute(10);
        assert_eq!(c.sum(), 10);
        c.absolute(4);
        assert_eq!(c.sum(), 10, "absolute must not lower the counter");
        c.absolute(10);
        assert_eq!(c.sum(), 10);
        c.increment(5);
        c.absolute(12);
        assert_eq!(c.sum(), 15);
        c.absolute(u64::MAX);
        assert_eq!(c.sum(), u64::MAX);
    }

    #[test]
    fn absolute_after_take_counts_from_the_reset() {
        let c = Counter::new();
        c.add(50);
        assert_eq!(c.take(), 50);
        c.absolute(20);
        assert_eq!(c.sum(), 20);
    }

    #[test]
    fn concurrent_absolute_does_not_overshoot() {
        for _ in 0..20 {
            let c = Counter::new();
            std::thread::scope(|s| {
                for t in 0..8u64 {
                    let c = &c;
                    // Reordered publications of an external counter: 93..=100.
                    s.spawn(move || c.absolute(93 + t));
                }
            });
            assert_eq!(c.sum(), 100);
        }
    }

    #[test]
    fn concurrent_increments_are_exact() {
        let c = Arc::new(Counter::new());
        let handle = ::metrics::Counter::from_arc(Arc::clone(&c));
        std::thread::scope(|s| {
            for _ in 0..8 {
                let handle = handle.clone();
                s.spawn(move || {
                    for _ in 0..10_000 {
                        handle.increment(1);
                    }
                });
            }
        });
        assert_eq!(c.sum(), 80_000);
    }

    #[test]
    fn gauge_rounds_to_nearest_integer() {
        let g = SignedCounter::new();
        g.increment(2.4);
        assert_eq!(g.sum(), 2);
        g.increment(0.5);
        assert_eq!(g.sum(), 3, "ties round away from zero");
        g.decrement(1.6);
        assert_eq!(g.sum(), 1);
        g.decrement(3.0);
        assert_eq!(g.sum(), -2);
        g.increment(-0.5);
        assert_eq!(g.sum(), -3, "ties round away from zero");
        for _ in 0..10 {
            g.increment(0.4);
        }
        assert_eq!(g.sum(), -3, "fractions below one half are lost");
    }

    #[test]
    fn gauge_ignores_nan_and_saturates() {
        let g = SignedCounter::new();
        g.increment(f64::NAN);
        g.decrement(f64::NAN);
        assert_eq!(g.sum(), 0);
        g.set(7.0);
        g.set(f64::NAN);
        assert_eq!(g.sum(), 7, "set(NaN) leaves the gauge alone");
        g.set(f64::INFINITY);
        assert_eq!(g.sum(), i64::MAX);
        g.set(f64::NEG_INFINITY);
        assert_eq!(g.sum(), i64::MIN);
        g.set(1e300);
        assert_eq!(g.sum(), i64::MAX);
    }

    #[test]
    fn gauge_set_replaces_the_value() {
        let g = SignedCounter::new();
        g.increment(40.0);
        g.set(5.0);
        assert_eq!(g.sum(), 5);
        g.increment(2.0);
        assert_eq!(g.sum(), 7);
        g.set(-3.2);
        assert_eq!(g.sum(), -3);
        g.set(0.0);
        assert_eq!(g.sum(), 0);
    }

    #[test]
    fn concurrent_sets_leave_one_of_the_values() {
        for _ in 0..20 {
            let g = SignedCounter::new();
            std::thread::scope(|s| {
                for t in 0..8i32 {
                    let g = &g;
                    s.spawn(move || g.set(f64::from(100 + t)));
                }
            });
            let v = g.sum();
            assert!((100..108).contains(&v), "a mix of two sets: {v}");
        }
    }

    #[test]
    fn gauge_handle_from_arc_balances() {
        let g = Arc::new(SignedCounter::new());
        let handle = ::metrics::Gauge::from_arc(Arc::clone(&g));
        std::thread::scope(|s| {
            for _ in 0..8 {
                let handle = handle.clone();
                s.spawn(move || {
                    for _ in 0..5_000 {
                        handle.increment(1.0);
                        handle.decrement(1.0);
                    }
                    handle.increment(2.0);
                });
            }
        });
        assert_eq!(g.sum(), 16);
    }
    #[test]
    fn recorder_renders_every_kind() {
        let recorder = PercidRecorder::new().with_buckets(&[1.0, 0.5]);
        ::metrics::with_local_recorder(&recorder, || {
            ::metrics::describe_counter!("req", "Requests\\handled\nby method.");
            ::metrics::counter!("req", "method" => "GET", "code" => "200").increment(3);
            // The same series with its labels in the other order.
            ::metrics::counter!("req", "code" => "200", "method" => "GET").increment(4);
            ::metrics::counter!("req", "method" => "P\"O\\ST\n").increment(1);
            ::metrics::counter!("bad-name.x").increment(2);
            ::metrics::gauge!("temp").set(-3.0);
            let h = ::metrics::histogram!("lat", "path" => "/");
            h.record(0.25);
            h.record(0.5);
            h.record(0.75);
            h.record(7.0);
            h.record(f64::NAN);
        });
        let expected = "\
# TYPE bad_name_x counter
bad_name_x 2
# HELP req Requests\\\\handled\\nby method.
# TYPE req counter
req{code=\"200\",method=\"GET\"} 7
req{method=\"P\\\"O\\\\ST\\n\"} 1
# TYPE temp gauge
temp -3
# TYPE lat histogram
lat_bucket{path=\"/\",le=\"0.5\"} 2
lat_bucket{path=\"/\",le=\"1\"} 3
lat_bucket{path=\"/\",le=\"+Inf\"} 4
lat_sum{path=\"/\"} 8.5
lat_count{path=\"/\"} 4
";
        assert_eq!(recorder.render(), expected);
        assert_eq!(
            recorder.counter_total("req", &[("method", "GET"), ("code", "200")]),
            Some(7)
        );
        assert_eq!(recorder.gauge_value("temp", &[]), Some(-3));
        assert_eq!(recorder.gauge_value("req", &[]), None);
    }

    /// The lib test binary's only global recorder: macros from many threads.
    #[test]
    fn global_recorder_counts_every_thread() {
        const THREADS: u64 = 8;
        const PER_THREAD: u64 = 20_000;
        let recorder = PercidRecorder::new()
            .install()
            .expect("no other test of this binary installs a global recorder");
        std::thread::scope(|s| {
            for t in 0..THREADS {
                s.spawn(move || {
                    let kind = if t % 2 == 0 { "even" } else { "odd" };
                    for _ in 0..PER_THREAD {
                        ::metrics::counter!("unit_ops_total", "kind" => kind).increment(1);
                        ::metrics::gauge!("unit_busy").increment(1.0);
                        ::metrics::gauge!("unit_busy").decrement(1.0);
                    }
                });
            }
        });
        let half = THREADS / 2 * PER_THREAD;
        let text = recorder.render();
        assert!(
            text.contains(&format!("unit_ops_total{{kind=\"even\"}} {half}\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("unit_ops_total{{kind=\"odd\"}} {half}\n")),
            "{text}"
        );
        assert!(text.contains("\nunit_busy 0\n"), "{text}");
        assert!(
            PercidRecorder::new().install().is_err(),
            "a second install fails"
        );
    }
}
