//! The Linux rseq ABI: field offsets, signature, auxiliary-vector keys, flags.
//!
//! Sources: `include/uapi/linux/rseq.h` and `include/uapi/linux/auxvec.h` (kernel),
//! `sysdeps/unix/sysv/linux/x86/bits/rseq.h` (glibc), `include/rseq/abi.h` (librseq).
//! Every number the crate uses about the ABI is named here, once.

/// Offsets of the fields of `struct rseq` (the thread's rseq area, 32-byte aligned).
///
/// User space may write only `RSEQ_CS`; the id fields are the kernel's. From
/// Linux 7.1 a process that writes them in "optimized V2" mode is killed.
pub mod offset {
    /// `u32 cpu_id_start`: always a valid CPU number, even before registration.
    pub const CPU_ID_START: usize = 0;
    /// `u32 cpu_id`: the current CPU, or [`super::CPU_ID_UNINITIALIZED`] /
    /// [`super::CPU_ID_REGISTRATION_FAILED`].
    pub const CPU_ID: usize = 4;
    /// `u64 rseq_cs`: pointer to the armed `struct rseq_cs`; the kernel clears it on abort.
    pub const RSEQ_CS: usize = 8;
    /// `u32 flags` (deprecated per-thread flags).
    pub const FLAGS: usize = 16;
    /// `u32 node_id` (Linux 6.3; needs an active size of at least 24).
    pub const NODE_ID: usize = 20;
    /// `u32 mm_cid` (Linux 6.3; needs an active size of at least 28).
    pub const MM_CID: usize = 24;
}

/// The signature that must precede every abort handler, as registered by glibc,
/// librseq and this crate. On x86_64 it is the immediate of a `ud1` instruction
/// (`0f b9 3d 53 30 05 53`), so a stray jump into the handler traps.
#[cfg(target_arch = "x86_64")]
pub const SIGNATURE: u32 = 0x5305_3053;
/// aarch64: `BRK #0x45E0` (the architecture module does not exist yet; the value is
/// here so registration and the portable fallback agree with glibc).
#[cfg(target_arch = "aarch64")]
pub const SIGNATURE: u32 = 0xd428_bc00;
/// Other architectures: the crate never arms a critical section there, so the
/// value only has to match the registration we make ourselves.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const SIGNATURE: u32 = 0x5305_3053;

/// `cpu_id` before the first registration of the thread.
pub const CPU_ID_UNINITIALIZED: i32 = -1;
/// `cpu_id` after glibc's registration attempt failed.
pub const CPU_ID_REGISTRATION_FAILED: i32 = -2;

/// Size of the original `struct rseq`, and the smallest length the kernel accepts.
pub const ORIG_SIZE: u32 = 32;
/// Smallest alignment of the rseq area.
pub const MIN_ALIGN: u32 = 32;
/// Active size without any extension (cpu_id_start .. flags).
pub const BASE_FEATURE_SIZE: u32 = 20;
/// Active size that covers `node_id`.
pub const NODE_ID_FEATURE_SIZE: u32 = 24;
/// Active size that covers `mm_cid`.
pub const MM_CID_FEATURE_SIZE: u32 = 28;

/// `getauxval` key of the kernel's rseq feature size (Linux 6.3).
pub const AT_RSEQ_FEATURE_SIZE: libc::c_ulong = 27;
/// `getauxval` key of the rseq area's required alignment (Linux 6.3).
pub const AT_RSEQ_ALIGN: libc::c_ulong = 28;

/// `rseq(2)` flag: unregister the area (same address, length and signature).
pub const FLAG_UNREGISTER: libc::c_int = 1;

/// `membarrier(2)` commands (`include/uapi/linux/membarrier.h`).
pub mod membarrier {
    /// Lists the supported commands as a bit mask.
    pub const CMD_QUERY: libc::c_int = 0;
    /// Aborts every running rseq critical section of the process (Linux 5.10).
    pub const CMD_PRIVATE_EXPEDITED_RSEQ: libc::c_int = 1 << 7;
    /// Must be issued once before [`CMD_PRIVATE_EXPEDITED_RSEQ`].
    pub const CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ: libc::c_int = 1 << 8;
}

/// The active size of an rseq area registered by glibc, from the size glibc
/// reports in `__rseq_size` and the kernel's `AT_RSEQ_FEATURE_SIZE`.
///
/// glibc 2.35–2.39 report 32 and glibc 2.40 reports 20 whatever the kernel fills;
/// for those two values librseq's rule applies: min(32, feature size, or 20 when the
/// kernel does not report one). Any other value is the real feature size (glibc >= 2.41).
pub fn glibc_active_size(reported: u32, kernel_feature_size: u32) -> u32 {
    match reported {
        20 | 32 => {
            let kernel = if kernel_feature_size == 0 {
                BASE_FEATURE_SIZE
            } else {
                kernel_feature_size
            };
            kernel.min(ORIG_SIZE)
        }
        other => other,
    }
}

/// The length and alignment to register an area of our own with: at least the
/// original 32 bytes, and as much as the kernel's feature size asks for.
pub fn self_registration_layout(kernel_feature_size: u32, kernel_align: u32) -> (u32, u32) {
    let len = kernel_feature_size.max(ORIG_SIZE);
    let align = kernel_align.max(MIN_ALIGN).next_power_of_two();
    (len, align)
}

/// The active size of an area we registered ourselves with [`self_registration_layout`].
pub fn self_active_size(kernel_feature_size: u32) -> u32 {
    if kernel_feature_size == 0 {
        BASE_FEATURE_SIZE
    } else {
        kernel_feature_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_reported_sizes_follow_librseq_rule() {
        // glibc 2.35-2.39 on Linux 6.18 (feature size 28).
        assert_eq!(glibc_active_size(32, 28), 28);
        // glibc 2.40 on Linux 6.18.
        assert_eq!(glibc_active_size(20, 28), 28);
        // glibc 2.36 on Linux 6.1 (no AT_RSEQ_FEATURE_SIZE).
        assert_eq!(glibc_active_size(32, 0), 20);
        // A kernel that fills more than the 32 bytes glibc 2.36 registered.
        assert_eq!(glibc_active_size(32, 33), 32);
        // glibc >= 2.41 reports the real size.
        assert_eq!(glibc_active_size(33, 33), 33);
        assert_eq!(glibc_active_size(28, 28), 28);
    }

    #[test]
    fn self_registration_is_never_below_the_original_struct() {
        assert_eq!(self_registration_layout(0, 0), (32, 32));
        assert_eq!(self_registration_layout(28, 32), (32, 32));
        assert_eq!(self_registration_layout(33, 64), (33, 64));
        assert_eq!(self_active_size(0), 20);
        assert_eq!(self_active_size(28), 28);
    }
}
