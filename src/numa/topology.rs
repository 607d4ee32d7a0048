//! [`Topology`]: the machine's NUMA nodes, their CPUs and distances, from hwloc (feature
//! `numa`), sysfs, or built by hand for tests (uniform and synthetic layouts).

use std::fmt;

/// Most nodes a topology may have, and the bound of their ids: Linux's `MAX_NUMNODES`
/// is at most `1 << 10` (`CONFIG_NODES_SHIFT` <= 10).
pub(crate) const MAX_NODES: u32 = 1 << 10;
/// Bound of the CPU ids a topology may hold (Linux's `NR_CPUS` is at most 8192).
pub(crate) const MAX_CPUS: u32 = 1 << 16;
/// The SLIT distance of a node to itself (`LOCAL_DISTANCE` in the kernel).
pub(crate) const LOCAL_DISTANCE: u32 = 10;
/// The distance [`Topology::uniform`] puts between two different nodes
/// (`REMOTE_DISTANCE` in the kernel).
pub(crate) const REMOTE_DISTANCE: u32 = 20;
/// `cpu_node` entry of a CPU that belongs to no node.
const NO_NODE: u32 = u32::MAX;

/// A NUMA node.
///
/// ```
/// let topology = percid::numa::Topology::uniform(2, 4)?;
/// let node = topology.node(1).expect("node 1");
/// assert_eq!((node.id, node.cpus.as_slice(), node.has_memory), (1, &[4, 5, 6, 7][..], true));
/// # Ok::<(), percid::numa::TopologyError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The node's id: the kernel's node number (rseq `node_id`, `nodeN` in sysfs,
    /// hwloc's OS index).
    pub id: u32,
    /// The node's CPUs, sorted. A node may have none (memory-only nodes, CXL memory).
    pub cpus: Vec<u32>,
    /// Whether the node has memory of its own. A node without memory (CPUs only)
    /// cannot hold a bound plane.
    pub has_memory: bool,
}

/// Where a [`Topology`] came from.
///
/// ```
/// use percid::numa::{Topology, TopologySource};
///
/// assert_eq!(Topology::uniform(2, 1)?.source(), TopologySource::Uniform);
/// // This machine's: hwloc (feature `numa`), sysfs, or the single-node fallback.
/// println!("topology from {}", percid::numa::topology().source());
/// # Ok::<(), percid::numa::TopologyError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopologySource {
    /// hwloc's discovery of this machine (feature `numa`).
    Hwloc,
    /// `/sys/devices/system/node` of this machine.
    Sysfs,
    /// An hwloc synthetic description (`Topology::from_hwloc_synthetic`, feature `numa`).
    Synthetic,
    /// [`Topology::uniform`].
    Uniform,
    /// The last resort: one node with every possible CPU (a kernel without NUMA
    /// support has no `/sys/devices/system/node`).
    SingleNode,
}

impl fmt::Display for TopologySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TopologySource::Hwloc => "hwloc",
            TopologySource::Sysfs => "sysfs",
            TopologySource::Synthetic => "synthetic",
            TopologySource::Uniform => "uniform",
            TopologySource::SingleNode => "single node",
        })
    }
}

/// Why a topology could not be built.
///
/// ```
/// use percid::numa::{Topology, TopologyError};
///
/// assert_eq!(Topology::uniform(0, 4), Err(TopologyError::NoNodes));
/// let err = Topology::uniform(2048, 1).unwrap_err();
/// assert!(matches!(err, TopologyError::TooManyNodes { nodes: 2048, max: 1024 }));
/// println!("{err}");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopologyError {
    /// A topology needs at least one node.
    NoNodes,
    /// More nodes, or a larger node id, than Linux supports.
    TooManyNodes {
        /// Nodes asked for (or the largest node id + 1).
        nodes: u64,
        /// The limit.
        max: u32,
    },
    /// More CPUs, or a larger CPU id, than Linux supports.
    TooManyCpus {
        /// CPUs asked for (or the largest CPU id + 1).
        cpus: u64,
        /// The limit.
        max: u32,
    },
    /// Two nodes with the same id.
    DuplicateNode(u32),
    /// hwloc failed (feature `numa`): its message.
    Hwloc(String),
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologyError::NoNodes => f.write_str("a topology needs at least one NUMA node"),
            TopologyError::TooManyNodes { nodes, max } => {
                write!(f, "{nodes} NUMA nodes exceed the limit of {max}")
            }
            TopologyError::TooManyCpus { cpus, max } => {
                write!(f, "{cpus} CPUs exceed the limit of {max}")
            }
            TopologyError::DuplicateNode(id) => write!(f, "NUMA node {id} appears twice"),
            TopologyError::Hwloc(message) => write!(f, "hwloc: {message}"),
        }
    }
}

impl std::error::Error for TopologyError {}

/// The NUMA nodes of a machine (or of a made-up layout), their CPUs and distances.
///
/// [`crate::numa::topology()`] is this machine's, discovered once; the constructors here
/// build others (tests run many-node layouts on one-node machines with them).
///
/// ```
/// use percid::numa::Topology;
///
/// // This machine's (at least one node, whatever the machine).
/// let here = percid::numa::topology();
/// assert!(here.node_count() >= 1 && here.is_system());
///
/// // A made-up two-node layout: CPUs 0-1 on node 0, 2-3 on node 1.
/// let two = Topology::uniform(2, 2)?;
/// assert_eq!(two.node_of_cpu(3), Some(1));
/// assert_eq!(two.distance(0, 1), Some(20));
/// assert_eq!(two.distances(), Some(&[10, 20, 20, 10][..]));
/// # Ok::<(), percid::numa::TopologyError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Sorted by id.
    nodes: Vec<Node>,
    /// Above every possible node id: the length of per-node directories.
    node_id_bound: u32,
    /// Row-major over `nodes`, `nodes.len()²` entries.
    distances: Option<Vec<u32>>,
    source: TopologySource,
    system: bool,
    /// Node id of every CPU id below its length, [`NO_NODE`] for CPUs of no node.
    cpu_node: Vec<u32>,
}

impl Topology {
    /// Discovers this machine's topology now (the cached one is
    /// [`crate::numa::topology()`]): hwloc with feature `numa` (sysfs when hwloc fails),
    /// else sysfs; one node with every possible CPU when neither works. Never fails.
    pub fn system() -> Topology {
        #[cfg(feature = "numa")]
        if let Some(topology) = super::hwloc::system_topology() {
            return topology;
        }
        super::sysfs::discover(std::path::Path::new(super::sysfs::ROOT), true)
    }

    /// A made-up layout of `nodes` nodes with `cpus_per_node` CPUs each: node `i` holds
    /// CPUs `i * cpus_per_node .. (i + 1) * cpus_per_node` and memory, the distance
    /// is 10 from a node to itself and 20 between two nodes. `cpus_per_node` may be
    /// 0 (nodes without CPUs).
    ///
    /// # Errors
    ///
    /// [`TopologyError::NoNodes`] when `nodes` is 0, [`TopologyError::TooManyNodes`]
    /// above 1024 nodes, [`TopologyError::TooManyCpus`] above 65536 CPUs in all.
    pub fn uniform(nodes: u32, cpus_per_node: u32) -> Result<Topology, TopologyError> {
        if nodes == 0 {
            return Err(TopologyError::NoNodes);
        }
        if nodes > MAX_NODES {
            return Err(TopologyError::TooManyNodes {
                nodes: nodes.into(),
                max: MAX_NODES,
            });
        }
        let cpus = u64::from(nodes) * u64::from(cpus_per_node);
        if cpus > u64::from(MAX_CPUS) {
            return Err(TopologyError::TooManyCpus {
                cpus,
                max: MAX_CPUS,
            });
        }
        let list = (0..nodes)
            .map(|id| Node {
                id,
                cpus: (id * cpus_per_node..(id + 1) * cpus_per_node).collect(),
                has_memory: true,
            })
            .collect();
        let n = nodes as usize;
        let distances = (0..n * n)
            .map(|i| {
                if i / n == i % n {
                    LOCAL_DISTANCE
                } else {
                    REMOTE_DISTANCE
                }
            })
            .collect();
        Topology::from_parts(list, nodes, Some(distances), TopologySource::Uniform, false)
    }

    /// The topology of an hwloc synthetic description, e.g. `"pack:2 [numa] core:2
    /// pu:1"` (two nodes, CPUs 0-1 and 2-3); see hwloc's documentation of synthetic
    /// topologies. Not this machine's: memory is never bound through it.
    ///
    /// # Errors
    ///
    /// [`TopologyError::Hwloc`] when hwloc rejects the description, the other
    /// variants when the layout exceeds the limits of [`Topology::uniform`].
    ///
    /// ```
    /// let t = percid::numa::Topology::from_hwloc_synthetic("pack:2 [numa] core:2 pu:1")?;
    /// assert_eq!(t.node_count(), 2);
    /// assert_eq!(t.node_of_cpu(2), Some(1));
    /// # Ok::<(), percid::numa::TopologyError>(())
    /// ```
    #[cfg(feature = "numa")]
    #[cfg_attr(docsrs, doc(cfg(feature = "numa")))]
    pub fn from_hwloc_synthetic(description: &str) -> Result<Topology, TopologyError> {
        super::hwloc::synthetic(description)
    }

    /// Builds a topology: sorts `nodes` by id (and `distances`, row-major in the
    /// order of `nodes` as given, with them), sorts each node's CPUs, raises
    /// `node_id_bound` above the largest id. A matrix of the wrong size is dropped; a
    /// single node without one gets `[10]`.
    pub(crate) fn from_parts(
        mut nodes: Vec<Node>,
        node_id_bound: u32,
        distances: Option<Vec<u32>>,
        source: TopologySource,
        system: bool,
    ) -> Result<Topology, TopologyError> {
        let n = nodes.len();
        if n == 0 {
            return Err(TopologyError::NoNodes);
        }
        let max_id = nodes.iter().map(|node| node.id).max().unwrap_or(0);
        let bound = node_id_bound.max(max_id.saturating_add(1));
        if n > MAX_NODES as usize || bound > MAX_NODES {
            return Err(TopologyError::TooManyNodes {
                nodes: u64::from(bound).max(n as u64),
                max: MAX_NODES,
            });
        }
        let mut cpu_limit = 0u32;
        for node in &mut nodes {
            node.cpus.sort_unstable();
            node.cpus.dedup();
            if let Some(&last) = node.cpus.last() {
                if last >= MAX_CPUS {
                    return Err(TopologyError::TooManyCpus {
                        cpus: u64::from(last) + 1,
                        max: MAX_CPUS,
                    });
                }
                cpu_limit = cpu_limit.max(last + 1);
            }
        }
        // Sort the nodes and permute the matrix with them.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| nodes[i].id);
        if let Some(pair) = order.windows(2).find(|w| nodes[w[0]].id == nodes[w[1]].id) {
            return Err(TopologyError::DuplicateNode(nodes[pair[0]].id));
        }
        let distances = match distances {
            Some(matrix) if matrix.len() == n * n => Some(
                (0..n * n)
                    .map(|i| matrix[order[i / n] * n + order[i % n]])
                    .collect(),
            ),
            _ if n == 1 => Some(vec![LOCAL_DISTANCE]),
            _ => None,
        };
        let mut slots: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
        let nodes: Vec<Node> = order.iter().filter_map(|&i| slots[i].take()).collect();
        // A CPU listed by two nodes (a corrupt source) belongs to the first.
        let mut cpu_node = vec![NO_NODE; cpu_limit as usize];
        for node in &nodes {
            for &cpu in &node.cpus {
                let slot = &mut cpu_node[cpu as usize];
                if *slot == NO_NODE {
                    *slot = node.id;
                }
            }
        }
        Ok(Topology {
            nodes,
            node_id_bound: bound,
            distances,
            source,
            system,
            cpu_node,
        })
    }

    /// One node, CPU 0, memory: what [`Topology::system`] returns should even the
    /// single-node fallback be refused (it cannot be).
    pub(crate) fn last_resort(system: bool) -> Topology {
        Topology {
            nodes: vec![Node {
                id: 0,
                cpus: vec![0],
                has_memory: true,
            }],
            node_id_bound: 1,
            distances: Some(vec![LOCAL_DISTANCE]),
            source: TopologySource::SingleNode,
            system,
            cpu_node: vec![0],
        }
    }

    /// The nodes, sorted by id (at least one).
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Number of nodes (at least 1).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The node with id `id`.
    pub fn node(&self, id: u32) -> Option<&Node> {
        self.index_of(id).map(|i| &self.nodes[i])
    }

    /// One above the largest node id the kernel may ever report (at least 1): the
    /// length of per-node directories, indexed by rseq `node_id`. From sysfs
    /// `node/possible` (`nr_node_ids`) where it exists, so it may exceed the largest
    /// id of [`nodes`](Topology::nodes) (nodes that can be hot-plugged).
    pub fn node_id_bound(&self) -> u32 {
        self.node_id_bound
    }

    /// The node of CPU `cpu`, `None` for a CPU that no node lists.
    #[inline]
    pub fn node_of_cpu(&self, cpu: u32) -> Option<u32> {
        match self.cpu_node.get(cpu as usize) {
            Some(&node) if node != NO_NODE => Some(node),
            _ => None,
        }
    }

    /// The distance from node `from` to node `to` (ids), in SLIT units (10 is local),
    /// when both exist and the source gave distances.
    pub fn distance(&self, from: u32, to: u32) -> Option<u32> {
        let matrix = self.distances.as_deref()?;
        let (from, to) = (self.index_of(from)?, self.index_of(to)?);
        matrix.get(from * self.nodes.len() + to).copied()
    }

    /// The distance matrix, row-major over [`nodes`](Topology::nodes) in their order
    /// (`node_count()²` entries), when the source gave one. A single node without
    /// distances from its source gets `[10]`.
    pub fn distances(&self) -> Option<&[u32]> {
        self.distances.as_deref()
    }

    /// Where this topology came from.
    pub fn source(&self) -> TopologySource {
        self.source
    }

    /// Whether this is this machine's topology ([`Topology::system`]), the only kind
    /// whose node ids binding memory means anything for.
    pub fn is_system(&self) -> bool {
        self.system
    }

    fn index_of(&self, id: u32) -> Option<usize> {
        self.nodes.binary_search_by_key(&id, |node| node.id).ok()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn uniform_layout() {
        let t = Topology::uniform(4, 2).unwrap();
        assert_eq!(t.node_count(), 4);
        assert_eq!(t.node_id_bound(), 4);
        assert_eq!(t.source(), TopologySource::Uniform);
        assert!(!t.is_system());
        assert_eq!(t.nodes()[3].cpus, vec![6, 7]);
        assert_eq!(t.node_of_cpu(5), Some(2));
        assert_eq!(t.node_of_cpu(8), None);
        assert_eq!(t.distance(1, 1), Some(10));
        assert_eq!(t.distance(1, 2), Some(20));
        assert_eq!(t.distances().unwrap().len(), 16);
        assert_eq!(Topology::uniform(0, 1), Err(TopologyError::NoNodes));
        assert!(matches!(
            Topology::uniform(MAX_NODES + 1, 1),
            Err(TopologyError::TooManyNodes { .. })
        ));
        assert!(matches!(
            Topology::uniform(MAX_NODES, 65),
            Err(TopologyError::TooManyCpus { .. })
        ));
        let cpuless = Topology::uniform(2, 0).unwrap();
        assert!(cpuless.nodes().iter().all(|n| n.cpus.is_empty()));
    }

    #[test]
    fn parts_are_sorted_with_their_matrix() {
        let node = |id, cpus: &[u32]| Node {
            id,
            cpus: cpus.to_vec(),
            has_memory: true,
        };
        // Given in the order 3, 1: the distance from 3 to 1 is 31, from 1 to 3 is 13.
        let t = Topology::from_parts(
            vec![node(3, &[5, 4]), node(1, &[0])],
            0,
            Some(vec![10, 31, 13, 11]),
            TopologySource::Uniform,
            false,
        )
        .unwrap();
        assert_eq!(t.nodes()[0].id, 1);
        assert_eq!(t.nodes()[1].cpus, vec![4, 5]);
        assert_eq!(t.distances(), Some(&[11, 13, 31, 10][..]));
        assert_eq!(t.distance(3, 1), Some(31));
        assert_eq!(t.distance(1, 3), Some(13));
        assert_eq!(t.node_id_bound(), 4);
        assert_eq!(t.node(3).map(|n| n.cpus.len()), Some(2));
        assert_eq!(
            Topology::from_parts(
                vec![node(1, &[]), node(1, &[])],
                0,
                None,
                TopologySource::Uniform,
                false
            ),
            Err(TopologyError::DuplicateNode(1))
        );
        assert!(matches!(
            Topology::from_parts(
                vec![node(0, &[MAX_CPUS])],
                1,
                None,
                TopologySource::Uniform,
                false
            ),
            Err(TopologyError::TooManyCpus { .. })
        ));
    }

    #[test]
    fn display() {
        assert_eq!(TopologySource::Hwloc.to_string(), "hwloc");
        assert_eq!(TopologySource::SingleNode.to_string(), "single node");
        assert!(TopologyError::NoNodes.to_string().contains("at least one"));
    }
}
