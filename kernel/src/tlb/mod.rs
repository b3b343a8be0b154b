//! TLB coherence on real CPUs: the `mm` shootdown protocol put on the local APIC.
//!
//! [`KernelTlb`] gives the protocol this CPU's index, shootdown IPIs and local
//! invalidation (`invlpg`, or a full flush: a CR3 reload for user mappings, a CR4.PGE
//! toggle when global kernel mappings are concerned; a batch that only frees page tables
//! reloads CR3, which drops every paging-structure cache entry). [`KernelFlush`] is the
//! [`FlushSink`] of kernel page-table changes: it batches what a change made stale, and
//! [`KernelFlush::finish`] shoots it down on every online CPU when the change is done and
//! only then frees the page-table frames the change unlinked; a `KernelFlush` dropped
//! without finishing leaks them rather than free them early.
//!
//! Spinning on a lock with interrupts disabled while another CPU waits for our
//! acknowledgement would deadlock, so [`lock_serving`] serves shootdowns while it spins.

pub mod bench;
pub mod tests;

use crate::arch::apic;
use crate::mem::frames;
use crate::percpu::{self, CpuSet};
use mm::backend::flush::FlushSink;
use mm::backend::shootdown::{FlushBatch, Mailboxes, ShootdownError, TlbArch};
use mm::base::addr::PageSize;
use spin::{Mutex, MutexGuard};
use x86_64::registers::control::{Cr3, Cr4, Cr4Flags};
use x86_64::structures::idt::InterruptStackFrame;
use x86_64::{PhysAddr, VirtAddr};

/// The IPI vector of shootdown requests.
pub const SHOOTDOWN_VECTOR: u8 = 0x43;

/// Every CPU's shootdown mailbox.
pub static MAIL: Mailboxes = Mailboxes::new();

/// The protocol's view of the running CPU.
pub struct KernelTlb;

impl TlbArch for KernelTlb {
    fn this_cpu(&self) -> u32 {
        percpu::cpu_index()
    }

    fn send_ipi(&self, targets: CpuSet) {
        // Targets were checked online by the protocol; an APIC refusal would lose the
        // wake-up, so it is reported loudly (the waiting initiator would then spin).
        if let Err(e) = apic::send_ipi_set(&targets, SHOOTDOWN_VECTOR) {
            log::error!("shootdown IPI to {targets:?} failed: {e:?}");
        }
    }

    fn flush_local(&self, batch: &FlushBatch) {
        flush_local(batch);
    }
}

/// Invalidate `batch` in this CPU's TLB.
pub fn flush_local(batch: &FlushBatch) {
    if batch.is_full() {
        if batch.touches_kernel() {
            flush_all_including_global();
        } else {
            let (frame, flags) = Cr3::read();
            // SAFETY: reloading CR3 with its current value changes no mapping; it only
            // drops the non-global TLB entries.
            unsafe { Cr3::write(frame, flags) };
        }
    } else if batch.pages().is_empty() {
        if batch.frees_tables() {
            // Only page tables are freed: reloading CR3 drops every paging-structure
            // cache entry (and the non-global TLB entries).
            let (frame, flags) = Cr3::read();
            // SAFETY: reloading CR3 with its current value changes no mapping.
            unsafe { Cr3::write(frame, flags) };
        }
    } else {
        // Each `invlpg` also drops every paging-structure cache entry, so the tables a
        // batch frees are covered.
        for &(va, _) in batch.pages() {
            x86_64::instructions::tlb::flush(VirtAddr::new(va));
        }
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

/// The shootdown IPI.
pub extern "x86-interrupt" fn interrupt(_frame: InterruptStackFrame) {
    MAIL.serve(&KernelTlb);
    apic::eoi();
}

/// Called by each CPU as it comes online: from now on it receives shootdowns. It then
/// drops whatever it cached before, so no change made before it joined can linger.
pub fn cpu_online(cpu: u32) {
    MAIL.set_online(cpu);
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    flush_all_including_global();
}

/// Shoot `batch` down on `targets` and return once all have flushed.
pub fn shootdown(targets: CpuSet, batch: &FlushBatch) -> Result<(), ShootdownError> {
    MAIL.shootdown(&KernelTlb, targets, batch)
}

/// Take `lock`, serving shootdown requests while waiting for it: the holder may be
/// waiting for this CPU's acknowledgement.
pub fn lock_serving<T>(lock: &Mutex<T>) -> MutexGuard<'_, T> {
    loop {
        if let Some(guard) = lock.try_lock() {
            return guard;
        }
        MAIL.serve(&KernelTlb);
        core::hint::spin_loop();
    }
}

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
        if crate::mem::kernel_space::is_permanent_table(table) {
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
