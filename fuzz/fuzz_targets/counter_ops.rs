//! Sequences of counter operations on simulated cids, with injected aborts, checked
//! step by step against a model of the totals.
//!
//! The process runs the simulated backend. Each input builds a `Counter` with a
//! fuzzed batch (0..=64) and a `SignedCounter`, both from one arena of 4 cids and 2
//! lanes shared by the whole process (so a counter reuses the words an earlier
//! input's counters freed, which must come back zeroed). Each step moves the thread
//! to a cid (4 and 5 are beyond the arena: the lane fallback), sets an abort rate
//! (high rates also push operations to the lanes) and runs one operation; the model
//! is the wrapping total of the adds minus what `take` returned. After every step:
//!
//! * `sum()` equals the model, exactly;
//! * `take()` returns exactly the model's untaken amount;
//! * `approx()` is `(value, max_error)` with `value <= sum <= value + max_error`;
//! * `compare(n)` equals `model.cmp(&n)`.
//!
//! A `NumaCounter` in a 3-node arena runs beside them: each step also places the
//! thread on a simulated node (3 is beyond the arena: the lane). Its `sum()` and
//! `take()` follow their own model exactly, and an add made with no injected aborts
//! on a node and cid inside the arena must land in that node's plane.
//!
//! The `approx`/`compare` bound is checked while the adds made to the counter add up
//! to at most `u64::MAX / 2` (no shard or total has wrapped: an approximate total of a
//! wrapped counter means nothing); set `PERCID_FUZZ_STRICT_APPROX=1` to check it
//! everywhere.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use percid::cid::Arena;
use percid::cid::Shard;
use percid::numa::Topology;
use percid::testing::{
    inject_node, seed_simulated_aborts, set_simulated_abort_rate, set_simulated_cid,
};
use percid::{Counter, NumaCounter, SignedCounter};
use std::cmp::Ordering;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};

/// Simulated cids steps move to: the arena has 4, so 4 and 5 use the lanes.
const STEP_CIDS: u8 = 6;
const MAX_BATCH: u8 = 64;
/// Nodes of the NUMA arena; steps move to one more (the lane fallback).
const NODES: u32 = 3;

#[derive(Arbitrary, Debug)]
enum Op {
    Add(u64),
    /// A small add, so totals stay in the range where `approx` is checked.
    AddSmall(u16),
    Inc,
    SignedAdd(i64),
    SignedSub(i64),
    Take,
    SignedTake,
    Sum,
    Approx,
    Compare(u64),
    /// Compares with the model's value plus a small offset (equality is likely).
    CompareNear(i8),
    NumaAdd(u64),
    NumaTake,
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
    batch: u8,
    steps: Vec<Step>,
}

/// The model of one counter.
#[derive(Default)]
struct Model {
    /// Wrapping sum of every add.
    added: u64,
    /// Wrapping sum of what `take` returned.
    taken: u64,
    /// Sum of every add, not wrapped: where `approx` is meaningful.
    added_exact: u128,
}

impl Model {
    fn add(&mut self, n: u64) {
        self.added = self.added.wrapping_add(n);
        self.added_exact += u128::from(n);
    }

    fn untaken(&self) -> u64 {
        self.added.wrapping_sub(self.taken)
    }

    /// Whether the approximate total is bound to the sum: no batch (`approx` is the
    /// sum), or nothing wrapped.
    fn approx_checked(&self, batch: u64) -> bool {
        batch == 0
            || self.added_exact <= u128::from(u64::MAX / 2)
            || STRICT_APPROX.load(AtomicOrdering::Relaxed)
    }
}

static STRICT_APPROX: AtomicBool = AtomicBool::new(false);

/// The NUMA arena and topology every input's `NumaCounter` comes from.
fn numa_layout() -> (&'static Arena, &'static Topology) {
    static LAYOUT: OnceLock<(&'static Arena, &'static Topology)> = OnceLock::new();
    *LAYOUT.get_or_init(|| {
        let arena = Box::leak(Box::new(Arena::with_nodes(4, 2, NODES)));
        let topology = Box::leak(Box::new(Topology::uniform(NODES, 1).unwrap()));
        (&*arena, &*topology)
    })
}

/// What the NUMA counter's plane of `node` holds.
fn plane_total(counter: &NumaCounter, node: u32) -> u64 {
    counter
        .shards()
        .iter()
        .filter(|(shard, _)| matches!(shard, Shard::NodeCid { node: n, .. } if *n == node))
        .fold(0u64, |acc, (_, v)| acc.wrapping_add(*v))
}

/// The arena every input's counters come from.
fn arena() -> &'static Arena {
    static ARENA: OnceLock<&'static Arena> = OnceLock::new();
    ARENA.get_or_init(|| Box::leak(Box::new(Arena::with_capacity(4, 2))))
}

fuzz_target!(
    init: {
        // SAFETY: set before any thread exists and before percid reads it.
        unsafe { std::env::set_var("PERCID_BACKEND", "simulated") };
        let strict = std::env::var("PERCID_FUZZ_STRICT_APPROX").is_ok_and(|v| v == "1");
        STRICT_APPROX.store(strict, AtomicOrdering::Relaxed);
    },
    |input: Input| {
        run(&input);
    }
);

fn run(input: &Input) {
    // The same aborts every time an input runs: a crash reproduces on its own.
    seed_simulated_aborts(0x5eed);
    let batch = u64::from(input.batch % (MAX_BATCH + 1));
    let counter = Counter::builder()
        .arena(arena())
        .batch(batch)
        .build()
        .unwrap();
    let gauge = Counter::builder().arena(arena()).build_signed().unwrap();
    let (numa_arena, topology) = numa_layout();
    let numa = NumaCounter::new_in(numa_arena, Some(topology)).unwrap();
    let mut numa_model = Model::default();
    let mut model = Model::default();
    let mut signed: i64 = 0;
    assert_eq!(numa.sum(), 0, "a fresh NumaCounter reads zero");
    // Fresh counters read zero, whatever the words held for an earlier input.
    check(&counter, &gauge, &model, signed, batch);

    for step in &input.steps {
        set_simulated_cid(u32::from(step.cid % STEP_CIDS));
        set_simulated_abort_rate(u32::from(step.abort_rate) * 4);
        let node = u32::from(step.node) % (NODES + 1);
        inject_node(Some(node));
        match step.op {
            Op::NumaAdd(n) => {
                let before = plane_total(&numa, node);
                numa.add(n);
                numa_model.add(n);
                if step.abort_rate == 0 && node < NODES && step.cid % STEP_CIDS < 4 {
                    assert_eq!(
                        plane_total(&numa, node),
                        before.wrapping_add(n),
                        "the add missed node {node}'s plane"
                    );
                }
            }
            Op::NumaTake => {
                let taken = numa.take();
                assert_eq!(taken, numa_model.untaken(), "NumaCounter take");
                numa_model.taken = numa_model.taken.wrapping_add(taken);
            }
            Op::Add(n) => {
                counter.add(n);
                model.add(n);
            }
            Op::AddSmall(n) => {
                counter.add(u64::from(n));
                model.add(u64::from(n));
            }
            Op::Inc => {
                counter.inc();
                model.add(1);
            }
            Op::SignedAdd(n) => {
                gauge.add(n);
                signed = signed.wrapping_add(n);
            }
            Op::SignedSub(n) => {
                gauge.sub(n);
                signed = signed.wrapping_sub(n);
            }
            Op::Take => {
                let taken = counter.take();
                assert_eq!(taken, model.untaken(), "take");
                model.taken = model.taken.wrapping_add(taken);
            }
            Op::SignedTake => {
                assert_eq!(gauge.take(), signed, "signed take");
                signed = 0;
            }
            Op::Sum => {
                assert_eq!(counter.sum(), model.untaken());
                assert_eq!(gauge.sum(), signed);
            }
            Op::Approx => check_approx(&counter, &model, batch),
            Op::Compare(n) => check_compare(&counter, &model, batch, n),
            Op::CompareNear(d) => {
                let n = model.untaken().wrapping_add_signed(i64::from(d));
                check_compare(&counter, &model, batch, n);
            }
        }
        check(&counter, &gauge, &model, signed, batch);
        assert_eq!(numa.sum(), numa_model.untaken(), "NumaCounter sum");
    }
}

/// The checks made after every step.
fn check(counter: &Counter, gauge: &SignedCounter, model: &Model, signed: i64, batch: u64) {
    assert_eq!(counter.sum(), model.untaken(), "sum");
    assert_eq!(gauge.sum(), signed, "signed sum");
    check_approx(counter, model, batch);
    let m = model.untaken();
    for n in [0, m.saturating_sub(1), m, m.saturating_add(1), u64::MAX] {
        check_compare(counter, model, batch, n);
    }
}

fn check_approx(counter: &Counter, model: &Model, batch: u64) {
    let (value, max_error) = counter.approx();
    if batch == 0 {
        assert_eq!(
            (value, max_error),
            (model.untaken(), 0),
            "approx without a batch"
        );
        return;
    }
    // At most (batch - 1) per cid and lane of the arena.
    assert!(
        max_error <= (4 + 2) * (batch - 1),
        "approx error {max_error} with batch {batch}"
    );
    if !model.approx_checked(batch) {
        return;
    }
    let sum = model.untaken();
    assert!(
        value <= sum,
        "approx ({value}, {max_error}) above the sum {sum}"
    );
    assert!(
        sum - value <= max_error,
        "approx ({value}, {max_error}) misses the sum {sum}"
    );
}

fn check_compare(counter: &Counter, model: &Model, batch: u64, n: u64) {
    if !model.approx_checked(batch) {
        return;
    }
    let expected: Ordering = model.untaken().cmp(&n);
    assert_eq!(
        counter.compare(n),
        expected,
        "compare({n}), sum {}",
        model.untaken()
    );
}
