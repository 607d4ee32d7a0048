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

/// Makes `per_1024` of every 1024 simulated section steps abort, for the calling thread.
pub fn set_simulated_abort_rate(per_1024: u32) {
    crate::rseq::simulated::set_abort_rate(per_1024);
}

/// Moves the calling thread to the portable backend for the rest of its life, so a
/// test can mix rseq (or simulated) threads and portable threads on one structure.
pub fn force_portable_backend() {
    crate::rseq::registration::force_portable();
}
