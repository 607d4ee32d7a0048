//! # percid: per-CPU data structures on Linux restartable sequences
//!
//! percid keys its shards by the kernel's per-memory-map concurrency id
//! (`mm_cid`, Linux 6.3+): a small dense id, unique among the process's running
//! threads and bounded by min(threads, allowed CPUs). A structure therefore needs as
//! many shards as the process really runs at once — two on a 2-CPU container, not
//! 256 — and updates its shard with an rseq critical section: no atomic
//! read-modify-write, no lock on the fast path.
//!
//! ```
//! // The CPU, NUMA node and concurrency id of the calling thread: one load each
//! // from the thread's rseq area.
//! let cpu = percid::current_cpu();
//! let cid = percid::current_cid();
//! let status = percid::rseq::status();
//! println!("cpu {cpu}, cid {cid}, node {}: {status}", percid::current_node());
//! ```
//!
//! # Layers
//!
//! * [`rseq`]: the ABI, who registered the thread's rseq area (glibc, this crate, or
//!   nobody), the critical sections (x86_64 `asm!`) and their portable twins, the
//!   rseq fence ([`rseq::fence_rseq`]).
//! * [`cid`]: per-cid storage, the strided [`cid::Arena`] every structure allocates
//!   from; its [`cid::Word`] operations run one critical section each.
//! * [`numa`]: the topology, node-bound memory and placement checks behind the
//!   NUMA-aware structures ([`NumaCounter`]): shards keyed by (`node_id`, `mm_cid`),
//!   both read in one critical section.
//! * [`counter`]: `Counter`, `SignedCounter`, `NumaCounter`, `PerCid`.
//! * [`pool`]: `Pool<T>`, objects recycled through per-cid caches; [`alloc`]:
//!   `PerCidAlloc`, a small-object allocator on the same machinery, usable as the
//!   `#[global_allocator]`.
//! * [`ring`]: an MPSC channel made of per-cid rings, bounded or unbounded, with the
//!   API of tokio's `mpsc` and crossbeam's channels: one critical section per send,
//!   blocking, timed and async ends, permits, closing, a `Stream` receiver and a
//!   `Sink` sender.
//!
//! # Safety and correctness
//!
//! * Backends are chosen per thread: the **rseq** backend where the thread has a
//!   registered area (glibc's, or one this crate registers), the **portable** backend
//!   (atomics on per-CPU *lanes*) where it has none (valgrind, seccomp, old kernels,
//!   `PERCID_BACKEND=portable`). A word of an index unit is updated by critical
//!   sections; outside a section it is written only in ways no section's commit
//!   can race with (see [`cid`], "One discipline per word"): by an owner, with a
//!   value every section on the word fails on (a held `PerCid` lock, a drain
//!   token), after an rseq fence proved no section that read the old value can
//!   still commit (list heads swapped by a drain, visitors' lock tokens), or while
//!   no section can address it (a freed allocation being zeroed). Words the
//!   sections only read (ring buffers' addresses, heads) or never touch (carried
//!   totals, unit headers) are plain atomics. Lanes are written only by atomics or
//!   under a lane lock, never by a section: no word mixes a non-atomic commit with
//!   a racing atomic update.
//! * A section reads its index *inside* the section, so a preemption or migration
//!   between reading the index and committing aborts it; nothing is visible before
//!   the single committing store.
//! * The crate writes only the `rseq_cs` field of the rseq area, never the ids.
//! * Every section retries a bounded number of times, then uses the lane: nothing
//!   spins forever, even on a thread whose registration is lost.
//!
//! # Signal handlers
//!
//! A signal aborts the critical section it interrupts (the kernel sends the thread
//! to the section's abort handler, which retries), and a section run inside the
//! handler commits normally: sections nest. What is not async-signal-safe is
//! everything around them that can wait for the interrupted thread itself: a lazy
//! initialisation (`OnceLock`), a mutex, a spin lock, the allocator. The operations
//! below never do, under two conditions:
//!
//! 1. **The structure's storage exists.** A `const` [`Counter`] allocates its
//!    per-cid words on first use: build it with [`CounterBuilder::build`], or call
//!    `add(0)` once outside any handler, before the handler can run. Either also
//!    reads the process's rseq facts (once per process; a thread's first operation
//!    needs them), except [`CounterBuilder::build`] on an arena of your own
//!    ([`CounterBuilder::arena`]): then run any percid operation first.
//! 2. **Resolving a thread's backend is safe everywhere.** A thread's first
//!    operation finds its rseq registration. Where glibc registered rseq
//!    ([`rseq::Owner::Glibc`]) or a backend is forced (`PERCID_BACKEND`), it only
//!    reads the thread pointer and sets thread-locals, idempotently. Where percid
//!    registers rseq itself (`GLIBC_TUNABLES=glibc.pthread.rseq=0`, glibc < 2.35,
//!    musl), it maps a page and makes the `rseq` system call with every signal
//!    blocked, and arms a `pthread` key (no allocation) whose destructor
//!    unregisters the area at thread exit; a handler that resolved the thread first
//!    keeps its result.
//!
//! | operation | async-signal-safe |
//! |---|---|
//! | [`Counter::add`], [`Counter::inc`], [`SignedCounter::add`], [`SignedCounter::sub`] | yes, under 1, on every backend |
//! | [`Counter::sum`], [`Counter::take`], [`Counter::approx`], [`Counter::compare`], [`SignedCounter::sum`], [`SignedCounter::take`] | yes (loads and compare-and-swap loops; before the storage exists they read 0) |
//! | [`current_cpu`], [`current_cid`], [`current_node`] | yes |
//! | [`cid::Word::add`] on a word of a plain arena | yes |
//! | [`NumaCounter`], [`cid::Word::add_on_node`] | no: a node's first use reserves its plane under a lock |
//! | [`PerCid`] | no: a per-cid lock the interrupted thread may hold |
//! | [`Pool`], [`PoolBox`] drop, [`alloc::PerCidAlloc`] | no: depot mutexes, slab growth, lane spin locks |
//! | [`ring`] senders and receivers | no: lane spin locks, wakers, buffer allocation |
//! | [`cid::Word`] list, compare-and-store and foreign operations | no: lane and commit spin locks |
//!
//! Why the adds hold on each backend: on the rseq backend an add is a section, and
//! when its sections keep aborting it takes its lane with an atomic `fetch_add`; on
//! the portable backend it is that atomic `fetch_add`, with no lock; on the
//! simulated backend a section takes its cid's commit lock, so an add that a
//! handler starts while its thread is inside a simulated or lane-locked region
//! takes the lane's atomic `fetch_add` instead (a thread-local depth marks those
//! regions). The readers sum the lanes with the cids, so nothing is lost.
//!
//! # Environment
//!
//! | variable | effect |
//! |---|---|
//! | `PERCID_BACKEND=portable` | every thread uses the portable backend |
//! | `PERCID_BACKEND=simulated` | the simulated backend (tests): sections in Rust with injected aborts |
//! | `PERCID_SIM_CIDS=N` | simulated cids threads are spread over (default 2) |
//! | `PERCID_INDEX=cpu_id` | index shards by `cpu_id`, as on kernels before 6.3 (tests) |
//! | `GLIBC_TUNABLES=glibc.pthread.rseq=0` | glibc does not register: percid registers itself |

#![deny(unsafe_op_in_unsafe_fn)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]
// Under loom the rseq backend (registration, asm) is compiled but never selected.
#![cfg_attr(loom, allow(dead_code, unused_imports))]

pub mod alloc;
pub mod cid;
pub mod counter;
pub mod numa;
pub mod pool;
pub mod ring;
pub mod rseq;
pub(crate) mod sync;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

/// Register-only optimisation barriers for the crate's benchmarks (`percid bench`,
/// `benches/`): not an API. They live here because all of the crate's `asm!` lives
/// in `rseq::arch`.
#[doc(hidden)]
pub mod bench_support {
    pub use crate::rseq::arch::barrier::{opaque, opaque_ptr};
}

pub use counter::{Counter, CounterBuilder, NumaCounter, PerCid, SignedCounter};
pub use pool::{OwnedPoolBox, Pool, PoolBox};
pub use rseq::{current_cid, current_cpu, current_node};
