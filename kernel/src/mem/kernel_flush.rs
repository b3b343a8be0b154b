//! The flush sink of kernel page-table changes: [`KernelFlush`] batches what a change
//! made stale, and [`KernelFlush::finish`] shoots it down on every online CPU when the
//! change is done and only then frees the page-table frames the change unlinked; a
//! `KernelFlush` dropped without finishing leaks them rather than free them early.

use super::{frames, kernel_space};
use crate::arch::percpu;
use crate::arch::tlb::{flush_local, shootdown};
use mm::backend::flush::FlushSink;
use mm::backend::shootdown::FlushBatch;
use mm::base::addr::PageSize;
use x86_64::{PhysAddr, VirtAddr};

const MAX_DEFERRED_TABLES: usize = 64;

/// The flush sink of kernel page-table changes (see the module doc).
#[must_use = "only `finish` shoots down and frees the tables; a dropped flush leaks them"]
pub struct KernelFlush {
    batch: FlushBatch,
    tables: [PhysAddr; MAX_DEFERRED_TABLES],
    n_tables: usize,
}

impl Default for KernelFlush {
    fn default() -> Self {
        KernelFlush::new()
    }
}

impl KernelFlush {
    /// Nothing pending yet.
    pub const fn new() -> KernelFlush {
        KernelFlush {
            batch: FlushBatch::new(),
            tables: [PhysAddr::zero(); MAX_DEFERRED_TABLES],
            n_tables: 0,
        }
    }

    /// Shoot everything pending down on every online CPU, then free the unlinked tables.
    pub fn finish(mut self) {
        self.flush_now();
    }

    /// [`finish`](Self::finish) without giving the sink up (when its table list is full).
    fn flush_now(&mut self) {
        let online = percpu::online();
        // Before this CPU counts as online (early boot) it flushes for itself.
        if !online.contains(percpu::cpu_index()) {
            flush_local(&self.batch);
        }
        let shot = shootdown(online, &self.batch);
        self.batch = FlushBatch::new();
        let tables = &self.tables[..self.n_tables];
        self.n_tables = 0;
        if let Err(e) = shot {
            // The online set is its own target list, so this cannot name an offline CPU;
            // if it did, a CPU may still walk the tables: they are kept.
            log::error!(
                "kernel shootdown failed, {} page-table frames kept: {e:?}",
                tables.len()
            );
            return;
        }
        for &table in tables {
            if let Err(e) = frames::free(table, 0) {
                log::error!("freeing page-table frame {table:?} failed: {e:?}");
            }
        }
    }
}

impl FlushSink for KernelFlush {
    fn flush_page(&mut self, va: VirtAddr, size: PageSize) {
        self.batch.add_page(va.as_u64(), size);
    }

    fn flush_all(&mut self) {
        self.batch.set_full(true);
    }

    fn defer_free_table(&mut self, table: PhysAddr) {
        // Shared by every address space: never freed, and linked back (to the same
        // entry value) by `with_kernel` before the lock is dropped.
        if kernel_space::is_permanent_table(table) {
            return;
        }
        if self.n_tables == MAX_DEFERRED_TABLES {
            self.flush_now();
        }
        self.tables[self.n_tables] = table;
        self.n_tables += 1;
        // The paging-structure caches may hold the table: every CPU drops them, and
        // acknowledges only after it did.
        self.batch.set_frees_tables();
    }
}
