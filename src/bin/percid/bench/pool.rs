//! `percid bench pool`: getting and giving back 64-byte objects.
//!
//! Two workloads, every implementation on each:
//!
//! * **alloc+free pairs** at 1 thread, 2 (one per CPU on the reference machine) and 32
//!   (oversubscribed): each thread loops `let x = get(); touch(&x); drop(x)` on one
//!   instance shared by the threads of that thread count. An operation is one pair.
//! * **producer -> consumer** (`xthread ...`, 2 threads): one thread gets objects and
//!   sends them through a bounded ring of [`RING`] slots to another that drops them,
//!   so every object is given back on another thread than the one that got it. Each
//!   sample hands over `2 × ops` objects (the harness counts `threads × ops`
//!   operations), so `ns/op` is nanoseconds per object. `xthread ring alone` hands
//!   over plain numbers: the ring's own share of every other case's time.
//!
//! The implementations: `percid::Pool<[u64; 8]>` (get, drop of the `PoolBox`), the
//! system allocator (`System.alloc`, as `Box::new` uses it), a `Mutex<Vec<Box<_>>>` pool, and with feature `peers`
//! mimalloc (through `GlobalAlloc` directly), lockfree-object-pool's
//! `LinearObjectPool`, sharded-slab's `Pool` and a crossbeam `ArrayQueue<Box<_>>` pool
//! (see `pool_peers.rs`). Built without the feature, the bench says which peers it
//! left out, and their ratios print `n/a`.
//!
//! Each percid case checks its pool after every sample, on the sample's last thread
//! to finish (inside the timed span, so it can only make percid look slower): every
//! object the pool created must be idle again (none lost, none handed out twice and
//! parked twice), and the pool must not have grown past what the workload can hold
//! at once plus its caches ([`check_pool`]).
//!
//! Not measured here: the allocator workloads (larson) and the `alloc_*` ratios
//! belong to percid's size-class allocator, not to this bench. Memory is reported
//! on stderr after the run, as the objects each pool holds where that can be seen
//! from outside (percid: `created()`; the mutex and queue pools: parked boxes).
//!
//! Each object's address goes through `opaque_ptr` (a register-only barrier, not
//! `black_box`, whose stack slot can 4K-alias the pool's hot words), and the report
//! prints the page offsets of the hot words it can see.

#[path = "pool_peers.rs"]
pub(crate) mod peers;

use std::sync::atomic::{AtomicUsize, Ordering};

use percid::pool::Pool;

use super::larson::{self, Larson, PERCID_ALLOC};
use super::{Bench, Case, Config, Extra, Goal, Measurement, Ratio, Target, opaque, opaque_ptr};
use peers::{Handle, MutexPool, Obj, Ring, ZERO, system_box};
#[cfg(feature = "peers")]
use peers::{MiBox, QueuePool, SlabPool, linear_pool, slab_get};

pub const BENCH: Bench = Bench {
    name: "pool",
    about: if cfg!(feature = "peers") {
        "percid::Pool get/drop against malloc, mimalloc and object pool crates"
    } else {
        "percid::Pool get/drop against malloc and a mutex pool (more: --features peers)"
    },
    run,
    ratios: &RATIOS,
};

/// Threads per pairs case: one, one per CPU of the 2-CPU reference machine (the ratio
/// keys name it, so it stays fixed), and oversubscribed.
const THREADS: [usize; 3] = [1, 2, 32];

/// The percid pool's cache capacity and batch: the defaults, spelled out so that
/// [`check_pool`]'s bound knows them.
const CAPACITY: usize = 64;
const BATCH: usize = 32;

/// Operations per thread of the warm-up sample every case runs before calibration.
const WARM_UP_OPS: u64 = 1000;

/// Slots of the producer -> consumer ring.
const RING: usize = 256;

/// Boxes the `ArrayQueue` pool parks at most.
#[cfg(feature = "peers")]
const QUEUE_CAPACITY: usize = 1024;

const POOL: &str = "percid::Pool";
const SYSTEM: &str = "Box::new (system)";
const MIMALLOC: &str = "mimalloc";
const LINEAR: &str = "LinearObjectPool";
const SLAB: &str = "sharded_slab::Pool";
const MUTEX: &str = "Mutex<Vec<Box>>";
const QUEUE: &str = "ArrayQueue<Box>";
/// The producer -> consumer baseline: the ring handing over plain numbers.
const RING_ALONE: &str = "ring alone";

/// The peers that need feature `peers`: (case label, crate).
const FEATURE_PEERS: [(&str, &str); 4] = [
    (MIMALLOC, "mimalloc"),
    (LINEAR, "lockfree-object-pool"),
    (SLAB, "sharded-slab"),
    (QUEUE, "crossbeam-queue"),
];

/// A pairs case's name: the implementation and its thread count (ratios look cases up
/// by name alone). A unit test checks the literals in [`RATIOS`] against it.
fn case_name(label: &str, threads: usize) -> String {
    format!("{label} {threads}t")
}

/// A producer -> consumer case's name (always 2 threads).
fn xthread_name(label: &str) -> String {
    format!("xthread {label}")
}

/// Threads of the larson workload: one per CPU of the reference machine.
const LARSON_THREADS: usize = 2;
/// Operations per thread of the larson peak-memory children.
const LARSON_RSS_OPS: u64 = 2_000_000;
const LARSON_PERCID: &str = "larson percid::alloc";
const LARSON_SYSTEM: &str = "larson system";
#[cfg_attr(not(feature = "peers"), allow(dead_code))]
const LARSON_MIMALLOC: &str = "larson mimalloc";

const RATIOS: [Ratio; 12] = [
    Ratio {
        key: "speedup_vs_mimalloc_1t",
        peer: "mimalloc 1t",
        ours: "percid::Pool 1t",
    },
    Ratio {
        key: "speedup_vs_mimalloc_2t",
        peer: "mimalloc 2t",
        ours: "percid::Pool 2t",
    },
    Ratio {
        key: "speedup_vs_system_1t",
        peer: "Box::new (system) 1t",
        ours: "percid::Pool 1t",
    },
    Ratio {
        key: "speedup_vs_system_2t",
        peer: "Box::new (system) 2t",
        ours: "percid::Pool 2t",
    },
    Ratio {
        key: "speedup_vs_lockfree_object_pool_2t",
        peer: "LinearObjectPool 2t",
        ours: "percid::Pool 2t",
    },
    Ratio {
        key: "speedup_vs_mutex_pool_2t",
        peer: "Mutex<Vec<Box>> 2t",
        ours: "percid::Pool 2t",
    },
    Ratio {
        key: "speedup_vs_array_queue_2t",
        peer: "ArrayQueue<Box> 2t",
        ours: "percid::Pool 2t",
    },
    Ratio {
        key: "speedup_vs_sharded_slab_2t",
        peer: "sharded_slab::Pool 2t",
        ours: "percid::Pool 2t",
    },
    Ratio {
        key: "xthread_speedup_vs_system",
        peer: "xthread Box::new (system)",
        ours: "xthread percid::Pool",
    },
    Ratio {
        key: "xthread_speedup_vs_mimalloc",
        peer: "xthread mimalloc",
        ours: "xthread percid::Pool",
    },
    Ratio {
        key: "alloc_speedup_vs_system_larson",
        peer: "larson system 2t",
        ours: "larson percid::alloc 2t",
    },
    Ratio {
        key: "alloc_speedup_vs_mimalloc_larson",
        peer: "larson mimalloc 2t",
        ours: "larson percid::alloc 2t",
    },
];

/// The goals the pool issue set; the table says whether each was met.
pub const TARGETS: [Target; 7] = [
    Target {
        key: "speedup_vs_mimalloc_1t",
        goal: Goal::AtLeast(0.95),
    },
    Target {
        key: "speedup_vs_mimalloc_2t",
        goal: Goal::AtLeast(0.95),
    },
    Target {
        key: "speedup_vs_system_1t",
        goal: Goal::AtLeast(3.0),
    },
    Target {
        key: "speedup_vs_system_2t",
        goal: Goal::AtLeast(3.0),
    },
    Target {
        key: "speedup_vs_lockfree_object_pool_2t",
        goal: Goal::AtLeast(3.0),
    },
    Target {
        key: "alloc_speedup_vs_system_larson",
        goal: Goal::AtLeast(1.2),
    },
    Target {
        key: "alloc_rss_vs_system_larson",
        goal: Goal::AtMost(1.5),
    },
];

fn run(config: &Config) -> Vec<Measurement> {
    if let Some(note) = left_out_note() {
        eprintln!("bench {}: {note}", BENCH.name);
    }
    // A percid pool fences (`fence_rseq`) when it drains another cid's cache, and the
    // process's first fence registers it with membarrier: about 10 ms once other
    // threads exist (the kernel synchronises with them), microseconds before. Done
    // here, while the process has one thread, it stays out of every sample.
    let _ = percid::rseq::fence_available();
    let larsons = LarsonSubjects::new();
    let subjects: Vec<Subjects> = THREADS.iter().map(|_| Subjects::new()).collect();
    let xthread = Subjects::new();
    let mut cases: Vec<Case<'_>> = THREADS
        .iter()
        .zip(&subjects)
        .flat_map(|(&threads, s)| pair_cases(threads, s))
        .collect();
    cases.extend(xthread_cases(&xthread));
    cases.extend(larson_cases(&larsons));
    // Warm-up: a pool's first sample at 32 threads is its growth under a burst of
    // threads that all find it empty. Calibration stops at the first sample that
    // takes an eighth of the target, so a slow first sample would size every later
    // sample of that case to a few thousand pairs, whose time is then mostly waking
    // 32 threads.
    for case in &cases {
        case.measure(WARM_UP_OPS);
    }
    let results = super::run(BENCH.name, &cases, config);
    for (&threads, s) in THREADS.iter().zip(&subjects) {
        record_layout(&format!("{threads}t"), s);
    }
    record_layout("xthread", &xthread);
    drop(cases);
    drop(larsons);
    larson_rss(config);
    eprintln!("bench {}: {}", BENCH.name, held_note(&subjects, &xthread));
    results
}

/// The line saying which peers this build left out, `None` when it has them all.
fn left_out_note() -> Option<String> {
    if cfg!(feature = "peers") {
        return None;
    }
    let crates: Vec<&str> = FEATURE_PEERS.iter().map(|(_, krate)| *krate).collect();
    Some(format!(
        "built without feature `peers`: left out {} (their ratios print n/a); include \
         them with `cargo run --release --features peers -- bench pool`",
        crates.join(", ")
    ))
}

/// Records the page offsets of `s`'s hot words, as far as they can be seen from
/// outside: the percid pool's cache head in the first cid's unit, the mutex, and the
/// queue (the allocators' and the other pools' live inside them).
fn record_layout(group: &str, s: &Subjects) {
    super::record_layout(group, &format!("{POOL} head"), s.pool.head_address());
    super::record_layout(group, MUTEX, Some(s.mutex.address()));
    #[cfg(feature = "peers")]
    super::record_layout(group, QUEUE, Some(s.queue.address()));
    if group == "1t" {
        // The 1-thread cases run on this thread; every percid get and put stores to
        // its rseq area.
        super::record_layout(group, "rseq area", super::rseq_area_address());
    }
}

/// What the pools hold after the run, where it can be seen from outside.
fn held_note(subjects: &[Subjects], xthread: &Subjects) -> String {
    let per_count = |f: &dyn Fn(&Subjects) -> usize| -> String {
        let mut parts: Vec<String> = THREADS
            .iter()
            .zip(subjects)
            .map(|(t, s)| format!("{t}t {}", f(s)))
            .collect();
        parts.push(format!("xthread {}", f(xthread)));
        parts.join(", ")
    };
    #[allow(unused_mut)] // extended with feature `peers`
    let mut note = format!(
        "objects held after the run ({}-byte values): {POOL} created {}; {MUTEX} parked {}",
        std::mem::size_of::<Obj>(),
        per_count(&|s| s.pool.created()),
        per_count(&|s| s.mutex.parked()),
    );
    #[cfg(feature = "peers")]
    note.push_str(&format!(
        "; {QUEUE} parked {}; {SYSTEM}, {MIMALLOC}, {LINEAR}, {SLAB}: not observable",
        per_count(&|s| s.queue.parked())
    ));
    #[cfg(not(feature = "peers"))]
    note.push_str(&format!("; {SYSTEM}: not observable"));
    note
}

/// A fresh instance of every implementation, shared by the threads of one thread
/// count's cases (the system allocator and mimalloc are process-wide).
struct Subjects {
    pool: Pool<Obj>,
    /// Objects one grow of `pool` makes (a slab), for [`check_pool`].
    pool_slab: usize,
    mutex: MutexPool,
    #[cfg(feature = "peers")]
    linear: lockfree_object_pool::LinearObjectPool<Obj>,
    #[cfg(feature = "peers")]
    slab: SlabPool,
    #[cfg(feature = "peers")]
    queue: QueuePool,
}

impl Subjects {
    fn new() -> Subjects {
        let pool = Pool::builder(|| ZERO)
            .capacity(CAPACITY)
            .batch(BATCH)
            .build()
            .expect("bench pool: cannot build the percid pool");
        // The first get grows the pool by exactly one slab.
        drop(pool.get());
        let pool_slab = pool.created();
        Subjects {
            pool,
            pool_slab,
            mutex: MutexPool::new(),
            #[cfg(feature = "peers")]
            linear: linear_pool(),
            #[cfg(feature = "peers")]
            slab: SlabPool::new(),
            #[cfg(feature = "peers")]
            queue: QueuePool::new(QUEUE_CAPACITY),
        }
    }
}

/// The alloc+free pair cases of one thread count.
fn pair_cases(threads: usize, s: &Subjects) -> Vec<Case<'_>> {
    let t = threads;
    let pool_case = case_name(POOL, t);
    #[allow(unused_mut)] // extended with feature `peers`
    let mut cases = vec![
        pairs(
            POOL,
            t,
            || s.pool.get(),
            move || {
                check_pool(&s.pool, s.pool_slab, &pool_case, t, t);
            },
        ),
        pairs(SYSTEM, t, system_box, || ()),
        pairs(MUTEX, t, || s.mutex.get(), || ()),
    ];
    #[cfg(feature = "peers")]
    cases.extend([
        pairs(MIMALLOC, t, MiBox::new, || ()),
        pairs(LINEAR, t, || s.linear.pull(), || ()),
        pairs(SLAB, t, || slab_get(&s.slab), || ()),
        pairs(QUEUE, t, || s.queue.get(), || ()),
    ]);
    cases
}

/// The producer -> consumer cases.
fn xthread_cases(s: &Subjects) -> Vec<Case<'_>> {
    let pool_case = xthread_name(POOL);
    #[allow(unused_mut)] // extended with feature `peers`
    let mut cases = vec![
        xthread(
            POOL,
            || s.pool.get(),
            move || {
                // In use at once: the ring's slots, and one object at each end.
                check_pool(&s.pool, s.pool_slab, &pool_case, RING + 2, 2);
            },
        ),
        xthread(SYSTEM, system_box, || ()),
        xthread(MUTEX, || s.mutex.get(), || ()),
        xthread(RING_ALONE, || Token(opaque(7)), || ()),
    ];
    #[cfg(feature = "peers")]
    cases.extend([
        xthread(MIMALLOC, MiBox::new, || ()),
        xthread(LINEAR, || s.linear.pull(), || ()),
        xthread(SLAB, || slab_get(&s.slab), || ()),
        xthread(QUEUE, || s.queue.get(), || ()),
    ]);
    cases
}

/// What the ring-alone baseline hands over: a number the size of a pointer.
struct Token(u64);

impl Handle for Token {
    #[inline]
    fn touch(&self) {
        opaque(self.0);
    }
}

/// Calls `check` once per sample, on the last of the sample's threads to finish.
struct LastOut {
    threads: usize,
    finished: AtomicUsize,
}

impl LastOut {
    fn new(threads: usize) -> LastOut {
        LastOut {
            threads,
            finished: AtomicUsize::new(0),
        }
    }

    fn finish(&self, check: &impl Fn()) {
        // AcqRel: the last thread's fetch_add sees every other thread's work.
        if self.finished.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.finished.store(0, Ordering::Relaxed);
            check();
        }
    }
}

/// A pairs case: each thread loops `let x = get(); x.touch(); drop(x)`, then the
/// sample's last thread runs `check`.
fn pairs<'a, H: Handle>(
    label: &str,
    threads: usize,
    get: impl Fn() -> H + Sync + 'a,
    check: impl Fn() + Sync + 'a,
) -> Case<'a> {
    let last = LastOut::new(threads);
    Case::new(case_name(label, threads), threads, move |_, ops| {
        for _ in 0..ops {
            let x = get();
            x.touch();
            drop(x);
        }
        last.finish(&check);
    })
}

/// A producer -> consumer case: thread 0 gets `2 × ops` objects, touches each and
/// sends it through a [`Ring`]; thread 1 receives and drops them. Then the sample's
/// last thread runs `check`.
fn xthread<'a, H: Handle + Send + 'a>(
    label: &str,
    get: impl Fn() -> H + Sync + 'a,
    check: impl Fn() + Sync + 'a,
) -> Case<'a> {
    let ring = Ring::<H>::new(RING);
    let last = LastOut::new(2);
    Case::new(xthread_name(label), 2, move |t, ops| {
        let objects = 2 * ops;
        if t == 0 {
            for _ in 0..objects {
                let x = get();
                x.touch();
                // SAFETY: thread 0 of the case is its only sender, and the harness
                // runs one sample at a time.
                unsafe { ring.send(x) };
            }
        } else {
            for _ in 0..objects {
                // SAFETY: thread 1 of the case is its only receiver, and the harness
                // runs one sample at a time.
                drop(unsafe { ring.recv() });
            }
        }
        last.finish(&check);
    })
}

/// Checks a quiescent percid pool after a sample: every object it created is idle
/// (in a cid cache or the depot), so none was lost or parked twice; and it created
/// no more than the workload can hold at once (`in_use`), plus what sits out of
/// sight of a thread about to grow the pool: full caches on every cid and lane
/// materialised so far, a drain's haul of as much (one drainer at a time, while the
/// caches refill), and per thread a spill's batch or the slab it grew itself
/// (threads that find the depot empty at the same moment each grow the pool by a
/// slab: every thread's first get on a cold pool does).
fn check_pool(pool: &Pool<Obj>, slab: usize, case: &str, in_use: usize, threads: usize) {
    let created = pool.created();
    let idle = pool.idle();
    assert!(
        idle == created,
        "bench pool: {case}: the pool created {created} objects but {idle} are idle after \
         the sample (objects lost or parked twice)"
    );
    let storage = percid::cid::stats();
    let shards = (storage.cids_materialized + storage.lanes_materialized) as usize;
    let held = BATCH.max(slab);
    let bound = in_use + 2 * shards * CAPACITY + threads * held;
    assert!(
        created <= bound,
        "bench pool: {case}: the pool created {created} objects, more than the {bound} \
         it may need ({in_use} in use, {shards} caches of {CAPACITY} and a drain of as \
         many, {threads} threads holding up to {held}: a batch of {BATCH} or a slab of {slab})"
    );
}

/// One larson slot table per allocator.
struct LarsonSubjects {
    percid: Larson,
    system: Larson,
    #[cfg(feature = "peers")]
    mimalloc: Larson,
}

impl LarsonSubjects {
    fn new() -> LarsonSubjects {
        LarsonSubjects {
            percid: Larson::new(&PERCID_ALLOC),
            system: Larson::new(&std::alloc::System),
            #[cfg(feature = "peers")]
            mimalloc: Larson::new(&MIMALLOC_ALLOC),
        }
    }
}

/// The larson workload (see `larson.rs`) for each allocator.
fn larson_cases(s: &LarsonSubjects) -> Vec<Case<'_>> {
    let t = LARSON_THREADS;
    #[allow(unused_mut)] // extended with feature `peers`
    let mut cases = vec![
        Case::new(case_name(LARSON_PERCID, t), t, |i, ops| {
            s.percid.run(i, ops)
        }),
        Case::new(case_name(LARSON_SYSTEM, t), t, |i, ops| {
            s.system.run(i, ops)
        }),
    ];
    #[cfg(feature = "peers")]
    cases.push(Case::new(case_name(LARSON_MIMALLOC, t), t, |i, ops| {
        s.mimalloc.run(i, ops)
    }));
    cases
}

/// Peak resident memory of the larson workload, percid against the system
/// allocator, each in a child process of its own (a process has one peak).
fn larson_rss(config: &Config) {
    let ops = if config.quick {
        LARSON_RSS_OPS / 4
    } else {
        LARSON_RSS_OPS
    };
    let percid = larson::measure_rss("percid", LARSON_THREADS, ops);
    let system = larson::measure_rss("system", LARSON_THREADS, ops);
    let value = match (percid, system) {
        (Some(p), Some(s)) if s > 0 => Some(p as f64 / s as f64),
        _ => None,
    };
    let show = |v: Option<u64>| v.map_or_else(|| "n/a".to_owned(), |k| format!("{k} KiB"));
    super::record_extra(Extra {
        key: "alloc_rss_vs_system_larson",
        value,
        detail: format!(
            "peak RSS growth of the larson workload, {LARSON_THREADS} threads x {ops} ops: \
             percid::alloc {} / system {}",
            show(percid),
            show(system)
        ),
    });
}

/// mimalloc, called directly (not the process's global allocator).
#[cfg(feature = "peers")]
static MIMALLOC_ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(test)]
mod tests {
    use super::super::{MachineLine, Report};
    use super::*;

    fn all_case_names() -> Vec<String> {
        let subjects = Subjects::new();
        let mut names: Vec<String> = THREADS
            .iter()
            .flat_map(|&t| pair_cases(t, &subjects).into_iter().map(|c| c.name))
            .collect();
        names.extend(xthread_cases(&subjects).into_iter().map(|c| c.name));
        names.extend(
            larson_cases(&LarsonSubjects::new())
                .into_iter()
                .map(|c| c.name),
        );
        names
    }

    /// Whether `name` is a case of a peer this build left out.
    fn left_out(name: &str) -> bool {
        !cfg!(feature = "peers")
            && (FEATURE_PEERS.iter().any(|(label, _)| {
                THREADS.iter().any(|&t| case_name(label, t) == name) || xthread_name(label) == name
            }) || name == case_name(LARSON_MIMALLOC, LARSON_THREADS))
    }

    #[test]
    fn ratios_and_targets_name_real_cases() {
        let names = all_case_names();
        for r in &RATIOS {
            assert!(
                names.iter().any(|n| n == r.peer) || left_out(r.peer),
                "no case {}",
                r.peer
            );
            assert!(names.iter().any(|n| n == r.ours), "no case {}", r.ours);
        }
        for t in &TARGETS {
            assert!(
                RATIOS.iter().any(|r| r.key == t.key) || t.key == "alloc_rss_vs_system_larson",
                "no ratio {}",
                t.key
            );
        }
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "case names repeat");
        let impls = if cfg!(feature = "peers") { 7 } else { 3 };
        // The producer -> consumer cases add the ring-alone baseline; larson runs
        // percid, the system allocator and (with the peers) mimalloc.
        let larson = if cfg!(feature = "peers") { 3 } else { 2 };
        assert_eq!(names.len(), impls * (THREADS.len() + 1) + 1 + larson);
    }

    #[test]
    fn every_case_runs_and_percid_pools_check_out() {
        for &t in &THREADS {
            let subjects = Subjects::new();
            for case in pair_cases(t, &subjects) {
                case.measure(250);
                case.measure(250);
            }
            let created = subjects.pool.created();
            assert!(created > 0 && subjects.pool.idle() == created);
            assert!(subjects.mutex.parked() >= 1 && subjects.mutex.parked() <= t);
        }
        let subjects = Subjects::new();
        for case in xthread_cases(&subjects) {
            case.measure(600);
            case.measure(600);
        }
        let created = subjects.pool.created();
        assert!(created > 0 && subjects.pool.idle() == created);
    }

    #[test]
    #[should_panic(expected = "are idle after the sample")]
    fn a_lost_object_fails_the_run() {
        let subjects = Subjects::new();
        let kept = std::sync::Mutex::new(Vec::new());
        // Every pair keeps its object: the pool's count of idle objects falls behind.
        let case = pairs(
            POOL,
            1,
            || {
                let x = subjects.pool.get();
                kept.lock()
                    .unwrap()
                    .push(percid::PoolBox::into_raw(x) as usize);
                subjects.pool.get()
            },
            || check_pool(&subjects.pool, subjects.pool_slab, "lossy", 1, 1),
        );
        case.measure(10);
    }

    #[test]
    fn ring_hands_over_in_order_and_drops_what_is_left() {
        let ring = Ring::<Box<u64>>::new(4);
        assert_eq!(ring.capacity(), 4);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..1000 {
                    // SAFETY: the only sender.
                    unsafe { ring.send(Box::new(i)) };
                }
            });
            for i in 0..998 {
                // SAFETY: the only receiver.
                assert_eq!(*unsafe { ring.recv() }, i);
            }
        });
        // Two boxes are left in the ring: its drop frees them (Miri/valgrind would
        // see a leak otherwise).
        drop(ring);
    }

    #[test]
    fn missing_peers_print_n_a_and_say_how_to_get_them() {
        let at = |name: &str, ns: f64| Measurement {
            name: name.to_owned(),
            threads: 1,
            total_ops: 1,
            samples: vec![ns; 3],
        };
        let results = vec![at("percid::Pool 1t", 2.0), at("Box::new (system) 1t", 8.0)];
        let config = Config::new(true);
        let report = Report::new(BENCH.name, &config, MachineLine::probe(), results, &RATIOS);
        let table = report.table();
        assert!(table.contains(
            "speedup_vs_system_1t: 4.00x  (Box::new (system) 1t / percid::Pool 1t)  target >= 3: met"
        ));
        assert!(table.contains(
            "speedup_vs_mimalloc_1t: n/a  (mimalloc 1t / percid::Pool 1t)  target >= 0.95: n/a"
        ));
        let json = report.json().to_string();
        assert!(json.contains(r#""speedup_vs_mimalloc_1t":null"#));
        assert!(json.contains(r#""speedup_vs_system_1t":4"#));
        let note = left_out_note();
        assert_eq!(note.is_some(), !cfg!(feature = "peers"));
        if let Some(note) = note {
            assert!(note.contains("mimalloc, lockfree-object-pool, sharded-slab"));
            assert!(note.contains("cargo run --release --features peers -- bench pool"));
        }
    }
}
