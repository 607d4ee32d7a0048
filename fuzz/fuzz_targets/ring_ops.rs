//! Sequences of `percid::ring` operations on simulated cids, with injected aborts,
//! checked step by step against a model of the rings and the spill queue.
//!
//! The process runs the simulated backend. Each input builds a channel of counted
//! values with a fuzzed ring capacity (1..=8, rounded up to a power of two),
//! bounded or unbounded, on an arena of 4 cids and 2 lanes shared by the whole
//! process (so a channel reuses the words an earlier input's channel freed). Each
//! step moves the thread to a cid and runs one operation: `send`, `try_send`,
//! `send_many`, `try_reserve` (then `Permit::send` or a drop), owned permits
//! (`try_reserve_owned`, then, in a later step, `send`, `release` or a drop),
//! `try_recv`, `recv`, `recv_many`, `try_recv_many`, `close`, `len`, cloning or
//! dropping a sender, downgrading one, upgrading or dropping a weak one, dropping
//! the receiver, or reseeding the injected aborts (at most 16 in 1024 steps: an
//! operation then never meets the 64 aborts in a row that would push it to a lane,
//! so a send on cid `c` lands in `c`'s ring).
//!
//! The model is one FIFO queue per shard, the spill queue (values that found the
//! channel spilling or their ring full: unbounded channels and permits) and the
//! channel's flags. After every step:
//!
//! * a received value is the head of the model queue of the ring it came from
//!   (`try_recv_traced` says which), or, when it says the spill queue, the spill
//!   queue's head, handed out only when every ring is empty; `recv`, `recv_many`
//!   and `try_recv_many` take heads too, `min(limit, queued)` of them;
//! * `try_send` succeeds whenever the ring has room, counting the slots the receiver
//!   took but has not given back yet (it returns them lazily; every empty poll
//!   returns them all), and is `Full` only when it has none or the channel spills;
//!   a send never succeeds on a ring that holds `capacity` values; an unbounded
//!   channel's send goes to the spill queue (and sets the spilling state) when the
//!   ring is full or the channel spills; the receiver clears the state when a look
//!   finds the rings and the spill queue empty;
//! * `try_reserve` is `Full` when the ring surely has no room or the channel spills
//!   (bounded), succeeds when it surely has room, `Disconnected` exactly when the
//!   receiver closed the channel or is gone; a permit's value goes to the ring or
//!   the spill queue as a send would, is still delivered after `close`, and is
//!   dropped after the receiver's drop;
//! * a receive says `Empty`/`Disconnected` only when the model has nothing queued,
//!   and `Disconnected` exactly when every strong sender is gone (owned permits hold
//!   one), or the channel was closed and no permit is out;
//! * a send fails with `Disconnected` exactly when the receiver closed the channel
//!   or is gone, and gives back the very value (for `send_many`, every value, in
//!   order);
//! * `is_closed`, `is_disconnected`, the strong and weak counts and a weak sender's
//!   `upgrade` follow the model; `Receiver::len` is the number queued, and
//!   `Sender::len` at least the number in the rings;
//! * the live values are exactly the queued ones; when the receiver is dropped the
//!   rings' and the spill queue's values are dropped with it, and when the input
//!   ends nothing is left.
//!
//! Where the model cannot tell where a value would go (an unbounded send, or a
//! held permit's send, on a ring that is full only because of slots the receiver
//! may or may not have given back), the step is skipped (a permit is released).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use percid::cid::{Arena, Shard};
use percid::ring::{
    Builder, OwnedPermit, Receiver, SendError, Sender, TryRecvError, TrySendError, WeakSender,
};
use percid::testing::{seed_simulated_aborts, set_simulated_abort_rate, set_simulated_cid};
use std::collections::{HashMap, VecDeque};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

const CIDS: u8 = 4;
/// Most senders (strong, weak, owned permits) an input keeps at once.
const MAX_HANDLES: usize = 8;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Blocking send, when the model says it cannot block.
    Send,
    TrySend,
    /// `send_many` of up to this many values (clamped to the room left).
    SendMany(u8),
    /// `try_reserve`, then `Permit::send` (or a drop of the permit).
    TryReserve {
        send: bool,
    },
    /// `try_reserve_owned` of a clone of the sender; the permit is kept.
    TryReserveOwned,
    /// Sends with the owned permit at this index (modulo the number held).
    OwnedSend(u8),
    /// Releases the owned permit at this index, keeping its sender.
    OwnedRelease(u8),
    /// Drops the owned permit at this index (and its sender).
    OwnedDrop(u8),
    TryRecv,
    /// Blocking recv, when the model says it cannot block.
    Recv,
    /// Blocking `recv_many`, when the model says it cannot block.
    RecvMany(u8),
    TryRecvMany(u8),
    Close,
    Len,
    CloneSender,
    /// Drops the sender at this index (modulo the number alive).
    DropSender(u8),
    Downgrade,
    /// Upgrades the weak sender at this index.
    Upgrade(u8),
    DropWeak(u8),
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
    unbounded: bool,
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

/// Where a value sent now would go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dest {
    /// The caller's ring.
    Ring,
    /// The spill queue.
    Spill,
    /// The model cannot tell (a ring full only of slots maybe given back).
    Unknown,
}

/// The model of the channel.
struct Model {
    capacity: usize,
    unbounded: bool,
    queues: HashMap<Shard, VecDeque<u64>>,
    /// Slots taken from each ring since the receiver last returned them all.
    unreturned: HashMap<Shard, usize>,
    spill: VecDeque<u64>,
    /// The channel's spilling state: sends go to the spill queue.
    spilling: bool,
    /// `Receiver::close` ran.
    closed: bool,
    receiver_gone: bool,
    next: u64,
}

impl Model {
    fn in_rings(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }

    fn queued(&self) -> usize {
        self.in_rings() + self.spill.len()
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

    /// The receiver closed the channel or is gone: sends fail.
    fn gate_closed(&self) -> bool {
        self.closed || self.receiver_gone
    }

    /// Where a send's section would put a value now (the gate open).
    fn dest(&self, shard: Shard) -> Dest {
        if self.spilling {
            Dest::Spill
        } else if self.room(shard) > 0 {
            Dest::Ring
        } else if self.len(shard) >= self.capacity {
            Dest::Spill
        } else {
            Dest::Unknown
        }
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

    /// A value went to the spill queue.
    fn spill(&mut self, v: u64) {
        self.spilling = true;
        self.spill.push_back(v);
    }

    /// Puts `v` where `dest` says (never `Unknown`).
    fn put(&mut self, shard: Shard, dest: Dest, v: u64) {
        match dest {
            Dest::Ring => self.push(shard, v),
            Dest::Spill => self.spill(v),
            Dest::Unknown => unreachable!("the caller skips unknown destinations"),
        }
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

    /// `v` came out of the spill queue: its head, and only once every ring was
    /// empty (the receiver then gave every slot back).
    fn pop_spilled(&mut self, v: u64) {
        assert_eq!(
            self.in_rings(),
            0,
            "a spilled value ({v}) handed out before the rings' {:?}",
            self.queues
        );
        let head = self.spill.pop_front();
        assert_eq!(
            head,
            Some(v),
            "the spill queue gave {v}, its head is {head:?}"
        );
        self.all_returned();
    }

    /// `v` came out of some ring or the spill queue (an untraced receive).
    fn pop_any(&mut self, v: u64) {
        match self
            .queues
            .iter()
            .find(|(_, q)| q.front() == Some(&v))
            .map(|(s, _)| *s)
        {
            Some(shard) => self.pop(shard, v),
            None if self.spill.front() == Some(&v) => self.pop_spilled(v),
            None => panic!(
                "received {v}, the head of no ring nor of the spill queue: {:?}, {:?}",
                self.queues, self.spill
            ),
        }
    }

    /// A look found every ring and the spill queue empty: every taken slot is given
    /// back and the channel stops spilling.
    fn empty_look(&mut self) {
        assert_eq!(self.queued(), 0, "an empty look with values queued");
        self.all_returned();
        self.spilling = false;
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

/// The handles an input holds.
struct Handles {
    senders: Vec<Sender<Val>>,
    weak: Vec<WeakSender<Val>>,
    owned: Vec<OwnedPermit<Val>>,
}

impl Handles {
    /// Strong senders: the senders and the owned permits' ones.
    fn strong(&self) -> usize {
        self.senders.len() + self.owned.len()
    }

    fn count(&self) -> usize {
        self.senders.len() + self.weak.len() + self.owned.len()
    }

    /// Keeps a sender given back, or drops it when there are enough.
    fn keep(&mut self, s: Sender<Val>) {
        if self.count() < MAX_HANDLES {
            self.senders.push(s);
        }
    }
}

fn run(input: &Input) {
    // The same aborts every time an input runs: a crash reproduces on its own.
    seed_simulated_aborts(0x5eed);
    set_simulated_abort_rate(16);
    let capacity = usize::from(input.capacity % 8) + 1;
    let (tx, rx) = Builder::new()
        .capacity_per_cid(capacity)
        .unbounded(input.unbounded)
        .arena(arena())
        .build::<Val>()
        .unwrap();
    let mut model = Model {
        capacity: capacity.next_power_of_two(),
        unbounded: input.unbounded,
        queues: HashMap::new(),
        unreturned: HashMap::new(),
        spill: VecDeque::new(),
        spilling: false,
        closed: false,
        receiver_gone: false,
        next: 0,
    };
    assert_eq!(tx.capacity_per_cid(), model.capacity);
    let mut h = Handles {
        senders: vec![tx],
        weak: Vec::new(),
        owned: Vec::new(),
    };
    let mut rx: Option<Receiver<Val>> = Some(rx);

    for step in &input.steps {
        let cid = u32::from(step.cid % CIDS);
        set_simulated_cid(cid);
        let shard = Shard::Cid(cid);
        let sender = (!h.senders.is_empty()).then(|| usize::from(step.sender) % h.senders.len());
        // Whether no value can come any more (what ends a receive).
        let finished = h.strong() == 0 || (model.closed && h.owned.is_empty());
        match (&step.op, sender) {
            (Op::Send, Some(s)) => {
                let dest = model.dest(shard);
                let v = model.next + 1;
                if !model.gate_closed() {
                    if model.unbounded && dest == Dest::Unknown {
                        continue;
                    }
                    if !model.unbounded && dest != Dest::Ring {
                        continue; // It could block forever: nobody else receives.
                    }
                }
                let val = model.fresh();
                match h.senders[s].send(val) {
                    Ok(()) => {
                        assert!(!model.gate_closed(), "a send on a closed channel succeeded");
                        model.put(shard, dest, v);
                    }
                    Err(SendError(back)) => {
                        assert!(model.gate_closed(), "send failed with the channel open");
                        assert_eq!(back.0, v, "send gave back another value");
                    }
                }
            }
            (Op::TrySend, Some(s)) => {
                let dest = model.dest(shard);
                if model.unbounded && !model.gate_closed() && dest == Dest::Unknown {
                    continue;
                }
                let val = model.fresh();
                let v = val.0;
                match h.senders[s].try_send(val) {
                    Ok(()) => {
                        assert!(!model.gate_closed(), "a send on a closed channel succeeded");
                        if model.unbounded {
                            model.put(shard, dest, v);
                        } else {
                            assert!(!model.spilling, "a bounded send succeeded while spilling");
                            model.push(shard, v);
                        }
                    }
                    Err(TrySendError::Full(back)) => {
                        assert!(!model.gate_closed(), "Full on a closed channel");
                        assert!(!model.unbounded, "Full on an unbounded channel");
                        assert_eq!(back.0, v, "try_send gave back another value");
                        assert!(
                            model.spilling || model.room(shard) == 0,
                            "Full on ring {shard:?} with room: {} queued, {:?} not returned",
                            model.len(shard),
                            model.unreturned.get(&shard)
                        );
                    }
                    Err(TrySendError::Disconnected(back)) => {
                        assert!(model.gate_closed(), "Disconnected with the channel open");
                        assert_eq!(back.0, v, "try_send gave back another value");
                    }
                }
            }
            (Op::SendMany(k), Some(s)) => {
                let mut k = usize::from(*k % 41);
                if !model.gate_closed() {
                    if model.unbounded {
                        // Values go to the ring while it surely has room, then to the
                        // spill queue once it is surely full: clamp to what the model
                        // can place.
                        if !model.spilling && model.len(shard) + model.room(shard) < model.capacity
                        {
                            k = k.min(model.room(shard));
                        }
                    } else if model.spilling {
                        k = 0;
                    } else {
                        k = k.min(model.room(shard));
                    }
                }
                if k == 0 {
                    continue;
                }
                let vals: Vec<Val> = (0..k).map(|_| model.fresh()).collect();
                let ids: Vec<u64> = vals.iter().map(|v| v.0).collect();
                match h.senders[s].send_many(vals) {
                    Ok(()) => {
                        assert!(
                            !model.gate_closed(),
                            "send_many on a closed channel succeeded"
                        );
                        for v in ids {
                            let dest = model.dest(shard);
                            model.put(shard, dest, v);
                        }
                    }
                    Err(SendError(back)) => {
                        assert!(
                            model.gate_closed(),
                            "send_many failed with the channel open"
                        );
                        let back: Vec<u64> = back.iter().map(|v| v.0).collect();
                        assert_eq!(back, ids, "send_many gave back other values");
                    }
                }
            }
            (Op::TryReserve { send }, Some(s)) => {
                let dest = model.dest(shard);
                match h.senders[s].try_reserve() {
                    Ok(permit) => {
                        assert!(!model.gate_closed(), "a permit on a closed channel");
                        if !model.unbounded {
                            assert!(!model.spilling, "a bounded permit while spilling");
                            assert!(
                                model.len(shard) < model.capacity,
                                "a permit on the full ring {shard:?}"
                            );
                        }
                        // The ring had room a moment ago (bounded): its send goes there.
                        let dest = if model.unbounded { dest } else { Dest::Ring };
                        if *send && dest != Dest::Unknown {
                            let val = model.fresh();
                            let v = val.0;
                            permit.send(val);
                            model.put(shard, dest, v);
                        } else {
                            drop(permit);
                        }
                    }
                    Err(TrySendError::Full(())) => {
                        assert!(!model.gate_closed(), "Full on a closed channel");
                        assert!(!model.unbounded, "no permit on an unbounded channel");
                        assert!(
                            model.spilling || model.room(shard) == 0,
                            "no permit on ring {shard:?} with room"
                        );
                    }
                    Err(TrySendError::Disconnected(())) => {
                        assert!(model.gate_closed(), "no permit on an open channel");
                    }
                }
            }
            (Op::TryReserveOwned, Some(s)) => {
                if h.count() >= MAX_HANDLES {
                    continue;
                }
                match h.senders[s].clone().try_reserve_owned() {
                    Ok(permit) => {
                        assert!(!model.gate_closed(), "a permit on a closed channel");
                        if !model.unbounded {
                            assert!(!model.spilling && model.len(shard) < model.capacity);
                        }
                        h.owned.push(permit);
                    }
                    Err(TrySendError::Full(back)) => {
                        assert!(!model.gate_closed() && !model.unbounded);
                        assert!(model.spilling || model.room(shard) == 0);
                        assert!(back.same_channel(&h.senders[s]), "another sender back");
                    }
                    Err(TrySendError::Disconnected(back)) => {
                        assert!(model.gate_closed(), "no permit on an open channel");
                        assert!(back.same_channel(&h.senders[s]), "another sender back");
                    }
                }
            }
            (Op::OwnedSend(i), _) if !h.owned.is_empty() => {
                let i = usize::from(*i) % h.owned.len();
                let permit = h.owned.swap_remove(i);
                let dest = if model.receiver_gone {
                    None
                } else if model.closed {
                    // Still delivered: through the spill queue.
                    Some(Dest::Spill)
                } else {
                    Some(model.dest(shard))
                };
                if dest == Some(Dest::Unknown) {
                    h.keep(permit.release());
                    continue;
                }
                let val = model.fresh();
                let v = val.0;
                let back = permit.send(val);
                match dest {
                    Some(dest) => model.put(shard, dest, v),
                    None => {} // Dropped by the send: no receiver.
                }
                h.keep(back);
            }
            (Op::OwnedRelease(i), _) if !h.owned.is_empty() => {
                let i = usize::from(*i) % h.owned.len();
                let s = h.owned.swap_remove(i).release();
                h.keep(s);
            }
            (Op::OwnedDrop(i), _) if !h.owned.is_empty() => {
                let i = usize::from(*i) % h.owned.len();
                drop(h.owned.swap_remove(i));
            }
            (Op::TryRecv, _) => {
                let Some(r) = rx.as_mut() else { continue };
                match r.try_recv_traced() {
                    Ok((val, Some(from))) => model.pop(from, val.0),
                    Ok((val, None)) => model.pop_spilled(val.0),
                    Err(e) => {
                        assert_eq!(model.queued(), 0, "{e:?} with values queued");
                        let expect = if finished {
                            TryRecvError::Disconnected
                        } else {
                            TryRecvError::Empty
                        };
                        assert_eq!(
                            e,
                            expect,
                            "strong senders {}, closed {}, owned permits {}",
                            h.strong(),
                            model.closed,
                            h.owned.len()
                        );
                        model.empty_look();
                    }
                }
            }
            (Op::Recv, _) => {
                let Some(r) = rx.as_mut() else { continue };
                if model.queued() == 0 && !finished {
                    continue; // It would block forever.
                }
                match r.recv() {
                    Ok(val) => model.pop_any(val.0),
                    Err(_) => {
                        assert!(finished, "recv ended with a sender or a permit out");
                        model.empty_look();
                    }
                }
            }
            (Op::RecvMany(limit), _) | (Op::TryRecvMany(limit), _) => {
                let Some(r) = rx.as_mut() else { continue };
                let blocking = matches!(step.op, Op::RecvMany(_));
                let limit = usize::from(*limit % 20);
                let queued = model.queued();
                if blocking && limit > 0 && queued == 0 && !finished {
                    continue; // It would block forever.
                }
                let mut out = Vec::new();
                let result = if blocking {
                    Ok(r.recv_many(&mut out, limit))
                } else {
                    r.try_recv_many(&mut out, limit)
                };
                match result {
                    Ok(n) => {
                        assert_eq!(n, out.len(), "recv_many miscounted");
                        assert_eq!(
                            n,
                            limit.min(queued),
                            "recv_many took {n} of {queued} (limit {limit})"
                        );
                        if blocking && n == 0 && limit > 0 {
                            assert!(finished, "recv_many returned 0 with a sender alive");
                        }
                        let from_rings = limit.min(model.in_rings());
                        for val in out {
                            model.pop_any(val.0);
                        }
                        if from_rings < limit {
                            model.all_returned();
                        }
                        if n < limit {
                            model.empty_look();
                        }
                    }
                    Err(e) => {
                        assert!(limit > 0, "try_recv_many(.., 0) failed: {e:?}");
                        assert_eq!(queued, 0, "{e:?} with values queued");
                        let expect = if finished {
                            TryRecvError::Disconnected
                        } else {
                            TryRecvError::Empty
                        };
                        assert_eq!(e, expect);
                        model.empty_look();
                    }
                }
            }
            (Op::Close, _) => {
                let Some(r) = rx.as_mut() else { continue };
                r.close();
                model.closed = true;
            }
            (Op::Len, _) => {
                let Some(r) = rx.as_mut() else { continue };
                // `rings` first: `len` counts the rings the receiver knows.
                r.rings();
                assert_eq!(r.len(), model.queued(), "Receiver::len");
                assert_eq!(r.is_empty(), model.queued() == 0);
                if model.unbounded {
                    assert_eq!(r.max_capacity(), usize::MAX);
                }
                assert_eq!(r.capacity(), r.max_capacity().saturating_sub(r.len()));
                if let Some(tx) = h.senders.first() {
                    assert!(
                        tx.len() >= model.in_rings(),
                        "Sender::len {} with {} values in the rings",
                        tx.len(),
                        model.in_rings()
                    );
                }
            }
            (Op::CloneSender, Some(s)) => {
                if h.count() < MAX_HANDLES {
                    h.senders.push(h.senders[s].clone());
                }
            }
            (Op::DropSender(i), Some(_)) => {
                let i = usize::from(*i) % h.senders.len();
                drop(h.senders.swap_remove(i));
            }
            (Op::Downgrade, Some(s)) => {
                if h.count() < MAX_HANDLES {
                    h.weak.push(h.senders[s].downgrade());
                }
            }
            (Op::Upgrade(i), _) if !h.weak.is_empty() => {
                let i = usize::from(*i) % h.weak.len();
                let strong = h.strong();
                match h.weak[i].upgrade() {
                    Some(s) => {
                        assert!(strong > 0, "upgrade with every sender gone");
                        h.keep(s);
                    }
                    None => assert_eq!(strong, 0, "no upgrade with {strong} senders alive"),
                }
            }
            (Op::DropWeak(i), _) if !h.weak.is_empty() => {
                let i = usize::from(*i) % h.weak.len();
                drop(h.weak.swap_remove(i));
            }
            (Op::DropReceiver, _) => {
                if let Some(r) = rx.take() {
                    drop(r);
                    model.receiver_gone = true;
                    model.queues.clear();
                    model.unreturned.clear();
                    model.spill.clear();
                    model.spilling = false;
                }
            }
            (Op::Aborts { seed, rate }, _) => {
                seed_simulated_aborts(*seed);
                set_simulated_abort_rate(u32::from(*rate % 17));
            }
            _ => {}
        }
        check(&model, &h, rx.as_ref());
    }
    // Whatever is queued is dropped by the receiver, or with the channel.
    drop(h);
    drop(rx);
}

/// The invariants that hold after every step.
fn check(model: &Model, h: &Handles, rx: Option<&Receiver<Val>>) {
    assert_eq!(
        LIVE.load(Ordering::Relaxed),
        model.queued(),
        "live values are not the queued ones"
    );
    let strong = h.strong();
    for s in &h.senders {
        assert_eq!(s.strong_count(), strong, "Sender::strong_count");
        assert_eq!(s.weak_count(), h.weak.len(), "Sender::weak_count");
        assert_eq!(s.is_closed(), model.gate_closed(), "Sender::is_closed");
    }
    for w in &h.weak {
        assert_eq!(w.strong_count(), strong, "WeakSender::strong_count");
        assert_eq!(w.weak_count(), h.weak.len(), "WeakSender::weak_count");
    }
    if let Some(r) = rx {
        assert_eq!(
            r.is_disconnected(),
            strong == 0,
            "Receiver::is_disconnected"
        );
        assert_eq!(
            r.is_closed(),
            model.closed || strong == 0,
            "Receiver::is_closed"
        );
        assert_eq!(r.sender_strong_count(), strong);
        assert_eq!(r.sender_weak_count(), h.weak.len());
    }
}
