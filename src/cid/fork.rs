//! The process-wide arenas across `fork()`.
//!
//! A child starts with the one thread that forked; a lock another thread held at
//! that moment stays held in the child forever. The arenas' allocation lock (every
//! new structure takes it) and the lane and simulated-unit locks (every section of a
//! thread without rseq, or of the simulated backend) would then hang the child's
//! first use. So, as `PerCidAlloc` does for its heap, the process-wide arenas
//! ([`super::global`], [`super::numa_global`]) are locked before a fork (`pthread_atfork`
//! prepare: the allocation lock, then every lane's and unit's lock) and released
//! after it in both processes. The handlers allocate nothing.
//!
//! `PerCidAlloc`'s heap locks are taken by the same handlers, after the arenas':
//! a thread that allocates while it holds an arena's lock then finishes before the
//! heap is locked (with two registrations the order would depend on which came
//! first, and the other order deadlocks).
//!
//! Not covered: arenas a program creates itself, and locks of individual structures
//! (a `PerCid` shard held inside `with`, a pool's drain, a channel's wait queues):
//! a child that uses a structure its parent's other threads were using inside such a
//! lock can still hang on it.

#[cfg(not(loom))]
mod imp {
    use crate::cid::Arena;
    use crate::cid::arena::State;
    use crate::sync::MutexGuard;
    use std::cell::UnsafeCell;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

    /// The arenas protected: the plain and the NUMA process-wide ones.
    static ARENAS: [AtomicPtr<Arena>; 2] = [
        AtomicPtr::new(std::ptr::null_mut()),
        AtomicPtr::new(std::ptr::null_mut()),
    ];

    /// Registration of the handlers, once.
    static REGISTERED: Mutex<bool> = Mutex::new(false);

    /// Whether the prepare handler took the heap's locks (only the forking thread
    /// reads and writes it, see `Held`).
    static HEAP_HELD: AtomicBool = AtomicBool::new(false);

    /// The guards the prepare handler took, for the parent and child handlers (the
    /// same thread, the forking one).
    struct Held(UnsafeCell<[Option<MutexGuard<'static, State>>; 2]>);

    // SAFETY: only the forking thread touches it, between its own prepare handler
    // and its own parent/child handler (fork is serialised by the caller's thread;
    // concurrent forks take the arenas' locks in turn, so the second prepare waits
    // until the first fork released them).
    unsafe impl Sync for Held {}

    static HELD: Held = Held(UnsafeCell::new([None, None]));

    /// Protects a process-wide arena across `fork()`.
    pub(crate) fn protect(arena: &'static Arena) {
        let ptr = arena as *const Arena as *mut Arena;
        if !ARENAS.iter().any(|a| a.load(Ordering::Acquire) == ptr)
            && let Some(slot) = ARENAS.iter().find(|a| a.load(Ordering::Acquire).is_null())
        {
            slot.store(ptr, Ordering::Release);
        }
        register();
    }

    /// Protects `PerCidAlloc`'s heap across `fork()` (called once it is set up).
    pub(crate) fn protect_heap() {
        register();
    }

    fn register() {
        let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
        if !*registered {
            // SAFETY: registers handlers that only take and release locks (no
            // allocation).
            unsafe { libc::pthread_atfork(Some(prepare), Some(release), Some(release)) };
            *registered = true;
        }
    }

    extern "C" fn prepare() {
        // SAFETY: see `Held`: this thread is the only one touching the guards.
        let held = unsafe { &mut *HELD.0.get() };
        for (slot, arena) in held.iter_mut().zip(&ARENAS) {
            let arena = arena.load(Ordering::Acquire);
            if !arena.is_null() {
                // SAFETY: registered arenas are the process-wide statics.
                *slot = Some(unsafe { &*arena }.lock_for_fork());
            }
        }
        HEAP_HELD.store(crate::alloc::fork_prepare(), Ordering::Relaxed);
    }

    extern "C" fn release() {
        // SAFETY: as in `prepare`.
        let held = unsafe { &mut *HELD.0.get() };
        if HEAP_HELD.swap(false, Ordering::Relaxed) {
            crate::alloc::fork_release();
        }
        for slot in held.iter_mut().rev() {
            if let Some(state) = slot.take() {
                Arena::unlock_after_fork(state);
            }
        }
    }
}

#[cfg(not(loom))]
pub(crate) use imp::{protect, protect_heap};

/// Under loom nothing forks.
#[cfg(loom)]
pub(crate) fn protect(_: &'static super::Arena) {}

/// Under loom nothing forks.
#[cfg(loom)]
pub(crate) fn protect_heap() {}
