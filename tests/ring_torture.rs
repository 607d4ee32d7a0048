//! Torture tests of `percid::ring`: 8 to 64 producer threads on 2 CPUs, optionally
//! under the signal storm and forced migrations (see `tests/common/mod.rs`), one
//! consumer at normal priority, in every backend mode (scripts/test runs the whole
//! suite once per mode).
//!
//! Every value carries its producer and sequence number and counts its drops. Each
//! run checks that:
//!
//! * every value sent is received exactly once (a bitmap over all values);
//! * within one shard's ring, each producer's values come out in increasing sequence
//!   order (`Receiver::try_recv_traced` says which ring a value came from): the
//!   per-ring FIFO the channel promises, across migrations, aborts and cid reuse;
//! * every value made is dropped exactly once: by the consumer, by a producer that got
//!   it back (`Disconnected`), by the receiver's drop or by the channel's;
//! * values handed back by a failed send were never received.
//!
//! Unbounded channels and permits may route a value through the channel's spill
//! queue (`try_recv_traced` says `None`): it is one more FIFO source, and each
//! producer's values that went through it come out in sequence order too (the spill
//! queue keeps each thread's values in order). Runs that close the receiver while
//! producers send check the close race exactly: every send that succeeded was
//! received before `recv` reported the end, every send that failed gave its value
//! back, and nothing else.
//!
//! Variants: a tracing spin consumer over blocking and non-blocking sends (`fifo`),
//! blocking `send`/`recv` on rings of 2 and 4 slots (the full-ring sleep/wake path),
//! `send_many` batches (sizes 1 to 40: across `BATCH`) with a `recv_many` consumer,
//! an async consumer and async producers (a small `block_on` whose waker unparks the
//! thread), NUMA mode on an injected 2-node layout, the receiver dropped while
//! producers still send, and the channel dropped full; unbounded channels whose
//! receiver pauses until values spill, then catches up (`unbounded_spill`, and with a
//! `recv_many` consumer `unbounded_many`), and unbounded rings of the default size,
//! whose pages the receiver gives back while producers send (`unbounded_trim`); `close()` racing senders on bounded and
//! unbounded channels and permit holders (`close_racing_*`); permits (`reserve`,
//! `try_reserve`, owned, some dropped unused) under the storm (`permits`). The
//! `#[ignore]`d `long_*` tests (scripts/soak) run more values.

#[macro_use]
mod common;

use common::{Torture, scaled, tick};
use percid::cid::{Arena, Shard};
use percid::ring::{Builder, Receiver, SendError, Sender, TryRecvError, TrySendError};
use percid::testing::inject_node;
use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

// ---------------------------------------------------------------------------------
// Values

/// What a run's values have done, shared by the values themselves.
#[derive(Default)]
struct Stats {
    made: AtomicU64,
    dropped: AtomicU64,
}

/// A value: who sent it, its sequence number, and where to count its drop.
struct Msg {
    producer: u32,
    seq: u32,
    stats: &'static Stats,
}

impl Msg {
    fn new(producer: usize, seq: u64, stats: &'static Stats) -> Msg {
        stats.made.fetch_add(1, Ordering::Relaxed);
        Msg {
            producer: producer as u32,
            seq: seq as u32,
            stats,
        }
    }
}

impl Drop for Msg {
    fn drop(&mut self) {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------
// A tiny executor

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `f` to completion on this thread, parking while it is pending.
fn block_on<F: Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

// ---------------------------------------------------------------------------------
// The checker

/// The consumer's books: a bitmap of the values seen, and the last sequence number
/// of each producer in each ring.
struct Books {
    /// First global index of each producer's values.
    base: Vec<u64>,
    ops: Vec<u64>,
    seen: Vec<bool>,
    received: u64,
    /// Keyed by source: a shard's ring, or `None` for the spill queue.
    last: HashMap<(Option<Shard>, u32), u32>,
    shards: HashMap<Option<Shard>, u64>,
    /// Pauses of the `Pausing` consumer that saw the spill queue in use.
    spilled_pauses: u64,
    /// Values taken from a ring after a value from the spill queue: the channel
    /// went back to its rings once the receiver caught up.
    ring_after_spill: u64,
}

impl Books {
    fn new(t: &Torture) -> Books {
        let ops: Vec<u64> = (0..t.threads).map(|i| t.ops_for(i)).collect();
        let mut base = Vec::with_capacity(ops.len());
        let mut total = 0;
        for &n in &ops {
            base.push(total);
            total += n;
        }
        Books {
            base,
            ops,
            seen: vec![false; total as usize],
            received: 0,
            last: HashMap::new(),
            shards: HashMap::new(),
            spilled_pauses: 0,
            ring_after_spill: 0,
        }
    }

    fn index(&self, producer: u32, seq: u32) -> usize {
        let p = producer as usize;
        assert!(p < self.ops.len(), "a value from producer {producer}?");
        assert!(
            u64::from(seq) < self.ops[p],
            "producer {producer} never sent seq {seq}"
        );
        (self.base[p] + u64::from(seq)) as usize
    }

    /// A value received: never before.
    fn take(&mut self, m: Msg) {
        let i = self.index(m.producer, m.seq);
        assert!(
            !self.seen[i],
            "value {}/{} received twice",
            m.producer, m.seq
        );
        self.seen[i] = true;
        self.received += 1;
    }

    /// A value received from `shard`'s ring (`None`: the spill queue): never
    /// before, and after every earlier value of its producer that came out of that
    /// ring (or of the spill queue).
    fn take_traced(&mut self, m: Msg, shard: Option<Shard>) {
        if let Some(&last) = self.last.get(&(shard, m.producer)) {
            assert!(
                m.seq > last,
                "source {shard:?} gave producer {}'s seq {} after seq {last}: not FIFO",
                m.producer,
                m.seq
            );
        }
        self.last.insert((shard, m.producer), m.seq);
        if shard.is_some() && self.spilled() > 0 {
            self.ring_after_spill += 1;
        }
        *self.shards.entry(shard).or_default() += 1;
        self.take(m);
    }

    /// Values that came through the spill queue.
    fn spilled(&self) -> u64 {
        self.shards.get(&None).copied().unwrap_or(0)
    }

    fn was_received(&self, producer: u32, seq: u32) -> bool {
        self.seen[self.index(producer, seq)]
    }

    fn total(&self) -> u64 {
        self.seen.len() as u64
    }
}

// ---------------------------------------------------------------------------------
// Runs

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Consumer {
    /// `try_recv_traced`, yielding when empty; checks per-ring FIFO.
    Traced,
    /// Blocking `recv`.
    Blocking,
    /// `recv_many` of up to 48, then a blocking `recv` when it got nothing.
    Many,
    /// `recv_async` under `block_on`.
    Async,
    /// Takes half of the values (traced), then drops the receiver.
    DropsEarly,
    /// Takes nothing: the rings fill up and the channel is dropped holding values.
    Idle,
    /// Traced; at 0, 1/4, 1/2 and 3/4 of the values it stops taking until the
    /// spill queue holds a sixteenth of the values (more than the rings can hold
    /// is queued) or the senders are gone, then catches up.
    Pausing,
    /// Traced; closes the receiver after a quarter of the values, then takes what
    /// is left until the end is reported.
    ClosesMidway,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Produce {
    /// Blocking `send`; every fifth producer `try_send`s and yields on `Full`.
    Mixed,
    /// `send_many` of 1 to 40 values.
    Batches,
    /// Every other producer `send_async` under `block_on`, the others `send`.
    Async,
    /// `try_send` until the first `Full`, then stop (the `Idle` consumer).
    UntilFull,
    /// An unbounded channel: `send`, `try_send` (never `Full`) and `send_many`
    /// batches of 1 to 8.
    Unbounded,
    /// Permits: `try_reserve` (yielding on `Full`), `reserve` under `block_on`, and
    /// owned permits; every fifth value first takes a permit and gives it back
    /// unused.
    Permits,
}

#[derive(Clone, Copy, Debug)]
struct Run {
    capacity: usize,
    consumer: Consumer,
    produce: Produce,
    /// Nodes of an injected NUMA layout (0: plain mode).
    nodes: u32,
    /// An unbounded channel (its rings spill).
    unbounded: bool,
}

fn channel(run: &Run) -> (Sender<Msg>, Receiver<Msg>) {
    let mut builder = Builder::new()
        .capacity_per_cid(run.capacity)
        .unbounded(run.unbounded);
    if run.nodes > 0 {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
        let arena: &'static Arena =
            Box::leak(Box::new(Arena::with_nodes(cpus.max(64), cpus, run.nodes)));
        builder = builder.numa(true).arena(arena);
    }
    builder.build().expect("channel")
}

/// What the producers report.
#[derive(Default)]
struct Sent {
    ok: AtomicU64,
    /// Values a failed send handed back: (producer, seq).
    returned: Mutex<Vec<(u32, u32)>>,
    full: AtomicU64,
}

/// How the `Pausing` consumer holds the producers while it catches up, so that it
/// does catch up (a saturated spill queue never empties): it sets `on`, waits until
/// every producer holds or is done, drains the channel, then lets them go.
#[derive(Default)]
struct Quiet {
    on: AtomicBool,
    holding: AtomicUsize,
    finished: AtomicUsize,
}

impl Quiet {
    /// A producer's check before each value.
    fn hold(&self) {
        if self.on.load(Ordering::Acquire) {
            self.holding.fetch_add(1, Ordering::AcqRel);
            while self.on.load(Ordering::Acquire) {
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
            self.holding.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn consume(
    rx: Receiver<Msg>,
    run: Run,
    mut books: Books,
    gone: &AtomicBool,
    quiet: &Quiet,
) -> Books {
    let mut rx = rx;
    match run.consumer {
        Consumer::Traced => loop {
            match rx.try_recv_traced() {
                Ok((m, shard)) => books.take_traced(m, shard),
                Err(TryRecvError::Empty) => std::thread::yield_now(),
                Err(TryRecvError::Disconnected) => break,
            }
        },
        Consumer::Blocking => {
            while let Ok(m) = rx.recv() {
                books.take(m);
            }
        }
        Consumer::Many => {
            let mut out = Vec::with_capacity(48);
            loop {
                if rx.try_recv_many(&mut out, 48).unwrap_or(0) == 0 {
                    match rx.recv() {
                        Ok(m) => books.take(m),
                        Err(_) => break,
                    }
                }
                for m in out.drain(..) {
                    books.take(m);
                }
            }
        }
        Consumer::Async => block_on(async {
            while let Ok(m) = rx.recv_async().await {
                books.take(m);
            }
        }),
        Consumer::DropsEarly => {
            let stop = books.total() / 2;
            while books.received < stop {
                match rx.try_recv_traced() {
                    Ok((m, shard)) => books.take_traced(m, shard),
                    Err(TryRecvError::Empty) => std::thread::yield_now(),
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            gone.store(true, Ordering::Release);
            drop(rx);
            return books;
        }
        Consumer::Idle => {
            // Holds the receiver until every producer is done.
            while !rx.is_disconnected() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            return books;
        }
        Consumer::Pausing => {
            let total = books.total();
            let mut next_pause = 0;
            loop {
                if books.received >= next_pause && next_pause < total {
                    next_pause += (total / 4).max(1);
                    // Wait until the rings cannot hold what is queued by far: the
                    // spill queue grew (`rings` first: `len` counts the rings the
                    // receiver knows).
                    loop {
                        let rings = rx.rings();
                        let grown = rings * rx.capacity_per_cid() + (total / 16) as usize;
                        if rx.len() > grown {
                            books.spilled_pauses += 1;
                            break;
                        }
                        if rx.is_disconnected() {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    // Catch up with the producers held: an empty look then finds
                    // the spill queue empty and sends go back to the rings.
                    quiet.on.store(true, Ordering::Release);
                    let producers = books.ops.len();
                    while quiet.holding.load(Ordering::Acquire)
                        + quiet.finished.load(Ordering::Acquire)
                        < producers
                    {
                        std::thread::yield_now();
                    }
                    while let Ok((m, shard)) = rx.try_recv_traced() {
                        books.take_traced(m, shard);
                    }
                    quiet.on.store(false, Ordering::Release);
                }
                match rx.try_recv_traced() {
                    Ok((m, shard)) => books.take_traced(m, shard),
                    Err(TryRecvError::Empty) => std::thread::yield_now(),
                    Err(TryRecvError::Disconnected) => break,
                }
            }
        }
        Consumer::ClosesMidway => {
            let close_at = books.total() / 4;
            let mut closed = false;
            loop {
                if !closed && books.received >= close_at {
                    rx.close();
                    assert!(rx.is_closed());
                    closed = true;
                }
                match rx.try_recv_traced() {
                    Ok((m, shard)) => books.take_traced(m, shard),
                    Err(TryRecvError::Empty) => std::thread::yield_now(),
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            // The end is final: the receiver stays alive (holding nothing) while
            // the producers go on failing, and nothing more arrives.
            while !rx.is_disconnected() {
                assert!(rx.try_recv().is_err(), "a value after the end was reported");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
    assert!(rx.try_recv().is_err(), "a value after the end");
    books
}

fn produce(
    tx: &Sender<Msg>,
    run: Run,
    i: usize,
    ops: u64,
    stats: &'static Stats,
    sent: &Sent,
    quiet: &Quiet,
) {
    let tx = tx.clone();
    let mut node = i as u32 % run.nodes.max(1);
    if run.nodes > 0 {
        inject_node(Some(node));
    }
    let mut returned = Vec::new();
    let mut ok = 0u64;
    let mut full = 0u64;
    let give_back = |m: Msg, returned: &mut Vec<(u32, u32)>| {
        returned.push((m.producer, m.seq));
        drop(m);
    };
    let mut seq = 0u64;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ ((i as u64 + 1) << 20);
    while seq < ops {
        tick();
        if run.consumer == Consumer::Pausing {
            quiet.hold();
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if run.nodes > 0 && seq % 512 == 511 {
            node = (node + 1) % run.nodes;
            inject_node(Some(node));
        }
        match run.produce {
            Produce::Mixed if i % 5 == 4 => {
                let mut m = Msg::new(i, seq, stats);
                loop {
                    match tx.try_send(m) {
                        Ok(()) => {
                            ok += 1;
                            break;
                        }
                        Err(TrySendError::Full(back)) => {
                            full += 1;
                            m = back;
                            std::thread::yield_now();
                        }
                        Err(TrySendError::Disconnected(back)) => {
                            give_back(back, &mut returned);
                            break;
                        }
                    }
                }
                seq += 1;
            }
            Produce::Mixed => {
                match tx.send(Msg::new(i, seq, stats)) {
                    Ok(()) => ok += 1,
                    Err(SendError(back)) => give_back(back, &mut returned),
                }
                seq += 1;
            }
            Produce::Async if i % 2 == 1 => {
                match block_on(tx.send_async(Msg::new(i, seq, stats))) {
                    Ok(()) => ok += 1,
                    Err(SendError(back)) => give_back(back, &mut returned),
                }
                seq += 1;
            }
            Produce::Async => {
                match tx.send(Msg::new(i, seq, stats)) {
                    Ok(()) => ok += 1,
                    Err(SendError(back)) => give_back(back, &mut returned),
                }
                seq += 1;
            }
            Produce::Batches => {
                let k = (rng % 40 + 1).min(ops - seq);
                let batch: Vec<Msg> = (seq..seq + k).map(|s| Msg::new(i, s, stats)).collect();
                match tx.send_many(batch) {
                    Ok(()) => ok += k,
                    Err(SendError(back)) => {
                        let n = back.len() as u64;
                        assert!(n <= k, "send_many gave back more than it was given");
                        // The values not sent are the last ones, in order.
                        for (j, m) in back.iter().enumerate() {
                            assert_eq!(
                                u64::from(m.seq),
                                seq + k - n + j as u64,
                                "send_many gave back other values than the unsent tail"
                            );
                        }
                        ok += k - n;
                        for m in back {
                            give_back(m, &mut returned);
                        }
                    }
                }
                seq += k;
            }
            Produce::Unbounded => match rng % 3 {
                0 => {
                    match tx.send(Msg::new(i, seq, stats)) {
                        Ok(()) => ok += 1,
                        Err(SendError(back)) => give_back(back, &mut returned),
                    }
                    seq += 1;
                }
                1 => {
                    match tx.try_send(Msg::new(i, seq, stats)) {
                        Ok(()) => ok += 1,
                        Err(TrySendError::Full(_)) => {
                            panic!("try_send on an unbounded channel said Full")
                        }
                        Err(TrySendError::Disconnected(back)) => give_back(back, &mut returned),
                    }
                    seq += 1;
                }
                _ => {
                    let k = (rng / 3 % 8 + 1).min(ops - seq);
                    let batch: Vec<Msg> = (seq..seq + k).map(|s| Msg::new(i, s, stats)).collect();
                    match tx.send_many(batch) {
                        Ok(()) => ok += k,
                        Err(SendError(back)) => {
                            let n = back.len() as u64;
                            assert!(n <= k, "send_many gave back more than it was given");
                            ok += k - n;
                            for m in back {
                                give_back(m, &mut returned);
                            }
                        }
                    }
                    seq += k;
                }
            },
            Produce::Permits => {
                let m = Msg::new(i, seq, stats);
                seq += 1;
                if seq.is_multiple_of(5) {
                    // A permit taken and given back unused.
                    match rng % 3 {
                        0 => drop(tx.try_reserve()),
                        1 => drop(block_on(tx.reserve())),
                        _ => {
                            if let Ok(p) = block_on(tx.clone().reserve_owned()) {
                                drop(p.release());
                            }
                        }
                    }
                }
                match rng / 3 % 3 {
                    0 => loop {
                        match tx.try_reserve() {
                            Ok(permit) => {
                                permit.send(m);
                                ok += 1;
                                break;
                            }
                            Err(TrySendError::Full(())) => {
                                full += 1;
                                std::thread::yield_now();
                            }
                            Err(TrySendError::Disconnected(())) => {
                                give_back(m, &mut returned);
                                break;
                            }
                        }
                    },
                    1 => match block_on(tx.reserve()) {
                        Ok(permit) => {
                            permit.send(m);
                            ok += 1;
                        }
                        Err(_) => give_back(m, &mut returned),
                    },
                    _ => match block_on(tx.clone().reserve_owned()) {
                        Ok(permit) => {
                            let back = permit.send(m);
                            assert!(back.same_channel(&tx));
                            ok += 1;
                        }
                        Err(_) => give_back(m, &mut returned),
                    },
                }
            }
            Produce::UntilFull => {
                match tx.try_send(Msg::new(i, seq, stats)) {
                    Ok(()) => ok += 1,
                    Err(TrySendError::Full(back)) => {
                        full += 1;
                        give_back(back, &mut returned);
                        // The rest are never made.
                        break;
                    }
                    Err(TrySendError::Disconnected(back)) => give_back(back, &mut returned),
                }
                seq += 1;
            }
        }
    }
    if run.nodes > 0 {
        inject_node(None);
    }
    quiet.finished.fetch_add(1, Ordering::AcqRel);
    sent.ok.fetch_add(ok, Ordering::Relaxed);
    sent.full.fetch_add(full, Ordering::Relaxed);
    sent.returned.lock().unwrap().extend(returned);
}

/// One run: `t.threads` producers send `t.ops_total` values over a channel built as
/// `run` says while one consumer takes them.
fn torture(t: Torture, run: Run) {
    let t0 = Instant::now();
    let stats: &'static Stats = Box::leak(Box::default());
    let sent = Sent::default();
    let gone = AtomicBool::new(false);
    let quiet = Quiet::default();
    let (tx, rx) = channel(&run);
    let capacity = tx.capacity_per_cid();
    assert_eq!(capacity, run.capacity.next_power_of_two());
    let books = Books::new(&t);
    let total = books.total();

    let books = std::thread::scope(|s| {
        let consumer = std::thread::Builder::new()
            .name("ring-consumer".into())
            .spawn_scoped(s, {
                let (gone, quiet) = (&gone, &quiet);
                move || consume(rx, run, books, gone, quiet)
            })
            .expect("spawn the consumer");
        t.run(|i, ops| produce(&tx, run, i, ops, stats, &sent, &quiet));
        drop(tx);
        consumer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });

    // Every value is gone now: the consumer took it, a producer got it back, or a
    // drop of the receiver or of the channel dropped it.
    let made = stats.made.load(Ordering::Relaxed);
    let dropped = stats.dropped.load(Ordering::Relaxed);
    let ok = sent.ok.load(Ordering::Relaxed);
    let returned = sent.returned.into_inner().unwrap();
    eprintln!(
        "ring {t:?} {run:?}: {made} made, {ok} sent, {} received ({} from the spill queue, \
         {} pauses saw it grown, {} from a ring after it), {} returned, {} Full, rings {:?}, \
         {:?}",
        books.received,
        books.spilled(),
        books.spilled_pauses,
        books.ring_after_spill,
        returned.len(),
        sent.full.load(Ordering::Relaxed),
        books.shards,
        t0.elapsed()
    );
    assert_eq!(dropped, made, "values not dropped exactly once");
    assert_eq!(
        ok + returned.len() as u64,
        made,
        "sends neither succeeded nor gave the value back"
    );
    for &(p, s) in &returned {
        assert!(
            !books.was_received(p, s),
            "value {p}/{s} received and also handed back to its sender"
        );
    }
    match run.consumer {
        Consumer::DropsEarly => {
            assert!(books.received >= total / 2);
            assert!(books.received <= ok, "received values never sent");
        }
        Consumer::Idle => {
            assert_eq!(books.received, 0);
            assert!(returned.is_empty() || sent.full.load(Ordering::Relaxed) > 0);
        }
        Consumer::ClosesMidway => {
            // The close race, exactly: a send that succeeded was received before
            // the end was reported; one that failed gave its value back.
            assert_eq!(
                books.received, ok,
                "sends succeeded whose values were never received: a send published \
                 after close()"
            );
            assert!(books.received >= total / 4);
        }
        _ => {
            assert!(returned.is_empty(), "a send failed with the receiver alive");
            assert_eq!(ok, total, "producers did not send everything");
            assert_eq!(books.received, total, "values lost");
        }
    }
    if run.consumer == Consumer::Pausing {
        assert!(
            books.ring_after_spill > 0,
            "the channel never went back to its rings after spilling"
        );
        assert!(
            books.spilled_pauses > 0 && books.spilled() > 0,
            "the receiver paused, yet nothing went through the spill queue \
             ({} pauses saw it in use, {} values came from it)",
            books.spilled_pauses,
            books.spilled()
        );
    }
    if !run.unbounded && run.produce != Produce::Permits {
        assert_eq!(
            books.spilled(),
            0,
            "a bounded channel spilled without permits"
        );
    }
    if run.nodes > 0 {
        for shard in books.shards.keys() {
            if let Some(Shard::NodeCid { node, .. }) = shard {
                assert!(*node < run.nodes, "a ring outside the layout: {shard:?}");
            }
        }
    }
}

/// `t` with `threads` producers and `ops` values, scaled to the build (the
/// simulated backend only by 4 instead of 20: a send is one section, and the
/// aborts it injects are worth the time).
fn sized(mut t: Torture, threads: usize, ops: u64) -> Torture {
    t.threads = threads;
    let ops = if common::simulated() { ops * 5 } else { ops };
    t.ops_total = scaled(ops).max(threads as u64);
    t
}

fn run(capacity: usize, consumer: Consumer, produce: Produce) -> Run {
    Run {
        capacity,
        consumer,
        produce,
        nodes: 0,
        unbounded: false,
    }
}

/// An unbounded channel's run.
fn unbounded(capacity: usize, consumer: Consumer) -> Run {
    Run {
        unbounded: true,
        ..run(capacity, consumer, Produce::Unbounded)
    }
}

torture_variants! {
    fifo => |t| super::torture(
        sized(t, 64, 400_000),
        run(64, Consumer::Traced, Produce::Mixed),
    );
    blocking_cap2 => |t| super::torture(
        sized(t, 16, 100_000),
        run(2, Consumer::Blocking, Produce::Mixed),
    );
    blocking_cap4 => |t| super::torture(
        sized(t, 64, 100_000),
        run(4, Consumer::Blocking, Produce::Mixed),
    );
    batches => |t| super::torture(
        sized(t, 32, 400_000),
        run(64, Consumer::Many, Produce::Batches),
    );
    batches_cap4 => |t| super::torture(
        sized(t, 8, 100_000),
        run(4, Consumer::Traced, Produce::Batches),
    );
    async_ends => |t| super::torture(
        sized(t, 16, 100_000),
        run(4, Consumer::Async, Produce::Async),
    );
    numa => |t| super::torture(
        sized(t, 32, 200_000),
        Run { nodes: 2, ..run(8, Consumer::Traced, Produce::Mixed) },
    );
    receiver_dropped => |t| super::torture(
        sized(t, 32, 100_000),
        run(4, Consumer::DropsEarly, Produce::Mixed),
    );
    receiver_dropped_batches => |t| super::torture(
        sized(t, 16, 100_000),
        run(8, Consumer::DropsEarly, Produce::Batches),
    );
    dropped_full => |t| super::torture(
        sized(t, 16, 10_000),
        run(16, Consumer::Idle, Produce::UntilFull),
    );
    unbounded_spill => |t| super::torture(
        sized(t, 64, 200_000),
        unbounded(16, Consumer::Pausing),
    );
    unbounded_many => |t| super::torture(
        sized(t, 32, 200_000),
        unbounded(4, Consumer::Many),
    );
    // Rings of the default unbounded size (reserved, trimmed once the receiver
    // caught up after 2 MiB of slots): trims race the senders.
    unbounded_trim => |t| super::torture(
        sized(t, 32, 1_000_000),
        unbounded(percid::ring::UNBOUNDED_CAPACITY, Consumer::Traced),
    );
    close_racing_senders => |t| super::torture(
        sized(t, 32, 100_000),
        run(8, Consumer::ClosesMidway, Produce::Mixed),
    );
    close_racing_batches => |t| super::torture(
        sized(t, 16, 100_000),
        run(4, Consumer::ClosesMidway, Produce::Batches),
    );
    close_racing_unbounded => |t| super::torture(
        sized(t, 16, 100_000),
        unbounded(8, Consumer::ClosesMidway),
    );
    close_racing_permits => |t| super::torture(
        sized(t, 16, 50_000),
        run(4, Consumer::ClosesMidway, Produce::Permits),
    );
    permits => |t| super::torture(
        sized(t, 32, 100_000),
        run(4, Consumer::Traced, Produce::Permits),
    );
}

// ---------------------------------------------------------------------------------
// Long runs (scripts/soak)

#[test]
#[ignore = "long: scripts/soak runs it"]
fn long_fifo_storm_migrate() {
    torture(
        sized(Torture::storm_migrate(), 64, 4_000_000),
        run(32, Consumer::Traced, Produce::Mixed),
    );
}

#[test]
#[ignore = "long: scripts/soak runs it"]
fn long_blocking_cap2_storm_migrate() {
    torture(
        sized(Torture::storm_migrate(), 64, 1_000_000),
        run(2, Consumer::Blocking, Produce::Mixed),
    );
}

#[test]
#[ignore = "long: scripts/soak runs it"]
fn long_batches_async_storm_migrate() {
    torture(
        sized(Torture::storm_migrate(), 48, 2_000_000),
        run(4, Consumer::Async, Produce::Batches),
    );
}

#[test]
#[ignore = "long: scripts/soak runs it"]
fn long_numa_storm_migrate() {
    torture(
        sized(Torture::storm_migrate(), 64, 2_000_000),
        Run {
            nodes: 2,
            ..run(4, Consumer::Traced, Produce::Batches)
        },
    );
}
