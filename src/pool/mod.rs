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
//! which batches circulate through the depot.
//!
//! # Shrinking
//!
//! A long-running service's pool gives memory back after a burst, with no call and
//! no timer thread, as tcmalloc's central free lists and mimalloc's purge delay do:
//!
//! * The pool grows by **slabs**: one anonymous mapping each (a header, then the
//!   objects), so a freed slab's memory leaves the process at once. A slab of a `T`
//!   with drop glue (a buffer, a connection: a value that may own more than its
//!   bytes) holds exactly one batch; a slab of a plain `T` as many as fill its
//!   pages, at least a batch.
//! * A depot keeps whole batches up to a **keep bound**, and puts objects beyond it
//!   on their slab's own free list. A slab whose objects are all there is *empty*.
//! * The keep bound is [`PoolBuilder::keep_idle`] (default: two slabs) plus the
//!   objects the depot handed out in the last one to two
//!   [`PoolBuilder::purge_delay`]s (default 10 ms): what a pool in a steady state
//!   takes back soon. Spills, refills and [`Pool::trim`] (slow paths only; the get
//!   and drop sections are unchanged) free empty slabs while the idle objects left
//!   stay at least the bound. After a burst, once nothing was taken for a purge
//!   delay, the drops' own spills free the slabs they empty.
//! * [`Pool::trim`] drains the caches and frees every empty slab, whatever the
//!   bound. A freed slab drops its values (each once) and [`Pool::created`] goes
//!   down; a bounded pool may then make objects again up to its bound.
//!
//! Freeing is safe because an object in a depot is on no cache list: no critical
//! section can be reading its link (see `depot.rs` for the argument).
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

mod boxed;
mod depot;
mod drain;
mod slab;
mod wait;

pub use boxed::{GetFuture, OwnedPoolBox, PoolBox};
use depot::{Depot, Homeward, Policy};
use slab::{Registry, SlabList, Slot};

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
use std::sync::OnceLock;
use std::sync::atomic::AtomicPtr;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use wait::{Waiter, Waiters};

/// Most objects a cache may hold: the list length has 16 bits, and the all-ones
/// length is the drain token.
pub const MAX_CAPACITY: usize = (1 << 16) - 2;

/// Largest alignment a pooled type may ask for.
pub const MAX_ALIGN: usize = 4096;

// A many-node NUMA pool gives its plain fast path the limit `NO_CIDS`: the plain
// section exits at its bound check and the pool takes its NUMA sections. A plain
// pool's fast path thereby stays exactly what it is without NUMA mode (no test of
// the mode before its section).
use crate::cid::{NO_CIDS, ThinCell};

/// Slot states (debug checks).
const FREE: u32 = 1;
const BOXED: u32 = 2;
const RAW: u32 = 3;

/// Why a pool could not be built ([`PoolBuilder::build`], [`Pool::new`]).
///
/// ```
/// use percid::pool::PoolError;
///
/// match percid::Pool::builder(|| 0u64).capacity(0).build() {
///     Err(PoolError::ZeroCapacity) => {}
///     other => panic!("expected ZeroCapacity, got {other:?}"),
/// }
/// let err = percid::Pool::builder(|| 0u64).max_objects(0).build().unwrap_err();
/// assert_eq!(err, PoolError::ZeroMaxObjects);
/// println!("{err}"); // a sentence saying what was wrong
/// ```
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

/// How a pool makes its values: a boxed closure (the builder's), or a plain function
/// (the const constructor [`Pool::from_fn`], which cannot box).
enum Init<T> {
    Boxed(Box<dyn Fn() -> T + Send + Sync>),
    Fn(fn() -> T),
}

impl<T> Init<T> {
    fn make(&self) -> T {
        match self {
            Init::Boxed(f) => f(),
            Init::Fn(f) => f(),
        }
    }
}

type Reset<T> = Box<dyn Fn(&mut T) + Send + Sync>;

/// Builds a [`Pool`]: see the builder methods for the defaults.
///
/// ```
/// use std::time::Duration;
///
/// let pool = percid::Pool::builder(|| Vec::<u8>::with_capacity(1024))
///     .capacity(16) // objects per cid cache
///     .max_objects(64) // `get` waits when 64 are in use
///     .reset(|v: &mut Vec<u8>| v.clear()) // runs on every object handed back
///     .purge_delay(Duration::from_millis(50))
///     .build()?;
/// let mut buf = pool.get();
/// buf.extend_from_slice(b"hello");
/// drop(buf); // cleared, back in this cid's cache
/// assert!(pool.get().is_empty());
/// # Ok::<(), percid::pool::PoolError>(())
/// ```
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
    keep_idle: Option<usize>,
    purge_delay: Duration,
}

/// Default of [`PoolBuilder::purge_delay`].
pub const DEFAULT_PURGE_DELAY: Duration = Duration::from_millis(10);

impl<T: Send> PoolBuilder<T> {
    /// Objects each cid's cache holds at most (default 64, at most [`MAX_CAPACITY`]).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Objects moved between a cache and the depot at once (default: half the
    /// capacity, at least 1). Also what one grow of the pool makes when `T` has
    /// drop glue (see [Shrinking](crate::pool#shrinking)): for values that are
    /// costly to make or hold memory of their own (connections, large buffers), a
    /// small batch keeps the pool from making more than it is asked for. (The slab's
    /// memory is rounded up to whole pages, so small values with drop glue, short
    /// `String`s say, pack denser with a larger batch.)
    ///
    /// ```
    /// let pool = percid::Pool::builder(|| vec![0u8; 1 << 20])
    ///     .capacity(2)
    ///     .batch(1)
    ///     .build()
    ///     .unwrap();
    /// let buf = pool.get();
    /// assert_eq!(buf.len(), 1 << 20);
    /// assert_eq!(pool.created(), 1); // one buffer made, not a page of them
    /// ```
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

    /// Idle objects each depot keeps whatever the recent use (the floor of the
    /// shrink, see [Shrinking](crate::pool#shrinking)); default: two slabs' worth.
    /// Idle objects beyond it and beyond the recent demand go back to the system a
    /// slab at a time.
    pub fn keep_idle(mut self, objects: usize) -> Self {
        self.keep_idle = Some(objects);
        self
    }

    /// How long objects the pool handed out count as demand that the pool keeps
    /// idle objects for (default [`DEFAULT_PURGE_DELAY`], as mimalloc's purge
    /// delay): a pool whose use swings faster keeps its objects; after a burst, idle
    /// objects beyond [`PoolBuilder::keep_idle`] are freed by the spills that follow
    /// once this long passed without new demand. `Duration::ZERO` frees as soon as
    /// slabs empty; `Duration::MAX` never shrinks on its own ([`Pool::trim`] still
    /// does).
    pub fn purge_delay(mut self, delay: Duration) -> Self {
        self.purge_delay = delay;
        self
    }

    /// Checks the configuration and allocates the per-cid cache heads.
    ///
    /// # Errors
    ///
    /// * [`PoolError::ZeroCapacity`], [`PoolError::CapacityTooLarge`]: a
    ///   [`capacity`](Self::capacity) of 0 or above [`MAX_CAPACITY`];
    /// * [`PoolError::BadBatch`]: a [`batch`](Self::batch) of 0 or above the capacity;
    /// * [`PoolError::ZeroMaxObjects`] for `max_objects(0)`;
    /// * [`PoolError::AlignTooLarge`]: `T` aligned above [`MAX_ALIGN`];
    /// * [`PoolError::NotNumaArena`]: NUMA mode with a plain [`arena`](Self::arena);
    /// * [`PoolError::Storage`]: the arena could not map the cache heads.
    ///
    /// ```
    /// use percid::pool::PoolError;
    ///
    /// let err = percid::Pool::builder(|| 0u32).capacity(4).batch(8).build().unwrap_err();
    /// assert_eq!(err, PoolError::BadBatch { batch: 8, capacity: 4 });
    /// ```
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
        let policy = Policy {
            keep_idle: self
                .keep_idle
                .map_or_else(|| default_keep_idle::<T>(batch as u64), |k| k as u64),
            purge_delay: self.purge_delay,
        };
        // The thin paths serve plain pools without debug checks; a drop's, pools
        // without a reset and a bound too (see `Pool::thin`).
        let thin_get = nodes == 1 && !self.debug;
        let thin_put = thin_get && self.reset.is_none() && self.max_objects.is_none();
        Ok(Pool {
            thin: ThinCell::new(thin_get, heads.first().hot()),
            thin_put: ThinCell::new(thin_put, heads.first().hot()),
            hot: HotCell::new(base, limit),
            node_hot: (nodes > 1).then(|| heads.first().node_hot()),
            heads: OnceLock::from(heads),
            init: self.init,
            reset: self.reset,
            capacity: self.capacity as u16,
            batch: batch as u64,
            max_objects: self.max_objects.map_or(u64::MAX, |m| m as u64),
            debug: self.debug,
            numa: self.numa,
            topology: self.topology,
            depot0: Mutex::new(Depot::new()),
            more_depots: (1..nodes).map(|_| Mutex::new(Depot::new())).collect(),
            created: AtomicU64::new(0),
            freed: AtomicU64::new(0),
            slabs: Mutex::new(Registry {
                list: SlabList::new(),
            }),
            drain: Mutex::new(()),
            bounded: self.max_objects.is_some(),
            waiters: Waiters::new(),
            policy: OnceLock::from(policy),
            default_policy: policy,
        })
    }
}

/// The default floor: two slabs.
fn default_keep_idle<T>(batch: u64) -> u64 {
    2 * slab::Slab::<T>::per_slab(batch)
}

/// The heads word's fast-path addresses (see `HotWord`), readable while a lazily
/// built pool ([`Pool::from_fn`]) sets them up. Until then `limit` is `NO_CIDS`:
/// the plain section exits at its bound check, before it touches `base`, and the
/// slow path builds the heads. The writer stores `base` then `limit` (release), the
/// fast path loads `limit` (acquire) then `base`: whoever sees the real limit sees
/// the real base. Both loads are plain loads on x86_64 (the acquire costs nothing
/// there): the fast path is unchanged. Plain `std` atomics, also under loom: they
/// are written once, before the pool is shared or under the heads' `OnceLock`.
struct HotCell {
    base: AtomicPtr<u64>,
    limit: AtomicPtr<u32>,
}

impl HotCell {
    fn new(base: *mut u64, limit: *const u32) -> HotCell {
        HotCell {
            base: AtomicPtr::new(base),
            limit: AtomicPtr::new(limit.cast_mut()),
        }
    }

    /// Every section misses until `set`.
    const fn missing() -> HotCell {
        HotCell {
            base: AtomicPtr::new(std::ptr::null_mut()),
            limit: AtomicPtr::new((&raw const NO_CIDS).cast_mut()),
        }
    }

    fn set(&self, base: *mut u64, limit: *const u32) {
        self.base.store(base, std::sync::atomic::Ordering::Relaxed);
        self.limit
            .store(limit.cast_mut(), std::sync::atomic::Ordering::Release);
    }

    #[inline(always)]
    fn get(&self) -> HotWord {
        let limit = self.limit.load(std::sync::atomic::Ordering::Acquire);
        let base = self.base.load(std::sync::atomic::Ordering::Relaxed);
        HotWord::from_parts(base, limit)
    }
}

/// Holds off `fork()` while this thread is inside a depot's or the registry's lock,
/// holds a drain token, or builds a lazy pool's heads: a child never inherits one
/// of them held (which would hang it, or lose the drained objects). Taken before
/// those locks, on slow paths only (see `crate::cid::fork::hold`).
#[inline]
fn fork_hold() -> impl Drop {
    crate::cid::fork::hold()
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
    /// The heads word's operands for [`Pool::get`]'s thin section, the whole of
    /// its inlined path (missing in debug mode and for a many-node NUMA pool, whose
    /// gets take the full path).
    thin: ThinCell,
    /// As `thin`, for a `PoolBox` drop's thin section: missing also when the pool
    /// resets values or is bounded (a drop then has more to do than one push).
    thin_put: ThinCell,
    /// The heads word's fast-path addresses (see `HotWord`); in a many-node NUMA
    /// pool, with a limit that makes every plain section miss (`NO_CIDS`), as in a
    /// lazily built pool before its first use.
    hot: HotCell,
    /// A NUMA pool on more than one node: the heads word's NUMA fast path (see
    /// `NodeHotWord`). `None`: the plain sections on plane 0.
    node_hot: Option<NodeHotWord>,
    /// The per-cid cache heads; set when built, or at the first use of a pool
    /// made by [`Pool::from_fn`].
    heads: OnceLock<Words<'static>>,
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
    /// Node 0's depot (the only one of a plain pool): idle objects of node 0's
    /// slabs only (see `depot.rs`).
    depot0: Mutex<Depot>,
    /// The depots of nodes 1.. (a many-node NUMA pool).
    more_depots: Vec<Mutex<Depot>>,
    /// Objects that exist (made and not freed; bounded by `max_objects`).
    created: AtomicU64,
    /// Objects freed with their slab by the shrink, in all.
    freed: AtomicU64,
    /// Every slab of the pool; each freed with the pool or by the shrink.
    slabs: Mutex<Registry>,
    /// Serialises drains: the drain token is one value, so one drainer at a time.
    drain: Mutex<()>,
    /// `max_objects` was set: getters may wait, and drops wake them.
    bounded: bool,
    /// Getters waiting for an object (see `wait.rs`).
    waiters: Waiters,
    /// The shrink policy (see `depot.rs`); set with the heads (its default floor
    /// needs the page size).
    policy: OnceLock<Policy>,
    /// The policy until `policy` is set (never read before the heads are).
    default_policy: Policy,
}

// SAFETY: the pool hands its `T`s to whichever thread gets them (so `T: Send`), and
// shares them with no one: a slot is reachable through one `PoolBox` at a time, or
// through a free list, whose operations never touch the value.
unsafe impl<T: Send> Send for Pool<T> {}
// SAFETY: as above; every shared part is atomics or behind a mutex.
unsafe impl<T: Send> Sync for Pool<T> {}

impl<T: Send> Pool<T> {
    /// A pool with the default configuration whose objects `init` creates.
    ///
    /// # Errors
    ///
    /// [`PoolError::AlignTooLarge`] when `T` is aligned above [`MAX_ALIGN`], and
    /// [`PoolError::Storage`] when the arena cannot map the per-cid cache heads
    /// (see [`PoolBuilder::build`]).
    ///
    /// ```
    /// let pool = percid::Pool::new(String::new).unwrap();
    /// pool.get().push_str("reused");
    /// ```
    pub fn new(init: impl Fn() -> T + Send + Sync + 'static) -> Result<Pool<T>, PoolError> {
        Pool::builder(init).build()
    }

    /// A builder for a pool whose objects `init` creates.
    pub fn builder(init: impl Fn() -> T + Send + Sync + 'static) -> PoolBuilder<T> {
        PoolBuilder {
            init: Init::Boxed(Box::new(init)),
            reset: None,
            capacity: 64,
            batch: None,
            max_objects: None,
            debug: cfg!(debug_assertions),
            arena: None,
            numa: false,
            topology: None,
            keep_idle: None,
            purge_delay: DEFAULT_PURGE_DELAY,
        }
    }

    /// A pool with the default configuration, made in a `const` context: for a
    /// `static`.
    ///
    /// ```
    /// use percid::Pool;
    ///
    /// static BUFFERS: Pool<Vec<u8>> = Pool::from_fn(Vec::new);
    ///
    /// let mut buf = BUFFERS.get();
    /// buf.extend_from_slice(b"static");
    /// ```
    ///
    /// [`Pool::new`] cannot be `const`: it boxes a closure. This one takes a plain
    /// function and sets up its cache heads (from [`cid::global`]) at its first use:
    /// until then its fast path's bound check fails at once (as a many-node NUMA
    /// pool's plain attempt does), so the first get or drop takes the slow path,
    /// which builds the heads (once, whichever thread comes first) and carries on.
    /// The fast path is the same instructions as a built pool's.
    ///
    /// # Panics
    /// The first use panics if the process-wide arena cannot allocate the cache
    /// heads (address space exhausted), as a failed allocation would.
    #[cfg(not(loom))]
    pub const fn from_fn(init: fn() -> T) -> Pool<T> {
        let policy = Policy {
            keep_idle: 0,
            purge_delay: DEFAULT_PURGE_DELAY,
        };
        Pool {
            thin: ThinCell::missing(),
            thin_put: ThinCell::missing(),
            hot: HotCell::missing(),
            node_hot: None,
            heads: OnceLock::new(),
            init: Init::Fn(init),
            reset: None,
            capacity: 64,
            batch: 32,
            max_objects: u64::MAX,
            debug: cfg!(debug_assertions),
            numa: false,
            topology: None,
            depot0: Mutex::new(Depot::new()),
            more_depots: Vec::new(),
            created: AtomicU64::new(0),
            freed: AtomicU64::new(0),
            slabs: Mutex::new(Registry {
                list: SlabList::new(),
            }),
            drain: Mutex::new(()),
            bounded: false,
            waiters: Waiters::unbounded(),
            policy: OnceLock::new(),
            default_policy: policy,
        }
    }

    /// The heads, built at the first use of a lazily built pool.
    #[cold]
    #[inline(never)]
    fn build_heads(&self) -> &Words<'static> {
        // A fork never sees the heads half built (the child would wait forever).
        let _fork = fork_hold();
        self.heads.get_or_init(|| {
            // As in `build`: register for membarrier before any drain waits on it.
            let _ = crate::rseq::fence_available();
            let heads = cid::global()
                .alloc(1)
                .unwrap_or_else(|e| panic!("percid::pool: cannot allocate the cache heads: {e}"));
            let _ = self.policy.set(Policy {
                keep_idle: default_keep_idle::<T>(self.batch),
                ..self.default_policy
            });
            let (base, limit) = heads.first().hot();
            self.hot.set(base, limit);
            if !self.debug {
                // A lazily built pool has no reset and no bound.
                self.thin.set((base, limit));
                self.thin_put.set((base, limit));
            }
            heads
        })
    }

    /// The address of the cache-head word in the first cid's unit (`None` before
    /// a lazily built pool's first use): benchmarks print its page offset (see
    /// `Counter::word_address`).
    #[doc(hidden)]
    pub fn head_address(&self) -> Option<usize> {
        self.heads.get().map(|h| h.first().hot().0 as usize)
    }

    /// Raises the thin cells' counts to the heads chunk's limit (a new cid may have
    /// been materialised since they were read; see `ThinCell::refresh`).
    fn refresh_thin(&self) {
        // A cell that was set belongs to built heads.
        let limit = || {
            self.heads
                .get()
                .map_or(std::ptr::null(), |h| h.first().hot().1)
        };
        self.thin.refresh(limit);
        self.thin_put.refresh(limit);
    }

    /// The shrink policy.
    fn policy(&self) -> &Policy {
        self.policy.get().unwrap_or(&self.default_policy)
    }

    fn heads(&self) -> Word<'_> {
        match self.heads.get() {
            Some(heads) => heads.first(),
            None => self.build_heads().first(),
        }
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
    ///
    /// # Panics
    ///
    /// When the pool's `init` panics (it runs when the pool grows by a slab): the
    /// panic propagates to the caller. When an unbounded pool has no idle object and
    /// cannot grow (the system refused the memory of a new slab): rather than wait
    /// forever, as nothing would wake it ([`Pool::try_get`] returns `None` then).
    #[inline]
    pub fn get(&self) -> PoolBox<'_, T> {
        // SAFETY: every node on the heads' lists is a slot of this pool, alive as
        // long as the pool, and only list operations (or a drainer that owns the
        // list) write the heads and the links of listed slots.
        if let Some(node) = unsafe { self.thin.list_pop() } {
            return PoolBox {
                pool: self,
                // SAFETY: a listed node is a slot of this pool.
                slot: NonNull::from(unsafe { Slot::from_node(node) }),
                _not_sync: PhantomData,
            };
        }
        self.get_slow()
    }

    /// [`Pool::get`] past its thin section: the full pop (another backend, an
    /// abort, an empty cache, debug checks), then the depot, a new slab or a wait.
    #[inline(never)]
    fn get_slow(&self) -> PoolBox<'_, T> {
        self.refresh_thin();
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
    ///
    /// # Panics
    ///
    /// Polling panics as [`Pool::get`] does: when `init` panics, or when an unbounded
    /// pool has no idle object and cannot grow.
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
        let node = match unsafe { self.hot.get().try_list_pop() } {
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
            let chain = self.take(node);
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
            if !self.bounded {
                // An unbounded pool found no object and could not grow: nothing
                // would ever wake this thread (drops of unbounded pools wake no one).
                if registered {
                    self.waiters.unregister(id);
                }
                if deadline.is_some() {
                    return None;
                }
                panic!(
                    "percid::Pool::get: the pool cannot grow (the system refused memory \
                     for a new slab, or gave it above the 48-bit address bound); \
                     use try_get to handle this"
                );
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

    /// Objects that exist now (in use or idle): made, less those freed with their
    /// slab by the shrink.
    pub fn created(&self) -> usize {
        self.created.load(Ordering::Acquire) as usize
    }

    /// Objects freed with their slab so far (by the shrink or [`Pool::trim`]), in
    /// all: `created() + freed()` objects were made.
    pub fn freed(&self) -> usize {
        self.freed.load(Ordering::Acquire) as usize
    }

    /// Objects parked in the cid caches and in the depots (a racy snapshot).
    pub fn idle(&self) -> usize {
        let depots: usize = (0..self.depot_count()).map(|n| self.idle_on_node(n)).sum();
        depots + self.cached_elsewhere() as usize
    }

    /// Objects in the depot of NUMA node `node` (a racy snapshot; 0 for a node the
    /// pool does not have): after [`Pool::trim`], the idle objects whose memory is
    /// on that node. A plain pool has one depot, node 0's.
    pub fn idle_on_node(&self, node: usize) -> usize {
        if node >= self.depot_count() {
            return 0;
        }
        let _fork = fork_hold();
        lock(self.depot(node)).idle() as usize
    }

    /// NUMA nodes the pool keeps depots and slabs for: the planes of its arena in
    /// NUMA mode, 1 otherwise.
    pub fn nodes(&self) -> usize {
        self.depot_count()
    }

    /// Objects parked in the cid caches (a racy snapshot): at most `capacity ×`
    /// the cids (and lanes) used.
    pub fn cached(&self) -> usize {
        self.cached_elsewhere() as usize
    }

    /// Returns a slot: its value is reset, then pushed on the caller's cache, or
    /// (cache full) moved to the depot with a batch of the cache. A `PoolBox` drop
    /// comes here past its thin section (reset, debug checks, a full cache, a
    /// bounded pool's waiters, another backend).
    #[inline(never)]
    fn put(&self, slot: &Slot<T>) {
        self.refresh_thin();
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
        let pushed = match unsafe { self.hot.get().try_list_push(slot.node(), self.capacity) } {
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
}

impl<T> Drop for Pool<T> {
    fn drop(&mut self) {
        // No `PoolBox` outlives the borrow of the pool: every value is here, free or
        // raw (a raw object never given back is dropped with its pool).
        // Dropping the slabs drops every value; the cache heads that pointed into
        // them are zeroed when their words go back to the arena.
        let registry = self.slabs.get_mut().unwrap_or_else(|p| p.into_inner());
        while let Some(s) = registry.list.first() {
            // SAFETY: on the registry, which `&mut self` owns.
            unsafe { registry.list.remove(s, slab::SlabRef::registry_links) };
            // SAFETY: every slab is on the registry, and nothing else reaches its
            // slots any more (no box outlives the pool).
            drop(unsafe { slab::Slab::<T>::from_ref(s) });
        }
    }
}

impl<T> fmt::Debug for Pool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("capacity", &self.capacity)
            .field("batch", &self.batch)
            .field("numa", &self.numa)
            .field("nodes", &self.depot_count())
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
