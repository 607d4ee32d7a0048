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
    let a = PerCidAlloc::new();
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
