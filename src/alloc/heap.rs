//! The process-wide heap every `PerCidAlloc` shares: the span reservation, the cid
//! caches' heads, the classes' shared state, and its set-up and `fork()` handling.

use super::class::CLASSES;
use super::debug::FreeMap;
use super::span::{Class, SPAN, SpanPool, SpanTable};
use crate::cid::{Arena, ThinCell, Word, Words};
use crate::rseq::registration::internal as guarded;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicUsize, Ordering};

/// Address space reserved for spans (tried in this order).
const RESERVATIONS: [usize; 3] = [64 << 30, 8 << 30, 1 << 30];

/// A spin lock in one word, for the heap's short critical sections (no allocation,
/// no system call while held, usable from `pthread_atfork` handlers).
pub(super) struct SpinLock(AtomicU32);

impl SpinLock {
    pub(super) const fn new() -> SpinLock {
        SpinLock(AtomicU32::new(0))
    }

    pub(super) fn lock(&self) {
        let mut round = 0u32;
        while !self.try_lock() {
            if round < 6 {
                for _ in 0..(1 << round) {
                    std::hint::spin_loop();
                }
                round += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Takes the lock if it is free (no spurious failure; sequentially consistent,
    /// for the decay's hand-over in `decay::settle`).
    pub(super) fn try_lock(&self) -> bool {
        self.0
            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    pub(super) fn unlock(&self) {
        self.0.store(0, Ordering::Release);
    }
}

const UNINIT: u8 = 0;
const INITIALIZING: u8 = 1;
const READY: u8 = 2;
const FAILED: u8 = 3;

/// The heap.
pub(super) struct Heap {
    state: AtomicU8,
    /// Freed and carved blocks are poisoned, handed-out ones checked (fixed when
    /// the heap is set up, by the allocator that sets it up).
    pub(super) poison: AtomicBool,
    /// The reservation: [base, base + len).
    base: AtomicUsize,
    len: AtomicUsize,
    /// Next never-used span.
    pub(super) bump: AtomicUsize,
    /// The cache heads (word `c` is class `c`'s), then the idle scan's snapshots of
    /// them (word `CLASSES + c`): a leaked `Words`.
    heads: AtomicUsize,
    /// The thin sections' operands (see `ThinCell`), on class 0's head word (class
    /// `c`'s is `c` words further): missing until the heap is ready, and for good
    /// with poisoning, whose handed-out and freed blocks must be checked.
    pub(super) thin: ThinCell,
    pub(super) free_map: FreeMap,
    pub(super) spans: SpanTable,
    pub(super) pool: SpanPool,
    pub(super) classes: [Class; CLASSES],
    /// One drainer of the caches at a time (the drain token is one value).
    pub(super) drain: SpinLock,
    /// One purger or idle scan at a time (taken with `try_lock`: nobody waits).
    pub(super) decay: SpinLock,
}

pub(super) static HEAP: Heap = Heap {
    state: AtomicU8::new(UNINIT),
    poison: AtomicBool::new(false),
    base: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    bump: AtomicUsize::new(0),
    heads: AtomicUsize::new(0),
    thin: ThinCell::missing(),
    free_map: FreeMap::new(),
    spans: SpanTable::new(),
    pool: SpanPool::new(),
    classes: [const { Class::new() }; CLASSES],
    drain: SpinLock::new(),
    decay: SpinLock::new(),
};

/// `fork()` with a heap lock held by another thread would leave the child a lock
/// nobody releases: before the fork every heap lock is taken (drain, decay, the
/// classes, then the span pool: the order the heap takes them), after it they are
/// released in both processes. The lane locks of the cache heads' chunk (threads
/// without rseq push and pop under them) are taken too. No heap lock is held across
/// a system call, so this never waits on one.
///
/// Called from the crate's `fork()` handlers (`cid/fork.rs`), after the arenas are
/// locked; returns whether it took the locks (the heap is set up).
pub(crate) fn fork_prepare() -> bool {
    if !HEAP.ready() {
        return false;
    }
    HEAP.drain.lock();
    HEAP.decay.lock();
    for class in &HEAP.classes {
        class.lock.lock();
    }
    HEAP.pool.lock.lock();
    for lock in HEAP.head(0).unit_locks() {
        crate::rseq::simulated::lock_word(lock);
    }
    true
}

/// Releases what [`fork_prepare`] took, in the parent and the child.
pub(crate) fn fork_release() {
    for lock in HEAP.head(0).unit_locks() {
        crate::rseq::simulated::unlock_word(lock);
    }
    HEAP.pool.lock.unlock();
    for class in HEAP.classes.iter().rev() {
        class.lock.unlock();
    }
    HEAP.decay.unlock();
    HEAP.drain.unlock();
}

impl Heap {
    #[inline(always)]
    pub(super) fn ready(&self) -> bool {
        self.state.load(Ordering::Acquire) == READY
    }

    /// Whether `ptr` lies in the span reservation (the heap is ready).
    #[inline(always)]
    pub(super) fn contains(&self, ptr: *mut u8) -> bool {
        let base = self.base.load(Ordering::Relaxed);
        (ptr as usize).wrapping_sub(base) < self.len.load(Ordering::Relaxed)
    }

    /// Offset of an address of ours into the reservation.
    #[inline(always)]
    pub(super) fn offset(&self, ptr: *mut u8) -> usize {
        ptr as usize - self.base.load(Ordering::Relaxed)
    }

    /// The span holding an address of ours.
    #[inline(always)]
    pub(super) fn span_of(&self, addr: usize) -> u32 {
        ((addr - self.base.load(Ordering::Relaxed)) / SPAN) as u32
    }

    /// The first byte of span `index`.
    #[inline(always)]
    pub(super) fn span_addr(&self, index: u32) -> usize {
        self.base.load(Ordering::Relaxed) + index as usize * SPAN
    }

    /// Spans ever taken from the reservation.
    pub(super) fn spans_used(&self) -> u32 {
        ((self.bump.load(Ordering::Relaxed) - self.base.load(Ordering::Relaxed)) / SPAN) as u32
    }

    #[inline(always)]
    fn words(&self) -> &'static Words<'static> {
        let words = self.heads.load(Ordering::Acquire) as *const Words<'static>;
        // SAFETY: `heads` is set (to a leaked, never freed `Words` of `2 × CLASSES`
        // words) before `state` becomes READY, which every caller checked.
        unsafe { &*words }
    }

    /// Class `class`'s cache heads.
    #[inline(always)]
    pub(super) fn head(&self, class: usize) -> Word<'static> {
        self.words().first().offset_by(class)
    }

    /// The idle scan's snapshot of class `class`'s heads.
    pub(super) fn snapshot(&self, class: usize) -> Word<'static> {
        self.words().first().offset_by(CLASSES + class)
    }

    /// Sets the heap up once; false when it cannot be (everything then goes to the
    /// system allocator).
    #[cold]
    pub(super) fn init(&self, poison: bool) -> bool {
        match self
            .state
            .compare_exchange(UNINIT, INITIALIZING, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {}
            Err(READY) => return true,
            Err(FAILED) => return false,
            Err(_) => {
                // Another thread is setting up: serve this request from the system.
                return false;
            }
        }
        self.poison.store(poison, Ordering::Relaxed);
        let ok = guarded(|| self.set_up());
        self.state
            .store(if ok { READY } else { FAILED }, Ordering::Release);
        if ok && !poison {
            self.thin.set(self.head(0).hot());
        }
        ok
    }

    /// Raises the thin sections' count after a slow path (see `ThinCell::refresh`;
    /// a cell that was set belongs to a ready heap, so its heads exist).
    #[inline]
    pub(super) fn refresh_thin(&self) {
        self.thin.refresh(|| self.head(0).hot().1);
    }

    fn set_up(&self) -> bool {
        let Some((base, len)) = RESERVATIONS.iter().find_map(|&len| reserve(len)) else {
            return false;
        };
        // Free lists pack a block's address in 48 bits: a reservation above that
        // (5-level paging handing out high addresses, tagged pointers) cannot hold
        // blocks, and the heap stays off (everything goes to the system allocator).
        if (base + len) as u64 > crate::rseq::spec::LIST_NODE_MASK + 1 {
            return false;
        }
        if !self.spans.set_up(len / SPAN) {
            return false;
        }
        // Sized without `process()`: the first allocation of a process may come from
        // inside percid's own discovery. Indexes beyond the capacity use the lanes.
        // SAFETY: sysconf has no preconditions.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.clamp(1, 1 << 16) as u32;
        // The arena's own bookkeeping allocates: under the guard, from the system.
        let arena: &'static Arena = Box::leak(Box::new(Arena::with_capacity(cpus.max(64), cpus)));
        let Ok(words) = arena.alloc(2 * CLASSES) else {
            return false;
        };
        let words: &'static Words<'static> = Box::leak(Box::new(words));
        if self.poison.load(Ordering::Relaxed) {
            self.free_map.set_up(len);
        }
        self.base.store(base, Ordering::Relaxed);
        self.len.store(len, Ordering::Relaxed);
        self.bump.store(base, Ordering::Relaxed);
        self.heads
            .store(words as *const Words<'static> as usize, Ordering::Release);
        // The crate's fork handlers take the heap's locks (after the arenas').
        crate::cid::fork_protect_heap();
        super::decay::set_up_exit_key();
        // The idle scan and `trim` fence: register now, not while a lock is held.
        let _ = crate::rseq::fence_available();
        true
    }

    /// A never-used span, committed; `None` when the reservation is used up.
    pub(super) fn fresh_span(&self) -> Option<u32> {
        let end = self.base.load(Ordering::Relaxed) + self.len.load(Ordering::Relaxed);
        // Never past the end: `committed_bytes` reads the bump.
        let span = self
            .bump
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b + SPAN <= end).then_some(b + SPAN)
            })
            .ok()?;
        // SAFETY: the span lies in our PROT_NONE reservation, not yet handed out.
        let rc = unsafe {
            libc::mprotect(
                span as *mut libc::c_void,
                SPAN,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        (rc == 0).then(|| self.span_of(span))
    }
}

/// Reserves `len` bytes of address space (no access, no commit charge): the
/// span-aligned part of the mapping, as (start, length in whole spans).
fn reserve(len: usize) -> Option<(usize, usize)> {
    // SAFETY: an anonymous private mapping, checked below.
    let map = unsafe {
        libc::mmap(
            null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return None;
    }
    // Spans must be SPAN-aligned (block alignment): skip the front, and count only
    // whole spans that lie inside the mapping.
    let start = map as usize;
    let aligned = start.next_multiple_of(SPAN);
    let usable = (start + len).saturating_sub(aligned) & !(SPAN - 1);
    Some((aligned, usable)).filter(|&(_, usable)| usable >= SPAN)
}
