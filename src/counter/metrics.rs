//! Feature `metrics`: percid counters as handles of the [`metrics`] facade.
//!
//! [`Counter`] implements [`metrics::CounterFn`] and [`SignedCounter`] implements
//! [`metrics::GaugeFn`], so a [`metrics::Recorder`] can hand out handles backed by
//! per-cid shards with `metrics::Counter::from_arc(Arc<percid::Counter>)` and
//! `metrics::Gauge::from_arc(Arc<percid::SignedCounter>)` (the facade's blanket
//! impls for `Arc<T>` do the rest). `metrics::counter!("x").increment(1)` then costs
//! one rseq critical section instead of an atomic read-modify-write on a shared line.
//! `examples/metrics_registry.rs` is a whole recorder built this way.
//!
//! Two operations of the facade have no sharded equivalent, and are emulated:
//!
//! * `CounterFn::absolute(v)` ("set to at least `v`") reads the sum and adds the
//!   difference when it is below `v`.
//! * `GaugeFn::set(v)` takes (reads and resets) the total, then adds `v`.
//!
//! Both are read-then-write. Run unguarded, two of them could interleave (two
//! `absolute(100)` both reading 40 would add 60 twice), so each runs under
//! [`EMULATION`], one lock shared by all counters: these are rare operations
//! (syncing with an external source, setting a gauge), and the lock never touches
//! the `add` path. What the lock cannot order is a concurrent `increment`: see each
//! method's documentation.

use super::{Counter, SignedCounter};
use std::sync::{Mutex, PoisonError};

/// Serialises the emulated read-then-write operations (`absolute`, `set`) with each
/// other. Never held across anything but one `sum`/`take` and one `add`.
///
/// A plain `std` lock rather than the `crate::sync` facade: it must be a `const`
/// static, and loom models never enable the `metrics` feature.
static EMULATION: Mutex<()> = Mutex::new(());

fn emulation_lock() -> std::sync::MutexGuard<'static, ()> {
    // Nothing panics while the lock is held, and `()` has no state to corrupt.
    EMULATION.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A counter of the `metrics` facade: `increment` is [`Counter::add`].
impl ::metrics::CounterFn for Counter {
    /// [`Counter::add`]: one critical section on the caller's cid.
    #[inline]
    fn increment(&self, value: u64) {
        self.add(value);
    }

    /// Raises the counter to `value` if its total is below it, and never lowers it.
    ///
    /// A sharded counter has no atomic "set": this reads [`Counter::sum`] and, when
    /// it is below `value`, adds the difference. Calls to `absolute` (on any
    /// counter) are serialised with each other, so concurrent callers publishing
    /// the same or reordered external values never overshoot the largest one.
    /// An `increment` running concurrently lands on top: the total becomes
    /// `value` plus that increment, as if it had come just after.
    fn absolute(&self, value: u64) {
        let _guard = emulation_lock();
        let total = self.sum();
        if total < value {
            self.add(value - total);
        }
    }
}

/// Rounds a facade value to the integer a [`SignedCounter`] holds: nearest integer
/// (ties away from zero), saturating at the `i64` range; `None` for NaN.
fn to_integer(value: f64) -> Option<i64> {
    if value.is_nan() {
        None
    } else {
        // `as` saturates for out-of-range values and infinities.
        Some(value.round() as i64)
    }
}

/// A gauge of the `metrics` facade. **percid gauges are integer gauges**: every value
/// passed in is rounded to the nearest integer (ties away from zero) before it is
/// applied, so `increment(0.4)` adds nothing and ten of them still add nothing.
/// Values beyond the `i64` range saturate; NaN is ignored. Keep fractional gauges
/// (ratios, temperatures) on the facade's `f64`-in-`AtomicU64` gauge.
impl ::metrics::GaugeFn for SignedCounter {
    /// [`SignedCounter::add`] of `value` rounded to the nearest integer.
    #[inline]
    fn increment(&self, value: f64) {
        if let Some(n) = to_integer(value) {
            self.add(n);
        }
    }

    /// [`SignedCounter::sub`] of `value` rounded to the nearest integer.
    #[inline]
    fn decrement(&self, value: f64) {
        if let Some(n) = to_integer(value) {
            self.sub(n);
        }
    }

    /// Sets the gauge to `value` rounded to the nearest integer:
    /// [`SignedCounter::take`] then [`SignedCounter::add`].
    ///
    /// Calls to `set` are serialised with each other (the last one wins, never a
    /// mix of two). An `increment`/`decrement` running concurrently with a `set` may
    /// land before it (and be overwritten) or after it (and stay, on top of
    /// `value`): the same outcomes as with an atomic gauge, but a `sum` read during
    /// the `set` may also see the gauge briefly at 0 plus concurrent updates.
    fn set(&self, value: f64) {
        let Some(n) = to_integer(value) else {
            return;
        };
        let _guard = emulation_lock();
        self.take();
        self.add(n);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use ::metrics::{CounterFn, GaugeFn};
    use std::sync::Arc;

    #[test]
    fn increment_adds() {
        let c = Counter::new();
        CounterFn::increment(&c, 3);
        CounterFn::increment(&c, 4);
        assert_eq!(c.sum(), 7);
    }

    #[test]
    fn absolute_raises_and_never_lowers() {
        let c = Counter::new();
        c.absolute(10);
        assert_eq!(c.sum(), 10);
        c.absolute(4);
        assert_eq!(c.sum(), 10, "absolute must not lower the counter");
        c.absolute(10);
        assert_eq!(c.sum(), 10);
        c.increment(5);
        c.absolute(12);
        assert_eq!(c.sum(), 15);
        c.absolute(u64::MAX);
        assert_eq!(c.sum(), u64::MAX);
    }

    #[test]
    fn absolute_after_take_counts_from_the_reset() {
        let c = Counter::new();
        c.add(50);
        assert_eq!(c.take(), 50);
        c.absolute(20);
        assert_eq!(c.sum(), 20);
    }

    #[test]
    fn concurrent_absolute_does_not_overshoot() {
        for _ in 0..20 {
            let c = Counter::new();
            std::thread::scope(|s| {
                for t in 0..8u64 {
                    let c = &c;
                    // Reordered publications of an external counter: 93..=100.
                    s.spawn(move || c.absolute(93 + t));
                }
            });
            assert_eq!(c.sum(), 100);
        }
    }

    #[test]
    fn concurrent_increments_are_exact() {
        let c = Arc::new(Counter::new());
        let handle = ::metrics::Counter::from_arc(Arc::clone(&c));
        std::thread::scope(|s| {
            for _ in 0..8 {
                let handle = handle.clone();
                s.spawn(move || {
                    for _ in 0..10_000 {
                        handle.increment(1);
                    }
                });
            }
        });
        assert_eq!(c.sum(), 80_000);
    }

    #[test]
    fn gauge_rounds_to_nearest_integer() {
        let g = SignedCounter::new();
        g.increment(2.4);
        assert_eq!(g.sum(), 2);
        g.increment(0.5);
        assert_eq!(g.sum(), 3, "ties round away from zero");
        g.decrement(1.6);
        assert_eq!(g.sum(), 1);
        g.decrement(3.0);
        assert_eq!(g.sum(), -2);
        g.increment(-0.5);
        assert_eq!(g.sum(), -3, "ties round away from zero");
        for _ in 0..10 {
            g.increment(0.4);
        }
        assert_eq!(g.sum(), -3, "fractions below one half are lost");
    }

    #[test]
    fn gauge_ignores_nan_and_saturates() {
        let g = SignedCounter::new();
        g.increment(f64::NAN);
        g.decrement(f64::NAN);
        assert_eq!(g.sum(), 0);
        g.set(7.0);
        g.set(f64::NAN);
        assert_eq!(g.sum(), 7, "set(NaN) leaves the gauge alone");
        g.set(f64::INFINITY);
        assert_eq!(g.sum(), i64::MAX);
        g.set(f64::NEG_INFINITY);
        assert_eq!(g.sum(), i64::MIN);
        g.set(1e300);
        assert_eq!(g.sum(), i64::MAX);
    }

    #[test]
    fn gauge_set_replaces_the_value() {
        let g = SignedCounter::new();
        g.increment(40.0);
        g.set(5.0);
        assert_eq!(g.sum(), 5);
        g.increment(2.0);
        assert_eq!(g.sum(), 7);
        g.set(-3.2);
        assert_eq!(g.sum(), -3);
        g.set(0.0);
        assert_eq!(g.sum(), 0);
    }

    #[test]
    fn concurrent_sets_leave_one_of_the_values() {
        for _ in 0..20 {
            let g = SignedCounter::new();
            std::thread::scope(|s| {
                for t in 0..8i32 {
                    let g = &g;
                    s.spawn(move || g.set(f64::from(100 + t)));
                }
            });
            let v = g.sum();
            assert!((100..108).contains(&v), "a mix of two sets: {v}");
        }
    }

    #[test]
    fn gauge_handle_from_arc_balances() {
        let g = Arc::new(SignedCounter::new());
        let handle = ::metrics::Gauge::from_arc(Arc::clone(&g));
        std::thread::scope(|s| {
            for _ in 0..8 {
                let handle = handle.clone();
                s.spawn(move || {
                    for _ in 0..5_000 {
                        handle.increment(1.0);
                        handle.decrement(1.0);
                    }
                    handle.increment(2.0);
                });
            }
        });
        assert_eq!(g.sum(), 16);
    }
}
