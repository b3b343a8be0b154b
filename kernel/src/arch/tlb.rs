//! This CPU's TLB and its shootdown mailbox: the `mm` shootdown protocol put on the local
//! APIC.
//!
//! [`KernelTlb`] gives the protocol this CPU's index, shootdown IPIs and local
//! invalidation (`invlpg`, or a full flush: a CR3 reload for user mappings, a CR4.PGE
//! toggle when global kernel mappings are concerned; a batch that only frees page tables
//! reloads CR3, which drops every paging-structure cache entry). [`MAIL`] holds every
//! CPU's mailbox; the IPI handler [`interrupt`] serves this CPU's.
//!
//! Spinning on a lock with interrupts disabled while another CPU waits for our
//! acknowledgement would deadlock, so [`lock_serving`] serves shootdowns while it spins.

use super::apic;
use crate::arch::percpu::{self, CpuSet};
use mm::backend::shootdown::{FlushBatch, Mailboxes, ShootdownError, TlbArch};
use spin::{Mutex, MutexGuard};
use x86_64::registers::control::{Cr3, Cr4, Cr4Flags};
use x86_64::structures::idt::InterruptStackFrame;
use x86_64::VirtAddr;

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
