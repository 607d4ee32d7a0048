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
//!   `PERCID_BACKEND=portable`). Index units are only written by critical sections,
//!   lanes only by atomics or under a lane lock: the two never race on one word.
//! * A section reads its index *inside* the section, so a preemption or migration
//!   between reading the index and committing aborts it; nothing is visible before
//!   the single committing store.
//! * The crate writes only the `rseq_cs` field of the rseq area, never the ids.
//! * Every section retries a bounded number of times, then uses the lane: nothing
//!   spins forever, even on a thread whose registration is lost.
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
pub mod testing;

pub use counter::{Counter, CounterBuilder, NumaCounter, PerCid, SignedCounter};
pub use pool::{OwnedPoolBox, Pool, PoolBox};
pub use rseq::{current_cid, current_cpu, current_node};
