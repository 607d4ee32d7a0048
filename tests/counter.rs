//! `Counter`, `SignedCounter` and `PerCid` as users see them: the `AtomicU64`
//! replacement API, wrapping, gauges, read-and-reset, the approximate total, and the
//! per-cid lock (including a closure that panics while holding it).
//!
//! Runs in every backend mode of `scripts/test` (rseq, self-registered rseq,
//! portable, simulated with injected aborts, `cpu_id` indexing), release and debug.
#![cfg(not(loom))]

use percid::counter::PerCid;
use percid::{Counter, CounterBuilder, SignedCounter};
use std::cell::Cell;
use std::cmp::Ordering;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::Duration;

/// Threads of the concurrent tests: oversubscribed on the 2-CPU test machine.
const THREADS: usize = 8;

/// Operations per thread: fewer in debug builds and on the simulated backend.
fn per_thread() -> u64 {
    let mut n = 50_000;
    if cfg!(debug_assertions) {
        n /= 10;
    }
    if std::env::var("PERCID_BACKEND").is_ok_and(|v| v == "simulated") {
        n /= 10;
    }
    n
}

const fn assert_send_sync<T: Send + Sync>() {}

// `Counter` and `SignedCounter` stand in for atomics: shareable and movable. A
// `PerCid` shares its values only by handing exclusive access around, so it is
// `Sync` even for `Send`-only values such as `Cell`.
const _: () = {
    assert_send_sync::<Counter>();
    assert_send_sync::<SignedCounter>();
    assert_send_sync::<CounterBuilder>();
    assert_send_sync::<PerCid<u64>>();
    assert_send_sync::<PerCid<Vec<u8>>>();
    assert_send_sync::<PerCid<Cell<u64>>>();
};

// ---------------------------------------------------------------------------------
// Counter

static REQUESTS: Counter = Counter::new();
static IN_FLIGHT: SignedCounter = SignedCounter::new();

#[test]
fn static_counter_from_many_threads() {
    let n = per_thread();
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for i in 0..n {
                    if i % 2 == 0 {
                        REQUESTS.inc();
                    } else {
                        REQUESTS.add(3);
                    }
                }
            });
        }
    });
    let per = n / 2 + 3 * (n - n / 2);
    assert_eq!(REQUESTS.sum(), THREADS as u64 * per);
}

#[test]
fn static_gauge_from_many_threads() {
    let n = per_thread();
    std::thread::scope(|s| {
        for t in 0..THREADS as i64 {
            s.spawn(move || {
                for _ in 0..n {
                    IN_FLIGHT.add(t + 1);
                    IN_FLIGHT.sub(t);
                }
            });
        }
    });
    assert_eq!(IN_FLIGHT.sum(), THREADS as i64 * n as i64);
}

#[test]
fn default_and_debug() {
    let c = Counter::default();
    assert_eq!(c.sum(), 0);
    assert_eq!(c.approx(), (0, 0));
    assert_eq!(format!("{c:?}"), "Counter { sum: 0 }");
    c.add(42);
    assert_eq!(format!("{c:?}"), "Counter { sum: 42 }");

    let g = SignedCounter::default();
    assert_eq!(g.sum(), 0);
    g.sub(7);
    assert_eq!(format!("{g:?}"), "SignedCounter { sum: -7 }");

    let b = Counter::builder();
    assert!(format!("{b:?}").contains("batch: 0"), "{b:?}");
    let b = b.batch(16);
    assert!(format!("{b:?}").contains("batch: 16"), "{b:?}");
    let c = b.build().unwrap();
    assert_eq!(c.sum(), 0);
    // The error bound counts the cids the process used, not this counter's adds.
    let (value, max_error) = c.approx();
    assert_eq!(value, 0);
    assert_eq!(max_error % 15, 0);
}

#[test]
fn adds_wrap() {
    let c = Counter::new();
    c.add(u64::MAX);
    assert_eq!(c.sum(), u64::MAX);
    c.add(2);
    assert_eq!(c.sum(), 1);
    c.inc();
    assert_eq!(c.sum(), 2);
    assert_eq!(c.approx(), (2, 0));
    assert_eq!(c.compare(2), Ordering::Equal);
    assert_eq!(c.take(), 2);
    assert_eq!(c.sum(), 0);

    // A wrapped total is taken as the wrapped value.
    c.add(u64::MAX - 1);
    c.add(5);
    assert_eq!(c.take(), 3);
    assert_eq!(c.sum(), 0);
}

#[test]
fn gauge_goes_up_and_down() {
    let g = SignedCounter::new();
    g.add(3);
    g.sub(5);
    assert_eq!(g.sum(), -2);
    g.add(-4);
    assert_eq!(g.sum(), -6);
    g.sub(-10);
    assert_eq!(g.sum(), 4);
    assert_eq!(g.take(), 4);
    assert_eq!(g.sum(), 0);
    g.sub(9);
    assert_eq!(g.take(), -9);
    assert_eq!(g.take(), 0);

    // Wrapping at the ends of i64, like `wrapping_add`.
    g.add(i64::MAX);
    g.add(1);
    assert_eq!(g.sum(), i64::MIN);
    g.sub(1);
    assert_eq!(g.sum(), i64::MAX);
    g.sub(i64::MIN);
    assert_eq!(g.sum(), -1);

    // The builder's batch does not apply to gauges.
    let g = Counter::builder().batch(8).build_signed().unwrap();
    g.sub(3);
    assert_eq!(g.sum(), -3);
}

#[test]
fn take_reads_and_resets() {
    let c = Counter::new();
    assert_eq!(c.take(), 0);
    c.add(10);
    c.inc();
    assert_eq!(c.take(), 11);
    assert_eq!(c.sum(), 0);
    assert_eq!(c.take(), 0);
    c.add(5);
    assert_eq!(c.sum(), 5);
    c.add(6);
    assert_eq!(c.take(), 11);
    assert_eq!(c.take(), 0);
    c.inc();
    assert_eq!(c.sum(), 1);
    assert_eq!(format!("{c:?}"), "Counter { sum: 1 }");
}

#[test]
fn take_with_concurrent_adds_loses_nothing() {
    let n = per_thread();
    let c = Counter::new();
    let mut taken = 0u64;
    std::thread::scope(|s| {
        let adders: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..n {
                        c.inc();
                    }
                })
            })
            .collect();
        while adders.iter().any(|a| !a.is_finished()) {
            taken += c.take();
            std::thread::yield_now();
        }
    });
    taken += c.take();
    assert_eq!(taken, THREADS as u64 * n);
    assert_eq!(c.sum(), 0);
}

/// `value <= sum <= value + max_error`, and `compare` exact around the sum and at
/// the ends.
fn check_approx(c: &Counter) {
    let sum = c.sum();
    let (value, max_error) = c.approx();
    assert!(value <= sum, "approx {value} above the sum {sum}");
    assert!(
        sum - value <= max_error,
        "approx ({value}, {max_error}) misses the sum {sum}"
    );
    let probes = [
        0,
        1,
        value,
        value.saturating_add(max_error),
        value.saturating_add(max_error).saturating_add(1),
        u64::MAX,
    ];
    let around = sum.saturating_sub(3)..=sum.saturating_add(3);
    for n in probes.into_iter().chain(around) {
        assert_eq!(c.compare(n), sum.cmp(&n), "compare({n}), sum {sum}");
    }
}

#[test]
fn approx_and_compare_with_a_batch() {
    for batch in [0, 1, 2, 7, 64] {
        let c = Counter::builder().batch(batch).build().unwrap();
        check_approx(&c);
        let mut total = 0u64;
        for i in 0..500u64 {
            let n = i % 13;
            c.add(n);
            total += n;
            if i % 37 == 0 {
                check_approx(&c);
            }
        }
        assert_eq!(c.sum(), total);
        check_approx(&c);
        let (_, max_error) = c.approx();
        if batch <= 1 {
            // No batch: exact; batch 1: every add is carried at once.
            assert_eq!(c.approx(), (total, 0), "batch {batch}");
        } else {
            assert_eq!(
                max_error % (batch - 1),
                0,
                "batch {batch}: error {max_error}"
            );
        }

        // After a take the approximate total follows what is left.
        assert_eq!(c.take(), total);
        check_approx(&c);
        for _ in 0..3 * batch + 5 {
            c.inc();
        }
        assert_eq!(c.sum(), 3 * batch + 5);
        check_approx(&c);
    }
}

#[test]
fn approx_is_carried_in_whole_batches() {
    // One thread: every carry moves whole batches, so the approximate total is a
    // multiple of the batch, and what is not carried is below a batch per cid.
    let c = Counter::builder().batch(10).build().unwrap();
    c.add(9);
    let (value, max_error) = c.approx();
    assert_eq!(value % 10, 0);
    assert!(max_error >= 9, "one cid used: error {max_error}");
    c.add(1_000);
    let (value, _) = c.approx();
    assert_eq!(value % 10, 0);
    assert!(value >= 1_009 - max_error, "approx {value}");
    check_approx(&c);
}

#[test]
fn approx_and_compare_after_concurrent_adds() {
    let n = per_thread();
    let c = Counter::builder().batch(32).build().unwrap();
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..n {
                    c.inc();
                }
            });
        }
        // Concurrent reads are lower bounds of the final total.
        let (value, _) = c.approx();
        assert!(value <= THREADS as u64 * n);
    });
    assert_eq!(c.sum(), THREADS as u64 * n);
    check_approx(&c);
}

// ---------------------------------------------------------------------------------
// PerCid

#[test]
fn per_cid_basic() {
    let p = PerCid::new(|| 0u64).unwrap();
    assert_eq!(p.with(|v| *v), 0);
    p.with(|v| *v += 5);
    let created = format!("{p:?}");
    assert!(created.starts_with("PerCid { values: "), "{created}");
    let mut total = 0;
    p.for_each(|v| total += *v).expect("for_each");
    assert_eq!(total, 5);
    let values: Vec<u64> = p.into_iter().collect();
    assert!(!values.is_empty());
    assert_eq!(values.iter().sum::<u64>(), 5);
}

#[test]
fn per_cid_init_runs_once_per_value() {
    let inits = std::sync::atomic::AtomicUsize::new(0);
    let p = PerCid::new(|| {
        inits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Vec::<u32>::new()
    })
    .unwrap();
    for i in 0..100 {
        p.with(|v| v.push(i));
    }
    let values: Vec<Vec<u32>> = p.into_iter().collect();
    assert_eq!(
        values.len(),
        inits.load(std::sync::atomic::Ordering::Relaxed)
    );
    let mut all: Vec<u32> = values.into_iter().flatten().collect();
    all.sort_unstable();
    assert_eq!(all, (0..100).collect::<Vec<_>>());
}

#[test]
fn per_cid_from_many_threads() {
    let n = per_thread() / 4;
    let mut p = PerCid::new(|| 0u64).unwrap();
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..n {
                    // A read and a separate write: a second holder would lose updates.
                    p.with(|v| {
                        let x = *v;
                        std::hint::black_box(&x);
                        *v = x + 1;
                    });
                }
            });
        }
    });
    let total: u64 = p.iter_mut().map(|v| *v).sum();
    assert_eq!(total, THREADS as u64 * n);
    for v in p.iter_mut() {
        *v *= 2;
    }
    assert_eq!(p.into_iter().sum::<u64>(), 2 * THREADS as u64 * n);
}

#[test]
fn per_cid_for_each_while_others_use_it() {
    let n = per_thread() / 4;
    let p = PerCid::new(|| 0u64).unwrap();
    let mut visited_total = 0u64;
    std::thread::scope(|s| {
        let users: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..n {
                        p.with(|v| *v += 1);
                    }
                })
            })
            .collect();
        while users.iter().any(|u| !u.is_finished()) {
            // Each visit adds 1000 to every value it finds.
            p.for_each(|v| {
                *v += 1_000;
                visited_total += 1_000;
            })
            .expect("for_each");
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let total: u64 = p.into_iter().sum();
    assert_eq!(total, THREADS as u64 * n + visited_total);
}

/// Runs `f` on a helper thread and fails (instead of hanging) when it does not
/// finish in time: a leaked per-cid lock makes `with` and `for_each` wait forever.
fn finishes_in_time<F: FnOnce() + Send + 'static>(what: &str, f: F) {
    let (tx, rx) = mpsc::channel();
    let helper = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => helper.join().unwrap(),
        // The helper panicked (a failed assertion): report its panic.
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = helper.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not finish: a per-cid lock was not released")
        }
    }
}

#[test]
fn per_cid_panic_releases_the_lock() {
    let p: &'static PerCid<Vec<u32>, _> = Box::leak(Box::new(PerCid::new(Vec::new).unwrap()));
    finishes_in_time("with after a panic", move || {
        for round in 0..10 {
            let caught = catch_unwind(AssertUnwindSafe(|| {
                p.with(|v| {
                    v.push(round);
                    panic!("a closure panics while holding the per-cid lock");
                })
            }));
            assert!(caught.is_err());
            // The lock is free again: `with` works (on whichever cid the thread is now).
            p.with(|v| v.retain(|&x| x <= round));
        }
        // `for_each` takes every cid's lock in turn: none is left held.
        let mut seen = Vec::new();
        p.for_each(|v| seen.extend_from_slice(v)).expect("for_each");
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    });
}

#[test]
fn per_cid_panic_on_many_threads_releases_the_lock() {
    let p: &'static PerCid<u64, _> = Box::leak(Box::new(PerCid::new(|| 0).unwrap()));
    finishes_in_time("with after panics on many threads", move || {
        std::thread::scope(|s| {
            for t in 0..THREADS as u64 {
                s.spawn(move || {
                    for i in 0..50 {
                        let r = catch_unwind(AssertUnwindSafe(|| {
                            p.with(|v| {
                                *v += 1;
                                if (i + t) % 5 == 0 {
                                    panic!("planned panic");
                                }
                            })
                        }));
                        assert_eq!(r.is_err(), (i + t) % 5 == 0);
                    }
                });
            }
        });
        let mut total = 0;
        p.for_each(|v| total += *v).expect("for_each");
        assert_eq!(total, THREADS as u64 * 50);
    });
}

#[test]
fn per_cid_nothing_created_until_used() {
    let mut p = PerCid::new(|| 1u8).unwrap();
    assert_eq!(format!("{p:?}"), "PerCid { values: 0 }");
    assert_eq!(p.iter_mut().count(), 0);
    let mut visits = 0;
    p.for_each(|_| visits += 1).expect("for_each");
    assert_eq!(visits, 0);
    assert_eq!(p.into_iter().count(), 0);
}

/// `compare` is exact and the approximate bound holds even after an add larger than
/// half the range (the carry works modulo 2^64).
#[test]
fn compare_is_exact_after_a_huge_add() {
    let c = Counter::builder().batch(2).build().unwrap();
    c.add(1 << 63);
    assert_eq!(c.sum(), 1 << 63);
    let (value, max_error) = c.approx();
    assert!(
        c.sum() - value <= max_error,
        "approx ({value}, {max_error}), sum {}",
        c.sum()
    );
    assert_eq!(c.compare(100), Ordering::Greater);
}
