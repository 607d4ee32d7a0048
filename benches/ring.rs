//! Criterion benchmark of `percid::ring` against crossbeam's `ArrayQueue` and
//! crossbeam-channel's `bounded` (u64 messages, sent one at a time by 2 and by 8
//! producer threads to one consumer thread), and against tokio's mpsc with an async
//! consumer (8 producer threads, the consumer a future on a current-thread tokio
//! runtime), and the unbounded channels (percid's, tokio's, crossbeam-channel's and
//! crossbeam's `SegQueue`, 8 producer threads, a plain-thread consumer). A compact subset of `percid bench ring`, which measures these and more
//! alternating in one run (the number to quote on a shared machine); this one gives
//! criterion's statistics. The channel wrappers and the workload come from the same
//! file as that bench's, so both time the same code.
//!
//! Needs feature `peers` (`cargo bench --features peers --bench ring`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};

/// The channels and the workload, shared with `percid bench ring`.
#[path = "../src/bin/percid/bench/ring_peers.rs"]
mod peers;
mod support;

use peers::{
    AsyncChannel, Crossbeam, Percid, Queue, Seg, SyncChannel, Tokio, TokioUnbounded, expected_sum,
    produce,
};
use support::wall_time_each;

/// Slots per cid of percid's ring, as in `percid bench ring`; every peer gets the
/// same total (one cid per allowed CPU).
const CAPACITY_PER_CID: usize = 1024;

fn peer_capacity() -> usize {
    CAPACITY_PER_CID * std::thread::available_parallelism().map_or(1, usize::from)
}

/// Wall time for `producers` threads and one consumer to pass `iters` messages (at
/// least [`MIN_MESSAGES`], the time scaled back to `iters`, so thread start-up does
/// not dominate short samples), from the common barrier to the last thread's end;
/// `consume` receives them all and returns its checksum, which must match.
fn one_sample<C: SyncChannel<u64>>(
    chan: &C,
    producers: usize,
    iters: u64,
    consume: &(impl Fn(&C, u64) -> u64 + Sync),
) -> Duration {
    let total = iters.max(MIN_MESSAGES);
    let sum = AtomicU64::new(0);
    let took = wall_time_each(producers + 1, &|t| {
        if t < producers {
            produce(chan, total, producers, t, 1);
        } else {
            sum.store(consume(chan, total), Ordering::Relaxed);
        }
    });
    assert_eq!(
        sum.into_inner(),
        expected_sum::<u64>(total, producers),
        "checksum"
    );
    took.mul_f64(iters as f64 / total as f64)
}

fn group<'c>(c: &'c mut Criterion, name: &str) -> BenchmarkGroup<'c, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .throughput(Throughput::Elements(1))
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    group
}

/// Fewest messages a sample carries.
const MIN_MESSAGES: u64 = 4096;

fn sync_consumer<C: SyncChannel<u64>>(chan: &C, total: u64) -> u64 {
    chan.recv_sum(total)
}

fn sync_producers(c: &mut Criterion) {
    for producers in [2, 8] {
        let mut g = group(c, &format!("ring/u64 {producers} producers"));
        let percid = Percid::<u64>::new(CAPACITY_PER_CID);
        g.bench_function("percid::ring", |b| {
            b.iter_custom(|iters| one_sample(&percid, producers, iters, &sync_consumer))
        });
        let queue = Queue::<u64>::new(peer_capacity());
        g.bench_function("ArrayQueue", |b| {
            b.iter_custom(|iters| one_sample(&queue, producers, iters, &sync_consumer))
        });
        let channel = Crossbeam::<u64>::new(peer_capacity());
        g.bench_function("crossbeam-channel", |b| {
            b.iter_custom(|iters| one_sample(&channel, producers, iters, &sync_consumer))
        });
        g.finish();
    }
}

fn async_consumer(c: &mut Criterion) {
    let producers = 8;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("cannot build a tokio runtime");
    let mut g = group(c, "ring/async u64 8 producers");
    let percid = Percid::<u64>::new(CAPACITY_PER_CID);
    g.bench_function("percid::ring recv_async", |b| {
        b.iter_custom(|iters| {
            one_sample(&percid, producers, iters, &|chan, total| {
                rt.block_on(chan.recv_sum_async(total))
            })
        })
    });
    let tokio = Tokio::<u64>::new(peer_capacity());
    g.bench_function("tokio mpsc", |b| {
        b.iter_custom(|iters| {
            one_sample(&tokio, producers, iters, &|chan, total| {
                rt.block_on(chan.recv_sum_async(total))
            })
        })
    });
    g.finish();
}

fn unbounded(c: &mut Criterion) {
    let producers = 8;
    let mut g = group(c, "ring/unbounded u64 8 producers");
    let percid = Percid::<u64>::unbounded();
    g.bench_function("percid::ring", |b| {
        b.iter_custom(|iters| one_sample(&percid, producers, iters, &sync_consumer))
    });
    let tokio = TokioUnbounded::<u64>::new();
    g.bench_function("tokio mpsc", |b| {
        b.iter_custom(|iters| one_sample(&tokio, producers, iters, &sync_consumer))
    });
    let channel = Crossbeam::<u64>::unbounded();
    g.bench_function("crossbeam-channel", |b| {
        b.iter_custom(|iters| one_sample(&channel, producers, iters, &sync_consumer))
    });
    let seg = Seg::<u64>::new();
    g.bench_function("SegQueue", |b| {
        b.iter_custom(|iters| one_sample(&seg, producers, iters, &sync_consumer))
    });
    g.finish();
}

criterion_group!(benches, sync_producers, async_consumer, unbounded);
criterion_main!(benches);
