//! Per-cid MPSC rings: a multi-producer, single-consumer channel made of one
//! bounded ring per cid.
//!
//! ```
//! let (tx, mut rx) = percid::ring::channel::<u64>(1024).unwrap();
//! let producers: Vec<_> = (0..4)
//!     .map(|p| {
//!         let tx = tx.clone();
//!         std::thread::spawn(move || {
//!             for i in 0..1000 {
//!                 tx.send(p * 1000 + i).unwrap();
//!             }
//!         })
//!     })
//!     .collect();
//! drop(tx);
//! let mut sum = 0;
//! while let Ok(v) = rx.recv() {
//!     sum += v;
//! }
//! for p in producers {
//!     p.join().unwrap();
//! }
//! assert_eq!(sum, (0..4000).sum::<u64>());
//! ```
//!
//! # How it works
//!
//! Every shard of the channel's arena run (a cid; in NUMA mode a (node, cid); a
//! portable lane) has its own ring: a tail word that the producers move, a head word
//! that the receiver moves, and a slot buffer, allocated when the shard first sends
//! (rings appear as cids appear: memory follows concurrency, not the CPU count).
//!
//! * **Send** is one rseq critical section, `store_payload_commit_index` (see
//!   [`crate::rseq::spec`]): check the channel's gate word (closed, or spilling),
//!   read the tail and the head of the caller's cid's ring,
//!   copy the value into the free slot (invisible: the tail has not moved), then
//!   publish it with the single committing store of `tail + 1`. Senders on one cid
//!   are serialised by rseq instead of atomics. A sender preempted anywhere in the
//!   section is aborted before it published anything, so the receiver never waits
//!   on a half-written slot, and an aborted copy leaves the value with the sender:
//!   there is never a second owner. [`Sender::send_many`] copies up to
//!   [`BATCH`] values and publishes them with one store.
//! * **Receive** visits the rings round-robin, up to 32 values per ring per visit,
//!   and returns a bounded ring's slot to the senders (publishing the ring's head) as
//!   soon as it hands the value out, so a value received frees its slot as in any
//!   bounded channel; an unbounded ring's slots go back once per visit.
//!   Senders keep their own copy of the head next to the tail and read the
//!   receiver's head only when that copy says the ring is full: a send reads no
//!   line the running receiver writes, and writes only lines of its own cid.
//! * **Wake-ups**: a send reads the receiver's state after publishing; a receiver
//!   about to sleep fences every thread with membarrier before its last look (see
//!   `signal.rs` for the argument). Blocked senders are counted; the receiver reads
//!   the count after it publishes.
//!
//! # Ordering
//!
//! Values sent from one cid's ring come out in the order they were published: FIFO
//! per ring. A thread that migrates between sends changes rings, so two values it
//! sent may come out in either order, as may values of different threads. This is
//! weaker than crossbeam's and tokio's channels, which deliver each producer's
//! values in order (one shared queue); it is the same as any sharded or per-CPU
//! queue (tokio's own scheduler keeps per-worker queues for that reason). A
//! producer that needs its own order carries a sequence number. Values that went
//! through the spill queue (below) keep each thread's order among themselves and
//! after that thread's earlier ring values.
//!
//! # Capacity
//!
//! The bound is **per cid**: each ring holds `capacity_per_cid` values, rounded up
//! to a power of two (3 becomes 4), and a send finds *its* ring full whatever the
//! others hold. How many values the whole channel holds therefore depends on how
//! many rings appeared, one per cid that ever sent (at most one cid per allowed CPU
//! runs at once; more in NUMA mode, plus a portable lane per thread without rseq):
//! 16 threads filling a channel of 1024 per cid on 2 CPUs stop at 1024 when they
//! all ran on one cid, at 2048 when they used both. [`Sender::max_capacity`] is the
//! most it can ever hold (`capacity_per_cid × every ring the arena can give`),
//! [`Receiver::rings`] how many rings exist now, [`Sender::len`] what they hold (a
//! racy sum) and [`Sender::capacity`] the difference.
//!
//! # Unbounded channels
//!
//! [`unbounded`] (or [`Builder::unbounded`]) gives the same per-cid rings, but large
//! ones ([`UNBOUNDED_CAPACITY`] slots by default) that are only *reserved*: each
//! ring's buffer is a `MAP_NORESERVE` mapping whose pages become memory as values
//! fill them, so a burst runs on the same one-section fast path as a bounded send.
//! When the receiver has caught up and the rings have touched more than
//! [`UNBOUNDED_TRIM_BYTES`] since the last time, it closes the gate for a moment
//! (sends meanwhile spill, see below), runs an rseq fence so no send is inside a
//! ring, and gives the pages of every taken slot back to the kernel
//! (`MADV_DONTNEED`): memory returns to a page or so per ring.
//!
//! A send that finds its ring full (a backlog of a whole ring) puts the value in
//! the channel's *spill queue* instead of waiting, and while that queue holds values
//! every send goes there too (the gate word the send section reads says so), so no
//! thread's values overtake each other. The receiver takes the rings first, then the
//! spill queue in batches; sends go back to the rings once it has caught up, or as
//! soon as it takes a batch while every ring is empty (it then hands that batch out
//! before any ring value), and the queue's memory is freed (the receiver keeps at
//! most 64 slots of it). Sends never wait and never fail while the receiver lives.
//!
//! # Closing and disconnection
//!
//! [`Receiver::close`] closes the channel: sends fail with their value back, blocked
//! senders and [`Sender::closed`] futures wake, and the receiver still takes what was
//! sent before, then reports the channel closed. The gate word is read inside every
//! send's critical section and `close` runs an rseq fence after setting it, so once
//! `close` returns no send can publish and every earlier one is visible. Permits
//! taken before `close` still deliver ([`Permit::send`] cannot fail), and the
//! receiver waits for them. Dropping every [`Sender`] lets the receiver take what is
//! left, then `recv` returns [`RecvError`]; dropping the [`Receiver`] drops what the
//! rings hold and makes every send fail with its value given back. Every value sent
//! is dropped exactly once: by the receiver that took it, or with the channel.
//!
//! # Waiting, idling and executors
//!
//! A blocking receive that finds every ring empty spins briefly (an adaptive pause,
//! so a receiver that has caught up does not pull the senders' lines away from
//! them), yields the thread for [`Builder::idle_yield`] (50 µs), then parks; a send
//! wakes it. An idle receiver costs no CPU after that.
//!
//! An async receive ([`Receiver::recv_async`], [`Receiver::poll_recv`], the
//! `Stream`) spins the same brief pause inside one poll, then yields the thread
//! between looks for at most [`Builder::poll_yield`] (20 µs, so a value of the same
//! burst finds it awake), then registers the task's waker and returns `Pending`; it
//! never wakes its own task. So the receiver can be
//! embedded in any executor, including one whose run queue is itself a percid ring
//! fed by the tasks' wakers (`tests/ring_executor.rs` runs one, with tasks awaiting
//! `recv_async`, `send_async` on a full ring, `reserve` and `closed`): an idle
//! receiving task is polled once per wake-up, not in a loop.
//! [`Builder::async_idle_yield`] opts in to yielding for a while before sleeping,
//! with the CPU cost its documentation gives.
//!
//! Senders blocked on a full ring register and park (threads) or store their waker
//! (tasks); the receiver wakes one once it has freed half a ring, or at once when a
//! sender waits and no wake-up is on its way, and each woken sender that sends wakes
//! the next.
//!
//! # Blocking inside an async runtime
//!
//! With feature `tokio`, a blocking call that is about to wait (`send` on a full
//! ring, `recv` on empty rings, their timeouts, `send_many`, the blocking
//! iterators) runs the wait inside `tokio::task::block_in_place`, tokio's own rule
//! for where a thread may block: in a current-thread runtime, where the wait would
//! deadlock the runtime, it panics before it registers ("percid::ring: a blocking
//! receive on empty rings would block the thread that drives a current-thread tokio
//! runtime, ...") instead of hanging; on a multi-thread runtime's worker
//! the runtime first moves its other tasks to another thread; in `spawn_blocking`
//! and outside any runtime it waits as usual. A call that does not need to wait
//! never checks. Without the feature percid cannot see the runtime: use the async
//! ends inside async code.
//!
//! # Coming from tokio, crossbeam or flume
//!
//! | tokio `sync::mpsc` | crossbeam-channel / flume | percid::ring |
//! |---|---|---|
//! | `channel(n)` | `bounded(n)` | [`channel`]`(n)?`: `n` per cid, see Capacity |
//! | `unbounded_channel()` | `unbounded()` | [`unbounded`]`()?` |
//! | `tx.send(v).await` | `tx.send_async(v).await` (flume) | [`Sender::send_async`] |
//! | `tx.blocking_send(v)` | `tx.send(v)` | [`Sender::send`] (or [`Sender::blocking_send`]) |
//! | `tx.try_send(v)`: `Full`/`Closed` | `try_send`: `Full`/`Disconnected` | [`Sender::try_send`]: `Full`/`Disconnected` |
//! | `tx.send_timeout(v, d).await` | `send_timeout(v, d)` | [`Sender::send_timeout`] (blocking), [`Sender::send_deadline`] |
//! | `reserve`, `try_reserve`, `reserve_owned` | — | the same names; a permit holds the right to send, not a slot of one ring |
//! | `closed().await`, `is_closed()` | — | the same |
//! | `downgrade()`, `WeakSender` | — | the same |
//! | `same_channel`, `strong_count`, `weak_count` | `same_channel` | the same |
//! | `capacity()`, `max_capacity()` | `capacity()` | the same, over every ring (see Capacity) |
//! | `rx.recv().await` | `rx.recv_async().await` (flume) | [`Receiver::recv_async`] |
//! | `rx.blocking_recv()` | `rx.recv()` | [`Receiver::blocking_recv`] (`Option`), [`Receiver::recv`] (`Result`) |
//! | `rx.recv_many(&mut buf, n).await` | — | [`Receiver::recv_many_async`]; blocking [`Receiver::recv_many`]; [`Receiver::try_recv_many`] |
//! | `rx.try_recv()` | `try_recv()` | [`Receiver::try_recv`] |
//! | — | `recv_timeout`, `recv_deadline` | the same |
//! | `rx.close()`, `is_closed()`, `len()`, `is_empty()` | `len()`, `is_empty()` | the same; `len` is a racy sum |
//! | `ReceiverStream` (tokio-stream) | `into_stream()` (flume) | `Receiver: Stream + FusedStream` (feature `async`) |
//! | `PollSender` (tokio-util) | `into_sink()` (flume) | [`PollSender`] (feature `async`) |
//! | — | `iter()`, `try_iter()`, `into_iter()` | the same |
//!
//! The async ends take the `_async` suffix because the plain names are the blocking
//! calls, as in flume. Orders differ (FIFO per ring, see Ordering); a bounded
//! channel's bound is per cid; [`Receiver`] is not `Clone` (one consumer).

mod blocking;
mod chan;
mod receiver;
mod sender;
mod signal;
#[cfg(feature = "async")]
mod sink;

pub use receiver::{Drain, IntoIter, Iter, Receiver, RecvFuture, RecvManyFuture, TryIter};
pub use sender::{
    BATCH, ClosedFuture, OwnedPermit, Permit, ReserveFuture, ReserveOwnedFuture, SendFuture,
    Sender, WeakSender,
};
#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub use sink::PollSender;

/// The sending end of an [`unbounded`] channel (tokio's name): the same type as a
/// bounded channel's [`Sender`], whose sends never wait.
pub type UnboundedSender<T> = Sender<T>;

/// The receiving end of an [`unbounded`] channel (tokio's name).
pub type UnboundedReceiver<T> = Receiver<T>;

use crate::cid::{self, Arena, StorageError};
use crate::sync::Arc;
use chan::{Cell, Chan, Options};
use std::alloc::Layout;
use std::fmt;
use std::time::Duration;

/// Most slots a ring may have.
pub const MAX_CAPACITY: usize = 1 << 24;

/// Most bytes one ring's slot buffer may take.
pub const MAX_RING_BYTES: usize = 1 << 30;

/// Largest alignment a value may ask for (buffers are page-aligned at best).
pub const MAX_ALIGN: usize = 4096;

/// Pages of taken slots an unbounded channel's rings may keep before the receiver,
/// once caught up, gives them back (each time costs an rseq fence).
pub const UNBOUNDED_TRIM_BYTES: usize = 2 << 20;

/// Slots per ring of an unbounded channel unless the builder says otherwise: the
/// rings are reserved address space (`MAP_NORESERVE`) whose pages become memory as
/// values fill them and go back once the receiver has caught up (see [Unbounded
/// channels](self#unbounded-channels)), so a burst stays on the per-cid fast path.
pub const UNBOUNDED_CAPACITY: usize = 1 << 22;

/// A bounded channel with rings of `capacity_per_cid` slots (rounded up to a power
/// of two): see [Capacity](self#capacity) for what bounds the whole channel.
///
/// # Errors
/// As [`Builder::build`].
///
/// ```
/// let (tx, mut rx) = percid::ring::channel::<&str>(16).unwrap();
/// tx.send("hello").unwrap();
/// assert_eq!(rx.recv(), Ok("hello"));
/// ```
pub fn channel<T>(capacity_per_cid: usize) -> Result<(Sender<T>, Receiver<T>), RingError> {
    Builder::new().capacity_per_cid(capacity_per_cid).build()
}

/// An unbounded channel: sends never wait and never fail while the receiver lives
/// (see [Unbounded channels](self#unbounded-channels)). Rings of 1024 slots per cid.
///
/// # Errors
/// As [`Builder::build`] ([`RingError::Storage`] when the arena is exhausted).
///
/// ```
/// let (tx, mut rx) = percid::ring::unbounded::<u32>().unwrap();
/// for i in 0..10_000 {
///     tx.send(i).unwrap(); // never blocks, whatever the receiver does
/// }
/// assert_eq!(rx.try_iter().count(), 10_000);
/// ```
pub fn unbounded<T>() -> Result<(UnboundedSender<T>, UnboundedReceiver<T>), RingError> {
    Builder::new().unbounded(true).build()
}

/// Configures a channel: ring capacity, unbounded, NUMA mode, idle policy, arena.
///
/// ```
/// use std::time::Duration;
/// let (tx, mut rx) = percid::ring::Builder::new()
///     .capacity_per_cid(3) // rounded up to 4
///     .idle_yield(Duration::ZERO)
///     .build::<u8>()
///     .unwrap();
/// assert_eq!(tx.capacity_per_cid(), 4);
/// tx.send(1).unwrap();
/// assert_eq!(rx.recv(), Ok(1));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Builder {
    /// `None`: 1024 slots, or [`UNBOUNDED_CAPACITY`] for an unbounded channel.
    capacity: Option<usize>,
    numa: bool,
    arena: Option<&'static Arena>,
    unbounded: bool,
    idle_yield: Duration,
    poll_yield: Duration,
    async_idle_yield: Duration,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// Rings of 1024 slots, plain (not NUMA) mode, the process-wide arena.
    pub fn new() -> Builder {
        Builder {
            capacity: None,
            numa: false,
            arena: None,
            unbounded: false,
            idle_yield: receiver::IDLE_YIELD,
            poll_yield: receiver::POLL_YIELD,
            async_idle_yield: Duration::ZERO,
        }
    }

    /// Unbounded: a send that finds its ring full spills into the channel's queue
    /// instead of waiting (see [Unbounded channels](self#unbounded-channels)); the
    /// rings keep `capacity_per_cid` slots each.
    pub fn unbounded(mut self, unbounded: bool) -> Builder {
        self.unbounded = unbounded;
        self
    }

    /// How long a blocking receive that found every ring empty keeps yielding the
    /// thread before it sleeps (default 50 µs). Longer keeps a busy consumer awake
    /// between bursts at the cost of that much CPU per idle spell; zero sleeps at
    /// once (each wake-up then costs the sender a system call).
    pub fn idle_yield(mut self, idle_yield: Duration) -> Builder {
        self.idle_yield = idle_yield;
        self
    }

    /// How long one poll of an async receive that found every ring empty may keep
    /// its thread, yielding it to the OS between looks, before it registers its
    /// waker and returns `Pending` (default 20 µs). The poll never wakes its own
    /// task; this only keeps a receiver that has just caught up from going to sleep
    /// (an rseq fence, then a wake-up system call for the next sender) between two
    /// values of a burst. Zero registers at once, for executors that must not be
    /// held up at all; each idle spell then costs that fence and wake-up.
    pub fn poll_yield(mut self, poll_yield: Duration) -> Builder {
        self.poll_yield = poll_yield;
        self
    }

    /// How long an async receive that found every ring empty yields its thread and
    /// wakes its own task before it registers and sleeps (default zero: it sleeps at
    /// once). Opting in turns the receiving task into a poll loop for that long after
    /// every idle spell: the thread's CPU is busy the whole time, and an executor
    /// that queues self-woken tasks behind a bounded queue the task's own wakers
    /// feed can stall. Worth it only for a consumer that owns its executor thread
    /// and co-located producers (it let 8 producers on 2 CPUs send at 37 ns instead
    /// of 200 ns a value in an earlier measurement).
    pub fn async_idle_yield(mut self, budget: Duration) -> Builder {
        self.async_idle_yield = budget;
        self
    }

    /// Slots per ring; rounded up to a power of two. Default 1024; for an unbounded
    /// channel [`UNBOUNDED_CAPACITY`] (fewer for values too large for
    /// [`MAX_RING_BYTES`]), reserved, not committed.
    pub fn capacity_per_cid(mut self, capacity: usize) -> Builder {
        self.capacity = Some(capacity);
        self
    }

    /// NUMA mode: rings keyed by (node, cid), read in the same critical section,
    /// their words and slot buffers in that node's memory (see [`crate::numa`]).
    /// Uses the process-wide NUMA arena unless [`Builder::arena`] names one.
    pub fn numa(mut self, numa: bool) -> Builder {
        self.numa = numa;
        self
    }

    /// The arena that holds the rings' words (tests, isolation); a NUMA arena in
    /// NUMA mode.
    pub fn arena(mut self, arena: &'static Arena) -> Builder {
        self.arena = Some(arena);
        self
    }

    /// Builds the channel.
    ///
    /// # Errors
    /// [`RingError::ZeroCapacity`], [`RingError::CapacityTooLarge`],
    /// [`RingError::AlignTooLarge`], [`RingError::RingTooLarge`] for values whose
    /// ring would pass [`MAX_RING_BYTES`], [`RingError::NotNumaArena`] for a plain
    /// arena in NUMA mode (or a NUMA arena outside it), [`RingError::Storage`] when
    /// the arena cannot allocate.
    pub fn build<T>(self) -> Result<(Sender<T>, Receiver<T>), RingError> {
        let capacity = match self.capacity {
            Some(capacity) => capacity,
            // As many as a ring may take, up to the default.
            None if self.unbounded => {
                let fit = MAX_RING_BYTES / size_of::<Cell<T>>().max(1);
                UNBOUNDED_CAPACITY.min(1 << fit.max(1).ilog2())
            }
            None => 1024,
        };
        if capacity == 0 {
            return Err(RingError::ZeroCapacity);
        }
        if capacity > MAX_CAPACITY {
            return Err(RingError::CapacityTooLarge {
                capacity,
                max: MAX_CAPACITY,
            });
        }
        let mut capacity = capacity.next_power_of_two();
        if self.unbounded && self.capacity.is_none() {
            // Where the kernel will not reserve that much address space (strict
            // overcommit ignores MAP_NORESERVE), a smaller default ring.
            while capacity > 1024 && !can_reserve(capacity * size_of::<Cell<T>>()) {
                capacity /= 2;
            }
        }
        let align = align_of::<Cell<T>>();
        if align > MAX_ALIGN {
            return Err(RingError::AlignTooLarge {
                align,
                max: MAX_ALIGN,
            });
        }
        let bytes = capacity.saturating_mul(size_of::<Cell<T>>());
        if bytes > MAX_RING_BYTES {
            return Err(RingError::RingTooLarge {
                bytes,
                max: MAX_RING_BYTES,
            });
        }
        // Zero-sized values still get a buffer address (nothing is copied into it).
        let layout = Layout::from_size_align(bytes.max(8), align.max(64)).map_err(|_| {
            RingError::RingTooLarge {
                bytes,
                max: MAX_RING_BYTES,
            }
        })?;
        let arena = match self.arena {
            Some(arena) => arena,
            None if self.numa => cid::numa_global(),
            None => cid::global(),
        };
        if arena.is_numa() != self.numa {
            return Err(RingError::NotNumaArena);
        }
        let options = Options {
            unbounded: self.unbounded,
            idle_yield: self.idle_yield,
            poll_yield: self.poll_yield,
            async_idle_yield: self.async_idle_yield,
        };
        let chan = Arc::new(
            Chan::<T>::new(arena, capacity as u64, layout, options).map_err(RingError::Storage)?,
        );
        let rx = Receiver::new(chan.clone());
        Ok((Sender { chan }, rx))
    }
}

/// Whether a `MAP_NORESERVE` mapping of `bytes` can be made here now (the unbounded
/// rings' buffers).
fn can_reserve(bytes: usize) -> bool {
    // SAFETY: an anonymous mapping, unmapped at once; no memory of ours is touched.
    unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            bytes.max(1),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if ptr == libc::MAP_FAILED {
            return false;
        }
        libc::munmap(ptr, bytes.max(1));
    }
    true
}

/// Why a channel could not be built.
///
/// ```
/// use percid::ring::{RingError, channel};
/// assert_eq!(channel::<u8>(0).unwrap_err(), RingError::ZeroCapacity);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RingError {
    /// A capacity of zero.
    ZeroCapacity,
    /// A capacity above [`MAX_CAPACITY`].
    CapacityTooLarge {
        /// Capacity asked for.
        capacity: usize,
        /// The limit.
        max: usize,
    },
    /// A value type aligned above [`MAX_ALIGN`].
    AlignTooLarge {
        /// The type's alignment.
        align: usize,
        /// The limit.
        max: usize,
    },
    /// One ring would take more than [`MAX_RING_BYTES`].
    RingTooLarge {
        /// Bytes one ring would take.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// NUMA mode with a plain arena, or a NUMA arena without NUMA mode.
    NotNumaArena,
    /// The arena could not allocate the rings' words.
    Storage(StorageError),
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::ZeroCapacity => f.write_str("a ring needs a capacity of at least 1"),
            RingError::CapacityTooLarge { capacity, max } => {
                write!(
                    f,
                    "a ring capacity of {capacity} exceeds the maximum of {max}"
                )
            }
            RingError::AlignTooLarge { align, max } => write!(
                f,
                "values aligned to {align} bytes exceed the supported alignment of {max}"
            ),
            RingError::RingTooLarge { bytes, max } => {
                write!(
                    f,
                    "one ring would take {bytes} bytes, more than the {max} allowed"
                )
            }
            RingError::NotNumaArena => {
                f.write_str("NUMA mode needs a NUMA arena, and a NUMA arena needs NUMA mode")
            }
            RingError::Storage(e) => write!(f, "allocating the rings' words failed: {e}"),
        }
    }
}

impl std::error::Error for RingError {}

/// Why [`Sender::try_send`] did not send; the value comes back.
///
/// ```
/// use percid::ring::{TrySendError, channel};
/// let (tx, mut rx) = channel::<String>(1).unwrap();
/// rx.close();
/// let err = tx.try_send("b".into()).unwrap_err();
/// assert!(err.is_disconnected());
/// assert_eq!(err.into_inner(), "b"); // the value comes back
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The ring of the caller's cid is full.
    Full(T),
    /// The receiver closed the channel or is gone (tokio's `Closed`).
    Disconnected(T),
}

impl<T> TrySendError<T> {
    /// The value that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(v) | TrySendError::Disconnected(v) => v,
        }
    }

    /// Whether the ring was full.
    pub fn is_full(&self) -> bool {
        matches!(self, TrySendError::Full(_))
    }

    /// Whether the receiver is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, TrySendError::Disconnected(_))
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Disconnected(_) => f.write_str("Disconnected(..)"),
        }
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("sending on a full ring"),
            TrySendError::Disconnected(_) => {
                f.write_str("sending on a closed channel or one without receiver")
            }
        }
    }
}

impl<T> std::error::Error for TrySendError<T> {}

/// Why a blocking or async send failed: the receiver is gone. The value comes back.
///
/// ```
/// let (tx, rx) = percid::ring::channel::<u32>(4).unwrap();
/// drop(rx);
/// assert_eq!(tx.send(3).unwrap_err().into_inner(), 3);
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SendError<T>(pub T);

impl<T> SendError<T> {
    /// The value that was not sent.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendError(..)")
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sending on a channel without receiver")
    }
}

impl<T> std::error::Error for SendError<T> {}

/// Why [`Sender::send_timeout`] did not send; the value comes back.
///
/// ```
/// use std::time::Duration;
/// let (tx, rx) = percid::ring::channel::<u32>(1).unwrap();
/// drop(rx);
/// let err = tx.send_timeout(3, Duration::from_millis(1)).unwrap_err();
/// assert!(err.is_disconnected());
/// assert_eq!(err.into_inner(), 3);
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SendTimeoutError<T> {
    /// No slot freed before the deadline.
    Timeout(T),
    /// The receiver closed the channel or is gone.
    Disconnected(T),
}

impl<T> SendTimeoutError<T> {
    /// The value that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            SendTimeoutError::Timeout(v) | SendTimeoutError::Disconnected(v) => v,
        }
    }

    /// Whether the deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, SendTimeoutError::Timeout(_))
    }

    /// Whether the receiver closed the channel or is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, SendTimeoutError::Disconnected(_))
    }
}

impl<T> fmt::Debug for SendTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendTimeoutError::Timeout(_) => f.write_str("Timeout(..)"),
            SendTimeoutError::Disconnected(_) => f.write_str("Disconnected(..)"),
        }
    }
}

impl<T> fmt::Display for SendTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendTimeoutError::Timeout(_) => f.write_str("timed out sending on a full ring"),
            SendTimeoutError::Disconnected(_) => {
                f.write_str("sending on a closed channel or one without receiver")
            }
        }
    }
}

impl<T> std::error::Error for SendTimeoutError<T> {}

/// Why [`Receiver::recv_timeout`] returned nothing.
///
/// ```
/// use std::time::Duration;
/// use percid::ring::RecvTimeoutError;
/// let (tx, mut rx) = percid::ring::channel::<u32>(1).unwrap();
/// assert_eq!(rx.recv_timeout(Duration::from_millis(1)), Err(RecvTimeoutError::Timeout));
/// drop(tx);
/// assert_eq!(rx.recv_timeout(Duration::from_millis(1)), Err(RecvTimeoutError::Disconnected));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvTimeoutError {
    /// Nothing came before the deadline.
    Timeout,
    /// The channel is closed (or every sender gone) and empty.
    Disconnected,
}

impl fmt::Display for RecvTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvTimeoutError::Timeout => f.write_str("timed out receiving on empty rings"),
            RecvTimeoutError::Disconnected => {
                f.write_str("receiving on an empty channel without senders")
            }
        }
    }
}

impl std::error::Error for RecvTimeoutError {}

/// Why [`Receiver::try_recv`] returned nothing.
///
/// ```
/// use percid::ring::TryRecvError;
/// let (tx, mut rx) = percid::ring::channel::<u32>(1).unwrap();
/// assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
/// drop(tx);
/// assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryRecvError {
    /// Every ring is empty now.
    Empty,
    /// Every ring is empty and every sender is gone.
    Disconnected,
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("receiving on empty rings"),
            TryRecvError::Disconnected => {
                f.write_str("receiving on an empty channel without senders")
            }
        }
    }
}

impl std::error::Error for TryRecvError {}

/// Why a blocking or async receive ended: every sender is gone and nothing is left.
///
/// ```
/// let (tx, mut rx) = percid::ring::channel::<u32>(1).unwrap();
/// drop(tx);
/// assert_eq!(rx.recv(), Err(percid::ring::RecvError));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvError;

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("receiving on an empty channel without senders")
    }
}

impl std::error::Error for RecvError {}
