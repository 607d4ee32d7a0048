//! An unbounded channel's memory follows its backlog: a burst makes ring pages (or
//! spill-queue memory) resident, and once the receiver has caught up they go back to
//! the kernel. Measured as the process's resident set (`/proc/self/statm`), one test
//! at a time (a lock serialises them: the test harness runs tests on threads of one
//! process), with margins far from what a regression would show.

use percid::ring::{Builder, Receiver, Sender, TryRecvError, unbounded};
use std::sync::Mutex;

/// Tests in this file measure the process's resident set: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const MIB: usize = 1 << 20;

/// A 64-byte value: a burst of 500 000 of them is 32 MiB.
type Msg = [u64; 8];

fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("resident pages");
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    pages * page
}

/// Sends `n` values from this thread, then receives them all (checking the sum)
/// until the receiver reports the rings empty, which is when it trims.
fn burst(tx: &Sender<Msg>, rx: &mut Receiver<Msg>, n: u64) -> usize {
    for i in 0..n {
        tx.send([i; 8]).expect("receiver alive");
    }
    let peak = resident();
    let mut sum = 0u64;
    let mut count = 0u64;
    loop {
        match rx.try_recv() {
            Ok(v) => {
                assert!(v.iter().all(|&w| w == v[0]), "a torn value");
                sum += v[0];
                count += 1;
            }
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Disconnected) => panic!("disconnected with a sender alive"),
        }
    }
    assert_eq!(count, n, "every value once");
    assert_eq!(sum, n * (n - 1) / 2);
    peak
}

#[test]
fn unbounded_ring_pages_go_back_once_the_receiver_caught_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (tx, mut rx) = unbounded::<Msg>().expect("channel");
    let base = resident();
    for round in 0..3 {
        let peak = burst(&tx, &mut rx, 500_000);
        let after = resident();
        assert!(
            peak >= base + 24 * MIB,
            "round {round}: a 32 MiB burst made only {} MiB resident",
            peak.saturating_sub(base) / MIB
        );
        assert!(
            after <= base + 8 * MIB,
            "round {round}: {} MiB still resident after the receiver caught up \
             (peak {} MiB over the base)",
            after.saturating_sub(base) / MIB,
            peak.saturating_sub(base) / MIB
        );
    }
}

#[test]
fn spilled_values_free_their_queue_once_taken() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Small rings: nearly the whole burst goes through the spill queue.
    let (tx, mut rx) = Builder::new()
        .unbounded(true)
        .capacity_per_cid(64)
        .build::<Msg>()
        .expect("channel");
    let base = resident();
    for round in 0..3 {
        let peak = burst(&tx, &mut rx, 500_000);
        let after = resident();
        assert!(
            peak >= base + 24 * MIB,
            "round {round}: a 32 MiB burst made only {} MiB resident",
            peak.saturating_sub(base) / MIB
        );
        assert!(
            after <= base + 8 * MIB,
            "round {round}: {} MiB still resident after the spill queue emptied",
            after.saturating_sub(base) / MIB
        );
    }
}
