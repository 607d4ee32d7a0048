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

/// Called before a blocking call (`what`) registers to wait: panics where the wait
/// would deadlock a current-thread tokio runtime, before any state of the channel
/// changed. A no-op without feature `tokio`.
#[inline]
pub(super) fn check_may_block(what: &str) {
    #[cfg(all(feature = "tokio", not(loom)))]
    if let Ok(handle) = tokio::runtime::Handle::try_current()
        && handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread
    {
        // tokio's own judgement: panics in the runtime's thread, returns at once on
        // its blocking threads (`spawn_blocking`) and under `Handle::enter`.
        let allowed = std::panic::catch_unwind(|| tokio::task::block_in_place(|| ()));
        if allowed.is_err() {
            panic!(
                "percid::ring: {what} would block the thread that drives a \
                 current-thread tokio runtime, which deadlocks it: await the async \
                 form instead, or call it from spawn_blocking or another thread"
            );
        }
    }
    #[cfg(not(all(feature = "tokio", not(loom))))]
    let _ = what;
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
