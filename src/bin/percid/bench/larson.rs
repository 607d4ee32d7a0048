//! A larson-style server workload for allocators: threads share a table of slots;
//! each operation allocates an object of a random size (16 to 1024 bytes), writes
//! its header, swaps it into a random slot and frees what the slot held — usually
//! an object another thread allocated, so frees cross threads the way a server's
//! requests move between workers.
//!
//! Time is measured in-process (the allocator under test serves only the workload's
//! objects, through `GlobalAlloc` calls); peak memory is measured in child processes
//! (`percid bench larson-rss <percid|system>`), one per allocator, because a process
//! has one peak resident set.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicPtr, Ordering};

use percid::alloc::PerCidAlloc;

/// The allocator the percid cases use (shares the process-wide percid heap).
pub static PERCID_ALLOC: PerCidAlloc = PerCidAlloc::new();

/// Slots shared by the workload's threads.
pub const SLOTS: usize = 16 * 1024;
const MIN_SIZE: usize = 16;
const MAX_SIZE: usize = 1024;
const ALIGN: usize = 8;

/// The shared slot table of one workload instance, for one allocator.
pub struct Larson {
    alloc: &'static (dyn GlobalAlloc + Sync),
    slots: Box<[AtomicPtr<u8>]>,
}

impl Larson {
    pub fn new(alloc: &'static (dyn GlobalAlloc + Sync)) -> Larson {
        Larson {
            alloc,
            slots: (0..SLOTS)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
        }
    }

    /// `ops` operations of thread `thread`.
    pub fn run(&self, thread: usize, ops: u64) {
        let mut rng =
            0x9e37_79b9_7f4a_7c15u64 ^ (thread as u64 + 1).wrapping_mul(0xff51_afd7_ed55_8ccd);
        for _ in 0..ops {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let size = MIN_SIZE + (rng as usize >> 8) % (MAX_SIZE - MIN_SIZE + 1);
            let slot = (rng >> 40) as usize % SLOTS;
            let new = self.alloc_object(size);
            let old = self.slots[slot].swap(new, Ordering::AcqRel);
            self.free_object(old);
        }
    }

    fn alloc_object(&self, size: usize) -> *mut u8 {
        // SAFETY: size >= 16 and ALIGN is a power of two.
        let layout = unsafe { Layout::from_size_align_unchecked(size, ALIGN) };
        // SAFETY: a non-zero-size layout.
        let p = unsafe { self.alloc.alloc(layout) };
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // The header: the size (for the free) and a check word; the last byte too,
        // so the whole object is touched as a server's request would be.
        // SAFETY: `p` holds `size >= 16` bytes, 8-aligned.
        unsafe {
            (p as *mut u64).write(size as u64);
            (p as *mut u64).add(1).write(!(size as u64));
            if size > 16 {
                p.add(size - 1).write(0xa5);
            }
        }
        p
    }

    fn free_object(&self, p: *mut u8) {
        if p.is_null() {
            return;
        }
        // SAFETY: every non-null slot holds an object `alloc_object` made, which
        // starts with its size and the size's complement.
        let (size, check) = unsafe { ((p as *const u64).read(), (p as *const u64).add(1).read()) };
        assert_eq!(size, !check, "larson: an object's header was overwritten");
        // SAFETY: allocated by `self.alloc` with this layout.
        unsafe {
            self.alloc
                .dealloc(p, Layout::from_size_align_unchecked(size as usize, ALIGN))
        };
    }
}

impl Drop for Larson {
    fn drop(&mut self) {
        for slot in self.slots.iter() {
            self.free_object(slot.swap(std::ptr::null_mut(), Ordering::AcqRel));
        }
    }
}

/// The allocator named on the command line of the RSS child.
pub fn allocator(name: &str) -> Option<&'static (dyn GlobalAlloc + Sync)> {
    match name {
        "percid" => Some(&PERCID_ALLOC),
        "system" => Some(&System),
        _ => None,
    }
}

/// Peak resident set of this process, in KiB (`VmHWM`).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The child's work: `threads` threads run the workload for `ops_per_thread` each;
/// prints `rss_kib <peak growth>` (peak resident set minus the resident set before).
pub fn rss_child(name: &str, threads: usize, ops_per_thread: u64) -> Result<String, String> {
    let alloc = allocator(name).ok_or_else(|| format!("unknown allocator {name:?}"))?;
    let before = peak_rss_kib().ok_or("cannot read VmHWM")?;
    let larson = Larson::new(alloc);
    std::thread::scope(|s| {
        for t in 0..threads {
            let larson = &larson;
            s.spawn(move || larson.run(t, ops_per_thread));
        }
    });
    let peak = peak_rss_kib().ok_or("cannot read VmHWM")?;
    drop(larson);
    Ok(format!("rss_kib {}", peak.saturating_sub(before)))
}

/// Runs the RSS child for `name` and returns its peak growth in KiB.
pub fn measure_rss(name: &str, threads: usize, ops_per_thread: u64) -> Option<u64> {
    let exe = std::env::current_exe().ok()?;
    let out = std::process::Command::new(exe)
        .args([
            "bench",
            "larson-rss",
            name,
            &threads.to_string(),
            &ops_per_thread.to_string(),
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("rss_kib "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_survive_cross_thread_frees_with_both_allocators() {
        for name in ["percid", "system"] {
            let larson = Larson::new(allocator(name).unwrap());
            std::thread::scope(|s| {
                for t in 0..4 {
                    let larson = &larson;
                    s.spawn(move || larson.run(t, 20_000));
                }
            });
            let filled = larson
                .slots
                .iter()
                .filter(|s| !s.load(Ordering::Relaxed).is_null())
                .count();
            assert!(filled > SLOTS / 2, "{name}: {filled} slots filled");
        }
    }

    #[test]
    fn peak_rss_is_readable() {
        assert!(peak_rss_kib().is_some_and(|k| k > 0));
    }
}
