//! Sequences of pool operations on simulated cids, with injected aborts, checked
//! step by step against a model of who holds what.
//!
//! The process runs the simulated backend. Each input builds a `Pool` of counted,
//! tagged objects with a fuzzed cache capacity (1..=8), batch (1..=capacity) and
//! optional bound (1..=16 objects), on an arena of 4 cids and 2 lanes shared by the
//! whole process, or in NUMA mode on a NUMA arena of 2 nodes. Each step moves the
//! thread to a cid (4 and 5 are beyond the arena: the lane fallback) and, in NUMA
//! mode, to a node (2 is beyond the arena: the lane too), sets an abort rate, and
//! gets, drops, trims, bursts (gets many, drops them all), idles past the purge
//! delay (with a fuzzed shrink floor, so spills and trims free slabs and the pool
//! makes them again), or sends an object through `into_raw` / `from_raw`. After
//! every step:
//!
//! * no object is handed out while held (its tag says who holds it);
//! * every object is either held by the model or idle in the pool:
//!   `pool.idle() + held == pool.created()`, and `created <= bound`; the values
//!   alive are exactly `created` (a freed slab dropped each of its values once);
//! * caches hold at most `capacity` objects per cid (per node) and lane;
//! * in NUMA mode, every object's home is one of the arena's nodes, and after a
//!   trim every idle object is in a node's depot;
//! * a bounded pool at its bound with every object held refuses `try_get`, and with
//!   an object free anywhere finds it.
//!
//! When the pool drops, every object it created is dropped exactly once.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use percid::cid::Arena;
use percid::pool::{Pool, PoolBox};
use percid::testing::{
    seed_simulated_aborts, set_simulated_abort_rate, set_simulated_cid, set_simulated_node,
};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const STEP_CIDS: u8 = 6;
const STEP_NODES: u8 = 3;
const NODES: usize = 2;
const UNITS: usize = 4 + 2;
const NUMA_UNITS: usize = 4 * NODES + 2;

#[derive(Arbitrary, Debug)]
enum Op {
    Get,
    TryGet,
    /// Drops the held object at this index (modulo the number held).
    Drop(u8),
    /// Gives up the held object at this index with `into_raw`.
    IntoRaw(u8),
    /// Takes back the raw object at this index with `from_raw`.
    FromRaw(u8),
    Trim,
    /// Gets this many objects more (up to the bound), then drops them all: a burst
    /// whose spills free the slabs they empty (the pool's floor is fuzzed).
    Burst(u8),
    /// Lets the purge delay pass (the depots' demand ages; no pool call).
    Idle,
}

#[derive(Arbitrary, Debug)]
struct Step {
    cid: u8,
    node: u8,
    abort_rate: u8,
    op: Op,
}

#[derive(Arbitrary, Debug)]
struct Input {
    numa: bool,
    capacity: u8,
    batch: u8,
    bound: Option<u8>,
    /// The shrink's floor (`keep_idle`): 0 to 7 objects, or the default.
    keep_idle: Option<u8>,
    steps: Vec<Step>,
}

static LIVE: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A counted object with a holder tag.
struct Obj {
    holder: u64,
}

impl Obj {
    fn new() -> Obj {
        LIVE.fetch_add(1, Ordering::Relaxed);
        Obj { holder: 0 }
    }
}

impl Drop for Obj {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

fn arena() -> &'static Arena {
    static ARENA: OnceLock<&'static Arena> = OnceLock::new();
    ARENA.get_or_init(|| Box::leak(Box::new(Arena::with_capacity(4, 2))))
}

fn numa_arena() -> &'static Arena {
    static ARENA: OnceLock<&'static Arena> = OnceLock::new();
    ARENA.get_or_init(|| Box::leak(Box::new(Arena::with_nodes(4, 2, NODES as u32))))
}

fuzz_target!(
    init: {
        // SAFETY: set before any thread exists and before percid reads it.
        unsafe { std::env::set_var("PERCID_BACKEND", "simulated") };
    },
    |input: Input| {
        run(&input);
        assert_eq!(LIVE.load(Ordering::Relaxed), 0, "objects leaked or dropped twice");
    }
);

fn run(input: &Input) {
    // The same aborts every time an input runs: a crash reproduces on its own.
    seed_simulated_aborts(0x5eed);
    let capacity = usize::from(input.capacity % 8) + 1;
    let batch = usize::from(input.batch) % capacity + 1;
    let bound = input.bound.map(|b| usize::from(b % 16) + 1);
    let mut builder = Pool::builder(Obj::new)
        .capacity(capacity)
        .batch(batch)
        .debug(true)
        .numa(input.numa)
        .arena(if input.numa { numa_arena() } else { arena() });
    let units = if input.numa { NUMA_UNITS } else { UNITS };
    if let Some(bound) = bound {
        builder = builder.max_objects(bound);
    }
    if let Some(keep) = input.keep_idle {
        builder = builder
            .keep_idle(usize::from(keep % 8))
            .purge_delay(std::time::Duration::from_micros(200));
    }
    let pool = builder.build().unwrap();
    let mut held: Vec<(PoolBox<'_, Obj>, u64)> = Vec::new();
    let mut raw: Vec<(*mut Obj, u64)> = Vec::new();

    for step in &input.steps {
        set_simulated_cid(u32::from(step.cid % STEP_CIDS));
        set_simulated_node(u32::from(step.node % STEP_NODES));
        set_simulated_abort_rate(u32::from(step.abort_rate) * 4);
        match step.op {
            Op::Get | Op::TryGet => {
                let at_bound = bound.is_some_and(|b| held.len() + raw.len() == b);
                if matches!(step.op, Op::Get) && at_bound {
                    // A blocking get would wait forever: every object is held here.
                    continue;
                }
                match pool.try_get() {
                    Some(mut b) => {
                        assert!(!at_bound, "a bounded pool gave an object beyond its bound");
                        assert_eq!(b.holder, 0, "an object handed out while held");
                        assert!(
                            (PoolBox::node(&b) as usize) < NODES,
                            "an object whose home is no node of the arena"
                        );
                        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                        b.holder = id;
                        held.push((b, id));
                    }
                    None => assert!(at_bound, "try_get failed with objects free"),
                }
            }
            Op::Drop(i) if !held.is_empty() => {
                let (mut b, id) = held.swap_remove(usize::from(i) % held.len());
                assert_eq!(b.holder, id, "a held object changed holder");
                b.holder = 0;
                drop(b);
            }
            Op::IntoRaw(i) if !held.is_empty() => {
                let (b, id) = held.swap_remove(usize::from(i) % held.len());
                raw.push((PoolBox::into_raw(b), id));
            }
            Op::FromRaw(i) if !raw.is_empty() => {
                let (ptr, id) = raw.swap_remove(usize::from(i) % raw.len());
                // SAFETY: `ptr` came from `into_raw` on this pool and was not taken
                // back since.
                let b = unsafe { PoolBox::from_raw(&pool, ptr) };
                assert_eq!(b.holder, id, "a raw object changed holder");
                held.push((b, id));
            }
            Op::Trim => {
                pool.trim();
                assert_eq!(pool.cached(), 0, "trim left objects in the caches");
                if input.numa {
                    let homed: usize = (0..pool.nodes()).map(|n| pool.idle_on_node(n)).sum();
                    assert_eq!(
                        homed,
                        pool.idle(),
                        "idle objects outside the depots after a trim"
                    );
                }
            }
            Op::Burst(n) => {
                let room = bound.map_or(usize::MAX, |b| b - held.len() - raw.len());
                let burst: Vec<_> = (0..usize::from(n % 64).min(room))
                    .map(|_| {
                        let mut b = pool.try_get().expect("try_get below the bound");
                        assert_eq!(b.holder, 0, "an object handed out while held");
                        b.holder = u64::MAX;
                        b
                    })
                    .collect();
                check(
                    &pool,
                    held.len() + raw.len() + burst.len(),
                    capacity,
                    bound,
                    units,
                );
                for mut b in burst {
                    assert_eq!(b.holder, u64::MAX, "a burst object changed holder");
                    b.holder = 0;
                    drop(b);
                }
            }
            Op::Idle => std::thread::sleep(std::time::Duration::from_micros(500)),
            _ => {}
        }
        check(&pool, held.len() + raw.len(), capacity, bound, units);
    }
    // Raw objects never given back are dropped with the pool.
    for (b, _) in &mut held {
        b.holder = 0;
    }
    drop(held);
    drop(pool);
}

fn check(pool: &Pool<Obj>, in_use: usize, capacity: usize, bound: Option<usize>, units: usize) {
    let created = pool.created();
    assert_eq!(
        pool.idle() + in_use,
        created,
        "objects lost or listed twice"
    );
    assert_eq!(
        LIVE.load(Ordering::Relaxed),
        created,
        "objects created without the pool"
    );
    if let Some(bound) = bound {
        assert!(
            created <= bound,
            "created {created} beyond the bound {bound}"
        );
    }
    assert!(
        pool.cached() <= capacity * units,
        "caches hold {} objects, more than {capacity} per cid and lane",
        pool.cached()
    );
}
