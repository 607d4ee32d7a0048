//! Getters waiting for an object of a bounded pool, and the drops that wake them.
//!
//! A getter that found nothing (its cache, the depots, every other cache drained,
//! the pool at its bound) registers (a `SeqCst` increment of `waiting`), runs the
//! **heavy** fence and looks once more (draining the caches again) before it parks
//! or returns `Pending`. A drop pushes its object (the section's commit), runs the
//! **light** fence and loads `waiting`: when it is not 0 it wakes the first waiter.
//! The heavy fence is `membarrier(PRIVATE_EXPEDITED_RSEQ)` and the light one a
//! compiler fence (the asymmetric Dekker pattern `ring/signal.rs` explains): for any
//! drop, either its push is visible to the getter's last look, or its load sees the
//! registration. Without membarrier both sides use a `SeqCst` fence. Unbounded pools
//! never wait, and their drops skip the check.
//!
//! A woken getter that then finds nothing (another thread took the object first)
//! registers again; the object it lost is in use, and its drop wakes the next one.

use super::lock;
use crate::sync::{AtomicU64, Mutex, Ordering, Thread, fence};
use std::collections::VecDeque;
use std::task::Waker;

/// Something to wake: a thread parked in `get`, or a task in `get_async`.
#[derive(Clone, Debug)]
pub(super) enum Waiter {
    Thread(Thread),
    Task(Waker),
}

impl Waiter {
    fn wake(self) {
        match self {
            Waiter::Thread(t) => t.unpark(),
            Waiter::Task(w) => w.wake(),
        }
    }
}

/// The waiting getters of one pool.
#[derive(Debug)]
pub(super) struct Waiters {
    /// Registered getters (read by every drop of a bounded pool).
    waiting: AtomicU64,
    /// Whether the heavy side is `membarrier` (else both sides fence).
    asymmetric: bool,
    next_id: AtomicU64,
    queue: Mutex<VecDeque<(u64, Waiter)>>,
}

impl Waiters {
    pub(super) fn new() -> Waiters {
        Waiters {
            waiting: AtomicU64::new(0),
            asymmetric: !cfg!(loom) && crate::rseq::fence_available(),
            next_id: AtomicU64::new(1),
            queue: Mutex::new(VecDeque::new()),
        }
    }

    /// The waiters of an unbounded pool, which never wait (for `const` pools).
    #[cfg(not(loom))]
    pub(super) const fn unbounded() -> Waiters {
        Waiters {
            waiting: AtomicU64::new(0),
            asymmetric: false,
            next_id: AtomicU64::new(1),
            queue: Mutex::new(VecDeque::new()),
        }
    }

    /// A fresh registration id.
    pub(super) fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers `waiter` under `id` unless it is registered (then only updates
    /// whom to wake); a new registration runs the heavy fence and returns true: the
    /// caller looks for an object once more before it waits.
    pub(super) fn register(&self, id: u64, waiter: Waiter) -> bool {
        let mut queue = lock(&self.queue);
        if let Some((_, w)) = queue.iter_mut().find(|(i, _)| *i == id) {
            *w = waiter;
            return false;
        }
        queue.push_back((id, waiter));
        self.waiting.fetch_add(1, Ordering::SeqCst);
        drop(queue);
        if !(self.asymmetric && crate::rseq::fence_rseq().is_ok()) {
            fence(Ordering::SeqCst);
        }
        true
    }

    /// Removes registration `id`, if a waker did not.
    pub(super) fn unregister(&self, id: u64) {
        let mut queue = lock(&self.queue);
        if let Some(at) = queue.iter().position(|(i, _)| *i == id) {
            queue.remove(at);
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Called by a drop after it pushed its object: wakes the first waiter if any.
    #[inline(always)]
    pub(super) fn notify(&self) {
        if self.asymmetric {
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
        if self.waiting.load(Ordering::Relaxed) != 0 {
            self.wake_one();
        }
    }

    #[cold]
    #[inline(never)]
    fn wake_one(&self) {
        let first = {
            let mut queue = lock(&self.queue);
            let first = queue.pop_front();
            if first.is_some() {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
            }
            first
        };
        if let Some((_, w)) = first {
            w.wake();
        }
    }
}
