//! `NumaCounter` and the NUMA arena: exact totals and per-node totals under the
//! torture harness (64 threads on 2 CPUs, signals, migrations) with nodes injected
//! into 2- and 4-node layouts, moves between nodes, out-of-range nodes, and the
//! placement of the real node's plane — in every backend mode.
//!
//! This machine has one NUMA node: `percid::testing::inject_node` makes the rseq
//! sections read a thread-local node instead of the kernel's `node_id` (still inside
//! the section), and sets the simulated backend's node, so the many-node paths run.

#[macro_use]
mod common;

use common::{Torture, forced_backend, quarter, tick};
use percid::cid::{Arena, Shard};
use percid::numa::{Binding, Topology};
use percid::testing::inject_node;
use percid::{NumaCounter, current_node};
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether this process runs every thread on the portable backend (no nodes: every
/// add goes to the lane of the thread's CPU).
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

/// True when some lane holds a value: an operation fell back from its node's plane
/// (portable backend, or 64 aborts in a row), so per-node totals follow the lane's
/// CPU instead of the injected node.
fn lanes_used(counter: &NumaCounter) -> bool {
    counter
        .shards()
        .iter()
        .any(|(shard, v)| matches!(shard, Shard::Lane(_)) && *v != 0)
}

/// Every thread injects node `i % nodes` and adds; threads hop to the next node every
/// 4096 operations. Totals and per-node totals are exact.
fn injected(nodes: u32, t: Torture) {
    let (arena, topology) = layout(nodes);
    let counter = NumaCounter::new_in(arena, Some(topology)).expect("counter");
    let per_node: Vec<AtomicU64> = (0..nodes).map(|_| AtomicU64::new(0)).collect();
    t.run(|i, ops| {
        let mut node = i as u32 % nodes;
        inject_node(Some(node));
        let mut mine = vec![0u64; nodes as usize];
        for k in 0..ops {
            tick();
            if k % 4096 == 4095 {
                node = (node + 1) % nodes;
                inject_node(Some(node));
            }
            let v = if k % 8 == 0 { i as u64 + 2 } else { 1 };
            counter.add(v);
            mine[node as usize] += v;
        }
        inject_node(None);
        for (n, v) in mine.iter().enumerate() {
            per_node[n].fetch_add(*v, Ordering::Relaxed);
        }
    });
    let expected: Vec<u64> = per_node.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    let total: u64 = expected.iter().sum();
    assert_eq!(counter.sum(), total, "NumaCounter lost or invented adds");
    let by_node: Vec<u64> = (0..nodes).map(|n| counter.sum_node(n)).collect();
    assert_eq!(
        by_node.iter().sum::<u64>(),
        total,
        "per-node totals do not add up to the total"
    );
    if !lanes_used(&counter) {
        assert_eq!(by_node, expected, "adds landed on the wrong node's plane");
        for (shard, _) in counter.shards() {
            if let Shard::NodeCid { node, .. } = shard {
                assert!(node < nodes, "a shard outside the layout: {shard:?}");
            }
        }
    } else {
        assert!(
            portable() || common::simulated() || t.storm || t.migrate,
            "lanes used on a quiet rseq run"
        );
    }
}

/// The process-wide `NumaCounter` on the machine's real node(s).
fn real_node(t: Torture) {
    let counter = NumaCounter::new();
    let expected = AtomicU64::new(0);
    t.run(|i, ops| {
        let mut mine = 0;
        for _ in 0..ops {
            tick();
            counter.add(i as u64 % 3 + 1);
            mine += i as u64 % 3 + 1;
        }
        expected.fetch_add(mine, Ordering::Relaxed);
    });
    let expected = expected.load(Ordering::Relaxed);
    assert_eq!(counter.sum(), expected);
    let by_node: u64 = (0..counter.nodes()).map(|n| counter.sum_node(n)).sum();
    assert_eq!(by_node, expected, "per-node totals do not add up");
}

torture_variants! {
    two_nodes => |t| super::injected(2, quarter(t));
    four_nodes => |t| super::injected(4, quarter(t));
    real_node => |t| super::real_node(quarter(t));
}

/// "A thread moved to node m writes node-m memory from its next operation on": what
/// was counted on the old node stays there.
#[test]
fn moving_between_nodes() {
    if portable() {
        return;
    }
    let (arena, topology) = layout(2);
    let counter = NumaCounter::new_in(arena, Some(topology)).expect("counter");
    std::thread::spawn(move || {
        inject_node(Some(0));
        for _ in 0..1000 {
            counter.inc();
        }
        assert_eq!((counter.sum_node(0), counter.sum_node(1)), (1000, 0));
        inject_node(Some(1));
        if percid::rseq::status().backend == percid::rseq::Backend::Rseq {
            assert_eq!(current_node(), 1, "current_node follows the injection");
        }
        for _ in 0..500 {
            counter.inc();
        }
        assert_eq!((counter.sum_node(0), counter.sum_node(1)), (1000, 500));
        assert_eq!(counter.sum(), 1500);
        inject_node(None);
    })
    .join()
    .expect("worker");
}

/// A node beyond the arena's planes (a CPU brought online later, a bad injection)
/// goes to the thread's lane: nothing is lost.
#[test]
fn node_beyond_the_layout_uses_a_lane() {
    let (arena, topology) = layout(4);
    let counter = NumaCounter::new_in(arena, Some(topology)).expect("counter");
    std::thread::scope(|s| {
        for i in 0..8u32 {
            let counter = &counter;
            s.spawn(move || {
                inject_node(Some(if i % 2 == 0 { 7 } else { 1 }));
                for _ in 0..10_000 {
                    counter.inc();
                }
                inject_node(None);
            });
        }
    });
    assert_eq!(counter.sum(), 80_000);
    if !portable() {
        assert!(lanes_used(&counter), "node 7 should have used the lanes");
        assert!(counter.sum_node(1) >= 40_000);
    }
}

/// The real node's plane: its touched pages are on that node (the kernel says so,
/// through `move_pages`), untouched ones are not present, no page is elsewhere, and
/// the binding is strict with the `numa` feature, first touch without.
#[test]
fn placement_on_the_real_node() {
    let counter = NumaCounter::new();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..10_000 {
                    counter.inc();
                }
            });
        }
    });
    assert_eq!(counter.sum(), 20_000);
    let arena = percid::cid::numa_global();
    let node = current_node();
    let topology = percid::numa::topology();
    assert!(node < topology.node_id_bound());
    let stats = arena.node_stats();
    assert_eq!(stats.len() as u32, arena.nodes());
    let mut touched = 0;
    for plane in 0..arena.nodes() {
        for (start, len) in arena.node_regions(plane) {
            let placement = percid::numa::placement(start, len).expect("move_pages");
            for (on, pages) in &placement.per_node {
                assert_eq!(
                    *on, plane,
                    "{pages} pages of node {plane}'s plane on node {on}"
                );
                touched += pages;
            }
            assert!(placement.absent > 0, "an untouched page became resident");
        }
    }
    if !portable() {
        assert!(touched > 0, "no page of any plane is resident");
        let binding = stats[node as usize]
            .binding
            .clone()
            .expect("plane reserved");
        if cfg!(feature = "numa") && std::env::var("PERCID_NUMA_BIND").as_deref() != Ok("off") {
            assert_eq!(binding, Binding::Strict);
        } else {
            assert_eq!(binding, Binding::FirstTouch);
        }
    }
}

/// A plane for a node the machine does not have: binding fails (with the feature)
/// or is first touch (without), and the plane still works.
#[test]
fn planes_of_absent_nodes_still_count() {
    if portable() {
        return;
    }
    let absent = percid::numa::topology().node_id_bound();
    let (arena, topology) = layout(absent + 1);
    let counter = NumaCounter::new_in(arena, Some(topology)).expect("counter");
    std::thread::scope(|s| {
        s.spawn(|| {
            inject_node(Some(absent));
            for _ in 0..100 {
                counter.inc();
            }
            inject_node(None);
        });
    });
    assert_eq!(counter.sum_node(absent), 100);
    let binding = arena.node_stats()[absent as usize]
        .binding
        .clone()
        .expect("plane reserved");
    if cfg!(feature = "numa") && std::env::var("PERCID_NUMA_BIND").as_deref() != Ok("off") {
        assert!(matches!(binding, Binding::Failed(_)), "{binding:?}");
    } else {
        assert_eq!(binding, Binding::FirstTouch);
    }
}
