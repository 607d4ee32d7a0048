//! `PerCidAlloc` as the global allocator of a small multi-threaded program: worker
//! threads build request-sized strings and vectors and hand them to a logger thread
//! that frees them, the pattern where per-thread caches of other allocators keep
//! memory in the wrong thread and per-CPU caches shine.
//!
//! ```sh
//! cargo run --release --example global_alloc
//! ```

use percid::alloc::PerCidAlloc;
use std::sync::mpsc;
use std::time::Instant;

#[global_allocator]
static ALLOC: PerCidAlloc = PerCidAlloc::new();

fn main() {
    let workers = 8;
    let per_worker = 200_000u64;
    let (tx, rx) = mpsc::sync_channel::<(u64, String, Vec<u64>)>(1024);
    let start = Instant::now();
    let logger = std::thread::spawn(move || {
        let mut bytes = 0usize;
        let mut messages = 0u64;
        for (id, line, fields) in rx {
            assert_eq!(fields.len() as u64, id % 16 + 1);
            bytes += line.len() + fields.len() * 8;
            messages += 1;
        } // every message is freed here, on the logger's cid
        (messages, bytes)
    });
    std::thread::scope(|s| {
        for w in 0..workers {
            let tx = tx.clone();
            s.spawn(move || {
                for i in 0..per_worker {
                    let id = w * per_worker + i;
                    let line = format!("worker {w} request {i}: ok");
                    let fields: Vec<u64> = (0..=id % 16).collect();
                    tx.send((id, line, fields)).unwrap();
                }
            });
        }
    });
    drop(tx);
    let (messages, bytes) = logger.join().unwrap();
    assert_eq!(messages, workers * per_worker);
    println!(
        "{messages} messages ({} MiB) through PerCidAlloc in {:.0?}; {} KiB of spans committed, {} blocks cached",
        bytes >> 20,
        start.elapsed(),
        ALLOC.committed_bytes() >> 10,
        ALLOC.cached_blocks()
    );
}
