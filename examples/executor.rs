//! A small multi-threaded executor whose inject queues are `percid::ring`s (see
//! `examples/support/executor.rs` for its design), driven from outside: 8 plain
//! threads spawn tasks that yield a few times, then send a number through a percid
//! channel to one consumer task, which awaits them all with `recv_async`.
//!
//! ```sh
//! cargo run --release --example executor
//! ```

#[path = "support/executor.rs"]
mod executor;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use executor::{Executor, yield_now};

/// Threads spawning from outside the executor.
const SPAWNERS: u64 = 8;
/// Tasks each of them spawns.
const TASKS_PER_SPAWNER: u64 = 10_000;
/// Times each task yields before it sends.
const YIELDS: u32 = 3;
/// Slots per cid of the channel the tasks send on (small, so senders do wait).
const CHANNEL_CAPACITY_PER_CID: usize = 256;

fn main() {
    let workers = std::thread::available_parallelism().map_or(2, usize::from);
    let exec = Executor::new(workers);
    let tasks = SPAWNERS * TASKS_PER_SPAWNER;
    let (tx, mut rx) = percid::ring::channel::<u64>(CHANNEL_CAPACITY_PER_CID)
        .unwrap_or_else(|e| panic!("cannot build the channel: {e:?}"));

    // The consumer: one task awaiting every number the others send.
    let total = Arc::new(AtomicU64::new(0));
    let received = total.clone();
    exec.spawn(async move {
        let mut sum = 0u64;
        for _ in 0..tasks {
            sum += rx.recv_async().await.expect("the spawners hold senders");
        }
        received.store(sum, Ordering::Release);
    });

    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..SPAWNERS {
            let (exec, tx) = (&exec, tx.clone());
            s.spawn(move || {
                for i in 0..TASKS_PER_SPAWNER {
                    let tx = tx.clone();
                    let value = t * TASKS_PER_SPAWNER + i + 1;
                    exec.spawn(async move {
                        for _ in 0..YIELDS {
                            yield_now().await;
                        }
                        tx.send_async(value).await.expect("the consumer is alive");
                    });
                }
            });
        }
    });
    drop(tx);
    let spawned = started.elapsed();

    // Every task, the consumer included, must complete.
    let deadline = Instant::now() + Duration::from_secs(60);
    while exec.completed() < tasks + 1 {
        assert!(
            Instant::now() < deadline,
            "only {} of {} tasks completed in 60 s",
            exec.completed(),
            tasks + 1
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let finished = started.elapsed();
    let expected = tasks * (tasks + 1) / 2;
    let sum = total.load(Ordering::Acquire);
    assert_eq!(sum, expected, "the consumer's sum");
    println!(
        "{SPAWNERS} threads spawned {tasks} tasks on {workers} workers in {spawned:.2?}; \
         all ran (each yielding {YIELDS} times, then sending) in {finished:.2?}; \
         the consumer task received them all: sum {sum} = 1 + ... + {tasks}"
    );
    exec.shutdown();
}
