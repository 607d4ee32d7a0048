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
//! Index units are written only by critical sections (rseq commits, or the simulated
//! backend's commits) and by owners releasing what a section gave them. Lanes are
//! written only by the portable backend, with atomic read-modify-writes or under the
//! lane's lock (its unit's first word). A thread without rseq therefore never races a
//! non-atomic commit with an atomic update of the same word.

mod arena;
mod ops;

pub(crate) use arena::UNIT_SHIFT;
pub use arena::{Arena, StorageError, StorageStats, Word, Words};
pub(crate) use ops::HotWord;
pub use ops::{ForeignError, ListFull, PushOutcome, Shard};

/// The process-wide arena that the crate's structures allocate from. (Under loom,
/// models make their own arenas: loom objects cannot outlive one model run.)
pub fn global() -> &'static Arena {
    static GLOBAL: std::sync::OnceLock<Arena> = std::sync::OnceLock::new();
    GLOBAL.get_or_init(Arena::new)
}

/// Statistics of the process-wide arena: indexes materialised, bytes per index,
/// resident memory.
pub fn stats() -> StorageStats {
    global().stats()
}
