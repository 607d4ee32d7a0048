//! The state both ends share: the per-cid rings' words in the arena, their slot
//! buffers, the disconnection flags and the wake-up signals.

use super::signal::{FenceMode, RxSignal, TxSignal};
use crate::cid::{Arena, PayloadSite, Pushed, Shard, Word, Words};
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use std::alloc::Layout;
use std::marker::PhantomData;
use std::mem::MaybeUninit;

/// Word offsets of a ring in its allocation: the tail and the producers' copy of
/// the head (written by the sections) and the buffer address (installed once) on one
/// cache line, the consumer's head on the next, so that publishing a head does not
/// invalidate the producers' line, and a send reads the head's line only when its
/// copy says the ring is full.
/// Under loom a unit leaves only 6 words to allocations (`Arena::MAX_WORDS`) and
/// lines mean nothing: the three words are packed.
pub(super) const TAIL: usize = 0;
pub(super) const BUFFER: usize = 1;
/// The producers' copy of the head, on their own line (see `PayloadArgs::cached`).
pub(super) const CACHED_HEAD: usize = 2;
pub(super) const HEAD: usize = if cfg!(loom) { 3 } else { 8 };
pub(super) const WORDS: usize = if cfg!(loom) { 4 } else { 16 };

/// `closed` bits.
pub(super) const SENDERS_GONE: u32 = 1;
pub(super) const RECEIVER_GONE: u32 = 2;

/// A value in a slot: `T` padded to whole words (the sections copy words) and
/// aligned to at least 8. The padding is copied uninitialised, which the copy in
/// `asm!` and `ptr::copy` both allow.
#[repr(C)]
pub(super) struct Cell<T> {
    value: MaybeUninit<T>,
    _words: [u64; 0],
}

impl<T> Cell<T> {
    pub(super) fn new(value: T) -> Cell<T> {
        Cell {
            value: MaybeUninit::new(value),
            _words: [],
        }
    }

    /// Takes the value back out of a cell that was not published.
    pub(super) fn into_inner(self) -> T {
        // SAFETY: cells are only made by `new`, and a published cell is forgotten
        // instead of being taken.
        unsafe { self.value.assume_init() }
    }
}

/// Keeps a line to itself (crossbeam's `CachePadded`, 128 bytes for x86_64's
/// adjacent-line prefetch).
#[repr(align(128))]
#[derive(Debug)]
pub(super) struct Padded<T>(pub T);

/// The shared state of one channel.
pub(super) struct Chan<T> {
    // Read-mostly line: everything a send reads.
    pub(super) site: PayloadSite<'static>,
    pub(super) fence: FenceMode,
    pub(super) closed: AtomicU32,
    /// Slots per ring (a power of two).
    pub(super) capacity: u64,
    pub(super) slot_bytes: usize,
    buffer_layout: Layout,
    /// Whether buffers are mapped and bound to their node (NUMA mode).
    numa: bool,
    words: Words<'static>,
    pub(super) senders: Padded<AtomicU64>,
    pub(super) rx: Padded<RxSignal>,
    pub(super) tx: Padded<TxSignal>,
    _values: PhantomData<T>,
}

// SAFETY: a `Chan<T>` moves `T`s between threads (sent values) and drops them on
// whichever thread drops the channel: `T: Send` suffices. Its own state is atomics,
// mutexes and addresses of arena words and buffers it owns.
unsafe impl<T: Send> Send for Chan<T> {}
// SAFETY: as for `Send`; shared access goes through atomics, mutexes and the rseq
// sections (one owner per slot at any time: see `super`).
unsafe impl<T: Send> Sync for Chan<T> {}

impl<T> Chan<T> {
    /// A channel whose rings have `capacity` (a power of two) slots, its words in
    /// `arena` (a NUMA arena gives NUMA mode).
    pub(super) fn new(
        arena: &'static Arena,
        capacity: u64,
        buffer_layout: Layout,
    ) -> Result<Chan<T>, crate::cid::StorageError> {
        let words = arena.alloc(WORDS)?;
        // The site's words are the channel's while it holds `words` (freed last).
        let site = PayloadSite::new(
            [
                words.detached(TAIL),
                words.detached(HEAD),
                words.detached(BUFFER),
                words.detached(CACHED_HEAD),
            ],
            capacity,
            size_of::<Cell<T>>(),
        );
        Ok(Chan {
            numa: site.is_numa(),
            site,
            fence: FenceMode::detect(),
            closed: AtomicU32::new(0),
            capacity,
            slot_bytes: size_of::<Cell<T>>(),
            buffer_layout,
            words,
            senders: Padded(AtomicU64::new(1)),
            rx: Padded(RxSignal::new()),
            tx: Padded(TxSignal::new()),
            _values: PhantomData,
        })
    }

    /// One of the ring words, with the channel's lifetime.
    pub(super) fn word(&self, i: usize) -> Word<'_> {
        self.words.word(i)
    }

    /// Publishes the first `n >= 1` of the `count` cells at `src` in the caller's
    /// ring, or says it is full; installs the ring's buffer when it has none.
    ///
    /// # Safety
    /// `src` points to `count >= 1` initialised cells; the caller forgets the first
    /// `n` when `Committed(n)` comes back (they belong to the ring now).
    #[inline(always)]
    pub(super) unsafe fn push(&self, src: *const Cell<T>, count: usize) -> Pushed {
        // SAFETY: the cells are readable (the caller); buffers hold `capacity` slots
        // of `slot_bytes` and live as long as the channel; only pushes move tails and
        // only the receiver moves heads, never past a tail.
        if let Some(done) = unsafe { self.site.try_push(src.cast(), count) } {
            return done;
        }
        // SAFETY: forwarded.
        unsafe { self.push_slow(src, count) }
    }

    /// # Safety
    /// As for [`Chan::push`].
    #[cold]
    #[inline(never)]
    unsafe fn push_slow(&self, src: *const Cell<T>, count: usize) -> Pushed {
        loop {
            // SAFETY: as in `push`.
            match unsafe { self.site.push(src.cast(), count) } {
                (Pushed::NoBuffer, shard) => self.install_buffer(shard),
                (done, _) => return done,
            }
        }
    }

    /// Gives `shard`'s ring its slot buffer (sub-rings appear as cids appear).
    #[cold]
    fn install_buffer(&self, shard: Shard) {
        let Some(word) = self.word(BUFFER).at(shard) else {
            return;
        };
        if word.load(Ordering::Acquire) != 0 {
            return;
        }
        let buffer = self.alloc_buffer(shard);
        if word
            .compare_exchange(0, buffer as u64, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // SAFETY: ours, never published.
            unsafe { self.free_buffer(buffer) };
        }
    }

    fn alloc_buffer(&self, shard: Shard) -> *mut u8 {
        if self.numa {
            let len = self.mapped_len();
            // SAFETY: an anonymous private mapping; no memory of ours is touched.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if ptr == libc::MAP_FAILED {
                std::alloc::handle_alloc_error(self.buffer_layout);
            }
            let node = match shard {
                Shard::NodeCid { node, .. } => Some(node),
                Shard::Cid(_) => Some(0),
                Shard::Lane(_) => None,
            };
            if let Some(node) = node {
                // SAFETY: a fresh, page-aligned, untouched mapping of `len` bytes.
                let _ = unsafe { crate::numa::memory::bind(ptr.cast(), len, node) };
            }
            ptr.cast()
        } else {
            // SAFETY: the layout has a non-zero size (see `Builder::build`).
            let ptr = unsafe { std::alloc::alloc(self.buffer_layout) };
            if ptr.is_null() {
                std::alloc::handle_alloc_error(self.buffer_layout);
            }
            ptr
        }
    }

    fn mapped_len(&self) -> usize {
        self.buffer_layout.size().next_multiple_of(4096)
    }

    /// # Safety
    /// `buffer` came from `alloc_buffer` of this channel and is not used any more.
    unsafe fn free_buffer(&self, buffer: *mut u8) {
        if self.numa {
            // SAFETY: a mapping of `mapped_len` bytes made by `alloc_buffer`.
            unsafe { libc::munmap(buffer.cast(), self.mapped_len()) };
        } else {
            // SAFETY: allocated with this layout by `alloc_buffer`.
            unsafe { std::alloc::dealloc(buffer, self.buffer_layout) };
        }
    }

    /// Address of slot `pos` of a buffer.
    #[inline(always)]
    pub(super) fn slot(&self, buffer: *mut u8, pos: u64) -> *mut T {
        buffer
            .wrapping_add((pos & (self.capacity - 1)) as usize * self.slot_bytes)
            .cast()
    }
}

impl<T> Drop for Chan<T> {
    fn drop(&mut self) {
        // Nobody else is left: drop what the rings still hold, free their buffers.
        let tails = self.word(TAIL);
        let heads = self.word(HEAD);
        let buffers = self.word(BUFFER);
        for (shard, tail) in tails.shards() {
            let (Some(head), Some(buffer)) = (heads.at(shard), buffers.at(shard)) else {
                continue;
            };
            let buffer = buffer.load(Ordering::Acquire) as *mut u8;
            if buffer.is_null() {
                continue;
            }
            let tail = tail.load(Ordering::Acquire);
            let mut pos = head.load(Ordering::Acquire);
            while pos != tail {
                // SAFETY: slots between head and tail hold published values that
                // nobody took; each is dropped once.
                unsafe { std::ptr::drop_in_place(self.slot(buffer, pos)) };
                pos = pos.wrapping_add(1);
            }
            // SAFETY: allocated by `alloc_buffer`; no end is left to use it.
            unsafe { self.free_buffer(buffer) };
        }
    }
}
