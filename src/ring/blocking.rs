//! How a thread waits on a ring: parking, with a deadline, and the check that it
//! may block where it runs.

use crate::sync::{park, park_timeout};
use std::time::Instant;

/// Parks the thread until it is unparked (or spuriously woken), or until
/// `deadline`; false when the deadline has passed already (the caller gives up).
pub(super) fn park_until(deadline: Option<Instant>) -> bool {
    match deadline {
        None => {
            may_block(park);
            true
        }
        Some(deadline) => {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            may_block(|| park_timeout(deadline - now));
            true
        }
    }
}

/// Runs a wait that blocks the thread. With feature `tokio`, inside a tokio
/// runtime's context it runs inside `tokio::task::block_in_place`, tokio's own
/// judgement of where a thread may block: on a multi-thread runtime's worker the
/// runtime first hands the worker's other tasks to another thread; on a
/// current-thread runtime, where the wait would deadlock the runtime, tokio panics
/// ("can call blocking only when running on the multi-threaded runtime"); on the
/// runtime's blocking threads (`spawn_blocking`) and outside any runtime it just
/// waits.
#[inline]
fn may_block<R>(wait: impl FnOnce() -> R) -> R {
    #[cfg(all(feature = "tokio", not(loom)))]
    if tokio::runtime::Handle::try_current().is_ok() {
        return tokio::task::block_in_place(wait);
    }
    wait()
}
