//! Per-cid object pools: objects recycled through per-cid free lists, as tcmalloc's
//! per-CPU caches do, sized to the cids the process really uses.
//!
//! # How a [`Pool`] works
//!
//! * Every cid has a **cache**: a free list whose head is one word per cid in the
//!   [`crate::cid`] arena (first object's address in the low 48 bits, list length in
//!   the high 16). [`Pool::get`] pops with the `list_pop` critical section,
//!   dropping a [`PoolBox`] pushes with `list_push`: one rseq section each, a single
//!   committing store, no atomic read-modify-write, no lock.
//! * An object is a **slot**: a link word (its list link while it is free), a state
//!   word (the debug checks) and the `T`, which stays initialised while the slot is
//!   free: a pool recycles values (buffers keep their capacity), it does not drop
//!   them. An optional reset hook runs when a value comes back.
//! * A cache holds at most `capacity` objects. A put that finds it full moves a
//!   **batch** (the object and `batch - 1` others) to the shared **depot**, a get that
//!   finds it empty takes a batch back (installed in the cache with one section when
//!   the cache is still empty): the depot's lock is taken once per batch.
//! * When the depot is empty the pool grows by a slab of new objects, up to
//!   `max_objects` when set. Before it grows, it drains the caches of other cids if
//!   they hold at least a batch (a cid that went idle keeps its cache otherwise):
//!   the drainer swaps a cache's head for a token that makes every section on it
//!   fail, fences with [`crate::rseq::fence_rseq`] so that no section that read the
//!   old head can still commit, and then owns the list. [`Pool::trim`] does the same
//!   on request.
//!
//! Objects parked in caches are therefore at most `capacity × cids`; a producer that
//! gets on one thread and a consumer that drops on another reach a steady state in
//! which batches circulate through the depot. Memory of slabs is freed with the pool;
//! free slots are reachable by sections until then, so nothing a section may read is
//! ever freed under it.
//!
//! # NUMA mode
//!
//! [`PoolBuilder::numa`] keeps the objects in the memory of the node that uses them,
//! as [`crate::NumaCounter`] keeps its shards (see [`crate::numa`]):
//!
//! * The cache heads live in a NUMA arena ([`cid::numa_global`] unless
//!   [`PoolBuilder::arena`] names another; a plain arena is
//!   [`PoolError::NotNumaArena`]): a cache per (node, cid). `get` and drop run the
//!   `numa_list_pop` / `numa_list_push` sections, which read `node_id` and `mm_cid`
//!   in one critical section: a drop lands in the cache of the node the dropping
//!   thread runs on, whatever the object's home.
//! * Every node has its own depot, and the pool grows by slabs in fresh pages bound
//!   to the node of the thread that grows it ([`crate::numa`]'s binding, or first
//!   touch by that thread where binding is off or unavailable), as many objects as
//!   fill the pages. Each object remembers its **home** node ([`PoolBox::node`]).
//! * A get that misses takes a batch from its node's depot, else grows on its node;
//!   only a bounded pool at its bound takes from other nodes' depots.
//! * Objects go home in batches: whenever objects leave a cache for the depots (a
//!   spill of a full cache, a drain, [`Pool::trim`]) they are sorted by home node
//!   and each group goes to its home's depot, so a depot only ever holds its node's
//!   memory ([`Pool::idle_on_node`]).
//! * Threads on the portable backend (per-CPU lanes) count as on the node of their
//!   CPU ([`PoolBuilder::topology`], default the machine's).
//!
//! On a machine with one node a NUMA pool runs the plain sections (its caches are
//! node 0's plane) and only differs by its node-bound slabs. A many-node NUMA pool
//! pays a plain section that misses at its bound check before each NUMA section:
//! the price of leaving the plain pool's fast path untouched.
//!
//! # Debug checks
//!
//! With [`PoolBuilder::debug`] (on by default in debug builds) every slot carries its
//! state (free, in a `PoolBox`, raw): returning an object twice, or giving
//! [`PoolBox::from_raw`] a pointer that is not a raw object of this pool, panics with
//! a message instead of corrupting the lists.

mod wait;

use crate::cid::list::{self, first as chain_node, len as chain_len, pack};
use crate::cid::{self, Arena, HotWord, ListFull, NodeHotWord, Shard, StorageError, Word, Words};
use crate::numa::Topology;
use crate::sync::{AtomicU32, AtomicU64, Mutex, MutexGuard, Ordering};
use std::cell::UnsafeCell;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use wait::{Waiter, Waiters};

/// Most objects a cache may hold: the list length has 16 bits, and the all-ones
/// length is the drain token.
pub const MAX_CAPACITY: usize = (1 << 16) - 2;

/// Largest alignment a pooled type may ask for.
pub const MAX_ALIGN: usize = 4096;

/// The materialised-index limit a many-node NUMA pool gives its plain fast path:
/// with no index below it, the plain section exits at its bound check and the pool
/// takes its NUMA sections. A plain pool's fast path thereby stays exactly what it
/// is without NUMA mode (no test of the mode before its section).
static NO_CIDS: u32 = 0;

/// Slot states (debug checks).
const FREE: u32 = 1;
const BOXED: u32 = 2;
const RAW: u32 = 3;

/// Why a pool could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolError {
    /// A cache capacity of zero.
    ZeroCapacity,
    /// A cache capacity above [`MAX_CAPACITY`].
    CapacityTooLarge {
        /// Capacity asked for.
        capacity: usize,
    },
    /// A batch of zero, or larger than the cache capacity.
    BadBatch {
        /// Batch asked for.
        batch: usize,
        /// The cache capacity.
        capacity: usize,
    },
    /// `max_objects(0)`: a pool that could never hand out anything.
    ZeroMaxObjects,
    /// `T`'s alignment is above [`MAX_ALIGN`].
    AlignTooLarge {
        /// `align_of::<T>()`.
        align: usize,
    },
    /// The per-cid cache heads could not be allocated.
    Storage(StorageError),
    /// [`PoolBuilder::numa`] with an arena that is not a NUMA arena
    /// ([`PoolBuilder::arena`] of one made by [`Arena::new`] or
    /// [`Arena::with_capacity`]): a NUMA pool keeps its caches in the arena's node
    /// planes ([`Arena::numa`], [`Arena::with_nodes`]).
    NotNumaArena,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::ZeroCapacity => f.write_str("a pool cache needs a capacity of at least 1"),
            PoolError::CapacityTooLarge { capacity } => write!(
                f,
                "cache capacity {capacity} exceeds the maximum of {MAX_CAPACITY}"
            ),
            PoolError::BadBatch { batch, capacity } => write!(
                f,
                "batch {batch} must be between 1 and the cache capacity ({capacity})"
            ),
            PoolError::ZeroMaxObjects => f.write_str("max_objects must be at least 1"),
            PoolError::AlignTooLarge { align } => write!(
                f,
                "alignment {align} exceeds the maximum of {MAX_ALIGN} (the page size)"
            ),
            PoolError::Storage(e) => write!(f, "pool cache heads: {e}"),
            PoolError::NotNumaArena => {
                f.write_str("a NUMA pool needs a NUMA arena (Arena::numa or Arena::with_nodes)")
            }
        }
    }
}

impl std::error::Error for PoolError {}

/// One pooled object: its list link, its debug state and the value.
#[repr(C)]
struct Slot<T> {
    /// The list link while the slot is free (the packed head of the rest of the
    /// list); first, so the slot's address is the list node's.
    link: AtomicU64,
    state: AtomicU32,
    /// The NUMA node whose memory holds the slot (its slab's node; 0 in a plain
    /// pool): where the slot's batches go home to.
    home: u32,
    value: UnsafeCell<T>,
}

impl<T> Slot<T> {
    fn node(&self) -> usize {
        self as *const Slot<T> as usize
    }

    /// # Safety
    /// `node` is the address of a live slot of this pool.
    unsafe fn from_node<'a>(node: usize) -> &'a Slot<T> {
        // SAFETY: the caller's contract.
        unsafe { &*(node as *const Slot<T>) }
    }
}

type Init<T> = Box<dyn Fn() -> T + Send + Sync>;
type Reset<T> = Box<dyn Fn(&mut T) + Send + Sync>;

/// Builds a [`Pool`]: see the builder methods for the defaults.
pub struct PoolBuilder<T> {
    init: Init<T>,
    reset: Option<Reset<T>>,
    capacity: usize,
    batch: Option<usize>,
    max_objects: Option<usize>,
    debug: bool,
    arena: Option<&'static Arena>,
    numa: bool,
    topology: Option<&'static Topology>,
}

impl<T: Send> PoolBuilder<T> {
    /// Objects each cid's cache holds at most (default 64, at most [`MAX_CAPACITY`]).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Objects moved between a cache and the depot at once (default: half the
    /// capacity, at least 1).
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = Some(batch);
        self
    }

    /// Creates at most this many objects: [`Pool::try_get`] then returns `None`
    /// when all are in use, [`Pool::get`] waits for one.
    pub fn max_objects(mut self, max: usize) -> Self {
        self.max_objects = Some(max);
        self
    }

    /// Runs on every value handed back, before it is parked for reuse. If it panics,
    /// that object is taken out of circulation (dropped with the pool): a bounded
    /// pool then has one object fewer.
    pub fn reset(mut self, reset: impl Fn(&mut T) + Send + Sync + 'static) -> Self {
        self.reset = Some(Box::new(reset));
        self
    }

    /// Detects double returns and foreign pointers (see the module docs). On by
    /// default in debug builds.
    pub fn debug(mut self, debug: bool) -> Self {
        self.debug = debug;
        self
    }

    /// Allocates the cache heads from `arena` instead of the process-wide one
    /// ([`cid::global`], or [`cid::numa_global`] in NUMA mode). A NUMA pool needs a
    /// NUMA arena ([`Arena::numa`], [`Arena::with_nodes`]): with another,
    /// [`PoolBuilder::build`] fails with [`PoolError::NotNumaArena`].
    pub fn arena(mut self, arena: &'static Arena) -> Self {
        self.arena = Some(arena);
        self
    }

    /// NUMA mode (default off; see [NUMA mode](self#numa-mode)): caches per (node,
    /// cid) in the node planes of a NUMA arena, slabs in node-bound memory, one
    /// depot per node, and objects returned on another node sent home in batches.
    /// On a machine with one node the pool runs the plain sections, in node-bound
    /// slabs.
    pub fn numa(mut self, numa: bool) -> Self {
        self.numa = numa;
        self
    }

    /// The topology that says which node a thread on the portable backend is on:
    /// the node of its CPU (default: the machine's, [`crate::numa::topology`]). Such
    /// threads have no node of their own (their caches are per-CPU lanes). For NUMA
    /// pools; tests lay out many nodes on a small machine with it.
    pub fn topology(mut self, topology: &'static Topology) -> Self {
        self.topology = Some(topology);
        self
    }

    /// Checks the configuration and allocates the per-cid cache heads.
    pub fn build(self) -> Result<Pool<T>, PoolError> {
        if self.capacity == 0 {
            return Err(PoolError::ZeroCapacity);
        }
        if self.capacity > MAX_CAPACITY {
            return Err(PoolError::CapacityTooLarge {
                capacity: self.capacity,
            });
        }
        // The drains fence with membarrier, whose first use registers the process
        // (the kernel then waits for an RCU grace period): register here, before
        // any thread can wait behind a drain for it.
        let _ = crate::rseq::fence_available();
        let batch = self.batch.unwrap_or((self.capacity / 2).max(1));
        if batch == 0 || batch > self.capacity {
            return Err(PoolError::BadBatch {
                batch,
                capacity: self.capacity,
            });
        }
        if self.max_objects == Some(0) {
            return Err(PoolError::ZeroMaxObjects);
        }
        if std::mem::align_of::<T>() > MAX_ALIGN {
            return Err(PoolError::AlignTooLarge {
                align: std::mem::align_of::<T>(),
            });
        }
        let arena = match self.arena {
            Some(arena) if self.numa && !arena.is_numa() => return Err(PoolError::NotNumaArena),
            Some(arena) => arena,
            None if self.numa => cid::numa_global(),
            None => cid::global(),
        };
        let heads = arena.alloc(1).map_err(PoolError::Storage)?;
        let nodes = if self.numa { arena.nodes().max(1) } else { 1 };
        let (base, mut limit) = heads.first().hot();
        if nodes > 1 {
            // The plain fast path must miss at once: the NUMA sections take over.
            limit = &NO_CIDS;
        }
        Ok(Pool {
            hot: HotWord::from_parts(base, limit),
            node_hot: (nodes > 1).then(|| heads.first().node_hot()),
            heads,
            init: self.init,
            reset: self.reset,
            capacity: self.capacity as u16,
            batch: batch as u64,
            max_objects: self.max_objects.map_or(u64::MAX, |m| m as u64),
            debug: self.debug,
            numa: self.numa,
            topology: self.topology,
            depots: (0..nodes).map(|_| Mutex::new(Vec::new())).collect(),
            created: AtomicU64::new(0),
            slabs: Mutex::new(Vec::new()),
            drain: Mutex::new(()),
            bounded: self.max_objects.is_some(),
            waiters: Waiters::new(),
        })
    }
}

/// Slots made together, freed with the pool: a boxed slice, or (NUMA mode) a mapping
/// of whole pages bound to the slab's node.
struct Slab<T> {
    slots: NonNull<Slot<T>>,
    len: usize,
    /// Bytes of the slab's own mapping; 0 for a boxed slice.
    mapped: usize,
}

impl<T> Slab<T> {
    fn boxed(slots: Box<[Slot<T>]>) -> Slab<T> {
        let len = slots.len();
        let slots = NonNull::from(Box::leak(slots)).cast::<Slot<T>>();
        Slab {
            slots,
            len,
            mapped: 0,
        }
    }

    fn slots(&self) -> &[Slot<T>] {
        // SAFETY: `len` initialised slots at `slots`, owned by the slab until it drops.
        unsafe { std::slice::from_raw_parts(self.slots.as_ptr(), self.len) }
    }

    /// How many slots a NUMA slab of at least `batch` slots holds: as many as fit
    /// in the whole pages it maps.
    fn per_mapping(batch: u64) -> u64 {
        if cfg!(loom) {
            return batch;
        }
        let size = std::mem::size_of::<Slot<T>>() as u64;
        let page = crate::numa::memory::page_size() as u64;
        (batch * size).next_multiple_of(page) / size
    }

    /// A slab of `n` slots made by `make`, in fresh pages bound to `node` before they
    /// are touched (first touch, by the calling thread, where binding is off or
    /// fails). A boxed slice when the mapping fails.
    #[cfg(not(loom))]
    fn on_node(n: usize, node: u32, mut make: impl FnMut() -> Slot<T>) -> Slab<T> {
        let size = std::mem::size_of::<Slot<T>>();
        let bytes = (n * size).next_multiple_of(crate::numa::memory::page_size());
        // SAFETY: an anonymous private mapping, checked below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Slab::boxed((0..n).map(|_| make()).collect());
        }
        // SAFETY: `map` is the fresh, untouched mapping of `bytes` bytes just made,
        // owned by this slab; nothing else refers to it yet.
        let _ = unsafe { crate::numa::memory::bind(map.cast(), bytes, node) };
        // Page-aligned, and `align_of::<T>() <= MAX_ALIGN` (the page size).
        let slab = Slab {
            slots: NonNull::new(map.cast::<Slot<T>>()).expect("mmap gives a non-null address"),
            len: 0,
            mapped: bytes,
        };
        // If `make` panics, dropping `slab` drops the slots made so far and unmaps.
        let mut slab = slab;
        for i in 0..n {
            let slot = make();
            // SAFETY: slot `i` is inside the mapping (`n * size <= bytes`), aligned,
            // and not yet initialised.
            unsafe { slab.slots.as_ptr().add(i).write(slot) };
            slab.len = i + 1;
        }
        slab
    }

    /// Under loom there is no node-bound memory: a boxed slice.
    #[cfg(loom)]
    fn on_node(n: usize, _node: u32, make: impl FnMut() -> Slot<T>) -> Slab<T> {
        let mut make = make;
        Slab::boxed((0..n).map(|_| make()).collect())
    }
}

impl<T> Drop for Slab<T> {
    fn drop(&mut self) {
        let slots = std::ptr::slice_from_raw_parts_mut(self.slots.as_ptr(), self.len);
        if self.mapped == 0 {
            // SAFETY: a boxed slab came from `Box::leak` of a boxed slice of `len`
            // slots (`Slab::boxed`), given back once.
            drop(unsafe { Box::from_raw(slots) });
            return;
        }
        // SAFETY: the first `len` slots of the mapping are initialised and owned by
        // the slab, which is going away: nothing refers to them any more.
        unsafe { std::ptr::drop_in_place(slots) };
        #[cfg(not(loom))]
        // SAFETY: the slab's own mapping of `mapped` bytes (`Slab::on_node`), whose
        // slots were just dropped.
        unsafe {
            libc::munmap(self.slots.as_ptr().cast(), self.mapped)
        };
    }
}

/// Owned slots being chained for the depots, one chain per home node: how batches
/// go home. A plain pool's slots all have home 0 (one chain).
struct Homeward {
    /// `(home, chain)` of the first home seen; `chain` 0 while empty.
    first: (u32, u64),
    /// The other homes seen.
    others: Vec<(u32, u64)>,
    count: u64,
}

impl Homeward {
    fn new() -> Homeward {
        Homeward {
            first: (0, 0),
            others: Vec::new(),
            count: 0,
        }
    }

    /// Adds an owned slot to its home's chain (overwriting its link).
    fn add<T>(&mut self, slot: &Slot<T>) {
        let home = slot.home;
        let group = if self.first.1 == 0 || self.first.0 == home {
            &mut self.first
        } else if let Some(i) = self.others.iter().position(|g| g.0 == home) {
            &mut self.others[i]
        } else {
            self.others.push((home, 0));
            self.others.last_mut().expect("just pushed")
        };
        group.0 = home;
        slot.link.store(group.1, Ordering::Relaxed);
        group.1 = pack(slot.node(), chain_len(group.1) + 1);
        self.count += 1;
    }

    /// Gives each chain to its home's depot.
    fn send<T: Send>(self, pool: &Pool<T>) {
        for (home, chain) in std::iter::once(self.first).chain(self.others) {
            if chain != 0 {
                lock(pool.depot(home as usize)).push(chain);
            }
        }
    }
}

/// A pool of `T`s recycled through per-cid caches: see the [module docs](self).
///
/// ```
/// use percid::pool::Pool;
///
/// let pool = Pool::builder(|| Vec::<u8>::with_capacity(4096))
///     .reset(|buf| buf.clear())
///     .build()
///     .unwrap();
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| {
///             let mut buf = pool.get(); // from this cid's cache: one rseq section
///             buf.extend_from_slice(b"request");
///             assert!(buf.capacity() >= 4096);
///         }); // back to the cache of the cid the dropping thread runs on
///     }
/// });
/// ```
pub struct Pool<T> {
    /// The heads word's fast-path addresses (see `HotWord`); in a many-node NUMA
    /// pool, with a limit that makes every plain section miss (`NO_CIDS`).
    hot: HotWord,
    /// A NUMA pool on more than one node: the heads word's NUMA fast path (see
    /// `NodeHotWord`). `None`: the plain sections on plane 0.
    node_hot: Option<NodeHotWord>,
    heads: Words<'static>,
    init: Init<T>,
    reset: Option<Reset<T>>,
    capacity: u16,
    batch: u64,
    max_objects: u64,
    debug: bool,
    /// NUMA mode: slabs bound to their node, batches sorted by home node.
    numa: bool,
    /// Nodes of portable threads (NUMA mode); `None`: the machine's topology.
    topology: Option<&'static Topology>,
    /// The depot of each node (one in a plain pool): packed chains, each of slots of
    /// that home node only.
    depots: Box<[Mutex<Vec<u64>>]>,
    /// Objects created so far (bounded by `max_objects`).
    created: AtomicU64,
    /// Every slot ever created, by slab; freed with the pool.
    slabs: Mutex<Vec<Slab<T>>>,
    /// Serialises drains: the drain token is one value, so one drainer at a time.
    drain: Mutex<()>,
    /// `max_objects` was set: getters may wait, and drops wake them.
    bounded: bool,
    /// Getters waiting for an object (see `wait.rs`).
    waiters: Waiters,
}

// SAFETY: the pool hands its `T`s to whichever thread gets them (so `T: Send`), and
// shares them with no one: a slot is reachable through one `PoolBox` at a time, or
// through a free list, whose operations never touch the value.
unsafe impl<T: Send> Send for Pool<T> {}
// SAFETY: as above; every shared part is atomics or behind a mutex.
unsafe impl<T: Send> Sync for Pool<T> {}

impl<T: Send> Pool<T> {
    /// A pool with the default configuration whose objects `init` creates.
    pub fn new(init: impl Fn() -> T + Send + Sync + 'static) -> Result<Pool<T>, PoolError> {
        Pool::builder(init).build()
    }

    /// A builder for a pool whose objects `init` creates.
    pub fn builder(init: impl Fn() -> T + Send + Sync + 'static) -> PoolBuilder<T> {
        PoolBuilder {
            init: Box::new(init),
            reset: None,
            capacity: 64,
            batch: None,
            max_objects: None,
            debug: cfg!(debug_assertions),
            arena: None,
            numa: false,
            topology: None,
        }
    }

    fn heads(&self) -> Word<'_> {
        self.heads.first()
    }

    /// An object: from the calling cid's cache (one rseq section), else from the
    /// depot, else a new one. A bounded pool whose objects are all in use parks the
    /// thread until a drop gives one back (no spinning): see [`Pool::try_get`],
    /// [`Pool::get_timeout`] and, in async code, [`Pool::get_async`]. Objects parked
    /// in other cids' caches are found by draining those caches, which needs the
    /// rseq fence ([`crate::rseq::fence_available`]); where the kernel refuses it
    /// (seccomp, Linux before 5.10), a bounded pool can wait for objects that sit
    /// idle in another cid's cache: size the bound with the caches in mind
    /// (`capacity ×` cids) or use `try_get`.
    ///
    /// ```
    /// let pool = percid::Pool::builder(|| 0u64).max_objects(1).build().unwrap();
    /// let first = pool.get();
    /// std::thread::scope(|s| {
    ///     let waiter = s.spawn(|| *pool.get() + 1); // parks until `first` is back
    ///     drop(first);
    ///     assert_eq!(waiter.join().unwrap(), 1);
    /// });
    /// ```
    #[inline]
    pub fn get(&self) -> PoolBox<'_, T> {
        if let Some(slot) = self.pop() {
            return self.boxed(slot);
        }
        self.get_waiting(None)
            .expect("a get without deadline returns an object")
    }

    /// [`Pool::get`] that waits at most `timeout` for a bounded pool's object to come
    /// back; `None` when none did.
    pub fn get_timeout(&self, timeout: Duration) -> Option<PoolBox<'_, T>> {
        if let Some(slot) = self.pop() {
            return Some(self.boxed(slot));
        }
        self.get_waiting(Some(Instant::now().checked_add(timeout)?))
    }

    /// [`Pool::get`] as a future: a bounded pool's getter registers its task and
    /// returns `Pending` until a drop gives an object back (it never spins or wakes
    /// itself).
    ///
    /// ```
    /// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// # rt.block_on(async {
    /// let pool = percid::Pool::builder(Vec::<u8>::new).max_objects(2).build().unwrap();
    /// let mut buf = pool.get_async().await;
    /// buf.push(1);
    /// # });
    /// ```
    pub fn get_async(&self) -> GetFuture<'_, T> {
        GetFuture {
            pool: self,
            id: None,
        }
    }

    /// A [`Pool::get`] for a pool shared through an `Arc`: the box owns a reference
    /// to the pool, so it is `'static` and can move into spawned tasks and threads
    /// (object-pool's `pull_owned`, sharded-slab's `create_owned`).
    ///
    /// ```
    /// use std::sync::Arc;
    /// let pool = Arc::new(percid::Pool::new(|| String::with_capacity(64)).unwrap());
    /// let mut s = pool.get_owned();
    /// std::thread::spawn(move || s.push_str("moved")).join().unwrap();
    /// ```
    pub fn get_owned(self: &Arc<Self>) -> OwnedPoolBox<T> {
        let boxed = self.get();
        let slot = boxed.slot;
        std::mem::forget(boxed);
        OwnedPoolBox {
            pool: Arc::clone(self),
            slot,
        }
    }

    /// [`Pool::try_get`] for a pool shared through an `Arc` (see
    /// [`Pool::get_owned`]).
    pub fn try_get_owned(self: &Arc<Self>) -> Option<OwnedPoolBox<T>> {
        let boxed = self.try_get()?;
        let slot = boxed.slot;
        std::mem::forget(boxed);
        Some(OwnedPoolBox {
            pool: Arc::clone(self),
            slot,
        })
    }

    /// Like [`Pool::get`], but `None` when the pool is bounded and every object it
    /// may create is in use. With other threads returning objects at the same time,
    /// `None` may also mean that the free ones were in transit between a cache and
    /// the depot while this call looked: retry, or use [`Pool::get`], which waits.
    #[inline]
    pub fn try_get(&self) -> Option<PoolBox<'_, T>> {
        if let Some(slot) = self.pop() {
            return Some(self.boxed(slot));
        }
        self.acquire().map(|slot| self.boxed(slot))
    }

    #[inline(always)]
    fn pop(&self) -> Option<&Slot<T>> {
        // SAFETY: every node on the heads' lists is a slot of this pool, alive as long
        // as the pool, and only list operations (or a drainer that owns the list)
        // write the heads and the links of listed slots.
        let node = match unsafe { self.hot.try_list_pop() } {
            Some(node) => node?,
            // A many-node NUMA pool's plain attempt always misses (see `NO_CIDS`).
            None => match self.node_hot {
                // SAFETY: as above.
                None => unsafe { self.heads().list_pop() }?.0,
                // SAFETY: as above.
                Some(hot) => unsafe { self.pop_on_node(hot) }?,
            },
        };
        // SAFETY: a listed node is a slot of this pool.
        Some(unsafe { Slot::from_node(node) })
    }

    /// A many-node NUMA pool's pop: the NUMA section on the caller's (node, cid).
    ///
    /// # Safety
    /// None beyond the pool's invariants (as in `pop`).
    #[inline(never)]
    unsafe fn pop_on_node(&self, hot: NodeHotWord) -> Option<usize> {
        // SAFETY: as in `pop`.
        match unsafe { hot.try_list_pop() } {
            Some(node) => node,
            // SAFETY: as in `pop`.
            None => unsafe { self.heads().list_pop_on_node() }.map(|(node, _)| node),
        }
    }

    /// A many-node NUMA pool's push (see `pop_on_node`).
    ///
    /// # Safety
    /// `node` is an owned slot of this pool.
    #[inline(never)]
    unsafe fn push_on_node(&self, hot: NodeHotWord, node: usize) -> Result<(), ListFull> {
        // SAFETY: the slot is ours (the caller's contract), aligned and a user-space
        // address; the lists hold only this pool's slots.
        match unsafe { hot.try_list_push(node, self.capacity) } {
            Some(pushed) => pushed,
            // SAFETY: as above.
            None => unsafe { self.heads().list_push_on_node(node, self.capacity) }.map(|_| ()),
        }
    }

    /// Pops from the caller's cache, in the pool's mode (slow paths).
    ///
    /// # Safety
    /// None beyond the pool's invariants (as in `pop`); `unsafe` only to mark list
    /// surgery.
    unsafe fn cache_pop(&self) -> Option<usize> {
        // SAFETY: as in `pop`.
        let popped = unsafe {
            match self.node_hot {
                None => self.heads().list_pop(),
                Some(_) => self.heads().list_pop_on_node(),
            }
        };
        popped.map(|(node, _)| node)
    }

    /// Pushes an owned slot on the caller's cache, in the pool's mode (slow paths).
    ///
    /// # Safety
    /// `node` is an owned slot of this pool.
    unsafe fn cache_push(&self, node: usize) -> Result<Shard, ListFull> {
        // SAFETY: the slot is ours (the caller's contract), aligned and a user-space
        // address; the lists hold only this pool's slots.
        unsafe {
            match self.node_hot {
                None => self.heads().list_push(node, self.capacity),
                Some(_) => self.heads().list_push_on_node(node, self.capacity),
            }
        }
    }

    #[inline(always)]
    fn boxed(&self, slot: &Slot<T>) -> PoolBox<'_, T> {
        if self.debug {
            self.transition(slot, FREE, BOXED, "handed out an object that is not free");
        }
        PoolBox {
            pool: self,
            slot: NonNull::from(slot),
            _not_sync: PhantomData,
        }
    }

    /// Moves a slot's debug state, panicking with `what` when it was not `from`.
    fn transition(&self, slot: &Slot<T>, from: u32, to: u32, what: &str) {
        let was = slot.state.swap(to, Ordering::AcqRel);
        if was != from {
            slot.state.store(was, Ordering::Release);
            panic!(
                "percid::pool: {what} (object at {:#x} is {})",
                slot.node(),
                state_name(was)
            );
        }
    }

    /// One full search for an object after the caller's cache was empty: the
    /// depot, the other caches (drained when they hold a batch), a new slab, other
    /// nodes' depots, then every cache drained; `None` when the pool is at its bound
    /// and nothing is free now.
    #[cold]
    #[inline(never)]
    fn acquire(&self) -> Option<&Slot<T>> {
        loop {
            if let Some(slot) = self.pop() {
                return Some(slot);
            }
            let node = self.node_now();
            // The guard must be gone before `install`, which may lock a depot.
            let chain = lock(self.depot(node)).pop();
            if let Some(chain) = chain {
                return Some(self.install(chain));
            }
            // Idle caches first, a new slab only when they hold little.
            if self.cached_elsewhere() >= self.batch && self.drain_caches() > 0 {
                continue;
            }
            if let Some(chain) = self.grow(node) {
                return Some(self.install(chain));
            }
            // Bounded and every object created: what other nodes' depots hold (a
            // NUMA pool) and what is parked in caches counts.
            if let Some(chain) = self.steal(node) {
                return Some(self.install(chain));
            }
            if self.drain_caches() > 0 {
                continue;
            }
            return None;
        }
    }

    /// Waits (parked) for an object until `deadline`: registers, looks once more
    /// after the heavy fence, parks until a drop wakes it (see `wait.rs`).
    #[cold]
    #[inline(never)]
    fn get_waiting(&self, deadline: Option<Instant>) -> Option<PoolBox<'_, T>> {
        let id = self.waiters.id();
        let waiter = Waiter::Thread(crate::sync::current_thread());
        let mut registered = false;
        loop {
            if let Some(slot) = self.acquire() {
                if registered {
                    self.waiters.unregister(id);
                }
                return Some(self.boxed(slot));
            }
            if self.waiters.register(id, waiter.clone()) {
                registered = true;
                continue;
            }
            let now = Instant::now();
            match deadline {
                Some(d) if now >= d => {
                    self.waiters.unregister(id);
                    return None;
                }
                Some(d) => crate::sync::park_timeout(d - now),
                None => crate::sync::park(),
            }
        }
    }
    /// The depot of node `node` (below the pool's nodes).
    fn depot(&self, node: usize) -> &Mutex<Vec<u64>> {
        &self.depots[node]
    }

    /// The node whose depot and slabs the calling thread uses: the node its NUMA
    /// sections read (on the portable backend, its CPU's node), 0 beyond the pool's
    /// nodes, and always 0 in a pool of one node.
    fn node_now(&self) -> usize {
        if self.depots.len() == 1 {
            return 0;
        }
        let topology = self.topology.unwrap_or_else(crate::numa::topology);
        let node = cid::thread_node(|cpu| topology.node_of_cpu(cpu)) as usize;
        if node < self.depots.len() { node } else { 0 }
    }

    /// A chain from another node's depot than `node`'s (a NUMA pool at its bound).
    fn steal(&self, node: usize) -> Option<u64> {
        (1..self.depots.len())
            .map(|k| (node + k) % self.depots.len())
            .find_map(|other| lock(self.depot(other)).pop())
    }

    /// Takes the chain's first slot, and puts the rest in the caller's cache: with
    /// one section when the cache is empty (a plain pool), else slot by slot; what
    /// does not fit goes back to the depot of the chain's home.
    fn install(&self, chain: u64) -> &Slot<T> {
        let first_node = chain_node(chain);
        // SAFETY: chains hold slots of this pool, owned by the caller.
        let first = unsafe { Slot::<T>::from_node(first_node) };
        let mut rest = first.link.load(Ordering::Acquire);
        if chain_len(rest) == 0 {
            return first;
        }
        if self.node_hot.is_none() && self.heads().compare_store(0, rest).is_ok() {
            return first;
        }
        while chain_len(rest) > 0 {
            let node = chain_node(rest);
            // SAFETY: `node` is an owned slot of this pool.
            let slot = unsafe { Slot::<T>::from_node(node) };
            let next = slot.link.load(Ordering::Acquire);
            // SAFETY: the slot is ours.
            if unsafe { self.cache_push(node) }.is_err() {
                // An aborted attempt may have written the link before the one that
                // found the cache full: relink the slot to the rest of the chain.
                slot.link.store(next, Ordering::Relaxed);
                break;
            }
            rest = next;
        }
        if chain_len(rest) > 0 {
            // A depot's chains hold slots of its node only: the rest goes back there.
            lock(self.depot(first.home as usize)).push(rest);
        }
        first
    }

    /// Objects in the caches, as their heads say now (racy, for decisions only).
    fn cached_elsewhere(&self) -> u64 {
        list::cached(self.heads())
    }

    /// A new slab as a chain, or `None` when the pool has created `max_objects`: a
    /// batch of objects, or in NUMA mode as many as fill the slab's pages, bound to
    /// node `node`.
    fn grow(&self, node: usize) -> Option<u64> {
        let want = if self.numa {
            Slab::<T>::per_mapping(self.batch)
        } else {
            self.batch
        };
        let max = self.max_objects;
        let before = self
            .created
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                let n = want.min(max - c);
                (n > 0).then_some(c + n)
            })
            .ok()?;
        let n = want.min(max - before);
        // User code (init) runs with no lock held. If it panics, the values made so
        // far are dropped and the reservation is given back.
        struct Reserved<'a>(&'a AtomicU64, u64);
        impl Drop for Reserved<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(self.1, Ordering::AcqRel);
            }
        }
        let reserved = Reserved(&self.created, n);
        let home = node as u32;
        let make = || Slot {
            link: AtomicU64::new(0),
            state: AtomicU32::new(FREE),
            home,
            value: UnsafeCell::new((self.init)()),
        };
        let slab = if self.numa {
            Slab::on_node(n as usize, home, make)
        } else {
            Slab::boxed((0..n).map(|_| make()).collect())
        };
        std::mem::forget(reserved);
        let mut chain = 0u64;
        for (i, slot) in slab.slots().iter().enumerate().rev() {
            slot.link.store(chain, Ordering::Relaxed);
            chain = pack(slot.node(), n - i as u64);
        }
        // Release: the links are written before another thread can take the chain
        // (the mutexes order the hand-over as well).
        lock(&self.slabs).push(slab);
        Some(chain)
    }

    /// Moves every cache that holds objects to the depots (see the module docs);
    /// a NUMA pool sorts each cache's objects by home node. Returns how many
    /// objects moved.
    fn drain_caches(&self) -> u64 {
        let _one_drainer = lock(&self.drain);
        if !self.numa {
            return list::drain(self.heads(), |chain| lock(self.depot(0)).push(chain));
        }
        list::drain(self.heads(), |chain| {
            let mut homeward = Homeward::new();
            let mut rest = chain;
            while chain_len(rest) > 0 {
                // SAFETY: the drained list is ours: slots of this pool.
                let slot = unsafe { Slot::<T>::from_node(chain_node(rest)) };
                rest = slot.link.load(Ordering::Acquire);
                homeward.add(slot);
            }
            homeward.send(self);
        })
    }

    /// Moves every object parked in the cid caches to the depot, so that a thread
    /// on any cid can reuse them (after a burst, or before a phase that runs on
    /// other CPUs). Costs an rseq fence per non-empty cache. A NUMA pool sends each
    /// object to its home node's depot.
    pub fn trim(&self) {
        self.drain_caches();
    }

    /// Objects created so far (in use or free).
    pub fn created(&self) -> usize {
        self.created.load(Ordering::Acquire) as usize
    }

    /// Objects parked in the cid caches and in the depots (a racy snapshot).
    pub fn idle(&self) -> usize {
        let depots: usize = (0..self.depots.len()).map(|n| self.idle_on_node(n)).sum();
        depots + self.cached_elsewhere() as usize
    }

    /// Objects in the depot of NUMA node `node` (a racy snapshot; 0 for a node the
    /// pool does not have): after [`Pool::trim`], the idle objects whose memory is
    /// on that node. A plain pool has one depot, node 0's.
    pub fn idle_on_node(&self, node: usize) -> usize {
        match self.depots.get(node) {
            Some(depot) => lock(depot).iter().map(|&c| chain_len(c)).sum::<u64>() as usize,
            None => 0,
        }
    }

    /// NUMA nodes the pool keeps depots and slabs for: the planes of its arena in
    /// NUMA mode, 1 otherwise.
    pub fn nodes(&self) -> usize {
        self.depots.len()
    }

    /// Objects parked in the cid caches (a racy snapshot): at most `capacity ×`
    /// the cids (and lanes) used.
    pub fn cached(&self) -> usize {
        self.cached_elsewhere() as usize
    }

    /// Returns a slot: its value is reset, then pushed on the caller's cache, or
    /// (cache full) moved to the depot with a batch of the cache.
    #[inline]
    fn put(&self, slot: &Slot<T>) {
        if let Some(reset) = &self.reset {
            // SAFETY: the caller owned the slot (its `PoolBox`), nobody else
            // reaches the value.
            reset(unsafe { &mut *slot.value.get() });
        }
        if self.debug {
            self.transition(slot, BOXED, FREE, "an object returned twice");
        }
        // SAFETY: the slot is ours, aligned and a user-space address; the lists hold
        // only this pool's slots.
        let pushed = match unsafe { self.hot.try_list_push(slot.node(), self.capacity) } {
            Some(pushed) => pushed,
            // A many-node NUMA pool's plain attempt always misses (see `NO_CIDS`).
            None => match self.node_hot {
                // SAFETY: as above.
                None => unsafe { self.heads().list_push(slot.node(), self.capacity) }.map(|_| ()),
                // SAFETY: as above.
                Some(hot) => unsafe { self.push_on_node(hot, slot.node()) },
            },
        };
        if let Err(ListFull) = pushed {
            self.spill(slot);
        }
        if self.bounded {
            self.waiters.notify();
        }
    }

    /// The cache is full: `slot` and up to `batch - 1` objects of the cache go to the
    /// depots, one chain per home node (one chain in a plain pool).
    #[cold]
    #[inline(never)]
    fn spill(&self, slot: &Slot<T>) {
        let mut homeward = Homeward::new();
        homeward.add(slot);
        while homeward.count < self.batch {
            // SAFETY: as in `pop`.
            let Some(node) = (unsafe { self.cache_pop() }) else {
                break;
            };
            // SAFETY: a listed node is a slot of this pool, now ours.
            homeward.add(unsafe { Slot::<T>::from_node(node) });
        }
        homeward.send(self);
    }
}

impl<T> Drop for Pool<T> {
    fn drop(&mut self) {
        // No `PoolBox` outlives the borrow of the pool: every value is here, free or
        // raw (a raw object never given back is dropped with its pool).
        // Dropping the slabs drops every value; the cache heads that pointed into
        // them are zeroed when their words go back to the arena.
        drop(std::mem::take(&mut *lock(&self.slabs)));
    }
}

impl<T> fmt::Debug for Pool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("capacity", &self.capacity)
            .field("batch", &self.batch)
            .field("numa", &self.numa)
            .field("nodes", &self.depots.len())
            .field("created", &self.created.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The pool's state is consistent across a panic in user code (init, reset):
    // neither runs under a lock.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn state_name(state: u32) -> &'static str {
    match state {
        FREE => "free",
        BOXED => "in a PoolBox",
        RAW => "raw (into_raw)",
        _ => "not a slot of this pool",
    }
}

/// An object of a [`Pool`]: derefs to `T`, goes back to the pool when dropped —
/// into the cache of the cid the dropping thread runs on, so dropping on another
/// thread than the one that got it is the normal case and stays fast.
pub struct PoolBox<'a, T: Send> {
    pool: &'a Pool<T>,
    slot: NonNull<Slot<T>>,
    /// `Sync` only when `T: Sync` (below).
    _not_sync: PhantomData<*const ()>,
}

// SAFETY: a `PoolBox` owns its value exclusively; moving it moves the `T` (needs
// `T: Send`), and the pool it returns to is `Sync`.
unsafe impl<T: Send> Send for PoolBox<'_, T> {}
// SAFETY: `&PoolBox` only gives `&T`.
unsafe impl<T: Send + Sync> Sync for PoolBox<'_, T> {}

impl<'a, T: Send> PoolBox<'a, T> {
    fn slot(&self) -> &Slot<T> {
        // SAFETY: the slot lives in one of the pool's slabs, which live as long as
        // the pool, which outlives `'a`.
        unsafe { self.slot.as_ref() }
    }

    /// The NUMA node whose memory holds the object: the node its slab was made for
    /// (in a NUMA pool, the node of the thread whose get grew the pool), 0 in a plain
    /// pool. The object goes home to that node's depot in batches (see
    /// [NUMA mode](self#numa-mode)).
    pub fn node(this: &Self) -> u32 {
        this.slot().home
    }

    /// Takes the value out of the pool for good: the caller gets the `T`, and the
    /// slot goes back to the pool holding a fresh value from the pool's `init`. The
    /// pool's count of objects and its bound (`max_objects`) are unchanged: a
    /// detached value no longer counts, its replacement does.
    ///
    /// ```
    /// let pool = percid::Pool::builder(|| vec![0u8; 4]).max_objects(1).build().unwrap();
    /// let mut b = pool.get();
    /// b[0] = 9;
    /// let kept: Vec<u8> = percid::PoolBox::detach(b);
    /// assert_eq!(kept[0], 9);
    /// assert_eq!(pool.get()[0], 0); // the pool's one object is a fresh one
    /// ```
    pub fn detach(mut this: Self) -> T {
        let fresh = (this.pool.init)();
        std::mem::replace(&mut *this, fresh)
    }

    /// Gives up the box without returning the object: a pointer to the value, for
    /// [`PoolBox::from_raw`]. An object never given back stays in use (and is
    /// dropped with the pool).
    pub fn into_raw(this: Self) -> *mut T {
        let this = std::mem::ManuallyDrop::new(this);
        if this.pool.debug {
            this.pool.transition(
                this.slot(),
                BOXED,
                RAW,
                "into_raw of an object not in a box",
            );
        }
        this.slot().value.get()
    }

    /// Takes back an object given up with [`PoolBox::into_raw`].
    ///
    /// With the pool's debug checks on, a pointer that is not a raw object of this
    /// pool (a foreign pointer, or one already taken back) panics.
    ///
    /// # Safety
    /// `ptr` came from `into_raw` on a box of `pool`, and was not taken back since.
    pub unsafe fn from_raw(pool: &'a Pool<T>, ptr: *mut T) -> PoolBox<'a, T> {
        let offset = std::mem::offset_of!(Slot<T>, value);
        let node = (ptr as usize).wrapping_sub(offset);
        if pool.debug {
            let known = lock(&pool.slabs).iter().any(|slab| {
                let slots = slab.slots();
                let start = slots.as_ptr() as usize;
                let end = start + std::mem::size_of_val(slots);
                (start..end).contains(&node)
                    && (node - start).is_multiple_of(std::mem::size_of::<Slot<T>>())
            });
            assert!(
                known,
                "percid::pool: from_raw of a pointer ({ptr:p}) that is not an object of this pool"
            );
        }
        // SAFETY: the caller's contract (checked above in debug mode): `node` is a
        // slot of this pool, given up by `into_raw`.
        let slot = unsafe { Slot::<T>::from_node(node) };
        if pool.debug {
            pool.transition(slot, RAW, BOXED, "from_raw of an object that is not raw");
        }
        PoolBox {
            pool,
            slot: NonNull::from(slot),
            _not_sync: PhantomData,
        }
    }
}

impl<T: Send> Deref for PoolBox<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the box owns the slot's value exclusively.
        unsafe { &*self.slot().value.get() }
    }
}

impl<T: Send> DerefMut for PoolBox<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the box owns the slot's value exclusively, and `&mut self` is
        // unique.
        unsafe { &mut *self.slot().value.get() }
    }
}

impl<T: Send> Drop for PoolBox<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.pool.put(self.slot());
    }
}

/// The future of [`Pool::get_async`].
#[must_use = "futures do nothing unless polled"]
pub struct GetFuture<'a, T> {
    pool: &'a Pool<T>,
    /// Registration among the pool's waiters, once the pool was found exhausted.
    id: Option<u64>,
}

impl<'a, T: Send> Future for GetFuture<'a, T> {
    type Output = PoolBox<'a, T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PoolBox<'a, T>> {
        let pool = self.pool;
        loop {
            if let Some(slot) = pool.pop().or_else(|| pool.acquire()) {
                if let Some(id) = self.id.take() {
                    pool.waiters.unregister(id);
                }
                return Poll::Ready(pool.boxed(slot));
            }
            let id = *self.id.get_or_insert_with(|| pool.waiters.id());
            if !pool.waiters.register(id, Waiter::Task(cx.waker().clone())) {
                return Poll::Pending;
            }
            // Newly registered: look once more after the heavy fence.
        }
    }
}

impl<T> Drop for GetFuture<'_, T> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.pool.waiters.unregister(id);
        }
    }
}

impl<T> fmt::Debug for GetFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetFuture")
            .field("waiting", &self.id.is_some())
            .finish_non_exhaustive()
    }
}

/// An object of a pool shared through an `Arc` ([`Pool::get_owned`]): like
/// [`PoolBox`], but it owns a reference to its pool, so it is `'static`.
pub struct OwnedPoolBox<T: Send> {
    pool: Arc<Pool<T>>,
    slot: NonNull<Slot<T>>,
}

// SAFETY: as for `PoolBox`: the box owns its value exclusively.
unsafe impl<T: Send> Send for OwnedPoolBox<T> {}
// SAFETY: `&OwnedPoolBox` only gives `&T`.
unsafe impl<T: Send + Sync> Sync for OwnedPoolBox<T> {}

impl<T: Send> OwnedPoolBox<T> {
    /// The pool the object goes back to.
    pub fn pool(this: &Self) -> &Arc<Pool<T>> {
        &this.pool
    }
}

impl<T: Send> Deref for OwnedPoolBox<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the slot lives in one of the pool's slabs, which the `Arc` keeps;
        // the box owns the value.
        unsafe { &*self.slot.as_ref().value.get() }
    }
}

impl<T: Send> DerefMut for OwnedPoolBox<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, exclusively.
        unsafe { &mut *self.slot.as_ref().value.get() }
    }
}

impl<T: Send> Drop for OwnedPoolBox<T> {
    fn drop(&mut self) {
        // SAFETY: as in `deref`; the slot is ours until `put`.
        self.pool.put(unsafe { self.slot.as_ref() });
    }
}

impl<T: Send + fmt::Debug> fmt::Debug for OwnedPoolBox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OwnedPoolBox").field(&**self).finish()
    }
}

impl<T: Send + fmt::Debug> fmt::Debug for PoolBox<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
