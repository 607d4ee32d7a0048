//! Wake-ups between the ends of a ring: the consumer asleep on empty rings, senders
//! asleep on a full one.
//!
//! # The consumer's sleep (no cost on the send path)
//!
//! A sender publishes (the tail store of its section), then reads [`RxSignal`]'s
//! state: that is all a send pays while the consumer runs, a load of a line nobody
//! writes. The consumer, out of work, stores `SLEEPING`, runs the **heavy** fence,
//! checks the rings once more and only then sleeps. The heavy fence is
//! `membarrier(PRIVATE_EXPEDITED_RSEQ)`: every running thread of the process executes
//! a full barrier, and a thread that is not running passed one when it was switched
//! out. So for any send, either its tail store is visible to the consumer's last
//! check, or its load of the state comes after the consumer's store and sees
//! `SLEEPING` (the asymmetric Dekker pattern of `membarrier(2)`, as liburcu and
//! folly's `asymmetricHeavyBarrier` use it). The sender that sees `SLEEPING` swaps
//! it back to `RUNNING`; the one whose swap returned `SLEEPING` wakes the waiter.
//!
//! Without membarrier (seccomp, valgrind, the loom model) both sides use a
//! `SeqCst` fence instead ([`FenceMode::Symmetric`]): the same argument with the
//! cost moved onto every send.
//!
//! # Senders' sleep (paid by the consumer once per published batch)
//!
//! A sender whose sub-ring is full registers in [`TxSignal`] (a `SeqCst`
//! increment), fences, retries and only then sleeps. The consumer, after publishing
//! a ring's head, fences and reads the count: either it sees the sender, or the
//! sender's retry sees the new head. The consumer checks once it freed a good part
//! of a ring (half a ring's slots since its last check), so that a woken sender finds
//! room for a run of sends rather than one, and when it finds every ring empty; it
//! wakes one sender (first come, first woken). A woken sender that sends wakes the
//! next one: the wake-ups cascade through the waiting senders at the senders'
//! expense, not the consumer's, and stop at the first woken sender that finds its
//! ring full again (it registers again; the consumer's next check goes on).
//!
//! The waiter of an end is kept (cloned, not taken) by a waker: a wake that races
//! with a new registration wakes the newer waiter, which rechecks.

use crate::sync::{AtomicBool, AtomicU32, AtomicU64, Mutex, MutexGuard, Ordering, Thread, fence};
use std::collections::{HashMap, VecDeque};
use std::task::Waker;

/// The consumer runs (or is about to check the rings).
pub(super) const RUNNING: u32 = 0;
/// The consumer is asleep, or about to sleep, and must be woken.
pub(super) const SLEEPING: u32 = 1;

/// How the two sides of a wake-up order their store and their load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FenceMode {
    /// Senders use a compiler fence, the sleeper `membarrier`.
    Asymmetric,
    /// Both sides use a `SeqCst` fence.
    Symmetric,
}

impl FenceMode {
    /// The asymmetric mode when the rseq fence works here.
    pub(super) fn detect() -> FenceMode {
        if !cfg!(loom) && crate::rseq::fence_available() {
            FenceMode::Asymmetric
        } else {
            FenceMode::Symmetric
        }
    }

    /// The cheap side: between a sender's publication and its load of the state.
    #[inline(always)]
    pub(super) fn light(self) {
        match self {
            FenceMode::Asymmetric => std::sync::atomic::compiler_fence(Ordering::SeqCst),
            FenceMode::Symmetric => fence(Ordering::SeqCst),
        }
    }

    /// The expensive side: between the sleeper's store of its state and its last
    /// check of the rings.
    pub(super) fn heavy(self) {
        if self == FenceMode::Asymmetric && crate::rseq::fence_rseq().is_ok() {
            return;
        }
        fence(Ordering::SeqCst);
    }
}

/// Something to wake: a thread blocked in `recv`/`send`, or a task.
#[derive(Clone, Debug)]
pub(super) enum Waiter {
    Thread(Thread),
    Task(Waker),
}

impl Waiter {
    pub(super) fn wake(self) {
        match self {
            Waiter::Thread(t) => t.unpark(),
            Waiter::Task(w) => w.wake(),
        }
    }

    /// Whether waking `self` wakes the same thread or task as `other`.
    fn same_as(&self, other: &Waiter) -> bool {
        match (self, other) {
            (Waiter::Thread(a), Waiter::Thread(b)) => a.id() == b.id(),
            (Waiter::Task(a), Waiter::Task(b)) => a.will_wake(b),
            _ => false,
        }
    }
}

/// Locks `m`, ignoring poisoning (no lock of the channel guards an invariant a
/// panic can break half-way), inside a held region ([`crate::cid::fork::hold`]): a
/// `fork()` waits until no thread holds a channel's lock, so a child can use every
/// channel it inherited (its spill queue and waiter lists). The region is entered
/// before the lock is taken and left after it is released; nothing runs under these
/// locks but a few list operations and waker clones.
pub(super) fn lock<T>(m: &Mutex<T>) -> Locked<'_, T> {
    let fork = crate::cid::fork::hold();
    Locked {
        guard: m.lock().unwrap_or_else(|e| e.into_inner()),
        _fork: fork,
    }
}

/// A channel lock's guard (see [`lock`]). Fields drop in order: the lock first.
pub(super) struct Locked<'a, T> {
    guard: MutexGuard<'a, T>,
    _fork: crate::cid::fork::ForkHold,
}

impl<T> std::ops::Deref for Locked<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> std::ops::DerefMut for Locked<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// The consumer's side: its state and its waiter.
#[derive(Debug)]
pub(super) struct RxSignal {
    state: AtomicU32,
    waiter: Mutex<Option<Waiter>>,
}

impl RxSignal {
    pub(super) fn new() -> RxSignal {
        RxSignal {
            state: AtomicU32::new(RUNNING),
            waiter: Mutex::new(None),
        }
    }

    /// Called by a sender after it published: wakes the consumer if it sleeps.
    #[inline(always)]
    pub(super) fn notify(&self, mode: FenceMode) {
        mode.light();
        if self.state.load(Ordering::Relaxed) != RUNNING {
            self.wake();
        }
    }

    /// Wakes the consumer if it sleeps (called by `notify`).
    #[cold]
    #[inline(never)]
    pub(super) fn wake(&self) {
        if self.state.swap(RUNNING, Ordering::SeqCst) == SLEEPING {
            let waiter = lock(&self.waiter).clone();
            if let Some(w) = waiter {
                w.wake();
            }
        }
    }

    /// Records who to wake, replacing an earlier waiter unless it is the same.
    pub(super) fn register(&self, waiter: &Waiter) {
        let mut slot = lock(&self.waiter);
        if !slot.as_ref().is_some_and(|w| w.same_as(waiter)) {
            *slot = Some(waiter.clone());
        }
    }

    /// [`RxSignal::register`] for a task, cloning its waker only when it changed.
    pub(super) fn register_waker(&self, waker: &Waker) {
        let mut slot = lock(&self.waiter);
        if !matches!(slot.as_ref(), Some(Waiter::Task(w)) if w.will_wake(waker)) {
            *slot = Some(Waiter::Task(waker.clone()));
        }
    }

    /// Announces the sleep, then fences (the caller checks the rings after this).
    ///
    /// A swap rather than a store, as in `cancel_sleep`: every write of `state` is
    /// then a read-modify-write. Stores would do (the modification order of `state`
    /// is total, so a sender's fenced check after the consumer's fenced store sees
    /// `SLEEPING`), but loom keeps the modification order of concurrent writes
    /// partial: it let a sender's check read the sender's own earlier swap to
    /// `RUNNING` after the consumer had stored `SLEEPING` again, and reported a lost
    /// wake-up. A chain of swaps is totally ordered for loom too; on the sleep path
    /// a swap costs nothing next to the fence that follows.
    pub(super) fn prepare_sleep(&self, mode: FenceMode) {
        self.state.swap(SLEEPING, Ordering::SeqCst);
        mode.heavy();
    }

    /// The last check found work: back to running (a swap, for loom: see
    /// [`RxSignal::prepare_sleep`]).
    pub(super) fn cancel_sleep(&self) {
        self.state.swap(RUNNING, Ordering::SeqCst);
    }

    /// Whether the consumer is still asleep (nobody woke it since it slept).
    pub(super) fn sleeping(&self) -> bool {
        self.state.load(Ordering::SeqCst) == SLEEPING
    }
}

/// The senders' side: who waits for a free slot.
#[derive(Debug)]
pub(super) struct TxSignal {
    /// Registered waiters; read by the consumer after it publishes.
    waiting: AtomicU64,
    /// A sender was woken and has not run since (set by `wake`, cleared when a
    /// sender registers, sends after waiting, or gives up): the consumer's eager
    /// wake-ups wait for it, so they cost one wake per woken sender, not per value.
    in_flight: AtomicBool,
    next_id: AtomicU64,
    waiters: Mutex<Waiters>,
}

/// Waiters by registration id, and the order they came in. A woken or unregistered
/// id leaves the map at once and the queue lazily (skipped when popped, swept when
/// stale ids outnumber live ones), so every operation is O(1) amortised however
/// many tasks wait.
#[derive(Debug, Default)]
struct Waiters {
    by_id: HashMap<u64, Waiter>,
    order: VecDeque<u64>,
}

impl TxSignal {
    pub(super) fn new() -> TxSignal {
        TxSignal {
            waiting: AtomicU64::new(0),
            in_flight: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            waiters: Mutex::new(Waiters::default()),
        }
    }

    /// A fresh registration id.
    pub(super) fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers `waiter` under `id` unless it is registered (a waker removes the
    /// waiters it wakes); fences, so that the caller's retry sees any head published
    /// before the consumer read the count.
    pub(super) fn register(&self, id: u64, waiter: &Waiter) {
        self.in_flight.store(false, Ordering::Relaxed);
        let mut waiters = lock(&self.waiters);
        match waiters.by_id.get_mut(&id) {
            Some(w) => {
                if !w.same_as(waiter) {
                    *w = waiter.clone();
                }
            }
            None => {
                waiters.by_id.insert(id, waiter.clone());
                waiters.order.push_back(id);
                self.waiting.fetch_add(1, Ordering::SeqCst);
            }
        }
        drop(waiters);
        fence(Ordering::SeqCst);
    }

    /// Removes registration `id`, if a waker did not.
    pub(super) fn unregister(&self, id: u64) {
        self.in_flight.store(false, Ordering::Relaxed);
        let mut waiters = lock(&self.waiters);
        if waiters.by_id.remove(&id).is_some() {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            if waiters.order.len() > 2 * waiters.by_id.len() + 32 {
                let Waiters { by_id, order } = &mut *waiters;
                order.retain(|i| by_id.contains_key(i));
            }
        }
    }

    /// Called by a sender registered as `id` that then sent: leaves the queue and
    /// wakes the next waiting sender (the cascade described above).
    pub(super) fn pass_on(&self, id: u64) {
        self.unregister(id);
        if self.waiting.load(Ordering::SeqCst) != 0 {
            self.wake(1);
        }
    }

    /// Whether the consumer should return slots and wake a sender right away: one
    /// waits and no wake-up is on its way (a hint, read without ordering; the
    /// guaranteed wake-ups are the consumer's half-ring and empty checks).
    #[inline(always)]
    pub(super) fn wants_eager_wake(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) != 0 && !self.in_flight.load(Ordering::Relaxed)
    }

    /// Called by the consumer after it published freed slots: wakes up to `n`
    /// waiters, first come first woken (all of them for `u64::MAX`).
    #[inline(always)]
    pub(super) fn notify(&self, n: u64) {
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) != 0 {
            self.wake(n);
        }
    }

    #[cold]
    #[inline(never)]
    pub(super) fn wake(&self, n: u64) {
        let mut woken = Vec::new();
        {
            let mut waiters = lock(&self.waiters);
            while (woken.len() as u64) < n {
                let Some(id) = waiters.order.pop_front() else {
                    break;
                };
                if let Some(w) = waiters.by_id.remove(&id) {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    woken.push(w);
                }
            }
            if !woken.is_empty() {
                self.in_flight.store(true, Ordering::Relaxed);
            }
        }
        for w in woken {
            w.wake();
        }
    }
}
