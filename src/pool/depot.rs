//! The depots: free objects shared by all cids, how batches go home, and how the
//! pool shrinks back after a burst.
//!
//! # Two layers, as tcmalloc's transfer cache and central free lists
//!
//! A depot holds idle objects in two ways:
//!
//! * **chains**: whole batches as spills gave them, handed to a refill as they are
//!   (one push or pop per batch). They hold at most the pool's *keep* bound.
//! * **slab lists**: beyond that, objects go one by one to the free list of their
//!   slab. A slab whose every object is on its own list is *empty* (fully idle);
//!   refills take from partly used slabs first, so that the others can empty.
//!
//! # Shrinking
//!
//! The keep bound is `keep_idle` (the floor) plus the objects the depot handed out
//! (refills, new slabs) in the last one to two purge delays: what a pool in a steady
//! state takes back soon. On the slow paths only (a spill of a full cache, a
//! refill, [`Pool::trim`]) the depot moves chains beyond the bound to the slab
//! lists and frees empty slabs while what stays idle is still at least the bound.
//! A burst therefore settles with its drops (no timer, no later call needed): once
//! nothing was taken for a purge delay, the bound is the floor, and each spill
//! frees the slabs it empties. A pool whose use swings within the purge delay keeps
//! its objects; the floor (two slabs by default) keeps a pool that hovers around a
//! slab boundary from freeing and making the same slab again.
//!
//! # Why freeing a slab is safe
//!
//! An object in a depot is on no cid cache list: it left its cache by a committed
//! `list_pop` section of that cid (sections on one cid are serialised: a section
//! that was preempted or migrated aborts before it runs another instruction, so no
//! section can still be about to read the link of an object another section
//! popped) or by a drain, which swaps the cache's head for the drain token and then
//! fences with membarrier (no section that read the old head is still running when
//! the fence returns). The portable lanes pop under the lane's lock and the
//! simulated backend guards every load with the unit's generation, with the same
//! result. So no section can be reading the link word of an object in a depot, and
//! a slab whose objects are all on its own free list (in no chain, no cache, no
//! box) is reachable only through the depot, whose lock the freeing thread holds
//! while it unlists the slab. Its values are then dropped once, by the freeing
//! thread, outside every lock.

use super::slab::{Listed, SlabList, SlabRef};
use super::*;

/// One node's depot (see the module docs). Guarded by its mutex.
pub(super) struct Depot {
    /// Batches, each a chain of slots of this node.
    chains: Vec<u64>,
    /// Objects in `chains`.
    chained: u64,
    /// Slabs with some (not all) of their objects on their free list.
    partial: SlabList,
    /// Slabs with all their objects on their free list.
    empty: SlabList,
    /// Objects on the slabs' free lists.
    central: u64,
    /// Objects handed out recently (the keep bound).
    demand: Demand,
}

/// Objects a depot handed out recently: this purge-delay period's count and the
/// previous one's.
struct Demand {
    since: Option<Instant>,
    current: u64,
    previous: u64,
}

impl Demand {
    /// Starts a new period when the current one is older than `delay`.
    fn roll(&mut self, delay: Duration) {
        if cfg!(loom) {
            // No clock in models (their runs must be deterministic): no demand.
            return;
        }
        let now = Instant::now();
        match self.since {
            Some(since) if now.duration_since(since) < delay => {}
            Some(since) => {
                let age = now.duration_since(since);
                self.previous = if age < delay * 2 { self.current } else { 0 };
                self.current = 0;
                self.since = Some(now);
            }
            None => self.since = Some(now),
        }
    }

    fn note(&mut self, n: u64, delay: Duration) {
        if cfg!(loom) {
            return;
        }
        self.roll(delay);
        self.current += n;
    }

    fn recent(&mut self, delay: Duration) -> u64 {
        self.roll(delay);
        self.current + self.previous
    }
}

impl Depot {
    pub(super) const fn new() -> Depot {
        Depot {
            chains: Vec::new(),
            chained: 0,
            partial: SlabList::new(),
            empty: SlabList::new(),
            central: 0,
            demand: Demand {
                since: None,
                current: 0,
                previous: 0,
            },
        }
    }

    /// Idle objects in the depot.
    pub(super) fn idle(&self) -> u64 {
        self.chained + self.central
    }

    /// Moves `s` from the list `from` names to the one `to` names.
    fn relist(&mut self, s: SlabRef, from: Listed, to: Listed) {
        if from == to {
            return;
        }
        // SAFETY (all below): `s` is a slab of this depot's node (depots hold their
        // node's slots only), listed as `from` says; the depot lock is held (`&mut
        // self` is the guard's).
        unsafe {
            match from {
                Listed::Partial => self.partial.remove(s, SlabRef::depot_links),
                Listed::Empty => self.empty.remove(s, SlabRef::depot_links),
                Listed::Nowhere => {}
            }
            match to {
                Listed::Partial => self.partial.push(s, SlabRef::depot_links),
                Listed::Empty => self.empty.push(s, SlabRef::depot_links),
                Listed::Nowhere => {}
            }
            s.central().listed = to;
        }
    }

    /// Puts an owned slot of this depot's node on its slab's free list.
    fn put_central<T>(&mut self, slot: &Slot<T>) {
        let head = slot.head();
        let s = SlabRef::of(head);
        // SAFETY: the depot lock is held and the slab is of this node; the
        // reference ends before `relist`.
        let (from, to) = unsafe {
            let c = s.central();
            slot.link.store(c.free, Ordering::Relaxed);
            c.nfree += 1;
            c.free = pack(slot.node(), u64::from(c.nfree));
            let to = if c.nfree == head.len {
                Listed::Empty
            } else {
                Listed::Partial
            };
            (c.listed, to)
        };
        self.central += 1;
        self.relist(s, from, to);
    }

    /// Puts every slot of an owned chain on its slab's free list.
    fn chain_to_central<T>(&mut self, chain: u64) {
        let mut rest = chain;
        while chain_len(rest) > 0 {
            // SAFETY: the chain's slots are owned by the depot.
            let slot = unsafe { Slot::<T>::from_node(chain_node(rest)) };
            rest = slot.link.load(Ordering::Acquire);
            self.put_central(slot);
        }
    }

    /// Up to `want` objects from the slab lists, as a chain: partly used slabs
    /// first, so that the others can become empty.
    fn take_central<T>(&mut self, want: u64) -> u64 {
        let mut chain = 0u64;
        let mut count = 0u64;
        while count < want {
            let Some(s) = self.partial.first().or_else(|| self.empty.first()) else {
                break;
            };
            // SAFETY: the depot lock is held; the reference ends before `relist`.
            let (from, to) = unsafe {
                let c = s.central();
                while count < want && c.nfree > 0 {
                    let node = chain_node(c.free);
                    // SAFETY: a node on a slab's free list is an owned slot.
                    let slot = Slot::<T>::from_node(node);
                    c.free = slot.link.load(Ordering::Acquire);
                    c.nfree -= 1;
                    slot.link.store(chain, Ordering::Relaxed);
                    count += 1;
                    chain = pack(node, count);
                }
                let to = if c.nfree == 0 {
                    Listed::Nowhere
                } else {
                    Listed::Partial
                };
                (c.listed, to)
            };
            self.relist(s, from, to);
        }
        self.central -= count;
        chain
    }

    /// A chain for a refill: a whole batch if there is one, else up to `want`
    /// objects from the slab lists.
    pub(super) fn take<T>(&mut self, want: u64, delay: Duration) -> Option<u64> {
        let chain = match self.chains.pop() {
            Some(chain) => {
                self.chained -= chain_len(chain);
                chain
            }
            None if self.central > 0 => self.take_central::<T>(want),
            None => return None,
        };
        self.demand.note(chain_len(chain), delay);
        Some(chain)
    }

    /// Takes an owned chain of this node's slots, then gives up what the pool
    /// keeps beyond its bound (see `release`).
    pub(super) fn put<T>(&mut self, chain: u64, policy: &Policy, freed: &mut SlabList) {
        let keep = policy.keep_idle + self.demand.recent(policy.purge_delay);
        let n = chain_len(chain);
        if self.chained + n <= keep {
            self.chains.push(chain);
            self.chained += n;
        } else {
            self.chain_to_central::<T>(chain);
        }
        self.release::<T>(keep, freed);
    }

    /// Records `n` new objects made for this node (a grow): demand too.
    pub(super) fn note_demand(&mut self, n: u64, delay: Duration) {
        self.demand.note(n, delay);
    }

    /// Moves chains beyond `keep` to the slab lists, then unlists empty slabs into
    /// `freed` while the idle objects left are at least `keep`.
    pub(super) fn release<T>(&mut self, keep: u64, freed: &mut SlabList) {
        while self.chained > keep {
            let Some(chain) = self.chains.pop() else {
                break;
            };
            self.chained -= chain_len(chain);
            self.chain_to_central::<T>(chain);
        }
        while let Some(s) = self.empty.first() {
            let len = u64::from(s.head().len);
            if self.idle() < keep + len {
                break;
            }
            self.relist(s, Listed::Empty, Listed::Nowhere);
            // SAFETY: the depot lock is held: the slab's objects leave the depot
            // with it (its free list is forgotten).
            unsafe {
                let c = s.central();
                c.free = 0;
                c.nfree = 0;
            }
            self.central -= len;
            // SAFETY: the slab just left this depot's lists: its links are free,
            // and `freed` is the caller's own list.
            unsafe { freed.push(s, SlabRef::depot_links) };
        }
        // Lists that emptied give their memory back too.
        if self.chains.capacity() > 64 && self.chains.len() < self.chains.capacity() / 4 {
            self.chains.shrink_to(self.chains.len() * 2);
        }
    }
}

/// Cuts an owned chain after its first `k` slots (`0 < k < len`): the first `k`
/// are relinked with their own lengths, the rest is a chain as it was.
fn split<T>(chain: u64, k: u64) -> (u64, u64) {
    let mut at = chain;
    for i in 0..k {
        // SAFETY: the chain's slots are the caller's.
        let slot = unsafe { Slot::<T>::from_node(chain_node(at)) };
        let next = slot.link.load(Ordering::Acquire);
        let link = if i + 1 < k {
            pack(chain_node(next), k - i - 1)
        } else {
            0
        };
        slot.link.store(link, Ordering::Relaxed);
        at = next;
    }
    (pack(chain_node(chain), k), at)
}

/// The shrink policy of a pool (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(super) struct Policy {
    /// Idle objects kept whatever the demand (per depot).
    pub(super) keep_idle: u64,
    /// How long objects handed out count as demand.
    pub(super) purge_delay: Duration,
}

/// Owned slots being chained for the depots, one chain per home node: how batches
/// go home. A plain pool's slots all have home 0 (one chain).
pub(super) struct Homeward {
    /// `(home, chain)` of the first home seen; `chain` 0 while empty.
    pub(super) first: (u32, u64),
    /// The other homes seen.
    pub(super) others: Vec<(u32, u64)>,
    pub(super) count: u64,
}

impl Homeward {
    pub(super) fn new() -> Homeward {
        Homeward {
            first: (0, 0),
            others: Vec::new(),
            count: 0,
        }
    }

    /// Adds an owned slot to its home's chain (overwriting its link).
    pub(super) fn add<T>(&mut self, slot: &Slot<T>) {
        let home = slot.home();
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
    pub(super) fn send<T: Send>(self, pool: &Pool<T>) {
        for (home, chain) in std::iter::once(self.first).chain(self.others) {
            if chain != 0 {
                pool.deposit(home as usize, chain);
            }
        }
    }
}

impl<T> Pool<T> {
    /// The pool's depots: one per node.
    pub(super) fn depot_count(&self) -> usize {
        1 + self.more_depots.len()
    }
}

impl<T: Send> Pool<T> {
    /// The depot of node `node` (below the pool's nodes).
    pub(super) fn depot(&self, node: usize) -> &Mutex<Depot> {
        match node {
            0 => &self.depot0,
            n => &self.more_depots[n - 1],
        }
    }

    /// The node whose depot and slabs the calling thread uses: the node its NUMA
    /// sections read (on the portable backend, its CPU's node), 0 beyond the pool's
    /// nodes, and always 0 in a pool of one node.
    pub(super) fn node_now(&self) -> usize {
        let nodes = self.depot_count();
        if nodes == 1 {
            return 0;
        }
        let topology = self.topology.unwrap_or_else(crate::numa::topology);
        let node = cid::thread_node(|cpu| topology.node_of_cpu(cpu)) as usize;
        if node < nodes { node } else { 0 }
    }

    /// A chain for a refill from node `node`'s depot.
    pub(super) fn take(&self, node: usize) -> Option<u64> {
        let _fork = fork_hold();
        lock(self.depot(node)).take::<T>(self.batch, self.policy().purge_delay)
    }

    /// Gives an owned chain of node `home`'s slots to that node's depot, and frees
    /// what the depot then gives up.
    pub(super) fn deposit(&self, home: usize, chain: u64) {
        let mut freed = SlabList::new();
        {
            let _fork = fork_hold();
            lock(self.depot(home)).put::<T>(chain, self.policy(), &mut freed);
        }
        self.free_slabs(freed);
    }

    /// Records objects made for node `node` as its depot's demand.
    pub(super) fn note_demand(&self, node: usize, n: u64) {
        let _fork = fork_hold();
        lock(self.depot(node)).note_demand(n, self.policy().purge_delay);
    }

    /// Frees every empty slab of every depot, whatever the keep bound (`trim`).
    pub(super) fn release_all(&self) {
        for node in 0..self.depot_count() {
            let mut freed = SlabList::new();
            {
                let _fork = fork_hold();
                lock(self.depot(node)).release::<T>(0, &mut freed);
            }
            self.free_slabs(freed);
        }
    }

    /// A chain from another node's depot than `node`'s (a NUMA pool at its bound).
    pub(super) fn steal(&self, node: usize) -> Option<u64> {
        let nodes = self.depot_count();
        (1..nodes)
            .map(|k| (node + k) % nodes)
            .find_map(|other| self.take(other))
    }

    /// Takes the chain's first slot, and puts the rest in the caller's cache: with
    /// one section when the cache is empty (a plain pool), else slot by slot; what
    /// does not fit goes back to the depot of the chain's home.
    pub(super) fn install(&self, chain: u64) -> &Slot<T> {
        let chain = if chain_len(chain) > self.batch {
            // A new slab's chain: a batch for the caller and its cache, the rest to
            // the depot (a cache never takes more than a batch at once).
            let (batch, rest) = split::<T>(chain, self.batch);
            // SAFETY: chains hold slots of this pool, owned by the caller.
            let home = unsafe { Slot::<T>::from_node(chain_node(rest)) }.home();
            self.deposit(home as usize, rest);
            batch
        } else {
            chain
        };
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
            self.deposit(first.home() as usize, rest);
        }
        first
    }

    /// Objects in the caches, as their heads say now (racy, for decisions only).
    pub(super) fn cached_elsewhere(&self) -> u64 {
        list::cached(self.heads())
    }

    /// The cache is full: `slot` and up to `batch - 1` objects of the cache go to the
    /// depots, one chain per home node (one chain in a plain pool).
    #[cold]
    #[inline(never)]
    pub(super) fn spill(&self, slot: &Slot<T>) {
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
