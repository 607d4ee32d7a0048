//! The one facade through which percid gets atomics, cells, locks and threads.
//!
//! Every concurrent module imports from here, never from `std::sync` directly, so
//! that `RUSTFLAGS="--cfg loom"` swaps the whole crate onto loom's model-checked
//! primitives (the pattern of tokio's `src/loom/` and sharded-slab's `sync.rs`).

#[cfg(not(loom))]
mod imp {
    pub(crate) use std::hint::spin_loop;
    pub(crate) use std::sync::atomic::{
        AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering, fence,
    };
    pub(crate) use std::sync::{Arc, Mutex, MutexGuard};
    pub(crate) use std::thread::{
        Thread, current as current_thread, park, park_timeout, yield_now,
    };
}

#[cfg(loom)]
mod imp {
    pub(crate) use loom::hint::spin_loop;
    pub(crate) use loom::sync::atomic::{
        AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering, fence,
    };
    pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
    pub(crate) use loom::thread::{Thread, current as current_thread, park, yield_now};

    /// Loom has no timed park: a yield is a spurious wake-up, which every caller
    /// of a timed park handles (the models use no deadlines).
    pub(crate) fn park_timeout(_: std::time::Duration) {
        yield_now();
    }
}

pub(crate) use imp::*;

/// Spins a few times, then yields: the wait used wherever a holder may be preempted
/// (a lane lock, a per-cid lock), so an oversubscribed machine does not burn its
/// time slice on a holder that is not running.
#[inline]
pub(crate) fn backoff(round: &mut u32) {
    if *round < 6 {
        for _ in 0..(1u32 << *round) {
            spin_loop();
        }
        *round += 1;
    } else {
        yield_now();
    }
}
