//! Chunks, units and word allocations: see the module documentation of [`crate::cid`].

use crate::numa::Binding;
use crate::rseq::registration::process;
use crate::sync::{AtomicPtr, AtomicU32, AtomicU64, Mutex, Ordering};
use std::fmt;
use std::sync::OnceLock;

/// log2 of a unit's size in bytes: 64 KiB, 8192 words per index per chunk. Under loom
/// a unit is 8 words, so tests exercise chunk growth.
pub(crate) const UNIT_SHIFT: u32 = if cfg!(loom) { 6 } else { 16 };
const UNIT_BYTES: usize = 1 << UNIT_SHIFT;
pub(crate) const UNIT_WORDS: usize = UNIT_BYTES / 8;

/// Words at the start of every unit reserved for the backends, a full cache line so
/// that no allocation shares it: word 0 is the simulated backend's generation, word 1
/// the simulated commit lock (index units) or the lane lock (lanes).
pub(crate) const HEADER_WORDS: usize = if cfg!(loom) { 2 } else { 8 };
pub(crate) const HEADER_GENERATION: usize = 0;
pub(crate) const HEADER_LOCK: usize = 1;

/// Why the arena could not allocate.
///
/// ```
/// use percid::cid::{Arena, StorageError};
///
/// let arena = Arena::new();
/// assert!(matches!(arena.alloc(0), Err(StorageError::Empty)));
/// let too_many = Arena::MAX_WORDS + 1;
/// assert!(matches!(arena.alloc(too_many), Err(StorageError::TooLarge { .. })));
/// ```
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
///
/// ```
/// let stats = percid::cid::global().stats();
/// println!("{} words in use, {} bytes per cid", stats.words_in_use, stats.bytes_per_cid);
/// ```
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

/// One node plane's entry in a chunk's directory, as the NUMA sections read it: the
/// address of the plane's unit 0 (null until the plane is reserved) and the number
/// of indexes materialised in it. The layout is fixed (`DIR_*` offsets) for `asm!`.
#[repr(C, align(16))]
pub(crate) struct PlaneSlot {
    base: AtomicPtr<AtomicU64>,
    limit: AtomicU32,
    _pad: u32,
}

impl PlaneSlot {
    fn new(base: *mut AtomicU64, limit: u32) -> PlaneSlot {
        PlaneSlot {
            base: AtomicPtr::new(base),
            limit: AtomicU32::new(limit),
            _pad: 0,
        }
    }
}

#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<PlaneSlot>() == 1 << DIR_SLOT_SHIFT);

/// Directory slots per cache-line pair.
const SLOTS_PER_LINE: usize = 8;

/// Eight directory slots on their own 128 bytes: every section reads a limit in the
/// directory, which must not share a line with data others write. Lines are laid
/// out back to back, so the slots form one contiguous array.
#[repr(C, align(128))]
struct DirLine([PlaneSlot; SLOTS_PER_LINE]);

#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<DirLine>() == SLOTS_PER_LINE << DIR_SLOT_SHIFT);

/// Byte offset, in a chunk's directory, of the number of planes (slot 0 is a header).
pub(crate) const DIR_PLANES: usize = 8;
/// Byte offset of plane 0's base; plane `n`'s is `n << DIR_SLOT_SHIFT` bytes further.
pub(crate) const DIR_BASE: usize = 16;
/// Byte offset of plane 0's limit.
pub(crate) const DIR_LIMIT: usize = 24;
/// log2 of a directory slot's size.
pub(crate) const DIR_SLOT_SHIFT: u32 = 4;

// The asm reads the directory at these offsets: they must match the layout.
#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::offset_of!(PlaneSlot, base) == 0);
    assert!(DIR_PLANES == std::mem::offset_of!(PlaneSlot, limit));
    assert!(DIR_BASE == (1 << DIR_SLOT_SHIFT) + std::mem::offset_of!(PlaneSlot, base));
    assert!(DIR_LIMIT == (1 << DIR_SLOT_SHIFT) + std::mem::offset_of!(PlaneSlot, limit));
};

/// How a chunk's planes are placed in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placing {
    /// One plane, placed by first touch: the plain arena.
    FirstTouch,
    /// One plane per NUMA node, each bound to its node when the plane is reserved.
    NodeBound,
}

/// One generation of storage: a *plane* of `cid_capacity` units per NUMA node (one
/// plane in a plain arena), each its own reservation, plus one reservation of
/// `lanes` lane units. The limits the sections read live in the directory, on
/// 128-byte lines of their own ([`DirLine`]); the chunk itself is read-mostly.
pub(crate) struct Chunk {
    /// Slot 0 is a header whose `limit` holds the number of planes; plane `n` is slot
    /// `1 + n`. Plane 0 is reserved with the chunk, the others when their first index
    /// is materialised.
    dir: Box<[DirLine]>,
    /// Slots in `dir` (planes + 1).
    slots: u32,
    /// Plane 0's unit 0 and limit (in `dir`), fixed at creation: the plain operations
    /// reach them without going through the directory.
    plane0: *mut AtomicU64,
    limit0: *const AtomicU32,
    lanes_memory: *mut AtomicU64,
    cid_capacity: u32,
    lanes: u32,
    /// Lanes `0 .. lane_limit` are materialised.
    lane_limit: AtomicU32,
    placing: Placing,
    /// Serialises plane reservations.
    grow: Mutex<()>,
    /// How each reserved plane was placed.
    bindings: Box<[OnceLock<Binding>]>,
}

// SAFETY: a chunk is reservations of atomics plus atomic limits and bases, written
// through `AtomicU64` or by the critical sections' single-instruction commits (x86
// stores, single-copy atomic); it is shared by reference only and freed by its arena.
unsafe impl Send for Chunk {}
// SAFETY: as above; all access to the memory goes through `AtomicU64`.
unsafe impl Sync for Chunk {}

/// One unit of a chunk: `UNIT_WORDS` words for one index of one plane, or one lane.
#[derive(Clone, Copy)]
pub(crate) struct Unit<'a> {
    first: &'a AtomicU64,
}

impl<'a> Unit<'a> {
    /// Word `offset` of the unit.
    #[inline(always)]
    pub(crate) fn word(self, offset: usize) -> &'a AtomicU64 {
        debug_assert!(offset < UNIT_WORDS);
        // SAFETY: a unit is `UNIT_WORDS` words of one reservation that lives as long
        // as `'a`, and `offset < UNIT_WORDS` (callers derive it from an allocation).
        unsafe { &*(self.first as *const AtomicU64).add(offset) }
    }

    /// Address of the unit's first word (for `mincore`).
    fn addr(self) -> usize {
        self.first as *const AtomicU64 as usize
    }
}

impl Chunk {
    fn new(
        cid_capacity: u32,
        lanes: u32,
        planes: u32,
        placing: Placing,
    ) -> Result<Chunk, StorageError> {
        let slots = planes as usize + 1;
        let dir = (0..slots.div_ceil(SLOTS_PER_LINE))
            .map(|line| {
                DirLine(std::array::from_fn(|i| {
                    // Slot 0 is the header: its limit is the plane count.
                    let header = line == 0 && i == 0;
                    PlaneSlot::new(std::ptr::null_mut(), if header { planes } else { 0 })
                }))
            })
            .collect();
        let mut chunk = Chunk {
            dir,
            slots: slots as u32,
            plane0: std::ptr::null_mut(),
            limit0: std::ptr::null(),
            lanes_memory: reserve(lanes as usize * UNIT_WORDS)?,
            cid_capacity,
            lanes,
            lane_limit: AtomicU32::new(0),
            placing,
            grow: Mutex::new(()),
            bindings: (0..planes).map(|_| OnceLock::new()).collect(),
        };
        // Plane 0 now: the plain operations' fast paths take its base for granted.
        // (On failure the chunk's drop releases the lanes.)
        chunk.reserve_plane(0)?;
        chunk.plane0 = chunk.plane_base(0);
        // The boxed directory never moves.
        chunk.limit0 = &chunk.slot(0).limit;
        Ok(chunk)
    }

    /// Number of planes (NUMA nodes the directory covers; 1 in a plain arena).
    #[inline]
    pub(crate) fn planes(&self) -> u32 {
        self.slots - 1
    }

    #[inline(always)]
    fn slot(&self, plane: u32) -> &PlaneSlot {
        let i = plane as usize + 1;
        &self.dir[i / SLOTS_PER_LINE].0[i % SLOTS_PER_LINE]
    }

    /// Reserves (and places) plane `plane` unless it already is. Callers hold no lock.
    #[cold]
    fn reserve_plane(&self, plane: u32) -> Result<(), StorageError> {
        let slot = self.slot(plane);
        if !slot.base.load(Ordering::Acquire).is_null() {
            return Ok(());
        }
        // A fork waits until no plane is being reserved (the `grow` lock would stay
        // held in the child). Not for plane 0, reserved while the chunk is built,
        // unshared, under the arena's allocation lock (which the fork handler takes
        // after waiting for held regions: a region entered under it would deadlock).
        let _fork = (plane != 0).then(super::fork::hold);
        let _grow = lock(&self.grow);
        if !slot.base.load(Ordering::Acquire).is_null() {
            return Ok(());
        }
        let words = self.cid_capacity as usize * UNIT_WORDS;
        let base = reserve(words)?;
        let binding = match self.placing {
            Placing::FirstTouch => Binding::FirstTouch,
            // Before any page is touched: the policy decides where every page goes.
            // SAFETY: `base` is the fresh, untouched reservation of `words` words just
            // made, owned by this chunk; nothing else refers to it yet.
            Placing::NodeBound => unsafe {
                crate::numa::memory::bind(base.cast(), words * 8, plane)
            },
        };
        let _ = self.bindings[plane as usize].set(binding);
        // The base before any limit that covers it (sections load the limit first).
        slot.base.store(base, Ordering::Release);
        Ok(())
    }

    /// Unit 0 of plane `plane`, null when the plane is not reserved.
    #[inline(always)]
    fn plane_base(&self, plane: u32) -> *mut AtomicU64 {
        self.slot(plane).base.load(Ordering::Acquire)
    }

    /// The unit of index `cid` in plane `plane`. The plane is reserved (it has a
    /// materialised index) and `cid < cid_capacity`.
    #[inline(always)]
    pub(crate) fn cid_unit(&self, plane: u32, cid: u32) -> Unit<'_> {
        debug_assert!(cid < self.cid_capacity);
        let base = if plane == 0 {
            self.plane0
        } else {
            self.plane_base(plane)
        };
        debug_assert!(!base.is_null(), "plane {plane} is not reserved");
        // SAFETY: the plane is a reservation of `cid_capacity` units that lives as
        // long as `self`, and `cid < cid_capacity`.
        Unit {
            first: unsafe { &*base.add(cid as usize * UNIT_WORDS) },
        }
    }

    /// The unit of lane `lane` (below `lanes`).
    #[inline(always)]
    pub(crate) fn lane_unit(&self, lane: u32) -> Unit<'_> {
        debug_assert!(lane < self.lanes);
        // SAFETY: the lanes are a reservation of `lanes` units that lives as long as
        // `self`, and `lane < lanes`.
        Unit {
            first: unsafe { &*self.lanes_memory.add(lane as usize * UNIT_WORDS) },
        }
    }

    /// Address of the word at `offset` in plane 0's unit 0: the plain sections add
    /// `index << UNIT_SHIFT` to it.
    #[inline(always)]
    pub(crate) fn unit0(&self, offset: usize) -> *mut u64 {
        debug_assert!(offset < UNIT_WORDS);
        self.plane0.wrapping_add(offset) as *mut u64
    }

    /// Plane 0's limit.
    #[inline(always)]
    fn limit0(&self) -> &AtomicU32 {
        // SAFETY: `limit0` points into the boxed directory, which lives (and stays
        // put) as long as `self`.
        unsafe { &*self.limit0 }
    }

    /// Plane 0's limit, as the plain sections read it.
    #[cfg(not(loom))]
    #[inline(always)]
    pub(crate) fn limit_ptr(&self) -> *const u32 {
        self.limit0().as_ptr()
    }

    /// Under loom there are no `asm!` sections to read the limit.
    #[cfg(loom)]
    pub(crate) fn limit_ptr(&self) -> *const u32 {
        std::ptr::null()
    }

    /// The directory, as the NUMA sections read it (`DIR_*` offsets).
    #[cfg(not(loom))]
    #[inline(always)]
    pub(crate) fn dir_ptr(&self) -> *const u8 {
        self.dir.as_ptr().cast()
    }

    /// Under loom there are no `asm!` sections to read the directory.
    #[cfg(loom)]
    pub(crate) fn dir_ptr(&self) -> *const u8 {
        std::ptr::null()
    }

    /// Makes index `cid` of plane `plane` visible to readers, reserving the plane on
    /// its first index. False when either is out of range or the plane cannot be
    /// reserved: the caller uses a lane.
    #[cold]
    pub(crate) fn materialize(&self, plane: u32, cid: u32) -> bool {
        if cid >= self.cid_capacity || plane >= self.planes() || self.reserve_plane(plane).is_err()
        {
            return false;
        }
        self.slot(plane).limit.fetch_max(cid + 1, Ordering::AcqRel);
        true
    }

    /// Lanes of the chunk (materialised or not).
    pub(crate) fn lane_count(&self) -> u32 {
        self.lanes
    }

    /// Indexes a plane can hold (materialised or not).
    pub(crate) fn cid_capacity(&self) -> u32 {
        self.cid_capacity
    }

    /// Whether plane `plane` has its reservation (its units can be touched).
    pub(crate) fn plane_reserved(&self, plane: u32) -> bool {
        plane == 0 || (plane < self.planes() && !self.plane_base(plane).is_null())
    }

    /// The lane for a thread on `cpu`, materialised.
    pub(crate) fn lane(&self, cpu: u32) -> u32 {
        let lane = cpu % self.lanes;
        if lane >= self.lane_limit.load(Ordering::Acquire) {
            self.lane_limit.fetch_max(lane + 1, Ordering::AcqRel);
        }
        lane
    }

    /// Indexes materialised in plane `plane` (0 for planes beyond the directory).
    #[inline]
    pub(crate) fn plane_limit(&self, plane: u32) -> u32 {
        if plane == 0 {
            return self.cid_limit();
        }
        if plane >= self.planes() {
            return 0;
        }
        self.slot(plane).limit.load(Ordering::Acquire)
    }

    /// Indexes materialised in plane 0.
    #[inline(always)]
    pub(crate) fn cid_limit(&self) -> u32 {
        self.limit0().load(Ordering::Acquire)
    }

    pub(crate) fn lane_limit(&self) -> u32 {
        self.lane_limit.load(Ordering::Acquire)
    }

    /// Materialised indexes over every plane.
    pub(crate) fn cid_units(&self) -> u32 {
        (0..self.planes()).map(|p| self.plane_limit(p)).sum()
    }

    /// The units that may hold data: materialised indexes plane by plane, then
    /// materialised lanes.
    pub(crate) fn live_units(&self) -> impl Iterator<Item = Unit<'_>> + '_ {
        let lanes = self.lane_limit();
        (0..self.planes())
            .flat_map(move |p| (0..self.plane_limit(p)).map(move |c| self.cid_unit(p, c)))
            .chain((0..lanes).map(move |l| self.lane_unit(l)))
    }

    /// Whether this is a NUMA chunk (planes bound to nodes).
    pub(crate) fn is_numa(&self) -> bool {
        self.placing == Placing::NodeBound
    }

    /// How plane `plane` was placed, once it is reserved.
    fn binding(&self, plane: u32) -> Option<&Binding> {
        self.bindings.get(plane as usize)?.get()
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let words = self.cid_capacity as usize * UNIT_WORDS;
        for plane in 0..self.planes() {
            let base = self.plane_base(plane);
            if !base.is_null() {
                release(base, words);
            }
        }
        release(self.lanes_memory, self.lanes as usize * UNIT_WORDS);
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

pub(crate) struct State {
    /// Boxed: `Words` refer to chunks, whose addresses must not move as the list grows.
    #[allow(clippy::vec_box)]
    chunks: Vec<Box<Chunk>>,
    /// Next free word of the last chunk.
    bump: usize,
    free: Vec<FreeRun>,
    words_in_use: usize,
}

/// The per-cid arena: see the module documentation of [`crate::cid`].
///
/// ```
/// use percid::cid::Arena;
///
/// // A dedicated arena: its words live as long as it does.
/// let arena = Arena::with_capacity(8, 2);
/// let words = arena.alloc(1).unwrap();
/// words.first().add(1);
/// assert_eq!(words.first().sum(), 1);
/// ```
pub struct Arena {
    cid_capacity: u32,
    lanes: u32,
    planes: u32,
    placing: Placing,
    /// Boxed: the fork handlers find it at this address whatever moves the arena.
    state: Box<Mutex<State>>,
    /// Whether the fork handlers know it (see `cid/fork.rs`).
    registered: bool,
}

/// One NUMA node's share of an arena, for `percid status` and tests.
///
/// ```
/// for node in percid::cid::Arena::with_nodes(4, 4, 2).node_stats() {
///     println!("{node:?}");
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStorage {
    /// The node (plane) number.
    pub node: u32,
    /// Indexes materialised on this node: the most of any chunk.
    pub cids_materialized: u32,
    /// How the node's planes were placed (that of the first chunk); `None` while the
    /// node has no plane.
    pub binding: Option<Binding>,
    /// Resident bytes of the node's materialised units (`mincore`).
    pub resident_bytes: usize,
}

impl Arena {
    /// An arena sized for this process: as many index units as possible CPUs (the
    /// bound of `cpu_id` and `mm_cid`) and as many lanes. Reserves nothing until the
    /// first allocation.
    ///
    /// ```
    /// use percid::cid::Arena;
    ///
    /// let arena: &'static Arena = Box::leak(Box::new(Arena::new()));
    /// let words = arena.alloc(2).unwrap();
    /// words.word(0).add(5);
    /// words.word(1).add(7);
    /// assert_eq!(words.word(0).sum() + words.word(1).sum(), 12);
    /// ```
    pub fn new() -> Arena {
        let possible = process().possible_cpus;
        let sim = crate::rseq::simulated::default_cids();
        Arena::with_capacity(possible.max(sim), possible)
    }

    /// An arena for indexes below `cids` and `lanes` portable lanes (both at least 1).
    ///
    /// ```
    /// use percid::cid::Arena;
    ///
    /// let arena = Arena::with_capacity(4, 2);
    /// assert_eq!((arena.cid_capacity(), arena.lanes()), (4, 2));
    /// ```
    pub fn with_capacity(cids: u32, lanes: u32) -> Arena {
        Arena::build(cids, lanes, 1, Placing::FirstTouch)
    }

    /// A NUMA arena for this process: one plane per possible NUMA node (see
    /// [`crate::numa`]), each bound to its node, and indexes and lanes as in
    /// [`Arena::new`]. Reserves nothing until the first allocation; a node's plane
    /// is reserved when the node's first index is materialised.
    pub fn numa() -> Arena {
        let possible = process().possible_cpus;
        let sim = crate::rseq::simulated::default_cids();
        Arena::with_nodes(
            possible.max(sim),
            possible,
            crate::numa::topology().node_id_bound(),
        )
    }

    /// A NUMA arena with planes for nodes `0 .. nodes` (at least 1), indexes below
    /// `cids` and `lanes` lanes. Planes of nodes the machine lacks are placed by first
    /// touch (their binding fails and says why): tests run many-node layouts on a
    /// one-node machine this way.
    ///
    /// ```
    /// use percid::cid::Arena;
    ///
    /// let arena = Arena::with_nodes(8, 8, 2);
    /// assert!(arena.is_numa());
    /// assert_eq!(arena.nodes(), 2);
    /// ```
    pub fn with_nodes(cids: u32, lanes: u32, nodes: u32) -> Arena {
        Arena::build(cids, lanes, nodes.max(1), Placing::NodeBound)
    }

    fn build(cids: u32, lanes: u32, planes: u32, placing: Placing) -> Arena {
        // Arenas built inside percid's own set-up (the allocator's heap) are left to
        // their owner's fork handling, which takes their locks itself.
        let register = !crate::rseq::registration::in_internal();
        Arena::build_registered(cids, lanes, planes, placing, register)
    }

    fn build_registered(
        cids: u32,
        lanes: u32,
        planes: u32,
        placing: Placing,
        register: bool,
    ) -> Arena {
        let arena = Arena {
            cid_capacity: cids.max(1),
            lanes: lanes.max(1),
            planes,
            placing,
            state: Box::new(Mutex::new(State {
                chunks: Vec::new(),
                bump: UNIT_WORDS,
                free: Vec::new(),
                words_in_use: 0,
            })),
            registered: register && !cfg!(loom),
        };
        #[cfg(not(loom))]
        if arena.registered {
            super::fork::register(&*arena.state);
        }
        arena
    }

    /// [`Arena::new`], protected across `fork()` even when built inside percid's
    /// set-up (the process-wide arenas).
    pub(crate) fn new_process_wide() -> Arena {
        let possible = process().possible_cpus;
        let sim = crate::rseq::simulated::default_cids();
        Arena::build_registered(possible.max(sim), possible, 1, Placing::FirstTouch, true)
    }

    /// [`Arena::numa`], protected across `fork()` like [`Arena::new_process_wide`].
    pub(crate) fn numa_process_wide() -> Arena {
        let possible = process().possible_cpus;
        let sim = crate::rseq::simulated::default_cids();
        let nodes = crate::numa::topology().node_id_bound().max(1);
        Arena::build_registered(possible.max(sim), possible, nodes, Placing::NodeBound, true)
    }

    /// Most words one allocation can have.
    pub const MAX_WORDS: usize = UNIT_WORDS - HEADER_WORDS;

    /// Allocates `len` zeroed words in every unit (every index and lane). Runs of up
    /// to 8 words never straddle a cache line.
    ///
    /// # Errors
    /// [`StorageError::Empty`] for `len` 0, [`StorageError::TooLarge`] beyond
    /// [`Arena::MAX_WORDS`], [`StorageError::Map`] when the address space of a new
    /// chunk cannot be reserved.
    ///
    /// ```
    /// use percid::cid::{Arena, StorageError};
    ///
    /// let arena = Arena::new();
    /// assert_eq!(arena.alloc(3).unwrap().len(), 3);
    /// assert!(matches!(arena.alloc(0), Err(StorageError::Empty)));
    /// ```
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
                    let chunk =
                        Chunk::new(self.cid_capacity, self.lanes, self.planes, self.placing)?;
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
                let word = unit.word(offset + i);
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
    ///
    /// ```
    /// use percid::cid::Arena;
    ///
    /// let arena = Arena::new();
    /// assert_eq!(arena.stats().words_in_use, 0);
    /// let words = arena.alloc(4).unwrap();
    /// assert_eq!(arena.stats().words_in_use, 4);
    /// drop(words);
    /// ```
    pub fn stats(&self) -> StorageStats {
        let state = lock(&self.state);
        let mut stats = StorageStats {
            chunks: state.chunks.len(),
            words_in_use: state.words_in_use,
            bytes_per_cid: state.words_in_use * 8,
            ..StorageStats::default()
        };
        for (i, chunk) in state.chunks.iter().enumerate() {
            stats.cids_materialized = stats.cids_materialized.max(chunk.cid_units());
            stats.lanes_materialized = stats.lanes_materialized.max(chunk.lane_limit());
            let used = if i + 1 == state.chunks.len() {
                state.bump
            } else {
                UNIT_WORDS
            };
            for unit in chunk.live_units() {
                stats.resident_bytes += resident(unit.addr(), used * 8);
            }
        }
        stats
    }

    /// What each NUMA node (plane) holds now: one entry per plane, in node order.
    ///
    /// ```
    /// use percid::cid::Arena;
    ///
    /// let arena = Arena::with_nodes(4, 4, 2);
    /// assert_eq!(arena.node_stats().len(), 2);
    /// ```
    pub fn node_stats(&self) -> Vec<NodeStorage> {
        let state = lock(&self.state);
        let mut nodes: Vec<NodeStorage> = (0..self.planes)
            .map(|node| NodeStorage {
                node,
                cids_materialized: 0,
                binding: None,
                resident_bytes: 0,
            })
            .collect();
        for (i, chunk) in state.chunks.iter().enumerate() {
            let used = if i + 1 == state.chunks.len() {
                state.bump
            } else {
                UNIT_WORDS
            };
            for entry in &mut nodes {
                let limit = chunk.plane_limit(entry.node);
                entry.cids_materialized = entry.cids_materialized.max(limit);
                if entry.binding.is_none() {
                    entry.binding = chunk.binding(entry.node).cloned();
                }
                for cid in 0..limit {
                    let unit = chunk.cid_unit(entry.node, cid);
                    entry.resident_bytes += resident(unit.addr(), used * 8);
                }
            }
        }
        nodes
    }

    /// Whether this is a NUMA arena ([`Arena::numa`], [`Arena::with_nodes`]): one
    /// plane per node, bound to it.
    pub fn is_numa(&self) -> bool {
        self.placing == Placing::NodeBound
    }

    /// Planes (NUMA nodes) per chunk: 1 in a plain arena.
    pub fn nodes(&self) -> u32 {
        self.planes
    }

    /// Pages of every reserved plane of `node`, with their length in bytes, for
    /// placement checks ([`crate::numa::placement`]).
    pub fn node_regions(&self, node: u32) -> Vec<(*const u8, usize)> {
        let state = lock(&self.state);
        state
            .chunks
            .iter()
            .filter(|chunk| node < chunk.planes())
            .map(|chunk| chunk.plane_base(node))
            .filter(|base| !base.is_null())
            .map(|base| (base as *const u8, self.cid_capacity as usize * UNIT_BYTES))
            .collect()
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
            .field("nodes", &self.planes)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // Before the state goes: the fork handlers must not find it any more (this
        // waits while a fork holds the registry).
        #[cfg(not(loom))]
        if self.registered {
            super::fork::unregister(&*self.state);
        }
    }
}

impl Arena {
    /// Takes every lane's and unit's lock of every chunk of an arena whose
    /// allocation lock the caller holds, for `fork()` (see `fork.rs`): nothing is
    /// allocated.
    #[cfg(not(loom))]
    pub(crate) fn lock_units(state: &State) {
        for chunk in &state.chunks {
            for lock in chunk.fork_locks() {
                crate::rseq::simulated::lock_word(lock);
            }
        }
    }

    /// Releases what [`Arena::lock_units`] took (in the parent and the child).
    #[cfg(not(loom))]
    pub(crate) fn unlock_units(state: &State) {
        for chunk in &state.chunks {
            for lock in chunk.fork_locks() {
                crate::rseq::simulated::unlock_word(lock);
            }
        }
    }
}

impl Chunk {
    /// The locks a thread may hold inside a section: every lane's, materialised or
    /// not (a thread may be about to take the lock of a lane it just materialised),
    /// and on the simulated backend every index unit's of the reserved planes (its
    /// commit locks; the rseq backend never takes them, and touching them would
    /// commit a page per unit).
    #[cfg(not(loom))]
    fn fork_locks(&self) -> impl Iterator<Item = &AtomicU64> + '_ {
        let simulated = matches!(
            crate::rseq::registration::process().forced,
            Some((crate::rseq::Backend::Simulated, _))
        );
        let lanes = (0..self.lanes).map(move |l| self.lane_unit(l).word(HEADER_LOCK));
        let cids = (0..self.planes())
            .filter(move |&p| simulated && self.plane_reserved(p))
            .flat_map(move |p| {
                (0..self.cid_capacity).map(move |c| self.cid_unit(p, c).word(HEADER_LOCK))
            });
        lanes.chain(cids)
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
///
/// ```
/// let words = percid::cid::global().alloc(4).unwrap();
/// assert_eq!(words.len(), 4);
/// for i in 0..words.len() {
///     words.word(i).add(i as u64);
/// }
/// assert_eq!(words.word(3).sum(), 3);
/// ```
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
    ///
    /// ```
    /// use percid::cid::Arena;
    ///
    /// let arena = Arena::new();
    /// let words = arena.alloc(2).unwrap();
    /// assert!(words.get(1).is_some());
    /// assert!(words.get(2).is_none());
    /// ```
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
    ///
    /// ```
    /// use percid::cid::Arena;
    ///
    /// let arena = Arena::new();
    /// let words = arena.alloc(1).unwrap();
    /// words.first().add(3);
    /// assert_eq!(words.first().sum(), 3);
    /// ```
    #[inline(always)]
    pub fn first(&self) -> Word<'_> {
        Word {
            chunk: self.chunk,
            offset: self.offset as usize,
        }
    }

    /// Word `i` with the arena's lifetime rather than the run's, for a structure that
    /// keeps both the run and resolved words: the words stay addressable (the chunk
    /// is the arena's), but they are the structure's only while it holds the run.
    pub(crate) fn detached(&self, i: usize) -> Word<'a> {
        assert!(i < self.len as usize, "word index within the allocation");
        Word {
            chunk: self.chunk,
            offset: self.offset as usize + i,
        }
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
///
/// ```
/// let words = percid::cid::global().alloc(1).unwrap();
/// let hits = words.first();
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| hits.add(10));
///     }
/// });
/// assert_eq!(hits.sum(), 40);
/// ```
#[derive(Clone, Copy)]
pub struct Word<'a> {
    pub(crate) chunk: &'a Chunk,
    pub(crate) offset: usize,
}

impl<'a> Word<'a> {
    /// The locks of the word's chunk that the portable and simulated backends take
    /// around a section: every lane's, and the commit lock of every materialised
    /// index of plane 0. For `fork()` handlers that must not leave one held.
    pub(crate) fn unit_locks(self) -> impl Iterator<Item = &'a AtomicU64> {
        let chunk = self.chunk;
        (0..chunk.lanes)
            .map(move |l| chunk.lane_unit(l).word(HEADER_LOCK))
            .chain((0..chunk.cid_limit()).map(move |c| chunk.cid_unit(0, c).word(HEADER_LOCK)))
    }

    /// The word `i` places after this one in the same allocation (the caller keeps
    /// `i` within it).
    #[inline(always)]
    pub(crate) fn offset_by(self, i: usize) -> Word<'a> {
        debug_assert!(self.offset + i < UNIT_WORDS);
        Word {
            chunk: self.chunk,
            offset: self.offset + i,
        }
    }
}

impl fmt::Debug for Word<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Word")
            .field("offset", &self.offset)
            .finish()
    }
}
