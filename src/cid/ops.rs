//! The operations on a [`Word`]: each runs as one critical section on the caller's
//! current index, with the same fallbacks everywhere:
//!
//! * **rseq**: the `asm!` section. *Aborted* retries at once (bounded);
//!   *not materialised* raises the chunk's limit and retries.
//! * **simulated**: the pseudocode of [`crate::rseq::spec`] in a simulated section.
//! * **portable**, and any thread whose sections keep aborting or whose index is out
//!   of range: the same pseudocode on the thread's CPU lane, under the lane's lock
//!   (or a plain atomic read-modify-write where one instruction does the job).

use super::arena::{Chunk, HEADER_GENERATION, HEADER_LOCK, Word, Words};
use crate::rseq::arch::{self, PayloadArgs, SectionSite, SectionStatus};
use crate::rseq::registration::{ThreadBackend, any_rseq_thread, process, thread_backend};
use crate::rseq::simulated::{self, SimSection};
use crate::rseq::spec::{self, Aborted, Locked, Payload, PayloadOutcome, Section};
use crate::rseq::{Backend, MembarrierError, fence_rseq};
use crate::sync::{AtomicU64, Ordering};

/// Consecutive aborts after which an operation moves to the thread's lane. Aborts
/// come from preemption and signals, so a handful in a row already means the thread
/// is being hammered; the bound keeps a thread that cannot finish a section (never
/// registered, say) from spinning forever.
const MAX_ABORTS: u32 = if cfg!(loom) { 2 } else { 64 };

/// Which shard an operation ran on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shard {
    /// The unit of this index (`mm_cid`, `cpu_id`, or simulated cid).
    Cid(u32),
    /// The unit of this portable lane.
    Lane(u32),
}

/// One attempt of an rseq section, as the op wrappers report it.
enum Attempt<T> {
    Done(T, u32),
    Aborted,
    NotMaterialized(u32),
}

impl<T> Attempt<T> {
    #[inline(always)]
    fn from_status(status: SectionStatus, index: u32, done: impl FnOnce(bool) -> T) -> Attempt<T> {
        match status {
            SectionStatus::Committed => Attempt::Done(done(true), index),
            SectionStatus::Failed => Attempt::Done(done(false), index),
            SectionStatus::Aborted => Attempt::Aborted,
            SectionStatus::NotMaterialized => Attempt::NotMaterialized(index),
        }
    }
}

/// Runs one operation on the caller's shard. `rseq` is one attempt of the asm
/// section; `spec` runs the pseudocode in a section on an index unit (simulated) or a
/// lane (portable); `lane` overrides the portable path when a plain atomic suffices.
#[inline(always)]
fn run<T>(
    chunk: &Chunk,
    mut rseq: impl FnMut(SectionSite) -> Attempt<T>,
    mut spec: impl FnMut(&mut dyn Section, usize) -> Result<T, Aborted>,
    lane: Option<&dyn Fn(usize) -> T>,
) -> (T, Shard) {
    match thread_backend() {
        ThreadBackend::Rseq { area, index } => {
            let cpu = SectionSite {
                area,
                index,
                limit: chunk.limit_ptr(),
            };
            let mut aborts = 0;
            loop {
                match rseq(cpu) {
                    Attempt::Done(value, idx) => return (value, Shard::Cid(idx)),
                    Attempt::Aborted => {
                        aborts += 1;
                        if aborts >= MAX_ABORTS {
                            break;
                        }
                    }
                    Attempt::NotMaterialized(idx) => {
                        if !chunk.materialize_cid(idx) {
                            break;
                        }
                    }
                }
            }
        }
        ThreadBackend::Simulated => {
            if let Some(done) = run_simulated(chunk, &mut spec) {
                return done;
            }
        }
        ThreadBackend::Portable => {}
    }
    run_on_lane(chunk, &mut spec, lane)
}

#[cold]
#[inline(never)]
fn run_simulated<T>(
    chunk: &Chunk,
    spec: &mut dyn FnMut(&mut dyn Section, usize) -> Result<T, Aborted>,
) -> Option<(T, Shard)> {
    let cid = simulated::thread_cid();
    if !chunk.materialize_cid(cid) {
        return None;
    }
    let unit = cid as usize;
    for _ in 0..MAX_ABORTS {
        let mut section = SimSection::begin(
            chunk.word(unit, HEADER_GENERATION),
            chunk.word(unit, HEADER_LOCK),
        );
        if let Ok(value) = spec(&mut section, unit) {
            return Some((value, Shard::Cid(cid)));
        }
    }
    None
}

#[cold]
#[inline(never)]
fn run_on_lane<T>(
    chunk: &Chunk,
    spec: &mut dyn FnMut(&mut dyn Section, usize) -> Result<T, Aborted>,
    lane: Option<&dyn Fn(usize) -> T>,
) -> (T, Shard) {
    let lane_id = chunk.lane(crate::rseq::portable_cpu());
    let unit = chunk.lane_unit(lane_id);
    if let Some(atomic) = lane {
        return (atomic(unit), Shard::Lane(lane_id));
    }
    let lock = chunk.word(unit, HEADER_LOCK);
    simulated::lock_word(lock);
    let result = spec(&mut Locked, unit);
    simulated::unlock_word(lock);
    match result {
        Ok(value) => (value, Shard::Lane(lane_id)),
        // `Locked` never aborts.
        Err(Aborted) => unreachable!("a locked section aborted"),
    }
}

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

    /// One attempt of `load_add_store` on the rseq backend, for callers that do not
    /// need the shard: true when it committed, false for anything else (the caller
    /// then takes [`Word::add`]).
    #[inline(always)]
    pub(crate) fn try_add_committed(self, v: u64) -> bool {
        if let ThreadBackend::Rseq { area, index } = thread_backend() {
            let cpu = SectionSite {
                area,
                index,
                limit: self.limit,
            };
            // SAFETY: as in `try_add`.
            return unsafe { arch::load_add_store_committed(cpu, self.base, v) };
        }
        false
    }

    /// One attempt of `load_add_store` on the rseq backend. `None` for anything but a
    /// first-try commit (another backend, an abort, a new cid): the caller then takes
    /// [`Word::add`], which handles them all.
    #[inline(always)]
    pub(crate) fn try_add(self, v: u64) -> Option<Shard> {
        if let ThreadBackend::Rseq { area, index } = thread_backend() {
            let cpu = SectionSite {
                area,
                index,
                limit: self.limit,
            };
            // SAFETY: `base` and `limit` come from `Word::hot` of a live word (the
            // caller keeps the word's allocation alive); otherwise as in `Word::add`.
            let (st, idx) = unsafe { arch::load_add_store(cpu, self.base, v) };
            if st == SectionStatus::Committed {
                return Some(Shard::Cid(idx));
            }
        }
        None
    }
}

impl<'a> Word<'a> {
    /// This word in the unit of `shard`, or `None` when that shard is not
    /// materialised (nothing was ever written there).
    ///
    /// For reading, and for writing words the sections only read (a buffer address
    /// installed with `compare_exchange`) or that the caller owns (a lock it holds):
    /// an atomic write racing a section's commit on the same word loses one of them.
    #[inline]
    pub fn at(self, shard: Shard) -> Option<&'a AtomicU64> {
        let unit = match shard {
            Shard::Cid(c) if c < self.chunk.cid_limit() => c as usize,
            Shard::Lane(l) if l < self.chunk.lane_limit() => self.chunk.lane_unit(l),
            _ => return None,
        };
        Some(self.chunk.word(unit, self.offset))
    }

    /// The shards that may hold a value: materialised indexes, then materialised lanes.
    pub fn shards(self) -> impl Iterator<Item = (Shard, &'a AtomicU64)> {
        let chunk = self.chunk;
        let offset = self.offset;
        let cids = chunk.cid_limit();
        let lanes = chunk.lane_limit();
        (0..cids)
            .map(move |c| (Shard::Cid(c), chunk.word(c as usize, offset)))
            .chain(
                (0..lanes).map(move |l| (Shard::Lane(l), chunk.word(chunk.lane_unit(l), offset))),
            )
    }

    /// How many shards may hold a value (materialised indexes and lanes): O(1).
    pub fn shard_count(self) -> u32 {
        self.chunk.cid_limit() + self.chunk.lane_limit()
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
            ThreadBackend::Rseq { area, index } => Some(SectionSite {
                area,
                index,
                limit: self.chunk.limit_ptr(),
            }),
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
            |cpu| {
                // SAFETY: as in `add`.
                let (st, idx) = unsafe { arch::load_add_store(cpu, base, v) };
                Attempt::from_status(st, idx, |_| ())
            },
            |s, unit| spec::load_add_store(s, chunk.word(unit, offset), v),
            Some(&|unit| {
                chunk.word(unit, offset).fetch_add(v, Ordering::Relaxed);
            }),
        )
        .1
    }

    /// `load_cbne_store`: on the caller's shard, replaces `expect` by `new`. Returns
    /// the shard on success, the value seen otherwise.
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
            |cpu| {
                // SAFETY: as in `add`.
                let (st, idx, seen) = unsafe { arch::load_cbne_store(cpu, base, expect, new) };
                Attempt::from_status(
                    st,
                    idx,
                    |committed| if committed { Ok(()) } else { Err(seen) },
                )
            },
            |s, unit| spec::load_cbne_store(s, chunk.word(unit, offset), expect, new),
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
            |cpu| {
                // SAFETY: as in `add`; listed nodes are live (the caller's contract).
                let (st, idx, node) = unsafe { arch::list_pop(cpu, base) };
                Attempt::from_status(st, idx, |committed| committed.then_some(node))
            },
            // SAFETY: listed nodes are live (the caller's contract).
            |s, unit| unsafe { spec::list_pop(s, chunk.word(unit, offset)) },
            None,
        );
        node.map(|n| (n, shard))
    }

    /// `list_push`: pushes `node` on the caller's shard's list unless it already
    /// holds `max_len` nodes (then `Err(ListFull)`, and the list did not take the node).
    ///
    /// # Safety
    /// `node` is an 8-byte aligned, writable word below 2^48 that the caller owns and
    /// gives to the list; the contract of [`Word::list_pop`] holds.
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
            |cpu| {
                // SAFETY: as in `add`; the node is the caller's (the contract).
                let (st, idx) = unsafe { arch::list_push(cpu, base, node, max_len) };
                Attempt::from_status(st, idx, |committed| committed)
            },
            // SAFETY: the node is the caller's private word (the contract).
            |s, unit| {
                Ok(unsafe { spec::list_push(s, chunk.word(unit, offset), node, max_len) }?.is_ok())
            },
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
    /// caller's shard's ring and publishes them by moving its tail. Words `tail`,
    /// `head` and `buffer` of this run hold, per shard, the producers' position, the
    /// consumer's position and the address of the slot buffer (`mask + 1` slots).
    ///
    /// # Safety
    /// `slot_bytes` is a multiple of 8; `src` is readable for `slot_bytes` bytes;
    /// every non-zero buffer word points to `mask + 1` slots of `slot_bytes` bytes
    /// that live as long as the word holds the address; only this method writes the
    /// tail words, and only the consumer writes the head words (never past the tail).
    pub unsafe fn push_payload(
        &self,
        tail: usize,
        head: usize,
        buffer: usize,
        mask: u64,
        slot_bytes: usize,
        src: *const u8,
    ) -> PushOutcome {
        debug_assert!(
            slot_bytes.is_multiple_of(8),
            "slots are copied in whole words"
        );
        let chunk = self.chunk();
        let (t, h, b) = (self.word(tail), self.word(head), self.word(buffer));
        let args = PayloadArgs {
            tail: chunk.unit0(t.offset),
            head: chunk.unit0(h.offset),
            buffer: chunk.unit0(b.offset),
            mask,
            slot_bytes: slot_bytes as u64,
            src,
        };
        let (outcome, shard) = run(
            chunk,
            |cpu| {
                // SAFETY: as in `add`, plus the caller's contract on the buffers.
                let (st, idx) = unsafe { arch::store_payload_commit_index(cpu, &args) };
                match st {
                    SectionStatus::NotMaterialized if idx < chunk.cid_limit() => {
                        Attempt::Done(PayloadOutcome::NoBuffer, idx)
                    }
                    st => Attempt::from_status(st, idx, |committed| {
                        if committed {
                            PayloadOutcome::Committed
                        } else {
                            PayloadOutcome::Full
                        }
                    }),
                }
            },
            |s, unit| {
                let payload = Payload {
                    tail: chunk.word(unit, t.offset),
                    head: chunk.word(unit, h.offset),
                    buffer: chunk.word(unit, b.offset),
                    mask,
                    slot_bytes,
                    src,
                };
                // SAFETY: the caller's contract.
                unsafe { spec::store_payload_commit_index(s, &payload) }
            },
            None,
        );
        match outcome {
            PayloadOutcome::Committed => PushOutcome::Committed(shard),
            PayloadOutcome::Full => PushOutcome::Full(shard),
            PayloadOutcome::NoBuffer => PushOutcome::NoBuffer(shard),
        }
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
        match shard {
            Shard::Lane(lane) => Ok(locked(chunk.word(chunk.lane_unit(lane), HEADER_LOCK), None)),
            Shard::Cid(cid) => match process().forced {
                Some((Backend::Simulated, _)) => {
                    let unit = cid as usize;
                    Ok(locked(
                        chunk.word(unit, HEADER_LOCK),
                        Some(chunk.word(unit, HEADER_GENERATION)),
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
                    if !any_rseq_thread() {
                        return Ok(Ok(()));
                    }
                    if let Err(e) = fence_rseq() {
                        // Cannot prove ownership: put the old value back unless a
                        // section already overwrote ours.
                        let _ =
                            word.compare_exchange(new, expect, Ordering::AcqRel, Ordering::Relaxed);
                        return Err(ForeignError::Fence(e));
                    }
                    let now = word.load(Ordering::Acquire);
                    Ok(if now == new { Ok(()) } else { Err(now) })
                }
            },
        }
    }
}
