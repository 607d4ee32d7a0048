//! The torture harness shared by the integration tests.
//!
//! [`Torture::run`] runs a closure on many threads (64 by default, on a 2-CPU machine:
//! oversubscribed on purpose) started together by a barrier, while two helpers make
//! the critical sections' life hard:
//!
//! * the **signal storm** sends `SIGUSR1` (a no-op handler, `SA_RESTART`) to every live
//!   worker every 100 µs: each delivery aborts the section the worker is in;
//! * the **migrator** moves every live worker between the CPUs with
//!   `sched_setaffinity`, rotating the masks {first allowed CPU}, {second allowed CPU},
//!   {all allowed CPUs} every ~200 µs: a migration aborts the section and changes the
//!   thread's `cpu_id` (and often its `mm_cid`). Under the simulated backend (where
//!   affinity means nothing to the shards) workers that call [`tick`] also hop between
//!   the simulated cids.
//!
//! A worker's `pthread_t` and tid are registered before the start barrier and removed,
//! under the same lock the helpers hold while they signal or move it, before it exits,
//! so a helper never targets a thread that is gone (or a recycled tid).
//!
//! The [`Report`] says how many signals and migrations happened, so tests can check
//! that the storm and the migrations really took place.
//!
//! Sizes follow the build: [`scaled`] divides the operation counts by 20 in debug
//! builds and again by 20 under `PERCID_BACKEND=simulated` (about 50 times slower).
//!
//! The module also has the helpers of the tests that re-execute the test binary
//! (child processes with another backend mode, valgrind): [`run_child`].

#![allow(dead_code)] // each test binary uses a part of the harness

pub mod pooled;

use std::cell::Cell;
use std::io::Write;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

/// Operations of one torture run in a release build, before scaling.
pub const DEFAULT_OPS: u64 = 10_000_000;

/// Workers of one torture run by default: 32 per CPU on the 2-CPU test machine.
pub const DEFAULT_THREADS: usize = 64;

/// Pause between two rounds of signals.
const STORM_PERIOD: Duration = Duration::from_micros(100);

/// Pause between two rounds of migrations.
const MIGRATE_PERIOD: Duration = Duration::from_micros(200);

/// A run that takes longer than this is declared hung: the harness prints what it
/// knows and aborts the process, rather than letting CI wait for its step timeout.
const HANG_LIMIT: Duration = Duration::from_secs(300);

/// The value of an environment variable, if set and valid UTF-8.
pub fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// The backend forced by `PERCID_BACKEND` (`"portable"`, `"simulated"`), if any.
pub fn forced_backend() -> Option<String> {
    env("PERCID_BACKEND").filter(|v| v == "portable" || v == "simulated")
}

/// Whether the whole suite runs on the simulated backend.
pub fn simulated() -> bool {
    forced_backend().as_deref() == Some("simulated")
}

/// Whether shards are indexed by `mm_cid` on real rseq sections in this process (the
/// mode in which mm_cid-specific facts may be asserted).
pub fn mm_cid_rseq() -> bool {
    let status = percid::rseq::status();
    status.backend == percid::rseq::Backend::Rseq && status.index == percid::rseq::IndexMode::MmCid
}

/// `ops` scaled to the build: /20 with debug assertions, /20 more on the simulated
/// backend. Never below 1.
pub fn scaled(ops: u64) -> u64 {
    let mut n = ops;
    if cfg!(debug_assertions) {
        n /= 20;
    }
    if simulated() {
        n /= 20;
    }
    n.max(1)
}

/// Simulated cids the simulated backend spreads threads over (`PERCID_SIM_CIDS`).
pub fn simulated_cids() -> u32 {
    static CIDS: OnceLock<u32> = OnceLock::new();
    *CIDS.get_or_init(|| {
        env("PERCID_SIM_CIDS")
            .and_then(|v| v.parse().ok())
            .unwrap_or(2u32)
            .clamp(1, 64)
    })
}

// ---------------------------------------------------------------------------------
// Signals

thread_local! {
    /// Signals the no-op handler ran on the calling thread. A `const`-initialised
    /// thread-local without destructor: a plain TLS slot, safe to touch from a handler.
    static HANDLED: Cell<u64> = const { Cell::new(0) };
}

extern "C" fn on_sigusr1(_: libc::c_int) {
    HANDLED.set(HANDLED.get().wrapping_add(1));
}

/// Installs the no-op `SIGUSR1` handler (with `SA_RESTART`), once per process.
pub fn install_sigusr1_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value, completed
        // below with the handler and its flags.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `sa_mask` is a valid sigset_t owned by `action`.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: installs an async-signal-safe handler (it only bumps a TLS counter)
        // for a signal nothing else in the test binaries uses.
        let rc = unsafe { libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()) };
        assert_eq!(
            rc,
            0,
            "sigaction(SIGUSR1): {}",
            std::io::Error::last_os_error()
        );
    });
}

/// `SIGUSR1`s handled so far by the calling thread.
pub fn signals_handled_here() -> u64 {
    HANDLED.get()
}

// ---------------------------------------------------------------------------------
// Affinity

/// A CPU mask.
#[derive(Clone, Copy)]
pub struct CpuMask(libc::cpu_set_t);

impl CpuMask {
    fn empty() -> CpuMask {
        // SAFETY: an all-zero cpu_set_t is the empty set.
        CpuMask(unsafe { std::mem::zeroed() })
    }

    fn of(cpus: &[usize]) -> CpuMask {
        let mut mask = CpuMask::empty();
        for &cpu in cpus {
            // SAFETY: `cpu` came from `cpus()` of a mask, so it is below CPU_SETSIZE.
            unsafe { libc::CPU_SET(cpu, &mut mask.0) };
        }
        mask
    }

    /// The calling thread's affinity mask.
    pub fn current() -> CpuMask {
        let mut mask = CpuMask::empty();
        // SAFETY: writes at most `size_of::<cpu_set_t>()` bytes into `mask`.
        let rc = unsafe {
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut mask.0)
        };
        assert_eq!(
            rc,
            0,
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        );
        mask
    }

    /// The CPUs in the mask, ascending.
    pub fn cpus(&self) -> Vec<usize> {
        let bits = 8 * std::mem::size_of::<libc::cpu_set_t>();
        let is_set = |cpu: usize| {
            // SAFETY: `cpu` is below CPU_SETSIZE (the set's size in bits).
            unsafe { libc::CPU_ISSET(cpu, &self.0) }
        };
        (0..bits).filter(|&cpu| is_set(cpu)).collect()
    }

    /// Applies the mask to thread `tid` (0: the calling thread). False when refused.
    pub fn apply(&self, tid: libc::pid_t) -> bool {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: reads `size` bytes of `self.0`; `tid` is a live thread of this
        // process (the caller's registration protocol) or 0.
        let rc = unsafe { libc::sched_setaffinity(tid, size, &self.0) };
        rc == 0
    }
}

/// The CPUs the calling thread may run on.
pub fn allowed_cpus() -> Vec<usize> {
    CpuMask::current().cpus()
}

/// Gives the calling thread the lowest priority (nice 19; Linux applies it to the
/// thread alone). Workers run at it so that the helpers and the tests' own threads
/// (a ring's consumer) get the CPU when they wake up, instead of waiting behind 64
/// busy workers for their turn.
pub fn lower_priority() {
    // SAFETY: setpriority has no memory preconditions; raising one's own nice value
    // needs no privilege. A failure only leaves the priority as it was.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
}

/// The calling thread's kernel thread id.
pub fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

// ---------------------------------------------------------------------------------
// Simulated cid hops

thread_local! {
    /// Whether [`tick`] moves this thread between simulated cids.
    static HOP: Cell<bool> = const { Cell::new(false) };
    static TICKS: Cell<u32> = const { Cell::new(0) };
}

/// Called by worker bodies once per operation. Under the simulated backend with
/// migration on, moves the thread to another simulated cid every 61 calls (what a
/// migration does to a real thread's `mm_cid`); otherwise does nothing.
#[inline]
pub fn tick() {
    if !HOP.get() {
        return;
    }
    let n = TICKS.get().wrapping_add(1);
    TICKS.set(n);
    if n.is_multiple_of(61) {
        percid::testing::set_simulated_cid((n / 61) % simulated_cids());
    }
}

// ---------------------------------------------------------------------------------
// The harness

/// One torture configuration: see the module documentation.
#[derive(Clone, Copy, Debug)]
pub struct Torture {
    /// Worker threads.
    pub threads: usize,
    /// Operations over all workers (split as evenly as possible).
    pub ops_total: u64,
    /// Send `SIGUSR1` to every live worker every 100 µs.
    pub storm: bool,
    /// Move every live worker between CPUs every ~200 µs.
    pub migrate: bool,
}

impl Default for Torture {
    fn default() -> Self {
        Torture {
            threads: DEFAULT_THREADS,
            ops_total: scaled(DEFAULT_OPS),
            storm: false,
            migrate: false,
        }
    }
}

/// What a torture run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Report {
    /// From the start barrier until the last worker finished.
    pub elapsed: Duration,
    /// `pthread_kill(SIGUSR1)` calls that succeeded.
    pub signals_sent: u64,
    /// Signals the workers handled while running their bodies.
    pub signals_handled: u64,
    /// Rounds of the storm.
    pub storm_rounds: u64,
    /// `sched_setaffinity` calls on workers that succeeded.
    pub migrations: u64,
    /// Rounds of the migrator.
    pub migrate_rounds: u64,
}

/// A worker's identity, as the helpers see it; `None` once the worker is done.
type Target = Mutex<Option<(libc::pthread_t, libc::pid_t)>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Torture {
    /// The four standard variants: plain, storm, migrate, storm + migrate.
    pub fn plain() -> Torture {
        Torture::default()
    }

    /// With the signal storm.
    pub fn storm() -> Torture {
        Torture {
            storm: true,
            ..Torture::default()
        }
    }

    /// With the migrator.
    pub fn migrate() -> Torture {
        Torture {
            migrate: true,
            ..Torture::default()
        }
    }

    /// With both helpers.
    pub fn storm_migrate() -> Torture {
        Torture {
            storm: true,
            migrate: true,
            ..Torture::default()
        }
    }

    /// Operations of worker `i`: the total split evenly, remainder to the first ones.
    pub fn ops_for(&self, i: usize) -> u64 {
        let threads = self.threads as u64;
        self.ops_total / threads + u64::from((i as u64) < self.ops_total % threads)
    }

    /// Runs `body(thread_index, ops_for_this_thread)` on every worker, with the
    /// helpers this configuration enables, and returns what happened. Asserts that
    /// the enabled helpers really signalled and migrated the workers. A worker's panic
    /// is propagated once every thread has finished.
    pub fn run<F>(&self, body: F) -> Report
    where
        F: Fn(usize, u64) + Sync,
    {
        assert!(self.threads > 0, "a torture run needs workers");
        if self.storm {
            install_sigusr1_handler();
        }
        let full = CpuMask::current();
        let cpus = full.cpus();
        let masks = [
            CpuMask::of(&cpus[..1]),
            CpuMask::of(&cpus[cpus.len().min(2) - 1..cpus.len().min(2)]),
            full,
        ];
        let hop = self.migrate && simulated();

        let targets: Vec<Target> = (0..self.threads).map(|_| Mutex::new(None)).collect();
        let helpers = usize::from(self.storm) + usize::from(self.migrate);
        // Workers and helpers meet twice: once all workers are registered (the helpers
        // then do one round each, so a run always has signals and migrations even when
        // its workers are quick), and once to start.
        let registered = Barrier::new(self.threads + helpers);
        let go = Barrier::new(self.threads + helpers);
        let live = AtomicUsize::new(self.threads);
        let start = OnceLock::<Instant>::new();
        let handled = AtomicU64::new(0);
        let sent = AtomicU64::new(0);
        let storm_rounds = AtomicU64::new(0);
        let moved = AtomicU64::new(0);
        let migrate_rounds = AtomicU64::new(0);

        let elapsed = std::thread::scope(|s| {
            let mut workers = Vec::with_capacity(self.threads);
            for i in 0..self.threads {
                let (targets, registered, go, live, handled, body, start, full) = (
                    &targets,
                    &registered,
                    &go,
                    &live,
                    &handled,
                    &body,
                    &start,
                    &full,
                );
                let ops = self.ops_for(i);
                let worker = std::thread::Builder::new()
                    .name(format!("torture-{i}"))
                    .spawn_scoped(s, move || {
                        // SAFETY: pthread_self has no preconditions.
                        let me = unsafe { libc::pthread_self() };
                        *lock(&targets[i]) = Some((me, gettid()));
                        lower_priority();
                        HOP.set(hop);
                        registered.wait();
                        go.wait();
                        start.get_or_init(Instant::now);
                        let before = signals_handled_here();
                        let result =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(i, ops)));
                        handled.fetch_add(signals_handled_here() - before, Ordering::Relaxed);
                        // Leave the helpers' lists before the thread can go away.
                        *lock(&targets[i]) = None;
                        full.apply(0);
                        HOP.set(false);
                        live.fetch_sub(1, Ordering::AcqRel);
                        if let Err(panic) = result {
                            std::panic::resume_unwind(panic);
                        }
                    })
                    .expect("spawn a torture worker");
                workers.push(worker);
            }

            if self.storm {
                let (targets, registered, go, live, sent, rounds) =
                    (&targets, &registered, &go, &live, &sent, &storm_rounds);
                s.spawn(move || {
                    let round = || {
                        for target in targets {
                            let guard = lock(target);
                            if let Some((thread, _)) = *guard {
                                // SAFETY: the worker is registered, so it has not left
                                // (it unregisters under this lock before it exits) and
                                // `thread` names a live thread.
                                if unsafe { libc::pthread_kill(thread, libc::SIGUSR1) } == 0 {
                                    sent.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        rounds.fetch_add(1, Ordering::Relaxed);
                    };
                    registered.wait();
                    round();
                    go.wait();
                    while live.load(Ordering::Acquire) > 0 {
                        round();
                        std::thread::sleep(STORM_PERIOD);
                    }
                });
            }

            if self.migrate {
                let (targets, registered, go, live, moved, rounds, masks) = (
                    &targets,
                    &registered,
                    &go,
                    &live,
                    &moved,
                    &migrate_rounds,
                    &masks,
                );
                s.spawn(move || {
                    let mut r = 0usize;
                    let mut round = || {
                        for (i, target) in targets.iter().enumerate() {
                            let guard = lock(target);
                            if let Some((_, tid)) = *guard
                                && masks[(r + i) % masks.len()].apply(tid)
                            {
                                moved.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        r += 1;
                        rounds.fetch_add(1, Ordering::Relaxed);
                    };
                    registered.wait();
                    round();
                    go.wait();
                    while live.load(Ordering::Acquire) > 0 {
                        round();
                        std::thread::sleep(MIGRATE_PERIOD);
                    }
                    // Whoever is still registered gets every allowed CPU back.
                    for target in targets {
                        if let Some((_, tid)) = *lock(target) {
                            masks[2].apply(tid);
                        }
                    }
                });
            }

            // The watchdog: a hung run aborts the process with what is known.
            let t0 = Instant::now();
            while live.load(Ordering::Acquire) > 0 {
                std::thread::sleep(Duration::from_millis(1));
                if t0.elapsed() > HANG_LIMIT {
                    // Straight to stderr: `eprintln!` output is captured by the test
                    // harness, which the abort keeps from ever printing it.
                    let _ = writeln!(
                        std::io::stderr(),
                        "torture run {self:?} hung: {} of {} workers still running after {:?}; \
                         signals sent {}, migrations {}",
                        live.load(Ordering::Acquire),
                        self.threads,
                        t0.elapsed(),
                        sent.load(Ordering::Relaxed),
                        moved.load(Ordering::Relaxed),
                    );
                    std::process::abort();
                }
            }
            let elapsed = start.get().map(Instant::elapsed).unwrap_or_default();
            // Joining here (before the scope ends) gives the first worker panic as is.
            for worker in workers {
                if let Err(panic) = worker.join() {
                    std::panic::resume_unwind(panic);
                }
            }
            elapsed
        });

        let report = Report {
            elapsed,
            signals_sent: sent.load(Ordering::Relaxed),
            signals_handled: handled.load(Ordering::Relaxed),
            storm_rounds: storm_rounds.load(Ordering::Relaxed),
            migrations: moved.load(Ordering::Relaxed),
            migrate_rounds: migrate_rounds.load(Ordering::Relaxed),
        };
        eprintln!("torture {self:?}: {report:?}");
        if self.storm {
            assert!(
                report.signals_sent > 0,
                "the signal storm sent nothing: {report:?}"
            );
        }
        if self.migrate {
            assert!(
                report.migrations > 0,
                "the migrator moved nobody: {report:?}"
            );
        }
        report
    }
}

// ---------------------------------------------------------------------------------
// Child processes

/// The test mode a re-executed test binary runs in (`PERCID_CHILD`), if any.
pub fn child_mode() -> Option<String> {
    env("PERCID_CHILD")
}

/// Re-executes the current test binary to run exactly the test `test` (its full
/// path, e.g. `self_registration`), with `PERCID_CHILD=mode`, the variables of `set`
/// set and those of `unset` removed, under `wrapper` (e.g. `["valgrind", "-q"]`) when
/// not empty. Panics with the child's output unless it exits with 0 after running
/// that one test.
pub fn run_child(
    test: &str,
    mode: &str,
    set: &[(&str, &str)],
    unset: &[&str],
    wrapper: &[&str],
) -> Output {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    command
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("PERCID_CHILD", mode)
        // A child that panics says where.
        .env("RUST_BACKTRACE", "1");
    for (key, value) in set {
        command.env(key, value);
    }
    for key in unset {
        command.env_remove(key);
    }
    let t0 = Instant::now();
    let output = command.output().expect("run the child test process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "child {test} ({mode}) exited with {} in {:?}",
        output.status,
        t0.elapsed()
    );
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child test {test} (PERCID_CHILD={mode}, env {set:?}, without {unset:?}, \
         wrapper {wrapper:?}) failed: {}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}",
        output.status
    );
    output
}

// ---------------------------------------------------------------------------------
// Test variants

/// A quarter of the default operations: for structures whose operations run several
/// sections each.
pub fn quarter(mut t: Torture) -> Torture {
    t.ops_total = scaled(2_500_000).min(t.ops_total);
    t
}

/// `torture_variants! { name => |t: Torture| ...; }`: a module `name` with the four
/// tests `plain`, `storm`, `migrate` and `storm_migrate`, each calling the closure with
/// that [`Torture`] configuration.
#[macro_export]
macro_rules! torture_variants {
    ($($name:ident => $run:expr;)*) => {$(
        mod $name {
            use super::*;

            #[test]
            fn plain() {
                ($run)(common::Torture::plain());
            }

            #[test]
            fn storm() {
                ($run)(common::Torture::storm());
            }

            #[test]
            fn migrate() {
                ($run)(common::Torture::migrate());
            }

            #[test]
            fn storm_migrate() {
                ($run)(common::Torture::storm_migrate());
            }
        }
    )*};
}
