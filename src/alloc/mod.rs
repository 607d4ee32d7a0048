//! [`PerCidAlloc`]: a small-object allocator on per-cid free lists, usable as the
//! `#[global_allocator]`.
//!
//! # Design
//!
//! * **Size classes** from 16 B to 32 KiB ([`class_of`]): multiples of 16 up to 128,
//!   then four classes per power of two. A request is served by the smallest class
//!   that holds its size and whose size is a multiple of its alignment; larger or
//!   more aligned requests go to the system allocator.
//! * Every class has a **cache per cid**: a free list whose head is one word per cid
//!   in a [`crate::cid`] arena, popped and pushed with the `list_pop` / `list_push`
//!   critical sections. A free block's first word is its list link. The fast paths
//!   are one rseq section each: no atomic read-modify-write, no lock.
//! * A cache holds at most 64 KiB worth of blocks (4 to 256). A free to a full cache
//!   moves half of it to the class's shared state, an allocation from an empty cache
//!   takes half a cache back: from the class's **transfer stack** of whole chains,
//!   else from the free blocks of one of its **spans**, else newly carved from a span.
//! * A **span** is 256 KiB, committed with `mprotect` from one large `PROT_NONE`
//!   reservation (address space costs no commit charge). The heap knows each span's
//!   free blocks, so a span whose every block is free leaves its class: any class can
//!   take it again, and after the purge delay its pages go back to the OS (see
//!   [Memory going back](#memory-going-back)).
//! * `dealloc` tells its blocks from the system allocator's by address (inside the
//!   reservation or not) and finds the class from the `Layout`, which `GlobalAlloc`
//!   guarantees is the one the block was allocated with: no header per block.
//!
//! # Memory going back
//!
//! Without a call and without a thread of its own, on slow paths only:
//!
//! * A wholly free span's pages go back (`MADV_DONTNEED`) once it has been free for
//!   the purge delay ([`set_purge_delay`], `PERCID_PURGE_DELAY_MS`, default
//!   [`DEFAULT_PURGE_DELAY`]); beyond two such spans (or 1/32 of the spans in use)
//!   the oldest go back at once. A class that needs a span takes a free one first,
//!   so memory freed by one size serves the next.
//! * A cid cache unchanged for [`IDLE_PERIOD`] is drained by the next slow path
//!   that runs the idle scan, so an idle cid's blocks stop holding their spans.
//! * A thread's exit gives back its cid's caches and purges every free span: the
//!   workers of a burst leave nothing resident behind them.
//! * [`PerCidAlloc::trim`] does all of it at once, on every cid.
//!
//! A heap that is never called again keeps what the last slow path left: at most the
//! budget of free spans plus the blocks in caches (64 KiB per class and cid).
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

mod class;
mod debug;
mod decay;
mod heap;
mod span;

pub use class::{CLASSES, MAX_SMALL, class_of, class_size};
pub use decay::{DEFAULT_PURGE_DELAY, IDLE_PERIOD, purge_delay, set_purge_delay};
pub(crate) use heap::{fork_prepare, fork_release};

use crate::cid::ListFull;
use crate::cid::Word;
use crate::cid::list::{self, first as chain_node, len as chain_len, pack};
use crate::rseq::registration::{in_internal, internal as guarded};
use class::{batch, cache_capacity};
use heap::HEAP;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::Ordering;

#[cfg(feature = "allocator-api2")]
#[cfg_attr(docsrs, doc(cfg(feature = "allocator-api2")))]
pub use allocator_api2;

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
    ///
    /// ```
    /// use percid::alloc::PerCidAlloc;
    /// use std::alloc::{GlobalAlloc, Layout};
    ///
    /// static ALLOC: PerCidAlloc = PerCidAlloc::with_poisoning();
    /// let layout = Layout::new::<[u8; 48]>();
    /// // SAFETY: a non-zero size; freed once with its layout.
    /// unsafe {
    ///     let p = ALLOC.alloc(layout);
    ///     p.write_bytes(7, 48);
    ///     ALLOC.dealloc(p, layout);
    /// }
    /// assert_eq!(ALLOC.poisoning(), Some(true));
    /// ```
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

    /// Gives back everything the heap can: every cid cache is drained (an rseq
    /// fence per non-empty cache), the classes' free blocks are sorted onto their
    /// spans, and every wholly free span's pages go back to the OS now, whatever the
    /// purge delay. The heap does the same by itself over time (see the module docs);
    /// this is for a program that knows it just went idle.
    ///
    /// ```
    /// use percid::alloc::PerCidAlloc;
    /// use std::alloc::{GlobalAlloc, Layout};
    ///
    /// static ALLOC: PerCidAlloc = PerCidAlloc::new();
    /// let layout = Layout::new::<[u8; 1000]>();
    /// // SAFETY: non-zero sizes; every block is freed once with its layout.
    /// let blocks: Vec<_> = (0..2000).map(|_| unsafe { ALLOC.alloc(layout) }).collect();
    /// for p in blocks {
    ///     unsafe { ALLOC.dealloc(p, layout) };
    /// }
    /// ALLOC.trim();
    /// assert_eq!(ALLOC.dirty_bytes(), 0); // every free span went back
    /// assert_eq!(ALLOC.cached_blocks(), 0);
    /// ```
    pub fn trim(&self) {
        if !HEAP.ready() {
            return;
        }
        self.check_mode();
        decay::trim_all();
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

    /// Free blocks the classes hold outside the caches: on their transfer stacks
    /// and their spans' lists (a racy snapshot).
    pub fn central_blocks(&self) -> usize {
        if !HEAP.ready() {
            return 0;
        }
        span::held_blocks()
    }

    /// Bytes of spans that may be resident: every span the heap has used, except
    /// those whose pages went back to the OS.
    pub fn committed_bytes(&self) -> usize {
        if !HEAP.ready() {
            return 0;
        }
        decay::committed_bytes()
    }

    /// Bytes of wholly free spans still resident, waiting for the purge delay.
    pub fn dirty_bytes(&self) -> usize {
        if !HEAP.ready() {
            return 0;
        }
        HEAP.pool.dirty.load(Ordering::Relaxed) as usize * span::SPAN
    }

    /// [`GlobalAlloc::alloc`] past its thin section: other backends, an empty
    /// cache, poisoning, the heap's set-up.
    ///
    /// # Safety
    /// As for [`GlobalAlloc::alloc`].
    #[inline(never)]
    unsafe fn alloc_full(&self, layout: Layout) -> *mut u8 {
        // A new cid materialised since the count was read? Then the next is thin.
        HEAP.refresh_thin();
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

    /// [`GlobalAlloc::dealloc`] past its thin section (as [`PerCidAlloc::alloc_full`]).
    ///
    /// # Safety
    /// As for [`GlobalAlloc::dealloc`].
    #[inline(never)]
    unsafe fn dealloc_full(&self, ptr: *mut u8, layout: Layout) {
        HEAP.refresh_thin();
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
            HEAP.free_map.mark_free(ptr, class_size(class));
            debug::poison(ptr, class);
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
            decay::arm_exit_hook();
            let chain = HEAP.take_chain(class);
            decay::tick();
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
            let batch = batch(class);
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
            decay::arm_exit_hook();
            HEAP.give_chain(class, chain);
            decay::tick();
        });
    }
}

/// Installs the chain `rest` in the caller's cache (one section when it is empty),
/// slot by slot otherwise; what does not fit goes back to the class.
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
        // Not under loom, where no thread runs a thin section: there rustc 1.95's
        // LLVM crashed (SIGSEGV in `AsmPrinter::emitFunctionBody`) compiling the
        // `percid` binary with this dead path inlined. Same for `dealloc`.
        #[cfg(not(loom))]
        if let Some(class) = class_of(layout)
            && !in_internal()
        {
            // SAFETY: every node on a class's lists is a free block of that class,
            // inside committed spans that are never unmapped, and only list
            // operations (or a drainer that owns a list) write heads and links.
            if let Some(node) = unsafe { HEAP.thin.list_pop_at(class) } {
                return node as *mut u8;
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.alloc_full(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        #[cfg(not(loom))]
        if HEAP.contains(ptr)
            && let Some(class) = class_of(layout)
        {
            // SAFETY: the block is ours (in the reservation, which holds blocks only
            // once the heap is ready; the caller gives it back), 16-byte aligned,
            // below 2^48; the lists hold only this class's free blocks.
            if unsafe {
                HEAP.thin
                    .list_push_at(class, ptr as usize, cache_capacity(class))
            } {
                return;
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.dealloc_full(ptr, layout) }
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
#[cfg_attr(docsrs, doc(cfg(feature = "allocator-api2")))]
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
        debug::check_poison(block, class);
        HEAP.free_map.mark_used(block);
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;

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
