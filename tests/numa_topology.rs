//! The NUMA layer's public API: this machine's topology (one node, two CPUs, where
//! these tests run), made-up layouts, and page placement of fresh mappings.
//!
//! Binding itself (`percid::numa` binds planes crate-internally) is tested by the
//! unit tests of `src/numa/memory.rs`.
#![cfg(not(loom))]

use percid::numa::{self, Placement, Topology, TopologyError, TopologySource};

/// Whether this is the machine the expectations were written for: one NUMA node
/// holding CPUs 0 and 1 (elsewhere the exact checks are skipped with a note).
fn two_cpu_one_node_machine() -> bool {
    let online = std::fs::read_to_string("/sys/devices/system/node/online");
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/possible");
    let here = matches!(
        (online.as_deref(), cpus.as_deref()),
        (Ok("0\n"), Ok("0-1\n"))
    );
    if !here {
        eprintln!("not the one-node, two-CPU machine these checks expect: exact checks skipped");
    }
    here
}

#[test]
fn system_topology_of_this_machine() {
    let t = Topology::system();
    assert!(t.is_system());
    let expected_source = if cfg!(feature = "numa") {
        TopologySource::Hwloc
    } else {
        TopologySource::Sysfs
    };
    assert_eq!(t.source(), expected_source);
    assert!(t.node_count() >= 1);
    assert!(t.node_id_bound() as usize >= t.node_count());
    assert!(t.nodes().windows(2).all(|w| w[0].id < w[1].id), "sorted");
    // Every CPU this thread may run on has a node.
    for cpu in 0..std::thread::available_parallelism().map_or(1, |n| n.get()) as u32 {
        if t.nodes().iter().any(|n| n.cpus.contains(&cpu)) {
            assert!(t.node_of_cpu(cpu).is_some());
        }
    }
    if two_cpu_one_node_machine() {
        assert_eq!(t.node_count(), 1);
        assert_eq!(t.nodes()[0].id, 0);
        assert_eq!(t.nodes()[0].cpus, vec![0, 1]);
        assert!(t.nodes()[0].has_memory);
        assert_eq!(t.node_id_bound(), 1);
        assert_eq!(t.node_of_cpu(1), Some(0));
        assert_eq!(t.node_of_cpu(2), None);
        assert_eq!(t.distances(), Some(&[10][..]));
        assert_eq!(t.distance(0, 0), Some(10));
    }
    // The cached topology is the same discovery.
    assert_eq!(numa::topology(), &t);
    assert!(std::ptr::eq(numa::topology(), numa::topology()));
}

#[test]
fn uniform_layouts() {
    let t = Topology::uniform(4, 2).unwrap();
    assert_eq!(t.source(), TopologySource::Uniform);
    assert_eq!(t.source().to_string(), "uniform");
    assert!(!t.is_system());
    assert_eq!(t.node_count(), 4);
    assert_eq!(t.node_id_bound(), 4);
    for (i, node) in t.nodes().iter().enumerate() {
        let i = i as u32;
        assert_eq!(node.id, i);
        assert_eq!(node.cpus, vec![2 * i, 2 * i + 1]);
        assert!(node.has_memory);
    }
    assert_eq!(t.node_of_cpu(7), Some(3));
    assert_eq!(t.node_of_cpu(8), None);
    let d = t.distances().unwrap();
    assert_eq!(d.len(), 16);
    for from in 0..4 {
        for to in 0..4 {
            let expected = if from == to { 10 } else { 20 };
            assert_eq!(d[from * 4 + to], expected);
            assert_eq!(t.distance(from as u32, to as u32), Some(expected));
        }
    }
    assert_eq!(t.distance(0, 4), None);

    assert_eq!(Topology::uniform(0, 2), Err(TopologyError::NoNodes));
    assert_eq!(Topology::uniform(0, 0), Err(TopologyError::NoNodes));
    let too_many = Topology::uniform(100_000, 1).unwrap_err();
    assert!(matches!(too_many, TopologyError::TooManyNodes { .. }));
    assert!(!too_many.to_string().is_empty());
    let error: &dyn std::error::Error = &too_many;
    assert!(error.source().is_none());
    assert!(matches!(
        Topology::uniform(1024, 1 << 20),
        Err(TopologyError::TooManyCpus { .. })
    ));
}

#[cfg(feature = "numa")]
#[test]
fn hwloc_synthetic_layouts() {
    let two = Topology::from_hwloc_synthetic("pack:2 [numa] core:2 pu:1").unwrap();
    assert_eq!(two.source(), TopologySource::Synthetic);
    assert!(!two.is_system());
    assert_eq!(two.node_count(), 2);
    assert_eq!(two.nodes()[0].cpus, vec![0, 1]);
    assert_eq!(two.nodes()[1].cpus, vec![2, 3]);
    assert_eq!(two.node_of_cpu(2), Some(1));
    let four = Topology::from_hwloc_synthetic("pack:4 [numa] core:1 pu:1").unwrap();
    let ids: Vec<u32> = four.nodes().iter().map(|n| n.id).collect();
    assert_eq!(ids, vec![0, 1, 2, 3]);
    assert_eq!(four.node_id_bound(), 4);
    let error = Topology::from_hwloc_synthetic("pack:oops").unwrap_err();
    assert!(matches!(error, TopologyError::Hwloc(_)), "{error}");
}

/// A fresh `MAP_NORESERVE` anonymous mapping, unmapped on drop.
struct Region {
    ptr: *mut u8,
    len: usize,
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

impl Region {
    fn new(len: usize) -> Region {
        // SAFETY: a new anonymous private mapping, checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        // One write must fault in one page, not a (multi-size) huge page.
        // SAFETY: advice on the mapping just made.
        unsafe { libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE) };
        Region {
            ptr: ptr.cast(),
            len,
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Where the kernel refuses the NUMA system calls (seccomp, no NUMA support).
fn refused(e: &std::io::Error) -> bool {
    let refused = matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM));
    if refused {
        eprintln!("move_pages refused here ({e}): test skipped");
    }
    refused
}

#[test]
fn placement_of_touched_and_untouched_pages() {
    const LEN: usize = 64 << 10;
    let page = page_size();
    let pages = LEN / page;
    let region = Region::new(LEN);
    let untouched = match numa::placement(region.ptr, LEN) {
        Ok(p) => p,
        Err(e) if refused(&e) => return,
        Err(e) => panic!("placement: {e}"),
    };
    assert_eq!(
        untouched,
        Placement {
            absent: pages,
            ..Placement::default()
        }
    );
    for i in 0..pages / 2 {
        // SAFETY: inside the mapping this test owns.
        unsafe { region.ptr.add(i * page).write_volatile(7) };
    }
    let status = numa::pages_on(region.ptr, LEN).unwrap();
    assert_eq!(status.len(), pages);
    assert!(status[..pages / 2].iter().all(|&s| s >= 0), "{status:?}");
    assert!(
        status[pages / 2..].iter().all(|&s| s == -libc::ENOENT),
        "{status:?}"
    );

    let touched = numa::placement(region.ptr, LEN).unwrap();
    assert_eq!(touched.present(), pages / 2);
    assert_eq!(touched.absent, pages - pages / 2);
    assert_eq!(touched.other, 0);
    // Each touched page is on the node of a CPU this thread ran on.
    let t = numa::topology();
    for node in touched.per_node.keys() {
        assert!(t.nodes().iter().any(|n| n.id == *node), "node {node}");
    }
    if two_cpu_one_node_machine() {
        assert_eq!(touched.on(0), pages / 2, "{touched:?}");
    }
}

#[cfg(feature = "numa")]
#[test]
fn hwloc_reads_back_no_binding_for_a_plain_mapping() {
    const LEN: usize = 16 << 10;
    let region = Region::new(LEN);
    // SAFETY: the region is mapped for the call.
    let (nodes, strict) = unsafe { numa::hwloc_binding_of(region.ptr, LEN) }.unwrap();
    assert!(!strict, "a plain mapping has the default policy");
    assert!(!nodes.is_empty());
    // SAFETY: as above.
    assert_eq!(unsafe { numa::hwloc_binding_of(region.ptr, 0) }, None);
}
