//! Torture of `PerCidAlloc` (called through `GlobalAlloc`, poisoning on): 64 threads
//! on 2 CPUs, with the signal storm and migrations of `tests/common`, allocate blocks
//! of many sizes and alignments, fill them with a pattern of their own, keep some,
//! hand some to other threads, and free them after checking the pattern. A block
//! handed out twice, or written after free, breaks a pattern (or the poison check
//! aborts). Every mode, exact checks.

#[macro_use]
mod common;

use common::{Torture, quarter, tick};
use percid::alloc::PerCidAlloc;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

static ALLOC: PerCidAlloc = PerCidAlloc::with_poisoning();

/// A live block and the byte pattern it holds.
struct Block {
    ptr: usize,
    layout: Layout,
    tag: u8,
}

impl Block {
    fn new(size: usize, align: usize, tag: u8) -> Block {
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: a non-zero size.
        let ptr = unsafe { ALLOC.alloc(layout) };
        assert!(!ptr.is_null() && (ptr as usize).is_multiple_of(align));
        // SAFETY: the block is ours and `size` bytes long.
        unsafe { std::ptr::write_bytes(ptr, tag, size) };
        Block {
            ptr: ptr as usize,
            layout,
            tag,
        }
    }

    fn free(self) {
        let p = self.ptr as *mut u8;
        // SAFETY: the block is live and `layout.size()` bytes long.
        let bytes = unsafe { std::slice::from_raw_parts(p, self.layout.size()) };
        assert!(
            bytes.iter().all(|&b| b == self.tag),
            "a {}-byte block changed while held (handed out twice?)",
            self.layout.size()
        );
        // SAFETY: allocated by ALLOC with this layout, freed once.
        unsafe { ALLOC.dealloc(p, self.layout) };
    }
}

fn blocks(t: Torture) {
    let handoff: Mutex<Vec<Block>> = Mutex::new(Vec::new());
    let freed = AtomicU64::new(0);
    let made = AtomicU64::new(0);
    t.run(|i, ops| {
        let mut held: Vec<Block> = Vec::new();
        let mut rng = 0x2545_f491_4f6c_dd1du64 ^ (i as u64 + 1);
        let keep = 1 + i % 16;
        for k in 0..ops {
            tick();
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let size = 1 + (rng as usize >> 3) % if k % 64 == 0 { 32 * 1024 } else { 512 };
            let align = 1 << ((rng >> 40) % 7);
            held.push(Block::new(size, align, (rng >> 48) as u8 | 1));
            made.fetch_add(1, Ordering::Relaxed);
            if held.len() > keep {
                let b = held.swap_remove((rng >> 20) as usize % held.len());
                if k % 8 == 0 {
                    handoff.lock().unwrap().push(b);
                } else {
                    b.free();
                    freed.fetch_add(1, Ordering::Relaxed);
                }
            }
            if k % 8 == 4 {
                let taken = handoff.lock().unwrap().pop();
                if let Some(b) = taken {
                    b.free();
                    freed.fetch_add(1, Ordering::Relaxed);
                }
            }
            if i == 0 && k % 4096 == 0 {
                ALLOC.trim();
            }
        }
        for b in held {
            b.free();
            freed.fetch_add(1, Ordering::Relaxed);
        }
    });
    for b in handoff.into_inner().unwrap() {
        b.free();
        freed.fetch_add(1, Ordering::Relaxed);
    }
    assert_eq!(freed.load(Ordering::Relaxed), made.load(Ordering::Relaxed));
}

/// Bursts of one size at a time, freed at once, with the purge delay at 0: spans
/// go wholly free, their pages go back and other sizes carve them again, all while
/// other threads hold long-lived blocks in neighbouring spans and thread 0 trims.
/// A block handed out from a span whose pages were being returned, or a live block
/// in a purged span, breaks a pattern.
fn bursts(t: Torture) {
    percid::alloc::set_purge_delay(std::time::Duration::ZERO);
    let made = AtomicU64::new(0);
    let freed = AtomicU64::new(0);
    t.run(|i, ops| {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
        let mut long: Vec<Block> = Vec::new();
        let mut k = 0;
        while k < ops {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let size = 16 << ((rng >> 8) % 11);
            let n = 64 + (rng >> 24) as usize % 448;
            let mut burst: Vec<Block> = Vec::with_capacity(n);
            for j in 0..n {
                tick();
                burst.push(Block::new(size, 8, (rng >> 40) as u8 ^ j as u8 | 1));
            }
            made.fetch_add(n as u64, Ordering::Relaxed);
            if long.len() < 8 {
                long.push(burst.pop().unwrap());
            } else if let Some(b) = burst.pop() {
                let old = std::mem::replace(&mut long[(rng >> 50) as usize % 8], b);
                old.free();
                freed.fetch_add(1, Ordering::Relaxed);
            }
            for b in burst {
                tick();
                b.free();
                freed.fetch_add(1, Ordering::Relaxed);
            }
            if i == 0 {
                ALLOC.trim();
            }
            k += n as u64;
        }
        for b in long {
            b.free();
            freed.fetch_add(1, Ordering::Relaxed);
        }
    });
    percid::alloc::set_purge_delay(percid::alloc::DEFAULT_PURGE_DELAY);
    assert_eq!(freed.load(Ordering::Relaxed), made.load(Ordering::Relaxed));
}

torture_variants! {
    alloc_blocks => |t| super::blocks(quarter(t));
    alloc_bursts => |t| super::bursts(quarter(t));
}
