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
//!   [`crate::rseq::spec`]): read the tail and the head of the caller's cid's ring,
//!   copy the value into the free slot (invisible: the tail has not moved), then
//!   publish it with the single committing store of `tail + 1`. Senders on one cid
//!   are serialised by rseq instead of atomics. A sender preempted anywhere in the
//!   section is aborted before it published anything, so the receiver never waits
//!   on a half-written slot, and an aborted copy leaves the value with the sender:
//!   there is never a second owner. [`Sender::send_many`] copies up to
//!   [`BATCH`] values and publishes them with one store.
//! * **Receive** visits the rings round-robin, up to 32 values per ring per visit,
//!   and returns taken slots to the senders by publishing the ring's head at the end
//!   of each visit, whenever a sender waits, and whenever it finds every ring empty.
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
//! weaker than crossbeam's and tokio's bounded channels, which deliver each
//! producer's values in order (one shared queue); it is the same as any sharded or
//! per-CPU queue (tokio's own scheduler keeps per-worker queues for that reason). A
//! producer that needs its own order carries a sequence number.
//!
//! # Capacity and disconnection
//!
//! Each ring holds `capacity_per_cid` values (rounded up to a power of two); a send
//! finds *its* ring full, whatever the others hold. Dropping every [`Sender`] lets
//! the receiver take what is left, then `recv` returns [`RecvError`]; dropping the
//! [`Receiver`] drops what the rings hold and makes every send fail with its value
//! given back. Every value sent is dropped exactly once: by the receiver that took
//! it, or with the channel.

mod chan;
mod receiver;
mod sender;
mod signal;

pub use receiver::{Drain, Receiver, RecvFuture};
pub use sender::{BATCH, SendFuture, Sender};

use crate::cid::{self, Arena, StorageError};
use crate::sync::Arc;
use chan::{Cell, Chan};
use std::alloc::Layout;
use std::fmt;

/// Most slots a ring may have.
pub const MAX_CAPACITY: usize = 1 << 24;

/// Most bytes one ring's slot buffer may take.
pub const MAX_RING_BYTES: usize = 1 << 30;

/// Largest alignment a value may ask for (buffers are page-aligned at best).
pub const MAX_ALIGN: usize = 4096;

/// A channel with rings of `capacity_per_cid` slots (rounded up to a power of two).
///
/// # Errors
/// As [`Builder::build`].
pub fn channel<T>(capacity_per_cid: usize) -> Result<(Sender<T>, Receiver<T>), RingError> {
    Builder::new().capacity_per_cid(capacity_per_cid).build()
}

/// Configures a channel: ring capacity, NUMA mode, arena.
#[derive(Clone, Copy, Debug)]
pub struct Builder {
    capacity: usize,
    numa: bool,
    arena: Option<&'static Arena>,
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
            capacity: 1024,
            numa: false,
            arena: None,
        }
    }

    /// Slots per ring; rounded up to a power of two.
    pub fn capacity_per_cid(mut self, capacity: usize) -> Builder {
        self.capacity = capacity;
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
        if self.capacity == 0 {
            return Err(RingError::ZeroCapacity);
        }
        if self.capacity > MAX_CAPACITY {
            return Err(RingError::CapacityTooLarge {
                capacity: self.capacity,
                max: MAX_CAPACITY,
            });
        }
        let capacity = self.capacity.next_power_of_two();
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
        let chan =
            Arc::new(Chan::<T>::new(arena, capacity as u64, layout).map_err(RingError::Storage)?);
        let rx = Receiver::new(chan.clone());
        Ok((Sender { chan }, rx))
    }
}

/// Why a channel could not be built.
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
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The ring of the caller's cid is full.
    Full(T),
    /// The receiver is gone.
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
            TrySendError::Disconnected(_) => f.write_str("sending on a channel without receiver"),
        }
    }
}

impl<T> std::error::Error for TrySendError<T> {}

/// Why a blocking or async send failed: the receiver is gone. The value comes back.
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

/// Why [`Receiver::try_recv`] returned nothing.
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvError;

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("receiving on an empty channel without senders")
    }
}

impl std::error::Error for RecvError {}
