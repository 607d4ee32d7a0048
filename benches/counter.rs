//! Criterion benchmark of `percid::Counter` increments against `AtomicU64`, a striped
//! counter, a thread-local cell, the batched counter and `PerCid<u64>`, on one thread
//! and on two sharing one instance. `percid bench counter` measures the same cases
//! alternating in one run (and oversubscribed), which is the number to quote on a
//! shared machine; this one gives criterion's statistics.

use std::sync::atomic::{AtomicU64, Ordering};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use percid::{Counter, PerCid};

/// The peers, shared with `percid bench counter` so both time the same code.
#[path = "../src/bin/percid/bench/peers.rs"]
mod peers;
mod support;

use peers::{Padded, Striped, TLS_COUNT};
use support::wall_time;

// `percid bench`'s register-only barrier (the library's, where all of the crate's
// asm lives; see `percid::bench_support::opaque` for why not `black_box`).
use percid::bench_support::opaque_ptr;

/// One shared instance of each implementation.
struct Subjects {
    counter: Counter,
    atomic: Padded<AtomicU64>,
    striped: Striped,
    batched: Counter,
    per_cid: PerCid<u64>,
}

impl Subjects {
    fn new() -> Subjects {
        Subjects {
            counter: Counter::new(),
            atomic: Padded(AtomicU64::new(0)),
            striped: Striped::new(),
            batched: Counter::builder()
                .batch(1024)
                .build()
                .expect("cannot allocate the batched counter"),
            per_cid: PerCid::<u64>::new(|| 0).expect("cannot allocate PerCid"),
        }
    }
}

/// Something done with each implementation's increment, generic so every loop calls
/// its increment inlined, as user code would.
trait Visit {
    fn visit(&mut self, name: &str, op: impl Fn() + Sync);
}

/// Hands each implementation's increment to `v`; `opaque_ptr(&x)` keeps every call.
fn each_impl(s: &Subjects, v: &mut impl Visit) {
    v.visit("percid::Counter", || opaque_ptr(&s.counter).inc());
    v.visit("AtomicU64", || {
        opaque_ptr(&s.atomic.0).fetch_add(1, Ordering::Relaxed);
    });
    v.visit("striped", || opaque_ptr(&s.striped).inc());
    v.visit("thread_local Cell", || {
        TLS_COUNT.with(|c| {
            let c = opaque_ptr(c);
            c.set(c.get().wrapping_add(1));
        })
    });
    v.visit("percid::Counter batch=1024", || {
        opaque_ptr(&s.batched).inc()
    });
    v.visit("percid::PerCid<u64>", || {
        opaque_ptr(&s.per_cid).with(|v| *v += 1)
    });
}

/// Benchmarks one thread calling the increment.
struct OneThread<'c>(BenchmarkGroup<'c, WallTime>);

impl Visit for OneThread<'_> {
    fn visit(&mut self, name: &str, op: impl Fn() + Sync) {
        self.0.bench_function(name, |b| b.iter(&op));
    }
}

/// Benchmarks two threads sharing the instance, each doing half the iterations.
struct TwoThreads<'c>(BenchmarkGroup<'c, WallTime>);

impl Visit for TwoThreads<'_> {
    fn visit(&mut self, name: &str, op: impl Fn() + Sync) {
        self.0
            .bench_function(name, |b| b.iter_custom(|iters| wall_time(2, iters, &op)));
    }
}

fn one_thread(c: &mut Criterion) {
    let subjects = Subjects::new();
    let mut group = c.benchmark_group("counter/1 thread");
    group.throughput(Throughput::Elements(1));
    let mut v = OneThread(group);
    each_impl(&subjects, &mut v);
    v.0.finish();
}

fn two_threads(c: &mut Criterion) {
    let subjects = Subjects::new();
    let mut group = c.benchmark_group("counter/2 threads");
    group.throughput(Throughput::Elements(1));
    let mut v = TwoThreads(group);
    each_impl(&subjects, &mut v);
    v.0.finish();
}

criterion_group!(benches, one_thread, two_threads);
criterion_main!(benches);
