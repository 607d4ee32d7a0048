//! The channels `percid bench ring` and `benches/ring.rs` drive, and the workload
//! pieces both use (messages, how producers split a sample, the expected checksum).
//! One file, included by both (`#[path]` from each), so they time the same code.
//!
//! Every channel is wrapped in the same two traits, [`SyncChannel`] (plain threads at
//! both ends) and, with feature `peers`, [`AsyncChannel`] (plain-thread producers, a
//! consumer future on a tokio runtime). Each wrapper uses the channel the way it works
//! best; the choices, per channel:
//!
//! | channel | producer, batch 1 | producer, batch 32 | sync consumer | async consumer |
//! |---|---|---|---|---|
//! | `percid::ring` | `send` (blocks) | `send_many` | `recv_many`, `recv` when empty | `recv_async` (or `Stream`) |
//! | std `sync_channel` | `send` (blocks) | loop | `recv` (blocks) | - |
//! | crossbeam `ArrayQueue` | `push`, spin/yield when full | loop | `pop`, spin/yield when empty | - |
//! | crossbeam-channel `bounded` | `send` (blocks) | loop | `recv` (blocks) | - |
//! | tokio `mpsc::channel` | `blocking_send` | `reserve_many` | `blocking_recv_many` | `recv().await` |
//! | flume `bounded` | `send` (blocks) | loop | `recv` (blocks) | `recv_async` |
//! | thingbuf `mpsc` | `send` (blocks; async: `send` on a parking `block_on`) | loop | `recv` (blocks) | `recv().await` |
//!
//! The unbounded channels (sends never wait) and the reserve-then-send producers:
//!
//! | channel | producer | sync consumer |
//! |---|---|---|
//! | `percid::ring` unbounded (`Builder::unbounded`) | `send` | `recv_many`, `recv` when empty |
//! | tokio `mpsc::unbounded_channel` | `send` | `blocking_recv_many` |
//! | crossbeam-channel `unbounded` | `send` | `recv` (blocks) |
//! | crossbeam `SegQueue` | `push` | `pop`, spin/yield when empty |
//! | flume `unbounded` | `send` | `recv` (blocks) |
//! | `percid::ring`, reserve | `block_on(reserve())`, then `Permit::send` | `recv_many`, `recv` when empty |
//! | tokio `mpsc::channel`, reserve | `block_on(reserve())`, then `Permit::send` | `blocking_recv_many` |
//!
//! Both reserving producers wait on the same parking [`block_on`] (one poll when
//! there is room, as there mostly is), so the two differ only in their channel.
//!
//! The sync consumer is each channel's own blocking receive where it has one (they
//! all spin briefly before they park), plus its batch receive where it has one
//! (`recv_many`, `blocking_recv_many`): whatever is queued is taken in one go, and the
//! consumer blocks only when nothing is. (For percid, a consumer busy-polling
//! `recv_many` with a spin/yield backoff instead was several times slower in a short
//! run at 2 and 8 producers.) `ArrayQueue` has no blocking end, so its consumer and
//! producers busy-poll with the same backoff (64 spins, then `yield_now`) the pool
//! bench's ring uses. flume's batch receive (`drain`) takes the channel's whole
//! queue, allocation and all (its next send allocates a new one), so the bench gives
//! flume its plain `recv`. Producers of channels without a batch send loop over their
//! single send: that is their batch of 32.

// Each includer uses a different subset (the criterion bench skips some channels).
#![allow(dead_code)]

use std::future::Future;
use std::pin::pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

/// Messages at most one sync consumer takes in one batch receive.
pub(crate) const RECV_BATCH: usize = 256;

/// Producer batch of the `x32` cases (`send_many` takes up to 32 per critical section).
pub(crate) const SEND_BATCH: u64 = 32;

/// A message type of the workload: built from a number, and weighed back into one
/// when received, so the consumer can check every message arrived whole.
pub(crate) trait Message: Send + Sync + Default + Clone + 'static {
    /// Short name for the case names.
    const NAME: &'static str;
    /// What [`Message::weight`] returns for `Message::new(v)`, divided by `v`.
    const FACTOR: u64;
    fn new(v: u64) -> Self;
    fn weight(&self) -> u64;
}

impl Message for u64 {
    const NAME: &'static str = "u64";
    const FACTOR: u64 = 1;

    #[inline]
    fn new(v: u64) -> u64 {
        v
    }

    #[inline]
    fn weight(&self) -> u64 {
        *self
    }
}

/// The 64-byte message: a cache line of copies of its number. Its weight reads the
/// first and the last word, so a message torn or half-written on the way is caught.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Msg64(pub(crate) [u64; 8]);

impl Message for Msg64 {
    const NAME: &'static str = "64B";
    const FACTOR: u64 = 2;

    #[inline]
    fn new(v: u64) -> Msg64 {
        Msg64([v; 8])
    }

    #[inline]
    fn weight(&self) -> u64 {
        self.0[0].wrapping_add(self.0[7])
    }
}

/// Messages producer `p` of `producers` sends when a sample carries `total`: an even
/// split, the first `total % producers` producers sending one more.
pub(crate) fn share(total: u64, producers: usize, p: usize) -> u64 {
    let n = producers as u64;
    total / n + u64::from((p as u64) < total % n)
}

/// What the consumer's checksum must be after a sample of `total` messages: every
/// producer sends the numbers `1..=share`, each weighing `M::FACTOR` times itself.
pub(crate) fn expected_sum<M: Message>(total: u64, producers: usize) -> u64 {
    (0..producers)
        .map(|p| {
            let n = share(total, producers, p);
            // n (n + 1) / 2 without overflow for any share below 2^63.
            let (a, b) = if n.is_multiple_of(2) {
                (n / 2, n + 1)
            } else {
                (n, n.div_ceil(2))
            };
            a.wrapping_mul(b)
        })
        .fold(0u64, u64::wrapping_add)
        .wrapping_mul(M::FACTOR)
}

/// Producer `p`'s part of a sample: the numbers `1..=share` as messages, one send
/// each (`batch == 1`) or through the channel's batch send, `batch` at a time.
pub(crate) fn produce<M: Message>(
    chan: &impl SyncChannel<M>,
    total: u64,
    producers: usize,
    p: usize,
    batch: u64,
) {
    let n = share(total, producers, p);
    if batch <= 1 {
        for v in 1..=n {
            chan.send(M::new(v));
        }
        return;
    }
    let mut start = 1;
    while start <= n {
        let len = batch.min(n - start + 1);
        chan.send_batch((0..len as usize).map(|i| M::new(start + i as u64)));
        start += len;
    }
}

/// A channel driven by plain threads: any number of producers, one consumer.
pub(crate) trait SyncChannel<M: Message>: Sync {
    /// Sends `m`, waiting (the channel's own way) while it is full.
    fn send(&self, m: M);

    /// Sends a batch of at most [`SEND_BATCH`] messages; channels without a batch
    /// send loop over [`SyncChannel::send`].
    fn send_batch(&self, ms: impl ExactSizeIterator<Item = M>) {
        for m in ms {
            self.send(m);
        }
    }

    /// Receives exactly `n` messages and returns the wrapping sum of their weights.
    /// One thread at a time calls it (the harness runs one sample at a time).
    fn recv_sum(&self, n: u64) -> u64;
}

/// Panics with the channel's name: a disconnected channel is a bug in the bench.
#[cold]
fn closed(chan: &str) -> ! {
    panic!("bench ring: {chan} closed while the bench held both ends")
}

/// The checksum of `n` messages taken one by one with a blocking receive (`None`:
/// the channel closed, which the bench never lets happen).
fn sum_blocking<M: Message>(n: u64, chan: &str, mut recv: impl FnMut() -> Option<M>) -> u64 {
    (0..n).fold(0u64, |sum, _| {
        let m = recv().unwrap_or_else(|| closed(chan));
        sum.wrapping_add(m.weight())
    })
}

/// A receiver the consumer borrows for a sample, taken out of its slot so no lock is
/// held while it waits (nor across an `.await`).
pub(crate) struct Slot<R>(Mutex<Option<R>>);

impl<R> Slot<R> {
    pub(crate) fn new(r: R) -> Slot<R> {
        Slot(Mutex::new(Some(r)))
    }

    /// Runs `f` on the receiver, then puts it back.
    fn with<T>(&self, f: impl FnOnce(&mut R) -> T) -> T {
        let mut r = self.take();
        let out = f(&mut r);
        self.put(r);
        out
    }

    fn take(&self) -> R {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .expect("bench ring: two consumers at once")
    }

    fn put(&self, r: R) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }
}

/// `percid::ring`: the bench's subject.
pub(crate) struct Percid<M: Send> {
    tx: percid::ring::Sender<M>,
    rx: Slot<percid::ring::Receiver<M>>,
}

impl<M: Send> Percid<M> {
    /// `capacity_per_cid` slots in each cid's sub-ring.
    pub(crate) fn new(capacity_per_cid: usize) -> Percid<M> {
        let (tx, rx) = percid::ring::channel(capacity_per_cid)
            .unwrap_or_else(|e| panic!("bench ring: cannot build the percid ring: {e:?}"));
        Percid {
            tx,
            rx: Slot::new(rx),
        }
    }

    /// `percid::ring::unbounded()`, as a user builds it: rings of
    /// `UNBOUNDED_CAPACITY` reserved slots per cid before its spill queue.
    pub(crate) fn unbounded() -> Percid<M> {
        let (tx, rx) = percid::ring::unbounded()
            .unwrap_or_else(|e| panic!("bench ring: cannot build the percid ring: {e:?}"));
        Percid {
            tx,
            rx: Slot::new(rx),
        }
    }
}

impl<M: Message> SyncChannel<M> for Percid<M> {
    #[inline]
    fn send(&self, m: M) {
        if self.tx.send(m).is_err() {
            closed("percid::ring");
        }
    }

    #[inline]
    fn send_batch(&self, ms: impl ExactSizeIterator<Item = M>) {
        if self.tx.send_many(ms).is_err() {
            closed("percid::ring");
        }
    }

    fn recv_sum(&self, n: u64) -> u64 {
        self.rx.with(|rx| {
            let mut buf = Vec::with_capacity(RECV_BATCH);
            let (mut left, mut sum) = (n, 0u64);
            while left > 0 {
                let max = left.min(RECV_BATCH as u64) as usize;
                let got = rx.try_recv_many(&mut buf, max).unwrap_or(0);
                if got == 0 {
                    let Ok(m) = rx.recv() else {
                        closed("percid::ring")
                    };
                    sum = sum.wrapping_add(m.weight());
                    left -= 1;
                    continue;
                }
                for m in buf.drain(..) {
                    sum = sum.wrapping_add(m.weight());
                }
                left -= got as u64;
            }
            sum
        })
    }
}

/// `percid::ring` with producers that reserve a slot (`reserve().await`) and then
/// send on the permit.
pub(crate) struct PercidReserve<M: Send>(pub(crate) Percid<M>);

impl<M: Message> SyncChannel<M> for PercidReserve<M> {
    #[inline]
    fn send(&self, m: M) {
        let Ok(permit) = block_on(self.0.tx.reserve()) else {
            closed("percid::ring")
        };
        permit.send(m);
    }

    fn recv_sum(&self, n: u64) -> u64 {
        self.0.recv_sum(n)
    }
}

/// std's bounded `sync_channel`: the in-tree peer, always built.
pub(crate) struct StdSync<M> {
    tx: mpsc::SyncSender<M>,
    rx: Slot<mpsc::Receiver<M>>,
}

impl<M> StdSync<M> {
    pub(crate) fn new(capacity: usize) -> StdSync<M> {
        let (tx, rx) = mpsc::sync_channel(capacity);
        StdSync {
            tx,
            rx: Slot::new(rx),
        }
    }
}

impl<M: Message> SyncChannel<M> for StdSync<M> {
    #[inline]
    fn send(&self, m: M) {
        if self.tx.send(m).is_err() {
            closed("sync_channel");
        }
    }

    fn recv_sum(&self, n: u64) -> u64 {
        self.rx
            .with(|rx| sum_blocking(n, "sync_channel", || rx.recv().ok()))
    }
}

/// Spins a little, then yields the CPU: on a 2-CPU machine the other end may be
/// waiting for this very CPU.
#[inline]
fn backoff(spins: &mut u32) {
    if *spins < 64 {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Wakes a parked thread.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `fut` on the calling thread, parking while it is pending: how tokio's own
/// `blocking_send` waits, for the async-only sends of plain-thread producers. The
/// thread's waker is made once, so a future ready at its first poll costs no
/// allocation.
pub(crate) fn block_on<F: Future>(fut: F) -> F::Output {
    thread_local! {
        static WAKER: Waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    }
    WAKER.with(|waker| {
        let mut cx = Context::from_waker(waker);
        let mut fut = pin!(fut);
        loop {
            if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                return out;
            }
            std::thread::park();
        }
    })
}

#[cfg(feature = "peers")]
pub(crate) use with_feature::*;

/// The channels that come from crates.io (feature `peers`), and the async side.
#[cfg(feature = "peers")]
mod with_feature {
    use std::future::Future;

    use crossbeam_queue::{ArrayQueue, SegQueue};

    use super::{
        Message, Percid, RECV_BATCH, Slot, SyncChannel, backoff, block_on, closed, sum_blocking,
    };

    /// A channel whose consumer is a future (run on a tokio runtime by the bench)
    /// while its producers are plain threads ([`SyncChannel::send`]).
    pub(crate) trait AsyncChannel<M: Message>: SyncChannel<M> {
        /// Receives exactly `n` messages, one `.await` each, and returns the wrapping
        /// sum of their weights.
        fn recv_sum_async(&self, n: u64) -> impl Future<Output = u64>;
    }

    impl<M: Message> AsyncChannel<M> for Percid<M> {
        async fn recv_sum_async(&self, n: u64) -> u64 {
            let mut rx = self.rx.take();
            let mut sum = 0u64;
            for _ in 0..n {
                let Ok(m) = rx.recv_async().await else {
                    closed("percid::ring")
                };
                sum = sum.wrapping_add(m.weight());
            }
            self.rx.put(rx);
            sum
        }
    }

    /// `percid::ring` consumed as a `futures_core::Stream` (`poll_next` through
    /// `poll_fn`) rather than through `recv_async`.
    pub(crate) struct PercidStream<M: Send>(pub(crate) Percid<M>);

    impl<M: Message> SyncChannel<M> for PercidStream<M> {
        #[inline]
        fn send(&self, m: M) {
            self.0.send(m);
        }

        fn recv_sum(&self, n: u64) -> u64 {
            self.0.recv_sum(n)
        }
    }

    impl<M: Message> AsyncChannel<M> for PercidStream<M> {
        async fn recv_sum_async(&self, n: u64) -> u64 {
            use futures_core::Stream;
            let mut rx = self.0.rx.take();
            let mut sum = 0u64;
            for _ in 0..n {
                let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut rx).poll_next(cx));
                let Some(m) = next.await else {
                    closed("percid::ring")
                };
                sum = sum.wrapping_add(m.weight());
            }
            self.0.rx.put(rx);
            sum
        }
    }

    /// crossbeam's `ArrayQueue`: no blocking at either end, so both busy-poll.
    pub(crate) struct Queue<M>(ArrayQueue<M>);

    impl<M> Queue<M> {
        pub(crate) fn new(capacity: usize) -> Queue<M> {
            Queue(ArrayQueue::new(capacity))
        }
    }

    impl<M: Message> SyncChannel<M> for Queue<M> {
        #[inline]
        fn send(&self, mut m: M) {
            let mut spins = 0;
            while let Err(back) = self.0.push(m) {
                m = back;
                backoff(&mut spins);
            }
        }

        fn recv_sum(&self, n: u64) -> u64 {
            let mut sum = 0u64;
            for _ in 0..n {
                let mut spins = 0;
                let m = loop {
                    if let Some(m) = self.0.pop() {
                        break m;
                    }
                    backoff(&mut spins);
                };
                sum = sum.wrapping_add(m.weight());
            }
            sum
        }
    }

    /// crossbeam-channel's `bounded`.
    pub(crate) struct Crossbeam<M> {
        tx: crossbeam_channel::Sender<M>,
        rx: crossbeam_channel::Receiver<M>,
    }

    impl<M> Crossbeam<M> {
        pub(crate) fn new(capacity: usize) -> Crossbeam<M> {
            let (tx, rx) = crossbeam_channel::bounded(capacity);
            Crossbeam { tx, rx }
        }

        /// crossbeam-channel's `unbounded`.
        pub(crate) fn unbounded() -> Crossbeam<M> {
            let (tx, rx) = crossbeam_channel::unbounded();
            Crossbeam { tx, rx }
        }
    }

    impl<M: Message> SyncChannel<M> for Crossbeam<M> {
        #[inline]
        fn send(&self, m: M) {
            if self.tx.send(m).is_err() {
                closed("crossbeam-channel");
            }
        }

        fn recv_sum(&self, n: u64) -> u64 {
            sum_blocking(n, "crossbeam-channel", || self.rx.recv().ok())
        }
    }

    /// tokio's bounded `mpsc::channel`, blocking at the plain-thread ends.
    pub(crate) struct Tokio<M> {
        tx: tokio::sync::mpsc::Sender<M>,
        rx: Slot<tokio::sync::mpsc::Receiver<M>>,
    }

    impl<M> Tokio<M> {
        pub(crate) fn new(capacity: usize) -> Tokio<M> {
            let (tx, rx) = tokio::sync::mpsc::channel(capacity);
            Tokio {
                tx,
                rx: Slot::new(rx),
            }
        }
    }

    impl<M: Message> SyncChannel<M> for Tokio<M> {
        #[inline]
        fn send(&self, m: M) {
            if self.tx.blocking_send(m).is_err() {
                closed("tokio mpsc");
            }
        }

        /// One `reserve_many` for the batch (waiting on a parked thread, as
        /// `blocking_send` does), then a send on each permit.
        fn send_batch(&self, ms: impl ExactSizeIterator<Item = M>) {
            let Ok(permits) = block_on(self.tx.reserve_many(ms.len())) else {
                closed("tokio mpsc")
            };
            for (permit, m) in permits.zip(ms) {
                permit.send(m);
            }
        }

        fn recv_sum(&self, n: u64) -> u64 {
            self.rx
                .with(|rx| sum_tokio_many(n, |buf, max| rx.blocking_recv_many(buf, max)))
        }
    }

    impl<M: Message> AsyncChannel<M> for Tokio<M> {
        async fn recv_sum_async(&self, n: u64) -> u64 {
            let mut rx = self.rx.take();
            let mut sum = 0u64;
            for _ in 0..n {
                let Some(m) = rx.recv().await else {
                    closed("tokio mpsc")
                };
                sum = sum.wrapping_add(m.weight());
            }
            self.rx.put(rx);
            sum
        }
    }

    /// The checksum of `n` messages taken in batches with tokio's
    /// `blocking_recv_many` (bounded and unbounded receivers alike).
    fn sum_tokio_many<M: Message>(
        n: u64,
        mut recv_many: impl FnMut(&mut Vec<M>, usize) -> usize,
    ) -> u64 {
        let mut buf = Vec::with_capacity(RECV_BATCH);
        let (mut left, mut sum) = (n, 0u64);
        while left > 0 {
            let max = left.min(RECV_BATCH as u64) as usize;
            let got = recv_many(&mut buf, max);
            if got == 0 {
                closed("tokio mpsc");
            }
            for m in buf.drain(..) {
                sum = sum.wrapping_add(m.weight());
            }
            left -= got as u64;
        }
        sum
    }

    /// tokio's bounded `mpsc::channel` with producers that reserve a slot
    /// (`reserve().await`) and then send on the permit.
    pub(crate) struct TokioReserve<M>(pub(crate) Tokio<M>);

    impl<M: Message> SyncChannel<M> for TokioReserve<M> {
        #[inline]
        fn send(&self, m: M) {
            let Ok(permit) = block_on(self.0.tx.reserve()) else {
                closed("tokio mpsc")
            };
            permit.send(m);
        }

        fn recv_sum(&self, n: u64) -> u64 {
            self.0.recv_sum(n)
        }
    }

    /// tokio's `mpsc::unbounded_channel`.
    pub(crate) struct TokioUnbounded<M> {
        tx: tokio::sync::mpsc::UnboundedSender<M>,
        rx: Slot<tokio::sync::mpsc::UnboundedReceiver<M>>,
    }

    impl<M> TokioUnbounded<M> {
        pub(crate) fn new() -> TokioUnbounded<M> {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            TokioUnbounded {
                tx,
                rx: Slot::new(rx),
            }
        }
    }

    impl<M: Message> SyncChannel<M> for TokioUnbounded<M> {
        #[inline]
        fn send(&self, m: M) {
            if self.tx.send(m).is_err() {
                closed("tokio mpsc");
            }
        }

        fn recv_sum(&self, n: u64) -> u64 {
            self.rx
                .with(|rx| sum_tokio_many(n, |buf, max| rx.blocking_recv_many(buf, max)))
        }
    }

    /// crossbeam's `SegQueue`: unbounded, no blocking end, so the consumer busy-polls
    /// (with the backoff `ArrayQueue`'s uses).
    pub(crate) struct Seg<M>(SegQueue<M>);

    impl<M> Seg<M> {
        pub(crate) fn new() -> Seg<M> {
            Seg(SegQueue::new())
        }
    }

    impl<M: Message> SyncChannel<M> for Seg<M> {
        #[inline]
        fn send(&self, m: M) {
            self.0.push(m);
        }

        fn recv_sum(&self, n: u64) -> u64 {
            let mut sum = 0u64;
            for _ in 0..n {
                let mut spins = 0;
                let m = loop {
                    if let Some(m) = self.0.pop() {
                        break m;
                    }
                    backoff(&mut spins);
                };
                sum = sum.wrapping_add(m.weight());
            }
            sum
        }
    }

    /// flume's `bounded`.
    pub(crate) struct Flume<M> {
        tx: flume::Sender<M>,
        rx: flume::Receiver<M>,
    }

    impl<M> Flume<M> {
        pub(crate) fn new(capacity: usize) -> Flume<M> {
            let (tx, rx) = flume::bounded(capacity);
            Flume { tx, rx }
        }

        /// flume's `unbounded`.
        pub(crate) fn unbounded() -> Flume<M> {
            let (tx, rx) = flume::unbounded();
            Flume { tx, rx }
        }
    }

    impl<M: Message> SyncChannel<M> for Flume<M> {
        #[inline]
        fn send(&self, m: M) {
            if self.tx.send(m).is_err() {
                closed("flume");
            }
        }

        fn recv_sum(&self, n: u64) -> u64 {
            sum_blocking(n, "flume", || self.rx.recv().ok())
        }
    }

    impl<M: Message> AsyncChannel<M> for Flume<M> {
        async fn recv_sum_async(&self, n: u64) -> u64 {
            let mut sum = 0u64;
            for _ in 0..n {
                let Ok(m) = self.rx.recv_async().await else {
                    closed("flume")
                };
                sum = sum.wrapping_add(m.weight());
            }
            sum
        }
    }

    /// thingbuf's `mpsc::blocking` channel (sync consumer).
    pub(crate) struct Thingbuf<M> {
        tx: thingbuf::mpsc::blocking::Sender<M>,
        rx: thingbuf::mpsc::blocking::Receiver<M>,
    }

    impl<M: Message> Thingbuf<M> {
        pub(crate) fn new(capacity: usize) -> Thingbuf<M> {
            let (tx, rx) = thingbuf::mpsc::blocking::channel(capacity);
            Thingbuf { tx, rx }
        }
    }

    impl<M: Message> SyncChannel<M> for Thingbuf<M> {
        #[inline]
        fn send(&self, m: M) {
            if self.tx.send(m).is_err() {
                closed("thingbuf");
            }
        }

        fn recv_sum(&self, n: u64) -> u64 {
            sum_blocking(n, "thingbuf", || self.rx.recv())
        }
    }

    /// thingbuf's async `mpsc` channel; its plain-thread producers wait for room on a
    /// parking [`block_on`] (the async sender has no blocking send).
    pub(crate) struct ThingbufAsync<M> {
        tx: thingbuf::mpsc::Sender<M>,
        rx: thingbuf::mpsc::Receiver<M>,
    }

    impl<M: Message> ThingbufAsync<M> {
        pub(crate) fn new(capacity: usize) -> ThingbufAsync<M> {
            let (tx, rx) = thingbuf::mpsc::channel(capacity);
            ThingbufAsync { tx, rx }
        }
    }

    impl<M: Message> SyncChannel<M> for ThingbufAsync<M> {
        #[inline]
        fn send(&self, m: M) {
            // The fast path without a future; the slow one waits for room.
            match self.tx.try_send(m) {
                Ok(()) => {}
                Err(thingbuf::mpsc::errors::TrySendError::Full(m)) => {
                    if block_on(self.tx.send(m)).is_err() {
                        closed("thingbuf");
                    }
                }
                Err(_) => closed("thingbuf"),
            }
        }

        fn recv_sum(&self, n: u64) -> u64 {
            block_on(self.recv_sum_async(n))
        }
    }

    impl<M: Message> AsyncChannel<M> for ThingbufAsync<M> {
        async fn recv_sum_async(&self, n: u64) -> u64 {
            let mut sum = 0u64;
            for _ in 0..n {
                let Some(m) = self.rx.recv().await else {
                    closed("thingbuf")
                };
                sum = sum.wrapping_add(m.weight());
            }
            sum
        }
    }
}
