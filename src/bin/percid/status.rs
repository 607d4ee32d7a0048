//! `percid status`: how percid runs on this machine, and a live demonstration.

use std::fmt::Write as _;
use std::time::Duration;

use percid::cid::StorageStats;
use percid::rseq::{Backend, IndexMode, Status};

use crate::demo::{self, Seen};
use crate::json::Json;
use crate::machine::Machine;
use crate::numa_view::NumaView;

/// How long the demonstration threads run together.
const DEMO_TIME: Duration = Duration::from_millis(200);

/// Everything the status page shows, gathered once so text and JSON agree.
pub struct Report {
    status: Status,
    machine: Machine,
    storage: StorageStats,
    demo: Vec<Seen>,
    numa: NumaView,
}

impl Report {
    /// `threads` demonstration threads; `None` means four per allowed CPU, enough to
    /// oversubscribe the CPUs so threads share and hand over cids.
    pub fn gather(threads: Option<usize>) -> Report {
        let status = percid::rseq::status();
        let machine = Machine::probe();
        let threads = threads.unwrap_or(4 * machine.cpus_allowed);
        let counter = percid::NumaCounter::new();
        let demo = demo::run(threads, DEMO_TIME, &counter);
        let numa = NumaView::gather(&counter);
        let storage = percid::cid::stats();
        Report {
            status,
            machine,
            storage,
            demo,
            numa,
        }
    }

    pub fn text(&self) -> String {
        let (s, m, st) = (&self.status, &self.machine, &self.storage);
        let mut out = format!(
            "percid {}\n\nrseq (this thread)\n",
            env!("CARGO_PKG_VERSION")
        );
        field(&mut out, "owner", s.owner.as_str());
        field(&mut out, "reason", s.reason.as_deref().unwrap_or("-"));
        let feature = format!("{} bytes (AT_RSEQ_FEATURE_SIZE)", s.feature_size);
        field(&mut out, "feature size", feature);
        field(
            &mut out,
            "alignment",
            format!("{} bytes (AT_RSEQ_ALIGN)", s.align),
        );
        field(&mut out, "active size", format!("{} bytes", s.active_size));
        let node_id = if s.node_id {
            "maintained by the kernel"
        } else {
            "not maintained"
        };
        field(&mut out, "node_id", node_id);
        let mm_cid = if s.mm_cid {
            "used as the shard index"
        } else {
            "not used"
        };
        field(&mut out, "mm_cid", mm_cid);
        field(&mut out, "index mode", s.index.as_str());
        field(&mut out, "backend", s.backend.as_str());

        out.push_str("\nmachine\n");
        field(&mut out, "kernel", format!("Linux {}", m.kernel));
        field(&mut out, "libc", &m.libc);
        field(&mut out, "cpu model", &m.cpu_model);
        field(&mut out, "cpus online", m.cpus_online);
        field(&mut out, "cpus allowed", m.cpus_allowed);
        field(&mut out, "possible cpus", s.possible_cpus);
        field(&mut out, "numa nodes", m.numa_nodes);

        let _ = writeln!(
            out,
            "\nstorage (this process)\n  {} chunks, {} cids and {} lanes materialized, \
             {} words in use, {} bytes per cid, {} bytes resident\n",
            st.chunks,
            st.cids_materialized,
            st.lanes_materialized,
            st.words_in_use,
            st.bytes_per_cid,
            st.resident_bytes
        );

        let threads = self.demo.len();
        let plural = if m.cpus_allowed == 1 { "" } else { "s" };
        let _ = writeln!(
            out,
            "live demonstration: {threads} threads for {} ms on {} allowed CPU{plural}",
            DEMO_TIME.as_millis(),
            m.cpus_allowed
        );
        let union = Seen::union(&self.demo);
        let rows = self
            .demo
            .iter()
            .enumerate()
            .map(|(i, seen)| (format!("thread {i}"), seen))
            .chain([("all threads".to_owned(), &union)]);
        let width = format!("thread {}", threads.saturating_sub(1))
            .len()
            .max("all threads".len());
        for (label, seen) in rows {
            let _ = writeln!(
                out,
                "  {label:<width$}  cids {:<12} cpus {}",
                demo::set_text(&seen.cids),
                demo::set_text(&seen.cpus)
            );
        }
        let _ = writeln!(out, "\n{}", self.conclusion(&union));
        self.numa.text(&mut out);
        out
    }

    fn conclusion(&self, union: &Seen) -> String {
        let cids_are_cpus = if self.status.backend == Backend::Portable {
            Some("the portable backend indexes per-CPU lanes")
        } else if self.status.index == IndexMode::CpuId {
            Some("index mode is cpu_id")
        } else {
            None
        };
        demo::conclusion(union, self.machine.cpus_allowed, cids_are_cpus)
    }

    pub fn json(&self) -> Json {
        let (s, m, st) = (&self.status, &self.machine, &self.storage);
        let union = Seen::union(&self.demo);
        let per_thread = self.demo.iter().map(|seen| {
            Json::object([
                ("cids", Json::array(seen.cids.iter().copied())),
                ("cpus", Json::array(seen.cpus.iter().copied())),
            ])
        });
        Json::object([
            (
                "rseq",
                Json::object([
                    ("owner", Json::from(s.owner.as_str())),
                    ("reason", s.reason.clone().into()),
                    ("feature_size", s.feature_size.into()),
                    ("align", s.align.into()),
                    ("active_size", s.active_size.into()),
                    ("node_id", s.node_id.into()),
                    ("mm_cid", s.mm_cid.into()),
                    ("index", s.index.as_str().into()),
                ]),
            ),
            ("backend", s.backend.as_str().into()),
            ("kernel", m.kernel.as_str().into()),
            ("libc", m.libc.as_str().into()),
            ("cpu_model", m.cpu_model.as_str().into()),
            ("cpus", m.cpus_allowed.into()),
            ("cpus_online", m.cpus_online.into()),
            ("possible_cpus", s.possible_cpus.into()),
            ("nodes", m.numa_nodes.into()),
            ("numa", self.numa.json()),
            (
                "storage",
                Json::object([
                    ("chunks", Json::from(st.chunks)),
                    ("cids_materialized", st.cids_materialized.into()),
                    ("lanes_materialized", st.lanes_materialized.into()),
                    ("words_in_use", st.words_in_use.into()),
                    ("bytes_per_cid", st.bytes_per_cid.into()),
                    ("resident_bytes", st.resident_bytes.into()),
                ]),
            ),
            (
                "demo",
                Json::object([
                    ("threads", Json::from(self.demo.len())),
                    ("duration_ms", (DEMO_TIME.as_millis() as u64).into()),
                    ("cids_seen", Json::array(union.cids.iter().copied())),
                    ("cpus_seen", Json::array(union.cpus.iter().copied())),
                    ("conclusion", self.conclusion(&union).into()),
                    ("per_thread", Json::Array(per_thread.collect())),
                ]),
            ),
        ])
    }
}

/// One aligned `key  value` line of the text page.
pub fn field(out: &mut String, key: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "  {key:<16}{value}");
}
