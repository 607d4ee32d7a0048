//! A test binary whose global allocator is `PerCidAlloc` (with poisoning: a write
//! after free aborts): many threads build and check maps, strings and buffers, hand
//! buffers to other threads that check and free them, threads start and exit all
//! the time, and a thread-local destructor allocates during TLS teardown. Results
//! are checked exactly, in every backend mode.

use percid::alloc::PerCidAlloc;
use std::collections::HashMap;
use std::sync::mpsc;

#[global_allocator]
static ALLOC: PerCidAlloc = PerCidAlloc::with_poisoning();

/// A buffer whose contents follow from its id, so the receiver can check it.
fn buffer(id: u64) -> Vec<u8> {
    let len = 16 + (id.wrapping_mul(2654435761) % 3000) as usize;
    (0..len).map(|i| (id as usize + i) as u8).collect()
}

fn check(id: u64, b: &[u8]) {
    assert_eq!(b.len(), 16 + (id.wrapping_mul(2654435761) % 3000) as usize);
    assert!(
        b.iter()
            .enumerate()
            .all(|(i, &x)| x == (id as usize + i) as u8),
        "buffer {id} corrupted"
    );
}

fn rounds() -> u64 {
    let simulated = std::env::var("PERCID_BACKEND").as_deref() == Ok("simulated");
    let mut n = 20_000;
    if cfg!(debug_assertions) {
        n /= 10;
    }
    if simulated {
        n /= 5;
    }
    n
}

#[test]
fn threads_hand_buffers_to_each_other() {
    let threads = 16u64;
    let (tx, rx) = mpsc::sync_channel::<(u64, Vec<u8>)>(256);
    let n = rounds();
    let consumer = std::thread::spawn(move || {
        let mut seen = 0u64;
        let mut sum = 0u64;
        for (id, b) in rx {
            check(id, &b);
            seen += 1;
            sum += id;
        }
        (seen, sum)
    });
    std::thread::scope(|s| {
        for t in 0..threads {
            let tx = tx.clone();
            s.spawn(move || {
                let mut map: HashMap<String, Vec<u64>> = HashMap::new();
                for i in 0..n {
                    let id = t * n + i;
                    map.entry(format!("key-{}", i % 97)).or_default().push(id);
                    if i % 4 == 0 {
                        tx.send((id, buffer(id))).unwrap();
                    }
                    if i % 1000 == 999 {
                        map.clear();
                    }
                }
                for (k, v) in &map {
                    let m: u64 = k[4..].parse().unwrap();
                    assert!(v.iter().all(|id| (id - t * n) % 97 == m));
                }
            });
        }
    });
    drop(tx);
    let (seen, sum) = consumer.join().unwrap();
    let expected: Vec<u64> = (0..threads)
        .flat_map(|t| (0..n).filter(|i| i % 4 == 0).map(move |i| t * n + i))
        .collect();
    assert_eq!(seen, expected.len() as u64);
    assert_eq!(sum, expected.iter().sum::<u64>());
    assert!(ALLOC.committed_bytes() > 0, "the allocator served nothing");
}

thread_local! {
    /// Its destructor allocates and frees during TLS teardown.
    static TEARDOWN: Teardown = const { Teardown };
}

struct Teardown;

impl Drop for Teardown {
    fn drop(&mut self) {
        let v: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        assert_eq!(v.len(), 100);
    }
}

#[test]
fn threads_start_and_exit_while_allocating() {
    for round in 0..(rounds() / 200).max(5) {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                std::thread::spawn(move || {
                    TEARDOWN.with(|_| ());
                    let s: String = (0..50)
                        .map(|i| char::from(b'a' + ((i + t) % 26) as u8))
                        .collect();
                    let b = buffer(round * 8 + t);
                    (s, b)
                })
            })
            .collect();
        for (t, h) in handles.into_iter().enumerate() {
            let (s, b) = h.join().unwrap();
            assert_eq!(s.len(), 50);
            check(round * 8 + t as u64, &b);
        }
    }
}

#[test]
fn large_and_aligned_requests_work() {
    let big = vec![7u8; 1 << 20];
    assert!(big.iter().all(|&b| b == 7));
    #[repr(align(4096))]
    struct Page([u8; 4096]);
    let p = Box::new(Page([1; 4096]));
    assert!((&*p as *const Page as usize).is_multiple_of(4096));
    assert_eq!(p.0[4095], 1);
    let mut v: Vec<u32> = Vec::new();
    for i in 0..100_000 {
        v.push(i); // grows through every class, then to the system
    }
    assert_eq!(v.iter().map(|&x| u64::from(x)).sum::<u64>(), 4_999_950_000);
    // Other tests allocate concurrently: after a trim the caches hold at most one
    // refill's worth per class and cid (and lane).
    ALLOC.trim();
    let units = 2 * std::thread::available_parallelism().map_or(2, |n| n.get()) + 64;
    assert!(ALLOC.cached_blocks() <= percid::alloc::CLASSES * 256 * units);
}

#[cfg(feature = "allocator-api2")]
#[test]
fn allocator_api2_collections_use_it() {
    use allocator_api2::vec::Vec as AVec;
    let a = PerCidAlloc::with_poisoning(); // the heap's mode (see `default_is_new`)
    let mut v: AVec<u64, &PerCidAlloc> = AVec::new_in(&a);
    for i in 0..10_000 {
        v.push(i);
    }
    assert_eq!(v.iter().sum::<u64>(), 49_995_000);
    let empty: AVec<(), &PerCidAlloc> = AVec::with_capacity_in(10, &a);
    assert_eq!(empty.len(), 0);
}

/// `fork()` while another thread keeps the heap's slow paths busy (spills, refills,
/// trims): every child allocates from every class and exits. A heap lock copied
/// locked into a child would hang it; the allocator takes its locks around fork.
#[test]
fn forked_children_can_allocate() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut held: Vec<Vec<u8>> = Vec::new();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                held.push(vec![1u8; 16 + (i * 97) % 32_000]);
                if held.len() > 300 {
                    held.clear();
                }
                if i.is_multiple_of(500) {
                    ALLOC.trim();
                }
                i += 1;
            }
        });
        for _ in 0..(rounds() / 100).max(20) {
            // SAFETY: the child only allocates, frees and `_exit`s; the parent waits
            // for it below.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
            if pid == 0 {
                let ok = (0..200).all(|k| {
                    let v = vec![k as u8; 16 + k * 160];
                    v.iter().all(|&b| b == k as u8)
                });
                // SAFETY: ends the child without running the parent's destructors.
                unsafe { libc::_exit(if ok { 0 } else { 2 }) };
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let mut status = 0;
            loop {
                // SAFETY: waits for our own child.
                let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                if rc == pid {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    // SAFETY: our own child, hung.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    stop.store(true, Ordering::Relaxed);
                    panic!("a forked child hung allocating (a heap lock copied locked?)");
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "child status {status:#x}"
            );
        }
        stop.store(true, Ordering::Relaxed);
    });
}

/// The process's resident set in bytes.
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("resident pages");
    // SAFETY: sysconf has no memory effects.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

#[test]
fn a_large_zeroed_vector_costs_no_memory_until_written() {
    let before = resident();
    let mut v = vec![0u8; 1 << 30];
    let after = resident();
    assert!(
        after < before + (64 << 20),
        "vec![0u8; 1 GiB] made {} MiB resident: zeroed by hand, not by calloc",
        (after - before) >> 20
    );
    assert_eq!(v[123_456_789], 0);
    v[1 << 29] = 7;
    assert_eq!(
        v.iter().step_by(4096).map(|&b| u64::from(b)).sum::<u64>(),
        7
    );
}

#[test]
fn large_blocks_keep_their_contents_when_they_grow_and_shrink() {
    let mut v: Vec<u64> = Vec::new();
    for i in 0..5_000_000u64 {
        v.push(i ^ 0x5555);
    }
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 ^ 0x5555));
    v.truncate(1000);
    v.shrink_to_fit(); // back into a size class: system block to ours
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 ^ 0x5555));
    v.extend(0..100_000u64); // and out again
    assert_eq!(v.len(), 101_000);
    assert_eq!(v[1000 + 99_999], 99_999);
}

#[test]
fn default_is_new() {
    assert_eq!(
        format!("{:?}", PerCidAlloc::default()),
        format!("{:?}", PerCidAlloc::new())
    );
    assert_eq!(
        ALLOC.poisoning(),
        Some(true),
        "the heap runs in the global's mode"
    );
}

/// Runs this test binary's test `name` alone in a child process with `CHILD=name`
/// and returns its status and standard error.
fn child(name: &str) -> (std::process::ExitStatus, String) {
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env("PERCID_ALLOC_CHILD", name)
        .output()
        .expect("child runs");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn in_child(name: &str) -> bool {
    std::env::var("PERCID_ALLOC_CHILD").as_deref() == Ok(name)
}

#[test]
fn double_free_child() {
    if !in_child("double_free_child") {
        return;
    }
    let layout = std::alloc::Layout::new::<[u64; 6]>();
    // SAFETY: a valid layout; the second free is the bug under test (the allocator
    // must abort before it touches anything).
    unsafe {
        let p = std::alloc::GlobalAlloc::alloc(&ALLOC, layout);
        std::alloc::GlobalAlloc::dealloc(&ALLOC, p, layout);
        std::alloc::GlobalAlloc::dealloc(&ALLOC, p, layout);
    }
}

#[test]
fn a_double_free_aborts_with_a_message() {
    use std::os::unix::process::ExitStatusExt;
    let (status, stderr) = child("double_free_child");
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "status {status}: {stderr}"
    );
    assert!(stderr.contains("double free"), "stderr: {stderr}");
}

#[test]
fn mode_conflict_child() {
    if !in_child("mode_conflict_child") {
        return;
    }
    // The heap poisons (the global allocator set it up); this one does not.
    let plain = PerCidAlloc::new();
    assert_eq!(plain.poisoning(), Some(true));
    plain.trim(); // aborts in release builds, where `new()` does not poison
}

#[test]
fn a_poisoning_conflict_is_an_error_not_silence() {
    use std::os::unix::process::ExitStatusExt;
    let (status, stderr) = child("mode_conflict_child");
    if cfg!(debug_assertions) {
        // `new()` poisons in debug builds: no conflict.
        assert!(status.success(), "status {status}: {stderr}");
    } else {
        assert_eq!(
            status.signal(),
            Some(libc::SIGABRT),
            "status {status}: {stderr}"
        );
        assert!(stderr.contains("shares one heap"), "stderr: {stderr}");
    }
}

/// Spans taken from the reservation and not given back (the heap's own figure).
fn committed_mib() -> f64 {
    ALLOC.committed_bytes() as f64 / (1 << 20) as f64
}

/// 16 threads hold 64 MiB at once in small blocks, free them and exit: once they
/// are gone the heap has given the spans back, with no call.
#[test]
fn burst_child() {
    if !in_child("burst_child") {
        return;
    }
    let before = committed_mib();
    let rss_before = resident();
    std::thread::scope(|s| {
        for t in 0..16u64 {
            s.spawn(move || {
                let mut held: Vec<Vec<u8>> = Vec::new();
                let mut bytes = 0;
                let mut x = t + 1;
                while bytes < (4 << 20) {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let size = 64 + (x >> 40) as usize % 960;
                    held.push(vec![t as u8; size]);
                    bytes += size;
                }
                assert!(held.iter().all(|b| b.iter().all(|&v| v == t as u8)));
            });
        }
    });
    // Scoped threads are joined before their destructors (the exit hooks) finish.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let after = committed_mib();
    let rss_after = resident();
    eprintln!(
        "committed {before:.1} -> {after:.1} MiB, resident {:.1} -> {:.1} MiB",
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0
    );
    assert!(
        after < before + 4.0,
        "the burst's spans stayed: {before:.1} -> {after:.1} MiB"
    );
    assert!(
        rss_after < rss_before + (8 << 20),
        "resident {rss_before} -> {rss_after}"
    );
}

#[test]
fn a_bursts_memory_goes_back_when_its_threads_exit() {
    let (status, stderr) = child("burst_child");
    assert!(status.success(), "{stderr}");
}

/// One size then another, one thread, never exiting: the second size carves the
/// spans the first gave back (the heap does not grow by the second phase).
#[test]
fn phases_child() {
    if !in_child("phases_child") {
        return;
    }
    let phase = |size: usize| {
        let blocks: Vec<Vec<u8>> = (0..(32 << 20) / size)
            .map(|i| vec![i as u8; size])
            .collect();
        assert!(
            blocks
                .iter()
                .enumerate()
                .all(|(i, b)| b[size - 1] == i as u8)
        );
    };
    phase(48);
    let first = committed_mib();
    phase(700);
    phase(5000);
    let last = committed_mib();
    eprintln!("committed after the first phase {first:.1} MiB, after the last {last:.1} MiB");
    assert!(
        last < first * 0.5 + 8.0,
        "freed spans were not reused: {first:.1} -> {last:.1} MiB"
    );
}

#[test]
fn freed_memory_serves_other_sizes_and_goes_back() {
    let (status, stderr) = child("phases_child");
    assert!(status.success(), "{stderr}");
}

/// With a purge delay, a free span stays resident until the delay has passed and a
/// slow path runs; `trim` gives everything back at once.
#[test]
fn purge_delay_child() {
    if !in_child("purge_delay_child") {
        return;
    }
    percid::alloc::set_purge_delay(std::time::Duration::from_millis(200));
    assert_eq!(
        percid::alloc::purge_delay(),
        std::time::Duration::from_millis(200)
    );
    let held: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 1000]).collect();
    drop(held);
    // Everything freed is free, but within the budget of dirty spans it stays.
    let dirty = ALLOC.dirty_bytes();
    assert!(dirty <= 2 * 256 * 1024, "over the budget: {dirty}");
    let committed = ALLOC.committed_bytes();
    ALLOC.trim();
    assert_eq!(ALLOC.dirty_bytes(), 0, "trim purges every free span");
    assert!(ALLOC.committed_bytes() <= committed - dirty);
}

#[test]
fn a_purge_delay_holds_free_spans_within_a_budget() {
    let (status, stderr) = child("purge_delay_child");
    assert!(status.success(), "{stderr}");
}

/// A cache nobody touches for the idle period is drained by another thread's slow
/// paths: the blocks a thread left in its cid's cache of one size stop holding
/// their span.
#[test]
fn idle_cache_child() {
    if !in_child("idle_cache_child") {
        return;
    }
    let held: Vec<Box<[u8; 40]>> = (0..100).map(|i| Box::new([i as u8; 40])).collect();
    drop(held);
    let before = ALLOC.cached_blocks();
    assert!(before >= 50, "the frees were cached: {before}");
    let period = percid::alloc::IDLE_PERIOD;
    // Read before the thread exits (an exit drains caches too).
    let after = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        // Another size, whose cache spills and refills all the time: slow paths.
        while start.elapsed() < period * 3 {
            let v: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 3000]).collect();
            drop(v);
        }
        ALLOC.cached_blocks()
    })
    .join()
    .unwrap();
    eprintln!("cached blocks {before} -> {after}");
    assert!(
        after + 50 <= before,
        "the idle cache stayed: {before} -> {after}"
    );
}

#[test]
fn an_idle_cache_is_drained_by_other_threads_slow_paths() {
    let (status, stderr) = child("idle_cache_child");
    assert!(status.success(), "{stderr}");
}
