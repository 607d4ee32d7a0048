//! Side-by-side benchmark harness for `percid bench NAME`.
//!
//! The machine is small and shared (DESIGN.md section 4), so a lone absolute time means
//! little. The harness therefore runs every implementation of a benchmark in the same
//! process, round-robin: each round measures each case once (starting one case later
//! every round so no case always runs first), and a case's reported time is the median
//! of its rounds. Ratios are taken within each round and their median reported
//! (see [`Ratio`]); they survive noise that would swamp separate runs.
//!
//! Definition used everywhere: `ns_per_op` is wall-clock nanoseconds per operation
//! across all threads, `wall_ns / total_ops`, where the wall time runs from the first
//! thread's start (after a barrier) to the last thread's end, and `total_ops` is
//! `threads * ops_per_thread`. `mops` is `total_ops / wall_us`, i.e. `1000 / ns_per_op`.
//! With one thread these are plain time per call and calls per microsecond.

pub mod counter;
pub mod getcpu;
mod larson;
pub(crate) mod peers;
pub mod pool;
pub mod ring;

/// The larson peak-memory child (`percid bench larson-rss ALLOC THREADS OPS`).
pub fn larson_rss_child(alloc: &str, threads: usize, ops: u64) -> Result<String, String> {
    larson::rss_child(alloc, threads, ops).map(|line| line + "\n")
}

use std::fmt::Write as _;
use std::hint::black_box;
use std::io::{IsTerminal, Write as _};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::json::Json;
use crate::machine::{self, Machine};

/// A benchmark the command can run.
pub struct Bench {
    pub name: &'static str,
    pub about: &'static str,
    /// Builds the cases and measures them with [`run`].
    pub run: fn(&Config) -> Vec<Measurement>,
    /// Ratios to report, peer time over ours.
    pub ratios: &'static [Ratio],
}

impl Bench {
    /// Runs the benchmark and collects what the table and the JSON show.
    pub fn report(&self, config: &Config) -> Report {
        let machine = MachineLine::probe();
        let results = (self.run)(config);
        Report::new(self.name, config, machine, results, self.ratios)
    }
}

/// Every benchmark `percid bench` knows, in the order the usage text lists them.
pub const BENCHES: &[Bench] = &[getcpu::BENCH, counter::BENCH, pool::BENCH, ring::BENCH];

/// Goals set for some ratios, by benchmark. Kept beside [`BENCHES`] rather than in
/// [`Ratio`] or [`Bench`] so benchmarks without goals need not say so.
const TARGETS: &[(&str, &[Target])] = &[
    (counter::BENCH.name, &counter::TARGETS),
    (pool::BENCH.name, &pool::TARGETS),
    (ring::BENCH.name, &ring::TARGETS),
];

/// A value a ratio should reach. The report shows it beside the measured ratio and
/// says whether it was met; the measured number is never adjusted.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// The [`Ratio::key`] it applies to.
    pub key: &'static str,
    pub goal: Goal,
}

/// Which side of its bound a ratio should be on.
#[derive(Clone, Copy, Debug)]
pub enum Goal {
    /// A speedup: the ratio should be at least this.
    AtLeast(f64),
    /// A cost (ours / reference): the ratio should be at most this.
    AtMost(f64),
}

impl Goal {
    /// `>= 2` or `<= 1.2`, for the table.
    fn describe(self) -> String {
        match self {
            Goal::AtLeast(v) => format!(">= {v}"),
            Goal::AtMost(v) => format!("<= {v}"),
        }
    }

    /// The JSON key and bound.
    fn json(self) -> (&'static str, f64) {
        match self {
            Goal::AtLeast(v) => ("at_least", v),
            Goal::AtMost(v) => ("at_most", v),
        }
    }
}

impl Target {
    /// The targets set for `bench`'s ratios.
    fn of(bench: &str) -> &'static [Target] {
        TARGETS
            .iter()
            .find(|(name, _)| *name == bench)
            .map_or(&[], |(_, targets)| targets)
    }

    /// `None` when the ratio could not be computed.
    pub fn met(&self, value: Option<f64>) -> Option<bool> {
        value.map(|v| match self.goal {
            Goal::AtLeast(bound) => v >= bound,
            Goal::AtMost(bound) => v <= bound,
        })
    }
}

/// How long to measure.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub quick: bool,
    pub rounds: usize,
    /// Target wall time of one measurement of one case.
    pub sample: Duration,
    /// Stop starting rounds after this long (at least [`MIN_ROUNDS`] still run), so a
    /// machine busy with other work cannot stretch a quick run past its promise.
    pub budget: Duration,
}

/// Rounds run whatever the budget says: fewer gives no usable median.
pub const MIN_ROUNDS: usize = 3;

impl Config {
    /// Quick keeps a five-case benchmark to about 3 s on an idle machine, full to about
    /// 25 s; the budgets bound both when the machine is busy.
    pub fn new(quick: bool) -> Config {
        if quick {
            Config {
                quick,
                rounds: 15,
                sample: Duration::from_millis(40),
                budget: Duration::from_secs(12),
            }
        } else {
            Config {
                quick,
                rounds: 31,
                sample: Duration::from_millis(150),
                budget: Duration::from_secs(100),
            }
        }
    }
}

/// The operation under test: `run(thread_index, ops)` performs `ops` operations on the
/// calling thread. Taking a count rather than one call keeps the dynamic call out of
/// the timed loop, which matters when an operation costs a nanosecond.
type RunFn<'a> = dyn Fn(usize, u64) + Sync + 'a;

/// One named implementation at one thread count.
pub struct Case<'a> {
    name: String,
    threads: usize,
    run: Box<RunFn<'a>>,
}

impl<'a> Case<'a> {
    /// `threads` threads each call `run(thread_index, ops)` after a common barrier.
    pub fn new(
        name: impl Into<String>,
        threads: usize,
        run: impl Fn(usize, u64) + Sync + 'a,
    ) -> Case<'a> {
        Case {
            name: name.into(),
            threads: threads.max(1),
            run: Box::new(run),
        }
    }

    /// One thread calling `op` in a loop, each result through `black_box`. The loop is
    /// generic over `op`, so the call is inlined as it would be in user code.
    pub fn looped<T>(name: impl Into<String>, op: impl Fn() -> T + Sync + 'a) -> Case<'a> {
        Case::new(name, 1, move |_, ops| {
            for _ in 0..ops {
                black_box(op());
            }
        })
    }

    /// Wall time of one run of `ops` operations on each thread.
    fn measure(&self, ops: u64) -> Duration {
        if self.threads == 1 {
            let start = Instant::now();
            (self.run)(0, ops);
            return start.elapsed();
        }
        let barrier = Barrier::new(self.threads);
        let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.threads)
                .map(|t| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        let start = Instant::now();
                        (self.run)(t, ops);
                        (start, Instant::now())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("benchmark thread panicked"))
                .collect()
        });
        let first = spans
            .iter()
            .map(|s| s.0)
            .min()
            .expect("at least one thread");
        let last = spans
            .iter()
            .map(|s| s.1)
            .max()
            .expect("at least one thread");
        last - first
    }

    /// Operations per thread that make one measurement last about `target`; the
    /// doubling runs double as warm-up.
    fn calibrate(&self, target: Duration) -> u64 {
        let mut ops: u64 = 16;
        loop {
            let took = self.measure(ops);
            if took >= target / 8 || ops >= 1 << 40 {
                // The fastest of three, so a burst of load while calibrating does not
                // leave this case with tiny, noisy samples.
                let took = (0..2).map(|_| self.measure(ops)).fold(took, Duration::min);
                let scale = target.as_secs_f64() / took.as_secs_f64().max(1e-9);
                return ((ops as f64 * scale) as u64).max(1);
            }
            ops *= if took < target / 1000 { 16 } else { 2 };
        }
    }
}

/// The rounds of one case.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub name: String,
    pub threads: usize,
    /// Operations across all threads in one sample.
    pub total_ops: u64,
    /// ns per op of each round, in round order.
    pub samples: Vec<f64>,
}

impl Measurement {
    pub fn median(&self) -> f64 {
        median(&self.samples)
    }

    pub fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// Million operations per second at the median, `total_ops / wall_us`.
    pub fn mops(&self) -> f64 {
        1000.0 / self.median()
    }
}

fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Measures `cases` alternately, `cfg.rounds` times each (fewer if the budget runs
/// out). Progress goes to stderr.
pub fn run(bench: &str, cases: &[Case<'_>], cfg: &Config) -> Vec<Measurement> {
    let started = Instant::now();
    let progress = Progress::new(bench);
    progress.note(&format!("calibrating {} cases", cases.len()));
    let ops: Vec<u64> = cases.iter().map(|c| c.calibrate(cfg.sample)).collect();
    let mut samples = vec![Vec::with_capacity(cfg.rounds); cases.len()];
    for round in 0..cfg.rounds {
        if round >= MIN_ROUNDS && started.elapsed() > cfg.budget {
            progress.warn(&format!(
                "time budget of {} s spent, stopping after {round} rounds",
                cfg.budget.as_secs()
            ));
            break;
        }
        progress.round(round + 1, cfg.rounds);
        for k in 0..cases.len() {
            let i = (round + k) % cases.len();
            let case = &cases[i];
            let wall = case.measure(ops[i]);
            let total_ops = ops[i] * case.threads as u64;
            samples[i].push(wall.as_nanos() as f64 / total_ops as f64);
        }
    }
    progress.done();
    cases
        .iter()
        .zip(ops)
        .zip(samples)
        .map(|((case, ops), samples)| Measurement {
            name: case.name.clone(),
            threads: case.threads,
            total_ops: ops * case.threads as u64,
            samples,
        })
        .collect()
}

/// Progress on stderr: one rewritten line on a terminal, a few lines in a log.
struct Progress {
    bench: String,
    tty: bool,
}

impl Progress {
    fn new(bench: &str) -> Progress {
        Progress {
            bench: bench.to_owned(),
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn note(&self, what: &str) {
        if self.tty {
            eprint!("\r\x1b[Kbench {}: {what}", self.bench);
        } else {
            eprintln!("bench {}: {what}", self.bench);
        }
        let _ = std::io::stderr().flush();
    }

    /// A line that stays on screen.
    fn warn(&self, what: &str) {
        self.done();
        eprintln!("bench {}: {what}", self.bench);
    }

    fn round(&self, round: usize, rounds: usize) {
        let step = rounds.div_ceil(4).max(1);
        if self.tty || round == 1 || round.is_multiple_of(step) || round == rounds {
            self.note(&format!("round {round}/{rounds}"));
        }
    }

    fn done(&self) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
    }
}

/// "How much faster is `ours` than `peer`": the peer's time divided by ours.
///
/// Taken per round (the two cases ran moments apart, under the same load) and then the
/// median over rounds: on a shared machine this is steadier than a ratio of medians,
/// because a busy stretch slows both sides of a round alike.
///
/// `peer` may name several cases separated by `" | "`: the ratio is then against the
/// fastest of them in each round ("the best of these peers"), which can only lower it.
#[derive(Clone, Copy, Debug)]
pub struct Ratio {
    pub key: &'static str,
    pub peer: &'static str,
    pub ours: &'static str,
}

impl Ratio {
    /// Above 1 means `ours` is faster; `None` if any case is missing.
    pub fn value(&self, results: &[Measurement]) -> Option<f64> {
        let find = |name: &str| results.iter().find(|m| m.name == name);
        let peers: Vec<&Measurement> = self.peer.split(" | ").map(find).collect::<Option<_>>()?;
        let ours = find(self.ours)?;
        let rounds = ours.samples.len();
        if rounds == 0 || peers.iter().any(|p| p.samples.len() != rounds) {
            let best = peers
                .iter()
                .map(|p| p.median())
                .fold(f64::INFINITY, f64::min);
            return Some(best / ours.median());
        }
        let per_round: Vec<f64> = (0..rounds)
            .map(|i| {
                let best = peers
                    .iter()
                    .map(|p| p.samples[i])
                    .fold(f64::INFINITY, f64::min);
                best / ours.samples[i]
            })
            .collect();
        Some(median(&per_round))
    }
}

/// The machine line shown above every table.
#[derive(Clone, Debug)]
pub struct MachineLine {
    pub machine: Machine,
    pub date: String,
    pub backend: &'static str,
    pub index: &'static str,
}

impl MachineLine {
    pub fn probe() -> MachineLine {
        let status = percid::rseq::status();
        MachineLine {
            machine: Machine::probe(),
            date: machine::utc_now(),
            backend: status.backend.as_str(),
            index: status.index.as_str(),
        }
    }

    pub fn text(&self) -> String {
        let m = &self.machine;
        format!(
            "machine: {} | {} cores ({} allowed) | Linux {} | {} | percid backend {}, index {} | {}",
            m.cpu_model,
            m.cpus_online,
            m.cpus_allowed,
            m.kernel,
            m.libc,
            self.backend,
            self.index,
            self.date
        )
    }

    pub fn json(&self) -> Json {
        let m = &self.machine;
        Json::object([
            ("cpu", Json::from(m.cpu_model.as_str())),
            ("cores", m.cpus_online.into()),
            ("cpus_allowed", m.cpus_allowed.into()),
            ("kernel", m.kernel.as_str().into()),
            ("libc", m.libc.as_str().into()),
            ("backend", self.backend.into()),
            ("index", self.index.into()),
            ("date", self.date.as_str().into()),
        ])
    }
}

/// A ratio measured outside the timed cases (peak memory of child processes): its
/// key, value and what it divides.
#[derive(Clone, Debug)]
pub struct Extra {
    pub key: &'static str,
    pub value: Option<f64>,
    pub detail: String,
}

static EXTRAS: std::sync::Mutex<Vec<Extra>> = std::sync::Mutex::new(Vec::new());

/// Records an [`Extra`] for the report of the benchmark that is running.
pub fn record_extra(extra: Extra) {
    EXTRAS.lock().unwrap_or_else(|p| p.into_inner()).push(extra);
}

/// Everything one `percid bench NAME` run found.
pub struct Report {
    pub bench: &'static str,
    pub config: Config,
    pub machine: MachineLine,
    pub results: Vec<Measurement>,
    pub ratios: Vec<(Ratio, Option<f64>)>,
    pub extras: Vec<Extra>,
    pub targets: &'static [Target],
}

impl Report {
    pub fn new(
        bench: &'static str,
        config: &Config,
        machine: MachineLine,
        results: Vec<Measurement>,
        ratios: &[Ratio],
    ) -> Report {
        let ratios = ratios.iter().map(|r| (*r, r.value(&results))).collect();
        Report {
            bench,
            config: *config,
            machine,
            results,
            ratios,
            extras: std::mem::take(&mut *EXTRAS.lock().unwrap_or_else(|p| p.into_inner())),
            targets: Target::of(bench),
        }
    }

    fn target(&self, key: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.key == key)
    }

    /// Rounds actually run (the budget may have cut the plan short).
    pub fn rounds(&self) -> usize {
        self.results
            .iter()
            .map(|m| m.samples.len())
            .min()
            .unwrap_or(0)
    }

    /// The human-readable table, machine line first.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.machine.text());
        let _ = writeln!(
            out,
            "bench {}: {} alternating rounds of ~{} ms per case; ns/op = wall-clock ns per \
             operation across all threads, median of rounds",
            self.bench,
            self.rounds(),
            self.config.sample.as_millis()
        );
        let width = self
            .results
            .iter()
            .map(|m| m.name.len())
            .chain(["impl".len()])
            .max()
            .unwrap_or(4);
        let _ = writeln!(
            out,
            "\n{:<width$}  {:>7}  {:>10}  {:>10}  {:>10}",
            "impl", "threads", "ns/op", "min ns/op", "Mops/s"
        );
        for m in &self.results {
            let _ = writeln!(
                out,
                "{:<width$}  {:>7}  {:>10.3}  {:>10.3}  {:>10.1}",
                m.name,
                m.threads,
                m.median(),
                m.min(),
                m.mops()
            );
        }
        if !self.ratios.is_empty() {
            out.push_str(
                "\nratios: peer time / ours, median of per-round ratios (above 1 = ours faster)\n",
            );
        }
        for (r, v) in &self.ratios {
            let goal = self.target(r.key).map_or_else(String::new, |t| {
                let verdict = match t.met(*v) {
                    Some(true) => "met",
                    Some(false) => "missed",
                    None => "n/a",
                };
                format!("  target {}: {verdict}", t.goal.describe())
            });
            let v = v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}x"));
            let _ = writeln!(out, "  {}: {v}  ({} / {}){goal}", r.key, r.peer, r.ours);
        }
        if !self.extras.is_empty() {
            out.push_str("\nmeasured outside the timed rounds\n");
        }
        for e in &self.extras {
            let goal = self.target(e.key).map_or_else(String::new, |t| {
                let verdict = match t.met(e.value) {
                    Some(true) => "met",
                    Some(false) => "missed",
                    None => "n/a",
                };
                format!("  target {}: {verdict}", t.goal.describe())
            });
            let v = e
                .value
                .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}x"));
            let _ = writeln!(out, "  {}: {v}  ({}){goal}", e.key, e.detail);
        }
        out
    }

    /// One JSON object; see the module docs for the definitions of the numbers.
    pub fn json(&self) -> Json {
        let results = self.results.iter().map(|m| {
            Json::object([
                ("impl", Json::from(m.name.as_str())),
                ("threads", m.threads.into()),
                ("ns_per_op", Json::rounded(m.median(), 4)),
                ("mops", Json::rounded(m.mops(), 3)),
                ("min_ns_per_op", Json::rounded(m.min(), 4)),
                ("ops_per_sample", m.total_ops.into()),
            ])
        });
        let keyed: Vec<(&'static str, Option<f64>)> = self
            .ratios
            .iter()
            .map(|(r, v)| (r.key, *v))
            .chain(self.extras.iter().map(|e| (e.key, e.value)))
            .collect();
        let ratios = keyed
            .iter()
            .map(|(k, v)| (*k, v.map_or(Json::Null, |v| Json::rounded(v, 3))));
        let targets = keyed.iter().filter_map(|&(key, v)| {
            let t = self.target(key)?;
            let (bound_key, bound) = t.goal.json();
            Some((
                key,
                Json::object([(bound_key, Json::from(bound)), ("met", t.met(v).into())]),
            ))
        });
        let mut json = Json::object([
            ("bench", Json::from(self.bench)),
            ("machine", self.machine.json()),
            (
                "config",
                Json::object([
                    ("quick", Json::from(self.config.quick)),
                    ("rounds", self.rounds().into()),
                    ("rounds_planned", self.config.rounds.into()),
                    ("sample_ms", (self.config.sample.as_millis() as u64).into()),
                    ("statistic", "median of rounds".into()),
                    ("ratio", "median over rounds of peer_ns / ours_ns".into()),
                    ("ns_per_op", "wall_ns / total_ops across all threads".into()),
                ]),
            ),
            ("results", Json::Array(results.collect())),
            ("ratios", Json::object(ratios)),
        ]);
        if let (Json::Object(pairs), false) = (&mut json, self.extras.is_empty()) {
            let details = self
                .extras
                .iter()
                .map(|e| (e.key, Json::from(e.detail.as_str())));
            pairs.push(("extras".to_owned(), Json::object(details)));
        }
        // Only benchmarks with goals carry the key, so others' JSON is unchanged.
        if let (Json::Object(pairs), false) = (&mut json, self.targets.is_empty()) {
            pairs.push(("targets".to_owned(), Json::object(targets)));
        }
        json
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn runs_every_thread_for_the_op_count() {
        let done = AtomicU64::new(0);
        let seen = AtomicU64::new(0);
        let case = Case::new("count", 3, |t, ops| {
            seen.fetch_or(1 << t, Ordering::Relaxed);
            done.fetch_add(ops, Ordering::Relaxed);
        });
        case.measure(10);
        assert_eq!(done.load(Ordering::Relaxed), 30);
        assert_eq!(seen.load(Ordering::Relaxed), 0b111);
    }

    #[test]
    fn alternates_and_reports_ratios() {
        let cfg = Config {
            quick: true,
            rounds: 5,
            sample: Duration::from_millis(1),
            budget: Duration::ZERO,
        };
        let cases = [
            Case::looped("fast", || 1u32),
            Case::new("slow", 2, |_, ops| {
                for _ in 0..ops {
                    black_box(std::hint::black_box(7u64).pow(3));
                }
            }),
        ];
        let results = run("test", &cases, &cfg);
        assert_eq!(results.len(), 2);
        // A spent budget still runs the minimum number of rounds.
        assert!(results.iter().all(|m| m.samples.len() == MIN_ROUNDS));
        assert_eq!(results[1].threads, 2);
        let ratio = Ratio {
            key: "k",
            peer: "slow",
            ours: "fast",
        };
        assert!(ratio.value(&results).is_some_and(|v| v > 0.0));
        let missing = Ratio {
            key: "k",
            peer: "nope",
            ours: "fast",
        };
        assert_eq!(missing.value(&results), None);
    }

    #[test]
    fn best_of_peers_takes_the_fastest_each_round() {
        let at = |name: &str, samples: &[f64]| Measurement {
            name: name.to_owned(),
            threads: 1,
            total_ops: 1,
            samples: samples.to_vec(),
        };
        let results = [
            at("ours", &[1.0, 1.0, 1.0]),
            at("a", &[4.0, 2.0, 4.0]),
            at("b", &[3.0, 5.0, 3.0]),
        ];
        let best = Ratio {
            key: "k",
            peer: "a | b",
            ours: "ours",
        };
        // Rounds: min(4, 3) = 3, min(2, 5) = 2, min(4, 3) = 3; median 3.
        assert_eq!(best.value(&results), Some(3.0));
        let one_missing = Ratio {
            key: "k",
            peer: "a | nope",
            ours: "ours",
        };
        assert_eq!(one_missing.value(&results), None);
    }
}
