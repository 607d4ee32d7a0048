//! Sequences of critical-section operations on simulated cids, with injected aborts,
//! checked step by step against a model of every shard.
//!
//! The process runs the simulated backend; each step moves the thread to a cid (and
//! sets an abort rate, so operations also fall back to lanes), runs one operation,
//! and applies its effect to the model shard the operation reports. The arena's
//! words must equal the model after every step.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use percid::cid::{Arena, ListFull, PushOutcome, Shard};
use percid::testing::{seed_simulated_aborts, set_simulated_abort_rate, set_simulated_cid};
use std::collections::HashMap;
use std::sync::atomic::Ordering;

const CIDS: u32 = 4;
const NODES: usize = 8;
const RING: u64 = 4;

#[derive(Arbitrary, Debug)]
enum Op {
    Add { value: u64 },
    CompareStore { expect_model: bool, new: u8 },
    Pop,
    Push { node: u8, max_len: u8 },
    Send { value: u64 },
    Receive,
}

#[derive(Arbitrary, Debug)]
struct Step {
    cid: u8,
    abort_rate: u8,
    op: Op,
}

#[derive(Default)]
struct ModelShard {
    sum: u64,
    cas: u64,
    list: Vec<usize>,
    ring: std::collections::VecDeque<u64>,
}

#[repr(C, align(16))]
struct Node {
    link: std::sync::atomic::AtomicU64,
}

fuzz_target!(
    init: {
        // SAFETY: set before any thread exists and before percid reads it.
        unsafe { std::env::set_var("PERCID_BACKEND", "simulated") };
    },
    |steps: Vec<Step>| {
        run(&steps);
    }
);

fn run(steps: &[Step]) {
    // The same aborts every time an input runs: a crash reproduces on its own.
    seed_simulated_aborts(0x5eed);
    let arena = Arena::with_capacity(CIDS, 2);
    // Words: 0 sum, 1 compare-store, 2 list head, 3 ring tail, 4 ring head, 5 ring
    // buffer, 6 the producers' copy of the ring head.
    let words = arena.alloc(7).unwrap();
    let (sum, cas, list) = (words.word(0), words.word(1), words.word(2));
    let (tail, head, buffer) = (words.word(3), words.word(4), words.word(5));
    let nodes: Vec<Box<Node>> = (0..NODES)
        .map(|_| Box::new(Node { link: 0.into() }))
        .collect();
    let node_addr = |i: usize| &*nodes[i] as *const Node as usize;
    let mut free_nodes: Vec<usize> = (0..NODES).map(node_addr).collect();
    let mut buffers: Vec<Box<[u64; RING as usize]>> = Vec::new();
    let mut model: HashMap<Shard, ModelShard> = HashMap::new();

    for step in steps {
        set_simulated_cid(u32::from(step.cid) % CIDS);
        set_simulated_abort_rate(u32::from(step.abort_rate) * 4);
        match step.op {
            Op::Add { value } => {
                let shard = sum.add(value);
                let m = model.entry(shard).or_default();
                m.sum = m.sum.wrapping_add(value);
            }
            Op::CompareStore { expect_model, new } => {
                // Either the model's value of the current cid (likely to succeed) or 0.
                let cid = Shard::Cid(u32::from(step.cid) % CIDS);
                let expect = if expect_model {
                    model.get(&cid).map_or(0, |m| m.cas)
                } else {
                    0
                };
                match cas.compare_store(expect, u64::from(new)) {
                    Ok(shard) => {
                        let m = model.entry(shard).or_default();
                        assert_eq!(m.cas, expect, "committed on a shard holding another value");
                        m.cas = u64::from(new);
                    }
                    Err(seen) => {
                        assert_ne!(seen, expect);
                        assert!(
                            model.values().any(|m| m.cas == seen) || seen == 0,
                            "compare failed with a value no shard holds: {seen}"
                        );
                    }
                }
            }
            Op::Pop => {
                // SAFETY: listed nodes are the boxed `Node`s above, alive until the end.
                if let Some((node, shard)) = unsafe { list.list_pop() } {
                    let m = model.entry(shard).or_default();
                    assert_eq!(
                        m.list.pop(),
                        Some(node),
                        "popped a node the model does not have on top"
                    );
                    free_nodes.push(node);
                }
            }
            Op::Push { node, max_len } => {
                if free_nodes.is_empty() {
                    continue;
                }
                let node = free_nodes.swap_remove(usize::from(node) % free_nodes.len());
                let max_len = u16::from(max_len % 6);
                // SAFETY: the node is free (ours), aligned and boxed.
                match unsafe { list.list_push(node, max_len) } {
                    Ok(shard) => {
                        let m = model.entry(shard).or_default();
                        assert!(m.list.len() < usize::from(max_len));
                        m.list.push(node);
                    }
                    Err(ListFull) => free_nodes.push(node),
                }
            }
            Op::Send { value } => loop {
                // SAFETY: slots are 8 bytes; buffers live until the end of `run`; only
                // this loop moves tails and only `Receive` moves heads.
                match unsafe {
                    words.push_payload([3, 4, 5, 6], RING - 1, 8, &value as *const u64 as *const u8)
                } {
                    PushOutcome::Committed(shard) => {
                        model.entry(shard).or_default().ring.push_back(value);
                        break;
                    }
                    PushOutcome::Full(shard) => {
                        assert_eq!(model.entry(shard).or_default().ring.len() as u64, RING);
                        break;
                    }
                    PushOutcome::NoBuffer(shard) => {
                        let fresh = Box::new([0u64; RING as usize]);
                        let addr = fresh.as_ptr() as u64;
                        buffers.push(fresh);
                        buffer
                            .at(shard)
                            .unwrap()
                            .compare_exchange(0, addr, Ordering::Release, Ordering::Relaxed)
                            .unwrap();
                    }
                }
            },
            Op::Receive => {
                // The consumer drains one value from the first non-empty shard.
                for (shard, t) in tail.shards() {
                    let h = head.at(shard).unwrap();
                    let (t, hv) = (t.load(Ordering::Acquire), h.load(Ordering::Relaxed));
                    if t == hv {
                        continue;
                    }
                    let buf = buffer.at(shard).unwrap().load(Ordering::Acquire) as *const u64;
                    // SAFETY: the slot below the tail was published by the commit.
                    let value = unsafe { *buf.add((hv % RING) as usize) };
                    h.store(hv + 1, Ordering::Release);
                    let m = model.entry(shard).or_default();
                    assert_eq!(m.ring.pop_front(), Some(value));
                    break;
                }
            }
        }
        check(&words, &model);
    }
}

/// Every shard's words equal the model's.
fn check(words: &percid::cid::Words<'_>, model: &HashMap<Shard, ModelShard>) {
    for (shard, v) in words.word(0).shards() {
        let m = model.get(&shard);
        assert_eq!(
            v.load(Ordering::Relaxed),
            m.map_or(0, |m| m.sum),
            "sum of {shard:?}"
        );
        let cas = words.word(1).at(shard).unwrap().load(Ordering::Relaxed);
        assert_eq!(
            cas,
            m.map_or(0, |m| m.cas),
            "compare-store word of {shard:?}"
        );
        let head = words.word(2).at(shard).unwrap().load(Ordering::Relaxed);
        assert_eq!(
            (head >> 48) as usize,
            m.map_or(0, |m| m.list.len()),
            "list length of {shard:?}"
        );
        let top = (head & ((1 << 48) - 1)) as usize;
        assert_eq!(
            top,
            m.and_then(|m| m.list.last().copied()).unwrap_or(0),
            "list top of {shard:?}"
        );
    }
}
