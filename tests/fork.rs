//! `fork()` while other threads create, use and drop every structure: every child
//! can build and use new structures *and* use the ones it inherited (a `PerCid` other
//! threads were inside, a user arena they were allocating from, a channel whose
//! spill queue they were filling, a pool, a counter). See `src/cid/fork.rs`. Runs in
//! every backend mode (scripts/test); no hung child is accepted.
//!
//! Found this way: a child forked while another thread was building the process-wide
//! arena (`cid::global()`'s `OnceLock`) waited forever for that initialisation (about
//! one child in 700 forks in full CI runs, only on a run's first forks); a child
//! forked while another thread held a `PerCid` shard, a user arena's locks or a
//! channel's spill lock hung on its first use of that structure.

use percid::cid::Arena;
use percid::counter::PerCid;
use percid::ring;
use percid::{Counter, Pool};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a child may take before it counts as hung.
const HANG: Duration = Duration::from_secs(10);

/// What the parent's threads use and every child inherits.
struct Shared {
    per_cid: PerCid<Vec<u64>>,
    arena: &'static Arena,
    pool: Pool<[u8; 32]>,
    spill: ring::UnboundedSender<u64>,
    counter: Counter,
}

/// New structures, built and used in a child.
fn use_new_structures() {
    let (tx, mut rx) = ring::channel::<u64>(8).expect("channel in the child");
    for i in 0..16 {
        tx.send(i).expect("receiver alive");
        assert_eq!(rx.recv(), Ok(i));
    }
    let (utx, mut urx) = ring::unbounded::<u64>().expect("unbounded channel in the child");
    for i in 0..200 {
        utx.send(i).expect("receiver alive");
    }
    for i in 0..200 {
        assert_eq!(urx.recv(), Ok(i));
    }
    let pool = Pool::new(|| [0u8; 64]).expect("pool in the child");
    for _ in 0..16 {
        drop(pool.get());
    }
    pool.trim();
    let counter = Counter::new();
    counter.add(3);
    assert_eq!(counter.sum(), 3);
    let per_cid = PerCid::new(|| 0u64).expect("PerCid in the child");
    per_cid.with(|v| *v += 1);
    let arena = Arena::new();
    let words = arena.alloc(2).expect("user arena in the child");
    words.word(1).add(5);
    assert_eq!(words.word(1).sum(), 5);
}

/// The structures the parent's threads were using when it forked.
fn use_inherited(shared: &Shared) {
    shared.per_cid.with(|v| v.push(7));
    shared
        .per_cid
        .for_each(|v| v.truncate(8))
        .expect("visit in the child");
    let words = shared.arena.alloc(3).expect("inherited user arena");
    words.word(0).add(1);
    assert_eq!(words.word(0).sum(), 1);
    drop(words);
    // `len` takes the spill queue's lock; sends past the ring spill under it.
    let _ = shared.spill.len();
    for i in 0..64 {
        shared
            .spill
            .send(i)
            .expect("the parent's receiver is inherited too");
    }
    shared.counter.add(1);
    // The pool its parent's threads were using (and trimming) at the fork: its
    // depot and drain run in `cid::fork::hold()` regions, so none is held.
    let mut b = shared.pool.get();
    b.fill(0);
    drop(b);
    shared.pool.trim();
}

/// Ends a child: 0 when `work` returned, 2 when it panicked (a panic must not unwind
/// into the test harness, whose other threads do not exist in the child: it would
/// wait for them forever).
fn run_child(work: impl FnOnce()) -> ! {
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).is_ok();
    if !ok {
        eprintln!("fork child {}: panicked", std::process::id());
    }
    // SAFETY: ends the child without running the harness's exit path.
    unsafe { libc::_exit(if ok { 0 } else { 2 }) }
}

/// Forks a child that runs `work`.
fn spawn_child(work: impl FnOnce()) -> libc::pid_t {
    // SAFETY: the child only runs `work`, then `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        run_child(work);
    }
    pid
}

/// Waits for `pid` up to `limit`; `Err` with what happened otherwise. A hung child
/// is shown (its stack, with gdb when there is one) and killed.
fn reap(pid: libc::pid_t, limit: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                Ok(())
            } else {
                Err(format!("child {pid} ended with status {status:#x}"))
            };
        }
        if start.elapsed() > limit {
            let stack = std::process::Command::new("gdb")
                .args([
                    "-p",
                    &pid.to_string(),
                    "-batch",
                    "-ex",
                    "thread apply all bt",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|e| format!("(no gdb: {e})"));
            eprintln!("child {pid} hung; its stack:\n{stack}");
            // SAFETY: our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(format!("child {pid} hung for {limit:?}"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Spins for about `n` short steps: widens the windows in which a thread holds
/// something (a shard, a lock) so that forks land inside them.
fn busy(n: u32) {
    for _ in 0..n {
        std::hint::spin_loop();
    }
}

#[test]
fn children_forked_while_threads_use_every_structure_can_use_them() {
    let forks = if cfg!(debug_assertions) { 80 } else { 300 };
    let (spill, mut spill_rx) = ring::Builder::new()
        .unbounded(true)
        .capacity_per_cid(4)
        .build::<u64>()
        .unwrap();
    let shared = Shared {
        per_cid: PerCid::new(Vec::new as fn() -> Vec<u64>).unwrap(),
        arena: Box::leak(Box::new(Arena::new())),
        pool: Pool::builder(|| [0u8; 32]).capacity(4).build().unwrap(),
        spill,
        counter: Counter::new(),
    };
    let stop = AtomicBool::new(false);
    let rounds = AtomicU64::new(0);
    let mut failures = Vec::new();
    std::thread::scope(|s| {
        let (shared, stop, rounds) = (&shared, &stop, &rounds);
        // Inside `PerCid::with` most of the time; visits; new `PerCid`s.
        s.spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                shared.per_cid.with(|v| {
                    v.push(i);
                    busy(200);
                    if v.len() > 64 {
                        v.clear();
                    }
                });
                if i.is_multiple_of(64) {
                    shared.per_cid.for_each(|v| v.truncate(32)).unwrap();
                    let fresh = PerCid::new(|| 0u32).unwrap();
                    fresh.with(|v| *v += 1);
                }
                i += 1;
            }
        });
        // A user arena: allocations (its allocation lock) and portable sections
        // (its lane locks); new user arenas.
        s.spawn(move || {
            percid::testing::force_portable_backend();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let words = shared.arena.alloc(1 + (i % 4) as usize).unwrap();
                for _ in 0..8 {
                    words.word(0).add(1);
                }
                drop(words);
                if i.is_multiple_of(32) {
                    let own = Arena::new();
                    let w = own.alloc(2).unwrap();
                    w.word(1).add(1);
                }
                i += 1;
            }
        });
        // The spill queue: bursts past a 4-slot ring, drained by this thread; new
        // bounded and unbounded channels.
        s.spawn(move || {
            let mut t = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for v in 0..32 {
                    shared.spill.send(v).unwrap();
                }
                while spill_rx.try_recv().is_ok() {}
                let (tx, mut rx) = ring::channel::<u64>(4).unwrap();
                tx.send(t).unwrap();
                assert_eq!(rx.recv(), Ok(t));
                t += 1;
            }
        });
        // Pools (with trims) and counters, shared and new.
        s.spawn(move || {
            let counter = Counter::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let fresh = Pool::new(|| 0u64).unwrap();
                drop(fresh.get());
                for _ in 0..8 {
                    drop(shared.pool.get());
                    counter.inc();
                    shared.counter.inc();
                }
                if i.is_multiple_of(16) {
                    shared.pool.trim();
                }
                i += 1;
                rounds.fetch_add(1, Ordering::Relaxed);
            }
        });
        for _ in 0..forks {
            let pid = spawn_child(|| {
                use_new_structures();
                use_inherited(shared);
            });
            if let Err(e) = reap(pid, HANG) {
                failures.push(e);
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(rounds.load(Ordering::Relaxed) > 0, "the workers ran");
    assert!(
        failures.is_empty(),
        "{} of {forks} children failed: {failures:?}",
        failures.len()
    );
}

/// Set in the processes that [`children_forked_during_first_use_can_use_percid`]
/// starts.
const FRESH: &str = "PERCID_FORK_TEST_FRESH";

/// The body of a fresh process: threads make the process's first use of percid
/// (process discovery, the process-wide arena) while this thread forks children that
/// use percid at once. Does nothing in an ordinary test run.
#[test]
fn fresh_process_forks_during_first_use() {
    if std::env::var_os(FRESH).is_none() {
        return;
    }
    static STARTING: AtomicU64 = AtomicU64::new(0);
    let users: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| {
                STARTING.fetch_add(1, Ordering::SeqCst);
                let counter = Counter::new();
                counter.inc();
                let (tx, mut rx) = ring::channel::<u64>(4).unwrap();
                tx.send(1).unwrap();
                assert_eq!(rx.recv(), Ok(1));
                PerCid::new(|| 0u8).unwrap().with(|v| *v += 1);
            })
        })
        .collect();
    // Fork while the first user is starting.
    while STARTING.load(Ordering::SeqCst) == 0 {
        std::hint::spin_loop();
    }
    let children: Vec<_> = (0..12)
        .map(|_| {
            spawn_child(|| {
                let counter = Counter::new();
                counter.inc();
                assert_eq!(counter.sum(), 1);
                let (tx, mut rx) = ring::channel::<u64>(4).unwrap();
                tx.send(2).unwrap();
                assert_eq!(rx.recv(), Ok(2));
            })
        })
        .collect();
    let failures: Vec<_> = children
        .into_iter()
        .filter_map(|pid| reap(pid, HANG).err())
        .collect();
    for user in users {
        user.join().unwrap();
    }
    assert!(failures.is_empty(), "children failed: {failures:?}");
}

#[test]
fn children_forked_during_first_use_can_use_percid() {
    let runs = if cfg!(debug_assertions) { 10 } else { 40 };
    let exe = std::env::current_exe().unwrap();
    let mut failures = Vec::new();
    for _ in 0..runs {
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "fresh_process_forks_during_first_use",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(FRESH, "1")
            .output()
            .unwrap();
        if !out.status.success() {
            failures.push(format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {runs} fresh processes had a failed child:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
