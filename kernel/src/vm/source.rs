//! The memory manager's [`FrameSource`]: the kernel's buddy allocator (order 0 through
//! the per-CPU caches), allocation on a given NUMA node through [`super::numa`], and a
//! fault-injection hook so tests can make an allocation fail, or pin a frame just before
//! one, as a device would in the middle of a migration batch. Its time is counted by
//! [`super::profile`] when the benchmarks ask.

use super::{numa, profile};
use crate::mem::physmap::KernelPhys;
use crate::mem::{frames, MemError};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use mm::aspace::inject::Injector;
use mm::backend::source::FrameSource;
use mm::base::addr::Pfn;
use mm::frame::buddy::{AllocError, FreeError, MigrateType};
use mm::frame::meta::FrameTable;
use mm::frame::node::{NodeId, NodeRange};
use spin::Once;

/// The kernel's frames, as the memory manager sees them.
pub struct KernelFrames {
    /// The frame table, looked up once (the allocator's lock need not be taken for it).
    table: Once<FrameTable<'static>>,
    /// Faults to inject, for tests.
    pub injector: Injector<'static, KernelPhys>,
    /// Blocks handed out so far (see [`FrameSource::allocations`]).
    allocations: AtomicU64,
}

impl Default for KernelFrames {
    fn default() -> Self {
        KernelFrames::new()
    }
}

impl KernelFrames {
    /// Nothing injected.
    pub const fn new() -> KernelFrames {
        KernelFrames {
            table: Once::new(),
            injector: Injector::new(),
            allocations: AtomicU64::new(0),
        }
    }

    /// Whether the allocation of `order` must fail (counting it and pinning through the
    /// memory manager when the injector says so).
    fn injected_failure(&self, order: u8) -> bool {
        self.injector.on_alloc(order, super::mm())
    }

    /// [`FrameSource::alloc`], not counted.
    fn alloc_untimed(
        &self,
        order: u8,
        mt: MigrateType,
        node: Option<NodeId>,
    ) -> Result<Pfn, AllocError> {
        if self.injected_failure(order) {
            return Err(AllocError::OutOfMemory);
        }
        let block = match node {
            None => frames::alloc(order, mt).map_err(alloc_error),
            Some(node) => numa::alloc_on(node, order, mt),
        }?;
        self.allocations.fetch_add(1, Ordering::Relaxed);
        Ok(block)
    }

    /// [`FrameSource::alloc_at`], not counted.
    fn alloc_at_untimed(&self, pfn: Pfn, order: u8, mt: MigrateType) -> Result<Pfn, AllocError> {
        if self.injected_failure(order) {
            return Err(AllocError::OutOfMemory);
        }
        let block = frames::alloc_at(pfn, order, mt).map_err(alloc_error)?;
        self.allocations.fetch_add(1, Ordering::Relaxed);
        Ok(block)
    }
}

fn alloc_error(e: MemError) -> AllocError {
    match e {
        MemError::Alloc(e) => e,
        _ => AllocError::OutOfMemory,
    }
}

fn free_error(e: MemError) -> FreeError {
    match e {
        MemError::Free(e) => e,
        _ => FreeError::NotAllocated,
    }
}

impl FrameSource for KernelFrames {
    fn alloc(&self, order: u8, mt: MigrateType, node: Option<NodeId>) -> Result<Pfn, AllocError> {
        profile::ALLOC.time(|| self.alloc_untimed(order, mt, node))
    }

    fn alloc_at(&self, pfn: Pfn, order: u8, mt: MigrateType) -> Result<Pfn, AllocError> {
        profile::ALLOC.time(|| self.alloc_at_untimed(pfn, order, mt))
    }

    fn alloc_at_batch(
        &self,
        blocks: &[(Pfn, u8)],
        mt: MigrateType,
        out: &mut Vec<Result<Pfn, AllocError>>,
    ) {
        profile::ALLOC.time_many(blocks.len() as u64, || {
            self.injector
                .alloc_at_batch(super::mm(), blocks, out, |asked, served| {
                    let first = served.len();
                    let mut got = Vec::with_capacity(asked.len());
                    frames::alloc_at_batch(asked, mt, &mut got);
                    served.extend(got.into_iter().map(|r| r.map_err(alloc_error)));
                    let ok = served[first..].iter().filter(|r| r.is_ok()).count();
                    self.allocations.fetch_add(ok as u64, Ordering::Relaxed);
                })
        })
    }

    fn free(&self, pfn: Pfn, order: u8) -> Result<(), FreeError> {
        profile::FREE.time(|| frames::free(pfn.addr(), order).map_err(free_error))
    }

    fn free_batch(&self, blocks: &[(Pfn, u8)]) -> u64 {
        profile::FREE.time_many(blocks.len() as u64, || frames::free_batch(blocks))
    }

    fn frame_table(&self) -> FrameTable<'_> {
        *self.table.call_once(frames::table)
    }

    fn node_range(&self, pfn: Pfn) -> Option<NodeRange> {
        numa::range_of(pfn)
    }

    fn node_exists(&self, node: NodeId) -> bool {
        numa::node_exists(node)
    }

    fn node_ranges(&self, node: NodeId) -> Vec<(Pfn, Pfn)> {
        numa::ranges_of(node)
    }

    fn allocations(&self) -> u64 {
        self.allocations.load(Ordering::Relaxed)
    }
}
