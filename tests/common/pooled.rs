//! Pool objects for the pool torture tests: tagged with their holder, counting
//! their drops, and a small random generator for the threads' choices.

use percid::pool::PoolBox;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A pooled object that knows who holds it, and counts its drops.
pub struct Tagged {
    pub holder: AtomicU64,
    pub drops: Arc<AtomicUsize>,
}

impl Drop for Tagged {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::Relaxed);
    }
}

/// Claims an object that `from` held (0: the pool) for `to`.
pub fn pass(b: &PoolBox<'_, Tagged>, from: u64, to: u64) {
    let was = b.holder.swap(to, Ordering::AcqRel);
    assert_eq!(
        was, from,
        "object at {:p} held by {was}, expected {from} (moving it to {to})",
        &**b
    );
}

/// A small xorshift generator: each thread its own reproducible sequence.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}
