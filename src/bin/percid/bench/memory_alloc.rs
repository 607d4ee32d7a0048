//! The percid binary's `#[global_allocator]`: the system allocator, unless the
//! environment variable [`ENV`] names another one for the whole process.
//!
//! `percid bench memory` measures each allocator's resident set in a child process
//! of its own whose global allocator it is: the parent sets [`ENV`] for the child
//! only. The choice is read (with `getenv`, which does not allocate) at the
//! process's first allocation and never changes, so every block is freed by the
//! allocator that made it. Without the variable (every other command, every
//! other benchmark) each call pays one relaxed load of a byte and a predicted
//! branch before it reaches the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

use percid::alloc::PerCidAlloc;

/// The variable naming the process's global allocator: `system`, `percid` or (with
/// feature `peers`) `mimalloc`. Anything else, or nothing, means `system`.
pub const ENV: &str = "PERCID_BENCH_GLOBAL_ALLOC";
/// [`ENV`] for `getenv` (a unit test checks that the two agree).
const ENV_C: &std::ffi::CStr = c"PERCID_BENCH_GLOBAL_ALLOC";

const UNSET: u8 = 0;
const SYSTEM: u8 = 1;
const PERCID: u8 = 2;
#[cfg(feature = "peers")]
const MIMALLOC: u8 = 3;

/// The allocator chosen for this process; [`UNSET`] until the first call.
static CHOICE: AtomicU8 = AtomicU8::new(UNSET);

static PERCID_ALLOC: PerCidAlloc = PerCidAlloc::new();

#[global_allocator]
static GLOBAL: Chosen = Chosen;

/// Forwards every call to the allocator [`ENV`] chose.
pub struct Chosen;

#[inline(always)]
fn choice() -> u8 {
    let c = CHOICE.load(Ordering::Relaxed);
    if c != UNSET { c } else { resolve() }
}

/// Reads [`ENV`] once. Two threads racing here read the same environment and
/// store the same value.
#[cold]
#[inline(never)]
fn resolve() -> u8 {
    // SAFETY: a NUL-terminated name; the result is NULL or a NUL-terminated string
    // of the environment, read at once (nobody calls setenv in this process).
    let value = unsafe { libc::getenv(ENV_C.as_ptr()) };
    let c = if value.is_null() {
        SYSTEM
    } else {
        // SAFETY: see above.
        match unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes() {
            b"percid" => PERCID,
            #[cfg(feature = "peers")]
            b"mimalloc" => MIMALLOC,
            _ => SYSTEM,
        }
    };
    CHOICE.store(c, Ordering::Relaxed);
    c
}

/// The name of the process's global allocator, as [`ENV`] spells it.
pub fn name() -> &'static str {
    match choice() {
        PERCID => "percid",
        #[cfg(feature = "peers")]
        MIMALLOC => "mimalloc",
        _ => "system",
    }
}

/// Whether this build can make `name` the global allocator.
pub fn available(name: &str) -> bool {
    matches!(name, "system" | "percid") || (cfg!(feature = "peers") && name == "mimalloc")
}

macro_rules! forward {
    ($method:ident($($arg:expr),*)) => {
        match choice() {
            PERCID => PERCID_ALLOC.$method($($arg),*),
            #[cfg(feature = "peers")]
            MIMALLOC => mimalloc::MiMalloc.$method($($arg),*),
            _ => System.$method($($arg),*),
        }
    };
}

// SAFETY: every call goes to one allocator, the same for the life of the process
// (the choice is made before the first block exists and never changes), so each
// block is freed and resized by the allocator that made it.
unsafe impl GlobalAlloc for Chosen {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        unsafe { forward!(alloc(layout)) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller; the block is the chosen allocator's.
        unsafe { forward!(dealloc(ptr, layout)) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        unsafe { forward!(alloc_zeroed(layout)) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded from the caller; the block is the chosen allocator's.
        unsafe { forward!(realloc(ptr, layout, new_size)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_is_spelled_once() {
        assert_eq!(ENV_C.to_str(), Ok(ENV));
        // Tests run without the variable (or with the name of a real allocator).
        assert!(available(name()));
    }
}
