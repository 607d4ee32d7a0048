//! [`NumaCounter`]: a counter whose shards live in the memory of the node they are
//! updated on.

use super::Shards;
use crate::cid::{self, Arena, NodeHotWord, Shard, StorageError, Word};
use crate::numa::{self, Topology};
use crate::sync::{AtomicPtr, AtomicU32, Ordering};
use std::fmt;

/// A `u64` counter sharded by (NUMA node, cid): every add reads `node_id` and
/// `mm_cid` in one rseq critical section and updates the cid's word in that node's
/// plane of the NUMA arena, so updates stay in node-local memory (the guarantee the
/// kernel's unmerged `mm_numa_cid` proposal aimed at; see [`crate::numa`]).
///
/// On a machine with one node this is a [`super::Counter`] in node-bound memory: the
/// add takes the plain section and costs the same. [`NumaCounter::sum_node`] tells
/// how much was counted on each node.
///
/// ```
/// use percid::NumaCounter;
///
/// static PACKETS: NumaCounter = NumaCounter::new();
///
/// std::thread::scope(|s| {
///     for _ in 0..4 {
///         s.spawn(|| for _ in 0..1000 { PACKETS.inc() });
///     }
/// });
/// assert_eq!(PACKETS.sum(), 4000);
/// let per_node: u64 = (0..PACKETS.nodes()).map(|n| PACKETS.sum_node(n)).sum();
/// assert!(per_node <= 4000); // what only `sum` sees: adds that found no storage
/// ```
pub struct NumaCounter {
    shards: Shards,
    /// The chunk directory once the words exist in an arena of more than one plane;
    /// null while the counter is unallocated or has one plane (then the plain
    /// section on plane 0 is the whole story).
    hot_dir: AtomicPtr<u8>,
    /// The word's byte offset in a unit, valid once `hot_dir` is set.
    hot_woff: AtomicU32,
    /// Which node a portable lane's CPU belongs to; `None`: the machine's topology.
    topology: Option<&'static Topology>,
}

impl NumaCounter {
    const_unless_loom! {
        /// A counter at zero in the process-wide NUMA arena. `const`, so it can be a
        /// `static`; its storage is allocated on first use.
        pub fn new() -> NumaCounter {
            NumaCounter {
                shards: Shards::new_numa(),
                hot_dir: AtomicPtr::new(std::ptr::null_mut()),
                hot_woff: AtomicU32::new(0),
                topology: None,
            }
        }
    }

    /// A counter allocated now in `arena` (one made with [`Arena::with_nodes`] runs
    /// many-node layouts on any machine), whose lanes map to nodes by `topology`
    /// (`None`: the machine's).
    ///
    /// # Errors
    /// [`StorageError`] when the arena cannot allocate the counter's words.
    pub fn new_in(
        arena: &'static Arena,
        topology: Option<&'static Topology>,
    ) -> Result<NumaCounter, StorageError> {
        let counter = NumaCounter {
            shards: Shards::eager_as(Shards::new_numa(), arena, 0)?,
            hot_dir: AtomicPtr::new(std::ptr::null_mut()),
            hot_woff: AtomicU32::new(0),
            topology,
        };
        if let Some(word) = counter.shards.value() {
            counter.publish(word);
        }
        Ok(counter)
    }

    /// Adds `n` (wrapping) on the caller's (node, cid): one rseq critical section.
    #[inline]
    pub fn add(&self, n: u64) {
        // One plane: the thin section on plane 0 (the node's plane). Many: the thin
        // cell is missing and the NUMA section runs on the node's plane.
        if self.shards.thin.add(n) {
            return;
        }
        let dir = self.hot_dir.load(Ordering::Acquire);
        if !dir.is_null() {
            let woff = self.hot_woff.load(Ordering::Relaxed) as usize;
            if NodeHotWord::from_parts(dir, woff).try_add_committed(n) {
                return;
            }
        }
        self.add_slow(n);
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// First use, other backends, aborts, new cids or nodes, storage failure.
    #[cold]
    #[inline(never)]
    fn add_slow(&self, n: u64) {
        match self.shards.value() {
            Some(word) => {
                self.publish(word);
                word.add_on_node(n);
                // The add may have materialised a new cid: the next is thin.
                self.shards.thin.refresh(|| word.hot().1);
            }
            None => {
                self.shards.spill.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Makes the fast path take the NUMA section when the arena has many planes.
    fn publish(&self, word: Word<'_>) {
        if word.nodes() > 1 && self.hot_dir.load(Ordering::Relaxed).is_null() {
            let hot = word.node_hot();
            self.hot_woff.store(hot.woff() as u32, Ordering::Relaxed);
            self.hot_dir.store(hot.dir().cast_mut(), Ordering::Release);
        }
    }

    /// The total over every node (see [`super::Counter::sum`]).
    pub fn sum(&self) -> u64 {
        self.shards.sum()
    }

    /// Reads and resets the total (see [`super::Counter::take`]). Per-node totals
    /// ([`NumaCounter::sum_node`]) are not reset: they count since creation.
    pub fn take(&self) -> u64 {
        self.shards.take()
    }

    /// What was counted on node `node` since the counter was created: its plane's
    /// shards plus the portable lanes of its CPUs. Adds that found no storage at all
    /// count towards [`NumaCounter::sum`] only.
    pub fn sum_node(&self, node: u32) -> u64 {
        let Some(word) = self.word() else { return 0 };
        let topology = self.topology.unwrap_or_else(numa::topology);
        word.node_shards(node, move |cpu| topology.node_of_cpu(cpu))
            .fold(0u64, |acc, (_, w)| {
                acc.wrapping_add(w.load(Ordering::Relaxed))
            })
    }

    /// Nodes (planes) the counter's arena covers: `sum_node` takes `0 .. nodes()`.
    pub fn nodes(&self) -> u32 {
        match self.word() {
            Some(word) => word.nodes(),
            None => cid::numa_global().nodes(),
        }
    }

    /// The shards that hold a value, with it: `(node, cid)` units, then lanes.
    pub fn shards(&self) -> Vec<(Shard, u64)> {
        match self.word() {
            Some(word) => word
                .shards()
                .map(|(shard, w)| (shard, w.load(Ordering::Relaxed)))
                .collect(),
            None => Vec::new(),
        }
    }

    fn word(&self) -> Option<Word<'_>> {
        match self.shards.words.get() {
            Some(Ok(words)) => Some(words.first()),
            _ => None,
        }
    }
}

impl Default for NumaCounter {
    fn default() -> Self {
        NumaCounter::new()
    }
}

impl fmt::Debug for NumaCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<u64> = (0..self.nodes()).map(|n| self.sum_node(n)).collect();
        f.debug_struct("NumaCounter")
            .field("sum", &self.sum())
            .field("per_node", &nodes)
            .finish()
    }
}
