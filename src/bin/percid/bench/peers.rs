//! The counter peers `percid bench counter` and `benches/counter.rs` measure against:
//! a LongAdder-style striped counter and the thread-local no-sharing limit. One file,
//! included by both (`#[path]` from the criterion bench), so they time the same code.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    /// The thread-local peer: no sharing at all, the floor for any shared counter.
    pub(crate) static TLS_COUNT: Cell<u64> = const { Cell::new(0) };
}

/// Own cache lines (128 bytes: adjacent-line prefetch on x86), so a peer's cells never
/// false-share with each other or with anything else.
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// The LongAdder-style peer: `2 × CPUs` padded cells (a power of two), each thread
/// adding to the cell its stripe hash picks. The hash spreads consecutive threads to
/// different cells, which is the striped counter at its best (LongAdder itself starts
/// with one cell and probes randomly).
pub(crate) struct Striped {
    cells: Box<[Padded<AtomicU64>]>,
    /// Right shift that turns a stripe hash into a cell index.
    shift: u32,
}

impl Striped {
    pub(crate) fn new() -> Striped {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let len = (2 * cpus).next_power_of_two();
        Striped {
            cells: (0..len).map(|_| Padded(AtomicU64::new(0))).collect(),
            shift: 64 - len.trailing_zeros(),
        }
    }

    #[inline]
    pub(crate) fn inc(&self) {
        let cell = (stripe_hash() >> self.shift) as usize;
        self.cells[cell].0.fetch_add(1, Ordering::Relaxed);
    }

    #[allow(dead_code)] // the criterion bench never sums
    pub(crate) fn sum(&self) -> u64 {
        self.cells
            .iter()
            .fold(0, |sum, c| sum.wrapping_add(c.0.load(Ordering::Relaxed)))
    }
}

/// Threads numbered in order of their first striped add.
static NEXT_STRIPE: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's stripe hash; 0 until its first striped add.
    static STRIPE: Cell<u64> = const { Cell::new(0) };
}

/// The calling thread's stripe hash, computed once per thread: its number times
/// 2^64/φ (Fibonacci hashing), whose top bits put consecutive numbers in different
/// cells whenever there are at least 4 (2 × CPUs on any multi-CPU machine).
#[inline]
fn stripe_hash() -> u64 {
    STRIPE.with(|s| match s.get() {
        0 => {
            let h = stripe_of(NEXT_STRIPE.fetch_add(1, Ordering::Relaxed));
            s.set(h);
            h
        }
        h => h,
    })
}

/// Thread number `n`'s stripe hash; the odd multiplier keeps it nonzero for n > 0.
pub(crate) fn stripe_of(n: u64) -> u64 {
    n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}
