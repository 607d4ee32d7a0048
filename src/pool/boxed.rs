//! The handles of pooled objects: `PoolBox`, `OwnedPoolBox`, and `GetFuture`.

use super::*;

/// An object of a [`Pool`]: derefs to `T`, goes back to the pool when dropped —
/// into the cache of the cid the dropping thread runs on, so dropping on another
/// thread than the one that got it is the normal case and stays fast.
///
/// ```
/// use percid::{Pool, PoolBox};
///
/// let pool = Pool::new(|| vec![0u32; 8]).unwrap();
/// let mut b: PoolBox<'_, Vec<u32>> = pool.get();
/// b[0] = 7; // `DerefMut` to the value
/// assert_eq!(b.len(), 8); // `Deref`
/// std::thread::scope(|s| {
///     s.spawn(move || drop(b)); // returned from another thread: the normal case
/// });
/// assert!(pool.created() >= 1);
/// ```
pub struct PoolBox<'a, T: Send> {
    pub(super) pool: &'a Pool<T>,
    pub(super) slot: NonNull<Slot<T>>,
    /// `Sync` only when `T: Sync` (below).
    pub(super) _not_sync: PhantomData<*const ()>,
}

// SAFETY: a `PoolBox` owns its value exclusively; moving it moves the `T` (needs
// `T: Send`), and the pool it returns to is `Sync`.
unsafe impl<T: Send> Send for PoolBox<'_, T> {}
// SAFETY: `&PoolBox` only gives `&T`.
unsafe impl<T: Send + Sync> Sync for PoolBox<'_, T> {}

impl<'a, T: Send> PoolBox<'a, T> {
    pub(super) fn slot(&self) -> &Slot<T> {
        // SAFETY: the slot lives in one of the pool's slabs, which live as long as
        // the pool, which outlives `'a`.
        unsafe { self.slot.as_ref() }
    }

    /// The NUMA node whose memory holds the object: the node its slab was made for
    /// (in a NUMA pool, the node of the thread whose get grew the pool), 0 in a plain
    /// pool. The object goes home to that node's depot in batches (see
    /// [NUMA mode](crate::pool#numa-mode)).
    pub fn node(this: &Self) -> u32 {
        this.slot().home()
    }

    /// Takes the value out of the pool for good: the caller gets the `T`, and the
    /// slot goes back to the pool holding a fresh value from the pool's `init`. The
    /// pool's count of objects and its bound (`max_objects`) are unchanged: a
    /// detached value no longer counts, its replacement does.
    ///
    /// ```
    /// let pool = percid::Pool::builder(|| vec![0u8; 4]).max_objects(1).build().unwrap();
    /// let mut b = pool.get();
    /// b[0] = 9;
    /// let kept: Vec<u8> = percid::PoolBox::detach(b);
    /// assert_eq!(kept[0], 9);
    /// assert_eq!(pool.get()[0], 0); // the pool's one object is a fresh one
    /// ```
    pub fn detach(mut this: Self) -> T {
        let fresh = this.pool.init.make();
        std::mem::replace(&mut *this, fresh)
    }

    /// Gives up the box without returning the object: a pointer to the value, for
    /// [`PoolBox::from_raw`]. An object never given back stays in use (and is
    /// dropped with the pool).
    pub fn into_raw(this: Self) -> *mut T {
        let this = std::mem::ManuallyDrop::new(this);
        if this.pool.debug {
            this.pool.transition(
                this.slot(),
                BOXED,
                RAW,
                "into_raw of an object not in a box",
            );
        }
        this.slot().value.get()
    }

    /// Takes back an object given up with [`PoolBox::into_raw`].
    ///
    /// # Panics
    ///
    /// With the pool's debug checks on ([`PoolBuilder::debug`]), a pointer that is
    /// not a raw object of this pool (a foreign pointer, or one already taken back)
    /// panics.
    ///
    /// ```
    /// use percid::{Pool, PoolBox};
    ///
    /// let pool = Pool::new(|| 5u32).unwrap();
    /// let raw: *mut u32 = PoolBox::into_raw(pool.get());
    /// // SAFETY: `raw` came from `into_raw` on a box of `pool`, taken back once.
    /// let b = unsafe { PoolBox::from_raw(&pool, raw) };
    /// assert_eq!(*b, 5);
    /// ```
    ///
    /// # Safety
    /// `ptr` came from `into_raw` on a box of `pool`, and was not taken back since.
    pub unsafe fn from_raw(pool: &'a Pool<T>, ptr: *mut T) -> PoolBox<'a, T> {
        let offset = std::mem::offset_of!(Slot<T>, value);
        let node = (ptr as usize).wrapping_sub(offset);
        if pool.debug {
            let known = pool.owns(node);
            assert!(
                known,
                "percid::pool: from_raw of a pointer ({ptr:p}) that is not an object of this pool"
            );
        }
        // SAFETY: the caller's contract (checked above in debug mode): `node` is a
        // slot of this pool, given up by `into_raw`.
        let slot = unsafe { Slot::<T>::from_node(node) };
        if pool.debug {
            pool.transition(slot, RAW, BOXED, "from_raw of an object that is not raw");
        }
        PoolBox {
            pool,
            slot: NonNull::from(slot),
            _not_sync: PhantomData,
        }
    }
}

impl<T: Send> Deref for PoolBox<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the box owns the slot's value exclusively.
        unsafe { &*self.slot().value.get() }
    }
}

impl<T: Send> DerefMut for PoolBox<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the box owns the slot's value exclusively, and `&mut self` is
        // unique.
        unsafe { &mut *self.slot().value.get() }
    }
}

impl<T: Send> Drop for PoolBox<'_, T> {
    #[inline]
    fn drop(&mut self) {
        let slot = self.slot();
        // SAFETY: the slot is ours (this box), aligned and a user-space address; the
        // lists hold only this pool's slots.
        if unsafe {
            self.pool
                .thin_put
                .list_push(slot.node(), self.pool.capacity)
        } {
            return;
        }
        self.pool.put(slot);
    }
}

/// The future of [`Pool::get_async`]: ready with an object at once when one is
/// idle or can be made, otherwise (a bounded pool with every object in use) pending
/// until a drop wakes it. Dropping it unregisters the task.
///
/// ```
/// let pool = percid::Pool::builder(|| 0u64).max_objects(1).build().unwrap();
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// rt.block_on(async {
///     let mut one = pool.get_async().await;
///     *one += 1;
///     drop(one); // the pool's only object goes back ...
///     assert_eq!(*pool.get_async().await, 1); // ... and is handed out again
/// });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct GetFuture<'a, T> {
    pub(super) pool: &'a Pool<T>,
    /// Registration among the pool's waiters, once the pool was found exhausted.
    pub(super) id: Option<u64>,
}

impl<'a, T: Send> Future for GetFuture<'a, T> {
    type Output = PoolBox<'a, T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PoolBox<'a, T>> {
        let pool = self.pool;
        loop {
            if let Some(slot) = pool.pop().or_else(|| pool.acquire()) {
                if let Some(id) = self.id.take() {
                    pool.waiters.unregister(id);
                }
                return Poll::Ready(pool.boxed(slot));
            }
            assert!(
                pool.bounded,
                "percid::Pool::get_async: the pool cannot grow (the system refused memory \
                 for a new slab, or gave it above the 48-bit address bound)"
            );
            let id = *self.id.get_or_insert_with(|| pool.waiters.id());
            if !pool.waiters.register(id, Waiter::Task(cx.waker().clone())) {
                return Poll::Pending;
            }
            // Newly registered: look once more after the heavy fence.
        }
    }
}

impl<T> Drop for GetFuture<'_, T> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.pool.waiters.unregister(id);
        }
    }
}

impl<T> fmt::Debug for GetFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetFuture")
            .field("waiting", &self.id.is_some())
            .finish_non_exhaustive()
    }
}

/// An object of a pool shared through an `Arc` ([`Pool::get_owned`]): like
/// [`PoolBox`], but it owns a reference to its pool, so it is `'static`.
///
/// ```
/// use percid::{OwnedPoolBox, Pool};
/// use std::sync::Arc;
///
/// let pool = Arc::new(Pool::new(String::new).unwrap());
/// let mut b: OwnedPoolBox<String> = pool.get_owned();
/// std::thread::spawn(move || b.push_str("moved into a 'static thread"))
///     .join()
///     .unwrap();
/// assert!(Arc::ptr_eq(OwnedPoolBox::pool(&pool.get_owned()), &pool));
/// ```
pub struct OwnedPoolBox<T: Send> {
    pub(super) pool: Arc<Pool<T>>,
    pub(super) slot: NonNull<Slot<T>>,
}

// SAFETY: as for `PoolBox`: the box owns its value exclusively.
unsafe impl<T: Send> Send for OwnedPoolBox<T> {}
// SAFETY: `&OwnedPoolBox` only gives `&T`.
unsafe impl<T: Send + Sync> Sync for OwnedPoolBox<T> {}

impl<T: Send> OwnedPoolBox<T> {
    /// The pool the object goes back to.
    pub fn pool(this: &Self) -> &Arc<Pool<T>> {
        &this.pool
    }
}

impl<T: Send> Deref for OwnedPoolBox<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the slot lives in one of the pool's slabs, which the `Arc` keeps;
        // the box owns the value.
        unsafe { &*self.slot.as_ref().value.get() }
    }
}

impl<T: Send> DerefMut for OwnedPoolBox<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, exclusively.
        unsafe { &mut *self.slot.as_ref().value.get() }
    }
}

impl<T: Send> Drop for OwnedPoolBox<T> {
    fn drop(&mut self) {
        // SAFETY: as in `deref`; the slot is ours until `put`.
        self.pool.put(unsafe { self.slot.as_ref() });
    }
}

impl<T: Send + fmt::Debug> fmt::Debug for OwnedPoolBox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OwnedPoolBox").field(&**self).finish()
    }
}

impl<T: Send + fmt::Debug> fmt::Debug for PoolBox<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
