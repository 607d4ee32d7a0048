//! The NUMA part of `percid status`: the topology percid sees, how its NUMA arena
//! placed each node's plane (binding, and where the kernel says the pages are), and
//! which (node, cid) units the demonstration's `NumaCounter` really used.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use percid::NumaCounter;
use percid::cid::Shard;
use percid::numa::{Binding, Placement, Topology};

use crate::demo;
use crate::json::Json;
use crate::status::field;

/// Everything the NUMA section shows.
pub struct NumaView {
    topology: &'static Topology,
    /// Binding and page placement of each node plane the arena reserved.
    planes: Vec<Plane>,
    /// Cids the demonstration counter updated, per node.
    cids_seen: BTreeMap<u32, BTreeSet<u32>>,
    /// Lanes it updated (threads on the portable backend).
    lanes_seen: BTreeSet<u32>,
}

struct Plane {
    node: u32,
    binding: Binding,
    /// `None` when `move_pages` failed (with why).
    placement: Result<Placement, String>,
}

impl NumaView {
    /// Reads the arena after the demonstration threads updated `counter`.
    pub fn gather(counter: &NumaCounter) -> NumaView {
        let arena = percid::cid::numa_global();
        let mut planes = Vec::new();
        for stats in arena.node_stats() {
            let Some(binding) = stats.binding else {
                continue;
            };
            let mut placement = Ok(Placement::default());
            for (start, len) in arena.node_regions(stats.node) {
                placement = placement.and_then(|mut total: Placement| {
                    let part = percid::numa::placement(start, len).map_err(|e| e.to_string())?;
                    for (node, pages) in part.per_node {
                        *total.per_node.entry(node).or_default() += pages;
                    }
                    total.absent += part.absent;
                    total.other += part.other;
                    Ok(total)
                });
            }
            planes.push(Plane {
                node: stats.node,
                binding,
                placement,
            });
        }
        let mut cids_seen: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        let mut lanes_seen = BTreeSet::new();
        for (shard, value) in counter.shards() {
            if value == 0 {
                continue;
            }
            match shard {
                Shard::NodeCid { node, cid } => {
                    cids_seen.entry(node).or_default().insert(cid);
                }
                Shard::Cid(cid) => {
                    cids_seen.entry(0).or_default().insert(cid);
                }
                Shard::Lane(lane) => {
                    lanes_seen.insert(lane);
                }
            }
        }
        NumaView {
            topology: percid::numa::topology(),
            planes,
            cids_seen,
            lanes_seen,
        }
    }

    pub fn text(&self, out: &mut String) {
        let t = self.topology;
        let plural = if t.node_count() == 1 { "" } else { "s" };
        let _ = writeln!(
            out,
            "\nnuma ({} node{plural}, from {}; node_id below {})",
            t.node_count(),
            t.source(),
            t.node_id_bound()
        );
        for node in t.nodes() {
            let cpus: BTreeSet<u32> = node.cpus.iter().copied().collect();
            let memory = if node.has_memory { "" } else { ", no memory" };
            field(
                out,
                &format!("node {}", node.id),
                format!("cpus {}{memory}", demo::set_text(&cpus)),
            );
        }
        if let Some(d) = t.distances() {
            let n = t.node_count().max(1);
            let rows: Vec<String> = d
                .chunks(n)
                .map(|row| row.iter().map(u32::to_string).collect::<Vec<_>>().join(" "))
                .collect();
            field(out, "distances", rows.join(" | "));
        }
        if self.planes.is_empty() {
            field(out, "planes", "none reserved");
        }
        for plane in &self.planes {
            let pages = match &plane.placement {
                Ok(p) => {
                    let on: Vec<String> = p
                        .per_node
                        .iter()
                        .map(|(node, pages)| format!("{pages} on node {node}"))
                        .collect();
                    let on = if on.is_empty() {
                        "none present".to_owned()
                    } else {
                        on.join(", ")
                    };
                    format!("pages {on} ({} not present)", p.absent)
                }
                Err(e) => format!("placement unknown: {e}"),
            };
            field(
                out,
                &format!("plane {}", plane.node),
                format!("{}; {pages}", plane.binding),
            );
        }
        let seen: Vec<String> = self
            .cids_seen
            .iter()
            .map(|(node, cids)| format!("node {node}: cids {}", demo::set_text(cids)))
            .chain(
                (!self.lanes_seen.is_empty())
                    .then(|| format!("lanes {}", demo::set_text(&self.lanes_seen))),
            )
            .collect();
        let seen = if seen.is_empty() {
            "nothing".to_owned()
        } else {
            seen.join("; ")
        };
        field(out, "counter used", seen);
    }

    pub fn json(&self) -> Json {
        let t = self.topology;
        let nodes = t.nodes().iter().map(|n| {
            Json::object([
                ("id", Json::from(n.id)),
                ("cpus", Json::array(n.cpus.iter().copied())),
                ("has_memory", n.has_memory.into()),
            ])
        });
        let distances = match t.distances() {
            Some(d) => Json::array(d.iter().copied()),
            None => Json::Null,
        };
        let binding = self.planes.iter().map(|p| {
            let kind = match &p.binding {
                Binding::Strict => "strict",
                Binding::FirstTouch => "first_touch",
                Binding::Failed(_) => "failed",
            };
            (p.node.to_string(), Json::from(kind))
        });
        let placement = self.planes.iter().map(|p| {
            let value = match &p.placement {
                Ok(pl) => Json::object(
                    pl.per_node
                        .iter()
                        .map(|(node, pages)| (node.to_string(), Json::from(*pages)))
                        .chain([
                            ("absent".to_owned(), Json::from(pl.absent)),
                            ("other".to_owned(), Json::from(pl.other)),
                        ]),
                ),
                Err(e) => Json::object([("error", Json::from(e.as_str()))]),
            };
            (p.node.to_string(), value)
        });
        let cids_seen = self
            .cids_seen
            .iter()
            .map(|(node, cids)| (node.to_string(), Json::array(cids.iter().copied())));
        Json::object([
            ("source", Json::from(t.source().to_string())),
            ("node_id_bound", t.node_id_bound().into()),
            ("nodes", Json::Array(nodes.collect())),
            ("distances", distances),
            ("binding", Json::object(binding)),
            ("placement", Json::object(placement)),
            ("cids_seen", Json::object(cids_seen)),
            ("lanes_seen", Json::array(self.lanes_seen.iter().copied())),
        ])
    }
}
