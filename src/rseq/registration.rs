//! Who registered this thread's rseq area, and where it is.
//!
//! Process facts (glibc's registration, the kernel's feature size, forced modes) are
//! read once. Each thread then resolves its own handle lazily, on its first use:
//! glibc's area when glibc registered the thread, else an area this crate registers
//! (and unregisters in a thread-local destructor, before that memory is freed), else
//! the portable backend. The result is cached in `const` thread-locals: the thin
//! fast paths (`Counter::add`, `Pool::get`, a `PoolBox` drop, the allocator) cost
//! one thread-pointer-relative load (`THIN`), the full sections two.
//!
//! # Finding glibc's registration
//!
//! glibc (>= 2.35) exports `__rseq_offset` and `__rseq_size`. A static build
//! (`-C target-feature=+crt-static`) reads them as weak link-time references
//! (`arch::glibc_rseq_symbols`: address 0 when no linked object defines them, so it
//! still links against an older glibc): there `dlsym` finds nothing, and before this
//! look-up such a binary tried to register an area of its own, which the kernel
//! refused (EINVAL: glibc had registered a different one), leaving every thread on
//! the portable backend. Every build then asks `dlsym`, the only look-up of dynamic
//! builds (a link-time reference there would add a hard `GLIBC_2.35` version need,
//! and the binary would no longer start on an older glibc). When the crate falls
//! back, [`thread_owner`] names the cause.
//!
//! # Unloading: the object holding percid pins itself
//!
//! After a section ends, the thread's `rseq_cs` keeps pointing at that section's
//! descriptor (glibc and librseq leave it too): clearing it would cost a store on
//! every fast path. If the object holding the descriptor (a plugin built as a
//! `cdylib`) is unmapped by `dlclose`, the kernel faults reading `rseq_cs` at the
//! thread's next preemption and kills the process (SIGSEGV, `si_code` SI_KERNEL).
//! So on first use ([`process`]), percid pins the object it is linked into:
//! `dladdr` on one of its own functions names the object, and
//! `dlopen(name, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE)` marks it never to be
//! unloaded (glibc documents this way to promote an already loaded object). A later
//! `dlclose` by the host then leaves the code, the descriptors, the abort handlers
//! and the thread-locals mapped, so no thread's `rseq_cs`, pthread key destructor
//! (the allocator's exit hook) or registered area can dangle, and a reload finds the
//! same object with its state intact. The price is that a plugin that used percid
//! stays in memory until the process exits. Clearing `rseq_cs` instead would have
//! to run on every thread that ever ran a section, before the unmap, which no
//! `dlclose` hook can do for other threads. The main program and a static binary
//! are never unloaded: there `dlopen(.., RTLD_NOLOAD)` finds no shared object and
//! the pin is skipped (a static build does not call `dlopen` at all).

use super::abi;
use super::{Backend, IndexMode, Owner};
use std::cell::Cell;

/// `AREA` value of a thread that has not resolved its backend yet.
const UNRESOLVED: usize = 0;
/// `AREA` value of a thread on the portable backend.
const PORTABLE: usize = 1;
/// `AREA` value of a thread on the simulated backend.
const SIMULATED: usize = 2;

thread_local! {
    /// Address of this thread's registered rseq area, or one of the sentinels above.
    static AREA: Cell<usize> = const { Cell::new(UNRESOLVED) };
    /// Address of the field that indexes shards (`mm_cid`, or `cpu_id` without it).
    static INDEX: Cell<usize> = const { Cell::new(0) };
    /// Address of the area's `node_id` when the kernel maintains it, else 0.
    static NODE: Cell<usize> = const { Cell::new(0) };
    /// The area again when this thread may run the thin sections (rseq backend,
    /// indexed by `mm_cid`), else 0: the fast paths' one thread-local load.
    static THIN: Cell<usize> = const { Cell::new(0) };
    /// Why this thread is not on the rseq backend (errno of our registration attempt).
    static SELF_ERRNO: Cell<i32> = const { Cell::new(0) };
    /// Length of our own registration of this thread's area (0: none); it is
    /// unregistered by the `OWNED_KEY` destructor when the thread exits.
    static OWNED_LEN: Cell<u32> = const { Cell::new(0) };
}

/// Facts about rseq that hold for the whole process.
#[derive(Debug)]
pub(crate) struct Process {
    pub feature_size: u32,
    pub align: u32,
    /// glibc's `__rseq_offset` when glibc registered its threads.
    pub glibc_offset: Option<isize>,
    /// What the look-up of glibc's registration found (for the status).
    pub glibc: GlibcLookup,
    /// Active size of the registration threads use (glibc's or ours).
    pub active_size: u32,
    pub node_id: bool,
    pub mm_cid: bool,
    pub index: IndexMode,
    /// A backend forced by `PERCID_BACKEND` (or by `cfg(loom)`), with its reason.
    pub forced: Option<(Backend, String)>,
    /// Number of possible CPUs: bounds `cpu_id` and `mm_cid`.
    pub possible_cpus: u32,
}

/// Never waited for (see `cid::fork::Lazy`): a child forked while another thread of
/// the parent was discovering discovers again.
static PROCESS: crate::cid::fork::Lazy<Process> = crate::cid::fork::Lazy::new();

/// The process facts, read on first call.
pub(crate) fn process() -> &'static Process {
    PROCESS.get_or_init_boxed(|| internal(|| Box::new(discover())))
}

thread_local! {
    /// Set while percid's own set-up runs on this thread (process discovery, a
    /// thread's registration, the allocator's heap): `PerCidAlloc` serves the
    /// allocations made meanwhile from the system allocator, so it never re-enters
    /// percid from inside percid. `const` and without a destructor: usable during
    /// thread start, exit and TLS teardown.
    static INTERNAL: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the internal guard set (see `INTERNAL`).
pub(crate) fn internal<R>(f: impl FnOnce() -> R) -> R {
    let was = INTERNAL.get();
    INTERNAL.set(true);
    let r = f();
    INTERNAL.set(was);
    r
}

/// Whether the calling thread is inside percid's own set-up.
#[inline(always)]
pub(crate) fn in_internal() -> bool {
    INTERNAL.get()
}

fn discover() -> Process {
    // SAFETY: getauxval has no preconditions; it returns 0 for unknown keys.
    let feature_size = unsafe { libc::getauxval(abi::AT_RSEQ_FEATURE_SIZE) } as u32;
    // SAFETY: as above.
    let align = unsafe { libc::getauxval(abi::AT_RSEQ_ALIGN) } as u32;

    // Before any section of this object can run on any thread: see the module docs.
    pin_own_object();

    let lookup = glibc_registration();
    let glibc = match lookup {
        GlibcLookup::Registered { offset, size, .. } => Some((offset, size)),
        GlibcLookup::Off | GlibcLookup::Absent => None,
    };
    let active_size = match glibc {
        Some((_, size)) => abi::glibc_active_size(size, feature_size),
        None => abi::self_active_size(feature_size),
    };
    let node_id = active_size >= abi::NODE_ID_FEATURE_SIZE;
    let mm_cid_available = active_size >= abi::MM_CID_FEATURE_SIZE;
    let force_cpu_id = std::env::var("PERCID_INDEX").is_ok_and(|v| v == "cpu_id");
    let mm_cid = mm_cid_available && !force_cpu_id;
    let index = if mm_cid {
        IndexMode::MmCid
    } else {
        IndexMode::CpuId
    };

    Process {
        feature_size,
        align,
        glibc_offset: glibc.map(|(offset, _)| offset),
        glibc: lookup,
        active_size,
        node_id,
        mm_cid,
        index,
        forced: forced_backend(),
        possible_cpus: possible_cpus(),
    }
}

fn forced_backend() -> Option<(Backend, String)> {
    if cfg!(loom) {
        return Some((Backend::Simulated, "cfg(loom)".into()));
    }
    if !super::arch::HAS_SECTIONS {
        return Some((
            Backend::Portable,
            format!("no rseq critical sections for {}", std::env::consts::ARCH),
        ));
    }
    match std::env::var("PERCID_BACKEND").ok()?.as_str() {
        "portable" => Some((Backend::Portable, "PERCID_BACKEND=portable".into())),
        "simulated" => Some((Backend::Simulated, "PERCID_BACKEND=simulated".into())),
        _ => None,
    }
}

/// What the look-up of glibc's `__rseq_offset` and `__rseq_size` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GlibcLookup {
    /// glibc registered its threads: the area is at thread pointer + `offset`, and
    /// glibc reports `size` bytes.
    Registered { offset: isize, size: u32 },
    /// The symbols exist but `__rseq_size` is 0: glibc does not register threads
    /// (`GLIBC_TUNABLES=glibc.pthread.rseq=0`, or its registration failed at start).
    Off,
    /// Neither look-up found the symbols: musl, glibc < 2.35, or symbols hidden.
    Absent,
}

/// glibc's registration: the weak link-time symbols first (static builds only: the
/// only way there), then `dlsym`, so the crate links against any libc (musl, glibc
/// < 2.35).
fn glibc_registration() -> GlibcLookup {
    let (offset, size) = super::arch::glibc_rseq_symbols();
    if offset != 0 && size != 0 {
        // SAFETY: non-zero addresses of glibc's `const ptrdiff_t __rseq_offset` and
        // `const unsigned int __rseq_size`, written once before main and never again.
        let (offset, size) = unsafe { (*(offset as *const isize), *(size as *const u32)) };
        return lookup_result(offset, size);
    }
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no preconditions;
    // it returns null when the symbol does not exist.
    let size = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()) };
    // SAFETY: as above.
    let offset = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()) };
    if size.is_null() || offset.is_null() {
        return GlibcLookup::Absent;
    }
    // SAFETY: as for the link-time symbols above.
    let (size, offset) = unsafe { (*(size as *const u32), *(offset as *const isize)) };
    lookup_result(offset, size)
}

fn lookup_result(offset: isize, size: u32) -> GlibcLookup {
    if size > 0 {
        GlibcLookup::Registered { offset, size }
    } else {
        GlibcLookup::Off
    }
}

/// Pins the shared object this crate is linked into, so that `dlclose` never unmaps
/// it (see the module docs). Nothing happens for the main program, which is never
/// unloaded: `RTLD_NOLOAD` finds no shared object of that name.
#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    not(target_feature = "crt-static")
))]
fn pin_own_object() {
    // SAFETY: `Dl_info` is plain data (pointers and integers): all zeroes is valid.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let ours = pin_own_object as fn() as *const libc::c_void;
    // SAFETY: `ours` is an address inside this object's code and `info` a valid out
    // pointer; dladdr only fills `info` (its strings live as long as the object).
    if unsafe { libc::dladdr(ours, &mut info) } == 0 || info.dli_fname.is_null() {
        return;
    }
    // RTLD_NOLOAD never loads anything: it returns the already loaded object
    // (marked RTLD_NODELETE from now on) or null; the handle is never closed.
    // SAFETY: `dli_fname` is the NUL-terminated name of a loaded object (it holds
    // this very function).
    unsafe {
        libc::dlopen(
            info.dli_fname,
            libc::RTLD_LAZY | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
        )
    };
}

/// Static binaries are never unloaded; other libcs keep their own rules (musl never
/// unloads at all).
#[cfg(not(all(
    target_os = "linux",
    target_env = "gnu",
    not(target_feature = "crt-static")
)))]
fn pin_own_object() {}

/// The number of possible CPUs (`/sys/devices/system/cpu/possible`), which bounds
/// `cpu_id` and `mm_cid`. Never below the configured CPU count, never 0.
fn possible_cpus() -> u32 {
    let from_sysfs = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| parse_cpu_list_max(&s))
        .map(|max| max + 1);
    // SAFETY: sysconf has no preconditions.
    let configured = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as u32;
    from_sysfs.unwrap_or(configured).max(configured).max(1)
}

/// The largest CPU number in a kernel CPU list such as `0-3,8-11`.
pub(crate) fn parse_cpu_list_max(list: &str) -> Option<u32> {
    list.trim()
        .split(',')
        .filter_map(|range| range.rsplit('-').next()?.trim().parse::<u32>().ok())
        .max()
}

/// How the calling thread runs its critical sections.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ThreadBackend {
    /// A registered area: the address of `rseq_cs` and of the index field.
    Rseq {
        area: usize,
        index: usize,
    },
    Portable,
    Simulated,
}

/// The calling thread's backend: two thread-local loads once resolved.
#[cfg(not(loom))]
#[inline(always)]
pub(crate) fn thread_backend() -> ThreadBackend {
    let area = AREA.get();
    if area > SIMULATED {
        ThreadBackend::Rseq {
            area,
            index: INDEX.get(),
        }
    } else {
        thread_backend_slow(area)
    }
}

#[cfg(loom)]
loom::thread_local! {
    /// Under loom every model thread is simulated, unless a test moved it to the
    /// portable backend (std's thread-locals are shared by loom's threads).
    static MODEL_PORTABLE: Cell<bool> = Cell::new(false);
}

/// Under loom: the simulated backend, or the portable one for threads moved there.
#[cfg(loom)]
pub(crate) fn thread_backend() -> ThreadBackend {
    if MODEL_PORTABLE.with(Cell::get) {
        ThreadBackend::Portable
    } else {
        ThreadBackend::Simulated
    }
}

/// Moves the calling thread to the portable backend for the rest of its life (tests
/// use it to mix backends on one structure).
#[cfg(any(test, loom, feature = "testing"))]
pub(crate) fn force_portable() {
    #[cfg(loom)]
    MODEL_PORTABLE.with(|c| c.set(true));
    #[cfg(not(loom))]
    {
        let _ = thread_backend();
        AREA.set(PORTABLE);
        INDEX.set(0);
        NODE.set(0);
        THIN.set(0);
    }
}

#[cfg(not(loom))]
#[cold]
fn thread_backend_slow(area: usize) -> ThreadBackend {
    let area = if area == UNRESOLVED {
        internal(resolve_thread)
    } else {
        area
    };
    match area {
        PORTABLE | UNRESOLVED => ThreadBackend::Portable,
        SIMULATED => ThreadBackend::Simulated,
        area => ThreadBackend::Rseq {
            area,
            index: INDEX.get(),
        },
    }
}

/// Whether the calling thread's backend is already decided (its next operation does
/// not need to look the registration up). One thread-local load.
#[cfg(not(loom))]
#[inline(always)]
pub(crate) fn thread_resolved() -> bool {
    AREA.get() != UNRESOLVED
}

/// Under loom every model thread is resolved (simulated or portable).
#[cfg(loom)]
pub(crate) fn thread_resolved() -> bool {
    true
}

/// Set (sequentially consistent) before any thread runs its first rseq section.
static RSEQ_SEEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether any thread of the process may have run an rseq section. Read after a
/// sequentially consistent swap, false proves that no section read the old value.
pub(crate) fn any_rseq_thread() -> bool {
    RSEQ_SEEN.load(std::sync::atomic::Ordering::SeqCst)
}

/// Registers the calling thread's own area, and publishes the result, with every
/// signal blocked: a handler that uses percid cannot register a second area in
/// between (the kernel would refuse ours and the thread would stay portable for
/// good). When a handler resolved the thread before the signals were blocked, that
/// resolution stands.
fn register_without_signals(process: &'static Process) -> usize {
    // SAFETY: sigset_t is plain data, filled by sigfillset.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; written by pthread_sigmask.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sets; only the calling thread's mask changes, restored below.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
    }
    let mut area = AREA.get();
    if area == UNRESOLVED {
        area = register_self(process).unwrap_or(PORTABLE);
        publish(process, area);
    }
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    area
}

/// Decides the calling thread's backend, once, and caches it.
fn resolve_thread() -> usize {
    let process = process();
    let area = match &process.forced {
        Some((Backend::Portable, _)) => PORTABLE,
        Some((Backend::Simulated, _)) => SIMULATED,
        _ => match process.glibc_offset {
            Some(offset) => glibc_area(offset).unwrap_or(PORTABLE),
            None => return register_without_signals(process),
        },
    };
    publish(process, area);
    area
}

/// Caches the thread's backend: `area` is a registered area's address or a sentinel.
fn publish(process: &Process, area: usize) {
    if area > SIMULATED {
        // Before the thread's first section: see `any_rseq_thread`.
        RSEQ_SEEN.store(true, std::sync::atomic::Ordering::SeqCst);
        // The other side of `fence_skippable`'s Dekker pair (`tests/loom.rs`,
        // `rseq_seen_flag_*`): a foreign caller that reads the flag false after its
        // own fence is ordered before this thread's first section.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // The fields first, the area last: a signal handler that runs an operation
        // in between still finds the thread unresolved, never half resolved.
        let field = match process.index {
            IndexMode::MmCid => abi::offset::MM_CID,
            IndexMode::CpuId => abi::offset::CPU_ID,
        };
        INDEX.set(area + field);
        if process.node_id {
            NODE.set(area + abi::offset::NODE_ID);
        }
        AREA.set(area);
        if process.index == IndexMode::MmCid {
            THIN.set(area);
        }
    } else {
        AREA.set(area);
    }
}

/// The calling thread's area when its fast paths may run the thin sections
/// (`arch`'s `thin_*`: rseq backend, indexed by `mm_cid`), else 0: an unresolved
/// thread, another backend or `cpu_id` indexing. One thread-local load.
#[cfg(not(loom))]
#[inline(always)]
pub(crate) fn thin_area() -> usize {
    THIN.get()
}

/// Under loom no thread runs rseq sections.
#[cfg(loom)]
#[inline(always)]
pub(crate) fn thin_area() -> usize {
    0
}

/// Address of the calling thread's index field (`mm_cid` or `cpu_id`), when it has a
/// registered area: one thread-local load.
#[cfg(not(loom))]
#[inline(always)]
pub(crate) fn index_field() -> Option<usize> {
    let index = INDEX.get();
    (index != 0).then_some(index)
}

/// Address of the calling thread's `node_id` field, when it has a registered area and
/// the kernel maintains the field: one thread-local load.
#[cfg(not(loom))]
#[inline(always)]
pub(crate) fn node_field() -> Option<usize> {
    let node = NODE.get();
    (node != 0).then_some(node)
}

/// The node a thread reads when its kernel does not maintain `node_id`: plane 0.
static NODE_ZERO: u32 = 0;

thread_local! {
    /// A node a test injected for the calling thread ([`inject_node`]). No destructor,
    /// so its address stays valid for the whole life of the thread.
    static INJECTED_NODE: Cell<u32> = const { Cell::new(0) };
}

/// Where the NUMA sections of the calling rseq thread read their node: the area's
/// `node_id`, a test's injected cell, or a constant 0 without `node_id`. One
/// thread-local load.
#[cfg(not(loom))]
#[inline(always)]
pub(crate) fn node_source() -> *const u32 {
    let node = NODE.get();
    if node != 0 {
        node as *const u32
    } else {
        &NODE_ZERO
    }
}

/// Under loom no thread runs rseq sections.
#[cfg(loom)]
pub(crate) fn node_source() -> *const u32 {
    &NODE_ZERO
}

/// Makes the calling thread's NUMA sections and `current_node` read `node` instead of
/// the kernel's `node_id` (`None`: the kernel's again). Rseq threads only; the kernel
/// field itself is never written.
#[cfg(all(not(loom), any(test, feature = "testing")))]
pub(crate) fn inject_node(node: Option<u32>) {
    let area = match thread_backend() {
        ThreadBackend::Rseq { area, .. } => area,
        _ => return,
    };
    match node {
        Some(node) => {
            INJECTED_NODE.set(node);
            NODE.set(INJECTED_NODE.with(|cell| cell.as_ptr() as usize));
        }
        None if process().node_id => NODE.set(area + abi::offset::NODE_ID),
        None => NODE.set(0),
    }
}

/// glibc's area for this thread, if glibc's registration of it succeeded.
fn glibc_area(offset: isize) -> Option<usize> {
    let area = super::arch::thread_pointer().wrapping_add_signed(offset);
    // SAFETY: glibc places every thread's rseq area at thread pointer + __rseq_offset,
    // inside the thread's TCB, valid for the thread's whole life; the kernel writes
    // cpu_id concurrently, hence the volatile read.
    let cpu_id = unsafe { std::ptr::read_volatile((area + abi::offset::CPU_ID) as *const i32) };
    (cpu_id >= 0).then_some(area)
}

/// The `pthread` key whose destructor unregisters an area this crate registered
/// for a thread (`u32::MAX`: not created yet). A key, not a thread-local with
/// `Drop`: registering a thread-local destructor makes glibc `malloc` a record,
/// which a thread whose first percid use is inside a signal handler must not do;
/// `pthread_setspecific` on one of the first 32 keys allocates nothing. Key
/// destructors run after the thread-locals' ones, so those still find the area.
static OWNED_KEY: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(u32::MAX);

/// The key, created on first need (racing creators keep one and delete the others).
fn owned_key() -> Option<libc::pthread_key_t> {
    use std::sync::atomic::Ordering;
    let key = OWNED_KEY.load(Ordering::Acquire);
    if key != u32::MAX {
        return Some(key);
    }
    let mut mine: libc::pthread_key_t = 0;
    // SAFETY: a valid out pointer and a destructor that never unwinds.
    if unsafe { libc::pthread_key_create(&mut mine, Some(unregister_owned)) } != 0 {
        return None;
    }
    match OWNED_KEY.compare_exchange(u32::MAX, mine, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Some(mine),
        Err(theirs) => {
            // SAFETY: our key, never set on any thread.
            unsafe { libc::pthread_key_delete(mine) };
            Some(theirs)
        }
    }
}

/// The key's destructor: unregisters the area `value` this crate registered for the
/// exiting thread, then frees its page.
extern "C" fn unregister_owned(value: *mut libc::c_void) {
    let len = OWNED_LEN.get();
    // Later destructors of this thread must not find the area any more: no section
    // may run once it is unregistered (the sections do not check, see
    // `arch::x86_64`, "No registration check").
    THIN.set(0);
    AREA.set(PORTABLE);
    INDEX.set(0);
    NODE.set(0);
    OWNED_LEN.set(0);
    // SAFETY: unregisters the area this thread registered, with the same address,
    // length and signature; afterwards the kernel never writes it again.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rseq,
            value,
            len,
            abi::FLAG_UNREGISTER,
            abi::SIGNATURE,
        )
    };
    if rc == 0 {
        // SAFETY: the page was mapped by `register_self` and the kernel no longer
        // uses it. If unregistering failed the page is leaked rather than freed
        // under the kernel's feet.
        unsafe { libc::munmap(value, page_size()) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize
}

/// Registers an area of our own for the calling thread (nobody registered it).
fn register_self(process: &Process) -> Option<usize> {
    let (len, align) = abi::self_registration_layout(process.feature_size, process.align);
    let page = page_size();
    if align as usize > page || len as usize > page {
        SELF_ERRNO.set(libc::EINVAL);
        return None;
    }
    // The destructor must be in place before the kernel knows the area.
    let Some(key) = owned_key() else {
        SELF_ERRNO.set(libc::EAGAIN);
        return None;
    };
    // SAFETY: an anonymous private mapping of one page, checked below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        SELF_ERRNO.set(errno());
        return None;
    }
    // The page is zeroed; cpu_id must read "uninitialised" until the kernel fills it.
    // SAFETY: `map` is a fresh writable page; cpu_id is at offset 4 < page size.
    unsafe {
        std::ptr::write_volatile(
            (map as usize + abi::offset::CPU_ID) as *mut i32,
            abi::CPU_ID_UNINITIALIZED,
        )
    };
    // SAFETY: registers a page-aligned (so at least `align`-aligned) area of `len`
    // bytes that stays mapped until `OwnedArea::drop` unregisters it.
    let rc = unsafe { libc::syscall(libc::SYS_rseq, map, len, 0, abi::SIGNATURE) };
    if rc != 0 {
        SELF_ERRNO.set(errno());
        // SAFETY: the kernel refused the area, so nobody else refers to the page.
        unsafe { libc::munmap(map, page) };
        return None;
    }
    // SAFETY: our key; a non-null value makes its destructor run at thread exit.
    if unsafe { libc::pthread_setspecific(key, map) } != 0 {
        // No destructor: unregister now rather than leave the kernel a page that
        // would outlive the thread's knowledge of it.
        OWNED_LEN.set(len);
        unregister_owned(map);
        SELF_ERRNO.set(libc::ENOMEM);
        return None;
    }
    OWNED_LEN.set(len);
    Some(map as usize)
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Who registered the calling thread's area, and why not when nobody did.
pub(crate) fn thread_owner() -> (Owner, Option<String>) {
    let backend = thread_backend();
    let process = process();
    match backend {
        ThreadBackend::Rseq { .. } if process.glibc_offset.is_some() => (Owner::Glibc, None),
        ThreadBackend::Rseq { .. } => (Owner::SelfRegistered, None),
        ThreadBackend::Portable | ThreadBackend::Simulated => {
            if let Some((_, reason)) = &process.forced {
                return (Owner::None, Some(reason.clone()));
            }
            if let Some(offset) = process.glibc_offset {
                let area = super::arch::thread_pointer().wrapping_add_signed(offset);
                // SAFETY: as in `glibc_area`: glibc's area of this thread, inside its
                // TCB; the kernel may write cpu_id concurrently.
                let cpu_id =
                    unsafe { std::ptr::read_volatile((area + abi::offset::CPU_ID) as *const i32) };
                let what = if cpu_id == abi::CPU_ID_UNINITIALIZED {
                    "glibc did not register this thread's rseq area (cpu_id -1: a thread \
                     not created by pthread_create?)"
                } else {
                    "glibc's registration of this thread failed (cpu_id -2)"
                };
                return (Owner::None, Some(what.into()));
            }
            (
                Owner::None,
                Some(describe_errno(SELF_ERRNO.get(), process.glibc)),
            )
        }
    }
}

/// Why the crate's own registration failed with `errno`, given what the look-up of
/// glibc's registration found.
fn describe_errno(errno: i32, glibc: GlibcLookup) -> String {
    // The kernel answers EINVAL when the thread already has a *different* area
    // registered (ours is always a fresh page), EBUSY when it is the same one.
    let taken = errno == libc::EINVAL || errno == libc::EBUSY;
    let what = match errno {
        _ if taken && glibc == GlibcLookup::Absent && glibc_registers() => {
            "glibc registered this thread's rseq area but its symbols (__rseq_offset, \
             __rseq_size) are not visible (static binary?)"
        }
        _ if taken => {
            "another library registered this thread's rseq area without telling where \
             (no glibc __rseq_offset/__rseq_size describe it)"
        }
        libc::ENOSYS => "the kernel has no rseq (older than 4.18, or running under valgrind)",
        libc::EPERM => "rseq is forbidden here (seccomp filter)",
        libc::ESRCH => "the thread was already exiting",
        _ => "rseq registration failed",
    };
    format!("{what} ({})", std::io::Error::from_raw_os_error(errno))
}

/// Whether the C library is glibc >= 2.35, which registers every thread unless told
/// not to by its tunable.
fn glibc_registers() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: gnu_get_libc_version has no preconditions and returns a static
        // NUL-terminated string such as "2.36".
        let version = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
        let mut parts = version.to_str().unwrap_or("").split('.');
        let major = parts
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0);
        let minor = parts
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0);
        let tunable_off = std::env::var("GLIBC_TUNABLES")
            .is_ok_and(|t| t.split(':').any(|kv| kv == "glibc.pthread.rseq=0"));
        (major, minor) >= (2, 35) && !tunable_off
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_reasons_name_the_cause() {
        // Our fresh area against one already registered: EINVAL from the kernel.
        let hidden = describe_errno(libc::EINVAL, GlibcLookup::Absent);
        if glibc_registers() {
            assert!(hidden.contains("glibc registered"), "{hidden}");
            assert!(hidden.contains("static binary"), "{hidden}");
        } else {
            assert!(hidden.contains("another library"), "{hidden}");
        }
        let other = describe_errno(libc::EBUSY, GlibcLookup::Off);
        assert!(other.contains("another library"), "{other}");
        let none = describe_errno(libc::ENOSYS, GlibcLookup::Absent);
        assert!(none.contains("no rseq"), "{none}");
    }
}
