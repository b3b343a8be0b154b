//! Where frames come from: the [`FrameSource`] trait the kernel implements over its buddy
//! allocator and per-CPU caches, and [`BuddyFrames`], a node-aware one over a single
//! [`BuddyAllocator`] behind a spin lock (used by host tests and as the reference
//! implementation).

use crate::base::addr::{Pfn, MAX_ORDER};
use crate::frame::buddy::{AllocError, BuddyAllocator, FreeError, MigrateType};
use crate::frame::meta::FrameTable;
use crate::frame::node::{alloc_on_node, node_usage, NodeId, NodeMap, NodeUsage};
use alloc::vec::Vec;
use spin::{Mutex, MutexGuard};

/// Where frames come from: the kernel's buddy allocator(s) and frame table.
///
/// Implementations lock internally (every method takes `&self`) and must be callable
/// from any CPU. [`BuddyFrames`] is one over a [`BuddyAllocator`].
pub trait FrameSource: Sync {
    /// A block of `2^order` frames of type `mt`, on `node` if given (strictly: an
    /// allocation that cannot be served there fails).
    fn alloc(&self, order: u8, mt: MigrateType, node: Option<NodeId>) -> Result<Pfn, AllocError>;
    /// Exactly the block of `2^order` frames at `pfn`, if it is free.
    fn alloc_at(&self, pfn: Pfn, order: u8, mt: MigrateType) -> Result<Pfn, AllocError>;
    /// Free the block of `2^order` frames headed at `pfn`.
    fn free(&self, pfn: Pfn, order: u8) -> Result<(), FreeError>;
    /// The metadata of every frame.
    fn frame_table(&self) -> FrameTable<'_>;
    /// The NUMA node of `pfn`, if known.
    fn node_of(&self, pfn: Pfn) -> Option<NodeId> {
        let _ = pfn;
        None
    }
    /// Whether `node` exists.
    fn node_exists(&self, node: NodeId) -> bool {
        let _ = node;
        false
    }
}

/// A node-aware [`FrameSource`] over one buddy allocator behind a spin lock.
pub struct BuddyFrames<'a> {
    buddy: Mutex<BuddyAllocator<'a>>,
    table: FrameTable<'a>,
    nodes: NodeMap,
}

impl<'a> BuddyFrames<'a> {
    /// Serve frames from `buddy`, placing nodes by `nodes`.
    pub fn new(buddy: BuddyAllocator<'a>, nodes: NodeMap) -> BuddyFrames<'a> {
        BuddyFrames {
            table: buddy.table(),
            buddy: Mutex::new(buddy),
            nodes,
        }
    }

    /// The allocator, locked (for audits and statistics).
    pub fn lock(&self) -> MutexGuard<'_, BuddyAllocator<'a>> {
        self.buddy.lock()
    }

    /// The node map.
    pub fn nodes(&self) -> &NodeMap {
        &self.nodes
    }

    /// Free, used and reserved frames of every node.
    pub fn usage(&self) -> Vec<NodeUsage> {
        let _buddy = self.buddy.lock();
        node_usage(&self.nodes, self.table)
    }
}

impl FrameSource for BuddyFrames<'_> {
    fn alloc(&self, order: u8, mt: MigrateType, node: Option<NodeId>) -> Result<Pfn, AllocError> {
        if order > MAX_ORDER {
            return Err(AllocError::InvalidOrder);
        }
        let mut buddy = self.buddy.lock();
        match node {
            None => buddy.alloc(order, mt),
            Some(node) => alloc_on_node(&self.nodes, &mut buddy, node, order, mt),
        }
    }

    fn alloc_at(&self, pfn: Pfn, order: u8, mt: MigrateType) -> Result<Pfn, AllocError> {
        self.buddy.lock().alloc_at(pfn, order, mt)
    }

    fn free(&self, pfn: Pfn, order: u8) -> Result<(), FreeError> {
        self.buddy.lock().free(pfn, order)
    }

    fn frame_table(&self) -> FrameTable<'_> {
        self.table
    }

    fn node_of(&self, pfn: Pfn) -> Option<NodeId> {
        self.nodes.node_of(pfn)
    }

    fn node_exists(&self, node: NodeId) -> bool {
        self.nodes.contains(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_on_a_node_stays_in_its_ranges() {
        let recs = FrameTable::boxed_records(4096);
        let table = FrameTable::new(&recs).unwrap();
        let mut buddy = BuddyAllocator::new(table);
        buddy.add_free_range(Pfn(1), Pfn(4096)).unwrap();
        let mut map = NodeMap::new();
        map.add(Pfn(0), Pfn(1536), NodeId(0)).unwrap();
        map.add(Pfn(1536), Pfn(4096), NodeId(1)).unwrap();
        let frames = BuddyFrames::new(buddy, map);
        let on1 = frames
            .alloc(9, MigrateType::Movable, Some(NodeId(1)))
            .unwrap();
        assert_eq!(frames.node_of(on1), Some(NodeId(1)));
        assert!(on1.is_aligned(9));
        let mut small = Vec::new();
        while let Ok(p) = frames.alloc(0, MigrateType::Movable, Some(NodeId(0))) {
            assert_eq!(frames.node_of(p), Some(NodeId(0)));
            small.push(p);
        }
        assert_eq!(small.len(), 1535);
        assert_eq!(
            frames.alloc(0, MigrateType::Movable, Some(NodeId(7))),
            Err(AllocError::OutOfMemory)
        );
        let usage = frames.usage();
        assert_eq!(
            usage[0],
            NodeUsage {
                node: NodeId(0),
                frames: 1536,
                free: 0,
                used: 1535,
                reserved: 1
            }
        );
        assert_eq!((usage[1].used, usage[1].free), (512, 2048));
        for p in small {
            frames.free(p, 0).unwrap();
        }
        frames.free(on1, 9).unwrap();
        assert_eq!(frames.lock().free_frames(), 4095);
        assert_eq!(
            frames.alloc(MAX_ORDER + 1, MigrateType::Movable, None),
            Err(AllocError::InvalidOrder)
        );
    }
}
