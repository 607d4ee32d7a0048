//! Counters updated from signal handlers (the crate docs, "Signal handlers").
//!
//! Two real-time signals, whose handlers add to the same counters as the threads
//! they interrupt and may interrupt each other, are sent every ~100 µs to every
//! thread of a storm: workers that add to those counters in a loop, and idle
//! threads whose first percid operation runs inside a handler (in every mode: where
//! percid registers rseq itself, that registration runs inside the handler). The
//! totals must come out exact, and nothing may hang (a watchdog fails the test
//! instead).
//!
//! Run it in every backend mode (`scripts/lib.sh` `mode_env`): default,
//! `GLIBC_TUNABLES=glibc.pthread.rseq=0`, `PERCID_BACKEND=portable`,
//! `PERCID_BACKEND=simulated`, `PERCID_INDEX=cpu_id`.

use percid::{Counter, SignedCounter};
use std::cell::Cell;
use std::os::unix::thread::JoinHandleExt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Threads adding in a loop (more than the machine's CPUs).
const WORKERS: usize = 8;
/// Threads that only run handlers.
const IDLE: usize = 4;
/// How long the storm lasts.
const STORM: Duration = Duration::from_millis(1500);
/// The pause between two rounds of signals.
const PERIOD: Duration = Duration::from_micros(100);
/// A run that takes longer than this is taken for a deadlock.
const WATCHDOG: Duration = Duration::from_secs(60);

static PLAIN: Counter = Counter::new();
static GAUGE: SignedCounter = SignedCounter::new();
static BATCHED: OnceLock<Counter> = OnceLock::new();
/// Handlers that ran to the end.
static HANDLED: AtomicU64 = AtomicU64::new(0);
/// Handlers that ran on each idle thread.
static IDLE_HANDLED: [AtomicU64; IDLE] = [const { AtomicU64::new(0) }; IDLE];
static STOP: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The calling idle thread's number (`usize::MAX` on the others). `const`,
    /// without a destructor: safe to read in a handler.
    static IDLE_SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The handler of both signals: the documented async-signal-safe operations only.
extern "C" fn on_signal(_signal: libc::c_int) {
    // SAFETY: the calling thread's errno, restored before returning (the getcpu
    // fallback of the portable backend may set it).
    let errno = unsafe { *libc::__errno_location() };
    PLAIN.add(1);
    GAUGE.sub(2);
    // `OnceLock::get` is one acquire load.
    if let Some(batched) = BATCHED.get() {
        batched.add(3);
    }
    let slot = IDLE_SLOT.get();
    if slot < IDLE {
        IDLE_HANDLED[slot].fetch_add(1, Ordering::Relaxed);
    }
    HANDLED.fetch_add(1, Ordering::Relaxed);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Installs `on_signal` for `signal`, with no signal blocked while it runs except
/// itself: the other signal's handler may interrupt it.
fn install(signal: libc::c_int) {
    // SAFETY: a zeroed `sigaction` is a valid "no flags, empty mask" value, filled
    // before use; the handler only calls async-signal-safe code.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(signal, &action, std::ptr::null_mut()),
            0,
            "sigaction({signal})"
        );
    }
}

#[test]
fn handlers_add_exactly_during_a_storm() {
    // A thread's first operation is async-signal-safe in every mode (condition 2),
    // including where percid registers rseq itself.
    println!("status: {}", percid::rseq::status());

    // Condition 1: the storage exists before any handler can run.
    PLAIN.add(0);
    GAUGE.add(0);
    let batched = Counter::builder()
        .batch(64)
        .build()
        .expect("counter storage");
    assert!(BATCHED.set(batched).is_ok());

    let (sig_a, sig_b) = (libc::SIGRTMIN() + 2, libc::SIGRTMIN() + 3);
    assert!(sig_b <= libc::SIGRTMAX());
    install(sig_a);
    install(sig_b);

    let done = std::sync::Arc::new(AtomicBool::new(false));
    {
        let done = done.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            while !done.load(Ordering::Acquire) {
                if start.elapsed() > WATCHDOG {
                    eprintln!(
                        "signal_handler: no progress after {WATCHDOG:?}: a handler deadlocked \
                         ({} handlers completed)",
                        HANDLED.load(Ordering::Relaxed)
                    );
                    std::process::exit(3);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    }

    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            std::thread::spawn(|| {
                let batched = BATCHED.get().unwrap();
                let mut n = 0u64;
                while !STOP.load(Ordering::Relaxed) {
                    PLAIN.add(1);
                    GAUGE.add(2);
                    batched.add(3);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let idle: Vec<_> = (0..IDLE)
        .map(|i| {
            std::thread::spawn(move || {
                IDLE_SLOT.set(i);
                while !STOP.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        })
        .collect();
    let targets: Vec<libc::pthread_t> = workers
        .iter()
        .map(|h| h.as_pthread_t())
        .chain(idle.iter().map(|h| h.as_pthread_t()))
        .collect();

    let start = Instant::now();
    let mut sent = 0u64;
    let mut round = 0u64;
    while start.elapsed() < STORM || IDLE_HANDLED.iter().any(|h| h.load(Ordering::Relaxed) == 0) {
        let signal = if round.is_multiple_of(2) {
            sig_a
        } else {
            sig_b
        };
        for &t in &targets {
            // SAFETY: every target is alive: none returns before `STOP`, set below,
            // and none is joined before that.
            if unsafe { libc::pthread_kill(t, signal) } == 0 {
                sent += 1;
            }
        }
        round += 1;
        std::thread::sleep(PERIOD);
        assert!(
            start.elapsed() < WATCHDOG,
            "an idle thread never ran a handler"
        );
    }
    STOP.store(true, Ordering::Relaxed);
    let work: u64 = workers.into_iter().map(|h| h.join().unwrap()).sum();
    for h in idle {
        h.join().unwrap();
    }
    done.store(true, Ordering::Release);

    let handled = HANDLED.load(Ordering::Relaxed);
    let idle_handled: Vec<u64> = IDLE_HANDLED
        .iter()
        .map(|h| h.load(Ordering::Relaxed))
        .collect();
    println!(
        "{work} adds by {WORKERS} workers, {sent} signals sent, {handled} handled \
         ({idle_handled:?} on the idle threads), in {:?}",
        start.elapsed()
    );
    assert!(handled > 0);
    assert!(idle_handled.iter().all(|&h| h > 0));
    assert_eq!(PLAIN.sum(), work + handled, "plain counter");
    assert_eq!(
        GAUGE.sum(),
        2 * work as i64 - 2 * handled as i64,
        "signed counter"
    );
    assert_eq!(
        BATCHED.get().unwrap().sum(),
        3 * (work + handled),
        "batched counter"
    );
    let (approx, error) = BATCHED.get().unwrap().approx();
    assert!(approx <= 3 * (work + handled) && 3 * (work + handled) <= approx + error);
}
