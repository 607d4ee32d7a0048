//! Spans and the classes' shared free lists.
//!
//! A **span** is 256 KiB of the reservation. While a class owns it, blocks are
//! carved from it and its free blocks that are in no cache sit on the span's own
//! list (linked through their first word, in the packed list format of
//! [`crate::cid::list`]), so the heap knows when every block of a span is free.
//! Such a span leaves its class for the **span pool**, where any class can take it
//! again (memory moves between classes), and after the purge delay its pages go
//! back to the OS (`MADV_DONTNEED`; the span stays mapped and reusable).
//!
//! Between the caches and the span lists, every class keeps a short **transfer
//! stack** of whole chains (linked through their first block's second word), as
//! tcmalloc's transfer cache does: a chain spilled by one cid and taken by another
//! moves in O(1); only chains beyond the stack are sorted onto their spans.
//!
//! All span and class state is written under the class's lock (a span of a class)
//! or the pool's lock (a span in the pool; lock order: class, then pool). A span
//! being purged is on no list, so nobody takes it while its pages go back; its
//! blocks are in no cache, so no rseq section reads them (a section reads only the
//! first node of a cache it is running on, and sections on a cid are serialised by
//! rseq; drains fence).

use super::class::{CLASSES, batch, class_size};
use super::heap::{HEAP, Heap, SpinLock};
use crate::cid::list::{first as chain_node, len as chain_len, pack};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Bytes of a span.
pub(super) const SPAN: usize = 256 * 1024;
/// Chains a class's transfer stack holds at most.
const TRANSFER_CHAINS: u32 = 8;

/// Span states.
const IN_CLASS: u8 = 1;
const DIRTY: u8 = 2;
const PURGING: u8 = 3;
const CLEAN: u8 = 4;

/// What the heap knows of one span. List links are span index + 1 (0: none).
#[repr(C)]
struct SpanMeta {
    /// The span's free blocks outside the caches (packed head).
    free: u64,
    /// Blocks carved from it since its class took it.
    carved: u32,
    next: u32,
    prev: u32,
    /// When it entered the pool (heap milliseconds).
    freed_at: u32,
    state: u8,
    class: u8,
}

/// The span metadata: one `SpanMeta` per span of the reservation, in a
/// `MAP_NORESERVE` mapping committed as spans are used.
pub(super) struct SpanTable(AtomicUsize);

impl SpanTable {
    pub(super) const fn new() -> SpanTable {
        SpanTable(AtomicUsize::new(0))
    }

    pub(super) fn set_up(&self, spans: usize) -> bool {
        // SAFETY: an anonymous private mapping, checked below.
        let map = unsafe {
            libc::mmap(
                null_mut(),
                spans * size_of::<SpanMeta>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return false;
        }
        self.0.store(map as usize, Ordering::Relaxed);
        true
    }

    /// Span `index`'s metadata. Read and written only under the lock that owns the
    /// span (its class's or the pool's).
    #[inline(always)]
    fn at(&self, index: u32) -> *mut SpanMeta {
        (self.0.load(Ordering::Relaxed) as *mut SpanMeta).wrapping_add(index as usize)
    }
}

/// One class's shared state, under its lock.
pub(super) struct Class {
    pub(super) lock: SpinLock,
    /// Top of the transfer stack (packed chain), 0 when empty.
    transfer: AtomicU64,
    transfer_len: AtomicU32,
    /// First span with free blocks on its list (doubly linked through the spans).
    partial: AtomicU32,
    /// The span blocks are carved from (index + 1), its next block and its end.
    carve_span: AtomicU32,
    carve: AtomicUsize,
    carve_end: AtomicUsize,
    /// Blocks on the transfer stack and the span lists (statistics).
    held: AtomicUsize,
}

impl Class {
    pub(super) const fn new() -> Class {
        Class {
            lock: SpinLock::new(),
            transfer: AtomicU64::new(0),
            transfer_len: AtomicU32::new(0),
            partial: AtomicU32::new(0),
            carve_span: AtomicU32::new(0),
            carve: AtomicUsize::new(0),
            carve_end: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
        }
    }

    /// Blocks the class holds outside the caches (a racy snapshot).
    pub(super) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// Wholly free spans, under its lock: dirty ones (pages resident, newest first,
/// taken first) and clean ones (pages given back).
pub(super) struct SpanPool {
    pub(super) lock: SpinLock,
    dirty_head: AtomicU32,
    dirty_tail: AtomicU32,
    pub(super) dirty: AtomicU32,
    /// `freed_at` of the oldest dirty span (valid while `dirty` > 0).
    pub(super) oldest: AtomicU32,
    clean: AtomicU32,
    pub(super) clean_count: AtomicU32,
}

impl SpanPool {
    pub(super) const fn new() -> SpanPool {
        SpanPool {
            lock: SpinLock::new(),
            dirty_head: AtomicU32::new(0),
            dirty_tail: AtomicU32::new(0),
            dirty: AtomicU32::new(0),
            oldest: AtomicU32::new(0),
            clean: AtomicU32::new(0),
            clean_count: AtomicU32::new(0),
        }
    }
}

/// Reads the link word of a free block of ours.
///
/// # Safety
///
/// `block` is a free block of the heap owned by the caller (on a private chain or
/// a list whose lock the caller holds).
#[inline(always)]
unsafe fn link(block: usize) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { *(block as *const u64) }
}

/// Writes the link word of a free block of ours.
///
/// # Safety
///
/// As for [`link`].
#[inline(always)]
unsafe fn set_link(block: usize, value: u64) {
    // SAFETY: the caller's contract.
    unsafe { *(block as *mut u64) = value }
}

impl Heap {
    /// A chain of free blocks of `class` (at least one): from the transfer stack,
    /// a span's list, or newly carved; 0 when memory is exhausted.
    pub(super) fn take_chain(&self, class: usize) -> u64 {
        let c = &self.classes[class];
        c.lock.lock();
        let top = c.transfer.load(Ordering::Relaxed);
        let chain = if top != 0 {
            // SAFETY: transfer chains are free blocks of this class; the second
            // word of a chain's first block links to the next chain.
            let next = unsafe { *((chain_node(top) + 8) as *const u64) };
            c.transfer.store(next, Ordering::Relaxed);
            c.transfer_len.fetch_sub(1, Ordering::Relaxed);
            top
        } else {
            match self.take_from_span(class) {
                0 => self.carve(class),
                chain => chain,
            }
        };
        c.held
            .fetch_sub(chain_len(chain) as usize, Ordering::Relaxed);
        c.lock.unlock();
        chain
    }

    /// Gives a chain of free blocks of `class` back: onto the transfer stack while
    /// it has room, else onto the blocks' spans.
    pub(super) fn give_chain(&self, class: usize, chain: u64) {
        let c = &self.classes[class];
        c.lock.lock();
        c.held
            .fetch_add(chain_len(chain) as usize, Ordering::Relaxed);
        if c.transfer_len.load(Ordering::Relaxed) < TRANSFER_CHAINS {
            // SAFETY: the chain's blocks are ours; its first block's second word is free.
            unsafe { *((chain_node(chain) + 8) as *mut u64) = c.transfer.load(Ordering::Relaxed) };
            c.transfer.store(chain, Ordering::Relaxed);
            c.transfer_len.fetch_add(1, Ordering::Relaxed);
        } else {
            self.sort_in(class, chain);
        }
        c.lock.unlock();
    }

    /// Gives a chain straight to its spans (the heap is giving memory back).
    pub(super) fn give_chain_to_spans(&self, class: usize, chain: u64) {
        let c = &self.classes[class];
        c.lock.lock();
        c.held
            .fetch_add(chain_len(chain) as usize, Ordering::Relaxed);
        self.sort_in(class, chain);
        c.lock.unlock();
    }

    /// Sorts every chain of `class`'s transfer stack onto its spans.
    pub(super) fn flush_transfer(&self, class: usize) {
        let c = &self.classes[class];
        if c.transfer_len.load(Ordering::Relaxed) == 0 {
            return;
        }
        c.lock.lock();
        let mut top = c.transfer.swap(0, Ordering::Relaxed);
        c.transfer_len.store(0, Ordering::Relaxed);
        while top != 0 {
            // SAFETY: as in `take_chain`.
            let next = unsafe { *((chain_node(top) + 8) as *const u64) };
            self.sort_in(class, top);
            top = next;
        }
        c.lock.unlock();
    }

    /// Puts every block of `chain` on its span's list (class lock held); a span
    /// whose every carved block is then free leaves the class for the pool.
    fn sort_in(&self, class: usize, chain: u64) {
        let c = &self.classes[class];
        let mut node = chain_node(chain);
        while node != 0 {
            // SAFETY: the chain is the caller's: free blocks of this class.
            let next = chain_node(unsafe { link(node) });
            let index = self.span_of(node);
            let m = self.spans.at(index);
            let carving = c.carve_span.load(Ordering::Relaxed);
            // SAFETY: the span belongs to this class (its block was handed out from
            // it) and the class lock is held.
            unsafe {
                let old = (*m).free;
                set_link(node, old);
                (*m).free = pack(node, chain_len(old) + 1);
                if chain_len(old) == 0 {
                    self.partial_push(c, index);
                }
                if chain_len(old) + 1 == u64::from((*m).carved) {
                    if carving == index + 1 {
                        // The span being carved: carving starts over from another
                        // (most likely this one again, taken back from the pool).
                        c.carve_span.store(0, Ordering::Relaxed);
                        c.carve.store(0, Ordering::Relaxed);
                        c.carve_end.store(0, Ordering::Relaxed);
                    }
                    self.partial_unlink(c, index);
                    c.held.fetch_sub((*m).carved as usize, Ordering::Relaxed);
                    (*m).free = 0;
                    self.pool_put(index);
                }
            }
            node = next;
        }
    }

    /// Up to a batch of blocks from the first partial span (class lock held); 0
    /// when no span has free blocks.
    fn take_from_span(&self, class: usize) -> u64 {
        let c = &self.classes[class];
        let first = c.partial.load(Ordering::Relaxed);
        if first == 0 {
            return 0;
        }
        let index = first - 1;
        let m = self.spans.at(index);
        let want = batch(class);
        // SAFETY: a partial span of this class, under its lock; its list holds
        // free blocks of the class.
        unsafe {
            let list = (*m).free;
            let have = chain_len(list);
            if have <= want {
                (*m).free = 0;
                self.partial_unlink(c, index);
                return list;
            }
            // Cut the first `want` blocks, rewriting their lengths.
            let mut node = chain_node(list);
            for k in 0..want {
                let next = link(node);
                if k + 1 == want {
                    set_link(node, 0);
                    (*m).free = next;
                } else {
                    set_link(node, pack(chain_node(next), want - k - 1));
                }
                node = chain_node(next);
            }
            pack(chain_node(list), want)
        }
    }

    /// Carves up to a batch of new blocks (class lock held).
    fn carve(&self, class: usize) -> u64 {
        let c = &self.classes[class];
        let size = class_size(class);
        let mut next = c.carve.load(Ordering::Relaxed);
        let mut end = c.carve_end.load(Ordering::Relaxed);
        if next + size > end {
            self.retire_carve_span(c);
            let index = match self.take_span() {
                Some(index) => index,
                None => {
                    // A never-used span: its `mprotect` runs with the class lock
                    // released (others spin on it).
                    c.lock.unlock();
                    let fresh = self.fresh_span();
                    c.lock.lock();
                    let Some(index) = fresh else {
                        return 0;
                    };
                    if c.carve_span.load(Ordering::Relaxed) != 0 {
                        // Another thread gave the class a span meanwhile: carve
                        // from it, and pool this one (its pages are untouched).
                        self.pool_put(index);
                        return self.carve(class);
                    }
                    index
                }
            };
            let m = self.spans.at(index);
            // SAFETY: a span just taken from the pool or the reservation: ours alone.
            unsafe {
                (*m).free = 0;
                (*m).carved = 0;
                (*m).next = 0;
                (*m).prev = 0;
                (*m).class = class as u8;
                (*m).state = IN_CLASS;
            }
            next = self.span_addr(index);
            end = next + SPAN;
            c.carve_span.store(index + 1, Ordering::Relaxed);
            c.carve_end.store(end, Ordering::Relaxed);
        }
        let n = (((end - next) / size) as u64).min(batch(class));
        let poison = self.poison.load(Ordering::Relaxed);
        // Link the blocks back to front: block i's link is the rest of the chain.
        let mut chain = 0u64;
        for i in (0..n as usize).rev() {
            let block = next + i * size;
            if poison {
                super::debug::poison(block as *mut u8, class);
            }
            // SAFETY: a fresh block of a committed span, owned by the carver.
            unsafe { set_link(block, chain) };
            chain = pack(block, n - i as u64);
        }
        c.carve.store(next + n as usize * size, Ordering::Relaxed);
        let m = self.spans.at(c.carve_span.load(Ordering::Relaxed) - 1);
        // SAFETY: the class's carve span, under its lock.
        unsafe { (*m).carved += n as u32 };
        c.held.fetch_add(n as usize, Ordering::Relaxed);
        chain
    }

    /// The class stops carving from its span: when every block carved from it is
    /// already free, it goes to the pool (class lock held).
    fn retire_carve_span(&self, c: &Class) {
        let carving = c.carve_span.swap(0, Ordering::Relaxed);
        if carving == 0 {
            return;
        }
        let index = carving - 1;
        let m = self.spans.at(index);
        // SAFETY: the class's span, under its lock.
        unsafe {
            if chain_len((*m).free) == u64::from((*m).carved) {
                if (*m).free != 0 {
                    self.partial_unlink(c, index);
                }
                c.held.fetch_sub((*m).carved as usize, Ordering::Relaxed);
                (*m).free = 0;
                self.pool_put(index);
            }
        }
    }

    fn partial_push(&self, c: &Class, index: u32) {
        let m = self.spans.at(index);
        let head = c.partial.load(Ordering::Relaxed);
        // SAFETY: spans of this class, under its lock.
        unsafe {
            (*m).prev = 0;
            (*m).next = head;
            if head != 0 {
                (*self.spans.at(head - 1)).prev = index + 1;
            }
        }
        c.partial.store(index + 1, Ordering::Relaxed);
    }

    fn partial_unlink(&self, c: &Class, index: u32) {
        let m = self.spans.at(index);
        // SAFETY: spans of this class, under its lock.
        unsafe {
            let (prev, next) = ((*m).prev, (*m).next);
            if prev == 0 {
                c.partial.store(next, Ordering::Relaxed);
            } else {
                (*self.spans.at(prev - 1)).next = next;
            }
            if next != 0 {
                (*self.spans.at(next - 1)).prev = prev;
            }
            (*m).prev = 0;
            (*m).next = 0;
        }
    }

    /// A wholly free span enters the pool as dirty (its class lock held).
    fn pool_put(&self, index: u32) {
        let p = &self.pool;
        let now = super::decay::now_ms();
        p.lock.lock();
        let m = self.spans.at(index);
        let head = p.dirty_head.load(Ordering::Relaxed);
        // SAFETY: the span left its class; pool spans are under the pool's lock.
        unsafe {
            (*m).state = DIRTY;
            (*m).freed_at = now;
            (*m).prev = 0;
            (*m).next = head;
            if head != 0 {
                (*self.spans.at(head - 1)).prev = index + 1;
            } else {
                p.dirty_tail.store(index + 1, Ordering::Relaxed);
                p.oldest.store(now, Ordering::Relaxed);
            }
        }
        p.dirty_head.store(index + 1, Ordering::Relaxed);
        p.dirty.fetch_add(1, Ordering::Relaxed);
        p.lock.unlock();
    }

    /// A span from the pool for a class to carve: the newest dirty one (its pages
    /// are warm), else a clean one; `None` when the pool is empty.
    fn take_span(&self) -> Option<u32> {
        let p = &self.pool;
        p.lock.lock();
        let head = p.dirty_head.load(Ordering::Relaxed);
        let taken = if head != 0 {
            let index = head - 1;
            // SAFETY: a pool span, under the pool's lock.
            unsafe {
                let next = (*self.spans.at(index)).next;
                p.dirty_head.store(next, Ordering::Relaxed);
                if next == 0 {
                    p.dirty_tail.store(0, Ordering::Relaxed);
                } else {
                    (*self.spans.at(next - 1)).prev = 0;
                }
            }
            p.dirty.fetch_sub(1, Ordering::Relaxed);
            Some(index)
        } else {
            let clean = p.clean.load(Ordering::Relaxed);
            (clean != 0).then(|| {
                let index = clean - 1;
                // SAFETY: as above.
                p.clean
                    .store(unsafe { (*self.spans.at(index)).next }, Ordering::Relaxed);
                p.clean_count.fetch_sub(1, Ordering::Relaxed);
                index
            })
        };
        p.lock.unlock();
        match taken {
            Some(index) => {
                // Free bits of the span's earlier class must not look like frees of
                // the new class's blocks.
                self.free_map
                    .clear_span(self.span_addr(index) - self.span_addr(0), SPAN);
                Some(index)
            }
            None => None,
        }
    }

    /// Gives back the pages of dirty spans: every one when `all`, else those dirty
    /// for at least `delay_ms` and the oldest beyond `budget`. The pages are given
    /// back with no lock held. Returns the spans purged.
    pub(super) fn purge(&self, now: u32, delay_ms: u32, budget: u32, all: bool) -> u32 {
        let p = &self.pool;
        p.lock.lock();
        let mut victims = 0u32;
        let mut count = 0u32;
        loop {
            let tail = p.dirty_tail.load(Ordering::Relaxed);
            if tail == 0 {
                break;
            }
            let index = tail - 1;
            let m = self.spans.at(index);
            // SAFETY: pool spans, under the pool's lock.
            unsafe {
                let due = now.wrapping_sub((*m).freed_at) >= delay_ms;
                if !(all || due || p.dirty.load(Ordering::Relaxed) > budget) {
                    p.oldest.store((*m).freed_at, Ordering::Relaxed);
                    break;
                }
                let prev = (*m).prev;
                p.dirty_tail.store(prev, Ordering::Relaxed);
                if prev == 0 {
                    p.dirty_head.store(0, Ordering::Relaxed);
                } else {
                    (*self.spans.at(prev - 1)).next = 0;
                }
                p.dirty.fetch_sub(1, Ordering::Relaxed);
                (*m).state = PURGING;
                (*m).next = victims;
            }
            victims = index + 1;
            count += 1;
        }
        p.lock.unlock();
        if count == 0 {
            return 0;
        }
        // On no list: nobody takes these spans while their pages go back.
        let mut v = victims;
        while v != 0 {
            let index = v - 1;
            // SAFETY: a purging span, ours alone; still mapped afterwards.
            unsafe {
                v = (*self.spans.at(index)).next;
                libc::madvise(
                    self.span_addr(index) as *mut libc::c_void,
                    SPAN,
                    libc::MADV_DONTNEED,
                );
            }
        }
        p.lock.lock();
        let mut v = victims;
        while v != 0 {
            let index = v - 1;
            let m = self.spans.at(index);
            // SAFETY: as above; back under the pool's lock.
            unsafe {
                v = (*m).next;
                (*m).state = CLEAN;
                (*m).next = p.clean.load(Ordering::Relaxed);
            }
            p.clean.store(index + 1, Ordering::Relaxed);
            p.clean_count.fetch_add(1, Ordering::Relaxed);
        }
        p.lock.unlock();
        count
    }
}

/// Spans that belong to classes (a racy snapshot).
pub(super) fn spans_in_classes() -> u32 {
    let p = &HEAP.pool;
    HEAP.spans_used()
        .saturating_sub(p.dirty.load(Ordering::Relaxed))
        .saturating_sub(p.clean_count.load(Ordering::Relaxed))
}

/// Blocks held by every class outside the caches (a racy snapshot).
pub(super) fn held_blocks() -> usize {
    (0..CLASSES).map(|c| HEAP.classes[c].held()).sum()
}
