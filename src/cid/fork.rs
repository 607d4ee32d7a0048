//! Everything percid does so that a child of `fork()` can use every structure.
//!
//! A child starts with the one thread that forked; a lock another thread held at
//! that moment stays held in the child forever, and a lazy value another thread was
//! initialising stays "being initialised" forever. So:
//!
//! 1. **The handlers exist before anything can be waited on.** They are registered
//!    with `pthread_atfork` from an `.init_array` constructor, when the program (or
//!    the shared object holding percid) is loaded, before any thread can hold a
//!    percid lock. (Registering them on first use left a window: a thread that had
//!    just built the process-wide arena, or was building it, when another forked.)
//! 2. **Process-wide lazies never wait.** [`Lazy`] publishes a value with one
//!    compare-and-swap; racing initialisers each build one and the losers drop
//!    theirs. A child forked in the middle of an initialisation builds its own.
//!    (The rare hang of `tests/fork.rs`: a child blocked forever in
//!    `cid::global()`'s `OnceLock`, which a thread of the parent was initialising.)
//! 3. **Short regions are held off** ([`hold`]): the prepare handler closes a gate,
//!    waits until no thread is inside a held region, and opens it again after the
//!    fork, in both processes. `PerCid::with` and its visitors, the rings' internal
//!    mutexes, pool drains and depots take it.
//! 4. **Arenas are locked** (every arena: the process-wide ones and those a program
//!    makes): the prepare handler takes the registry of live arenas, then every
//!    arena's allocation lock, then every lane's (and, simulated, every unit's) lock;
//!    then `PerCidAlloc`'s heap locks ([`crate::alloc::fork_prepare`]). All are
//!    released after the fork in both processes, in reverse order. The heap's own
//!    arena (built inside percid's set-up) is left to the heap's handler.
//!
//! The order matters: held regions may allocate (arena and heap locks) and may take
//! lane locks, so they are waited out first; an arena's allocation lock may be held
//! while its holder allocates from the heap, so every allocation lock comes before
//! any lane or heap lock. The handlers allocate nothing.
//!
//! What is not covered: a lock of the program's own that a thread holds inside
//! `PerCid::with` (the fork waits for the closure; a closure that waits for another
//! thread which is itself entering a percid region at that moment deadlocks the fork,
//! as any lock a program holds across `fork()` would).

use std::sync::atomic::{AtomicPtr, Ordering as StdOrdering};

/// A process-wide value built on first use that nobody ever waits for: racing
/// initialisers each build one, the first to publish wins, the others drop theirs.
/// A `OnceLock` would block a child forked while another thread of the parent was
/// inside its initialiser, forever. Values are leaked (they are process-wide).
pub(crate) struct Lazy<T> {
    ptr: AtomicPtr<T>,
}

impl<T> Lazy<T> {
    pub(crate) const fn new() -> Lazy<T> {
        Lazy {
            ptr: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The value, once published.
    #[inline(always)]
    pub(crate) fn get(&'static self) -> Option<&'static T> {
        let ptr = self.ptr.load(StdOrdering::Acquire);
        // SAFETY: a non-null pointer was published by `get_or_init` from a leaked box
        // that is never freed.
        (!ptr.is_null()).then(|| unsafe { &*ptr })
    }

    /// The value, built by `init` unless another thread published one first (then
    /// this thread's value is dropped). `init` may run on several threads at once.
    #[inline]
    pub(crate) fn get_or_init(&'static self, init: impl FnOnce() -> T) -> &'static T {
        match self.get() {
            Some(value) => value,
            None => self.publish(Box::new(init())),
        }
    }

    /// [`Lazy::get_or_init`] with an initialiser that boxes the value itself (inside
    /// percid's set-up guard, say, so that the allocation does not re-enter percid).
    #[inline]
    pub(crate) fn get_or_init_boxed(&'static self, init: impl FnOnce() -> Box<T>) -> &'static T {
        match self.get() {
            Some(value) => value,
            None => self.publish(init()),
        }
    }

    #[cold]
    fn publish(&'static self, value: Box<T>) -> &'static T {
        let mine = Box::into_raw(value);
        match self.ptr.compare_exchange(
            std::ptr::null_mut(),
            mine,
            StdOrdering::AcqRel,
            StdOrdering::Acquire,
        ) {
            // SAFETY: just published, never freed.
            Ok(_) => unsafe { &*mine },
            Err(theirs) => {
                // SAFETY: `mine` came from `Box::into_raw` above and was not published.
                drop(unsafe { Box::from_raw(mine) });
                // SAFETY: published by the winner, never freed.
                unsafe { &*theirs }
            }
        }
    }
}

/// A held region (see [`hold`]): the fork waits until it is dropped. Not `Send`: the
/// region belongs to the thread that entered it.
#[must_use = "the region ends when the guard is dropped"]
pub(crate) struct ForkHold {
    _thread: std::marker::PhantomData<*const ()>,
}

impl Drop for ForkHold {
    #[inline]
    fn drop(&mut self) {
        imp::leave();
    }
}

/// Enters a region that `fork()` must not split: the fork's prepare handler waits
/// until no thread is inside one, and new regions wait until the fork is done (in
/// both processes). For short critical regions of slow paths (a pool drain holding a
/// drain token, a depot or ring mutex) and `PerCid::with`.
///
/// Cost: a thread-local depth and, at the outermost level, two per-cid counter
/// adds (rseq sections: no shared cache line written) and two loads of words that
/// only a fork writes. Nested regions only bump the depth; they never wait, so a
/// thread that forks inside its own region, or enters one inside another, does not
/// deadlock.
///
/// Take it **before** any lock the fork handlers take (an arena's allocation lock, a
/// lane lock, the heap's locks), never while holding one: the prepare handler waits
/// for regions first and takes those locks afterwards, so a region entered under one
/// of them would wait for a fork that waits for that lock.
#[inline]
pub(crate) fn hold() -> ForkHold {
    imp::enter();
    ForkHold {
        _thread: std::marker::PhantomData,
    }
}

/// The gate of held regions, generic over where its two tallies live (per-cid
/// words in the process; plain atomics in the loom model, `tests/loom.rs`).
///
/// A region *enters* by counting itself in `ENTERED`, fencing and looking at
/// `forking`; if the gate is closed it counts itself out again (`LEFT`) and waits.
/// It *leaves* by counting in `LEFT`. The fork *closes* the gate (stores `forking`,
/// fences) and waits until the entries read equal the exits read (plus its own
/// open region). Both tallies only grow and every exit follows its entry; the exits
/// are read first, so equal reads mean that, between the two reads, no other region
/// was open (a per-cid tally is read shard by shard: reading exits first is what
/// makes a region that entered on one cid and left on another harmless). A region
/// entering after the close's fence sees the gate closed and does nothing inside.
pub(crate) struct Gate<T> {
    forking: crate::sync::AtomicBool,
    tallies: T,
}

/// Where a [`Gate`] counts entries (`which == ENTERED`) and exits (`LEFT`).
pub(crate) trait Tallies {
    /// Adds one to tally `which`.
    fn count(&self, which: usize);
    /// Tally `which` now (a sum of shards read one by one).
    fn total(&self, which: usize) -> u64;
}

pub(crate) const ENTERED: usize = 0;
pub(crate) const LEFT: usize = 1;

impl<T: Tallies> Gate<T> {
    #[cfg(not(loom))]
    pub(crate) const fn with(tallies: T) -> Gate<T> {
        Gate {
            forking: crate::sync::AtomicBool::new(false),
            tallies,
        }
    }

    #[cfg(loom)]
    pub(crate) fn with(tallies: T) -> Gate<T> {
        Gate {
            forking: crate::sync::AtomicBool::new(false),
            tallies,
        }
    }

    /// Enters a region (the outermost of the thread). `light` orders the entry's
    /// count before the look at the gate (see `light_fence`).
    #[inline]
    pub(crate) fn enter(&self, light: impl Fn()) {
        self.tallies.count(ENTERED);
        light();
        if self.forking.load(crate::sync::Ordering::Relaxed) {
            self.wait(light);
        }
    }

    #[cold]
    #[inline(never)]
    fn wait(&self, light: impl Fn()) {
        let mut round = 0;
        loop {
            self.tallies.count(LEFT);
            while self.forking.load(crate::sync::Ordering::Acquire) {
                crate::sync::backoff(&mut round);
            }
            self.tallies.count(ENTERED);
            light();
            if !self.forking.load(crate::sync::Ordering::Relaxed) {
                return;
            }
        }
    }

    /// Leaves the thread's outermost region.
    #[inline]
    pub(crate) fn leave(&self) {
        self.tallies.count(LEFT);
    }

    /// Closes the gate and waits until `own` regions are left open (the caller's:
    /// 1 when it forks inside a region). `heavy` is the fork's side of the fence.
    pub(crate) fn close(&self, own: u64, heavy: impl Fn()) {
        self.forking.store(true, crate::sync::Ordering::SeqCst);
        heavy();
        let mut round = 0;
        loop {
            let left = self.tallies.total(LEFT);
            crate::sync::fence(crate::sync::Ordering::SeqCst);
            let entered = self.tallies.total(ENTERED);
            if entered.wrapping_sub(left) == own {
                return;
            }
            crate::sync::backoff(&mut round);
        }
    }

    /// Opens the gate again (after the fork, in both processes).
    pub(crate) fn open(&self) {
        self.forking.store(false, crate::sync::Ordering::Release);
    }
}

/// The gate with plain atomic tallies of two shards each, for the loom model: a
/// count goes to the shard `shard` picks (so a region can enter on one shard and
/// leave on the other, as a thread that migrates between cids does).
#[cfg(any(loom, feature = "testing"))]
pub struct ModelTallies {
    shards: [[crate::sync::AtomicU64; 2]; 2],
    next: crate::sync::AtomicU64,
}

#[cfg(any(loom, feature = "testing"))]
impl ModelTallies {
    pub(crate) fn new() -> ModelTallies {
        let zero = || crate::sync::AtomicU64::new(0);
        ModelTallies {
            shards: [[zero(), zero()], [zero(), zero()]],
            next: zero(),
        }
    }
}

#[cfg(any(loom, feature = "testing"))]
impl Tallies for ModelTallies {
    fn count(&self, which: usize) {
        let shard = (self.next.fetch_add(1, crate::sync::Ordering::Relaxed) % 2) as usize;
        self.shards[which][shard].fetch_add(1, crate::sync::Ordering::SeqCst);
    }

    fn total(&self, which: usize) -> u64 {
        let [a, b] = &self.shards[which];
        let first = a.load(crate::sync::Ordering::SeqCst);
        first.wrapping_add(b.load(crate::sync::Ordering::SeqCst))
    }
}

#[cfg(not(loom))]
mod imp {
    use super::{Gate, Lazy, Tallies};
    use crate::cid::ThinCell;
    use crate::cid::arena::State;
    use crate::cid::{Word, Words};
    use crate::sync::MutexGuard;
    use std::cell::{Cell, UnsafeCell};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU8, AtomicU64, Ordering, compiler_fence, fence};

    // --- Registration of the handlers -------------------------------------------

    const UNREGISTERED: u8 = 0;
    const REGISTERING: u8 = 1;
    const REGISTERED: u8 = 2;
    static HANDLERS: AtomicU8 = AtomicU8::new(UNREGISTERED);

    /// Runs when the object holding percid is loaded (before `main`, or in `dlopen`).
    extern "C" fn register_at_load() {
        ensure_handlers();
    }

    // The constructor that registers the handlers before any thread can hold a lock.
    #[used]
    // SAFETY: `.init_array` holds pointers to `extern "C" fn()` run at load time;
    // this is one, and it only calls `pthread_atfork`.
    #[unsafe(link_section = ".init_array")]
    static REGISTER_AT_LOAD: extern "C" fn() = register_at_load;

    /// Registers the handlers unless done (the constructor normally did it). Never
    /// waits: a thread that finds another registering goes on (the constructor ran
    /// before any thread existed, so this only matters where constructors do not run).
    pub(crate) fn ensure_handlers() {
        if HANDLERS.load(Ordering::Acquire) != UNREGISTERED {
            return;
        }
        if HANDLERS
            .compare_exchange(
                UNREGISTERED,
                REGISTERING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            // SAFETY: registers handlers that only wait, take and release locks
            // (no allocation); they stay valid as long as the code is mapped
            // (glibc drops a shared object's handlers when it is unloaded).
            unsafe { libc::pthread_atfork(Some(prepare), Some(release), Some(release)) };
            HANDLERS.store(REGISTERED, Ordering::Release);
        }
    }

    // --- The gate of held regions -----------------------------------------------

    /// Per-cid tallies of regions entered and left, in the process-wide arena: an
    /// entry costs a per-cid add, not a shared read-modify-write.
    struct PerCidTallies;

    static GATE: Gate<PerCidTallies> = Gate::with(PerCidTallies);

    /// The tally words (word `ENTERED`, word `LEFT`).
    static TALLY: Lazy<Words<'static>> = Lazy::new();
    /// Entries and exits of threads for which the tally could not be allocated.
    static SPARE: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

    thread_local! {
        /// Regions the thread is in (nested ones count). Const, no destructor: usable
        /// in thread-local destructors and at thread exit.
        static DEPTH: Cell<u32> = const { Cell::new(0) };
    }

    #[inline(always)]
    fn tally(which: usize) -> Option<Word<'static>> {
        match TALLY.get() {
            Some(words) => Some(words.first().offset_by(which)),
            None => tally_slow(which),
        }
    }

    #[cold]
    #[inline(never)]
    fn tally_slow(which: usize) -> Option<Word<'static>> {
        let words = crate::cid::global().alloc(2).ok()?;
        let words = TALLY.get_or_init(|| words);
        THIN.set(words.first().hot());
        Some(words.first().offset_by(which))
    }

    /// The tally words' thin section (word `ENTERED`'s cell; `LEFT` is the next
    /// word), set once the words exist: a region's entry and exit are then one
    /// critical section each, as a `Counter` add.
    static THIN: ThinCell = ThinCell::missing();

    impl Tallies for PerCidTallies {
        #[inline]
        fn count(&self, which: usize) {
            if !THIN.add_at(which, 1) {
                self.count_slow(which);
            }
        }

        fn total(&self, which: usize) -> u64 {
            let words = tally(which).map_or(0, Word::sum);
            words.wrapping_add(SPARE[which].load(Ordering::SeqCst))
        }
    }

    impl PerCidTallies {
        /// First use, other backends, aborts, new cids.
        #[cold]
        #[inline(never)]
        fn count_slow(&self, which: usize) {
            match tally(which) {
                Some(word) => {
                    word.add(1);
                    THIN.refresh(|| word.hot().1);
                }
                None => {
                    SPARE[which].fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }

    /// The region's side of the Dekker pattern, between its entry's count and its
    /// look at the gate: a compiler fence when the fork side runs the rseq fence
    /// (membarrier: a full barrier on every running thread of the process; a thread
    /// not running passed one when it was switched out), a full fence otherwise.
    #[inline(always)]
    fn light_fence() {
        if crate::rseq::fence_available() {
            compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
    }

    /// The fork's side: after closing the gate, before reading the tallies.
    fn heavy_fence() {
        fence(Ordering::SeqCst);
        // A region that saw the fence available relies on it: it is sticky once
        // available, and this asks again (registering) when it was not yet.
        if crate::rseq::fence_available() {
            for _ in 0..100 {
                if crate::rseq::fence_rseq().is_ok() {
                    break;
                }
            }
        }
    }

    #[inline]
    pub(super) fn enter() {
        let depth = DEPTH.get();
        if depth == 0 {
            GATE.enter(light_fence);
        }
        DEPTH.set(depth + 1);
    }

    #[inline]
    pub(super) fn leave() {
        let depth = DEPTH.get() - 1;
        DEPTH.set(depth);
        if depth == 0 {
            GATE.leave();
        }
    }

    fn close_gate() {
        GATE.close(u64::from(DEPTH.get() > 0), heavy_fence);
    }

    fn open_gate() {
        GATE.open();
    }

    // --- Arenas -----------------------------------------------------------------

    /// A live arena's allocation lock, and the guard the prepare handler took.
    struct Entry {
        state: *const crate::sync::Mutex<State>,
        guard: Option<MutexGuard<'static, State>>,
    }

    /// Every live arena but the heap's. An arena registers when it is built and
    /// leaves when it is dropped (its `Drop` locks this, so no arena goes away while
    /// the prepare handler holds it).
    struct Registry(Mutex<Vec<Entry>>);

    // SAFETY: entries are addresses of arenas' boxed locks (shared by every thread
    // anyway) and guards that only the forking thread sets and takes, under the
    // registry's own lock, between its prepare and release handlers.
    unsafe impl Sync for Registry {}

    static ARENAS: Registry = Registry(Mutex::new(Vec::new()));

    fn arenas() -> std::sync::MutexGuard<'static, Vec<Entry>> {
        ARENAS.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Protects an arena's locks across `fork()` until [`unregister`]. `state` must
    /// stay at its address until then.
    pub(crate) fn register(state: *const crate::sync::Mutex<State>) {
        ensure_handlers();
        arenas().push(Entry { state, guard: None });
    }

    /// Forgets an arena that is being dropped.
    pub(crate) fn unregister(state: *const crate::sync::Mutex<State>) {
        let mut arenas = arenas();
        if let Some(i) = arenas.iter().position(|e| e.state == state) {
            arenas.swap_remove(i);
        }
    }

    /// What the prepare handler took, for the release handlers (the same thread: the
    /// forking one; glibc runs the handlers of one fork at a time).
    struct Held {
        arenas: Option<std::sync::MutexGuard<'static, Vec<Entry>>>,
        heap: bool,
    }

    struct HeldCell(UnsafeCell<Held>);

    // SAFETY: only the forking thread touches it, between its own prepare handler
    // and its own release handler; glibc holds its fork lock across the handlers of
    // one fork, so two forks never interleave here.
    unsafe impl Sync for HeldCell {}

    static HELD: HeldCell = HeldCell(UnsafeCell::new(Held {
        arenas: None,
        heap: false,
    }));

    extern "C" fn prepare() {
        close_gate();
        // SAFETY: see `HeldCell`: this thread is the only one touching it.
        let held = unsafe { &mut *HELD.0.get() };
        let mut arenas = arenas();
        for entry in arenas.iter_mut() {
            // SAFETY: a registered arena's lock lives until it unregisters, which
            // waits for the registry's lock, held here until the release handler.
            let state: &'static crate::sync::Mutex<State> = unsafe { &*entry.state };
            entry.guard = Some(state.lock().unwrap_or_else(|e| e.into_inner()));
        }
        for entry in arenas.iter() {
            if let Some(state) = &entry.guard {
                crate::cid::Arena::lock_units(state);
            }
        }
        held.arenas = Some(arenas);
        held.heap = crate::alloc::fork_prepare();
    }

    extern "C" fn release() {
        // SAFETY: as in `prepare`.
        let held = unsafe { &mut *HELD.0.get() };
        if std::mem::take(&mut held.heap) {
            crate::alloc::fork_release();
        }
        if let Some(mut arenas) = held.arenas.take() {
            for entry in arenas.iter().rev() {
                if let Some(state) = &entry.guard {
                    crate::cid::Arena::unlock_units(state);
                }
            }
            for entry in arenas.iter_mut().rev() {
                drop(entry.guard.take());
            }
        }
        open_gate();
    }
}

/// Under loom nothing forks: regions are free (the gate's protocol has its own model,
/// [`ModelGate`]).
#[cfg(loom)]
mod imp {
    pub(super) fn enter() {}
    pub(super) fn leave() {}
}

#[cfg(not(loom))]
pub(crate) use imp::{register, unregister};

/// Protects `PerCidAlloc`'s heap across `fork()` (called once it is set up): the
/// handlers, registered at load time, call [`crate::alloc::fork_prepare`] and
/// [`crate::alloc::fork_release`] after the arenas' locks.
pub(crate) fn protect_heap() {
    #[cfg(not(loom))]
    imp::ensure_handlers();
}

/// The gate's protocol on plain atomics, for the loom model (`tests/loom.rs`): a
/// region's side and the fork's side, with the process's fences replaced by `SeqCst`
/// fences (the symmetric form, which the process uses where membarrier is missing).
#[cfg(any(loom, feature = "testing"))]
pub struct ModelGate(Gate<ModelTallies>);

#[cfg(any(loom, feature = "testing"))]
impl ModelGate {
    /// An open gate.
    pub fn new() -> ModelGate {
        ModelGate(Gate::with(ModelTallies::new()))
    }

    /// Enters a region, waiting while the gate is closed.
    pub fn enter(&self) {
        self.0
            .enter(|| crate::sync::fence(crate::sync::Ordering::SeqCst));
    }

    /// Leaves the region.
    pub fn leave(&self) {
        self.0.leave();
    }

    /// Closes the gate and waits until no region is open.
    pub fn close(&self) {
        self.0
            .close(0, || crate::sync::fence(crate::sync::Ordering::SeqCst));
    }

    /// Opens the gate.
    pub fn open(&self) {
        self.0.open();
    }
}

#[cfg(any(loom, feature = "testing"))]
impl Default for ModelGate {
    fn default() -> Self {
        ModelGate::new()
    }
}
