//! The critical sections, specified.
//!
//! Every operation the crate runs on a shard is one of the sections below. Each is
//! written twice: here, as Rust over a `Section` (the pseudocode, executable), and in
//! the architecture module as `asm!` with the same name. The simulated backend runs
//! these functions with a section that can abort at every step; the portable
//! backend runs them on a lane under the lane's lock, where they never abort.
//!
//! In the pseudocode, `idx` is the shard index read *inside* the section (`mm_cid`, or
//! `cpu_id` before Linux 6.3), `word(idx)` the operation's word in that index's unit of
//! the arena, and `commit` the single store that ends the section. Everything before
//! the commit is invisible to other threads or harmless to repeat.
//!
//! | section | pseudocode | results |
//! |---|---|---|
//! | `load_add_store(v)` | `word(idx) += v` | committed |
//! | `numa_load_add_store(v)` | `n = node; if n >= planes { not materialised }; plane(n).word(idx) += v` | committed |
//! | `load_cbne_store(e, n)` | `if word(idx) != e { fail(seen) }; commit word(idx) = n` | committed / compare failed |
//! | `list_pop()` | `h = word(idx); if h.node == 0 { fail }; commit word(idx) = h.node.next` | committed(node) / empty |
//! | `list_push(n, max)` | `h = word(idx); if h.len >= max { fail }; n.next = h; commit word(idx) = n \| (h.len + 1) << 48` | committed / full |
//! | `store_payload_commit_index(v[..c])` | `if gate != 0 { fail }; t = tail(idx); h = cached(idx); if t - h >= cap { h = cached(idx) = head(idx); if t - h >= cap { fail } }; n = min(c, cap - (t - h)); slot[(t + k) & mask] = v[k] for k < n; commit tail(idx) = t + n` | committed(n) / full |
//!
//! The NUMA form reads the node (`node_id`) inside the section too, next to `idx`, and
//! works on the unit of `idx` in that node's plane (see [`crate::cid`]): its pseudocode
//! is the plain one on that unit, so the simulated and portable backends share it.
//!
//! Any section may also end `aborted` (the kernel, or the simulation, interrupted it
//! before the commit: nothing is visible, retry) or `not materialised` (the index has
//! no unit or buffer yet: the caller creates it and retries).

use crate::sync::{AtomicU64, Ordering};

/// The section was interrupted before its commit; nothing it did is visible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Aborted;

/// Bits of a list head word that hold the first node's address.
pub(crate) const LIST_NODE_MASK: u64 = (1 << 48) - 1;
/// Shift of the list length in a list head word.
pub(crate) const LIST_LEN_SHIFT: u32 = 48;

/// The steps a critical section is made of. Implementations decide what an abort is.
pub(crate) trait Section {
    /// Reads a shared word of the section's shard.
    fn load(&mut self, word: &AtomicU64) -> Result<u64, Aborted>;
    /// Writes memory the caller owns and nobody sees before the commit.
    fn store_private(&mut self, word: &AtomicU64, value: u64) -> Result<(), Aborted>;
    /// Copies a payload into a slot nobody sees before the commit.
    ///
    /// # Safety
    /// `dst` and `src` are valid for `len` bytes and do not overlap.
    unsafe fn copy_private(
        &mut self,
        dst: *mut u8,
        src: *const u8,
        len: usize,
    ) -> Result<(), Aborted>;
    /// The committing store: after it, the section's effect is visible.
    fn commit(&mut self, word: &AtomicU64, value: u64) -> Result<(), Aborted>;
}

/// `word += v` (wrapping).
pub(crate) fn load_add_store<S: Section + ?Sized>(
    s: &mut S,
    word: &AtomicU64,
    v: u64,
) -> Result<(), Aborted> {
    let old = s.load(word)?;
    s.commit(word, old.wrapping_add(v))
}

/// `if word != expect { fail(seen) } else { word = new }`.
pub(crate) fn load_cbne_store<S: Section + ?Sized>(
    s: &mut S,
    word: &AtomicU64,
    expect: u64,
    new: u64,
) -> Result<Result<(), u64>, Aborted> {
    let seen = s.load(word)?;
    if seen != expect {
        return Ok(Err(seen));
    }
    s.commit(word, new)?;
    Ok(Ok(()))
}

/// Pops the first node of the list whose head is `head`.
///
/// # Safety
/// Every node reachable from `head` is a live `AtomicU64` (its link) that nobody frees
/// while it is listed.
pub(crate) unsafe fn list_pop<S: Section + ?Sized>(
    s: &mut S,
    head: &AtomicU64,
) -> Result<Option<usize>, Aborted> {
    let h = s.load(head)?;
    let node = (h & LIST_NODE_MASK) as usize;
    if node == 0 {
        return Ok(None);
    }
    // SAFETY: a listed node is a live link word (the caller's contract).
    let link = unsafe { &*(node as *const AtomicU64) };
    let next = s.load(link)?;
    s.commit(head, next)?;
    Ok(Some(node))
}

/// Pushes `node` on the list whose head is `head`, unless it holds `max_len` nodes.
///
/// # Safety
/// `node` is a live, private `AtomicU64` (the node's link) below 2^48.
pub(crate) unsafe fn list_push<S: Section + ?Sized>(
    s: &mut S,
    head: &AtomicU64,
    node: usize,
    max_len: u64,
) -> Result<Result<(), ()>, Aborted> {
    let h = s.load(head)?;
    let len = h >> LIST_LEN_SHIFT;
    if len >= max_len {
        return Ok(Err(()));
    }
    // SAFETY: the node is the caller's private link word.
    let link = unsafe { &*(node as *const AtomicU64) };
    s.store_private(link, h)?;
    s.commit(head, node as u64 | ((len + 1) << LIST_LEN_SHIFT))?;
    Ok(Ok(()))
}

/// Where [`store_payload_commit_index`] puts the payloads.
pub(crate) struct Payload<'a> {
    pub tail: &'a AtomicU64,
    pub head: &'a AtomicU64,
    /// The producers' copy of the head (a lower bound of it).
    pub cached: &'a AtomicU64,
    /// The index's slot buffer (0: not allocated yet).
    pub buffer: &'a AtomicU64,
    /// Slots per ring, a power of two.
    pub capacity: u64,
    pub slot_bytes: usize,
    /// `count` payloads of `slot_bytes` bytes each.
    pub src: *const u8,
    pub count: usize,
    /// Non-zero closes the ring to senders (the section fails as for a full ring).
    pub gate: &'a AtomicU64,
}

/// What [`store_payload_commit_index`] ended with, short of an abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PayloadOutcome {
    /// The first `n` payloads are published (`1 <= n <= count`).
    Committed(usize),
    Full,
    NoBuffer,
}

/// Copies as many payloads as fit into the free slots from the tail on and
/// publishes them by moving the tail once.
///
/// # Safety
/// A non-zero buffer word points to `capacity` slots of `slot_bytes` bytes, of which
/// those from the tail up to head + capacity are written only by this shard's
/// producers; `src` is readable for `count * slot_bytes` bytes; `count >= 1`.
pub(crate) unsafe fn store_payload_commit_index<S: Section + ?Sized>(
    s: &mut S,
    p: &Payload<'_>,
) -> Result<PayloadOutcome, Aborted> {
    if s.load(p.gate)? != 0 {
        return Ok(PayloadOutcome::Full);
    }
    let t = s.load(p.tail)?;
    let mut used = t.wrapping_sub(s.load(p.cached)?);
    if used >= p.capacity {
        // Looks full: refresh the copy from the consumer's head (harmless to repeat:
        // any head read is a lower bound) and decide on it.
        let h = s.load(p.head)?;
        s.store_private(p.cached, h)?;
        used = t.wrapping_sub(h);
        if used >= p.capacity {
            return Ok(PayloadOutcome::Full);
        }
    }
    let n = (p.count as u64).min(p.capacity - used);
    let buffer = s.load(p.buffer)? as usize;
    if buffer == 0 {
        return Ok(PayloadOutcome::NoBuffer);
    }
    for k in 0..n {
        let slot = (t.wrapping_add(k) & (p.capacity - 1)) as usize;
        let dst = buffer + slot * p.slot_bytes;
        // SAFETY: slot `(t + k) & mask` is free (t + k - h < capacity) and only this
        // shard's producers write it; the caller vouches for the buffer and the source.
        unsafe {
            s.copy_private(
                dst as *mut u8,
                p.src.add(k as usize * p.slot_bytes),
                p.slot_bytes,
            )?
        };
    }
    s.commit(p.tail, t.wrapping_add(n))?;
    Ok(PayloadOutcome::Committed(n as usize))
}

/// A section that never aborts: the portable backend runs it on a lane while holding
/// the lane's lock, so plain atomic loads and stores suffice.
pub(crate) struct Locked;

impl Section for Locked {
    #[inline]
    fn load(&mut self, word: &AtomicU64) -> Result<u64, Aborted> {
        Ok(word.load(Ordering::Acquire))
    }
    #[inline]
    fn store_private(&mut self, word: &AtomicU64, value: u64) -> Result<(), Aborted> {
        word.store(value, Ordering::Relaxed);
        Ok(())
    }
    #[inline]
    unsafe fn copy_private(
        &mut self,
        dst: *mut u8,
        src: *const u8,
        len: usize,
    ) -> Result<(), Aborted> {
        // SAFETY: forwarded from the caller.
        unsafe { core::ptr::copy_nonoverlapping(src, dst, len) };
        Ok(())
    }
    #[inline]
    fn commit(&mut self, word: &AtomicU64, value: u64) -> Result<(), Aborted> {
        word.store(value, Ordering::Release);
        Ok(())
    }
}
