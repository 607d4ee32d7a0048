//! Behaviour of `percid::ring`: errors, ordering, disconnection, drops, batches and
//! the async ends. (Preemption, signals and migrations: tests/ring_torture.rs.)

use percid::ring::{self, Builder, RecvError, RingError, TryRecvError, TrySendError};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;

/// Counts its drops in a shared counter.
struct Tracked {
    id: u64,
    drops: Arc<AtomicUsize>,
}

impl Tracked {
    fn new(id: u64, drops: &Arc<AtomicUsize>) -> Tracked {
        Tracked {
            id,
            drops: drops.clone(),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

/// Runs a future to completion on this thread (the waker unparks it).
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}

#[test]
fn bad_configurations_are_typed_errors() {
    assert_eq!(
        ring::channel::<u64>(0).unwrap_err(),
        RingError::ZeroCapacity
    );
    assert!(matches!(
        ring::channel::<u64>(ring::MAX_CAPACITY + 1).unwrap_err(),
        RingError::CapacityTooLarge { .. }
    ));
    assert!(matches!(
        ring::channel::<[u8; 1 << 20]>(4096).unwrap_err(),
        RingError::RingTooLarge { .. }
    ));
    #[repr(align(8192))]
    struct Huge(#[allow(dead_code)] u8);
    assert!(matches!(
        ring::channel::<Huge>(4).unwrap_err(),
        RingError::AlignTooLarge { .. }
    ));
    let plain: &'static percid::cid::Arena = Box::leak(Box::new(percid::cid::Arena::new()));
    assert_eq!(
        Builder::new()
            .numa(true)
            .arena(plain)
            .build::<u64>()
            .unwrap_err(),
        RingError::NotNumaArena
    );
    // Display says what went wrong.
    assert!(RingError::ZeroCapacity.to_string().contains("capacity"));
}

#[test]
fn capacity_rounds_up_to_a_power_of_two() {
    let (tx, rx) = ring::channel::<u8>(5).unwrap();
    assert_eq!(tx.capacity_per_cid(), 8);
    assert_eq!(rx.capacity_per_cid(), 8);
}

#[test]
fn one_thread_gets_fifo_and_full() {
    // One thread that does not migrate between sends stays on one ring... unless
    // the scheduler moves it: then a second ring appears, and FIFO holds per ring.
    let (tx, mut rx) = ring::channel::<u64>(4).unwrap();
    let mut sent = Vec::new();
    let mut full = None;
    for i in 0..64 {
        match tx.try_send(i) {
            Ok(()) => sent.push(i),
            Err(TrySendError::Full(v)) => {
                full = Some(v);
                break;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(full, Some(sent.len() as u64), "the value comes back");
    assert!(sent.len() >= 4, "a ring holds its capacity");
    let got: Vec<u64> = rx.drain().collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, sent);
    if rx.rings() == 1 {
        assert_eq!(got, sent, "one ring is FIFO");
    }
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
}

/// Fills the caller's ring until `Full`, empties it, and again, 500 times: the
/// tail wraps the slots many times, every refill finds the producers' copy of the
/// head stale (so the send refreshes it), and every payload word arrives intact.
fn fill_and_drain<T, F>(make: F)
where
    T: Send + PartialEq + std::fmt::Debug + 'static,
    F: Fn(u64) -> T,
{
    let (tx, mut rx) = ring::channel::<T>(4).unwrap();
    let mut next = 0u64;
    for _ in 0..500 {
        let first = next;
        loop {
            match tx.try_send(make(next)) {
                Ok(()) => next += 1,
                Err(TrySendError::Full(v)) => {
                    assert_eq!(v, make(next), "the refused value comes back");
                    break;
                }
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert!(next - first >= 4, "a ring holds its capacity");
        let mut got: Vec<T> = rx.drain().collect();
        let mut want: Vec<T> = (first..next).map(&make).collect();
        if rx.rings() == 1 {
            assert_eq!(got, want, "one ring is FIFO");
        }
        let key = |v: &T| format!("{v:?}");
        got.sort_by_key(key);
        want.sort_by_key(key);
        assert_eq!(got, want);
    }
}

#[test]
fn full_rings_refill_after_draining_one_word_payloads() {
    fill_and_drain(|i| i);
    fill_and_drain(|i| i as u8);
}

#[test]
fn full_rings_refill_after_draining_many_word_payloads() {
    fill_and_drain(|i| [i, !i, i.rotate_left(17)]);
    fill_and_drain(|i| (i as u32, format!("value {i}")));
}

/// A receiver that takes a spill batch while the rings are empty sends senders
/// back to the rings at once; the rest of the batch must still come out before a
/// value sent to a ring afterwards. One thread, rings of 1 slot: `a` fills the
/// ring, `b` and `c` spill, the receiver takes `a` and then `b` (taking the batch
/// `[b, c]`), `d` goes to a ring, and `c` must come before `d`.
#[test]
fn a_spilled_batch_comes_before_later_ring_values() {
    let (tx, mut rx) = ring::Builder::new()
        .unbounded(true)
        .capacity_per_cid(1)
        .build::<u64>()
        .unwrap();
    for round in 0..100u64 {
        let [a, b, c, d] = [0, 1, 2, 3].map(|k| round * 4 + k);
        for v in [a, b, c] {
            tx.send(v).unwrap();
        }
        assert_eq!(rx.try_recv(), Ok(a));
        assert_eq!(rx.try_recv(), Ok(b));
        tx.send(d).unwrap();
        assert_eq!(
            rx.try_recv(),
            Ok(c),
            "round {round}: a ring value overtook the spill"
        );
        assert_eq!(rx.try_recv(), Ok(d));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }
}

#[test]
fn receiver_ends_after_senders_leave() {
    let (tx, mut rx) = ring::channel::<u64>(64).unwrap();
    let tx2 = tx.clone();
    tx.send(1).unwrap();
    drop(tx);
    assert!(!rx.is_disconnected());
    tx2.send(2).unwrap();
    drop(tx2);
    assert!(rx.is_disconnected());
    let mut got = vec![rx.recv().unwrap(), rx.recv().unwrap()];
    got.sort();
    assert_eq!(got, [1, 2]);
    assert_eq!(rx.recv(), Err(RecvError));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
}

#[test]
fn senders_get_their_value_back_without_receiver() {
    let drops = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = ring::channel::<Tracked>(8).unwrap();
    tx.send(Tracked::new(1, &drops)).unwrap();
    drop(rx);
    // What the ring held is dropped with the receiver.
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert!(tx.is_disconnected());
    match tx.try_send(Tracked::new(2, &drops)) {
        Err(TrySendError::Disconnected(v)) => assert_eq!(v.id, 2),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    let back = tx.send(Tracked::new(3, &drops)).unwrap_err().into_inner();
    assert_eq!(back.id, 3);
    let rest = tx
        .send_many((4..8).map(|i| Tracked::new(i, &drops)))
        .unwrap_err()
        .into_inner();
    assert_eq!(rest.iter().map(|t| t.id).collect::<Vec<_>>(), [4, 5, 6, 7]);
    drop(rest);
    drop(back);
    assert_eq!(drops.load(Ordering::SeqCst), 7);
}

#[test]
fn every_value_is_dropped_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    {
        let (tx, mut rx) = ring::channel::<Tracked>(16).unwrap();
        for i in 0..10 {
            tx.send(Tracked::new(i, &drops)).unwrap();
        }
        // Take some, leave the rest in the channel.
        for _ in 0..4 {
            drop(rx.recv().unwrap());
        }
        assert_eq!(drops.load(Ordering::SeqCst), 4);
        drop(rx);
        assert_eq!(drops.load(Ordering::SeqCst), 10);
        // Sent after the receiver left: handed back, dropped by the caller.
        assert!(tx.try_send(Tracked::new(99, &drops)).is_err());
        assert_eq!(drops.load(Ordering::SeqCst), 11);
    }
    {
        // Channel dropped by its last sender while holding values.
        let (tx, rx) = ring::channel::<Tracked>(16).unwrap();
        drop(rx);
        let (tx2, rx2) = ring::channel::<Tracked>(16).unwrap();
        for i in 0..5 {
            tx2.send(Tracked::new(i, &drops)).unwrap();
        }
        drop(tx2);
        assert_eq!(drops.load(Ordering::SeqCst), 11);
        drop(rx2);
        drop(tx);
        assert_eq!(drops.load(Ordering::SeqCst), 16);
    }
}

#[test]
fn send_many_commits_batches_in_order() {
    let (tx, mut rx) = ring::channel::<u64>(1024).unwrap();
    tx.send_many(0..100).unwrap();
    let mut out = Vec::new();
    assert_eq!(rx.recv_many(&mut out, 1000), 100);
    let mut sorted = out.clone();
    sorted.sort();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    if rx.rings() == 1 {
        assert_eq!(out, sorted);
    }
    // More than a ring holds: the sender blocks until a consumer frees slots.
    let (tx, mut rx) = ring::channel::<u64>(8).unwrap();
    let producer = thread::spawn(move || tx.send_many(0..10_000).unwrap());
    let mut sum = 0;
    while let Ok(v) = rx.recv() {
        sum += v;
    }
    producer.join().unwrap();
    assert_eq!(sum, (0..10_000).sum::<u64>());
}

#[test]
fn large_and_odd_sized_values_arrive_intact() {
    #[derive(Clone, PartialEq, Debug)]
    struct Big([u64; 40], u8);
    let (tx, mut rx) = ring::channel::<Big>(4).unwrap();
    let producer = thread::spawn(move || {
        for i in 0..2000u64 {
            tx.send(Big([i; 40], i as u8)).unwrap();
        }
        tx.send_many((2000..2100).map(|i| Big([i; 40], i as u8)))
            .unwrap();
    });
    let mut seen = vec![false; 2100];
    while let Ok(b) = rx.recv() {
        let i = b.0[0];
        assert!(b.0.iter().all(|&w| w == i) && b.1 == i as u8, "torn value");
        assert!(!seen[i as usize], "value {i} twice");
        seen[i as usize] = true;
    }
    producer.join().unwrap();
    assert!(seen.iter().all(|&s| s));
    // Zero-sized values count too.
    let (tx, mut rx) = ring::channel::<()>(4).unwrap();
    for _ in 0..4 {
        tx.try_send(()).unwrap();
    }
    assert_eq!(rx.drain().count(), 4);
    // And strings (heap-owning values) move without leaks or double frees.
    let (tx, mut rx) = ring::channel::<String>(16).unwrap();
    tx.send_many((0..16).map(|i| i.to_string())).unwrap();
    let got: Vec<String> = rx.drain().collect();
    assert_eq!(got.len(), 16);
}

#[test]
fn many_producers_blocking_ends() {
    let (tx, mut rx) = ring::channel::<u64>(4).unwrap();
    let producers: Vec<_> = (0..16u64)
        .map(|p| {
            let tx = tx.clone();
            thread::spawn(move || {
                for i in 0..5000 {
                    tx.send(p << 32 | i).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let mut last = vec![None::<u64>; 16];
    let mut count = 0;
    while let Ok(v) = rx.recv() {
        let (p, i) = ((v >> 32) as usize, v & 0xffff_ffff);
        if let Some(prev) = last[p] {
            assert_ne!(prev, i, "duplicate");
        }
        last[p] = Some(i);
        count += 1;
    }
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(count, 16 * 5000);
}

#[test]
fn async_ends() {
    let (tx, mut rx) = ring::channel::<u64>(2).unwrap();
    let producer = thread::spawn(move || {
        block_on(async {
            for i in 0..3000 {
                tx.send_async(i).await.unwrap();
            }
        })
    });
    let sum = block_on(async {
        let mut sum = 0;
        while let Ok(v) = rx.recv_async().await {
            sum += v;
        }
        sum
    });
    producer.join().unwrap();
    assert_eq!(sum, (0..3000).sum::<u64>());
}

#[cfg(feature = "async")]
#[test]
fn receiver_is_a_stream() {
    use futures_core::Stream;
    let (tx, mut rx) = ring::channel::<u64>(8).unwrap();
    let producers: Vec<_> = (0..4)
        .map(|_| {
            let tx = tx.clone();
            thread::spawn(move || {
                for i in 0..1000 {
                    tx.send(i).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let mut n = 0;
    block_on(std::future::poll_fn(|cx| {
        loop {
            match Pin::new(&mut rx).poll_next(cx) {
                Poll::Ready(Some(_)) => n += 1,
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }));
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(n, 4000);
}

#[test]
fn a_tokio_task_consumes_plain_threads() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let (tx, mut rx) = ring::channel::<u64>(16).unwrap();
    let consumer = rt.spawn(async move {
        let mut sum = 0;
        while let Ok(v) = rx.recv_async().await {
            sum += v;
        }
        sum
    });
    let producers: Vec<_> = (0..8)
        .map(|_| {
            let tx = tx.clone();
            thread::spawn(move || {
                for i in 0..2000 {
                    tx.send(i).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    for p in producers {
        p.join().unwrap();
    }
    let sum = rt.block_on(consumer).unwrap();
    assert_eq!(sum, 8 * (0..2000).sum::<u64>());
}

#[test]
fn numa_mode_on_this_machine() {
    let (tx, mut rx) = Builder::new()
        .numa(true)
        .capacity_per_cid(64)
        .build::<u64>()
        .unwrap();
    let producers: Vec<_> = (0..4)
        .map(|_| {
            let tx = tx.clone();
            thread::spawn(move || tx.send_many(0..1000).unwrap())
        })
        .collect();
    drop(tx);
    let mut sum = 0;
    while let Ok(v) = rx.recv() {
        sum += v;
    }
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(sum, 4 * (0..1000).sum::<u64>());
}

#[test]
fn rings_follow_concurrency_not_cpus() {
    let (tx, mut rx) = ring::channel::<u64>(8).unwrap();
    tx.send(1).unwrap();
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    // Cids (and lanes of threads without rseq) in use, not every possible CPU.
    assert!(rx.rings() <= cpus.max(1) * 2, "{} rings", rx.rings());
    assert_eq!(rx.recv().unwrap(), 1);
}

#[test]
fn a_blocked_sender_gets_the_first_free_slot() {
    // A slow receiver: a sender blocked on a full ring must not wait for half a
    // ring (or an empty one) to be freed; one taken value lets it go. The sender
    // fills its own cid's ring, then blocks on it; should it move to another cid in
    // between (it then does not block), the attempt is made again.
    for _ in 0..10 {
        let (tx, mut rx) = ring::channel::<u64>(64).unwrap();
        let sender = thread::spawn(move || {
            let mut n = 0;
            while tx.try_send(n).is_ok() {
                n += 1;
            }
            tx.send(u64::MAX).unwrap();
            n
        });
        thread::sleep(std::time::Duration::from_millis(50));
        if sender.is_finished() {
            continue;
        }
        let _ = rx.recv().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !sender.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the blocked sender was not released by a free slot"
            );
            thread::sleep(std::time::Duration::from_millis(1));
        }
        let n = sender.join().unwrap();
        let got: Vec<u64> = rx.drain().collect();
        assert_eq!(
            got.len() as u64,
            n,
            "every value but the one taken is there"
        );
        assert!(got.contains(&u64::MAX));
        return;
    }
    panic!("the sender never blocked on its full ring in 10 attempts");
}
