//! The producing end: any number of [`Sender`]s, each send one rseq critical section.

use super::blocking;
use super::chan::{Cell, Chan, GATE_CLOSED, PERMITS_CLOSED, RECEIVER_GONE, SENDERS_GONE};
use super::signal::{Waiter, lock};
use super::{SendError, SendTimeoutError, TrySendError};
use crate::cid::Pushed;
use crate::sync::{Arc, Ordering, current_thread, yield_now};
use std::fmt;
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

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
///
/// ```
/// let (tx, mut rx) = percid::ring::channel::<u64>(64).unwrap();
/// let workers: Vec<_> = (0..4)
///     .map(|w| {
///         let tx = tx.clone();
///         std::thread::spawn(move || tx.send(w).unwrap())
///     })
///     .collect();
/// drop(tx);
/// workers.into_iter().for_each(|w| w.join().unwrap());
/// let mut got: Vec<u64> = rx.iter().collect();
/// got.sort();
/// assert_eq!(got, [0, 1, 2, 3]);
/// ```
pub struct Sender<T> {
    pub(super) chan: Arc<Chan<T>>,
}

impl<T> Sender<T> {
    /// Sends `value` without blocking: [`TrySendError::Full`] when the ring of the
    /// caller's cid is full, [`TrySendError::Disconnected`] when the receiver closed
    /// the channel or is gone; both hand the value back. On an unbounded channel it
    /// fails only when the receiver is gone.
    ///
    /// # Errors
    /// As above.
    ///
    /// ```
    /// use percid::ring::{TrySendError, channel};
    /// let (tx, mut rx) = channel::<u32>(1).unwrap();
    /// tx.try_send(1).unwrap();
    /// drop(rx);
    /// assert_eq!(tx.try_send(2), Err(TrySendError::Disconnected(2)));
    /// ```
    #[inline]
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let chan = &*self.chan;
        let cell = Cell::new(value);
        // SAFETY: one initialised cell; once published it belongs to the ring, and a
        // `Cell` never drops its value, so nothing else is needed to give it away.
        match unsafe { chan.push(&cell, 1) } {
            Pushed::Committed(_) => {
                chan.rx.0.notify(chan.fence);
                Ok(())
            }
            _ => self.refused(cell.into_inner()),
        }
    }

    /// The section did not publish: the gate is closed, the channel spills, or the
    /// ring is full.
    #[cold]
    #[inline(never)]
    fn refused(&self, value: T) -> Result<(), TrySendError<T>> {
        let chan = &*self.chan;
        let gate = chan.gate().load(Ordering::Acquire);
        if gate & GATE_CLOSED != 0 {
            return Err(TrySendError::Disconnected(value));
        }
        if chan.options.unbounded {
            return chan.spill(value, false).map_err(TrySendError::Disconnected);
        }
        Err(TrySendError::Full(value))
    }

    /// Sends `value`, blocking while the ring of the caller's cid is full (never, on
    /// an unbounded channel). Fails (with the value) only when the receiver closed
    /// the channel or is gone.
    ///
    /// # Errors
    /// [`SendError`] with the value when the receiver closed the channel or is gone.
    ///
    /// # Panics
    /// With feature `tokio`, when it would block a current-thread tokio runtime (see
    /// [the module docs](super#blocking-inside-an-async-runtime)).
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        match self.send_until(value, None) {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Disconnected(v) | SendTimeoutError::Timeout(v)) => {
                Err(SendError(v))
            }
        }
    }

    /// [`Sender::send`] under tokio's name.
    ///
    /// # Errors
    /// As [`Sender::send`].
    ///
    /// # Panics
    /// As [`Sender::send`].
    pub fn blocking_send(&self, value: T) -> Result<(), SendError<T>> {
        self.send(value)
    }

    /// Sends `value`, blocking while the caller's ring is full for at most `timeout`.
    ///
    /// # Errors
    /// [`SendTimeoutError::Timeout`] when no slot freed in time,
    /// [`SendTimeoutError::Disconnected`] when the receiver closed the channel or is
    /// gone; both with the value.
    ///
    /// # Panics
    /// As [`Sender::send`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use percid::ring::channel;
    /// let (tx, mut rx) = channel::<u32>(1).unwrap();
    /// let consumer = std::thread::spawn(move || rx.iter().count());
    /// for i in 0..100 {
    ///     // Waits while this cid's ring (1 slot) is full, up to a second.
    ///     tx.send_timeout(i, Duration::from_secs(1)).unwrap();
    /// }
    /// drop(tx);
    /// assert_eq!(consumer.join().unwrap(), 100);
    /// ```
    pub fn send_timeout(&self, value: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.send_until(value, Instant::now().checked_add(timeout))
    }

    /// Sends `value`, blocking while the caller's ring is full until `deadline`.
    ///
    /// # Errors
    /// As [`Sender::send_timeout`].
    ///
    /// # Panics
    /// As [`Sender::send`].
    pub fn send_deadline(&self, value: T, deadline: Instant) -> Result<(), SendTimeoutError<T>> {
        self.send_until(value, Some(deadline))
    }

    fn send_until(&self, value: T, deadline: Option<Instant>) -> Result<(), SendTimeoutError<T>> {
        let mut value = match self.try_send(value) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Disconnected(v)) => return Err(SendTimeoutError::Disconnected(v)),
            Err(TrySendError::Full(v)) => v,
        };
        for _ in 0..YIELDS {
            yield_now();
            value = match self.try_send(value) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(v)) => {
                    return Err(SendTimeoutError::Disconnected(v));
                }
                Err(TrySendError::Full(v)) => v,
            };
        }
        blocking::check_may_block("a blocking send on a full ring");
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
                Err(TrySendError::Disconnected(v)) => break Err(SendTimeoutError::Disconnected(v)),
                Err(TrySendError::Full(v)) => v,
            };
            if !blocking::park_until(deadline) {
                break Err(SendTimeoutError::Timeout(value));
            }
        };
        tx.unregister(id);
        result
    }

    /// Sends `value`, waiting (asynchronously) while the ring of the cid the task
    /// runs on is full.
    ///
    /// # Errors
    /// The future gives [`SendError`] with the value when the receiver closed the
    /// channel or is gone.
    ///
    /// ```
    /// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # rt.block_on(async {
    /// let (tx, mut rx) = percid::ring::channel::<u32>(4).unwrap();
    /// tx.send_async(7).await.unwrap();
    /// assert_eq!(rx.recv_async().await, Ok(7));
    /// # });
    /// ```
    pub fn send_async(&self, value: T) -> SendFuture<'_, T> {
        SendFuture {
            sender: self,
            value: Some(value),
            id: None,
        }
    }

    /// Waits for room (as [`Sender::send_async`] would) and returns a [`Permit`]
    /// whose [`Permit::send`] cannot fail or block.
    ///
    /// A permit does not hold a slot of one ring (the task may run on another cid
    /// when it sends): it holds the right to send. A permitted value whose ring has
    /// filled meanwhile goes to the channel's spill queue, so a bounded channel may
    /// hold, beyond its rings, up to as many values as there are permits out.
    ///
    /// # Errors
    /// The future gives [`SendError`]`(())` when the receiver closed the channel or
    /// is gone.
    ///
    /// ```
    /// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # rt.block_on(async {
    /// let (tx, mut rx) = percid::ring::channel::<u32>(4).unwrap();
    /// let permit = tx.reserve().await.unwrap();
    /// permit.send(5);
    /// assert_eq!(rx.recv_async().await, Ok(5));
    /// # });
    /// ```
    pub fn reserve(&self) -> ReserveFuture<'_, T> {
        ReserveFuture {
            sender: self,
            id: None,
        }
    }

    /// [`Sender::reserve`] without waiting.
    ///
    /// # Errors
    /// [`TrySendError::Full`]`(())` when the caller's ring is full (or the bounded
    /// channel spills), [`TrySendError::Disconnected`]`(())` when the receiver
    /// closed the channel or is gone.
    pub fn try_reserve(&self) -> Result<Permit<'_, T>, TrySendError<()>> {
        self.chan.try_permit(())?;
        Ok(Permit { sender: self })
    }

    /// [`Sender::reserve`] that consumes the sender and gives an [`OwnedPermit`],
    /// which can move into a task.
    ///
    /// # Errors
    /// As [`Sender::reserve`].
    pub fn reserve_owned(self) -> ReserveOwnedFuture<T> {
        ReserveOwnedFuture {
            sender: Some(self),
            id: None,
        }
    }

    /// [`Sender::try_reserve`] that consumes the sender.
    ///
    /// # Errors
    /// As [`Sender::try_reserve`], with the sender given back.
    pub fn try_reserve_owned(self) -> Result<OwnedPermit<T>, TrySendError<Sender<T>>> {
        match self.chan.try_permit(()) {
            Ok(()) => Ok(OwnedPermit { sender: Some(self) }),
            Err(TrySendError::Full(())) => Err(TrySendError::Full(self)),
            Err(TrySendError::Disconnected(())) => Err(TrySendError::Disconnected(self)),
        }
    }

    /// Sends every value of `values`, in order, staging up to [`BATCH`] of them at a
    /// time and committing as many as fit in one critical section; blocks while the
    /// ring is full (an unbounded channel spills instead).
    ///
    /// # Errors
    /// When the receiver closed the channel or is gone, the values not sent come back
    /// in [`SendError`].
    ///
    /// # Panics
    /// As [`Sender::send`].
    pub fn send_many<I: IntoIterator<Item = T>>(&self, values: I) -> Result<(), SendError<Vec<T>>> {
        let mut values = values.into_iter();
        if size_of::<Cell<T>>() > BATCH_SLOT_MAX || self.chan.options.unbounded {
            // An unbounded channel's full ring spills value by value, in order.
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
    /// the receiver closed the channel or is gone.
    fn push_batch(&self, batch: &mut Batch<T>) -> Result<(), ()> {
        let chan = &*self.chan;
        let try_once = |batch: &mut Batch<T>| -> Option<Result<(), ()>> {
            // SAFETY: `batch.len()` initialised cells at `batch.ptr()`; the first `n`
            // published are the ring's and `consume` forgets them.
            match unsafe { chan.push(batch.ptr(), batch.len()) } {
                Pushed::Committed(n) => {
                    batch.consume(n);
                    chan.rx.0.notify(chan.fence);
                    Some(Ok(()))
                }
                _ if chan.gate_closed() => Some(Err(())),
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
        blocking::check_may_block("send_many on a full ring");
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
            blocking::park_until(None);
        };
        tx.unregister(id);
        result
    }

    /// Completes once the receiver closed the channel or is gone (tokio's
    /// `closed`): a producer can stop working for a consumer that left.
    ///
    /// ```
    /// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # rt.block_on(async {
    /// let (tx, mut rx) = percid::ring::channel::<u32>(4).unwrap();
    /// rx.close();
    /// tx.closed().await;
    /// assert!(tx.is_closed());
    /// # });
    /// ```
    pub fn closed(&self) -> ClosedFuture<'_, T> {
        ClosedFuture {
            sender: self,
            id: None,
        }
    }

    /// Whether the receiver closed the channel or is gone (a send would fail).
    pub fn is_closed(&self) -> bool {
        self.chan.gate_closed()
    }

    /// Whether the receiver is gone (dropped; [`Sender::is_closed`] also covers
    /// [`Receiver::close`](super::Receiver::close)).
    pub fn is_disconnected(&self) -> bool {
        self.chan.closed.load(Ordering::Acquire) & RECEIVER_GONE != 0
    }

    /// Values queued now, over every ring and the spill queue: a racy sum (senders
    /// and the receiver move while it adds up), exact on a quiescent channel except
    /// for up to [`BURST`](super) values per ring that the receiver took and has
    /// not yet returned the slots of.
    pub fn len(&self) -> usize {
        self.chan.queued()
    }

    /// Whether [`Sender::len`] is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`Sender::max_capacity`] less [`Sender::len`]: how many more values the
    /// rings could take in all (a send still fails or waits when *its* ring is
    /// full). `usize::MAX` for an unbounded channel.
    pub fn capacity(&self) -> usize {
        self.chan.max_capacity().saturating_sub(self.len())
    }

    /// The most values the rings can ever hold: [`Sender::capacity_per_cid`] times
    /// the most rings the channel can have (one per possible cid, per NUMA node in
    /// NUMA mode, and one per portable lane). A process has at most one cid per
    /// allowed CPU running at once, so in practice fewer rings appear (see
    /// [`Receiver::rings`](super::Receiver::rings)). `usize::MAX` for an unbounded
    /// channel.
    pub fn max_capacity(&self) -> usize {
        self.chan.max_capacity()
    }

    /// Slots of each cid's ring.
    pub fn capacity_per_cid(&self) -> usize {
        self.chan.capacity as usize
    }

    /// A [`WeakSender`]: does not keep the channel connected; upgrade it to send.
    pub fn downgrade(&self) -> WeakSender<T> {
        self.chan.weak.fetch_add(1, Ordering::Relaxed);
        WeakSender {
            chan: self.chan.clone(),
        }
    }

    /// Whether both senders send to the same channel.
    pub fn same_channel(&self, other: &Sender<T>) -> bool {
        Arc::ptr_eq(&self.chan, &other.chan)
    }

    /// Senders (strong) of the channel, this one included.
    pub fn strong_count(&self) -> usize {
        self.chan.senders.0.load(Ordering::Acquire) as usize
    }

    /// Weak senders of the channel.
    pub fn weak_count(&self) -> usize {
        self.chan.weak.load(Ordering::Acquire) as usize
    }
}

impl<T> Chan<T> {
    /// Takes a permit when the caller's ring has room and the gate is open.
    pub(super) fn try_permit<E>(&self, e: E) -> Result<(), TrySendError<E>> {
        if self.gate_closed() {
            return Err(TrySendError::Disconnected(e));
        }
        if !self.room_hint() {
            return Err(TrySendError::Full(e));
        }
        // Against `Receiver::close`: counted before it marks the word, or refused.
        let mut permits = self.permits.load(Ordering::Relaxed);
        loop {
            if permits & PERMITS_CLOSED != 0 {
                return Err(TrySendError::Disconnected(e));
            }
            match self.permits.compare_exchange_weak(
                permits,
                permits + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(seen) => permits = seen,
            }
        }
    }

    /// Sends a permitted value: its ring when it has room, else the spill queue; a
    /// value sent after the receiver is gone is dropped.
    pub(super) fn send_permitted(&self, value: T) {
        let cell = Cell::new(value);
        // SAFETY: as in `try_send`.
        match unsafe { self.push(&cell, 1) } {
            Pushed::Committed(_) => self.rx.0.notify(self.fence),
            _ => {
                let value = cell.into_inner();
                if self.closed.load(Ordering::Acquire) & RECEIVER_GONE == 0 {
                    // Forced: a permit's send does not fail.
                    let _ = self.spill(value, true);
                }
            }
        }
        self.release_permit();
    }

    /// A permit was used or dropped: the receiver of a closed channel may finish.
    pub(super) fn release_permit(&self) {
        self.permits.fetch_sub(1, Ordering::AcqRel);
        self.rx.0.notify(self.fence);
    }

    /// Registers a task of `Sender::closed`; whether the gate is closed already.
    fn register_closer(&self, id: u64, waker: &Waker) -> bool {
        let mut closers = lock(&self.closers);
        match closers.iter_mut().find(|(i, _)| *i == id) {
            Some((_, w)) => w.clone_from(waker),
            None => closers.push((id, waker.clone())),
        }
        drop(closers);
        self.gate_closed()
    }

    fn unregister_closer(&self, id: u64) {
        lock(&self.closers).retain(|(i, _)| *i != id);
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
            .field("unbounded", &self.chan.options.unbounded)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// A sender that does not keep the channel connected (tokio's `WeakSender`): the
/// receiver sees the channel disconnected once every [`Sender`] is gone, whatever
/// weak senders remain. [`WeakSender::upgrade`] gives a `Sender` while one lives.
///
/// ```
/// let (tx, mut rx) = percid::ring::channel::<u32>(4).unwrap();
/// let weak = tx.downgrade();
/// weak.upgrade().unwrap().send(1).unwrap();
/// drop(tx);
/// assert!(weak.upgrade().is_none());
/// assert_eq!(rx.recv(), Ok(1));
/// assert!(rx.recv().is_err());
/// ```
pub struct WeakSender<T> {
    chan: Arc<Chan<T>>,
}

impl<T> WeakSender<T> {
    /// A [`Sender`], unless every sender is gone already (the channel disconnected
    /// for good).
    pub fn upgrade(&self) -> Option<Sender<T>> {
        let senders = &self.chan.senders.0;
        let mut n = senders.load(Ordering::Relaxed);
        loop {
            if n == 0 {
                return None;
            }
            match senders.compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    return Some(Sender {
                        chan: self.chan.clone(),
                    });
                }
                Err(seen) => n = seen,
            }
        }
    }

    /// Senders (strong) of the channel.
    pub fn strong_count(&self) -> usize {
        self.chan.senders.0.load(Ordering::Acquire) as usize
    }

    /// Weak senders of the channel, this one included.
    pub fn weak_count(&self) -> usize {
        self.chan.weak.load(Ordering::Acquire) as usize
    }
}

impl<T> Clone for WeakSender<T> {
    fn clone(&self) -> Self {
        self.chan.weak.fetch_add(1, Ordering::Relaxed);
        WeakSender {
            chan: self.chan.clone(),
        }
    }
}

impl<T> Drop for WeakSender<T> {
    fn drop(&mut self) {
        self.chan.weak.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T> fmt::Debug for WeakSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakSender").finish_non_exhaustive()
    }
}

/// The right to send one value (tokio's `Permit`), from [`Sender::reserve`]: its
/// [`Permit::send`] cannot fail or block. Dropped unused, it is given back.
///
/// ```
/// let (tx, mut rx) = percid::ring::channel::<u32>(4).unwrap();
/// let permit = tx.try_reserve().unwrap();
/// rx.close(); // a permit taken before close still delivers
/// permit.send(1);
/// assert_eq!(rx.recv(), Ok(1));
/// assert!(rx.recv().is_err());
/// ```
pub struct Permit<'a, T> {
    sender: &'a Sender<T>,
}

impl<T> Permit<'_, T> {
    /// Sends `value`. After [`Receiver::close`](super::Receiver::close) the value is
    /// still delivered; after the receiver is gone it is dropped.
    pub fn send(self, value: T) {
        let chan = &*self.sender.chan;
        std::mem::forget(self);
        chan.send_permitted(value);
    }
}

impl<T> Drop for Permit<'_, T> {
    fn drop(&mut self) {
        self.sender.chan.release_permit();
    }
}

impl<T> fmt::Debug for Permit<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

/// A [`Permit`] that owns its [`Sender`] (tokio's `OwnedPermit`).
///
/// ```
/// let (tx, mut rx) = percid::ring::channel::<u32>(4).unwrap();
/// let permit = tx.try_reserve_owned().unwrap();
/// let handle = std::thread::spawn(move || permit.send(2));
/// let tx = handle.join().unwrap(); // the sender comes back
/// tx.send(3).unwrap();
/// let mut got: Vec<u32> = rx.try_iter().collect();
/// got.sort(); // two threads, maybe two rings: FIFO per ring only
/// assert_eq!(got, [2, 3]);
/// ```
pub struct OwnedPermit<T> {
    sender: Option<Sender<T>>,
}

impl<T> OwnedPermit<T> {
    /// Sends `value` (as [`Permit::send`]) and gives the sender back.
    ///
    /// # Panics
    ///
    /// Never: the permit holds its sender until `send` or `release` consumes it.
    pub fn send(mut self, value: T) -> Sender<T> {
        let sender = self
            .sender
            .take()
            .expect("an owned permit holds its sender");
        sender.chan.send_permitted(value);
        sender
    }

    /// Gives the permit back unused, and the sender with it.
    ///
    /// ```
    /// let (tx, _rx) = percid::ring::channel::<u8>(1).unwrap();
    /// let permit = tx.try_reserve_owned().unwrap();
    /// let tx = permit.release(); // the slot is free again
    /// assert!(tx.try_reserve().is_ok());
    /// ```
    ///
    /// # Panics
    ///
    /// Never: the permit holds its sender until `send` or `release` consumes it.
    pub fn release(mut self) -> Sender<T> {
        let sender = self
            .sender
            .take()
            .expect("an owned permit holds its sender");
        sender.chan.release_permit();
        sender
    }
}

impl<T> Drop for OwnedPermit<T> {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            sender.chan.release_permit();
        }
    }
}

impl<T> fmt::Debug for OwnedPermit<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedPermit").finish_non_exhaustive()
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

/// The future of [`Sender::send_async`]: ready once the value is in a ring (or the
/// receiver is gone: `Err` with the value back); pending while the caller's ring is
/// full. Dropping it before it completes drops the value unsent.
///
/// ```
/// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// # rt.block_on(async {
/// let (tx, mut rx) = percid::ring::channel::<&str>(1).unwrap();
/// tx.send_async("a").await.unwrap();
/// drop(rx.recv_async().await); // make room, whichever ring held it
/// tx.send_async("b").await.unwrap();
/// drop(rx);
/// assert_eq!(tx.send_async("c").await.unwrap_err().into_inner(), "c");
/// # });
/// ```
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

/// Polls for a permit on `chan`, registering as a waiting sender under `id` while
/// there is no room: the wait of [`ReserveFuture`] and [`ReserveOwnedFuture`].
pub(super) fn poll_permit<T>(
    chan: &Chan<T>,
    id: &mut Option<u64>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), SendError<()>>> {
    let tx = &chan.tx.0;
    let finish = |id: &mut Option<u64>, r| {
        if let Some(id) = id.take() {
            tx.unregister(id);
        }
        Poll::Ready(r)
    };
    match chan.try_permit(()) {
        Ok(()) => return finish(id, Ok(())),
        Err(TrySendError::Disconnected(())) => return finish(id, Err(SendError(()))),
        Err(TrySendError::Full(())) => {}
    }
    let reg = *id.get_or_insert_with(|| tx.id());
    tx.register(reg, &Waiter::Task(cx.waker().clone()));
    match chan.try_permit(()) {
        Ok(()) => {
            id.take();
            tx.pass_on(reg);
            Poll::Ready(Ok(()))
        }
        Err(TrySendError::Disconnected(())) => finish(id, Err(SendError(()))),
        Err(TrySendError::Full(())) => Poll::Pending,
    }
}

/// The future of [`Sender::reserve`]: a [`Permit`] once the channel has room for
/// one more value from this sender.
///
/// ```
/// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// # rt.block_on(async {
/// let (tx, mut rx) = percid::ring::channel::<u8>(2).unwrap();
/// let permit = tx.reserve().await.expect("the receiver is alive");
/// permit.send(1);
/// assert_eq!(rx.recv_async().await, Ok(1));
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct ReserveFuture<'a, T> {
    sender: &'a Sender<T>,
    id: Option<u64>,
}

impl<'a, T> Future for ReserveFuture<'a, T> {
    type Output = Result<Permit<'a, T>, SendError<()>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let sender = self.sender;
        poll_permit(&sender.chan, &mut self.id, cx).map(|r| r.map(|()| Permit { sender }))
    }
}

impl<T> Drop for ReserveFuture<'_, T> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.sender.chan.tx.0.unregister(id);
        }
    }
}

impl<T> fmt::Debug for ReserveFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReserveFuture").finish_non_exhaustive()
    }
}

/// The future of [`Sender::reserve_owned`]: an [`OwnedPermit`], which holds the
/// sender and can move into a task.
///
/// ```
/// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// # rt.block_on(async {
/// let (tx, mut rx) = percid::ring::channel::<u8>(2).unwrap();
/// let permit = tx.clone().reserve_owned().await.expect("the receiver is alive");
/// let _tx_back = permit.send(7); // gives the sender back
/// assert_eq!(rx.recv_async().await, Ok(7));
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct ReserveOwnedFuture<T> {
    sender: Option<Sender<T>>,
    id: Option<u64>,
}

impl<T> Unpin for ReserveOwnedFuture<T> {}

impl<T> Future for ReserveOwnedFuture<T> {
    type Output = Result<OwnedPermit<T>, SendError<()>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let sender = this
            .sender
            .as_ref()
            .expect("ReserveOwnedFuture polled after completion");
        let ready = poll_permit(&sender.chan, &mut this.id, cx);
        ready.map(|r| {
            let sender = this.sender.take();
            r.map(|()| OwnedPermit { sender })
        })
    }
}

impl<T> Drop for ReserveOwnedFuture<T> {
    fn drop(&mut self) {
        if let (Some(id), Some(sender)) = (self.id.take(), self.sender.as_ref()) {
            sender.chan.tx.0.unregister(id);
        }
    }
}

impl<T> fmt::Debug for ReserveOwnedFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReserveOwnedFuture").finish_non_exhaustive()
    }
}

/// The future of [`Sender::closed`]: ready once the receiver closed the channel or
/// is gone.
///
/// ```
/// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// # rt.block_on(async {
/// let (tx, rx) = percid::ring::channel::<u8>(2).unwrap();
/// std::thread::spawn(move || drop(rx));
/// tx.closed().await; // no timing assumption: it waits for the drop
/// assert!(tx.try_send(1).unwrap_err().is_disconnected());
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct ClosedFuture<'a, T> {
    sender: &'a Sender<T>,
    id: Option<u64>,
}

impl<T> Future for ClosedFuture<'_, T> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let chan = &*self.sender.chan;
        if chan.gate_closed() {
            return Poll::Ready(());
        }
        let id = *self.id.get_or_insert_with(|| chan.tx.0.id());
        if chan.register_closer(id, cx.waker()) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl<T> Drop for ClosedFuture<'_, T> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.sender.chan.unregister_closer(id);
        }
    }
}

impl<T> fmt::Debug for ClosedFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClosedFuture").finish_non_exhaustive()
    }
}
