//! Torture tests of every critical-section operation of `percid::cid::Word`: many more
//! threads than CPUs, optionally under a signal storm and constant migrations (see
//! `tests/common/mod.rs`), with exact results checked at the end.
//!
//! Each operation runs in four variants (`plain`, `storm`, `migrate`,
//! `storm_migrate`); the `capacity` tests repeat them on an arena with room for one
//! cid and one lane, so every other index falls back to the lane. The `soak` tests
//! (ignored; `scripts/soak` loops them) are the same runs, ten times longer.
//!
//! Every test passes in every backend mode (glibc's rseq, self-registered rseq,
//! portable, simulated, cpu_id index); mode-specific facts are asserted only in the
//! mode they belong to.

#[macro_use]
mod common;

use common::{Torture, allowed_cpus, scaled, simulated_cids, tick};
use percid::cid::{Arena, PushOutcome, Shard, Word, Words};
use percid::rseq::{Backend, status};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Asserts that an operation reported a shard this arena has.
#[inline]
fn check_shard(arena: &Arena, shard: Shard) {
    let ok = match shard {
        Shard::Cid(c) => c < arena.cid_capacity(),
        Shard::NodeCid { node, cid } => node < arena.nodes() && cid < arena.cid_capacity(),
        Shard::Lane(l) => l < arena.lanes(),
    };
    assert!(ok, "operation reported {shard:?}, outside {arena:?}");
}

/// Asserts that some lane holds a value when the mode must have used one: with a
/// capacity of one cid, every thread on another index goes to the lane.
fn check_lane_used(arena: &Arena, w: Word<'_>) {
    if arena.cid_capacity() > 1 {
        return;
    }
    let must = match status().backend {
        Backend::Portable => true,
        Backend::Simulated => simulated_cids() > 1,
        Backend::Rseq => allowed_cpus().len() > 1,
    };
    let used = w
        .shards()
        .any(|(s, v)| matches!(s, Shard::Lane(_)) && v.load(Ordering::Relaxed) != 0);
    assert!(
        used || !must,
        "with one cid of capacity, no lane was ever written ({arena:?})"
    );
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------
// add

/// Every thread adds 1 most of the time, sometimes a large value or `u64::MAX` (that
/// is, -1, wrapping); the sum must be exactly the wrapping sum of everything added,
/// and the neighbouring words untouched.
fn add(arena: &Arena, t: Torture) {
    let words = arena.alloc(4).expect("alloc");
    let w = words.word(2);
    let expected = AtomicU64::new(0);
    t.run(|i, ops| {
        let big = (i as u64 + 1) << 33;
        let mut mine = 0u64;
        for k in 0..ops {
            tick();
            let v = match k % 16 {
                0 => big,
                7 => u64::MAX,
                _ => 1,
            };
            check_shard(arena, w.add(v));
            mine = mine.wrapping_add(v);
        }
        expected.fetch_add(mine, Ordering::Relaxed);
    });
    assert_eq!(
        w.sum(),
        expected.load(Ordering::Relaxed),
        "add lost or invented updates"
    );
    for i in [0, 1, 3] {
        assert_eq!(
            words.word(i).sum(),
            0,
            "add wrote word {i}, next to its own"
        );
    }
    check_lane_used(arena, w);
}

// ---------------------------------------------------------------------------------
// compare_store

/// Every thread increments "its current shard" with a compare-and-store loop; the
/// shards must sum to the number of successful increments.
fn compare_store(arena: &Arena, t: Torture) {
    let words = arena.alloc(2).expect("alloc");
    let w = words.word(1);
    let failures = AtomicU64::new(0);
    t.run(|_, ops| {
        let mut guess = 0;
        let mut failed = 0u64;
        for _ in 0..ops {
            tick();
            loop {
                match w.compare_store(guess, guess + 1) {
                    Ok(shard) => {
                        check_shard(arena, shard);
                        guess += 1;
                        break;
                    }
                    Err(seen) => {
                        assert_ne!(seen, guess, "compare_store failed on an equal value");
                        guess = seen;
                        failed += 1;
                    }
                }
            }
        }
        failures.fetch_add(failed, Ordering::Relaxed);
    });
    assert_eq!(
        w.sum(),
        t.ops_total,
        "compare_store lost or invented increments"
    );
    assert_eq!(
        words.word(0).sum(),
        0,
        "compare_store wrote the word next to its own"
    );
    eprintln!("compare_store: {} failed compares", failures.into_inner());
    check_lane_used(arena, w);
}

// ---------------------------------------------------------------------------------
// list_pop / list_push

/// Nodes of the list tests.
const NODES: usize = 4096;
/// Bits of a list head (and link) holding the node address.
const NODE_MASK: u64 = (1 << 48) - 1;

/// A list node: its first word is the link the list operations write.
#[repr(C, align(16))]
struct Node {
    link: AtomicU64,
    /// 0 while listed or stashed; `thread + 1` while a thread holds it.
    owner: AtomicU64,
    id: u64,
    /// Times a thread got it.
    visits: AtomicU64,
}

/// The nodes, with address checks.
struct Nodes(Box<[Node]>);

impl Nodes {
    fn new() -> Nodes {
        Nodes(
            (0..NODES as u64)
                .map(|id| Node {
                    link: AtomicU64::new(0),
                    owner: AtomicU64::new(0),
                    id,
                    visits: AtomicU64::new(0),
                })
                .collect(),
        )
    }

    fn addr(&self, i: usize) -> usize {
        let addr = &self.0[i] as *const Node as usize;
        assert!(addr as u64 <= NODE_MASK && addr.is_multiple_of(8));
        addr
    }

    /// The index of the node at `addr`; panics for anything else.
    fn index(&self, addr: usize) -> usize {
        let base = self.0.as_ptr() as usize;
        let size = std::mem::size_of::<Node>();
        let i = addr.wrapping_sub(base) / size;
        assert!(
            addr >= base && (addr - base).is_multiple_of(size) && i < NODES,
            "the list gave address {addr:#x}, not one of its nodes"
        );
        i
    }
}

/// A fixed set of nodes, pushed at the start (those that do not fit wait in a spare
/// pool); threads pop a node (or take one of their stash, or a spare), claim it (which
/// must succeed: a node handed out twice fails here), release it and push it back
/// (keeping it in their stash when the list is full). At the end every list is walked:
/// exactly the original nodes, once each, with the lengths the heads claim.
fn lists(arena: &Arena, t: Torture, max_len: u16) {
    let words = arena.alloc(1).expect("alloc");
    let w = words.word(0);
    let nodes = Nodes::new();
    let spare = Mutex::new(Vec::new());
    for i in 0..NODES {
        let addr = nodes.addr(i);
        // SAFETY: the node is ours, 16-byte aligned, below 2^48, its first word is its
        // link, and it lives (in `nodes`) until after the lists are dropped.
        if unsafe { w.list_push(addr, max_len) }.is_err() {
            lock(&spare).push(addr);
        }
    }
    let empty = AtomicU64::new(0);
    let full = AtomicU64::new(0);
    let visits_expected = AtomicU64::new(0);
    t.run(|i, ops| {
        let me = i as u64 + 1;
        let mut stash: Vec<usize> = Vec::new();
        let mut held: Vec<usize> = Vec::with_capacity(3);
        let (mut empties, mut fulls, mut visits) = (0u64, 0u64, 0u64);
        let mut k = 0;
        while k < ops {
            tick();
            // One to three nodes at a time, so lists also drain and fill up.
            let want = 1 + (k % 3) as usize;
            while held.len() < want {
                // SAFETY: only our nodes are ever listed; they outlive the lists.
                match unsafe { w.list_pop() } {
                    Some((addr, shard)) => {
                        check_shard(arena, shard);
                        held.push(addr);
                    }
                    None => {
                        empties += 1;
                        match stash.pop().or_else(|| lock(&spare).pop()) {
                            Some(addr) => held.push(addr),
                            None => break,
                        }
                    }
                }
            }
            if held.is_empty() {
                std::thread::yield_now();
                continue;
            }
            for &addr in &held {
                let index = nodes.index(addr);
                let node = &nodes.0[index];
                if let Err(other) =
                    node.owner
                        .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                {
                    panic!(
                        "node {index} handed out twice: worker {} holds it while worker {i} \
                         got it",
                        other - 1
                    );
                }
                assert_eq!(node.id, index as u64, "node {index} corrupted");
                node.visits.fetch_add(1, Ordering::Relaxed);
                visits += 1;
            }
            for &addr in &held {
                nodes.0[nodes.index(addr)].owner.store(0, Ordering::Release);
            }
            for addr in held.drain(..) {
                // SAFETY: as above; the node is ours until pushed.
                if unsafe { w.list_push(addr, max_len) }.is_err() {
                    fulls += 1;
                    stash.push(addr);
                }
            }
            if let Some(older) = stash.pop() {
                // SAFETY: as above.
                if unsafe { w.list_push(older, max_len) }.is_err() {
                    stash.push(older);
                }
            }
            k += 1;
        }
        for addr in stash {
            // SAFETY: as above.
            if unsafe { w.list_push(addr, max_len) }.is_err() {
                lock(&spare).push(addr);
            }
        }
        empty.fetch_add(empties, Ordering::Relaxed);
        full.fetch_add(fulls, Ordering::Relaxed);
        visits_expected.fetch_add(visits, Ordering::Relaxed);
    });

    let mut seen = vec![false; NODES];
    let mut mark = |addr: usize, place: &str| {
        let i = nodes.index(addr);
        assert!(
            !seen[i],
            "node {i} is twice in the lists and spares (again in {place})"
        );
        seen[i] = true;
    };
    let mut listed = 0;
    for (shard, head) in w.shards() {
        let h = head.load(Ordering::Acquire);
        let claimed = h >> 48;
        assert!(
            claimed <= u64::from(max_len),
            "{shard:?} holds {claimed} > {max_len} nodes"
        );
        let (mut addr, mut len) = ((h & NODE_MASK) as usize, claimed);
        let mut walked = 0;
        while addr != 0 {
            assert!(
                len > 0,
                "{shard:?}: the list is longer than its head says ({claimed})"
            );
            mark(addr, &format!("{shard:?}"));
            let link = nodes.0[nodes.index(addr)].link.load(Ordering::Relaxed);
            assert_eq!(
                link >> 48,
                len - 1,
                "{shard:?}: a link's length disagrees with its position"
            );
            addr = (link & NODE_MASK) as usize;
            len -= 1;
            walked += 1;
        }
        assert_eq!(
            walked, claimed,
            "{shard:?}: the head claims {claimed} nodes"
        );
        listed += walked;
    }
    for &addr in lock(&spare).iter() {
        mark(addr, "the spares");
    }
    let missing: Vec<usize> = (0..NODES).filter(|&i| !seen[i]).collect();
    assert!(missing.is_empty(), "nodes lost: {missing:?}");
    for node in nodes.0.iter() {
        assert_eq!(
            node.owner.load(Ordering::Relaxed),
            0,
            "node {} still owned",
            node.id
        );
    }
    let visits: u64 = nodes
        .0
        .iter()
        .map(|n| n.visits.load(Ordering::Relaxed))
        .sum();
    assert_eq!(
        visits,
        visits_expected.into_inner(),
        "the nodes' visits disagree with the workers' counts"
    );
    eprintln!(
        "lists (max_len {max_len}): {listed} listed, {} spare, {} empty pops, {} full pushes",
        lock(&spare).len(),
        empty.into_inner(),
        full.into_inner()
    );
    // Unlink before the nodes go: the words are zeroed when dropped.
    drop(words);
}

// ---------------------------------------------------------------------------------
// push_payload: per-shard rings, one consumer

const TAIL: usize = 0;
const HEAD: usize = 1;
const BUFFER: usize = 2;
/// The producers' copy of the head.
const CACHED: usize = 3;
/// Slots per ring - 1.
const MASK: u64 = 255;
/// Words per slot: (producer, sequence number).
const SLOT_WORDS: usize = 2;
type Buffer = [AtomicU64; (MASK as usize + 1) * SLOT_WORDS];

/// Installs a slot buffer for `shard` unless another producer did first.
fn install_buffer(wb: Word<'_>, shard: Shard, installed: &AtomicU64) {
    let ptr = Box::into_raw(Box::new(
        [const { AtomicU64::new(0) }; (MASK as usize + 1) * 2],
    ));
    let word = wb.at(shard).expect("NoBuffer names a shard of the arena");
    if word
        .compare_exchange(0, ptr as u64, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        installed.fetch_add(1, Ordering::Relaxed);
    } else {
        // SAFETY: `ptr` came from `Box::into_raw` just above and was never published.
        drop(unsafe { Box::from_raw(ptr) });
    }
}

/// What the consumer saw.
struct Consumed {
    received: u64,
    passes: u64,
}

/// The one consumer: drains every shard's ring in order, checking that each message
/// comes once, and that each producer's messages come in order within a shard.
fn consume(words: &Words<'_>, t: &Torture, stop: &AtomicBool) -> Option<Consumed> {
    let (wt, wh, wb) = (words.word(TAIL), words.word(HEAD), words.word(BUFFER));
    let total = t.ops_total;
    // Where each message was seen: (shard, position in its ring).
    let mut got: Vec<Vec<Option<(Shard, u64)>>> = (0..t.threads)
        .map(|i| vec![None; t.ops_for(i) as usize])
        .collect();
    // Per shard, per producer: 1 + the last sequence number seen (0: none yet).
    let mut last: HashMap<Shard, Vec<u64>> = HashMap::new();
    let mut received = 0u64;
    let mut passes = 0u64;
    let mut progress = Instant::now();
    while received < total {
        if stop.load(Ordering::Acquire) {
            return None;
        }
        passes += 1;
        let mut moved = false;
        for (shard, tail) in wt.shards() {
            let t_pos = tail.load(Ordering::Acquire);
            let head = wh.at(shard).expect("head word of a listed shard");
            let h = head.load(Ordering::Relaxed);
            if t_pos == h {
                continue;
            }
            assert!(
                t_pos.wrapping_sub(h) <= MASK + 1,
                "{shard:?}: tail {t_pos} is more than a ring ahead of head {h}"
            );
            let buffer = wb.at(shard).expect("buffer word").load(Ordering::Acquire);
            assert_ne!(buffer, 0, "{shard:?}: messages committed without a buffer");
            // SAFETY: installed buffers are `Buffer`s, freed only after the consumer.
            let buffer = unsafe { &*(buffer as *const Buffer) };
            let last = last.entry(shard).or_insert_with(|| vec![0; t.threads]);
            for pos in h..t_pos {
                let slot = (pos & MASK) as usize * SLOT_WORDS;
                let producer = buffer[slot].load(Ordering::Relaxed) as usize;
                let seq = buffer[slot + 1].load(Ordering::Relaxed);
                assert!(
                    producer < t.threads && seq < t.ops_for(producer),
                    "{shard:?} position {pos}: garbage message ({producer}, {seq})"
                );
                if let Some((first, at)) = got[producer][seq as usize] {
                    panic!(
                        "{shard:?} position {pos}: message ({producer}, {seq}) received \
                         twice (first at {first:?} position {at})"
                    );
                }
                got[producer][seq as usize] = Some((shard, pos));
                assert!(
                    last[producer] <= seq,
                    "{shard:?} position {pos}: producer {producer}'s message {seq} after its {}",
                    last[producer] - 1
                );
                last[producer] = seq + 1;
                received += 1;
            }
            head.store(t_pos, Ordering::Release);
            moved = true;
        }
        if moved {
            progress = Instant::now();
        } else {
            assert!(
                progress.elapsed() < Duration::from_secs(120),
                "the rings made no progress for 2 minutes: {received} of {total} received"
            );
            std::thread::yield_now();
        }
    }
    Some(Consumed { received, passes })
}

/// Sets the flag when dropped: the producers' run tells the consumer it ended (with a
/// panic), the consumer tells the producers it failed.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Every worker produces its messages `(worker, 0..ops)` into the ring of its current
/// shard (spinning while the ring is full, installing a buffer when the shard has
/// none); one consumer outside the torture drains the rings. Every message must
/// arrive exactly once, in order per producer within a shard.
fn rings(arena: &Arena, t: Torture) {
    let words = arena.alloc(4).expect("alloc");
    let wb = words.word(BUFFER);
    let installed = AtomicU64::new(0);
    let fulls = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let consumer_failed = AtomicBool::new(false);
    let consumed = std::thread::scope(|s| {
        let consumer = s.spawn(|| {
            let failed = SetOnDrop(&consumer_failed);
            let consumed = consume(&words, &t, &stop);
            std::mem::forget(failed);
            consumed
        });
        let _stop = SetOnDrop(&stop);
        t.run(|i, ops| {
            let mut full = 0u64;
            for seq in 0..ops {
                tick();
                let msg = [i as u64, seq];
                loop {
                    // SAFETY: 16-byte slots (a multiple of 8) read from `msg`; buffers
                    // are `Buffer`s of MASK + 1 slots, alive until after the run; only
                    // push_payload writes the tails, only the consumer the heads.
                    let outcome = unsafe {
                        words.push_payload(
                            [TAIL, HEAD, BUFFER, CACHED],
                            MASK,
                            SLOT_WORDS * 8,
                            msg.as_ptr().cast(),
                        )
                    };
                    match outcome {
                        PushOutcome::Committed(shard) => {
                            check_shard(arena, shard);
                            break;
                        }
                        PushOutcome::Full(_) => {
                            full += 1;
                            if consumer_failed.load(Ordering::Relaxed) {
                                // Nobody drains the ring any more: give up quietly,
                                // the consumer's panic is reported below.
                                return;
                            }
                            std::thread::yield_now();
                        }
                        PushOutcome::NoBuffer(shard) => install_buffer(wb, shard, &installed),
                    }
                }
            }
            fulls.fetch_add(full, Ordering::Relaxed);
        });
        consumer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    let consumed = consumed.expect("the consumer stopped early");
    assert_eq!(consumed.received, t.ops_total);
    for (shard, tail) in words.word(TAIL).shards() {
        let head = words
            .word(HEAD)
            .at(shard)
            .expect("head")
            .load(Ordering::Relaxed);
        assert_eq!(
            tail.load(Ordering::Relaxed),
            head,
            "{shard:?}: ring not drained"
        );
    }
    let mut freed = 0;
    for (_, buffer) in wb.shards() {
        let ptr = buffer.swap(0, Ordering::AcqRel);
        if ptr != 0 {
            // SAFETY: installed by `install_buffer` from `Box::into_raw`, unpublished
            // by the swap, and no producer or consumer runs any more.
            drop(unsafe { Box::from_raw(ptr as *mut Buffer) });
            freed += 1;
        }
    }
    assert_eq!(
        freed,
        installed.load(Ordering::Relaxed),
        "a buffer word was lost"
    );
    eprintln!(
        "rings: {} buffers, {} full pushes, {} consumer passes",
        freed,
        fulls.into_inner(),
        consumed.passes
    );
}

// ---------------------------------------------------------------------------------
// The variants

torture_variants! {
    add => |t| super::add(&Arena::new(), t);
    compare_store => |t| super::compare_store(&Arena::new(), t);
    list => |t| super::lists(&Arena::new(), t, 64);
    ring => |t| super::rings(&Arena::new(), t);
}

/// Lists long enough that every node can be listed (no spares after the start).
mod long_list {
    use super::*;

    #[test]
    fn plain() {
        lists(&Arena::new(), Torture::plain(), 1024);
    }

    #[test]
    fn storm_migrate() {
        lists(&Arena::new(), Torture::storm_migrate(), 1024);
    }
}

/// An arena with room for one cid and one lane: every thread on another index takes
/// the lane, next to the threads committing on cid 0, and results stay exact.
mod capacity {
    use super::*;

    fn small() -> Arena {
        Arena::with_capacity(1, 1)
    }

    #[test]
    fn add() {
        super::add(&small(), Torture::storm_migrate());
    }

    #[test]
    fn compare_store() {
        super::compare_store(&small(), Torture::storm_migrate());
    }

    #[test]
    fn list() {
        lists(&small(), Torture::storm_migrate(), 64);
    }

    #[test]
    fn ring() {
        rings(&small(), Torture::storm_migrate());
    }
}

/// The mm_cid bound: with 32 threads (storm and migrations included), the cids seen
/// stay below the number of CPUs the process may run on.
#[test]
fn cid_below_allowed_cpus() {
    if !common::mm_cid_rseq() {
        eprintln!(
            "skipped: shards are not indexed by mm_cid here ({})",
            status()
        );
        return;
    }
    let allowed = allowed_cpus().len() as u32;
    let arena = Arena::new();
    let words = arena.alloc(1).expect("alloc");
    let w = words.word(0);
    let max = AtomicU32::new(0);
    let t = Torture {
        threads: 32,
        ops_total: scaled(2_000_000),
        storm: true,
        migrate: true,
    };
    t.run(|_, ops| {
        let mut most = 0;
        for _ in 0..ops {
            most = most.max(percid::current_cid());
            if let Shard::Cid(c) = w.add(1) {
                most = most.max(c);
            }
        }
        max.fetch_max(most, Ordering::Relaxed);
    });
    assert_eq!(w.sum(), t.ops_total);
    let max = max.into_inner();
    eprintln!("largest cid seen: {max}, allowed CPUs: {allowed}");
    assert!(max < allowed, "cid {max} seen with {allowed} allowed CPUs");
}

/// Long runs for `scripts/soak` (`cargo test --release --test torture -- --ignored`):
/// every operation, storm and migrations, ten times the usual operations.
mod soak {
    use super::*;

    fn long() -> Torture {
        Torture {
            ops_total: 10 * scaled(common::DEFAULT_OPS),
            ..Torture::storm_migrate()
        }
    }

    #[test]
    #[ignore = "soak: run by scripts/soak"]
    fn add() {
        super::add(&Arena::new(), long());
    }

    #[test]
    #[ignore = "soak: run by scripts/soak"]
    fn compare_store() {
        super::compare_store(&Arena::new(), long());
    }

    #[test]
    #[ignore = "soak: run by scripts/soak"]
    fn list() {
        lists(&Arena::new(), long(), 64);
    }

    #[test]
    #[ignore = "soak: run by scripts/soak"]
    fn ring() {
        rings(&Arena::new(), long());
    }

    #[test]
    #[ignore = "soak: run by scripts/soak"]
    fn capacity() {
        let arena = Arena::with_capacity(1, 1);
        super::add(&arena, long());
        lists(&arena, long(), 64);
        rings(&arena, long());
    }
}
