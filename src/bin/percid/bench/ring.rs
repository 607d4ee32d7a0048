//! `percid bench ring`: N producer threads sending to one consumer through a bounded
//! MPSC channel, and spawning tasks from outside threads.
//!
//! **Channels.** A sample runs N producer threads (N = 1, 2, 8 and 64 on the 2-CPU
//! reference machine: 64 is oversubscribed on purpose) and one consumer thread on one
//! channel, timed from the common barrier to the consumer having received every
//! message. A sample carries `(N + 1) × ops` messages split evenly among the
//! producers (the harness counts `threads × ops` operations), so `ns/op` is wall-clock
//! nanoseconds per message. Producer `p` sends the numbers `1..=share`; the consumer
//! adds up what it receives and the sample fails unless the sum is what was sent
//! (see `ring_peers.rs`), so nothing is timed that did not happen. The cases:
//!
//! * `u64 x1 sync`, every channel at every N: producers send one message at a time,
//!   the consumer is a plain thread.
//! * `64B x1 sync`, every channel at 2 and 8 producers: a 64-byte message.
//! * `u64 x32 sync`, at every N, the channels with a batch send: percid's
//!   `send_many` and tokio's `reserve_many`. For the others a batch of 32 is a loop
//!   of 32 single sends: their `x1` row is their `x32` row.
//! * `u64 x1 async` at every N and `64B x1 async` at 8: the consumer is a future,
//!   one `.await` per message, run by `block_on` of a current-thread tokio runtime
//!   on the consumer thread; producers are plain threads. percid (`recv_async`; and
//!   its `Stream` at 8 producers), tokio mpsc, flume's `recv_async`, thingbuf's async
//!   mpsc. These need tokio's runtime, so feature `peers`.
//!
//! How each channel is sent to and received from (each its best way) is tabled in
//! `ring_peers.rs`. Capacities: percid gets [`CAPACITY_PER_CID`] slots per cid, and
//! a process has at most one cid per allowed CPU, so every peer gets the same total,
//! `CAPACITY_PER_CID × allowed CPUs` (2048 on the 2-CPU reference machine).
//!
//! **Spawning.** `spawn ... 8t`: 8 outside threads each spawn `ops` trivial tasks
//! (each counts itself done on one atomic); the sample ends when the last task ran.
//! The executor of `examples/support/executor.rs` (2 workers, each with a percid ring
//! as its inject queue, spawners picking workers round-robin) against a 2-worker tokio
//! multi-thread runtime's `Handle::spawn` from the same kind of threads (tokio's
//! inject queue sits behind one mutex). `ns/op` is per task.
//!
//! Built without feature `peers` the bench measures percid against std's
//! `sync_channel` and the executor alone, and says which peers it left out.

#[path = "ring_peers.rs"]
pub(crate) mod peers;

#[path = "../../../../examples/support/executor.rs"]
mod executor;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::Thread;

use super::{Bench, Case, Config, Goal, Measurement, Ratio, Target};
use executor::Executor;
#[cfg(feature = "peers")]
use peers::{AsyncChannel, Crossbeam, Flume, PercidStream, Queue, Thingbuf, ThingbufAsync, Tokio};
use peers::{Message, Msg64, Percid, SEND_BATCH, StdSync, SyncChannel, expected_sum, produce};

pub const BENCH: Bench = Bench {
    name: "ring",
    about: if cfg!(feature = "peers") {
        "percid::ring MPSC against crossbeam, std, tokio, flume, thingbuf; spawning"
    } else {
        "percid::ring MPSC against std's sync_channel; spawning (more: --features peers)"
    },
    run,
    ratios: &RATIOS,
};

/// Producer threads per case: one, one per CPU of the 2-CPU reference machine, and
/// oversubscribed (the ratio keys name them, so they stay fixed).
const PRODUCERS: [usize; 4] = [1, 2, 8, 64];

/// Producer counts of the 64-byte message cases.
const PRODUCERS_64B: [usize; 2] = [2, 8];

/// Slots per cid of percid's ring.
pub(crate) const CAPACITY_PER_CID: usize = 1024;

/// Outside threads of the spawn cases, and workers of both executors.
const SPAWNERS: usize = 8;
const SPAWN_WORKERS: usize = 2;

/// Operations per thread of the warm-up sample every case runs before calibration.
const WARM_UP_OPS: u64 = 500;

const PERCID: &str = "percid::ring";
#[cfg_attr(not(feature = "peers"), allow(dead_code))]
const PERCID_STREAM: &str = "percid::ring Stream";
const STD: &str = "std sync_channel";
const QUEUE: &str = "ArrayQueue";
const CROSSBEAM: &str = "crossbeam-channel";
const TOKIO: &str = "tokio mpsc";
const FLUME: &str = "flume";
const THINGBUF: &str = "thingbuf";
const SPAWN_PERCID: &str = "spawn percid executor";
const SPAWN_TOKIO: &str = "spawn tokio Handle::spawn";

/// The peers that need feature `peers`: (case label, crate).
const FEATURE_PEERS: [(&str, &str); 6] = [
    (QUEUE, "crossbeam-queue"),
    (CROSSBEAM, "crossbeam-channel"),
    (TOKIO, "tokio"),
    (FLUME, "flume"),
    (THINGBUF, "thingbuf"),
    (SPAWN_TOKIO, "tokio"),
];

/// Which end receives: a plain thread, or a future on a tokio runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Consumer {
    Sync,
    #[cfg_attr(not(feature = "peers"), allow(dead_code))]
    Async,
}

impl Consumer {
    fn as_str(self) -> &'static str {
        match self {
            Consumer::Sync => "sync",
            Consumer::Async => "async",
        }
    }
}

/// A channel case's name (ratios look cases up by name alone). A unit test checks the
/// literals in [`RATIOS`] against it.
fn case_name(label: &str, msg: &str, batch: u64, consumer: Consumer, producers: usize) -> String {
    format!("{label} {msg} x{batch} {} {producers}p", consumer.as_str())
}

/// A spawn case's name.
fn spawn_name(label: &str) -> String {
    format!("{label} {SPAWNERS}t")
}

/// The total capacity every peer gets: percid's per-cid capacity times the cids a
/// process can have, one per allowed CPU.
pub(crate) fn peer_capacity() -> usize {
    CAPACITY_PER_CID * std::thread::available_parallelism().map_or(1, usize::from)
}

const RATIOS: [Ratio; 17] = [
    Ratio {
        key: "speedup_vs_best_crossbeam_2p",
        peer: "ArrayQueue u64 x1 sync 2p | crossbeam-channel u64 x1 sync 2p",
        ours: "percid::ring u64 x1 sync 2p",
    },
    Ratio {
        key: "speedup_vs_best_crossbeam_8p",
        peer: "ArrayQueue u64 x1 sync 8p | crossbeam-channel u64 x1 sync 8p",
        ours: "percid::ring u64 x1 sync 8p",
    },
    Ratio {
        key: "async_speedup_vs_tokio_8p",
        peer: "tokio mpsc u64 x1 async 8p",
        ours: "percid::ring u64 x1 async 8p",
    },
    Ratio {
        key: "spawn_speedup_vs_tokio_8t",
        peer: "spawn tokio Handle::spawn 8t",
        ours: "spawn percid executor 8t",
    },
    Ratio {
        key: "speedup_vs_best_crossbeam_1p",
        peer: "ArrayQueue u64 x1 sync 1p | crossbeam-channel u64 x1 sync 1p",
        ours: "percid::ring u64 x1 sync 1p",
    },
    Ratio {
        key: "speedup_vs_best_crossbeam_64p",
        peer: "ArrayQueue u64 x1 sync 64p | crossbeam-channel u64 x1 sync 64p",
        ours: "percid::ring u64 x1 sync 64p",
    },
    Ratio {
        key: "speedup_vs_std_8p",
        peer: "std sync_channel u64 x1 sync 8p",
        ours: "percid::ring u64 x1 sync 8p",
    },
    Ratio {
        key: "speedup_vs_tokio_8p",
        peer: "tokio mpsc u64 x1 sync 8p",
        ours: "percid::ring u64 x1 sync 8p",
    },
    Ratio {
        key: "speedup_vs_flume_8p",
        peer: "flume u64 x1 sync 8p",
        ours: "percid::ring u64 x1 sync 8p",
    },
    Ratio {
        key: "speedup_vs_thingbuf_8p",
        peer: "thingbuf u64 x1 sync 8p",
        ours: "percid::ring u64 x1 sync 8p",
    },
    Ratio {
        key: "msg64_speedup_vs_best_crossbeam_8p",
        peer: "ArrayQueue 64B x1 sync 8p | crossbeam-channel 64B x1 sync 8p",
        ours: "percid::ring 64B x1 sync 8p",
    },
    Ratio {
        key: "batch32_speedup_vs_best_crossbeam_8p",
        peer: "ArrayQueue u64 x1 sync 8p | crossbeam-channel u64 x1 sync 8p",
        ours: "percid::ring u64 x32 sync 8p",
    },
    Ratio {
        key: "batch32_speedup_vs_tokio_8p",
        peer: "tokio mpsc u64 x32 sync 8p",
        ours: "percid::ring u64 x32 sync 8p",
    },
    Ratio {
        key: "async_speedup_vs_tokio_64p",
        peer: "tokio mpsc u64 x1 async 64p",
        ours: "percid::ring u64 x1 async 64p",
    },
    Ratio {
        key: "async_speedup_vs_flume_8p",
        peer: "flume u64 x1 async 8p",
        ours: "percid::ring u64 x1 async 8p",
    },
    Ratio {
        key: "async_speedup_vs_thingbuf_8p",
        peer: "thingbuf u64 x1 async 8p",
        ours: "percid::ring u64 x1 async 8p",
    },
    Ratio {
        key: "stream_speedup_vs_tokio_8p",
        peer: "tokio mpsc u64 x1 async 8p",
        ours: "percid::ring Stream u64 x1 async 8p",
    },
];

/// The goals the ring issue set; the table says whether each was met.
pub const TARGETS: [Target; 4] = [
    Target {
        key: "speedup_vs_best_crossbeam_2p",
        goal: Goal::AtLeast(2.0),
    },
    Target {
        key: "speedup_vs_best_crossbeam_8p",
        goal: Goal::AtLeast(2.0),
    },
    Target {
        key: "async_speedup_vs_tokio_8p",
        goal: Goal::AtLeast(3.0),
    },
    Target {
        key: "spawn_speedup_vs_tokio_8t",
        goal: Goal::AtLeast(3.0),
    },
];

fn run(config: &Config) -> Vec<Measurement> {
    if let Some(note) = left_out_note() {
        eprintln!("bench {}: {note}", BENCH.name);
    }
    eprintln!(
        "bench {}: percid::ring {CAPACITY_PER_CID} slots per cid; every peer {} slots \
         (the same total over {} allowed CPUs)",
        BENCH.name,
        peer_capacity(),
        peer_capacity() / CAPACITY_PER_CID
    );
    let cases = all_cases();
    for case in &cases {
        case.measure(WARM_UP_OPS);
    }
    super::run(BENCH.name, &cases, config)
}

/// The line saying which peers this build left out, `None` when it has them all.
fn left_out_note() -> Option<String> {
    if cfg!(feature = "peers") {
        return None;
    }
    let mut crates: Vec<&str> = Vec::new();
    for (_, krate) in FEATURE_PEERS {
        if !crates.contains(&krate) {
            crates.push(krate);
        }
    }
    Some(format!(
        "built without feature `peers`: left out {} and with tokio the async consumer \
         cases and the tokio spawn case (their ratios print n/a); include them with \
         `cargo run --release --features peers -- bench ring`",
        crates.join(", ")
    ))
}

/// Every case, in table order.
fn all_cases() -> Vec<Case<'static>> {
    let mut cases = Vec::new();
    for &n in &PRODUCERS {
        cases.extend(sync_cases::<u64>(n, 1));
    }
    for &n in &PRODUCERS_64B {
        cases.extend(sync_cases::<Msg64>(n, 1));
    }
    for &n in &PRODUCERS {
        cases.extend(batch_cases(n));
    }
    #[cfg(feature = "peers")]
    {
        for &n in &PRODUCERS {
            cases.extend(async_cases::<u64>(n));
        }
        cases.extend(async_cases::<Msg64>(8));
    }
    cases.extend(spawn_cases());
    cases
}

/// Every channel with a plain-thread consumer, `n` producers sending one at a time.
fn sync_cases<M: Message>(n: usize, batch: u64) -> Vec<Case<'static>> {
    let cap = peer_capacity();
    #[allow(unused_mut)] // extended with feature `peers`
    let mut cases = vec![
        sync_case::<M, _>(PERCID, Percid::new(CAPACITY_PER_CID), n, batch),
        sync_case::<M, _>(STD, StdSync::new(cap), n, batch),
    ];
    #[cfg(feature = "peers")]
    cases.extend([
        sync_case::<M, _>(QUEUE, Queue::new(cap), n, batch),
        sync_case::<M, _>(CROSSBEAM, Crossbeam::new(cap), n, batch),
        sync_case::<M, _>(TOKIO, Tokio::new(cap), n, batch),
        sync_case::<M, _>(FLUME, Flume::new(cap), n, batch),
        sync_case::<M, _>(THINGBUF, Thingbuf::new(cap), n, batch),
    ]);
    cases
}

/// The channels with a batch send, `n` producers sending [`SEND_BATCH`] at a time.
fn batch_cases(n: usize) -> Vec<Case<'static>> {
    #[allow(unused_mut)] // extended with feature `peers`
    let mut cases = vec![sync_case::<u64, _>(
        PERCID,
        Percid::new(CAPACITY_PER_CID),
        n,
        SEND_BATCH,
    )];
    #[cfg(feature = "peers")]
    cases.push(sync_case::<u64, _>(
        TOKIO,
        Tokio::new(peer_capacity()),
        n,
        SEND_BATCH,
    ));
    cases
}

/// Threads `0..n` produce, thread `n` consumes and checks the sum.
fn sync_case<M: Message, C: SyncChannel<M> + 'static>(
    label: &str,
    chan: C,
    n: usize,
    batch: u64,
) -> Case<'static> {
    let name = case_name(label, M::NAME, batch, Consumer::Sync, n);
    Case::new(name.clone(), n + 1, move |t, ops| {
        let total = ops * (n as u64 + 1);
        if t < n {
            produce(&chan, total, n, t, batch);
        } else {
            check(&name, chan.recv_sum(total), expected_sum::<M>(total, n));
        }
    })
}

/// Fails the run when the consumer's sum is not what the producers sent.
fn check(case: &str, got: u64, want: u64) {
    assert!(
        got == want,
        "bench ring: {case}: the consumer's checksum is {got}, the producers sent {want} \
         (messages lost, duplicated or torn)"
    );
}

/// Every channel with an async consumer, `n` producers.
#[cfg(feature = "peers")]
fn async_cases<M: Message>(n: usize) -> Vec<Case<'static>> {
    let cap = peer_capacity();
    let mut cases = vec![async_case::<M, _>(PERCID, Percid::new(CAPACITY_PER_CID), n)];
    if n == 8 {
        cases.push(async_case::<M, _>(
            PERCID_STREAM,
            PercidStream(Percid::new(CAPACITY_PER_CID)),
            n,
        ));
    }
    cases.extend([
        async_case::<M, _>(TOKIO, Tokio::new(cap), n),
        async_case::<M, _>(FLUME, Flume::new(cap), n),
        async_case::<M, _>(THINGBUF, ThingbufAsync::new(cap), n),
    ]);
    cases
}

/// Threads `0..n` produce; thread `n` runs the consumer future to completion on a
/// current-thread tokio runtime (`block_on`: the future runs on that thread, which
/// parks in the runtime while the future waits).
#[cfg(feature = "peers")]
fn async_case<M: Message, C: AsyncChannel<M> + 'static>(
    label: &str,
    chan: C,
    n: usize,
) -> Case<'static> {
    let name = case_name(label, M::NAME, 1, Consumer::Async, n);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("bench ring: cannot build a tokio runtime");
    Case::new(name.clone(), n + 1, move |t, ops| {
        let total = ops * (n as u64 + 1);
        if t < n {
            produce(&chan, total, n, t, 1);
        } else {
            let got = rt.block_on(chan.recv_sum_async(total));
            check(&name, got, expected_sum::<M>(total, n));
        }
    })
}

/// Counts the tasks of a spawn sample and wakes the waiting thread at the last one.
/// The cases run one at a time, so they share one.
struct Latch {
    done: AtomicU64,
    waiter: Mutex<Option<Thread>>,
}

static LATCH: Latch = Latch {
    done: AtomicU64::new(0),
    waiter: Mutex::new(None),
};

impl Latch {
    /// Makes the calling thread the one [`Latch::wait`] wakes; called before it
    /// spawns, so before the last task can run.
    fn arm(&self) {
        *self.waiter.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::thread::current());
    }

    /// A task's work: count itself, and wake the waiter if it is the `target`th.
    #[inline]
    fn count(&self, target: u64) {
        if self.done.fetch_add(1, Ordering::AcqRel) + 1 == target
            && let Some(waiter) = &*self.waiter.lock().unwrap_or_else(|p| p.into_inner())
        {
            waiter.unpark();
        }
    }

    /// Waits until `target` tasks counted themselves, then resets for the next
    /// sample (no task of this one is left to count).
    fn wait(&self, target: u64) {
        while self.done.load(Ordering::Acquire) < target {
            std::thread::park();
        }
        let done = self.done.swap(0, Ordering::Relaxed);
        assert!(
            done == target,
            "bench ring: {done} tasks ran, {target} were spawned"
        );
    }
}

/// A spawn case: thread 0 arms the latch, every thread spawns `ops` tasks with
/// `spawn`, thread 0 waits for all of them.
fn spawn_case(
    label: &str,
    spawn: impl Fn(u64) + Sync + 'static,
    keep: impl Send + Sync + 'static,
) -> Case<'static> {
    Case::new(spawn_name(label), SPAWNERS, move |t, ops| {
        let _ = &keep;
        let target = ops * SPAWNERS as u64;
        if t == 0 {
            LATCH.arm();
        }
        for _ in 0..ops {
            spawn(target);
        }
        if t == 0 {
            LATCH.wait(target);
        }
    })
}

/// The percid executor and, with feature `peers`, tokio's multi-thread runtime.
fn spawn_cases() -> Vec<Case<'static>> {
    let exec = std::sync::Arc::new(Executor::new(SPAWN_WORKERS));
    let ours = exec.clone();
    #[allow(unused_mut)] // extended with feature `peers`
    let mut cases = vec![spawn_case(
        SPAWN_PERCID,
        move |target| ours.spawn(async move { LATCH.count(target) }),
        exec,
    )];
    #[cfg(feature = "peers")]
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(SPAWN_WORKERS)
            .build()
            .expect("bench ring: cannot build a tokio runtime");
        let handle = rt.handle().clone();
        cases.push(spawn_case(
            SPAWN_TOKIO,
            move |target| {
                drop(handle.spawn(async move { LATCH.count(target) }));
            },
            rt,
        ));
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::super::{MachineLine, Report};
    use super::*;

    fn names() -> Vec<String> {
        all_cases().into_iter().map(|c| c.name).collect()
    }

    /// Whether `name` is a case this build leaves out.
    fn left_out(name: &str) -> bool {
        !cfg!(feature = "peers")
            && (FEATURE_PEERS
                .iter()
                .any(|(label, _)| name.starts_with(&format!("{label} ")))
                || name.contains(" async "))
    }

    #[test]
    fn ratios_and_targets_name_real_cases() {
        let names = names();
        for r in &RATIOS {
            for peer in r.peer.split(" | ") {
                assert!(
                    names.iter().any(|n| n == peer) || left_out(peer),
                    "no case {peer}"
                );
            }
            assert!(
                names.iter().any(|n| n == r.ours) || left_out(r.ours),
                "no case {}",
                r.ours
            );
        }
        for t in &TARGETS {
            assert!(RATIOS.iter().any(|r| r.key == t.key), "no ratio {}", t.key);
        }
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "case names repeat");
        assert_eq!(
            case_name(PERCID, "u64", 1, Consumer::Sync, 8),
            "percid::ring u64 x1 sync 8p"
        );
        assert_eq!(spawn_name(SPAWN_TOKIO), "spawn tokio Handle::spawn 8t");
    }

    #[test]
    fn every_case_runs_and_checks_out() {
        for case in all_cases() {
            case.measure(100);
            case.measure(37);
        }
    }

    #[test]
    #[should_panic(expected = "the consumer's checksum")]
    fn a_wrong_message_fails_the_run() {
        let chan = Percid::<u64>::new(16);
        // The producer sends a 0 for its last number.
        let got = std::thread::scope(|s| {
            s.spawn(|| {
                for v in 1..100u64 {
                    chan.send(v);
                }
                chan.send(0);
            });
            chan.recv_sum(100)
        });
        check("wrong", got, expected_sum::<u64>(100, 1));
    }

    #[test]
    fn shares_add_up() {
        for (total, n) in [(0u64, 1usize), (10, 3), (65, 64), (7, 8)] {
            let sum: u64 = (0..n).map(|p| peers::share(total, n, p)).sum();
            assert_eq!(sum, total);
        }
        assert_eq!(expected_sum::<u64>(10, 1), 55);
        assert_eq!(expected_sum::<Msg64>(10, 2), 2 * (15 + 15));
    }

    #[test]
    fn best_of_two_peers_and_missing_peers() {
        let at = |name: &str, ns: f64| Measurement {
            name: name.to_owned(),
            threads: 3,
            total_ops: 3,
            samples: vec![ns; 3],
        };
        let results = vec![
            at("percid::ring u64 x1 sync 2p", 10.0),
            at("ArrayQueue u64 x1 sync 2p", 30.0),
            at("crossbeam-channel u64 x1 sync 2p", 25.0),
        ];
        let config = Config::new(true);
        let report = Report::new(BENCH.name, &config, MachineLine::probe(), results, &RATIOS);
        let table = report.table();
        assert!(
            table.contains("speedup_vs_best_crossbeam_2p: 2.50x"),
            "{table}"
        );
        assert!(
            table.contains("speedup_vs_best_crossbeam_8p: n/a"),
            "{table}"
        );
        let json = report.json().to_string();
        assert!(
            json.contains(r#""speedup_vs_best_crossbeam_2p":2.5"#),
            "{json}"
        );
        assert!(
            json.contains(r#""async_speedup_vs_tokio_8p":null"#),
            "{json}"
        );
        let note = left_out_note();
        assert_eq!(note.is_some(), !cfg!(feature = "peers"));
        if let Some(note) = note {
            assert!(note.contains("crossbeam-queue, crossbeam-channel, tokio, flume, thingbuf"));
            assert!(note.contains("cargo run --release --features peers -- bench ring"));
        }
    }
}
