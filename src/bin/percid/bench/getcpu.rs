//! `percid bench getcpu`: what it costs to learn where the thread runs.
//!
//! percid's getters are one load from the thread's rseq area; the peers are glibc's
//! `sched_getcpu` (which itself reads the rseq area on glibc >= 2.35, else the vDSO)
//! and the raw `getcpu` system call, the cost without any of that help.

use super::{Bench, Case, Config, Measurement, Ratio};

pub const BENCH: Bench = Bench {
    name: "getcpu",
    about: "percid::current_cpu/cid/node against sched_getcpu and the getcpu syscall",
    run,
    ratios: &RATIOS,
};

const CPU: &str = "percid::current_cpu";
const CID: &str = "percid::current_cid";
const NODE: &str = "percid::current_node";
const SCHED: &str = "libc::sched_getcpu";
const SYSCALL: &str = "syscall(SYS_getcpu)";

const RATIOS: [Ratio; 3] = [
    Ratio {
        key: "speedup_vs_sched_getcpu",
        peer: SCHED,
        ours: CPU,
    },
    Ratio {
        key: "speedup_vs_syscall",
        peer: SYSCALL,
        ours: CPU,
    },
    Ratio {
        key: "cid_speedup_vs_sched_getcpu",
        peer: SCHED,
        ours: CID,
    },
];

fn run(config: &Config) -> Vec<Measurement> {
    let cases = [
        Case::looped(CPU, percid::current_cpu),
        Case::looped(CID, percid::current_cid),
        Case::looped(NODE, percid::current_node),
        Case::looped(SCHED, sched_getcpu),
        Case::looped(SYSCALL, syscall_getcpu),
    ];
    super::run(BENCH.name, &cases, config)
}

fn sched_getcpu() -> i32 {
    // SAFETY: `sched_getcpu` takes no arguments and only reads the calling thread's state.
    unsafe { libc::sched_getcpu() }
}

/// The `getcpu(2)` system call itself, bypassing the vDSO and rseq.
fn syscall_getcpu() -> u32 {
    let mut cpu: u32 = 0;
    let mut node: u32 = 0;
    // SAFETY: both out-pointers are valid, writable u32s we own for the whole call; the
    // third argument (an unused cache) may be null.
    unsafe {
        libc::syscall(
            libc::SYS_getcpu,
            &mut cpu as *mut u32,
            &mut node as *mut u32,
            std::ptr::null_mut::<libc::c_void>(),
        );
    }
    cpu
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_agree_on_a_pinned_thread() {
        // Reading twice around each call tolerates a migration in between.
        for _ in 0..100 {
            let before = syscall_getcpu();
            let sched = u32::try_from(sched_getcpu()).expect("sched_getcpu failed");
            if before == syscall_getcpu() {
                assert_eq!(sched, before);
                return;
            }
        }
        panic!("the thread migrated on every try");
    }
}
