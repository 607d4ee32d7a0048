//! [`PerCidAlloc`]: a small-object allocator on per-cid free lists, usable as the
//! `#[global_allocator]`.
//!
//! # Design
//!
//! * **Size classes** from 16 B to 32 KiB: multiples of 16 up to 128, then four
//!   classes per power of two (160, 192, 224, 256, 320, ...). A request is served by
//!   the smallest class that holds its size and whose size is a multiple of its
//!   alignment; larger or more aligned requests go to the system allocator.
//! * Every class has a **cache per cid**: a free list whose head is one word per cid
//!   in a [`crate::cid`] arena, popped and pushed with the `list_pop` / `list_push`
//!   critical sections. A free block's first word is its list link. The fast paths
//!   are one rseq section each: no atomic read-modify-write, no lock.
//! * A cache holds at most a class-dependent number of blocks (64 KiB worth, 4 to
//!   256 blocks). Frees to a full cache move half of it to the class's **depot**
//!   (a spin lock and a stack of chains linked through the blocks' second word);
//!   allocations from an empty cache take a chain back, or carve new blocks from the
//!   class's current **span** (256 KiB, committed with `mprotect` from one large
//!   `PROT_NONE` reservation, so address space costs no commit charge).
//! * `dealloc` tells its blocks from the system allocator's by address (inside the
//!   reservation or not) and finds the class from the `Layout`, which `GlobalAlloc`
//!   guarantees is the one the block was allocated with: no header per block.
//!
//! # Never through itself
//!
//! The allocator's own set-up (the reservation, the cache heads in a dedicated
//! arena, the process facts percid discovers on first use) and a thread's first
//! resolution of its rseq registration may allocate. Those run with a thread-local
//! guard set: an allocation that comes back into `PerCidAlloc` while the guard is
//! set goes to the system allocator (and its free, by address, goes back there).
//! The guard is a `const` thread-local without a destructor, usable during thread
//! start, exit and TLS teardown; a thread without rseq uses the portable lanes.
//!
//! # Debug checks
//!
//! [`PerCidAlloc::with_poisoning`] (and every debug build) fills freed blocks, past
//! their two link words, with a pattern and checks it when the block is handed out
//! again: a write after free aborts the process with a message. It also keeps a bit
//! per 16 bytes of the spans (set while a block is free, in a reserved map whose
//! pages are committed as spans are used) and aborts with a message on a second free
//! of a block.
//!
//! # Large blocks
//!
//! Requests beyond the classes go to the system allocator, and so do their
//! `alloc_zeroed` (calloc's lazily zeroed pages: a `vec![0u8; 1 << 30]` costs
//! nothing until written) and `realloc` (glibc grows a large block in place or moves
//! its pages with `mremap` instead of copying).
//!
//! # `allocator-api2`
//!
//! With feature `allocator-api2`, `PerCidAlloc` implements the `Allocator` trait of
//! allocator-api2 **0.2** (the version hashbrown uses), re-exported as
//! `percid::alloc::allocator_api2` so a program can name the
//! same version (`cargo add allocator-api2` picks a newer, incompatible one).

use crate::cid::list::{self, first as chain_node, len as chain_len, pack};
use crate::cid::{Arena, ListFull, Word, Words};
use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

#[cfg(feature = "allocator-api2")]
pub use allocator_api2;

/// Number of size classes.
pub const CLASSES: usize = 40;
/// Largest request served from the size classes.
pub const MAX_SMALL: usize = 32 * 1024;
/// Bytes committed at a time for a class's blocks.
const SPAN: usize = 256 * 1024;
/// Address space reserved for spans (tried in this order).
const RESERVATIONS: [usize; 3] = [64 << 30, 8 << 30, 1 << 30];
const POISON: u8 = 0xdb;

/// Size of class `class` in bytes.
pub const fn class_size(class: usize) -> usize {
    if class < 8 {
        (class + 1) * 16
    } else {
        let j = class - 8;
        let k = 7 + j / 4;
        (4 + j % 4 + 1) << (k - 2)
    }
}

/// The class of a request of `size` bytes aligned to at most 16.
#[inline(always)]
fn class_of_size(size: usize) -> usize {
    let s = size.max(1) - 1;
    if s < 128 {
        s >> 4
    } else {
        let k = (usize::BITS - 1 - s.leading_zeros()) as usize;
        8 + (k - 7) * 4 + (s >> (k - 2)) - 4
    }
}

/// The class serving `layout`, or `None` for the system allocator.
#[inline(always)]
pub fn class_of(layout: Layout) -> Option<usize> {
    let (size, align) = (layout.size(), layout.align());
    if size > MAX_SMALL {
        return None;
    }
    if align <= 16 {
        return Some(class_of_size(size));
    }
    if align > MAX_SMALL {
        return None;
    }
    let mut class = class_of_size(size.max(align));
    while class < CLASSES {
        if class_size(class).is_multiple_of(align) {
            return Some(class);
        }
        class += 1;
    }
    None
}

/// Blocks a class's cache holds at most: 64 KiB worth, between 4 and 256.
const fn cache_capacity(class: usize) -> u16 {
    let n = (64 * 1024) / class_size(class);
    if n < 4 {
        4
    } else if n > 256 {
        256
    } else {
        n as u16
    }
}

use crate::rseq::registration::{in_internal, internal as guarded};

/// A spin lock in one word, for the heap's short critical sections (no allocation,
/// usable from `pthread_atfork` handlers).
struct SpinLock(AtomicU32);

impl SpinLock {
    const fn new() -> SpinLock {
        SpinLock(AtomicU32::new(0))
    }

    fn lock(&self) {
        let mut round = 0u32;
        while self
            .0
            .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
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

    fn unlock(&self) {
        self.0.store(0, Ordering::Release);
    }
}

/// One class's shared state.
struct Class {
    lock: SpinLock,
    /// Top chain of the depot (packed: address | length << 48), 0 when empty; each
    /// chain's first block holds the next chain in its second word.
    depot: AtomicU64,
    /// The span blocks are carved from: next block and end.
    carve: AtomicUsize,
    carve_end: AtomicUsize,
}

impl Class {
    const fn new() -> Class {
        Class {
            lock: SpinLock::new(),
            depot: AtomicU64::new(0),
            carve: AtomicUsize::new(0),
            carve_end: AtomicUsize::new(0),
        }
    }

    fn lock(&self) {
        self.lock.lock();
    }

    fn unlock(&self) {
        self.lock.unlock();
    }
}

const UNINIT: u8 = 0;
const INITIALIZING: u8 = 1;
const READY: u8 = 2;
const FAILED: u8 = 3;

/// The process-wide heap every `PerCidAlloc` shares.
struct Heap {
    state: AtomicU8,
    /// Freed and carved blocks are poisoned, handed-out ones checked (fixed when
    /// the heap is set up, by the allocator that sets it up).
    poison: AtomicBool,
    /// The reservation: [base, base + len).
    base: AtomicUsize,
    len: AtomicUsize,
    /// Next uncommitted span.
    bump: AtomicUsize,
    /// The cache heads: word `c` is class `c`'s (a leaked `Words`).
    heads: AtomicUsize,
    /// With poisoning: a bit per 16 bytes of the reservation, set while the block
    /// starting there is free (a `MAP_NORESERVE` mapping, 0 when absent): a second
    /// free of a block finds its bit set.
    free_map: AtomicUsize,
    classes: [Class; CLASSES],
    /// One drainer at a time (the drain token is one value).
    trim: SpinLock,
}

static HEAP: Heap = Heap {
    state: AtomicU8::new(UNINIT),
    poison: AtomicBool::new(false),
    base: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    bump: AtomicUsize::new(0),
    heads: AtomicUsize::new(0),
    free_map: AtomicUsize::new(0),
    classes: [const { Class::new() }; CLASSES],
    trim: SpinLock::new(),
};

/// `fork()` with a heap lock held by another thread would leave the child a lock
/// nobody releases: before the fork every heap lock is taken (trim first, then the
/// classes, the order `trim` takes them), after it they are released in both
/// processes.
/// The lane locks of the cache heads' chunk (threads without rseq push and pop under
/// them) are taken too.
///
/// Called from the crate's `fork()` handlers (`cid/fork.rs`), after the arenas are
/// locked; returns whether it took the locks (the heap is set up).
pub(crate) fn fork_prepare() -> bool {
    if !HEAP.ready() {
        return false;
    }
    HEAP.trim.lock();
    for class in &HEAP.classes {
        class.lock();
    }
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
    for class in HEAP.classes.iter().rev() {
        class.unlock();
    }
    HEAP.trim.unlock();
}

impl Heap {
    #[inline(always)]
    fn ready(&self) -> bool {
        self.state.load(Ordering::Acquire) == READY
    }

    /// Whether `ptr` lies in the span reservation (the heap is ready).
    #[inline(always)]
    fn contains(&self, ptr: *mut u8) -> bool {
        let base = self.base.load(Ordering::Relaxed);
        (ptr as usize).wrapping_sub(base) < self.len.load(Ordering::Relaxed)
    }

    #[inline(always)]
    fn head(&self, class: usize) -> Word<'static> {
        let words = self.heads.load(Ordering::Acquire) as *const Words<'static>;
        // SAFETY: `heads` is set (to a leaked, never freed `Words` of `CLASSES`
        // words) before `state` becomes READY, which the caller checked.
        unsafe { (*words).first().offset_by(class) }
    }

    /// Sets the heap up once; false when it cannot be (everything then goes to the
    /// system allocator).
    #[cold]
    fn init(&self, poison: bool) -> bool {
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
        ok
    }

    fn set_up(&self) -> bool {
        let Some((base, len)) = RESERVATIONS.iter().find_map(|&len| reserve(len)) else {
            return false;
        };
        // Sized without `process()`: the first allocation of a process may come from
        // inside percid's own discovery. Indexes beyond the capacity use the lanes.
        // SAFETY: sysconf has no preconditions.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.clamp(1, 1 << 16) as u32;
        // The arena's own bookkeeping allocates: under the guard, from the system.
        let arena: &'static Arena = Box::leak(Box::new(Arena::with_capacity(cpus.max(64), cpus)));
        let Ok(words) = arena.alloc(CLASSES) else {
            return false;
        };
        let words: &'static Words<'static> = Box::leak(Box::new(words));
        if self.poison.load(Ordering::Relaxed) {
            // SAFETY: an anonymous private mapping, checked below; pages are
            // committed as the spans they describe are used.
            let map = unsafe {
                libc::mmap(
                    null_mut(),
                    len / 128,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if map != libc::MAP_FAILED {
                self.free_map.store(map as usize, Ordering::Relaxed);
            }
        }
        self.base.store(base, Ordering::Relaxed);
        self.len.store(len, Ordering::Relaxed);
        self.bump.store(base, Ordering::Relaxed);
        self.heads
            .store(words as *const Words<'static> as usize, Ordering::Release);
        // The crate's fork handlers take the heap's locks (after the arenas').
        crate::cid::fork_protect_heap();
        true
    }

    /// A fresh span, committed; 0 when the reservation is used up.
    fn new_span(&self) -> usize {
        let end = self.base.load(Ordering::Relaxed) + self.len.load(Ordering::Relaxed);
        // Never past the end: `committed_bytes` reads the bump.
        let Ok(span) = self
            .bump
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b + SPAN <= end).then_some(b + SPAN)
            })
        else {
            return 0;
        };
        // SAFETY: the span lies in our PROT_NONE reservation, not yet handed out.
        let rc = unsafe {
            libc::mprotect(
                span as *mut libc::c_void,
                SPAN,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc == 0 { span } else { 0 }
    }

    /// A chain of free blocks of `class` (at least one), from the depot or newly
    /// carved; 0 when memory is exhausted.
    fn take_chain(&self, class: usize) -> u64 {
        let c = &self.classes[class];
        c.lock();
        let top = c.depot.load(Ordering::Relaxed);
        if top != 0 {
            // SAFETY: depot chains are free blocks of this class; the second word of
            // a chain's first block links to the next chain.
            let next = unsafe { *((chain_node(top) + 8) as *const u64) };
            c.depot.store(next, Ordering::Relaxed);
            c.unlock();
            return top;
        }
        let chain = self.carve(class);
        c.unlock();
        chain
    }

    /// Carves up to a batch of new blocks (lock held).
    fn carve(&self, class: usize) -> u64 {
        let c = &self.classes[class];
        let size = class_size(class);
        let batch = u64::from(cache_capacity(class) / 2).max(1);
        let mut next = c.carve.load(Ordering::Relaxed);
        let mut end = c.carve_end.load(Ordering::Relaxed);
        if next + size > end {
            let span = self.new_span();
            if span == 0 {
                return 0;
            }
            next = span;
            end = span + SPAN;
            c.carve_end.store(end, Ordering::Relaxed);
        }
        let n = (((end - next) / size) as u64).min(batch);
        // Link the blocks back to front: block i's link is the rest of the chain.
        let mut chain = 0u64;
        for i in (0..n as usize).rev() {
            let block = next + i * size;
            if self.poison.load(Ordering::Relaxed) {
                poison(block as *mut u8, class);
            }
            // SAFETY: a fresh block of a committed span, owned by the carver.
            unsafe { *(block as *mut u64) = chain };
            chain = pack(block, n - i as u64);
        }
        c.carve.store(next + n as usize * size, Ordering::Relaxed);
        chain
    }

    /// The free-map word and bit of a block of ours (`None` without the map).
    #[inline]
    fn free_bit(&self, block: *mut u8) -> Option<(&AtomicU64, u64)> {
        let map = self.free_map.load(Ordering::Relaxed);
        if map == 0 {
            return None;
        }
        let index = (block as usize - self.base.load(Ordering::Relaxed)) / 16;
        // SAFETY: the map covers the reservation, a bit per 16 bytes, and lives as
        // long as the process.
        let word = unsafe { &*((map + index / 64 * 8) as *const AtomicU64) };
        Some((word, 1 << (index % 64)))
    }

    /// Records a free of a block of ours; aborts when it was free already.
    fn mark_free(&self, block: *mut u8, size: usize) {
        if let Some((word, bit)) = self.free_bit(block)
            && word.fetch_or(bit, Ordering::AcqRel) & bit != 0
        {
            let msg =
                format_args!("percid::alloc: double free of the {size}-byte block at {block:p}\n");
            let _ = std::io::Write::write_fmt(&mut std::io::stderr(), msg);
            std::process::abort();
        }
    }

    /// Records that a block of ours is handed out.
    fn mark_used(&self, block: *mut u8) {
        if let Some((word, bit)) = self.free_bit(block) {
            word.fetch_and(!bit, Ordering::AcqRel);
        }
    }

    /// Pushes a chain on the class's depot.
    fn give_chain(&self, class: usize, chain: u64) {
        let c = &self.classes[class];
        c.lock();
        // SAFETY: the chain's blocks are ours; its first block's second word is free.
        unsafe { *((chain_node(chain) + 8) as *mut u64) = c.depot.load(Ordering::Relaxed) };
        c.depot.store(chain, Ordering::Relaxed);
        c.unlock();
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

/// A small-object allocator on per-cid caches (see the [module docs](self)).
///
/// ```no_run
/// use percid::alloc::PerCidAlloc;
///
/// #[global_allocator]
/// static ALLOC: PerCidAlloc = PerCidAlloc::new();
///
/// fn main() {
///     let v: Vec<u64> = (0..1000).collect(); // from the 8 KiB class of this cid
///     assert_eq!(v.iter().sum::<u64>(), 499_500);
/// }
/// ```
#[derive(Debug)]
pub struct PerCidAlloc {
    poison: bool,
}

/// The same as [`PerCidAlloc::new`] (poisoning in debug builds).
impl Default for PerCidAlloc {
    fn default() -> Self {
        PerCidAlloc::new()
    }
}

impl PerCidAlloc {
    /// The allocator; poisoning of freed blocks is on in debug builds only.
    pub const fn new() -> PerCidAlloc {
        PerCidAlloc {
            poison: cfg!(debug_assertions),
        }
    }

    /// The allocator with freed blocks poisoned and checked, and double frees
    /// detected (see the module docs).
    ///
    /// Every `PerCidAlloc` of a process shares one heap, and the first one used sets
    /// it up: an allocator whose poisoning differs from the heap's aborts the process
    /// with a message the first time it takes a slow path, rather than silently
    /// working in the other mode. [`PerCidAlloc::poisoning`] says which mode the heap
    /// runs in.
    pub const fn with_poisoning() -> PerCidAlloc {
        PerCidAlloc { poison: true }
    }

    /// Whether the shared heap poisons freed blocks (`None` before it is set up).
    pub fn poisoning(&self) -> Option<bool> {
        HEAP.ready().then(|| HEAP.poison.load(Ordering::Relaxed))
    }

    /// Aborts when this allocator's poisoning differs from the shared heap's (an
    /// allocator never panics: it may run where unwinding cannot).
    #[cold]
    fn check_mode(&self) {
        if HEAP.ready() && HEAP.poison.load(Ordering::Relaxed) != self.poison {
            let msg = format_args!(
                "percid::alloc: a PerCidAlloc with poisoning {} used on a heap set up with \
                 poisoning {}: every PerCidAlloc of a process shares one heap; use one mode\n",
                if self.poison { "on" } else { "off" },
                if self.poison { "off" } else { "on" },
            );
            let _ = std::io::Write::write_fmt(&mut std::io::stderr(), msg);
            std::process::abort();
        }
    }

    /// Moves every block parked in the cid caches to the class depots, so that
    /// threads on other cids reuse them. Costs an rseq fence per non-empty cache.
    pub fn trim(&self) {
        if !HEAP.ready() {
            return;
        }
        self.check_mode();
        HEAP.trim.lock();
        guarded(|| {
            for class in 0..CLASSES {
                list::drain(HEAP.head(class), |chain| HEAP.give_chain(class, chain));
            }
        });
        HEAP.trim.unlock();
    }

    /// Blocks parked in the cid caches of every class (a racy snapshot).
    pub fn cached_blocks(&self) -> usize {
        if !HEAP.ready() {
            return 0;
        }
        (0..CLASSES)
            .map(|class| list::cached(HEAP.head(class)) as usize)
            .sum()
    }

    /// Bytes of spans committed so far.
    pub fn committed_bytes(&self) -> usize {
        if !HEAP.ready() {
            return 0;
        }
        HEAP.bump.load(Ordering::Relaxed) - HEAP.base.load(Ordering::Relaxed)
    }

    #[cold]
    #[inline(never)]
    unsafe fn alloc_slow(&self, layout: Layout, class: usize) -> *mut u8 {
        if in_internal() || !HEAP.init(self.poison) {
            // SAFETY: forwarded from the caller (a valid, non-zero-size layout).
            return unsafe { System.alloc(layout) };
        }
        self.check_mode();
        guarded(|| {
            // A thread's first section resolves its registration (which may
            // allocate): under the guard.
            let head = HEAP.head(class);
            // SAFETY: see `pop`.
            if let Some((node, _)) = unsafe { head.list_pop() } {
                return checked(node as *mut u8, class);
            }
            let chain = HEAP.take_chain(class);
            if chain == 0 {
                // SAFETY: as above.
                return unsafe { System.alloc(layout) };
            }
            let first = chain_node(chain);
            // SAFETY: the chain is ours: its blocks are free blocks of `class`.
            let rest = unsafe { *(first as *const u64) };
            if chain_len(rest) > 0 {
                install(head, class, rest);
            }
            checked(first as *mut u8, class)
        })
    }

    #[cold]
    #[inline(never)]
    fn spill(&self, class: usize, block: usize) {
        self.check_mode();
        guarded(|| {
            let head = HEAP.head(class);
            let batch = u64::from(cache_capacity(class) / 2).max(1);
            // SAFETY: the block is ours.
            unsafe { *(block as *mut u64) = 0 };
            let mut chain = pack(block, 1);
            while chain_len(chain) < batch {
                // SAFETY: see `pop`.
                let Some((node, _)) = (unsafe { head.list_pop() }) else {
                    break;
                };
                // SAFETY: a popped block is ours.
                unsafe { *(node as *mut u64) = chain };
                chain = pack(node, chain_len(chain) + 1);
            }
            HEAP.give_chain(class, chain);
        });
    }
}

/// Fills a free block past its two link words with the poison pattern.
fn poison(block: *mut u8, class: usize) {
    let size = class_size(class);
    if size > 16 {
        // SAFETY: the block is ours and `size` bytes long.
        unsafe { std::ptr::write_bytes(block.add(16), POISON, size - 16) };
    }
}

/// Aborts unless a block about to be handed out still holds the poison pattern.
fn check_poison(block: *mut u8, class: usize) {
    let size = class_size(class);
    if size <= 16 {
        return;
    }
    // SAFETY: the block is ours and `size` bytes long.
    let bytes = unsafe { std::slice::from_raw_parts(block.add(16), size - 16) };
    if let Some(at) = bytes.iter().position(|&b| b != POISON) {
        // Not a panic: this runs inside the allocator.
        let msg = format_args!(
            "percid::alloc: a freed {size}-byte block at {block:p} was written after free (byte {})\n",
            at + 16
        );
        let _ = std::io::Write::write_fmt(&mut std::io::stderr(), msg);
        std::process::abort();
    }
}

/// Installs the chain `rest` in the caller's cache (one section when it is empty),
/// slot by slot otherwise; what does not fit goes back to the depot.
fn install(head: Word<'static>, class: usize, mut rest: u64) {
    if head.compare_store(0, rest).is_ok() {
        return;
    }
    let cap = cache_capacity(class);
    while chain_len(rest) > 0 {
        let node = chain_node(rest);
        // SAFETY: the chain's blocks are ours.
        let next = unsafe { *(node as *const u64) };
        // SAFETY: `node` is a free block of this class (8-byte aligned, a user-space
        // address) that we own; the lists hold only this class's free blocks.
        if let Err(ListFull) = unsafe { head.list_push(node, cap) } {
            // An aborted attempt may have overwritten the link: relink.
            // SAFETY: the block is still ours.
            unsafe { *(node as *mut u64) = next };
            break;
        }
        rest = next;
    }
    if chain_len(rest) > 0 {
        HEAP.give_chain(class, rest);
    }
}

// SAFETY: every block handed out is `class_size(class)` bytes, at least the layout's
// size, aligned to the layout (classes are chosen so), and owned by one caller until
// it is freed; frees go back to where the block came from (by address).
unsafe impl GlobalAlloc for PerCidAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            // SAFETY: forwarded from the caller.
            return unsafe { System.alloc(layout) };
        };
        if HEAP.ready() && !in_internal() && crate::rseq::registration::thread_resolved() {
            // SAFETY: every node on a class's lists is a free block of that class,
            // inside committed spans that are never unmapped, and only list
            // operations (or a drainer that owns a list) write heads and links.
            if let Some((node, _)) = unsafe { HEAP.head(class).list_pop() } {
                return checked(node as *mut u8, class);
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.alloc_slow(layout, class) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Ready first: `base` and `len` are published before the ready state.
        if !(HEAP.ready() && HEAP.contains(ptr)) {
            // SAFETY: not ours, so the system allocator's, with this layout.
            return unsafe { System.dealloc(ptr, layout) };
        }
        // A block of ours was allocated through `class_of(layout)`, which is Some.
        let Some(class) = class_of(layout) else {
            return;
        };
        if HEAP.poison.load(Ordering::Relaxed) {
            HEAP.mark_free(ptr, class_size(class));
            poison(ptr, class);
        }
        let push = || {
            // SAFETY: the block is ours (the caller gives it back), 16-byte aligned,
            // below 2^48; the lists hold only this class's free blocks.
            unsafe {
                HEAP.head(class)
                    .list_push(ptr as usize, cache_capacity(class))
            }
            .is_ok()
        };
        let pushed = if crate::rseq::registration::thread_resolved() {
            push()
        } else {
            // The thread's first section resolves its registration: guarded.
            guarded(push)
        };
        if !pushed {
            self.spill(class, ptr as usize);
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if class_of(layout).is_none() {
            // Large: the system's calloc maps fresh zero pages without touching
            // them (a `vec![0; 1 << 30]` costs no time and no memory until used).
            // SAFETY: forwarded from the caller.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // SAFETY: forwarded from the caller.
        let block = unsafe { self.alloc(layout) };
        if !block.is_null() {
            // SAFETY: the block holds at least `layout.size()` bytes.
            unsafe { std::ptr::write_bytes(block, 0, layout.size()) };
        }
        block
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let ours = HEAP.ready() && HEAP.contains(ptr);
        if !ours {
            // The system's block (large, or from before the heap): the system's
            // realloc grows it in place or moves its pages (`mremap`) instead of
            // copying; the result stays the system's, and `dealloc` finds it there
            // by address whatever its new size.
            // SAFETY: forwarded from the caller; the block is the system's.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        if let Ok(new) = Layout::from_size_align(new_size, layout.align())
            && class_of(new).is_some()
            && class_of(new) == class_of(layout)
        {
            // Same class: the block already holds `new_size` bytes.
            return ptr;
        }
        // SAFETY: `new_size` is the caller's valid new size.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: forwarded from the caller.
        let block = unsafe { self.alloc(new) };
        if !block.is_null() {
            // SAFETY: both blocks hold at least the smaller size and do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, block, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        block
    }
}

// SAFETY: blocks come from `GlobalAlloc::alloc` (see its impl): valid for the
// layout, owned by the caller until `deallocate`; zero-size requests get a dangling,
// aligned pointer that is never dereferenced or freed.
#[cfg(feature = "allocator-api2")]
unsafe impl allocator_api2::alloc::Allocator for PerCidAlloc {
    fn allocate(
        &self,
        layout: Layout,
    ) -> Result<std::ptr::NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        if layout.size() == 0 {
            // An aligned, non-null address that is never dereferenced.
            let dangling = std::ptr::without_provenance_mut::<u8>(layout.align());
            let ptr = std::ptr::NonNull::new(dangling).ok_or(allocator_api2::alloc::AllocError)?;
            return Ok(std::ptr::NonNull::slice_from_raw_parts(ptr, 0));
        }
        // SAFETY: a non-zero-size layout.
        let ptr = unsafe { GlobalAlloc::alloc(self, layout) };
        let ptr = std::ptr::NonNull::new(ptr).ok_or(allocator_api2::alloc::AllocError)?;
        Ok(std::ptr::NonNull::slice_from_raw_parts(ptr, layout.size()))
    }

    unsafe fn deallocate(&self, ptr: std::ptr::NonNull<u8>, layout: Layout) {
        if layout.size() != 0 {
            // SAFETY: the caller's contract: `ptr` came from `allocate` with `layout`.
            unsafe { GlobalAlloc::dealloc(self, ptr.as_ptr(), layout) };
        }
    }
}

/// A block about to be handed out, checked against its poison when poisoning is on.
#[inline(always)]
fn checked(block: *mut u8, class: usize) -> *mut u8 {
    if HEAP.poison.load(Ordering::Relaxed) {
        check_poison(block, class);
        HEAP.mark_used(block);
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_grow_and_end_at_the_small_limit() {
        for c in 1..CLASSES {
            assert!(class_size(c) > class_size(c - 1), "class {c}");
            assert!(class_size(c).is_multiple_of(16));
        }
        assert_eq!(class_size(0), 16);
        assert_eq!(class_size(CLASSES - 1), MAX_SMALL);
    }

    #[test]
    fn every_small_layout_gets_the_tightest_fitting_class() {
        for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 256, 4096] {
            for size in 1..=MAX_SMALL {
                let layout = Layout::from_size_align(size, align).unwrap();
                let Some(class) = class_of(layout) else {
                    assert!(align > 16, "size {size} align {align} has no class");
                    continue;
                };
                let cs = class_size(class);
                assert!(cs >= size, "size {size} align {align}: class of {cs} bytes");
                assert!(
                    cs.is_multiple_of(align),
                    "size {size}: {cs} not {align}-aligned"
                );
                if align <= 16 && class > 0 {
                    assert!(
                        class_size(class - 1) < size,
                        "size {size}: a smaller class fits"
                    );
                }
            }
        }
    }

    #[test]
    fn large_or_over_aligned_requests_go_to_the_system() {
        assert_eq!(
            class_of(Layout::from_size_align(MAX_SMALL + 1, 8).unwrap()),
            None
        );
        assert_eq!(
            class_of(Layout::from_size_align(64, 64 * 1024).unwrap()),
            None
        );
    }

    #[test]
    fn caches_hold_about_64_kib() {
        assert_eq!(cache_capacity(0), 256);
        assert_eq!(cache_capacity(class_of_size(1024)), 64);
        assert_eq!(cache_capacity(CLASSES - 1), 4);
    }

    #[test]
    fn blocks_are_usable_aligned_and_recycled() {
        let a = PerCidAlloc::with_poisoning();
        for align in [8usize, 16, 64, 4096] {
            for size in [1usize, 16, 17, 100, 1000, 5000, 32 * 1024] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero size; every block is freed with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert!((p as usize).is_multiple_of(align));
                    std::ptr::write_bytes(p, 0x5a, size);
                    a.dealloc(p, layout);
                    let q = a.alloc(layout);
                    std::ptr::write_bytes(q, 0xa5, size);
                    a.dealloc(q, layout);
                }
            }
        }
        assert!(a.committed_bytes() > 0);
    }
}
