//! Memory going back: the purge of wholly free spans, the drain of idle cid
//! caches, and a thread's exit. All of it runs on slow paths (a cache spilling or
//! refilling, a thread exiting, `trim`); the fast paths pay nothing and no thread is
//! started.
//!
//! * A span whose every block is free enters the span pool **dirty** (see
//!   [`super::span`]). Dirty spans are purged (`MADV_DONTNEED`) once they have been
//!   dirty for the purge delay ([`set_purge_delay`], default
//!   [`DEFAULT_PURGE_DELAY`]), checked after every slow path; beyond a small budget
//!   (two spans, or 1/32 of the spans in use when that is more) the oldest are
//!   purged at once, as glibc trims its heap top beyond a threshold. So a heap that
//!   frees a burst keeps at most the budget resident however quiet it then gets.
//! * A cid cache (of any class) whose head has not changed for [`IDLE_PERIOD`] is
//!   drained to the heap by the next slow path that runs the idle scan, so its
//!   blocks no longer hold their spans.
//! * A thread that exits (its `pthread` key destructor) gives back what the caches of its cid hold (its cid may go
//!   idle), sorts the classes' transfer stacks onto their spans and purges every
//!   dirty span: a burst's workers leave nothing resident behind them.

use super::class::{CLASSES, cache_capacity};
use super::heap::HEAP;
use super::span::{SPAN, spans_in_classes};
use crate::cid::Word;
use crate::cid::list::{self, DRAIN_TOKEN, len as chain_len, pack};
use crate::rseq::registration::internal as guarded;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering, fence};
use std::time::Duration;

/// The purge delay unless [`set_purge_delay`] or `PERCID_PURGE_DELAY_MS` says
/// otherwise: mimalloc's default is 10 ms, jemalloc's decay 10 s; 50 ms keeps a heap
/// that swings back and forth within a second from paying page faults each time.
pub const DEFAULT_PURGE_DELAY: Duration = Duration::from_millis(50);
/// A cache unchanged for this long is drained by the idle scan.
pub const IDLE_PERIOD: Duration = Duration::from_millis(500);

/// The purge delay in milliseconds (`u32::MAX`: unset, read the environment).
static DELAY_MS: AtomicU32 = AtomicU32::new(u32::MAX);
/// Threads whose exit hook is armed and has not run.
static LIVE: AtomicU32 = AtomicU32::new(0);
/// When the last idle scan ran (heap milliseconds).
static LAST_SCAN: AtomicU32 = AtomicU32::new(0);

/// Sets how long a wholly free span stays resident before its pages go back to the
/// OS (0: at once). Applies to every `PerCidAlloc` of the process.
///
/// ```
/// use percid::alloc::{purge_delay, set_purge_delay};
/// use std::time::Duration;
///
/// set_purge_delay(Duration::from_millis(200));
/// assert_eq!(purge_delay(), Duration::from_millis(200));
/// ```
pub fn set_purge_delay(delay: Duration) {
    DELAY_MS.store(
        delay.as_millis().min(u128::from(u32::MAX - 1)) as u32,
        Ordering::Relaxed,
    );
}

/// The purge delay in force.
///
/// ```
/// use percid::alloc::{DEFAULT_PURGE_DELAY, purge_delay};
///
/// // Unless set (here or by `PERCID_PURGE_DELAY_MS`), the default.
/// if std::env::var_os("PERCID_PURGE_DELAY_MS").is_none() {
///     assert_eq!(purge_delay(), DEFAULT_PURGE_DELAY);
/// }
/// ```
pub fn purge_delay() -> Duration {
    Duration::from_millis(u64::from(delay_ms()))
}

fn delay_ms() -> u32 {
    let ms = DELAY_MS.load(Ordering::Relaxed);
    if ms != u32::MAX {
        return ms;
    }
    // Read once; the environment read allocates, from the system under the guard.
    let from_env = guarded(|| {
        std::env::var("PERCID_PURGE_DELAY_MS")
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
    })
    .unwrap_or(DEFAULT_PURGE_DELAY.as_millis() as u32)
    .min(u32::MAX - 1);
    DELAY_MS.store(from_env, Ordering::Relaxed);
    from_env
}

/// A millisecond clock (coarse: a vDSO read, no system call), wrapping.
pub(super) fn now_ms() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer; CLOCK_MONOTONIC_COARSE exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1000)
        .wrapping_add(ts.tv_nsec as u64 / 1_000_000) as u32
}

/// Dirty spans kept resident at most, beyond which the oldest are purged at once.
fn budget() -> u32 {
    (spans_in_classes() / 32).max(2)
}

/// After a slow path (no heap lock held): purges what is due and runs the idle scan
/// when its period has passed. One thread at a time; the others go on.
pub(super) fn tick() {
    let dirty = HEAP.pool.dirty.load(Ordering::Relaxed);
    let now = now_ms();
    let scan_due =
        now.wrapping_sub(LAST_SCAN.load(Ordering::Relaxed)) >= IDLE_PERIOD.as_millis() as u32;
    let delay = delay_ms();
    let purge_due = dirty > budget()
        || (dirty > 0 && now.wrapping_sub(HEAP.pool.oldest.load(Ordering::Relaxed)) >= delay);
    if !(scan_due || purge_due) || !HEAP.decay.try_lock() {
        return;
    }
    if scan_due {
        LAST_SCAN.store(now, Ordering::Relaxed);
        idle_scan();
    }
    HEAP.purge(now_ms(), delay, budget(), false);
    HEAP.decay.unlock();
    if SETTLE.load(Ordering::SeqCst) {
        settle();
    }
}

/// Drains every cache whose head is the one the previous scan saw (nobody took or
/// gave a block of that class on that cid for a period), with one fence in all,
/// then notes the heads.
fn idle_scan() {
    if !HEAP.drain.try_lock() {
        return;
    }
    guarded(|| {
        let mut idle = Vec::new();
        let mut classes = Vec::new();
        for class in 0..CLASSES {
            let heads = HEAP.head(class);
            let snapshot = HEAP.snapshot(class);
            for (shard, head) in heads.shards() {
                let Some(seen) = snapshot.at(shard) else {
                    continue;
                };
                let now = head.load(Ordering::Acquire);
                if now != 0 && now != DRAIN_TOKEN && now == seen.load(Ordering::Relaxed) {
                    idle.push((heads, shard, now));
                    classes.push(class);
                    seen.store(0, Ordering::Relaxed);
                } else {
                    seen.store(now, Ordering::Relaxed);
                }
            }
        }
        Word::foreign_compare_store_many(&idle, DRAIN_TOKEN, |i| {
            let (heads, shard, chain) = idle[i];
            if let Some(w) = heads.at(shard) {
                w.store(0, Ordering::Release);
            }
            HEAP.give_chain_to_spans(classes[i], chain);
        });
    });
    HEAP.drain.unlock();
}

/// Everything back: every cache drained (a fence per non-empty cache), every
/// transfer stack sorted, every dirty span purged.
pub(super) fn trim_all() {
    HEAP.drain.lock();
    drain_every_cache();
    HEAP.drain.unlock();
    HEAP.decay.lock();
    for class in 0..CLASSES {
        HEAP.flush_transfer(class);
    }
    HEAP.purge(now_ms(), 0, 0, true);
    HEAP.decay.unlock();
}

/// Drains every cache of every class to the spans, with one fence (drain lock held).
fn drain_every_cache() {
    guarded(|| {
        let heads: Vec<_> = (0..CLASSES).map(|class| HEAP.head(class)).collect();
        list::drain_all(&heads, |class, chain| {
            HEAP.give_chain_to_spans(class, chain)
        });
    });
}

/// The calling thread is exiting: the caches of the cid it runs on go back to the
/// heap (popped with ordinary sections: no fence), the transfer stacks to their
/// spans, and every dirty span is purged.
fn thread_exit() {
    if !HEAP.ready() || crate::rseq::registration::in_internal() {
        return;
    }
    guarded(|| {
        for class in 0..CLASSES {
            let head = HEAP.head(class);
            let mut chain = 0u64;
            for _ in 0..cache_capacity(class) {
                // SAFETY: as every pop of the heap: the lists hold only free blocks
                // of this class, in spans that stay mapped.
                let Some((node, _)) = (unsafe { head.list_pop() }) else {
                    break;
                };
                // SAFETY: a popped block is ours.
                unsafe { *(node as *mut u64) = chain };
                chain = pack(node, chain_len(chain) + 1);
            }
            if chain != 0 {
                HEAP.give_chain_to_spans(class, chain);
            }
        }
    });
    // Fewer threads than cids with caches: some caches have nobody left to use
    // them (the kernel hands the survivors the lowest cids). Drain them all, one
    // fence; threads that stay keep theirs otherwise.
    let left = LIVE.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
    if left <= HEAP.head(0).shard_count() && HEAP.drain.try_lock() {
        drain_every_cache();
        HEAP.drain.unlock();
    }
    settle();
}

/// Asked of whoever holds the decay lock: sort the transfer stacks and purge every
/// dirty span before letting go.
static SETTLE: AtomicBool = AtomicBool::new(false);

/// The decay lock and the settle request, as [`hand_over`] sees them.
struct Decay;

impl HandOver for Decay {
    fn try_lock(&self) -> bool {
        HEAP.decay.try_lock()
    }
    fn unlock(&self) {
        HEAP.decay.unlock();
    }
    fn ask(&self) {
        // An RMW, not a store: requests then form one release sequence, so the
        // holder that takes the flag synchronises with every asker whose request
        // it merges, not just the last.
        SETTLE.swap(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }
    fn take_ask(&self) -> bool {
        SETTLE.swap(false, Ordering::SeqCst)
    }
    fn asked(&self) -> bool {
        fence(Ordering::SeqCst);
        SETTLE.load(Ordering::SeqCst)
    }
}

/// A lock whose holder runs, before letting go, the work others asked for while
/// they could not take it. `ask` (a swap, then a fence) before `try_lock` and
/// `unlock` before `asked` (a fence, then a load) are the two sides of a Dekker
/// pair: an asker that finds the lock taken is seen by the holder's last look.
trait HandOver {
    fn try_lock(&self) -> bool;
    fn unlock(&self);
    fn ask(&self);
    fn take_ask(&self) -> bool;
    fn asked(&self) -> bool;
}

/// Asks for `work` and runs it now, or leaves it to the holder of the lock, which
/// runs it before letting go: nobody waits for a lock held across system calls,
/// and no request is lost (model: `loom_hand_over_serves_every_request`).
fn hand_over(lock: &impl HandOver, mut work: impl FnMut()) {
    lock.ask();
    while lock.try_lock() {
        while lock.take_ask() {
            work();
        }
        lock.unlock();
        // A request made after the last look, while the lock was still held, found
        // it taken: look again now that it is free.
        if !lock.asked() {
            break;
        }
    }
}

/// Sorts the transfer stacks and purges every dirty span, now or (when another
/// thread holds the decay lock) by that thread before it lets go.
fn settle() {
    hand_over(&Decay, || {
        for class in 0..CLASSES {
            HEAP.flush_transfer(class);
        }
        HEAP.purge(now_ms(), 0, 0, true);
    });
}

/// The `pthread` key whose destructor runs [`thread_exit`] (`u32::MAX`: none). A
/// key rather than a thread-local with `Drop`: glibc allocates a destructor record
/// with `malloc` for the latter, which would give every thread a malloc arena of
/// its own (about 132 KiB resident each) just to say goodbye; `pthread_setspecific`
/// on one of the first 32 keys allocates nothing. Key destructors also run after
/// the thread-locals' ones, whose frees then land before the caches go back.
static EXIT_KEY: AtomicU32 = AtomicU32::new(u32::MAX);

extern "C" fn on_thread_exit(_: *mut libc::c_void) {
    thread_exit();
}

/// Creates the exit key (at heap set-up, on one thread).
pub(super) fn set_up_exit_key() {
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: a valid out pointer and a destructor that never unwinds.
    if unsafe { libc::pthread_key_create(&mut key, Some(on_thread_exit)) } == 0 {
        EXIT_KEY.store(key, Ordering::Release);
    }
}

thread_local! {
    static HOOKED: Cell<bool> = const { Cell::new(false) };
}

/// Arms the calling thread's exit hook (once per thread, from a slow path).
#[inline]
pub(super) fn arm_exit_hook() {
    if HOOKED.get() {
        return;
    }
    HOOKED.set(true);
    let key = EXIT_KEY.load(Ordering::Acquire);
    if key != u32::MAX {
        LIVE.fetch_add(1, Ordering::Relaxed);
        // SAFETY: a key this module created; the value only needs to be non-null
        // for the destructor to run.
        unsafe { libc::pthread_setspecific(key, std::ptr::dangling::<u8>().cast()) };
    }
}

/// Bytes of spans the heap has resident or may touch: every span taken from the
/// reservation except the purged ones.
pub(super) fn committed_bytes() -> usize {
    let used = HEAP.spans_used() as usize;
    used.saturating_sub(HEAP.pool.clean_count.load(Ordering::Relaxed) as usize) * SPAN
}

#[cfg(all(test, loom))]
mod tests {
    use super::{HandOver, hand_over};
    use loom::sync::atomic::{AtomicBool, Ordering, fence};
    use loom::sync::{Arc, Mutex};

    /// The decay lock and request flag, with the heap's state (the blocks a
    /// thread gave back, under the class locks in the real heap) as a count under
    /// a mutex.
    #[derive(Default)]
    struct Model {
        lock: AtomicBool,
        asked: AtomicBool,
        given: Mutex<usize>,
        settled: Mutex<usize>,
    }

    impl HandOver for Model {
        fn try_lock(&self) -> bool {
            self.lock
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        }
        fn unlock(&self) {
            self.lock.store(false, Ordering::Release);
        }
        fn ask(&self) {
            self.asked.swap(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
        }
        fn take_ask(&self) -> bool {
            self.asked.swap(false, Ordering::SeqCst)
        }
        fn asked(&self) -> bool {
            fence(Ordering::SeqCst);
            self.asked.load(Ordering::SeqCst)
        }
    }

    /// Three exiting threads each give their blocks back and hand the settle over:
    /// when all are done, some run of the work saw every thread's blocks.
    #[test]
    fn loom_hand_over_serves_every_request() {
        loom::model(|| {
            let m = Arc::new(Model::default());
            let threads: Vec<_> = (0..3)
                .map(|_| {
                    let m = m.clone();
                    loom::thread::spawn(move || {
                        *m.given.lock().unwrap() += 1;
                        hand_over(&*m, || {
                            let seen = *m.given.lock().unwrap();
                            let mut settled = m.settled.lock().unwrap();
                            *settled = (*settled).max(seen);
                        });
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(*m.settled.lock().unwrap(), 3, "a request was lost");
            assert!(!m.lock.load(Ordering::SeqCst), "the lock stayed taken");
        });
    }
}
