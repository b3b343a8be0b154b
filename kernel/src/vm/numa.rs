//! NUMA nodes on the machine: the node map built from the ACPI SRAT (one node over all
//! memory when there is none), which CPU sits on which node, allocation on a given node
//! and per-node usage.
//!
//! Every node's frames are served by the one buddy allocator; an allocation on a node
//! looks for a free block inside the node's ranges (skipping whole blocks) and takes it
//! with `alloc_at`, as [`mm::ops::numa`] describes. Allocations without a node take the
//! allocator's fast path and may land on any node.

use crate::arch::srat;
use crate::mem::frames;
use crate::smp;
use crate::sprintln;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use mm::base::addr::{Pfn, MAX_ORDER, PAGE_SIZE};
use mm::frame::buddy::{AllocError, MigrateType};
use mm::frame::node::{NodeId, NodeMap, NodeRange, NodeUsage};
use spin::Once;
use x86_64::PhysAddr;

/// Where the node map came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The SRAT's memory affinity entries.
    Srat,
    /// No usable SRAT: one node over all memory.
    Single,
}

/// The machine's NUMA layout.
pub struct Topology {
    /// Physical ranges of every node.
    pub map: NodeMap,
    /// The node of each CPU index (None when the SRAT does not list its APIC ID).
    pub cpu_nodes: Vec<Option<NodeId>>,
    /// Where the map came from.
    pub origin: Origin,
}

static TOPOLOGY: Once<Topology> = Once::new();

/// Read the topology (the SRAT through the RSDP at `rsdp`) and print the boot report
/// line. Runs once, after the CPUs are up.
pub fn init(rsdp: Option<u64>) -> &'static Topology {
    let frames_total = frames::table().len() as u64;
    let topology = TOPOLOGY.call_once(|| build(rsdp, frames_total));
    log::info!("{}", summary(topology));
    topology
}

fn build(rsdp: Option<u64>, frames_total: u64) -> Topology {
    let ids = smp::madt_apic_ids();
    let single = || Topology {
        map: NodeMap::single(Pfn(0), Pfn(frames_total)),
        cpu_nodes: ids.iter().map(|_| Some(NodeId(0))).collect(),
        origin: Origin::Single,
    };
    let affinity = match rsdp.map(|r| srat::affinity(PhysAddr::new(r))) {
        Some(Ok(a)) => a,
        Some(Err(srat::SratError::NoSrat)) | None => return single(),
        Some(Err(e)) => {
            log::warn!("NUMA: {e}; assuming one node");
            return single();
        }
    };
    let mut map = NodeMap::new();
    for m in affinity.memory.iter().filter(|m| !m.hot_pluggable) {
        let start = m.base.div_ceil(PAGE_SIZE);
        let end = (m.base.saturating_add(m.len) / PAGE_SIZE).min(frames_total);
        if start >= end {
            continue;
        }
        if let Err(e) = map.add(Pfn(start), Pfn(end), NodeId(m.domain)) {
            log::warn!(
                "NUMA: SRAT range {:#x}+{:#x} of domain {}: {e}; ignored",
                m.base,
                m.len,
                m.domain
            );
        }
    }
    if map.ranges().is_empty() {
        log::warn!("NUMA: the SRAT describes no memory; assuming one node");
        return single();
    }
    let cpu_nodes = ids
        .iter()
        .map(|&apic| {
            affinity
                .processors
                .iter()
                .find(|p| p.apic_id == apic)
                .map(|p| NodeId(p.domain))
        })
        .collect();
    Topology {
        map,
        cpu_nodes,
        origin: Origin::Srat,
    }
}

/// The node of `pfn`.
pub fn node_of(pfn: Pfn) -> Option<NodeId> {
    range_of(pfn).map(|r| r.node)
}

/// The node range holding `pfn`.
pub fn range_of(pfn: Pfn) -> Option<NodeRange> {
    TOPOLOGY.get()?.map.range_of(pfn)
}

/// Whether `node` exists.
pub fn node_exists(node: NodeId) -> bool {
    TOPOLOGY.get().is_some_and(|t| t.map.contains(node))
}

/// The physical ranges of `node`, in order.
pub fn ranges_of(node: NodeId) -> Vec<(Pfn, Pfn)> {
    TOPOLOGY.get().map_or_else(Vec::new, |t| {
        t.map.ranges_of(node).map(|r| (r.start, r.end)).collect()
    })
}

/// The nodes, in increasing order.
pub fn nodes() -> Vec<NodeId> {
    TOPOLOGY.get().map_or_else(Vec::new, |t| t.map.nodes())
}

/// A free block of `2^order` frames inside `node`'s ranges, allocated as `mt`.
pub fn alloc_on(node: NodeId, order: u8, mt: MigrateType) -> Result<Pfn, AllocError> {
    if order > MAX_ORDER {
        return Err(AllocError::InvalidOrder);
    }
    let Some(t) = TOPOLOGY.get() else {
        return Err(AllocError::OutOfMemory);
    };
    if t.origin == Origin::Single && t.map.contains(node) {
        return frames::alloc(order, mt).map_err(|e| match e {
            crate::mem::MemError::Alloc(e) => e,
            _ => AllocError::OutOfMemory,
        });
    }
    frames::with_buddy(|buddy| mm::frame::node::alloc_on_node(&t.map, buddy, node, order, mt))
}

/// Free, used and reserved frames of every node now (frames in the per-CPU caches count
/// as free).
pub fn usage() -> Vec<NodeUsage> {
    let Some(t) = TOPOLOGY.get() else {
        return Vec::new();
    };
    let table = frames::table();
    frames::with_buddy(|_| mm::frame::node::node_usage(&t.map, table))
}

fn mib(frames: u64) -> u64 {
    (frames * PAGE_SIZE) >> 20
}

/// The CPUs of `node`, as "0-1,3".
fn cpus_of(t: &Topology, node: NodeId) -> String {
    let cpus: Vec<usize> = (0..t.cpu_nodes.len())
        .filter(|&c| t.cpu_nodes[c] == Some(node))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        let _ = if i == j {
            write!(out, "{}", cpus[i])
        } else {
            write!(out, "{}-{}", cpus[i], cpus[j])
        };
        i = j + 1;
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}

/// The boot report line: `NUMA: N nodes (node 0: M MiB, CPUs 0-1; ...)`, M being the
/// memory the allocator manages on the node (free or in use).
pub fn summary(t: &Topology) -> String {
    let nodes = t.map.nodes();
    let mut line = String::new();
    let _ = write!(
        line,
        "NUMA: {} node{} (",
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" }
    );
    let usage = usage();
    for (k, &node) in nodes.iter().enumerate() {
        // Memory present on the node: its ranges less the holes and firmware areas.
        let frames = usage
            .iter()
            .find(|u| u.node == node)
            .map_or(0, |u| u.free + u.used);
        let _ = write!(
            line,
            "{}node {}: {} MiB, CPUs {}",
            if k == 0 { "" } else { "; " },
            node.0,
            mib(frames),
            cpus_of(t, node)
        );
    }
    line.push_str(match t.origin {
        Origin::Srat => ") from the ACPI SRAT",
        Origin::Single => "): no SRAT, one node over all memory",
    });
    line
}

/// One line per node: free, used and reserved MiB.
pub fn report_usage() {
    for u in usage() {
        sprintln!(
            "  node {}: {} MiB free, {} MiB used, {} MiB reserved (of {} MiB)",
            u.node.0,
            mib(u.free),
            mib(u.used),
            mib(u.reserved),
            mib(u.frames)
        );
    }
}
