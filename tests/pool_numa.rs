//! NUMA mode of `percid::pool::Pool`: caches per (node, cid), one depot per node,
//! slabs on their node, objects returned on another node sent home in batches —
//! under the torture harness (64 threads on 2 CPUs, signals, migrations) with nodes
//! injected into 2- and 4-node layouts, in every backend mode.
//!
//! This machine has one NUMA node: `percid::testing::inject_node` makes the rseq
//! sections read a thread-local node (and sets the simulated backend's node). The
//! portable backend has no node of its own: a portable thread is on the node the
//! pool's topology puts its CPU on, so the tests pin a thread to a CPU to put it on
//! a node there.
//!
//! Objects carry a holder word: a get must find it 0 (nobody else holds the object)
//! and sets it to the thread's id, a drop clears it. At the end every object the pool
//! created is idle, in the depot of its home node after `flush`, found exactly once,
//! and dropped exactly once with the pool.

#[macro_use]
mod common;

use common::pooled::{Rng, Tagged, pass};
use common::{Torture, forced_backend, quarter, tick};
use percid::cid::Arena;
use percid::numa::Topology;
use percid::pool::{Pool, PoolBox, PoolError};
use percid::testing::inject_node;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The holder of an object waiting in the hand-off list.
const HANDED: u64 = u64::MAX;

/// Thread 0 flushes the pool every this many operations.
const TRIM_EVERY: u64 = 1024;

/// A worker moves to the next node every this many operations.
const HOP_EVERY: u64 = 512;

/// Whether this process runs every thread on the portable backend.
fn portable() -> bool {
    forced_backend().as_deref() == Some("portable")
}

/// A `nodes`-node arena and topology (one CPU per node), leaked for `'static`.
fn layout(nodes: u32) -> (&'static Arena, &'static Topology) {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
    let arena = Box::leak(Box::new(Arena::with_nodes(cpus.max(64), cpus, nodes)));
    let topology = Box::leak(Box::new(Topology::uniform(nodes, 1).expect("topology")));
    (arena, topology)
}

/// Puts the calling thread on `node` of a `layout` topology: an injected node, or on
/// the portable backend a pin to CPU `node` (false when that CPU is not allowed).
fn be_on(node: u32) -> bool {
    if !portable() {
        inject_node(Some(node));
        return true;
    }
    // Not the calling thread's current mask: it may be pinned to another node's CPU
    // already. The kernel refuses a CPU the process may not use.
    let cpu = node as usize;
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return false;
    }
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET with a CPU below
    // CPU_SETSIZE (checked above) writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: reads `size_of::<cpu_set_t>()` bytes of `set`; 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    rc == 0
}

type TaggedPool = Pool<Tagged>;

/// A NUMA pool of tagged objects on a `nodes`-node layout: tiny caches (capacity 4,
/// batch 2), so spills, refills and drains happen all the time.
fn tagged_pool(nodes: u32, max_objects: Option<usize>, drops: &Arc<AtomicUsize>) -> TaggedPool {
    let (arena, topology) = layout(nodes);
    let drops = Arc::clone(drops);
    let mut builder = Pool::builder(move || Tagged {
        holder: AtomicU64::new(0),
        drops: Arc::clone(&drops),
    })
    .capacity(4)
    .batch(2)
    .debug(true)
    .numa(true)
    .arena(arena)
    .topology(topology);
    if let Some(max) = max_objects {
        builder = builder.max_objects(max);
    }
    let pool = builder.build().expect("pool");
    assert_eq!(pool.nodes(), nodes as usize);
    pool
}

/// After `flush`, every idle object is in its home node's depot: walks node by node
/// (on that node, flushing before every `try_get` so the walk takes from that
/// node's depot and never grows the pool) and checks each object's home, that none
/// is found twice and none is missing. Nodes a portable thread cannot reach must
/// hold nothing.
fn walk_homes(pool: &TaggedPool, nodes: u32) {
    pool.flush();
    let created = pool.created();
    assert_eq!(pool.cached(), 0, "flush left objects in a cache");
    assert_eq!(pool.idle(), created, "objects lost or counted twice");
    let per_node: Vec<usize> = (0..nodes as usize).map(|n| pool.idle_on_node(n)).collect();
    assert_eq!(
        per_node.iter().sum::<usize>(),
        created,
        "depots {per_node:?} do not hold the {created} objects"
    );
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut seen = HashSet::with_capacity(created);
            let mut all = Vec::with_capacity(created);
            for node in 0..nodes {
                let expected = per_node[node as usize];
                if !be_on(node) {
                    assert_eq!(expected, 0, "node {node} unreachable but holds objects");
                    continue;
                }
                for k in 0..expected {
                    pool.flush();
                    let b = pool.try_get().unwrap_or_else(|| {
                        panic!("object {k} of {expected} of node {node} not found")
                    });
                    assert_eq!(
                        PoolBox::node(&b),
                        node,
                        "an object of node {} in node {node}'s depot",
                        PoolBox::node(&b)
                    );
                    assert!(
                        seen.insert(&*b as *const Tagged as usize),
                        "object found twice"
                    );
                    pass(&b, 0, HANDED);
                    all.push(b);
                }
                assert_eq!(pool.created(), created, "the walk grew the pool");
            }
            if !portable() {
                inject_node(None);
            }
            assert_eq!(all.len(), created);
            assert_eq!(pool.idle(), 0);
            for b in all {
                pass(&b, HANDED, 0);
            }
        });
    });
}

/// One run on a `nodes`-node layout: `max_objects` `None` for an unbounded pool
/// (blocking `get`), or the bound (`try_get`, whose failures are answered by
/// dropping an object). Workers start on node `i % nodes` and hop to the next node
/// every `HOP_EVERY` operations, hand objects to each other, and count the objects
/// they drop on another node than the object's home.
fn torture(nodes: u32, t: Torture, max_objects: Option<usize>) {
    let drops = Arc::new(AtomicUsize::new(0));
    let pool = tagged_pool(nodes, max_objects, &drops);
    let handoff: Mutex<Vec<PoolBox<'_, Tagged>>> = Mutex::new(Vec::new());
    let gets = AtomicU64::new(0);
    let foreign = AtomicU64::new(0);
    t.run(|i, ops| {
        let me = i as u64 + 1;
        let keep = i % 8;
        let mut node = i as u32 % nodes;
        if !portable() {
            inject_node(Some(node));
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (me << 17));
        let mut held: Vec<PoolBox<'_, Tagged>> = Vec::with_capacity(16);
        let (mut my_gets, mut my_foreign) = (0u64, 0u64);
        let mut release = |b: PoolBox<'_, Tagged>, node: u32| {
            if PoolBox::node(&b) != node {
                my_foreign += 1;
            }
            pass(&b, me, 0);
            drop(b);
        };
        for k in 0..ops {
            tick();
            let r = rng.next();
            if k % HOP_EVERY == HOP_EVERY - 1 && !portable() {
                node = (node + 1) % nodes;
                inject_node(Some(node));
            }
            if i == 0 && k % TRIM_EVERY == TRIM_EVERY - 1 {
                pool.flush();
            }
            if r % 64 == 2 {
                std::thread::yield_now();
            }
            if r.is_multiple_of(8) {
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
                        if !held.is_empty() {
                            release(held.swap_remove(r as usize % held.len()), node);
                        }
                    }
                }
            } else {
                let b = held.swap_remove((r >> 8) as usize % held.len());
                if r % 16 == 1 {
                    pass(&b, me, HANDED);
                    handoff.lock().unwrap().push(b);
                } else {
                    release(b, node);
                }
            }
        }
        for b in held.drain(..) {
            release(b, node);
        }
        if !portable() {
            inject_node(None);
        }
        gets.fetch_add(my_gets, Ordering::Relaxed);
        foreign.fetch_add(my_foreign, Ordering::Relaxed);
    });
    for b in handoff.into_inner().unwrap() {
        pass(&b, HANDED, 0);
    }
    let created = pool.created();
    let foreign = foreign.load(Ordering::Relaxed);
    eprintln!(
        "numa pool {nodes} nodes {t:?} max_objects {max_objects:?}: {} gets, {foreign} \
         dropped on a foreign node, {created} objects, depots {:?}",
        gets.load(Ordering::Relaxed),
        (0..nodes as usize)
            .map(|n| pool.idle_on_node(n))
            .collect::<Vec<_>>(),
    );
    assert!(gets.load(Ordering::Relaxed) > 0, "nothing was handed out");
    if let Some(max) = max_objects {
        assert!(created <= max, "{created} objects created, bound {max}");
    }
    if !portable() {
        assert!(foreign > 0, "no object was dropped on a foreign node");
    }
    walk_homes(&pool, nodes);
    let freed = pool.freed();
    assert_eq!(
        drops.load(Ordering::Relaxed),
        freed,
        "a value dropped while the pool lives, other than with a slab the shrink freed"
    );
    let created = pool.created();
    drop(pool);
    assert_eq!(
        drops.load(Ordering::Relaxed),
        created + freed,
        "values not dropped exactly once"
    );
}

torture_variants! {
    two_nodes => |t| super::torture(2, quarter(t), None);
    four_nodes => |t| super::torture(4, quarter(t), None);
    two_nodes_bounded => |t: Torture| super::torture(2, quarter(t), Some(t.threads * 2));
    four_nodes_bounded => |t: Torture| super::torture(4, quarter(t), Some(t.threads * 2));
}

/// Objects got on node 0 and dropped on node 1 go home: every spill of node 1's
/// cache sends them to node 0's depot, and `flush` sends the rest; node 1's depot
/// never holds one.
#[test]
fn foreign_drops_go_home_in_batches() {
    let drops = Arc::new(AtomicUsize::new(0));
    let pool = tagged_pool(2, None, &drops);
    std::thread::scope(|s| {
        s.spawn(|| {
            if !be_on(0) {
                return;
            }
            let objects: Vec<_> = (0..200).map(|_| pool.get()).collect();
            assert!(objects.iter().all(|b| PoolBox::node(b) == 0));
            let created = pool.created();
            if !be_on(1) {
                return;
            }
            for b in objects {
                drop(b);
                assert_eq!(
                    pool.idle_on_node(1),
                    0,
                    "an object of node 0 in node 1's depot"
                );
            }
            // Node 1's cache holds at most 4: the spills sent the rest home.
            assert_eq!(
                pool.idle_on_node(0) + pool.cached(),
                created,
                "objects lost on the way home"
            );
            assert!(
                pool.idle_on_node(0) >= created - 4 * 8,
                "spills did not send the objects home"
            );
            pool.flush();
            assert_eq!(pool.idle_on_node(0), created, "objects did not go home");
            assert_eq!(pool.idle_on_node(1), 0);
            // A get on node 1 now grows node 1 (node 0's objects stay home) ...
            let b = pool.get();
            assert_eq!(PoolBox::node(&b), 1, "a get on node 1 took node 0's memory");
            drop(b);
            if !portable() {
                inject_node(None);
            }
        });
    });
    if pool.created() > 0 {
        pool.flush();
        assert_eq!(pool.idle(), pool.created());
    }
    assert!(pool.created() > 0 || !two_cpus(), "the test did not run");
}

/// Whether a portable thread can be put on nodes 0 and 1 (CPUs 0 and 1).
fn two_cpus() -> bool {
    !portable() || common::allowed_cpus().len() >= 2
}

/// A bounded NUMA pool at its bound takes what other nodes' depots hold rather than
/// failing.
#[test]
fn bounded_pool_takes_from_other_nodes() {
    let drops = Arc::new(AtomicUsize::new(0));
    let pool = tagged_pool(2, Some(8), &drops);
    std::thread::scope(|s| {
        s.spawn(|| {
            if !be_on(0) {
                return;
            }
            let objects: Vec<_> = (0..8)
                .map(|_| pool.try_get().expect("below the bound"))
                .collect();
            assert!(pool.try_get().is_none(), "beyond the bound");
            drop(objects);
            pool.flush();
            assert_eq!(pool.idle_on_node(0), 8);
            if !be_on(1) {
                return;
            }
            let again: Vec<_> = (0..8)
                .map(|_| pool.try_get().expect("node 0's objects serve node 1"))
                .collect();
            assert!(again.iter().all(|b| PoolBox::node(b) == 0));
            assert_eq!(pool.created(), 8);
            drop(again);
            pool.flush();
            assert_eq!(pool.idle_on_node(0), 8, "they went home");
            if !portable() {
                inject_node(None);
            }
        });
    });
    assert!(pool.created() > 0 || !two_cpus(), "the test did not run");
}

/// The real node: a NUMA pool in the process-wide NUMA arena puts its slabs on the
/// node the thread runs on (bound with feature `numa`, first touch otherwise); the
/// kernel says where every touched page of every object is (`move_pages`).
#[test]
fn slabs_on_the_real_node() {
    let pool = Pool::builder(|| [7u64; 64])
        .numa(true)
        .build()
        .expect("pool");
    let node = percid::current_node();
    let objects: Vec<_> = (0..1000).map(|_| pool.get()).collect();
    let mut pages = 0;
    for b in &objects {
        assert_eq!(b[63], 7);
        let on = percid::numa::pages_on(b.as_ptr().cast(), std::mem::size_of::<[u64; 64]>())
            .expect("move_pages");
        for page in on {
            assert_eq!(page as u32, node, "a slab page on node {page}, not {node}");
            pages += 1;
        }
        if pool.nodes() == 1 {
            assert_eq!(PoolBox::node(b), 0);
        }
    }
    assert!(pages >= 1000);
    drop(objects);
    pool.flush();
    assert_eq!(pool.idle(), pool.created());
}

/// Bad NUMA configurations give a typed error; a NUMA arena serves plain pools too.
#[test]
fn numa_builder_errors() {
    let plain: &'static Arena = Box::leak(Box::new(Arena::with_capacity(4, 2)));
    let numa: &'static Arena = Box::leak(Box::new(Arena::with_nodes(4, 2, 2)));
    let err = Pool::builder(|| 0u64)
        .numa(true)
        .arena(plain)
        .build()
        .unwrap_err();
    assert_eq!(err, PoolError::NotNumaArena);
    assert!(err.to_string().contains("NUMA arena"), "{err}");
    // The other checks still come first.
    let err = Pool::builder(|| 0u64)
        .numa(true)
        .arena(plain)
        .capacity(0)
        .build()
        .unwrap_err();
    assert_eq!(err, PoolError::ZeroCapacity);
    let pool = Pool::builder(|| 0u64)
        .numa(true)
        .arena(numa)
        .build()
        .unwrap();
    assert_eq!(pool.nodes(), 2);
    let pool = Pool::builder(|| 0u64).arena(numa).build().unwrap();
    assert_eq!(
        pool.nodes(),
        1,
        "a plain pool in a NUMA arena has one depot"
    );
    let pool = Pool::builder(|| 0u64).numa(true).build().unwrap();
    assert_eq!(pool.nodes() as u32, percid::cid::numa_global().nodes());
    assert_eq!(*pool.get(), 0);
}
