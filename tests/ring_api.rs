//! Conformance of `percid::ring` to its API (issue 11): closing, `closed()`, permits,
//! weak senders, lengths and capacities, timeouts (and timeouts racing sends),
//! batches, iterators, the `Stream`/`Sink` ends, unbounded channels, drops, and
//! blocking calls inside a tokio runtime.
//!
//! Values that matter count their drops in a [`Ledger`], which checks at the end
//! that every value made was dropped exactly once. Tests that need the caller's
//! ring to stay the same between two calls (a full ring that must still be full)
//! pin the thread to one CPU and run their scenario up to [`ATTEMPTS`] times: a
//! migration between the calls (the thread then sends into another cid's ring) makes
//! an attempt inconclusive, a real fault fails every attempt.
//!
//! Blocking tests never sleep to decide an outcome: a sleep only makes the blocking
//! path likely (a value arrives while the caller waits); the assertions hold either
//! way.

use percid::cid::Arena;
use percid::ring::{
    self, Builder, RecvError, RecvTimeoutError, SendError, SendTimeoutError, Sender, TryRecvError,
    TrySendError,
};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

/// Attempts of a scenario that a migration can make inconclusive.
const ATTEMPTS: usize = 20;

/// A wait that "never" ends in a passing test (a failing one says so, rather than
/// hanging CI).
const LONG: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------
// Drop accounting

/// Which values were made and how often each was dropped.
#[derive(Default)]
struct Ledger {
    made: Mutex<Vec<u64>>,
    drops: Mutex<HashMap<u64, u32>>,
}

/// A value that records its drop in its ledger.
struct Tracked {
    id: u64,
    ledger: Arc<Ledger>,
}

impl fmt::Debug for Tracked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tracked({})", self.id)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        *self
            .ledger
            .drops
            .lock()
            .unwrap()
            .entry(self.id)
            .or_default() += 1;
    }
}

impl Ledger {
    fn new() -> Arc<Ledger> {
        Arc::new(Ledger::default())
    }

    fn make(self: &Arc<Self>, id: u64) -> Tracked {
        self.made.lock().unwrap().push(id);
        Tracked {
            id,
            ledger: self.clone(),
        }
    }

    fn dropped(&self, id: u64) -> u32 {
        self.drops.lock().unwrap().get(&id).copied().unwrap_or(0)
    }

    /// Values made and not dropped yet.
    fn live(&self) -> usize {
        let made = self.made.lock().unwrap().len();
        let dropped: u32 = self.drops.lock().unwrap().values().sum();
        made - dropped as usize
    }

    /// Every value made was dropped exactly once, and nothing else was.
    fn check(&self) {
        let made = self.made.lock().unwrap();
        let drops = self.drops.lock().unwrap();
        let mut sorted = made.clone();
        sorted.sort_unstable();
        assert!(
            sorted.windows(2).all(|w| w[0] != w[1]),
            "a test made two values with one id"
        );
        for &id in made.iter() {
            let n = drops.get(&id).copied().unwrap_or(0);
            assert_eq!(n, 1, "value {id} dropped {n} times");
        }
        assert_eq!(drops.len(), made.len(), "drops of values never made");
    }
}

// ---------------------------------------------------------------------------------
// Helpers

/// Pins the calling thread to its first allowed CPU until dropped (then restores
/// its mask): its sends stay on one cid's ring (or one portable lane) as long as
/// the kernel keeps its cid.
struct Pinned(libc::cpu_set_t);

fn pin_here() -> Pinned {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: an all-zero cpu_set_t is the empty set; the calls read and write at
    // most `size` bytes of the sets they are given.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, size, &mut old), 0);
        let first = (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &old))
            .expect("an allowed CPU");
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(first, &mut one);
        assert_eq!(libc::sched_setaffinity(0, size, &one), 0);
        Pinned(old)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: restores the mask read in `pin_here`.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
    }
}

/// Runs `scenario` until it succeeds, at most [`ATTEMPTS`] times; an `Err` is an
/// inconclusive attempt (the thread moved to another ring), a panic fails at once.
fn attempts(what: &str, mut scenario: impl FnMut() -> Result<(), String>) {
    let _pinned = pin_here();
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        match scenario() {
            Ok(()) => return,
            Err(e) => last = e,
        }
    }
    panic!("{what}: every one of {ATTEMPTS} attempts failed; the last: {last}");
}

/// `try_send`s values from `make` until the caller's ring says `Full`; how many
/// went in. Panics on an unbounded channel's worth of values.
fn fill<T>(tx: &Sender<T>, mut make: impl FnMut() -> T) -> usize {
    let mut n = 0;
    loop {
        match tx.try_send(make()) {
            Ok(()) => n += 1,
            Err(TrySendError::Full(_)) => return n,
            Err(TrySendError::Disconnected(_)) => panic!("fill: the receiver is gone"),
        }
        assert!(n <= 1 << 20, "fill: a ring that never fills");
    }
}

struct Unpark(thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `f` to completion on this thread (its waker unparks the thread).
fn block_on<F: Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    let t0 = Instant::now();
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(t0.elapsed() < LONG, "block_on: the future never completed");
        thread::park_timeout(Duration::from_millis(100));
    }
}

/// A waker that counts its wakes.
#[derive(Default)]
struct Counting(AtomicUsize);

impl Wake for Counting {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Counting {
    fn new() -> (Arc<Counting>, Waker) {
        let c = Arc::new(Counting::default());
        let w = Waker::from(c.clone());
        (c, w)
    }

    fn wakes(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Joins `h`, failing (not hanging) after [`LONG`].
fn join_within<R>(h: thread::ScopedJoinHandle<'_, R>, what: &str) -> R {
    let t0 = Instant::now();
    while !h.is_finished() {
        assert!(t0.elapsed() < LONG, "{what}: still running after {LONG:?}");
        thread::sleep(Duration::from_millis(1));
    }
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

// ---------------------------------------------------------------------------------
// Closing

#[test]
fn close_refuses_sends_and_keeps_what_was_queued() {
    let ledger = Ledger::new();
    {
        let (tx, mut rx) = ring::channel::<Tracked>(8).unwrap();
        assert!(!tx.is_closed() && !rx.is_closed());
        tx.send(ledger.make(0)).unwrap();
        tx.send(ledger.make(1)).unwrap();
        rx.close();
        assert!(tx.is_closed(), "Sender::is_closed after close()");
        assert!(rx.is_closed(), "Receiver::is_closed after close()");
        assert!(!rx.is_disconnected(), "close() is not the senders' drop");
        // Closing twice changes nothing.
        rx.close();
        assert!(rx.is_closed());

        // Every way to send fails, with the value back.
        match tx.try_send(ledger.make(2)) {
            Err(TrySendError::Disconnected(v)) => assert_eq!(v.id, 2),
            other => panic!("try_send after close: {other:?}"),
        }
        assert_eq!(tx.send(ledger.make(3)).unwrap_err().into_inner().id, 3);
        assert_eq!(tx.blocking_send(ledger.make(4)).unwrap_err().0.id, 4);
        match tx.send_timeout(ledger.make(5), Duration::from_millis(10)) {
            Err(SendTimeoutError::Disconnected(v)) => assert_eq!(v.id, 5),
            other => panic!("send_timeout after close: {other:?}"),
        }
        match tx.send_deadline(ledger.make(6), Instant::now() + Duration::from_millis(10)) {
            Err(SendTimeoutError::Disconnected(v)) => assert_eq!(v.id, 6),
            other => panic!("send_deadline after close: {other:?}"),
        }
        match block_on(tx.send_async(ledger.make(7))) {
            Err(SendError(v)) => assert_eq!(v.id, 7),
            Ok(()) => panic!("send_async after close succeeded"),
        }
        let back = tx
            .send_many([ledger.make(8), ledger.make(9)])
            .unwrap_err()
            .into_inner();
        assert_eq!(back.iter().map(|v| v.id).collect::<Vec<_>>(), [8, 9]);
        drop(back);
        assert!(matches!(
            tx.try_reserve(),
            Err(TrySendError::Disconnected(()))
        ));
        assert!(block_on(tx.reserve()).is_err(), "reserve after close");
        match tx.clone().try_reserve_owned() {
            Err(TrySendError::Disconnected(s)) => assert!(s.same_channel(&tx)),
            other => panic!("try_reserve_owned after close: {:?}", other.map(|_| ())),
        }
        assert!(block_on(tx.clone().reserve_owned()).is_err());
        // closed() is ready at once.
        block_on(tx.closed());
        assert_eq!(ledger.live(), 2, "only the two queued values are alive");

        // What was queued before close() is still received, then the end.
        let mut got = vec![rx.recv().unwrap().id, rx.recv().unwrap().id];
        got.sort_unstable();
        assert_eq!(got, [0, 1]);
        assert_eq!(rx.recv().unwrap_err(), RecvError);
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Disconnected);
        assert!(rx.blocking_recv().is_none());
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(10)).unwrap_err(),
            RecvTimeoutError::Disconnected
        );
        assert!(block_on(rx.recv_async()).is_err());
        let mut buf = Vec::new();
        assert_eq!(rx.recv_many(&mut buf, 10), 0);
        assert_eq!(
            rx.try_recv_many(&mut buf, 10),
            Err(TryRecvError::Disconnected)
        );
        assert_eq!(rx.iter().count(), 0);
        // The senders are alive all along.
        assert!(!rx.is_disconnected());
        drop(tx);
    }
    ledger.check();
}

#[test]
fn close_with_values_from_many_threads() {
    // Values sent by several threads before close() all come out after it (rings
    // large enough that nobody waits).
    let (tx, mut rx) = ring::channel::<u64>(256).unwrap();
    thread::scope(|s| {
        for t in 0..4u64 {
            let tx = tx.clone();
            s.spawn(move || {
                for i in 0..50 {
                    tx.send(t * 100 + i).unwrap();
                }
            });
        }
    });
    rx.close();
    let mut got: Vec<u64> = rx.iter().collect();
    got.sort_unstable();
    let want: Vec<u64> = (0..4u64)
        .flat_map(|t| (0..50).map(move |i| t * 100 + i))
        .collect();
    assert_eq!(got, want);
    assert!(rx.try_recv().is_err());
    assert!(tx.try_send(1).is_err());
}

#[test]
fn receiver_drop_closes_the_senders() {
    let ledger = Ledger::new();
    let (tx, rx) = ring::channel::<Tracked>(4).unwrap();
    let tx2 = tx.clone();
    assert!(!tx.is_closed());
    drop(rx);
    assert!(tx.is_closed() && tx2.is_closed());
    match tx.try_send(ledger.make(1)) {
        Err(TrySendError::Disconnected(v)) => assert_eq!(v.id, 1),
        other => panic!("try_send without receiver: {other:?}"),
    }
    block_on(tx2.closed());
    drop((tx, tx2));
    ledger.check();
}

#[test]
fn receiver_is_closed_once_every_sender_is_gone() {
    let (tx, mut rx) = ring::channel::<u64>(4).unwrap();
    let tx2 = tx.clone();
    let weak = tx.downgrade();
    tx.send(5).unwrap();
    drop(tx);
    assert!(!rx.is_closed() && !rx.is_disconnected());
    drop(tx2);
    // A weak sender does not keep the channel connected.
    assert!(rx.is_closed() && rx.is_disconnected());
    assert_eq!(rx.recv(), Ok(5));
    assert_eq!(rx.recv(), Err(RecvError));
    assert!(weak.upgrade().is_none());
}

#[test]
fn closed_future_completes_on_close() {
    let (tx, mut rx) = ring::channel::<u64>(4).unwrap();
    let (count, waker) = Counting::new();
    let mut cx = Context::from_waker(&waker);
    {
        let mut closed = pin!(tx.closed());
        assert!(
            closed.as_mut().poll(&mut cx).is_pending(),
            "closed() while open"
        );
        // Sends and receives do not complete it.
        tx.send(1).unwrap();
        assert_eq!(rx.recv(), Ok(1));
        assert!(
            closed.as_mut().poll(&mut cx).is_pending(),
            "closed() while open"
        );
        rx.close();
        assert!(count.wakes() >= 1, "close() did not wake the closed() task");
        assert!(
            closed.as_mut().poll(&mut cx).is_ready(),
            "closed() after close()"
        );
    }
    // A new one is ready at once.
    let mut again = pin!(tx.closed());
    assert!(again.as_mut().poll(&mut cx).is_ready());
}

#[test]
fn closed_future_completes_on_receiver_drop() {
    let (tx, rx) = ring::channel::<u64>(4).unwrap();
    let (count, waker) = Counting::new();
    let mut cx = Context::from_waker(&waker);
    let mut closed = pin!(tx.closed());
    assert!(closed.as_mut().poll(&mut cx).is_pending());
    // Another thread waits too.
    thread::scope(|s| {
        let waiter = s.spawn(|| block_on(tx.closed()));
        thread::sleep(Duration::from_millis(20));
        drop(rx);
        join_within(waiter, "a thread in closed()");
    });
    assert!(
        count.wakes() >= 1,
        "the receiver's drop did not wake closed()"
    );
    assert!(closed.as_mut().poll(&mut cx).is_ready());
}

#[test]
fn a_dropped_closed_future_is_forgotten() {
    // Many closed() futures polled once and dropped: the channel keeps no waker
    // of theirs (a close afterwards wakes none of them).
    let (tx, mut rx) = ring::channel::<u64>(4).unwrap();
    let (count, waker) = Counting::new();
    let mut cx = Context::from_waker(&waker);
    for _ in 0..1000 {
        let mut closed = pin!(tx.closed());
        assert!(closed.as_mut().poll(&mut cx).is_pending());
    }
    rx.close();
    assert_eq!(count.wakes(), 0, "close() woke dropped closed() futures");
}

// ---------------------------------------------------------------------------------
// Permits

#[test]
fn try_reserve_on_a_full_ring_is_full() {
    attempts("try_reserve on a full ring", || {
        let (tx, mut rx) = ring::channel::<u64>(4).unwrap();
        let n = fill(&tx, || 7);
        if n != 4 {
            return Err(format!("{n} values filled the ring (moved?)"));
        }
        match tx.try_reserve() {
            Err(TrySendError::Full(())) => {}
            Ok(_) => return Err("try_reserve succeeded on a full ring (moved?)".into()),
            Err(e) => panic!("try_reserve: {e:?}"),
        }
        match tx.clone().try_reserve_owned() {
            Err(TrySendError::Full(s)) => assert!(s.same_channel(&tx)),
            Ok(_) => return Err("try_reserve_owned succeeded on a full ring".into()),
            Err(e) => panic!("try_reserve_owned: {e:?}"),
        }
        // Emptied (every slot given back), the ring has room again.
        assert_eq!(rx.try_iter().count(), n);
        assert!(tx.try_reserve().is_ok(), "try_reserve on an empty ring");
        Ok(())
    });
}

#[test]
fn permit_send_neither_fails_nor_blocks() {
    // Permits taken while the ring had room; the ring fills meanwhile: the
    // permitted sends still go through at once (the spill queue takes them).
    let ledger = Ledger::new();
    {
        let (tx, mut rx) = ring::channel::<Tracked>(1).unwrap();
        let permits: Vec<_> = (0..4).map(|_| tx.try_reserve().expect("room")).collect();
        let mut id = 100;
        fill(&tx, || {
            id += 1;
            ledger.make(id)
        });
        for (i, p) in permits.into_iter().enumerate() {
            p.send(ledger.make(i as u64));
        }
        drop(tx);
        let mut got: Vec<u64> = rx.iter().map(|v| v.id).collect();
        got.sort_unstable();
        assert!(got.starts_with(&[0, 1, 2, 3]), "permitted values: {got:?}");
        assert!(got.len() >= 5, "the filled values: {got:?}");
    }
    ledger.check();
}

#[test]
fn permits_dropped_unused_are_given_back() {
    let (tx, mut rx) = ring::channel::<u64>(4).unwrap();
    for _ in 0..10_000 {
        drop(tx.try_reserve().expect("an empty ring has room"));
    }
    for _ in 0..100 {
        drop(block_on(tx.reserve()).expect("an empty ring has room"));
        let s = tx.clone().try_reserve_owned().expect("room").release();
        assert!(s.same_channel(&tx));
        let s = block_on(tx.clone().reserve_owned())
            .expect("room")
            .release();
        drop(s);
        drop(block_on(tx.clone().reserve_owned()).expect("room"));
    }
    assert_eq!(
        tx.strong_count(),
        1,
        "released permits gave their senders back"
    );
    tx.send(1).unwrap();
    // No permit is out: a closed channel ends once drained (a leaked permit would
    // keep recv waiting for its value).
    rx.close();
    assert_eq!(rx.recv_timeout(LONG), Ok(1));
    assert_eq!(
        rx.recv_timeout(LONG),
        Err(RecvTimeoutError::Disconnected),
        "a permit given back still counts"
    );
}

#[test]
fn a_closed_receiver_waits_for_the_permits_out() {
    // Taken before close(), a permit still delivers; recv waits for it (and ends
    // once it is used or dropped).
    for use_it in [true, false] {
        let (tx, mut rx) = ring::channel::<u64>(4).unwrap();
        thread::scope(|s| {
            let permit = tx.try_reserve().expect("room");
            let owned = tx.clone().try_reserve_owned().expect("room");
            rx.close();
            assert!(tx.try_send(9).is_err(), "try_send after close");
            let user = s.spawn(move || {
                thread::sleep(Duration::from_millis(20));
                if use_it {
                    permit.send(1);
                    drop(owned.send(2));
                } else {
                    drop(permit);
                    drop(owned.release());
                }
            });
            let mut got: Vec<u64> = Vec::new();
            loop {
                match rx.recv_timeout(LONG) {
                    Ok(v) => got.push(v),
                    Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => {
                        panic!("recv never ended after the permits were used or dropped")
                    }
                }
            }
            got.sort_unstable();
            if use_it {
                assert_eq!(
                    got,
                    [1, 2],
                    "permitted values sent after close() are delivered"
                );
            } else {
                assert!(got.is_empty());
            }
            join_within(user, "the permit user");
        });
    }
}

#[test]
fn a_permit_sent_after_the_receiver_is_gone_drops_its_value() {
    let ledger = Ledger::new();
    let (tx, rx) = ring::channel::<Tracked>(4).unwrap();
    let permit = tx.try_reserve().unwrap();
    let owned = tx.clone().try_reserve_owned().unwrap();
    drop(rx);
    permit.send(ledger.make(1));
    let s = owned.send(ledger.make(2));
    assert!(s.same_channel(&tx));
    assert_eq!(ledger.dropped(1), 1);
    assert_eq!(ledger.dropped(2), 1);
    drop((s, tx));
    ledger.check();
}

#[test]
fn owned_permits_give_the_sender_back() {
    let (tx, mut rx) = ring::channel::<u64>(4).unwrap();
    let p = tx.clone().try_reserve_owned().expect("room");
    assert_eq!(tx.strong_count(), 2, "an owned permit holds a sender");
    let s = p.send(1);
    assert!(s.same_channel(&tx));
    assert_eq!(tx.strong_count(), 2);
    let p = block_on(s.reserve_owned()).expect("room");
    let s = p.send(2);
    let s = block_on(s.reserve_owned()).expect("room").release();
    drop(s);
    assert_eq!(tx.strong_count(), 1);
    let permit = block_on(tx.reserve()).expect("room");
    permit.send(3);
    let mut got: Vec<u64> = rx.try_iter().collect();
    got.sort_unstable();
    assert_eq!(got, [1, 2, 3]);
    // An owned permit keeps the channel connected.
    let p = tx.clone().try_reserve_owned().unwrap();
    drop(tx);
    assert!(!rx.is_disconnected());
    drop(p.send(4));
    assert!(rx.is_disconnected());
    assert_eq!(rx.recv(), Ok(4));
    assert_eq!(rx.recv(), Err(RecvError));
}

#[test]
fn reserve_waits_for_a_free_slot() {
    attempts("reserve on a full ring", || {
        let (tx, mut rx) = ring::channel::<u64>(2).unwrap();
        if fill(&tx, || 0) != 2 {
            return Err("the ring did not fill with 2 values (moved?)".into());
        }
        let (count, waker) = Counting::new();
        let mut cx = Context::from_waker(&waker);
        let mut reserve = pin!(tx.reserve());
        if reserve.as_mut().poll(&mut cx).is_ready() {
            return Err("reserve was ready on a full ring (moved?)".into());
        }
        // Emptying the ring wakes the reserving task.
        assert_eq!(rx.try_iter().count(), 2);
        let t0 = Instant::now();
        while count.wakes() == 0 {
            assert!(t0.elapsed() < LONG, "freed slots did not wake reserve()");
            thread::yield_now();
        }
        match reserve.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(permit)) => permit.send(5),
            Poll::Ready(Err(e)) => panic!("reserve: {e:?}"),
            Poll::Pending => return Err("reserve still pending after the wake".into()),
        }
        assert_eq!(rx.try_recv(), Ok(5));
        // The receiver gone, a pending reserve ends with an error.
        let (tx, rx) = ring::channel::<u64>(1).unwrap();
        if fill(&tx, || 0) != 1 {
            return Err("the ring did not fill (moved?)".into());
        }
        let mut reserve = pin!(tx.reserve());
        if reserve.as_mut().poll(&mut cx).is_ready() {
            return Err("reserve was ready on a full ring (moved?)".into());
        }
        let before = count.wakes();
        drop(rx);
        assert!(
            count.wakes() > before,
            "the receiver's drop did not wake reserve()"
        );
        assert!(matches!(
            reserve.as_mut().poll(&mut cx),
            Poll::Ready(Err(_))
        ));
        Ok(())
    });
}

// ---------------------------------------------------------------------------------
// Weak senders

#[test]
fn weak_senders_upgrade_while_a_sender_lives() {
    let (tx, mut rx) = ring::channel::<u64>(4).unwrap();
    assert_eq!((tx.strong_count(), tx.weak_count()), (1, 0));
    let weak = tx.downgrade();
    assert_eq!((tx.strong_count(), tx.weak_count()), (1, 1));
    assert_eq!((weak.strong_count(), weak.weak_count()), (1, 1));
    let weak2 = weak.clone();
    assert_eq!(tx.weak_count(), 2);
    assert_eq!((rx.sender_strong_count(), rx.sender_weak_count()), (1, 2));
    drop(weak2);
    assert_eq!(tx.weak_count(), 1);

    let up = weak.upgrade().expect("a sender lives");
    assert!(up.same_channel(&tx));
    assert_eq!(tx.strong_count(), 2);
    up.send(1).unwrap();
    drop(up);
    assert_eq!(tx.strong_count(), 1);
    assert!(!rx.is_disconnected());

    drop(tx);
    assert!(
        weak.upgrade().is_none(),
        "upgrade after the last sender left"
    );
    assert_eq!((weak.strong_count(), weak.weak_count()), (0, 1));
    assert_eq!(rx.sender_strong_count(), 0);
    assert!(rx.is_disconnected());
    assert_eq!(rx.recv(), Ok(1));
    assert_eq!(
        rx.recv(),
        Err(RecvError),
        "weak senders keep nothing connected"
    );
    drop(weak);
    assert_eq!(rx.sender_weak_count(), 0);
}

#[test]
fn only_weak_senders_left_ends_a_blocked_receive() {
    let (tx, mut rx) = ring::channel::<u64>(4).unwrap();
    let weak = tx.downgrade();
    thread::scope(|s| {
        let rx = &mut rx;
        let receiver = s.spawn(move || rx.recv());
        thread::sleep(Duration::from_millis(20));
        drop(tx);
        assert_eq!(
            join_within(receiver, "recv after the last sender"),
            Err(RecvError)
        );
    });
    assert!(weak.upgrade().is_none());
}

#[test]
fn upgrades_race_the_last_drop() {
    // Threads upgrade while the last strong sender goes: an upgrade either works
    // (and its send arrives) or says None, and once None never Some again; the
    // receiver ends only after every upgraded sender is gone.
    for _ in 0..50 {
        let (tx, mut rx) = ring::channel::<u64>(64).unwrap();
        let weak = tx.downgrade();
        let sent = AtomicUsize::new(0);
        let received = thread::scope(|s| {
            for _ in 0..4 {
                let (weak, sent) = (weak.clone(), &sent);
                s.spawn(move || {
                    let mut gone = false;
                    for i in 0..100 {
                        match weak.upgrade() {
                            Some(tx) => {
                                assert!(!gone, "upgrade worked after it said None");
                                tx.send(i).unwrap();
                                sent.fetch_add(1, Ordering::Relaxed);
                            }
                            None => gone = true,
                        }
                    }
                });
            }
            thread::yield_now();
            drop(tx);
            let mut n = 0;
            while rx.recv().is_ok() {
                n += 1;
            }
            assert!(rx.is_disconnected());
            assert!(
                weak.upgrade().is_none(),
                "upgrade after the receiver saw the end"
            );
            n
        });
        assert_eq!(received, sent.load(Ordering::Relaxed), "values lost");
        assert!(rx.try_recv().is_err());
    }
}

#[test]
fn same_channel() {
    let (a, _ra) = ring::channel::<u64>(4).unwrap();
    let (b, _rb) = ring::channel::<u64>(4).unwrap();
    let a2 = a.clone();
    assert!(a.same_channel(&a2) && a2.same_channel(&a));
    assert!(!a.same_channel(&b) && !b.same_channel(&a));
    let up = a.downgrade().upgrade().unwrap();
    assert!(up.same_channel(&a) && !up.same_channel(&b));
    let (u, _ru) = ring::unbounded::<u64>().unwrap();
    assert!(!u.same_channel(&a) && u.same_channel(&u.clone()));
}

// ---------------------------------------------------------------------------------
// Lengths and capacities

#[test]
fn lengths_and_capacities_on_a_quiescent_channel() {
    let arena: &'static Arena = Box::leak(Box::new(Arena::with_capacity(4, 2)));
    let (tx, mut rx) = Builder::new()
        .capacity_per_cid(6)
        .arena(arena)
        .build::<u64>()
        .unwrap();
    let rings =
        arena.cid_capacity() as usize * arena.nodes().max(1) as usize + arena.lanes() as usize;
    assert_eq!(tx.capacity_per_cid(), 8);
    assert_eq!(
        tx.max_capacity(),
        8 * rings,
        "capacity_per_cid × the most rings"
    );
    assert_eq!(rx.max_capacity(), tx.max_capacity());
    let consistent = |tx: &Sender<u64>, rx: &ring::Receiver<u64>, len: usize| {
        assert_eq!(rx.len(), len, "Receiver::len");
        assert_eq!(rx.is_empty(), len == 0);
        assert_eq!(rx.capacity(), rx.max_capacity() - rx.len());
        assert_eq!(tx.capacity(), tx.max_capacity() - tx.len());
        let sender_len = tx.len();
        assert_eq!(tx.is_empty(), sender_len == 0, "Sender::is_empty");
    };
    consistent(&tx, &rx, 0);
    assert_eq!(tx.len(), 0);
    for i in 0..5 {
        tx.send(i).unwrap();
    }
    consistent(&tx, &rx, 5);
    assert_eq!(tx.len(), 5);
    rx.recv().unwrap();
    rx.recv().unwrap();
    // The receiver knows what it took; a sender may still count the slots the
    // receiver took and has not given back.
    consistent(&tx, &rx, 3);
    assert!((3..=5).contains(&tx.len()), "Sender::len {}", tx.len());
    // Drained (an empty look gives every slot back): 0 on both ends.
    assert_eq!(rx.try_iter().count(), 3);
    consistent(&tx, &rx, 0);
    assert_eq!(tx.len(), 0);

    // Unbounded: no bound, and the spill queue counts.
    let (tx, mut rx) = Builder::new()
        .capacity_per_cid(4)
        .unbounded(true)
        .build::<u64>()
        .unwrap();
    assert_eq!(tx.max_capacity(), usize::MAX);
    assert_eq!(rx.max_capacity(), usize::MAX);
    assert_eq!(tx.capacity(), usize::MAX);
    for i in 0..3000 {
        tx.try_send(i)
            .expect("an unbounded channel takes every value");
    }
    assert_eq!(rx.len(), 3000);
    assert_eq!(tx.len(), 3000);
    assert!(!tx.is_empty());
    assert_eq!(rx.try_iter().count(), 3000);
    assert_eq!(rx.len(), 0);
    assert!(rx.is_empty() && tx.is_empty());
}

#[test]
fn sender_len_counts_the_spilled_values_not_yet_received() {
    // An unbounded channel spilled; the receiver has taken the rings' values and
    // one spilled value: the rest are still queued, for the sender's len as for the
    // receiver's (a sender may count the slots the receiver took and has not given
    // back, never fewer values than are queued).
    let (tx, mut rx) = Builder::new()
        .capacity_per_cid(4)
        .unbounded(true)
        .build::<u64>()
        .unwrap();
    for i in 0..100 {
        tx.try_send(i).expect("unbounded");
    }
    let mut taken = 0;
    loop {
        let (_, from) = rx.try_recv_traced().expect("100 values queued");
        taken += 1;
        if from.is_none() {
            break; // The first spilled value.
        }
    }
    let queued = 100 - taken;
    assert_eq!(rx.len(), queued, "Receiver::len");
    let n = tx.len();
    assert!(
        n >= queued,
        "Sender::len is {n} with {queued} values queued (is_empty: {})",
        tx.is_empty()
    );
    assert!(!tx.is_empty());
    assert_eq!(rx.try_iter().count(), queued);
}

// ---------------------------------------------------------------------------------
// Timeouts

#[test]
fn send_timeout_on_a_full_ring() {
    let ledger = Ledger::new();
    let mut id = 0;
    attempts("send_timeout on a full ring", || {
        let (tx, mut rx) = ring::channel::<Tracked>(2).unwrap();
        let n = fill(&tx, || {
            id += 1;
            ledger.make(id)
        });
        if n != 2 {
            return Err(format!("{n} values filled the ring (moved?)"));
        }
        for timeout in [Duration::ZERO, Duration::from_millis(20)] {
            id += 1;
            match tx.send_timeout(ledger.make(id), timeout) {
                Err(SendTimeoutError::Timeout(v)) => assert_eq!(v.id, id, "another value back"),
                Ok(()) => return Err("send_timeout succeeded on a full ring (moved?)".into()),
                Err(e) => panic!("send_timeout: {e:?}"),
            }
        }
        id += 1;
        match tx.send_deadline(ledger.make(id), Instant::now() + Duration::from_millis(20)) {
            Err(SendTimeoutError::Timeout(v)) => assert_eq!(v.id, id),
            Ok(()) => return Err("send_deadline succeeded on a full ring (moved?)".into()),
            Err(e) => panic!("send_deadline: {e:?}"),
        }
        // A slot frees while the sender waits: it returns early, with Ok.
        id += 1;
        let late = ledger.make(id);
        let taken = thread::scope(|s| {
            let rx = &mut rx;
            let taker = s.spawn(move || {
                thread::sleep(Duration::from_millis(30));
                rx.recv().unwrap()
            });
            tx.send_timeout(late, LONG)
                .expect("a slot freed before the timeout");
            join_within(taker, "the taker")
        });
        drop(taken);
        drop(tx);
        let rest: Vec<u64> = rx.iter().map(|v| v.id).collect();
        assert!(
            rest.contains(&id),
            "the value sent after the wait: {rest:?}"
        );
        assert_eq!(rest.len(), 2);
        Ok(())
    });
    ledger.check();
}

#[test]
fn send_timeout_of_forever_does_not_overflow() {
    let (tx, mut rx) = ring::channel::<u64>(4).unwrap();
    tx.send_timeout(1, Duration::MAX).unwrap();
    assert_eq!(rx.recv_timeout(Duration::MAX), Ok(1));
}

#[test]
fn recv_timeout_times_out_and_returns_early() {
    let (tx, mut rx) = ring::channel::<u64>(4).unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::ZERO),
        Err(RecvTimeoutError::Timeout)
    );
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(20)),
        Err(RecvTimeoutError::Timeout)
    );
    assert_eq!(
        rx.recv_deadline(Instant::now() + Duration::from_millis(20)),
        Err(RecvTimeoutError::Timeout)
    );
    // A deadline in the past: a look, no wait.
    tx.send(3).unwrap();
    assert_eq!(
        rx.recv_deadline(Instant::now() - Duration::from_millis(1)),
        Ok(3)
    );
    thread::scope(|s| {
        let tx = &tx;
        s.spawn(move || {
            thread::sleep(Duration::from_millis(30));
            tx.send(7).unwrap();
        });
        assert_eq!(
            rx.recv_timeout(LONG),
            Ok(7),
            "a value came before the timeout"
        );
    });
    drop(tx);
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(20)),
        Err(RecvTimeoutError::Disconnected)
    );
    assert_eq!(
        rx.recv_deadline(Instant::now() + LONG),
        Err(RecvTimeoutError::Disconnected)
    );
}

#[test]
fn recv_timeout_races_a_send() {
    // A sender sends right around the receiver's deadline: the value is received
    // exactly once, by the timed receive or by the look after it.
    let ledger = Ledger::new();
    let (tx, mut rx) = ring::channel::<Tracked>(4).unwrap();
    let (mut early, mut late) = (0, 0);
    for round in 0..300u64 {
        let timeout = Duration::from_micros(100 + (round % 7) * 100);
        let value = ledger.make(round);
        thread::scope(|s| {
            let tx = &tx;
            let sender = s.spawn(move || {
                thread::sleep(timeout);
                tx.send(value).unwrap();
            });
            match rx.recv_timeout(timeout) {
                Ok(v) => {
                    assert_eq!(v.id, round);
                    early += 1;
                    join_within(sender, "the sender");
                }
                Err(RecvTimeoutError::Timeout) => {
                    join_within(sender, "the sender");
                    let v = rx
                        .recv_timeout(LONG)
                        .expect("the value sent after the timeout");
                    assert_eq!(v.id, round);
                    late += 1;
                }
                Err(e) => panic!("recv_timeout: {e:?}"),
            }
        });
        assert!(rx.try_recv().is_err(), "round {round}: a value twice");
    }
    eprintln!("recv_timeout races: {early} received in time, {late} after the timeout");
    drop((tx, rx));
    ledger.check();
}

#[test]
fn send_timeout_races_a_recv() {
    // A full ring; the receiver takes a value right around the sender's deadline:
    // the timed send either succeeds (its value is received later) or times out
    // with its value back, never both.
    let ledger = Ledger::new();
    let (tx, mut rx) = ring::channel::<Tracked>(1).unwrap();
    let _pinned = pin_here();
    let mut received: Vec<u64> = Vec::new();
    let mut returned: Vec<u64> = Vec::new();
    let mut next = 0u64;
    for round in 0..300u64 {
        let timeout = Duration::from_micros(100 + (round % 7) * 100);
        // Fill the ring; the value it refuses counts as returned.
        loop {
            next += 1;
            match tx.try_send(ledger.make(next)) {
                Ok(()) => {}
                Err(TrySendError::Full(v)) => {
                    returned.push(v.id);
                    break;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        next += 1;
        let id = next;
        let value = ledger.make(id);
        let taken = thread::scope(|s| {
            let rx = &mut rx;
            let taker = s.spawn(move || {
                thread::sleep(timeout);
                rx.recv().unwrap().id
            });
            match tx.send_timeout(value, timeout) {
                Ok(()) => {}
                Err(SendTimeoutError::Timeout(v)) => {
                    assert_eq!(v.id, id, "send_timeout gave back another value");
                    returned.push(v.id);
                }
                Err(e) => panic!("send_timeout: {e:?}"),
            }
            join_within(taker, "the taker")
        });
        received.push(taken);
        received.extend(rx.try_iter().map(|v| v.id));
    }
    drop(tx);
    received.extend(rx.iter().map(|v| v.id));
    drop(rx);
    let made = ledger.made.lock().unwrap().len();
    let mut all = received.clone();
    all.extend(&returned);
    all.sort_unstable();
    assert!(
        all.windows(2).all(|w| w[0] != w[1]),
        "a value received and returned, or twice"
    );
    assert_eq!(all.len(), made, "values neither received nor returned");
    eprintln!("send_timeout races: {} returned of {made}", returned.len());
    ledger.check();
}

// ---------------------------------------------------------------------------------
// Batches

#[test]
fn recv_many_blocks_until_a_value_and_ends_with_0() {
    let (tx, mut rx) = ring::channel::<u64>(16).unwrap();
    let mut buf = vec![99];
    assert_eq!(rx.recv_many(&mut buf, 0), 0, "limit 0");
    thread::scope(|s| {
        let tx = &tx;
        s.spawn(move || {
            thread::sleep(Duration::from_millis(20));
            tx.send_many([1, 2, 3]).unwrap();
        });
        let mut got = 0;
        while got < 3 {
            let n = rx.recv_many(&mut buf, 10);
            assert!(n >= 1, "recv_many returned 0 with a sender alive");
            got += n;
            assert_eq!(buf.len(), 1 + got, "recv_many appends what it counts");
        }
    });
    assert_eq!(buf[0], 99, "recv_many keeps what the buffer held");
    buf[1..].sort_unstable();
    assert_eq!(buf, [99, 1, 2, 3]);
    // The limit holds.
    tx.send_many(0..10).unwrap();
    let mut few = Vec::new();
    let mut total = 0;
    while total < 10 {
        let n = rx.recv_many(&mut few, 3);
        assert!((1..=3).contains(&n), "recv_many(.., 3) gave {n}");
        total += n;
    }
    assert_eq!(few.len(), 10);
    drop(tx);
    assert_eq!(rx.recv_many(&mut buf, 10), 0, "disconnected and empty");

    // Closed: what is queued, then 0.
    let (tx, mut rx) = ring::channel::<u64>(16).unwrap();
    tx.send_many([5, 6]).unwrap();
    rx.close();
    let mut buf = Vec::new();
    while rx.recv_many(&mut buf, 10) > 0 {}
    buf.sort_unstable();
    assert_eq!(buf, [5, 6]);
    assert!(!tx.is_disconnected() && rx.is_closed());
}

#[test]
fn recv_many_async_and_poll_recv_many() {
    let (tx, mut rx) = ring::channel::<u64>(16).unwrap();
    let (_count, waker) = Counting::new();
    let mut cx = Context::from_waker(&waker);
    let mut buf = Vec::new();
    assert!(rx.poll_recv_many(&mut cx, &mut buf, 4).is_pending());
    assert_eq!(rx.poll_recv_many(&mut cx, &mut buf, 0), Poll::Ready(0));
    tx.send_many(0..6).unwrap();
    let mut got = 0;
    while got < 6 {
        match rx.poll_recv_many(&mut cx, &mut buf, 4) {
            Poll::Ready(n) => {
                assert!((1..=4).contains(&n));
                got += n;
            }
            Poll::Pending => panic!("values queued, poll_recv_many pending"),
        }
    }
    thread::scope(|s| {
        let tx = &tx;
        s.spawn(move || {
            thread::sleep(Duration::from_millis(20));
            tx.send(6).unwrap();
        });
        assert_eq!(block_on(rx.recv_many_async(&mut buf, 4)), 1);
    });
    drop(tx);
    assert_eq!(block_on(rx.recv_many_async(&mut buf, 4)), 0);
    buf.sort_unstable();
    assert_eq!(buf, (0..7).collect::<Vec<u64>>());
}

#[test]
fn try_recv_many_never_blocks() {
    let (tx, mut rx) = ring::channel::<u64>(16).unwrap();
    let mut buf = vec![42];
    assert_eq!(rx.try_recv_many(&mut buf, 8), Err(TryRecvError::Empty));
    assert_eq!(buf, [42], "an empty look appends nothing");
    tx.send_many(0..5).unwrap();
    let mut got = 0;
    loop {
        match rx.try_recv_many(&mut buf, 3) {
            Ok(n) => {
                assert!((1..=3).contains(&n), "try_recv_many(.., 3) gave Ok({n})");
                got += n;
            }
            Err(TryRecvError::Empty) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(got, 5);
    assert_eq!(buf.len(), 6);
    drop(tx);
    assert_eq!(
        rx.try_recv_many(&mut buf, 3),
        Err(TryRecvError::Disconnected)
    );
}

// ---------------------------------------------------------------------------------
// Iterators

#[test]
fn iterators() {
    // try_iter: what is there, without blocking on live senders.
    let (tx, mut rx) = ring::channel::<u64>(16).unwrap();
    tx.send_many(0..5).unwrap();
    let mut got: Vec<u64> = rx.try_iter().collect();
    got.sort_unstable();
    assert_eq!(got, [0, 1, 2, 3, 4]);
    assert_eq!(rx.try_iter().count(), 0);
    tx.send_many(5..8).unwrap();
    assert_eq!(rx.drain().count(), 3);

    // iter: blocks, ends when the senders are gone and the rings empty.
    thread::scope(|s| {
        for t in 0..2u64 {
            let tx = tx.clone();
            s.spawn(move || {
                for i in t * 100..(t + 1) * 100 {
                    tx.send(i).unwrap();
                }
            });
        }
        drop(tx);
        let mut got: Vec<u64> = rx.iter().collect();
        got.sort_unstable();
        assert_eq!(got, (0..200).collect::<Vec<u64>>());
    });

    // for v in &mut rx, and for v in rx.
    let (tx, mut rx) = ring::channel::<u64>(16).unwrap();
    tx.send_many(0..3).unwrap();
    rx.close();
    let mut n = 0;
    for _ in &mut rx {
        n += 1;
    }
    assert_eq!(
        n, 3,
        "a closed channel's iterator ends once empty, senders alive"
    );
    let (tx, rx) = ring::channel::<u64>(16).unwrap();
    let producer = thread::spawn(move || tx.send_many(0..50).unwrap());
    let sum: u64 = rx.into_iter().sum();
    producer.join().unwrap();
    assert_eq!(sum, (0..50).sum::<u64>());
}

// ---------------------------------------------------------------------------------
// Stream and Sink

#[cfg(feature = "async")]
#[test]
fn the_receiver_is_a_fused_stream() {
    use futures_core::{FusedStream, Stream};
    let (tx, mut rx) = ring::channel::<u64>(8).unwrap();
    assert!(!rx.is_terminated());
    let (_count, waker) = Counting::new();
    let mut cx = Context::from_waker(&waker);
    assert!(Pin::new(&mut rx).poll_next(&mut cx).is_pending());
    assert!(!rx.is_terminated(), "pending is not the end");
    tx.send_many([1, 2]).unwrap();
    drop(tx);
    let mut got = Vec::new();
    block_on(std::future::poll_fn(|cx| {
        loop {
            match Pin::new(&mut rx).poll_next(cx) {
                Poll::Ready(Some(v)) => got.push(v),
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }));
    got.sort_unstable();
    assert_eq!(got, [1, 2]);
    assert!(rx.is_terminated(), "after the stream's None");
    assert_eq!(Pin::new(&mut rx).poll_next(&mut cx), Poll::Ready(None));
    assert!(rx.is_terminated());

    // Closed, senders alive: queued values, then the end.
    let (tx, mut rx) = ring::channel::<u64>(8).unwrap();
    tx.send(3).unwrap();
    rx.close();
    assert!(
        !rx.is_terminated(),
        "a closed stream with a value is not over"
    );
    assert_eq!(Pin::new(&mut rx).poll_next(&mut cx), Poll::Ready(Some(3)));
    assert_eq!(Pin::new(&mut rx).poll_next(&mut cx), Poll::Ready(None));
    assert!(rx.is_terminated());
}

#[cfg(feature = "async")]
#[test]
fn poll_sender_is_a_sink() {
    use futures_sink::Sink;
    use percid::ring::PollSender;
    let (tx, mut rx) = ring::channel::<u64>(2).unwrap();
    let mut sink = PollSender::new(tx.clone());
    let (count, waker) = Counting::new();
    let mut cx = Context::from_waker(&waker);

    // Ready, then sends.
    for v in 0..2 {
        match Pin::new(&mut sink).poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => {}
            other => panic!(
                "poll_ready on an empty ring: {:?}",
                other.map(|r| r.is_ok())
            ),
        }
        assert!(Pin::new(&mut sink).start_send(v).is_ok());
    }
    assert!(matches!(
        Pin::new(&mut sink).poll_flush(&mut cx),
        Poll::Ready(Ok(()))
    ));
    let mut got: Vec<u64> = rx.try_iter().collect();
    got.sort_unstable();
    assert_eq!(got, [0, 1]);

    // A full ring: poll_ready waits, and a freed slot wakes it.
    attempts("PollSender on a full ring", || {
        let before = fill(&tx, || 9);
        if before == 0 {
            return Err("the ring was full already".into());
        }
        match Pin::new(&mut sink).poll_ready(&mut cx) {
            Poll::Pending => {}
            Poll::Ready(Ok(())) => {
                // Moved to another ring: give the slot back unused.
                assert!(Pin::new(&mut sink).start_send(9).is_ok());
                rx.try_iter().count();
                return Err("poll_ready was ready on a full ring (moved?)".into());
            }
            Poll::Ready(Err(_)) => panic!("poll_ready failed with the receiver alive"),
        }
        let wakes = count.wakes();
        let drained = rx.try_iter().count();
        assert!(drained >= before);
        let t0 = Instant::now();
        while count.wakes() == wakes {
            assert!(t0.elapsed() < LONG, "a freed slot did not wake poll_ready");
            thread::yield_now();
        }
        match Pin::new(&mut sink).poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => {}
            _ => return Err("poll_ready not ready after the wake".into()),
        }
        assert!(Pin::new(&mut sink).start_send(10).is_ok());
        assert_eq!(rx.try_recv(), Ok(10));
        Ok(())
    });

    // poll_close: no more sends through this sink; the channel stays open for
    // the other senders.
    // start_send without a permit from poll_ready: the value comes back.
    match Pin::new(&mut sink).start_send(12) {
        Err(e) => assert_eq!(e.into_inner(), Some(12)),
        Ok(()) => panic!("start_send without poll_ready"),
    }
    assert!(matches!(
        Pin::new(&mut sink).poll_close(&mut cx),
        Poll::Ready(Ok(()))
    ));
    assert!(
        matches!(Pin::new(&mut sink).poll_ready(&mut cx), Poll::Ready(Err(_))),
        "poll_ready after poll_close"
    );
    match Pin::new(&mut sink).start_send(13) {
        Err(e) => assert_eq!(e.into_inner(), Some(13), "the value back after poll_close"),
        Ok(()) => panic!("start_send after poll_close"),
    }
    assert_eq!(tx.strong_count(), 1, "poll_close gave up the sink's sender");
    tx.send(11).unwrap();
    assert_eq!(rx.recv(), Ok(11));

    // The receiver gone: poll_ready fails.
    let mut sink = PollSender::new(tx.clone());
    drop(rx);
    assert!(matches!(
        Pin::new(&mut sink).poll_ready(&mut cx),
        Poll::Ready(Err(_))
    ));
}

// ---------------------------------------------------------------------------------
// Unbounded channels

/// Whether the calling thread's cid stayed `cid` (a hint read outside a section).
fn same_cid(cid: u32) -> bool {
    percid::current_cid() == cid
}

#[test]
fn unbounded_sends_never_fail_while_the_receiver_lives() {
    const N: u64 = 1_000_000;
    let (tx, mut rx) = ring::unbounded::<u64>().unwrap();
    assert_eq!(tx.max_capacity(), usize::MAX);
    let _pinned = pin_here();
    let cid = percid::current_cid();
    let mut moved = false;
    for i in 0..N {
        let r = if i % 3 == 0 {
            tx.send(i).map_err(|e| format!("{e:?}"))
        } else {
            tx.try_send(i).map_err(|e| format!("{e:?}"))
        };
        r.unwrap_or_else(|e| panic!("send {i} of an unbounded channel failed: {e}"));
        if i < 1 << 16 {
            moved |= !same_cid(cid);
        }
    }
    tx.send_many(N..N + 100)
        .expect("send_many on an unbounded channel");
    assert_eq!(rx.len(), (N + 100) as usize);
    let mut next = 0u64;
    let mut seen = vec![false; (N + 100) as usize];
    let mut in_order = true;
    while let Ok(v) = rx.try_recv() {
        assert!(!seen[v as usize], "value {v} twice");
        seen[v as usize] = true;
        in_order &= v == next;
        next = v + 1;
    }
    assert!(seen.iter().all(|&s| s), "values lost");
    // One producer that stayed on its ring: its values in the order it sent them.
    if !moved {
        assert!(in_order, "one thread's values out of order");
    } else {
        eprintln!("the producer changed cids: order not checked");
    }
    assert!(rx.is_empty());
    // Caught up: the channel goes on.
    tx.send(7).unwrap();
    assert_eq!(rx.recv(), Ok(7));
}

#[test]
fn unbounded_goes_back_to_its_rings_after_catching_up() {
    // Values spill once the caller's ring is full; once the receiver took the
    // spill queue's last value, sends go to the rings again.
    attempts("unbounded spill and return", || {
        let (tx, mut rx) = Builder::new()
            .capacity_per_cid(8)
            .unbounded(true)
            .build::<u64>()
            .unwrap();
        for i in 0..100 {
            tx.try_send(i).expect("unbounded");
        }
        let mut spilled = 0;
        let mut got = Vec::new();
        loop {
            match rx.try_recv_traced() {
                Ok((v, shard)) => {
                    spilled += usize::from(shard.is_none());
                    got.push(v);
                }
                Err(TryRecvError::Empty) => break,
                Err(e) => panic!("{e:?}"),
            }
        }
        if spilled < 100 - 2 * 8 {
            return Err(format!("only {spilled} of 100 values spilled (moved?)"));
        }
        if !got.is_sorted() {
            return Err(format!(
                "one thread's values out of order (moved?): {got:?}"
            ));
        }
        tx.try_send(100).unwrap();
        match rx.try_recv_traced() {
            Ok((100, Some(_))) => Ok(()),
            Ok((v, shard)) => panic!("after catching up: {v} from {shard:?}, not a ring"),
            Err(e) => panic!("{e:?}"),
        }
    });
}

#[test]
fn unbounded_keeps_each_threads_order() {
    // Several producers, the receiver not reading, then reading everything: each
    // producer's values (tagged) come out in its order, unless it changed rings
    // before its first spilled value (then only exactly-once is promised).
    const PER: u64 = 50_000;
    let (tx, mut rx) = Builder::new()
        .capacity_per_cid(64)
        .unbounded(true)
        .build::<u64>()
        .unwrap();
    let moved: Vec<bool> = thread::scope(|s| {
        let hs: Vec<_> = (0..4u64)
            .map(|p| {
                let tx = tx.clone();
                s.spawn(move || {
                    let _pinned = pin_here();
                    let cid = percid::current_cid();
                    let mut moved = false;
                    for i in 0..PER {
                        tx.send(p << 32 | i).unwrap();
                        if i < 1024 {
                            moved |= !same_cid(cid);
                        }
                    }
                    moved
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    drop(tx);
    let mut last = [None::<u64>; 4];
    let mut count = [0u64; 4];
    for v in rx.iter() {
        let (p, i) = ((v >> 32) as usize, v & 0xffff_ffff);
        if let Some(prev) = last[p] {
            assert_ne!(prev, i, "value {p}/{i} twice");
            if !moved[p] {
                assert!(i > prev, "producer {p}: {i} after {prev}");
            }
        }
        last[p] = Some(i);
        count[p] += 1;
    }
    assert_eq!(count, [PER; 4], "values lost");
}

// ---------------------------------------------------------------------------------
// Drops

#[test]
fn receiver_drop_drops_every_queued_value_once() {
    let ledger = Ledger::new();
    // Rings.
    {
        let (tx, mut rx) = ring::channel::<Tracked>(16).unwrap();
        for i in 0..12 {
            tx.send(ledger.make(i)).unwrap();
        }
        drop(rx.recv().unwrap());
        drop(rx);
        assert_eq!(ledger.live(), 0);
        let back = tx.send(ledger.make(100)).unwrap_err().into_inner();
        assert_eq!(back.id, 100);
    }
    // Rings and the unbounded spill queue.
    {
        let (tx, mut rx) = Builder::new()
            .capacity_per_cid(4)
            .unbounded(true)
            .build::<Tracked>()
            .unwrap();
        for i in 1000..6000 {
            tx.try_send(ledger.make(i)).expect("unbounded");
        }
        for _ in 0..100 {
            drop(rx.recv().unwrap());
        }
        assert_eq!(ledger.live(), 4900);
        drop(rx);
        assert_eq!(ledger.live(), 0, "the receiver's drop left values alive");
        match tx.try_send(ledger.make(7000)) {
            Err(TrySendError::Disconnected(v)) => assert_eq!(v.id, 7000),
            other => panic!("try_send without receiver: {other:?}"),
        }
        assert_eq!(tx.send(ledger.make(7001)).unwrap_err().0.id, 7001);
    }
    // The senders go first, then the receiver with values queued.
    {
        let (tx, rx) = Builder::new()
            .capacity_per_cid(2)
            .unbounded(true)
            .build::<Tracked>()
            .unwrap();
        let weak = tx.downgrade();
        for i in 8000..8100 {
            tx.send(ledger.make(i)).unwrap();
        }
        drop(tx);
        assert_eq!(ledger.live(), 100);
        drop(rx);
        assert_eq!(ledger.live(), 0);
        drop(weak);
    }
    ledger.check();
}

#[test]
fn the_channel_drops_values_sent_by_racing_senders() {
    // Senders keep sending while the receiver is dropped: every value is dropped
    // once, by the receiver, the channel or the sender that got it back.
    let ledger = Ledger::new();
    for round in 0..20u64 {
        let (tx, rx) = Builder::new()
            .capacity_per_cid(8)
            .unbounded(round % 2 == 0)
            .build::<Tracked>()
            .unwrap();
        thread::scope(|s| {
            for t in 0..4u64 {
                let (tx, ledger) = (tx.clone(), &ledger);
                s.spawn(move || {
                    for i in 0..2000u64 {
                        let id = round << 32 | t << 16 | i;
                        match tx.try_send(ledger.make(id)) {
                            Ok(()) | Err(TrySendError::Full(_)) => {}
                            Err(TrySendError::Disconnected(v)) => {
                                assert_eq!(v.id, id);
                                break;
                            }
                        }
                    }
                });
            }
            thread::sleep(Duration::from_millis(1));
            drop(rx);
        });
        drop(tx);
        assert_eq!(
            ledger.live(),
            0,
            "round {round}: values alive after every end left"
        );
    }
    ledger.check();
}

// ---------------------------------------------------------------------------------
// Blocking calls inside a tokio runtime

#[cfg(feature = "tokio")]
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

#[cfg(feature = "tokio")]
#[test]
fn blocking_in_a_current_thread_runtime_panics() {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    // recv on an empty channel would wait: tokio's panic, not a deadlock.
    let (tx, mut rx) = ring::channel::<u64>(2).unwrap();
    let p = catch_unwind(AssertUnwindSafe(|| rt.block_on(async { rx.recv() })))
        .expect_err("a blocking recv inside a current-thread runtime");
    let msg = panic_message(&*p);
    assert!(
        msg.contains("block"),
        "not a message about blocking: {msg:?}"
    );
    // Calls that do not wait are fine there.
    rt.block_on(async {
        tx.send(1).unwrap();
        assert_eq!(rx.recv(), Ok(1));
        assert_eq!(
            rx.recv_timeout(Duration::ZERO),
            Err(RecvTimeoutError::Timeout)
        );
    });

    // send on a full ring would wait.
    attempts("send on a full ring in a current-thread runtime", || {
        let (tx, _rx) = ring::channel::<u64>(2).unwrap();
        if fill(&tx, || 0) != 2 {
            return Err("the ring did not fill (moved?)".into());
        }
        match catch_unwind(AssertUnwindSafe(|| rt.block_on(async { tx.send(3) }))) {
            Err(p) => {
                let msg = panic_message(&*p);
                assert!(
                    msg.contains("block"),
                    "not a message about blocking: {msg:?}"
                );
                Ok(())
            }
            Ok(r) => {
                assert!(r.is_ok());
                Err("the send did not wait (moved?)".into())
            }
        }
    });
}

#[cfg(feature = "tokio")]
#[test]
fn blocking_in_spawn_blocking_works() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // A receiver waiting inside spawn_blocking, a plain thread sending.
    let (tx, rx) = ring::channel::<u64>(2).unwrap();
    let tx2 = tx.clone();
    let (v, rx) = rt.block_on(async move {
        let receiver = tokio::task::spawn_blocking(move || {
            let mut rx = rx;
            let v = rx.recv().expect("a value");
            (v, rx)
        });
        let sender = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            tx2.send(5).unwrap();
        });
        let got = receiver.await.unwrap();
        sender.join().unwrap();
        got
    });
    assert_eq!(v, 5);
    // A sender on a full ring inside spawn_blocking, a plain thread receiving.
    let receiver = thread::spawn(move || rx.into_iter().count());
    rt.block_on(async move {
        tokio::task::spawn_blocking(move || {
            for i in 0..100 {
                tx.send(i).unwrap();
            }
        })
        .await
        .unwrap()
    });
    assert_eq!(receiver.join().unwrap(), 100);
}

/// A value handed out frees its slot at once: a thread that sends and receives in
/// turn on a ring smaller than the receiver's burst never finds the ring full of
/// values it already received (it used to, and `send` then blocked forever).
#[test]
fn a_received_value_frees_its_slot_at_once() {
    for capacity in [1usize, 2, 4, 8] {
        let (tx, mut rx) = ring::channel::<u64>(capacity).unwrap();
        for round in 0..200u64 {
            for k in 0..capacity as u64 {
                let v = round * 100 + k;
                match tx.send_timeout(v, Duration::from_secs(5)) {
                    Ok(()) => {}
                    Err(e) => panic!("capacity {capacity}, round {round}: {e:?}"),
                }
            }
            for _ in 0..capacity {
                assert!(rx.try_recv().is_ok(), "capacity {capacity}, round {round}");
            }
        }
    }
}
