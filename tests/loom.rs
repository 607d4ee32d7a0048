//! loom models of the simulated and portable backends' protocols.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test --release --test loom`. Under loom every
//! thread runs the simulated backend (or the portable one, when moved there): a
//! section can be aborted at every step by another thread beginning a section on the
//! same cid, and after two aborts the operation moves to the thread's lane, so the
//! models cover the retry and the fallback paths too.
#![cfg(loom)]

use loom::thread;
use percid::cid::{Arena, Word, Words};
use percid::testing::{force_portable_backend, set_simulated_cid};

/// One word in a fresh arena of 2 cids and 2 lanes, leaked so model threads can share it.
fn word() -> Word<'static> {
    let arena: &'static Arena = Box::leak(Box::new(Arena::with_capacity(2, 2)));
    let words: &'static Words<'static> = Box::leak(Box::new(arena.alloc(1).unwrap()));
    words.word(0)
}

#[test]
fn adds_on_one_cid_are_serialised() {
    loom::model(|| {
        let w = word();
        let t = thread::spawn(move || {
            set_simulated_cid(0);
            w.add(1);
        });
        set_simulated_cid(0);
        w.add(2);
        t.join().unwrap();
        assert_eq!(w.sum(), 3);
    });
}

#[test]
fn adds_on_two_cids_and_a_concurrent_sum() {
    loom::model(|| {
        let w = word();
        let t = thread::spawn(move || {
            set_simulated_cid(1);
            w.add(1);
        });
        set_simulated_cid(0);
        w.add(2);
        // The other thread may or may not have committed (or materialised cid 1).
        let seen = w.sum();
        assert!(seen == 2 || seen == 3, "sum {seen}");
        t.join().unwrap();
        assert_eq!(w.sum(), 3);
    });
}

#[test]
fn simulated_and_portable_threads_never_share_a_word() {
    loom::model(|| {
        let w = word();
        let t = thread::spawn(move || {
            force_portable_backend();
            set_simulated_cid(0);
            w.add(1);
        });
        set_simulated_cid(0);
        w.add(2);
        t.join().unwrap();
        assert_eq!(w.sum(), 3);
    });
}

#[test]
fn compare_store_admits_one_owner_per_shard() {
    loom::model(|| {
        let w = word();
        let t = thread::spawn(move || {
            set_simulated_cid(0);
            w.compare_store(0, 1).ok()
        });
        set_simulated_cid(0);
        let mine = w.compare_store(0, 2).ok();
        let theirs = t.join().unwrap();
        if let (Some(a), Some(b)) = (mine, theirs) {
            assert_ne!(a, b, "two owners of {a:?}");
        }
        // Every success left its value in its shard.
        let total: u64 = w
            .shards()
            .map(|(_, v)| v.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        let expected = mine.map_or(0, |_| 2) + theirs.map_or(0, |_| 1);
        assert_eq!(total, expected);
    });
}

/// A list node: its first word is the link.
#[repr(C, align(16))]
struct Node {
    link: loom::sync::atomic::AtomicU64,
}

fn nodes(n: usize) -> Vec<usize> {
    (0..n)
        .map(|_| {
            let node = Box::leak(Box::new(Node {
                link: loom::sync::atomic::AtomicU64::new(0),
            }));
            node as *mut Node as usize
        })
        .collect()
}

/// Walks a shard's list: the nodes it holds, first to last.
fn walk(head: u64) -> Vec<usize> {
    let mut out = Vec::new();
    let mut h = head;
    while h & ((1 << 48) - 1) != 0 {
        let node = (h & ((1 << 48) - 1)) as usize;
        out.push(node);
        // SAFETY: listed nodes are the leaked `Node`s of this model.
        h = unsafe { &*(node as *const Node) }
            .link
            .load(std::sync::atomic::Ordering::Relaxed);
    }
    out
}

#[test]
fn list_pop_and_push_keep_every_node_once() {
    loom::model(|| {
        let w = word();
        let all = nodes(2);
        set_simulated_cid(0);
        for &n in &all {
            // SAFETY: the nodes are private, aligned, leaked words.
            unsafe { w.list_push(n, 8) }.unwrap();
        }
        let t = thread::spawn(move || {
            set_simulated_cid(0);
            // SAFETY: listed nodes are leaked and only touched through the list.
            if let Some((n, _)) = unsafe { w.list_pop() } {
                // SAFETY: the popped node is ours until pushed back.
                unsafe { w.list_push(n, 8) }.unwrap();
            }
        });
        // SAFETY: as above.
        if let Some((n, _)) = unsafe { w.list_pop() } {
            // SAFETY: as above.
            unsafe { w.list_push(n, 8) }.unwrap();
        }
        t.join().unwrap();
        let mut seen: Vec<usize> = Vec::new();
        for (shard, head) in w.shards() {
            let head = head.load(std::sync::atomic::Ordering::Relaxed);
            let listed = walk(head);
            assert_eq!(head >> 48, listed.len() as u64, "{shard:?} length");
            seen.extend(listed);
        }
        seen.sort_unstable();
        let mut expected = all.clone();
        expected.sort_unstable();
        assert_eq!(seen, expected);
    });
}

/// The fork gate (`src/cid/fork.rs`): while the forking side is between `close` and
/// `open`, no region is open, whatever the interleaving, and a region entered
/// meanwhile waits for `open`. The tallies are sharded and a region may enter on one
/// shard and leave on the other (a migrating thread).
#[test]
fn fork_gate_excludes_regions() {
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicU32, Ordering};
    use percid::testing::ForkGateModel;

    loom::model(|| {
        let gate = Arc::new(ForkGateModel::new());
        let inside = Arc::new(AtomicU32::new(0));
        let region = {
            let (gate, inside) = (Arc::clone(&gate), Arc::clone(&inside));
            thread::spawn(move || {
                gate.enter();
                inside.fetch_add(1, Ordering::SeqCst);
                inside.fetch_sub(1, Ordering::SeqCst);
                gate.leave();
            })
        };
        gate.close();
        assert_eq!(
            inside.load(Ordering::SeqCst),
            0,
            "a region is open at the fork"
        );
        gate.open();
        region.join().unwrap();
    });
}

/// The fence skip of `Word::foreign_compare_store`, `foreign_compare_store_many` and
/// `quiesce` (`cid/ops.rs`, `fence_skippable`) is Dekker's protocol: a registering
/// thread publishes "I may run rseq sections" (`RSEQ_SEEN`) before its first
/// section, whose load of a word is an `asm!` (relaxed) load; a foreign thread swaps
/// the word, then reads the flag and skips the rseq fence when it is false. Safe
/// means: never both "the foreign side skipped" and "the section read the old
/// value" (it would then commit over the foreign side's token).
mod rseq_seen {
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering::*, fence};
    use loom::thread;

    const OLD: u64 = 1;
    const TOKEN: u64 = 2;

    /// One run: `registering_fence` says whether the registering thread issues a
    /// SeqCst fence between its flag store and its first section.
    fn run(registering_fence: bool) {
        let seen = Arc::new(AtomicBool::new(false));
        let word = Arc::new(AtomicU64::new(OLD));
        let t = {
            let (seen, word) = (seen.clone(), word.clone());
            thread::spawn(move || {
                seen.store(true, SeqCst);
                if registering_fence {
                    fence(SeqCst);
                }
                // The section's load.
                word.load(Relaxed)
            })
        };
        // The foreign side: the swap, its fence, the flag.
        let swapped = word.compare_exchange(OLD, TOKEN, SeqCst, Acquire).is_ok();
        fence(SeqCst);
        let skipped = !seen.load(SeqCst);
        let section_read = t.join().unwrap();
        assert!(swapped);
        assert!(
            !(skipped && section_read == OLD),
            "the fence was skipped while a section read the old value"
        );
    }

    /// With a SeqCst fence on both sides the skip is sound by the memory model.
    #[test]
    fn rseq_seen_flag_with_fences_on_both_sides() {
        loom::model(|| run(true));
    }

    /// Without the registering thread's fence it is not (its store and its later
    /// load may be reordered: aarch64 does), which is why `fence_skippable` only
    /// skips on x86-64 until the registration issues that fence.
    #[test]
    #[should_panic(expected = "the fence was skipped")]
    fn rseq_seen_flag_without_the_registering_fence_races() {
        loom::model(|| run(false));
    }
}
