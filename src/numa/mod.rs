//! NUMA: the machine's topology, and node-local memory.
//!
//! # What percid guarantees
//!
//! NUMA-aware storage keeps one *plane* of per-cid storage per NUMA node. A NUMA-aware
//! operation reads the thread's `node_id` and `mm_cid` in the same rseq critical
//! section and writes the plane of that node, at that cid: the pair cannot go stale
//! between the read and the commit (a migration aborts the section).
//!
//! * With feature `numa`, each plane is bound to its node (`MPOL_BIND`, strict: the
//!   kernel never falls back to another node), so data written on node *n* lives in
//!   node *n*'s memory. The price of strictness: when node *n* runs out of memory, a
//!   fault in its plane does not fall back to another node, the kernel's OOM killer
//!   runs instead (from inside whatever operation touched a new page). Where that
//!   is the wrong trade, `PERCID_NUMA_BIND=off` keeps first-touch placement.
//! * Without it, placement is by first touch: a plane's pages come from the node of
//!   the thread that first writes them, which is the plane's node. That holds except
//!   when the node was out of memory at the fault (the kernel then takes another
//!   node's) or when automatic NUMA balancing later migrates the pages.
//! * A thread moved to node *m* writes node *m*'s memory from its next operation on.
//!
//! The planes are those of a NUMA arena ([`crate::cid::Arena::numa`],
//! [`crate::cid::numa_global`]); [`crate::NumaCounter`] is the NUMA-aware counter.
//!
//! Planes of nodes the machine lacks (tests lay out many nodes on a one-node machine)
//! cannot be bound: their [`Binding`] is [`Binding::Failed`] with the reason, and
//! they are placed by first touch.
//!
//! # Topology
//!
//! [`topology()`] is the machine's, discovered once:
//!
//! 1. with feature `numa`, hwloc's view of the system ([`TopologySource::Hwloc`]);
//! 2. else, or when hwloc fails, `/sys/devices/system/node` ([`TopologySource::Sysfs`]);
//! 3. without that directory (a kernel built without NUMA support), one node with
//!    every possible CPU ([`TopologySource::SingleNode`]). Discovery never fails.
//!
//! [`Topology::node_id_bound`] bounds every node id the kernel may report (rseq
//! `node_id`): it comes from sysfs `node/possible` in both builds, so it may exceed
//! the ids of the nodes that exist now. [`Topology::uniform`] and, with feature
//! `numa`, `Topology::from_hwloc_synthetic` build made-up layouts for tests.
//!
//! # Binding and placement
//!
//! Planes are bound right after they are reserved, before any page is touched
//! (`MAP_NORESERVE` address space): the policy then decides where every page goes.
//! With feature `numa` binding goes through hwloc's *system* topology
//! (`MemoryBindingPolicy::Bind`, `MemoryBindingFlags::STRICT`); binding through a
//! synthetic topology would silently do nothing.
//!
//! [`pages_on`] and [`placement`] tell where a range's pages are (`move_pages(2)` as a
//! query: it never faults a page in), so tests and `percid status` can check the
//! guarantee. With feature `numa`, `hwloc_binding_of` reads a binding back.
//!
//! # Environment
//!
//! | variable | effect |
//! |---|---|
//! | `PERCID_NUMA_BIND=off` | bind nothing: planes are placed by first touch, in both builds |
//! | `HWLOC_*` | hwloc's own variables (feature `numa`); a topology that is not this system's (`HWLOC_SYNTHETIC`, `HWLOC_XMLFILE`) is not used: sysfs is read, and binding fails |
//!
//! # Building with feature `numa`
//!
//! The feature links the system's hwloc (2.8 or newer) through `hwlocality`; building
//! it needs `pkg-config` and hwloc's development files (Debian and Ubuntu:
//! `apt-get install libhwloc-dev libudev-dev pkg-config`). Without the feature the
//! crate does not link hwloc.

#[cfg(feature = "numa")]
mod hwloc;
pub(crate) mod memory;
mod sysfs;
mod topology;

#[cfg(feature = "numa")]
#[cfg_attr(docsrs, doc(cfg(feature = "numa")))]
pub use hwloc::hwloc_binding_of;
pub use memory::{Binding, Placement, pages_on, placement};
pub use topology::{Node, Topology, TopologyError, TopologySource};

/// The machine's topology, discovered on the first call ([`Topology::system`]): hwloc
/// with feature `numa`, else sysfs; one node with every possible CPU as the last
/// resort. Never fails.
///
/// ```
/// let topology = percid::numa::topology();
/// for node in topology.nodes() {
///     println!("node {}: cpus {:?}", node.id, node.cpus);
/// }
/// // The node of the CPU this thread runs on (a CPU no node lists gives `None`).
/// let _node = topology.node_of_cpu(percid::current_cpu());
/// ```
pub fn topology() -> &'static Topology {
    // Never waited for (see `cid::fork::Lazy`): a child forked while another thread
    // of the parent was discovering discovers again.
    static TOPOLOGY: crate::cid::fork::Lazy<Topology> = crate::cid::fork::Lazy::new();
    TOPOLOGY.get_or_init(Topology::system)
}
