//! `PerCidAlloc` under a fuzzed mix of sizes, alignments, reallocations and frees,
//! on simulated cids with injected aborts, with poisoning on (a write after free
//! aborts). Every live block is filled with a pattern from its id; the pattern is
//! checked before every free and across every realloc, and no two live blocks
//! overlap. Bursts of one size free whole spans, which are purged (short purge
//! delays, pauses, trims) and carved again by other sizes while live blocks stay.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use percid::alloc::{PerCidAlloc, set_purge_delay};
use percid::testing::{seed_simulated_aborts, set_simulated_abort_rate, set_simulated_cid};
use std::alloc::{GlobalAlloc, Layout};
use std::time::Duration;

static ALLOC: PerCidAlloc = PerCidAlloc::with_poisoning();

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc {
        size: u16,
        align_shift: u8,
    },
    /// Sizes past the small classes (the system allocator's side).
    AllocLarge {
        extra: u16,
    },
    Free(u8),
    Realloc(u8, u16),
    Trim,
    /// Many blocks of one size taken and all given back: whole spans go free, are
    /// purged (delay permitting) and carved again by other sizes.
    Burst {
        size: u16,
        count: u8,
    },
    /// The purge delay in milliseconds (0: purge at once).
    PurgeDelay(u8),
    /// A pause, so that purge delays pass and the idle scan runs.
    Idle(u8),
}

#[derive(Arbitrary, Debug)]
struct Step {
    cid: u8,
    abort_rate: u8,
    op: Op,
}

struct Block {
    ptr: *mut u8,
    layout: Layout,
    id: u8,
}

fn fill(b: &Block) {
    for i in 0..b.layout.size() {
        // SAFETY: the block is live and `layout.size()` bytes long.
        unsafe { *b.ptr.add(i) = b.id.wrapping_add(i as u8) };
    }
}

fn check(b: &Block, len: usize) {
    for i in 0..len {
        // SAFETY: as in `fill`.
        let got = unsafe { *b.ptr.add(i) };
        assert_eq!(
            got,
            b.id.wrapping_add(i as u8),
            "block {} byte {i} changed",
            b.id
        );
    }
}

fuzz_target!(
    init: {
        // SAFETY: set before any thread exists and before percid reads it.
        unsafe { std::env::set_var("PERCID_BACKEND", "simulated") };
    },
    |steps: Vec<Step>| {
        seed_simulated_aborts(0x5eed);
        let mut live: Vec<Block> = Vec::new();
        let mut next_id = 0u8;
        for step in &steps {
            set_simulated_cid(u32::from(step.cid % 6));
            set_simulated_abort_rate(u32::from(step.abort_rate) * 4);
            match step.op {
                Op::Alloc { size, align_shift } => {
                    let layout = Layout::from_size_align(
                        usize::from(size).max(1),
                        1 << (align_shift % 13),
                    )
                    .unwrap();
                    push(&mut live, layout, &mut next_id);
                }
                Op::AllocLarge { extra } => {
                    let layout =
                        Layout::from_size_align(32 * 1024 + 1 + usize::from(extra), 8).unwrap();
                    push(&mut live, layout, &mut next_id);
                }
                Op::Free(i) if !live.is_empty() => {
                    let b = live.swap_remove(usize::from(i) % live.len());
                    check(&b, b.layout.size());
                    // SAFETY: allocated by ALLOC with this layout, freed once.
                    unsafe { ALLOC.dealloc(b.ptr, b.layout) };
                }
                Op::Realloc(i, size) if !live.is_empty() => {
                    let k = usize::from(i) % live.len();
                    let new_size = usize::from(size).max(1);
                    let b = &mut live[k];
                    // SAFETY: allocated by ALLOC with this layout; a non-zero size.
                    let p = unsafe { ALLOC.realloc(b.ptr, b.layout, new_size) };
                    assert!(!p.is_null());
                    let old = b.layout.size();
                    b.ptr = p;
                    b.layout = Layout::from_size_align(new_size, b.layout.align()).unwrap();
                    check(b, old.min(new_size));
                    fill(b);
                }
                Op::Trim => ALLOC.trim(),
                Op::Burst { size, count } => {
                    let layout = Layout::from_size_align(usize::from(size).max(1), 8).unwrap();
                    let mut burst = Vec::new();
                    for _ in 0..usize::from(count) * 16 {
                        push(&mut burst, layout, &mut next_id);
                    }
                    for b in burst {
                        check(&b, b.layout.size());
                        // SAFETY: allocated by ALLOC with this layout, freed once.
                        unsafe { ALLOC.dealloc(b.ptr, b.layout) };
                    }
                }
                Op::PurgeDelay(ms) => set_purge_delay(Duration::from_millis(u64::from(ms % 4))),
                Op::Idle(ms) => std::thread::sleep(Duration::from_millis(u64::from(ms % 3))),
                _ => {}
            }
            assert_no_overlap(&live);
        }
        for b in live {
            check(&b, b.layout.size());
            // SAFETY: as above.
            unsafe { ALLOC.dealloc(b.ptr, b.layout) };
        }
    }
);

fn push(live: &mut Vec<Block>, layout: Layout, next_id: &mut u8) {
    // SAFETY: a non-zero size.
    let ptr = unsafe { ALLOC.alloc(layout) };
    assert!(!ptr.is_null());
    assert!(
        (ptr as usize).is_multiple_of(layout.align()),
        "misaligned {layout:?}"
    );
    let b = Block {
        ptr,
        layout,
        id: *next_id,
    };
    *next_id = next_id.wrapping_add(1);
    fill(&b);
    live.push(b);
}

fn assert_no_overlap(live: &[Block]) {
    let mut spans: Vec<(usize, usize)> = live
        .iter()
        .map(|b| (b.ptr as usize, b.ptr as usize + b.layout.size()))
        .collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "live blocks overlap: {w:?}");
    }
}
