//! Debug checks of `PerCidAlloc::with_poisoning` (and debug builds): freed blocks
//! carry a pattern that is checked when they are handed out again (a write after
//! free), and a bit per 16 bytes of the reservation is set while the block starting
//! there is free (a second free).

use super::class::class_size;
use super::heap::HEAP;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const POISON: u8 = 0xdb;

/// Fills a free block past its two link words with the poison pattern.
pub(super) fn poison(block: *mut u8, class: usize) {
    let size = class_size(class);
    if size > 16 {
        // SAFETY: the block is ours and `size` bytes long.
        unsafe { std::ptr::write_bytes(block.add(16), POISON, size - 16) };
    }
}

/// Aborts unless a block about to be handed out still holds the poison pattern.
pub(super) fn check_poison(block: *mut u8, class: usize) {
    let size = class_size(class);
    if size <= 16 {
        return;
    }
    // SAFETY: the block is ours and `size` bytes long.
    let bytes = unsafe { std::slice::from_raw_parts(block.add(16), size - 16) };
    if let Some(at) = bytes.iter().position(|&b| b != POISON) {
        die(format_args!(
            "percid::alloc: a freed {size}-byte block at {block:p} was written after free (byte {})\n",
            at + 16
        ));
    }
}

/// Writes `msg` to stderr and aborts: an allocator never panics (it may run where
/// unwinding cannot).
pub(super) fn die(msg: std::fmt::Arguments<'_>) -> ! {
    let _ = std::io::Write::write_fmt(&mut std::io::stderr(), msg);
    std::process::abort();
}

/// The free bits: a `MAP_NORESERVE` map of one bit per 16 bytes of the reservation
/// (0 when poisoning is off), committed as the spans it describes are used.
pub(super) struct FreeMap(AtomicUsize);

impl FreeMap {
    pub(super) const fn new() -> FreeMap {
        FreeMap(AtomicUsize::new(0))
    }

    /// Maps the bits for a reservation of `len` bytes (poisoning on).
    pub(super) fn set_up(&self, len: usize) {
        // SAFETY: an anonymous private mapping, checked below; pages are committed
        // as the spans they describe are used.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len / 128,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if map != libc::MAP_FAILED {
            self.0.store(map as usize, Ordering::Relaxed);
        }
    }

    /// The word and bit of the block at `offset` bytes into the reservation.
    #[inline]
    fn bit(&self, offset: usize) -> Option<(&AtomicU64, u64)> {
        let map = self.0.load(Ordering::Relaxed);
        if map == 0 {
            return None;
        }
        let index = offset / 16;
        // SAFETY: the map covers the reservation, a bit per 16 bytes, and lives as
        // long as the process.
        let word = unsafe { &*((map + index / 64 * 8) as *const AtomicU64) };
        Some((word, 1 << (index % 64)))
    }

    /// Records a free of a block of ours; aborts when it was free already.
    pub(super) fn mark_free(&self, block: *mut u8, size: usize) {
        if let Some((word, bit)) = self.bit(HEAP.offset(block))
            && word.fetch_or(bit, Ordering::AcqRel) & bit != 0
        {
            die(format_args!(
                "percid::alloc: double free of the {size}-byte block at {block:p}\n"
            ));
        }
    }

    /// Records that a block of ours is handed out.
    pub(super) fn mark_used(&self, block: *mut u8) {
        if let Some((word, bit)) = self.bit(HEAP.offset(block)) {
            word.fetch_and(!bit, Ordering::AcqRel);
        }
    }

    /// Clears the bits of a span about to be carved for a class (its free blocks
    /// of an earlier class started elsewhere).
    pub(super) fn clear_span(&self, offset: usize, len: usize) {
        if let Some((word, _)) = self.bit(offset) {
            // SAFETY: `len / 128` bytes of the map from this span's first word
            // describe exactly the span (spans are 1024-byte multiples of 16 × 64).
            unsafe { std::ptr::write_bytes(word.as_ptr() as *mut u8, 0, len / 128) };
        }
    }
}
