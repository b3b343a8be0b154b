//! Fault probes: read or write a word at an address that may not be mapped, and learn
//! whether it faulted instead of crashing. Tests use them to prove that an unmapped page
//! (or a stale translation that a shootdown removed) really faults.
//!
//! The probe instructions live in a small assembly routine; the page-fault handler
//! recognises their addresses and resumes at a fixup that returns "faulted".

use x86_64::structures::idt::InterruptStackFrame;
use x86_64::VirtAddr;

core::arch::global_asm!(
    ".global mmk_probe_read",
    ".global mmk_probe_read_insn",
    ".global mmk_probe_write",
    ".global mmk_probe_write_insn",
    ".global mmk_probe_fault",
    "mmk_probe_read:",
    "mmk_probe_read_insn:",
    "    mov rax, [rdi]",
    "    mov [rsi], rax",
    "    xor eax, eax",
    "    ret",
    "mmk_probe_write:",
    "mmk_probe_write_insn:",
    "    mov [rdi], rsi",
    "    xor eax, eax",
    "    ret",
    "mmk_probe_fault:",
    "    mov eax, 1",
    "    ret",
);

unsafe extern "sysv64" {
    fn mmk_probe_read(addr: u64, out: *mut u64) -> u64;
    fn mmk_probe_write(addr: u64, value: u64) -> u64;
    static mmk_probe_read_insn: u8;
    static mmk_probe_write_insn: u8;
    static mmk_probe_fault: u8;
}

/// The word at `addr`, or None if reading it faulted.
pub fn read_u64(addr: u64) -> Option<u64> {
    let mut value = 0u64;
    // SAFETY: the routine reads one word at `addr`; a page fault there is caught by
    // `fixup` and turned into the return value 1. `out` is a valid local.
    let faulted = unsafe { mmk_probe_read(addr, &mut value) };
    (faulted == 0).then_some(value)
}

/// Write `value` at `addr`; false if the write faulted (nothing was written).
///
/// # Safety
/// If `addr` is mapped writable the write happens: the caller must own those bytes.
pub unsafe fn write_u64(addr: u64, value: u64) -> bool {
    // SAFETY: the caller owns the bytes if mapped; a fault is caught by `fixup`.
    unsafe { mmk_probe_write(addr, value) == 0 }
}

/// Called by the page-fault handler: if the fault is a probe's, redirect it to the fixup
/// and return true.
pub fn fixup(frame: &mut InterruptStackFrame, _addr: u64) -> bool {
    let rip = frame.instruction_pointer;
    let read = VirtAddr::from_ptr(&raw const mmk_probe_read_insn);
    let write = VirtAddr::from_ptr(&raw const mmk_probe_write_insn);
    if rip != read && rip != write {
        return false;
    }
    let fixup = VirtAddr::from_ptr(&raw const mmk_probe_fault);
    // SAFETY: we only move the return address to the probe's fixup, which ends the probe
    // routine with a return value of 1; stack and segment state are left as they were.
    unsafe {
        frame
            .as_mut()
            .update(|value| value.instruction_pointer = fixup);
    }
    true
}
