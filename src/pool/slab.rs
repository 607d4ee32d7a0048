//! Slots and slabs: the memory objects live in.
//!
//! A slab is one block of memory: a header ([`SlabHead`]) and then its slots. Every
//! slot knows its index in the slab, so the header of any slot is found with one
//! subtraction (no lookup, no larger slot). Outside loom a slab is an anonymous
//! mapping of whole pages (bound to its node in NUMA mode): freeing a slab unmaps
//! it, so its memory leaves the process at once, whatever the global allocator
//! keeps.

use super::*;
use std::alloc::Layout;

/// One pooled object: its list link, its debug state and the value.
#[repr(C)]
pub(super) struct Slot<T> {
    /// The list link while the slot is free (the packed head of the rest of the
    /// list); first, so the slot's address is the list node's.
    pub(super) link: AtomicU64,
    pub(super) state: AtomicU32,
    /// The slot's index in its slab: how the slot finds its slab's header.
    pub(super) index: u32,
    pub(super) value: UnsafeCell<T>,
}

impl<T> Slot<T> {
    pub(super) fn node(&self) -> usize {
        self as *const Slot<T> as usize
    }

    /// # Safety
    /// `node` is the address of a live slot of this pool.
    pub(super) unsafe fn from_node<'a>(node: usize) -> &'a Slot<T> {
        // SAFETY: the caller's contract.
        unsafe { &*(node as *const Slot<T>) }
    }

    /// The header of the slab that holds the slot.
    pub(super) fn head(&self) -> &SlabHead {
        let start = self.node() - self.index as usize * std::mem::size_of::<Slot<T>>();
        // SAFETY: a slot lives at `slots_offset + index * size` in its slab, whose
        // header is at the slab's start and lives as long as the slot.
        unsafe { &*((start - slots_offset::<T>()) as *const SlabHead) }
    }

    /// The NUMA node whose memory holds the slot (its slab's node; 0 in a plain
    /// pool): where the slot's batches go home to.
    pub(super) fn home(&self) -> u32 {
        self.head().home
    }
}

/// Where the slots start in a slab: after the header, aligned for `Slot<T>`.
fn slots_offset<T>() -> usize {
    std::mem::size_of::<SlabHead>().next_multiple_of(std::mem::align_of::<Slot<T>>())
}

/// Which of its depot's lists holds a slab (see [`Central`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Listed {
    /// None of its objects is in the slab's own free list.
    Nowhere,
    /// Some are: in the depot's `partial` list.
    Partial,
    /// All are (the slab is fully idle): in the depot's `empty` list.
    Empty,
}

/// Links of a slab in an intrusive list of slabs ([`SlabList`]).
#[derive(Clone, Copy, Default)]
pub(super) struct Links {
    prev: Option<SlabRef>,
    next: Option<SlabRef>,
}

/// An intrusive, doubly linked list of slabs: no memory of its own, so a pool that
/// frees its slabs gives everything back (a `Vec` or a map of slabs would keep
/// heap memory the global allocator may never return).
pub(super) struct SlabList {
    first: Option<SlabRef>,
    /// Slabs on the list.
    pub(super) len: usize,
}

impl SlabList {
    pub(super) const fn new() -> SlabList {
        SlabList {
            first: None,
            len: 0,
        }
    }

    pub(super) fn first(&self) -> Option<SlabRef> {
        self.first
    }

    /// Puts `s` first.
    ///
    /// # Safety
    /// `links(s)` is this list's link field of a live slab, not on any list of
    /// this kind; the caller holds the lock guarding those fields.
    pub(super) unsafe fn push(&mut self, s: SlabRef, links: fn(SlabRef) -> *mut Links) {
        // SAFETY: the caller's contract: the fields are ours under the lock.
        unsafe {
            *links(s) = Links {
                prev: None,
                next: self.first,
            };
            if let Some(f) = self.first {
                (*links(f)).prev = Some(s);
            }
        }
        self.first = Some(s);
        self.len += 1;
    }

    /// Takes `s` off the list.
    ///
    /// # Safety
    /// `s` is on this list (through `links`); the caller holds its lock.
    pub(super) unsafe fn remove(&mut self, s: SlabRef, links: fn(SlabRef) -> *mut Links) {
        // SAFETY: the caller's contract.
        unsafe {
            let Links { prev, next } = *links(s);
            match prev {
                Some(p) => (*links(p)).next = next,
                None => self.first = next,
            }
            if let Some(n) = next {
                (*links(n)).prev = prev;
            }
            *links(s) = Links::default();
        }
        self.len -= 1;
    }

    /// The slab after `s` on the list.
    ///
    /// # Safety
    /// As for `remove`.
    pub(super) unsafe fn next(s: SlabRef, links: fn(SlabRef) -> *mut Links) -> Option<SlabRef> {
        // SAFETY: the caller's contract.
        unsafe { (*links(s)).next }
    }
}

/// A slab's part of its depot: the slab's own free list. Only read and written
/// under the lock of the depot of the slab's home node.
pub(super) struct Central {
    /// Packed list of the slab's objects that sit in the depot's slab lists.
    pub(super) free: u64,
    /// Objects on `free`.
    pub(super) nfree: u32,
    pub(super) listed: Listed,
    /// Place in the depot list `listed` names.
    pub(super) links: Links,
}

/// The header at the start of every slab.
pub(super) struct SlabHead {
    /// The node whose memory holds the slab (0 in a plain pool).
    pub(super) home: u32,
    /// Slots in the slab.
    pub(super) len: u32,
    /// Bytes of the slab's memory.
    bytes: usize,
    /// The memory is an anonymous mapping (else from the global allocator).
    mapped: bool,
    /// Place in the pool's registry: under the registry's lock only.
    registry: std::cell::UnsafeCell<Links>,
    /// The slab's depot state: under the home depot's lock only.
    central: std::cell::UnsafeCell<Central>,
}

/// A slab's header, as the lists hold it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct SlabRef(NonNull<SlabHead>);

// SAFETY: a `SlabRef` is only dereferenced for the header's immutable fields, or
// under the lock that guards the field it reaches (registry, depot); a slab leaves
// every list before it is freed.
unsafe impl Send for SlabRef {}

impl SlabRef {
    pub(super) fn of(head: &SlabHead) -> SlabRef {
        SlabRef(NonNull::from(head))
    }

    pub(super) fn head(&self) -> &SlabHead {
        // SAFETY: a listed slab is alive (it leaves the lists before it is freed).
        unsafe { self.0.as_ref() }
    }

    /// The slab's depot state.
    ///
    /// # Safety
    /// The caller holds the lock of the depot of the slab's home node, and no other
    /// reference to this slab's `Central` is alive.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn central(&self) -> &mut Central {
        // SAFETY: the caller's contract: the depot lock serialises every access.
        unsafe { &mut *self.head().central.get() }
    }

    /// The slab's links in its depot's lists (for [`SlabList`]).
    pub(super) fn depot_links(s: SlabRef) -> *mut Links {
        // SAFETY: only the address is taken; `SlabList` dereferences it under the
        // depot lock.
        unsafe { &raw mut (*s.head().central.get()).links }
    }

    /// The slab's links in the pool's registry (for [`SlabList`]).
    pub(super) fn registry_links(s: SlabRef) -> *mut Links {
        s.head().registry.get()
    }

    fn addr(&self) -> usize {
        self.0.as_ptr() as usize
    }
}

/// Slots made together, freed together: with the pool, or when every one of them
/// is idle in the depot and the pool keeps more idle objects than it needs (see
/// the depot). The registry of a pool owns its slabs.
pub(super) struct Slab<T> {
    /// Start of the slab's memory: the header.
    base: NonNull<u8>,
    /// Initialised slots.
    len: usize,
    _slots: PhantomData<Slot<T>>,
}

// SAFETY: a slab owns its slots' values; the pool moves them between threads only
// where `T: Send` (the pool's bounds).
unsafe impl<T: Send> Send for Slab<T> {}

impl<T> Slab<T> {
    /// How many slots a slab made for batches of `batch` holds: exactly `batch` for
    /// a `T` with drop glue, which may own memory or a resource beyond its slot (a
    /// buffer, a connection: filling a page with 100 `Vec`s of 1 MiB would make
    /// 100 MiB on a pool's first get); as many as fill the slab's whole pages, and
    /// at least `batch`, for a plain `T`, whose values are only their slots' bytes.
    pub(super) fn per_slab(batch: u64) -> u64 {
        // A slab's chain is a packed list: its length has 16 bits (and the
        // all-ones length is the drain token).
        const MAX_CHAIN: u64 = 0xfffe;
        if std::mem::needs_drop::<T>() {
            return batch.min(MAX_CHAIN);
        }
        let size = std::mem::size_of::<Slot<T>>() as u64;
        let off = slots_offset::<T>() as u64;
        let bytes = (off + batch * size).next_multiple_of(Self::granule() as u64);
        ((bytes - off) / size).min(MAX_CHAIN)
    }

    /// The slab memory's granule: a page (a whole number of pages is mapped).
    fn granule() -> usize {
        if cfg!(loom) {
            return Self::align();
        }
        crate::numa::memory::page_size()
    }

    fn align() -> usize {
        std::mem::align_of::<Slot<T>>().max(std::mem::align_of::<SlabHead>())
    }

    fn layout(bytes: usize) -> Option<Layout> {
        Layout::from_size_align(bytes, Self::align()).ok()
    }

    /// A slab of `n` slots made by `make` (given each slot's index), for node `home`;
    /// bound to that node first when `bind` (NUMA mode). `None` when no memory.
    pub(super) fn new(
        n: usize,
        home: u32,
        bind: bool,
        mut make: impl FnMut(u32) -> Slot<T>,
    ) -> Option<Slab<T>> {
        let size = std::mem::size_of::<Slot<T>>();
        let off = slots_offset::<T>();
        let bytes = (off + n * size).next_multiple_of(Self::granule());
        let (base, mapped) = Self::memory(bytes, home, bind)?;
        let head = SlabHead {
            home,
            len: n as u32,
            bytes,
            mapped,
            registry: std::cell::UnsafeCell::new(Links::default()),
            central: std::cell::UnsafeCell::new(Central {
                free: 0,
                nfree: 0,
                listed: Listed::Nowhere,
                links: Links::default(),
            }),
        };
        // SAFETY: fresh memory of `bytes >= size_of::<SlabHead>()` bytes, aligned
        // for the header.
        unsafe { base.as_ptr().cast::<SlabHead>().write(head) };
        // If `make` panics, dropping the slab drops the slots made so far.
        let mut slab = Slab {
            base,
            len: 0,
            _slots: PhantomData,
        };
        for i in 0..n {
            let slot = make(i as u32);
            // SAFETY: slot `i` is inside the memory (`off + n * size <= bytes`),
            // aligned (`off` and the base are), and not yet initialised.
            unsafe { slab.slot_ptr(i).write(slot) };
            slab.len = i + 1;
        }
        Some(slab)
    }

    /// Takes back ownership of a slab the registry held.
    ///
    /// # Safety
    /// `s` is a slab of `Slot<T>` made by [`Slab::new`], fully initialised, on no
    /// list any more, and owned by nobody else (no slot of it is reachable).
    pub(super) unsafe fn from_ref(s: SlabRef) -> Slab<T> {
        Slab {
            base: s.0.cast(),
            len: s.head().len as usize,
            _slots: PhantomData,
        }
    }

    /// Gives up ownership: the registry holds the slab from now on.
    pub(super) fn into_ref(self) -> SlabRef {
        let s = SlabRef(self.base.cast());
        std::mem::forget(self);
        s
    }

    /// Fresh memory for a slab: an anonymous mapping (bound to `home` when `bind`),
    /// else the global allocator's.
    #[cfg(not(loom))]
    fn memory(bytes: usize, home: u32, bind: bool) -> Option<(NonNull<u8>, bool)> {
        // SAFETY: an anonymous private mapping, checked below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Self::allocated(bytes);
        }
        // Slots are list nodes: a slab above the 48 bits a packed head holds (5-level
        // paging, tagged pointers) would corrupt every list it joined. Give it back
        // and try the global allocator, whose memory is checked the same way.
        if !list::packable(map as usize, bytes) {
            // SAFETY: the mapping just made, untouched and referred to by nothing.
            unsafe { libc::munmap(map, bytes) };
            return Self::allocated(bytes);
        }
        if bind {
            // SAFETY: `map` is the fresh, untouched mapping of `bytes` bytes just
            // made, owned by this slab; nothing else refers to it yet.
            let _ = unsafe { crate::numa::memory::bind(map.cast(), bytes, home) };
        }
        // Page-aligned, and `align_of::<T>() <= MAX_ALIGN` (the page size).
        NonNull::new(map.cast::<u8>()).map(|p| (p, true))
    }

    /// Under loom there is no mapping: the global allocator's memory.
    #[cfg(loom)]
    fn memory(bytes: usize, _home: u32, _bind: bool) -> Option<(NonNull<u8>, bool)> {
        Self::allocated(bytes)
    }

    /// Memory from the global allocator, `None` when it has none or hands out an
    /// address a packed list head cannot hold (see [`list::packable`]): the pool
    /// then does not grow, as when memory runs out, and no list ever sees the slab.
    fn allocated(bytes: usize) -> Option<(NonNull<u8>, bool)> {
        let layout = Self::layout(bytes)?;
        // SAFETY: a layout of nonzero size (at least a header).
        let p = NonNull::new(unsafe { std::alloc::alloc(layout) })?;
        if !list::packable(p.as_ptr() as usize, bytes) {
            // SAFETY: just allocated with this layout, untouched, freed once.
            unsafe { std::alloc::dealloc(p.as_ptr(), layout) };
            return None;
        }
        Some((p, false))
    }

    fn slot_ptr(&self, i: usize) -> *mut Slot<T> {
        slot_at::<T>(self.base.as_ptr() as usize, i)
    }

    pub(super) fn slots(&self) -> &[Slot<T>] {
        // SAFETY: `len` initialised slots from `slot_ptr(0)`, owned by the slab
        // until it drops.
        unsafe { std::slice::from_raw_parts(self.slot_ptr(0), self.len) }
    }

    /// Links the slab's slots into one chain (all of them owned by the caller).
    pub(super) fn chain(&self) -> u64 {
        let n = self.len as u64;
        let mut chain = 0u64;
        for (i, slot) in self.slots().iter().enumerate().rev() {
            slot.link.store(chain, Ordering::Relaxed);
            chain = pack(slot.node(), n - i as u64);
        }
        chain
    }
}

/// Slot `i` of the slab at `base`.
fn slot_at<T>(base: usize, i: usize) -> *mut Slot<T> {
    (base + slots_offset::<T>() + i * std::mem::size_of::<Slot<T>>()) as *mut Slot<T>
}

/// Whether `node` is the address of a slot of slab `s` (of `Slot<T>`).
pub(super) fn holds<T>(s: SlabRef, node: usize) -> bool {
    let start = slot_at::<T>(s.addr(), 0) as usize;
    let end = start + s.head().len as usize * std::mem::size_of::<Slot<T>>();
    (start..end).contains(&node) && (node - start).is_multiple_of(std::mem::size_of::<Slot<T>>())
}

impl<T> Drop for Slab<T> {
    fn drop(&mut self) {
        let slots = std::ptr::slice_from_raw_parts_mut(self.slot_ptr(0), self.len);
        // SAFETY: the first `len` slots are initialised and owned by the slab, which
        // is going away: nothing refers to them any more (each value is dropped
        // here, once).
        unsafe { std::ptr::drop_in_place(slots) };
        // SAFETY: the header was written first by `Slab::new` and is plain data.
        let (bytes, mapped) = unsafe {
            let head = &*self.base.as_ptr().cast::<SlabHead>();
            (head.bytes, head.mapped)
        };
        if !mapped {
            if let Some(layout) = Self::layout(bytes) {
                // SAFETY: memory from `allocated` with this very layout, freed once.
                unsafe { std::alloc::dealloc(self.base.as_ptr(), layout) };
            }
            return;
        }
        #[cfg(not(loom))]
        // SAFETY: the slab's own mapping of `bytes` bytes (`Slab::memory`), whose
        // slots were just dropped.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), bytes)
        };
    }
}

/// Every slab of a pool, owned: freed with the pool, or one by one by the depots'
/// shrink ([`Pool::free_slabs`]).
pub(super) struct Registry {
    pub(super) list: SlabList,
}

impl<T: Send> Pool<T> {
    /// A new slab as a chain, or `None` when the pool has created `max_objects`: as
    /// many objects as fill the slab's pages (at least a batch); in NUMA mode bound
    /// to node `node`.
    pub(super) fn grow(&self, node: usize) -> Option<u64> {
        let want = Slab::<T>::per_slab(self.batch);
        let max = self.max_objects;
        let before = self
            .created
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                let n = want.min(max.saturating_sub(c));
                (n > 0).then_some(c + n)
            })
            .ok()?;
        let n = want.min(max - before);
        // User code (init) runs with no lock held. If it panics, the values made so
        // far are dropped and the reservation is given back.
        struct Reserved<'a>(&'a AtomicU64, u64);
        impl Drop for Reserved<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(self.1, Ordering::AcqRel);
            }
        }
        let reserved = Reserved(&self.created, n);
        let home = node as u32;
        let init = &self.init;
        let slab = Slab::new(n as usize, home, self.numa, |index| Slot {
            link: AtomicU64::new(0),
            state: AtomicU32::new(FREE),
            index,
            value: UnsafeCell::new(init.make()),
        })?;
        std::mem::forget(reserved);
        let chain = slab.chain();
        let s = slab.into_ref();
        {
            let _fork = fork_hold();
            let mut registry = lock(&self.slabs);
            // SAFETY: a new slab, on no list; the registry lock is held.
            unsafe { registry.list.push(s, SlabRef::registry_links) };
        }
        self.note_demand(node, n);
        // Release: the links are written before another thread can take the chain
        // (the mutexes order the hand-over as well).
        Some(chain)
    }

    /// Frees slabs the depots gave up (every object of each idle and on no list any
    /// more): drops their values and returns their memory. Called with no depot
    /// lock held (the values' `Drop` is user code).
    ///
    /// `slabs` links them through their depot links (no heap memory: a spill that
    /// frees allocates nothing).
    pub(super) fn free_slabs(&self, mut slabs: SlabList) {
        if slabs.len == 0 {
            return;
        }
        let mut n = 0u64;
        {
            let _fork = fork_hold();
            let mut registry = lock(&self.slabs);
            let mut at = slabs.first();
            while let Some(s) = at {
                // SAFETY: every slab of the pool is on the registry, whose lock is
                // held; `slabs` is ours (its slabs left their depot).
                unsafe {
                    registry.list.remove(s, SlabRef::registry_links);
                    at = SlabList::next(s, SlabRef::depot_links);
                }
                n += u64::from(s.head().len);
            }
        }
        self.created.fetch_sub(n, Ordering::AcqRel);
        self.freed.fetch_add(n, Ordering::Relaxed);
        while let Some(s) = slabs.first() {
            // SAFETY: `slabs` is ours (see above).
            unsafe { slabs.remove(s, SlabRef::depot_links) };
            // SAFETY: the depot gave the slab up with every object idle in it and
            // took it off its lists; it left the registry: ours alone.
            drop(unsafe { Slab::<T>::from_ref(s) });
        }
        if self.bounded {
            // The bound has room again: a waiter may now grow.
            self.waiters.notify();
        }
    }

    /// Whether `node` is a slot of this pool (the debug check of `from_raw`).
    pub(super) fn owns(&self, node: usize) -> bool {
        let registry = lock(&self.slabs);
        let mut at = registry.list.first();
        while let Some(s) = at {
            if holds::<T>(s, node) {
                return true;
            }
            // SAFETY: on the registry, whose lock is held.
            at = unsafe { SlabList::next(s, SlabRef::registry_links) };
        }
        false
    }
}
