//! The acceptance test of issue 11: `percid::ring` inside a (naive) executor whose
//! run queue is itself a percid ring.
//!
//! The executor is single-threaded: its run queue is an unbounded percid channel of
//! `Arc<Task>`; a task's waker sends the task into it (a `try_send`, which an
//! unbounded channel never refuses while the receiver lives: DESIGN.md section 6 on
//! wakers sending into a bounded queue owned by the same thread), and the loop
//! `recv()`s a task and polls it. The tasks' wakers hold a `WeakSender` of the run
//! queue, so a task never keeps the executor's channel alive.
//!
//! * `executor_end_to_end_close` / `executor_end_to_end_drop`: a receiving task
//!   awaits `recv_async` for N = 16 000 values sent on a bounded ring of 2 slots per
//!   cid by three producer threads (`send_async` under a small `block_on`), a
//!   producer task in the executor (`send_async`) and one that `reserve()`s then
//!   `Permit::send`s; the rings are full, so the producers must wait. A last task
//!   awaits `Sender::closed()`; the receiving task closes (or drops) the receiver
//!   once it has every value, and that task must complete. Checked: everything
//!   completes (a watchdog aborts the process with what it knows after 60 s), every
//!   value arrives exactly once, the receiving task is polled at most twice per
//!   value on average, the producer tasks did wait, `closed()` completed only after
//!   the close.
//! * `idle_receiving_task_is_not_polled_in_a_loop`: a receiving task on an empty
//!   channel (a sender alive) is polled at most 3 times in 100 ms of idleness,
//!   before the first value and again between two bursts (no self-wake loop: the
//!   default idle policy registers the waker and returns `Pending`).

use percid::ring::{self, Receiver, Sender, TrySendError, WeakSender};
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

/// Values of the end-to-end test.
const N: u64 = 16_000;
/// Producer threads, each sending `PER_THREAD` values.
const THREADS: u64 = 3;
const PER_THREAD: u64 = 4_000;
/// Values of the executor's `send_async` task and of its `reserve` task.
const TASK_SEND: u64 = 2_000;
const TASK_RESERVE: u64 = 2_000;
const _: () = assert!(THREADS * PER_THREAD + TASK_SEND + TASK_RESERVE == N);
/// Slots per cid of the data channel: small, so that the producers wait.
const CAPACITY: usize = 2;

/// How long a test may take before the watchdog aborts the process.
const HANG_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------
// The watchdog

/// Aborts the process (with `report()` on stderr) unless dropped within `limit`: a
/// hung test ends with a message instead of holding CI until its step timeout.
struct Watchdog {
    disarm: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Watchdog {
    fn arm(
        name: &'static str,
        limit: Duration,
        report: Arc<dyn Fn() -> String + Send + Sync>,
    ) -> Watchdog {
        let (disarm, armed) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = armed.recv_timeout(limit) {
                // Straight to stderr: the harness's capture is lost on abort.
                let _ = writeln!(
                    std::io::stderr(),
                    "{name}: hung for {limit:?} (watchdog): {}",
                    report()
                );
                std::process::abort();
            }
        });
        Watchdog {
            disarm: Some(disarm),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.disarm.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------
// The executor

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Set when a waker's `try_send` into the unbounded run queue came back `Full`.
static RUN_QUEUE_FULL: AtomicBool = AtomicBool::new(false);

struct Task {
    name: &'static str,
    future: Mutex<Option<BoxFuture>>,
    /// In the run queue (or about to be): a wake does not queue it again. Cleared
    /// just before each poll, so a wake during the poll queues it.
    queued: AtomicBool,
    done: AtomicBool,
    polls: AtomicUsize,
    wakes: AtomicUsize,
    run_queue: WeakSender<Arc<Task>>,
}

impl Task {
    fn schedule(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::Relaxed);
        if self.done.load(Ordering::Acquire) || self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        // The executor gone: nothing to run the task any more.
        let Some(tx) = self.run_queue.upgrade() else {
            return;
        };
        match tx.try_send(self.clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => RUN_QUEUE_FULL.store(true, Ordering::SeqCst),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn polls(&self) -> usize {
        self.polls.load(Ordering::Relaxed)
    }
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.schedule();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.schedule();
    }
}

struct Executor {
    /// Keeps the run queue open while the executor lives (tasks hold weak ones).
    tx: Sender<Arc<Task>>,
    rx: Receiver<Arc<Task>>,
    tasks: Vec<Arc<Task>>,
}

impl Executor {
    fn new() -> Executor {
        let (tx, rx) = ring::unbounded::<Arc<Task>>().expect("the run queue");
        Executor {
            tx,
            rx,
            tasks: Vec::new(),
        }
    }

    fn spawn(
        &mut self,
        name: &'static str,
        f: impl Future<Output = ()> + Send + 'static,
    ) -> Arc<Task> {
        let task = Arc::new(Task {
            name,
            future: Mutex::new(Some(Box::pin(f))),
            queued: AtomicBool::new(true),
            done: AtomicBool::new(false),
            polls: AtomicUsize::new(0),
            wakes: AtomicUsize::new(0),
            run_queue: self.tx.downgrade(),
        });
        if self.tx.try_send(task.clone()).is_err() {
            panic!("the run queue refused a new task");
        }
        self.tasks.push(task.clone());
        task
    }

    /// Runs until every task completed.
    fn run(&mut self) {
        let mut live = self.tasks.len();
        while live > 0 {
            let task = self
                .rx
                .recv()
                .expect("the executor holds a sender of its run queue");
            if task.done.load(Ordering::Acquire) {
                continue;
            }
            task.queued.store(false, Ordering::Release);
            let waker = Waker::from(task.clone());
            let mut cx = Context::from_waker(&waker);
            let mut slot = task.future.lock().unwrap();
            let Some(future) = slot.as_mut() else {
                continue;
            };
            task.polls.fetch_add(1, Ordering::Relaxed);
            if future.as_mut().poll(&mut cx).is_ready() {
                *slot = None;
                task.done.store(true, Ordering::Release);
                live -= 1;
            }
        }
        assert!(
            !RUN_QUEUE_FULL.load(Ordering::SeqCst),
            "a waker's try_send into the unbounded run queue came back Full"
        );
    }

    fn describe(tasks: &[Arc<Task>]) -> String {
        tasks
            .iter()
            .map(|t| {
                format!(
                    "{}: {} polls, {} wakes, done {}, queued {}",
                    t.name,
                    t.polls(),
                    t.wakes.load(Ordering::Relaxed),
                    t.done.load(Ordering::Relaxed),
                    t.queued.load(Ordering::Relaxed)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

// ---------------------------------------------------------------------------------
// A thread's block_on

struct Unpark(thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `f` on this thread, parking while it is pending; counts the `Pending`s in
/// `pendings`.
fn block_on<F: Future>(f: F, pendings: &AtomicU64) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        pendings.fetch_add(1, Ordering::Relaxed);
        thread::park();
    }
}

// ---------------------------------------------------------------------------------
// End to end

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The receiving task calls `close()` (then checks that `recv` ends).
    Close,
    /// The receiving task drops the receiver.
    Drop,
}

fn end_to_end(end: End) {
    let (tx, mut rx) = ring::channel::<u64>(CAPACITY).expect("channel");
    assert_eq!(tx.capacity_per_cid(), CAPACITY);
    let received = Arc::new(AtomicU64::new(0));
    let thread_pendings = Arc::new(AtomicU64::new(0));
    let closed_seen = Arc::new(AtomicBool::new(false));
    let closing = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<bool>>> = Arc::new(Mutex::new(vec![false; N as usize]));

    let mut ex = Executor::new();

    // The receiving task.
    let rx_task = ex.spawn("receiver", {
        let (received, seen, closed_seen, closing) = (
            received.clone(),
            seen.clone(),
            closed_seen.clone(),
            closing.clone(),
        );
        async move {
            let mut got = 0;
            while got < N {
                let v = rx
                    .recv_async()
                    .await
                    .expect("the closed() task keeps a sender alive");
                let mut seen = seen.lock().unwrap();
                assert!(v < N, "a value never sent: {v}");
                assert!(!seen[v as usize], "value {v} received twice");
                seen[v as usize] = true;
                got += 1;
                received.store(got, Ordering::Relaxed);
            }
            assert!(
                !closed_seen.load(Ordering::SeqCst),
                "closed() completed while the receiver was open"
            );
            assert!(!rx.is_closed());
            closing.store(true, Ordering::SeqCst);
            match end {
                End::Close => {
                    rx.close();
                    assert!(rx.is_closed(), "is_closed after close()");
                    assert!(
                        rx.recv_async().await.is_err(),
                        "recv after close() on an empty channel"
                    );
                    assert!(rx.try_recv().is_err());
                }
                End::Drop => drop(rx),
            }
        }
    });

    // A producer task with send_async.
    let send_task = ex.spawn("send_async task", {
        let tx = tx.clone();
        async move {
            let base = THREADS * PER_THREAD;
            for v in base..base + TASK_SEND {
                tx.send_async(v).await.expect("the receiver is open");
            }
        }
    });

    // A producer task with reserve + Permit::send.
    let reserve_task = ex.spawn("reserve task", {
        let tx = tx.clone();
        async move {
            let base = THREADS * PER_THREAD + TASK_SEND;
            for v in base..base + TASK_RESERVE {
                let permit = tx.reserve().await.expect("the receiver is open");
                permit.send(v);
            }
        }
    });

    // The task that waits for the receiver to close or go.
    let closed_task = ex.spawn("closed() task", {
        let tx = tx.clone();
        let (closed_seen, closing) = (closed_seen.clone(), closing.clone());
        async move {
            tx.closed().await;
            assert!(
                closing.load(Ordering::SeqCst),
                "closed() completed before the receiver closed"
            );
            assert!(tx.is_closed(), "closed() completed, is_closed() says no");
            closed_seen.store(true, Ordering::SeqCst);
        }
    });

    // Producers on other threads.
    let producers: Vec<_> = (0..THREADS)
        .map(|t| {
            let tx = tx.clone();
            let pendings = thread_pendings.clone();
            thread::Builder::new()
                .name(format!("producer-{t}"))
                .spawn(move || {
                    block_on(
                        async {
                            for v in t * PER_THREAD..(t + 1) * PER_THREAD {
                                tx.send_async(v).await.expect("the receiver is open");
                            }
                        },
                        &pendings,
                    )
                })
                .expect("spawn a producer")
        })
        .collect();
    drop(tx);

    let tasks = ex.tasks.clone();
    let _watchdog = Watchdog::arm("executor_end_to_end", HANG_LIMIT, {
        let received = received.clone();
        Arc::new(move || {
            format!(
                "{} of {N} values received; {}",
                received.load(Ordering::Relaxed),
                Executor::describe(&tasks)
            )
        })
    });

    ex.run();
    for p in producers {
        p.join().expect("a producer thread panicked");
    }

    let description = Executor::describe(&ex.tasks);
    eprintln!(
        "executor ({end:?}): {description}; producer threads pended {} times",
        thread_pendings.load(Ordering::Relaxed)
    );
    assert_eq!(received.load(Ordering::Relaxed), N);
    let missing = seen.lock().unwrap().iter().filter(|&&s| !s).count();
    assert_eq!(missing, 0, "values never received");
    assert!(
        closed_seen.load(Ordering::SeqCst),
        "the closed() task did not complete"
    );
    assert!(closed_task.done.load(Ordering::SeqCst));
    // The receiving task: at most two polls per value on average (a poll that
    // returns Pending, then the one its wake-up brings).
    assert!(
        rx_task.polls() as u64 <= 2 * N,
        "the receiving task was polled {} times for {N} values",
        rx_task.polls()
    );
    // The producer tasks sent on full rings of 2 slots, consumed by a task of
    // the same executor: they had to wait.
    assert!(
        send_task.polls() >= 2,
        "the send_async task never waited: {description}"
    );
    assert!(
        reserve_task.polls() >= 2,
        "the reserve task never waited: {description}"
    );
    assert!(
        thread_pendings.load(Ordering::Relaxed) > 0,
        "the producer threads never waited on a full ring"
    );
}

#[test]
fn executor_end_to_end_close() {
    end_to_end(End::Close);
}

#[test]
fn executor_end_to_end_drop() {
    end_to_end(End::Drop);
}

// ---------------------------------------------------------------------------------
// Idle

/// Most polls of an idle receiving task in 100 ms.
const IDLE_POLLS: usize = 3;

#[test]
fn idle_receiving_task_is_not_polled_in_a_loop() {
    let (tx, mut rx) = ring::channel::<u64>(4).expect("channel");
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut ex = Executor::new();
    let task = ex.spawn("idle receiver", {
        let got = got.clone();
        async move {
            while let Ok(v) = rx.recv_async().await {
                got.lock().unwrap().push(v);
            }
        }
    });
    let tasks = ex.tasks.clone();
    let _watchdog = Watchdog::arm(
        "idle_receiving_task_is_not_polled_in_a_loop",
        HANG_LIMIT,
        Arc::new(move || Executor::describe(&tasks)),
    );
    let executor = thread::Builder::new()
        .name("executor".into())
        .spawn(move || {
            ex.run();
            ex
        })
        .expect("spawn the executor");

    // Idle before the first value: the first poll, and no loop after it.
    let t0 = Instant::now();
    while task.polls() == 0 {
        assert!(t0.elapsed() < HANG_LIMIT, "the task was never polled");
        thread::sleep(Duration::from_millis(1));
    }
    let before = task.polls();
    thread::sleep(Duration::from_millis(100));
    let idle = task.polls();
    assert!(
        idle <= IDLE_POLLS,
        "an idle receiving task was polled {idle} times in its first 100 ms \
         ({before} when it first went idle): a self-wake loop?"
    );

    // A burst, each value on its own.
    for v in 0..10 {
        tx.send(v).expect("the receiver is alive");
        thread::sleep(Duration::from_millis(5));
    }
    let t0 = Instant::now();
    while got.lock().unwrap().len() < 10 {
        assert!(t0.elapsed() < HANG_LIMIT, "the burst never arrived");
        thread::sleep(Duration::from_millis(1));
    }
    // Idle again, between two bursts.
    let p0 = task.polls();
    thread::sleep(Duration::from_millis(100));
    let p1 = task.polls();
    assert!(
        p1 - p0 <= IDLE_POLLS,
        "an idle receiving task was polled {} times in 100 ms after a burst",
        p1 - p0
    );
    tx.send(10).expect("the receiver is alive");
    drop(tx);
    let ex = executor.join().expect("the executor panicked");
    assert!(task.done.load(Ordering::SeqCst));
    let mut got = got.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(got, (0..=10).collect::<Vec<u64>>());
    // Eleven values and an end: far below a loop's count.
    assert!(
        task.polls() <= IDLE_POLLS + 2 * 11 + 2,
        "{}",
        Executor::describe(&ex.tasks)
    );
}
