//! The simulated backend: rseq's guarantee in plain Rust, for loom, fuzzing and a
//! whole-suite test mode (`PERCID_BACKEND=simulated`).
//!
//! Each simulated index ("cid") has a generation word and a commit lock in the header
//! of its arena unit. A section *begins* by bumping the generation under the lock,
//! which aborts every other section in flight on that cid, as a context switch on a
//! CPU aborts the section it interrupts. Every later step that touches shared memory
//! (a load, a slot copy, the commit) runs under the same lock and only while the
//! generation is still the section's own, so a section that lost its cid never acts
//! again — as a preempted thread never runs another instruction of its section — and
//! the commit is atomic with respect to the other sections of its cid, exactly like
//! the single committing instruction. Steps may also abort on purpose (an injected
//! abort rate).
//!
//! A thread's cid and node come from thread-local settings that tests inject:
//! [`crate::testing`] moves a thread between cids and nodes at will.

// loom's `thread_local!` has no `const` form, so the model thread-locals have none.
#![allow(clippy::missing_const_for_thread_local)]

use super::spec::{Aborted, Section};
use crate::sync::{AtomicU64, Ordering, backoff};
use std::cell::Cell;

#[cfg(not(loom))]
use std::thread_local as model_thread_local;

#[cfg(loom)]
use loom::thread_local as model_thread_local;

/// Cids used when a thread was given none: the thread's ordinal modulo this.
const DEFAULT_CIDS: u32 = 2;

model_thread_local! {
    static CID: Cell<Option<u32>> = Cell::new(None);
    static NODE: Cell<u32> = Cell::new(0);
    /// Aborts injected per 1024 steps.
    static ABORT_RATE: Cell<Option<u32>> = Cell::new(None);
    static RNG: Cell<u64> = Cell::new(0);
}

/// How many simulated cids threads are spread over by default (`PERCID_SIM_CIDS`).
pub(crate) fn default_cids() -> u32 {
    #[cfg(not(loom))]
    {
        // Not a `OnceLock`: a child forked while another thread was reading it
        // would wait forever (0: not read yet; racing readers store the same value).
        static CIDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        match CIDS.load(std::sync::atomic::Ordering::Relaxed) {
            0 => {
                let cids = std::env::var("PERCID_SIM_CIDS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(DEFAULT_CIDS)
                    .clamp(1, 64);
                CIDS.store(cids, std::sync::atomic::Ordering::Relaxed);
                cids
            }
            cids => cids,
        }
    }
    #[cfg(loom)]
    {
        DEFAULT_CIDS
    }
}

/// The calling thread's simulated cid.
pub(crate) fn thread_cid() -> u32 {
    CID.with(|c| match c.get() {
        Some(cid) => cid,
        None => {
            let cid = default_cid();
            c.set(Some(cid));
            cid
        }
    })
}

#[cfg(not(loom))]
fn default_cid() -> u32 {
    // Not a model object: the ordinal only spreads threads over cids.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % default_cids()
}

#[cfg(loom)]
fn default_cid() -> u32 {
    // Deterministic under loom: tests place threads explicitly.
    0
}

/// The calling thread's simulated NUMA node.
pub(crate) fn thread_node() -> u32 {
    NODE.with(Cell::get)
}

/// Moves the calling thread to `cid` (its next section runs there).
#[cfg(any(test, loom, feature = "testing"))]
pub(crate) fn set_thread_cid(cid: u32) {
    CID.with(|c| c.set(Some(cid)));
}

/// Moves the calling thread to NUMA node `node`.
#[cfg(any(test, loom, feature = "testing"))]
pub(crate) fn set_thread_node(node: u32) {
    NODE.with(|c| c.set(node));
}

/// Sets how many steps in 1024 abort on purpose for the calling thread.
#[cfg(any(test, loom, feature = "testing"))]
pub(crate) fn set_abort_rate(per_1024: u32) {
    ABORT_RATE.with(|c| c.set(Some(per_1024.min(1024))));
}

/// Restarts the calling thread's abort generator from `seed`, so a run (a fuzz
/// input) sees the same aborts every time.
#[cfg(any(test, loom, feature = "testing"))]
pub(crate) fn seed_aborts(seed: u64) {
    RNG.with(|r| r.set(seed));
}

fn abort_rate() -> u32 {
    ABORT_RATE.with(|c| match c.get() {
        Some(rate) => rate,
        // Under loom the interleavings provide the aborts; elsewhere inject some so
        // every retry path runs in the simulated test mode.
        None if cfg!(loom) => 0,
        None => 16,
    })
}

/// An injected abort, drawn from a per-thread xorshift generator.
fn injected_abort() -> bool {
    let rate = abort_rate();
    if rate == 0 {
        return false;
    }
    RNG.with(|r| {
        let mut x = r.get();
        if x == 0 {
            x = (r as *const Cell<u64> as u64) | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        (x % 1024) < u64::from(rate)
    })
}

/// One section on one simulated cid.
pub(crate) struct SimSection<'a> {
    generation: &'a AtomicU64,
    lock: &'a AtomicU64,
    mine: u64,
}

impl<'a> SimSection<'a> {
    /// Begins a section on the cid whose header holds `generation` and `lock`,
    /// aborting every section in flight there.
    pub(crate) fn begin(generation: &'a AtomicU64, lock: &'a AtomicU64) -> Self {
        lock_word(lock);
        let mine = generation.load(Ordering::Relaxed).wrapping_add(1);
        generation.store(mine, Ordering::Relaxed);
        unlock_word(lock);
        SimSection {
            generation,
            lock,
            mine,
        }
    }

    /// Runs one step of the section, atomically with respect to the other sections
    /// of the cid: under the commit lock, and only while no other section has begun
    /// since this one did. A thread that loses its CPU never runs another instruction
    /// of its section; here a section that lost its cid never touches shared memory
    /// again.
    fn guarded<R>(&self, step: impl FnOnce() -> R) -> Result<R, Aborted> {
        if injected_abort() {
            return Err(Aborted);
        }
        lock_word(self.lock);
        let current = self.generation.load(Ordering::Relaxed) == self.mine;
        let result = current.then(step);
        unlock_word(self.lock);
        result.ok_or(Aborted)
    }
}

impl Section for SimSection<'_> {
    fn load(&mut self, word: &AtomicU64) -> Result<u64, Aborted> {
        self.guarded(|| word.load(Ordering::Acquire))
    }

    fn store_private(&mut self, word: &AtomicU64, value: u64) -> Result<(), Aborted> {
        // The caller's own memory: no other section can reach it.
        if injected_abort() {
            return Err(Aborted);
        }
        word.store(value, Ordering::Relaxed);
        Ok(())
    }

    unsafe fn copy_private(
        &mut self,
        dst: *mut u8,
        src: *const u8,
        len: usize,
    ) -> Result<(), Aborted> {
        // The slot is only this cid's until the tail moves: another section of the
        // cid may copy into it too, so the copy is a guarded step.
        // SAFETY: forwarded from the caller.
        self.guarded(|| unsafe { core::ptr::copy_nonoverlapping(src, dst, len) })
    }

    fn commit(&mut self, word: &AtomicU64, value: u64) -> Result<(), Aborted> {
        self.guarded(|| word.store(value, Ordering::Release))
    }
}

/// Takes a spin lock held in a word (0 free, 1 held), yielding to a preempted holder.
pub(crate) fn lock_word(word: &AtomicU64) {
    let mut round = 0;
    while word
        .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        backoff(&mut round);
    }
}

/// Releases a lock taken by [`lock_word`].
pub(crate) fn unlock_word(word: &AtomicU64) {
    word.store(0, Ordering::Release);
}
