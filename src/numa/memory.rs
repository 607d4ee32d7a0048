//! Node-local memory: binding a plane to its node, and finding where pages are.
//!
//! Binding ([`bind`]) sets an `MPOL_BIND` policy on a fresh, untouched range (through
//! hwloc, feature `numa`), so every page the range later faults in comes from that
//! node's memory, or the fault fails: there is no fallback to another node. Without
//! the feature nothing is bound and pages land where the thread that first touches
//! them runs (the kernel's default policy).
//!
//! Placement ([`pages_on`], [`placement`]) asks the kernel where each page is with
//! `move_pages(2)` and a null node list: a query that moves nothing and never faults
//! a page in (unlike `get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR)`, which does).

use std::collections::BTreeMap;
use std::fmt;
use std::io;

/// Constants of `include/uapi/linux/mempolicy.h` and `errno` values that the `libc`
/// crate lacks or that have a meaning of their own here.
mod abi {
    /// `move_pages(2)` status of a page that is not present (never touched, or
    /// swapped out): `-ENOENT`.
    pub(super) const PAGE_ABSENT: i32 = -libc::ENOENT;
    /// `get_mempolicy(2)` flag: the policy of the mapping at `addr`, not the thread's
    /// (`MPOL_F_ADDR`, `1 << 1`). Without `MPOL_F_NODE` it faults nothing in.
    #[cfg(all(test, not(loom)))]
    pub(super) const MPOL_F_ADDR: libc::c_ulong = 1 << 1;
    /// The mode bits of a policy `get_mempolicy(2)` returns; the mode flags
    /// (`MPOL_F_STATIC_NODES` `1 << 15`, `MPOL_F_RELATIVE_NODES` `1 << 14`,
    /// `MPOL_F_NUMA_BALANCING` `1 << 13`) are above them (`MPOL_MODE_FLAGS`).
    #[cfg(all(test, not(loom)))]
    pub(super) const MPOL_MODE_MASK: libc::c_int = (1 << 13) - 1;
}

/// The environment variable that turns binding off: `PERCID_NUMA_BIND=off`.
pub(crate) const BIND_ENV: &str = "PERCID_NUMA_BIND";

/// How a plane of node-local memory was placed.
///
/// ```
/// use percid::numa::Binding;
///
/// for binding in [Binding::Strict, Binding::FirstTouch, Binding::Failed("no hwloc".into())] {
///     println!("plane: {binding}"); // e.g. "bound to its node (MPOL_BIND)"
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Bound to its node (`MPOL_BIND`): every page it faults in comes from that
    /// node's memory.
    Strict,
    /// Not bound: pages come from the node of the thread that first touches them
    /// (without feature `numa`, under `PERCID_NUMA_BIND=off`, and under loom).
    FirstTouch,
    /// Binding was attempted and failed (the node does not exist or has no memory,
    /// hwloc failed): the plane is placed by first touch. Says why.
    Failed(String),
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Binding::Strict => f.write_str("bound to its node (MPOL_BIND)"),
            Binding::FirstTouch => f.write_str("first touch"),
            Binding::Failed(reason) => write!(f, "binding failed, first touch: {reason}"),
        }
    }
}

/// Whether binding is on for this process: false under `PERCID_NUMA_BIND=off`. Read
/// once.
fn binding_enabled() -> bool {
    // Never waited for (see `cid::fork::Lazy`).
    static ENABLED: crate::cid::fork::Lazy<bool> = crate::cid::fork::Lazy::new();
    *ENABLED.get_or_init(|| binding_enabled_by(std::env::var(BIND_ENV).ok().as_deref()))
}

/// Whether a `PERCID_NUMA_BIND` value (`None`: unset) leaves binding on.
fn binding_enabled_by(value: Option<&str>) -> bool {
    !matches!(value.map(str::trim), Some("off"))
}

/// Binds the `len` bytes at `ptr` (page-aligned, untouched: a fresh `MAP_NORESERVE`
/// mapping) to node `node`, so that the pages they fault in come from that node.
///
/// * With feature `numa`: hwloc's `MemoryBindingPolicy::Bind` with
///   `MemoryBindingFlags::STRICT` through the *system* topology (`mbind(2)` with
///   `MPOL_BIND`, so the kernel never falls back to another node), and
///   [`Binding::Strict`]; or [`Binding::Failed`] with the reason: `ptr` not
///   page-aligned, `len` 0, no such node, a node without memory, an hwloc error.
/// * Without the feature: [`Binding::FirstTouch`], without any system call.
/// * `PERCID_NUMA_BIND=off` in the environment (read once per process):
///   [`Binding::FirstTouch`] in both builds.
/// * Under loom: [`Binding::FirstTouch`].
///
/// Pages faulted in before the call stay where they are. A `len` that is not a
/// multiple of the page size binds the whole last page.
///
/// # Safety
///
/// `[ptr, ptr + len)` is a mapping the caller owns (no other code relies on the
/// placement of its pages), mapped for the duration of the call.
pub(crate) unsafe fn bind(ptr: *mut u8, len: usize, node: u32) -> Binding {
    // SAFETY: forwarded from the caller.
    unsafe { bind_if(binding_enabled(), ptr, len, node) }
}

/// [`bind`] with the verdict of `PERCID_NUMA_BIND` passed in (`enabled`).
///
/// # Safety
///
/// As for [`bind`].
#[cfg_attr(not(feature = "numa"), allow(unused_variables))]
unsafe fn bind_if(enabled: bool, ptr: *mut u8, len: usize, node: u32) -> Binding {
    if !enabled || cfg!(loom) {
        return Binding::FirstTouch;
    }
    #[cfg(feature = "numa")]
    {
        if len == 0 {
            return Binding::Failed("an empty range".into());
        }
        if !ptr.addr().is_multiple_of(page_size()) {
            return Binding::Failed(format!("{ptr:p} is not page-aligned"));
        }
        // SAFETY: forwarded from the caller.
        unsafe { super::hwloc::bind(ptr, len, node) }
    }
    #[cfg(not(feature = "numa"))]
    Binding::FirstTouch
}

pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).unwrap_or(4096).max(4096)
}

/// The node of each page of `[ptr, ptr + len)` (the pages the range touches, from
/// the one holding `ptr`), by `move_pages(2)` with a null node list: the node id, or a
/// negative errno: `-2` (`-ENOENT`) for a page that is not present (never touched, or
/// swapped out), `-14` (`-EFAULT`) for an address outside any mapping or the shared
/// zero page (a page only ever read). Never faults a page in, never moves one; any
/// address is safe to ask about. An empty range gives no pages.
///
/// # Errors
///
/// The error of `move_pages(2)`: `ENOSYS` on a kernel without NUMA support,
/// `EPERM` where a seccomp filter forbids it; `InvalidInput` when the range wraps
/// around the address space.
pub fn pages_on(ptr: *const u8, len: usize) -> io::Result<Vec<i32>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let page = page_size();
    let end = ptr
        .addr()
        .checked_add(len)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "range wraps around"))?;
    let start = ptr.addr() & !(page - 1);
    let count = (end - start).div_ceil(page);
    let pages: Vec<*const libc::c_void> = (0..count)
        .map(|i| ptr.with_addr(start + i * page).cast::<libc::c_void>())
        .collect();
    let mut status: Vec<libc::c_int> = vec![0; count];
    // SAFETY: move_pages(2) with pid 0 (this process), `count` page addresses and
    // `count` status slots, both arrays live across the call; a null node list only
    // queries, the kernel checks every address itself (`-EFAULT` per page).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0,
            count as libc::c_ulong,
            pages.as_ptr(),
            std::ptr::null::<libc::c_int>(),
            status.as_mut_ptr(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(status)
}

/// Where the pages of a range are: the result of [`placement`].
///
/// ```
/// let buf = vec![1u8; 1 << 16]; // written: its pages are present
/// match percid::numa::placement(buf.as_ptr(), buf.len()) {
///     Ok(p) => {
///         assert!(p.present() >= 1);
///         println!("node 0 holds {} pages, {} absent", p.on(0), p.absent);
///     }
///     // A kernel without NUMA support (ENOSYS), or seccomp.
///     Err(e) => eprintln!("move_pages: {e}"),
/// }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Present pages per node id.
    pub per_node: BTreeMap<u32, usize>,
    /// Pages not present (`-ENOENT`: never touched, or swapped out).
    pub absent: usize,
    /// Pages with another status (`-EFAULT`: unmapped, or the shared zero page).
    pub other: usize,
}

impl Placement {
    /// Present pages on node `node`.
    pub fn on(&self, node: u32) -> usize {
        self.per_node.get(&node).copied().unwrap_or(0)
    }

    /// Present pages, on any node.
    pub fn present(&self) -> usize {
        self.per_node.values().sum()
    }
}

/// [`pages_on`], counted: pages per node, pages not present, other pages.
///
/// # Errors
///
/// As for [`pages_on`].
pub fn placement(ptr: *const u8, len: usize) -> io::Result<Placement> {
    let mut placement = Placement::default();
    for status in pages_on(ptr, len)? {
        match u32::try_from(status) {
            Ok(node) => *placement.per_node.entry(node).or_default() += 1,
            Err(_) if status == abi::PAGE_ABSENT => placement.absent += 1,
            Err(_) => placement.other += 1,
        }
    }
    Ok(placement)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const LEN: usize = 64 << 10;

    /// A fresh `MAP_NORESERVE` anonymous mapping, unmapped on drop.
    struct Region {
        ptr: *mut u8,
        len: usize,
    }

    impl Region {
        fn new(len: usize) -> Region {
            // SAFETY: a new anonymous private mapping, checked below.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            assert_ne!(
                ptr,
                libc::MAP_FAILED,
                "mmap: {}",
                io::Error::last_os_error()
            );
            // One write must fault in one page, not a (multi-size) huge page.
            // SAFETY: advice on the mapping just made; failure only loses the advice.
            unsafe { libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE) };
            Region {
                ptr: ptr.cast(),
                len,
            }
        }

        /// Writes one byte in each of the first `pages` pages.
        fn touch(&self, pages: usize) {
            for i in 0..pages {
                // SAFETY: inside the mapping, which this region owns.
                unsafe { self.ptr.add(i * page_size()).write_volatile(1) };
            }
        }
    }

    impl Drop for Region {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`, no longer used.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }

    /// `get_mempolicy(MPOL_F_ADDR)`: the mode and nodes of the mapping's policy at
    /// `ptr` (faults nothing in, unlike `MPOL_F_NODE | MPOL_F_ADDR`).
    fn kernel_policy(ptr: *const u8) -> io::Result<(i32, Vec<u32>)> {
        const BITS: usize = 1024;
        let mut mode: libc::c_int = 0;
        let mut mask = [0 as libc::c_ulong; BITS / libc::c_ulong::BITS as usize];
        // SAFETY: `mode` and `mask` (BITS bits, passed as maxnode) are writable and
        // live across the call; the kernel checks `ptr` itself.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_get_mempolicy,
                &mut mode as *mut libc::c_int,
                mask.as_mut_ptr(),
                BITS as libc::c_ulong,
                ptr,
                abi::MPOL_F_ADDR,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let per = libc::c_ulong::BITS as usize;
        let nodes = (0..BITS)
            .filter(|&n| mask[n / per] & (1 << (n % per)) != 0)
            .map(|n| n as u32)
            .collect();
        Ok((mode & abi::MPOL_MODE_MASK, nodes))
    }

    /// Skips a test (with a note) where the kernel refuses the NUMA system calls.
    fn numa_syscalls_refused(e: &io::Error) -> bool {
        let refused = matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM));
        if refused {
            eprintln!("NUMA system calls refused here ({e}): test skipped");
        }
        refused
    }

    #[test]
    fn env_values() {
        assert!(binding_enabled_by(None));
        assert!(binding_enabled_by(Some("on")));
        assert!(binding_enabled_by(Some("")));
        assert!(!binding_enabled_by(Some("off")));
        assert!(!binding_enabled_by(Some("off\n")));
    }

    #[test]
    fn bind_off_is_first_touch_and_binds_nothing() {
        let region = Region::new(LEN);
        // SAFETY: the region is a fresh mapping this test owns.
        let binding = unsafe { bind_if(false, region.ptr, LEN, 0) };
        assert_eq!(binding, Binding::FirstTouch);
        match kernel_policy(region.ptr) {
            Ok((mode, _)) => assert_eq!(mode, libc::MPOL_DEFAULT),
            Err(e) if numa_syscalls_refused(&e) => {}
            Err(e) => panic!("get_mempolicy: {e}"),
        }
    }

    /// `bind` itself reads `PERCID_NUMA_BIND`: this test re-runs itself in a child
    /// process with `PERCID_NUMA_BIND=off` (the variable is read once per process, and
    /// setting it in the multi-threaded test process would race).
    #[test]
    fn bind_obeys_the_environment() {
        const NAME: &str = "numa::memory::tests::bind_obeys_the_environment";
        let off = std::env::var(BIND_ENV).is_ok_and(|v| v.trim() == "off");
        let region = Region::new(LEN);
        // SAFETY: the region is a fresh mapping this test owns.
        let binding = unsafe { bind(region.ptr, LEN, 0) };
        if off {
            assert_eq!(binding, Binding::FirstTouch);
            if let Ok((mode, _)) = kernel_policy(region.ptr) {
                assert_eq!(mode, libc::MPOL_DEFAULT, "nothing bound");
            }
            return;
        }
        let expected = if cfg!(feature = "numa") {
            Binding::Strict
        } else {
            Binding::FirstTouch
        };
        assert_eq!(binding, expected);
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(BIND_ENV, "off")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child with {BIND_ENV}=off: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn bind_then_touch_half() {
        let region = Region::new(LEN);
        let pages = LEN / page_size();
        // SAFETY: the region is a fresh mapping this test owns.
        let binding = unsafe { bind_if(true, region.ptr, LEN, 0) };
        let expected = if cfg!(feature = "numa") {
            Binding::Strict
        } else {
            Binding::FirstTouch
        };
        assert_eq!(binding, expected);
        let policy = match kernel_policy(region.ptr) {
            Ok(policy) => policy,
            Err(e) if numa_syscalls_refused(&e) => return,
            Err(e) => panic!("get_mempolicy: {e}"),
        };
        if cfg!(feature = "numa") {
            assert_eq!(policy, (libc::MPOL_BIND, vec![0]), "the kernel's view");
        } else {
            assert_eq!(policy.0, libc::MPOL_DEFAULT, "no mbind without the feature");
        }

        let before = placement(region.ptr, LEN).unwrap();
        assert_eq!(
            before.absent, pages,
            "binding faults nothing in: {before:?}"
        );

        region.touch(pages / 2);
        let after = placement(region.ptr, LEN).unwrap();
        assert_eq!(after.on(0), pages / 2, "{after:?}");
        assert_eq!(after.present(), pages / 2, "{after:?}");
        assert_eq!(after.absent, pages - pages / 2, "{after:?}");
        assert_eq!(after.other, 0, "{after:?}");

        #[cfg(feature = "numa")]
        {
            // SAFETY: the region stays mapped.
            let read_back = unsafe { super::super::hwloc::hwloc_binding_of(region.ptr, LEN) };
            assert_eq!(read_back, Some((vec![0], true)));
        }
    }

    #[test]
    #[cfg(feature = "numa")]
    fn bind_failures() {
        let region = Region::new(LEN);
        // SAFETY: the region is a fresh mapping this test owns.
        let absent = unsafe { bind_if(true, region.ptr, LEN, 5) };
        assert!(
            matches!(&absent, Binding::Failed(why) if why.contains('5')),
            "{absent}"
        );
        // SAFETY: as above.
        let misaligned = unsafe { bind_if(true, region.ptr.wrapping_add(8), 64, 0) };
        assert!(matches!(misaligned, Binding::Failed(_)), "{misaligned}");
        // SAFETY: as above.
        let empty = unsafe { bind_if(true, region.ptr, 0, 0) };
        assert!(matches!(empty, Binding::Failed(_)), "{empty}");
        // Nothing was bound: the region still has the default policy, and hwloc
        // reads it back as not strictly bound.
        // SAFETY: the region stays mapped.
        let read_back = unsafe { super::super::hwloc::hwloc_binding_of(region.ptr, LEN) };
        assert!(matches!(read_back, Some((_, false))), "{read_back:?}");
    }

    #[test]
    fn pages_outside_any_mapping_and_empty_ranges() {
        assert_eq!(pages_on(std::ptr::null(), 0).unwrap(), Vec::<i32>::new());
        match pages_on(std::ptr::without_provenance(page_size()), 1) {
            Ok(status) => assert_eq!(status, vec![-libc::EFAULT]),
            Err(e) if numa_syscalls_refused(&e) => {}
            Err(e) => panic!("move_pages: {e}"),
        }
        let wraps = pages_on(std::ptr::without_provenance(usize::MAX), 2);
        assert_eq!(wraps.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn unaligned_range_covers_its_pages() {
        let region = Region::new(LEN);
        region.touch(2);
        // From the middle of page 0 to one byte into page 2: three pages.
        let page = page_size();
        let status = pages_on(region.ptr.wrapping_add(page / 2), page * 3 / 2 + 1).unwrap();
        assert_eq!(status.len(), 3);
        assert!(status[0] >= 0 && status[1] >= 0, "{status:?}");
        assert_eq!(status[2], abi::PAGE_ABSENT);
    }
}
