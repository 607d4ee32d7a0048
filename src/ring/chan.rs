//! The state both ends share: the per-cid rings' words in the arena, their slot
//! buffers, the disconnection flags and the wake-up signals.

use super::signal::{FenceMode, RxSignal, TxSignal, lock};
use crate::cid::{Arena, PayloadSite, Pushed, Shard, Word, Words};
use crate::sync::{AtomicU32, AtomicU64, Mutex, Ordering};
use std::alloc::Layout;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::task::Waker;
use std::time::Duration;

/// Word offsets of a ring in its allocation (see `cid::ring_words`: the thin send
/// section addresses them from the tail's).
pub(super) use crate::cid::ring_words::{BUFFER, CACHED_HEAD, HEAD, TAIL, WORDS};

/// `closed` bits.
pub(super) const SENDERS_GONE: u32 = 1;
pub(super) const RECEIVER_GONE: u32 = 2;
/// [`Receiver::close`](super::Receiver::close) ran.
pub(super) const RECEIVER_CLOSED: u32 = 4;

/// Gate bits: the word every send's critical section reads first, and fails on
/// (as for a full ring) while it is non-zero.
///
/// The receiver closed or dropped the channel: no send may publish. Set before an
/// rseq fence, so that after [`Chan::close_gate`] no send can commit.
pub(super) const GATE_CLOSED: u64 = 1;
/// Values wait in the spill queue: sends go there too, behind them, so that every
/// thread's values keep their order. Set and cleared under the spill lock only.
pub(super) const GATE_SPILL: u64 = 2;
/// `permits` bit: the gate closed, no permit may be taken any more.
pub(super) const PERMITS_CLOSED: u64 = 1 << 63;

/// The receiver is giving taken slots' pages back (unbounded channels): no send
/// may write a slot meanwhile. Set and cleared by the receiver only.
pub(super) const GATE_TRIM: u64 = 4;

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

/// How a channel was configured (see [`super::Builder`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct Options {
    pub(super) unbounded: bool,
    /// How long a blocking receive yields before it sleeps.
    pub(super) idle_yield: Duration,
    /// How long one async poll may yield the thread before it registers.
    pub(super) poll_yield: Duration,
    /// How long an async receive yields (and wakes its own task) before it sleeps.
    pub(super) async_idle_yield: Duration,
}

/// The shared state of one channel.
pub(super) struct Chan<T> {
    // Read-mostly line: everything a send reads.
    pub(super) site: PayloadSite<'static>,
    pub(super) fence: FenceMode,
    pub(super) closed: AtomicU32,
    /// Slots per ring (a power of two).
    pub(super) capacity: u64,
    pub(super) slot_bytes: usize,
    pub(super) options: Options,
    /// Most rings the arena can give the channel (every possible shard).
    pub(super) max_rings: u64,
    buffer_layout: Layout,
    /// Whether buffers are mapped and bound to their node (NUMA mode).
    numa: bool,
    words: Words<'static>,
    /// The gate word (`GATE_*`), on a line of its own: its address is in the
    /// site's operands, so it cannot move with the channel.
    gate: *mut Padded<AtomicU64>,
    /// Strong senders (the channel disconnects when the last one goes).
    pub(super) senders: Padded<AtomicU64>,
    pub(super) weak: AtomicU64,
    /// Permits taken and not yet used or dropped, and [`PERMITS_CLOSED`] once the
    /// gate closed: one word, so that a permit is either counted before the close
    /// or refused after it (read-modify-writes of one word are totally ordered).
    pub(super) permits: AtomicU64,
    /// Values that found their ring full (unbounded channels, permits), in order.
    pub(super) spill: Padded<Mutex<VecDeque<T>>>,
    /// Spilled values the receiver took out of `spill` and has not handed out yet
    /// (written by the receiver only; for `len`).
    pub(super) spill_held: AtomicU64,
    /// Tasks waiting in `Sender::closed`, by registration id.
    pub(super) closers: Mutex<Vec<(u64, Waker)>>,
    pub(super) rx: Padded<RxSignal>,
    pub(super) tx: Padded<TxSignal>,
    _values: PhantomData<T>,
}

// SAFETY: a `Chan<T>` moves `T`s between threads (sent values) and drops them on
// whichever thread drops the channel: `T: Send` suffices. Its own state is atomics,
// mutexes and addresses of arena words, buffers and the gate word it owns.
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
        options: Options,
    ) -> Result<Chan<T>, crate::cid::StorageError> {
        let words = arena.alloc(WORDS)?;
        let gate = Box::into_raw(Box::new(Padded(AtomicU64::new(0))));
        // SAFETY: freed by `Drop` only, after the site (and every send) is gone.
        let gate_word: &'static AtomicU64 = unsafe { &(*gate).0 };
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
            gate_word,
        );
        let max_rings = u64::from(arena.cid_capacity()) * u64::from(arena.nodes().max(1))
            + u64::from(arena.lanes());
        Ok(Chan {
            numa: site.is_numa(),
            site,
            fence: FenceMode::detect(),
            closed: AtomicU32::new(0),
            capacity,
            slot_bytes: size_of::<Cell<T>>(),
            options,
            max_rings,
            buffer_layout,
            words,
            gate,
            senders: Padded(AtomicU64::new(1)),
            weak: AtomicU64::new(0),
            permits: AtomicU64::new(0),
            spill: Padded(Mutex::new(VecDeque::new())),
            spill_held: AtomicU64::new(0),
            closers: Mutex::new(Vec::new()),
            rx: Padded(RxSignal::new()),
            tx: Padded(TxSignal::new()),
            _values: PhantomData,
        })
    }

    /// The gate word (`GATE_*`).
    #[inline(always)]
    pub(super) fn gate(&self) -> &AtomicU64 {
        // SAFETY: allocated in `new`, freed in `Drop`.
        unsafe { &(*self.gate).0 }
    }

    /// Closes the gate for good (receiver closed or dropped) and, when `fence`,
    /// waits until no send that read the gate open can still publish: every send
    /// after this fails, and every send before it is visible to the receiver.
    /// Senders blocked on a full ring and tasks in `Sender::closed` are woken.
    /// False when the fence was refused (see [`crate::cid`]'s `quiesce`): a send
    /// already inside its section may then still publish.
    pub(super) fn close_gate(&self, fence: bool) -> bool {
        self.gate().fetch_or(GATE_CLOSED, Ordering::SeqCst);
        self.permits.fetch_or(PERMITS_CLOSED, Ordering::SeqCst);
        // A spilling sender checks the gate under the spill lock: once we held it,
        // every later spill sees the gate closed.
        drop(lock(&self.spill.0));
        let fenced = !fence || self.word(TAIL).quiesce().is_ok();
        self.tx.0.wake(u64::MAX);
        let closers = std::mem::take(&mut *lock(&self.closers));
        for (_, w) in closers {
            w.wake();
        }
        fenced
    }

    /// Whether the gate is closed (receiver closed or gone).
    #[inline]
    pub(super) fn gate_closed(&self) -> bool {
        self.gate().load(Ordering::Acquire) & GATE_CLOSED != 0
    }

    /// Puts `value` in the spill queue (behind every value there, with the gate's
    /// spill bit set), unless the caller's ring has room after all and the channel
    /// is not spilling: then it goes there. `Err` gives the value back when the gate
    /// is closed, unless `force` (a permit, whose send cannot fail).
    #[cold]
    #[inline(never)]
    pub(super) fn spill(&self, value: T, force: bool) -> Result<(), T> {
        let mut queue = lock(&self.spill.0);
        let mut value = value;
        let gate = self.gate().load(Ordering::SeqCst);
        if gate & GATE_CLOSED != 0 && !force {
            return Err(value);
        }
        if gate & GATE_SPILL == 0 {
            if gate & GATE_CLOSED == 0 {
                // The receiver may have emptied the ring since the section failed.
                let cell = Cell::new(value);
                // SAFETY: one initialised cell, forgotten once published.
                match unsafe { self.push(&cell, 1) } {
                    Pushed::Committed(_) => {
                        drop(queue);
                        self.rx.0.notify(self.fence);
                        return Ok(());
                    }
                    _ => value = cell.into_inner(),
                }
                if self.gate().load(Ordering::SeqCst) & GATE_CLOSED != 0 && !force {
                    return Err(value);
                }
            }
            self.gate().fetch_or(GATE_SPILL, Ordering::SeqCst);
        }
        queue.push_back(value);
        drop(queue);
        self.rx.0.notify(self.fence);
        Ok(())
    }

    /// Whether a send from the caller would likely find room now: the channel does
    /// not spill and the ring of the caller's shard (a hint: the thread may move)
    /// is not full. What `reserve` waits for.
    pub(super) fn room_hint(&self) -> bool {
        if self.options.unbounded {
            return true;
        }
        if self.gate().load(Ordering::Acquire) & GATE_SPILL != 0 {
            return false;
        }
        let tails = self.word(TAIL);
        let shard = tails.current_shard_hint();
        match (tails.at(shard), self.word(HEAD).at(shard)) {
            (Some(tail), Some(head)) => {
                let used = tail
                    .load(Ordering::Acquire)
                    .wrapping_sub(head.load(Ordering::Acquire));
                used < self.capacity
            }
            _ => true,
        }
    }

    /// Values in the rings and the spill queue now (a racy sum: senders and the
    /// receiver move while it adds up; values the receiver took and has not
    /// returned the slots of count as queued).
    pub(super) fn queued(&self) -> usize {
        let heads = self.word(HEAD);
        let mut n: u64 = 0;
        for (shard, tail) in self.word(TAIL).shards() {
            if let Some(head) = heads.at(shard) {
                let used = tail
                    .load(Ordering::Acquire)
                    .wrapping_sub(head.load(Ordering::Acquire));
                n = n.saturating_add(used.min(self.capacity));
            }
        }
        let held = self.spill_held.load(Ordering::Relaxed) as usize;
        (n as usize)
            .saturating_add(lock(&self.spill.0).len())
            .saturating_add(held)
    }

    /// The most values the rings can hold: `capacity × max_rings`.
    pub(super) fn max_capacity(&self) -> usize {
        if self.options.unbounded {
            return usize::MAX;
        }
        self.capacity.saturating_mul(self.max_rings) as usize
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
            let pushed = unsafe { self.site.push(src.cast(), count) };
            self.site.refresh_thin();
            match pushed {
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

    /// Whether slot buffers are mappings of their own: bound to their node (NUMA
    /// mode) or reserved and trimmed page by page (unbounded).
    fn mapped(&self) -> bool {
        self.numa || self.options.unbounded
    }

    fn alloc_buffer(&self, shard: Shard) -> *mut u8 {
        if self.mapped() {
            let len = self.mapped_len();
            let reserve = if self.options.unbounded {
                libc::MAP_NORESERVE
            } else {
                0
            };
            // SAFETY: an anonymous private mapping; no memory of ours is touched.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | reserve,
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
            if let Some(node) = node.filter(|_| self.numa) {
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
        if self.mapped() {
            // SAFETY: a mapping of `mapped_len` bytes made by `alloc_buffer`.
            unsafe { libc::munmap(buffer.cast(), self.mapped_len()) };
        } else {
            // SAFETY: allocated with this layout by `alloc_buffer`.
            unsafe { std::alloc::dealloc(buffer, self.buffer_layout) };
        }
    }

    /// Gives the pages of a ring's buffer back to the kernel, all but those holding
    /// positions `keep_from..keep_to` (values still queued).
    ///
    /// # Safety
    /// `buffer` is one of this channel's mapped buffers, and no send can write any
    /// slot of it until the call returns (the gate is closed and fenced).
    pub(super) unsafe fn release_pages(&self, buffer: *mut u8, keep_from: u64, keep_to: u64) {
        const PAGE: usize = 4096;
        let len = self.mapped_len();
        let kept = keep_to.wrapping_sub(keep_from).min(self.capacity) as usize;
        let start = (keep_from & (self.capacity - 1)) as usize * self.slot_bytes;
        let bytes = kept * self.slot_bytes;
        let ring_bytes = self.capacity as usize * self.slot_bytes;
        // Kept byte ranges (the second when the values wrap), widened to pages.
        let mut kept_ranges = Vec::with_capacity(2);
        if bytes > 0 {
            let end = start + bytes;
            if end <= ring_bytes {
                kept_ranges.push((start, end));
            } else {
                kept_ranges.push((0, end - ring_bytes));
                kept_ranges.push((start, ring_bytes));
            }
        }
        let mut from = 0;
        for (a, b) in kept_ranges
            .into_iter()
            .map(|(a, b)| (a / PAGE * PAGE, b.next_multiple_of(PAGE)))
            .chain([(len, len)])
        {
            if a > from {
                // SAFETY: page-aligned bytes of our mapping that hold no value and
                // that no send can write now (the caller).
                unsafe { libc::madvise(buffer.add(from).cast(), a - from, libc::MADV_DONTNEED) };
            }
            from = from.max(b);
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
        // SAFETY: allocated in `new`; the site that held its address goes with us.
        drop(unsafe { Box::from_raw(self.gate) });
    }
}
