//! Chunks, units and word allocations: see the module documentation of [`crate::cid`].

use crate::rseq::registration::process;
use crate::sync::{AtomicU32, AtomicU64, Mutex, Ordering};
use std::fmt;

/// log2 of a unit's size in bytes: 64 KiB, 8192 words per index per chunk. Under loom
/// a unit is 8 words, so tests exercise chunk growth.
pub(crate) const UNIT_SHIFT: u32 = if cfg!(loom) { 6 } else { 16 };
const UNIT_BYTES: usize = 1 << UNIT_SHIFT;
const UNIT_WORDS: usize = UNIT_BYTES / 8;

/// Words at the start of every unit reserved for the backends, a full cache line so
/// that no allocation shares it: word 0 is the simulated backend's generation, word 1
/// the simulated commit lock (index units) or the lane lock (lanes).
pub(crate) const HEADER_WORDS: usize = if cfg!(loom) { 2 } else { 8 };
pub(crate) const HEADER_GENERATION: usize = 0;
pub(crate) const HEADER_LOCK: usize = 1;

/// Why the arena could not allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageError {
    /// More words were asked for than a unit holds.
    TooLarge {
        /// Words asked for.
        words: usize,
        /// Most words one allocation can have.
        max: usize,
    },
    /// Reserving a chunk's address space failed with this errno.
    Map(i32),
    /// An allocation of zero words was asked for.
    Empty,
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::TooLarge { words, max } => write!(
                f,
                "an allocation of {words} words per cid exceeds the unit size ({max} words)"
            ),
            StorageError::Empty => f.write_str("an allocation needs at least one word"),
            StorageError::Map(errno) => write!(
                f,
                "reserving per-cid storage failed: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
        }
    }
}

impl std::error::Error for StorageError {}

/// What an arena holds, for tests and `percid status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Chunks reserved.
    pub chunks: usize,
    /// Indexes (cids) materialised: the most of any chunk.
    pub cids_materialized: u32,
    /// Portable lanes materialised: the most of any chunk.
    pub lanes_materialized: u32,
    /// Words allocated in every unit, over all chunks.
    pub words_in_use: usize,
    /// Bytes each materialised index holds for the allocations (`8 × words_in_use`).
    pub bytes_per_cid: usize,
    /// Resident bytes of the materialised units, as the kernel reports (`mincore`).
    pub resident_bytes: usize,
}

/// One reservation: `cid_capacity + lanes` units of `UNIT_BYTES` each. Aligned to
/// its own cache lines: every section reads `cid_limit`, which must not share a line
/// with unrelated data that others write.
#[repr(align(128))]
pub(crate) struct Chunk {
    memory: *mut AtomicU64,
    cid_capacity: u32,
    lanes: u32,
    /// Indexes `0 .. cid_limit` are materialised; critical sections compare the index
    /// they read against this word.
    pub(crate) cid_limit: AtomicU32,
    /// Lanes `0 .. lane_limit` are materialised.
    lane_limit: AtomicU32,
}

// SAFETY: a chunk is a reservation of atomics plus atomic limits, written through
// `AtomicU64` or by the critical sections' single-instruction commits (x86 stores,
// single-copy atomic); it is shared by reference only and freed by its arena.
unsafe impl Send for Chunk {}
// SAFETY: as above; all access to the memory goes through `AtomicU64`.
unsafe impl Sync for Chunk {}

impl Chunk {
    fn new(cid_capacity: u32, lanes: u32) -> Result<Chunk, StorageError> {
        let units = cid_capacity as usize + lanes as usize;
        Ok(Chunk {
            memory: reserve(units * UNIT_WORDS)?,
            cid_capacity,
            lanes,
            cid_limit: AtomicU32::new(0),
            lane_limit: AtomicU32::new(0),
        })
    }

    fn units(&self) -> usize {
        self.cid_capacity as usize + self.lanes as usize
    }

    /// The word at `offset` of unit `unit`.
    #[inline(always)]
    pub(crate) fn word(&self, unit: usize, offset: usize) -> &AtomicU64 {
        debug_assert!(unit < self.units() && offset < UNIT_WORDS);
        // SAFETY: `unit < units` and `offset < UNIT_WORDS` (callers derive both from
        // the capacity and an allocation), so the word is inside the reservation,
        // which lives as long as `self`.
        unsafe { &*self.memory.add(unit * UNIT_WORDS + offset) }
    }

    /// Address of the word at `offset` in unit 0: critical sections add
    /// `index << UNIT_SHIFT` to it.
    #[inline(always)]
    pub(crate) fn unit0(&self, offset: usize) -> *mut u64 {
        // SAFETY: `offset < UNIT_WORDS` keeps the pointer inside unit 0.
        unsafe { self.memory.add(offset) as *mut u64 }
    }

    /// The limit as the critical sections read it.
    #[cfg(not(loom))]
    #[inline(always)]
    pub(crate) fn limit_ptr(&self) -> *const u32 {
        self.cid_limit.as_ptr()
    }

    /// Under loom there are no `asm!` sections to read the limit.
    #[cfg(loom)]
    pub(crate) fn limit_ptr(&self) -> *const u32 {
        std::ptr::null()
    }

    /// Makes index `cid` (and every index below it) visible to readers. False when
    /// the index is beyond the capacity: the caller uses a lane.
    #[cold]
    pub(crate) fn materialize_cid(&self, cid: u32) -> bool {
        if cid >= self.cid_capacity {
            return false;
        }
        self.cid_limit.fetch_max(cid + 1, Ordering::AcqRel);
        true
    }

    /// The lane for a thread on `cpu`, materialised.
    pub(crate) fn lane(&self, cpu: u32) -> u32 {
        let lane = cpu % self.lanes;
        if lane >= self.lane_limit.load(Ordering::Acquire) {
            self.lane_limit.fetch_max(lane + 1, Ordering::AcqRel);
        }
        lane
    }

    /// Unit number of a lane.
    #[inline]
    pub(crate) fn lane_unit(&self, lane: u32) -> usize {
        self.cid_capacity as usize + lane as usize
    }

    pub(crate) fn cid_limit(&self) -> u32 {
        self.cid_limit.load(Ordering::Acquire)
    }

    pub(crate) fn lane_limit(&self) -> u32 {
        self.lane_limit.load(Ordering::Acquire)
    }

    /// The units that may hold data: materialised indexes, then materialised lanes.
    pub(crate) fn live_units(&self) -> impl Iterator<Item = usize> + '_ {
        let cids = self.cid_limit() as usize;
        let lanes = self.lane_limit() as usize;
        let first_lane = self.cid_capacity as usize;
        (0..cids).chain(first_lane..first_lane + lanes)
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        release(self.memory, self.units() * UNIT_WORDS);
    }
}

/// Reserves zeroed memory for `words` atomics.
#[cfg(not(loom))]
fn reserve(words: usize) -> Result<*mut AtomicU64, StorageError> {
    // SAFETY: an anonymous private mapping, checked below. NORESERVE: pages become
    // memory only when an index writes them.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            words * 8,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(StorageError::Map(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ));
    }
    // Zeroed pages are valid `AtomicU64(0)`s: same size and alignment as u64.
    Ok(map.cast())
}

#[cfg(not(loom))]
fn release(memory: *mut AtomicU64, words: usize) {
    // SAFETY: `memory` is the mapping `reserve` made for `words` words; its chunk is
    // being dropped, so nothing refers to it any more.
    unsafe { libc::munmap(memory.cast(), words * 8) };
}

#[cfg(loom)]
fn reserve(words: usize) -> Result<*mut AtomicU64, StorageError> {
    let memory: Box<[AtomicU64]> = (0..words).map(|_| AtomicU64::new(0)).collect();
    Ok(Box::into_raw(memory).cast())
}

#[cfg(loom)]
fn release(memory: *mut AtomicU64, words: usize) {
    // SAFETY: `memory` came from `Box::into_raw` of a boxed slice of `words` atomics.
    drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(memory, words)) });
}

/// Resident bytes of `len` bytes at `start` (page granular), via `mincore`.
#[cfg(not(loom))]
fn resident(start: usize, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let page = 4096;
    let first = start & !(page - 1);
    let pages = (start + len - first).div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: the range lies in one of our mappings; `vec` has one byte per page.
    let rc = unsafe { libc::mincore(first as *mut libc::c_void, pages * page, vec.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    vec.iter().filter(|b| **b & 1 != 0).count() * page
}

#[cfg(loom)]
fn resident(_start: usize, _len: usize) -> usize {
    0
}

/// A freed run of words.
struct FreeRun {
    chunk: usize,
    offset: usize,
    len: usize,
}

struct State {
    /// Boxed: `Words` refer to chunks, whose addresses must not move as the list grows.
    #[allow(clippy::vec_box)]
    chunks: Vec<Box<Chunk>>,
    /// Next free word of the last chunk.
    bump: usize,
    free: Vec<FreeRun>,
    words_in_use: usize,
}

/// The per-cid arena: see the module documentation of [`crate::cid`].
pub struct Arena {
    cid_capacity: u32,
    lanes: u32,
    state: Mutex<State>,
}

impl Arena {
    /// An arena sized for this process: as many index units as possible CPUs (the
    /// bound of `cpu_id` and `mm_cid`) and as many lanes. Reserves nothing until the
    /// first allocation.
    pub fn new() -> Arena {
        let possible = process().possible_cpus;
        let sim = crate::rseq::simulated::default_cids();
        Arena::with_capacity(possible.max(sim), possible)
    }

    /// An arena for indexes below `cids` and `lanes` portable lanes (both at least 1).
    pub fn with_capacity(cids: u32, lanes: u32) -> Arena {
        Arena {
            cid_capacity: cids.max(1),
            lanes: lanes.max(1),
            state: Mutex::new(State {
                chunks: Vec::new(),
                bump: UNIT_WORDS,
                free: Vec::new(),
                words_in_use: 0,
            }),
        }
    }

    /// Most words one allocation can have.
    pub const MAX_WORDS: usize = UNIT_WORDS - HEADER_WORDS;

    /// Allocates `len` zeroed words in every unit (every index and lane). Runs of up
    /// to 8 words never straddle a cache line.
    pub fn alloc(&self, len: usize) -> Result<Words<'_>, StorageError> {
        if len == 0 {
            return Err(StorageError::Empty);
        }
        if len > Self::MAX_WORDS {
            return Err(StorageError::TooLarge {
                words: len,
                max: Self::MAX_WORDS,
            });
        }
        let mut state = lock(&self.state);
        let (chunk, offset) = match state.free.iter().position(|run| run.len == len) {
            Some(i) => {
                let run = state.free.swap_remove(i);
                (run.chunk, run.offset)
            }
            None => {
                let align = len.next_power_of_two().min(8);
                let mut offset = state.bump.next_multiple_of(align);
                if offset + len > UNIT_WORDS {
                    let chunk = Chunk::new(self.cid_capacity, self.lanes)?;
                    state.chunks.push(Box::new(chunk));
                    offset = HEADER_WORDS;
                }
                state.bump = offset + len;
                (state.chunks.len() - 1, offset)
            }
        };
        state.words_in_use += len;
        let chunk_index = chunk;
        let chunk: *const Chunk = &*state.chunks[chunk];
        drop(state);
        Ok(Words {
            arena: self,
            chunk_index: chunk_index as u32,
            // SAFETY: chunks are boxed (stable addresses) and dropped only with the
            // arena, which `Words<'_>` borrows.
            chunk: unsafe { &*chunk },
            offset: offset as u32,
            len: len as u32,
        })
    }

    /// Returns a run to the arena, zeroed in every unit that may have written it.
    fn free(&self, chunk_index: usize, chunk: &Chunk, offset: usize, len: usize) {
        for unit in chunk.live_units() {
            for i in 0..len {
                let word = chunk.word(unit, offset + i);
                // Untouched pages stay untouched: only written words are cleared.
                if word.load(Ordering::Relaxed) != 0 {
                    word.store(0, Ordering::Relaxed);
                }
            }
        }
        let mut state = lock(&self.state);
        state.free.push(FreeRun {
            chunk: chunk_index,
            offset,
            len,
        });
        state.words_in_use -= len;
    }

    /// What the arena holds now.
    pub fn stats(&self) -> StorageStats {
        let state = lock(&self.state);
        let mut stats = StorageStats {
            chunks: state.chunks.len(),
            words_in_use: state.words_in_use,
            bytes_per_cid: state.words_in_use * 8,
            ..StorageStats::default()
        };
        for (i, chunk) in state.chunks.iter().enumerate() {
            stats.cids_materialized = stats.cids_materialized.max(chunk.cid_limit());
            stats.lanes_materialized = stats.lanes_materialized.max(chunk.lane_limit());
            let used = if i + 1 == state.chunks.len() {
                state.bump
            } else {
                UNIT_WORDS
            };
            for unit in chunk.live_units() {
                let start = chunk.word(unit, 0) as *const AtomicU64 as usize;
                stats.resident_bytes += resident(start, used * 8);
            }
        }
        stats
    }

    /// Index units per chunk (the bound of the indexes this arena serves).
    pub fn cid_capacity(&self) -> u32 {
        self.cid_capacity
    }

    /// Portable lanes per chunk.
    pub fn lanes(&self) -> u32 {
        self.lanes
    }
}

impl Default for Arena {
    fn default() -> Self {
        Arena::new()
    }
}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arena")
            .field("cid_capacity", &self.cid_capacity)
            .field("lanes", &self.lanes)
            .field("stats", &self.stats())
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> crate::sync::MutexGuard<'_, T> {
    // The arena's state stays consistent across a panic (no user code runs under it).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `len` words at the same offset in every unit of a chunk: one per index and one per
/// lane. Freed (and zeroed) on drop.
pub struct Words<'a> {
    arena: &'a Arena,
    /// Position of `chunk` in the arena's list (to free without a search).
    chunk_index: u32,
    chunk: &'a Chunk,
    offset: u32,
    len: u32,
}

impl<'a> Words<'a> {
    /// Number of words in the run.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Always false: runs have at least one word.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Word `i` of the run, or `None` past its end.
    #[inline]
    pub fn get(&self, i: usize) -> Option<Word<'_>> {
        (i < self.len as usize).then(|| Word {
            chunk: self.chunk,
            offset: self.offset as usize + i,
        })
    }

    /// Word `i` of the run; `i` must be below [`Words::len`].
    ///
    /// # Panics
    /// When `i` is out of range (structures use constant indexes).
    #[inline]
    pub fn word(&self, i: usize) -> Word<'_> {
        self.get(i).expect("word index within the allocation")
    }

    /// The run's first word (a run is never empty).
    #[inline(always)]
    pub fn first(&self) -> Word<'_> {
        Word {
            chunk: self.chunk,
            offset: self.offset as usize,
        }
    }

    pub(crate) fn chunk(&self) -> &'a Chunk {
        self.chunk
    }
}

impl Drop for Words<'_> {
    fn drop(&mut self) {
        self.arena.free(
            self.chunk_index as usize,
            self.chunk,
            self.offset as usize,
            self.len as usize,
        );
    }
}

impl fmt::Debug for Words<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Words")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

/// One word per index and per lane: the unit of a per-cid value. The operations
/// that update it run as critical sections on the caller's current index.
#[derive(Clone, Copy)]
pub struct Word<'a> {
    pub(crate) chunk: &'a Chunk,
    pub(crate) offset: usize,
}

impl fmt::Debug for Word<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Word")
            .field("offset", &self.offset)
            .finish()
    }
}
