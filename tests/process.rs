//! Process-level tests: `fork`, and the test binary re-executed in another backend
//! mode (the crate registering rseq itself, `cpu_id` indexing, valgrind).
//!
//! A re-executed child runs exactly one test (`--exact NAME`) with `PERCID_CHILD` set
//! to the name of the part it plays; the same test function plays the parent when the
//! variable is unset (see `common::run_child`).

mod common;

use common::{Torture, child_mode, forced_backend, scaled};
use percid::cid::{Arena, Shard, Word};
use percid::rseq::{Backend, IndexMode, Owner, status};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// Whether this process plays the child part `mode`.
fn is_child(mode: &str) -> bool {
    child_mode().as_deref() == Some(mode)
}

/// Writes a line to stderr with `write(2)`: safe in a forked child, where the test
/// harness's captured output lives on in the parent only.
fn raw_eprintln(msg: &str) {
    let line = format!("{msg}\n");
    // SAFETY: writes `line.len()` bytes from a live buffer to fd 2.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}

/// `threads` threads adding 1 `per_thread` times each to `w`, each checking its
/// backend with `check` first; joined explicitly, so that the threads (thread-local
/// destructors included) are gone when it returns.
fn add_on_threads(w: Word<'_>, threads: usize, per_thread: u64, check: &(dyn Fn() + Sync)) {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || {
                    check();
                    for _ in 0..per_thread {
                        w.add(1);
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("an adding thread panicked");
        }
    });
}

// ---------------------------------------------------------------------------------
// fork

/// The forked child's part: 8 threads add to the word inherited from the parent; the
/// sum must be the parent's value plus the child's adds.
fn after_fork(w: Word<'_>, before: u64, backend: Backend, per_thread: u64) -> bool {
    let main = status();
    if main.backend != backend {
        raw_eprintln(&format!(
            "fork child: the forking thread's backend changed: {main} (parent: {backend:?})"
        ));
        return false;
    }
    let check = || {
        let st = status();
        assert_eq!(st.backend, backend, "a thread of the forked child: {st}");
    };
    add_on_threads(w, 8, per_thread, &check);
    // The forking thread again, after its children.
    w.add(1);
    let sum = w.sum();
    let expected = before + 8 * per_thread + 1;
    if sum != expected {
        raw_eprintln(&format!("fork child: sum {sum}, expected {expected}"));
        return false;
    }
    true
}

/// fork keeps the parent's registration for the forking thread; the child's new
/// threads get their own. Counts stay exact on both sides.
#[test]
fn fork_keeps_counts_exact() {
    let arena = Arena::new();
    let words = arena.alloc(1).expect("alloc");
    let w = words.word(0);
    add_on_threads(w, 4, 1000, &|| ());
    w.add(5);
    let before = w.sum();
    assert_eq!(before, 4005);
    let backend = status().backend;
    let per_thread = scaled(100_000);

    // SAFETY: fork in a threaded process: the child only runs code that does not need
    // locks another thread of the parent may have held (no printing through std; the
    // allocator and thread creation are fork-safe in glibc) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let ok = std::panic::catch_unwind(|| after_fork(w, before, backend, per_thread))
            .unwrap_or_else(|_| {
                raw_eprintln("fork child: panicked");
                false
            });
        // SAFETY: ends the child at once, without running the parent's exit handlers.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());

    let t0 = Instant::now();
    let mut status_word = 0;
    loop {
        // SAFETY: waits for our own child, writing its status into a live int.
        let rc = unsafe { libc::waitpid(pid, &mut status_word, libc::WNOHANG) };
        if rc == pid {
            break;
        }
        assert!(
            rc == 0 || std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted,
            "waitpid: {}",
            std::io::Error::last_os_error()
        );
        if t0.elapsed() > Duration::from_secs(120) {
            // SAFETY: kills and reaps our own hung child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status_word, 0);
            }
            panic!("the forked child hung for 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        libc::WIFEXITED(status_word) && libc::WEXITSTATUS(status_word) == 0,
        "the forked child failed (wait status {status_word:#x}; its message is above)"
    );
    assert_eq!(w.sum(), before, "the child's adds leaked into the parent");
    w.add(1);
    assert_eq!(w.sum(), before + 1);
}

// ---------------------------------------------------------------------------------
// Self-registration

/// Adds 1 to the word when the thread's destructors run.
struct AddAtExit(Cell<Option<Word<'static>>>);

impl Drop for AddAtExit {
    fn drop(&mut self) {
        if let Some(w) = self.0.get() {
            w.add(1);
        }
    }
}

/// The thin fast path's witness: `pthread` key destructors add to it in every
/// destructor round, before and after the crate's own key unregisters the thread.
static KEY_EXIT: percid::Counter = percid::Counter::new();
/// Destructor rounds each thread's key asks for (glibc runs at most 4).
const KEY_ROUNDS: usize = 4;

/// A `pthread` key whose destructor adds to [`KEY_EXIT`] and re-arms itself, so it
/// also runs in the rounds after the crate's key destructor unregistered the area
/// (whose page is then unmapped: a thin section that still used it would fault).
fn key_exit() -> libc::pthread_key_t {
    static KEY: std::sync::OnceLock<libc::pthread_key_t> = std::sync::OnceLock::new();
    extern "C" fn destructor(value: *mut libc::c_void) {
        KEY_EXIT.inc();
        let left = value as usize - 1;
        if left > 0 {
            // SAFETY: the key exists; re-arming in a destructor asks for a round more.
            unsafe { libc::pthread_setspecific(key_exit(), left as *mut libc::c_void) };
        }
    }
    *KEY.get_or_init(|| {
        let mut key = 0;
        // SAFETY: a valid out pointer and a destructor that does not unwind.
        assert_eq!(
            unsafe { libc::pthread_key_create(&mut key, Some(destructor)) },
            0
        );
        key
    })
}

thread_local! {
    /// Set before the thread's first operation: its destructor is registered before
    /// the crate's own thread-local state.
    static EARLY: AddAtExit = const { AddAtExit(Cell::new(None)) };
    /// Set after it.
    static LATE: AddAtExit = const { AddAtExit(Cell::new(None)) };
}

/// With `GLIBC_TUNABLES=glibc.pthread.rseq=0` the crate registers every thread itself,
/// and unregisters it when the thread exits: short-lived threads, round after round,
/// each registered anew, with exact counts, even from thread-local destructors that
/// run around the unregistration.
#[test]
fn self_registration() {
    if is_child("self_registration") {
        let st = status();
        assert_eq!(st.owner, Owner::SelfRegistered, "{st}");
        assert_eq!(st.backend, Backend::Rseq, "{st}");
        // `Word<'static>` for the thread-local destructors: the words live as long as
        // the process.
        let words = Box::leak(Box::new(percid::cid::global().alloc(1).expect("alloc")));
        let w: Word<'static> = words.word(0);
        let (threads, rounds, per_thread) = (16, 8, scaled(20_000));
        let check = move || {
            EARLY.with(|e| e.0.set(Some(w)));
            let st = status();
            assert_eq!(st.owner, Owner::SelfRegistered, "a new thread: {st}");
            assert_eq!(st.backend, Backend::Rseq, "a new thread: {st}");
            w.add(1);
            LATE.with(|l| l.0.set(Some(w)));
            // SAFETY: the key exists; the value counts the rounds left.
            unsafe { libc::pthread_setspecific(key_exit(), KEY_ROUNDS as *mut libc::c_void) };
        };
        let mut expected = 0;
        for round in 0..rounds {
            add_on_threads(w, threads, per_thread, &check);
            // Per thread: its adds, one in `check`, one per destructor.
            expected += threads as u64 * (per_thread + 3);
            assert_eq!(w.sum(), expected, "round {round}");
            assert_eq!(
                KEY_EXIT.sum(),
                (round as u64 + 1) * (threads * KEY_ROUNDS) as u64,
                "round {round}: adds from key destructors"
            );
        }
        eprintln!("self_registration child: {}", status());
        return;
    }
    if let Some(forced) = forced_backend() {
        eprintln!("skipped: PERCID_BACKEND={forced} forces a backend without rseq");
        return;
    }
    if status().backend != Backend::Rseq {
        eprintln!("skipped: no rseq here ({})", status());
        return;
    }
    common::run_child(
        "self_registration",
        "self_registration",
        &[("GLIBC_TUNABLES", "glibc.pthread.rseq=0")],
        &[],
        &[],
    );
}

// ---------------------------------------------------------------------------------
// cpu_id index

/// `PERCID_INDEX=cpu_id` indexes shards by `cpu_id`, as on kernels before 6.3: the
/// torture (storm and migrations) stays exact.
#[test]
fn cpu_id_index() {
    if is_child("cpu_id_index") {
        let st = status();
        assert_eq!(st.index, IndexMode::CpuId, "{st}");
        assert!(!st.mm_cid, "{st}");
        let arena = Arena::new();
        let words = arena.alloc(1).expect("alloc");
        let w = words.word(0);
        let possible = st.possible_cpus;
        let t = Torture {
            threads: 16,
            ops_total: scaled(1_000_000),
            storm: true,
            migrate: true,
        };
        t.run(|_, ops| {
            for _ in 0..ops {
                common::tick();
                if let Shard::Cid(c) = w.add(1) {
                    assert!(c < possible, "cpu {c} with {possible} possible CPUs");
                }
            }
        });
        assert_eq!(w.sum(), t.ops_total);
        return;
    }
    common::run_child(
        "cpu_id_index",
        "cpu_id_index",
        &[("PERCID_INDEX", "cpu_id")],
        &[],
        &[],
    );
}

// ---------------------------------------------------------------------------------
// valgrind

/// Whether `program` is an executable on PATH.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let path = dir.join(program);
            path.metadata().is_ok_and(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

/// Under valgrind there is no rseq: the crate must notice and use the portable
/// backend (owner none), exactly, and without memory errors.
#[test]
fn valgrind_portable() {
    if is_child("valgrind_portable") {
        let st = status();
        assert_eq!(st.backend, Backend::Portable, "{st}");
        assert_eq!(st.owner, Owner::None, "{st}");
        let arena = Arena::new();
        let words = arena.alloc(2).expect("alloc");
        let (w, c) = (words.word(0), words.word(1));
        let per_thread = 10_000;
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(move || {
                    let st = status();
                    assert_eq!(st.backend, Backend::Portable, "a thread: {st}");
                    for _ in 0..per_thread {
                        w.add(1);
                        let mut guess = 0;
                        while let Err(seen) = c.compare_store(guess, guess + 1) {
                            guess = seen;
                        }
                    }
                });
            }
        });
        assert_eq!(w.sum(), 4 * per_thread);
        assert_eq!(c.sum(), 4 * per_thread);
        return;
    }
    if !on_path("valgrind") {
        eprintln!("valgrind not installed: skipped");
        return;
    }
    common::run_child(
        "valgrind_portable",
        "valgrind_portable",
        &[],
        // The child checks the backend valgrind leaves, not one forced on it.
        &["PERCID_BACKEND"],
        &["valgrind", "--error-exitcode=99", "-q"],
    );
}
