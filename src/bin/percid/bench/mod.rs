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
//!
//! `cpu_ns_per_op` is the process's CPU time (`CLOCK_PROCESS_CPUTIME_ID`: every thread
//! of the process, user and system) over the same sample, divided by the same
//! `total_ops`, and reported the same way, as the median of rounds. With several
//! threads it is read by the last thread to reach the start barrier and by the last
//! thread to finish, so it spans what the wall time spans (threads' creation and exit
//! stay out), plus whatever helper threads the case keeps (a runtime's workers) burn
//! meanwhile; nothing else runs in the process during a sample. Above `ns_per_op` means more than one CPU was busy per operation;
//! below it means threads slept. On a shared machine it also shows what the wall
//! time hides: a case that spins while it waits costs CPU the other work lacks.

pub mod counter;
pub mod getcpu;
mod larson;
pub mod memory;
pub(crate) mod peers;
pub mod pool;
pub mod ring;

/// The larson peak-memory child (`percid bench larson-rss ALLOC THREADS OPS`).
pub fn larson_rss_child(alloc: &str, threads: usize, ops: u64) -> Result<String, String> {
    larson::rss_child(alloc, threads, ops).map(|line| line + "\n")
}

/// A `bench memory` child (`percid bench memory-child WORK SUBJECT IDLE_MS ...`).
pub fn memory_child(args: &[String]) -> Result<String, String> {
    memory::child(args)
}

/// The per-operation barriers of `bench counter` and `bench pool`, on percid and
/// every peer alike: a value or reference passed through an empty `asm!` in a
/// register, not `black_box`'s stack slot (which can 4K-alias the word under test;
/// see `percid::bench_support::opaque`). They live in the library, with all of the
/// crate's asm.
pub use percid::bench_support::{opaque, opaque_ptr};

use std::fmt::Write as _;
use std::hint::black_box;
use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, OnceLock};
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
        let recorded = RECORDED.take();
        Report::new(self.name, config, machine, results, self.ratios)
            .with_cpu(recorded.cpu)
            .with_readings(recorded.readings)
            .with_layout(recorded.layout)
    }
}

/// Every benchmark `percid bench` knows, in the order the usage text lists them.
pub const BENCHES: &[Bench] = &[
    getcpu::BENCH,
    counter::BENCH,
    pool::BENCH,
    ring::BENCH,
    memory::BENCH,
];

/// Ratios taken on CPU time ([`Basis::Cpu`]), by benchmark. Kept beside [`BENCHES`]
/// like [`TARGETS`], so the benchmarks without any need not say so.
const CPU_RATIOS: &[(&str, &[Ratio])] = &[
    (ring::BENCH.name, &ring::CPU_RATIOS),
    (memory::BENCH.name, &memory::CPU_RATIOS),
];

/// Benchmarks whose operation is a message: their cases' JSON also carries the
/// figure under `cpu_ns_per_msg` (the same number as `cpu_ns_per_op`).
const PER_MESSAGE: &[&str] = &[ring::BENCH.name];

/// Goals set for some ratios, by benchmark. Kept beside [`BENCHES`] rather than in
/// [`Ratio`] or [`Bench`] so benchmarks without goals need not say so.
const TARGETS: &[(&str, &[Target])] = &[
    (counter::BENCH.name, &counter::TARGETS),
    (pool::BENCH.name, &pool::TARGETS),
    (ring::BENCH.name, &ring::TARGETS),
    (memory::BENCH.name, &memory::TARGETS),
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

    /// Wall time and process CPU time of one run of `ops` operations on each thread
    /// (see the module docs for the span each covers).
    fn measure(&self, ops: u64) -> Sample {
        if self.threads == 1 {
            let cpu = process_cpu();
            let start = Instant::now();
            (self.run)(0, ops);
            let wall = start.elapsed();
            return Sample {
                wall,
                cpu: process_cpu().saturating_sub(cpu),
            };
        }
        let barrier = Barrier::new(self.threads);
        let running = AtomicUsize::new(self.threads);
        let (cpu_start, cpu_end) = (OnceLock::new(), OnceLock::new());
        let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.threads)
                .map(|t| {
                    let (barrier, running) = (&barrier, &running);
                    let (cpu_start, cpu_end) = (&cpu_start, &cpu_end);
                    s.spawn(move || {
                        // The leader arrived last: every thread exists and waits.
                        if barrier.wait().is_leader() {
                            let _ = cpu_start.set(process_cpu());
                        }
                        let start = Instant::now();
                        (self.run)(t, ops);
                        let end = Instant::now();
                        if running.fetch_sub(1, Ordering::AcqRel) == 1 {
                            let _ = cpu_end.set(process_cpu());
                        }
                        (start, end)
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
        // Both are set once every thread has been joined (a panic above propagated).
        let cpu = match (cpu_start.get(), cpu_end.get()) {
            (Some(start), Some(end)) => end.saturating_sub(*start),
            _ => unreachable!("every benchmark thread passed the barrier and finished"),
        };
        Sample {
            wall: last - first,
            cpu,
        }
    }

    /// Operations per thread that make one measurement last about `target`; the
    /// doubling runs double as warm-up.
    fn calibrate(&self, target: Duration) -> u64 {
        let mut ops: u64 = 16;
        loop {
            let took = self.measure(ops).wall;
            if took >= target / 8 || ops >= 1 << 40 {
                // The fastest of three, so a burst of load while calibrating does not
                // leave this case with tiny, noisy samples.
                let took = (0..2)
                    .map(|_| self.measure(ops).wall)
                    .fold(took, Duration::min);
                let scale = target.as_secs_f64() / took.as_secs_f64().max(1e-9);
                return ((ops as f64 * scale) as u64).max(1);
            }
            ops *= if took < target / 1000 { 16 } else { 2 };
        }
    }
}

/// What one measurement of a case took.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// First thread's start to last thread's end.
    wall: Duration,
    /// The process's CPU time over about the same span.
    cpu: Duration,
}

/// The CPU time `clock` has counted (`CLOCK_PROCESS_CPUTIME_ID`: every thread of the
/// process; `CLOCK_THREAD_CPUTIME_ID`: the calling thread), user and system.
fn cpu_clock(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    // Both clocks exist on every Linux since 2.6.12, so failure is a broken system.
    assert!(
        rc == 0,
        "clock_gettime({clock}) failed: {}",
        std::io::Error::last_os_error()
    );
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of the whole process so far.
pub fn process_cpu() -> Duration {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time of the calling thread so far.
pub fn thread_cpu() -> Duration {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
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
/// out), and returns their wall times. Their CPU times, measured alongside, are kept
/// for the report [`Bench::report`] builds on this thread (see [`RECORDED`]).
/// Progress goes to stderr.
pub fn run(bench: &str, cases: &[Case<'_>], cfg: &Config) -> Vec<Measurement> {
    let (wall, cpu) = run_both(bench, cases, cfg);
    RECORDED.with_borrow_mut(|r| r.cpu.extend(cpu));
    wall
}

/// [`run`]'s measurements: the wall times, and the same cases and rounds with the
/// process's CPU ns per op as their samples.
fn run_both(bench: &str, cases: &[Case<'_>], cfg: &Config) -> (Vec<Measurement>, Vec<Measurement>) {
    let started = Instant::now();
    let progress = Progress::new(bench);
    progress.note(&format!("calibrating {} cases", cases.len()));
    let ops: Vec<u64> = cases.iter().map(|c| c.calibrate(cfg.sample)).collect();
    let mut samples = vec![Vec::with_capacity(cfg.rounds); cases.len()];
    let mut cpu_samples = samples.clone();
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
            let sample = case.measure(ops[i]);
            let total_ops = ops[i] * case.threads as u64;
            samples[i].push(sample.wall.as_nanos() as f64 / total_ops as f64);
            cpu_samples[i].push(sample.cpu.as_nanos() as f64 / total_ops as f64);
        }
    }
    progress.done();
    let measurements = |samples: Vec<Vec<f64>>| -> Vec<Measurement> {
        cases
            .iter()
            .zip(&ops)
            .zip(samples)
            .map(|((case, ops), samples)| Measurement {
                name: case.name.clone(),
                threads: case.threads,
                total_ops: ops * case.threads as u64,
                samples,
            })
            .collect()
    };
    (measurements(samples), measurements(cpu_samples))
}

/// What a benchmark's run measured besides the wall times it returns, kept for the
/// report [`Bench::report`] builds next. Per thread, because the run and the report
/// happen on one thread, and tests running side by side must not take each
/// other's.
#[derive(Default)]
struct Recorded {
    /// Per case, process CPU ns per op of each round.
    cpu: Vec<Measurement>,
    readings: Vec<Reading>,
    layout: Vec<PageOffset>,
}

thread_local! {
    static RECORDED: std::cell::RefCell<Recorded> = std::cell::RefCell::default();
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
///
/// A cost is written the other way round, its numerator as `peer` (`numa_cost_1node`,
/// `async_cpu_vs_tokio_8p`). Which time a ratio divides is its [`Basis`]: the ratios
/// a [`Bench`] lists are wall time; those in [`CPU_RATIOS`] are CPU time.
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

/// The time a [`Ratio`] divides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    /// Wall-clock ns per op (`ns_per_op`).
    Wall,
    /// The process's CPU ns per op (`cpu_ns_per_op`).
    Cpu,
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

/// A figure measured outside the timed cases that is not a ratio (the CPU time an
/// idle receiver burns): its key, value, unit and how it was measured. A target on
/// its key is judged like a ratio's.
#[derive(Clone, Debug)]
pub struct Reading {
    pub key: &'static str,
    pub value: Option<f64>,
    /// Shown after the value in the table and carried in the JSON, as `"ms"`.
    pub unit: &'static str,
    pub detail: String,
}

/// Where a hot word a benchmark hammers sits within its 4 KiB page: shown on the
/// report's layout line, so a reader can rule out 4K aliasing between it and the
/// loop's own memory (see [`opaque`]).
#[derive(Clone, Debug)]
pub struct PageOffset {
    /// What the entries share, as `"1t"` for the instances of the 1-thread cases.
    pub group: String,
    /// The word, as `"percid::Counter word"`.
    pub what: String,
    /// `address & 0xfff`; `None` when it cannot be seen from outside.
    pub offset: Option<usize>,
}

/// Records the page offset of `address` (`None`: unknown) for the report
/// [`Bench::report`] builds next on this thread.
pub fn record_layout(group: &str, what: &str, address: Option<usize>) {
    let entry = PageOffset {
        group: group.to_owned(),
        what: what.to_owned(),
        offset: address.map(|a| a & 0xfff),
    };
    RECORDED.with_borrow_mut(|r| r.layout.push(entry));
}

/// The calling thread's rseq area when glibc registered it (thread pointer +
/// `__rseq_offset`): every percid operation stores to it (arming `rseq_cs`), so its
/// page offset belongs on the layout line beside the words the operation loads.
/// `None` when percid registered its own area or the C library is not glibc.
pub fn rseq_area_address() -> Option<usize> {
    if percid::rseq::status().owner != percid::rseq::Owner::Glibc
        || !cfg!(all(target_arch = "x86_64", target_env = "gnu"))
    {
        return None;
    }
    // SAFETY: a NUL-terminated name; dlsym only looks it up.
    let offset = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()) };
    if offset.is_null() {
        return None;
    }
    // SAFETY: glibc's `const ptrdiff_t __rseq_offset`, set before any thread runs.
    let offset = unsafe { offset.cast::<isize>().read() };
    // On x86_64 glibc the thread pointer is the thread's `struct pthread`.
    // SAFETY: pthread_self has no preconditions.
    let thread_pointer = unsafe { libc::pthread_self() } as usize;
    Some(thread_pointer.wrapping_add_signed(offset))
}

/// Records a [`Reading`] for the report [`Bench::report`] builds next on this thread.
pub fn record_reading(reading: Reading) {
    RECORDED.with_borrow_mut(|r| r.readings.push(reading));
}

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
    /// The same cases with the process's CPU ns per op as samples; empty for a
    /// report built from wall times alone (then every CPU figure is n/a).
    pub cpu: Vec<Measurement>,
    pub ratios: Vec<(Ratio, Basis, Option<f64>)>,
    pub extras: Vec<Extra>,
    pub readings: Vec<Reading>,
    /// Page offsets of the hot words, grouped; empty for benchmarks that record none.
    pub layout: Vec<PageOffset>,
    pub targets: &'static [Target],
}

impl Report {
    /// A report of the wall times `results`; [`Report::with_cpu`] adds CPU times.
    pub fn new(
        bench: &'static str,
        config: &Config,
        machine: MachineLine,
        results: Vec<Measurement>,
        ratios: &[Ratio],
    ) -> Report {
        let cpu_ratios = CPU_RATIOS
            .iter()
            .find(|(name, _)| *name == bench)
            .map_or(&[][..], |(_, ratios)| ratios);
        let ratios = ratios
            .iter()
            .map(|r| (*r, Basis::Wall, r.value(&results)))
            .chain(cpu_ratios.iter().map(|r| (*r, Basis::Cpu, None)))
            .collect();
        Report {
            bench,
            config: *config,
            machine,
            results,
            cpu: Vec::new(),
            ratios,
            extras: std::mem::take(&mut *EXTRAS.lock().unwrap_or_else(|p| p.into_inner())),
            readings: Vec::new(),
            layout: Vec::new(),
            targets: Target::of(bench),
        }
    }

    /// Adds the cases' CPU times (as [`run`] measured them) and takes the CPU ratios.
    pub fn with_cpu(mut self, cpu: Vec<Measurement>) -> Report {
        for (ratio, basis, value) in &mut self.ratios {
            if *basis == Basis::Cpu {
                *value = ratio.value(&cpu);
            }
        }
        self.cpu = cpu;
        self
    }

    /// Adds figures measured outside the timed cases.
    pub fn with_readings(mut self, readings: Vec<Reading>) -> Report {
        self.readings.extend(readings);
        self
    }

    /// Adds the page offsets of the hot words.
    pub fn with_layout(mut self, layout: Vec<PageOffset>) -> Report {
        self.layout.extend(layout);
        self
    }

    /// The layout groups in the order first recorded, each with its entries.
    fn layout_groups(&self) -> Vec<(&str, Vec<&PageOffset>)> {
        let mut groups: Vec<(&str, Vec<&PageOffset>)> = Vec::new();
        for p in &self.layout {
            match groups.iter_mut().find(|(g, _)| *g == p.group) {
                Some((_, entries)) => entries.push(p),
                None => groups.push((&p.group, vec![p])),
            }
        }
        groups
    }

    /// The layout lines under the machine line, empty without a layout.
    fn layout_text(&self) -> String {
        let mut out = String::new();
        if self.layout.is_empty() {
            return out;
        }
        out.push_str("layout: page offsets (address & 0xfff) of the hot words\n");
        for (group, entries) in self.layout_groups() {
            let entries: Vec<String> = entries
                .iter()
                .map(|p| {
                    let offset = p
                        .offset
                        .map_or_else(|| "n/a".to_owned(), |o| format!("{o:#05x}"));
                    format!("{} {offset}", p.what)
                })
                .collect();
            let _ = writeln!(out, "  {group}: {}", entries.join(", "));
        }
        out
    }

    fn target(&self, key: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.key == key)
    }

    /// `"  target >= 2: met"` when `key` has a target, else empty.
    fn goal_text(&self, key: &str, value: Option<f64>) -> String {
        self.target(key).map_or_else(String::new, |t| {
            let verdict = match t.met(value) {
                Some(true) => "met",
                Some(false) => "missed",
                None => "n/a",
            };
            format!("  target {}: {verdict}", t.goal.describe())
        })
    }

    /// Median CPU ns per op of the case `name`, if measured.
    pub fn cpu_ns_per_op(&self, name: &str) -> Option<f64> {
        self.cpu
            .iter()
            .find(|m| m.name == name)
            .map(Measurement::median)
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
        out.push_str(&self.layout_text());
        let _ = writeln!(
            out,
            "bench {}: {} alternating rounds of ~{} ms per case; ns/op = wall-clock ns per \
             operation across all threads, cpu ns/op = the process's CPU ns per operation \
             over the same span, each the median of rounds",
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
            "\n{:<width$}  {:>7}  {:>10}  {:>10}  {:>10}  {:>10}",
            "impl", "threads", "ns/op", "min ns/op", "Mops/s", "cpu ns/op"
        );
        for m in &self.results {
            let cpu = self
                .cpu_ns_per_op(&m.name)
                .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3}"));
            let _ = writeln!(
                out,
                "{:<width$}  {:>7}  {:>10.3}  {:>10.3}  {:>10.1}  {:>10}",
                m.name,
                m.threads,
                m.median(),
                m.min(),
                m.mops(),
                cpu
            );
        }
        if !self.ratios.is_empty() {
            out.push_str(
                "\nratios: peer time / ours, median of per-round ratios (above 1 = ours faster); \
                 `cpu:` ratios divide CPU time instead of wall time\n",
            );
        }
        for (r, basis, v) in &self.ratios {
            let goal = self.goal_text(r.key, *v);
            let v = v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}x"));
            let on = match basis {
                Basis::Wall => "",
                Basis::Cpu => "cpu: ",
            };
            let _ = writeln!(out, "  {}: {v}  ({on}{} / {}){goal}", r.key, r.peer, r.ours);
        }
        if !self.extras.is_empty() || !self.readings.is_empty() {
            out.push_str("\nmeasured outside the timed rounds\n");
        }
        for e in &self.extras {
            let goal = self.goal_text(e.key, e.value);
            let v = e
                .value
                .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}x"));
            let _ = writeln!(out, "  {}: {v}  ({}){goal}", e.key, e.detail);
        }
        for r in &self.readings {
            let goal = self.goal_text(r.key, r.value);
            let v = r
                .value
                .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2} {}", r.unit));
            let _ = writeln!(out, "  {}: {v}  ({}){goal}", r.key, r.detail);
        }
        out
    }

    /// One JSON object; see the module docs for the definitions of the numbers.
    pub fn json(&self) -> Json {
        let per_msg = PER_MESSAGE.contains(&self.bench);
        let results = self.results.iter().map(|m| {
            let cpu = self
                .cpu_ns_per_op(&m.name)
                .map_or(Json::Null, |v| Json::rounded(v, 4));
            let mut pairs = vec![
                ("impl", Json::from(m.name.as_str())),
                ("threads", m.threads.into()),
                ("ns_per_op", Json::rounded(m.median(), 4)),
                ("mops", Json::rounded(m.mops(), 3)),
                ("min_ns_per_op", Json::rounded(m.min(), 4)),
                ("ops_per_sample", m.total_ops.into()),
                ("cpu_ns_per_op", cpu.clone()),
            ];
            if per_msg {
                pairs.push(("cpu_ns_per_msg", cpu));
            }
            Json::object(pairs)
        });
        let keyed: Vec<(&'static str, Option<f64>)> = self
            .ratios
            .iter()
            .map(|(r, _, v)| (r.key, *v))
            .chain(self.extras.iter().map(|e| (e.key, e.value)))
            .collect();
        let ratios = keyed
            .iter()
            .map(|(k, v)| (*k, v.map_or(Json::Null, |v| Json::rounded(v, 3))));
        let cpu_ratios: Vec<&str> = self
            .ratios
            .iter()
            .filter(|(_, basis, _)| *basis == Basis::Cpu)
            .map(|(r, _, _)| r.key)
            .collect();
        let judged = keyed
            .iter()
            .copied()
            .chain(self.readings.iter().map(|r| (r.key, r.value)));
        let targets: Vec<(&str, Json)> = judged
            .filter_map(|(key, v)| {
                let t = self.target(key)?;
                let (bound_key, bound) = t.goal.json();
                Some((
                    key,
                    Json::object([(bound_key, Json::from(bound)), ("met", t.met(v).into())]),
                ))
            })
            .collect();
        let mut config = vec![
            ("quick", Json::from(self.config.quick)),
            ("rounds", self.rounds().into()),
            ("rounds_planned", self.config.rounds.into()),
            ("sample_ms", (self.config.sample.as_millis() as u64).into()),
            ("statistic", "median of rounds".into()),
            ("ratio", "median over rounds of peer_ns / ours_ns".into()),
            ("ns_per_op", "wall_ns / total_ops across all threads".into()),
            (
                "cpu_ns_per_op",
                "process CPU ns (CLOCK_PROCESS_CPUTIME_ID) over the wall span / total_ops".into(),
            ),
        ];
        if !cpu_ratios.is_empty() {
            config.push((
                "cpu_ratios",
                Json::array(cpu_ratios.iter().map(|k| Json::from(*k))),
            ));
        }
        let mut json = Json::object([
            ("bench", Json::from(self.bench)),
            ("machine", self.machine.json()),
            ("config", Json::object(config)),
            ("results", Json::Array(results.collect())),
            ("ratios", Json::object(ratios)),
        ]);
        let Json::Object(pairs) = &mut json else {
            unreachable!("built as an object")
        };
        if !self.extras.is_empty() {
            let details = self
                .extras
                .iter()
                .map(|e| (e.key, Json::from(e.detail.as_str())));
            pairs.push(("extras".to_owned(), Json::object(details)));
        }
        if !self.readings.is_empty() {
            let readings = self.readings.iter().map(|r| {
                let value = r.value.map_or(Json::Null, |v| Json::rounded(v, 3));
                (
                    r.key,
                    Json::object([
                        ("value", value),
                        ("unit", r.unit.into()),
                        ("detail", r.detail.as_str().into()),
                    ]),
                )
            });
            pairs.push(("readings".to_owned(), Json::object(readings)));
        }
        // Only benchmarks with goals carry the key, so others' JSON is unchanged.
        if !self.targets.is_empty() {
            pairs.push(("targets".to_owned(), Json::object(targets)));
        }
        // Only benchmarks that record a layout carry the key, after all the others.
        if !self.layout.is_empty() {
            let groups = self.layout_groups().into_iter().map(|(group, entries)| {
                let offsets = entries
                    .into_iter()
                    .map(|p| (p.what.as_str(), p.offset.map_or(Json::Null, Json::from)));
                (group, Json::object(offsets))
            });
            pairs.push(("page_offsets".to_owned(), Json::object(groups)));
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

    /// Spins until the calling thread has used `cpu` of CPU time.
    fn burn(cpu: Duration) {
        let start = thread_cpu();
        while thread_cpu() - start < cpu {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn cpu_time_counts_every_thread() {
        // Three threads each burning 20 ms of CPU: 60 ms of process CPU, which the
        // main thread's clock would miss, and a wall clock on an idle machine too.
        // The window opens when the last thread reaches the barrier and closes when
        // the last one finishes, so a loaded machine can leave the first few
        // milliseconds of the others' burn outside it: half is the bound (other
        // tests' threads can only add to it).
        let spin = Case::new("spin", 3, |_, ops| {
            for _ in 0..ops {
                burn(Duration::from_millis(20));
            }
        });
        let s = spin.measure(1);
        assert!(s.cpu >= Duration::from_millis(30), "{s:?}");
        let one = Case::looped("one", || burn(Duration::from_millis(1)));
        assert!(one.measure(3).cpu >= Duration::from_millis(3));
    }

    /// Set in the child process [`sleeping_costs_no_cpu`] starts.
    const ALONE: &str = "PERCID_BENCH_TEST_ALONE";

    /// Sleeping threads cost next to no CPU, however long the wall time: the check
    /// that tells CPU time from wall time. The process clock counts every thread,
    /// and tests run side by side, so the check runs in a child process of this test
    /// binary that runs this test alone.
    #[test]
    fn sleeping_costs_no_cpu() {
        if std::env::var_os(ALONE).is_some() {
            let sleep = Case::new("sleep", 3, |_, ops| {
                for _ in 0..ops {
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
            let s = sleep.measure(2);
            assert!(s.wall >= Duration::from_millis(20), "{s:?}");
            assert!(s.cpu < Duration::from_millis(5), "{s:?}");
            return;
        }
        let exe = std::env::current_exe().expect("the test binary's path");
        let out = std::process::Command::new(exe)
            .args([
                "bench::tests::sleeping_costs_no_cpu",
                "--exact",
                "--test-threads=1",
            ])
            .env(ALONE, "1")
            .output()
            .expect("cannot run the test binary");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn cpu_samples_and_cpu_ratios_reach_the_report() {
        let cfg = Config {
            quick: true,
            rounds: 3,
            sample: Duration::from_millis(2),
            budget: Duration::ZERO,
        };
        let cases = [
            Case::new("spin", 2, |_, ops| {
                for _ in 0..ops {
                    burn(Duration::from_micros(50));
                }
            }),
            Case::new("sleep", 2, |_, ops| {
                for _ in 0..ops {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }),
        ];
        let (wall, cpu) = run_both("test", &cases, &cfg);
        assert_eq!(cpu.len(), 2);
        assert!(cpu.iter().all(|m| m.samples.len() == MIN_ROUNDS));
        // Each op of `spin` burns 50 us of CPU (less a few us at the start, when the
        // threads leave the barrier just before the leader reads the clock).
        assert!(cpu[0].median() >= 40_000.0, "{cpu:?}");
        let cost = Ratio {
            key: "k",
            peer: "spin",
            ours: "sleep",
        };
        assert!(cost.value(&cpu).is_some_and(|v| v > 0.0), "{cpu:?}");
        let report =
            Report::new("test", &cfg, MachineLine::probe(), wall.clone(), &[]).with_cpu(cpu);
        let table = report.table();
        let spin_cpu = report.cpu_ns_per_op("spin").expect("measured");
        assert!(table.contains(&format!("{spin_cpu:.3}")), "{table}");
        let json = report.json().to_string();
        assert!(json.contains(r#""cpu_ns_per_op":"#), "{json}");
        assert!(!json.contains("cpu_ns_per_msg"), "{json}");
        // Without CPU times every CPU figure is n/a, not zero.
        let bare = Report::new("test", &cfg, MachineLine::probe(), wall, &[]);
        assert!(bare.json().to_string().contains(r#""cpu_ns_per_op":null"#));
    }

    #[test]
    fn run_keeps_cpu_times_for_this_threads_report() {
        let cfg = Config {
            quick: true,
            rounds: 3,
            sample: Duration::from_millis(1),
            budget: Duration::ZERO,
        };
        let cases = [Case::looped("fast", || 1u32)];
        let wall = run("test", &cases, &cfg);
        let recorded = RECORDED.take();
        assert_eq!(recorded.cpu.len(), 1);
        assert_eq!(recorded.cpu[0].name, wall[0].name);
        assert_eq!(recorded.cpu[0].samples.len(), wall[0].samples.len());
        assert!(RECORDED.take().cpu.is_empty(), "taken once");
    }

    #[test]
    fn opaque_hands_back_what_it_got() {
        assert_eq!(opaque(0xdead_beef), 0xdead_beef);
        let x = [1u64, 2, 3];
        assert!(std::ptr::eq(opaque_ptr(&x), &x));
        // A loop of increments through the barrier counts every one.
        let cell = std::cell::Cell::new(0u64);
        for _ in 0..1000 {
            let c = opaque_ptr(&cell);
            c.set(c.get() + 1);
        }
        assert_eq!(cell.get(), 1000);
    }

    #[test]
    fn layout_reaches_the_table_and_the_json() {
        let cfg = Config::new(true);
        let bare = Report::new("test", &cfg, MachineLine::probe(), Vec::new(), &[]);
        assert!(!bare.table().contains("layout:"));
        assert!(!bare.json().to_string().contains("page_offsets"));
        let word = 0x7f00_1234_5048_usize;
        record_layout("1t", "word", Some(word));
        record_layout("1t", "cell", None);
        record_layout("2t", "word", Some(0x1080));
        let report = Report::new("test", &cfg, MachineLine::probe(), Vec::new(), &[])
            .with_layout(RECORDED.take().layout);
        let table = report.table();
        assert!(
            table.contains("\n  1t: word 0x048, cell n/a\n  2t: word 0x080\n"),
            "{table}"
        );
        let json = report.json().to_string();
        assert!(
            json.ends_with(r#","page_offsets":{"1t":{"word":72,"cell":null},"2t":{"word":128}}}"#),
            "{json}"
        );
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
