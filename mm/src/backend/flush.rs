//! The TLB-flush sink: where page-table changes report the translations they made stale.
//!
//! Page-table code never invalidates a TLB itself. It tells a [`FlushSink`] which
//! translations changed and which page-table frames it unlinked; the sink decides how to
//! invalidate (per page, or a full flush past a threshold; locally or by shootdown) and
//! must release the unlinked frames only after every CPU that may cache them has flushed:
//! its shootdown says that tables are freed
//! ([`FlushBatch::set_frees_tables`](crate::backend::shootdown::FlushBatch::set_frees_tables)), so
//! that it reaches every target even with nothing else to flush and no target
//! acknowledges before it dropped its paging-structure caches.

use crate::base::addr::PageSize;
use x86_64::{PhysAddr, VirtAddr};

/// Receives the consequences of page-table changes.
pub trait FlushSink {
    /// The translation of the leaf of `size` at `va` changed or was removed.
    fn flush_page(&mut self, va: VirtAddr, size: PageSize);
    /// Everything cached for this address space must go.
    fn flush_all(&mut self);
    /// A page-table frame was unlinked; it may be freed only after the flush completes
    /// (a CPU's paging-structure cache may still walk it until then).
    fn defer_free_table(&mut self, table: PhysAddr);
}
