//! Helpers shared by the criterion benches (included with `mod support;`).

// Each bench uses a subset.
#![allow(dead_code)]

use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Wall time for `threads` threads to do `iters` operations between them, from the
/// first thread's start after a barrier to the last one's end (spawning excluded).
pub fn wall_time(threads: u64, iters: u64, op: &(impl Fn() + Sync)) -> Duration {
    let per_thread = iters.div_ceil(threads);
    wall_time_each(threads as usize, &|_| {
        for _ in 0..per_thread {
            op();
        }
    })
}

/// Wall time for `threads` threads to each run `run(thread_index)`, from the first
/// thread's start after a barrier to the last one's end (spawning excluded): for
/// workloads whose threads differ, such as producers and a consumer.
pub fn wall_time_each(threads: usize, run: &(impl Fn(usize) + Sync)) -> Duration {
    let barrier = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    run(t);
                    (start, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("benchmark thread panicked"))
            .collect()
    });
    let first = spans.iter().map(|s| s.0).min().expect("one thread");
    let last = spans.iter().map(|s| s.1).max().expect("one thread");
    last - first
}
