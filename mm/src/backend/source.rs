//! Where frames come from: the [`FrameSource`] trait the kernel implements over its buddy
//! allocator and per-CPU caches, and [`BuddyFrames`], a node-aware one over a single
//! [`BuddyAllocator`] behind a spin lock (used by host tests and as the reference
//! implementation).

use crate::base::addr::{Pfn, MAX_ORDER};
use crate::frame::buddy::{AllocError, BuddyAllocator, FreeError, MigrateType};
use crate::frame::meta::FrameTable;
use crate::frame::node::{alloc_on_node, node_usage, NodeId, NodeMap, NodeRange, NodeUsage};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
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
    /// Exactly each block of `blocks` (head and order), as [`alloc_at`](Self::alloc_at)
    /// would one at a time (an implementation may take its lock once for all of them);
    /// one result per block, in order, appended to `out`.
    fn alloc_at_batch(
        &self,
        blocks: &[(Pfn, u8)],
        mt: MigrateType,
        out: &mut Vec<Result<Pfn, AllocError>>,
    ) {
        out.extend(
            blocks
                .iter()
                .map(|&(pfn, order)| self.alloc_at(pfn, order, mt)),
        );
    }
    /// Free the block of `2^order` frames headed at `pfn`.
    fn free(&self, pfn: Pfn, order: u8) -> Result<(), FreeError>;
    /// Free every block of `blocks` (head and order) as [`free`](Self::free) would one
    /// at a time (an implementation may take its lock once for all of them); returns
    /// how many it refused.
    fn free_batch(&self, blocks: &[(Pfn, u8)]) -> u64 {
        blocks
            .iter()
            .filter(|&&(pfn, order)| self.free(pfn, order).is_err())
            .count() as u64
    }
    /// The metadata of every frame.
    fn frame_table(&self) -> FrameTable<'_>;
    /// The NUMA node range holding `pfn`, if known.
    fn node_range(&self, pfn: Pfn) -> Option<NodeRange> {
        let _ = pfn;
        None
    }
    /// The NUMA node of `pfn`, if known.
    fn node_of(&self, pfn: Pfn) -> Option<NodeId> {
        self.node_range(pfn).map(|r| r.node)
    }
    /// Whether `node` exists.
    fn node_exists(&self, node: NodeId) -> bool {
        let _ = node;
        false
    }
    /// The physical ranges `[start, end)` of `node`, in order (empty when the source
    /// knows no nodes).
    fn node_ranges(&self, node: NodeId) -> Vec<(Pfn, Pfn)> {
        let _ = node;
        Vec::new()
    }
    /// How many blocks `alloc` and `alloc_at` have handed out so far (successful calls,
    /// whatever their order): tests and reports read it to prove that an operation
    /// allocated nothing.
    fn allocations(&self) -> u64;
}

/// A node-aware [`FrameSource`] over one buddy allocator behind a spin lock.
pub struct BuddyFrames<'a> {
    buddy: Mutex<BuddyAllocator<'a>>,
    allocations: AtomicU64,
    table: FrameTable<'a>,
    nodes: NodeMap,
}

impl<'a> BuddyFrames<'a> {
    /// Serve frames from `buddy`, placing nodes by `nodes`.
    pub fn new(buddy: BuddyAllocator<'a>, nodes: NodeMap) -> BuddyFrames<'a> {
        BuddyFrames {
            table: buddy.table(),
            buddy: Mutex::new(buddy),
            allocations: AtomicU64::new(0),
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
        let block = match node {
            None => buddy.alloc(order, mt),
            Some(node) => alloc_on_node(&self.nodes, &mut buddy, node, order, mt),
        }?;
        self.allocations.fetch_add(1, Ordering::Relaxed);
        Ok(block)
    }

    fn alloc_at(&self, pfn: Pfn, order: u8, mt: MigrateType) -> Result<Pfn, AllocError> {
        let block = self.buddy.lock().alloc_at(pfn, order, mt)?;
        self.allocations.fetch_add(1, Ordering::Relaxed);
        Ok(block)
    }

    fn alloc_at_batch(
        &self,
        blocks: &[(Pfn, u8)],
        mt: MigrateType,
        out: &mut Vec<Result<Pfn, AllocError>>,
    ) {
        let first = out.len();
        self.buddy.lock().alloc_at_batch(blocks, mt, out);
        let served = out[first..].iter().filter(|r| r.is_ok()).count();
        self.allocations.fetch_add(served as u64, Ordering::Relaxed);
    }

    fn allocations(&self) -> u64 {
        self.allocations.load(Ordering::Relaxed)
    }

    fn free(&self, pfn: Pfn, order: u8) -> Result<(), FreeError> {
        self.buddy.lock().free(pfn, order)
    }

    fn free_batch(&self, blocks: &[(Pfn, u8)]) -> u64 {
        let mut buddy = self.buddy.lock();
        blocks
            .iter()
            .filter(|&&(pfn, order)| buddy.free(pfn, order).is_err())
            .count() as u64
    }

    #[inline]
    fn frame_table(&self) -> FrameTable<'_> {
        self.table
    }

    fn node_range(&self, pfn: Pfn) -> Option<NodeRange> {
        self.nodes.range_of(pfn)
    }

    fn node_exists(&self, node: NodeId) -> bool {
        self.nodes.contains(node)
    }

    fn node_ranges(&self, node: NodeId) -> Vec<(Pfn, Pfn)> {
        self.nodes
            .ranges_of(node)
            .map(|r| (r.start, r.end))
            .collect()
    }
}

#[cfg(test)]
mod tests;
