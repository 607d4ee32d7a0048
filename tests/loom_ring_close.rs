//! loom models of `percid::ring`'s gate: closing the channel against racing sends
//! and permits, and the unbounded channel's spill hand-over, on the simulated
//! backend (and the portable one, for a thread moved there).
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --target-dir target/loom --test loom_ring_close`.
//!
//! * `close_against_a_send` (and its portable twin): a send racing `close` either
//!   fails with its value back, or its value is received before the receiver reports
//!   the channel closed; never both, never neither. The gate is read inside the send
//!   section and `close` fences every shard after setting it.
//! * `permit_taken_before_close_delivers`: a permit taken before `close` sends after
//!   it, and the receiver waits for it; a permit refused by the closed gate sends
//!   nothing.
//! * `spill_keeps_each_threads_order`: an unbounded channel with rings of 1 slot,
//!   two producers on one cid (so their sends spill) sending two values each: every
//!   value comes out once, each producer's in order.
#![cfg(loom)]

use loom::thread;
use percid::cid::Arena;
use percid::ring::{Builder, Receiver, Sender, TryRecvError, TrySendError};
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

fn value(v: u64, drops: &'static AtomicUsize) -> Counted {
    Counted { v, drops }
}

/// A channel on a fresh, leaked arena of 2 cids and 2 lanes, and a drop counter.
fn channel(
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

/// Takes every value until the receiver reports the channel closed and empty.
fn drain_until_closed(rx: &mut Receiver<Counted>) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(c) => got.push(c.v),
            Err(TryRecvError::Disconnected) => return got,
            Err(TryRecvError::Empty) => thread::yield_now(),
        }
    }
}

fn close_against_a_send(cid: Option<u32>) {
    loom::model(move || {
        let (tx, mut rx, drops) = channel(2, false);
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
        let got = drain_until_closed(&mut rx);
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
        let (tx, mut rx, drops) = channel(2, false);
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
        let got = drain_until_closed(&mut rx);
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
        let (tx, mut rx, drops) = channel(1, true);
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
