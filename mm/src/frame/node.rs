//! NUMA nodes of physical memory: which frame ranges belong to which node, per-node usage
//! counts, and the allocation of a block inside one node's ranges.
//!
//! The kernel fills a [`NodeMap`] from the ACPI SRAT's memory affinity entries. One
//! buddy allocator serves every node (its free lists are not per node, so node
//! boundaries need no particular alignment); an allocation on a node
//! ([`alloc_on_node`]) looks for a free block inside the node's ranges and takes it with
//! `alloc_at`. That search is a scan that skips whole blocks (free ones too small,
//! allocated ones, reserved frames), so it costs O(blocks in the node's ranges); the
//! common allocation without a node stays the buddy allocator's O(MAX_ORDER) path.

use crate::base::addr::Pfn;
use crate::frame::buddy::{AllocError, BuddyAllocator, MigrateType};
use crate::frame::meta::{FrameFlags, FrameState, FrameTable};
use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use core::fmt;

/// A NUMA node (the SRAT's proximity domain).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

/// Frames `[start, end)` belong to `node`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeRange {
    /// First frame.
    pub start: Pfn,
    /// One past the last frame.
    pub end: Pfn,
    /// The node.
    pub node: NodeId,
}

/// Why a range could not be added to a [`NodeMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeMapError {
    /// `start >= end`.
    EmptyRange,
    /// The range overlaps one already in the map.
    Overlap,
}

impl fmt::Display for NodeMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeMapError::EmptyRange => "empty range",
            NodeMapError::Overlap => "range overlaps another node range",
        })
    }
}

impl core::error::Error for NodeMapError {}

/// The physical ranges of every node, sorted and disjoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeMap {
    ranges: Vec<NodeRange>,
}

impl NodeMap {
    /// No node.
    pub const fn new() -> NodeMap {
        NodeMap { ranges: Vec::new() }
    }

    /// One node 0 over `[start, end)`.
    pub fn single(start: Pfn, end: Pfn) -> NodeMap {
        let mut map = NodeMap::new();
        if start < end {
            map.ranges.push(NodeRange {
                start,
                end,
                node: NodeId(0),
            });
        }
        map
    }

    /// Add `[start, end)` to `node`.
    pub fn add(&mut self, start: Pfn, end: Pfn, node: NodeId) -> Result<(), NodeMapError> {
        if start >= end {
            return Err(NodeMapError::EmptyRange);
        }
        let at = self.ranges.partition_point(|r| r.start < start);
        let overlaps_prev = at > 0 && self.ranges[at - 1].end > start;
        let overlaps_next = self.ranges.get(at).is_some_and(|r| r.start < end);
        if overlaps_prev || overlaps_next {
            return Err(NodeMapError::Overlap);
        }
        self.ranges.insert(at, NodeRange { start, end, node });
        Ok(())
    }

    /// The node of `pfn`.
    pub fn node_of(&self, pfn: Pfn) -> Option<NodeId> {
        self.range_of(pfn).map(|r| r.node)
    }

    /// The range holding `pfn`.
    pub fn range_of(&self, pfn: Pfn) -> Option<NodeRange> {
        let at = self.ranges.partition_point(|r| r.start <= pfn);
        at.checked_sub(1)
            .map(|i| self.ranges[i])
            .filter(|r| pfn < r.end)
    }

    /// Whether `node` has at least one range.
    pub fn contains(&self, node: NodeId) -> bool {
        self.ranges.iter().any(|r| r.node == node)
    }

    /// The nodes, in increasing order.
    pub fn nodes(&self) -> Vec<NodeId> {
        let set: BTreeSet<NodeId> = self.ranges.iter().map(|r| r.node).collect();
        set.into_iter().collect()
    }

    /// Every range, in address order.
    pub fn ranges(&self) -> &[NodeRange] {
        &self.ranges
    }

    /// The ranges of `node`, in address order.
    pub fn ranges_of(&self, node: NodeId) -> impl Iterator<Item = &NodeRange> {
        self.ranges.iter().filter(move |r| r.node == node)
    }
}

/// The frames of one node, as the allocator sees them now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeUsage {
    /// The node.
    pub node: NodeId,
    /// Frames in its ranges.
    pub frames: u64,
    /// Frames in free blocks.
    pub free: u64,
    /// Frames in allocated blocks.
    pub used: u64,
    /// Frames never handed to the allocator (holes, firmware, the kernel image...).
    pub reserved: u64,
}

/// Free, used and reserved frames of every node of `map`, read from the frame table
/// (the caller holds the allocator lock so blocks don't change under the walk). Frames
/// parked in a per-CPU cache (`CACHED`) count as free.
pub fn node_usage(map: &NodeMap, table: FrameTable<'_>) -> Vec<NodeUsage> {
    map.nodes()
        .into_iter()
        .map(|node| {
            let mut u = NodeUsage {
                node,
                frames: 0,
                free: 0,
                used: 0,
                reserved: 0,
            };
            for r in map.ranges_of(node) {
                u.frames += r.end.0 - r.start.0;
                count_range(table, r.start.0, r.end.0, &mut u);
            }
            u
        })
        .collect()
}

/// Add the frames of `[start, end)` to `u` by the block they are in.
fn count_range(table: FrameTable<'_>, start: u64, end: u64, u: &mut NodeUsage) {
    let mut i = start;
    while i < end {
        let Some((head, meta)) = table
            .head_of(Pfn(i))
            .and_then(|h| table.get(h).map(|m| (h, m)))
        else {
            u.reserved += 1;
            i += 1;
            continue;
        };
        let block_end = (head.0 + (1u64 << meta.order())).min(end);
        if meta.state() == FrameState::Free || meta.flags().contains(FrameFlags::CACHED) {
            u.free += block_end - i;
        } else {
            u.used += block_end - i;
        }
        i = block_end;
    }
}

/// A free block of `2^order` frames inside `node`'s ranges of `map`, allocated from
/// `buddy` as `mt`: a scan from block head to block head, for migration targets rather
/// than the hot path.
pub fn alloc_on_node(
    map: &NodeMap,
    buddy: &mut BuddyAllocator<'_>,
    node: NodeId,
    order: u8,
    mt: MigrateType,
) -> Result<Pfn, AllocError> {
    let table = buddy.table();
    let size = 1u64 << order;
    let align = |x: u64| x.next_multiple_of(size);
    for r in map.ranges_of(node) {
        let mut i = align(r.start.0);
        while i + size <= r.end.0 {
            match buddy.free_block_containing(Pfn(i)) {
                Some((_, k)) if k >= order => return buddy.alloc_at(Pfn(i), order, mt),
                Some((head, k)) => i = align(head.0 + (1u64 << k)),
                None => {
                    let block_end = table
                        .head_of(Pfn(i))
                        .and_then(|h| table.get(h).map(|m| h.0 + (1u64 << m.order())));
                    i = align(block_end.unwrap_or(i + 1).max(i + 1));
                }
            }
        }
    }
    Err(AllocError::OutOfMemory)
}

#[cfg(test)]
mod tests;
