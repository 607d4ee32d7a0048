//! Architecture code: the thread pointer and the critical sections in `asm!`.
//!
//! All of the crate's `asm!` lives below this module, one file per architecture.
//! An architecture without a file here builds with the portable backend: its
//! [`HAS_SECTIONS`] is false and the registration layer never selects rseq.

#[cfg(all(target_arch = "x86_64", not(loom)))]
mod x86_64;
#[cfg(all(target_arch = "x86_64", not(loom)))]
pub(crate) use x86_64::*;

/// The benchmarks' barriers, for `crate::bench_support` (public items: the
/// crate-wide glob above would only re-export them to the crate).
pub(crate) mod barrier {
    #[cfg(not(all(target_arch = "x86_64", not(loom))))]
    pub use super::portable_only::{opaque, opaque_ptr};
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    pub use super::x86_64::{opaque, opaque_ptr};
}

/// Whether this architecture has rseq critical sections.
#[cfg(all(target_arch = "x86_64", not(loom)))]
pub(crate) const HAS_SECTIONS: bool = true;

#[cfg(not(all(target_arch = "x86_64", not(loom))))]
mod portable_only {
    //! No critical sections here: the registration layer forces the portable (or,
    //! under loom, the simulated) backend, so no thread ever has a registered area
    //! and these are never called. Should one be, every section reports `Aborted`
    //! and the caller takes its lane.

    use super::{PayloadArgs, SectionSite, SectionStatus};

    pub(crate) const HAS_SECTIONS: bool = false;

    /// The benchmarks' barrier (see the x86_64 version): `black_box` here.
    #[inline(always)]
    pub fn opaque(x: u64) -> u64 {
        std::hint::black_box(x)
    }

    /// The benchmarks' barrier for a reference: `black_box` here.
    #[inline(always)]
    pub fn opaque_ptr<T>(p: &T) -> &T {
        std::hint::black_box(p)
    }

    /// Not used without critical sections; glibc's area is never looked up.
    pub(crate) fn thread_pointer() -> usize {
        0
    }

    /// No link-time lookup here: the registration layer falls back to `dlsym` (and
    /// never selects rseq anyway).
    pub(crate) fn glibc_rseq_symbols() -> (usize, usize) {
        (0, 0)
    }

    /// # Safety
    /// None needed: nothing is accessed.
    pub(crate) unsafe fn load_add_store(
        _: SectionSite,
        _: *mut u64,
        _: u64,
    ) -> (SectionStatus, u32) {
        (SectionStatus::Aborted, 0)
    }

    /// # Safety
    /// None needed: nothing is accessed.
    pub(crate) unsafe fn thin_add(_: usize, _: *mut u64, _: u32, _: u64) -> bool {
        false
    }

    /// # Safety
    /// None needed: nothing is accessed.
    pub(crate) unsafe fn thin_add_index(_: usize, _: *mut u64, _: u32, _: u64) -> u32 {
        u32::MAX
    }

    /// # Safety
    /// None needed: nothing is accessed.
    pub(crate) unsafe fn thin_compare_store_index(
        _: usize,
        _: *mut u64,
        _: u32,
        _: u64,
        _: u64,
    ) -> u32 {
        u32::MAX
    }

    /// # Safety
    /// None needed: nothing is accessed.
    pub(crate) unsafe fn thin_list_pop(_: usize, _: *mut u64, _: u32) -> usize {
        0
    }

    /// # Safety
    /// None needed: nothing is accessed.
    pub(crate) unsafe fn thin_list_push(_: usize, _: *mut u64, _: u32, _: usize, _: u64) -> bool {
        false
    }

    /// # Safety
    /// None needed: nothing is accessed.
    pub(crate) unsafe fn thin_push_one<
        const BUFFER: usize,
        const CACHED: usize,
        const HEAD: usize,
    >(
        _: usize,
        _: *mut u64,
        _: u32,
        _: &PayloadArgs,
        _: *const u8,
    ) -> SectionStatus {
        SectionStatus::Aborted
    }

    /// # Safety
    /// None needed: nothing is accessed.
    pub(crate) unsafe fn numa_load_add_store(
        _: SectionSite,
        _: usize,
        _: u64,
    ) -> (SectionStatus, u32, u32) {
        (SectionStatus::Aborted, 0, 0)
    }

    /// # Safety
    /// None needed: nothing is accessed.
    pub(crate) unsafe fn numa_load_add_store_committed(_: SectionSite, _: usize, _: u64) -> bool {
        false
    }

    /// # Safety
    /// None needed: nothing is accessed.
    pub(crate) unsafe fn numa_list_pop(
        _: SectionSite,
        _: usize,
    ) -> (SectionStatus, u32, u32, usize) {
        (SectionStatus::Aborted, 0, 0, 0)
    }

    /// # Safety
    /// None needed: nothing is accessed.
    pub(crate) unsafe fn numa_list_push(
        _: SectionSite,
        _: usize,
        _: usize,
        _: u64,
    ) -> (SectionStatus, u32, u32) {
        (SectionStatus::Aborted, 0, 0)
    }

    /// # Safety
    /// None needed: nothing is accessed.
    pub(crate) unsafe fn load_cbne_store(
        _: SectionSite,
        _: *mut u64,
        _: u64,
        _: u64,
    ) -> (SectionStatus, u32, u64) {
        (SectionStatus::Aborted, 0, 0)
    }

    /// # Safety
    /// None needed: nothing is accessed.
    pub(crate) unsafe fn list_pop(_: SectionSite, _: *mut u64) -> (SectionStatus, u32, usize) {
        (SectionStatus::Aborted, 0, 0)
    }

    /// # Safety
    /// None needed: nothing is accessed.
    pub(crate) unsafe fn list_push(
        _: SectionSite,
        _: *mut u64,
        _: usize,
        _: u64,
    ) -> (SectionStatus, u32) {
        (SectionStatus::Aborted, 0)
    }

    /// # Safety
    /// None needed: nothing is accessed.
    pub(crate) unsafe fn store_payload_commit_index(
        _: SectionSite,
        _: &PayloadArgs,
    ) -> (SectionStatus, u32, usize) {
        (SectionStatus::Aborted, 0, 0)
    }

    /// # Safety
    /// None needed: nothing is accessed.
    pub(crate) unsafe fn numa_store_payload_commit_index(
        _: SectionSite,
        _: &PayloadArgs,
    ) -> (SectionStatus, u32, u32, usize) {
        (SectionStatus::Aborted, 0, 0, 0)
    }
}
#[cfg(not(all(target_arch = "x86_64", not(loom))))]
pub(crate) use portable_only::*;

/// Where a section runs: the thread's registered area and index field, and the
/// arena's materialised-index limit.
#[derive(Clone, Copy)]
pub(crate) struct SectionSite {
    /// Address of the thread's registered `struct rseq`.
    pub area: usize,
    /// Address of the field that indexes shards (`mm_cid` or `cpu_id`).
    pub index: usize,
    /// The arena's count of materialised indexes: the section fails with
    /// `NotMaterialized` for an index at or above it (plain sections).
    pub limit: *const u32,
    /// Address of the `u32` that names the thread's NUMA node: the area's `node_id`,
    /// or a test's injected cell (NUMA sections; null otherwise).
    pub node: *const u32,
    /// The chunk's node directory (NUMA sections; null otherwise).
    pub dir: *const u8,
}

impl SectionSite {
    /// The site of a plain section: plane 0, bounded by `limit`.
    #[inline(always)]
    pub(crate) fn plain(area: usize, index: usize, limit: *const u32) -> SectionSite {
        SectionSite {
            area,
            index,
            limit,
            node: std::ptr::null(),
            dir: std::ptr::null(),
        }
    }

    /// The site of a NUMA section: the plane of the node read from `node`, found in
    /// the chunk directory `dir`.
    #[inline(always)]
    pub(crate) fn numa(area: usize, index: usize, node: *const u32, dir: *const u8) -> SectionSite {
        SectionSite {
            area,
            index,
            limit: std::ptr::null(),
            node,
            dir,
        }
    }
}

/// The operands of [`store_payload_commit_index`] and its NUMA form, read from
/// memory inside the section (there are more of them than free registers). The
/// field order is the sections' layout: do not reorder.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct PayloadArgs {
    /// Tail word (producers' commit target): its unit-0 address (plain), or its byte
    /// offset in a unit (NUMA). Likewise `head` and `buffer`.
    pub tail: *mut u64,
    /// Head word (the consumer's position).
    pub head: *const u64,
    /// Word holding the address of the index's slot buffer (0: none yet).
    pub buffer: *const u64,
    /// Slots per ring, a power of two.
    pub capacity: u64,
    /// `capacity - 1`.
    pub mask: u64,
    /// The payloads, `count * slot_bytes` readable bytes.
    pub src: *const u8,
    /// Payloads offered, at least 1; the section takes as many as fit.
    pub count: u64,
    /// Bytes per slot, a multiple of 8.
    pub slot_bytes: u64,
    /// The producers' copy of the head (as `tail`: unit-0 address or byte offset):
    /// a lower bound of the head that the sections read instead of the head itself,
    /// and refresh from it only when the copy says the ring is full, so a send reads
    /// no line the consumer writes until the ring looks full.
    pub cached: *const u64,
    /// A word that closes every ring of the channel to senders (an absolute
    /// address, in both forms): the section fails, as for a full ring, while it is
    /// non-zero. It is read inside the section, so once it is set and an rseq fence
    /// has run, no send that read it before can still publish.
    pub gate: *const u64,
}

// The sections read `PayloadArgs` at fixed offsets (`payload_body!`).
const _: () = {
    use std::mem::offset_of;
    assert!(offset_of!(PayloadArgs, tail) == 0);
    assert!(offset_of!(PayloadArgs, head) == 8);
    assert!(offset_of!(PayloadArgs, buffer) == 16);
    assert!(offset_of!(PayloadArgs, capacity) == 24);
    assert!(offset_of!(PayloadArgs, mask) == 32);
    assert!(offset_of!(PayloadArgs, src) == 40);
    assert!(offset_of!(PayloadArgs, count) == 48);
    assert!(offset_of!(PayloadArgs, slot_bytes) == 56);
    assert!(offset_of!(PayloadArgs, cached) == 64);
    assert!(offset_of!(PayloadArgs, gate) == 72);
};

/// What one attempt of a critical section ended with, as the asm reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum SectionStatus {
    /// The committing store happened.
    Committed = 0,
    /// The kernel aborted the section (preemption, migration, signal).
    Aborted = 1,
    /// The index read inside the section is not below the arena's materialised
    /// limit: materialise it (or fall back to a lane) and try again.
    NotMaterialized = 2,
    /// The section's own check failed (compare failed, list empty or full, ring
    /// full); nothing was stored.
    Failed = 3,
}

impl SectionStatus {
    #[inline(always)]
    pub(crate) fn from_raw(raw: u32) -> SectionStatus {
        match raw {
            0 => SectionStatus::Committed,
            1 => SectionStatus::Aborted,
            2 => SectionStatus::NotMaterialized,
            _ => SectionStatus::Failed,
        }
    }
}
