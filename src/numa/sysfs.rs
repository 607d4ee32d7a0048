//! The topology as the kernel publishes it in sysfs (`Documentation/ABI/stable/
//! sysfs-devices-node` and `.../testing/sysfs-devices-system-cpu` in the kernel tree).
//!
//! Files read, all under `/sys/devices/system` (the `root`, a parameter so that tests
//! can point it at a fake tree):
//!
//! | file | content |
//! |---|---|
//! | `node/possible` | node ids the kernel may ever use: `max + 1` is `nr_node_ids`, the bound of rseq `node_id` |
//! | `node/online` | the nodes that exist now (the `nodeN` directories) |
//! | `node/has_memory` | the nodes with memory (a node may hold CPUs only) |
//! | `node/nodeN/cpulist` | the CPUs of node N |
//! | `node/nodeN/distance` | one row of the SLIT distance matrix: one entry per online node, in id order |
//! | `cpu/possible` | every CPU the kernel may ever use |
//!
//! Without `node/` (a kernel built with `CONFIG_NUMA=n`) the machine is one node that
//! holds every possible CPU.

use super::topology::{Node, Topology, TopologySource};
use std::fs;
use std::path::Path;

/// The directory the kernel publishes the topology in.
pub(crate) const ROOT: &str = "/sys/devices/system";

/// Largest id a list may name (node or CPU). Linux has at most 1024 nodes
/// (`NODES_SHIFT` <= 10) and 8192 CPUs (`NR_CPUS` with `MAXSMP`); the limit only
/// keeps a corrupt file from making the parser allocate gigabytes.
pub(crate) const LIST_ID_LIMIT: u32 = 1 << 20;

/// Parses a kernel list of ids (`cpulist`, `possible`, `online`, ...): comma-separated
/// ids and inclusive ranges, `"0-3,8-11"` gives `[0, 1, 2, 3, 8, 9, 10, 11]`. Leading and
/// trailing white space (the file's newline) is ignored, an empty list gives no ids.
/// The result is sorted and free of duplicates. `None` when the text is not such a
/// list (an empty item, a reversed range, an id above [`LIST_ID_LIMIT`]).
pub(crate) fn parse_list(text: &str) -> Option<Vec<u32>> {
    let text = text.trim();
    let mut ids = Vec::new();
    if text.is_empty() {
        return Some(ids);
    }
    for item in text.split(',') {
        let item = item.trim();
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?),
            None => {
                let id = item.parse::<u32>().ok()?;
                (id, id)
            }
        };
        if first > last || last > LIST_ID_LIMIT {
            return None;
        }
        ids.extend(first..=last);
    }
    ids.sort_unstable();
    ids.dedup();
    Some(ids)
}

/// Parses one row of `nodeN/distance`: white-space separated distances (`"10 21\n"`).
/// `None` when a field is not a number or the row is empty.
pub(crate) fn parse_distance_row(text: &str) -> Option<Vec<u32>> {
    let row = text
        .split_whitespace()
        .map(|field| field.parse::<u32>().ok())
        .collect::<Option<Vec<u32>>>()?;
    (!row.is_empty()).then_some(row)
}

fn read_list(path: &Path) -> Option<Vec<u32>> {
    parse_list(&fs::read_to_string(path).ok()?)
}

/// `max(node/possible) + 1` under `root`, when the file is there and not empty.
pub(crate) fn possible_node_bound(root: &Path) -> Option<u32> {
    read_list(&root.join("node/possible"))?
        .last()
        .map(|max| max + 1)
}

/// Every possible CPU: `cpu/possible` under `root`, else `0 .. configured CPUs`.
pub(crate) fn possible_cpus(root: &Path) -> Vec<u32> {
    match read_list(&root.join("cpu/possible")) {
        Some(cpus) if !cpus.is_empty() => cpus,
        _ => {
            // SAFETY: sysconf has no preconditions.
            let configured = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
            let configured = u32::try_from(configured)
                .unwrap_or(1)
                .clamp(1, LIST_ID_LIMIT);
            (0..configured).collect()
        }
    }
}

/// Ids of the `nodeN` directories under `root/node` (when `online` is unreadable).
fn node_dirs(root: &Path) -> Vec<u32> {
    let Ok(dir) = fs::read_dir(root.join("node")) else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = dir
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let id = name.to_str()?.strip_prefix("node")?;
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            id.parse::<u32>().ok().filter(|&id| id <= LIST_ID_LIMIT)
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// The topology under `root` (normally [`ROOT`]); `system` says whether it describes
/// this machine. Never fails: without a usable `node/` directory the result is one
/// node holding every possible CPU ([`TopologySource::SingleNode`]).
pub(crate) fn discover(root: &Path, system: bool) -> Topology {
    read_nodes(root, system).unwrap_or_else(|| single_node(root, system))
}

/// One node (id 0) with every possible CPU and memory.
pub(crate) fn single_node(root: &Path, system: bool) -> Topology {
    let node = Node {
        id: 0,
        cpus: possible_cpus(root),
        has_memory: true,
    };
    Topology::from_parts(vec![node], 1, None, TopologySource::SingleNode, system)
        .unwrap_or_else(|_| Topology::last_resort(system))
}

fn read_nodes(root: &Path, system: bool) -> Option<Topology> {
    let node_root = root.join("node");
    if !node_root.is_dir() {
        return None;
    }
    let ids = match read_list(&node_root.join("online")) {
        Some(ids) if !ids.is_empty() => ids,
        _ => node_dirs(root),
    };
    if ids.is_empty() {
        return None;
    }
    // Kernels older than 2.6.26 lack `has_memory`: every node then counts as having some.
    let with_memory = read_list(&node_root.join("has_memory"));
    let nodes: Vec<Node> = ids
        .iter()
        .map(|&id| {
            let dir = node_root.join(format!("node{id}"));
            Node {
                id,
                cpus: read_list(&dir.join("cpulist")).unwrap_or_default(),
                has_memory: with_memory
                    .as_ref()
                    .is_none_or(|with| with.binary_search(&id).is_ok()),
            }
        })
        .collect();
    // Each row lists the distances to the online nodes in id order: a full matrix
    // only when every row is there and as long as the node list.
    let distances: Option<Vec<u32>> = ids
        .iter()
        .map(|id| {
            let path = node_root.join(format!("node{id}/distance"));
            parse_distance_row(&fs::read_to_string(path).ok()?).filter(|row| row.len() == ids.len())
        })
        .collect::<Option<Vec<Vec<u32>>>>()
        .map(|rows| rows.concat());
    let max_id = ids.last().copied().unwrap_or(0);
    let bound = possible_node_bound(root)
        .unwrap_or(max_id + 1)
        .max(max_id + 1);
    Topology::from_parts(nodes, bound, distances, TopologySource::Sysfs, system).ok()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn lists() {
        assert_eq!(parse_list("0"), Some(vec![0]));
        assert_eq!(parse_list("0\n"), Some(vec![0]));
        assert_eq!(parse_list("0-3,8-11"), Some(vec![0, 1, 2, 3, 8, 9, 10, 11]));
        assert_eq!(parse_list(""), Some(vec![]));
        assert_eq!(parse_list("\n"), Some(vec![]));
        assert_eq!(parse_list("  1 - 2 , 5\n"), Some(vec![1, 2, 5]));
        assert_eq!(parse_list("4,0-1,1"), Some(vec![0, 1, 4]));
        assert_eq!(parse_list("3-1"), None);
        assert_eq!(parse_list("0,,1"), None);
        assert_eq!(parse_list("x"), None);
        assert_eq!(parse_list("0-4294967295"), None);
        assert_eq!(
            parse_list(&format!("{LIST_ID_LIMIT}")),
            Some(vec![LIST_ID_LIMIT])
        );
    }

    #[test]
    fn distance_rows() {
        assert_eq!(parse_distance_row("10\n"), Some(vec![10]));
        assert_eq!(parse_distance_row("10 21\n"), Some(vec![10, 21]));
        assert_eq!(parse_distance_row(" 10  21 31 "), Some(vec![10, 21, 31]));
        assert_eq!(parse_distance_row(""), None);
        assert_eq!(parse_distance_row("10 x"), None);
    }

    /// A fake `/sys/devices/system`, removed on drop.
    struct FakeSys(PathBuf);

    impl FakeSys {
        fn new(name: &str) -> FakeSys {
            let dir = std::env::temp_dir().join(format!(
                "percid-sysfs-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            FakeSys(dir)
        }

        fn write(&self, path: &str, content: &str) -> &Self {
            let path = self.0.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
            self
        }
    }

    impl Drop for FakeSys {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn missing_node_dir_is_one_node_with_every_cpu() {
        let sys = FakeSys::new("nonuma");
        sys.write("cpu/possible", "0-5\n");
        let t = discover(&sys.0, false);
        assert_eq!(t.source(), TopologySource::SingleNode);
        assert_eq!(t.node_count(), 1);
        assert_eq!(t.nodes()[0].id, 0);
        assert_eq!(t.nodes()[0].cpus, vec![0, 1, 2, 3, 4, 5]);
        assert!(t.nodes()[0].has_memory);
        assert_eq!(t.node_id_bound(), 1);
        assert_eq!(t.node_of_cpu(5), Some(0));
        assert_eq!(t.node_of_cpu(6), None);
        assert!(!t.is_system());
    }

    #[test]
    fn two_nodes_with_distances() {
        let sys = FakeSys::new("two");
        sys.write("node/possible", "0-3\n")
            .write("node/online", "0-1\n")
            .write("node/has_memory", "0-1\n")
            .write("node/node0/cpulist", "0-1,4\n")
            .write("node/node0/distance", "10 21\n")
            .write("node/node1/cpulist", "2-3\n")
            .write("node/node1/distance", "21 10\n")
            .write("cpu/possible", "0-4\n");
        let t = discover(&sys.0, false);
        assert_eq!(t.source(), TopologySource::Sysfs);
        assert_eq!(t.node_count(), 2);
        assert_eq!(t.node_id_bound(), 4, "from node/possible");
        assert_eq!(t.nodes()[0].cpus, vec![0, 1, 4]);
        assert_eq!(t.nodes()[1].cpus, vec![2, 3]);
        assert_eq!(t.node_of_cpu(4), Some(0));
        assert_eq!(t.node_of_cpu(3), Some(1));
        assert_eq!(t.distances(), Some(&[10, 21, 21, 10][..]));
        assert_eq!(t.distance(0, 1), Some(21));
        assert_eq!(t.distance(1, 1), Some(10));
        assert_eq!(t.distance(0, 2), None);
    }

    #[test]
    fn memoryless_node_and_sparse_ids() {
        let sys = FakeSys::new("memless");
        sys.write("node/possible", "0,2\n")
            .write("node/online", "0,2\n")
            .write("node/has_memory", "0\n")
            .write("node/node0/cpulist", "0-1\n")
            .write("node/node0/distance", "10 20\n")
            .write("node/node2/cpulist", "\n")
            .write("node/node2/distance", "20 10\n");
        let t = discover(&sys.0, false);
        assert_eq!(t.source(), TopologySource::Sysfs);
        let ids: Vec<u32> = t.nodes().iter().map(|n| n.id).collect();
        assert_eq!(ids, vec![0, 2]);
        assert!(t.nodes()[0].has_memory);
        assert!(!t.nodes()[1].has_memory);
        assert!(t.nodes()[1].cpus.is_empty());
        assert_eq!(t.node_id_bound(), 3);
        assert_eq!(t.distance(2, 0), Some(20));
    }

    #[test]
    fn ragged_distances_are_dropped_and_missing_online_scans_dirs() {
        let sys = FakeSys::new("ragged");
        sys.write("node/node1/cpulist", "1\n")
            .write("node/node1/distance", "10 21\n")
            .write("node/node0/cpulist", "0\n")
            .write("node/node0/distance", "10\n");
        let t = discover(&sys.0, false);
        let ids: Vec<u32> = t.nodes().iter().map(|n| n.id).collect();
        assert_eq!(ids, vec![0, 1]);
        assert_eq!(t.distances(), None);
        assert_eq!(t.node_id_bound(), 2, "max id + 1 without node/possible");
        assert!(t.nodes().iter().all(|n| n.has_memory));
    }

    #[test]
    fn empty_node_dir_is_one_node() {
        let sys = FakeSys::new("empty");
        fs::create_dir_all(sys.0.join("node")).unwrap();
        sys.write("cpu/possible", "0-1\n");
        let t = discover(&sys.0, false);
        assert_eq!(t.source(), TopologySource::SingleNode);
        assert_eq!(t.nodes()[0].cpus, vec![0, 1]);
    }
}
