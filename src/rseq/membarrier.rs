//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ)`: abort every running critical
//! section of the process.
//!
//! A structure that must touch another cid's shard (draining an idle cid's cache,
//! reclaiming a sub-ring) first makes new sections on that shard fail (by publishing a
//! state they check), then calls [`fence_rseq`]: when it returns, every section that
//! started before the state change has either committed or aborted, on every CPU.
//! The command cannot target one cid, only CPUs, so it always fences them all.

use super::abi::membarrier as cmd;
use std::fmt;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};

/// Why the rseq fence is not available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembarrierError {
    /// The kernel lacks `MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ` (before Linux 5.10,
    /// or membarrier is filtered): callers must use a fallback protocol.
    Unsupported,
    /// The system call failed with this errno.
    Os(i32),
}

impl fmt::Display for MembarrierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MembarrierError::Unsupported => {
                f.write_str("membarrier(PRIVATE_EXPEDITED_RSEQ) is not supported by this kernel")
            }
            MembarrierError::Os(errno) => write!(
                f,
                "membarrier failed: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
        }
    }
}

impl std::error::Error for MembarrierError {}

fn membarrier(command: libc::c_int) -> Result<libc::c_long, i32> {
    // SAFETY: membarrier takes a command, flags and a CPU id; no memory is passed.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, command, 0, 0) };
    if rc < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(rc)
    }
}

/// Registration state: not tried yet (or failed transiently), registered, or
/// refused for good.
const UNKNOWN: u8 = 0;
const READY: u8 = 1;
const UNSUPPORTED: u8 = 2;
const REFUSED: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
/// The errno of a refusal (`REFUSED`).
static REFUSED_ERRNO: AtomicI32 = AtomicI32::new(0);

/// Registers the process for the rseq fence. No lock and no `Once`: callers that
/// find it not done yet all make the (idempotent) system calls themselves. A
/// thread that waited on another's registration would hang forever in a child
/// forked while that other thread was inside it, and the kernel's registration can
/// take milliseconds (it waits for an RCU grace period). Only a definite answer is
/// kept: a transient failure (`EINTR`, `EAGAIN`, `ENOMEM`) is tried again next time.
fn registered() -> Result<(), MembarrierError> {
    match STATE.load(Ordering::Acquire) {
        READY => return Ok(()),
        UNSUPPORTED => return Err(MembarrierError::Unsupported),
        REFUSED => return Err(MembarrierError::Os(REFUSED_ERRNO.load(Ordering::Relaxed))),
        _ => {}
    }
    let result = membarrier(cmd::CMD_QUERY).and_then(|supported| {
        if supported & libc::c_long::from(cmd::CMD_PRIVATE_EXPEDITED_RSEQ) == 0 {
            return Ok(false);
        }
        membarrier(cmd::CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ).map(|_| true)
    });
    match result {
        Ok(true) => {
            STATE.store(READY, Ordering::Release);
            Ok(())
        }
        Ok(false) => {
            STATE.store(UNSUPPORTED, Ordering::Release);
            Err(MembarrierError::Unsupported)
        }
        Err(errno) if matches!(errno, libc::EINTR | libc::EAGAIN | libc::ENOMEM) => {
            Err(MembarrierError::Os(errno))
        }
        Err(errno) => {
            REFUSED_ERRNO.store(errno, Ordering::Relaxed);
            STATE.store(REFUSED, Ordering::Release);
            Err(MembarrierError::Os(errno))
        }
    }
}

/// Whether [`fence_rseq`] works here (registers the process for it on first call).
///
/// ```
/// // Under valgrind or on kernels before 5.10 it may not.
/// if percid::rseq::fence_available() {
///     percid::rseq::fence_rseq().unwrap();
/// }
/// ```
pub fn fence_available() -> bool {
    registered().is_ok()
}

/// Aborts every rseq critical section running in this process, on every CPU, and
/// returns once they are all out of their sections. Costs an IPI per CPU running a
/// thread of the process (tens of microseconds): slow-path use only.
///
/// # Errors
/// [`MembarrierError::Unsupported`] when the kernel has no
/// `MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ` (before 5.10, or under valgrind), and
/// [`MembarrierError::Os`] when the registration or the fence itself fails.
///
/// ```
/// match percid::rseq::fence_rseq() {
///     Ok(()) => {} // every section that was running has committed or aborted
///     Err(e) => eprintln!("no rseq fence here: {e}"),
/// }
/// ```
pub fn fence_rseq() -> Result<(), MembarrierError> {
    registered()?;
    membarrier(cmd::CMD_PRIVATE_EXPEDITED_RSEQ).map_err(MembarrierError::Os)?;
    Ok(())
}
