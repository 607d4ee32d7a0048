//! The rseq layer: ABI, registration, status, the critical sections and their
//! portable twins.
//!
//! * [`abi`]: the kernel's numbers, named once.
//! * `registration`: who registered this thread's area (glibc, this crate, nobody)
//!   and the per-thread handle the sections use.
//! * [`spec`]: each critical section's pseudocode, executable.
//! * `arch`: the same sections in `asm!` (x86_64); the only place with `asm!`.
//! * `simulated`: the sections run step by step with aborts, for loom and fuzzing.
//! * [`membarrier`]: the fence that aborts every running section of the process.

pub mod abi;
pub(crate) mod arch;
pub mod membarrier;
pub(crate) mod registration;
pub(crate) mod simulated;
pub mod spec;

pub use membarrier::{MembarrierError, fence_available, fence_rseq};

use registration::{ThreadBackend, process, thread_backend};
use std::fmt;

/// Who registered the calling thread's rseq area.
///
/// ```
/// use percid::rseq::{Owner, status};
///
/// let st = status();
/// if st.owner == Owner::Glibc {
///     println!("glibc registered rseq: percid uses its area");
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// glibc (>= 2.35) registered it; the crate uses glibc's area.
    Glibc,
    /// Nobody had; this crate registered an area of its own for the thread.
    SelfRegistered,
    /// The thread has no rseq area the crate can use: see [`Status::reason`].
    None,
}

impl Owner {
    /// `"glibc"`, `"self"` or `"none"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Owner::Glibc => "glibc",
            Owner::SelfRegistered => "self",
            Owner::None => "none",
        }
    }
}

/// How a thread runs the operations on its shard.
///
/// ```
/// use percid::rseq::{Backend, status};
///
/// match status().backend {
///     Backend::Rseq => println!("critical sections on mm_cid or cpu_id"),
///     Backend::Portable => println!("atomics on per-CPU lanes"),
///     other => println!("{other:?}"),
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// rseq critical sections in `asm!`: no atomic read-modify-write, no lock.
    Rseq,
    /// Atomics on per-CPU lanes that are never written by rseq sections.
    Portable,
    /// The sections run step by step in Rust with injected aborts (tests only).
    Simulated,
}

impl Backend {
    /// `"rseq"`, `"portable"` or `"simulated"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Rseq => "rseq",
            Backend::Portable => "portable",
            Backend::Simulated => "simulated",
        }
    }
}

/// Which field of the rseq area indexes the shards.
///
/// ```
/// use percid::rseq::{IndexMode, status};
///
/// let st = status();
/// if st.index == IndexMode::MmCid {
///     assert!(st.mm_cid);
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexMode {
    /// `mm_cid` (Linux >= 6.3): shards follow the concurrency really used.
    MmCid,
    /// `cpu_id` (Linux 4.18–6.2, or forced with `PERCID_INDEX=cpu_id`): shards are
    /// bounded by the possible CPUs.
    CpuId,
}

impl IndexMode {
    /// `"mm_cid"` or `"cpu_id"`.
    pub fn as_str(self) -> &'static str {
        match self {
            IndexMode::MmCid => "mm_cid",
            IndexMode::CpuId => "cpu_id",
        }
    }
}

/// The rseq status of the calling thread and its process.
///
/// ```
/// let st = percid::rseq::status();
/// println!("{st}"); // owner, backend, index, and why not rseq when it is not
/// ```
#[derive(Clone, Debug)]
pub struct Status {
    /// Who registered this thread's area.
    pub owner: Owner,
    /// Why the thread does not use rseq (or why a mode was forced); `None` when it does.
    pub reason: Option<String>,
    /// The kernel's `AT_RSEQ_FEATURE_SIZE` (0 before Linux 6.3).
    pub feature_size: u32,
    /// The kernel's `AT_RSEQ_ALIGN` (0 before Linux 6.3).
    pub align: u32,
    /// How much of the area the kernel keeps up to date for this registration.
    pub active_size: u32,
    /// Whether `node_id` is maintained (active size >= 24).
    pub node_id: bool,
    /// Whether shards are indexed by `mm_cid` (active size >= 28, not overridden).
    pub mm_cid: bool,
    /// The field shards are indexed by.
    pub index: IndexMode,
    /// The calling thread's backend.
    pub backend: Backend,
    /// Possible CPUs: the bound of `cpu_id` and `mm_cid`.
    pub possible_cpus: u32,
}

/// The rseq status of the calling thread: who registered, what the kernel offers,
/// which backend this thread uses.
///
/// ```
/// let st = percid::rseq::status();
/// assert!(st.possible_cpus >= 1);
/// ```
pub fn status() -> Status {
    let p = process();
    let backend = match thread_backend() {
        ThreadBackend::Rseq { .. } => Backend::Rseq,
        ThreadBackend::Portable => Backend::Portable,
        ThreadBackend::Simulated => Backend::Simulated,
    };
    let (owner, reason) = registration::thread_owner();
    Status {
        owner,
        reason,
        feature_size: p.feature_size,
        align: p.align,
        active_size: p.active_size,
        node_id: p.node_id,
        mm_cid: p.mm_cid,
        index: p.index,
        backend,
        possible_cpus: p.possible_cpus,
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rseq owner {}, backend {}, index {}, feature size {}, align {}, active size {}, node_id {}, mm_cid {}",
            self.owner.as_str(),
            self.backend.as_str(),
            self.index.as_str(),
            self.feature_size,
            self.align,
            self.active_size,
            self.node_id,
            self.mm_cid,
        )?;
        if let Some(reason) = &self.reason {
            write!(f, " ({reason})")?;
        }
        Ok(())
    }
}

/// Reads a `u32` field of the thread's rseq area, which the kernel rewrites at any time.
#[inline(always)]
fn read_field(area: usize, offset: usize) -> u32 {
    // Volatile: the kernel writes the field behind the compiler's back.
    // SAFETY: `area` is the calling thread's registered rseq area (or a field of it)
    // from the registration layer, valid while the thread runs; `offset` stays inside.
    unsafe { core::ptr::read_volatile((area + offset) as *const u32) }
}

/// The CPU the calling thread runs on: one load from the rseq area (libc's
/// `sched_getcpu` in the portable backend). Stale as soon as it returns: use it for
/// statistics and placement hints, never to index a shard outside a critical section.
///
/// ```
/// let cpu = percid::current_cpu();
/// assert!(cpu < percid::rseq::status().possible_cpus);
/// ```
#[inline]
pub fn current_cpu() -> u32 {
    match thread_backend() {
        ThreadBackend::Rseq { area, .. } => read_field(area, abi::offset::CPU_ID),
        ThreadBackend::Simulated => simulated::thread_cid(),
        ThreadBackend::Portable => portable_cpu(),
    }
}

/// The NUMA node the calling thread runs on: one load from the rseq area when the
/// kernel maintains `node_id`, the getcpu system call otherwise.
///
/// ```
/// let node = percid::current_node(); // 0 on a one-node machine
/// println!("running on node {node}");
/// ```
#[inline]
pub fn current_node() -> u32 {
    #[cfg(not(loom))]
    if let Some(field) = registration::node_field() {
        return read_field(field, 0);
    }
    current_node_slow()
}

#[cold]
fn current_node_slow() -> u32 {
    match thread_backend() {
        ThreadBackend::Rseq { area, .. } if process().node_id => {
            read_field(area, abi::offset::NODE_ID)
        }
        ThreadBackend::Simulated => simulated::thread_node(),
        _ => portable_node(),
    }
}

/// The index the calling thread's shards use right now: its `mm_cid` (or `cpu_id`
/// in cpu-id mode), one load from the rseq area. In the portable backend, the CPU
/// (portable threads use per-CPU lanes). Stale as soon as it returns.
///
/// ```
/// let cid = percid::current_cid();
/// assert!(cid < percid::rseq::status().possible_cpus);
/// ```
#[inline]
pub fn current_cid() -> u32 {
    #[cfg(not(loom))]
    if let Some(field) = registration::index_field() {
        return read_field(field, 0);
    }
    current_cid_slow()
}

#[cold]
fn current_cid_slow() -> u32 {
    match thread_backend() {
        ThreadBackend::Rseq { index, .. } => read_field(index, 0),
        ThreadBackend::Simulated => simulated::thread_cid(),
        ThreadBackend::Portable => portable_cpu(),
    }
}

/// `sched_getcpu`, or 0 where it fails. Under loom, the simulated cid (the model
/// must not depend on where the OS runs it).
#[cfg(loom)]
pub(crate) fn portable_cpu() -> u32 {
    simulated::thread_cid()
}

/// `sched_getcpu`, or 0 where it fails.
#[cfg(not(loom))]
#[cold]
pub(crate) fn portable_cpu() -> u32 {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).unwrap_or(0)
}

/// The node from the getcpu system call, or 0 where it fails.
#[cold]
fn portable_node() -> u32 {
    let mut cpu: libc::c_uint = 0;
    let mut node: libc::c_uint = 0;
    // SAFETY: getcpu writes two unsigned ints through valid pointers; the third
    // argument (tcache) is unused since Linux 2.6.24 and may be null.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_getcpu,
            &mut cpu as *mut libc::c_uint,
            &mut node as *mut libc::c_uint,
            core::ptr::null_mut::<libc::c_void>(),
        )
    };
    if rc == 0 { node } else { 0 }
}
