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
//! * `u64 x1 sync` of the unbounded channels at every N (labels with `unbounded`,
//!   and crossbeam's `SegQueue`): sends never wait, so the producers can run ahead of
//!   the consumer and a queue grows. percid's is `Builder::unbounded` with the
//!   bounded case's rings (their overflow goes to its spill queue).
//! * `reserve u64 x1 sync 8p`: percid and tokio producers that `reserve().await` a
//!   slot and send on the permit (both on the same parking `block_on`).
//!
//! **CPU.** Besides the wall time, every case reports the process's CPU time per
//! message over the same sample (`cpu ns/op`; `cpu_ns_per_msg` in the JSON): spinning
//! and yielding while waiting cost CPU the wall time does not show. The CPU ratio
//! `async_cpu_vs_tokio_8p` is a cost, percid's CPU per message over tokio's.
//!
//! **Idle receivers.** Outside the timed rounds, receivers of empty channels wait
//! for 1 s (0.25 s with `--quick`) until their sender is dropped: percid's `recv()` on
//! a plain thread and `recv_async()` on a current-thread tokio runtime (and tokio
//! mpsc's `blocking_recv()` and `recv().await` for reference). Each receiver thread
//! reads its own CPU clock (`CLOCK_THREAD_CPUTIME_ID`) and the wall clock just before
//! it starts waiting and just after the wait returns (the disconnect wake-up
//! included); `idle_cpu_ms_*` is that CPU time in ms per second of the wait.
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
use std::time::{Duration, Instant};

use super::{Bench, Case, Config, Goal, Measurement, Ratio, Reading, Target};
use executor::Executor;
#[cfg(feature = "peers")]
use peers::{
    AsyncChannel, Crossbeam, Flume, PercidStream, Queue, Seg, Thingbuf, ThingbufAsync, Tokio,
    TokioReserve, TokioUnbounded,
};
use peers::{
    Message, Msg64, Percid, PercidReserve, SEND_BATCH, StdSync, SyncChannel, expected_sum, produce,
};

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

/// Producer threads of the reserve-then-send cases.
const RESERVE_PRODUCERS: usize = 8;

/// Slots per cid of percid's ring.
pub(crate) const CAPACITY_PER_CID: usize = 1024;

/// Outside threads of the spawn cases, and workers of both executors.
const SPAWNERS: usize = 8;
const SPAWN_WORKERS: usize = 2;

/// Messages per burst of the one-thread cases: sent, then received, by one thread.
const LOCAL_BURST: u64 = 256;

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
#[cfg_attr(not(feature = "peers"), allow(dead_code))]
const SEG_QUEUE: &str = "SegQueue";
const PERCID_UNBOUNDED: &str = "percid::ring unbounded";
#[cfg_attr(not(feature = "peers"), allow(dead_code))]
const TOKIO_UNBOUNDED: &str = "tokio mpsc unbounded";
#[cfg_attr(not(feature = "peers"), allow(dead_code))]
const CROSSBEAM_UNBOUNDED: &str = "crossbeam-channel unbounded";
#[cfg_attr(not(feature = "peers"), allow(dead_code))]
const FLUME_UNBOUNDED: &str = "flume unbounded";
const PERCID_RESERVE: &str = "percid::ring reserve";
#[cfg_attr(not(feature = "peers"), allow(dead_code))]
const TOKIO_RESERVE: &str = "tokio mpsc reserve";
const SPAWN_PERCID: &str = "spawn percid executor";
const SPAWN_TOKIO: &str = "spawn tokio Handle::spawn";

/// The peers that need feature `peers`: (case label, crate). The labels that extend
/// one of these (`tokio mpsc unbounded`) need not be listed.
const FEATURE_PEERS: [(&str, &str); 7] = [
    (QUEUE, "crossbeam-queue"),
    (SEG_QUEUE, "crossbeam-queue"),
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
    /// The producer itself, after each burst ([`local_case`]).
    Local,
}

impl Consumer {
    fn as_str(self) -> &'static str {
        match self {
            Consumer::Sync => "sync",
            Consumer::Async => "async",
            Consumer::Local => "local",
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

const RATIOS: [Ratio; 22] = [
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
        key: "local_speedup_vs_best_crossbeam",
        peer: "ArrayQueue u64 x1 local 1p | crossbeam-channel u64 x1 local 1p",
        ours: "percid::ring u64 x1 local 1p",
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
    Ratio {
        key: "unbounded_speedup_vs_tokio_8p",
        peer: "tokio mpsc unbounded u64 x1 sync 8p",
        ours: "percid::ring unbounded u64 x1 sync 8p",
    },
    Ratio {
        key: "unbounded_speedup_vs_best_crossbeam_8p",
        peer: "SegQueue u64 x1 sync 8p | crossbeam-channel unbounded u64 x1 sync 8p",
        ours: "percid::ring unbounded u64 x1 sync 8p",
    },
    Ratio {
        key: "unbounded_speedup_vs_flume_8p",
        peer: "flume unbounded u64 x1 sync 8p",
        ours: "percid::ring unbounded u64 x1 sync 8p",
    },
    Ratio {
        key: "reserve_speedup_vs_tokio_8p",
        peer: "tokio mpsc reserve u64 x1 sync 8p",
        ours: "percid::ring reserve u64 x1 sync 8p",
    },
];

/// Ratios of CPU time per message. A cost, so the numerator (percid) is the `peer`
/// field: below 1 means percid's receiving and sending burn less CPU than tokio's.
pub const CPU_RATIOS: [Ratio; 1] = [Ratio {
    key: "async_cpu_vs_tokio_8p",
    peer: "percid::ring u64 x1 async 8p",
    ours: "tokio mpsc u64 x1 async 8p",
}];

/// Keys of the idle receivers' readings: percid's, then tokio's for reference.
const IDLE_BLOCKING: &str = "idle_cpu_ms_blocking";
const IDLE_ASYNC: &str = "idle_cpu_ms_async";
#[cfg_attr(not(feature = "peers"), allow(dead_code))]
const IDLE_TOKIO_BLOCKING: &str = "idle_cpu_ms_tokio_blocking";
#[cfg_attr(not(feature = "peers"), allow(dead_code))]
const IDLE_TOKIO_ASYNC: &str = "idle_cpu_ms_tokio_async";

/// The goals the ring issues set; the table says whether each was met.
pub const TARGETS: [Target; 9] = [
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
    Target {
        key: "unbounded_speedup_vs_tokio_8p",
        goal: Goal::AtLeast(3.0),
    },
    Target {
        key: "unbounded_speedup_vs_best_crossbeam_8p",
        goal: Goal::AtLeast(2.0),
    },
    Target {
        key: "async_cpu_vs_tokio_8p",
        goal: Goal::AtMost(1.0),
    },
    Target {
        key: IDLE_BLOCKING,
        goal: Goal::AtMost(5.0),
    },
    Target {
        key: IDLE_ASYNC,
        goal: Goal::AtMost(5.0),
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
    let results = super::run(BENCH.name, &cases, config);
    drop(cases);
    let idle = if config.quick {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(1)
    };
    eprintln!(
        "bench {}: idle receivers, {} ms without a message",
        BENCH.name,
        idle.as_millis()
    );
    for reading in idle_readings(idle) {
        super::record_reading(reading);
    }
    results
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
    let mut cases = local_cases();
    for &n in &PRODUCERS {
        cases.extend(sync_cases::<u64>(n, 1));
    }
    for &n in &PRODUCERS_64B {
        cases.extend(sync_cases::<Msg64>(n, 1));
    }
    for &n in &PRODUCERS {
        cases.extend(batch_cases(n));
    }
    for &n in &PRODUCERS {
        cases.extend(unbounded_cases(n));
    }
    cases.extend(reserve_cases(RESERVE_PRODUCERS));
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

/// The unbounded channels, `n` producers sending one at a time.
fn unbounded_cases(n: usize) -> Vec<Case<'static>> {
    #[allow(unused_mut)] // extended with feature `peers`
    let mut cases = vec![sync_case::<u64, _>(
        PERCID_UNBOUNDED,
        Percid::unbounded(),
        n,
        1,
    )];
    #[cfg(feature = "peers")]
    cases.extend([
        sync_case::<u64, _>(TOKIO_UNBOUNDED, TokioUnbounded::new(), n, 1),
        sync_case::<u64, _>(CROSSBEAM_UNBOUNDED, Crossbeam::unbounded(), n, 1),
        sync_case::<u64, _>(SEG_QUEUE, Seg::new(), n, 1),
        sync_case::<u64, _>(FLUME_UNBOUNDED, Flume::unbounded(), n, 1),
    ]);
    cases
}

/// Producers that reserve a slot, then send on the permit; `n` of them.
fn reserve_cases(n: usize) -> Vec<Case<'static>> {
    #[allow(unused_mut)] // extended with feature `peers`
    let mut cases = vec![sync_case::<u64, _>(
        PERCID_RESERVE,
        PercidReserve(Percid::new(CAPACITY_PER_CID)),
        n,
        1,
    )];
    #[cfg(feature = "peers")]
    cases.push(sync_case::<u64, _>(
        TOKIO_RESERVE,
        TokioReserve(Tokio::new(peer_capacity())),
        n,
        1,
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

/// One thread that sends [`LOCAL_BURST`] messages, then receives them, and again:
/// the cost of a send and a receive when no other thread touches the channel's
/// lines (the sections' own cost, which the cross-thread cases hide behind cache
/// misses).
fn local_cases() -> Vec<Case<'static>> {
    let cap = peer_capacity();
    #[allow(unused_mut)] // extended with feature `peers`
    let mut cases = vec![
        local_case(PERCID, Percid::new(CAPACITY_PER_CID)),
        local_case(STD, StdSync::new(cap)),
    ];
    #[cfg(feature = "peers")]
    cases.extend([
        local_case(QUEUE, Queue::new(cap)),
        local_case(CROSSBEAM, Crossbeam::new(cap)),
    ]);
    cases
}

fn local_case<C: SyncChannel<u64> + 'static>(label: &str, chan: C) -> Case<'static> {
    let name = case_name(label, u64::NAME, 1, Consumer::Local, 1);
    Case::new(name.clone(), 1, move |_, ops| {
        let mut sum = 0u64;
        let mut sent = 0;
        while sent < ops {
            let burst = LOCAL_BURST.min(ops - sent);
            for v in sent + 1..=sent + burst {
                chan.send(v);
            }
            sum = sum.wrapping_add(chan.recv_sum(burst));
            sent += burst;
        }
        check(&name, sum, expected_sum::<u64>(ops, 1));
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

/// One idle receiver's wait: the CPU time its thread used and the wall time it
/// waited, each read by the thread itself just before and just after the wait.
struct Idle {
    cpu: Duration,
    wall: Duration,
}

impl Idle {
    /// Runs `wait` (which must return only once its channel is disconnected; it says
    /// whether it did) and measures it.
    fn measure(what: &str, wait: impl FnOnce() -> bool) -> Idle {
        let start = (super::thread_cpu(), Instant::now());
        let disconnected = wait();
        Idle::since(start, what, disconnected)
    }

    /// [`Idle::measure`] of a future, from inside the future the runtime runs: the
    /// runtime's own parking and waking happen on this thread, so they are counted.
    async fn measure_async(what: &str, wait: impl std::future::Future<Output = bool>) -> Idle {
        let start = (super::thread_cpu(), Instant::now());
        let disconnected = wait.await;
        Idle::since(start, what, disconnected)
    }

    fn since((cpu, wall): (Duration, Instant), what: &str, disconnected: bool) -> Idle {
        let idle = Idle {
            cpu: super::thread_cpu().saturating_sub(cpu),
            wall: wall.elapsed(),
        };
        assert!(
            disconnected,
            "bench ring: {what} returned a message nobody sent"
        );
        idle
    }

    /// CPU ms per second of waiting.
    fn ms_per_s(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e3 / self.wall.as_secs_f64().max(1e-9)
    }

    fn reading(&self, key: &'static str, what: &str) -> Reading {
        Reading {
            key,
            value: Some(self.ms_per_s()),
            unit: "ms/s",
            detail: format!(
                "{what}: {:.3} ms CPU in {} ms waiting on an empty channel until the \
                 sender's drop, per the receiver thread's CLOCK_THREAD_CPUTIME_ID",
                self.cpu.as_secs_f64() * 1e3,
                self.wall.as_millis()
            ),
        }
    }
}

/// A current-thread tokio runtime (feature `peers`) or, without tokio, the bench's
/// parking `block_on`, runs `fut` on the calling thread.
fn run_future<F: std::future::Future>(fut: F) -> F::Output {
    #[cfg(feature = "peers")]
    {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("bench ring: cannot build a tokio runtime")
            .block_on(fut)
    }
    #[cfg(not(feature = "peers"))]
    peers::block_on(fut)
}

/// Receivers of empty channels wait `idle`, all at once on their own threads, until
/// their senders are dropped; their CPU per second of waiting (see [`Idle`]).
fn idle_readings(idle: Duration) -> Vec<Reading> {
    let percid_channel = || {
        percid::ring::channel::<u64>(CAPACITY_PER_CID)
            .unwrap_or_else(|e| panic!("bench ring: cannot build the percid ring: {e:?}"))
    };
    let (blocking_tx, mut blocking_rx) = percid_channel();
    let (async_tx, mut async_rx) = percid_channel();
    #[cfg(feature = "peers")]
    let (tokio_blocking_tx, mut tokio_blocking_rx) = tokio::sync::mpsc::channel::<u64>(1);
    #[cfg(feature = "peers")]
    let (tokio_async_tx, mut tokio_async_rx) = tokio::sync::mpsc::channel::<u64>(1);
    std::thread::scope(|s| {
        let blocking = s.spawn(|| Idle::measure("recv()", || blocking_rx.recv().is_err()));
        // The clocks start at the future's first poll, after the runtime is built.
        let asynchronous = s.spawn(|| {
            run_future(Idle::measure_async("recv_async()", async {
                async_rx.recv_async().await.is_err()
            }))
        });
        #[cfg(feature = "peers")]
        let tokio_blocking = s.spawn(|| {
            Idle::measure("tokio blocking_recv()", || {
                tokio_blocking_rx.blocking_recv().is_none()
            })
        });
        #[cfg(feature = "peers")]
        let tokio_async = s.spawn(|| {
            run_future(Idle::measure_async("tokio recv().await", async {
                tokio_async_rx.recv().await.is_none()
            }))
        });
        std::thread::sleep(idle);
        drop(blocking_tx);
        drop(async_tx);
        #[cfg(feature = "peers")]
        {
            drop(tokio_blocking_tx);
            drop(tokio_async_tx);
        }
        let join = |h: std::thread::ScopedJoinHandle<'_, Idle>| {
            h.join().expect("bench ring: an idle receiver panicked")
        };
        #[allow(unused_mut)] // extended with feature `peers`
        let mut readings = vec![
            join(blocking).reading(IDLE_BLOCKING, "percid recv() on a plain thread"),
            join(asynchronous).reading(
                IDLE_ASYNC,
                if cfg!(feature = "peers") {
                    "percid recv_async() on a current-thread tokio runtime"
                } else {
                    "percid recv_async() on a parking block_on (no tokio in this build)"
                },
            ),
        ];
        #[cfg(feature = "peers")]
        readings.extend([
            join(tokio_blocking).reading(
                IDLE_TOKIO_BLOCKING,
                "tokio mpsc blocking_recv() on a plain thread",
            ),
            join(tokio_async).reading(
                IDLE_TOKIO_ASYNC,
                "tokio mpsc recv().await on a current-thread tokio runtime",
            ),
        ]);
        readings
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
        for r in RATIOS.iter().chain(&CPU_RATIOS) {
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
            assert!(
                RATIOS.iter().chain(&CPU_RATIOS).any(|r| r.key == t.key)
                    || [IDLE_BLOCKING, IDLE_ASYNC].contains(&t.key),
                "no ratio or reading {}",
                t.key
            );
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
        assert_eq!(
            case_name(PERCID_UNBOUNDED, "u64", 1, Consumer::Sync, 8),
            "percid::ring unbounded u64 x1 sync 8p"
        );
    }

    #[test]
    fn cpu_ratio_and_idle_readings_reach_table_and_json() {
        let at = |name: &str, ns: f64| Measurement {
            name: name.to_owned(),
            threads: 9,
            total_ops: 9,
            samples: vec![ns; 3],
        };
        let ours = "percid::ring u64 x1 async 8p";
        let tokio = "tokio mpsc u64 x1 async 8p";
        let wall = vec![at(ours, 10.0), at(tokio, 40.0)];
        // CPU per message is not wall time: percid 15 ns, tokio 60 ns.
        let cpu = vec![at(ours, 15.0), at(tokio, 60.0)];
        let idle = |key, value| Reading {
            key,
            value,
            unit: "ms/s",
            detail: "test".to_owned(),
        };
        let config = Config::new(true);
        let report = Report::new(BENCH.name, &config, MachineLine::probe(), wall, &RATIOS)
            .with_cpu(cpu)
            .with_readings(vec![
                idle(IDLE_BLOCKING, Some(0.5)),
                idle(IDLE_ASYNC, Some(7.0)),
            ]);
        let table = report.table();
        assert!(
            table.contains("async_speedup_vs_tokio_8p: 4.00x"),
            "{table}"
        );
        assert!(
            table.contains(&format!(
                "async_cpu_vs_tokio_8p: 0.25x  (cpu: {ours} / {tokio})  target <= 1: met"
            )),
            "{table}"
        );
        assert!(
            table.contains("idle_cpu_ms_blocking: 0.50 ms/s  (test)  target <= 5: met"),
            "{table}"
        );
        assert!(
            table.contains("idle_cpu_ms_async: 7.00 ms/s  (test)  target <= 5: missed"),
            "{table}"
        );
        let json = report.json().to_string();
        for want in [
            r#""cpu_ns_per_op":15,"cpu_ns_per_msg":15"#,
            r#""cpu_ns_per_op":60,"cpu_ns_per_msg":60"#,
            r#""async_cpu_vs_tokio_8p":0.25"#,
            r#""async_cpu_vs_tokio_8p":{"at_most":1,"met":true}"#,
            r#""idle_cpu_ms_blocking":{"value":0.5,"unit":"ms/s""#,
            r#""idle_cpu_ms_async":{"at_most":5,"met":false}"#,
            r#""cpu_ratios":["async_cpu_vs_tokio_8p"]"#,
        ] {
            assert!(json.contains(want), "{want} not in {json}");
        }
    }

    #[test]
    fn idle_receivers_return_on_disconnect() {
        let readings = idle_readings(Duration::from_millis(50));
        let keys: Vec<&str> = readings.iter().map(|r| r.key).collect();
        let mut want = vec![IDLE_BLOCKING, IDLE_ASYNC];
        if cfg!(feature = "peers") {
            want.extend([IDLE_TOKIO_BLOCKING, IDLE_TOKIO_ASYNC]);
        }
        assert_eq!(keys, want);
        for r in &readings {
            // One thread cannot use more than a second of CPU per second.
            assert!(
                r.value.is_some_and(|v| (0.0..=1000.0 * 1.05).contains(&v)),
                "{r:?}"
            );
            assert!(r.detail.contains(" ms CPU in "), "{r:?}");
        }
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
