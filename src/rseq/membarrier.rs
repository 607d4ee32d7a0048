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
use std::sync::OnceLock;

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

/// Registers the process for the rseq fence, once.
fn registered() -> Result<(), MembarrierError> {
    static REGISTERED: OnceLock<Result<(), MembarrierError>> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let supported = membarrier(cmd::CMD_QUERY).map_err(MembarrierError::Os)?;
        if supported & libc::c_long::from(cmd::CMD_PRIVATE_EXPEDITED_RSEQ) == 0 {
            return Err(MembarrierError::Unsupported);
        }
        membarrier(cmd::CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ).map_err(MembarrierError::Os)?;
        Ok(())
    })
}

/// Whether [`fence_rseq`] works here.
pub fn fence_available() -> bool {
    registered().is_ok()
}

/// Aborts every rseq critical section running in this process, on every CPU, and
/// returns once they are all out of their sections. Costs an IPI per CPU running a
/// thread of the process (tens of microseconds): slow-path use only.
pub fn fence_rseq() -> Result<(), MembarrierError> {
    registered()?;
    membarrier(cmd::CMD_PRIVATE_EXPEDITED_RSEQ).map_err(MembarrierError::Os)?;
    Ok(())
}
