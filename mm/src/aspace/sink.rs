//! The collaborators the page-table code needs, built on the [`FrameSource`]: a table
//! allocator, and the per-operation [`Flush`] that collects what an operation made stale
//! and what it may release afterwards, so that one shootdown per operation covers it and
//! nothing is released before that shootdown.

use super::{AddressSpace, FrameSource, Mm};
use crate::backend::flush::FlushSink;
use crate::backend::phys::PhysMem;
use crate::backend::shootdown::FlushBatch;
use crate::base::addr::{PageSize, Pfn};
use crate::base::cpuset::CpuSet;
use crate::frame::buddy::MigrateType;
use crate::frame::meta::FrameFlags;
use crate::paging::TableAlloc;
use alloc::vec::Vec;
use core::mem;
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

/// What one operation on one address space made stale (a [`FlushBatch`]: up to its
/// threshold of leaves, or everything), and what it may release once no CPU can reach it
/// any more: the page-table frames it unlinked and one reference per mapping it removed.
///
/// Only [`complete`](Self::complete) releases them, after the shootdown returned; a flush
/// dropped without completing (or whose shootdown failed) leaks them instead of freeing
/// them early, and counts them in [`leaked_frames`] where that counter exists.
#[must_use = "only `complete` shoots down and releases the frames; a dropped flush leaks them"]
pub(crate) struct Flush {
    batch: FlushBatch,
    tables: Vec<PhysAddr>,
    refs: Vec<Pfn>,
}

impl Flush {
    pub fn new() -> Flush {
        Flush {
            batch: FlushBatch::new(),
            tables: Vec::new(),
            refs: Vec::new(),
        }
    }

    /// Drop one reference on the block `head` once the shootdown is done: a mapping of it
    /// was taken off the page table and the reverse map.
    pub fn put_ref(&mut self, head: Pfn) {
        self.refs.push(head);
    }

    /// The blocks whose references this flush drops (a block may appear several times).
    pub fn ref_heads(&self) -> &[Pfn] {
        &self.refs
    }

    /// Shoot what was collected down on the CPUs that have `space` loaded, then free the
    /// unlinked tables and drop the references. A failed shootdown releases nothing.
    pub fn complete<'m, M: PhysMem>(self, mm: &Mm<'m, M>, space: &AddressSpace<'m, M>) {
        self.complete_on(mm, space.cpus().load());
    }

    /// [`complete`](Self::complete) on `cpus`: the union of the CPUs of every address
    /// space the flush covers (one request per CPU however many spaces).
    pub fn complete_on<M: PhysMem>(mut self, mm: &Mm<'_, M>, cpus: CpuSet) {
        if !self.batch.is_empty() && mm.tlb.shootdown(cpus, &self.batch).is_err() {
            // A CPU may still reach the frames: keep them (the drop counts the leak).
            return;
        }
        for table in mem::take(&mut self.tables) {
            mm.free_block(Pfn::containing(table), 0);
        }
        mm.put_refs(&mem::take(&mut self.refs));
    }
}

/// Frames (page tables and references) that flushes dropped without completing kept
/// instead of releasing, since the program started.
#[cfg(any(debug_assertions, test, feature = "std"))]
static LEAKED: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// How many frames (page tables and references) flushes dropped without completing, or
/// whose shootdown failed, kept instead of releasing since the program started (debug
/// and host-test builds only).
#[cfg(any(debug_assertions, test, feature = "std"))]
pub fn leaked_frames() -> usize {
    LEAKED.load(core::sync::atomic::Ordering::Relaxed)
}

#[cfg(any(debug_assertions, test, feature = "std"))]
impl Drop for Flush {
    fn drop(&mut self) {
        let kept = self.tables.len() + self.refs.len();
        if kept != 0 {
            LEAKED.fetch_add(kept, core::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl FlushSink for Flush {
    fn flush_page(&mut self, va: VirtAddr, size: PageSize) {
        self.batch.add_page(va.as_u64(), size);
    }

    fn flush_all(&mut self) {
        self.batch.set_full(false);
    }

    fn defer_free_table(&mut self, table: PhysAddr) {
        self.tables.push(table);
        self.batch.set_frees_tables();
    }
}
