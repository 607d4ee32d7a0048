//! A small multi-threaded executor whose spawn-from-any-thread queue is a
//! `percid::ring`, used by `examples/executor.rs` and by `percid bench ring` (both
//! include this file with `#[path]`).
//!
//! # Design
//!
//! A percid ring is MPSC: any number of threads send, one thread receives. So each
//! worker owns one ring as its *inject queue*, and nothing else ever receives from
//! it:
//!
//! * **Spawning or waking from outside** (a thread that is not one of this
//!   executor's workers) sends the task to a worker's ring. Each outside thread picks
//!   workers round-robin with a counter of its own (a thread-local, seeded
//!   differently per thread), so spawners share no counter, no lock and no cache
//!   line: the send itself lands in the sender's cid's sub-ring, which is the point
//!   of percid's ring. Sends block while that sub-ring is full: spawners are pushed
//!   back, workers never are.
//! * **Spawning or waking on a worker** (a task spawning another, a channel waking
//!   its peer task) stays on that worker, which alone touches its local queue.
//!   Workers therefore never send to a ring, so no worker can block on another's
//!   full ring, and no cycle of full rings can deadlock them. As in tokio, the task
//!   woken last by another task goes to a *next* slot and runs right after the
//!   current one (a consumer woken by a send runs before the thousand senders queued
//!   behind it, instead of after them); at most [`MAX_NEXT_STREAK`] times in a row,
//!   so two tasks waking each other cannot starve the queue. A task that wakes
//!   itself (`yield_now`) goes to the back of the queue.
//! * **A worker** runs up to [`LOCAL_BURST`] tasks from its local queue, then drains
//!   its ring without blocking (`recv_many`, up to [`INJECT_BATCH`]) into the local
//!   queue, so injected tasks are never starved by busy local ones. With both empty
//!   it blocks in the ring's `recv` until a spawner or an outside waker sends.
//!
//! There is no work stealing: a task runs on the worker it was injected to, or that
//! last woke it. That keeps the executor short; the round-robin injection spreads
//! the outside work evenly, which is the workload it is meant for.
//!
//! A task is one allocation (`Arc<Task<F>>`, the future inline, as tokio's task
//! cell), with a `queued` flag so a task woken many times is queued once, and a
//! mutex around the future so two workers never poll it at once (a task woken from
//! outside while it runs may be queued on another worker; that worker waits on the
//! mutex, then polls it again, which is allowed).
//!
//! Tasks have no join handles; [`Executor::completed`] counts the tasks that ran to
//! completion (per worker, summed when read). [`Executor::shutdown`] (or dropping the
//! executor) stops the workers and drops the tasks that had not completed.

// Each includer uses a different subset.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::JoinHandle;

use percid::ring::{Receiver, Sender, TryRecvError};

/// Slots per cid of each worker's inject ring.
pub const INJECT_CAPACITY_PER_CID: usize = 1024;

/// Injected tasks a worker takes from its ring at a time.
pub const INJECT_BATCH: usize = 64;

/// Local tasks a worker runs before it looks at its ring again.
pub const LOCAL_BURST: usize = 64;

/// Tasks a worker takes from its *next* slot in a row before it takes the oldest
/// of its queue instead.
pub const MAX_NEXT_STREAK: usize = 3;

/// What a worker's ring carries.
enum Msg {
    Run(Arc<dyn Runnable>),
    Stop,
}

/// A task, type-erased: polled by the worker that dequeued it.
trait Runnable: Send + Sync {
    /// Polls the future once; true when it has completed (now, not before).
    fn run(self: Arc<Self>) -> bool;
}

/// The future of a task and its scheduling state.
struct Task<F> {
    /// `None` once the future completed.
    future: Mutex<Option<F>>,
    /// Set while the task sits in a queue (a ring or a local one): a wake of a task
    /// already queued does nothing.
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl<F: Future<Output = ()> + Send + 'static> Runnable for Task<F> {
    fn run(self: Arc<Self>) -> bool {
        // Cleared before the poll: a wake during the poll queues the task again.
        self.queued.store(false, Ordering::Release);
        let mut slot = self.future.lock().unwrap_or_else(|p| p.into_inner());
        let Some(future) = slot.as_mut() else {
            return false; // completed already; this was a stale wake
        };
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        // SAFETY: the future lives in the task's allocation, behind the mutex, and is
        // never moved out of it: it is dropped in place (`*slot = None`) or with the
        // task. So it stays pinned from its first poll on.
        let future = unsafe { Pin::new_unchecked(future) };
        if future.poll(&mut cx).is_ready() {
            *slot = None;
            return true;
        }
        false
    }
}

impl<F: Future<Output = ()> + Send + 'static> Wake for Task<F> {
    fn wake(self: Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            let shared = self.shared.clone();
            shared.schedule(self);
        }
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.clone().wake();
    }
}

/// What tasks and spawners share.
struct Shared {
    /// Tells this executor's workers from other threads (and other executors').
    id: usize,
    /// Each worker's inject ring.
    inject: Vec<Sender<Msg>>,
    /// Tasks completed, per worker (each on its own cache lines).
    completed: Vec<Padded<AtomicU64>>,
}

#[repr(align(128))]
struct Padded<T>(T);

/// Numbers executors, so a worker thread knows which executor it belongs to.
static NEXT_EXECUTOR: AtomicUsize = AtomicUsize::new(1);

/// Seeds each thread's round-robin counter differently.
static NEXT_SPAWNER: AtomicUsize = AtomicUsize::new(0);

/// A worker's own state, in a thread-local of the worker thread.
struct Local {
    executor: usize,
    queue: VecDeque<Arc<dyn Runnable>>,
    /// The task woken last by another task on this worker: it runs next.
    next: Option<Arc<dyn Runnable>>,
    /// Address of the task being polled (0 between polls), to tell a task waking
    /// itself from one woken by another.
    running: usize,
}

/// A task's address, the same through every `Arc` of it.
fn address(task: &Arc<dyn Runnable>) -> usize {
    Arc::as_ptr(task).cast::<()>() as usize
}

thread_local! {
    /// Set on worker threads for their lifetime.
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
    /// This thread's round-robin position over workers; `usize::MAX` until first
    /// used.
    static ROUND_ROBIN: Cell<usize> = const { Cell::new(usize::MAX) };
}

impl Shared {
    /// Queues a task: on this worker's local queue when called on one of this
    /// executor's workers, else in a worker's ring.
    fn schedule(&self, task: Arc<dyn Runnable>) {
        let task = LOCAL.with(|local| match local.borrow_mut().as_mut() {
            Some(local) if local.executor == self.id => {
                if address(&task) == local.running {
                    local.queue.push_back(task);
                } else if let Some(bumped) = local.next.replace(task) {
                    local.queue.push_back(bumped);
                }
                None
            }
            _ => Some(task),
        });
        if let Some(task) = task {
            let worker = ROUND_ROBIN.with(|rr| {
                let mut next = rr.get();
                if next == usize::MAX {
                    next = NEXT_SPAWNER.fetch_add(1, Ordering::Relaxed);
                }
                rr.set(next.wrapping_add(1));
                next % self.inject.len()
            });
            // A ring whose worker is gone (the executor shut down): the task is
            // dropped, as at shutdown.
            let _ = self.inject[worker].send(Msg::Run(task));
        }
    }

    fn spawn<F: Future<Output = ()> + Send + 'static>(self: &Arc<Self>, future: F) {
        let task = Arc::new(Task {
            future: Mutex::new(Some(future)),
            queued: AtomicBool::new(true),
            shared: self.clone(),
        });
        self.schedule(task);
    }
}

/// Spawns onto an [`Executor`] from anywhere, tasks included; cheap to clone.
#[derive(Clone)]
pub struct Spawner(Arc<Shared>);

impl Spawner {
    /// Queues `future` to run on one of the workers.
    pub fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        self.0.spawn(future);
    }
}

/// The executor: its workers, and the rings that feed them.
pub struct Executor {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Executor {
    /// Starts `workers` worker threads (at least one).
    pub fn new(workers: usize) -> Executor {
        let workers = workers.max(1);
        let (inject, receivers): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| {
                percid::ring::channel::<Msg>(INJECT_CAPACITY_PER_CID)
                    .unwrap_or_else(|e| panic!("executor: cannot build an inject ring: {e:?}"))
            })
            .unzip();
        let shared = Arc::new(Shared {
            id: NEXT_EXECUTOR.fetch_add(1, Ordering::Relaxed),
            inject,
            completed: (0..workers).map(|_| Padded(AtomicU64::new(0))).collect(),
        });
        let workers = receivers
            .into_iter()
            .enumerate()
            .map(|(worker, rx)| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("executor-{worker}"))
                    .spawn(move || work(&shared, worker, rx))
                    .expect("executor: cannot start a worker thread")
            })
            .collect();
        Executor { shared, workers }
    }

    /// Queues `future` to run on one of the workers; callable from any thread.
    pub fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        self.shared.spawn(future);
    }

    /// A handle that spawns onto this executor, for tasks and other threads.
    pub fn spawner(&self) -> Spawner {
        Spawner(self.shared.clone())
    }

    /// Tasks that have run to completion so far.
    pub fn completed(&self) -> u64 {
        self.shared
            .completed
            .iter()
            .map(|c| c.0.load(Ordering::Acquire))
            .sum()
    }

    /// Stops the workers once they have run what they already dequeued, and waits
    /// for them. Tasks not completed are dropped.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for tx in &self.shared.inject {
            let _ = tx.send(Msg::Stop);
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A worker thread: runs its local queue, refills it from its ring, blocks on the
/// ring when there is nothing to do.
fn work(shared: &Shared, worker: usize, mut rx: Receiver<Msg>) {
    LOCAL.with(|local| {
        *local.borrow_mut() = Some(Local {
            executor: shared.id,
            queue: VecDeque::new(),
            next: None,
            running: 0,
        });
    });
    // The next task to run: the *next* slot's (unless it ran `MAX_NEXT_STREAK` times
    // in a row: then it joins the queue), else the queue's oldest. Marked running.
    let mut streak = 0;
    let mut take = || {
        LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            let l = l.as_mut()?;
            let task = match l.next.take() {
                Some(task) if streak < MAX_NEXT_STREAK => {
                    streak += 1;
                    Some(task)
                }
                other => {
                    streak = 0;
                    l.queue.extend(other);
                    l.queue.pop_front()
                }
            };
            l.running = task.as_ref().map_or(0, address);
            task
        })
    };
    let pop = || {
        LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            let l = l.as_mut()?;
            l.next.take().or_else(|| l.queue.pop_front())
        })
    };
    let push = |task| LOCAL.with(|l| l.borrow_mut().as_mut().map(|l| l.queue.push_back(task)));
    let completed = &shared.completed[worker].0;
    let mut inject = Vec::with_capacity(INJECT_BATCH);
    let mut stopping = false;
    while !stopping {
        let mut ran = 0;
        while ran < LOCAL_BURST {
            let Some(task) = take() else { break };
            if task.run() {
                completed.fetch_add(1, Ordering::Release);
            }
            LOCAL.with(|l| l.borrow_mut().as_mut().map(|l| l.running = 0));
            ran += 1;
        }
        if rx.try_recv_many(&mut inject, INJECT_BATCH).unwrap_or(0) == 0 && ran == 0 {
            // Nothing local, nothing injected: wait for a spawner.
            match rx.recv() {
                Ok(msg) => inject.push(msg),
                Err(_) => break,
            }
        }
        for msg in inject.drain(..) {
            match msg {
                Msg::Run(task) => {
                    push(task);
                }
                Msg::Stop => stopping = true,
            }
        }
    }
    // Drop what is left here, on the worker: a task's drop may wake others, which
    // lands in this (still set) local queue rather than in a ring.
    while let Some(task) = pop() {
        drop(task);
    }
    loop {
        match rx.try_recv() {
            Ok(msg) => drop(msg),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
        }
        while let Some(task) = pop() {
            drop(task);
        }
    }
    LOCAL.with(|local| *local.borrow_mut() = None);
}

/// Yields once: wakes itself and returns `Pending` the first time it is polled.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}
