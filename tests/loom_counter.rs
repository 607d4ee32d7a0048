//! loom models of the counters and `PerCid` on the simulated and portable backends.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --target-dir target/loom --test loom_counter`.
//! Under loom every thread runs the simulated backend (or the portable one, when moved
//! there): a section is aborted at every step where another thread begins a section
//! on the same cid, and after two aborts the operation moves to the thread's lane.
//! Every model builds its structures on a fresh, leaked arena of 2 cids and 2 lanes
//! (loom objects cannot outlive one model run, so the process-wide arena is not used).
//!
//! loom's partial-order reduction remembers only the *last* access to an atomic: when
//! a thread loads a word and then updates it (a lane's `lane_limit`, a section's
//! load-then-commit), an earlier load of that word by another thread no longer counts
//! as a race, and the schedules where the other thread goes first can be skipped
//! (a portable `with` against a `for_each` explored 1 schedule). The observing
//! thread therefore runs its operation twice over: at once, and after a
//! `thread::yield_now()`, which makes loom run the others first and branch from there.
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::AtomicBool;
use loom::thread;
use percid::cid::Arena;
use percid::counter::PerCid;
use percid::testing::{inject_node, place, set_simulated_abort_rate, set_simulated_cid};
use percid::{Counter, NumaCounter, SignedCounter};
use std::cmp::Ordering as CmpOrdering;
use std::sync::atomic::Ordering;

/// A fresh arena of 2 cids and 2 lanes, leaked so model threads can share it.
fn arena() -> &'static Arena {
    Box::leak(Box::new(Arena::with_capacity(2, 2)))
}

/// A counter with `batch` on a fresh arena, leaked so model threads can share it.
fn counter(batch: u64) -> &'static Counter {
    Box::leak(Box::new(
        Counter::builder()
            .arena(arena())
            .batch(batch)
            .build()
            .unwrap(),
    ))
}

// ---------------------------------------------------------------------------------
// take()

/// Two adders on `cids` and a concurrent take: every add lands in the take or in
/// the final sum, exactly once.
fn take_with_two_adders(cids: [Option<u32>; 2], batch: u64) {
    for yield_first in [false, true] {
        take_with_two_adders_once(cids, batch, yield_first);
    }
}

fn take_with_two_adders_once(cids: [Option<u32>; 2], batch: u64, yield_first: bool) {
    loom::model(move || {
        let c = counter(batch);
        let adders: Vec<_> = cids
            .into_iter()
            .zip([1u64, 2])
            .map(|(cid, n)| {
                thread::spawn(move || {
                    place(cid);
                    c.add(n);
                })
            })
            .collect();
        set_simulated_cid(0);
        if yield_first {
            thread::yield_now();
        }
        let taken = c.take();
        assert!(
            [0, 1, 2, 3].contains(&taken),
            "take returned {taken}, not a subset of the adds"
        );
        for adder in adders {
            adder.join().unwrap();
        }
        assert_eq!(taken + c.sum(), 3, "taken {taken}, sum {}", c.sum());
        assert_eq!(c.take() + taken, 3);
        assert_eq!(c.sum(), 0);
    });
}

#[test]
fn take_with_adders_on_two_cids() {
    take_with_two_adders([Some(0), Some(1)], 0);
}

#[test]
fn take_with_adders_on_one_cid() {
    take_with_two_adders([Some(0), Some(0)], 0);
}

#[test]
fn take_with_a_simulated_and_a_portable_adder() {
    take_with_two_adders([Some(1), None], 0);
}

#[test]
fn take_with_adders_and_a_batch() {
    take_with_two_adders([Some(0), Some(1)], 2);
}

/// An adder and two concurrent takes: the takes and the final sum split the adds.
#[test]
fn two_concurrent_takes() {
    loom::model(|| {
        let c = counter(0);
        c.add(1);
        let adder = thread::spawn(move || {
            set_simulated_cid(1);
            c.add(2);
        });
        let taker = thread::spawn(move || {
            set_simulated_cid(0);
            c.take()
        });
        set_simulated_cid(1);
        let mine = c.take();
        let theirs = taker.join().unwrap();
        adder.join().unwrap();
        // Each take returns a part of the adds; together with the rest, all of them.
        assert!(mine <= 3 && theirs <= 3, "takes {mine} and {theirs}");
        assert_eq!(mine + theirs + c.sum(), 3, "takes {mine} and {theirs}");
    });
}

/// A signed counter's takes split a gauge's adds and subtractions the same way.
#[test]
fn signed_take_with_a_concurrent_sub() {
    for yield_first in [false, true] {
        signed_take_once(yield_first);
    }
}

fn signed_take_once(yield_first: bool) {
    loom::model(move || {
        let g: &'static SignedCounter = Box::leak(Box::new(
            Counter::builder().arena(arena()).build_signed().unwrap(),
        ));
        set_simulated_cid(0);
        g.add(5);
        let t = thread::spawn(move || {
            set_simulated_cid(1);
            g.sub(7);
        });
        if yield_first {
            thread::yield_now();
        }
        let taken = g.take();
        assert!(taken == 5 || taken == -2, "take returned {taken}");
        t.join().unwrap();
        assert_eq!(taken + g.sum(), -2);
    });
}

/// A `sum` concurrent with an add and a take must be one of the values the counter
/// held, never less than zero (wrapped): a take of an add that `sum`'s shard reads
/// missed would make it return `3 - 5`, wrapped, were `taken` not re-read.
#[test]
fn sum_concurrent_with_add_and_take_never_wraps() {
    loom::model(|| {
        let c = counter(0);
        set_simulated_cid(0);
        c.add(3);
        let t = thread::spawn(move || {
            set_simulated_cid(0);
            c.add(2);
            c.take()
        });
        let seen = c.sum();
        assert!(seen <= 5, "sum returned {seen} (wrapped below zero)");
        let taken = t.join().unwrap();
        assert_eq!(taken + c.sum(), 5);
    });
}

// ---------------------------------------------------------------------------------
// approx() and compare()

/// With batch 2 and adds of 1 from two threads on two cids (and from a portable
/// thread), after joining: `value <= sum <= value + max_error`, and `compare`
/// agrees with `sum` around the total.
fn approx_bound(cids: [Option<u32>; 2], adds: u64) {
    loom::model(move || {
        let c = counter(2);
        let threads: Vec<_> = cids
            .into_iter()
            .map(|cid| {
                thread::spawn(move || {
                    place(cid);
                    for _ in 0..adds {
                        c.inc();
                    }
                })
            })
            .collect();
        // A concurrent approximate read is a lower bound of the final total.
        set_simulated_cid(0);
        let (early, _) = c.approx();
        assert!(early <= 2 * adds, "approx {early} above every total");
        for t in threads {
            t.join().unwrap();
        }
        let sum = c.sum();
        assert_eq!(sum, 2 * adds);
        let (value, max_error) = c.approx();
        assert!(value <= sum, "approx {value} above the sum {sum}");
        assert!(
            sum - value <= max_error,
            "approx ({value}, {max_error}) misses the sum {sum}"
        );
        for n in sum.saturating_sub(3)..=sum + 3 {
            assert_eq!(c.compare(n), sum.cmp(&n), "compare({n}) with sum {sum}");
        }
    });
}

#[test]
fn approx_bound_two_cids() {
    approx_bound([Some(0), Some(1)], 3);
}

#[test]
fn approx_bound_one_cid() {
    approx_bound([Some(0), Some(0)], 2);
}

#[test]
fn approx_bound_with_a_portable_thread() {
    approx_bound([Some(1), None], 2);
}

/// After a take, the approximate total follows what is left.
#[test]
fn approx_after_a_concurrent_take() {
    loom::model(|| {
        let c = counter(2);
        let t = thread::spawn(move || {
            set_simulated_cid(1);
            for _ in 0..3 {
                c.inc();
            }
        });
        set_simulated_cid(0);
        c.inc();
        let taken = c.take();
        t.join().unwrap();
        let sum = c.sum();
        assert_eq!(taken + sum, 4);
        let (value, max_error) = c.approx();
        assert!(
            value <= sum && sum - value <= max_error,
            "approx ({value}, {max_error}), sum {sum}"
        );
        for n in sum.saturating_sub(2)..=sum + 2 {
            assert_eq!(c.compare(n), sum.cmp(&n), "compare({n}) with sum {sum}");
        }
        assert_eq!(c.compare(u64::MAX), CmpOrdering::Less);
    });
}

// ---------------------------------------------------------------------------------
// PerCid

/// A value whose users check they are alone: `busy` is a model atomic (so loom
/// switches threads in the middle of an update) and `n` a loom cell (so loom reports
/// accesses not ordered by the lock's acquire and release).
struct Exclusive {
    busy: AtomicBool,
    n: UnsafeCell<u64>,
}

impl Exclusive {
    fn new() -> Exclusive {
        Exclusive {
            busy: AtomicBool::new(false),
            n: UnsafeCell::new(0),
        }
    }

    /// `let x = *v; *v = x + by`, checking nobody else is inside.
    fn bump(&mut self, by: u64) {
        assert!(
            !self.busy.swap(true, Ordering::Relaxed),
            "two holders at once"
        );
        // SAFETY: loom's cell checks that no other access races this one.
        let x = self.n.with(|p| unsafe { *p });
        thread::yield_now();
        // SAFETY: as above.
        self.n.with_mut(|p| unsafe { *p = x + by });
        self.busy.store(false, Ordering::Relaxed);
    }

    fn value(self) -> u64 {
        self.n.into_inner()
    }
}

type Values = PerCid<Exclusive, fn() -> Exclusive>;

fn per_cid() -> &'static Values {
    Box::leak(Box::new(
        PerCid::new_in(arena(), Exclusive::new as fn() -> Exclusive).unwrap(),
    ))
}

/// The values of a leaked `PerCid`, taken back once every model thread is joined.
fn total(p: &'static Values) -> u64 {
    // SAFETY: `p` was leaked by `per_cid` in this model run and every thread that used
    // it has been joined, so this is the only reference; the box is taken back once.
    let owned = unsafe { Box::from_raw(p as *const Values as *mut Values) };
    owned.into_iter().map(Exclusive::value).sum()
}

/// Two threads placed by `cids` each run one `with`; no update is lost.
fn with_on(cids: [Option<u32>; 2]) {
    loom::model(move || {
        let p = per_cid();
        let threads: Vec<_> = cids
            .into_iter()
            .map(|cid| {
                thread::spawn(move || {
                    place(cid);
                    p.with(|v| v.bump(1));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(total(p), 2);
    });
}

#[test]
fn per_cid_lock_two_threads_on_one_cid() {
    with_on([Some(0), Some(0)]);
}

#[test]
fn per_cid_lock_simulated_and_portable() {
    with_on([Some(0), None]);
}

#[test]
fn per_cid_lock_two_portable_threads() {
    with_on([None, None]);
}

/// A thread whose sections always abort takes the lane lock instead, while another
/// thread takes the cid's lock.
#[test]
fn per_cid_lock_with_a_thread_pushed_to_its_lane() {
    loom::model(|| {
        let p = per_cid();
        let t = thread::spawn(move || {
            set_simulated_cid(0);
            // Every step aborts: the operation moves to the lane (deterministically).
            set_simulated_abort_rate(1024);
            p.with(|v| v.bump(1));
        });
        set_simulated_cid(0);
        p.with(|v| v.bump(1));
        t.join().unwrap();
        assert_eq!(total(p), 2);
    });
}

/// `for_each` from one thread while another runs `with` on a value that exists
/// already: the visit waits for the lock, so both updates land.
#[test]
fn per_cid_for_each_concurrent_with_with() {
    for yield_first in [false, true] {
        for_each_concurrent_with_with(yield_first);
    }
}

fn for_each_concurrent_with_with(yield_first: bool) {
    loom::model(move || {
        let p = per_cid();
        set_simulated_cid(0);
        p.with(|v| v.bump(1));
        let t = thread::spawn(move || {
            set_simulated_cid(0);
            p.with(|v| v.bump(1));
        });
        let visitor = thread::spawn(move || {
            set_simulated_cid(1);
            if yield_first {
                thread::yield_now();
            }
            let mut visited = 0;
            p.for_each(|v| {
                v.bump(10);
                visited += 1;
            })
            .unwrap();
            assert_eq!(visited, 1, "for_each visited {visited} values");
        });
        t.join().unwrap();
        visitor.join().unwrap();
        assert_eq!(total(p), 12);
    });
}

/// `for_each` concurrent with `with` from a portable thread (lane lock).
#[test]
fn per_cid_for_each_concurrent_with_portable_with() {
    for yield_first in [false, true] {
        for_each_concurrent_with_portable_with(yield_first);
    }
}

fn for_each_concurrent_with_portable_with(yield_first: bool) {
    loom::model(move || {
        let p = per_cid();
        let t = thread::spawn(move || {
            place(None);
            p.with(|v| v.bump(1));
            p.with(|v| v.bump(1));
        });
        set_simulated_cid(1);
        if yield_first {
            thread::yield_now();
        }
        let mut visited = 0u64;
        p.for_each(|v| {
            v.bump(10);
            visited += 1;
        })
        .unwrap();
        t.join().unwrap();
        // The lane's value exists once the first `with` ran; the visit adds 10 to it
        // if it already existed.
        assert_eq!(total(p), 2 + 10 * visited);
    });
}

// ---------------------------------------------------------------------------------
// NumaCounter: the (node, cid) units of a 2-node arena

/// Two adders placed on (node, cid) pairs of a 2-node arena: the total and the
/// per-node totals are exact. Same cid on two nodes (two units that share nothing
/// but the cid), same node and cid (one unit, serialised by its section), and a
/// portable thread whose lane counts for its CPU's node.
fn numa_adders(places: [(u32, Option<u32>); 2]) {
    loom::model(move || {
        let arena: &'static Arena = Box::leak(Box::new(Arena::with_nodes(2, 2, 2)));
        let topology: &'static percid::numa::Topology =
            Box::leak(Box::new(percid::numa::Topology::uniform(2, 1).unwrap()));
        let c: &'static NumaCounter = Box::leak(Box::new(
            NumaCounter::new_in(arena, Some(topology)).unwrap(),
        ));
        let adders: Vec<_> = places
            .into_iter()
            .zip([1u64, 2])
            .map(|((node, cid), n)| {
                thread::spawn(move || {
                    place(cid);
                    inject_node(Some(node));
                    c.add(n);
                })
            })
            .collect();
        for a in adders {
            a.join().unwrap();
        }
        assert_eq!(c.sum(), 3);
        let by_node = (c.sum_node(0), c.sum_node(1));
        assert_eq!(by_node.0 + by_node.1, 3);
        let lanes = c
            .shards()
            .iter()
            .any(|(s, v)| matches!(s, percid::cid::Shard::Lane(_)) && *v != 0);
        if !lanes {
            let mut expected = (0, 0);
            for ((node, _), n) in places.into_iter().zip([1u64, 2]) {
                if node == 0 {
                    expected.0 += n;
                } else {
                    expected.1 += n;
                }
            }
            assert_eq!(by_node, expected);
        }
    });
}

#[test]
fn numa_same_cid_two_nodes() {
    numa_adders([(0, Some(0)), (1, Some(0))]);
}

#[test]
fn numa_same_node_same_cid() {
    numa_adders([(1, Some(1)), (1, Some(1))]);
}

#[test]
fn numa_with_a_portable_thread() {
    numa_adders([(1, Some(0)), (0, None)]);
}
