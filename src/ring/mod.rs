//! Per-cid MPSC rings (the ring issue builds them here): one bounded sub-ring per cid,
//! filled by the `store_payload_commit_index` critical section (payload first, the
//! tail as the single committing store) and drained by one consumer.
