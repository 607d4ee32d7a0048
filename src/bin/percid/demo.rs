//! The live demonstration on the status page: many threads on few CPUs, each recording
//! the cids and CPU ids it observes. It shows the point of keying shards by `mm_cid`:
//! cids stay below the number of CPUs the process may use, while CPU ids do not
//! (pinned to CPU 1 a thread has cid 0).

use percid::NumaCounter;
use std::collections::BTreeSet;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// What one thread saw.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub cids: BTreeSet<u32>,
    pub cpus: BTreeSet<u32>,
}

impl Seen {
    pub fn union<'a>(all: impl IntoIterator<Item = &'a Seen>) -> Seen {
        let mut out = Seen::default();
        for s in all {
            out.cids.extend(&s.cids);
            out.cpus.extend(&s.cpus);
        }
        out
    }
}

/// Runs `threads` threads together for about `duration`. They yield now and then so
/// the scheduler moves them around even when there are fewer threads than CPUs.
pub fn run(threads: usize, duration: Duration, counter: &NumaCounter) -> Vec<Seen> {
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| observe(&barrier, duration, counter)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("demo thread panicked"))
            .collect()
    })
}

fn observe(barrier: &Barrier, duration: Duration, counter: &NumaCounter) -> Seen {
    barrier.wait();
    let deadline = Instant::now() + duration;
    let mut seen = Seen::default();
    let (mut last_cid, mut last_cpu) = (u32::MAX, u32::MAX);
    for i in 0u64.. {
        // A read outside a critical section is stale at once; here that is fine, we
        // only want to know which values occur.
        let (cid, cpu) = (percid::current_cid(), percid::current_cpu());
        // The NUMA view reports the (node, cid) units these adds landed in.
        counter.inc();
        if cid != last_cid {
            seen.cids.insert(cid);
            last_cid = cid;
        }
        if cpu != last_cpu {
            seen.cpus.insert(cpu);
            last_cpu = cpu;
        }
        if i % 1024 == 0 {
            if Instant::now() >= deadline {
                break;
            }
            if i % 16_384 == 0 {
                std::thread::yield_now();
            }
        }
    }
    seen
}

/// `{0,1,5}`
pub fn set_text(set: &BTreeSet<u32>) -> String {
    let items: Vec<String> = set.iter().map(u32::to_string).collect();
    format!("{{{}}}", items.join(","))
}

/// The one-line reading of the union, for the status page. `cids_are_cpus` says why,
/// when the index is a CPU id rather than an `mm_cid`.
pub fn conclusion(union: &Seen, allowed: usize, cids_are_cpus: Option<&str>) -> String {
    let cids = set_text(&union.cids);
    let cpus = set_text(&union.cpus);
    let plural = if allowed == 1 { "" } else { "s" };
    if let Some(why) = cids_are_cpus {
        return format!(
            "{why}, so cids are cpu ids and shards are bounded by the possible CPUs: \
             cids seen {cids}; cpu ids seen {cpus}"
        );
    }
    match union.cids.last() {
        None => format!("no cid was observed; cpu ids seen {cpus}"),
        Some(&max) if (max as usize) < allowed => format!(
            "cids seen {cids} stay below the {allowed} allowed CPU{plural}; cpu ids seen {cpus}"
        ),
        Some(&max) => format!(
            "cids seen {cids} reach {max}, not below the {allowed} allowed CPU{plural} \
             (mm_cid compaction is best-effort); cpu ids seen {cpus}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(cids: &[u32], cpus: &[u32]) -> Seen {
        Seen {
            cids: cids.iter().copied().collect(),
            cpus: cpus.iter().copied().collect(),
        }
    }

    #[test]
    fn concludes() {
        assert_eq!(
            conclusion(&seen(&[0, 1], &[0, 1]), 2, None),
            "cids seen {0,1} stay below the 2 allowed CPUs; cpu ids seen {0,1}"
        );
        assert_eq!(
            conclusion(&seen(&[0], &[1]), 1, None),
            "cids seen {0} stay below the 1 allowed CPU; cpu ids seen {1}"
        );
        assert!(conclusion(&seen(&[0, 3], &[0]), 2, None).contains("reach 3"));
        let text = conclusion(&seen(&[1], &[1]), 1, Some("index mode is cpu_id"));
        assert!(text.starts_with("index mode is cpu_id, so cids are cpu ids"));
    }

    #[test]
    fn every_thread_reports() {
        let counter = NumaCounter::new();
        let all = run(3, Duration::from_millis(5), &counter);
        assert_eq!(all.len(), 3);
        assert!(counter.sum() >= 3, "every thread adds to the counter");
        assert!(all.iter().all(|s| !s.cids.is_empty() && !s.cpus.is_empty()));
        let union = Seen::union(&all);
        assert!(union.cpus.len() <= crate::machine::cpus_online());
    }
}
