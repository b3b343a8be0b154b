//! TLB invalidation for the kernel address space on the running CPU.
//!
//! [`LocalFlush`] is the kernel's [`FlushSink`]: it batches the pages a page-table change
//! made stale, invalidates them with `invlpg` (or the whole TLB, global entries included,
//! past [`FULL_FLUSH_THRESHOLD`]) when the change is done, and only then frees the
//! page-table frames the change unlinked.

use super::frames;
use mm::addr::PageSize;
use mm::flush::FlushSink;
use x86_64::registers::control::{Cr4, Cr4Flags};
use x86_64::{PhysAddr, VirtAddr};

/// Past this many pages one full flush is cheaper than page-by-page invalidation.
pub const FULL_FLUSH_THRESHOLD: usize = 32;
const MAX_DEFERRED_TABLES: usize = 64;

/// Pending invalidations of one page-table change.
pub struct LocalFlush {
    pages: [(VirtAddr, PageSize); FULL_FLUSH_THRESHOLD],
    n_pages: usize,
    full: bool,
    tables: [PhysAddr; MAX_DEFERRED_TABLES],
    n_tables: usize,
}

impl LocalFlush {
    /// Nothing pending yet.
    pub const fn new() -> LocalFlush {
        LocalFlush {
            pages: [(VirtAddr::zero(), PageSize::Size4K); FULL_FLUSH_THRESHOLD],
            n_pages: 0,
            full: false,
            tables: [PhysAddr::zero(); MAX_DEFERRED_TABLES],
            n_tables: 0,
        }
    }

    /// Invalidate everything pending, then free the unlinked tables.
    pub fn finish(&mut self) {
        if self.full {
            flush_all_including_global();
        } else {
            for &(va, _) in &self.pages[..self.n_pages] {
                x86_64::instructions::tlb::flush(va);
            }
        }
        self.full = false;
        self.n_pages = 0;
        for &table in &self.tables[..self.n_tables] {
            // A table frame came from the frame allocator as order 0; failing to free it
            // means the bookkeeping is broken, which the allocator audit will show.
            if let Err(e) = frames::free(table, 0) {
                log::error!("freeing page-table frame {table:?} failed: {e:?}");
            }
        }
        self.n_tables = 0;
    }
}

impl Drop for LocalFlush {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Drop every TLB entry of this CPU, global ones too (toggling CR4.PGE).
pub fn flush_all_including_global() {
    let cr4 = Cr4::read();
    if cr4.contains(Cr4Flags::PAGE_GLOBAL) {
        // SAFETY: clearing and restoring PGE only flushes the TLB; no mapping changes.
        unsafe {
            Cr4::write(cr4 - Cr4Flags::PAGE_GLOBAL);
            Cr4::write(cr4);
        }
    } else {
        x86_64::instructions::tlb::flush_all();
    }
}

impl FlushSink for LocalFlush {
    fn flush_page(&mut self, va: VirtAddr, size: PageSize) {
        if self.full {
            return;
        }
        if self.n_pages == FULL_FLUSH_THRESHOLD {
            self.full = true;
            return;
        }
        self.pages[self.n_pages] = (va, size);
        self.n_pages += 1;
    }

    fn flush_all(&mut self) {
        self.full = true;
    }

    fn defer_free_table(&mut self, table: PhysAddr) {
        if self.n_tables == MAX_DEFERRED_TABLES {
            self.finish();
        }
        self.tables[self.n_tables] = table;
        self.n_tables += 1;
    }
}
