//! loom models of `percid::pool::Pool`'s cross-thread protocols on the simulated and
//! portable backends: the depot hand-over (spill and refill), the install of a chain
//! into a cache, and the drain of another cid's cache (token swap, then ownership).
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --target-dir target/loom --test loom_pool`.
//! Every model builds a pool with a tiny cache (capacity 1, batch 1: every second put
//! spills, every empty cache refills) on a fresh, leaked arena of 2 cids and 2 lanes.
//! Objects carry a holder word: a get must find it 0 (nobody else holds the object)
//! and set it, a drop clears it. At the end every object the pool created must be
//! found exactly once by draining the pool.
#![cfg(loom)]

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::thread;
use percid::cid::Arena;
use percid::pool::{Pool, PoolBox};
use percid::testing::{place, set_simulated_cid};
use std::collections::HashSet;

/// An object that knows who holds it.
struct Tagged {
    holder: AtomicU64,
}

type TaggedPool = Pool<Tagged>;

fn pool(capacity: usize, max: Option<usize>) -> &'static TaggedPool {
    pool_with(capacity, max, None)
}

/// `pool`, with a shrink floor (`keep_idle`) when given: under loom the depots see
/// no demand (no clock), so the floor alone decides what a spill frees.
fn pool_with(capacity: usize, max: Option<usize>, keep: Option<usize>) -> &'static TaggedPool {
    let arena: &'static Arena = Box::leak(Box::new(Arena::with_capacity(2, 2)));
    let mut builder = Pool::builder(|| Tagged {
        holder: AtomicU64::new(0),
    })
    .capacity(capacity)
    .batch(1)
    .debug(true)
    .arena(arena);
    if let Some(max) = max {
        builder = builder.max_objects(max);
    }
    if let Some(keep) = keep {
        builder = builder.keep_idle(keep);
    }
    Box::leak(Box::new(builder.build().unwrap()))
}

/// Claims an object for holder `me`: nobody else may hold it.
fn claim(b: &PoolBox<'_, Tagged>, me: u64) {
    let was = b.holder.swap(me, Ordering::AcqRel);
    assert_eq!(was, 0, "an object handed out while {was} held it");
}

fn release(b: &PoolBox<'_, Tagged>, me: u64) {
    let was = b.holder.swap(0, Ordering::AcqRel);
    assert_eq!(was, me, "an object changed holder under {me}");
}

/// Every object the pool created is free and listed exactly once: the caches and the
/// depot hold `created` objects, taking them all out gives distinct free objects,
/// and then the pool has nothing more to give but new objects (none at all once it
/// created `max`).
fn account(p: &'static TaggedPool, max: usize) {
    p.trim();
    let created = p.created();
    assert_eq!(
        p.idle(),
        created,
        "free lists hold more or fewer objects than exist"
    );
    let mut seen = HashSet::new();
    let mut held = Vec::new();
    for _ in 0..created {
        let b = p
            .try_get()
            .expect("an object the pool created went missing");
        assert_eq!(b.holder.load(Ordering::Acquire), 0, "a free object is held");
        assert!(
            seen.insert(&*b as *const Tagged as usize),
            "an object listed twice"
        );
        held.push(b);
    }
    match p.try_get() {
        None => assert_eq!(created, max, "a pool below its bound refused to grow"),
        Some(b) => {
            assert!(created < max, "a pool at its bound gave another object");
            assert_eq!(
                p.created(),
                created + 1,
                "an extra object was not a new one"
            );
            assert!(!seen.contains(&(&*b as *const Tagged as usize)));
        }
    }
}

/// Two threads get, hold and drop on `cids`: with capacity 1 the second drop on a
/// cid spills to the depot, the next get refills from it.
fn two_users(cids: [Option<u32>; 2]) {
    loom::model(move || {
        let p = pool(1, Some(3));
        let users: Vec<_> = cids
            .into_iter()
            .zip([1u64, 2])
            .map(|(cid, me)| {
                thread::spawn(move || {
                    place(cid);
                    let a = p.get();
                    claim(&a, me);
                    let b = p.get();
                    claim(&b, me);
                    release(&a, me);
                    drop(a);
                    release(&b, me);
                    drop(b);
                })
            })
            .collect();
        for u in users {
            u.join().unwrap();
        }
        assert!(p.created() <= 3);
        account(p, 3);
    });
}

#[test]
fn pool_two_threads_one_cid() {
    two_users([Some(0), Some(0)]);
}

#[test]
fn pool_two_threads_two_cids() {
    two_users([Some(0), Some(1)]);
}

#[test]
fn pool_simulated_and_portable_threads() {
    two_users([Some(1), None]);
}

/// A drain races a thread that uses its own cache: the object in the cache is either
/// drained (then the user's next get refills from the depot) or used, never both.
fn drain_races_user(user_cid: Option<u32>, yield_first: bool) {
    loom::model(move || {
        let p = pool(2, Some(2));
        // Park one object in cid 0's cache before the race.
        set_simulated_cid(0);
        drop(p.get());
        let user = thread::spawn(move || {
            place(user_cid);
            let a = p.get();
            claim(&a, 1);
            release(&a, 1);
            drop(a);
        });
        set_simulated_cid(1);
        if yield_first {
            thread::yield_now();
        }
        p.trim();
        user.join().unwrap();
        assert!(p.created() <= 2);
        account(p, 2);
    });
}

#[test]
fn pool_drain_races_a_user_on_the_drained_cid() {
    drain_races_user(Some(0), false);
    drain_races_user(Some(0), true);
}

#[test]
fn pool_drain_races_a_portable_user() {
    drain_races_user(None, false);
}

/// A bounded pool with one object: two threads take turns through `get`, which waits;
/// the object parked in the other cid's cache is drained and found.
#[test]
fn pool_bounded_get_finds_an_object_parked_elsewhere() {
    loom::model(|| {
        let p = pool(1, Some(1));
        set_simulated_cid(0);
        drop(p.get()); // parked in cid 0's cache
        let other = thread::spawn(move || {
            set_simulated_cid(1);
            let a = p.get();
            claim(&a, 2);
            release(&a, 2);
        });
        other.join().unwrap();
        assert_eq!(p.created(), 1);
        account(p, 1);
    });
}

/// A bounded pool with one object, held by the main thread while another thread's
/// `get` waits (registers, fences, looks again, parks): the drop wakes it, whichever
/// way they interleave (a lost wake-up is a deadlock loom reports). On a cid and on
/// a lane.
fn blocked_get_is_woken_by_a_drop(getter: Option<u32>) {
    loom::model(move || {
        let p = pool(1, Some(1));
        set_simulated_cid(0);
        let held = p.get();
        claim(&held, 1);
        let other = thread::spawn(move || {
            place(getter);
            let a = p.get();
            claim(&a, 2);
            release(&a, 2);
        });
        release(&held, 1);
        drop(held);
        other.join().unwrap();
        assert_eq!(p.created(), 1);
        account(p, 1);
    });
}

#[test]
fn pool_blocked_get_is_woken_by_a_drop() {
    blocked_get_is_woken_by_a_drop(Some(1));
}

#[test]
fn pool_blocked_portable_get_is_woken_by_a_drop() {
    blocked_get_is_woken_by_a_drop(None);
}

/// The hand-over between a depot and the slab-free decision: a user on cid 0 gets
/// and drops (its spills put objects in the depot, where a floor of 0 frees every
/// slab that empties) while a trim on cid 1 drains its cache and frees every empty
/// slab. No object in use is freed or handed out twice, and the accounting holds.
fn shrink_races_user(user_cid: Option<u32>) {
    loom::model(move || {
        let p = pool_with(1, Some(3), Some(0));
        let user = thread::spawn(move || {
            place(user_cid);
            let a = p.get();
            claim(&a, 1);
            let b = p.get();
            claim(&b, 1);
            release(&a, 1);
            drop(a);
            release(&b, 1);
            drop(b);
        });
        set_simulated_cid(1);
        p.trim();
        user.join().unwrap();
        assert!(p.created() <= 3);
        account(p, 3);
    });
}

#[test]
fn pool_shrink_races_a_user() {
    shrink_races_user(Some(0));
}

#[test]
fn pool_shrink_races_a_portable_user() {
    shrink_races_user(None);
}
