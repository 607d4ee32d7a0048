//! The consuming end: one [`Receiver`] that visits the per-cid rings round-robin.

use super::UNBOUNDED_TRIM_BYTES;
use super::blocking;
use super::chan::{
    BUFFER, Chan, GATE_SPILL, GATE_TRIM, HEAD, PERMITS_CLOSED, RECEIVER_CLOSED, RECEIVER_GONE,
    SENDERS_GONE, TAIL,
};
use super::signal::{Waiter, lock};
use super::{RecvError, RecvTimeoutError, TryRecvError};
use crate::cid::Shard;
use crate::sync::{Arc, AtomicU64, Ordering, current_thread, spin_loop, yield_now};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Values taken from one ring before the receiver moves on to the next: bounds how
/// long a busy ring can keep the others waiting (at most `BURST × rings` values
/// between two visits of any ring).
const BURST: u32 = if cfg!(loom) { 2 } else { 32 };

/// Most pauses a waiting receive makes between two looks at the rings. A receiver
/// that has caught up with its senders and polls the tails too often slows them
/// down: each look pulls the line a sender is about to write out of that sender's
/// cache, and every send then pays a miss. So the pause doubles after each empty
/// look (up to this, then the receive yields or sleeps), and after a wait it grows
/// when the look found fewer than [`LOOK_TARGET`] values and shrinks when it found
/// more: the interval adapts to the rate values come in at.
const MAX_SPIN: u32 = if cfg!(loom) { 0 } else { 128 };

/// Values a look after a wait should find (see [`MAX_SPIN`]).
const LOOK_TARGET: u64 = 8;

/// How long a blocking receive that finds the rings empty keeps looking (yielding
/// the thread) before it sleeps, unless the builder says otherwise. A sleep costs
/// the next sender a system call to wake the receiver, and a receiver that sleeps
/// as soon as it has caught up is woken again by nearly every send: the two then
/// take turns, one value each. Staying awake this long lets a run of sends pile up
/// first. Async receives do not yield by default (see the module docs).
pub(super) const IDLE_YIELD: Duration = Duration::from_micros(if cfg!(loom) { 0 } else { 50 });

/// How long one poll of an async receive may yield its thread before it registers
/// its waker, unless the builder says otherwise (see `Builder::poll_yield`).
pub(super) const POLL_YIELD: Duration = Duration::from_micros(if cfg!(loom) { 0 } else { 20 });

/// Spill batches keep at most this many slots once the receiver caught up: the rest
/// of a burst's memory goes back.
const SPILL_KEEP: usize = 64;

/// The receiving end of a [`channel`](super::channel): `Send`, not `Clone` (one
/// consumer), every method takes `&mut self`.
///
/// ```
/// let (tx, mut rx) = percid::ring::channel::<u32>(16).unwrap();
/// std::thread::spawn(move || {
///     for i in 0..10 {
///         tx.send(i).unwrap();
///     }
/// });
/// let mut buf = Vec::new();
/// let mut total = 0;
/// loop {
///     let n = rx.recv_many(&mut buf, 4); // waits for at least one
///     if n == 0 {
///         break; // every sender is gone and nothing is left
///     }
///     total += n;
/// }
/// assert_eq!(total, 10);
/// assert_eq!(buf.iter().sum::<u32>(), 45);
/// ```
pub struct Receiver<T> {
    chan: Arc<Chan<T>>,
    rings: Vec<SubRing>,
    /// The ring being visited.
    cursor: usize,
    /// Values taken from it in this visit.
    burst: u32,
    /// `shard_count` when `rings` was last brought up to date.
    known: u32,
    /// Slots published since blocked senders were last looked for.
    freed: u64,
    /// Look for blocked senders once this many slots were freed (half a ring).
    wake_every: u64,
    /// When an async receive first found the rings empty (reset by a value).
    idle_since: Option<Instant>,
    /// Pauses before the next look when the rings were empty (see [`MAX_SPIN`]).
    spin: u32,
    /// Values taken from the spill queue in one go, handed out after the rings.
    spilled: VecDeque<T>,
    /// `spilled` was taken while every ring was empty, and the spill ended then:
    /// its values come before any ring value (see [`Receiver::next_spilled`]).
    spill_first: bool,
    /// A receive reported the channel closed and empty (`FusedStream`).
    terminated: bool,
}

// SAFETY: the raw pointers in `rings` are addresses of words in the channel's arena
// run and of its slot buffers, which the `Arc` keeps alive; the receiver is the only
// writer of the head words, wherever it runs. Values of type `T` cross threads.
unsafe impl<T: Send> Send for Receiver<T> {}

// Nothing of a receiver is pinned: values move in and out by value.
impl<T> Unpin for Receiver<T> {}

/// The receiver's view of one shard's ring.
struct SubRing {
    shard: Shard,
    tail: *const AtomicU64,
    head: *const AtomicU64,
    buffer_word: *const AtomicU64,
    /// The slot buffer, once the receiver saw it installed.
    buffer: *mut u8,
    /// Next position to take.
    next: u64,
    /// The head as the senders see it (positions before it are free to reuse).
    published: u64,
    /// The tail as last read (positions before it hold values).
    seen: u64,
    /// Where the last trim left the buffer: pages of slots from here to `next` were
    /// touched since (unbounded channels).
    trimmed: u64,
}

impl<T> Receiver<T> {
    pub(super) fn new(chan: Arc<Chan<T>>) -> Receiver<T> {
        let wake_every = (chan.capacity / 2).max(1);
        let mut rx = Receiver {
            chan,
            rings: Vec::new(),
            cursor: 0,
            burst: 0,
            known: 0,
            freed: 0,
            wake_every,
            idle_since: None,
            spin: 1,
            spilled: VecDeque::new(),
            spill_first: false,
            terminated: false,
        };
        rx.refresh();
        rx
    }

    /// Takes a value without blocking: [`TryRecvError::Empty`] when every ring is
    /// empty, [`TryRecvError::Disconnected`] when moreover every sender is gone or
    /// the channel was closed (and no permit is out).
    ///
    /// # Errors
    /// As above.
    ///
    /// ```
    /// use percid::ring::{TryRecvError, channel};
    /// let (tx, mut rx) = channel::<u32>(4).unwrap();
    /// assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    /// tx.send(1).unwrap();
    /// drop(tx);
    /// assert_eq!(rx.try_recv(), Ok(1));
    /// assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    /// ```
    #[inline]
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        if let Some(v) = self.next_value() {
            return Ok(v);
        }
        self.empty_result()
    }

    #[cold]
    fn empty_result(&mut self) -> Result<T, TryRecvError> {
        if self.finished() {
            // Every send happened before what `finished` saw: look once more.
            return match self.next_value() {
                Some(v) => Ok(v),
                None => {
                    self.terminated = true;
                    Err(TryRecvError::Disconnected)
                }
            };
        }
        Err(TryRecvError::Empty)
    }

    /// Whether no value can come any more: every sender is gone, or the channel
    /// was closed and no permit is out (the caller then looks once more).
    fn finished(&self) -> bool {
        let closed = self.chan.closed.load(Ordering::SeqCst);
        if closed & SENDERS_GONE != 0 {
            return true;
        }
        // Every permit is counted in the word `close` marked, or was refused.
        closed & RECEIVER_CLOSED != 0
            && self.chan.permits.load(Ordering::Acquire) & !PERMITS_CLOSED == 0
    }

    /// [`Receiver::try_recv`] that also says which shard's ring held the value
    /// (tests check FIFO order per ring with it); spilled values carry `None`.
    ///
    /// # Errors
    /// As [`Receiver::try_recv`].
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn try_recv_traced(&mut self) -> Result<(T, Option<Shard>), TryRecvError> {
        if let Some((v, shard)) = self.next_entry() {
            return Ok((v, Some(shard)));
        }
        if let Some(v) = self.next_spilled() {
            return Ok((v, None));
        }
        self.empty_result().map(|v| (v, None))
    }

    /// Takes a value, blocking while every ring is empty; `Err` once every sender is
    /// gone (or the channel was closed) and nothing is left.
    ///
    /// # Errors
    /// [`RecvError`] as above.
    ///
    /// # Panics
    /// With feature `tokio`, when it would block a current-thread tokio runtime (see
    /// [the module docs](super#blocking-inside-an-async-runtime)).
    pub fn recv(&mut self) -> Result<T, RecvError> {
        self.recv_until(None).map_err(|_| RecvError)
    }

    /// [`Receiver::recv`] in tokio's shape: `None` once the channel is closed (or
    /// every sender gone) and empty.
    ///
    /// # Panics
    /// As [`Receiver::recv`].
    pub fn blocking_recv(&mut self) -> Option<T> {
        self.recv().ok()
    }

    /// Takes a value, blocking while every ring is empty for at most `timeout`.
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`] when nothing came in time,
    /// [`RecvTimeoutError::Disconnected`] when the channel is closed (or every
    /// sender gone) and empty.
    ///
    /// # Panics
    /// As [`Receiver::recv`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use percid::ring::{RecvTimeoutError, channel};
    /// let (tx, mut rx) = channel::<u32>(4).unwrap();
    /// assert_eq!(rx.recv_timeout(Duration::from_millis(5)), Err(RecvTimeoutError::Timeout));
    /// tx.send(3).unwrap();
    /// assert_eq!(rx.recv_timeout(Duration::from_millis(5)), Ok(3));
    /// ```
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_until(Instant::now().checked_add(timeout))
    }

    /// Takes a value, blocking while every ring is empty until `deadline`.
    ///
    /// # Errors
    /// As [`Receiver::recv_timeout`].
    ///
    /// # Panics
    /// As [`Receiver::recv`].
    pub fn recv_deadline(&mut self, deadline: Instant) -> Result<T, RecvTimeoutError> {
        self.recv_until(Some(deadline))
    }

    fn recv_until(&mut self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        let mut idle_since = None;
        let mut waited = false;
        let idle_yield = self.chan.options.idle_yield;
        loop {
            match self.try_recv() {
                Ok(v) => {
                    if waited {
                        self.adapt();
                    }
                    return Ok(v);
                }
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            waited = true;
            if self.pause() {
                continue;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(RecvTimeoutError::Timeout);
            }
            if idle_since.get_or_insert_with(Instant::now).elapsed() < idle_yield {
                yield_now();
                continue;
            }
            blocking::check_may_block("a blocking receive on empty rings");
            let chan = Arc::clone(&self.chan);
            let rx = &chan.rx.0;
            rx.register(&Waiter::Thread(current_thread()));
            rx.prepare_sleep(chan.fence);
            match self.try_recv() {
                Ok(v) => {
                    rx.cancel_sleep();
                    return Ok(v);
                }
                Err(TryRecvError::Disconnected) => {
                    rx.cancel_sleep();
                    return Err(RecvTimeoutError::Disconnected);
                }
                Err(TryRecvError::Empty) => {}
            }
            while rx.sleeping() {
                if !blocking::park_until(deadline) {
                    rx.cancel_sleep();
                    return match self.try_recv() {
                        Ok(v) => Ok(v),
                        Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
                        Err(TryRecvError::Empty) => Err(RecvTimeoutError::Timeout),
                    };
                }
            }
            idle_since = None;
        }
    }

    /// After a look that found values following a wait: a look that found few
    /// came too early (it cost a sender a miss for little), so the pause grows; one
    /// that found many came late, so it shrinks.
    fn adapt(&mut self) {
        let found = self
            .rings
            .get(self.cursor)
            .map_or(1, |r| r.seen.wrapping_sub(r.next).wrapping_add(1));
        self.spin = if found < LOOK_TARGET {
            // At least 1: a pause of 0 would never double past the bound.
            (self.spin * 2).min(MAX_SPIN.max(1))
        } else {
            (self.spin / 2).max(1)
        };
    }

    /// After an empty look: pauses for the current interval and doubles it, or
    /// returns false once the interval is at its longest (time to yield or sleep;
    /// the interval stays long until values come).
    #[inline]
    fn pause(&mut self) -> bool {
        if self.spin > MAX_SPIN {
            return false;
        }
        for _ in 0..self.spin {
            spin_loop();
        }
        self.spin *= 2;
        true
    }

    /// Takes a value, waiting asynchronously while every ring is empty.
    ///
    /// # Errors
    /// The future gives [`RecvError`] once the channel is closed (or every sender
    /// gone) and empty.
    ///
    /// ```
    /// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # rt.block_on(async {
    /// let (tx, mut rx) = percid::ring::unbounded::<u32>().unwrap();
    /// std::thread::spawn(move || tx.send(9).unwrap());
    /// assert_eq!(rx.recv_async().await, Ok(9));
    /// assert!(rx.recv_async().await.is_err());
    /// # });
    /// ```
    pub fn recv_async(&mut self) -> RecvFuture<'_, T> {
        RecvFuture { rx: self }
    }

    /// The poll behind [`Receiver::recv_async`] and the `Stream` implementation.
    ///
    /// It spins briefly when the rings are empty (a few hundred pauses, then up to
    /// [`Builder::poll_yield`](super::Builder::poll_yield), 20 µs, of yielding the
    /// thread), then registers the waker and returns `Pending`: it never wakes its
    /// own task, so an executor polls it again only once a sender woke it (unless
    /// the builder opted in to
    /// [`Builder::async_idle_yield`](super::Builder::async_idle_yield)).
    ///
    /// # Errors
    /// `Ready(Err(RecvError))` once the channel is closed (or every sender gone)
    /// and empty.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, RecvError>> {
        if self.chan.rx.0.sleeping() {
            // Polled while nobody woke us: a send since the last check would have.
            self.chan.rx.0.register_waker(cx.waker());
            if self.chan.rx.0.sleeping() {
                return Poll::Pending;
            }
        }
        let mut waited = false;
        loop {
            match self.try_recv() {
                Ok(v) => {
                    if waited || self.idle_since.is_some() {
                        self.adapt();
                    }
                    self.idle_since = None;
                    return Poll::Ready(Ok(v));
                }
                Err(TryRecvError::Disconnected) => return Poll::Ready(Err(RecvError)),
                Err(TryRecvError::Empty) => {}
            }
            waited = true;
            if !self.pause() {
                break;
            }
        }
        let poll_yield = self.chan.options.poll_yield;
        if !poll_yield.is_zero() {
            // Keep the thread a little (yielding it, so a sender waiting for this
            // CPU runs): a value of the same burst usually comes within that.
            let start = Instant::now();
            while start.elapsed() < poll_yield {
                yield_now();
                match self.try_recv() {
                    Ok(v) => {
                        self.idle_since = None;
                        return Poll::Ready(Ok(v));
                    }
                    Err(TryRecvError::Disconnected) => return Poll::Ready(Err(RecvError)),
                    Err(TryRecvError::Empty) => {}
                }
            }
        }
        let budget = self.chan.options.async_idle_yield;
        if !budget.is_zero() && self.idle_since.get_or_insert_with(Instant::now).elapsed() < budget
        {
            // Opted in: yield rather than sleep, the task to its runtime and the
            // thread to the OS (see `Builder::async_idle_yield` for the cost).
            yield_now();
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.idle_since = None;
        self.chan.rx.0.register_waker(cx.waker());
        self.chan.rx.0.prepare_sleep(self.chan.fence);
        match self.try_recv() {
            Ok(v) => {
                self.chan.rx.0.cancel_sleep();
                Poll::Ready(Ok(v))
            }
            Err(TryRecvError::Disconnected) => {
                self.chan.rx.0.cancel_sleep();
                Poll::Ready(Err(RecvError))
            }
            Err(TryRecvError::Empty) => Poll::Pending,
        }
    }

    /// Appends up to `limit` values to `buf`, blocking until there is at least one;
    /// returns how many. 0 only when `limit` is 0 or the channel is closed (or every
    /// sender gone) and empty — the meaning of tokio's `recv_many`.
    ///
    /// # Panics
    /// As [`Receiver::recv`].
    ///
    /// ```
    /// let (tx, mut rx) = percid::ring::channel::<u32>(8).unwrap();
    /// tx.send_many([1, 2, 3]).unwrap();
    /// drop(tx);
    /// let mut buf = Vec::new();
    /// assert_eq!(rx.recv_many(&mut buf, 10), 3);
    /// assert_eq!(buf, [1, 2, 3]);
    /// assert_eq!(rx.recv_many(&mut buf, 10), 0);
    /// ```
    pub fn recv_many(&mut self, buf: &mut Vec<T>, limit: usize) -> usize {
        if limit == 0 {
            return 0;
        }
        match self.try_recv_many(buf, limit) {
            Ok(n) => n,
            Err(TryRecvError::Disconnected) => 0,
            Err(TryRecvError::Empty) => match self.recv() {
                Ok(v) => {
                    buf.push(v);
                    1 + self.try_recv_many(buf, limit - 1).unwrap_or(0)
                }
                Err(RecvError) => 0,
            },
        }
    }

    /// [`Receiver::recv_many`] as a future (tokio's `recv_many`).
    pub fn recv_many_async<'a>(
        &'a mut self,
        buf: &'a mut Vec<T>,
        limit: usize,
    ) -> RecvManyFuture<'a, T> {
        RecvManyFuture {
            rx: self,
            buf,
            limit,
        }
    }

    /// The poll behind [`Receiver::recv_many_async`]: `Ready(n)` as
    /// [`Receiver::recv_many`] returns `n`.
    pub fn poll_recv_many(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<T>,
        limit: usize,
    ) -> Poll<usize> {
        if limit == 0 {
            return Poll::Ready(0);
        }
        match self.try_recv_many(buf, limit) {
            Ok(n) => Poll::Ready(n),
            Err(TryRecvError::Disconnected) => Poll::Ready(0),
            Err(TryRecvError::Empty) => match self.poll_recv(cx) {
                Poll::Ready(Ok(v)) => {
                    buf.push(v);
                    Poll::Ready(1 + self.try_recv_many(buf, limit - 1).unwrap_or(0))
                }
                Poll::Ready(Err(RecvError)) => Poll::Ready(0),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    /// Appends up to `limit` values to `buf` without blocking, taking runs of each
    /// ring; `Ok(n)` with `n >= 1` (or 0 when `limit` is 0).
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] when nothing is there now,
    /// [`TryRecvError::Disconnected`] when nothing ever will be.
    pub fn try_recv_many(&mut self, buf: &mut Vec<T>, limit: usize) -> Result<usize, TryRecvError> {
        let mut taken = 0;
        while taken < limit {
            let got = self.next_run(buf, limit - taken);
            if got > 0 {
                taken += got;
                continue;
            }
            match self.next_spilled() {
                Some(v) => {
                    buf.push(v);
                    taken += 1;
                }
                None => break,
            }
        }
        if taken > 0 || limit == 0 {
            return Ok(taken);
        }
        match self.empty_result() {
            Ok(v) => {
                buf.push(v);
                Ok(1 + self.try_recv_many(buf, limit - 1).unwrap_or(0))
            }
            Err(e) => Err(e),
        }
    }

    /// An iterator over the values in the rings now; it ends at the first empty
    /// poll and never blocks (as [`Receiver::try_iter`]).
    pub fn drain(&mut self) -> Drain<'_, T> {
        Drain { rx: self }
    }

    /// A blocking iterator (crossbeam's `iter`): each `next` is a [`Receiver::recv`];
    /// it ends once the channel is closed (or every sender gone) and empty.
    ///
    /// ```
    /// let (tx, mut rx) = percid::ring::channel::<u32>(8).unwrap();
    /// std::thread::spawn(move || (0..5).for_each(|i| tx.send(i).unwrap()));
    /// assert_eq!(rx.iter().sum::<u32>(), 10);
    /// ```
    pub fn iter(&mut self) -> Iter<'_, T> {
        Iter { rx: self }
    }

    /// A non-blocking iterator (crossbeam's `try_iter`): the values there now.
    pub fn try_iter(&mut self) -> TryIter<'_, T> {
        TryIter { rx: self }
    }

    /// Closes the channel without dropping the receiver (tokio's `close`): every
    /// send after this fails with its value back (permits already taken still
    /// deliver), blocked senders and [`Sender::closed`](super::Sender::closed)
    /// futures wake, and the receiver goes on taking what was sent before; once
    /// that is taken, receives report the channel closed.
    ///
    /// Exact where the kernel has the rseq fence (`membarrier`, Linux 5.10 and
    /// later; [`crate::rseq::fence_available`]): once `close` returns no send can
    /// publish. Without it a send already inside its critical section may still
    /// publish after `close`; its value is then dropped with the channel.
    ///
    /// ```
    /// use percid::ring::TrySendError;
    /// let (tx, mut rx) = percid::ring::channel::<u32>(4).unwrap();
    /// tx.send(1).unwrap();
    /// rx.close();
    /// assert_eq!(tx.try_send(2), Err(TrySendError::Disconnected(2)));
    /// assert_eq!(rx.recv(), Ok(1));
    /// assert!(rx.recv().is_err());
    /// ```
    pub fn close(&mut self) {
        if self.chan.closed.fetch_or(RECEIVER_CLOSED, Ordering::SeqCst) & RECEIVER_CLOSED != 0 {
            return;
        }
        self.chan.close_gate(true);
    }

    /// Whether the channel is closed: [`Receiver::close`] ran or every sender is
    /// gone (values may still be left to take).
    pub fn is_closed(&self) -> bool {
        self.chan.closed.load(Ordering::Acquire) & (RECEIVER_CLOSED | SENDERS_GONE) != 0
    }

    /// Whether every sender is gone (values may still be left to take).
    pub fn is_disconnected(&self) -> bool {
        self.chan.closed.load(Ordering::Acquire) & SENDERS_GONE != 0
    }

    /// Values queued now: a racy sum over the rings and the spill queue (senders
    /// move while it adds up), exact on a quiescent channel.
    pub fn len(&self) -> usize {
        let mut n = self.spilled.len();
        let heads = self.chan.word(HEAD);
        for (shard, tail) in self.chan.word(TAIL).shards() {
            // Rings the receiver visits count from its own position (values it took
            // and has not returned the slots of are not queued); others from their
            // head.
            let from = match self.rings.iter().find(|r| r.shard == shard) {
                Some(r) => r.next,
                None => match heads.at(shard) {
                    Some(head) => head.load(Ordering::Acquire),
                    None => continue,
                },
            };
            let used = tail.load(Ordering::Acquire).wrapping_sub(from);
            n = n.saturating_add(used.min(self.chan.capacity) as usize);
        }
        n.saturating_add(lock(&self.chan.spill.0).len())
    }

    /// Whether [`Receiver::len`] is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`Receiver::max_capacity`] less [`Receiver::len`] (`usize::MAX` unbounded).
    pub fn capacity(&self) -> usize {
        self.chan.max_capacity().saturating_sub(self.len())
    }

    /// As [`Sender::max_capacity`](super::Sender::max_capacity).
    pub fn max_capacity(&self) -> usize {
        self.chan.max_capacity()
    }

    /// Slots of each cid's ring.
    pub fn capacity_per_cid(&self) -> usize {
        self.chan.capacity as usize
    }

    /// Senders (strong) of the channel.
    pub fn sender_strong_count(&self) -> usize {
        self.chan.senders.0.load(Ordering::Acquire) as usize
    }

    /// Weak senders of the channel.
    pub fn sender_weak_count(&self) -> usize {
        self.chan.weak.load(Ordering::Acquire) as usize
    }

    /// Rings the receiver visits: one per shard (cid, or (node, cid) in NUMA mode,
    /// or portable lane) that ever ran a section in this channel's arena chunk.
    pub fn rings(&mut self) -> usize {
        self.refresh();
        self.rings.len()
    }

    /// The next value: the rings first, then the spill queue.
    #[inline]
    fn next_value(&mut self) -> Option<T> {
        if let Some((v, _)) = self.next_entry() {
            return Some(v);
        }
        self.next_spilled()
    }

    /// The next spilled value, once the rings are empty. A value committed to a
    /// ring before a value was spilled is visible to the rings' look that follows
    /// the take of the spill queue (the spill lock orders them), so the caller,
    /// which looks at the rings before every spilled value, hands it out first:
    /// each thread's values keep their order.
    ///
    /// Sends go back to the rings as soon as the receiver takes a batch while
    /// every ring is empty (looked at under the spill lock), not only once the queue
    /// is empty: a sender's ring values before its spilled ones were committed
    /// before it took the lock, so none is left behind, and the batch is handed out
    /// before any ring value (`spill_first`), so a sender's later ring values follow
    /// its spilled ones. Under a steady overload the queue is seldom empty when
    /// the receiver looks, and every send would otherwise keep taking the lock.
    #[cold]
    #[inline(never)]
    fn next_spilled(&mut self) -> Option<T> {
        if let Some(v) = self.spilled.pop_front() {
            if self.spilled.is_empty() {
                self.spill_first = false;
                // A burst's memory back to the allocator.
                if self.spilled.capacity() > SPILL_KEEP {
                    self.spilled = VecDeque::new();
                }
            }
            self.chan
                .spill_held
                .store(self.spilled.len() as u64, Ordering::Relaxed);
            return Some(v);
        }
        if self.chan.gate().load(Ordering::Acquire) & GATE_SPILL == 0 {
            return None;
        }
        // Its own handle: the rings are looked at (`refresh`) under the lock.
        let chan = Arc::clone(&self.chan);
        let mut queue = lock(&chan.spill.0);
        if queue.is_empty() {
            // Caught up: sends go back to the rings (the batch's memory went back
            // to the allocator when its last value was handed out).
            self.chan.gate().fetch_and(!GATE_SPILL, Ordering::SeqCst);
            drop(queue);
            self.chan.tx.0.notify(1);
            return None;
        }
        std::mem::swap(&mut *queue, &mut self.spilled);
        // Under the lock: `len` never misses the batch between the two places.
        self.chan
            .spill_held
            .store(self.spilled.len() as u64, Ordering::Relaxed);
        self.refresh();
        if self.rings_empty() {
            self.chan.gate().fetch_and(!GATE_SPILL, Ordering::SeqCst);
            self.spill_first = true;
            drop(queue);
            self.chan.tx.0.notify(1);
            return self.next_spilled();
        }
        drop(queue);
        if let Some((v, _)) = self.next_entry() {
            return Some(v);
        }
        // The batch is not empty: the branch at the top hands its first value out.
        self.next_spilled()
    }

    /// Whether every ring known to the receiver has nothing published it has not
    /// taken.
    fn rings_empty(&self) -> bool {
        self.rings.iter().all(|r| {
            // SAFETY: words of the channel's run (see `Send`).
            unsafe { &*r.tail }.load(Ordering::Acquire) == r.next
        })
    }

    /// The next value of the rings, visiting the current ring for up to [`BURST`]
    /// values, then the others in turn, with the shard whose ring held it; `None`
    /// when all are empty, or while a batch of spilled values goes first.
    #[inline]
    fn next_entry(&mut self) -> Option<(T, Shard)> {
        if self.spill_first {
            return None;
        }
        for _ in 0..2 {
            for _ in 0..self.rings.len() {
                let i = self.cursor;
                if let Some(v) = self.take(i) {
                    let shard = self.rings[i].shard;
                    self.burst += 1;
                    self.taken(i);
                    return Some((v, shard));
                }
                self.publish(i);
                self.advance();
            }
            // Rings appear as cids do.
            if !self.refresh() {
                break;
            }
        }
        // Everything is empty (and published): the senders that wait may go (the
        // first one woken wakes the next, see `TxSignal`).
        self.freed = 0;
        self.chan.tx.0.notify(1);
        if self.chan.options.unbounded {
            self.maybe_trim();
        }
        None
    }

    /// Caught up on an unbounded channel: once the rings have touched more than
    /// [`UNBOUNDED_TRIM_BYTES`] of pages since the last trim, close the gate (sends
    /// spill meanwhile), fence so that no send is inside a ring, and give the pages
    /// of every taken slot back.
    #[cold]
    #[inline(never)]
    fn maybe_trim(&mut self) {
        if cfg!(loom) || self.chan.slot_bytes == 0 {
            return;
        }
        let capacity = self.chan.capacity;
        let slot = self.chan.slot_bytes as u64;
        let touched: u64 = self
            .rings
            .iter()
            .filter(|r| !r.buffer.is_null())
            .map(|r| r.next.wrapping_sub(r.trimmed).min(capacity) * slot)
            .sum();
        if touched < UNBOUNDED_TRIM_BYTES as u64 {
            return;
        }
        let gate = self.chan.gate();
        gate.fetch_or(GATE_TRIM, Ordering::SeqCst);
        if self.chan.word(TAIL).quiesce().is_ok() {
            for r in self.rings.iter_mut().filter(|r| !r.buffer.is_null()) {
                // SAFETY: words of the channel's run (see `Send`).
                let tail = unsafe { &*r.tail }.load(Ordering::Acquire);
                // SAFETY: the ring's mapped buffer; the gate is closed and fenced, so
                // no send writes a slot until it opens.
                unsafe { self.chan.release_pages(r.buffer, r.next, tail) };
                r.trimmed = r.next;
            }
        } else {
            // No fence here: a send may be writing any slot, so nothing is given
            // back; do not try again before as many pages were touched again.
            for r in &mut self.rings {
                r.trimmed = r.next;
            }
        }
        gate.fetch_and(!GATE_TRIM, Ordering::SeqCst);
    }

    #[inline]
    fn advance(&mut self) {
        self.burst = 0;
        self.cursor += 1;
        if self.cursor == self.rings.len() {
            self.cursor = 0;
        }
    }

    /// [`Receiver::next_value`] for a run: appends up to `max` values of the ring
    /// being visited (within its burst) to `out`; 0 when every ring is empty, or
    /// while a batch of spilled values goes first.
    fn next_run(&mut self, out: &mut Vec<T>, max: usize) -> usize {
        if self.spill_first {
            return 0;
        }
        for _ in 0..2 {
            for _ in 0..self.rings.len() {
                let i = self.cursor;
                let room = max.min((BURST - self.burst) as usize);
                let n = self.take_run(i, out, room);
                if n > 0 {
                    self.burst += n as u32;
                    self.taken(i);
                    return n;
                }
                self.publish(i);
                self.advance();
            }
            if !self.refresh() {
                break;
            }
        }
        self.freed = 0;
        self.chan.tx.0.notify(1);
        if self.chan.options.unbounded {
            self.maybe_trim();
        }
        0
    }

    /// Appends up to `max` published values of ring `i` to `out`, in order.
    fn take_run(&mut self, i: usize, out: &mut Vec<T>, max: usize) -> usize {
        let r = &mut self.rings[i];
        if r.next == r.seen {
            // SAFETY: words of the channel's run (see `Send`).
            r.seen = unsafe { &*r.tail }.load(Ordering::Acquire);
            if r.next == r.seen {
                return 0;
            }
        }
        if r.buffer.is_null() {
            // SAFETY: as in `take`.
            r.buffer = unsafe { &*r.buffer_word }.load(Ordering::Acquire) as *mut u8;
        }
        let n = (r.seen.wrapping_sub(r.next) as usize).min(max);
        out.reserve(n);
        for k in 0..n as u64 {
            let slot = self.chan.slot(r.buffer, r.next.wrapping_add(k));
            // SAFETY: as in `take`, for each of the `n` published positions.
            out.push(unsafe { slot.read() });
        }
        r.next = r.next.wrapping_add(n as u64);
        n
    }

    /// Takes the value at ring `i`'s next position, if it was published.
    #[inline]
    fn take(&mut self, i: usize) -> Option<T> {
        let r = &mut self.rings[i];
        if r.next == r.seen {
            // SAFETY: words of the channel's run (see `Send`).
            r.seen = unsafe { &*r.tail }.load(Ordering::Acquire);
            if r.next == r.seen {
                return None;
            }
        }
        if r.buffer.is_null() {
            // A published value implies an installed buffer (installed before the
            // section that published it could run).
            // SAFETY: as above.
            r.buffer = unsafe { &*r.buffer_word }.load(Ordering::Acquire) as *mut u8;
        }
        let slot = self.chan.slot(r.buffer, r.next);
        r.next = r.next.wrapping_add(1);
        // SAFETY: positions before the tail hold published values; the receiver is
        // the only one that takes them, each once (`next` moves past it), and the
        // slot is not reused before the head is published past it.
        Some(unsafe { slot.read() })
    }

    /// After values were taken from ring `i`: their slots go back to the senders at
    /// once (a value handed out frees its slot, as in any bounded channel: a thread
    /// that sends and receives in turn on a small ring would otherwise find it full
    /// of values it already received, and block forever); the visit moves on after a
    /// burst, and a sender that waits with no wake-up on its way is woken now, not
    /// once half a ring is free, however slowly the values are taken. Publishing is a
    /// store to the receiver's own line: senders read it only when their copy of the
    /// head says the ring is full.
    ///
    /// An unbounded channel's full ring never blocks a sender (it spills), so there
    /// the slots go back once per burst, as the receiver moves on.
    #[inline]
    fn taken(&mut self, i: usize) {
        if !self.chan.options.unbounded || self.burst >= BURST {
            self.publish(i);
        }
        if self.burst >= BURST {
            self.advance();
        } else if self.chan.tx.0.wants_eager_wake() {
            self.wake_eagerly();
        }
    }

    /// A sender waits and no wake-up is on its way: wake one.
    #[cold]
    fn wake_eagerly(&mut self) {
        self.chan.tx.0.notify(1);
    }

    /// Returns ring `i`'s taken slots to the senders.
    #[inline]
    fn publish(&mut self, i: usize) {
        let r = &mut self.rings[i];
        if r.next != r.published {
            let freed = r.next.wrapping_sub(r.published);
            // Release: the reads of the taken slots come before their reuse.
            // SAFETY: as in `take`.
            unsafe { &*r.head }.store(r.next, Ordering::Release);
            r.published = r.next;
            self.freed += freed;
            if self.freed >= self.wake_every {
                self.chan.tx.0.notify(1);
                self.freed = 0;
            }
        }
    }

    /// Adds the rings of shards that appeared since the last call; whether any did.
    fn refresh(&mut self) -> bool {
        let tails = self.chan.word(TAIL);
        let count = tails.shard_count();
        if count == self.known {
            return false;
        }
        self.known = count;
        let heads = self.chan.word(HEAD);
        let buffers = self.chan.word(BUFFER);
        let before = self.rings.len();
        for (shard, tail) in tails.shards() {
            if self.rings.iter().any(|r| r.shard == shard) {
                continue;
            }
            let (Some(head), Some(buffer)) = (heads.at(shard), buffers.at(shard)) else {
                continue;
            };
            let next = head.load(Ordering::Acquire);
            self.rings.push(SubRing {
                shard,
                tail,
                head,
                buffer_word: buffer,
                buffer: std::ptr::null_mut(),
                next,
                published: next,
                seen: next,
                trimmed: next,
            });
        }
        self.rings.len() != before
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.chan.closed.fetch_or(RECEIVER_GONE, Ordering::SeqCst);
        // No fence: a send racing the drop may still publish, and its value is
        // dropped with the channel.
        self.chan.close_gate(false);
        // Drop what the rings hold now; what senders publish in the meantime is
        // dropped with the channel, by whichever end goes last.
        self.refresh();
        for i in 0..self.rings.len() {
            while let Some(v) = self.take(i) {
                drop(v);
            }
        }
        // Give every taken slot back (the channel's drop starts at the heads) and
        // release blocked senders: they will see the receiver gone.
        let chan = &*self.chan;
        for r in &mut self.rings {
            if r.next != r.published {
                // SAFETY: as in `take`.
                unsafe { &*r.head }.store(r.next, Ordering::Release);
                r.published = r.next;
            }
        }
        chan.tx.0.wake(u64::MAX);
        self.spilled.clear();
        // Dropped outside the lock: a value's drop may use the channel.
        let spilled = std::mem::take(&mut *lock(&chan.spill.0));
        drop(spilled);
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("capacity_per_cid", &self.chan.capacity)
            .field("rings", &self.rings.len())
            .finish_non_exhaustive()
    }
}

/// The iterator of [`Receiver::drain`]: the values there now, without blocking.
///
/// ```
/// let (tx, mut rx) = percid::ring::channel::<u32>(8).unwrap();
/// tx.send_many([1, 2, 3]).unwrap();
/// let mut got: Vec<u32> = rx.drain().collect();
/// got.sort(); // FIFO per ring; the senders' cids decide the rings
/// assert_eq!(got, [1, 2, 3]);
/// assert_eq!(rx.drain().next(), None); // empty: ends at once, tx still alive
/// ```
pub struct Drain<'a, T> {
    rx: &'a mut Receiver<T>,
}

impl<T> Iterator for Drain<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.rx.try_recv().ok()
    }
}

impl<T> fmt::Debug for Drain<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain").finish_non_exhaustive()
    }
}

/// The blocking iterator of [`Receiver::iter`]: ends once every sender is gone (or
/// the channel is closed) and the rings are empty.
///
/// ```
/// let (tx, mut rx) = percid::ring::channel::<u32>(8).unwrap();
/// let producer = std::thread::spawn(move || (1..=4).for_each(|i| tx.send(i).unwrap()));
/// let total: u32 = rx.iter().sum(); // ends when the producer drops `tx`
/// producer.join().unwrap();
/// assert_eq!(total, 10);
/// ```
pub struct Iter<'a, T> {
    rx: &'a mut Receiver<T>,
}

impl<T> Iterator for Iter<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.rx.recv().ok()
    }
}

impl<T> fmt::Debug for Iter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter").finish_non_exhaustive()
    }
}

/// The non-blocking iterator of [`Receiver::try_iter`].
///
/// ```
/// let (tx, mut rx) = percid::ring::channel::<u32>(8).unwrap();
/// assert_eq!(rx.try_iter().count(), 0); // nothing yet: no waiting
/// tx.send(5).unwrap();
/// assert_eq!(rx.try_iter().collect::<Vec<_>>(), [5]);
/// ```
pub struct TryIter<'a, T> {
    rx: &'a mut Receiver<T>,
}

impl<T> Iterator for TryIter<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.rx.try_recv().ok()
    }
}

impl<T> fmt::Debug for TryIter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TryIter").finish_non_exhaustive()
    }
}

/// The owning blocking iterator of a [`Receiver`] (`for v in rx`).
///
/// ```
/// let (tx, rx) = percid::ring::unbounded::<String>().unwrap();
/// std::thread::spawn(move || tx.send("hi".to_owned()).unwrap());
/// for v in rx {
///     assert_eq!(v, "hi"); // the loop ends once the sender is dropped
/// }
/// ```
pub struct IntoIter<T> {
    rx: Receiver<T>,
}

impl<T> Iterator for IntoIter<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.rx.recv().ok()
    }
}

impl<T> fmt::Debug for IntoIter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntoIter").finish_non_exhaustive()
    }
}

impl<T> IntoIterator for Receiver<T> {
    type Item = T;
    type IntoIter = IntoIter<T>;

    fn into_iter(self) -> IntoIter<T> {
        IntoIter { rx: self }
    }
}

impl<'a, T> IntoIterator for &'a mut Receiver<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

/// The future of [`Receiver::recv_async`]: a value, or [`RecvError`] once the
/// channel is closed (or every sender gone) and empty.
///
/// ```
/// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// # rt.block_on(async {
/// let (tx, mut rx) = percid::ring::channel::<u32>(4).unwrap();
/// tokio::spawn(async move { tx.send_async(9).await.unwrap() });
/// assert_eq!(rx.recv_async().await, Ok(9));
/// assert!(rx.recv_async().await.is_err()); // the task dropped the sender
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct RecvFuture<'a, T> {
    rx: &'a mut Receiver<T>,
}

impl<T> Future for RecvFuture<'_, T> {
    type Output = Result<T, RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.rx.poll_recv(cx)
    }
}

impl<T> fmt::Debug for RecvFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvFuture").finish_non_exhaustive()
    }
}

/// The future of [`Receiver::recv_many_async`]: ready with the number of values
/// appended to the buffer (at least one, at most the limit), or 0 once the channel
/// is closed and empty.
///
/// ```
/// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// # rt.block_on(async {
/// let (tx, mut rx) = percid::ring::channel::<u32>(8).unwrap();
/// tx.send_many([1, 2, 3]).unwrap();
/// drop(tx);
/// let mut buf = Vec::new();
/// let mut n = 0;
/// while n < 3 {
///     n += rx.recv_many_async(&mut buf, 2).await; // at most 2 per call
/// }
/// assert_eq!(rx.recv_many_async(&mut buf, 2).await, 0);
/// buf.sort();
/// assert_eq!(buf, [1, 2, 3]);
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct RecvManyFuture<'a, T> {
    rx: &'a mut Receiver<T>,
    buf: &'a mut Vec<T>,
    limit: usize,
}

impl<T> Future for RecvManyFuture<'_, T> {
    type Output = usize;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        let this = &mut *self;
        this.rx.poll_recv_many(cx, this.buf, this.limit)
    }
}

impl<T> fmt::Debug for RecvManyFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvManyFuture").finish_non_exhaustive()
    }
}

#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
impl<T> futures_core::Stream for Receiver<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if self.terminated {
            return Poll::Ready(None);
        }
        self.poll_recv(cx).map(Result::ok)
    }
}

#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
impl<T> futures_core::FusedStream for Receiver<T> {
    fn is_terminated(&self) -> bool {
        self.terminated
    }
}
