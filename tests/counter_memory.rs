//! Memory follows concurrency: ten thousand counters used by 64 threads on a 2-CPU
//! machine hold one value word per cid each (8 bytes), on as
//! many cids as ran at once, and only the pages those cids wrote are resident.
//!
//! The process-wide arena's statistics are the subject, so this file holds a single
//! test and runs in its own process. It runs in every backend mode of
//! `scripts/test`; the mm_cid bound is asserted where shards are indexed by `mm_cid`
//! on real rseq sections.
#![cfg(not(loom))]

use percid::Counter;
use percid::rseq::{Backend, IndexMode};
use std::sync::Barrier;

const COUNTERS: usize = 10_000;
const THREADS: usize = 64;
/// Words a plain counter (no batch) holds per cid: its value.
const WORDS_PER_COUNTER: usize = 1;
/// Bytes of the arena's unit header (reserved for the backends) per chunk and unit.
const HEADER_BYTES: usize = 64;
const PAGE: usize = 4096;

/// Increments of every counter by every thread.
fn rounds() -> u64 {
    let simulated = std::env::var("PERCID_BACKEND").is_ok_and(|v| v == "simulated");
    if cfg!(debug_assertions) || simulated {
        1
    } else {
        3
    }
}

/// The CPUs this process may run on (`sched_getaffinity`).
fn allowed_cpus() -> u32 {
    // SAFETY: a zeroed `cpu_set_t` is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a writable `cpu_set_t` of the size passed; pid 0 is this thread.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    assert_eq!(
        rc,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `set` was filled in by the kernel.
    let count = unsafe { libc::CPU_COUNT(&set) };
    u32::try_from(count).expect("a positive CPU count")
}

#[test]
fn ten_thousand_counters_cost_eight_bytes_per_cid_each() {
    let allowed = allowed_cpus();
    let status = percid::rseq::status();
    let counters: Vec<Counter> = (0..COUNTERS).map(|_| Counter::new()).collect();
    let rounds = rounds();

    // All threads start together, so they really run at once (and get preempted).
    let start = Barrier::new(THREADS);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (counters, start) = (&counters, &start);
                s.spawn(move || {
                    start.wait();
                    for _ in 0..rounds {
                        // Threads start at different counters, so the first uses of
                        // a counter (its allocation) race.
                        for i in 0..COUNTERS {
                            counters[(i + t * 157) % COUNTERS].inc();
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("an incrementing thread panicked");
        }
    });

    for (i, c) in counters.iter().enumerate() {
        assert_eq!(c.sum(), THREADS as u64 * rounds, "counter {i}");
    }

    let stats = percid::cid::stats();
    let capacity = percid::cid::global().cid_capacity();
    eprintln!("{status}\nallowed CPUs {allowed}, arena capacity {capacity} cids: {stats:?}");

    // 8 bytes per cid per counter, and a little slack for anything else the
    // process-wide arena holds.
    let slack_bytes = 1024;
    assert!(
        stats.bytes_per_cid <= WORDS_PER_COUNTER * 8 * COUNTERS + slack_bytes,
        "{} bytes per cid for {COUNTERS} counters",
        stats.bytes_per_cid
    );
    assert!(
        stats.bytes_per_cid >= WORDS_PER_COUNTER * 8 * COUNTERS,
        "{} bytes per cid for {COUNTERS} live counters",
        stats.bytes_per_cid
    );

    // Shards follow the concurrency really used: with mm_cid on rseq sections, at
    // most one cid per allowed CPU, however many threads ran.
    assert!(stats.cids_materialized + stats.lanes_materialized >= 1);
    assert!(
        stats.cids_materialized <= capacity,
        "{} cids materialised, capacity {capacity}",
        stats.cids_materialized
    );
    if status.index == IndexMode::MmCid && status.backend == Backend::Rseq {
        assert!(
            stats.cids_materialized <= allowed,
            "{} cids materialised by {THREADS} threads on {allowed} allowed CPUs",
            stats.cids_materialized
        );
    }

    // Only the units of materialised cids and lanes are resident, each for the
    // pages its words span (plus each chunk's header and last partial page).
    let units = (stats.cids_materialized + stats.lanes_materialized) as usize;
    let per_unit =
        (stats.bytes_per_cid + stats.chunks * (HEADER_BYTES + PAGE)).next_multiple_of(PAGE);
    let slack = 4 * PAGE;
    assert!(
        stats.resident_bytes <= units * per_unit + slack,
        "{} resident bytes for {units} units of at most {per_unit} bytes",
        stats.resident_bytes
    );
    assert!(
        stats.resident_bytes >= stats.bytes_per_cid,
        "{} resident bytes: fewer than one unit's words ({}); is mincore counting?",
        stats.resident_bytes,
        stats.bytes_per_cid
    );

    // Dropping the counters gives their words back.
    drop(counters);
    let after = percid::cid::stats();
    assert!(
        after.bytes_per_cid <= slack_bytes,
        "{} bytes per cid left after dropping every counter",
        after.bytes_per_cid
    );
}
