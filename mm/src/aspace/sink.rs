//! The collaborators the page-table code needs, built on the [`FrameSource`]: a table
//! allocator, and a flush sink that collects what an operation made stale so that one
//! shootdown per operation covers it.

use super::{FrameSource, SHOOTDOWN_RANGE_LIMIT};
use crate::backend::flush::FlushSink;
use crate::base::addr::{PageSize, Pfn};
use crate::frame::buddy::MigrateType;
use crate::frame::meta::FrameFlags;
use crate::paging::TableAlloc;
use alloc::vec::Vec;
use x86_64::{PhysAddr, VirtAddr};

/// Page-table frames from the frame source: order 0, unmovable, flagged `PAGETABLE`.
pub(crate) struct Tables<'a> {
    frames: &'a dyn FrameSource,
}

impl<'a> Tables<'a> {
    pub fn new(frames: &'a dyn FrameSource) -> Tables<'a> {
        Tables { frames }
    }
}

impl TableAlloc for Tables<'_> {
    fn alloc_table(&mut self) -> Option<PhysAddr> {
        let pfn = self.frames.alloc(0, MigrateType::Unmovable, None).ok()?;
        if let Some(meta) = self.frames.frame_table().get(pfn) {
            meta.insert_flags(FrameFlags::PAGETABLE);
        }
        Some(pfn.addr())
    }

    fn free_table(&mut self, table: PhysAddr) {
        let freed = self.frames.free(Pfn::containing(table), 0);
        debug_assert!(freed.is_ok(), "freeing an unused table: {freed:?}");
    }
}

/// What one operation on one address space made stale: up to
/// [`SHOOTDOWN_RANGE_LIMIT`] leaves, or everything; and the tables it unlinked.
#[derive(Default)]
pub(crate) struct Flush {
    pub ranges: Vec<(VirtAddr, PageSize)>,
    pub full: bool,
    pub tables: Vec<PhysAddr>,
}

impl Flush {
    pub fn new() -> Flush {
        Flush::default()
    }

    /// Whether nothing needs a shootdown.
    pub fn is_empty(&self) -> bool {
        !self.full && self.ranges.is_empty() && self.tables.is_empty()
    }
}

impl FlushSink for Flush {
    fn flush_page(&mut self, va: VirtAddr, size: PageSize) {
        if self.full {
            return;
        }
        if self.ranges.len() == SHOOTDOWN_RANGE_LIMIT {
            self.full = true;
            self.ranges.clear();
        } else {
            self.ranges.push((va, size));
        }
    }

    fn flush_all(&mut self) {
        self.full = true;
        self.ranges.clear();
    }

    fn defer_free_table(&mut self, table: PhysAddr) {
        self.tables.push(table);
    }
}
