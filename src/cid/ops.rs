//! The operations on a [`Word`]: each runs as one critical section on the caller's
//! current index, with the same fallbacks everywhere:
//!
//! * **rseq**: the `asm!` section. *Aborted* retries at once (bounded);
//!   *not materialised* raises the chunk's limit and retries.
//! * **simulated**: the pseudocode of [`crate::rseq::spec`] in a simulated section.
//! * **portable**, and any thread whose sections keep aborting or whose index is out
//!   of range: the same pseudocode on the thread's CPU lane, under the lane's lock
//!   (or a plain atomic read-modify-write where one instruction does the job).
//!
//! # Signal handlers
//!
//! The lane locks and the simulated backend's commit locks are spin locks. A signal
//! handler that interrupts its thread while it holds one, and then runs an operation
//! that needs the same lock, would spin forever: the holder is the thread the
//! handler runs on. So every such region is marked in a thread-local depth
//! ([`LockedRegion`]); an operation that starts inside a marked region (it can only
//! be a handler's, nested in it) skips the simulated section and takes the lane's
//! atomic twin instead of its lock. Operations with an atomic twin (`add`,
//! `add_on_node`) therefore never wait for their own thread; the others (lists,
//! compare-and-store, payloads) have none and are not async-signal-safe on the
//! portable and simulated backends (see the crate docs, "Signal handlers").

use super::arena::{Chunk, HEADER_GENERATION, HEADER_LOCK, Unit, Word, Words};
use crate::rseq::arch::{self, PayloadArgs, SectionSite, SectionStatus};
use crate::rseq::registration::{
    ThreadBackend, any_rseq_thread, node_source, process, thin_area, thread_backend,
};
use crate::rseq::simulated::{self, SimSection};
use crate::rseq::spec::{self, Aborted, Locked, Payload, PayloadOutcome, Section};
use crate::rseq::{Backend, MembarrierError, fence_rseq};
use crate::sync::{AtomicU64, Ordering};

/// Consecutive aborts after which an operation moves to the thread's lane. Aborts
/// come from preemption and signals, so a handful in a row already means the thread
/// is being hammered; the bound keeps a thread that cannot finish a section (never
/// registered, say) from spinning forever.
const MAX_ABORTS: u32 = if cfg!(loom) { 2 } else { 64 };

#[cfg(not(loom))]
thread_local! {
    /// How many spin-locked regions (a simulated section, a locked lane section, a
    /// foreign store or quiesce under a lock) the calling thread is inside. `const`,
    /// `Copy` and without a destructor: reading it is one thread-pointer-relative
    /// load, safe in a signal handler, at thread start and exit.
    static LOCKED_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Marks the calling thread as inside a spin-locked region while it lives (see the
/// module docs, "Signal handlers"): an operation a signal handler runs meanwhile on
/// this thread keeps off the locks. Under loom, model threads share the OS thread's
/// thread-locals and there are no signals: it marks nothing.
struct LockedRegion;

impl LockedRegion {
    #[inline(always)]
    fn enter() -> LockedRegion {
        #[cfg(not(loom))]
        LOCKED_DEPTH.set(LOCKED_DEPTH.get() + 1);
        LockedRegion
    }

    /// Whether the calling thread is inside a region: true only in a signal handler
    /// that interrupted one.
    #[cfg(not(loom))]
    #[inline(always)]
    fn nested() -> bool {
        LOCKED_DEPTH.get() != 0
    }

    #[cfg(loom)]
    fn nested() -> bool {
        false
    }
}

impl Drop for LockedRegion {
    #[inline(always)]
    fn drop(&mut self) {
        #[cfg(not(loom))]
        LOCKED_DEPTH.set(LOCKED_DEPTH.get() - 1);
    }
}

/// Whether a foreign caller that has just swapped a word with a sequentially
/// consistent read-modify-write may skip the rseq fence: true when no thread of
/// the process has ever been on the rseq backend, so no section can have read the
/// old value.
///
/// The protocol is Dekker's. The registering thread T stores `RSEQ_SEEN = true`
/// (SeqCst) before its first section; that section's load of the word is an `asm!`
/// load, i.e. a relaxed one. The foreign thread F swaps the word (SeqCst RMW),
/// issues `fence(SeqCst)`, and reads the flag. By the Rust (C++20) model, "F reads
/// false and T's section reads the old value" is impossible only if T also has a
/// SeqCst fence between its store of the flag and its section's load: then the
/// order S would need T's fence before F's swap (T's load is coherence-ordered
/// before the swap), F's swap before F's load of the flag, that load before T's
/// store of the flag (it read false), and T's store before T's fence: a cycle.
/// Without T's fence nothing orders T's store before its own later load, and a
/// weakly ordered CPU (aarch64: `stlr` then a plain `ldr`) does reorder them.
///
/// The registration (`rseq/registration.rs`, `resolve_thread`) stores the flag
/// with SeqCst and then issues `fence(SeqCst)`: T's fence. So the skip is sound by
/// the memory model on every architecture, not only on x86-64 (where the SeqCst
/// store is a full barrier anyway); `tests/loom.rs`, `rseq_seen_flag_*`, models
/// both sides, and finds the race without T's fence.
#[inline]
fn fence_skippable() -> bool {
    // F's fence: orders the swap before the flag read even for a caller whose swap
    // is weaker than SeqCst; the registration fences after setting the flag.
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    !any_rseq_thread()
}

/// Which shard an operation ran on.
///
/// ```
/// use percid::cid::{Arena, Shard};
///
/// let arena = Arena::new();
/// let words = arena.alloc(1).unwrap();
/// match words.word(0).add(1) {
///     Shard::Cid(cid) => println!("added on cid {cid}"),
///     Shard::Lane(lane) => println!("added on portable lane {lane}"),
///     Shard::NodeCid { node, cid } => println!("added on node {node}, cid {cid}"),
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shard {
    /// The unit of this index (`mm_cid`, `cpu_id`, or simulated cid) in plane 0: the
    /// only plane of a plain arena, node 0's plane of a NUMA arena.
    Cid(u32),
    /// The unit of index `cid` in the plane of NUMA node `node` (a NUMA arena).
    NodeCid {
        /// The node whose plane holds the unit.
        node: u32,
        /// The index.
        cid: u32,
    },
    /// The unit of this portable lane.
    Lane(u32),
}

/// Which plane an operation runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plane {
    /// Plane 0, whatever node the thread is on (the plain operations).
    Zero,
    /// The plane of the node the thread reads inside the section.
    Node,
}

impl Plane {
    #[inline(always)]
    fn shard(self, node: u32, cid: u32) -> Shard {
        match self {
            Plane::Zero => Shard::Cid(cid),
            Plane::Node => Shard::NodeCid { node, cid },
        }
    }
}

/// One attempt of an rseq section, as the op wrappers report it.
enum Attempt<T> {
    Done(T, Shard),
    Aborted,
    NotMaterialized { plane: u32, cid: u32 },
}

impl<T> Attempt<T> {
    /// An attempt of a plain section (plane 0).
    #[inline(always)]
    fn from_status(status: SectionStatus, index: u32, done: impl FnOnce(bool) -> T) -> Attempt<T> {
        Attempt::on_node(status, Plane::Zero, 0, index, done)
    }

    #[inline(always)]
    fn on_node(
        status: SectionStatus,
        plane: Plane,
        node: u32,
        index: u32,
        done: impl FnOnce(bool) -> T,
    ) -> Attempt<T> {
        match status {
            SectionStatus::Committed => Attempt::Done(done(true), plane.shard(node, index)),
            SectionStatus::Failed => Attempt::Done(done(false), plane.shard(node, index)),
            SectionStatus::Aborted => Attempt::Aborted,
            SectionStatus::NotMaterialized => Attempt::NotMaterialized {
                plane: node,
                cid: index,
            },
        }
    }
}

/// Runs one operation on the caller's shard. `rseq` is one attempt of the asm
/// section; `spec` runs the pseudocode in a section on an index unit (simulated) or a
/// lane (portable); `lane` overrides the portable path when a plain atomic suffices.
#[inline(always)]
fn run<T>(
    chunk: &Chunk,
    plane: Plane,
    mut rseq: impl FnMut(SectionSite) -> Attempt<T>,
    mut spec: impl FnMut(&mut dyn Section, Unit<'_>) -> Result<T, Aborted>,
    lane: Option<&dyn Fn(Unit<'_>) -> T>,
) -> (T, Shard) {
    match thread_backend() {
        ThreadBackend::Rseq { area, index } => {
            let cpu = match plane {
                Plane::Zero => SectionSite::plain(area, index, chunk.limit_ptr()),
                Plane::Node => SectionSite::numa(area, index, node_source(), chunk.dir_ptr()),
            };
            let mut aborts = 0;
            loop {
                match rseq(cpu) {
                    Attempt::Done(value, shard) => return (value, shard),
                    Attempt::Aborted => {
                        aborts += 1;
                        if aborts >= MAX_ABORTS {
                            break;
                        }
                    }
                    Attempt::NotMaterialized { plane, cid } => {
                        if !chunk.materialize(plane, cid) {
                            break;
                        }
                    }
                }
            }
        }
        // A handler that interrupted this thread inside a simulated section (which
        // takes its cid's commit lock) keeps off that lock: the lane's atomic twin.
        ThreadBackend::Simulated if !LockedRegion::nested() => {
            if let Some(done) = run_simulated(chunk, plane, &mut spec) {
                return done;
            }
        }
        ThreadBackend::Simulated | ThreadBackend::Portable => {}
    }
    run_on_lane(chunk, &mut spec, lane)
}

#[cold]
#[inline(never)]
fn run_simulated<T>(
    chunk: &Chunk,
    plane: Plane,
    spec: &mut dyn FnMut(&mut dyn Section, Unit<'_>) -> Result<T, Aborted>,
) -> Option<(T, Shard)> {
    let cid = simulated::thread_cid();
    let node = match plane {
        Plane::Zero => 0,
        Plane::Node => simulated::thread_node(),
    };
    if !chunk.materialize(node, cid) {
        return None;
    }
    // Each (node, cid) unit has its own generation and lock: the simulation holds
    // whatever node a test injects.
    let unit = chunk.cid_unit(node, cid);
    // Every step of the section takes the cid's commit lock.
    let _region = LockedRegion::enter();
    for _ in 0..MAX_ABORTS {
        let mut section = SimSection::begin(unit.word(HEADER_GENERATION), unit.word(HEADER_LOCK));
        if let Ok(value) = spec(&mut section, unit) {
            return Some((value, plane.shard(node, cid)));
        }
    }
    None
}

#[cold]
#[inline(never)]
fn run_on_lane<T>(
    chunk: &Chunk,
    spec: &mut dyn FnMut(&mut dyn Section, Unit<'_>) -> Result<T, Aborted>,
    lane: Option<&dyn Fn(Unit<'_>) -> T>,
) -> (T, Shard) {
    let lane_id = chunk.lane(crate::rseq::portable_cpu());
    let unit = chunk.lane_unit(lane_id);
    if let Some(atomic) = lane {
        return (atomic(unit), Shard::Lane(lane_id));
    }
    let lock = unit.word(HEADER_LOCK);
    let region = LockedRegion::enter();
    simulated::lock_word(lock);
    let result = spec(&mut Locked, unit);
    simulated::unlock_word(lock);
    drop(region);
    match result {
        Ok(value) => (value, Shard::Lane(lane_id)),
        // `Locked` never aborts.
        Err(Aborted) => unreachable!("a locked section aborted"),
    }
}

/// What one `list_pop` attempt on the rseq backend says to its caller (the hot
/// paths): `Some(Some(node))` committed, `Some(None)` empty, `None` retry elsewhere.
#[inline(always)]
fn one_pop(st: SectionStatus, node: usize) -> Option<Option<usize>> {
    match st {
        SectionStatus::Committed => Some(Some(node)),
        SectionStatus::Failed => Some(None),
        _ => None,
    }
}

/// As [`one_pop`] for `list_push`: `Some(Ok(()))` committed, `Some(Err(ListFull))`
/// full, `None` retry elsewhere.
#[inline(always)]
fn one_push(st: SectionStatus) -> Option<Result<(), ListFull>> {
    match st {
        SectionStatus::Committed => Some(Ok(())),
        SectionStatus::Failed => Some(Err(ListFull)),
        _ => None,
    }
}

/// A limit no index is below: a hot word with it misses every section before the
/// section addresses its word, so a structure can keep one in place of words it has
/// not made yet (a `const` counter, a lazily built pool) or wants kept off the fast
/// path, and test nothing else first.
pub(crate) static NO_CIDS: u32 = 0;

/// A word's fast-path addresses, resolved once and kept by the structure that owns
/// the word (a counter), so that an update chases no pointers before its section.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HotWord {
    base: *mut u64,
    limit: *const u32,
}

impl HotWord {
    /// Rebuilds a hot word from the parts [`Word::hot`] gave.
    #[inline(always)]
    pub(crate) fn from_parts(base: *mut u64, limit: *const u32) -> HotWord {
        HotWord { base, limit }
    }

    /// One attempt of `list_pop` on the rseq backend: `Some(Some(node))` when it
    /// committed, `Some(None)` when the list is empty, `None` for anything else (the
    /// caller then takes [`Word::list_pop`]).
    ///
    /// # Safety
    /// As for [`Word::list_pop`], for the word this hot word was made from.
    #[inline(always)]
    pub(crate) unsafe fn try_list_pop(self) -> Option<Option<usize>> {
        if let ThreadBackend::Rseq { area, index } = thread_backend() {
            let cpu = SectionSite::plain(area, index, self.limit);
            // SAFETY: `base` and `limit` come from `Word::hot` of a live word; listed
            // nodes are live (the caller's contract).
            let (st, _, node) = unsafe { arch::list_pop(cpu, self.base) };
            return one_pop(st, node);
        }
        None
    }

    /// One attempt of `list_push` on the rseq backend: `Some(Ok(()))` when it
    /// committed, `Some(Err(ListFull))` when the list is full, `None` for anything
    /// else (the caller then takes [`Word::list_push`]).
    ///
    /// # Safety
    /// As for [`Word::list_push`], for the word this hot word was made from.
    #[inline(always)]
    pub(crate) unsafe fn try_list_push(
        self,
        node: usize,
        max_len: u16,
    ) -> Option<Result<(), ListFull>> {
        if let ThreadBackend::Rseq { area, index } = thread_backend() {
            let cpu = SectionSite::plain(area, index, self.limit);
            // SAFETY: as in `try_list_pop`; the node is the caller's.
            let (st, _) = unsafe { arch::list_push(cpu, self.base, node, u64::from(max_len)) };
            return one_push(st);
        }
        None
    }
}

/// A thin section's operands, kept by the structure that owns the word (a counter,
/// a pool, the allocator): the word's address in unit 0, and how many indexes its
/// chunk had materialised when last looked at. The count is a lower bound of the
/// chunk's limit (which only grows), so the section compares the index it reads with
/// a register, and the fast path reads two words of its own structure instead of
/// chasing a pointer to the chunk's limit. A cell whose count is 0 misses every
/// section (before the words exist, or for structures kept off the thin path);
/// the slow paths [`ThinCell::refresh`] it after materialising an index.
///
/// Plain `std` atomics, also under loom (no model thread runs a thin section).
#[derive(Debug)]
pub(crate) struct ThinCell {
    base: std::sync::atomic::AtomicPtr<u64>,
    cids: std::sync::atomic::AtomicU32,
}

/// This thread's area for the thin sections ([`thin_area`]), `None` marked cold: a
/// thread without one takes the slow path anyway, and the hint makes the compiler
/// lay the section out as the straight line of the fast path.
#[inline(always)]
fn hot_area() -> Option<usize> {
    let area = thin_area();
    if area == 0 {
        cold_path();
        return None;
    }
    Some(area)
}

/// Marks the branch that calls it as unlikely, so the compiler lays the other one
/// out as the straight line (`std::hint::cold_path` from Rust 1.95; this form works
/// from the crate's MSRV: a call to a cold function is a cold branch, and inlining
/// the empty body leaves only the hint).
#[cold]
#[inline(always)]
pub(crate) fn cold_path() {}

impl ThinCell {
    /// A cell that misses every section until [`ThinCell::set`].
    pub(crate) const fn missing() -> ThinCell {
        ThinCell {
            base: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
            cids: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// A cell on the word [`Word::hot`] gave `(base, limit)` for, when `on`.
    pub(crate) fn new(on: bool, (base, limit): (*mut u64, *const u32)) -> ThinCell {
        let cell = ThinCell::missing();
        if on {
            cell.set((base, limit));
        }
        cell
    }

    /// Points the cell at the word [`Word::hot`] gave `(base, limit)` for: the base
    /// first, then the count (release), so a section that passes the count's check
    /// addresses the real base.
    pub(crate) fn set(&self, (base, limit): (*mut u64, *const u32)) {
        self.base.store(base, std::sync::atomic::Ordering::Relaxed);
        self.raise(limit);
    }

    /// Raises the count to the chunk's limit (the word's chunk's, which `limit`
    /// gives): a slow path calls it after a section missed, so the next one on a new
    /// index is thin too. Only a thread that runs thin sections looks (the others'
    /// slow paths are their every operation, and the count is not theirs to need),
    /// and only at a cell that was [`set`](ThinCell::set).
    #[inline]
    pub(crate) fn refresh(&self, limit: impl FnOnce() -> *const u32) {
        if thin_area() != 0
            && !self
                .base
                .load(std::sync::atomic::Ordering::Relaxed)
                .is_null()
        {
            self.raise(limit());
        }
    }

    /// Raises the count to `*limit`.
    fn raise(&self, limit: *const u32) {
        use std::sync::atomic::Ordering;
        // Under loom there are no sections, and no limit to read (`limit_ptr` is
        // null there).
        if limit.is_null() {
            return;
        }
        // SAFETY: `limit` is the chunk's limit word (`Word::hot`), alive as long as
        // the arena; read atomically (the materialising thread writes it so).
        let now =
            unsafe { &*(limit as *const std::sync::atomic::AtomicU32) }.load(Ordering::Acquire);
        if now > self.cids.load(Ordering::Relaxed) {
            self.cids.fetch_max(now, Ordering::Release);
        }
    }

    /// The operands for the word `i` words past the cell's (an allocation of
    /// several words keeps one cell): the count (acquire), then the base.
    #[inline(always)]
    fn operands(&self, i: usize) -> (*mut u64, u32) {
        use std::sync::atomic::Ordering;
        let cids = self.cids.load(Ordering::Acquire);
        (self.base.load(Ordering::Relaxed).wrapping_add(i), cids)
    }

    /// One thin `load_add_store` (see `arch`, "Thin sections"): true when it
    /// committed, false for anything else (the caller then takes [`Word::add`]).
    #[inline(always)]
    pub(crate) fn add(&self, v: u64) -> bool {
        self.add_at(0, v)
    }

    /// [`ThinCell::add`] on the word `i` words past the cell's, in the same
    /// allocation.
    #[inline(always)]
    pub(crate) fn add_at(&self, i: usize, v: u64) -> bool {
        let Some(area) = hot_area() else {
            return false;
        };
        let (base, cids) = self.operands(i);
        // SAFETY: below `cids` the base addresses a live word's materialised units
        // (the owner keeps the allocation alive, and a count is only published
        // after the base); `area` is this thread's registered area.
        unsafe { arch::thin_add(area, base, cids, v) }
    }

    /// [`ThinCell::add`] that says which index it committed on.
    #[inline(always)]
    pub(crate) fn add_index(&self, v: u64) -> Option<u32> {
        let area = hot_area()?;
        let (base, cids) = self.operands(0);
        // SAFETY: as in `add_at`.
        let idx = unsafe { arch::thin_add_index(area, base, cids, v) };
        (idx != u32::MAX).then_some(idx)
    }

    /// One thin `store_payload_commit_index` of one payload on the ring whose tail
    /// is the cell's word (see `arch::thin_push_one`): `Committed`, `Failed` (the
    /// gate closed or the ring full), or `Aborted` for anything else (the caller then
    /// takes [`PayloadSite::push`]).
    ///
    /// # Safety
    /// As for `arch::thin_push_one` with the cell's operands: the buffer, cached-head
    /// and head words lie `BUFFER`, `CACHED` and `HEAD` words past the tail word.
    #[inline(always)]
    pub(crate) unsafe fn push_one<const BUFFER: usize, const CACHED: usize, const HEAD: usize>(
        &self,
        args: &PayloadArgs,
        src: *const u8,
    ) -> SectionStatus {
        let Some(area) = hot_area() else {
            return SectionStatus::Aborted;
        };
        let (base, cids) = self.operands(0);
        // SAFETY: as in `add_at` for the words; the ring's layout, geometry and `src`
        // are the caller's contract.
        unsafe { arch::thin_push_one::<BUFFER, CACHED, HEAD>(area, base, cids, args, src) }
    }

    /// One thin `load_cbne_store`: if the word holds `expect`, stores `new` and
    /// says which index it committed on; `None` for anything else (another value
    /// too: the caller then takes [`Word::compare_store`]).
    #[inline(always)]
    pub(crate) fn compare_store_index(&self, expect: u64, new: u64) -> Option<u32> {
        let area = hot_area()?;
        let (base, cids) = self.operands(0);
        // SAFETY: as in `add_at`.
        let idx = unsafe { arch::thin_compare_store_index(area, base, cids, expect, new) };
        (idx != u32::MAX).then_some(idx)
    }

    /// Word `i` of the allocation in the unit of index `idx`.
    ///
    /// # Safety
    /// A section on this cell committed on `idx`, `i` is within the allocation, and
    /// the caller keeps the allocation alive for `'a`.
    #[inline(always)]
    pub(crate) unsafe fn unit_word<'a>(&self, idx: u32, i: usize) -> &'a AtomicU64 {
        let base = self.base.load(std::sync::atomic::Ordering::Relaxed);
        let offset = ((idx as usize) << crate::cid::UNIT_SHIFT) / 8 + i;
        // SAFETY: the caller's contract: the word is inside a materialised unit of a
        // live allocation (a `u64` word is an `AtomicU64`).
        unsafe { &*(base.add(offset) as *const AtomicU64) }
    }

    /// One thin `list_pop`: the node it popped, or `None` for anything else (an
    /// empty list too: the caller then takes [`Word::list_pop`], which refills).
    ///
    /// # Safety
    /// As for [`Word::list_pop`], for the word of this cell.
    #[inline(always)]
    pub(crate) unsafe fn list_pop(&self) -> Option<usize> {
        // SAFETY: forwarded.
        unsafe { self.list_pop_at(0) }
    }

    /// [`ThinCell::list_pop`] on the head word `i` words past the cell's.
    ///
    /// # Safety
    /// As for [`Word::list_pop`], for that word.
    #[inline(always)]
    pub(crate) unsafe fn list_pop_at(&self, i: usize) -> Option<usize> {
        let area = hot_area()?;
        let (base, cids) = self.operands(i);
        // SAFETY: as in `add`; listed nodes are live (the caller's contract).
        let node = unsafe { arch::thin_list_pop(area, base, cids) };
        (node != 0).then_some(node)
    }

    /// One thin `list_push`: true when it committed, false for anything else (a
    /// full list too; the node's link may have been written).
    ///
    /// # Safety
    /// As for [`Word::list_push`], for the word of this cell.
    #[inline(always)]
    pub(crate) unsafe fn list_push(&self, node: usize, max_len: u16) -> bool {
        // SAFETY: forwarded.
        unsafe { self.list_push_at(0, node, max_len) }
    }

    /// [`ThinCell::list_push`] on the head word `i` words past the cell's.
    ///
    /// # Safety
    /// As for [`Word::list_push`], for that word.
    #[inline(always)]
    pub(crate) unsafe fn list_push_at(&self, i: usize, node: usize, max_len: u16) -> bool {
        let Some(area) = hot_area() else {
            return false;
        };
        let (base, cids) = self.operands(i);
        // SAFETY: as in `list_pop`; the node is the caller's.
        unsafe { arch::thin_list_push(area, base, cids, node, u64::from(max_len)) }
    }
}

/// The fast-path addresses of a word's NUMA operation: the chunk's directory and
/// the word's byte offset in a unit, kept by the structure that owns the word.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NodeHotWord {
    dir: *const u8,
    woff: usize,
}

impl NodeHotWord {
    /// Rebuilds a hot word from the parts [`NodeHotWord::dir`] and
    /// [`NodeHotWord::woff`] gave.
    #[inline(always)]
    pub(crate) fn from_parts(dir: *const u8, woff: usize) -> NodeHotWord {
        NodeHotWord { dir, woff }
    }

    pub(crate) fn dir(self) -> *const u8 {
        self.dir
    }

    pub(crate) fn woff(self) -> usize {
        self.woff
    }

    /// One attempt of `numa_load_add_store` on the rseq backend: true when it
    /// committed, false for anything else (the caller then takes
    /// [`Word::add_on_node`]).
    #[inline(always)]
    pub(crate) fn try_add_committed(self, v: u64) -> bool {
        if let ThreadBackend::Rseq { area, index } = thread_backend() {
            let cpu = SectionSite::numa(area, index, node_source(), self.dir);
            // SAFETY: `dir` and `woff` come from `Word::node_hot` of a live word (the
            // caller keeps the allocation alive); otherwise as in `Word::add_on_node`.
            return unsafe { arch::numa_load_add_store_committed(cpu, self.woff, v) };
        }
        false
    }
}

impl NodeHotWord {
    /// One attempt of `numa_list_pop` on the rseq backend: `Some(Some(node))` when it
    /// committed, `Some(None)` when the list is empty, `None` for anything else (the
    /// caller then takes [`Word::list_pop_on_node`]).
    ///
    /// # Safety
    /// As for [`Word::list_pop_on_node`], for the word this hot word was made from.
    #[inline(always)]
    pub(crate) unsafe fn try_list_pop(self) -> Option<Option<usize>> {
        if let ThreadBackend::Rseq { area, index } = thread_backend() {
            let cpu = SectionSite::numa(area, index, node_source(), self.dir);
            // SAFETY: `dir` and `woff` come from `Word::node_hot` of a live word; listed
            // nodes are live (the caller's contract).
            let (st, _, _, node) = unsafe { arch::numa_list_pop(cpu, self.woff) };
            return one_pop(st, node);
        }
        None
    }

    /// One attempt of `numa_list_push` on the rseq backend: `Some(Ok(()))` when it
    /// committed, `Some(Err(ListFull))` when the list is full, `None` for anything
    /// else (the caller then takes [`Word::list_push_on_node`]).
    ///
    /// # Safety
    /// As for [`Word::list_push_on_node`], for the word this hot word was made from.
    #[inline(always)]
    pub(crate) unsafe fn try_list_push(
        self,
        node: usize,
        max_len: u16,
    ) -> Option<Result<(), ListFull>> {
        if let ThreadBackend::Rseq { area, index } = thread_backend() {
            let cpu = SectionSite::numa(area, index, node_source(), self.dir);
            // SAFETY: as in `try_list_pop`; the node is the caller's.
            let (st, _, _) =
                unsafe { arch::numa_list_push(cpu, self.woff, node, u64::from(max_len)) };
            return one_push(st);
        }
        None
    }
}

/// The NUMA node the calling thread is on, as the NUMA operations see it: the node
/// its rseq sections read (the kernel's `node_id`, or a test's injected node), the
/// simulated node, or on the portable backend `cpu_node` of its CPU (0 when that
/// says nothing). Stale as soon as it returns: for choosing where to look or
/// allocate, never for exclusivity.
pub(crate) fn thread_node(cpu_node: impl Fn(u32) -> Option<u32>) -> u32 {
    match thread_backend() {
        ThreadBackend::Rseq { .. } => {
            // SAFETY: `node_source` is the thread's `node_id` field, its injected
            // thread-local cell or a static zero: a readable `u32` for the life of
            // the thread (the kernel writes `node_id` concurrently, hence volatile).
            unsafe { std::ptr::read_volatile(node_source()) }
        }
        ThreadBackend::Simulated => simulated::thread_node(),
        ThreadBackend::Portable => cpu_node(crate::rseq::portable_cpu()).unwrap_or(0),
    }
}

impl<'a> Word<'a> {
    /// This word in the unit of `shard`, or `None` when that shard is not
    /// materialised (nothing was ever written there).
    ///
    /// For reading, and for writing words the sections only read (a buffer address
    /// installed with `compare_exchange`) or that the caller owns (a lock it holds):
    /// an atomic write racing a section's commit on the same word loses one of them.
    #[inline(always)]
    pub fn at(self, shard: Shard) -> Option<&'a AtomicU64> {
        let chunk = self.chunk;
        let unit = match shard {
            Shard::Cid(c) if c < chunk.cid_limit() => chunk.cid_unit(0, c),
            Shard::NodeCid { node, cid } if cid < chunk.plane_limit(node) => {
                chunk.cid_unit(node, cid)
            }
            Shard::Lane(l) if l < chunk.lane_limit() => chunk.lane_unit(l),
            _ => return None,
        };
        Some(unit.word(self.offset))
    }

    /// The shards that may hold a value: materialised indexes plane by plane (plane 0
    /// as [`Shard::Cid`] in a plain arena, every plane as [`Shard::NodeCid`] in a NUMA
    /// arena), then materialised lanes.
    pub fn shards(self) -> impl Iterator<Item = (Shard, &'a AtomicU64)> {
        let chunk = self.chunk;
        let offset = self.offset;
        let numa = chunk.is_numa();
        (0..chunk.planes())
            .flat_map(move |node| {
                (0..chunk.plane_limit(node)).map(move |cid| {
                    let shard = if numa {
                        Shard::NodeCid { node, cid }
                    } else {
                        Shard::Cid(cid)
                    };
                    (shard, chunk.cid_unit(node, cid).word(offset))
                })
            })
            .chain(
                (0..chunk.lane_limit())
                    .map(move |l| (Shard::Lane(l), chunk.lane_unit(l).word(offset))),
            )
    }

    /// The shards of NUMA node `node`: its plane's materialised indexes, then the
    /// materialised lanes of CPUs that `cpu_node` puts on the node (lane `l` serves
    /// CPU `l`; the portable backend has no node of its own).
    pub fn node_shards(
        self,
        node: u32,
        cpu_node: impl Fn(u32) -> Option<u32> + 'a,
    ) -> impl Iterator<Item = (Shard, &'a AtomicU64)> {
        let chunk = self.chunk;
        let offset = self.offset;
        (0..chunk.plane_limit(node))
            .map(move |cid| {
                (
                    Shard::NodeCid { node, cid },
                    chunk.cid_unit(node, cid).word(offset),
                )
            })
            .chain(
                (0..chunk.lane_limit())
                    .filter(move |&l| cpu_node(l).unwrap_or(0) == node)
                    .map(move |l| (Shard::Lane(l), chunk.lane_unit(l).word(offset))),
            )
    }

    /// Planes (NUMA nodes) of the word's arena: 1 in a plain arena.
    pub fn nodes(self) -> u32 {
        self.chunk.planes()
    }

    /// How many shards may hold a value (materialised indexes and lanes): O(planes).
    pub fn shard_count(self) -> u32 {
        self.chunk.cid_units() + self.chunk.lane_limit()
    }

    /// The wrapping sum of the word over every shard. Visits only materialised
    /// shards: its cost follows the concurrency used, not the CPU count.
    pub fn sum(self) -> u64 {
        self.shards().fold(0u64, |acc, (_, w)| {
            acc.wrapping_add(w.load(Ordering::Relaxed))
        })
    }

    /// `load_add_store`: adds `v` (wrapping) to the caller's shard of the word, with
    /// no atomic read-modify-write on the rseq backend.
    ///
    /// Async-signal-safe on every backend once the thread's backend is resolved
    /// (see the crate docs, "Signal handlers"): it never takes a lock its own
    /// thread may hold, and allocates nothing.
    #[inline(always)]
    #[allow(clippy::should_implement_trait)] // `Word + u64` would read as arithmetic, not an update
    pub fn add(self, v: u64) -> Shard {
        if let Some(cpu) = self.rseq_cpu() {
            // SAFETY: `cpu` is this thread's registration and the chunk's limit; the
            // base is this word in unit 0 and every unit below the limit is mapped;
            // the word is written only by sections (one discipline per word).
            let (st, idx) = unsafe { arch::load_add_store(cpu, self.chunk.unit0(self.offset), v) };
            if st == SectionStatus::Committed {
                return Shard::Cid(idx);
            }
        }
        self.add_slow(v)
    }

    /// The word's fast-path addresses (see [`HotWord`]).
    pub(crate) fn hot(self) -> (*mut u64, *const u32) {
        (self.chunk.unit0(self.offset), self.chunk.limit_ptr())
    }

    /// The calling thread's section context when it is on the rseq backend.
    #[inline(always)]
    fn rseq_cpu(self) -> Option<SectionSite> {
        match thread_backend() {
            ThreadBackend::Rseq { area, index } => {
                Some(SectionSite::plain(area, index, self.chunk.limit_ptr()))
            }
            _ => None,
        }
    }

    /// Everything but a first-try commit: retries, materialisation, other backends.
    #[cold]
    #[inline(never)]
    fn add_slow(self, v: u64) -> Shard {
        let base = self.chunk.unit0(self.offset);
        let chunk = self.chunk;
        let offset = self.offset;
        run(
            chunk,
            Plane::Zero,
            |cpu| {
                // SAFETY: as in `add`.
                let (st, idx) = unsafe { arch::load_add_store(cpu, base, v) };
                Attempt::from_status(st, idx, |_| ())
            },
            |s, unit| spec::load_add_store(s, unit.word(offset), v),
            Some(&|unit| {
                unit.word(offset).fetch_add(v, Ordering::Relaxed);
            }),
        )
        .1
    }

    /// `numa_load_add_store`: adds `v` (wrapping) to the caller's shard in the plane
    /// of the NUMA node it runs on, the node and the cid read in one critical section
    /// (see [`crate::numa`]). On a thread without a node (portable backend), or a node
    /// beyond the arena's planes, the thread's lane.
    #[inline(always)]
    pub fn add_on_node(self, v: u64) -> Shard {
        if let ThreadBackend::Rseq { area, index } = thread_backend() {
            let cpu = SectionSite::numa(area, index, node_source(), self.chunk.dir_ptr());
            // SAFETY: `cpu` is this thread's registration, its node source and the
            // chunk's directory, whose planes below the plane count hold a unit for
            // every index below their limits; the word is written only by sections.
            let (st, node, idx) = unsafe { arch::numa_load_add_store(cpu, self.offset * 8, v) };
            if st == SectionStatus::Committed {
                return Shard::NodeCid { node, cid: idx };
            }
        }
        self.add_on_node_slow(v)
    }

    /// The hot-path parts of [`Word::add_on_node`] (see [`NodeHotWord`]).
    pub(crate) fn node_hot(self) -> NodeHotWord {
        NodeHotWord {
            dir: self.chunk.dir_ptr(),
            woff: self.offset * 8,
        }
    }

    #[cold]
    #[inline(never)]
    fn add_on_node_slow(self, v: u64) -> Shard {
        let chunk = self.chunk;
        let offset = self.offset;
        run(
            chunk,
            Plane::Node,
            |cpu| {
                // SAFETY: as in `add_on_node`.
                let (st, node, idx) = unsafe { arch::numa_load_add_store(cpu, offset * 8, v) };
                Attempt::on_node(st, Plane::Node, node, idx, |_| ())
            },
            |s, unit| spec::load_add_store(s, unit.word(offset), v),
            Some(&|unit| {
                unit.word(offset).fetch_add(v, Ordering::Relaxed);
            }),
        )
        .1
    }

    /// `load_cbne_store`: on the caller's shard, replaces `expect` by `new`. Returns
    /// the shard on success, the value seen otherwise.
    ///
    /// # Errors
    /// `Err(seen)` when the caller's shard held `seen`, not `expect`.
    #[inline(always)]
    pub fn compare_store(self, expect: u64, new: u64) -> Result<Shard, u64> {
        if let Some(cpu) = self.rseq_cpu() {
            let base = self.chunk.unit0(self.offset);
            // SAFETY: as in `add`.
            let (st, idx, seen) = unsafe { arch::load_cbne_store(cpu, base, expect, new) };
            match st {
                SectionStatus::Committed => return Ok(Shard::Cid(idx)),
                SectionStatus::Failed => return Err(seen),
                _ => {}
            }
        }
        self.compare_store_slow(expect, new)
    }

    #[cold]
    #[inline(never)]
    fn compare_store_slow(self, expect: u64, new: u64) -> Result<Shard, u64> {
        let base = self.chunk.unit0(self.offset);
        let chunk = self.chunk;
        let offset = self.offset;
        let (result, shard) = run(
            chunk,
            Plane::Zero,
            |cpu| {
                // SAFETY: as in `add`.
                let (st, idx, seen) = unsafe { arch::load_cbne_store(cpu, base, expect, new) };
                Attempt::from_status(
                    st,
                    idx,
                    |committed| if committed { Ok(()) } else { Err(seen) },
                )
            },
            |s, unit| spec::load_cbne_store(s, unit.word(offset), expect, new),
            None,
        );
        result.map(|()| shard)
    }

    /// `list_pop`: pops the first node of the caller's shard's list.
    ///
    /// The word is a list head: the first node's address in the low 48 bits, the
    /// list's length in the high 16; a node's first word is its link (the packed
    /// head below it).
    ///
    /// # Safety
    /// Every node on any shard's list of this word is a live, 8-byte aligned word
    /// that stays allocated while it is listed, and nothing but these list
    /// operations writes the head words or the links of listed nodes.
    #[inline(always)]
    pub unsafe fn list_pop(self) -> Option<(usize, Shard)> {
        if let Some(cpu) = self.rseq_cpu() {
            // SAFETY: as in `add`; listed nodes are live (the caller's contract).
            let (st, idx, node) = unsafe { arch::list_pop(cpu, self.chunk.unit0(self.offset)) };
            match st {
                SectionStatus::Committed => return Some((node, Shard::Cid(idx))),
                SectionStatus::Failed => return None,
                _ => {}
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.list_pop_slow() }
    }

    /// # Safety
    /// As for [`Word::list_pop`].
    #[cold]
    #[inline(never)]
    unsafe fn list_pop_slow(self) -> Option<(usize, Shard)> {
        let base = self.chunk.unit0(self.offset);
        let chunk = self.chunk;
        let offset = self.offset;
        let (node, shard) = run(
            chunk,
            Plane::Zero,
            |cpu| {
                // SAFETY: as in `add`; listed nodes are live (the caller's contract).
                let (st, idx, node) = unsafe { arch::list_pop(cpu, base) };
                Attempt::from_status(st, idx, |committed| committed.then_some(node))
            },
            // SAFETY: listed nodes are live (the caller's contract).
            |s, unit| unsafe { spec::list_pop(s, unit.word(offset)) },
            None,
        );
        node.map(|n| (n, shard))
    }

    /// `list_push`: pushes `node` on the caller's shard's list unless it already
    /// holds `max_len` nodes (then `Err(ListFull)`, and the list did not take the node;
    /// its link word may have been overwritten by an attempt that aborted, so a
    /// caller that keeps the node in a chain of its own relinks it).
    ///
    /// # Safety
    /// `node` is an 8-byte aligned, writable word below 2^48 that the caller owns and
    /// gives to the list; the contract of [`Word::list_pop`] holds.
    ///
    /// # Errors
    /// [`ListFull`] when the caller's list already holds `max_len` nodes (or a
    /// drainer's token): the node stays the caller's.
    #[inline(always)]
    pub unsafe fn list_push(self, node: usize, max_len: u16) -> Result<Shard, ListFull> {
        debug_assert!(
            node.is_multiple_of(8) && node as u64 & !spec::LIST_NODE_MASK == 0,
            "list nodes must be 8-byte aligned and below 2^48"
        );
        if let Some(cpu) = self.rseq_cpu() {
            let base = self.chunk.unit0(self.offset);
            // SAFETY: as in `add`; the node is the caller's (the contract).
            let (st, idx) = unsafe { arch::list_push(cpu, base, node, u64::from(max_len)) };
            match st {
                SectionStatus::Committed => return Ok(Shard::Cid(idx)),
                SectionStatus::Failed => return Err(ListFull),
                _ => {}
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.list_push_slow(node, max_len) }
    }

    /// # Safety
    /// As for [`Word::list_push`].
    #[cold]
    #[inline(never)]
    unsafe fn list_push_slow(self, node: usize, max_len: u16) -> Result<Shard, ListFull> {
        let base = self.chunk.unit0(self.offset);
        let chunk = self.chunk;
        let offset = self.offset;
        let max_len = u64::from(max_len);
        let (ok, shard) = run(
            chunk,
            Plane::Zero,
            |cpu| {
                // SAFETY: as in `add`; the node is the caller's (the contract).
                let (st, idx) = unsafe { arch::list_push(cpu, base, node, max_len) };
                Attempt::from_status(st, idx, |committed| committed)
            },
            // SAFETY: the node is the caller's private word (the contract).
            |s, unit| Ok(unsafe { spec::list_push(s, unit.word(offset), node, max_len) }?.is_ok()),
            None,
        );
        if ok { Ok(shard) } else { Err(ListFull) }
    }
}

impl Word<'_> {
    /// `numa_list_pop`: [`Word::list_pop`] on the caller's shard in the plane of the
    /// NUMA node it runs on, the node and the cid read in one critical section (as
    /// [`Word::add_on_node`]). On a thread without a node (portable backend), or a
    /// node beyond the arena's planes, the thread's lane.
    ///
    /// # Safety
    /// As for [`Word::list_pop`].
    #[inline(always)]
    pub unsafe fn list_pop_on_node(self) -> Option<(usize, Shard)> {
        if let ThreadBackend::Rseq { area, index } = thread_backend() {
            let cpu = SectionSite::numa(area, index, node_source(), self.chunk.dir_ptr());
            // SAFETY: as in `add_on_node`; listed nodes are live (the caller's
            // contract).
            let (st, node, idx, item) = unsafe { arch::numa_list_pop(cpu, self.offset * 8) };
            match st {
                SectionStatus::Committed => return Some((item, Shard::NodeCid { node, cid: idx })),
                SectionStatus::Failed => return None,
                _ => {}
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.list_pop_on_node_slow() }
    }

    /// # Safety
    /// As for [`Word::list_pop`].
    #[cold]
    #[inline(never)]
    unsafe fn list_pop_on_node_slow(self) -> Option<(usize, Shard)> {
        let chunk = self.chunk;
        let offset = self.offset;
        let (item, shard) = run(
            chunk,
            Plane::Node,
            |cpu| {
                // SAFETY: as in `add_on_node`; listed nodes are live (the caller's
                // contract).
                let (st, node, idx, item) = unsafe { arch::numa_list_pop(cpu, offset * 8) };
                Attempt::on_node(st, Plane::Node, node, idx, |committed| {
                    committed.then_some(item)
                })
            },
            // SAFETY: listed nodes are live (the caller's contract).
            |s, unit| unsafe { spec::list_pop(s, unit.word(offset)) },
            None,
        );
        item.map(|n| (n, shard))
    }

    /// `numa_list_push`: [`Word::list_push`] on the caller's shard in the plane of the
    /// NUMA node it runs on (as [`Word::list_pop_on_node`]), with the same contract on
    /// `ListFull`: the list did not take the node, whose link may have been
    /// overwritten by an attempt that aborted (a caller that keeps the node in a chain
    /// of its own relinks it).
    ///
    /// # Safety
    /// As for [`Word::list_push`].
    ///
    /// # Errors
    /// As for [`Word::list_push`].
    #[inline(always)]
    pub unsafe fn list_push_on_node(self, node: usize, max_len: u16) -> Result<Shard, ListFull> {
        debug_assert!(
            node.is_multiple_of(8) && node as u64 & !spec::LIST_NODE_MASK == 0,
            "list nodes must be 8-byte aligned and below 2^48"
        );
        if let ThreadBackend::Rseq { area, index } = thread_backend() {
            let cpu = SectionSite::numa(area, index, node_source(), self.chunk.dir_ptr());
            // SAFETY: as in `add_on_node`; the node is the caller's (the contract).
            let (st, plane, idx) =
                unsafe { arch::numa_list_push(cpu, self.offset * 8, node, u64::from(max_len)) };
            match st {
                SectionStatus::Committed => {
                    return Ok(Shard::NodeCid {
                        node: plane,
                        cid: idx,
                    });
                }
                SectionStatus::Failed => return Err(ListFull),
                _ => {}
            }
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.list_push_on_node_slow(node, max_len) }
    }

    /// # Safety
    /// As for [`Word::list_push`].
    #[cold]
    #[inline(never)]
    unsafe fn list_push_on_node_slow(self, node: usize, max_len: u16) -> Result<Shard, ListFull> {
        let chunk = self.chunk;
        let offset = self.offset;
        let max_len = u64::from(max_len);
        let (ok, shard) = run(
            chunk,
            Plane::Node,
            |cpu| {
                // SAFETY: as in `add_on_node`; the node is the caller's (the contract).
                let (st, plane, idx) =
                    unsafe { arch::numa_list_push(cpu, offset * 8, node, max_len) };
                Attempt::on_node(st, Plane::Node, plane, idx, |committed| committed)
            },
            // SAFETY: the node is the caller's private word (the contract).
            |s, unit| Ok(unsafe { spec::list_push(s, unit.word(offset), node, max_len) }?.is_ok()),
            None,
        );
        if ok { Ok(shard) } else { Err(ListFull) }
    }
}

/// Why [`Word::foreign_compare_store`] could not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForeignError {
    /// The shard is not materialised (nothing ever ran there) or beyond the capacity.
    NoSuchShard(Shard),
    /// The rseq fence failed: ownership could not be proven, the word is unchanged.
    Fence(MembarrierError),
}

impl std::fmt::Display for ForeignError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForeignError::NoSuchShard(shard) => write!(f, "{shard:?} is not materialised"),
            ForeignError::Fence(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ForeignError {}

/// [`Word::list_push`] found the caller's list at its maximum length.
///
/// ```
/// use percid::cid::{Arena, ListFull};
///
/// let arena = Arena::new();
/// let words = arena.alloc(1).unwrap();
/// let list = words.word(0);
/// let node = Box::into_raw(Box::new(0u64)) as usize;
/// // SAFETY: an 8-byte aligned word we own, below 2^48; a list of at most 0 nodes
/// // refuses it, and the node stays ours.
/// assert!(matches!(unsafe { list.list_push(node, 0) }, Err(ListFull)));
/// drop(unsafe { Box::from_raw(node as *mut u64) });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListFull;

impl std::fmt::Display for ListFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the per-cid list is full")
    }
}

impl std::error::Error for ListFull {}

/// What [`Words::push_payload`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// The payload is in the shard's ring and visible to the consumer.
    Committed(Shard),
    /// The shard's ring is full; the payload was not taken.
    Full(Shard),
    /// The shard has no slot buffer yet; the caller installs one and retries.
    NoBuffer(Shard),
}

impl Words<'_> {
    /// `store_payload_commit_index`: copies `slot_bytes` bytes from `src` into the
    /// caller's shard's ring and publishes them by moving its tail. The words of
    /// this run at `[tail, head, buffer, cached]` hold, per shard, the producers'
    /// position, the consumer's position, the address of the slot buffer (`mask + 1`
    /// slots) and the producers' copy of the head (read instead of the head until it
    /// says the ring is full).
    ///
    /// # Safety
    /// `slot_bytes` is a multiple of 8; `src` is readable for `slot_bytes` bytes;
    /// `mask + 1` is a power of two; every non-zero buffer word points to `mask + 1`
    /// slots of `slot_bytes` bytes that live as long as the word holds the address;
    /// only this method writes the tail and cached words, and only the consumer
    /// writes the head words (never past the tail).
    pub unsafe fn push_payload(
        &self,
        [tail, head, buffer, cached]: [usize; 4],
        mask: u64,
        slot_bytes: usize,
        src: *const u8,
    ) -> PushOutcome {
        let open = AtomicU64::new(0);
        let site = PayloadSite::new(
            [
                self.word(tail),
                self.word(head),
                self.word(buffer),
                self.word(cached),
            ],
            mask + 1,
            slot_bytes,
            &open,
        );
        // SAFETY: forwarded from the caller (one payload).
        match unsafe { site.push(src, 1) } {
            (Pushed::Committed(_), shard) => PushOutcome::Committed(shard),
            (Pushed::Full, shard) => PushOutcome::Full(shard),
            (Pushed::NoBuffer, shard) => PushOutcome::NoBuffer(shard),
        }
    }
}

/// Word offsets of a ring in its allocation, as [`crate::ring`] lays it out: the
/// tail and the producers' copy of the head (written by the sections) and the buffer
/// address (installed once) on one cache line, the consumer's head on the next, so
/// that publishing a head does not invalidate the producers' line, and a send reads
/// the head's line only when its copy says the ring is full. A [`PayloadSite`] on
/// words laid out so takes the thin one-payload section, which addresses them from
/// the tail's by these distances.
///
/// Under loom a unit leaves only 6 words to allocations (`Arena::MAX_WORDS`) and
/// lines mean nothing: the words are packed.
pub(crate) mod ring_words {
    /// The producers' position (the sections' commit target).
    pub(crate) const TAIL: usize = 0;
    /// The address of the shard's slot buffer (0 until installed).
    pub(crate) const BUFFER: usize = 1;
    /// The producers' copy of the head, on their line (see `PayloadArgs::cached`).
    pub(crate) const CACHED_HEAD: usize = 2;
    /// The consumer's position.
    pub(crate) const HEAD: usize = if cfg!(loom) { 3 } else { 8 };
    /// Words per ring.
    pub(crate) const WORDS: usize = if cfg!(loom) { 4 } else { 16 };
}

/// What a [`PayloadSite`] push did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// The first `n` payloads are in the shard's ring, visible to the consumer.
    Committed(usize),
    /// The shard's ring is full; no payload was taken.
    Full,
    /// The shard has no slot buffer yet; the caller installs one and retries.
    NoBuffer,
}

/// A ring's four words (tail, head, buffer address, the producers' copy of the
/// head) and geometry, resolved once so that a push builds its section's operands
/// without chasing pointers: the producer side of [`crate::ring`]. In a NUMA arena the ring of a shard is the one
/// in the plane of the node the section reads.
pub(crate) struct PayloadSite<'a> {
    tail: Word<'a>,
    head: Word<'a>,
    buffer: Word<'a>,
    cached: Word<'a>,
    /// The channel's gate: sends fail while it is non-zero.
    gate: &'a AtomicU64,
    /// The section's operands with `src` null and `count` 0 (filled per push; the
    /// thin section reads the geometry and the gate from here).
    args: PayloadArgs,
    numa: bool,
    /// The tail word for the thin one-payload section: set when the words are laid
    /// out as [`ring_words`] says, the arena is not NUMA and slots are not empty.
    thin: ThinCell,
    thin_on: bool,
}

// SAFETY: the raw pointers in `args` are addresses in the arena chunk the words
// borrow, valid for `'a` and only used by the sections.
unsafe impl Send for PayloadSite<'_> {}
// SAFETY: as for `Send`; the site itself is never written after `new`.
unsafe impl Sync for PayloadSite<'_> {}

impl<'a> PayloadSite<'a> {
    /// The site of the ring whose words are `tail`, `head` and `buffer` (of one
    /// chunk), with `capacity` (a power of two) slots of `slot_bytes` (a multiple
    /// of 8) bytes; every push fails (as full) while `gate` is non-zero.
    pub(crate) fn new(
        [tail, head, buffer, cached]: [Word<'a>; 4],
        capacity: u64,
        slot_bytes: usize,
        gate: &'a AtomicU64,
    ) -> PayloadSite<'a> {
        assert!(capacity.is_power_of_two() && slot_bytes.is_multiple_of(8));
        assert!(
            [head, buffer, cached]
                .iter()
                .all(|w| std::ptr::eq(tail.chunk, w.chunk))
        );
        let numa = tail.chunk.is_numa();
        let locate = |w: Word<'a>| {
            if numa {
                // The NUMA section adds the unit's address to the word's offset.
                (w.offset * 8) as *mut u64
            } else {
                w.chunk.unit0(w.offset)
            }
        };
        let at = |w: Word<'a>, distance: usize| w.offset == tail.offset + distance;
        let thin_on = !numa
            && slot_bytes >= 8
            && at(buffer, ring_words::BUFFER - ring_words::TAIL)
            && at(cached, ring_words::CACHED_HEAD - ring_words::TAIL)
            && at(head, ring_words::HEAD - ring_words::TAIL);
        PayloadSite {
            thin: ThinCell::new(thin_on, tail.hot()),
            thin_on,
            tail,
            head,
            buffer,
            cached,
            gate,
            args: PayloadArgs {
                tail: locate(tail),
                head: locate(head),
                buffer: locate(buffer),
                capacity,
                mask: capacity - 1,
                src: std::ptr::null(),
                count: 0,
                slot_bytes: slot_bytes as u64,
                cached: locate(cached),
                // Only the asm reads it through this address (std's atomics have
                // the layout of the plain integer); loom runs the spec instead.
                gate: (gate as *const AtomicU64).cast(),
            },
            numa,
        }
    }

    /// Whether the rings are keyed by (node, cid).
    pub(crate) fn is_numa(&self) -> bool {
        self.numa
    }

    #[inline(always)]
    fn args(&self, src: *const u8, count: usize) -> PayloadArgs {
        PayloadArgs {
            src,
            count: count as u64,
            ..self.args
        }
    }

    /// One attempt of the section on the rseq backend: `Some` when it committed or
    /// found the ring full, `None` for anything else (the caller takes [`Self::push`]).
    ///
    /// # Safety
    /// As for [`PayloadSite::push`].
    #[inline(always)]
    pub(crate) unsafe fn try_push(&self, src: *const u8, count: usize) -> Option<Pushed> {
        if self.thin_on && count == 1 {
            use ring_words::{BUFFER, CACHED_HEAD, HEAD, TAIL};
            // SAFETY: the words are laid out as `ring_words` says (checked in `new`),
            // and the rest is the caller's contract.
            let st = unsafe {
                self.thin
                    .push_one::<{ BUFFER - TAIL }, { CACHED_HEAD - TAIL }, { HEAD - TAIL }>(
                        &self.args, src,
                    )
            };
            return match st {
                SectionStatus::Committed => Some(Pushed::Committed(1)),
                SectionStatus::Failed => Some(Pushed::Full),
                _ => None,
            };
        }
        // The thin sections' thread-local: the area, indexed by `mm_cid` at its fixed
        // offset (other threads take `push`).
        let area = hot_area()?;
        let index = area + crate::rseq::abi::offset::MM_CID;
        let args = self.args(src, count);
        let chunk = self.tail.chunk;
        let (st, n) = if self.numa {
            let cpu = SectionSite::numa(area, index, node_source(), chunk.dir_ptr());
            // SAFETY: `cpu` is this thread's registration, node source and the
            // chunk's directory; the words and buffers are the caller's contract.
            let (st, _, _, n) = unsafe { arch::numa_store_payload_commit_index(cpu, &args) };
            (st, n)
        } else {
            let cpu = SectionSite::plain(area, index, chunk.limit_ptr());
            // SAFETY: as above, with the chunk's plane-0 limit.
            let (st, _, n) = unsafe { arch::store_payload_commit_index(cpu, &args) };
            (st, n)
        };
        match st {
            SectionStatus::Committed => Some(Pushed::Committed(n)),
            SectionStatus::Failed => Some(Pushed::Full),
            _ => None,
        }
    }

    /// After a [`Self::push`]: lets the thin section reach the indexes materialised
    /// since (see [`ThinCell::refresh`]).
    pub(crate) fn refresh_thin(&self) {
        self.thin.refresh(|| self.tail.chunk.limit_ptr());
    }

    /// `store_payload_commit_index` on the caller's shard: publishes the first `n`
    /// of the `count` payloads at `src` that fit, and says which shard it ran on.
    ///
    /// # Safety
    /// `count >= 1`; `src` is readable for `count * slot_bytes` bytes; every non-zero
    /// buffer word points to `capacity` slots of `slot_bytes` bytes that live as long
    /// as the word holds the address; only pushes write the tail words, and only the
    /// consumer writes the head words (never past the tail).
    pub(crate) unsafe fn push(&self, src: *const u8, count: usize) -> (Pushed, Shard) {
        debug_assert!(count >= 1);
        let args = self.args(src, count);
        let chunk = self.tail.chunk;
        let (t, h, b, c) = (
            self.tail.offset,
            self.head.offset,
            self.buffer.offset,
            self.cached.offset,
        );
        let capacity = self.args.capacity;
        let slot_bytes = self.args.slot_bytes as usize;
        let gate = self.gate;
        let plane = if self.numa { Plane::Node } else { Plane::Zero };
        let (outcome, shard) = run(
            chunk,
            plane,
            |cpu| {
                let (st, node, idx, n) = if self.numa {
                    // SAFETY: as in `try_push`.
                    unsafe { arch::numa_store_payload_commit_index(cpu, &args) }
                } else {
                    // SAFETY: as in `try_push`.
                    let (st, idx, n) = unsafe { arch::store_payload_commit_index(cpu, &args) };
                    (st, 0, idx, n)
                };
                match st {
                    // A unit without a buffer, as opposed to no unit at all.
                    SectionStatus::NotMaterialized
                        if node < chunk.planes() && idx < chunk.plane_limit(node) =>
                    {
                        Attempt::Done(PayloadOutcome::NoBuffer, plane.shard(node, idx))
                    }
                    st => Attempt::on_node(st, plane, node, idx, |committed| {
                        if committed {
                            PayloadOutcome::Committed(n)
                        } else {
                            PayloadOutcome::Full
                        }
                    }),
                }
            },
            |s, unit| {
                let payload = Payload {
                    tail: unit.word(t),
                    head: unit.word(h),
                    cached: unit.word(c),
                    buffer: unit.word(b),
                    capacity,
                    slot_bytes,
                    src,
                    count,
                    gate,
                };
                // SAFETY: the caller's contract.
                unsafe { spec::store_payload_commit_index(s, &payload) }
            },
            None,
        );
        let pushed = match outcome {
            PayloadOutcome::Committed(n) => Pushed::Committed(n),
            PayloadOutcome::Full => Pushed::Full,
            PayloadOutcome::NoBuffer => Pushed::NoBuffer,
        };
        (pushed, shard)
    }
}

impl<'a> Word<'a> {
    /// Replaces `expect` by `new` in the word of `shard` — any shard, from any
    /// thread, not a section on the caller's own cid. Slow (an rseq fence on the
    /// rseq backend): for visiting or draining other cids' state.
    ///
    /// `new` must be a value the sections on this word never store *and* that no
    /// other foreign caller uses at the same time (a per-call owner token), so that
    /// an overwrite by a racing section shows, and ownership is never shared.
    ///
    /// * A lane: under the lane's lock, like every portable section.
    /// * A simulated cid: under its commit lock, after bumping its generation (which
    ///   aborts the sections in flight there).
    /// * An rseq cid: compare-and-swap, then [`fence_rseq`]: every section that read
    ///   the old value before the swap has committed (overwriting `new`, which the
    ///   check after the fence sees) or aborted (and will see `new` on its retry).
    ///
    /// Returns `Ok(Ok(()))` when `new` is in place, `Ok(Err(seen))` when the word
    /// held (or a racing section committed) something else.
    ///
    /// Only for words whose every section fails on seeing `new` (compare-and-store
    /// locks, list heads holding a token): an `add` cannot fail, so a foreign store
    /// on an add word would be silently changed by the next add.
    ///
    /// # Errors
    /// [`ForeignError::NoSuchShard`] for a shard that is not materialised,
    /// [`ForeignError::Fence`] when the kernel refuses the rseq fence (the old value
    /// is then put back unless a section already overwrote `new`).
    pub fn foreign_compare_store(
        self,
        shard: Shard,
        expect: u64,
        new: u64,
    ) -> Result<Result<(), u64>, ForeignError> {
        let Some(word) = self.at(shard) else {
            return Err(ForeignError::NoSuchShard(shard));
        };
        let chunk = self.chunk;
        let locked = |lock: &AtomicU64, generation: Option<&AtomicU64>| {
            let _region = LockedRegion::enter();
            simulated::lock_word(lock);
            if let Some(generation) = generation {
                generation.fetch_add(1, Ordering::Relaxed);
            }
            let seen = word.load(Ordering::Acquire);
            let result = if seen == expect {
                word.store(new, Ordering::Release);
                Ok(())
            } else {
                Err(seen)
            };
            simulated::unlock_word(lock);
            result
        };
        let (node, cid) = match shard {
            Shard::Lane(lane) => {
                return Ok(locked(chunk.lane_unit(lane).word(HEADER_LOCK), None));
            }
            Shard::Cid(cid) => (0, cid),
            Shard::NodeCid { node, cid } => (node, cid),
        };
        match process().forced {
            Some((Backend::Simulated, _)) => {
                let unit = chunk.cid_unit(node, cid);
                Ok(locked(
                    unit.word(HEADER_LOCK),
                    Some(unit.word(HEADER_GENERATION)),
                ))
            }
            // No thread runs sections: the word is only read.
            Some((Backend::Portable, _)) => Ok(word
                .compare_exchange(expect, new, Ordering::AcqRel, Ordering::Acquire)
                .map(|_| ())),
            _ => {
                if let Err(seen) =
                    word.compare_exchange(expect, new, Ordering::SeqCst, Ordering::Acquire)
                {
                    return Ok(Err(seen));
                }
                if fence_skippable() {
                    return Ok(Ok(()));
                }
                if let Err(e) = fence_rseq() {
                    // Cannot prove ownership: put the old value back unless a
                    // section already overwrote ours.
                    let _ = word.compare_exchange(new, expect, Ordering::AcqRel, Ordering::Relaxed);
                    return Err(ForeignError::Fence(e));
                }
                let now = word.load(Ordering::Acquire);
                Ok(if now == new { Ok(()) } else { Err(now) })
            }
        }
    }

    /// [`Word::foreign_compare_store`] of the one token `new` over many shards of
    /// many words, with one rseq fence in all instead of one each: every rseq cid's
    /// word is swapped first, then the fence proves them all. Calls `owned(i)` for
    /// each item `i` whose word now holds `new` (the caller owns what it held).
    /// On a refused fence, puts every swapped value back and owns none of them.
    pub(crate) fn foreign_compare_store_many(
        items: &[(Word<'_>, Shard, u64)],
        new: u64,
        mut owned: impl FnMut(usize),
    ) {
        let simulated = matches!(process().forced, Some((Backend::Simulated, _)));
        let portable = matches!(process().forced, Some((Backend::Portable, _)));
        let mut swapped = Vec::new();
        for (i, &(word, shard, expect)) in items.iter().enumerate() {
            let rseq_cid = !matches!(shard, Shard::Lane(_)) && !simulated && !portable;
            if !rseq_cid {
                if let Ok(Ok(())) = word.foreign_compare_store(shard, expect, new) {
                    owned(i);
                }
                continue;
            }
            let Some(w) = word.at(shard) else { continue };
            if w.compare_exchange(expect, new, Ordering::SeqCst, Ordering::Acquire)
                .is_ok()
            {
                swapped.push(i);
            }
        }
        if swapped.is_empty() {
            return;
        }
        if !fence_skippable() && fence_rseq().is_err() {
            for &i in &swapped {
                let (word, shard, expect) = items[i];
                if let Some(w) = word.at(shard) {
                    let _ = w.compare_exchange(new, expect, Ordering::AcqRel, Ordering::Relaxed);
                }
            }
            return;
        }
        for i in swapped {
            let (word, shard, _) = items[i];
            if word
                .at(shard)
                .is_some_and(|w| w.load(Ordering::Acquire) == new)
            {
                owned(i);
            }
        }
    }

    /// Waits until every section on this word's chunk that started before the call
    /// has committed or aborted, on every shard: after it, a section that reads a
    /// flag the caller set before the call sees it. Slow: takes every lane's lock and,
    /// on the simulated backend, every cid's commit lock (bumping its generation),
    /// materialised or not (a shard that materialises while a scan of the
    /// materialised ones runs could otherwise run a section that read the flag
    /// before it was set); runs one rseq fence when a thread may be in an rseq
    /// section. (On the simulated backend, a NUMA plane reserved during the call is
    /// not covered: the simulation of NUMA planes is for tests only.)
    ///
    /// # Errors
    /// [`ForeignError::Fence`] when the kernel refuses the rseq fence: sections on
    /// rseq cids may then still be running with the old view.
    pub(crate) fn quiesce(self) -> Result<(), ForeignError> {
        let chunk = self.chunk;
        let _region = LockedRegion::enter();
        for lane in 0..chunk.lane_count() {
            let lock = chunk.lane_unit(lane).word(HEADER_LOCK);
            simulated::lock_word(lock);
            simulated::unlock_word(lock);
        }
        match process().forced {
            Some((Backend::Simulated, _)) => {
                for plane in (0..chunk.planes()).filter(|&p| chunk.plane_reserved(p)) {
                    for cid in 0..chunk.cid_capacity() {
                        let unit = chunk.cid_unit(plane, cid);
                        simulated::lock_word(unit.word(HEADER_LOCK));
                        unit.word(HEADER_GENERATION).fetch_add(1, Ordering::Relaxed);
                        simulated::unlock_word(unit.word(HEADER_LOCK));
                    }
                }
                Ok(())
            }
            Some((Backend::Portable, _)) => Ok(()),
            // The caller's flag store is ordered by `fence_skippable`'s fence.
            _ if fence_skippable() => Ok(()),
            _ => fence_rseq().map_err(ForeignError::Fence),
        }
    }

    /// The shard the caller's next section on this word would most likely run on:
    /// a hint read outside any section (the thread may move before it acts on it).
    pub(crate) fn current_shard_hint(self) -> Shard {
        let chunk = self.chunk;
        match thread_backend() {
            ThreadBackend::Rseq { .. } => {
                let cid = crate::rseq::current_cid();
                if chunk.is_numa() {
                    Shard::NodeCid {
                        node: crate::rseq::current_node(),
                        cid,
                    }
                } else {
                    Shard::Cid(cid)
                }
            }
            ThreadBackend::Simulated => {
                let cid = simulated::thread_cid();
                if chunk.is_numa() {
                    Shard::NodeCid {
                        node: simulated::thread_node(),
                        cid,
                    }
                } else {
                    Shard::Cid(cid)
                }
            }
            ThreadBackend::Portable => {
                Shard::Lane(crate::rseq::portable_cpu() % chunk.lane_count())
            }
        }
    }
}
