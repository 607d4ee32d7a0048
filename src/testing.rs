//! Test hooks (feature `testing`): place the calling thread on simulated cids and
//! nodes, inject aborts (these act on the simulated backend only:
//! `PERCID_BACKEND=simulated`, or `cfg(loom)`), and move a thread to the portable
//! backend (any backend).

/// Moves the calling thread to simulated cid `cid`: its next section runs there.
pub fn set_simulated_cid(cid: u32) {
    crate::rseq::simulated::set_thread_cid(cid);
}

/// Moves the calling thread to simulated NUMA node `node`.
pub fn set_simulated_node(node: u32) {
    crate::rseq::simulated::set_thread_node(node);
}

/// Makes the calling thread's NUMA operations run as if it were on node `node`
/// (`None`: its real node again), in every backend: on rseq the NUMA sections read
/// an injected thread-local cell instead of the kernel's `node_id` (still inside the
/// section), on the simulated backend this sets the simulated node. The portable
/// backend has no node (its lanes follow the CPU). `current_node` follows the
/// injection on rseq threads.
pub fn inject_node(node: Option<u32>) {
    #[cfg(not(loom))]
    crate::rseq::registration::inject_node(node);
    crate::rseq::simulated::set_thread_node(node.unwrap_or(0));
}

/// Makes `per_1024` of every 1024 simulated section steps abort, for the calling thread.
pub fn set_simulated_abort_rate(per_1024: u32) {
    crate::rseq::simulated::set_abort_rate(per_1024);
}

/// Restarts the calling thread's injected-abort generator from `seed`: the same
/// operations then meet the same aborts (fuzz targets seed it per input, so a
/// crash reproduces on its own).
pub fn seed_simulated_aborts(seed: u64) {
    crate::rseq::simulated::seed_aborts(seed);
}

/// Places the calling thread on simulated cid `cid`, or (`None`) on the portable
/// backend for the rest of its life: how loom models and tests put a thread where
/// they want it.
pub fn place(cid: Option<u32>) {
    match cid {
        Some(cid) => set_simulated_cid(cid),
        None => {
            force_portable_backend();
            set_simulated_cid(0);
        }
    }
}

/// Moves the calling thread to the portable backend for the rest of its life, so a
/// test can mix rseq (or simulated) threads and portable threads on one structure.
pub fn force_portable_backend() {
    crate::rseq::registration::force_portable();
}

/// The protocol by which `fork()` waits for held regions, on plain atomics (see
/// `src/cid/fork.rs`): for the loom model.
pub use crate::cid::fork::ModelGate as ForkGateModel;
