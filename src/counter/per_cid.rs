//! `PerCid<T>`: one value per cid, guarded by a per-cid lock taken with an rseq
//! compare-and-store — the "per-CPU spinlock" of the rseq work, keyed by mm_cid.
//!
//! Lock word states, per shard: `0` free; [`LOCKED`] held by a thread that took it
//! with a critical section on that shard; an even token (2, 4, ...) held by a thread
//! visiting from elsewhere (`for_each`), unique per visit. Only sections (and the lane
//! lock, for lanes) move it from free to [`LOCKED`], a visitor from free to its token;
//! only the holder moves it back to free, with an atomic store, from whatever CPU it
//! runs on by then. A holder that is preempted keeps the lock: the others on that cid
//! spin briefly, then yield.
//!
//! # fork
//!
//! A shard held by another thread at `fork()` would stay held in the child, and its
//! value might be half-updated. So `with` and `for_each` run inside a held region
//! ([`crate::cid::fork::hold`]): the fork waits until every closure running then has
//! returned, and closures that would start meanwhile wait until the fork is done
//! (like glibc's malloc, which takes its arenas' locks around `fork()`). The child
//! then finds every shard free and every value as its last holder left it. The cost
//! on `with`: a thread-local depth and two per-cid counter adds, no shared cache
//! line written. A closure that forks runs on in the child (its own region does not
//! hold the fork up); one that waits for another thread, while that thread is about
//! to enter a percid region, holds the fork up until then.

use crate::cid::{self, Arena, ForeignError, Shard, StorageError, ThinCell, Word, Words};
use crate::rseq::MembarrierError;
use crate::sync::{AtomicU64, Ordering};
use std::cell::UnsafeCell;
use std::fmt;
use std::sync::OnceLock;

const LOCKED: u64 = 1;

/// A fresh owner token for one visit: even and at least 2, so never `LOCKED`, and
/// unique, so two visitors can never both believe they hold one shard.
fn visit_token() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) << 1
}

/// A value padded to its own cache lines (128 bytes: adjacent-line prefetch on x86).
#[repr(align(128))]
struct Padded<T>(UnsafeCell<T>);

/// One `T` per cid, created lazily by an init closure, each behind its cid's lock.
///
/// ```
/// use percid::counter::PerCid;
///
/// // A per-cid scratch buffer, reused by whichever thread runs on that cid.
/// let scratch = PerCid::new(|| Vec::<u8>::with_capacity(4096)).unwrap();
/// let len = scratch.with(|buf| {
///     buf.clear();
///     buf.extend_from_slice(b"hello");
///     buf.len()
/// });
/// assert_eq!(len, 5);
/// ```
///
/// `with` must not be nested on the same `PerCid` (the inner call waits for the
/// lock its own thread holds, like a nested `Mutex::lock`).
///
/// Values move between threads (whoever runs on a cid uses its value), so sharing a
/// `PerCid` needs `T: Send`:
///
/// ```compile_fail
/// fn shared<T: Sync>(_: &T) {}
/// let values = percid::PerCid::new(|| std::rc::Rc::new(0u8)).unwrap();
/// shared(&values); // Rc is not Send: error
/// ```
pub struct PerCid<T, F = fn() -> T> {
    lock: Words<'static>,
    /// The lock word's thin section (see `ThinCell`).
    thin: ThinCell,
    /// Values by unit: cids first, then lanes.
    values: Box<[OnceLock<Box<Padded<T>>>]>,
    cids: u32,
    init: F,
}

// SAFETY: values are only reached under their shard's lock (or with `&mut self`), so
// sharing the `PerCid` shares `T` only by moving exclusive access between threads.
unsafe impl<T: Send, F: Sync> Sync for PerCid<T, F> {}
// SAFETY: moving the `PerCid` moves the `T`s and the init closure.
unsafe impl<T: Send, F: Send> Send for PerCid<T, F> {}

/// Releases a shard's lock on drop, also when the closure panics.
struct Unlock<'a>(&'a AtomicU64);

impl Drop for Unlock<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

impl<T, F: Fn() -> T> PerCid<T, F> {
    /// A `PerCid` whose values are created by `init` on first use of each cid.
    ///
    /// # Errors
    ///
    /// [`StorageError`] when the process-wide arena cannot give the lock word (its
    /// reservation failed: [`StorageError::Map`] with the `mmap` errno).
    pub fn new(init: F) -> Result<Self, StorageError> {
        Self::new_in(cid::global(), init)
    }

    /// A `PerCid` whose lock words come from `arena` (a dedicated arena; loom models).
    ///
    /// # Errors
    ///
    /// [`StorageError`] when `arena` cannot give the lock word (its reservation
    /// failed: [`StorageError::Map`] with the `mmap` errno).
    ///
    /// ```
    /// use percid::cid::Arena;
    ///
    /// let arena: &'static Arena = Box::leak(Box::new(Arena::new()));
    /// let counts = percid::PerCid::new_in(arena, || 0u64).unwrap();
    /// counts.with(|n| *n += 1);
    /// ```
    pub fn new_in(arena: &'static Arena, init: F) -> Result<Self, StorageError> {
        let lock = arena.alloc(1)?;
        let units = arena.cid_capacity() as usize + arena.lanes() as usize;
        Ok(PerCid {
            thin: ThinCell::new(true, lock.first().hot()),
            lock,
            values: (0..units).map(|_| OnceLock::new()).collect(),
            cids: arena.cid_capacity(),
            init,
        })
    }

    fn lock_word(&self) -> Word<'_> {
        self.lock.word(0)
    }

    fn slot(&self, shard: Shard) -> Option<&OnceLock<Box<Padded<T>>>> {
        let unit = match shard {
            // The lock is a plain word: its sections run on plane 0 only.
            Shard::Cid(c) | Shard::NodeCid { node: 0, cid: c } => c as usize,
            Shard::NodeCid { .. } => return None,
            Shard::Lane(l) => self.cids as usize + l as usize,
        };
        self.values.get(unit)
    }

    /// Runs `f` with exclusive access to the current cid's value (created by `init`
    /// the first time). The lock is taken with one rseq compare-and-store: no atomic
    /// read-modify-write when uncontended.
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // Before the lock (and released after it): a fork waits for the closure.
        let _fork = crate::cid::fork::hold();
        let (lock, slot) = match self.thin.compare_store_index(0, LOCKED) {
            Some(idx) => {
                // SAFETY: the section committed on `idx`, in the lock word's
                // allocation, which `self` keeps alive.
                let lock = unsafe { self.thin.unit_word(idx, 0) };
                // `idx` is below the arena's capacity: `values` has its slot.
                (lock, &self.values[idx as usize])
            }
            None => self.lock_slow(),
        };
        let _unlock = Unlock(lock);
        let value = slot.get_or_init(|| Box::new(Padded(UnsafeCell::new((self.init)()))));
        // SAFETY: this thread holds the shard's lock, so no other reference to the
        // shard's value exists until `_unlock` releases it.
        f(unsafe { &mut *value.0.get() })
    }

    /// Takes the caller's shard lock past the thin section: other backends, `cpu_id`
    /// indexing, a new cid, a lock held by a visitor ([`PerCid::for_each`]).
    #[inline(never)]
    fn lock_slow(&self) -> (&AtomicU64, &OnceLock<Box<Padded<T>>>) {
        let word = self.lock_word();
        let mut round = 0;
        let shard = loop {
            match word.compare_store(0, LOCKED) {
                Ok(shard) => break shard,
                Err(_) => crate::sync::backoff(&mut round),
            }
        };
        // A new cid may have been materialised: the next lock is thin.
        self.thin.refresh(|| word.hot().1);
        // `compare_store` only reports shards it could address, so these exist.
        let (Some(lock), Some(slot)) = (word.at(shard), self.slot(shard)) else {
            unreachable!("a locked shard without storage");
        };
        (lock, slot)
    }

    /// Visits every value created so far while other threads keep using the
    /// `PerCid`: each shard's lock is taken from here in turn (on the rseq backend an
    /// rseq fence per shard, tens of microseconds: for occasional statistics and
    /// maintenance, not for hot paths).
    ///
    /// # Errors
    ///
    /// [`MembarrierError`] when the rseq fence that takes a cid's lock from this
    /// thread fails ([`MembarrierError::Unsupported`]: a kernel without
    /// `MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ`). The visit stops there: the values
    /// visited before were visited once, the others not at all.
    ///
    /// # Panics
    ///
    /// When `f` panics; the shard it was visiting is unlocked first.
    ///
    /// ```
    /// let hits = percid::PerCid::new(|| 0u64).unwrap();
    /// std::thread::scope(|s| {
    ///     for _ in 0..4 {
    ///         s.spawn(|| hits.with(|n| *n += 10));
    ///     }
    /// });
    /// let mut total = 0;
    /// match hits.for_each(|n| total += *n) {
    ///     Ok(()) => assert_eq!(total, 40), // however many cids the threads ran on
    ///     Err(e) => eprintln!("no rseq fence on this kernel: {e}"),
    /// }
    /// ```
    pub fn for_each(&self, mut f: impl FnMut(&mut T)) -> Result<(), MembarrierError> {
        // A fork waits for the visit (see the module's docs).
        let _fork = crate::cid::fork::hold();
        let word = self.lock_word();
        let shards: Vec<Shard> = word.shards().map(|(shard, _)| shard).collect();
        for shard in shards {
            let Some(slot) = self.slot(shard) else {
                continue;
            };
            if slot.get().is_none() {
                continue;
            }
            let mut round = 0;
            let token = visit_token();
            loop {
                match word.foreign_compare_store(shard, 0, token) {
                    Ok(Ok(())) => break,
                    Ok(Err(_held)) => crate::sync::backoff(&mut round),
                    Err(ForeignError::Fence(e)) => return Err(e),
                    // Listed by `shards`, so materialised: cannot happen.
                    Err(ForeignError::NoSuchShard(_)) => break,
                }
            }
            let Some(lock) = word.at(shard) else {
                continue;
            };
            let _unlock = Unlock(lock);
            if let Some(value) = slot.get() {
                // SAFETY: this thread holds the shard's lock.
                f(unsafe { &mut *value.0.get() });
            }
        }
        Ok(())
    }
}

impl<T, F> PerCid<T, F> {
    /// Every value created so far, exclusively (no other thread can hold a lock).
    ///
    /// ```
    /// let mut buffers = percid::PerCid::new(Vec::<u8>::new).unwrap();
    /// buffers.with(|b| b.push(1));
    /// for b in buffers.iter_mut() {
    ///     b.clear();
    /// }
    /// assert!(buffers.into_iter().all(|b| b.is_empty()));
    /// ```
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.values
            .iter_mut()
            .filter_map(|slot| slot.get_mut().map(|v| v.0.get_mut()))
    }
}

impl<T, F> IntoIterator for PerCid<T, F> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;

    /// The values created so far.
    fn into_iter(self) -> Self::IntoIter {
        let PerCid { values, .. } = self;
        values
            .into_vec()
            .into_iter()
            .filter_map(|slot| slot.into_inner().map(|v| v.0.into_inner()))
            .collect::<Vec<T>>()
            .into_iter()
    }
}

impl<T, F> fmt::Debug for PerCid<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let created = self.values.iter().filter(|v| v.get().is_some()).count();
        f.debug_struct("PerCid").field("values", &created).finish()
    }
}
