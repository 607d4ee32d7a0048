//! hwloc (through `hwlocality`, feature `numa`): the topology of this machine or of a
//! synthetic description, and memory binding through this machine's topology.
//!
//! hwloc 2 makes NUMA nodes *memory children* of the objects whose CPUs they serve, not
//! ancestors of those CPUs: a node's CPUs are its cpuset, and a CPU's node is found by
//! inverting the nodes' cpusets. Node ids are hwloc's OS indexes (the kernel's node
//! numbers); CPU ids are PU OS indexes.
//!
//! Binding goes through the system topology only: hwloc silently does nothing when
//! asked to bind through a synthetic one.

use super::memory::Binding;
use super::topology::{Node, Topology, TopologyError, TopologySource};
use hwlocality::Topology as HwTopology;
use hwlocality::memory::binding::{MemoryBindingFlags, MemoryBindingPolicy};
use hwlocality::memory::nodeset::NodeSet;
use hwlocality::object::distance::DistancesKind;
use hwlocality::object::types::ObjectType;
use hwlocality::topology::builder::BuildFlags;

/// The system topology binding uses, loaded on the first binding (never waited for:
/// see `cid::fork::Lazy`).
static SYSTEM: crate::cid::fork::Lazy<Result<HwTopology, String>> = crate::cid::fork::Lazy::new();

fn system_handle() -> Result<&'static HwTopology, &'static str> {
    SYSTEM
        .get_or_init(|| {
            let topology = HwTopology::new().map_err(|e| e.to_string())?;
            if topology.is_this_system() {
                Ok(topology)
            } else {
                // HWLOC_SYNTHETIC or HWLOC_XMLFILE in the environment.
                Err("hwloc's topology does not describe this system \
                     (HWLOC_SYNTHETIC or HWLOC_XMLFILE set?)"
                    .into())
            }
        })
        .as_ref()
        .map_err(String::as_str)
}

/// This machine's topology as hwloc sees it now, `None` when hwloc fails or describes
/// another machine (then the caller reads sysfs).
///
/// The topology includes what this process's cgroup disallows (as sysfs lists it):
/// [`Topology::node_of_cpu`] must answer for any CPU the kernel may report.
pub(crate) fn system_topology() -> Option<Topology> {
    let hw = HwTopology::builder()
        .with_flags(BuildFlags::INCLUDE_DISALLOWED)
        .ok()?
        .build()
        .ok()?;
    if !hw.is_this_system() {
        return None;
    }
    // hwloc knows the nodes that exist; rseq `node_id` is bounded by the possible ones.
    let possible = super::sysfs::possible_node_bound(std::path::Path::new(super::sysfs::ROOT));
    convert(&hw, possible.unwrap_or(1), TopologySource::Hwloc, true).ok()
}

/// The topology of a synthetic description (`"pack:2 [numa] core:2 pu:1"`).
pub(crate) fn synthetic(description: &str) -> Result<Topology, TopologyError> {
    let hw = HwTopology::builder()
        .from_synthetic(description)
        .map_err(|e| TopologyError::Hwloc(format!("synthetic description {description:?}: {e}")))?
        .build()
        .map_err(|e| TopologyError::Hwloc(e.to_string()))?;
    convert(&hw, 1, TopologySource::Synthetic, false)
}

fn convert(
    hw: &HwTopology,
    node_id_bound: u32,
    source: TopologySource,
    system: bool,
) -> Result<Topology, TopologyError> {
    let mut nodes = Vec::new();
    for object in hw.objects_with_type(ObjectType::NUMANode) {
        let Some(id) = object.os_index().and_then(|i| u32::try_from(i).ok()) else {
            continue;
        };
        let mut cpus = Vec::new();
        if let Some(cpuset) = object.cpuset() {
            for cpu in cpuset.iter_set() {
                let cpu = usize::from(cpu);
                cpus.push(u32::try_from(cpu).map_err(|_| TopologyError::TooManyCpus {
                    cpus: cpu as u64,
                    max: super::topology::MAX_CPUS,
                })?);
            }
        }
        nodes.push(Node {
            id,
            cpus,
            has_memory: object.total_memory() > 0,
        });
    }
    let distances = latency_matrix(hw, &nodes);
    Topology::from_parts(nodes, node_id_bound, distances, source, system)
}

/// hwloc's NUMA latency matrix (the SLIT on Linux), row-major in the order of
/// `nodes`. hwloc has none for a single node.
fn latency_matrix(hw: &HwTopology, nodes: &[Node]) -> Option<Vec<u32>> {
    let matrices = hw.distances_with_type(None, ObjectType::NUMANode).ok()?;
    let matrix = matrices.iter().find(|d| {
        d.kind().contains(DistancesKind::MEANS_LATENCY) && d.num_objects() == nodes.len()
    })?;
    // The matrix's objects in its own order, as positions in `nodes`.
    let position: Vec<usize> = matrix
        .objects()
        .map(|object| {
            let id = u32::try_from(object?.os_index()?).ok()?;
            nodes.iter().position(|node| node.id == id)
        })
        .collect::<Option<Vec<usize>>>()?;
    let n = nodes.len();
    let values = matrix.distances();
    let mut out = vec![0u32; n * n];
    for (row, &from) in position.iter().enumerate() {
        for (col, &to) in position.iter().enumerate() {
            out[from * n + to] = u32::try_from(*values.get(row * n + col)?).ok()?;
        }
    }
    Some(out)
}

/// Binds `[ptr, ptr + len)` to node `node` with `MPOL_BIND` through the system
/// topology (see [`super::memory::bind`]).
///
/// # Safety
///
/// `[ptr, ptr + len)` is mapped (readable) for the duration of the call.
pub(crate) unsafe fn bind(ptr: *mut u8, len: usize, node: u32) -> Binding {
    let hw = match system_handle() {
        Ok(hw) => hw,
        Err(reason) => return Binding::Failed(format!("no hwloc topology: {reason}")),
    };
    let Some(object) = usize::try_from(node)
        .ok()
        .and_then(|n| hw.node_with_os_index(n))
    else {
        return Binding::Failed(format!("this machine has no NUMA node {node}"));
    };
    if object.total_memory() == 0 {
        return Binding::Failed(format!("NUMA node {node} has no memory"));
    }
    let Some(nodeset) = object.nodeset().map(|set| set.clone_target()) else {
        return Binding::Failed(format!("hwloc gives NUMA node {node} no nodeset"));
    };
    // hwloc only passes the address range to mbind(2), it never reads or writes it.
    // SAFETY: the caller keeps `[ptr, ptr + len)` mapped for the call; atomics make
    // no claim that nobody writes the bytes meanwhile.
    let area =
        unsafe { std::slice::from_raw_parts(ptr.cast::<std::sync::atomic::AtomicU8>(), len) };
    match hw.bind_memory_area(
        area,
        &nodeset,
        MemoryBindingPolicy::Bind,
        MemoryBindingFlags::STRICT,
    ) {
        Ok(()) => Binding::Strict,
        Err(e) => Binding::Failed(format!("hwloc_set_area_membind to node {node}: {e}")),
    }
}

/// The memory binding hwloc reads back for `[ptr, ptr + len)` (through the system
/// topology): the bound node ids and whether the policy is a strict `Bind`, `None`
/// when hwloc fails (or `len` is 0). A cross-check of [`Binding::Strict`] for tests:
/// a region nobody bound reads back as every node, policy not `Bind`.
///
/// # Safety
///
/// `[ptr, ptr + len)` is mapped (readable) for the duration of the call.
pub unsafe fn hwloc_binding_of(ptr: *const u8, len: usize) -> Option<(Vec<u32>, bool)> {
    let hw = system_handle().ok()?;
    if len == 0 {
        return None;
    }
    // SAFETY: as in `bind`: the caller keeps the range mapped, hwloc only passes the
    // address range to the kernel (get_mempolicy(2)) and never touches the memory.
    let area =
        unsafe { std::slice::from_raw_parts(ptr.cast::<std::sync::atomic::AtomicU8>(), len) };
    let (set, policy) = hw
        .area_memory_binding::<_, NodeSet>(area, MemoryBindingFlags::STRICT)
        .ok()?;
    let nodes = set
        .iter_set()
        .filter_map(|n| u32::try_from(usize::from(n)).ok())
        .collect();
    Some((nodes, policy == Some(MemoryBindingPolicy::Bind)))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn synthetic_two_and_four_nodes() {
        let two = synthetic("pack:2 [numa] core:2 pu:1").unwrap();
        assert_eq!(two.source(), TopologySource::Synthetic);
        assert!(!two.is_system());
        let ids: Vec<u32> = two.nodes().iter().map(|n| n.id).collect();
        assert_eq!(ids, vec![0, 1]);
        assert_eq!(two.nodes()[0].cpus, vec![0, 1]);
        assert_eq!(two.nodes()[1].cpus, vec![2, 3]);
        assert_eq!(two.node_of_cpu(3), Some(1));
        assert_eq!(two.node_id_bound(), 2);
        let four = synthetic("pack:4 [numa] core:1 pu:1").unwrap();
        assert_eq!(four.node_count(), 4);
        assert_eq!(four.node_id_bound(), 4);
        assert_eq!(four.node_of_cpu(2), Some(2));
        assert!(matches!(
            synthetic("not a topology"),
            Err(TopologyError::Hwloc(_))
        ));
    }

    /// hwloc and sysfs agree about this machine (hwloc reads the same files on Linux).
    #[test]
    fn system_matches_sysfs() {
        let hw = system_topology().expect("hwloc describes this system");
        let root = std::path::Path::new(super::super::sysfs::ROOT);
        let sys = super::super::sysfs::discover(root, true);
        assert_eq!(hw.source(), TopologySource::Hwloc);
        assert_eq!(sys.source(), TopologySource::Sysfs);
        assert_eq!(hw.nodes(), sys.nodes());
        assert_eq!(hw.node_id_bound(), sys.node_id_bound());
        assert_eq!(hw.distances(), sys.distances());
        assert!(hw.is_system() && sys.is_system());
    }
}
