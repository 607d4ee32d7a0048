//! Per-cid counters that replace `AtomicU64`, and per-cid values under a per-cid lock.
//!
//! A [`Counter`] is one word per cid in the process-wide [`crate::cid::Arena`]: `add`
//! runs the `load_add_store` critical section on the caller's cid (no atomic
//! read-modify-write, no lock, no shared cache line written), `sum` adds the words of
//! the cids that were really used. Ten thousand counters in a process that ran 64
//! threads on 2 CPUs hold 2 × 8 bytes each.
//!
//! # Migrating from `AtomicU64`
//!
//! | `AtomicU64` | percid |
//! |---|---|
//! | `fetch_add(n, Relaxed)`, result unused | [`Counter::add`]`(n)` |
//! | `fetch_add(1, Relaxed)`, result unused | [`Counter::inc`]`()` |
//! | `load(Relaxed)` | [`Counter::sum`]`()` (or [`Counter::approx`] when a bound will do) |
//! | `swap(0, ..)` to read and reset | [`Counter::take`]`()` |
//! | `fetch_sub` on a gauge | [`SignedCounter::sub`] |
//! | `load(..) > limit` | [`Counter::compare`]`(limit)` |
//!
//! What does not map: a sharded counter has no single previous value, so code that
//! *uses* the result of `fetch_add` (ticket numbers, unique ids, "am I the first")
//! keeps its `AtomicU64`; `compare_exchange` on the total likewise. `sum` is not a
//! snapshot: adds that run concurrently with it may or may not be included (each is
//! included once it has returned, before `sum` starts).
//!
//! # Signal handlers
//!
//! [`Counter::add`], [`Counter::inc`], [`SignedCounter::add`] and
//! [`SignedCounter::sub`] are async-signal-safe once the counter's storage exists
//! (built with [`CounterBuilder::build`], or one `add(0)` outside any handler),
//! also as a thread's first percid operation (see the crate docs, "Signal
//! handlers"); the reads (`sum`, `take`, `approx`, `compare`) always are.
//! [`PerCid`] is not (a handler can interrupt its own thread holding the shard's
//! lock), nor is [`NumaCounter`] (a node's first use reserves its plane under a
//! lock).
//!
//! # Overflow
//!
//! Counters wrap (two's complement), in every shard and in the sum, in debug and
//! release builds alike: nothing panics.

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod per_cid;

pub use per_cid::PerCid;

use crate::cid::{self, Arena, StorageError, ThinCell, Word, Words};
use crate::sync::{AtomicU64, Ordering};
use std::cmp::Ordering as CmpOrdering;
use std::fmt;
use std::sync::OnceLock;

/// Words a counter holds per cid: its value, and — only for a counter with a batch —
/// what the approximate total has already carried of it. A plain counter costs 8
/// bytes per cid.
const fn words_for(batch: u64) -> usize {
    if batch == 0 { 1 } else { 2 }
}
const CARRIED: usize = 1;

/// The shared part of every counter type: lazily allocated per-cid words, the part
/// already taken, and the approximate total.
struct Shards {
    /// The thin section's operands (see `ThinCell`): missing until the words
    /// exist.
    thin: ThinCell,
    words: OnceLock<Result<Words<'static>, StorageError>>,
    /// Raw sum at the last `take` (subtracted from every read).
    taken: AtomicU64,
    /// What the shards carried into the shared total (`approx`), batch by batch.
    carried: AtomicU64,
    /// Adds reach `carried` in steps of this; 0: no carry, `approx` sums.
    batch: u64,
    /// Adds that could not get per-cid storage (mmap failed) land here, so nothing
    /// is lost and nothing panics.
    spill: AtomicU64,
    /// A `NumaCounter`'s: allocate from the NUMA arena ([`cid::numa_global`])
    /// rather than the plain one, and keep the thin path off on many nodes.
    numa: bool,
}

/// Declares a `const fn` that loom's non-const atomics turn into a plain `fn`.
macro_rules! const_unless_loom {
    ($(#[$m:meta])* $vis:vis fn $name:ident() -> $ty:ty $body:block) => {
        #[cfg(not(loom))]
        $(#[$m])* $vis const fn $name() -> $ty $body
        #[cfg(loom)]
        $(#[$m])* $vis fn $name() -> $ty $body
    };
}

// After the macro, which it uses.
mod numa;
pub use numa::NumaCounter;

impl Shards {
    const_unless_loom! {
        fn new() -> Shards {
            Shards {
                thin: ThinCell::missing(),
                words: OnceLock::new(),
                taken: AtomicU64::new(0),
                carried: AtomicU64::new(0),
                batch: 0,
                spill: AtomicU64::new(0),
                numa: false,
            }
        }
    }

    const_unless_loom! {
        fn new_numa() -> Shards {
            let mut shards = Shards::new();
            shards.numa = true;
            shards
        }
    }

    fn eager(arena: &'static Arena, batch: u64) -> Result<Shards, StorageError> {
        Shards::eager_as(Shards::new(), arena, batch)
    }

    /// [`Shards::eager`] for `shards` as made (plain or NUMA).
    fn eager_as(
        mut shards: Shards,
        arena: &'static Arena,
        batch: u64,
    ) -> Result<Shards, StorageError> {
        shards.batch = batch;
        let words = arena.alloc(words_for(batch))?;
        shards.publish(&words);
        let _ = shards.words.set(Ok(words));
        Ok(shards)
    }

    /// Makes the thin path see the words. A NUMA counter on more than one node
    /// keeps it off: its adds take the NUMA section, on the node's plane.
    fn publish(&self, words: &Words<'static>) {
        if !(self.numa && words.first().nodes() > 1) {
            self.thin.set(words.first().hot());
        }
    }

    #[inline(always)]
    fn value(&self) -> Option<Word<'_>> {
        match self.words.get() {
            Some(Ok(words)) => Some(words.first()),
            Some(Err(_)) => None,
            None => self.value_slow(),
        }
    }

    #[cold]
    fn value_slow(&self) -> Option<Word<'_>> {
        match self.words.get_or_init(|| {
            let arena = if self.numa {
                cid::numa_global()
            } else {
                cid::global()
            };
            arena.alloc(words_for(self.batch))
        }) {
            Ok(words) => {
                self.publish(words);
                Some(words.first())
            }
            Err(_) => None,
        }
    }

    /// The fast path: one thin rseq section on the word's addresses, nothing else
    /// (and a batch's carry check).
    #[inline(always)]
    fn add(&self, n: u64) {
        if self.batch == 0 {
            if self.thin.add(n) {
                return;
            }
        } else {
            // Laid out after the plain add, which stays the straight line: a taken
            // branch per plain add cost 5-15% (1.07-1.27 ns against 1.00-1.05).
            cid::cold_path();
            if let Some(idx) = self.thin.add_index(n) {
                // SAFETY: the section just committed on `idx`, the words hold
                // `CARRIED + 1` words, and `self` keeps them alive.
                let (v, c) = unsafe {
                    (
                        self.thin.unit_word(idx, 0),
                        self.thin.unit_word(idx, CARRIED),
                    )
                };
                self.carry_words(v, c);
                return;
            }
        }
        self.add_slow(n);
    }

    /// First use, other backends, `cpu_id` indexing, aborts, new cids, storage
    /// failure.
    #[cold]
    #[inline(never)]
    fn add_slow(&self, n: u64) {
        match self.value() {
            Some(word) => {
                let shard = word.add(n);
                if self.batch != 0 {
                    self.carry(word, shard);
                }
                // The add may have materialised a new cid: the next is thin.
                self.thin.refresh(|| word.hot().1);
            }
            None => {
                self.spill.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Moves whole batches of the shard's value into the shared total. The per-cid
    /// carried word is only ever updated with atomic compare-and-swap (never by a
    /// section), and only to at most the shard's value.
    #[inline]
    fn carry(&self, value: Word<'_>, shard: cid::Shard) {
        let Some(Ok(words)) = self.words.get() else {
            return;
        };
        let Some(carried_word) = words.get(CARRIED) else {
            return;
        };
        let (Some(v), Some(c)) = (value.at(shard), carried_word.at(shard)) else {
            return;
        };
        self.carry_words(v, c);
    }

    /// [`Shards::carry`] on one shard's value and carried words.
    #[inline(always)]
    fn carry_words(&self, v: &AtomicU64, c: &AtomicU64) {
        // The carried word first, with acquire: see `carry_slow`.
        let carried = c.load(Ordering::Acquire);
        let pending = v.load(Ordering::Relaxed).wrapping_sub(carried);
        if pending >= self.batch {
            self.carry_slow(v, c);
        }
    }

    /// Carries until the shard's uncarried remainder is below the batch, so that once
    /// adds have returned every shard holds less than a batch uncarried.
    #[cold]
    fn carry_slow(&self, value: &AtomicU64, carried: &AtomicU64) {
        loop {
            // Carried before value, and with acquire (the swap below releases): a
            // carrier read the value before moving the carried word past it, so this
            // thread's read of the value cannot be older than that, and the
            // remainder never comes out "negative".
            let c = carried.load(Ordering::Acquire);
            let pending = value.load(Ordering::Relaxed).wrapping_sub(c);
            // Wrapping arithmetic: a counter with a batch is a `Counter` (gauges have
            // none), whose uncarried remainder is `value - carried` modulo 2^64.
            if pending < self.batch {
                return;
            }
            let whole = pending - pending % self.batch;
            if carried
                .compare_exchange(
                    c,
                    c.wrapping_add(whole),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            {
                self.carried.fetch_add(whole, Ordering::Release);
            }
        }
    }

    /// Sum of every shard and the spill, before subtracting what was taken.
    fn raw_sum(&self) -> u64 {
        let shards = match self.words.get() {
            Some(Ok(words)) => words.first().sum(),
            _ => 0,
        };
        shards.wrapping_add(self.spill.load(Ordering::Relaxed))
    }

    /// The raw sum minus what was taken. `taken` is read first, with acquire: the
    /// take that stored it read every shard before its release, so the shard reads
    /// here are not older than those and the difference never goes below zero.
    fn sum(&self) -> u64 {
        let taken = self.taken.load(Ordering::Acquire);
        self.raw_sum().wrapping_sub(taken)
    }

    /// Reads and resets: every add lands in exactly one `take` or in a later `sum`.
    ///
    /// Take k returns `S_k - S_{k-1}` where `S_k` is the raw sum it read; the
    /// compare-and-swap on `taken` orders takes, and every take reads each shard after
    /// the previous take did, so the differences telescope: an add committed between
    /// two takes' reads of its shard is counted by the later take, once.
    fn take(&self) -> u64 {
        let mut prev = self.taken.load(Ordering::Acquire);
        loop {
            let now = self.raw_sum();
            match self
                .taken
                .compare_exchange(prev, now, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return now.wrapping_sub(prev),
                Err(actual) => prev = actual,
            }
        }
    }

    /// Cids (and lanes) that may hold an uncarried remainder.
    fn shards_seen(&self) -> u64 {
        match self.words.get() {
            Some(Ok(words)) => u64::from(words.first().shard_count()),
            _ => 0,
        }
    }

    fn approx(&self) -> (u64, u64) {
        if self.batch == 0 {
            return (self.sum(), 0);
        }
        // `taken` first (acquire), then what was carried. Both are running totals
        // since creation; the carried one may trail `taken` (adds committed but not
        // yet carried when the take read them), so the difference saturates at 0. A
        // counter whose adds exceed 2^64 in all wraps, and its approximation with it.
        let taken = self.taken.load(Ordering::Acquire);
        let carried = self
            .carried
            .load(Ordering::Acquire)
            .wrapping_add(self.spill.load(Ordering::Relaxed));
        let max_error = self.shards_seen().saturating_mul(self.batch - 1);
        (carried.saturating_sub(taken), max_error)
    }

    fn compare(&self, n: u64) -> CmpOrdering {
        let (value, error) = self.approx();
        if u128::from(value) + u128::from(error) < u128::from(n) {
            CmpOrdering::Less
        } else if u128::from(value) > u128::from(n) + u128::from(error) {
            CmpOrdering::Greater
        } else {
            self.sum().cmp(&n)
        }
    }
}

/// A `u64` counter sharded by cid: a drop-in for `AtomicU64` used with
/// `fetch_add(n, Relaxed)` and `load`. Usable from signal handlers once its
/// storage exists (see [`Counter::add`]).
///
/// ```
/// use percid::Counter;
///
/// static REQUESTS: Counter = Counter::new();
///
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| for _ in 0..1000 { REQUESTS.inc() });
///     }
/// });
/// assert_eq!(REQUESTS.sum(), 4000);
/// ```
pub struct Counter {
    shards: Shards,
}

impl Counter {
    const_unless_loom! {
        /// A counter at zero. `const`, so it can be a `static`; its per-cid storage
        /// is allocated on first use.
        pub fn new() -> Counter {
            Counter {
                shards: Shards::new(),
            }
        }
    }

    /// A counter with an approximate total: see [`CounterBuilder`].
    pub fn builder() -> CounterBuilder {
        CounterBuilder {
            batch: 0,
            arena: None,
        }
    }

    /// Adds `n` (wrapping) on the caller's cid: one rseq critical section.
    ///
    /// Async-signal-safe once the counter's storage exists (the first call, or
    /// [`CounterBuilder::build`], allocates it) and the thread's backend is resolved:
    /// see the crate docs, "Signal handlers".
    ///
    /// ```
    /// static BYTES: percid::Counter = percid::Counter::new();
    /// BYTES.add(1500);
    /// assert_eq!(BYTES.sum(), 1500);
    /// ```
    #[inline]
    pub fn add(&self, n: u64) {
        self.shards.add(n);
    }

    /// Adds one. Async-signal-safe as [`Counter::add`].
    ///
    /// ```
    /// let hits = percid::Counter::new();
    /// std::thread::scope(|s| {
    ///     for _ in 0..4 {
    ///         s.spawn(|| (0..1000).for_each(|_| hits.inc()));
    ///     }
    /// });
    /// assert_eq!(hits.sum(), 4000);
    /// ```
    #[inline]
    pub fn inc(&self) {
        self.shards.add(1);
    }

    /// The total: every add that returned before this call started, and maybe some
    /// that run concurrently. Visits only the cids the process used.
    pub fn sum(&self) -> u64 {
        self.shards.sum()
    }

    /// The address of the counter's word in the first cid's unit (`None` before
    /// the first add of a `const` counter): benchmarks print its page offset, so a
    /// reader can rule out 4K aliasing with the loop's own memory.
    #[doc(hidden)]
    pub fn word_address(&self) -> Option<usize> {
        self.shards
            .words
            .get()
            .and_then(|w| w.as_ref().ok())
            .map(|w| w.first().hot().0 as usize)
    }

    /// Reads and resets the counter: every add lands in exactly one `take` or in a
    /// later [`Counter::sum`], even with adds and takes running concurrently.
    ///
    /// ```
    /// let errors = percid::Counter::new();
    /// errors.add(7);
    /// assert_eq!(errors.take(), 7); // read and reset, for a per-interval report
    /// assert_eq!(errors.sum(), 0);
    /// ```
    pub fn take(&self) -> u64 {
        self.shards.take()
    }

    /// A cheap read and its error bound: the total lies within `value ..= value +
    /// max_error` once concurrent adds and takes have returned (`max_error` = shards
    /// seen × (batch − 1), saturating). Costs two loads and no walk over the shards.
    /// With no batch (the default), the exact [`Counter::sum`] and 0.
    ///
    /// ```
    /// let c = percid::Counter::builder().batch(16).build().unwrap();
    /// c.add(100);
    /// let (value, max_error) = c.approx();
    /// assert!(value <= 100 && 100 <= value + max_error);
    /// ```
    pub fn approx(&self) -> (u64, u64) {
        self.shards.approx()
    }

    /// Compares the total with `n`: decided by [`Counter::approx`] when its bound
    /// allows, by [`Counter::sum`] otherwise, so the answer is always exact.
    ///
    /// ```
    /// use std::cmp::Ordering;
    ///
    /// let c = percid::Counter::new();
    /// c.add(10);
    /// assert_eq!(c.compare(5), Ordering::Greater);
    /// assert_eq!(c.compare(10), Ordering::Equal);
    /// ```
    pub fn compare(&self, n: u64) -> CmpOrdering {
        self.shards.compare(n)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Counter::new()
    }
}

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Counter").field("sum", &self.sum()).finish()
    }
}

/// Builds a [`Counter`] or [`SignedCounter`] with an approximate total.
///
/// ```
/// let requests = percid::Counter::builder().batch(64).build().unwrap();
/// requests.add(3);
/// assert_eq!(requests.sum(), 3);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct CounterBuilder {
    batch: u64,
    arena: Option<&'static Arena>,
}

impl CounterBuilder {
    /// Each cid carries its adds into a shared total in steps of `batch`, making
    /// [`Counter::approx`] O(1) with an error of at most (batch − 1) per cid seen.
    /// 0 (the default) disables the carry. A carry costs one atomic add per `batch`.
    ///
    /// ```
    /// let c = percid::Counter::builder().batch(32).build().unwrap();
    /// c.inc();
    /// assert_eq!(c.sum(), 1);
    /// ```
    pub fn batch(mut self, batch: u64) -> Self {
        self.batch = batch;
        self
    }

    /// Allocates the counter's per-cid words from `arena` instead of the
    /// process-wide one (a dedicated or node-local arena; loom models).
    pub fn arena(mut self, arena: &'static Arena) -> Self {
        self.arena = Some(arena);
        self
    }

    /// A counter with its per-cid storage allocated now.
    ///
    /// # Errors
    /// [`StorageError`] when the arena cannot allocate the per-cid words.
    pub fn build(self) -> Result<Counter, StorageError> {
        let arena = self.arena.unwrap_or_else(cid::global);
        Ok(Counter {
            shards: Shards::eager(arena, self.batch)?,
        })
    }

    /// A gauge with its per-cid storage allocated now (the batch is not used:
    /// gauges have no approximate read).
    ///
    /// # Errors
    /// [`StorageError`] when the arena cannot allocate the per-cid words.
    ///
    /// ```
    /// let queue_depth = percid::Counter::builder().build_signed().unwrap();
    /// queue_depth.add(3);
    /// queue_depth.sub(1);
    /// assert_eq!(queue_depth.sum(), 2);
    /// ```
    pub fn build_signed(self) -> Result<SignedCounter, StorageError> {
        let arena = self.arena.unwrap_or_else(cid::global);
        Ok(SignedCounter {
            shards: Shards::eager(arena, 0)?,
        })
    }
}

/// An `i64` counter sharded by cid, for gauges (requests in flight, bytes in use).
///
/// ```
/// use percid::SignedCounter;
///
/// let in_flight = SignedCounter::new();
/// in_flight.add(3);
/// in_flight.sub(5);
/// assert_eq!(in_flight.sum(), -2);
/// ```
pub struct SignedCounter {
    shards: Shards,
}

impl SignedCounter {
    const_unless_loom! {
        /// A gauge at zero; `const`, usable as a `static`.
        pub fn new() -> SignedCounter {
            SignedCounter {
                shards: Shards::new(),
            }
        }
    }

    /// Adds `n` (wrapping) on the caller's cid. Async-signal-safe as
    /// [`Counter::add`].
    #[inline]
    pub fn add(&self, n: i64) {
        self.shards.add(n as u64);
    }

    /// Subtracts `n` (wrapping) on the caller's cid. Async-signal-safe as
    /// [`Counter::add`].
    ///
    /// ```
    /// let g = percid::SignedCounter::new();
    /// g.sub(4);
    /// assert_eq!(g.sum(), -4);
    /// ```
    #[inline]
    pub fn sub(&self, n: i64) {
        self.shards.add(n.wrapping_neg() as u64);
    }

    /// The total (see [`Counter::sum`]).
    pub fn sum(&self) -> i64 {
        self.shards.sum() as i64
    }

    /// Reads and resets (see [`Counter::take`]).
    pub fn take(&self) -> i64 {
        self.shards.take() as i64
    }
}

impl Default for SignedCounter {
    fn default() -> Self {
        SignedCounter::new()
    }
}

impl fmt::Debug for SignedCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedCounter")
            .field("sum", &self.sum())
            .finish()
    }
}
