//! Replacing a server's `AtomicU64` statistics with percid counters.
//!
//! ```text
//! cargo run --release --example replace_atomic [-- THREADS REQUESTS_PER_THREAD]
//! PERCID_BACKEND=portable cargo run --release --example replace_atomic
//! ```
//!
//! N worker threads handle simulated requests and count them, the way a server's
//! statistics block does: requests served, bytes sent, requests in flight. A scraper
//! thread reads the totals while they run (a `/metrics` endpoint). The same server
//! runs twice, alternating, with the statistics in `AtomicU64`s ("before") and in
//! percid counters ("after"); the totals must be equal and exact.
//!
//! # The migration
//!
//! | before (`std::sync::atomic`)                  | after (percid)                    |
//! |-----------------------------------------------|-----------------------------------|
//! | `AtomicU64::new(0)` (also in a `static`)      | `Counter::new()` (also `const`)   |
//! | `x.fetch_add(n, Relaxed);` (result unused)    | `x.add(n)` / `x.inc()`            |
//! | `x.load(Relaxed)`                             | `x.sum()`                         |
//! | `x.swap(0, Relaxed)` (read and reset)         | `x.take()`                        |
//! | `AtomicI64` gauge, `fetch_add` / `fetch_sub`  | `SignedCounter::add` / `sub`      |
//!
//! What does not map: anything that uses the *result* of the read-modify-write.
//! A sharded counter has no single previous value, so `let id =
//! next_id.fetch_add(1, Relaxed)` (ticket numbers, unique ids, "am I the first?")
//! keeps its `AtomicU64`, as do `compare_exchange` on the total and `store`
//! (`Counter` has no set). `sum` is not a snapshot either: it includes every add
//! that returned before it started, and maybe some that run concurrently, so two
//! counters read one after the other may disagree by a request or two. Exact
//! totals come once the workers have stopped (here, after the join).

use percid::{Counter, SignedCounter};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Before: the statistics block as most servers start out.
#[derive(Default)]
struct AtomicStats {
    requests: AtomicU64,
    bytes: AtomicU64,
    in_flight: AtomicI64,
}

/// After: the same block on percid. Only the types and the method names change.
#[derive(Default)]
struct PercidStats {
    requests: Counter,
    bytes: Counter,
    in_flight: SignedCounter,
}

/// What the server does with its statistics, so one server loop runs on both.
trait Stats: Default + Sync {
    const NAME: &'static str;
    fn begin(&self);
    fn end(&self, bytes: u64);
    /// (requests, bytes, in flight), as a scrape reads them.
    fn read(&self) -> (u64, u64, i64);
}

impl Stats for AtomicStats {
    const NAME: &'static str = "AtomicU64";
    fn begin(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }
    fn end(&self, bytes: u64) {
        self.requests.fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
        self.in_flight.fetch_sub(1, Relaxed);
    }
    fn read(&self) -> (u64, u64, i64) {
        let requests = self.requests.load(Relaxed);
        let bytes = self.bytes.load(Relaxed);
        (requests, bytes, self.in_flight.load(Relaxed))
    }
}

impl Stats for PercidStats {
    const NAME: &'static str = "percid";
    fn begin(&self) {
        self.in_flight.add(1);
    }
    fn end(&self, bytes: u64) {
        self.requests.inc();
        self.bytes.add(bytes);
        self.in_flight.sub(1);
    }
    fn read(&self) -> (u64, u64, i64) {
        (self.requests.sum(), self.bytes.sum(), self.in_flight.sum())
    }
}

/// A simulated request: a little work on the request's bytes, and the size of the
/// response.
#[inline]
fn handle(connection: u64, request: u64) -> u64 {
    let mut h = connection.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ request;
    for _ in 0..2 {
        h = (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }
    black_box(h) % 1500 + 64
}

struct Outcome {
    totals: (u64, u64, i64),
    elapsed: Duration,
    scrapes: u64,
}

/// Runs the server: `threads` workers with `requests` requests each, and a scraper.
fn serve<S: Stats>(threads: usize, requests: u64) -> Outcome {
    let stats = S::default();
    // Connection ids: the result of `fetch_add` is used, so this stays an atomic in
    // both versions.
    let next_connection = AtomicU64::new(0);
    let running = AtomicBool::new(true);
    let start = Instant::now();
    let scrapes = std::thread::scope(|s| {
        let scraper = s.spawn(|| {
            let mut scrapes = 0;
            while running.load(Relaxed) {
                black_box(stats.read());
                scrapes += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            scrapes
        });
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let connection = next_connection.fetch_add(1, Relaxed);
                    for request in 0..requests {
                        stats.begin();
                        let bytes = handle(connection, request);
                        stats.end(bytes);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        running.store(false, Relaxed);
        scraper.join().unwrap()
    });
    Outcome {
        totals: stats.read(),
        elapsed: start.elapsed(),
        scrapes,
    }
}

/// The bytes a run must have counted: every response size, computed directly.
fn expected_bytes(connections: std::ops::Range<u64>, requests: u64) -> u64 {
    connections
        .flat_map(|c| (0..requests).map(move |r| handle(c, r)))
        .fold(0, u64::wrapping_add)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().map_or(8, |a| a.parse().expect("THREADS"));
    let requests: u64 = args
        .next()
        .map_or(1_000_000, |a| a.parse().expect("REQUESTS"));
    println!(
        "{threads} workers x {requests} requests, {} CPUs, percid backend: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        percid::rseq::status(),
    );

    const ROUNDS: usize = 3;
    let exact = threads as u64 * requests;
    let bytes = expected_bytes(0..threads as u64, requests);
    let mut best = [Duration::MAX; 2];
    for round in 0..ROUNDS {
        // Alternate the two, so both see the same machine (it is shared).
        let before = serve::<AtomicStats>(threads, requests);
        let after = serve::<PercidStats>(threads, requests);

        assert_eq!(before.totals.0, exact, "AtomicU64 lost requests");
        assert_eq!(after.totals.0, exact, "percid lost requests");
        assert_eq!(before.totals.1, bytes, "AtomicU64 lost bytes");
        assert_eq!(after.totals.1, bytes, "percid lost bytes");
        assert_eq!((before.totals.2, after.totals.2), (0, 0), "in flight");
        assert_eq!(before.totals, after.totals, "same work, same totals");

        for (i, (name, run)) in [(AtomicStats::NAME, &before), (PercidStats::NAME, &after)]
            .into_iter()
            .enumerate()
        {
            println!(
                "round {round}: {name:>9}: {:>8.2?} ({:.2} ns/request, wall) requests={} bytes={} \
                 in_flight={} scrapes={}",
                run.elapsed,
                run.elapsed.as_nanos() as f64 / exact as f64,
                run.totals.0,
                run.totals.1,
                run.totals.2,
                run.scrapes,
            );
            best[i] = best[i].min(run.elapsed);
        }
    }
    println!(
        "best of {ROUNDS}: AtomicU64 {:.2?}, percid {:.2?}: percid takes {:.2}x the time \
         (totals equal and exact in every round)",
        best[0],
        best[1],
        best[1].as_secs_f64() / best[0].as_secs_f64(),
    );
}
