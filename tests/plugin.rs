//! A plugin that used percid can be unloaded and loaded again (issue 13, item 2).
//!
//! After a critical section, the thread's `rseq_cs` keeps pointing at the section's
//! descriptor, inside the object that ran it. When a host `dlclose`s a plugin that
//! used percid and the object is unmapped, the kernel faults on that pointer at the
//! thread's next preemption or signal and kills the process (SIGSEGV, si_code
//! SI_KERNEL). percid pins the object it is linked into on first use, so the object
//! is never unmapped.
//!
//! The test builds `tests/plugin` (a `cdylib` over a percid `Counter`) with cargo,
//! offline, into its own target dir, then loads it on several threads (more than
//! the CPUs), adds on each, closes every handle, lets each thread sleep (a context
//! switch: the kernel reads `rseq_cs` on the way back) and spin, and loads it again,
//! for many rounds. Without the pin it dies in the first round on the rseq backend
//! (modes default and cpu_id). It runs in every backend mode of scripts/test.
//!
//! `PERCID_PLUGIN_MANIFEST` names another plugin manifest (for instance a copy of
//! `tests/plugin` next to an older percid, to see the test fail there).

use std::ffi::{CString, c_void};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Plugin threads: more than the CPUs, so preemption is likely.
const THREADS: usize = 6;
/// Load, add, unload cycles.
const ROUNDS: u64 = 100;
/// Additions per thread and round.
const ADDS: u64 = 1000;

/// Builds the plugin (debug, offline) and returns the path of its shared object.
fn build_plugin() -> PathBuf {
    let manifest = std::env::var_os("PERCID_PLUGIN_MANIFEST").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plugin/Cargo.toml"),
        PathBuf::from,
    );
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--offline", "--quiet", "--lib", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("run cargo to build the plugin");
    assert!(status.success(), "building {} failed", manifest.display());
    target.join("debug/libpercid_test_plugin.so")
}

/// One `dlopen` handle of the plugin and its entry points.
struct Plugin {
    handle: *mut c_void,
    add: extern "C" fn(u64),
    sum: extern "C" fn() -> u64,
    backend: extern "C" fn() -> u32,
}

impl Plugin {
    fn open(path: &CString) -> Plugin {
        // SAFETY: a NUL-terminated path; the plugin's constructors only register
        // percid's fork handlers.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!handle.is_null(), "dlopen failed: {}", dlerror());
        // SAFETY: the plugin defines these symbols with exactly these signatures.
        unsafe {
            Plugin {
                handle,
                add: std::mem::transmute::<*mut c_void, extern "C" fn(u64)>(sym(
                    handle,
                    c"plugin_add",
                )),
                sum: std::mem::transmute::<*mut c_void, extern "C" fn() -> u64>(sym(
                    handle,
                    c"plugin_sum",
                )),
                backend: std::mem::transmute::<*mut c_void, extern "C" fn() -> u32>(sym(
                    handle,
                    c"plugin_backend",
                )),
            }
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        // SAFETY: a handle from dlopen, closed once; its function pointers are not
        // used afterwards (they die with `self`).
        let rc = unsafe { libc::dlclose(self.handle) };
        assert_eq!(rc, 0, "dlclose failed: {}", dlerror());
    }
}

/// # Safety
/// `handle` must be a live dlopen handle.
unsafe fn sym(handle: *mut c_void, name: &std::ffi::CStr) -> *mut c_void {
    // SAFETY: the caller's live handle and a NUL-terminated name.
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    assert!(!p.is_null(), "dlsym({name:?}) failed: {}", dlerror());
    p
}

fn dlerror() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated message valid until the next
    // dl call on this thread; it is copied at once.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        return "no error".into();
    }
    // SAFETY: as above.
    unsafe { std::ffi::CStr::from_ptr(e) }
        .to_string_lossy()
        .into_owned()
}

/// Spins for `d`: a thread that runs when others want its CPU gets preempted.
fn spin(d: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < d {
        std::hint::spin_loop();
    }
}

#[test]
fn unload_and_reload_after_sections() {
    let t0 = Instant::now();
    let path = build_plugin();
    eprintln!("plugin built in {:?}: {}", t0.elapsed(), path.display());
    let cpath = CString::new(path.to_str().expect("UTF-8 path")).expect("no NUL in the path");
    let host_backend = match percid::rseq::status().backend {
        percid::rseq::Backend::Rseq => 0,
        percid::rseq::Backend::Portable => 1,
        percid::rseq::Backend::Simulated => 2,
    };

    // A: the host loaded the plugin; B: every thread added and closed its handle;
    // C: the host closed its handle too (without the pin the object is unmapped);
    // D: every thread slept once with its `rseq_cs` still set.
    let barrier = Barrier::new(THREADS + 1);
    let t1 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..ROUNDS {
                    barrier.wait(); // A
                    let plugin = Plugin::open(&cpath);
                    for _ in 0..ADDS {
                        (plugin.add)(1);
                    }
                    assert_eq!(
                        (plugin.backend)(),
                        host_backend,
                        "the plugin's percid picked another backend than the host's"
                    );
                    drop(plugin);
                    barrier.wait(); // B
                    barrier.wait(); // C
                    // A context switch: on the way back the kernel reads `rseq_cs`.
                    std::thread::sleep(Duration::from_micros(100));
                    barrier.wait(); // D
                    // More threads than CPUs spinning: preemptions.
                    spin(Duration::from_micros(500));
                }
            });
        }
        let mut previous = 0;
        for round in 0..ROUNDS {
            let plugin = Plugin::open(&cpath);
            barrier.wait(); // A
            barrier.wait(); // B
            let sum = (plugin.sum)();
            let added = THREADS as u64 * ADDS;
            // Pinned, the object (and its counter) survives the unload; a fresh
            // load starts at 0.
            assert!(
                sum == previous + added || sum == added,
                "round {round}: sum {sum}, previous {previous}, added {added}"
            );
            previous = sum;
            drop(plugin);
            barrier.wait(); // C
            barrier.wait(); // D
        }
    });
    // SAFETY: a NUL-terminated path; RTLD_NOLOAD loads nothing.
    let still = unsafe { libc::dlopen(cpath.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
    eprintln!(
        "{ROUNDS} rounds of {THREADS} threads in {:?}; backend {host_backend}; after the last \
         dlclose the plugin is {}",
        t1.elapsed(),
        if still.is_null() {
            "unloaded"
        } else {
            "still loaded (pinned)"
        }
    );
    if !still.is_null() {
        // SAFETY: the handle just returned by dlopen.
        unsafe { libc::dlclose(still) };
    }
}
