//! The pool peers `percid bench pool` and `benches/pool.rs` measure against, and the
//! one channel both hand objects through in the producer/consumer workload. One file,
//! included by both (`#[path]` from each), so they time the same code.
//!
//! In-tree peers, always built: the system allocator (`System.alloc`, what `Box::new`
//! does on a binary whose global allocator is the system's: glibc's malloc here)
//! and a `Mutex<Vec<Box<Obj>>>` pool. With feature `peers`: mimalloc used directly
//! through `GlobalAlloc` (not installed as the global allocator, so everything else in
//! the process still uses the system allocator), lockfree-object-pool's
//! `LinearObjectPool`, sharded-slab's `Pool` and a crossbeam `ArrayQueue<Box<Obj>>`
//! pool.
//!
//! Every object handle implements [`Handle`]: what the workloads do with an object
//! while they hold it (`touch`, its address through `opaque_ptr`), and dropping the
//! handle gives the object back, as dropping a `percid::PoolBox` does.
//!
//! `opaque` and `opaque_ptr` come from the includer (`super`): the percid binary's
//! bench module, or the criterion bench's own copy. They are register-only barriers:
//! `std::hint::black_box` would store each object's address to a stack slot per
//! operation, and that slot can 4K-alias the pool's hot words.

// Each includer uses a different subset (the criterion bench skips some peers).
#![allow(dead_code)]

use std::cell::UnsafeCell;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::opaque_ptr;

/// The pooled object: 64 bytes, one cache line.
pub(crate) type Obj = [u64; 8];

/// The value every implementation starts an object with.
pub(crate) const ZERO: Obj = [0; 8];

/// Something a workload holds: an object it got, given back when dropped.
pub(crate) trait Handle {
    /// Makes the object's address escape (`opaque_ptr`), so no get/give-back pair can
    /// be folded away by the compiler.
    fn touch(&self);
}

impl<T: Send> Handle for percid::PoolBox<'_, T> {
    #[inline]
    fn touch(&self) {
        opaque_ptr(&**self);
    }
}

impl<T> Handle for Box<T> {
    #[inline]
    fn touch(&self) {
        opaque_ptr(&**self);
    }
}

/// A fresh `Box` per object, freed when dropped (the mutex pools' misses).
#[inline]
pub(crate) fn boxed() -> Box<Obj> {
    Box::new(ZERO)
}

/// The system allocator peer: what `Box::new` does, but calling `std::alloc::System`
/// directly, so the peer is glibc's malloc and free whatever global allocator the
/// binary has (the percid binary's forwards to the one `bench memory` chose).
#[inline]
pub(crate) fn system_box() -> SysBox {
    let layout = std::alloc::Layout::new::<Obj>();
    // SAFETY: the layout has a nonzero size.
    let ptr = unsafe { std::alloc::GlobalAlloc::alloc(&std::alloc::System, layout) }.cast::<Obj>();
    let Some(ptr) = std::ptr::NonNull::new(ptr) else {
        std::alloc::handle_alloc_error(layout)
    };
    // SAFETY: a fresh allocation of `Obj`'s size and alignment, ours alone.
    unsafe { ptr.as_ptr().write(ZERO) };
    SysBox(ptr)
}

/// An object from the system allocator (see [`system_box`]).
pub(crate) struct SysBox(std::ptr::NonNull<Obj>);

// SAFETY: a `SysBox` owns its object exclusively, as a `Box` does; `Obj` is `Send`
// and malloc frees from any thread.
unsafe impl Send for SysBox {}

impl Handle for SysBox {
    #[inline]
    fn touch(&self) {
        // SAFETY: the object is initialised and owned by this handle.
        opaque_ptr(unsafe { self.0.as_ref() });
    }
}

impl Drop for SysBox {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: allocated by `System.alloc` with this layout, freed once.
        unsafe {
            std::alloc::GlobalAlloc::dealloc(
                &std::alloc::System,
                self.0.as_ptr().cast(),
                std::alloc::Layout::new::<Obj>(),
            )
        };
    }
}

/// A pool of boxes behind one mutex: what a pool written in an afternoon looks like.
/// `get` pops a parked box (or allocates one), dropping the handle parks it again.
pub(crate) struct MutexPool {
    // The peer recycles heap allocations, so its objects are boxes by definition.
    #[allow(clippy::vec_box)]
    free: Mutex<Vec<Box<Obj>>>,
}

impl MutexPool {
    pub(crate) fn new() -> MutexPool {
        MutexPool {
            free: Mutex::new(Vec::new()),
        }
    }

    #[inline]
    pub(crate) fn get(&self) -> MutexBox<'_> {
        let parked = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        MutexBox {
            pool: self,
            obj: ManuallyDrop::new(parked.unwrap_or_else(boxed)),
        }
    }

    /// Objects parked (the bytes the pool holds are this times 64).
    pub(crate) fn parked(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The mutex's address: its lock word and the vector's length are within it.
    pub(crate) fn address(&self) -> usize {
        std::ptr::from_ref(&self.free) as usize
    }
}

/// An object of a [`MutexPool`].
pub(crate) struct MutexBox<'a> {
    pool: &'a MutexPool,
    obj: ManuallyDrop<Box<Obj>>,
}

impl Handle for MutexBox<'_> {
    #[inline]
    fn touch(&self) {
        opaque_ptr(&**self.obj);
    }
}

impl Drop for MutexBox<'_> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: `obj` is taken exactly once, here, and never touched afterwards.
        let obj = unsafe { ManuallyDrop::take(&mut self.obj) };
        self.pool
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(obj);
    }
}

#[cfg(feature = "peers")]
pub(crate) use with_feature::*;

/// The peers that come from crates.io (feature `peers`).
#[cfg(feature = "peers")]
mod with_feature {
    use std::alloc::{GlobalAlloc, Layout, handle_alloc_error};
    use std::mem::ManuallyDrop;
    use std::ptr::NonNull;

    use crossbeam_queue::ArrayQueue;
    use lockfree_object_pool::{LinearObjectPool, LinearReusable};
    use mimalloc::MiMalloc;
    use sharded_slab::Clear;

    use super::super::opaque;
    use super::{Handle, Obj, ZERO, boxed, opaque_ptr};

    /// An object from mimalloc, called directly through `GlobalAlloc` with
    /// `Layout::new::<Obj>()` and written like `Box::new` writes its value.
    pub(crate) struct MiBox(NonNull<Obj>);

    // SAFETY: a `MiBox` owns its object exclusively, as a `Box` does; `Obj` is `Send`
    // and mimalloc frees from any thread.
    unsafe impl Send for MiBox {}

    impl MiBox {
        #[inline]
        pub(crate) fn new() -> MiBox {
            let layout = Layout::new::<Obj>();
            // SAFETY: the layout has a nonzero size.
            let ptr = unsafe { MiMalloc.alloc(layout) }.cast::<Obj>();
            let Some(ptr) = NonNull::new(ptr) else {
                handle_alloc_error(layout)
            };
            // SAFETY: a fresh allocation of `Obj`'s size and alignment, ours alone.
            unsafe { ptr.as_ptr().write(ZERO) };
            MiBox(ptr)
        }
    }

    impl Handle for MiBox {
        #[inline]
        fn touch(&self) {
            // SAFETY: the object is initialised and owned by this handle.
            opaque_ptr(unsafe { self.0.as_ref() });
        }
    }

    impl Drop for MiBox {
        #[inline]
        fn drop(&mut self) {
            // SAFETY: allocated by `MiMalloc.alloc` with this layout, freed once.
            unsafe { MiMalloc.dealloc(self.0.as_ptr().cast(), Layout::new::<Obj>()) };
        }
    }

    /// lockfree-object-pool's linear pool, with no reset (percid's pool has none
    /// either).
    pub(crate) fn linear_pool() -> LinearObjectPool<Obj> {
        LinearObjectPool::new(|| ZERO, |_| ())
    }

    impl Handle for LinearReusable<'_, Obj> {
        #[inline]
        fn touch(&self) {
            opaque_ptr(&**self);
        }
    }

    /// sharded-slab needs a `Clear` value; clearing does nothing (no reset, as above).
    #[derive(Default)]
    pub(crate) struct Slabbed(pub(crate) Obj);

    impl Clear for Slabbed {
        fn clear(&mut self) {}
    }

    /// sharded-slab's object pool.
    pub(crate) type SlabPool = sharded_slab::Pool<Slabbed>;

    /// An object of a [`SlabPool`]. sharded-slab's own guard (`RefMut`) releases
    /// the slot's write access when dropped but keeps the object until `clear(key)`,
    /// and it cannot move to another thread; so [`slab_get`] creates, touches and
    /// releases, and the handle is the key, cleared when the handle drops.
    pub(crate) struct SlabBox<'a> {
        pool: &'a SlabPool,
        key: usize,
    }

    /// `create` + touch + release of the guard; the object goes back with `clear`.
    #[inline]
    pub(crate) fn slab_get(pool: &SlabPool) -> SlabBox<'_> {
        let created = pool
            .create()
            .expect("bench pool: sharded-slab is full (more threads than it supports)");
        opaque_ptr(&created.0);
        SlabBox {
            pool,
            key: created.key(),
        }
    }

    impl Handle for SlabBox<'_> {
        #[inline]
        fn touch(&self) {
            // The object was touched in `slab_get`, while its guard was alive.
            opaque(self.key as u64);
        }
    }

    impl Drop for SlabBox<'_> {
        #[inline]
        fn drop(&mut self) {
            let cleared = self.pool.clear(self.key);
            debug_assert!(cleared, "sharded-slab: key {:#x} not cleared", self.key);
        }
    }

    /// A pool of boxes in a crossbeam `ArrayQueue`: get pops (or allocates), giving
    /// back pushes (or frees when the queue is full).
    pub(crate) struct QueuePool {
        // The peer recycles heap allocations, so its objects are boxes by definition.
        free: ArrayQueue<Box<Obj>>,
    }

    impl QueuePool {
        pub(crate) fn new(capacity: usize) -> QueuePool {
            QueuePool {
                free: ArrayQueue::new(capacity),
            }
        }

        #[inline]
        pub(crate) fn get(&self) -> QueueBox<'_> {
            QueueBox {
                pool: self,
                obj: ManuallyDrop::new(self.free.pop().unwrap_or_else(boxed)),
            }
        }

        /// Objects parked.
        pub(crate) fn parked(&self) -> usize {
            self.free.len()
        }

        /// The queue's address: its head and tail indices are within it.
        pub(crate) fn address(&self) -> usize {
            std::ptr::from_ref(&self.free) as usize
        }
    }

    /// An object of a [`QueuePool`].
    pub(crate) struct QueueBox<'a> {
        pool: &'a QueuePool,
        obj: ManuallyDrop<Box<Obj>>,
    }

    impl Handle for QueueBox<'_> {
        #[inline]
        fn touch(&self) {
            opaque_ptr(&**self.obj);
        }
    }

    impl Drop for QueueBox<'_> {
        #[inline]
        fn drop(&mut self) {
            // SAFETY: `obj` is taken exactly once, here, and never touched afterwards.
            let obj = unsafe { ManuallyDrop::take(&mut self.obj) };
            // A full queue hands the box back: it is freed.
            drop(self.pool.free.push(obj));
        }
    }
}

/// One end of a [`Ring`], on its own cache lines (128 bytes: adjacent-line prefetch on
/// x86) so the two ends never false-share.
#[repr(align(128))]
struct End {
    /// This end's index (next slot to write, or to read); stored by this end only.
    index: AtomicUsize,
    /// The other end's index as this end last read it (a lower bound of the real
    /// one); this end's private copy, so it rereads the other end's line only when
    /// the copy says the ring is full (or empty).
    seen: AtomicUsize,
}

impl End {
    fn new() -> End {
        End {
            index: AtomicUsize::new(0),
            seen: AtomicUsize::new(0),
        }
    }
}

/// The channel of the producer/consumer workload: a bounded single-producer,
/// single-consumer ring (Lamport's queue, each end caching the other's index) that
/// spins briefly, then yields, when full or empty. Every implementation sends its
/// handles through the same ring, so the workload's differences are the cross-thread
/// get and give-back; the ring's own cost is the `xthread ring alone` case.
pub(crate) struct Ring<M> {
    slots: Box<[UnsafeCell<MaybeUninit<M>>]>,
    mask: usize,
    /// The consumer's end: `index` is the next slot to read.
    head: End,
    /// The producer's end: `index` is the next slot to write.
    tail: End,
}

// A slot is written by the producer before it publishes the slot (release store of
// the tail) and read by the consumer after it sees it (acquire load), then given back
// (release store of the head, acquired by the producer before it reuses the slot).
// SAFETY: so each message moves from one thread to the other: `M: Send` suffices.
unsafe impl<M: Send> Sync for Ring<M> {}

impl<M> Ring<M> {
    /// A ring of `capacity` slots, rounded up to a power of two.
    pub(crate) fn new(capacity: usize) -> Ring<M> {
        let capacity = capacity.max(1).next_power_of_two();
        Ring {
            slots: (0..capacity)
                .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
                .collect(),
            mask: capacity - 1,
            head: End::new(),
            tail: End::new(),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Sends `m`, waiting while the ring is full.
    ///
    /// # Safety
    /// One thread at a time sends.
    #[inline]
    pub(crate) unsafe fn send(&self, m: M) {
        let tail = self.tail.index.load(Ordering::Relaxed);
        let full = |head: usize| tail.wrapping_sub(head) == self.slots.len();
        if full(self.tail.seen.load(Ordering::Relaxed)) {
            let mut spins = 0;
            loop {
                let head = self.head.index.load(Ordering::Acquire);
                self.tail.seen.store(head, Ordering::Relaxed);
                if !full(head) {
                    break;
                }
                backoff(&mut spins);
            }
        }
        // SAFETY: the slot is free (the consumer released it: the acquire load of its
        // index, now or when `seen` was last read) and only the one sender writes
        // slots.
        unsafe { (*self.slots[tail & self.mask].get()).write(m) };
        self.tail
            .index
            .store(tail.wrapping_add(1), Ordering::Release);
    }

    /// Receives the oldest message, waiting while the ring is empty.
    ///
    /// # Safety
    /// One thread at a time receives.
    #[inline]
    pub(crate) unsafe fn recv(&self) -> M {
        let head = self.head.index.load(Ordering::Relaxed);
        if self.head.seen.load(Ordering::Relaxed) == head {
            let mut spins = 0;
            loop {
                let tail = self.tail.index.load(Ordering::Acquire);
                self.head.seen.store(tail, Ordering::Relaxed);
                if tail != head {
                    break;
                }
                backoff(&mut spins);
            }
        }
        // SAFETY: the producer wrote and published this slot (the acquire load of its
        // index, now or when `seen` was last read); only the one receiver reads it,
        // once, before releasing it below.
        let m = unsafe { (*self.slots[head & self.mask].get()).assume_init_read() };
        self.head
            .index
            .store(head.wrapping_add(1), Ordering::Release);
        m
    }
}

impl<M> Drop for Ring<M> {
    fn drop(&mut self) {
        let (head, tail) = (*self.head.index.get_mut(), *self.tail.index.get_mut());
        let mut i = head;
        while i != tail {
            // SAFETY: the slots from `head` to `tail` hold sent, unreceived messages,
            // and `&mut self` means no one else can reach them.
            unsafe { self.slots[i & self.mask].get_mut().assume_init_drop() };
            i = i.wrapping_add(1);
        }
    }
}

/// Spins a little, then yields the CPU: on a 2-CPU machine the other end may be
/// waiting for this very CPU.
#[inline]
fn backoff(spins: &mut u32) {
    if *spins < 64 {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}
