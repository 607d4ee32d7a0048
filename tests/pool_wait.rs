//! Waiting for a bounded pool's object: a blocking `get` parks (no spinning), with a
//! timeout, as a future on a current-thread runtime (the hang the issue reproduced),
//! many more waiters than objects under the signal storm; owned boxes for `Arc`ed
//! pools; `detach`. Exact accounting everywhere: every object handed out is held by
//! one holder at a time, and the pool never creates more than its bound.

mod common;

use percid::{OwnedPoolBox, Pool, PoolBox};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// An object that knows who holds it (0: nobody).
#[derive(Default)]
struct Held(AtomicU64);

fn claim(o: &Held, me: u64) {
    let was = o.0.swap(me, Ordering::AcqRel);
    assert_eq!(was, 0, "object handed out while {was} held it");
}

fn release(o: &Held, me: u64) {
    assert_eq!(o.0.swap(0, Ordering::AcqRel), me, "object changed holder");
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and an out-pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Aborts the test process if `f` does not finish in time: a hang fails loudly.
fn within<R>(secs: u64, what: &str, f: impl FnOnce() -> R) -> R {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let what = what.to_string();
    std::thread::spawn(move || {
        let start = Instant::now();
        while !flag.load(Ordering::Acquire) {
            if start.elapsed() > Duration::from_secs(secs) {
                eprintln!("{what}: still running after {secs} s (a hang)");
                std::process::abort();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let r = f();
    done.store(true, Ordering::Release);
    r
}

#[test]
fn a_blocked_get_parks_and_a_drop_wakes_it() {
    let pool = Pool::builder(Held::default).max_objects(1).build().unwrap();
    let held = pool.get();
    claim(&held, 1);
    within(30, "blocked get", || {
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                // The waiting thread's own CPU time (other tests run in this
                // process too).
                let (cpu, wall) = (thread_cpu(), Instant::now());
                let b = pool.get();
                let (cpu, wall) = (thread_cpu() - cpu, wall.elapsed());
                claim(&b, 2);
                release(&b, 2);
                (cpu, wall)
            });
            std::thread::sleep(Duration::from_millis(300));
            release(&held, 1);
            drop(held);
            let (cpu, wall) = waiter.join().unwrap();
            // A spinning or yielding waiter would burn most of its wait.
            assert!(wall >= Duration::from_millis(250), "waited only {wall:?}");
            assert!(
                cpu < Duration::from_millis(30),
                "a blocked get used {cpu:?} of CPU in {wall:?}"
            );
        });
    });
    assert_eq!(pool.created(), 1);
}

#[test]
fn get_timeout_gives_up_or_returns_early() {
    let pool = Pool::builder(Held::default).max_objects(1).build().unwrap();
    let held = pool.get();
    let start = Instant::now();
    assert!(pool.get_timeout(Duration::from_millis(30)).is_none());
    assert!(start.elapsed() >= Duration::from_millis(30));
    within(30, "get_timeout", || {
        std::thread::scope(|s| {
            let waiter = s.spawn(|| pool.get_timeout(Duration::from_secs(20)).is_some());
            std::thread::sleep(Duration::from_millis(20));
            drop(held);
            assert!(waiter.join().unwrap(), "the returned object was not found");
        });
    });
    // Timeouts racing returns: every object is either got or not, never lost.
    for _ in 0..200 {
        let a = pool.get();
        std::thread::scope(|s| {
            let w = s.spawn(|| {
                pool.get_timeout(Duration::from_micros(200))
                    .map(|b| claim_release(&b))
            });
            std::thread::sleep(Duration::from_micros(150));
            drop(a);
            let _ = w.join().unwrap();
        });
        drop(
            pool.try_get()
                .or_else(|| pool.get_timeout(Duration::from_secs(5)))
                .expect("the object is back"),
        );
    }
    assert_eq!(pool.created(), 1);
}

fn claim_release(b: &PoolBox<'_, Held>) {
    claim(b, 9);
    release(b, 9);
}

/// The hang: two objects shared by four tasks on a current-thread runtime.
#[test]
fn tasks_share_two_objects_on_a_current_thread_runtime() {
    let pool = Arc::new(Pool::builder(Held::default).max_objects(2).build().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    within(60, "four tasks on two objects", || {
        rt.block_on(async {
            let tasks: Vec<_> = (1..=4u64)
                .map(|me| {
                    let pool = pool.clone();
                    let done = done.clone();
                    tokio::task::spawn(async move {
                        for _ in 0..500 {
                            let b = pool.get_async().await;
                            claim(&b, me);
                            tokio::task::yield_now().await;
                            release(&b, me);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
    });
    assert_eq!(done.load(Ordering::Relaxed), 4);
    assert!(pool.created() <= 2);
}

#[test]
fn owned_boxes_move_into_threads_and_come_back() {
    let pool = Arc::new(Pool::builder(Held::default).max_objects(4).build().unwrap());
    let boxes: Vec<OwnedPoolBox<Held>> = (0..4).map(|_| pool.get_owned()).collect();
    assert!(
        pool.try_get_owned().is_none(),
        "a fifth object past the bound"
    );
    let handles: Vec<_> = boxes
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            std::thread::spawn(move || {
                claim(&b, i as u64 + 1);
                release(&b, i as u64 + 1);
                drop(b);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(pool.created(), 4);
    let again: Vec<_> = (0..4)
        .map(|_| pool.try_get_owned().expect("back in the pool"))
        .collect();
    assert!(again.iter().all(|b| b.0.load(Ordering::Relaxed) == 0));
    assert!(Arc::ptr_eq(OwnedPoolBox::pool(&again[0]), &pool));
}

#[test]
fn detach_takes_the_value_and_keeps_the_bound() {
    static MADE: AtomicUsize = AtomicUsize::new(0);
    let pool = Pool::builder(|| {
        MADE.fetch_add(1, Ordering::Relaxed);
        vec![0u32; 8]
    })
    .max_objects(1)
    .build()
    .unwrap();
    let mut b = pool.get();
    b[0] = 42;
    let taken = PoolBox::detach(b);
    assert_eq!(taken[0], 42);
    let next = pool.get();
    assert_eq!(next[0], 0, "the slot holds a fresh value");
    assert_eq!(
        pool.created(),
        1,
        "the bound counts the replacement, not the detached value"
    );
    assert_eq!(MADE.load(Ordering::Relaxed), 2);
}

/// Many more waiters than objects, on 2 CPUs, under the signal storm and forced
/// migrations: every get returns an object nobody else holds, and nothing hangs.
#[test]
fn many_waiters_few_objects_under_the_storm() {
    let pool = Pool::builder(Held::default)
        .capacity(1)
        .batch(1)
        .max_objects(3)
        .build()
        .unwrap();
    let torture = common::Torture {
        threads: 24,
        ops_total: if cfg!(debug_assertions) {
            5_000
        } else {
            50_000
        },
        ..common::Torture::storm_migrate()
    };
    within(180, "waiters under the storm", || {
        torture.run(|me, ops| {
            let me = me as u64 + 1;
            for i in 0..ops {
                let b = match i % 3 {
                    0 => pool.get(),
                    1 => pool
                        .get_timeout(Duration::from_millis(1))
                        .unwrap_or_else(|| pool.get()),
                    _ => match pool.try_get() {
                        Some(b) => b,
                        None => pool.get(),
                    },
                };
                claim(&b, me);
                std::hint::black_box(&b);
                release(&b, me);
            }
        });
    });
    assert!(
        pool.created() <= 3,
        "created {} past the bound",
        pool.created()
    );
}
