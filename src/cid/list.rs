//! Free lists in per-cid words, as the pool and the allocator keep them: a head word
//! packs the first node's address (low 48 bits) with the list's length (high 16
//! bits), and a node's first word is the packed head of the rest of the list. A
//! *chain* is a list held privately (in a depot, or being built).
//!
//! # The 48-bit bound
//!
//! A node must lie below 2^48: x86-64 with 4-level paging and aarch64 with 48-bit
//! virtual addresses never map user memory above it, but 5-level paging (user
//! addresses up to 2^56 when a mapping asks for them) and tagged pointers (aarch64
//! TBI/MTE, x86 LAM) can hand out addresses whose high bits would be taken for a
//! length. The bound is checked once, where node memory is created
//! ([`packable`]: the pool's slabs, the allocator's reservation), not on every
//! push: memory that fails it never holds nodes, so a head never mixes an address
//! with a length. [`pack`] re-checks in debug builds.

use super::Word;
use crate::rseq::spec::{LIST_LEN_SHIFT, LIST_NODE_MASK};
use crate::sync::Ordering;

/// The head a drainer swaps in: no first node (every pop finds the list empty) and
/// a length no list reaches (every push finds it full).
pub(crate) const DRAIN_TOKEN: u64 = 0xffff << LIST_LEN_SHIFT;

/// Whether every address of `[start, start + len)` can be a list node: the whole
/// range lies below 2^48 (see the module docs). For memory that will hold nodes,
/// checked once when it is created.
pub(crate) fn packable(start: usize, len: usize) -> bool {
    (start as u64)
        .checked_add(len as u64)
        .is_some_and(|end| end <= LIST_NODE_MASK + 1)
}

/// The packed head of a list whose first node is `node` and whose length is `len`.
/// `node` comes from memory that passed [`packable`]; `len` fits 16 bits.
#[inline(always)]
pub(crate) fn pack(node: usize, len: u64) -> u64 {
    debug_assert!(
        node as u64 & !LIST_NODE_MASK == 0 && len <= 0xffff,
        "list node {node:#x} (length {len}) does not fit a packed head"
    );
    node as u64 | len << LIST_LEN_SHIFT
}

/// The first node of a packed head (0: empty).
#[inline(always)]
pub(crate) fn first(head: u64) -> usize {
    (head & LIST_NODE_MASK) as usize
}

/// The length of a packed head.
#[inline(always)]
pub(crate) fn len(head: u64) -> u64 {
    head >> LIST_LEN_SHIFT
}

/// Nodes on every shard's list of `word` (a racy snapshot, for decisions only).
pub(crate) fn cached(word: Word<'_>) -> u64 {
    word.shards()
        .map(|(_, head)| head.load(Ordering::Relaxed))
        .filter(|&h| h != DRAIN_TOKEN)
        .map(len)
        .sum()
}

/// Takes every non-empty list of `word` from its shard and gives it to `take` as a
/// chain: the head is swapped for [`DRAIN_TOKEN`] with
/// [`Word::foreign_compare_store`] (after its fence no section on the shard can
/// commit), then the shard's list is emptied. Callers serialise drains of one word
/// (the token is one value). Returns the nodes moved.
pub(crate) fn drain(word: Word<'_>, mut take: impl FnMut(u64)) -> u64 {
    let mut moved = 0;
    let heads: Vec<_> = word
        .shards()
        .map(|(shard, head)| (shard, head.load(Ordering::Acquire)))
        .collect();
    for (shard, head) in heads {
        if head == 0 || head == DRAIN_TOKEN {
            continue;
        }
        if let Ok(Ok(())) = word.foreign_compare_store(shard, head, DRAIN_TOKEN) {
            // The list is ours: the swap succeeded on that very head, and the fence
            // proved no section that read it can still commit.
            if let Some(w) = word.at(shard) {
                w.store(0, Ordering::Release);
            }
            moved += len(head);
            take(head);
        }
    }
    moved
}

/// Takes every non-empty list of every word in `words` (a word per class), with one
/// fence in all ([`Word::foreign_compare_store_many`]), giving each to
/// `take(word index, chain)`. Callers serialise drains of these words.
pub(crate) fn drain_all(words: &[Word<'_>], mut take: impl FnMut(usize, u64)) {
    let mut items = Vec::new();
    let mut owner = Vec::new();
    for (k, &word) in words.iter().enumerate() {
        for (shard, head) in word.shards() {
            let h = head.load(Ordering::Acquire);
            if h != 0 && h != DRAIN_TOKEN {
                items.push((word, shard, h));
                owner.push(k);
            }
        }
    }
    Word::foreign_compare_store_many(&items, DRAIN_TOKEN, |i| {
        let (word, shard, head) = items[i];
        if let Some(w) = word.at(shard) {
            w.store(0, Ordering::Release);
        }
        take(owner[i], head);
    });
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn packable_bounds_the_range_end_at_2_48() {
        let top = 1usize << 48;
        assert!(packable(0x1000, 4096));
        assert!(packable(top - 4096, 4096));
        assert!(!packable(top - 4096, 4097));
        assert!(!packable(top, 8));
        // 5-level paging and tagged pointers: high bits set.
        assert!(!packable(1 << 56, 4096));
        assert!(!packable(0xff00_0000_0000_1000, 64));
        assert!(!packable(usize::MAX - 8, 64));
    }

    #[test]
    fn pack_round_trips_a_node_and_a_length() {
        let head = pack(0x7fff_ffff_f000, 0xffff);
        assert_eq!(first(head), 0x7fff_ffff_f000);
        assert_eq!(len(head), 0xffff);
    }
}
