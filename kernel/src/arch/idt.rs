//! The interrupt descriptor table: a handler for every CPU exception.
//!
//! Each handler prints what happened (for a page fault: the address, the error code and
//! the instruction pointer) and ends the run as a failure, except a breakpoint (which
//! continues), a page fault the address space loaded on the CPU resolves (through the
//! handler the address-space layer registers with [`set_user_fault_handler`]: the access
//! is retried) and a page fault raised by a
//! fault probe (see [`super::probe`]), which returns to the probe's fixup. A double fault
//! whose address lies in a stack's guard page is reported as a kernel stack overflow.

use super::gdt::{DOUBLE_FAULT_IST, MACHINE_CHECK_IST, NMI_IST};
use super::{guard, probe};
use spin::Once;
use x86_64::registers::control::Cr2;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame, PageFaultErrorCode};

static IDT: Once<InterruptDescriptorTable> = Once::new();

/// Resolves a page fault from `(address, error code, interrupts were on)`; true when the
/// access can be retried.
pub type FaultHandler = fn(u64, PageFaultErrorCode, bool) -> bool;

/// The handler of resolvable page faults, registered by the layer above (none: every
/// page fault is fatal unless a probe expects it).
static USER_FAULT_HANDLER: Once<FaultHandler> = Once::new();

/// Let `handler` resolve page faults from now on (the first registration stays).
pub fn set_user_fault_handler(handler: FaultHandler) {
    USER_FAULT_HANDLER.call_once(|| handler);
}

fn fatal(what: &str, frame: &InterruptStackFrame, error_code: Option<u64>) -> ! {
    super::serial::emergency_unlock();
    match error_code {
        Some(code) => log::error!(
            "EXCEPTION: {what} (error code {code:#x}) at rip {:#x}, rsp {:#x}",
            frame.instruction_pointer.as_u64(),
            frame.stack_pointer.as_u64()
        ),
        None => log::error!(
            "EXCEPTION: {what} at rip {:#x}, rsp {:#x}",
            frame.instruction_pointer.as_u64(),
            frame.stack_pointer.as_u64()
        ),
    }
    super::exit(super::ExitStatus::Failure)
}

macro_rules! fatal_handlers {
    ($($name:ident => $what:literal),* $(,)?) => {$(
        extern "x86-interrupt" fn $name(frame: InterruptStackFrame) {
            fatal($what, &frame, None)
        }
    )*};
}

macro_rules! fatal_handlers_with_code {
    ($($name:ident => $what:literal),* $(,)?) => {$(
        extern "x86-interrupt" fn $name(frame: InterruptStackFrame, code: u64) {
            fatal($what, &frame, Some(code))
        }
    )*};
}

fatal_handlers! {
    divide_error => "divide error",
    debug => "debug",
    overflow => "overflow",
    bound_range => "bound range exceeded",
    invalid_opcode => "invalid opcode",
    device_not_available => "device not available",
    x87 => "x87 floating point",
    simd => "SIMD floating point",
    virtualization => "virtualization",
    hv_injection => "hypervisor injection",
}

fatal_handlers_with_code! {
    invalid_tss => "invalid TSS",
    segment_not_present => "segment not present",
    stack_segment => "stack-segment fault",
    general_protection => "general protection fault",
    alignment_check => "alignment check",
    cp_protection => "control protection",
    vmm_communication => "VMM communication",
    security => "security exception",
}

extern "x86-interrupt" fn breakpoint(frame: InterruptStackFrame) {
    log::warn!(
        "breakpoint at rip {:#x}",
        frame.instruction_pointer.as_u64()
    );
}

extern "x86-interrupt" fn nmi(frame: InterruptStackFrame) {
    fatal("non-maskable interrupt", &frame, None)
}

extern "x86-interrupt" fn machine_check(frame: InterruptStackFrame) -> ! {
    fatal("machine check", &frame, None)
}

extern "x86-interrupt" fn double_fault(frame: InterruptStackFrame, code: u64) -> ! {
    let addr = Cr2::read_raw();
    if let Some(stack) = guard::owner_of(addr) {
        super::serial::emergency_unlock();
        log::error!(
            "KERNEL STACK OVERFLOW: {stack} hit its guard page at {addr:#x} (rip {:#x}, rsp {:#x})",
            frame.instruction_pointer.as_u64(),
            frame.stack_pointer.as_u64()
        );
        super::exit(super::ExitStatus::Failure)
    }
    fatal("double fault", &frame, Some(code))
}

extern "x86-interrupt" fn page_fault(mut frame: InterruptStackFrame, code: PageFaultErrorCode) {
    let addr = Cr2::read_raw();
    let interruptible = frame
        .cpu_flags
        .contains(x86_64::registers::rflags::RFlags::INTERRUPT_FLAG);
    if USER_FAULT_HANDLER
        .get()
        .is_some_and(|handle| handle(addr, code, interruptible))
    {
        return;
    }
    if probe::fixup(&mut frame, addr) {
        return;
    }
    super::serial::emergency_unlock();
    let guard_note = match guard::owner_of(addr) {
        Some(_) => " (guard page of a kernel stack: overflow)",
        None => "",
    };
    log::error!(
        "EXCEPTION: page fault at address {addr:#x}{guard_note}, error code {:#x} ({code:?}), rip {:#x}",
        code.bits(),
        frame.instruction_pointer.as_u64()
    );
    super::exit(super::ExitStatus::Failure)
}

fn build() -> InterruptDescriptorTable {
    let mut idt = InterruptDescriptorTable::new();
    idt.divide_error.set_handler_fn(divide_error);
    idt.debug.set_handler_fn(debug);
    idt.breakpoint.set_handler_fn(breakpoint);
    idt.overflow.set_handler_fn(overflow);
    idt.bound_range_exceeded.set_handler_fn(bound_range);
    idt.invalid_opcode.set_handler_fn(invalid_opcode);
    idt.device_not_available
        .set_handler_fn(device_not_available);
    idt.invalid_tss.set_handler_fn(invalid_tss);
    idt.segment_not_present.set_handler_fn(segment_not_present);
    idt.stack_segment_fault.set_handler_fn(stack_segment);
    idt.general_protection_fault
        .set_handler_fn(general_protection);
    idt.page_fault.set_handler_fn(page_fault);
    idt.x87_floating_point.set_handler_fn(x87);
    idt.alignment_check.set_handler_fn(alignment_check);
    idt.simd_floating_point.set_handler_fn(simd);
    idt.virtualization.set_handler_fn(virtualization);
    idt.cp_protection_exception.set_handler_fn(cp_protection);
    idt.hv_injection_exception.set_handler_fn(hv_injection);
    idt.vmm_communication_exception
        .set_handler_fn(vmm_communication);
    idt.security_exception.set_handler_fn(security);
    super::apic::set_vectors(&mut idt);
    // SAFETY: each IST index names a stack that every CPU's TSS provides (gdt.rs).
    unsafe {
        idt.double_fault
            .set_handler_fn(double_fault)
            .set_stack_index(DOUBLE_FAULT_IST);
        idt.non_maskable_interrupt
            .set_handler_fn(nmi)
            .set_stack_index(NMI_IST);
        idt.machine_check
            .set_handler_fn(machine_check)
            .set_stack_index(MACHINE_CHECK_IST);
    }
    idt
}

/// Load the IDT on the running CPU (built on first use).
pub fn init() {
    IDT.call_once(build).load();
}
