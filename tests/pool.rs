//! `percid::pool::Pool`: builder errors, drop accounting (values created by `init`
//! only, recycled while the pool lives, dropped exactly once with it), reuse of the
//! same object with the reset hook applied, bounded pools (`try_get`, blocking `get`,
//! objects parked in other cids' caches), `into_raw`/`from_raw` and the debug checks,
//! `trim`, the producer/consumer steady state, ZSTs, over-aligned types and a pool in
//! a dedicated arena — in every backend mode.

#[macro_use]
mod common;

use common::{scaled, simulated, simulated_cids};
use percid::cid::Arena;
use percid::pool::{MAX_ALIGN, MAX_CAPACITY, Pool, PoolBox, PoolError};
use percid::testing::set_simulated_cid;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Counts the values an `init` created and records each drop by the value's id, so
/// that a double drop, a lost drop or a value not made by `init` shows.
#[derive(Default)]
struct Tracker {
    created: AtomicUsize,
    dropped: Mutex<HashSet<usize>>,
}

impl Tracker {
    fn new() -> Arc<Tracker> {
        Arc::new(Tracker::default())
    }

    /// A new value (the pool's `init`).
    fn make(self: &Arc<Tracker>) -> Counted {
        Counted {
            id: self.created.fetch_add(1, Ordering::Relaxed),
            marker: 0,
            tracker: Arc::clone(self),
        }
    }

    fn created(&self) -> usize {
        self.created.load(Ordering::Relaxed)
    }

    fn dropped(&self) -> usize {
        self.dropped.lock().unwrap().len()
    }

    /// Every value created was dropped exactly once (double drops panic in `drop`).
    fn assert_all_dropped(&self) {
        let dropped = self.dropped.lock().unwrap();
        let created = self.created();
        assert_eq!(dropped.len(), created, "values not dropped with the pool");
        assert!(
            (0..created).all(|id| dropped.contains(&id)),
            "a dropped id that init never made"
        );
    }
}

/// A value with an identity and a marker the tests write.
struct Counted {
    id: usize,
    marker: u64,
    tracker: Arc<Tracker>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let fresh = self.tracker.dropped.lock().unwrap().insert(self.id);
        assert!(fresh, "value {} dropped twice", self.id);
    }
}

/// A pool of `Counted` values from `tracker`.
fn counted_pool(tracker: &Arc<Tracker>) -> percid::pool::PoolBuilder<Counted> {
    let t = Arc::clone(tracker);
    Pool::builder(move || t.make())
}

fn addr<T: Send>(b: &PoolBox<'_, T>) -> usize {
    &**b as *const T as usize
}

/// Takes `n` idle objects on the calling thread, trimming before each `try_get` so
/// that every idle object is in the depot: the pool never grows (or fails) while one
/// is idle, whichever cid the thread runs on.
fn walk<T: Send>(pool: &Pool<T>, n: usize) -> Vec<PoolBox<'_, T>> {
    (0..n)
        .map(|k| {
            pool.trim();
            pool.try_get()
                .unwrap_or_else(|| panic!("idle object {k} of {n} not found"))
        })
        .collect()
}

#[derive(Debug)]
#[repr(align(8192))]
struct Huge(#[allow(dead_code)] u8);

#[derive(Debug)]
#[repr(align(64))]
struct Line(u64);

#[repr(align(4096))]
struct Page(u8);

#[test]
fn builder_errors() {
    let err = |r: Result<Pool<u64>, PoolError>| r.expect_err("an invalid configuration");
    let errors = [
        (
            err(Pool::builder(|| 0u64).capacity(0).build()),
            PoolError::ZeroCapacity,
        ),
        (
            err(Pool::builder(|| 0u64).capacity(MAX_CAPACITY + 1).build()),
            PoolError::CapacityTooLarge {
                capacity: MAX_CAPACITY + 1,
            },
        ),
        (
            err(Pool::builder(|| 0u64).batch(0).build()),
            PoolError::BadBatch {
                batch: 0,
                capacity: 64,
            },
        ),
        (
            err(Pool::builder(|| 0u64).capacity(8).batch(9).build()),
            PoolError::BadBatch {
                batch: 9,
                capacity: 8,
            },
        ),
        (
            err(Pool::builder(|| 0u64).max_objects(0).build()),
            PoolError::ZeroMaxObjects,
        ),
    ];
    for (got, want) in errors {
        assert_eq!(got, want);
        assert!(!got.to_string().is_empty(), "{got:?} has no message");
    }
    let huge = Pool::builder(|| Huge(0))
        .build()
        .expect_err("align 8192 is refused");
    assert_eq!(huge, PoolError::AlignTooLarge { align: 8192 });
    assert!(huge.to_string().contains("8192"));
    assert_eq!(MAX_ALIGN, 4096);

    // The limits themselves are accepted.
    Pool::builder(|| 0u64)
        .capacity(MAX_CAPACITY)
        .batch(MAX_CAPACITY)
        .build()
        .expect("capacity MAX_CAPACITY, batch = capacity");
    let one = Pool::builder(|| 7u64)
        .capacity(1)
        .max_objects(1)
        .build()
        .expect("capacity 1 (default batch 1), max_objects 1");
    assert_eq!(*one.get(), 7);
    assert!(format!("{one:?}").contains("Pool"));
    let pool = Pool::new(|| 5u64).expect("the default configuration");
    let b = pool.get();
    assert_eq!(format!("{b:?}"), "5");
}

/// Values come from `init` only, are never dropped while the pool lives, and are all
/// dropped exactly once with it: those parked in caches, in the depot, in use when
/// leaked with `into_raw`, and those taken back with `from_raw`.
#[test]
fn drop_accounting() {
    let tracker = Tracker::new();
    let pool = counted_pool(&tracker)
        .capacity(4)
        .batch(2)
        .reset(|v| v.marker = 0)
        .build()
        .unwrap();
    let leaked = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (pool, leaked) = (&pool, &leaked);
            s.spawn(move || {
                for round in 0..scaled(2_000) {
                    let held: Vec<_> = (0..10).map(|_| pool.get()).collect();
                    for (k, mut b) in held.into_iter().enumerate() {
                        b.marker = 1;
                        // Now and then an object leaves as a raw pointer: some come
                        // back, some never do.
                        if k == 3 && round % 500 == t {
                            let raw = PoolBox::into_raw(b);
                            if round % 1000 == t {
                                leaked.fetch_add(1, Ordering::Relaxed);
                            } else {
                                // SAFETY: `raw` came from `into_raw` on a box of
                                // `pool` and is taken back once.
                                drop(unsafe { PoolBox::from_raw(pool, raw) });
                            }
                        }
                    }
                }
            });
        }
    });
    assert_eq!(
        tracker.dropped(),
        0,
        "a value was dropped while the pool lives"
    );
    assert_eq!(tracker.created(), pool.created(), "values not made by init");
    let leaked = leaked.load(Ordering::Relaxed);
    assert_eq!(pool.idle(), pool.created() - leaked, "objects lost");
    // Park objects in the main thread's cache too, and keep one in use as raw.
    let held: Vec<_> = (0..3).map(|_| pool.get()).collect();
    drop(held);
    let raw = PoolBox::into_raw(pool.get());
    assert!(!raw.is_null());
    assert_eq!(
        pool.idle(),
        pool.created() - leaked - 1,
        "the raw object counts as in use"
    );
    assert_eq!(tracker.dropped(), 0);
    drop(pool);
    tracker.assert_all_dropped();
}

/// On one thread, the object just dropped comes back (with the reset hook applied).
/// `batch(1)` makes the pool look in the other caches before it grows, so this holds
/// even when the thread changes cid between the drop and the get.
#[test]
fn reuse_with_reset() {
    let tracker = Tracker::new();
    let pool = counted_pool(&tracker)
        .batch(1)
        .reset(|v| v.marker = 0)
        .build()
        .unwrap();
    let mut b = pool.get();
    let (first, id) = (addr(&b), b.id);
    b.marker = 0xfeed;
    drop(b);
    for _ in 0..1000 {
        let mut b = pool.get();
        assert_eq!(addr(&b), first, "another object came back");
        assert_eq!(b.id, id);
        assert_eq!(b.marker, 0, "the reset hook did not run");
        b.marker = 0xbeef;
    }
    // One slab made (a page's worth of objects), none freed: one value each.
    assert_eq!(pool.freed(), 0);
    assert_eq!(tracker.created(), pool.created());
    drop(pool);
    tracker.assert_all_dropped();
}

/// A buffer keeps its capacity (and its heap block) across reuse.
#[test]
fn buffers_keep_their_capacity() {
    let pool = Pool::builder(|| Vec::<u8>::with_capacity(1000))
        .batch(1)
        .reset(|v| v.clear())
        .build()
        .unwrap();
    let mut b = pool.get();
    b.extend_from_slice(&[1; 600]);
    let (slot, heap) = (addr(&b), b.as_ptr());
    drop(b);
    let b = pool.get();
    assert_eq!(addr(&b), slot);
    assert!(b.is_empty(), "the reset hook did not clear the buffer");
    assert!(b.capacity() >= 1000);
    assert_eq!(b.as_ptr(), heap, "the buffer was reallocated");
}

/// A pool of values with drop glue (which may own memory: here 1 MiB buffers) makes
/// one batch per grow, not a page of them; a pool of plain values fills the page.
#[test]
fn a_grow_makes_one_batch_of_values_that_own_memory() {
    static MADE: AtomicUsize = AtomicUsize::new(0);
    let pool = Pool::builder(|| {
        MADE.fetch_add(1, Ordering::Relaxed);
        vec![0u8; 1 << 20]
    })
    .capacity(8)
    .batch(3)
    .build()
    .unwrap();
    let first = pool.get();
    assert_eq!(pool.created(), 3, "one grow, one batch");
    assert_eq!(MADE.load(Ordering::Relaxed), 3, "init ran once per object");
    let held: Vec<_> = (0..3).map(|_| pool.get()).collect();
    // The fourth get grew again (and a thread that moved to another cid's cache may
    // have grown once more): whole batches either way.
    let created = pool.created();
    assert!(created >= 6 && created % 3 == 0, "{created} objects");
    assert_eq!(MADE.load(Ordering::Relaxed), created);
    drop((first, held));
    assert_eq!(pool.idle(), created);

    let plain = Pool::builder(|| 0u64).capacity(8).batch(3).build().unwrap();
    drop(plain.get());
    assert!(
        plain.created() > 3,
        "a plain value's slab fills its page ({} objects)",
        plain.created()
    );
}

#[test]
fn bounded_try_get() {
    let pool = Pool::builder(|| 0u64).max_objects(3).build().unwrap();
    let mut held: Vec<_> = (0..3)
        .map(|_| pool.try_get().expect("one of the 3 objects"))
        .collect();
    assert!(pool.created() <= 3);
    assert!(pool.try_get().is_none(), "a fourth object");
    assert!(pool.try_get().is_none(), "a fourth object");
    assert_eq!(pool.created(), 3);
    let addrs: HashSet<usize> = held.iter().map(addr).collect();
    assert_eq!(addrs.len(), 3);
    for _ in 0..100 {
        let b = held.pop().unwrap();
        drop(b);
        let b = pool.try_get().expect("the object just dropped");
        assert!(addrs.contains(&addr(&b)));
        held.push(b);
        assert!(pool.try_get().is_none());
        assert_eq!(pool.created(), 3);
    }
    drop(held);
    assert_eq!(pool.idle(), 3);
}

/// The 3 objects of a bounded pool are dropped on other threads (other cids, other
/// simulated cids): the main thread still finds all three.
#[test]
fn bounded_finds_objects_parked_elsewhere() {
    for round in 0..20 {
        let pool = Pool::builder(|| 0u64)
            .capacity(8)
            .max_objects(3)
            .build()
            .unwrap();
        if simulated() {
            set_simulated_cid(0);
        }
        let held: Vec<_> = (0..3).map(|_| pool.get()).collect();
        let addrs: HashSet<usize> = held.iter().map(addr).collect();
        std::thread::scope(|s| {
            for (k, b) in held.into_iter().enumerate() {
                s.spawn(move || {
                    if simulated() {
                        set_simulated_cid((1 + k as u32) % simulated_cids());
                    }
                    drop(b);
                });
            }
        });
        let trimmed = round % 2 == 1;
        if trimmed {
            // Half the rounds trim first: every object is idle, so the slab is
            // freed and the bound has room for 3 new objects.
            pool.trim();
            assert_eq!(pool.cached(), 0);
            assert_eq!((pool.created(), pool.idle(), pool.freed()), (0, 0, 3));
        } else {
            assert_eq!(pool.idle(), 3);
        }
        let again: Vec<_> = (0..3)
            .map(|_| pool.try_get().expect("an object parked in another cache"))
            .collect();
        assert!(pool.try_get().is_none());
        if !trimmed {
            assert_eq!(again.iter().map(addr).collect::<HashSet<_>>(), addrs);
        }
        assert_eq!(pool.created(), 3);
    }
}

/// A blocking `get` on an exhausted bounded pool returns once another thread drops
/// an object.
#[test]
fn blocking_get_waits_for_a_drop() {
    let pool = Pool::builder(|| 0u64).max_objects(1).build().unwrap();
    let mut only = pool.get();
    *only = 42;
    let first = addr(&only);
    let dropped = AtomicBool::new(false);
    std::thread::scope(|s| {
        let dropped = &dropped;
        s.spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            dropped.store(true, Ordering::Release);
            drop(only);
        });
        let b = pool.get();
        assert!(
            dropped.load(Ordering::Acquire),
            "get returned before the only object came back"
        );
        assert_eq!(addr(&b), first);
        assert_eq!(*b, 42, "no reset hook: the value stays");
    });
    assert_eq!(pool.created(), 1);
}

#[test]
fn raw_round_trip() {
    for debug in [false, true] {
        let tracker = Tracker::new();
        let pool = counted_pool(&tracker)
            .max_objects(2)
            .debug(debug)
            .build()
            .unwrap();
        let mut b = pool.get();
        b.marker = 99;
        let id = b.id;
        let before = addr(&b);
        let raw = PoolBox::into_raw(b);
        assert_eq!(raw as usize, before);
        // SAFETY: `raw` points to a value the pool keeps alive and nobody else uses.
        let seen = unsafe { (*raw).marker };
        assert_eq!(seen, 99);
        // A raw object is in use: the pool hands out only the other one.
        let other = pool.try_get().expect("the second object");
        assert_ne!(addr(&other), before);
        assert!(pool.try_get().is_none(), "a raw object was handed out");
        // SAFETY: `raw` came from `into_raw` on a box of `pool`, taken back once.
        let back = unsafe { PoolBox::from_raw(&pool, raw) };
        assert_eq!((back.id, back.marker), (id, 99));
        drop(back);
        drop(other);
        assert_eq!(pool.idle(), 2);
        assert_eq!(tracker.dropped(), 0);
        drop(pool);
        tracker.assert_all_dropped();
    }
}

#[test]
#[should_panic(expected = "percid::pool")]
fn from_raw_twice_panics_in_debug_mode() {
    let pool = Pool::builder(|| 0u64).debug(true).build().unwrap();
    let raw = PoolBox::into_raw(pool.get());
    // SAFETY: `raw` came from `into_raw` on a box of `pool`.
    let first = unsafe { PoolBox::from_raw(&pool, raw) };
    std::mem::forget(first);
    // SAFETY: deliberately broken (taken back twice): the debug checks must catch it
    // before anything else happens.
    let _second = unsafe { PoolBox::from_raw(&pool, raw) };
}

#[test]
#[should_panic(expected = "percid::pool")]
fn from_raw_of_a_foreign_pointer_panics_in_debug_mode() {
    let pool = Pool::builder(|| 0u64).debug(true).build().unwrap();
    let _warm = pool.get();
    let foreign = Box::into_raw(Box::new(0u64));
    // SAFETY: deliberately broken (not an object of the pool): the debug checks must
    // refuse it before touching it.
    let _b = unsafe { PoolBox::from_raw(&pool, foreign) };
}

/// Taking back a pointer into a slab that is not at an object's start is refused too.
#[test]
#[should_panic(expected = "percid::pool")]
fn from_raw_of_a_misplaced_pointer_panics_in_debug_mode() {
    let pool = Pool::builder(|| [0u64; 4]).debug(true).build().unwrap();
    let raw = PoolBox::into_raw(pool.get());
    // SAFETY: deliberately broken (inside an object, not at its start).
    let _b = unsafe { PoolBox::from_raw(&pool, raw.cast::<u64>().add(1).cast::<[u64; 4]>()) };
}

/// After many threads dropped objects (filling their caches), `trim` moves every
/// cache to the depot.
#[test]
fn trim_empties_the_caches() {
    let pool = Pool::builder(|| 0u64)
        .capacity(16)
        .batch(8)
        .build()
        .unwrap();
    let in_use: Vec<_> = (0..5).map(|_| pool.get()).collect();
    std::thread::scope(|s| {
        for t in 0..6u32 {
            let pool = &pool;
            s.spawn(move || {
                if simulated() {
                    set_simulated_cid(t % simulated_cids());
                }
                for _ in 0..scaled(1_000) {
                    let held: Vec<_> = (0..12).map(|_| pool.get()).collect();
                    drop(held);
                }
            });
        }
    });
    assert!(
        pool.cached() > 0,
        "the last drop left its object in a cache"
    );
    assert_eq!(pool.idle(), pool.created() - in_use.len());
    pool.trim();
    assert_eq!(pool.cached(), 0, "trim left objects in a cache");
    assert_eq!(pool.idle(), pool.created() - in_use.len());
    pool.trim();
    assert_eq!(pool.cached(), 0);
    // Everything idle is reachable from here without growing.
    let created = pool.created();
    let all = walk(&pool, created - in_use.len());
    let mut addrs: HashSet<usize> = all.iter().map(addr).collect();
    addrs.extend(in_use.iter().map(addr));
    assert_eq!(addrs.len(), created, "an object handed out twice");
    assert_eq!(
        pool.created(),
        created,
        "the pool grew with idle objects left"
    );
}

/// A producer gets objects and sends them to a consumer that drops them: batches
/// circulate through the depot and the pool's size does not follow the operation
/// count.
#[test]
fn producer_consumer_steady_state() {
    const IN_FLIGHT: usize = 64;
    const CAPACITY: usize = 64;
    const BATCH: usize = 32;
    let pool = Pool::builder(|| 0u64)
        .capacity(CAPACITY)
        .batch(BATCH)
        .build()
        .unwrap();
    let ops = scaled(200_000);
    let (tx, rx) = std::sync::mpsc::sync_channel::<PoolBox<'_, u64>>(IN_FLIGHT);
    let mut at_tenth = 0;
    std::thread::scope(|s| {
        let consumer = s.spawn(move || {
            if simulated() {
                set_simulated_cid(1 % simulated_cids());
            }
            let mut expect = 0u64;
            for b in rx {
                assert_eq!(*b, expect, "objects out of order");
                expect += 1;
            }
            expect
        });
        if simulated() {
            set_simulated_cid(0);
        }
        for i in 0..ops {
            let mut b = pool.get();
            *b = i;
            tx.send(b).expect("the consumer is alive");
            if i == ops / 10 {
                at_tenth = pool.created();
            }
        }
        drop(tx);
        assert_eq!(consumer.join().unwrap(), ops);
    });
    let created = pool.created();
    // Caches: at most `CAPACITY` per cid and per lane; in flight: the channel, one
    // object in each thread's hands, one being sent; in transit between a cache and
    // the depot: a spill's batch and an install's chain; and the last slab.
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let shards = cpus.max(simulated_cids() as usize) + cpus;
    let bound = shards * CAPACITY + IN_FLIGHT + 3 + BATCH + CAPACITY + BATCH;
    eprintln!(
        "created {at_tenth} after 10% of {ops} operations, {created} after all; bound {bound}"
    );
    assert!(
        at_tenth <= bound,
        "{at_tenth} objects after 10%: above {bound}"
    );
    assert!(
        created <= bound,
        "{created} objects after 100%: above {bound}"
    );
    assert_eq!(pool.idle(), created, "objects lost");
}

#[test]
fn zero_sized_values() {
    let pool = Pool::builder(|| ()).capacity(4).batch(2).build().unwrap();
    let held: Vec<_> = (0..100).map(|_| pool.get()).collect();
    assert_eq!(held.len(), 100);
    // The values are ZSTs, but the objects are distinct.
    let addrs: HashSet<usize> = held.iter().map(addr).collect();
    assert_eq!(addrs.len(), 100);
    drop(held);
    let raw = PoolBox::into_raw(pool.get());
    assert!(!raw.is_null());
    // SAFETY: `raw` came from `into_raw` on a box of `pool`, taken back once.
    drop(unsafe { PoolBox::from_raw(&pool, raw) });
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..scaled(10_000) {
                    let b = pool.get();
                    let _: () = *b;
                }
            });
        }
    });
    assert_eq!(pool.idle(), pool.created());
}

#[test]
fn over_aligned_values() {
    let pool = Pool::builder(|| Line(1))
        .capacity(4)
        .batch(3)
        .build()
        .unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..scaled(2_000) {
                    let held: Vec<_> = (0..7).map(|_| pool.get()).collect();
                    for b in &held {
                        assert_eq!(addr(b) % 64, 0, "a misaligned value");
                        assert_eq!(b.0, 1);
                    }
                }
            });
        }
    });
    let page = Pool::builder(|| Page(3))
        .build()
        .expect("align 4096 is the limit, not above it");
    let held: Vec<_> = (0..3).map(|_| page.get()).collect();
    for b in &held {
        assert_eq!(addr(b) % 4096, 0, "a misaligned page");
        assert_eq!(b.0, 3);
    }
}

#[test]
fn send_and_sync() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<PoolBox<'static, u64>>();
    send::<PoolBox<'static, Vec<u8>>>();
    sync::<PoolBox<'static, u64>>();
    send::<Pool<Vec<u8>>>();
    sync::<Pool<Vec<u8>>>();
    // A cell is Send but not Sync: its box moves between threads.
    send::<PoolBox<'static, std::cell::Cell<u64>>>();
}

/// A pool in a dedicated arena (2 cids, 2 lanes); then, after it is dropped with
/// objects parked in its caches, a second pool on the same (zeroed) cache words
/// starts empty rather than finding the first pool's freed objects.
#[test]
fn dedicated_arena() {
    let arena: &'static Arena = Box::leak(Box::new(Arena::with_capacity(2, 2)));
    for generation in 0..4 {
        let tracker = Tracker::new();
        let pool = counted_pool(&tracker)
            .capacity(8)
            .batch(4)
            .arena(arena)
            .build()
            .unwrap();
        // Nothing of the previous generation's caches is visible.
        assert_eq!(
            pool.cached(),
            0,
            "stale cache heads (generation {generation})"
        );
        assert_eq!(pool.idle(), 0);
        let first = pool.get();
        assert_eq!(
            first.id, 0,
            "a value init did not make (generation {generation})"
        );
        assert_eq!(tracker.created(), pool.created());
        drop(first);
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let pool = &pool;
                s.spawn(move || {
                    if simulated() {
                        set_simulated_cid(t % 2);
                    }
                    for _ in 0..scaled(2_000) {
                        let held: Vec<_> = (0..6).map(|_| pool.get()).collect();
                        for b in &held {
                            assert_eq!(b.marker, 0);
                        }
                    }
                });
            }
        });
        assert!(
            pool.cached() > 0,
            "the last drop left its object in a cache"
        );
        assert_eq!(
            pool.idle(),
            pool.created(),
            "objects lost or listed twice (generation {generation})"
        );
        assert_eq!(tracker.dropped(), 0);
        drop(pool);
        tracker.assert_all_dropped();
    }
    assert_eq!(arena.stats().words_in_use, 0, "the pools' words went back");
}

/// A get that refills from the depot while another thread drains its cache: the
/// refill cannot install the chain's rest in the (token-holding) cache and gives it
/// back to the depot. That must not deadlock.
#[test]
fn refill_races_a_drain() {
    let pool: &'static Pool<u64> = Box::leak(Box::new(
        Pool::builder(|| 0u64).capacity(4).batch(2).build().unwrap(),
    ));
    // Chains in the depot: 32 objects got and dropped, trimmed.
    drop((0..32).map(|_| pool.get()).collect::<Vec<_>>());
    pool.trim();
    let created = pool.created();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    let ops = scaled(200_000);
    let trimmer = std::thread::spawn(move || {
        while !stop.load(Ordering::Acquire) {
            pool.trim();
        }
    });
    std::thread::spawn(move || {
        if simulated() {
            set_simulated_cid(0);
        }
        for _ in 0..ops {
            let a = pool.get();
            let b = pool.get();
            drop((a, b));
        }
        done_tx.send(()).unwrap();
    });
    let finished = done_rx.recv_timeout(Duration::from_secs(30));
    stop.store(true, Ordering::Release);
    assert!(
        finished.is_ok(),
        "{ops} get/drop pairs racing trims did not finish in 30 s (deadlock?)"
    );
    // Trims free the slab whenever every object is idle, and gets make it again:
    // what exists is all accounted for.
    let _ = created;
    trimmer.join().unwrap();
    pool.trim();
    assert_eq!(pool.idle(), pool.created(), "objects lost");
}

/// Refills that install a chain into a cache other threads on the same cid keep
/// filling (and a trimmer keeps draining): a push of the chain's rest that aborts
/// after writing the object's link and then finds the cache full must not leave that
/// link in the chain given back to the depot. Objects carry their holder: none may
/// be handed out twice, and every object is found exactly once at the end.
#[test]
fn refill_into_a_busy_cache() {
    let pool = Pool::builder(|| AtomicUsize::new(0))
        .capacity(4)
        .batch(4)
        .build()
        .unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let trimmer = s.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                pool.trim();
                std::thread::yield_now();
            }
        });
        let workers: Vec<_> = (1..=4usize)
            .map(|me| {
                let pool = &pool;
                s.spawn(move || {
                    if simulated() {
                        // All on one cid: the others fill the cache a refill installs in.
                        set_simulated_cid(0);
                    }
                    for _ in 0..scaled(400_000) {
                        let held: Vec<_> = (0..3).map(|_| pool.get()).collect();
                        for b in &held {
                            let was = b.swap(me, Ordering::AcqRel);
                            assert_eq!(was, 0, "an object handed out while {was} held it");
                        }
                        for b in held {
                            assert_eq!(b.swap(0, Ordering::AcqRel), me);
                        }
                    }
                })
            })
            .collect();
        let results: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
        stop.store(true, Ordering::Release);
        trimmer.join().unwrap();
        for r in results {
            if let Err(panic) = r {
                std::panic::resume_unwind(panic);
            }
        }
    });
    let created = pool.created();
    assert_eq!(pool.idle(), created, "objects lost or listed twice");
    let all = walk(&pool, created);
    let addrs: HashSet<usize> = all.iter().map(addr).collect();
    assert_eq!(addrs.len(), created, "an object listed twice");
    assert_eq!(pool.created(), created);
}

/// A panic in `init` (user code, run while the pool grows) leaves the pool as it was:
/// `created()` counts only values that exist, and a bounded pool keeps its bound.
#[test]
fn init_panic_leaves_the_pool_consistent() {
    let calls = Arc::new(AtomicUsize::new(0));
    let pool = {
        let calls = Arc::clone(&calls);
        Pool::builder(move || {
            // The second value the pool ever asks for fails.
            if calls.fetch_add(1, Ordering::Relaxed) == 1 {
                panic!("init failed");
            }
            7u64
        })
        .capacity(2)
        .batch(2)
        .max_objects(2)
        .build()
        .unwrap()
    };
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(pool.get());
    }));
    assert!(failed.is_err(), "init's panic reaches the caller");
    assert_eq!(pool.created(), 0, "objects counted that init never made");
    assert_eq!(pool.idle(), pool.created());
    // The bound is intact: both objects can still be made and handed out.
    let a = pool.try_get().expect("first object");
    let b = pool.try_get().expect("second object");
    assert_eq!((*a, *b), (7, 7));
    assert!(pool.try_get().is_none());
    assert_eq!(pool.created(), 2);
}

/// A pool made by the const constructor, in a `static`: its heads are built at the
/// first use (whichever thread comes first), from many threads at once.
#[test]
fn static_pool_from_many_threads() {
    static POOL: Pool<Vec<u8>> = Pool::from_fn(Vec::new);
    std::thread::scope(|s| {
        for t in 0..16u8 {
            s.spawn(move || {
                if simulated() {
                    set_simulated_cid(u32::from(t) % simulated_cids());
                }
                for i in 0..scaled(20_000) {
                    let mut b = POOL.get();
                    b.clear();
                    b.push(t);
                    b.push(i as u8);
                    assert_eq!(&b[..], &[t, i as u8]);
                }
            });
        }
    });
    POOL.trim();
    assert_eq!(POOL.idle(), POOL.created());
}
