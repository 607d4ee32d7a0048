//! `percid bench memory`: the resident memory of `percid::alloc::PerCidAlloc` and
//! `percid::Pool` against their peers (issue 12).
//!
//! Every figure comes from a child process of its own (`percid bench memory-child
//! ...`) whose `#[global_allocator]` is the allocator under test (see
//! `memory_alloc.rs`: the parent names it in an environment variable), so the
//! resident set the child reads from `/proc/self/status` is that allocator's alone,
//! and each child has its own peak (`VmHWM`). The pools run on the system allocator.
//! Each child has a timeout; a child that fails or times out is reported as such and
//! its figures print `n/a`.
//!
//! The workloads:
//!
//! 1. **cycle**: 2, 64, 256 and 1024 threads (2, 64, 256 with `--quick`), all alive at
//!    once (they start together after a barrier and wait for each other at the end),
//!    each allocating a working set of [`WORKING_SET`] blocks of 16 B to 1 KiB
//!    (random), writing every byte, and freeing it, for a fixed number of rounds
//!    (cut short by a time limit). Allocators: percid, glibc, mimalloc. Pools:
//!    `percid::Pool<[u8; 256]>` and a thread-local free list of `Box<[u8; 256]>`
//!    (the per-thread peer), each thread taking and giving back 256 objects a round.
//!    Reported: peak RSS (`VmHWM`) and settled RSS (`VmRSS` after the threads exited
//!    and the process idled 1 s, 0.25 s with `--quick`).
//! 2. **burst**: 64 threads allocate 512 MiB in all (blocks of 64 B to 1 KiB, every
//!    byte written), wait for each other (so all of it is live at once), free it
//!    all, exit; the process idles; settled RSS over the RSS before the burst (read
//!    after a warm-up of the same workload at 1/128 of the size and the same idle,
//!    so that code pages and glibc's cached thread stacks are in both). The
//!    pool case takes 512 MiB of `[u8; 256]` objects from one `percid::Pool` and
//!    drops them; the pool stays alive.
//! 3. **phases**: one thread allocates ~256 MiB (64 MiB with `--quick`) of one size,
//!    frees it all, for each of [`PHASE_SIZES`] (24 B to 25 KiB); peak RSS and the
//!    final RSS after idling.
//! 4. **zeroed**: `vec![0u8; 1 << 30]`, nothing touched: RSS once it is made.
//! 5. **vec grow**: a `Vec<u64>` grown by `push` to 100 M elements (25 M with
//!    `--quick`): process CPU time (`CLOCK_PROCESS_CPUTIME_ID`) and wall time per
//!    push, in the timed table, alternating allocators over [`GROW_ROUNDS`] rounds;
//!    and the peak RSS (median of the rounds) as a reading.
//!
//! RSS ratios divide the absolute figures (`VmHWM` or `VmRSS` of the child, which
//! include the binary's own few MiB, the same in every child); the readings give
//! each figure in MiB with the baseline before the workload in the detail.

#[path = "memory_alloc.rs"]
pub(crate) mod global;

use std::alloc::Layout;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hint::black_box;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

use percid::pool::{Pool, PoolBox};

use super::{Bench, Config, Extra, Goal, Measurement, Progress, Ratio, Reading, Target};

pub const BENCH: Bench = Bench {
    name: "memory",
    about: if cfg!(feature = "peers") {
        "resident memory of percid::alloc and percid::Pool against glibc and mimalloc"
    } else {
        "resident memory of percid::alloc and percid::Pool against glibc (more: --features peers)"
    },
    run,
    ratios: &[],
};

/// Blocks (or pool objects) each thread of the cycle workload holds per round.
pub const WORKING_SET: usize = 256;
/// Smallest and largest block of the cycle workload.
const CYCLE_SIZES: (usize, usize) = (16, 1024);
/// Smallest and largest block of the burst workload.
const BURST_SIZES: (usize, usize) = (64, 1024);
/// Threads of the burst workload.
const BURST_THREADS: usize = 64;
/// Bytes the burst workload allocates in all.
const BURST_BYTES: u64 = 512 << 20;
/// Block sizes of the phases workload: 24 B to 25 KiB, about doubling (multiples of 8).
pub const PHASE_SIZES: [usize; 11] = [24, 48, 96, 192, 392, 784, 1576, 3160, 6352, 12752, 25600];
/// The zeroed vector.
const ZEROED_BYTES: u64 = 1 << 30;
/// Rounds of the vec grow cases (each round runs each allocator once).
const GROW_ROUNDS: usize = 3;
/// Stack of the workload threads: they need little, and 1024 of them stay alive.
const STACK: usize = 256 << 10;
/// The pools' objects.
type Obj = [u8; 256];

/// The allocators and pools measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    Percid,
    System,
    Mimalloc,
    Pool,
    ThreadLocalPool,
}

const ALLOCATORS: [Subject; 3] = [Subject::Percid, Subject::System, Subject::Mimalloc];
const ALL: [Subject; 5] = [
    Subject::Percid,
    Subject::System,
    Subject::Mimalloc,
    Subject::Pool,
    Subject::ThreadLocalPool,
];

impl Subject {
    /// Its name in keys and on the child's command line.
    fn id(self) -> &'static str {
        match self {
            Subject::Percid => "percid",
            Subject::System => "system",
            Subject::Mimalloc => "mimalloc",
            Subject::Pool => "pool",
            Subject::ThreadLocalPool => "tl_pool",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Subject::Percid => "percid::alloc",
            Subject::System => "system",
            Subject::Mimalloc => "mimalloc",
            Subject::Pool => "percid::Pool<[u8; 256]>",
            Subject::ThreadLocalPool => "thread-local pool",
        }
    }

    /// The child's global allocator.
    fn global(self) -> &'static str {
        match self {
            Subject::Percid => "percid",
            Subject::Mimalloc => "mimalloc",
            Subject::System | Subject::Pool | Subject::ThreadLocalPool => "system",
        }
    }

    fn from_id(id: &str) -> Option<Subject> {
        ALL.into_iter().find(|s| s.id() == id)
    }
}

/// What one child does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    Cycle {
        threads: usize,
        rounds: u64,
        limit_ms: u64,
    },
    Burst {
        threads: usize,
        bytes: u64,
    },
    Phases {
        bytes: u64,
    },
    Zeroed {
        bytes: u64,
    },
    Grow {
        elements: u64,
    },
}

/// One child: the work, for whom, and how long it idles before the settled reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    pub work: Work,
    pub subject: Subject,
    pub idle_ms: u64,
}

impl Spec {
    /// The child's command line after `bench memory-child`.
    fn args(&self) -> Vec<String> {
        let (name, numbers): (&str, Vec<u64>) = match self.work {
            Work::Cycle {
                threads,
                rounds,
                limit_ms,
            } => ("cycle", vec![threads as u64, rounds, limit_ms]),
            Work::Burst { threads, bytes } => ("burst", vec![threads as u64, bytes]),
            Work::Phases { bytes } => ("phases", vec![bytes]),
            Work::Zeroed { bytes } => ("zeroed", vec![bytes]),
            Work::Grow { elements } => ("grow", vec![elements]),
        };
        [
            name.to_owned(),
            self.subject.id().to_owned(),
            self.idle_ms.to_string(),
        ]
        .into_iter()
        .chain(numbers.iter().map(u64::to_string))
        .collect()
    }

    fn parse(args: &[String]) -> Result<Spec, String> {
        let usage = || {
            format!(
                "memory-child takes WORK SUBJECT IDLE_MS NUMBERS..., not {:?}",
                args.join(" ")
            )
        };
        let [name, subject, idle, numbers @ ..] = args else {
            return Err(usage());
        };
        let subject = Subject::from_id(subject).ok_or_else(usage)?;
        let n = |v: &String| v.parse::<u64>().map_err(|e| format!("`{v}`: {e}"));
        let idle_ms = n(idle)?;
        let numbers: Vec<u64> = numbers.iter().map(n).collect::<Result<_, _>>()?;
        let work = match (name.as_str(), numbers.as_slice()) {
            ("cycle", &[threads, rounds, limit_ms]) => Work::Cycle {
                threads: threads as usize,
                rounds,
                limit_ms,
            },
            ("burst", &[threads, bytes]) => Work::Burst {
                threads: threads as usize,
                bytes,
            },
            ("phases", &[bytes]) => Work::Phases { bytes },
            ("zeroed", &[bytes]) => Work::Zeroed { bytes },
            ("grow", &[elements]) => Work::Grow { elements },
            _ => return Err(usage()),
        };
        let pooled = matches!(subject, Subject::Pool | Subject::ThreadLocalPool);
        let pool_work = match work {
            Work::Cycle { .. } => true,
            Work::Burst { .. } => subject != Subject::ThreadLocalPool,
            _ => false,
        };
        if pooled && !pool_work {
            return Err(format!("{} has no {name} workload", subject.label()));
        }
        Ok(Spec {
            work,
            subject,
            idle_ms,
        })
    }

    /// The readings this child gives: (figure the child prints, reading key).
    fn readings(&self) -> Vec<(&'static str, String)> {
        let id = self.subject.id();
        match self.work {
            Work::Cycle { threads, .. } => vec![
                (PEAK, format!("rss_cycle_{threads}t_{id}_peak")),
                (SETTLED, format!("rss_cycle_{threads}t_{id}_settled")),
            ],
            Work::Burst { .. } => vec![
                (BASELINE, format!("rss_burst_{id}_baseline")),
                (PEAK, format!("rss_burst_{id}_peak")),
                (SETTLED, format!("rss_burst_{id}_settled")),
            ],
            Work::Phases { .. } => vec![
                (PEAK, format!("rss_phases_{id}_peak")),
                (SETTLED, format!("rss_phases_{id}_final")),
            ],
            Work::Zeroed { .. } => vec![(RSS, format!("rss_zeroed_1g_{id}"))],
            Work::Grow { .. } => vec![(PEAK, format!("rss_vec_grow_{id}_peak"))],
        }
    }

    /// How the figures were made, for the readings' detail.
    fn describe(&self) -> String {
        let who = self.subject.label();
        let idle = self.idle_ms;
        match self.work {
            Work::Cycle {
                threads, rounds, ..
            } => format!(
                "{who}, {threads} threads alive at once, each {rounds} rounds (or until the \
                 time limit) of {WORKING_SET} {} taken, written and given back; settled \
                 after the threads exited and {idle} ms idle",
                if matches!(self.subject, Subject::Pool | Subject::ThreadLocalPool) {
                    "256-byte objects".to_owned()
                } else {
                    format!("blocks of {}-{} B", CYCLE_SIZES.0, CYCLE_SIZES.1)
                }
            ),
            Work::Burst { threads, bytes } => format!(
                "{who}, {threads} threads holding {} MiB at once in {}, freed, threads \
                 exited, {idle} ms idle",
                bytes >> 20,
                if self.subject == Subject::Pool {
                    "256-byte pool objects (the pool stays alive)".to_owned()
                } else {
                    format!("blocks of {}-{} B", BURST_SIZES.0, BURST_SIZES.1)
                }
            ),
            Work::Phases { bytes } => format!(
                "{who}, one thread, {} MiB of one size then freed, for {} sizes \
                 {}-{} B; final after {idle} ms idle",
                bytes >> 20,
                PHASE_SIZES.len(),
                PHASE_SIZES[0],
                PHASE_SIZES[PHASE_SIZES.len() - 1]
            ),
            Work::Zeroed { bytes } => {
                format!("{who}, VmRSS once vec![0u8; {bytes}] is made, nothing touched")
            }
            Work::Grow { elements } => {
                format!("{who}, VmHWM after pushing {elements} u64s, median of rounds")
            }
        }
    }

    /// Longest the child may take before it is killed.
    fn timeout(&self, quick: bool) -> Duration {
        let margin = Duration::from_secs(if quick { 30 } else { 60 });
        let work = match self.work {
            Work::Cycle { limit_ms, .. } => Duration::from_millis(limit_ms),
            _ => Duration::ZERO,
        };
        margin + work + Duration::from_millis(self.idle_ms)
    }
}

/// Figures the child prints, in KiB.
const BASELINE: &str = "baseline_kib";
const PEAK: &str = "peak_kib";
const SETTLED: &str = "settled_kib";
const RSS: &str = "rss_kib";
/// Rounds the cycle threads completed in all.
const ROUNDS_DONE: &str = "rounds_done";
const CPU_NS: &str = "cpu_ns";
const WALL_NS: &str = "wall_ns";
/// The prefix of the child's figure lines.
const LINE: &str = "memory-child";

/// How long to run, by `--quick`.
#[derive(Clone, Debug)]
struct Plan {
    quick: bool,
    cycle_threads: &'static [usize],
    cycle_rounds: u64,
    cycle_limit_ms: u64,
    idle_ms: u64,
    phase_bytes: u64,
    grow_elements: u64,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                cycle_threads: &[2, 64, 256],
                cycle_rounds: 100,
                cycle_limit_ms: 2_000,
                idle_ms: 250,
                phase_bytes: 64 << 20,
                grow_elements: 25_000_000,
            }
        } else {
            Plan {
                quick,
                cycle_threads: &[2, 64, 256, 1024],
                cycle_rounds: 200,
                cycle_limit_ms: 5_000,
                idle_ms: 1_000,
                phase_bytes: 256 << 20,
                grow_elements: 100_000_000,
            }
        }
    }

    /// Every child but the vec grow rounds, in the order they run.
    fn specs(&self) -> Vec<Spec> {
        let spec = |work, subject| Spec {
            work,
            subject,
            idle_ms: self.idle_ms,
        };
        let mut specs = Vec::new();
        for &threads in self.cycle_threads {
            let work = Work::Cycle {
                threads,
                rounds: self.cycle_rounds,
                limit_ms: self.cycle_limit_ms,
            };
            specs.extend(ALL.map(|s| spec(work, s)));
        }
        let burst = Work::Burst {
            threads: BURST_THREADS,
            bytes: BURST_BYTES,
        };
        specs.extend(ALLOCATORS.map(|s| spec(burst, s)));
        specs.push(spec(burst, Subject::Pool));
        let phases = Work::Phases {
            bytes: self.phase_bytes,
        };
        specs.extend(ALLOCATORS.map(|s| spec(phases, s)));
        let zeroed = Work::Zeroed {
            bytes: ZEROED_BYTES,
        };
        specs.extend(ALLOCATORS.map(|s| spec(zeroed, s)));
        specs
    }

    fn grow(&self, subject: Subject) -> Spec {
        Spec {
            work: Work::Grow {
                elements: self.grow_elements,
            },
            subject,
            idle_ms: 0,
        }
    }
}

/// A ratio of two readings.
struct RssRatio {
    key: &'static str,
    num: &'static str,
    den: &'static str,
    what: &'static str,
}

const RSS_RATIOS: [RssRatio; 7] = [
    RssRatio {
        key: "alloc_rss_vs_mimalloc_256t",
        num: "rss_cycle_256t_percid_peak",
        den: "rss_cycle_256t_mimalloc_peak",
        what: "peak RSS of the cycle workload at 256 threads, percid::alloc / mimalloc",
    },
    RssRatio {
        key: "alloc_rss_vs_system_256t",
        num: "rss_cycle_256t_percid_peak",
        den: "rss_cycle_256t_system_peak",
        what: "peak RSS of the cycle workload at 256 threads, percid::alloc / system",
    },
    RssRatio {
        key: "pool_rss_vs_thread_local_256t",
        num: "rss_cycle_256t_pool_peak",
        den: "rss_cycle_256t_tl_pool_peak",
        what: "peak RSS of the cycle workload at 256 threads, percid::Pool / thread-local pool",
    },
    RssRatio {
        key: "alloc_rss_after_burst_vs_baseline",
        num: "rss_burst_percid_settled",
        den: "rss_burst_percid_baseline",
        what: "percid::alloc: RSS settled after the 512 MiB burst / RSS before it",
    },
    RssRatio {
        key: "pool_rss_after_burst_vs_baseline",
        num: "rss_burst_pool_settled",
        den: "rss_burst_pool_baseline",
        what: "percid::Pool: RSS settled after the 512 MiB burst / RSS before it",
    },
    RssRatio {
        key: "alloc_rss_phases_vs_system",
        num: "rss_phases_percid_final",
        den: "rss_phases_system_final",
        what: "final RSS after the phases, percid::alloc / system",
    },
    RssRatio {
        key: "alloc_zeroed_1g_rss_vs_system",
        num: "rss_zeroed_1g_percid",
        den: "rss_zeroed_1g_system",
        what: "RSS with a 1 GiB zeroed vector made, percid::alloc / system",
    },
];

/// The vec grow case of `subject` in the timed table.
fn grow_case(subject: Subject) -> String {
    format!("vec grow {}", subject.label())
}

/// Process CPU time of the vec grow: a cost, so percid is the `peer` (numerator).
pub const CPU_RATIOS: [Ratio; 1] = [Ratio {
    key: "alloc_vec_grow_cpu_vs_system",
    peer: "vec grow percid::alloc",
    ours: "vec grow system",
}];

/// The goals issue 12 set; the table says whether each was met.
pub const TARGETS: [Target; 7] = [
    Target {
        key: "alloc_rss_vs_mimalloc_256t",
        goal: Goal::AtMost(0.1),
    },
    Target {
        key: "alloc_rss_vs_system_256t",
        goal: Goal::AtMost(0.6),
    },
    Target {
        key: "alloc_rss_after_burst_vs_baseline",
        goal: Goal::AtMost(1.3),
    },
    Target {
        key: "pool_rss_after_burst_vs_baseline",
        goal: Goal::AtMost(1.3),
    },
    Target {
        key: "alloc_rss_phases_vs_system",
        goal: Goal::AtMost(1.5),
    },
    Target {
        key: "alloc_zeroed_1g_rss_vs_system",
        goal: Goal::AtMost(1.1),
    },
    Target {
        key: "alloc_vec_grow_cpu_vs_system",
        goal: Goal::AtMost(1.1),
    },
];

fn run(config: &Config) -> Vec<Measurement> {
    let plan = Plan::new(config.quick);
    let progress = Progress::new(BENCH.name);
    if !cfg!(feature = "peers") {
        progress.warn(
            "built without feature `peers`: left out mimalloc (its figures print n/a); \
             include it with `cargo run --release --features peers -- bench memory`",
        );
    }
    let mut values: HashMap<String, f64> = HashMap::new();
    for spec in plan.specs() {
        let describe = spec.describe();
        progress.note(&describe);
        let outcome = outcome(&spec, plan.quick, &progress);
        for (figure, key) in spec.readings() {
            let value = outcome
                .as_ref()
                .ok()
                .and_then(|f| f.get(figure))
                .map(|kib| kib as f64 / 1024.0);
            if let Some(v) = value {
                values.insert(key.clone(), v);
            }
            let detail = match &outcome {
                Ok(f) => {
                    let mut d = format!("{describe}; baseline {}", mib(f.get(BASELINE)));
                    if let Some(rounds) = f.get(ROUNDS_DONE) {
                        d.push_str(&format!("; {rounds} rounds done in all"));
                    }
                    d
                }
                Err(e) => format!("{describe}; {e}"),
            };
            super::record_reading(Reading {
                key: leak(key),
                value,
                unit: "MiB",
                detail,
            });
        }
    }
    let results = grow_rounds(&plan, &progress, &mut values);
    progress.done();
    for r in &RSS_RATIOS {
        let (num, den) = (values.get(r.num), values.get(r.den));
        let value = match (num, den) {
            (Some(n), Some(d)) if *d > 0.0 => Some(n / d),
            _ => None,
        };
        let show = |v: Option<&f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1} MiB"));
        super::record_extra(Extra {
            key: r.key,
            value,
            detail: format!("{}: {} / {}", r.what, show(num), show(den)),
        });
    }
    results
}

/// The child's figures, or why there are none (mimalloc left out of this build, a
/// failed or killed child). Failures also go to stderr at once.
fn outcome(spec: &Spec, quick: bool, progress: &Progress) -> Result<Figures, String> {
    if !global::available(spec.subject.global()) {
        return Err("not in this build (feature `peers`)".to_owned());
    }
    launch(spec, spec.timeout(quick)).map_err(|e| {
        let e = format!("child failed: {e}");
        progress.warn(&format!("{} {:?}: {e}", spec.subject.label(), spec.work));
        e
    })
}

/// The vec grow rounds: each round runs each allocator once, starting one later
/// every round. Returns the wall times per push; records the CPU times per push for
/// the report and the median peak RSS as readings.
fn grow_rounds(
    plan: &Plan,
    progress: &Progress,
    values: &mut HashMap<String, f64>,
) -> Vec<Measurement> {
    let subjects: Vec<Subject> = ALLOCATORS
        .into_iter()
        .filter(|s| global::available(s.global()))
        .collect();
    let mut wall = vec![Vec::new(); subjects.len()];
    let mut cpu = wall.clone();
    let mut peak = wall.clone();
    let mut failures: Vec<Option<String>> = vec![None; subjects.len()];
    let n = plan.grow_elements;
    for round in 0..GROW_ROUNDS {
        for k in 0..subjects.len() {
            let i = (round + k) % subjects.len();
            let spec = plan.grow(subjects[i]);
            progress.note(&format!(
                "vec grow round {}/{GROW_ROUNDS}: {}",
                round + 1,
                subjects[i].label()
            ));
            match outcome(&spec, plan.quick, progress) {
                Ok(f) => {
                    let per_push = |key| f.get(key).map(|v| v as f64 / n as f64);
                    if let (Some(w), Some(c), Some(p)) =
                        (per_push(WALL_NS), per_push(CPU_NS), f.get(PEAK))
                    {
                        wall[i].push(w);
                        cpu[i].push(c);
                        peak[i].push(p as f64 / 1024.0);
                    }
                }
                Err(e) => failures[i] = Some(e),
            }
        }
    }
    let measurements = |samples: &[Vec<f64>]| -> Vec<Measurement> {
        subjects
            .iter()
            .zip(samples)
            .filter(|(_, s)| !s.is_empty())
            .map(|(subject, s)| Measurement {
                name: grow_case(*subject),
                threads: 1,
                total_ops: n,
                samples: s.clone(),
            })
            .collect()
    };
    super::RECORDED.with_borrow_mut(|r| r.cpu.extend(measurements(&cpu)));
    for subject in ALLOCATORS {
        let spec = plan.grow(subject);
        let i = subjects.iter().position(|s| *s == subject);
        let value = i
            .filter(|&i| !peak[i].is_empty())
            .map(|i| super::median(&peak[i]));
        let mut detail = spec.describe();
        match i {
            None => detail.push_str("; not in this build (feature `peers`)"),
            Some(i) => {
                if let Some(e) = &failures[i] {
                    detail.push_str(&format!(
                        "; {} of {GROW_ROUNDS} rounds ran; last failure: {e}",
                        peak[i].len()
                    ));
                }
            }
        }
        for (_, key) in spec.readings() {
            if let Some(v) = value {
                values.insert(key.clone(), v);
            }
            super::record_reading(Reading {
                key: leak(key),
                value,
                unit: "MiB",
                detail: detail.clone(),
            });
        }
    }
    measurements(&wall)
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "n/a".to_owned(),
        |k| format!("{:.1} MiB", k as f64 / 1024.0),
    )
}

/// Reading keys are `&'static str`; a run makes a few dozen.
fn leak(key: String) -> &'static str {
    Box::leak(key.into_boxed_str())
}

/// The figures a child printed.
#[derive(Debug, Default)]
struct Figures(Vec<(String, u64)>);

impl Figures {
    fn get(&self, key: &str) -> Option<u64> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    fn parse(stdout: &str) -> Figures {
        Figures(
            stdout
                .lines()
                .filter_map(|l| {
                    let mut words = l.strip_prefix(LINE)?.split_whitespace();
                    let key = words.next()?;
                    let value = words.next()?.parse().ok()?;
                    Some((key.to_owned(), value))
                })
                .collect(),
        )
    }
}

/// The command that runs the child for `args` in this executable.
#[cfg(not(test))]
fn child_command(args: &[String]) -> Result<Command, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "memory-child"]).args(args);
    Ok(cmd)
}

/// In the unit tests this executable is the test binary: the child is its ignored
/// test `child_entry`, which reads the arguments from [`tests::ARGS`].
#[cfg(test)]
fn child_command(args: &[String]) -> Result<Command, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "bench::memory::tests::child_entry",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(tests::ARGS, args.join(" "));
    Ok(cmd)
}

/// Runs the child for `spec` with its allocator as the global allocator, and kills
/// it if it outlives `timeout`.
fn launch(spec: &Spec, timeout: Duration) -> Result<Figures, String> {
    let mut cmd = child_command(&spec.args())?;
    cmd.env(global::ENV, spec.subject.global())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("timed out after {} s, killed", timeout.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("cannot wait for it: {e}"));
            }
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let status = status?;
    if !status.success() {
        // From the first line that says what went wrong (the usage text that
        // follows a command-line error is left out), else the first lines.
        let lines: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let from = lines
            .iter()
            .position(|l| l.contains("error") || l.contains("panicked"))
            .unwrap_or(0);
        let said: Vec<&str> = lines.iter().skip(from).take(2).copied().collect();
        return Err(format!("{status}: {}", said.join(" / ")));
    }
    let figures = Figures::parse(&stdout);
    for (figure, _) in spec.readings() {
        if figures.get(figure).is_none() {
            return Err(format!("no {figure} in its output"));
        }
    }
    Ok(figures)
}

/// The child: `percid bench memory-child WORK SUBJECT IDLE_MS NUMBERS...`, run with
/// the subject's allocator as the global allocator. Prints its figures, one
/// `memory-child KEY VALUE` line each.
pub fn child(args: &[String]) -> Result<String, String> {
    let spec = Spec::parse(args)?;
    if global::name() != spec.subject.global() {
        return Err(format!(
            "{} needs {} as the global allocator, this process has {} (set {}={})",
            spec.subject.label(),
            spec.subject.global(),
            global::name(),
            global::ENV,
            spec.subject.global()
        ));
    }
    // A panicking workload thread would leave the others waiting at a barrier: end
    // the process instead, so the parent reports the panic rather than a timeout.
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::exit(101);
    }));
    let idle = Duration::from_millis(spec.idle_ms);
    let mut out = Vec::new();
    let baseline = status_kib("VmRSS:")?;
    out.push((BASELINE, baseline));
    match spec.work {
        Work::Cycle {
            threads,
            rounds,
            limit_ms,
        } => {
            let limit = Duration::from_millis(limit_ms);
            let done = match spec.subject {
                Subject::Pool => cycle_pool(threads, rounds, limit),
                Subject::ThreadLocalPool => cycle_thread_local(threads, rounds, limit),
                _ => cycle_alloc(threads, rounds, limit),
            };
            out.push((ROUNDS_DONE, done));
            out.push((PEAK, status_kib("VmHWM:")?));
            std::thread::sleep(idle);
            out.push((SETTLED, status_kib("VmRSS:")?));
        }
        Work::Burst { threads, bytes } => {
            // The baseline is the process once it has run the workload's code on as
            // many threads at 1/128 of the size and idled: its code pages, thread
            // stacks (glibc caches them) and set-up are in both readings, and the
            // ratio shows what the burst itself left behind.
            let warm_up = bytes / 128;
            if spec.subject == Subject::Pool {
                let pool = Pool::new(|| [0u8; 256]).map_err(|e| format!("pool: {e:?}"))?;
                burst_pool(&pool, threads, warm_up);
                std::thread::sleep(idle);
                out[0].1 = status_kib("VmRSS:")?;
                burst_pool(&pool, threads, bytes);
                out.push((PEAK, status_kib("VmHWM:")?));
                std::thread::sleep(idle);
                out.push((SETTLED, status_kib("VmRSS:")?));
                drop(pool);
            } else {
                burst_alloc(threads, warm_up);
                std::thread::sleep(idle);
                out[0].1 = status_kib("VmRSS:")?;
                burst_alloc(threads, bytes);
                out.push((PEAK, status_kib("VmHWM:")?));
                std::thread::sleep(idle);
                out.push((SETTLED, status_kib("VmRSS:")?));
            }
        }
        Work::Phases { bytes } => {
            for size in PHASE_SIZES {
                phase(size, bytes);
            }
            out.push((PEAK, status_kib("VmHWM:")?));
            std::thread::sleep(idle);
            out.push((SETTLED, status_kib("VmRSS:")?));
        }
        Work::Zeroed { bytes } => {
            let v = vec![0u8; bytes as usize];
            black_box(&v);
            out.push((RSS, status_kib("VmRSS:")?));
            out.push((PEAK, status_kib("VmHWM:")?));
            drop(v);
        }
        Work::Grow { elements } => {
            let cpu = super::process_cpu();
            let start = Instant::now();
            let mut v: Vec<u64> = Vec::new();
            for i in 0..elements {
                v.push(i);
            }
            black_box(&v);
            let wall = start.elapsed();
            let cpu = super::process_cpu().saturating_sub(cpu);
            out.push((WALL_NS, wall.as_nanos() as u64));
            out.push((CPU_NS, cpu.as_nanos() as u64));
            out.push((PEAK, status_kib("VmHWM:")?));
            drop(v);
        }
    }
    let mut text = String::new();
    for (key, value) in out {
        text.push_str(&format!("{LINE} {key} {value}\n"));
    }
    Ok(text)
}

/// A field of `/proc/self/status` in KiB (`VmRSS:`, `VmHWM:`).
fn status_kib(field: &str) -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/self/status"))
}

/// A xorshift generator per thread.
struct Rng(u64);

impl Rng {
    fn new(thread: usize) -> Rng {
        Rng(0x9e37_79b9_7f4a_7c15u64 ^ (thread as u64 + 1).wrapping_mul(0xff51_afd7_ed55_8ccd))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A size from `lo` to `hi`, both included.
    fn size(&mut self, (lo, hi): (usize, usize)) -> usize {
        lo + (self.next() >> 8) as usize % (hi - lo + 1)
    }
}

/// `threads` threads on small stacks, started together after a barrier, each running
/// `work(thread, start)` (`start` is when the last of them arrived), and waiting for
/// each other at the end so all stay alive until all are done. Exits the process if
/// a thread cannot be started (the started ones would wait forever).
fn all_at_once(threads: usize, work: impl Fn(usize, Instant) + Sync) {
    let start = Barrier::new(threads);
    let end = Barrier::new(threads);
    let started = OnceLock::new();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (start, end, started, work) = (&start, &end, &started, &work);
            let spawned =
                std::thread::Builder::new()
                    .stack_size(STACK)
                    .spawn_scoped(s, move || {
                        if start.wait().is_leader() {
                            let _ = started.set(Instant::now());
                        }
                        // Every thread passed the barrier once the leader did; wait for
                        // the leader's write without a lock.
                        let at = loop {
                            if let Some(at) = started.get() {
                                break *at;
                            }
                            std::thread::yield_now();
                        };
                        work(t, at);
                        end.wait();
                    });
            if let Err(e) = spawned {
                eprintln!("percid: error: cannot start thread {t} of {threads}: {e}");
                std::process::exit(1);
            }
        }
    });
}

/// The layout of a block of `size` bytes.
fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).expect("a small size")
}

/// Allocates a block of `size` bytes from the global allocator and writes every byte.
fn block(size: usize, fill: u8) -> *mut u8 {
    let layout = layout(size);
    // SAFETY: a non-zero size.
    let p = unsafe { std::alloc::alloc(layout) };
    if p.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: `p` holds `size` bytes.
    unsafe { p.write_bytes(fill, size) };
    p
}

/// Frees a block [`block`] made.
///
/// # Safety
/// `p` came from `block(size, _)` and is freed once.
unsafe fn free(p: *mut u8, size: usize) {
    // SAFETY: the caller's contract.
    unsafe { std::alloc::dealloc(p, layout(size)) };
}

/// Runs `round(&mut state, r)` for `r` in `0..rounds` on each of `threads` threads
/// (`state` made by `init(thread)` on the thread), stopping a thread's rounds early
/// once `limit` has passed since the start; returns the rounds done in all.
fn cycle<S>(
    threads: usize,
    rounds: u64,
    limit: Duration,
    init: impl Fn(usize) -> S + Sync,
    round: impl Fn(&mut S, u64) + Sync,
) -> u64 {
    let done = AtomicU64::new(0);
    all_at_once(threads, |t, start| {
        let mut state = init(t);
        let mut r = 0;
        while r < rounds && (r == 0 || start.elapsed() < limit) {
            round(&mut state, r);
            r += 1;
        }
        done.fetch_add(r, Ordering::Relaxed);
    });
    done.into_inner()
}

/// The cycle workload on the global allocator.
fn cycle_alloc(threads: usize, rounds: u64, limit: Duration) -> u64 {
    cycle(threads, rounds, limit, Rng::new, |rng, r| {
        let mut held = [(std::ptr::null_mut::<u8>(), 0usize); WORKING_SET];
        for slot in held.iter_mut() {
            let size = rng.size(CYCLE_SIZES);
            *slot = (block(size, r as u8 | 1), size);
        }
        for (p, size) in held {
            // SAFETY: made just above, freed once.
            unsafe { free(p, size) };
        }
    })
}

/// The cycle workload on a shared `percid::Pool`.
fn cycle_pool(threads: usize, rounds: u64, limit: Duration) -> u64 {
    let pool = Pool::new(|| [0u8; 256]).expect("bench memory: cannot build the pool");
    cycle(
        threads,
        rounds,
        limit,
        |_| Vec::with_capacity(WORKING_SET),
        |held: &mut Vec<PoolBox<'_, Obj>>, r| {
            for _ in 0..WORKING_SET {
                let mut obj = pool.get();
                obj.fill(r as u8 | 1);
                held.push(obj);
            }
            black_box(&held);
            held.clear();
        },
    )
}

thread_local! {
    /// The thread-local pool's free list: the per-thread peer of `percid::Pool`.
    /// Boxes, because the pool hands out each object on its own.
    #[allow(clippy::vec_box)]
    static FREE: RefCell<Vec<Box<Obj>>> = const { RefCell::new(Vec::new()) };
}

/// An object of the thread-local pool: back to its thread's free list when dropped
/// (freed instead once the thread's list is gone, at thread exit).
struct LocalBox(Option<Box<Obj>>);

impl LocalBox {
    fn get() -> LocalBox {
        let reused = FREE.with_borrow_mut(Vec::pop);
        LocalBox(Some(reused.unwrap_or_else(|| Box::new([0u8; 256]))))
    }
}

impl std::ops::Deref for LocalBox {
    type Target = Obj;
    fn deref(&self) -> &Obj {
        self.0.as_deref().expect("present until drop")
    }
}

impl std::ops::DerefMut for LocalBox {
    fn deref_mut(&mut self) -> &mut Obj {
        self.0.as_deref_mut().expect("present until drop")
    }
}

impl Drop for LocalBox {
    fn drop(&mut self) {
        if let Some(obj) = self.0.take() {
            let _ = FREE.try_with(|f| f.borrow_mut().push(obj));
        }
    }
}

/// The cycle workload on the thread-local pool.
fn cycle_thread_local(threads: usize, rounds: u64, limit: Duration) -> u64 {
    cycle(
        threads,
        rounds,
        limit,
        |_| Vec::with_capacity(WORKING_SET),
        |held: &mut Vec<LocalBox>, r| {
            for _ in 0..WORKING_SET {
                let mut obj = LocalBox::get();
                obj.fill(r as u8 | 1);
                held.push(obj);
            }
            black_box(&held);
            held.clear();
        },
    )
}

/// The burst on the global allocator: each thread allocates its share of `bytes`,
/// linking its blocks through their first two words (next, size); all wait; each
/// frees its own.
fn burst_alloc(threads: usize, bytes: u64) {
    let share = bytes / threads as u64;
    let held = Barrier::new(threads);
    all_at_once(threads, |t, _| {
        let mut rng = Rng::new(t);
        let (mut head, mut used) = (std::ptr::null_mut::<u8>(), 0u64);
        while used < share {
            let size = rng.size(BURST_SIZES);
            let p = block(size, 0x5a);
            // SAFETY: at least 64 bytes, 8-aligned.
            unsafe {
                (p as *mut *mut u8).write(head);
                (p as *mut usize).add(1).write(size);
            }
            head = p;
            used += size as u64;
        }
        held.wait();
        while !head.is_null() {
            // SAFETY: a block of the list built above, whose first words were
            // written there.
            unsafe {
                let (next, size) = (
                    (head as *mut *mut u8).read(),
                    (head as *mut usize).add(1).read(),
                );
                free(head, size);
                head = next;
            }
        }
    });
}

/// The burst on a pool: each thread takes its share of `bytes` in objects, writes
/// them, keeps them (raw, linked through their first bytes); all wait; each gives
/// its own back.
fn burst_pool(pool: &Pool<Obj>, threads: usize, bytes: u64) {
    let share = bytes / threads as u64 / std::mem::size_of::<Obj>() as u64;
    let held = Barrier::new(threads);
    all_at_once(threads, |_, _| {
        let mut head = std::ptr::null_mut::<Obj>();
        for _ in 0..share {
            let mut obj = pool.get();
            obj.fill(0x5a);
            let p = PoolBox::into_raw(obj);
            // SAFETY: the object is ours (raw) and 256 bytes long; unaligned write.
            unsafe { (p as *mut *mut Obj).write_unaligned(head) };
            head = p;
        }
        held.wait();
        while !head.is_null() {
            // SAFETY: an object of `pool` given up with `into_raw` above, taken
            // back once; its first bytes hold the next one.
            unsafe {
                let next = (head as *mut *mut Obj).read_unaligned();
                drop(PoolBox::from_raw(pool, head));
                head = next;
            }
        }
    });
}

/// One phase: blocks of `size` bytes up to `bytes` in all, every byte written,
/// linked through their first word; then all freed.
fn phase(size: usize, bytes: u64) {
    let mut head = std::ptr::null_mut::<u8>();
    for _ in 0..bytes / size as u64 {
        let p = block(size, 0x3c);
        // SAFETY: at least 24 bytes, 8-aligned.
        unsafe { (p as *mut *mut u8).write(head) };
        head = p;
    }
    while !head.is_null() {
        // SAFETY: a block of the list built above.
        unsafe {
            let next = (head as *mut *mut u8).read();
            free(head, size);
            head = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MachineLine, Report, TARGETS as ALL_TARGETS};
    use super::*;

    /// The arguments of the child run by [`child_entry`].
    pub(super) const ARGS: &str = "PERCID_BENCH_MEMORY_CHILD_ARGS";

    /// Not a test: the child process of [`launch`] in the test binary, run with
    /// `--ignored --exact` and [`ARGS`] set.
    #[test]
    #[ignore = "the memory bench's child process in tests; started by launch()"]
    fn child_entry() {
        let args: Vec<String> = std::env::var(ARGS)
            .expect("started by launch() with the arguments set")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        match child(&args) {
            // On a line of its own: the harness has written `test ... ` before.
            Ok(text) => print!("\n{text}"),
            Err(e) => panic!("memory child: {e}"),
        }
    }

    #[test]
    fn ratio_and_target_keys_name_real_measurements() {
        for quick in [true, false] {
            let plan = Plan::new(quick);
            let mut keys: Vec<String> = plan
                .specs()
                .iter()
                .chain(&ALLOCATORS.map(|s| plan.grow(s)))
                .flat_map(|s| s.readings().into_iter().map(|(_, k)| k))
                .collect();
            let n = keys.len();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), n, "reading keys repeat");
            for r in &RSS_RATIOS {
                for k in [r.num, r.den] {
                    assert!(keys.iter().any(|x| x == k), "quick {quick}: no reading {k}");
                }
            }
            let cases: Vec<String> = ALLOCATORS.map(grow_case).into();
            for r in &CPU_RATIOS {
                for c in [r.peer, r.ours] {
                    assert!(cases.iter().any(|x| x == c), "no case {c}");
                }
            }
        }
        for t in &TARGETS {
            assert!(
                RSS_RATIOS.iter().any(|r| r.key == t.key)
                    || CPU_RATIOS.iter().any(|r| r.key == t.key),
                "no ratio {}",
                t.key
            );
        }
        // Registered with the harness.
        assert!(super::super::BENCHES.iter().any(|b| b.name == BENCH.name));
        assert!(
            ALL_TARGETS
                .iter()
                .any(|(b, t)| *b == BENCH.name && t.len() == TARGETS.len())
        );
        // A report with a missed target says so, and the JSON carries it.
        let at = |name: &str, ns: f64| Measurement {
            name: name.to_owned(),
            threads: 1,
            total_ops: 1,
            samples: vec![ns; 3],
        };
        let report = Report::new(
            BENCH.name,
            &Config::new(true),
            MachineLine::probe(),
            vec![
                at("vec grow percid::alloc", 2.0),
                at("vec grow system", 1.0),
            ],
            &[],
        )
        .with_cpu(vec![
            at("vec grow percid::alloc", 2.0),
            at("vec grow system", 1.0),
        ]);
        let table = report.table();
        assert!(
            table.contains("alloc_vec_grow_cpu_vs_system: 2.00x")
                && table.contains("target <= 1.1: missed"),
            "{table}"
        );
    }

    #[test]
    fn specs_round_trip_through_the_command_line() {
        for quick in [true, false] {
            let plan = Plan::new(quick);
            for spec in plan
                .specs()
                .into_iter()
                .chain(ALLOCATORS.map(|s| plan.grow(s)))
            {
                assert_eq!(Spec::parse(&spec.args()), Ok(spec));
            }
        }
        let bad =
            |a: &[&str]| Spec::parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>()).is_err();
        assert!(bad(&["cycle", "percid", "10", "2", "3"]));
        assert!(bad(&["phases", "pool", "10", "1024"]));
        assert!(bad(&["grow", "nobody", "0", "5"]));
    }

    /// The smallest case end to end: a child process of this test binary, whose
    /// global allocator is percid's, cycles 2 threads' working sets.
    #[test]
    fn smallest_case_runs_end_to_end() {
        let spec = Spec {
            work: Work::Cycle {
                threads: 2,
                rounds: 5,
                limit_ms: 1_000,
            },
            subject: Subject::Percid,
            idle_ms: 10,
        };
        let figures = launch(&spec, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
        let (peak, settled, baseline) = (
            figures.get(PEAK).unwrap(),
            figures.get(SETTLED).unwrap(),
            figures.get(BASELINE).unwrap(),
        );
        assert!(
            peak >= baseline && baseline > 0 && settled > 0,
            "{figures:?}"
        );
        assert_eq!(figures.get(ROUNDS_DONE), Some(10), "{figures:?}");
        // A child asked for an allocator it does not have fails clearly.
        let mut wrong = child_command(&spec.args()).unwrap();
        wrong.env(global::ENV, "system");
        let out = wrong.output().unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("needs percid as the global allocator")
                || String::from_utf8_lossy(&out.stderr)
                    .contains("needs percid as the global allocator")
        );
    }
}
