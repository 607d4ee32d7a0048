//! `percid bench counter`: many threads incrementing one shared counter.
//!
//! Every implementation runs at 1 thread, 2 (one per CPU on the reference machine) and
//! 32 (oversubscribed: where preemption aborts and cid reuse show), each thread doing
//! its share of increments on one instance. `NumaCounter` runs beside `Counter`: on a
//! one-node machine its cost (its time / `Counter`'s) shows what the NUMA layer adds. The peers are those of DESIGN.md
//! section 4: one cache-padded `AtomicU64`, a LongAdder-style striped counter, and a
//! thread-local cell, the no-sharing limit. Besides the plain `Counter` it measures
//! the approximate-read counter (`batch(1024)`), `PerCid<u64>`, and a mixed workload of
//! 99% increments and 1% reads of the total.
//!
//! Each percid case checks its count after every sample: the last thread of the
//! sample to finish drains the counter (`take`) and fails the run if it differs from
//! the increments done. That check runs inside the timed span, so it can only make
//! percid look slower, never a peer.
//!
//! Every operation passes its subject through [`opaque_ptr`] (a register-only
//! barrier, not `black_box`, whose stack slot can 4K-alias the counter word), and the
//! report prints the page offsets of the hot words it can see.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use percid::{Counter, NumaCounter, PerCid};

use super::peers::{Padded, Striped, TLS_COUNT};
use super::{Bench, Case, Config, Goal, Measurement, Ratio, Target, opaque, opaque_ptr};

pub const BENCH: Bench = Bench {
    name: "counter",
    about: "percid::Counter against AtomicU64, a striped counter and a thread-local",
    run,
    ratios: &RATIOS,
};

/// Threads per case: one, one per CPU of the 2-CPU reference machine (the ratio keys
/// name it, so it stays fixed), and oversubscribed.
const THREADS: [usize; 3] = [1, 2, 32];

/// The approximate-read counter's batch.
const BATCH: u64 = 1024;

/// One read of the total per this many operations in the mixed workload.
const READ_EVERY: u64 = 100;

const COUNTER: &str = "percid::Counter";
const NUMA: &str = "percid::NumaCounter";
const ATOMIC: &str = "AtomicU64";
const STRIPED: &str = "striped";
const TLS: &str = "thread_local Cell";
const BATCHED: &str = "percid::Counter batch=1024";
const PER_CID: &str = "percid::PerCid<u64>";
const MIXED_COUNTER: &str = "mixed percid::Counter";
const MIXED_ATOMIC: &str = "mixed AtomicU64";
const MIXED_STRIPED: &str = "mixed striped";

/// A case's name: the implementation and its thread count (ratios look cases up by
/// name alone). A unit test checks the literals in [`RATIOS`] against it.
fn case_name(label: &str, threads: usize) -> String {
    format!("{label} {threads}t")
}

const RATIOS: [Ratio; 13] = [
    Ratio {
        key: "speedup_vs_atomic_1t",
        peer: "AtomicU64 1t",
        ours: "percid::Counter 1t",
    },
    Ratio {
        key: "speedup_vs_atomic_2t",
        peer: "AtomicU64 2t",
        ours: "percid::Counter 2t",
    },
    Ratio {
        key: "speedup_vs_atomic_32t",
        peer: "AtomicU64 32t",
        ours: "percid::Counter 32t",
    },
    Ratio {
        key: "speedup_vs_striped_2t",
        peer: "striped 2t",
        ours: "percid::Counter 2t",
    },
    Ratio {
        key: "speedup_vs_striped_32t",
        peer: "striped 32t",
        ours: "percid::Counter 32t",
    },
    Ratio {
        key: "speedup_vs_tls_1t",
        peer: "thread_local Cell 1t",
        ours: "percid::Counter 1t",
    },
    Ratio {
        key: "speedup_vs_tls_2t",
        peer: "thread_local Cell 2t",
        ours: "percid::Counter 2t",
    },
    Ratio {
        key: "batched_speedup_vs_atomic_2t",
        peer: "AtomicU64 2t",
        ours: "percid::Counter batch=1024 2t",
    },
    Ratio {
        key: "percid_with_speedup_vs_atomic_2t",
        peer: "AtomicU64 2t",
        ours: "percid::PerCid<u64> 2t",
    },
    Ratio {
        key: "mixed_speedup_vs_atomic_2t",
        peer: "mixed AtomicU64 2t",
        ours: "mixed percid::Counter 2t",
    },
    Ratio {
        key: "mixed_speedup_vs_striped_2t",
        peer: "mixed striped 2t",
        ours: "mixed percid::Counter 2t",
    },
    // A cost, not a speedup: NumaCounter's time over Counter's (the issue's
    // `numa_cost_1node`, measured on the one-node reference machine).
    Ratio {
        key: "numa_cost_1node",
        peer: "percid::NumaCounter 1t",
        ours: "percid::Counter 1t",
    },
    Ratio {
        key: "numa_speedup_vs_atomic_2t",
        peer: "AtomicU64 2t",
        ours: "percid::NumaCounter 2t",
    },
];

/// The goals the counter issue set; the table says whether each was met.
pub const TARGETS: [Target; 6] = [
    Target {
        key: "speedup_vs_atomic_1t",
        goal: Goal::AtLeast(1.9),
    },
    Target {
        key: "speedup_vs_tls_1t",
        goal: Goal::AtLeast(0.5),
    },
    Target {
        key: "speedup_vs_atomic_2t",
        goal: Goal::AtLeast(7.0),
    },
    Target {
        key: "speedup_vs_striped_2t",
        goal: Goal::AtLeast(2.0),
    },
    Target {
        key: "speedup_vs_atomic_32t",
        goal: Goal::AtLeast(5.0),
    },
    Target {
        key: "numa_cost_1node",
        goal: Goal::AtMost(1.2),
    },
];

fn run(config: &Config) -> Vec<Measurement> {
    let subjects: Vec<Subjects> = THREADS.iter().map(|_| Subjects::new()).collect();
    let cases: Vec<Case<'_>> = THREADS
        .iter()
        .zip(&subjects)
        .flat_map(|(&threads, s)| cases(threads, s))
        .collect();
    let results = super::run(BENCH.name, &cases, config);
    for (&threads, s) in THREADS.iter().zip(&subjects) {
        record_layout(threads, s);
    }
    results
}

/// Records the page offsets of `s`'s hot words: the percid counters' words in the
/// first cid's unit and the atomics (the striped cells, `NumaCounter` and `PerCid`
/// cannot be seen from outside). With 1 thread, also this thread's thread-local
/// cell and rseq area (every percid add stores to it): the 1-thread cases run on
/// this thread.
fn record_layout(threads: usize, s: &Subjects) {
    let group = format!("{threads}t");
    let address = |a: &AtomicU64| Some(std::ptr::from_ref(a) as usize);
    let words = [
        (COUNTER, &s.counter),
        (BATCHED, &s.batched),
        (MIXED_COUNTER, &s.mixed_counter),
    ];
    for (label, counter) in words {
        super::record_layout(&group, &format!("{label} word"), counter.word_address());
    }
    super::record_layout(&group, ATOMIC, address(&s.atomic.0));
    super::record_layout(&group, MIXED_ATOMIC, address(&s.mixed_atomic.0));
    if threads == 1 {
        let cell = TLS_COUNT.with(|c| std::ptr::from_ref(c) as usize);
        super::record_layout(&group, TLS, Some(cell));
        super::record_layout(&group, "rseq area", super::rseq_area_address());
    }
}

/// A fresh instance of every implementation, shared by the threads of one thread
/// count's cases (so a drained count belongs to exactly one case).
struct Subjects {
    counter: Counter,
    numa: NumaCounter,
    atomic: Padded<AtomicU64>,
    striped: Striped,
    batched: Counter,
    per_cid: PerCid<u64>,
    mixed_counter: Counter,
    mixed_atomic: Padded<AtomicU64>,
    mixed_striped: Striped,
}

impl Subjects {
    fn new() -> Subjects {
        Subjects {
            counter: Counter::new(),
            numa: NumaCounter::new(),
            atomic: Padded(AtomicU64::new(0)),
            striped: Striped::new(),
            batched: Counter::builder()
                .batch(BATCH)
                .build()
                .expect("bench counter: cannot allocate the batched counter"),
            per_cid: PerCid::<u64>::new(|| 0).expect("bench counter: cannot allocate PerCid"),
            mixed_counter: Counter::new(),
            mixed_atomic: Padded(AtomicU64::new(0)),
            mixed_striped: Striped::new(),
        }
    }
}

/// The cases of one thread count. Every operation goes through `opaque_ptr(&x)`, so
/// no loop folds into one add, and none stores to the stack for it.
fn cases(threads: usize, s: &Subjects) -> [Case<'_>; 10] {
    let t = threads;
    [
        checked(
            COUNTER,
            t,
            all,
            |_| opaque_ptr(&s.counter).inc(),
            || drain(&s.counter),
        ),
        checked(
            NUMA,
            t,
            all,
            |_| opaque_ptr(&s.numa).inc(),
            || drain_numa(&s.numa),
        ),
        peer(ATOMIC, t, |_| {
            opaque_ptr(&s.atomic.0).fetch_add(1, Ordering::Relaxed);
        }),
        peer(STRIPED, t, |_| opaque_ptr(&s.striped).inc()),
        peer(TLS, t, |_| {
            TLS_COUNT.with(|c| {
                let c = opaque_ptr(c);
                c.set(c.get().wrapping_add(1));
            })
        }),
        checked(
            BATCHED,
            t,
            all,
            |_| opaque_ptr(&s.batched).inc(),
            || drain(&s.batched),
        ),
        checked(
            PER_CID,
            t,
            all,
            |_| opaque_ptr(&s.per_cid).with(|v| *v += 1),
            || {
                let mut total = 0u64;
                s.per_cid
                    .for_each(|v| total += std::mem::take(v))
                    .expect("bench counter: PerCid::for_each failed");
                total
            },
        ),
        checked(
            MIXED_COUNTER,
            t,
            mixed_incs,
            |i| {
                let c = opaque_ptr(&s.mixed_counter);
                if i.is_multiple_of(READ_EVERY) {
                    opaque(c.sum());
                } else {
                    c.inc();
                }
            },
            || drain(&s.mixed_counter),
        ),
        peer(MIXED_ATOMIC, t, |i| {
            let a = opaque_ptr(&s.mixed_atomic.0);
            if i.is_multiple_of(READ_EVERY) {
                opaque(a.load(Ordering::Relaxed));
            } else {
                a.fetch_add(1, Ordering::Relaxed);
            }
        }),
        peer(MIXED_STRIPED, t, |i| {
            let c = opaque_ptr(&s.mixed_striped);
            if i.is_multiple_of(READ_EVERY) {
                opaque(c.sum());
            } else {
                c.inc();
            }
        }),
    ]
}

/// Increments per thread when every operation is one.
fn all(ops: u64) -> u64 {
    ops
}

/// Increments per thread in the mixed workload: operation `i` reads when `i` is a
/// multiple of [`READ_EVERY`].
fn mixed_incs(ops: u64) -> u64 {
    ops - ops.div_ceil(READ_EVERY)
}

/// A peer case: each thread calls `op(i)` for `i` in `0..ops`.
fn peer<'a>(label: &str, threads: usize, op: impl Fn(u64) + Sync + 'a) -> Case<'a> {
    Case::new(case_name(label, threads), threads, move |_, ops| {
        for i in 0..ops {
            op(i);
        }
    })
}

/// A percid case: like [`peer`], then the sample's last thread to finish calls
/// `drain` (read and reset) and panics unless it returns `threads * incs(ops)`.
fn checked<'a>(
    label: &str,
    threads: usize,
    incs: fn(u64) -> u64,
    op: impl Fn(u64) + Sync + 'a,
    drain: impl Fn() -> u64 + Sync + 'a,
) -> Case<'a> {
    let name = case_name(label, threads);
    let finished = AtomicUsize::new(0);
    let case = name.clone();
    Case::new(name, threads, move |_, ops| {
        for i in 0..ops {
            op(i);
        }
        // AcqRel: the last thread's fetch_add sees every other thread's increments.
        if finished.fetch_add(1, Ordering::AcqRel) + 1 == threads {
            finished.store(0, Ordering::Relaxed);
            let expected = incs(ops) * threads as u64;
            let got = drain();
            assert!(
                got == expected,
                "bench counter: {case} counted {got} after {expected} increments"
            );
        }
    })
}

/// Reads and resets a quiescent counter, checking that its reads agree: `sum` and
/// `take` see the same total, and `approx` brackets it.
fn drain(c: &Counter) -> u64 {
    let sum = c.sum();
    let (approx, error) = c.approx();
    let taken = c.take();
    assert!(
        sum == taken && approx <= sum && sum - approx <= error,
        "bench counter: reads disagree: sum {sum}, take {taken}, approx {approx} ± {error}"
    );
    taken
}

/// [`drain`] for a `NumaCounter`: its per-node totals must add up to what it took
/// since creation.
fn drain_numa(c: &NumaCounter) -> u64 {
    let sum = c.sum();
    let taken = c.take();
    assert!(
        sum == taken,
        "bench counter: NumaCounter reads disagree: sum {sum}, take {taken}"
    );
    taken
}

#[cfg(test)]
mod tests {
    use super::super::{MachineLine, Report};
    use super::*;

    #[test]
    fn ratios_and_targets_name_real_cases() {
        let subjects = Subjects::new();
        let names: Vec<String> = THREADS
            .iter()
            .flat_map(|&t| cases(t, &subjects).map(|c| c.name))
            .collect();
        for r in &RATIOS {
            assert!(names.iter().any(|n| n == r.peer), "no case {}", r.peer);
            assert!(names.iter().any(|n| n == r.ours), "no case {}", r.ours);
        }
        for t in &TARGETS {
            assert!(RATIOS.iter().any(|r| r.key == t.key), "no ratio {}", t.key);
        }
    }

    #[test]
    fn every_case_runs_and_percid_counts_check_out() {
        for &t in &THREADS {
            let subjects = Subjects::new();
            for case in cases(t, &subjects) {
                // Twice: the first sample's drain must leave the next one at zero.
                case.measure(250);
                case.measure(250);
            }
            assert_eq!(subjects.counter.sum(), 0);
            assert_eq!(subjects.atomic.0.load(Ordering::Relaxed), 500 * t as u64);
            assert_eq!(subjects.striped.sum(), 500 * t as u64);
            assert_eq!(
                subjects.mixed_atomic.0.load(Ordering::Relaxed),
                2 * mixed_incs(250) * t as u64
            );
        }
    }

    #[test]
    #[should_panic(expected = "counted 0 after 10 increments")]
    fn a_lost_count_fails_the_run() {
        checked("lossy", 1, all, |_| (), || 0).measure(10);
    }

    #[test]
    fn consecutive_threads_take_different_stripes() {
        // 4 cells, as on the 2-CPU reference machine; more cells only separate more.
        for n in 1..10_000 {
            let (a, b) = (
                super::super::peers::stripe_of(n) >> 62,
                super::super::peers::stripe_of(n + 1) >> 62,
            );
            assert_ne!(a, b, "threads {n} and {} share a cell", n + 1);
        }
    }

    #[test]
    fn report_shows_targets_without_touching_ratios() {
        let at = |name: &str, ns: f64| Measurement {
            name: name.to_owned(),
            threads: 1,
            total_ops: 1,
            samples: vec![ns; 3],
        };
        let results = vec![
            at("AtomicU64 1t", 3.0),
            at("percid::Counter 1t", 1.0),
            at("thread_local Cell 1t", 0.4),
            at("percid::NumaCounter 1t", 1.25),
        ];
        let config = Config::new(true);
        let report = Report::new(BENCH.name, &config, MachineLine::probe(), results, &RATIOS);
        let table = report.table();
        assert!(table.contains(
            "speedup_vs_atomic_1t: 3.00x  (AtomicU64 1t / percid::Counter 1t)  target >= 1.9: met"
        ));
        assert!(table.contains("speedup_vs_tls_1t: 0.40x  (thread_local Cell 1t / percid::Counter 1t)  target >= 0.5: missed"));
        assert!(table.contains(
            "speedup_vs_atomic_2t: n/a  (AtomicU64 2t / percid::Counter 2t)  target >= 7: n/a"
        ));
        assert!(table.contains("numa_cost_1node: 1.25x  (percid::NumaCounter 1t / percid::Counter 1t)  target <= 1.2: missed"));
        let json = report.json().to_string();
        assert!(json.contains(r#""numa_cost_1node":{"at_most":1.2,"met":false}"#));
        assert!(json.contains(r#""speedup_vs_atomic_1t":3,"#));
        assert!(json.contains(r#""targets":{"speedup_vs_atomic_1t":{"at_least":1.9,"met":true},"#));
        assert!(json.contains(r#""speedup_vs_tls_1t":{"at_least":0.5,"met":false}"#));
    }
}
