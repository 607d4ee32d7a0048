//! Criterion benchmark of the getters against libc `sched_getcpu` and the raw `getcpu`
//! syscall. `percid bench getcpu` measures the same cases alternating in one run, which
//! is the number to quote on a shared machine; this one gives criterion's statistics.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

fn getcpu(c: &mut Criterion) {
    let mut group = c.benchmark_group("getcpu");
    group.bench_function("percid::current_cpu", |b| {
        b.iter(|| black_box(percid::current_cpu()))
    });
    group.bench_function("percid::current_cid", |b| {
        b.iter(|| black_box(percid::current_cid()))
    });
    group.bench_function("percid::current_node", |b| {
        b.iter(|| black_box(percid::current_node()))
    });
    group.bench_function("libc::sched_getcpu", |b| {
        // SAFETY: `sched_getcpu` takes no arguments and only reads the calling thread's state.
        b.iter(|| black_box(unsafe { libc::sched_getcpu() }))
    });
    group.bench_function("syscall(SYS_getcpu)", |b| {
        b.iter(|| {
            let (mut cpu, mut node) = (0u32, 0u32);
            // SAFETY: both out-pointers are valid, writable u32s on our stack for the whole
            // call; the third argument (an unused cache) may be null.
            unsafe {
                libc::syscall(
                    libc::SYS_getcpu,
                    &mut cpu as *mut u32,
                    &mut node as *mut u32,
                    std::ptr::null_mut::<libc::c_void>(),
                );
            }
            black_box(cpu)
        })
    });
    group.finish();
}

criterion_group!(benches, getcpu);
criterion_main!(benches);
