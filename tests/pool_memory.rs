//! A pool gives its memory back after a burst, with no call and no timer, and the
//! shrink drops every value exactly once and never disturbs objects in use.
//!
//! The RSS test runs in a child process of its own (the test binary re-executed),
//! so that other tests' threads and allocations do not blur the figures.

mod common;

use common::{scaled, simulated};
use percid::pool::{Pool, PoolBox};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

/// The resident set of this process in KiB (`VmRSS` of /proc/self/status).
fn rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

type Obj = [u8; 256];

/// The bench's burst, smaller: `threads` threads take `bytes` in all of 256-byte
/// objects (written), all wait, all drop theirs, all exit.
fn burst(pool: &Pool<Obj>, threads: usize, bytes: usize) {
    let share = bytes / threads / std::mem::size_of::<Obj>();
    let held = Barrier::new(threads);
    std::thread::scope(|s| {
        for t in 0..threads {
            let held = &held;
            s.spawn(move || {
                let mine: Vec<PoolBox<'_, Obj>> = (0..share)
                    .map(|_| {
                        let mut b = pool.get();
                        b.fill(t as u8 | 1);
                        b
                    })
                    .collect();
                held.wait();
                for b in &mine {
                    assert!(b.iter().all(|&x| x == t as u8 | 1), "an object changed");
                }
                drop(mine);
            });
        }
    });
}

/// The child of `rss_goes_back_after_a_burst`: prints `baseline peak settled`.
fn rss_child() {
    let pool = Pool::new(|| [0u8; 256]).unwrap();
    // Warm the process (threads, the arena, the allocator) the way the burst will.
    burst(&pool, 64, 1 << 20);
    pool.trim();
    let baseline = rss_kib();
    burst(&pool, 64, 128 << 20);
    std::thread::sleep(Duration::from_millis(100));
    let settled = rss_kib();
    println!(
        "\nrss {baseline} {settled} created {} idle {} freed {}",
        pool.created(),
        pool.idle(),
        pool.freed()
    );
}

/// 64 threads take 128 MiB of objects from one pool, drop them and exit; with no
/// further call the resident set is back near what it was before (the pool still
/// alive). Without the shrink it stays 128 MiB higher.
#[test]
fn rss_goes_back_after_a_burst() {
    if std::env::var_os("PERCID_POOL_MEMORY_CHILD").is_some() {
        rss_child();
        return;
    }
    if simulated() {
        // The simulated backend is about 50 times slower; the RSS figure is the
        // same code's (the depot is backend-agnostic).
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "rss_goes_back_after_a_burst",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PERCID_POOL_MEMORY_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.find("rss ").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no figures from the child: {stdout}"));
    eprintln!("{line}");
    let n: Vec<usize> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (baseline, settled) = (n[0], n[1]);
    assert!(
        settled <= baseline + 4 * 1024,
        "RSS {baseline} KiB before a 128 MiB burst, {settled} KiB after: the pool kept it ({line})"
    );
}

static LIVE: AtomicUsize = AtomicUsize::new(0);
static MADE: AtomicUsize = AtomicUsize::new(0);

/// A value that counts itself: dropped twice, the count goes below zero (caught);
/// leaked, it stays above.
struct Counted {
    pattern: u64,
    alive: bool,
}

impl Counted {
    fn new() -> Counted {
        LIVE.fetch_add(1, Ordering::SeqCst);
        MADE.fetch_add(1, Ordering::SeqCst);
        Counted {
            pattern: 0,
            alive: true,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        assert!(self.alive, "a value dropped twice");
        self.alive = false;
        let before = LIVE.fetch_sub(1, Ordering::SeqCst);
        assert!(before > 0, "more drops than values");
    }
}

/// Shrinks (implicit, with a zero purge delay, and `trim`) and the pool's drop drop
/// every value exactly once, and objects handed out across shrinks hold what their
/// holder wrote; while one thread trims in a loop.
#[test]
fn shrink_drops_each_value_once_and_spares_objects_in_use() {
    let pool = Pool::builder(Counted::new)
        .capacity(8)
        .batch(4)
        .keep_idle(0)
        .purge_delay(Duration::ZERO)
        .build()
        .unwrap();
    let stop = AtomicBool::new(false);
    let rounds = scaled(2_000) as usize;
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                pool.trim();
                std::thread::yield_now();
            }
        });
        let workers: Vec<_> = (0..4u64)
            .map(|w| {
                let pool = &pool;
                s.spawn(move || {
                    for r in 0..rounds {
                        // A burst of up to 300 objects, each written with its mark.
                        let n = 1 + (r * 37 + w as usize * 11) % 300;
                        let mut held: Vec<_> = (0..n).map(|_| pool.get()).collect();
                        for (i, b) in held.iter_mut().enumerate() {
                            b.pattern = w << 48 | (r as u64) << 16 | i as u64;
                        }
                        std::thread::yield_now();
                        for (i, b) in held.iter().enumerate() {
                            assert_eq!(
                                b.pattern,
                                w << 48 | (r as u64) << 16 | i as u64,
                                "an object in use changed during a shrink"
                            );
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Release);
    });
    pool.trim();
    assert_eq!(pool.idle(), pool.created(), "objects lost");
    assert_eq!(
        MADE.load(Ordering::SeqCst),
        pool.created() + pool.freed(),
        "values made and objects counted differ"
    );
    assert_eq!(
        LIVE.load(Ordering::SeqCst),
        pool.created(),
        "freed slabs did not drop their values exactly once"
    );
    assert!(pool.freed() > 0, "nothing was ever freed");
    drop(pool);
    assert_eq!(
        LIVE.load(Ordering::SeqCst),
        0,
        "values leaked or dropped twice"
    );
}

/// `trim` frees every slab whose objects are all idle, and a bounded pool can make
/// objects again up to its bound afterwards.
#[test]
fn trim_frees_idle_slabs_and_the_bound_has_room_again() {
    let pool = Pool::builder(|| 0u64).max_objects(100).build().unwrap();
    let held: Vec<_> = (0..100).map(|_| pool.get()).collect();
    assert!(pool.try_get().is_none());
    drop(held);
    pool.trim();
    assert_eq!((pool.created(), pool.idle(), pool.freed()), (0, 0, 100));
    let again: Vec<_> = (0..100)
        .map(|_| pool.try_get().expect("room again"))
        .collect();
    assert!(pool.try_get().is_none());
    assert_eq!(pool.created(), 100);
    drop(again);
}

/// An implicit shrink: after the demand stops for a purge delay, spills free the
/// slabs they empty down to the floor, with no trim.
#[test]
fn spills_shrink_after_the_purge_delay() {
    let pool = Pool::builder(|| [0u8; 64])
        .keep_idle(16)
        .purge_delay(Duration::from_millis(5))
        .build()
        .unwrap();
    let held: Vec<_> = (0..10_000).map(|_| pool.get()).collect();
    std::thread::sleep(Duration::from_millis(15));
    drop(held);
    let cached = pool.cached();
    // What stays: the floor, the cache, and the slabs they share.
    assert!(
        pool.created() < 16 + cached + 2 * 200,
        "created {} after the burst went idle (cached {cached}, freed {})",
        pool.created(),
        pool.freed()
    );
    assert!(pool.freed() > 9_000);
}

/// A pool used within its purge delay keeps its objects: no slab is freed and made
/// again while the demand goes on.
#[test]
fn steady_use_keeps_its_objects() {
    let pool = Pool::builder(|| 0u64)
        .capacity(8)
        .batch(4)
        .purge_delay(Duration::from_secs(60))
        .build()
        .unwrap();
    for _ in 0..50 {
        let held: Vec<_> = (0..1_000).map(|_| pool.get()).collect();
        drop(held);
    }
    assert_eq!(pool.freed(), 0, "a steady pool freed slabs");
    let _ = Arc::new(());
}
