//! Torture tests of the counter types: `Counter` (plain and with an approximate
//! total), `SignedCounter`, concurrent `take`, and `PerCid` under its per-cid lock —
//! 64 threads on 2 CPUs, optionally under a signal storm and constant migrations (see
//! `tests/common/mod.rs`), in every backend mode, with exact results.

#[macro_use]
mod common;

use common::{Torture, quarter, tick};
use percid::{Counter, PerCid, SignedCounter};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Every thread adds; a plain and an approximate-read counter must both sum exactly,
/// and the approximate one must respect its bound once the adds have returned.
fn counters(t: Torture) {
    let plain = Counter::new();
    let approx = Counter::builder().batch(64).build().expect("counter");
    let expected = AtomicU64::new(0);
    t.run(|i, ops| {
        let mut mine = 0u64;
        for k in 0..ops {
            tick();
            let v = if k % 8 == 0 { i as u64 + 2 } else { 1 };
            plain.add(v);
            approx.add(v);
            mine += v;
        }
        expected.fetch_add(mine, Ordering::Relaxed);
    });
    let expected = expected.load(Ordering::Relaxed);
    assert_eq!(plain.sum(), expected, "Counter lost or invented adds");
    assert_eq!(
        approx.sum(),
        expected,
        "approximate Counter lost or invented adds"
    );
    let (value, max_error) = approx.approx();
    assert!(
        value <= expected && expected - value <= max_error,
        "approx {value} ± {max_error} does not bound {expected}"
    );
    assert_eq!(approx.compare(expected), std::cmp::Ordering::Equal);
    assert_eq!(approx.compare(expected + 1), std::cmp::Ordering::Less);
    assert_eq!(approx.compare(expected - 1), std::cmp::Ordering::Greater);
}

/// A gauge: every thread adds and subtracts; the total is exact (and negative).
fn gauge(t: Torture) {
    let g = SignedCounter::new();
    let expected = AtomicU64::new(0);
    t.run(|i, ops| {
        let mut mine = 0i64;
        for k in 0..ops {
            tick();
            if k % 3 == 0 {
                g.add(i as i64 + 1);
                mine += i as i64 + 1;
            } else {
                g.sub(2);
                mine -= 2;
            }
        }
        expected.fetch_add(mine as u64, Ordering::Relaxed);
    });
    assert_eq!(
        g.sum(),
        expected.load(Ordering::Relaxed) as i64,
        "gauge lost updates"
    );
}

/// Adders race a taker: every add lands in exactly one `take` or in the final sum.
fn take(t: Torture) {
    let c = Counter::new();
    let taken = AtomicU64::new(0);
    let added = AtomicU64::new(0);
    let adders_done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let taker = s.spawn(|| {
            let mut takes = 0u64;
            while !adders_done.load(Ordering::Acquire) {
                taken.fetch_add(c.take(), Ordering::Relaxed);
                takes += 1;
                std::thread::yield_now();
            }
            takes
        });
        t.run(|i, ops| {
            let mut mine = 0u64;
            for k in 0..ops {
                tick();
                let v = (i as u64 % 5) + (k % 3);
                c.add(v);
                mine += v;
                // Some workers take too: takes race takes.
                if i % 16 == 0 && k % 1024 == 0 {
                    taken.fetch_add(c.take(), Ordering::Relaxed);
                }
            }
            added.fetch_add(mine, Ordering::Relaxed);
        });
        adders_done.store(true, Ordering::Release);
        assert!(taker.join().unwrap() > 0, "the taker never ran");
    });
    let total = taken.load(Ordering::Relaxed) + c.sum();
    assert_eq!(
        total,
        added.load(Ordering::Relaxed),
        "take lost or repeated adds"
    );
}

/// `PerCid<u64>` updated with a non-atomic read-modify-write under its lock: lost
/// updates would show as a short total. A visitor reads every value concurrently.
fn per_cid(t: Torture) {
    let values = PerCid::new(|| 0u64).expect("PerCid");
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let visitor = s.spawn(|| {
            let mut visits = 0u64;
            while !done.load(Ordering::Acquire) {
                values
                    .for_each(|v| {
                        // Values only grow; a torn or half-done update cannot be seen
                        // under the lock.
                        std::hint::black_box(*v);
                    })
                    .expect("rseq fence");
                visits += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            visits
        });
        t.run(|_, ops| {
            for _ in 0..ops {
                tick();
                values.with(|v| {
                    let x = std::hint::black_box(*v);
                    *v = x + 1;
                });
            }
        });
        done.store(true, Ordering::Release);
        assert!(visitor.join().unwrap() > 0, "the visitor never ran");
    });
    let total: u64 = values.into_iter().sum();
    assert_eq!(total, t.ops_total, "PerCid lost updates under its lock");
}

torture_variants! {
    counter => |t| super::counters(quarter(t));
    signed => |t| super::gauge(quarter(t));
    take_races_adds => |t| super::take(quarter(t));
    per_cid_lock => |t| super::per_cid(quarter(t));
}
