//! Free lists in per-cid words, as the pool and the allocator keep them: a head word
//! packs the first node's address (low 48 bits) with the list's length (high 16
//! bits), and a node's first word is the packed head of the rest of the list. A
//! *chain* is a list held privately (in a depot, or being built).

use super::Word;
use crate::rseq::spec::{LIST_LEN_SHIFT, LIST_NODE_MASK};
use crate::sync::Ordering;

/// The head a drainer swaps in: no first node (every pop finds the list empty) and
/// a length no list reaches (every push finds it full).
pub(crate) const DRAIN_TOKEN: u64 = 0xffff << LIST_LEN_SHIFT;

/// The packed head of a list whose first node is `node` and whose length is `len`.
#[inline(always)]
pub(crate) fn pack(node: usize, len: u64) -> u64 {
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
