//! Torture tests of `percid::pool::Pool` — 64 threads on 2 CPUs, optionally under a
//! signal storm and constant migrations (see `tests/common/mod.rs`), in every backend
//! mode.
//!
//! Objects carry a holder word: a get must find it 0 (nobody else holds the object)
//! and sets it to the thread's id, a drop clears it. Threads keep a few objects (0 to
//! 8, per thread), drop them in FIFO, LIFO or random order, hand some to other
//! threads (so they are dropped on other cids), yield now and then while holding
//! objects, and thread 0 trims now and then. The caches are tiny (capacity 4, batch
//! 2), so spills, refills, drains before growth and drains of a bounded pool happen
//! all the time. The `bounded` variants cap the pool at 2 objects per thread and use
//! `try_get` (a failure is counted and answered by dropping an object). At the end
//! every object the pool created is idle and found exactly once, and dropped exactly
//! once with the pool.

#[macro_use]
mod common;

use common::pooled::{Rng, Tagged, pass};
use common::{Torture, quarter, tick};
use percid::pool::{Pool, PoolBox};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The holder of an object waiting in the hand-off list.
const HANDED: u64 = u64::MAX;

/// Thread 0 trims the pool every this many operations.
const TRIM_EVERY: u64 = 1024;

/// Takes one object out of `held` in the thread's order: FIFO, LIFO or random.
fn take_one<'p>(
    held: &mut Vec<PoolBox<'p, Tagged>>,
    order: usize,
    r: u64,
) -> Option<PoolBox<'p, Tagged>> {
    if held.is_empty() {
        return None;
    }
    Some(match order {
        0 => held.remove(0),
        1 => held.pop().unwrap(),
        _ => held.swap_remove(r as usize % held.len()),
    })
}

/// One run: `max_objects` `None` for an unbounded pool (blocking `get`), or the bound
/// (`try_get`, whose failures are counted and answered by dropping an object).
fn torture(t: Torture, max_objects: Option<usize>, shrink: bool) {
    let drops = Arc::new(AtomicUsize::new(0));
    let inits = Arc::new(AtomicUsize::new(0));
    let mut builder = {
        let (drops, inits) = (Arc::clone(&drops), Arc::clone(&inits));
        Pool::builder(move || {
            inits.fetch_add(1, Ordering::Relaxed);
            Tagged {
                holder: AtomicU64::new(0),
                drops: Arc::clone(&drops),
            }
        })
    }
    .capacity(4)
    .batch(2)
    // The pool's own checks on in the bounded runs, as built in the others.
    .debug(max_objects.is_some() || cfg!(debug_assertions));
    if let Some(max) = max_objects {
        builder = builder.max_objects(max);
    }
    if shrink {
        // Every spill frees the slabs it empties: slabs freed and made again
        // all the time, under the storm, while other threads use their objects.
        builder = builder.keep_idle(0).purge_delay(std::time::Duration::ZERO);
    }
    let pool = builder.build().expect("pool");

    let handoff: Mutex<Vec<PoolBox<'_, Tagged>>> = Mutex::new(Vec::new());
    let gets = AtomicU64::new(0);
    let failures = AtomicU64::new(0);
    let handed = AtomicU64::new(0);
    let trims = AtomicU64::new(0);
    t.run(|i, ops| {
        let me = i as u64 + 1;
        let keep = i % 8;
        let order = i % 3;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (me << 17));
        let mut held: Vec<PoolBox<'_, Tagged>> = Vec::with_capacity(16);
        let (mut my_gets, mut my_failures, mut my_handed) = (0u64, 0u64, 0u64);
        let release = |b: PoolBox<'_, Tagged>| {
            pass(&b, me, 0);
            drop(b);
        };
        for k in 0..ops {
            tick();
            let r = rng.next();
            if i == 0 && (k % TRIM_EVERY == TRIM_EVERY - 1 || k + 1 == ops) {
                pool.trim();
                trims.fetch_add(1, Ordering::Relaxed);
            }
            if r % 64 == 2 {
                // Let the other threads in while holding objects: without it, each
                // thread would run its operations in one time slice.
                std::thread::yield_now();
            }
            if r.is_multiple_of(8) {
                // Adopt an object another thread handed over.
                let adopted = handoff.lock().unwrap().pop();
                if let Some(b) = adopted {
                    pass(&b, HANDED, me);
                    held.push(b);
                    continue;
                }
            }
            if held.len() <= keep {
                let got = match max_objects {
                    None => Some(pool.get()),
                    Some(_) => pool.try_get(),
                };
                match got {
                    Some(b) => {
                        pass(&b, 0, me);
                        held.push(b);
                        my_gets += 1;
                    }
                    None => {
                        // Exhausted: give one back so the pool keeps moving.
                        my_failures += 1;
                        if let Some(b) = take_one(&mut held, order, r >> 8) {
                            release(b);
                        }
                    }
                }
            } else if let Some(b) = take_one(&mut held, order, r >> 8) {
                if r % 16 == 1 {
                    // Hand it to whichever thread adopts it: dropped on another cid.
                    pass(&b, me, HANDED);
                    handoff.lock().unwrap().push(b);
                    my_handed += 1;
                } else {
                    release(b);
                }
            }
        }
        for b in held {
            release(b);
        }
        gets.fetch_add(my_gets, Ordering::Relaxed);
        failures.fetch_add(my_failures, Ordering::Relaxed);
        handed.fetch_add(my_handed, Ordering::Relaxed);
    });
    for b in handoff.into_inner().unwrap() {
        pass(&b, HANDED, 0);
    }

    let created = pool.created();
    eprintln!(
        "pool {t:?} max_objects {max_objects:?}: {} gets, {} failed try_gets, {} handed over, \
         {} trims, {created} objects",
        gets.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
        handed.load(Ordering::Relaxed),
        trims.load(Ordering::Relaxed),
    );
    assert!(gets.load(Ordering::Relaxed) > 0, "nothing was handed out");
    if let Some(max) = max_objects {
        assert!(created <= max, "{created} objects created, bound {max}");
    }
    let freed = pool.freed();
    // Exact accounting across the shrinks: made - freed == in use (none) + idle.
    assert_eq!(inits.load(Ordering::Relaxed), created + freed, "init calls");
    assert_eq!(
        drops.load(Ordering::Relaxed),
        freed,
        "freed values not dropped once"
    );
    assert_eq!(pool.idle(), created, "objects lost or counted twice");

    // The full walk: every object exactly once, free. Taken all at once, with no
    // trim (a trim now frees idle slabs), then checked.
    let mut seen = HashSet::with_capacity(created);
    let all: Vec<_> = (0..created)
        .map(|k| {
            let b = pool
                .try_get()
                .unwrap_or_else(|| panic!("object {k} of {created} not found"));
            assert!(
                seen.insert(&*b as *const Tagged as usize),
                "object {k} found twice"
            );
            pass(&b, 0, HANDED);
            b
        })
        .collect();
    for b in all {
        pass(&b, HANDED, 0);
    }
    // Every object is idle again: trim frees every slab, dropping each value once.
    pool.trim();
    assert_eq!(pool.cached(), 0, "trim left objects in a cache");
    assert_eq!(
        (pool.created(), pool.idle()),
        (0, 0),
        "trim kept idle slabs"
    );
    let made = inits.load(Ordering::Relaxed);
    assert_eq!(pool.freed(), made, "objects lost by trim");
    assert_eq!(
        drops.load(Ordering::Relaxed),
        made,
        "values not dropped exactly once"
    );
    drop(pool);
    assert_eq!(drops.load(Ordering::Relaxed), made, "values dropped twice");
}

torture_variants! {
    unbounded => |t| super::torture(quarter(t), None, false);
    bounded => |t: Torture| super::torture(quarter(t), Some(t.threads * 2), false);
    shrinking => |t| super::torture(quarter(t), None, true);
    shrinking_bounded => |t: Torture| super::torture(quarter(t), Some(t.threads * 2), true);
}
