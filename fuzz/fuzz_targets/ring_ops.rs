//! Sequences of `percid::ring` operations on simulated cids, with injected aborts,
//! checked step by step against a model of the rings.
//!
//! The process runs the simulated backend. Each input builds a channel of counted
//! values with a fuzzed ring capacity (1..=8, rounded up to a power of two) on an
//! arena of 4 cids and 2 lanes shared by the whole process (so a channel reuses the
//! words an earlier input's channel freed). Each step moves the thread to a cid and
//! runs one operation: `send`, `try_send`, `send_many`, `try_recv`, `recv`,
//! `recv_many`, cloning or dropping a sender, dropping the receiver, or reseeding
//! the injected aborts (at most 16 in 1024 steps: an operation then never meets the
//! 64 aborts in a row that would push it to a lane, so a send on cid `c` lands in
//! `c`'s ring).
//!
//! The model is one FIFO queue per shard. After every step:
//!
//! * a received value is the head of the model queue of the ring it came from
//!   (`try_recv_traced` says which); `recv_many` and `recv` take heads too, and
//!   `recv_many(max)` takes `min(max, queued)` values;
//! * `try_send` succeeds whenever the ring has room, counting the slots the receiver
//!   took but has not given back yet (it returns them lazily; every empty poll returns
//!   them all), and is `Full` only when it has none; a send never succeeds on a ring
//!   that holds `capacity` values;
//! * a receive says `Empty`/`Disconnected` only when the model has nothing queued,
//!   and `Disconnected` exactly when every sender is gone;
//! * a send fails with `Disconnected` exactly when the receiver is gone, and gives
//!   back the very value (for `send_many`, every value, in order);
//! * the live values are exactly the queued ones; when the receiver is dropped the
//!   rings' values are dropped with it, and when the input ends nothing is left.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use percid::cid::{Arena, Shard};
use percid::ring::{Builder, Receiver, SendError, Sender, TryRecvError, TrySendError};
use percid::testing::{seed_simulated_aborts, set_simulated_abort_rate, set_simulated_cid};
use std::collections::{HashMap, VecDeque};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

const CIDS: u8 = 4;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Blocking send, when the model says it cannot block.
    Send,
    TrySend,
    /// `send_many` of up to this many values (clamped to the room left).
    SendMany(u8),
    TryRecv,
    /// Blocking recv, when the model says it cannot block.
    Recv,
    RecvMany(u8),
    CloneSender,
    /// Drops the sender at this index (modulo the number alive).
    DropSender(u8),
    DropReceiver,
    /// Reseeds the injected aborts and sets their rate (modulo 17, per 1024 steps).
    Aborts {
        seed: u64,
        rate: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Step {
    cid: u8,
    /// The sender used (modulo the number alive).
    sender: u8,
    op: Op,
}

#[derive(Arbitrary, Debug)]
struct Input {
    capacity: u8,
    steps: Vec<Step>,
}

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// A counted value.
#[derive(Debug)]
struct Val(u64);

impl Val {
    fn new(v: u64) -> Val {
        LIVE.fetch_add(1, Ordering::Relaxed);
        Val(v)
    }
}

impl Drop for Val {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

fn arena() -> &'static Arena {
    static ARENA: OnceLock<&'static Arena> = OnceLock::new();
    ARENA.get_or_init(|| Box::leak(Box::new(Arena::with_capacity(u32::from(CIDS), 2))))
}

fuzz_target!(
    init: {
        // SAFETY: set before any thread exists and before percid reads it.
        unsafe { std::env::set_var("PERCID_BACKEND", "simulated") };
    },
    |input: Input| {
        run(&input);
        assert_eq!(LIVE.load(Ordering::Relaxed), 0, "values leaked or dropped twice");
    }
);

/// The model of the channel.
struct Model {
    capacity: usize,
    queues: HashMap<Shard, VecDeque<u64>>,
    /// Slots taken from each ring since the receiver last returned them all.
    unreturned: HashMap<Shard, usize>,
    receiver_gone: bool,
    next: u64,
}

impl Model {
    fn queued(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }

    fn len(&self, shard: Shard) -> usize {
        self.queues.get(&shard).map_or(0, VecDeque::len)
    }

    /// Slots of `shard`'s ring a sender surely finds free.
    fn room(&self, shard: Shard) -> usize {
        self.capacity
            .saturating_sub(self.len(shard))
            .saturating_sub(self.unreturned.get(&shard).copied().unwrap_or(0))
    }

    fn push(&mut self, shard: Shard, v: u64) {
        let q = self.queues.entry(shard).or_default();
        assert!(
            q.len() < self.capacity,
            "a send succeeded on ring {shard:?}, which holds {} values already",
            q.len()
        );
        q.push_back(v);
    }

    /// `v` came out of `shard`'s ring: it must be that ring's head.
    fn pop(&mut self, shard: Shard, v: u64) {
        let head = self.queues.get_mut(&shard).and_then(VecDeque::pop_front);
        assert_eq!(
            head,
            Some(v),
            "ring {shard:?} gave {v}, its head is {head:?}"
        );
        *self.unreturned.entry(shard).or_default() += 1;
    }

    /// `v` came out of some ring (an untraced receive): the head of one of them.
    fn pop_any(&mut self, v: u64) {
        let shard = self
            .queues
            .iter()
            .find(|(_, q)| q.front() == Some(&v))
            .map(|(s, _)| *s)
            .unwrap_or_else(|| panic!("received {v}, the head of no ring: {:?}", self.queues));
        self.pop(shard, v);
    }

    /// An empty poll visited every ring and gave every taken slot back.
    fn all_returned(&mut self) {
        self.unreturned.clear();
    }

    fn fresh(&mut self) -> Val {
        self.next += 1;
        Val::new(self.next)
    }
}

fn run(input: &Input) {
    // The same aborts every time an input runs: a crash reproduces on its own.
    seed_simulated_aborts(0x5eed);
    set_simulated_abort_rate(16);
    let capacity = usize::from(input.capacity % 8) + 1;
    let (tx, rx) = Builder::new()
        .capacity_per_cid(capacity)
        .arena(arena())
        .build::<Val>()
        .unwrap();
    let mut model = Model {
        capacity: capacity.next_power_of_two(),
        queues: HashMap::new(),
        unreturned: HashMap::new(),
        receiver_gone: false,
        next: 0,
    };
    assert_eq!(tx.capacity_per_cid(), model.capacity);
    let mut senders: Vec<Sender<Val>> = vec![tx];
    let mut rx: Option<Receiver<Val>> = Some(rx);

    for step in &input.steps {
        let cid = u32::from(step.cid % CIDS);
        set_simulated_cid(cid);
        let shard = Shard::Cid(cid);
        let sender = (!senders.is_empty()).then(|| usize::from(step.sender) % senders.len());
        match (&step.op, sender) {
            (Op::Send, Some(s)) => {
                if !model.receiver_gone && model.room(shard) == 0 {
                    continue; // It would block forever: nobody else receives.
                }
                let val = model.fresh();
                let v = val.0;
                match senders[s].send(val) {
                    Ok(()) => {
                        assert!(!model.receiver_gone, "a send without receiver succeeded");
                        model.push(shard, v);
                    }
                    Err(SendError(back)) => {
                        assert!(model.receiver_gone, "send failed with the receiver alive");
                        assert_eq!(back.0, v, "send gave back another value");
                    }
                }
            }
            (Op::TrySend, Some(s)) => {
                let val = model.fresh();
                let v = val.0;
                match senders[s].try_send(val) {
                    Ok(()) => {
                        assert!(!model.receiver_gone, "a send without receiver succeeded");
                        model.push(shard, v);
                    }
                    Err(TrySendError::Full(back)) => {
                        assert!(!model.receiver_gone, "Full without receiver");
                        assert_eq!(back.0, v, "try_send gave back another value");
                        assert_eq!(
                            model.room(shard),
                            0,
                            "Full on ring {shard:?} with room: {} queued, {:?} not returned",
                            model.len(shard),
                            model.unreturned.get(&shard)
                        );
                    }
                    Err(TrySendError::Disconnected(back)) => {
                        assert!(model.receiver_gone, "Disconnected with the receiver alive");
                        assert_eq!(back.0, v, "try_send gave back another value");
                    }
                }
            }
            (Op::SendMany(k), Some(s)) => {
                let mut k = usize::from(*k % 41);
                if !model.receiver_gone {
                    k = k.min(model.room(shard));
                }
                if k == 0 {
                    continue;
                }
                let vals: Vec<Val> = (0..k).map(|_| model.fresh()).collect();
                let ids: Vec<u64> = vals.iter().map(|v| v.0).collect();
                match senders[s].send_many(vals) {
                    Ok(()) => {
                        assert!(!model.receiver_gone, "send_many without receiver succeeded");
                        for v in ids {
                            model.push(shard, v);
                        }
                    }
                    Err(SendError(back)) => {
                        assert!(
                            model.receiver_gone,
                            "send_many failed with the receiver alive"
                        );
                        let back: Vec<u64> = back.iter().map(|v| v.0).collect();
                        assert_eq!(back, ids, "send_many gave back other values");
                    }
                }
            }
            (Op::TryRecv, _) => {
                let Some(r) = rx.as_mut() else { continue };
                match r.try_recv_traced() {
                    Ok((val, from)) => {
                        model.pop(from.expect("a bounded channel does not spill"), val.0)
                    }
                    Err(e) => {
                        assert_eq!(model.queued(), 0, "{e:?} with values queued");
                        let expect = if senders.is_empty() {
                            TryRecvError::Disconnected
                        } else {
                            TryRecvError::Empty
                        };
                        assert_eq!(e, expect, "senders alive: {}", senders.len());
                        model.all_returned();
                    }
                }
            }
            (Op::Recv, _) => {
                let Some(r) = rx.as_mut() else { continue };
                if model.queued() == 0 && !senders.is_empty() {
                    continue; // It would block forever.
                }
                match r.recv() {
                    Ok(val) => model.pop_any(val.0),
                    Err(_) => {
                        assert_eq!(model.queued(), 0, "recv ended with values queued");
                        assert!(senders.is_empty(), "recv ended with senders alive");
                        model.all_returned();
                    }
                }
            }
            (Op::RecvMany(max), _) => {
                let Some(r) = rx.as_mut() else { continue };
                let max = usize::from(*max % 20);
                let queued = model.queued();
                let mut out = Vec::new();
                let n = r.try_recv_many(&mut out, max).unwrap_or(0);
                assert_eq!(n, out.len(), "recv_many miscounted");
                assert_eq!(
                    n,
                    max.min(queued),
                    "recv_many took {n} of {queued} (max {max})"
                );
                for val in out {
                    model.pop_any(val.0);
                }
                if n < max {
                    model.all_returned();
                }
            }
            (Op::CloneSender, Some(s)) => {
                if senders.len() < 8 {
                    senders.push(senders[s].clone());
                }
            }
            (Op::DropSender(i), Some(_)) => {
                let i = usize::from(*i) % senders.len();
                drop(senders.swap_remove(i));
                if let Some(r) = &rx {
                    assert_eq!(r.is_disconnected(), senders.is_empty());
                }
            }
            (Op::DropReceiver, _) => {
                if let Some(r) = rx.take() {
                    drop(r);
                    model.receiver_gone = true;
                    model.queues.clear();
                    model.unreturned.clear();
                    for s in &senders {
                        assert!(s.is_disconnected(), "a sender missed the receiver's drop");
                    }
                }
            }
            (Op::Aborts { seed, rate }, _) => {
                seed_simulated_aborts(*seed);
                set_simulated_abort_rate(u32::from(*rate % 17));
            }
            _ => {}
        }
        assert_eq!(
            LIVE.load(Ordering::Relaxed),
            model.queued(),
            "live values are not the queued ones"
        );
    }
    // Whatever is queued is dropped by the receiver, or with the channel.
    drop(senders);
    drop(rx);
}
