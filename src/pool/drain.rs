//! Draining the cid caches into the depots, and trimming.

use super::*;

impl<T: Send> Pool<T> {
    /// Moves every cache that holds objects to the depots (see the module docs);
    /// a NUMA pool sorts each cache's objects by home node. Returns how many
    /// objects moved.
    ///
    /// The chains are handed to the depots after the drain lock is released: a
    /// deposit may free slabs, whose values' `Drop` (user code) may use the pool.
    pub(super) fn drain_caches(&self) -> u64 {
        let mut chains = Vec::new();
        let moved = {
            // Fork waits while a drain token is out (a child would inherit the
            // drained caches as lost).
            let _fork = fork_hold();
            let _one_drainer = lock(&self.drain);
            list::drain(self.heads(), |chain| chains.push(chain))
        };
        for chain in chains {
            if !self.numa {
                self.deposit(0, chain);
                continue;
            }
            let mut homeward = Homeward::new();
            let mut rest = chain;
            while chain_len(rest) > 0 {
                // SAFETY: the drained list is ours: slots of this pool.
                let slot = unsafe { Slot::<T>::from_node(chain_node(rest)) };
                rest = slot.link.load(Ordering::Acquire);
                homeward.add(slot);
            }
            homeward.send(self);
        }
        moved
    }

    /// Moves every object parked in the cid caches to the depots, so that a thread
    /// on any cid can reuse them (before a phase that runs on other CPUs, say),
    /// without freeing anything beyond what the pool's own shrink would (see
    /// [Shrinking](crate::pool#shrinking)). Costs an rseq fence per non-empty cache. A NUMA
    /// pool sends each object to its home node's depot.
    pub fn flush(&self) {
        self.drain_caches();
    }

    /// Moves every object parked in the cid caches to the depots (as
    /// [`Pool::flush`]), and then frees every slab whose objects are all idle, whatever
    /// [`PoolBuilder::keep_idle`] and the recent demand say: after a trim the pool
    /// holds only the slabs of objects in use (and idle objects that share a slab
    /// with them). Costs an rseq fence per non-empty cache. A NUMA pool sends each
    /// object to its home node's depot.
    pub fn trim(&self) {
        self.drain_caches();
        self.release_all();
    }
}
