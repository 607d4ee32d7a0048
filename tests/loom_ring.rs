//! loom models of `percid::ring`'s wake-up, disconnection, close and spill
//! protocols on the simulated backend (and the portable one, for a thread moved
//! there).
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --target-dir target/loom --test loom_ring`
//! (about two minutes, nearly all of it the wrap-around model, which bounds itself
//! at 1 preemption; the close and spill models take a second together).
//! Every model builds its channel on a fresh, leaked arena of 2 cids and 2 lanes,
//! with values that count their drops (a plain counter per model run, read after
//! every thread was joined). A lost wake-up shows as a deadlock, which loom reports:
//! the models keep a sender alive (or block on purpose) wherever a disconnection
//! would otherwise wake the blocked end for the wrong reason.
//!
//! * `recv_sleeps_and_is_woken_by_a_send`: the consumer's sleep (state store, fence,
//!   last look) against a send's publication and its load of the state.
//! * `recv_ends_after_the_last_sender_drops` and `recv_ends_without_any_value`:
//!   the senders' disconnection wakes a sleeping consumer, which drains first.
//! * `receiver_drop_releases_a_blocked_sender`: a sender blocked on a full ring gets
//!   its value back (or, if it published before the receiver's drop drained the ring,
//!   the channel drops it), and every value is dropped exactly once.
//! * `wrap_around_two_producers_two_cids`: rings of 2 slots, two producers on two
//!   simulated cids, 3 values and 1: every value comes out once, FIFO per ring.
//! * `blocked_sender_is_woken_by_the_consumer` (and its portable twin): a ring of 1
//!   slot, the second send blocks until the consumer takes the first and publishes.
//!
//! The channel's gate, read inside every send section: `close` and the unbounded
//! spill.
//!
//! * `close_against_a_send_on_a_cid` (and its portable twin): a send racing `close`
//!   either fails with its value back, or its value is received before the receiver
//!   reports the channel closed; never both, never neither. (It found `quiesce`
//!   missing a shard materialised while it scanned the materialised ones.)
//! * `permit_taken_before_close_delivers`: a permit taken before `close` sends after
//!   it, and the receiver waits for it; a refused permit sends nothing. (It found the
//!   permit count and the closed mark, two SeqCst words, unordered under loom: they
//!   share one word now.)
//! * `spill_keeps_each_threads_order`: an unbounded channel with rings of 1 slot,
//!   two producers on one cid sending two values each: every value once, each
//!   producer's in order.
//! * `spill_hand_over_keeps_one_threads_order`: an unbounded channel with a ring of
//!   1 slot; one producer sends three values while a blocking `recv` takes them, so
//!   the channel goes from the ring to the spill queue and back (the receiver clears
//!   the spilling state while the producer's next send reads it, either once the
//!   queue is empty or when it takes a batch while the ring is empty, then hands the
//!   batch out before the ring): every value once, in the producer's order, and the
//!   spilled sends wake the sleeping receiver.
//! * `spill_batch_goes_before_the_ring`: the same with four values, so a batch of
//!   two can be taken while the ring is empty and the fourth value goes to the
//!   ring before the batch is out.
//! * `close_against_a_spilling_send`: the second send of an unbounded channel goes
//!   through the spill path while the receiver closes: each send either fails with
//!   its value back or its value is received before the end is reported, in order
//!   (and its portable twin, whose sends take the lane's lock).
//! * `receiver_drop_against_a_spilling_send`: the same against the receiver's drop:
//!   each value is handed back or dropped by the channel, exactly once, and once a
//!   send failed the next one fails too.
//! * `permit_sent_after_close_on_a_full_ring`: a permit taken on an empty ring of 1
//!   slot, the ring filled by a `try_send`, with `close` racing all three: a permit
//!   granted is always delivered (through the spill queue when the ring is full or
//!   the gate closed), after the ring's value; a refused permit or send sends
//!   nothing.
#![cfg(loom)]

use loom::thread;
use percid::cid::Arena;
use percid::ring::{Builder, Receiver, RecvError, SendError, Sender, TryRecvError, TrySendError};
use percid::testing::place;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A value that counts its drops in a counter of its model run.
#[derive(Debug)]
struct Counted {
    v: u64,
    drops: &'static AtomicUsize,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::Relaxed);
    }
}

/// A channel of `capacity` slots per ring on a fresh arena, and a fresh drop counter.
fn channel(capacity: usize) -> (Sender<Counted>, Receiver<Counted>, &'static AtomicUsize) {
    channel_with(capacity, false)
}

/// A channel as [`channel`], unbounded when `unbounded`.
fn channel_with(
    capacity: usize,
    unbounded: bool,
) -> (Sender<Counted>, Receiver<Counted>, &'static AtomicUsize) {
    let arena: &'static Arena = Box::leak(Box::new(Arena::with_capacity(2, 2)));
    let drops: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
    let (tx, rx) = Builder::new()
        .capacity_per_cid(capacity)
        .unbounded(unbounded)
        .arena(arena)
        .build()
        .expect("channel");
    (tx, rx, drops)
}

/// Takes every value until the receiver reports the end (closed or disconnected).
fn drain_until_the_end(rx: &mut Receiver<Counted>) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(c) => got.push(c.v),
            Err(TryRecvError::Disconnected) => return got,
            Err(TryRecvError::Empty) => thread::yield_now(),
        }
    }
}

fn value(v: u64, drops: &'static AtomicUsize) -> Counted {
    Counted { v, drops }
}

/// (a) One send against a blocking `recv`: the value arrives, no wake-up is lost. A
/// second sender stays alive until the value arrived, so only the send can wake the
/// consumer.
#[test]
fn recv_sleeps_and_is_woken_by_a_send() {
    loom::model(|| {
        let (tx, mut rx, drops) = channel(2);
        let keep = tx.clone();
        let producer = thread::spawn(move || {
            place(Some(0));
            tx.send(value(7, drops)).expect("receiver alive");
        });
        place(Some(1));
        let got = rx.recv().expect("a sender is alive");
        assert_eq!(got.v, 7);
        drop(got);
        producer.join().unwrap();
        drop(keep);
        assert_eq!(rx.try_recv().err(), Some(TryRecvError::Disconnected));
        drop(rx);
        assert_eq!(drops.load(Ordering::Relaxed), 1);
    });
}

/// (b) The only sender sends one value and drops: `recv` returns the value, then
/// `Err` (never `Err` first, never a hang).
#[test]
fn recv_ends_after_the_last_sender_drops() {
    loom::model(|| {
        let (tx, mut rx, drops) = channel(2);
        let producer = thread::spawn(move || {
            place(Some(0));
            tx.send(value(1, drops)).expect("receiver alive");
            drop(tx);
        });
        let got = rx.recv().expect("the value before the disconnection");
        assert_eq!(got.v, 1);
        drop(got);
        assert_eq!(rx.recv().err(), Some(RecvError));
        producer.join().unwrap();
        drop(rx);
        assert_eq!(drops.load(Ordering::Relaxed), 1);
    });
}

/// (b) The only sender drops without sending while the consumer blocks.
#[test]
fn recv_ends_without_any_value() {
    loom::model(|| {
        let (tx, mut rx, _drops) = channel(1);
        let producer = thread::spawn(move || drop(tx));
        assert_eq!(rx.recv().err(), Some(RecvError));
        producer.join().unwrap();
    });
}

/// (b) A sender fills its ring of 1 slot, then blocks on its second send while the
/// receiver is dropped: the blocked send ends, with its value back unless it
/// published into the ring the receiver's drop had just drained (the channel's drop
/// then drops it). A send that starts after the receiver is gone always fails.
#[test]
fn receiver_drop_releases_a_blocked_sender() {
    loom::model(|| {
        let (tx, rx, drops) = channel(1);
        let producer = thread::spawn(move || {
            place(Some(0));
            let first = tx.send(value(1, drops));
            let second = tx.send(value(2, drops));
            let third = tx.send(value(3, drops));
            let back: Vec<u64> = [first, second, third]
                .into_iter()
                .filter_map(|r| r.err().map(|SendError(c)| c.v))
                .collect();
            assert!(tx.is_disconnected());
            back
        });
        drop(rx);
        let back = producer.join().unwrap();
        // The ring has 1 slot and the receiver's drop drains it once: of the three
        // sends at most two succeed (one before the drain, one racing it), and the
        // one after a successful racer sees the receiver gone.
        assert!(
            back.contains(&3),
            "a send on a full ring without receiver succeeded: {back:?}"
        );
        assert!(
            back.windows(2).all(|w| w[0] < w[1]),
            "values returned out of order: {back:?}"
        );
        assert_eq!(
            drops.load(Ordering::Relaxed),
            3,
            "values not dropped exactly once"
        );
    });
}

/// (c) Wrap-around: rings of 2 slots, two producers on cids 0 and 1, with 3 values
/// and 1 value (the third send of the first waits for the consumer to free a slot,
/// then writes slot 0 again). Every value comes out exactly once, and each
/// producer's values in the order it sent them. (3 values each, or 2 preemptions,
/// take loom more than ten minutes.)
#[test]
fn wrap_around_two_producers_two_cids() {
    // Three threads with blocking on both ends: at 2 preemptions loom needs far
    // more than ten minutes, so this model bounds them at 1.
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(model.preemption_bound.unwrap_or(1).min(1));
    model.check(|| {
        let (tx, mut rx, drops) = channel(2);
        let producers: Vec<_> = [0u32, 1]
            .into_iter()
            .map(|cid| {
                let tx = tx.clone();
                thread::spawn(move || {
                    place(Some(cid));
                    for k in 0..3 - 2 * u64::from(cid) {
                        tx.send(value(u64::from(cid) * 10 + k, drops))
                            .expect("receiver alive");
                    }
                })
            })
            .collect();
        drop(tx);
        let mut got: Vec<u64> = Vec::new();
        while let Ok(c) = rx.recv() {
            got.push(c.v);
        }
        for p in producers {
            p.join().unwrap();
        }
        let mut values = got.clone();
        values.sort_unstable();
        assert_eq!(values, [0, 1, 2, 10], "values lost or duplicated: {got:?}");
        // Each producer stays on its own cid (no other section there to abort it
        // onto a lane): its values share one ring, so they come out in order.
        for p in [0, 1] {
            let mine: Vec<u64> = got.iter().copied().filter(|v| v / 10 == p).collect();
            assert!(mine.is_sorted(), "ring of cid {p} not FIFO: {got:?}");
        }
        drop(rx);
        assert_eq!(drops.load(Ordering::Relaxed), 4);
    });
}

/// (d) A ring of 1 slot: the second send blocks until the consumer takes the first
/// value and publishes the head. A second sender stays alive throughout, so only
/// that publication can release the blocked sender and only the sends can wake the
/// consumer.
fn blocked_sender_is_woken(cid: Option<u32>) {
    loom::model(move || {
        let (tx, mut rx, drops) = channel(1);
        let keep = tx.clone();
        let producer = thread::spawn(move || {
            place(cid);
            tx.send(value(1, drops)).expect("receiver alive");
            tx.send(value(2, drops)).expect("receiver alive");
        });
        let a = rx.recv().expect("first value");
        let b = rx.recv().expect("second value");
        assert_eq!((a.v, b.v), (1, 2), "one producer on one ring: FIFO");
        producer.join().unwrap();
        drop(keep);
        drop((a, b, rx));
        assert_eq!(drops.load(Ordering::Relaxed), 2);
    });
}

#[test]
fn blocked_sender_is_woken_by_the_consumer() {
    blocked_sender_is_woken(Some(0));
}

#[test]
fn blocked_portable_sender_is_woken_by_the_consumer() {
    blocked_sender_is_woken(None);
}

/// One producer on cid 0 sends `0..n` through an unbounded channel with a ring of 1
/// slot while a blocking `recv` on cid 1 takes them: every value once, in order.
fn one_producer_through_a_spill(n: u64) {
    let (tx, mut rx, drops) = channel_with(1, true);
    let producer = thread::spawn(move || {
        place(Some(0));
        for k in 0..n {
            tx.send(value(k, drops)).expect("receiver alive");
        }
    });
    place(Some(1));
    let mut got = Vec::new();
    while let Ok(c) = rx.recv() {
        got.push(c.v);
    }
    producer.join().unwrap();
    assert!(
        got.iter().copied().eq(0..n),
        "one thread's values lost, twice or out of order: {got:?}"
    );
    drop(rx);
    assert_eq!(drops.load(Ordering::Relaxed), n as usize);
}

/// The spill hand-over: a ring of 1 slot, three sends, a blocking receiver. The
/// sends go to the ring, to the spill queue once it is full, and back to the ring
/// once the receiver caught up (it clears the spilling state under the spill lock
/// while the producer's section may read it); each spilled send must wake the
/// receiver, and the one producer's values come out in its order.
#[test]
fn spill_hand_over_keeps_one_threads_order() {
    loom::model(|| one_producer_through_a_spill(3));
}

/// The hand-over with a batch: four sends through a ring of 1 slot, so the
/// receiver can take a spill batch of two while the ring is empty, send the
/// producer back to the ring, and must still hand out the batch before the ring's
/// value. Two preemptions (the producer after its third send, the receiver after
/// taking the batch) reach that order; the model takes seconds at that bound.
#[test]
fn spill_batch_goes_before_the_ring() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(2);
    model.check(|| one_producer_through_a_spill(4));
}

/// `close` against a send on the spill path: each send fails with its value back,
/// or its value is received before the receiver reports the end.
fn close_against_a_spilling_send_on(cid: Option<u32>) {
    loom::model(move || {
        let (tx, mut rx, drops) = channel_with(1, true);
        // The end must come from `close`, not from the senders leaving.
        let keep = tx.clone();
        let producer = thread::spawn(move || {
            place(cid);
            // The first fills the ring of 1 slot, the second spills.
            let mut sent = Vec::new();
            for k in 0..2 {
                match tx.send(value(k, drops)) {
                    Ok(()) => sent.push(k),
                    Err(SendError(c)) => assert_eq!(c.v, k, "another value back"),
                }
            }
            sent
        });
        place(Some(1));
        rx.close();
        let got = drain_until_the_end(&mut rx);
        let sent = producer.join().unwrap();
        assert_eq!(got, sent, "received {got:?}, sent {sent:?}");
        assert!(keep.is_closed());
        drop((keep, rx));
        assert_eq!(drops.load(Ordering::Relaxed), 2, "dropped exactly once");
    });
}

#[test]
fn close_against_a_spilling_send() {
    close_against_a_spilling_send_on(Some(0));
}

#[test]
fn close_against_a_spilling_portable_send() {
    close_against_a_spilling_send_on(None);
}

/// The receiver's drop against a send on the spill path: every value is handed back
/// or dropped with the channel, exactly once; a send after a failed one fails.
#[test]
fn receiver_drop_against_a_spilling_send() {
    loom::model(|| {
        let (tx, rx, drops) = channel_with(1, true);
        let producer = thread::spawn(move || {
            place(Some(0));
            let results: Vec<bool> = (0..2)
                .map(|k| match tx.send(value(k, drops)) {
                    Ok(()) => true,
                    Err(SendError(c)) => {
                        assert_eq!(c.v, k, "another value back");
                        false
                    }
                })
                .collect();
            results
        });
        drop(rx);
        let results = producer.join().unwrap();
        assert!(
            results.windows(2).all(|w| w[0] || !w[1]),
            "a send succeeded after one failed: {results:?}"
        );
        // The producer's sender was the last end: the channel is gone too.
        assert_eq!(
            drops.load(Ordering::Relaxed),
            2,
            "values not dropped exactly once: {results:?}"
        );
    });
}

/// A permit taken on an empty ring of 1 slot; the producer fills the ring with a
/// `try_send`, then sends with the permit, all while the receiver closes: a granted
/// permit's value goes to the spill queue (the ring is full, or the gate closed)
/// and is always delivered, after the ring's value; the `try_send` either succeeded
/// (its value received) or failed with its value back. (The permit may be refused
/// while the `try_send` still gets in: `close` marks the permits closed before it
/// shuts the gate; the value is then received like any send before `close`.)
#[test]
fn permit_sent_after_close_on_a_full_ring() {
    loom::model(|| {
        let (tx, mut rx, drops) = channel_with(1, false);
        let keep = tx.clone();
        let producer = thread::spawn(move || {
            place(Some(0));
            let permit = match tx.try_reserve() {
                Ok(permit) => Some(permit),
                Err(e) => {
                    assert!(e.is_disconnected(), "an empty ring refused a permit");
                    None
                }
            };
            let mut sent = Vec::new();
            match tx.try_send(value(0, drops)) {
                Ok(()) => sent.push(0),
                Err(e) => {
                    assert!(e.is_disconnected(), "a ring of 1 slot full before a send");
                    assert_eq!(e.into_inner().v, 0);
                }
            }
            if let Some(permit) = permit {
                permit.send(value(1, drops));
                sent.push(1);
            }
            sent
        });
        place(Some(1));
        rx.close();
        let got = drain_until_the_end(&mut rx);
        let sent = producer.join().unwrap();
        assert_eq!(got, sent, "received {got:?}, sent {sent:?}");
        drop((keep, rx));
        let made = 1 + usize::from(sent.contains(&1));
        assert_eq!(drops.load(Ordering::Relaxed), made, "dropped exactly once");
    });
}

fn close_against_a_send(cid: Option<u32>) {
    loom::model(move || {
        let (tx, mut rx, drops) = channel(2);
        // A sender stays alive: the receiver must end because of `close`, not
        // because every sender left.
        let keep = tx.clone();
        let producer = thread::spawn(move || {
            place(cid);
            match tx.try_send(value(5, drops)) {
                Ok(()) => true,
                Err(TrySendError::Disconnected(c)) => {
                    assert_eq!(c.v, 5);
                    false
                }
                Err(TrySendError::Full(_)) => panic!("a ring of 2 slots full after one send"),
            }
        });
        place(Some(1));
        rx.close();
        let got = drain_until_the_end(&mut rx);
        let sent = producer.join().unwrap();
        assert_eq!(
            got,
            if sent { vec![5] } else { vec![] },
            "sent: {sent}, received: {got:?}"
        );
        assert!(keep.is_closed());
        drop((keep, rx));
        assert_eq!(drops.load(Ordering::Relaxed), 1, "dropped exactly once");
    });
}

#[test]
fn close_against_a_send_on_a_cid() {
    close_against_a_send(Some(0));
}

#[test]
fn close_against_a_portable_send() {
    close_against_a_send(None);
}

#[test]
fn permit_taken_before_close_delivers() {
    loom::model(|| {
        let (tx, mut rx, drops) = channel(2);
        let keep = tx.clone();
        let producer = thread::spawn(move || {
            place(Some(0));
            match tx.try_reserve() {
                Ok(permit) => {
                    permit.send(value(8, drops));
                    true
                }
                Err(TrySendError::Disconnected(())) => false,
                Err(TrySendError::Full(())) => panic!("an empty ring refused a permit"),
            }
        });
        place(Some(1));
        rx.close();
        let got = drain_until_the_end(&mut rx);
        let permitted = producer.join().unwrap();
        assert_eq!(
            got,
            if permitted { vec![8] } else { vec![] },
            "permitted: {permitted}, received: {got:?}"
        );
        drop((keep, rx));
        assert_eq!(
            drops.load(Ordering::Relaxed),
            usize::from(permitted),
            "dropped exactly once"
        );
    });
}

#[test]
fn spill_keeps_each_threads_order() {
    // Three threads and a lock on the spill path: bound the preemptions at 1.
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(model.preemption_bound.unwrap_or(1).min(1));
    model.check(|| {
        let (tx, mut rx, drops) = channel_with(1, true);
        let producers: Vec<_> = [0u64, 1]
            .into_iter()
            .map(|p| {
                let tx = tx.clone();
                thread::spawn(move || {
                    // Both on cid 0: the ring of 1 slot fills and sends spill.
                    place(Some(0));
                    for k in 0..2 {
                        tx.send(value(p * 10 + k, drops)).expect("receiver alive");
                    }
                })
            })
            .collect();
        drop(tx);
        let mut got = Vec::new();
        while let Ok(c) = rx.recv() {
            got.push(c.v);
        }
        for p in producers {
            p.join().unwrap();
        }
        let mut all = got.clone();
        all.sort_unstable();
        assert_eq!(all, [0, 1, 10, 11], "values lost or duplicated: {got:?}");
        for p in [0, 1] {
            let mine: Vec<u64> = got.iter().copied().filter(|v| v / 10 == p).collect();
            assert!(mine.is_sorted(), "producer {p} overtaken: {got:?}");
        }
        drop(rx);
        assert_eq!(drops.load(Ordering::Relaxed), 4);
    });
}
