//! Per-cid memory pools (the pool issue builds them here): objects recycled through
//! per-cid free lists with the `list_pop` / `list_push` critical sections, batches
//! moved to a shared depot, idle cids drained after [`crate::rseq::fence_rseq`].
