//! Per-cid storage: the strided arena every structure allocates its shards from.
//!
//! # Layout
//!
//! An arena is a list of *chunks*. A chunk is one virtual reservation cut into
//! *units* of `1 << UNIT_SHIFT` bytes: units `0 .. cid_capacity` belong to the shard
//! indexes (`mm_cid`, or `cpu_id`), units `cid_capacity ..` to the portable *lanes*.
//! An allocation ([`Words`]) is a run of words at the same offset in every unit, so
//! word `i` of index `c` lives at `chunk + (c << UNIT_SHIFT) + 8 * (offset + i)`: a
//! critical section turns the index it reads into an address with one shift, and
//! ten thousand counters cost 8 bytes per index each, not a padded line each.
//!
//! ```text
//!            unit 0 (cid 0)       unit 1 (cid 1)      ...  unit C (lane 0) ...
//! chunk:  [hdr|w0 w1 w2 ... ]  [hdr|w0 w1 w2 ... ]   ...  [lock|w0 w1 ... ]
//!               ^ counter A          ^ counter A                ^ counter A
//! ```
//!
//! # NUMA planes
//!
//! The index units of a chunk form a *plane*. A plain arena ([`Arena::new`]) has one;
//! a NUMA arena ([`Arena::numa`], [`numa_global`]) has one per NUMA node, each its
//! own reservation, bound to its node (see [`crate::numa`]) and reserved when the
//! node's first index appears. A chunk's *directory* lists every plane's unit 0 and
//! materialised limit; the NUMA sections read `node_id` and the index in one critical
//! section and use the unit of (node, index). Exclusivity comes from the index alone
//! (an `mm_cid` is unique among running threads), so unit (n, c) is a sub-unit of
//! cid c whatever node a thread reads; the node only decides *where* the data lives.
//! The plain operations use plane 0. Lanes are shared by all planes.
//!
//! # Memory follows concurrency
//!
//! The reservation is made with `MAP_NORESERVE`; a unit's pages only become memory
//! when an index writes them. Each chunk keeps `cid_limit`, the number of indexes
//! materialised so far: a section that reads an index at or above it fails with
//! "not materialised", the slow path raises the limit (bounded by the capacity) and
//! retries. Readers visit units below the limit only, so a sum costs as many loads
//! as indexes were really used (two on a 2-CPU container), never the CPU count.
//! Units never move; only the limit grows.
//!
//! # One discipline per word
//!
//! A section commits with a plain store (or one `add [mem]`) computed from what it
//! read; an atomic write to the same word between its read and its commit would be
//! lost, and the section's commit with it would not be seen as a conflict. So a
//! word of an index unit is written:
//!
//! * **by critical sections** (rseq commits, or the simulated backend's commits
//!   under the cid's commit lock): adds, list pushes and pops, ring tails;
//! * **outside a section, only when no section can commit over it.** That is one of:
//!   - the writer *owns* the word's current value and every section on the word
//!     fails on that value: a `PerCid` lock word holding `LOCKED` or a visitor's
//!     token is released with an atomic store by its holder (the
//!     `load_cbne_store` that takes it expects 0); a list head holding
//!     `list::DRAIN_TOKEN` is reset to 0 by its drainer;
//!   - the value was put there by [`Word::foreign_compare_store`], whose
//!     compare-and-swap is followed by an rseq fence: every section that read the
//!     old value has committed (which the check after the fence sees) or aborted;
//!   - no section can address the word: an allocation being zeroed when it is
//!     freed, or made, before any structure holds it;
//! * **with atomics only, by design, where sections only read** (a ring's buffer
//!   address, installed by compare-and-swap; its head, moved by the consumer; a
//!   channel's gate) **or never touch** (a counter's carried total, the unit
//!   header's generation and lock).
//!
//! Lanes are never written by a section: only by atomic read-modify-writes or under
//! the lane's lock (its unit's first word). A thread without rseq therefore never
//! races a non-atomic commit with an atomic update of the same word.

mod arena;
pub(crate) mod fork;
pub(crate) use fork::protect_heap as fork_protect_heap;
pub(crate) mod list;
mod ops;

pub use arena::{Arena, NodeStorage, StorageError, StorageStats, Word, Words};
pub(crate) use arena::{DIR_BASE, DIR_LIMIT, DIR_PLANES, DIR_SLOT_SHIFT, UNIT_SHIFT};
pub use ops::{ForeignError, ListFull, PushOutcome, Shard};
pub(crate) use ops::{
    HotWord, NO_CIDS, NodeHotWord, PayloadSite, Pushed, ThinCell, cold_path, ring_words,
    thread_node,
};

/// The process-wide arena that the crate's structures allocate from. (Under loom,
/// models make their own arenas: loom objects cannot outlive one model run.)
///
/// Built without ever waiting for another thread (see `cid/fork.rs`): a child forked
/// while a thread of its parent was building it builds its own.
///
/// ```
/// let words = percid::cid::global().alloc(1).unwrap();
/// words.word(0).add(2);
/// assert_eq!(words.word(0).sum(), 2);
/// ```
pub fn global() -> &'static Arena {
    static GLOBAL: fork::Lazy<Arena> = fork::Lazy::new();
    GLOBAL.get_or_init(Arena::new_process_wide)
}

/// The process-wide NUMA arena ([`Arena::numa`]): one plane per NUMA node, each
/// bound to its node. The NUMA-aware structures allocate from it.
///
/// ```
/// let arena = percid::cid::numa_global();
/// assert!(arena.is_numa());
/// ```
pub fn numa_global() -> &'static Arena {
    static GLOBAL: fork::Lazy<Arena> = fork::Lazy::new();
    GLOBAL.get_or_init(Arena::numa_process_wide)
}

/// Statistics of the process-wide arena: indexes materialised, bytes per index,
/// resident memory.
///
/// ```
/// let before = percid::cid::stats().words_in_use;
/// let words = percid::cid::global().alloc(3).unwrap();
/// assert!(percid::cid::stats().words_in_use >= before + 3);
/// drop(words);
/// ```
pub fn stats() -> StorageStats {
    global().stats()
}
