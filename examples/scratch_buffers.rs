//! A per-cid cache of reusable scratch buffers, against a mutex-protected pool and
//! a `thread_local!`.
//!
//! ```text
//! cargo run --release --example scratch_buffers [-- JOBS]
//! PERCID_BACKEND=portable cargo run --release --example scratch_buffers
//! ```
//!
//! A regex engine (or a parser, a compressor, a serializer) needs scratch space for
//! each search, and allocating it per call costs more than the search. The usual
//! caches each have a catch:
//!
//! * a **`Mutex<Vec<Vec<u8>>>` pool**: every job takes the one lock, so threads on
//!   different CPUs bounce its cache line, and a holder that is preempted makes
//!   the others wait;
//! * a **`thread_local!`**: no sharing at all, but one buffer per thread that ever
//!   ran a job, and 1000 threads keep 1000 buffers;
//! * **`percid::PerCid<Vec<u8>>`**: one buffer per *concurrency id*, i.e. per thread
//!   that runs at the same time (at most the CPUs the process may use), taken
//!   with a per-cid lock that costs one rseq compare-and-store and is only ever
//!   contended by a holder preempted on that cid.
//!
//! N threads (8, then 32) each run many small jobs that need a 4 KiB buffer. Each
//! job fills part of the buffer from a seed, reads it back and checks the checksum
//! it computed while writing (a buffer handed to two threads at once would fail
//! it); the checksums of all jobs must agree across the three caches. Printed per
//! cache: time per job (best of the rounds, the caches alternating) and how many
//! buffers it allocated.

use percid::PerCid;
use std::cell::RefCell;
use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The scratch space a job may need.
const SCRATCH: usize = 4096;
const ROUNDS: usize = 3;

/// Deterministic work of one job in `buf`: returns its checksum, after checking
/// that the buffer still holds what the job wrote.
fn job(seed: u64, buf: &mut Vec<u8>) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    buf.clear();
    // Mostly small jobs (16 to 256 bytes), and now and then one that needs the
    // whole buffer: the buffer must be sized for the largest.
    let words = if seed.is_multiple_of(256) {
        SCRATCH / 8
    } else {
        2 + (seed % 31) as usize
    };
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut written = FNV_OFFSET;
    for _ in 0..words {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
        written = (written ^ x).wrapping_mul(FNV_PRIME);
    }
    let buf = black_box(buf);
    let read = buf.chunks_exact(8).fold(FNV_OFFSET, |h, word| {
        let x = u64::from_le_bytes(word.try_into().unwrap());
        (h ^ x).wrapping_mul(FNV_PRIME)
    });
    assert_eq!(
        read, written,
        "job {seed}: its scratch buffer changed under it"
    );
    assert!(buf.capacity() >= SCRATCH, "a scratch buffer was not reused");
    read
}

fn new_buffer(allocated: &AtomicUsize) -> Vec<u8> {
    allocated.fetch_add(1, Relaxed);
    Vec::with_capacity(SCRATCH)
}

/// The result of one cache under one load.
struct Run {
    checksum: u64,
    elapsed: Duration,
    buffers: usize,
}

/// Runs `threads` threads of `jobs` jobs each; `run_job` gets the job's seed.
/// Returns the wrapping sum of the jobs' checksums and the wall time.
fn drive(threads: usize, jobs: u64, run_job: impl Fn(u64) -> u64 + Sync) -> (u64, Duration) {
    let start = Instant::now();
    let checksum = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads as u64)
            .map(|t| {
                let run_job = &run_job;
                s.spawn(move || {
                    (t * jobs..(t + 1) * jobs)
                        .fold(0u64, |sum, seed| sum.wrapping_add(run_job(seed)))
                })
            })
            .collect();
        handles
            .into_iter()
            .fold(0u64, |sum, h| sum.wrapping_add(h.join().unwrap()))
    });
    (checksum, start.elapsed())
}

/// percid: one buffer per cid, created on first use of the cid.
fn per_cid(threads: usize, jobs: u64) -> Run {
    let allocated = AtomicUsize::new(0);
    let cache = PerCid::new(|| new_buffer(&allocated)).expect("per-cid storage");
    let (checksum, elapsed) = drive(threads, jobs, |seed| cache.with(|buf| job(seed, buf)));
    let buffers = cache.into_iter().count();
    assert_eq!(buffers, allocated.load(Relaxed));
    Run {
        checksum,
        elapsed,
        buffers,
    }
}

/// A pool under one mutex: pop a buffer (or allocate one), run, push it back.
fn mutex_pool(threads: usize, jobs: u64) -> Run {
    let allocated = AtomicUsize::new(0);
    let pool: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    let (checksum, elapsed) = drive(threads, jobs, |seed| {
        let popped = pool.lock().unwrap().pop();
        let mut buf = popped.unwrap_or_else(|| new_buffer(&allocated));
        let sum = job(seed, &mut buf);
        pool.lock().unwrap().push(buf);
        sum
    });
    let buffers = pool.into_inner().unwrap().len();
    assert_eq!(buffers, allocated.load(Relaxed));
    Run {
        checksum,
        elapsed,
        buffers,
    }
}

/// Buffers the thread-local cache allocated (each run's threads are new threads).
static THREAD_LOCAL_ALLOCATED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(new_buffer(&THREAD_LOCAL_ALLOCATED));
}

/// One buffer per thread, created on the thread's first job.
fn thread_local(threads: usize, jobs: u64) -> Run {
    let before = THREAD_LOCAL_ALLOCATED.load(Relaxed);
    let (checksum, elapsed) = drive(threads, jobs, |seed| {
        SCRATCH_BUF.with(|buf| job(seed, &mut buf.borrow_mut()))
    });
    let buffers = THREAD_LOCAL_ALLOCATED.load(Relaxed) - before;
    assert_eq!(buffers, threads, "one buffer per thread");
    Run {
        checksum,
        elapsed,
        buffers,
    }
}

fn main() {
    let total_jobs: u64 = std::env::args()
        .nth(1)
        .map_or(4_000_000, |a| a.parse().expect("JOBS"));
    println!(
        "{total_jobs} jobs per run, {} CPUs, percid backend: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        percid::rseq::status(),
    );
    type Cache = fn(usize, u64) -> Run;
    let caches: [(&str, Cache); 3] = [
        ("PerCid<Vec<u8>>", per_cid),
        ("Mutex<Vec<Vec<u8>>>", mutex_pool),
        ("thread_local!", thread_local),
    ];
    for threads in [8, 32] {
        let jobs = total_jobs / threads as u64;
        let done = jobs * threads as u64;
        let mut best = [Duration::MAX; 3];
        let mut buffers = [0; 3];
        let mut checksum = None;
        for _ in 0..ROUNDS {
            for (i, (name, cache)) in caches.iter().enumerate() {
                let run = cache(threads, jobs);
                // Same seeds, same work: every cache must produce the same checksums.
                assert_eq!(
                    *checksum.get_or_insert(run.checksum),
                    run.checksum,
                    "{name}"
                );
                best[i] = best[i].min(run.elapsed);
                buffers[i] = buffers[i].max(run.buffers);
            }
        }
        println!(
            "\n{threads} threads x {jobs} jobs (checksum {:016x}, verified):",
            checksum.unwrap_or_default()
        );
        for (i, (name, _)) in caches.iter().enumerate() {
            println!(
                "  {name:<20} {:>7.1} ns/job (wall)  {:>3} buffers ({} KiB)  {:.2}x PerCid",
                best[i].as_nanos() as f64 / done as f64,
                buffers[i],
                buffers[i] * SCRATCH / 1024,
                best[i].as_secs_f64() / best[0].as_secs_f64(),
            );
        }
    }
}
