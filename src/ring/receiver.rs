//! The consuming end: one [`Receiver`] that visits the per-cid rings round-robin.

use super::chan::{BUFFER, Chan, HEAD, RECEIVER_GONE, SENDERS_GONE, TAIL};
use super::signal::Waiter;
use super::{RecvError, TryRecvError};
use crate::cid::Shard;
use crate::sync::{Arc, AtomicU64, Ordering, current_thread, park, spin_loop, yield_now};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Values taken from one ring before the receiver moves on to the next: bounds how
/// long a busy ring can keep the others waiting (at most `BURST × rings` values
/// between two visits of any ring), and how many taken slots the receiver keeps
/// before returning them to the senders.
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

/// How long a receive that finds the rings empty keeps looking (yielding the thread,
/// and an async receive also its task to the runtime) before it sleeps. A sleep
/// costs the next sender a system call to wake the receiver, and a receiver that
/// sleeps as soon as it has caught up is woken again by nearly every send: the two
/// then take turns, one value each. Staying awake this long lets a run of sends pile
/// up first.
const IDLE_BUDGET: Duration = Duration::from_micros(if cfg!(loom) { 0 } else { 50 });

/// The receiving end of a [`channel`](super::channel): `Send`, not `Clone` (one
/// consumer), every method takes `&mut self`.
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
}

// SAFETY: the raw pointers in `rings` are addresses of words in the channel's arena
// run and of its slot buffers, which the `Arc` keeps alive; the receiver is the only
// writer of the head words, wherever it runs. Values of type `T` cross threads.
unsafe impl<T: Send> Send for Receiver<T> {}

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
        };
        rx.refresh();
        rx
    }

    /// Takes a value without blocking: [`TryRecvError::Empty`] when every ring is
    /// empty, [`TryRecvError::Disconnected`] when moreover every sender is gone.
    #[inline]
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        if let Some(v) = self.next_value() {
            return Ok(v);
        }
        self.empty_result()
    }

    #[cold]
    fn empty_result(&mut self) -> Result<T, TryRecvError> {
        if self.chan.closed.load(Ordering::SeqCst) & SENDERS_GONE != 0 {
            // Every send happened before the last sender's drop: look once more.
            return self.next_value().ok_or(TryRecvError::Disconnected);
        }
        Err(TryRecvError::Empty)
    }

    /// [`Receiver::try_recv`] that also says which shard's ring held the value
    /// (tests check FIFO order per ring with it).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn try_recv_traced(&mut self) -> Result<(T, Shard), TryRecvError> {
        if let Some(entry) = self.next_entry() {
            return Ok(entry);
        }
        if self.chan.closed.load(Ordering::SeqCst) & SENDERS_GONE != 0 {
            return self.next_entry().ok_or(TryRecvError::Disconnected);
        }
        Err(TryRecvError::Empty)
    }

    /// Takes a value, blocking while every ring is empty; `Err` once every sender is
    /// gone and nothing is left.
    pub fn recv(&mut self) -> Result<T, RecvError> {
        let mut idle_since = None;
        let mut waited = false;
        loop {
            match self.try_recv() {
                Ok(v) => {
                    if waited {
                        self.adapt();
                    }
                    return Ok(v);
                }
                Err(TryRecvError::Disconnected) => return Err(RecvError),
                Err(TryRecvError::Empty) => {}
            }
            waited = true;
            if self.pause() {
                continue;
            }
            if idle_since.get_or_insert_with(Instant::now).elapsed() < IDLE_BUDGET {
                yield_now();
                continue;
            }
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
                    return Err(RecvError);
                }
                Err(TryRecvError::Empty) => {}
            }
            while rx.sleeping() {
                park();
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
    pub fn recv_async(&mut self) -> RecvFuture<'_, T> {
        RecvFuture { rx: self }
    }

    /// The poll behind [`Receiver::recv_async`] and the `Stream` implementation.
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
        if self.idle_since.get_or_insert_with(Instant::now).elapsed() < IDLE_BUDGET {
            // Yield rather than sleep (see `IDLE_BUDGET`): the task to its runtime,
            // and the thread to the OS, so a sender waiting for this very CPU runs
            // (a system call, never a block).
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

    /// Appends up to `max` values to `out` without blocking; returns how many.
    pub fn recv_many(&mut self, out: &mut Vec<T>, max: usize) -> usize {
        let mut taken = 0;
        while taken < max {
            let got = self.next_run(out, max - taken);
            if got == 0 {
                if self.chan.closed.load(Ordering::SeqCst) & SENDERS_GONE == 0 {
                    break;
                }
                // Every send happened before the last sender's drop: look once more.
                let last = self.next_run(out, max - taken);
                taken += last;
                if last == 0 {
                    break;
                }
                continue;
            }
            taken += got;
        }
        taken
    }

    /// An iterator over the values in the rings now; it ends at the first empty
    /// poll and never blocks.
    pub fn drain(&mut self) -> Drain<'_, T> {
        Drain { rx: self }
    }

    /// Whether every sender is gone (values may still be left to take).
    pub fn is_disconnected(&self) -> bool {
        self.chan.closed.load(Ordering::Acquire) & SENDERS_GONE != 0
    }

    /// Slots of each cid's ring.
    pub fn capacity_per_cid(&self) -> usize {
        self.chan.capacity as usize
    }

    /// Rings the receiver visits: one per shard (cid, or (node, cid) in NUMA mode,
    /// or portable lane) that ever ran a section in this channel's arena chunk.
    pub fn rings(&mut self) -> usize {
        self.refresh();
        self.rings.len()
    }

    /// The next value, visiting the current ring for up to [`BURST`] values, then
    /// the others in turn; `None` when all are empty.
    #[inline]
    fn next_value(&mut self) -> Option<T> {
        self.next_entry().map(|(v, _)| v)
    }

    /// [`Receiver::next_value`] with the shard whose ring held the value.
    #[inline]
    fn next_entry(&mut self) -> Option<(T, Shard)> {
        for _ in 0..2 {
            for _ in 0..self.rings.len() {
                let i = self.cursor;
                if let Some(v) = self.take(i) {
                    let shard = self.rings[i].shard;
                    self.burst += 1;
                    if self.burst >= BURST {
                        self.publish(i);
                        self.advance();
                    } else if self.chan.tx.0.wants_eager_wake() {
                        self.wake_eagerly(i);
                    }
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
        None
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
    /// being visited (within its burst) to `out`; 0 when every ring is empty.
    fn next_run(&mut self, out: &mut Vec<T>, max: usize) -> usize {
        for _ in 0..2 {
            for _ in 0..self.rings.len() {
                let i = self.cursor;
                let room = max.min((BURST - self.burst) as usize);
                let n = self.take_run(i, out, room);
                if n > 0 {
                    self.burst += n as u32;
                    if self.burst >= BURST {
                        self.publish(i);
                        self.advance();
                    } else if self.chan.tx.0.wants_eager_wake() {
                        self.wake_eagerly(i);
                    }
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

    /// A sender waits and no wake-up is on its way: return ring `i`'s slots now and
    /// wake one, so a blocked sender gets a slot as soon as one is free (not only
    /// once half a ring is), however slowly the values are taken.
    #[cold]
    fn wake_eagerly(&mut self, i: usize) {
        self.publish(i);
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
            });
        }
        self.rings.len() != before
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.chan.closed.fetch_or(RECEIVER_GONE, Ordering::SeqCst);
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

/// The iterator of [`Receiver::drain`].
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

/// The future of [`Receiver::recv_async`].
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

#[cfg(feature = "async")]
impl<T> futures_core::Stream for Receiver<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.poll_recv(cx).map(Result::ok)
    }
}
