//! Criterion benchmark of `percid::Pool<[u64; 8]>` get/drop pairs against the system
//! allocator (`Box::new`), mimalloc (through `GlobalAlloc`), lockfree-object-pool's
//! `LinearObjectPool` and a `Mutex<Vec<Box<_>>>` pool, on one thread and on two
//! sharing one instance, and of the producer -> consumer hand-over (objects got on one
//! thread, dropped on another). `percid bench pool` measures the same cases
//! alternating in one run (and oversubscribed, and against more peers), which is the
//! number to quote on a shared machine; this one gives criterion's statistics.
//!
//! Needs feature `peers` (`cargo bench --features peers --bench pool`).

use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use percid::pool::Pool;

/// The peers and the ring, shared with `percid bench pool` so both time the same code.
#[path = "../src/bin/percid/bench/pool_peers.rs"]
mod peers;
mod support;

use peers::{Handle, MiBox, MutexPool, Obj, Ring, ZERO, linear_pool, system_box};
use support::wall_time;

// What the peers' `touch` calls (as `super::opaque`): `percid bench`'s
// register-only barriers (the library's, where all of the crate's asm lives; see
// `percid::bench_support::opaque` for why not `black_box`).
use percid::bench_support::{opaque, opaque_ptr};

/// Slots of the producer -> consumer ring (as in `percid bench pool`).
const RING: usize = 256;

/// One shared instance of each pool (the allocators are process-wide).
struct Subjects {
    pool: Pool<Obj>,
    linear: lockfree_object_pool::LinearObjectPool<Obj>,
    mutex: MutexPool,
}

impl Subjects {
    fn new() -> Subjects {
        Subjects {
            pool: Pool::new(|| ZERO).expect("cannot build the percid pool"),
            linear: linear_pool(),
            mutex: MutexPool::new(),
        }
    }
}

/// Something done with each implementation's get, generic so every loop calls it
/// inlined, as user code would.
trait Visit {
    fn visit<H: Handle + Send>(&mut self, name: &str, get: impl Fn() -> H + Sync);
}

/// Hands each implementation's get to `v`; dropping what it returns gives it back.
fn each_impl(s: &Subjects, v: &mut impl Visit) {
    v.visit("percid::Pool", || s.pool.get());
    v.visit("Box::new (system)", system_box);
    v.visit("mimalloc", MiBox::new);
    v.visit("LinearObjectPool", || s.linear.pull());
    v.visit("Mutex<Vec<Box>>", || s.mutex.get());
}

/// One get, touch and drop.
#[inline]
fn pair<H: Handle>(get: &impl Fn() -> H) {
    let x = get();
    x.touch();
    drop(x);
}

/// Benchmarks one thread doing get/drop pairs.
struct OneThread<'c>(BenchmarkGroup<'c, WallTime>);

impl Visit for OneThread<'_> {
    fn visit<H: Handle + Send>(&mut self, name: &str, get: impl Fn() -> H + Sync) {
        self.0.bench_function(name, |b| b.iter(|| pair(&get)));
    }
}

/// Benchmarks two threads sharing the instance, each doing half the pairs.
struct TwoThreads<'c>(BenchmarkGroup<'c, WallTime>);

impl Visit for TwoThreads<'_> {
    fn visit<H: Handle + Send>(&mut self, name: &str, get: impl Fn() -> H + Sync) {
        self.0.bench_function(name, |b| {
            b.iter_custom(|iters| wall_time(2, iters, &|| pair(&get)))
        });
    }
}

/// Benchmarks the producer -> consumer hand-over: per iteration one object got on one
/// thread, sent through the ring and dropped on the other.
struct CrossThread<'c>(BenchmarkGroup<'c, WallTime>);

impl Visit for CrossThread<'_> {
    fn visit<H: Handle + Send>(&mut self, name: &str, get: impl Fn() -> H + Sync) {
        let ring = Ring::<H>::new(RING);
        self.0.bench_function(name, |b| {
            b.iter_custom(|iters| hand_over(iters, &ring, &get))
        });
    }
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

fn one_thread(c: &mut Criterion) {
    let subjects = Subjects::new();
    let mut v = OneThread(group(c, "pool/1 thread"));
    each_impl(&subjects, &mut v);
    v.0.finish();
}

fn two_threads(c: &mut Criterion) {
    let subjects = Subjects::new();
    let mut v = TwoThreads(group(c, "pool/2 threads"));
    each_impl(&subjects, &mut v);
    v.0.finish();
}

fn producer_consumer(c: &mut Criterion) {
    let subjects = Subjects::new();
    let mut v = CrossThread(group(c, "pool/producer -> consumer"));
    each_impl(&subjects, &mut v);
    v.0.finish();
}

/// Wall time for one thread to get `objects` objects and send them through `ring` to
/// another that drops them, from the common barrier to the consumer's last drop.
fn hand_over<H: Handle + Send>(
    objects: u64,
    ring: &Ring<H>,
    get: &(impl Fn() -> H + Sync),
) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            barrier.wait();
            for _ in 0..objects {
                let x = get();
                x.touch();
                // SAFETY: this thread is the ring's only sender, and the two threads
                // are joined before the next measurement.
                unsafe { ring.send(x) };
            }
        });
        let consumer = s.spawn(|| {
            barrier.wait();
            let start = Instant::now();
            for _ in 0..objects {
                // SAFETY: this thread is the ring's only receiver (as above).
                drop(unsafe { ring.recv() });
            }
            start.elapsed()
        });
        consumer.join().expect("benchmark thread panicked")
    })
}

criterion_group!(benches, one_thread, two_threads, producer_consumer);
criterion_main!(benches);
