//! x86_64 critical sections.
//!
//! Each section follows the pseudocode of the same name in [`crate::rseq::spec`] and
//! the layout of librseq's `arch/x86_64.h` (written anew here):
//!
//! * the descriptor (`struct rseq_cs`) goes to `__rseq_cs` (32-byte aligned), a pointer
//!   to it to `__rseq_cs_ptr_array`, and every early exit as a `(start, exit)` pair to
//!   `__rseq_exit_point_array`, where debuggers look for them;
//! * the section is armed by storing the descriptor's address into the thread's
//!   `rseq_cs` field, then reads the shard index (`mm_cid`, or `cpu_id`) *inside* the
//!   section, so the index cannot go stale before the commit;
//! * the last instruction of the section is the single committing store;
//! * the abort handler lives in `__rseq_failure`, right after the 4-byte signature the
//!   kernel checks, and jumps back to a label that reports `Aborted`.
//!
//! # No registration check
//!
//! The sections do not test `cpu_id` for a registration that is gone (-1): no
//! thread runs one after its registration ends. glibc never unregisters a thread
//! (its area lives until the thread is gone; checked with strace on glibc 2.36: no
//! unregistering `rseq` call at thread exit), and an area percid registered itself
//! is unregistered by a `pthread` key destructor that first resets the thread's
//! cached area, so later destructors and signal handlers take the portable lane
//! (`registration::unregister_owned`). A `vfork` child shares its parent's
//! thread-locals but has no registration; it may only `exec` or `_exit`.
//!
//! # Loads and stores, not `add [mem]`
//!
//! An add commits with `mov` from a register after a `mov` load, not with a
//! memory-destination `add`. The two are the same section (the last instruction is
//! the one committing store), but on the Xeon this was measured on, a chain of adds
//! to one word whose address is computed from an index loaded each time (as in a
//! section) took 2.2-2.5 ns each as `add [mem], reg` and 0.65-1.0 ns as load, add,
//! store: the core forwards the separate store to the next load. (AMD was not
//! measured.)
//!
//! # Thin sections
//!
//! The `thin_*` sections are the fast paths' forms: they read `mm_cid` at its fixed
//! offset in the area (no index-field pointer), and every ending but the commit
//! leaves through one out-of-line exit with nothing to decode; the caller's slow
//! path then redoes the operation with the full section. Threads indexed by
//! `cpu_id` never take them (`registration::thin_area` is 0 for them).
//! [`thin_push_one`], a ring send of one payload, has an inline branch of its own
//! (the producers' copy of the head refreshed when it says full): code that a
//! section jumps to must lie between its start and its commit, or the kernel would
//! not abort it there.
//!
//! The add commits with `mov` / `add` / `mov` through one address register, not
//! with `add qword ptr [mem]` nor a `[base + index]` operand: on the Sapphire Rapids
//! core we measure, either of those forms made `Counter::add` 2.5 ns instead of 1.0
//! (three quick bench runs each). Likely cause: the core's fast store-to-load
//! forwarding pairs a store with the next add's load only in this form; the other
//! forms wait out the full forwarding latency on every add.
//!
//! Local labels: `2` start, `3` descriptor, `4` post-commit, `5` abort handler, `6`
//! aborted, `7` not materialised, `8` end, `9` failed, `22`/`23`/`32` loops, `28` the end
//! of the thin sections that return their index, `31` a thin send's room found. Labels made only of 0s and 1s would be read as binary
//! literals by LLVM and are avoided.

use super::{PayloadArgs, SectionSite, SectionStatus};
use crate::cid::{DIR_BASE, DIR_LIMIT, DIR_PLANES, DIR_SLOT_SHIFT, UNIT_SHIFT};
use crate::rseq::abi;
use core::arch::asm;

/// The thread pointer (`%fs` base): glibc's rseq area is at this + `__rseq_offset`.
#[inline(always)]
pub(crate) fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: on x86_64 Linux, `%fs:0` holds the thread pointer itself (the TCB's
    // self pointer, as the TLS ABI requires); reading it has no side effects.
    unsafe {
        asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags))
    };
    tp
}

/// The addresses of glibc's `__rseq_offset` and `__rseq_size` as the linker resolved
/// them, or 0 for a symbol that no linked object defines. Static builds only.
///
/// Both are *weak* undefined references (the `.weak` directives are in the same asm
/// block as the references, so they hold in whatever codegen unit this lands): the
/// binary links and runs without them (glibc < 2.35), and the address reads 0. This
/// is how a static glibc binary finds glibc's registration, where `dlsym` finds
/// nothing. The addresses are loaded through the GOT in asm, never by taking the
/// address of an `extern` static: the compiler assumes a Rust static is never at
/// address 0 and would fold the null check away.
///
/// Checked here (glibc 2.36, binutils 2.40): static-pie reads glibc's symbols, and 0
/// for an absent one. Dynamic builds do not use this: `dlsym` finds the symbols there,
/// and a link-time reference would bind to `__rseq_offset@GLIBC_2.35` with a
/// non-weak version need, so the binary would no longer start on glibc < 2.35.
#[cfg(target_feature = "crt-static")]
#[inline]
pub(crate) fn glibc_rseq_symbols() -> (usize, usize) {
    let offset: usize;
    let size: usize;
    // SAFETY: two loads from the GOT, which the linker filled (static-pie: the
    // start-up code relocated it) before any Rust code runs, and which stays mapped
    // afterwards; an undefined weak symbol's entry holds 0. No other memory is read.
    unsafe {
        asm!(
            ".weak __rseq_offset",
            ".weak __rseq_size",
            "mov {offset}, qword ptr [rip + __rseq_offset@GOTPCREL]",
            "mov {size}, qword ptr [rip + __rseq_size@GOTPCREL]",
            offset = out(reg) offset,
            size = out(reg) size,
            options(nostack, readonly, preserves_flags, pure),
        )
    };
    (offset, size)
}

/// Dynamic builds: no link-time look-up (see the static version); `dlsym` finds
/// glibc's symbols.
#[cfg(not(target_feature = "crt-static"))]
#[inline]
pub(crate) fn glibc_rseq_symbols() -> (usize, usize) {
    (0, 0)
}

/// A `u64` the compiler cannot see through, passed in a register: the benchmarks'
/// per-operation barrier (`percid::bench_support::opaque`).
///
/// Not `std::hint::black_box`: that stores its argument to a stack slot and hands
/// the compiler a pointer to it, so a loop calling it once per operation stores to
/// and reloads the stack every iteration; when that slot shares address bits 0..11
/// with the word under test (4K aliasing), the word's load waits on the store, and
/// the same code read 5x slower in one link layout than in another. This passes the
/// value through an empty `asm!` in a register. The asm is not `nomem`: the compiler
/// must assume it reads and writes memory, so a loop of increments (a thread-local
/// cell's, an atomic add) stays one increment per iteration.
#[inline(always)]
pub fn opaque(mut x: u64) -> u64 {
    // SAFETY: the template is a comment: no instruction runs. Only `x`'s register is
    // named, and it comes back unchanged; neither the stack nor the flags change.
    unsafe { asm!("/* {0} */", inout(reg) x, options(nostack, preserves_flags)) };
    x
}

/// [`opaque`] for a reference: `p`, which the compiler must assume the (empty) asm
/// may have read through, written through or replaced.
#[inline(always)]
pub fn opaque_ptr<T>(p: &T) -> &T {
    let mut ptr = std::ptr::from_ref(p);
    // SAFETY: as in `opaque`: no instruction runs, `ptr`'s register comes back
    // unchanged.
    unsafe { asm!("/* {0} */", inout(reg) ptr, options(nostack, preserves_flags)) };
    // SAFETY: `ptr` is `p` unchanged: valid and shared for `p`'s lifetime.
    unsafe { &*ptr }
}

/// The start every section shares: descriptor, pointer and exit-point entries, and
/// arming (through `{off}`). `$extra_exits` lists more exits for debuggers.
macro_rules! section_header {
    ($extra_exits:expr) => {
        concat!(
            ".pushsection __rseq_cs, \"aw\"\n",
            ".balign 32\n",
            "3:\n",
            ".long 0, 0\n",
            ".quad 2f, (4f - 2f), 5f\n",
            ".popsection\n",
            // Debuggers find sections and their exits here; `R` keeps the linker's
            // garbage collection from dropping these unreferenced tables.
            ".pushsection __rseq_cs_ptr_array, \"awR\"\n",
            ".balign 8\n",
            ".quad 3b\n",
            ".popsection\n",
            ".pushsection __rseq_exit_point_array, \"awR\"\n",
            ".balign 8\n",
            ".quad 2f, 7f\n",
            ".popsection\n",
            $extra_exits,
            // Arm: rseq_cs = &descriptor. No registration check follows: no thread
            // runs a section once its registration is gone (see the module docs,
            // "No registration check").
            "lea {off}, [rip + 3b]\n",
            "mov qword ptr [{area} + {cs_field}], {off}\n",
            "2:\n",
        )
    };
}

/// The exit-point entry of a section's own failure exit (label 9).
macro_rules! fails_exit {
    () => {
        concat!(
            ".pushsection __rseq_exit_point_array, \"awR\"\n",
            ".balign 8\n",
            ".quad 2f, 9f\n",
            ".popsection\n",
        )
    };
}

/// Everything before a plain section's body: [`section_header`], the index read
/// and its bound check against plane 0's limit. Leaves the index in `{idx}` and its
/// unit offset in `{off}`. `section_start!(fails)` also lists the failure exit.
macro_rules! section_start {
    () => {
        section_start!("")
    };
    (fails) => {
        section_start!(fails_exit!())
    };
    ($extra_exits:expr) => {
        concat!(
            section_header!($extra_exits),
            // The index is read inside the section: a migration aborts us.
            "mov {idx:e}, dword ptr [{index}]\n",
            "cmp {idx:e}, dword ptr [{limit}]\n",
            "jae 7f\n",
            // off = this index's unit offset in the arena.
            "mov {off:e}, {idx:e}\n",
            "shl {off}, {shift}\n",
        )
    };
}

/// Everything before a NUMA section's body: [`section_header`], then the node and
/// the index, both read inside the section: the node is checked against the
/// directory's plane count, the index against that plane's limit. Leaves the node in
/// `{nd}`, the index in `{idx}` and the address of unit (node, index) in `{off}`.
///
/// `numa_section_start!(fails)` also lists the failure exit (label 9).
///
/// The node is read for locality, not for exclusivity: the index alone is unique
/// among running threads, so unit (n, c) belongs to cid c whatever n a thread reads.
macro_rules! numa_section_start {
    () => {
        numa_section_start!("")
    };
    (fails) => {
        numa_section_start!(fails_exit!())
    };
    ($extra_exits:expr) => {
        concat!(
            section_header!($extra_exits),
            "mov {nd:e}, dword ptr [{node}]\n",
            "cmp {nd:e}, dword ptr [{dir} + {dir_planes}]\n",
            "jae 7f\n",
            "mov {idx:e}, dword ptr [{index}]\n",
            // off = the node's directory slot, minus the header.
            "mov {off:e}, {nd:e}\n",
            "shl {off}, {slot_shift}\n",
            "add {off}, {dir}\n",
            "cmp {idx:e}, dword ptr [{off} + {dir_limit}]\n",
            "jae 7f\n",
            // The limit before the base: a materialised index implies a visible base.
            "mov {off}, qword ptr [{off} + {dir_base}]\n",
            "mov {t:e}, {idx:e}\n",
            "shl {t}, {shift}\n",
            "add {off}, {t}\n",
        )
    };
}

/// The abort handler's entry (label 5) in `__rseq_failure`, behind the signature;
/// the caller writes the handler's code and closes the section with `.popsection`.
macro_rules! abort_handler {
    () => {
        concat!(
            ".pushsection __rseq_failure, \"ax\"\n",
            // ud1 with the signature as its displacement: the kernel checks the 4
            // bytes before the abort handler, and a stray jump here traps.
            ".byte 0x0f, 0xb9, 0x3d\n",
            ".long {sig}\n",
            "5:\n",
        )
    };
}

/// Everything after the committing store: the status, and the abort handler.
macro_rules! section_end {
    () => {
        concat!(
            "4:\n",
            "xor {st:e}, {st:e}\n",
            "jmp 8f\n",
            "6:\n",
            "mov {st:e}, 1\n",
            "jmp 8f\n",
            "7:\n",
            "mov {st:e}, 2\n",
            "jmp 8f\n",
            "9:\n",
            "mov {st:e}, 3\n",
            "8:\n",
            abort_handler!(),
            "jmp 6b\n",
            ".popsection\n",
        )
    };
}

/// `load_add_store`: `*word(idx) += v`: a load, an add in a register, and the
/// committing store (see the module docs, "Loads and stores, not `add [mem]`").
///
/// Returns the status and the index the section read.
///
/// # Safety
/// `cpu.area` is the calling thread's registered rseq area (registered with
/// [`abi::SIGNATURE`]) and `cpu.index` a field of it; `cpu.limit` is readable; for
/// every index below `*cpu.limit`, `base + (index << UNIT_SHIFT)` is a valid, 8-byte
/// aligned word that only rseq commits write.
#[inline(always)]
pub(crate) unsafe fn load_add_store(
    cpu: SectionSite,
    base: *mut u64,
    v: u64,
) -> (SectionStatus, u32) {
    let st: u32;
    let idx: u32;
    // SAFETY: the caller guarantees the area, index field, limit and every unit word
    // below the limit; the section writes only `rseq_cs` and that word.
    unsafe {
        asm!(
            section_start!(),
            "add {off}, {base}",
            "mov {x}, qword ptr [{off}]",
            "add {x}, {v}",
            "mov qword ptr [{off}], {x}",
            section_end!(),
            area = in(reg) cpu.area,
            index = in(reg) cpu.index,
            limit = in(reg) cpu.limit,
            base = in(reg) base,
            v = in(reg) v,
            idx = out(reg) idx,
            off = out(reg) _,
            x = out(reg) _,
            st = lateout(reg) st,
            cs_field = const abi::offset::RSEQ_CS,
            shift = const UNIT_SHIFT,
            sig = const abi::SIGNATURE,
            options(nostack),
        )
    };
    (SectionStatus::from_raw(st), idx)
}

/// The start of a thin section: [`section_header`], then `mm_cid` read at its fixed
/// offset in the area and bounded by `{cids}` (a count of materialised indexes the
/// caller read before: the limit only grows, so any earlier reading bounds it),
/// leaving the word's address in `{off}`. Exits at labels 5 (abort), 7 (not materialised) and 9 (the section's own
/// failure) all lead to the caller's failure path ([`thin_end`]).
macro_rules! thin_start {
    () => {
        concat!(
            section_header!(fails_exit!()),
            "mov {off:e}, dword ptr [{area} + {mm_cid}]\n",
            "cmp {off:e}, {cids:e}\n",
            "jae 7f\n",
            "shl {off}, {shift}\n",
            "add {off}, {base}\n",
        )
    };
}

/// Everything after a thin section's commit: the abort handler and the exits,
/// out of line, each running `$on_fail` (asm) and then `$leave`.
macro_rules! thin_end {
    ($on_fail:expr, $leave:expr) => {
        concat!(
            "4:\n",
            abort_handler!(),
            "7:\n",
            "9:\n",
            $on_fail,
            $leave,
            ".popsection\n",
        )
    };
}

/// Everything after the commit of a thin section that returns its index: past the
/// section (label 4), the index is computed back from the address it wrote into
/// `{idx}`; every failure exit sets `{idx}` to `u32::MAX` and rejoins at label 28.
macro_rules! thin_end_index {
    () => {
        concat!(
            "4:\n",
            "sub {off}, {base}\n",
            "shr {off}, {shift}\n",
            "mov {idx:e}, {off:e}\n",
            "28:\n",
            abort_handler!(),
            "7:\n",
            "9:\n",
            "mov {idx:e}, -1\n",
            "jmp 28b\n",
            ".popsection\n",
        )
    };
}

/// Thin `load_add_store`: true when it committed, false for any other ending (see
/// the module docs, "Thin sections").
///
/// # Safety
/// `area` is the calling thread's registered rseq area (registered with
/// [`abi::SIGNATURE`], with an active size that covers `mm_cid`); for every index
/// below `cids`, `base + (index << UNIT_SHIFT)` is a valid, 8-byte aligned word that
/// only rseq commits write.
#[inline(always)]
pub(crate) unsafe fn thin_add(area: usize, base: *mut u64, cids: u32, v: u64) -> bool {
    let mut committed = true;
    // SAFETY: the caller guarantees the area and every unit word below `cids`; the
    // section writes only `rseq_cs` and that word.
    unsafe {
        asm!(
            thin_start!(),
            "mov {x}, qword ptr [{off}]",
            "add {x}, {v}",
            "mov qword ptr [{off}], {x}",
            thin_end!("", "jmp {failed}\n"),
            area = in(reg) area,
            cids = in(reg) cids,
            base = in(reg) base,
            v = in(reg) v,
            off = out(reg) _,
            x = out(reg) _,
            cs_field = const abi::offset::RSEQ_CS,
            mm_cid = const abi::offset::MM_CID,
            shift = const UNIT_SHIFT,
            sig = const abi::SIGNATURE,
            failed = label {
                committed = false;
            },
            options(nostack),
        )
    };
    committed
}

/// Thin `load_add_store` that also says where it committed: the index, or
/// `u32::MAX` for any other ending.
///
/// # Safety
/// As for [`thin_add`].
#[inline(always)]
pub(crate) unsafe fn thin_add_index(area: usize, base: *mut u64, cids: u32, v: u64) -> u32 {
    let idx: u32;
    // SAFETY: as for `thin_add`. Every failure exit sets the index to `u32::MAX`
    // and returns past the index's computation (label 28).
    unsafe {
        asm!(
            thin_start!(),
            "mov {x}, qword ptr [{off}]",
            "add {x}, {v}",
            "mov qword ptr [{off}], {x}",
            thin_end_index!(),
            area = in(reg) area,
            cids = in(reg) cids,
            base = in(reg) base,
            v = in(reg) v,
            off = out(reg) _,
            x = out(reg) _,
            idx = out(reg) idx,
            cs_field = const abi::offset::RSEQ_CS,
            mm_cid = const abi::offset::MM_CID,
            shift = const UNIT_SHIFT,
            sig = const abi::SIGNATURE,
            options(nostack),
        )
    };
    idx
}

/// Thin `load_cbne_store`: if `*word(idx) == expect`, `*word(idx) = new` (the
/// commit) and the index; `u32::MAX` for any other ending (the word held another
/// value, an abort, an index not materialised).
///
/// # Safety
/// As for [`thin_add`].
#[inline(always)]
pub(crate) unsafe fn thin_compare_store_index(
    area: usize,
    base: *mut u64,
    cids: u32,
    expect: u64,
    new: u64,
) -> u32 {
    let idx: u32;
    // SAFETY: as for `thin_add`; the section writes only `rseq_cs` and the word.
    // Every failure exit sets the index to `u32::MAX` and returns past the index's
    // computation (label 28).
    unsafe {
        asm!(
            thin_start!(),
            "cmp qword ptr [{off}], {expect}",
            "jne 9f",
            "mov qword ptr [{off}], {new}",
            thin_end_index!(),
            area = in(reg) area,
            cids = in(reg) cids,
            base = in(reg) base,
            expect = in(reg) expect,
            new = in(reg) new,
            off = out(reg) _,
            idx = out(reg) idx,
            cs_field = const abi::offset::RSEQ_CS,
            mm_cid = const abi::offset::MM_CID,
            shift = const UNIT_SHIFT,
            sig = const abi::SIGNATURE,
            options(nostack),
        )
    };
    idx
}

/// Thin `list_pop`: the popped node, or 0 for any other ending (empty list, abort,
/// index not materialised).
///
/// # Safety
/// As for [`thin_add`]; moreover every node reachable from a head word is a
/// readable, 8-byte aligned word (its link) that nobody frees while it is listed.
#[inline(always)]
pub(crate) unsafe fn thin_list_pop(area: usize, base: *mut u64, cids: u32) -> usize {
    let node: usize;
    // SAFETY: as for `thin_add`; the section reads the listed node's link and writes
    // only `rseq_cs` and the head word. Every failure exit zeroes `node` and returns
    // past the commit.
    unsafe {
        asm!(
            thin_start!(),
            "mov {head}, qword ptr [{off}]",
            "mov {node}, {head}",
            "shl {node}, 16",
            // `shr` sets ZF from its result: an empty list.
            "shr {node}, 16",
            "jz 9f",
            "mov {head}, qword ptr [{node}]",
            "mov qword ptr [{off}], {head}",
            thin_end!("xor {node:e}, {node:e}\n", "jmp 4b\n"),
            area = in(reg) area,
            cids = in(reg) cids,
            base = in(reg) base,
            off = out(reg) _,
            head = out(reg) _,
            node = out(reg) node,
            cs_field = const abi::offset::RSEQ_CS,
            mm_cid = const abi::offset::MM_CID,
            shift = const UNIT_SHIFT,
            sig = const abi::SIGNATURE,
            options(nostack),
        )
    };
    node
}

/// Thin `list_push`: true when it committed, false for any other ending (full list,
/// abort, index not materialised). On false the node's link may have been written.
///
/// # Safety
/// As for [`thin_add`]; `node` is an 8-byte aligned, writable word below 2^48 owned
/// by the caller, and `max_len` is below 2^16.
#[inline(always)]
pub(crate) unsafe fn thin_list_push(
    area: usize,
    base: *mut u64,
    cids: u32,
    node: usize,
    max_len: u64,
) -> bool {
    let mut committed = true;
    // SAFETY: as for `thin_add`; the section writes the caller's private node,
    // `rseq_cs` and the head word.
    unsafe {
        asm!(
            thin_start!(),
            "mov {head}, qword ptr [{off}]",
            "mov {len}, {head}",
            "shr {len}, 48",
            "cmp {len}, {max}",
            "jae 9f",
            "mov qword ptr [{node}], {head}",
            "inc {len}",
            "shl {len}, 48",
            "or {len}, {node}",
            "mov qword ptr [{off}], {len}",
            thin_end!("", "jmp {failed}\n"),
            area = in(reg) area,
            cids = in(reg) cids,
            base = in(reg) base,
            node = in(reg) node,
            max = in(reg) max_len,
            off = out(reg) _,
            head = out(reg) _,
            len = out(reg) _,
            cs_field = const abi::offset::RSEQ_CS,
            mm_cid = const abi::offset::MM_CID,
            shift = const UNIT_SHIFT,
            sig = const abi::SIGNATURE,
            failed = label {
                committed = false;
            },
            options(nostack),
        )
    };
    committed
}

/// `load_cbne_store`: if `*word(idx) != expect` fail with the value seen, else
/// `*word(idx) = new` (the commit).
///
/// Returns the status, the index, and the value the section read.
///
/// # Safety
/// As for [`load_add_store`].
#[inline(always)]
pub(crate) unsafe fn load_cbne_store(
    cpu: SectionSite,
    base: *mut u64,
    expect: u64,
    new: u64,
) -> (SectionStatus, u32, u64) {
    let st: u32;
    let idx: u32;
    let seen: u64;
    // SAFETY: as for `load_add_store`; the section writes only `rseq_cs` and the word.
    unsafe {
        asm!(
            section_start!(fails),
            "add {off}, {base}",
            "mov {seen}, qword ptr [{off}]",
            "cmp {seen}, {expect}",
            "jne 9f",
            "mov qword ptr [{off}], {new}",
            section_end!(),
            area = in(reg) cpu.area,
            index = in(reg) cpu.index,
            limit = in(reg) cpu.limit,
            base = in(reg) base,
            expect = in(reg) expect,
            new = in(reg) new,
            idx = out(reg) idx,
            off = out(reg) _,
            seen = out(reg) seen,
            st = lateout(reg) st,
            cs_field = const abi::offset::RSEQ_CS,
            shift = const UNIT_SHIFT,
            sig = const abi::SIGNATURE,
            options(nostack),
        )
    };
    (SectionStatus::from_raw(st), idx, seen)
}

/// `list_pop`: `head = *word(idx)`; fail when empty; `*word(idx) = node.next` (the
/// commit). The head word packs the node's address (low 48 bits) with the list's
/// length (high 16 bits); `node.next` is the whole packed word below it.
///
/// Returns the status, the index and the popped node's address.
///
/// # Safety
/// As for [`load_add_store`]; moreover every node reachable from a head word is a
/// readable, 8-byte aligned word (its link) that nobody frees while it is listed.
#[inline(always)]
pub(crate) unsafe fn list_pop(cpu: SectionSite, base: *mut u64) -> (SectionStatus, u32, usize) {
    let st: u32;
    let idx: u32;
    let node: usize;
    // SAFETY: as above; the section reads the listed node's link and writes only
    // `rseq_cs` and the head word.
    unsafe {
        asm!(
            section_start!(fails),
            "add {off}, {base}",
            "mov {head}, qword ptr [{off}]",
            "mov {node}, {head}",
            "shl {node}, 16",
            "shr {node}, 16",
            "test {node}, {node}",
            "jz 9f",
            "mov {head}, qword ptr [{node}]",
            "mov qword ptr [{off}], {head}",
            section_end!(),
            area = in(reg) cpu.area,
            index = in(reg) cpu.index,
            limit = in(reg) cpu.limit,
            base = in(reg) base,
            idx = out(reg) idx,
            off = out(reg) _,
            head = out(reg) _,
            node = out(reg) node,
            st = lateout(reg) st,
            cs_field = const abi::offset::RSEQ_CS,
            shift = const UNIT_SHIFT,
            sig = const abi::SIGNATURE,
            options(nostack),
        )
    };
    (SectionStatus::from_raw(st), idx, node)
}

/// `list_push`: `head = *word(idx)`; fail when the list holds `max_len` nodes;
/// `node.next = head` (speculative: the node is still private); `*word(idx) =
/// node | (len + 1) << 48` (the commit).
///
/// # Safety
/// As for [`load_add_store`]; `node` is an 8-byte aligned, writable word below 2^48
/// owned by the caller, and `max_len` is below 2^16.
#[inline(always)]
pub(crate) unsafe fn list_push(
    cpu: SectionSite,
    base: *mut u64,
    node: usize,
    max_len: u64,
) -> (SectionStatus, u32) {
    let st: u32;
    let idx: u32;
    // SAFETY: as above; the section writes the caller's private node, `rseq_cs` and
    // the head word.
    unsafe {
        asm!(
            section_start!(fails),
            "add {off}, {base}",
            "mov {head}, qword ptr [{off}]",
            "mov {len}, {head}",
            "shr {len}, 48",
            "cmp {len}, {max}",
            "jae 9f",
            "mov qword ptr [{node}], {head}",
            "inc {len}",
            "shl {len}, 48",
            "or {len}, {node}",
            "mov qword ptr [{off}], {len}",
            section_end!(),
            area = in(reg) cpu.area,
            index = in(reg) cpu.index,
            limit = in(reg) cpu.limit,
            base = in(reg) base,
            node = in(reg) node,
            max = in(reg) max_len,
            idx = out(reg) idx,
            off = out(reg) _,
            head = out(reg) _,
            len = out(reg) _,
            st = lateout(reg) st,
            cs_field = const abi::offset::RSEQ_CS,
            shift = const UNIT_SHIFT,
            sig = const abi::SIGNATURE,
            options(nostack),
        )
    };
    (SectionStatus::from_raw(st), idx)
}

/// Thin `store_payload_commit_index` for one payload: `Committed` when it published
/// `src`'s `slot_bytes` bytes, `Failed` when the gate is closed or the ring full
/// (as the full section says), `Aborted` for any other ending (no buffer yet, abort,
/// index not materialised: the caller takes the full section). The ring's words are
/// addressed from the tail word's (`base`) by their distance in the unit, `BUFFER`,
/// `CACHED` and `HEAD` words on; `args` gives the geometry and the gate (its `tail`,
/// `head`, `buffer`, `cached`, `src` and `count` are not read). The producers' copy of
/// the head is refreshed from the head, inside the section, only when it says full.
///
/// # Safety
/// As for [`thin_add`] for the tail word; for every index below `cids` the words
/// `BUFFER`, `CACHED` and `HEAD` words past its tail word are that index's buffer,
/// cached-head and head words (as for [`store_payload_commit_index`]); `args.gate` is
/// readable, `args.mask + 1` a power of two and `args.slot_bytes` a non-zero multiple
/// of 8; `src` is readable for `slot_bytes` bytes.
#[inline(always)]
pub(crate) unsafe fn thin_push_one<const BUFFER: usize, const CACHED: usize, const HEAD: usize>(
    area: usize,
    base: *mut u64,
    cids: u32,
    args: &PayloadArgs,
    src: *const u8,
) -> SectionStatus {
    let mut status = SectionStatus::Committed;
    // SAFETY: as for `thin_add` and `store_payload_commit_index`; writes `rseq_cs`, the
    // cached head (a lower bound: harmless on abort), one free slot (invisible until
    // the tail moves) and the tail (the commit).
    unsafe {
        asm!(
            thin_start!(),
            // The channel's gate: closed (or spilling) channels take no send here.
            "mov {t}, qword ptr [{args} + {gate}]",
            "cmp qword ptr [{t}], 0",
            "jne 9f",
            "mov {t}, qword ptr [{off}]",
            // used = tail - the producers' copy of the head; room when used <= mask.
            "mov {x}, {t}",
            "sub {x}, qword ptr [{off} + {cached}]",
            "cmp {x}, qword ptr [{args} + {mask}]",
            "jbe 31f",
            // Looks full: refresh the copy from the head and decide on it. Inline:
            // everything up to the commit must lie in the section's range.
            "mov {x}, qword ptr [{off} + {head}]",
            "mov qword ptr [{off} + {cached}], {x}",
            "neg {x}",
            "add {x}, {t}",
            "cmp {x}, qword ptr [{args} + {mask}]",
            "ja 9f",
            "31:",
            "mov {buf}, qword ptr [{off} + {buffer}]",
            "test {buf}, {buf}",
            "jz 7f",
            // The slot: buffer + (tail & mask) * slot_bytes; copy it from its end.
            "mov {x}, {t}",
            "and {x}, qword ptr [{args} + {mask}]",
            "imul {x}, qword ptr [{args} + {slot}]",
            "add {buf}, {x}",
            "mov {x}, qword ptr [{args} + {slot}]",
            "32:",
            "sub {x}, 8",
            // `mov` leaves the flags of `sub`: loop until the offset is 0.
            "mov {area}, qword ptr [{src} + {x}]",
            "mov qword ptr [{buf} + {x}], {area}",
            "jnz 32b",
            "add {t}, 1",
            "mov qword ptr [{off}], {t}",
            // As `thin_end!`, but the section's own failure (label 9) leaves apart.
            "4:",
            abort_handler!(),
            "7:",
            "jmp {other}",
            "9:",
            "jmp {refused}",
            ".popsection",
            area = inout(reg) area => _,
            cids = in(reg) cids,
            base = in(reg) base,
            args = in(reg) args as *const PayloadArgs,
            src = in(reg) src,
            off = out(reg) _,
            t = out(reg) _,
            x = out(reg) _,
            buf = out(reg) _,
            gate = const core::mem::offset_of!(PayloadArgs, gate),
            mask = const core::mem::offset_of!(PayloadArgs, mask),
            slot = const core::mem::offset_of!(PayloadArgs, slot_bytes),
            buffer = const BUFFER * 8,
            cached = const CACHED * 8,
            head = const HEAD * 8,
            cs_field = const abi::offset::RSEQ_CS,
            mm_cid = const abi::offset::MM_CID,
            shift = const UNIT_SHIFT,
            sig = const abi::SIGNATURE,
            other = label {
                status = SectionStatus::Aborted;
            },
            refused = label {
                status = SectionStatus::Failed;
            },
            options(nostack),
        )
    };
    status
}

/// The body of the payload sections, after `{off}` was set by the section start:
/// fails when the channel's gate word is non-zero; reads tail and head, fails when
/// the ring is full, copies `n = min(count, free)`
/// payloads into the slots from the tail on (speculative: invisible until the tail
/// moves), then commits `tail += n`. Each word address is `[args + field] + {off}`:
/// a unit-0 address plus the index's offset (plain), or a word offset plus the
/// unit's address (NUMA). Leaves `n` in `{n}`.
macro_rules! payload_body {
    ($n:literal, $buf:literal, $k:literal, $k_e:literal) => {
        concat!(
            // The channel's gate: closed (or spilling) channels take no send here.
            "mov {tail}, qword ptr [{args} + 72]\n",
            "cmp qword ptr [{tail}], 0\n",
            "jne 9f\n",
            "mov {tail}, qword ptr [{args}]\n",
            "add {tail}, {off}\n",
            "mov {t}, qword ptr [{tail}]\n",
            // used = t - cached head; room when used < capacity.
            "mov {dst}, qword ptr [{args} + 64]\n",
            "mov {dst}, qword ptr [{dst} + {off}]\n",
            "mov {i}, {t}\n",
            "sub {i}, {dst}\n",
            "mov ",
            $n,
            ", qword ptr [{args} + 24]",
            "\n",
            "cmp {i}, ",
            $n,
            "\n",
            "jb 26f\n",
            // Looks full: read the consumer's head, refresh the copy (speculative
            // but harmless: any head value read is a valid lower bound), and decide
            // on the real head: full when t - head >= capacity.
            "mov {dst}, qword ptr [{args} + 8]\n",
            "mov {dst}, qword ptr [{dst} + {off}]\n",
            "mov {i}, qword ptr [{args} + 64]\n",
            "mov qword ptr [{i} + {off}], {dst}\n",
            "mov {i}, {t}\n",
            "sub {i}, {dst}\n",
            "cmp {i}, ",
            $n,
            "\n",
            "jae 9f\n",
            "26:\n",
            // n = min(count, capacity - used).
            "sub ",
            $n,
            ", {i}",
            "\n",
            "cmp ",
            $n,
            ", qword ptr [{args} + 48]",
            "\n",
            "jbe 24f\n",
            "mov ",
            $n,
            ", qword ptr [{args} + 48]",
            "\n",
            "24:\n",
            "mov ",
            $buf,
            ", qword ptr [{args} + 16]",
            "\n",
            "mov ",
            $buf,
            ", qword ptr [",
            $buf,
            " + {off}]",
            "\n",
            "test ",
            $buf,
            ", ",
            $buf,
            "\n",
            "jz 7f\n",
            "mov {src}, qword ptr [{args} + 40]\n",
            "xor ",
            $k_e,
            ", ",
            $k_e,
            "\n",
            // For k in 0..n: copy payload k into slot (t + k) & mask, word by word.
            "25:\n",
            "cmp ",
            $k,
            ", ",
            $n,
            "\n",
            "jae 27f\n",
            "lea {dst}, [{t} + ",
            $k,
            "]",
            "\n",
            "and {dst}, qword ptr [{args} + 32]\n",
            "imul {dst}, qword ptr [{args} + 56]\n",
            "add {dst}, ",
            $buf,
            "\n",
            "xor {i:e}, {i:e}\n",
            "22:\n",
            "cmp {i}, qword ptr [{args} + 56]\n",
            "jae 23f\n",
            "mov {off}, qword ptr [{src} + {i}]\n",
            "mov qword ptr [{dst} + {i}], {off}\n",
            "add {i}, 8\n",
            "jmp 22b\n",
            "23:\n",
            "add {src}, {i}\n",
            "inc ",
            $k,
            "\n",
            "jmp 25b\n",
            "27:\n",
            "add {t}, ",
            $n,
            "\n",
            "mov qword ptr [{tail}], {t}\n",
        )
    };
}

/// `store_payload_commit_index`: fail when `*gate != 0`; `t = *tail(idx)`, `h = *cached(idx)`; when `t - h
/// >= capacity`, `h = *head(idx)` and `*cached(idx) = h` (speculative: any head read
/// is a valid lower bound), and fail when still `t - h >= capacity` (full); copy `n = min(count, capacity - (t - h))` payloads
/// into slots `(t + k) & mask` of the index's buffer (speculative: the slots are
/// invisible until the tail moves); `*tail(idx) = t + n` (the commit).
/// `NotMaterialized` also when the index has no buffer yet.
///
/// Returns the status, the index, and `n` when committed.
///
/// # Safety
/// As for [`load_add_store`] for the tail, head and buffer words; a non-zero buffer
/// word points to `capacity` slots of `slot_bytes` bytes that, from the tail to the
/// head + capacity, only this index's producers write; `src` is readable for
/// `count * slot_bytes` bytes; `count >= 1`.
#[inline(always)]
pub(crate) unsafe fn store_payload_commit_index(
    cpu: SectionSite,
    args: &PayloadArgs,
) -> (SectionStatus, u32, usize) {
    let st: u32;
    let idx: u32;
    let n: usize;
    // SAFETY: as above; the section writes free slots of this index's buffer,
    // `rseq_cs` and the tail word.
    unsafe {
        asm!(
            section_start!(fails),
            payload_body!("{limit}", "{area}", "{index}", "{index:e}"),
            section_end!(),
            // Free once the section has started: reused by the body.
            area = inout(reg) cpu.area => _,
            index = inout(reg) cpu.index => _,
            limit = inout(reg) cpu.limit => n,
            args = in(reg) args as *const PayloadArgs,
            idx = out(reg) idx,
            off = out(reg) _,
            tail = out(reg) _,
            t = out(reg) _,
            dst = out(reg) _,
            i = out(reg) _,
            src = out(reg) _,
            st = lateout(reg) st,
            cs_field = const abi::offset::RSEQ_CS,
            shift = const UNIT_SHIFT,
            sig = const abi::SIGNATURE,
            options(nostack),
        )
    };
    (SectionStatus::from_raw(st), idx, n)
}

/// `numa_store_payload_commit_index`: [`store_payload_commit_index`] on the unit of
/// (node, idx), both read inside the section; `args`' tail, head and buffer fields
/// hold the words' byte offsets in their unit instead of unit-0 addresses.
///
/// Returns the status, the node, the index, and `n` when committed. For
/// `NotMaterialized`, as [`numa_load_add_store`] says.
///
/// # Safety
/// As for [`numa_load_add_store`] for the three words in every unit the directory
/// covers, and as for [`store_payload_commit_index`] for the buffers and `src`.
#[inline(always)]
pub(crate) unsafe fn numa_store_payload_commit_index(
    cpu: SectionSite,
    args: &PayloadArgs,
) -> (SectionStatus, u32, u32, usize) {
    let st: u32;
    let idx: u32;
    let nd: u32;
    let n: usize;
    // SAFETY: as above; the section writes free slots of unit (node, idx)'s buffer,
    // `rseq_cs` and that unit's tail word.
    unsafe {
        asm!(
            numa_section_start!(fails),
            payload_body!("{dir}", "{area}", "{index}", "{index:e}"),
            section_end!(),
            area = inout(reg) cpu.area => _,
            index = inout(reg) cpu.index => _,
            node = inout(reg) cpu.node => _,
            dir = inout(reg) cpu.dir => n,
            args = in(reg) args as *const PayloadArgs,
            idx = out(reg) idx,
            nd = out(reg) nd,
            off = out(reg) _,
            t = out(reg) _,
            tail = out(reg) _,
            dst = out(reg) _,
            i = out(reg) _,
            src = out(reg) _,
            st = lateout(reg) st,
            cs_field = const abi::offset::RSEQ_CS,
            shift = const UNIT_SHIFT,
            slot_shift = const DIR_SLOT_SHIFT,
            dir_planes = const DIR_PLANES,
            dir_base = const DIR_BASE,
            dir_limit = const DIR_LIMIT,
            sig = const abi::SIGNATURE,
            options(nostack),
        )
    };
    (SectionStatus::from_raw(st), nd, idx, n)
}

/// `numa_load_add_store`: `*word(node, idx) += v`, where the node and the index are
/// both read inside the section; committed by one `add [mem], reg`. `woff` is the
/// word's byte offset in its unit.
///
/// Returns the status, the node and the index the section read. `NotMaterialized`
/// with a node at or above the directory's plane count means "no plane for this
/// node"; below it, "index not materialised on this node".
///
/// # Safety
/// `cpu.area` is the calling thread's registered rseq area and `cpu.index` a field of
/// it; `cpu.node` is readable (the area's `node_id`, or a thread-local cell); `cpu.dir`
/// is a chunk directory (`DIR_*` layout) in which, for every plane below the plane
/// count and every index below that plane's limit, `base + (index << UNIT_SHIFT) +
/// woff` is a valid, 8-byte aligned word that only rseq commits write.
#[inline(always)]
pub(crate) unsafe fn numa_load_add_store(
    cpu: SectionSite,
    woff: usize,
    v: u64,
) -> (SectionStatus, u32, u32) {
    let st: u32;
    let idx: u32;
    let nd: u32;
    // SAFETY: the caller guarantees the area, fields, directory and every unit word
    // it covers; the section writes only `rseq_cs` and that word.
    unsafe {
        asm!(
            numa_section_start!(),
            "add {off}, {woff}",
            "mov {t}, qword ptr [{off}]",
            "add {t}, {v}",
            "mov qword ptr [{off}], {t}",
            section_end!(),
            area = in(reg) cpu.area,
            index = in(reg) cpu.index,
            node = in(reg) cpu.node,
            dir = in(reg) cpu.dir,
            woff = in(reg) woff,
            v = in(reg) v,
            idx = out(reg) idx,
            nd = out(reg) nd,
            off = out(reg) _,
            t = out(reg) _,
            st = lateout(reg) st,
            cs_field = const abi::offset::RSEQ_CS,
            shift = const UNIT_SHIFT,
            slot_shift = const DIR_SLOT_SHIFT,
            dir_planes = const DIR_PLANES,
            dir_base = const DIR_BASE,
            dir_limit = const DIR_LIMIT,
            sig = const abi::SIGNATURE,
            options(nostack),
        )
    };
    (SectionStatus::from_raw(st), nd, idx)
}

/// [`numa_load_add_store`] for callers that only need to know whether it committed
/// (as [`thin_add`]: every other ending jumps to one exit).
///
/// # Safety
/// As for [`numa_load_add_store`].
#[inline(always)]
pub(crate) unsafe fn numa_load_add_store_committed(cpu: SectionSite, woff: usize, v: u64) -> bool {
    let mut committed = true;
    // SAFETY: as for `numa_load_add_store`.
    unsafe {
        asm!(
            numa_section_start!(),
            "add {off}, {woff}",
            "mov {t}, qword ptr [{off}]",
            "add {t}, {v}",
            "mov qword ptr [{off}], {t}",
            "4:",
            abort_handler!(),
            "jmp {failed}",
            "7:",
            "jmp {failed}",
            ".popsection",
            area = in(reg) cpu.area,
            index = in(reg) cpu.index,
            node = in(reg) cpu.node,
            dir = in(reg) cpu.dir,
            woff = in(reg) woff,
            v = in(reg) v,
            idx = out(reg) _,
            nd = out(reg) _,
            off = out(reg) _,
            t = out(reg) _,
            cs_field = const abi::offset::RSEQ_CS,
            shift = const UNIT_SHIFT,
            slot_shift = const DIR_SLOT_SHIFT,
            dir_planes = const DIR_PLANES,
            dir_base = const DIR_BASE,
            dir_limit = const DIR_LIMIT,
            sig = const abi::SIGNATURE,
            failed = label {
                committed = false;
            },
            options(nostack),
        )
    };
    committed
}

/// `numa_list_pop`: [`list_pop`] on the head word of unit (node, idx), the node and
/// the index both read inside the section (as [`numa_load_add_store`]); `woff` is the
/// head word's byte offset in its unit.
///
/// Returns the status, the node, the index and the popped node's address.
///
/// # Safety
/// As for [`numa_load_add_store`]; moreover every node reachable from a head word is
/// a readable, 8-byte aligned word (its link) that nobody frees while it is listed.
#[inline(always)]
pub(crate) unsafe fn numa_list_pop(
    cpu: SectionSite,
    woff: usize,
) -> (SectionStatus, u32, u32, usize) {
    let st: u32;
    let idx: u32;
    let nd: u32;
    let item: usize;
    // SAFETY: the caller guarantees the area, fields, directory, every unit word it
    // covers and the listed nodes; the section reads the first node's link and writes
    // only `rseq_cs` and the head word.
    unsafe {
        asm!(
            numa_section_start!(fails),
            "add {off}, {woff}",
            // `t` is free once the unit is found: it holds the head.
            "mov {t}, qword ptr [{off}]",
            "mov {item}, {t}",
            "shl {item}, 16",
            "shr {item}, 16",
            "test {item}, {item}",
            "jz 9f",
            "mov {t}, qword ptr [{item}]",
            "mov qword ptr [{off}], {t}",
            section_end!(),
            area = in(reg) cpu.area,
            index = in(reg) cpu.index,
            node = in(reg) cpu.node,
            dir = in(reg) cpu.dir,
            woff = in(reg) woff,
            idx = out(reg) idx,
            nd = out(reg) nd,
            off = out(reg) _,
            t = out(reg) _,
            item = out(reg) item,
            st = lateout(reg) st,
            cs_field = const abi::offset::RSEQ_CS,
            shift = const UNIT_SHIFT,
            slot_shift = const DIR_SLOT_SHIFT,
            dir_planes = const DIR_PLANES,
            dir_base = const DIR_BASE,
            dir_limit = const DIR_LIMIT,
            sig = const abi::SIGNATURE,
            options(nostack),
        )
    };
    (SectionStatus::from_raw(st), nd, idx, item)
}

/// `numa_list_push`: [`list_push`] on the head word of unit (node, idx), the node and
/// the index both read inside the section (as [`numa_load_add_store`]); `woff` is the
/// head word's byte offset in its unit.
///
/// Returns the status, the node and the index.
///
/// # Safety
/// As for [`numa_load_add_store`]; `item` is an 8-byte aligned, writable word below
/// 2^48 owned by the caller, and `max_len` is below 2^16.
#[inline(always)]
pub(crate) unsafe fn numa_list_push(
    cpu: SectionSite,
    woff: usize,
    item: usize,
    max_len: u64,
) -> (SectionStatus, u32, u32) {
    let st: u32;
    let idx: u32;
    let nd: u32;
    // SAFETY: the caller guarantees the area, fields, directory and every unit word it
    // covers; the section writes the caller's private node, `rseq_cs` and the head
    // word.
    unsafe {
        asm!(
            numa_section_start!(fails),
            "add {off}, {woff}",
            // `t` is free once the unit is found: it holds the head.
            "mov {t}, qword ptr [{off}]",
            "mov {len}, {t}",
            "shr {len}, 48",
            "cmp {len}, {max}",
            "jae 9f",
            "mov qword ptr [{item}], {t}",
            "inc {len}",
            "shl {len}, 48",
            "or {len}, {item}",
            "mov qword ptr [{off}], {len}",
            section_end!(),
            area = in(reg) cpu.area,
            index = in(reg) cpu.index,
            node = in(reg) cpu.node,
            dir = in(reg) cpu.dir,
            woff = in(reg) woff,
            item = in(reg) item,
            max = in(reg) max_len,
            idx = out(reg) idx,
            nd = out(reg) nd,
            off = out(reg) _,
            t = out(reg) _,
            len = out(reg) _,
            st = lateout(reg) st,
            cs_field = const abi::offset::RSEQ_CS,
            shift = const UNIT_SHIFT,
            slot_shift = const DIR_SLOT_SHIFT,
            dir_planes = const DIR_PLANES,
            dir_base = const DIR_BASE,
            dir_limit = const DIR_LIMIT,
            sig = const abi::SIGNATURE,
            options(nostack),
        )
    };
    (SectionStatus::from_raw(st), nd, idx)
}
