//! The producing end: any number of [`Sender`]s, each send one rseq critical section.

use super::chan::{Cell, Chan, RECEIVER_GONE, SENDERS_GONE};
use super::signal::Waiter;
use super::{SendError, TrySendError};
use crate::cid::Pushed;
use crate::sync::{Arc, Ordering, current_thread, park, yield_now};
use std::fmt;
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Most values [`Sender::send_many`] offers one critical section.
pub const BATCH: usize = 32;

/// Largest slot (bytes) for which [`Sender::send_many`] stages a whole batch on the
/// stack; larger values go one section each.
const BATCH_SLOT_MAX: usize = 256;

/// Yields before a full sender registers to sleep: the consumer usually frees
/// slots within a time slice.
const YIELDS: u32 = if cfg!(loom) { 0 } else { 4 };

/// The sending end of a [`channel`](super::channel): `Clone + Send + Sync`.
///
/// A send copies the value into the ring of the cid the thread runs on and
/// publishes it with one store of the ring's tail, in one rseq critical section: no
/// atomic read-modify-write, no lock, and no write to a line another cid's senders
/// or the receiver write.
pub struct Sender<T> {
    pub(super) chan: Arc<Chan<T>>,
}

impl<T> Sender<T> {
    /// Sends `value` without blocking: [`TrySendError::Full`] when the ring of the
    /// caller's cid is full, [`TrySendError::Disconnected`] when the receiver is
    /// gone; both hand the value back.
    #[inline]
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let chan = &*self.chan;
        if chan.closed.load(Ordering::Relaxed) & RECEIVER_GONE != 0 {
            return Err(TrySendError::Disconnected(value));
        }
        let cell = Cell::new(value);
        // SAFETY: one initialised cell; once published it belongs to the ring, and a
        // `Cell` never drops its value, so nothing else is needed to give it away.
        match unsafe { chan.push(&cell, 1) } {
            Pushed::Committed(_) => {
                chan.rx.0.notify(chan.fence);
                Ok(())
            }
            _ => Err(TrySendError::Full(cell.into_inner())),
        }
    }

    /// Sends `value`, blocking while the ring of the caller's cid is full. Fails
    /// (with the value) only when the receiver is gone.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        let mut value = match self.try_send(value) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Disconnected(v)) => return Err(SendError(v)),
            Err(TrySendError::Full(v)) => v,
        };
        for _ in 0..YIELDS {
            yield_now();
            value = match self.try_send(value) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(v)) => return Err(SendError(v)),
                Err(TrySendError::Full(v)) => v,
            };
        }
        let tx = &self.chan.tx.0;
        let id = tx.id();
        let waiter = Waiter::Thread(current_thread());
        let result = loop {
            tx.register(id, &waiter);
            value = match self.try_send(value) {
                Ok(()) => {
                    tx.pass_on(id);
                    break Ok(());
                }
                Err(TrySendError::Disconnected(v)) => break Err(SendError(v)),
                Err(TrySendError::Full(v)) => v,
            };
            park();
        };
        tx.unregister(id);
        result
    }

    /// Sends `value`, waiting (asynchronously) while the ring of the cid the task
    /// runs on is full.
    pub fn send_async(&self, value: T) -> SendFuture<'_, T> {
        SendFuture {
            sender: self,
            value: Some(value),
            id: None,
        }
    }

    /// Sends every value of `values`, in order, staging up to [`BATCH`] of them at a
    /// time and committing as many as fit in one critical section; blocks while the
    /// ring is full. When the receiver is gone, the values not sent come back.
    pub fn send_many<I: IntoIterator<Item = T>>(&self, values: I) -> Result<(), SendError<Vec<T>>> {
        let mut values = values.into_iter();
        if size_of::<Cell<T>>() > BATCH_SLOT_MAX {
            while let Some(v) = values.next() {
                if let Err(SendError(v)) = self.send(v) {
                    let mut rest = vec![v];
                    rest.extend(values);
                    return Err(SendError(rest));
                }
            }
            return Ok(());
        }
        let mut batch = Batch::<T>::new();
        loop {
            batch.fill(&mut values);
            if batch.is_empty() {
                return Ok(());
            }
            while !batch.is_empty() {
                if let Err(()) = self.push_batch(&mut batch) {
                    let mut rest = batch.take_all();
                    rest.extend(values);
                    return Err(SendError(rest));
                }
            }
        }
    }

    /// Publishes a prefix of `batch` (blocking while the ring is full); `Err` when
    /// the receiver is gone.
    fn push_batch(&self, batch: &mut Batch<T>) -> Result<(), ()> {
        let chan = &*self.chan;
        let try_once = |batch: &mut Batch<T>| -> Option<Result<(), ()>> {
            if chan.closed.load(Ordering::Relaxed) & RECEIVER_GONE != 0 {
                return Some(Err(()));
            }
            // SAFETY: `batch.len()` initialised cells at `batch.ptr()`; the first `n`
            // published are the ring's and `consume` forgets them.
            match unsafe { chan.push(batch.ptr(), batch.len()) } {
                Pushed::Committed(n) => {
                    batch.consume(n);
                    chan.rx.0.notify(chan.fence);
                    Some(Ok(()))
                }
                _ => None,
            }
        };
        if let Some(done) = try_once(batch) {
            return done;
        }
        for _ in 0..YIELDS {
            yield_now();
            if let Some(done) = try_once(batch) {
                return done;
            }
        }
        let tx = &chan.tx.0;
        let id = tx.id();
        let waiter = Waiter::Thread(current_thread());
        let result = loop {
            tx.register(id, &waiter);
            if let Some(done) = try_once(batch) {
                if done.is_ok() {
                    tx.pass_on(id);
                }
                break done;
            }
            park();
        };
        tx.unregister(id);
        result
    }

    /// Whether the receiver is gone (a send would fail).
    pub fn is_disconnected(&self) -> bool {
        self.chan.closed.load(Ordering::Acquire) & RECEIVER_GONE != 0
    }

    /// Slots of each cid's ring.
    pub fn capacity_per_cid(&self) -> usize {
        self.chan.capacity as usize
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.chan.senders.0.fetch_add(1, Ordering::Relaxed);
        Sender {
            chan: self.chan.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        // Release: the receiver that sees the last drop sees every send before it.
        if self.chan.senders.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.chan.closed.fetch_or(SENDERS_GONE, Ordering::SeqCst);
            // The flag is a publication like a send's tail: the same fence before
            // reading the consumer's state (see `signal.rs`). Without it the
            // argument rests on both accesses being SeqCst read-modify-writes, which
            // loom models as AcqRel: it found the consumer asleep forever.
            self.chan.rx.0.notify(self.chan.fence);
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("capacity_per_cid", &self.chan.capacity)
            .finish_non_exhaustive()
    }
}

/// Values staged for one section: cells in a stack array, `start..end` live.
struct Batch<T> {
    cells: [MaybeUninit<Cell<T>>; BATCH],
    start: usize,
    end: usize,
}

impl<T> Batch<T> {
    fn new() -> Batch<T> {
        Batch {
            cells: [const { MaybeUninit::uninit() }; BATCH],
            start: 0,
            end: 0,
        }
    }

    fn fill(&mut self, values: &mut impl Iterator<Item = T>) {
        debug_assert!(self.is_empty());
        self.start = 0;
        self.end = 0;
        for v in values.by_ref().take(BATCH) {
            self.cells[self.end].write(Cell::new(v));
            self.end += 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn len(&self) -> usize {
        self.end - self.start
    }

    fn ptr(&self) -> *const Cell<T> {
        self.cells[self.start..].as_ptr().cast()
    }

    /// The first `n` live cells were published: they are the ring's now.
    fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
    }

    /// The live values, in order.
    fn take_all(&mut self) -> Vec<T> {
        let out = (self.start..self.end)
            // SAFETY: `start..end` are initialised; `start` moves past each one read.
            .map(|i| unsafe { self.cells[i].assume_init_read() }.into_inner())
            .collect();
        self.start = self.end;
        out
    }
}

impl<T> Drop for Batch<T> {
    fn drop(&mut self) {
        // Values staged but never sent (a panic in the iterator, say).
        drop(self.take_all());
    }
}

/// The future of [`Sender::send_async`].
#[must_use = "futures do nothing unless polled"]
pub struct SendFuture<'a, T> {
    sender: &'a Sender<T>,
    value: Option<T>,
    id: Option<u64>,
}

// No field is ever pinned: the value moves in and out by value.
impl<T> Unpin for SendFuture<'_, T> {}

impl<T> Future for SendFuture<'_, T> {
    type Output = Result<(), SendError<T>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let value = this
            .value
            .take()
            .expect("SendFuture polled after completion");
        let value = match this.sender.try_send(value) {
            Ok(()) => return this.finish(Ok(())),
            Err(TrySendError::Disconnected(v)) => return this.finish(Err(SendError(v))),
            Err(TrySendError::Full(v)) => v,
        };
        let tx = &this.sender.chan.tx.0;
        let id = *this.id.get_or_insert_with(|| tx.id());
        tx.register(id, &Waiter::Task(cx.waker().clone()));
        match this.sender.try_send(value) {
            Ok(()) => {
                tx.pass_on(id);
                this.finish(Ok(()))
            }
            Err(TrySendError::Disconnected(v)) => this.finish(Err(SendError(v))),
            Err(TrySendError::Full(v)) => {
                this.value = Some(v);
                Poll::Pending
            }
        }
    }
}

impl<T> SendFuture<'_, T> {
    fn finish(&mut self, result: Result<(), SendError<T>>) -> Poll<Result<(), SendError<T>>> {
        if let Some(id) = self.id.take() {
            self.sender.chan.tx.0.unregister(id);
        }
        Poll::Ready(result)
    }
}

impl<T> Drop for SendFuture<'_, T> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.sender.chan.tx.0.unregister(id);
        }
    }
}

impl<T> fmt::Debug for SendFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendFuture")
            .field("done", &self.value.is_none())
            .finish_non_exhaustive()
    }
}
