//! The local APIC of each CPU, and inter-processor interrupts.
//!
//! x2APIC (registers are MSRs) when CPUID says the CPU has it, xAPIC (registers are an
//! uncached MMIO page) otherwise; [`Reg`] names the registers both ways. Each CPU enables
//! its APIC with a spurious vector and an error vector. The legacy 8259 PICs are remapped
//! out of the exception range and masked: every interrupt we take comes from the APIC.
//!
//! IPIs use fixed delivery, physical destination: to one CPU, to a [`CpuSet`] (one ICR
//! write per CPU), or to all CPUs but the sender (the ICR shorthand).

use super::timer::{self, Deadline};
use crate::arch::percpu::{self, CpuSet};
use spin::Once;
use x86_64::instructions::port::Port;
use x86_64::registers::model_specific::{ApicBase, ApicBaseFlags, Msr};
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame};
use x86_64::VirtAddr;

/// The local APIC timer's vector.
pub const TIMER_VECTOR: u8 = 0x40;
/// Wakes a halted CPU to look at its work queue; the handler only acknowledges.
pub const WAKE_VECTOR: u8 = 0x41;
/// Counted in the receiving CPU's [`percpu::PerCpu::pings`]: proves delivery.
pub const PING_VECTOR: u8 = 0x42;
/// The APIC's error interrupt.
pub const ERROR_VECTOR: u8 = 0xFE;
/// The APIC's spurious-interrupt vector (low four bits set, as older APICs require).
pub const SPURIOUS_VECTOR: u8 = 0xFF;

/// Where the 8259 PICs' vectors go before they are masked (out of the exception range,
/// below every vector we use).
const PIC_VECTOR_BASE: u8 = 0x20;

/// How the local APIC registers are reached.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// MSR 0x800 + register offset / 16.
    X2Apic,
    /// The register page mapped uncached at `base`.
    XApic { base: VirtAddr },
}

static MODE: Once<Mode> = Once::new();

/// Local APIC registers, by their xAPIC MMIO offset.
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
pub(super) enum Reg {
    /// Local APIC ID.
    Id = 0x20,
    /// Task priority.
    Tpr = 0x80,
    /// End of interrupt.
    Eoi = 0xB0,
    /// Spurious-interrupt vector and software enable.
    Svr = 0xF0,
    /// Error status.
    Esr = 0x280,
    /// Interrupt command, low half (the whole ICR in x2APIC mode).
    IcrLow = 0x300,
    /// Interrupt command, high half (xAPIC only: destination).
    IcrHigh = 0x310,
    /// LVT timer.
    LvtTimer = 0x320,
    /// LVT LINT0 (the 8259's ExtINT line in virtual-wire mode).
    LvtLint0 = 0x350,
    /// LVT error.
    LvtError = 0x370,
    /// Timer initial count.
    TimerInitial = 0x380,
    /// Timer current count.
    TimerCurrent = 0x390,
    /// Timer divide configuration.
    TimerDivide = 0x3E0,
}

const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
const SVR_ENABLE: u32 = 1 << 8;
const ICR_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_ALL_BUT_SELF: u32 = 0b11 << 18;
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
/// How long the xAPIC may keep the previous IPI pending.
const ICR_TIMEOUT_MS: u64 = 100;
/// The divide configuration for "divide by 16".
const TIMER_DIVIDE_16: u32 = 0b0011;

/// Why the local APIC could not be set up or an IPI not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicError {
    /// CPUID says this CPU has no local APIC.
    NoApic,
    /// xAPIC mode, but the caller mapped no register page (see [`xapic_page`]).
    XapicUnmapped,
    /// The target CPU is not online.
    Offline(u32),
    /// Vectors 0-31 are exceptions; fixed IPIs must use 32-255.
    BadVector(u8),
    /// An APIC ID above 255 cannot be addressed in xAPIC mode.
    UnaddressableApicId(u32),
    /// The xAPIC never finished delivering the previous IPI.
    IcrBusy,
}

fn mode() -> Mode {
    *MODE
        .get()
        .expect("local APIC used before apic::init_boot_cpu")
}

/// Read a local APIC register of the running CPU.
pub(super) fn read(reg: Reg) -> u32 {
    match mode() {
        // SAFETY: x2APIC mode is enabled on every CPU before its registers are used, so
        // the MSR exists; reading an APIC register has no side effect.
        Mode::X2Apic => unsafe { Msr::new(0x800 + (reg as u32 >> 4)).read() as u32 },
        // SAFETY: `base` maps the APIC register page uncached for the kernel's lifetime;
        // `reg` is a 16-byte aligned register offset inside it.
        Mode::XApic { base } => unsafe {
            (base + u64::from(reg as u32))
                .as_ptr::<u32>()
                .read_volatile()
        },
    }
}

/// Write a local APIC register of the running CPU.
pub(super) fn write(reg: Reg, value: u32) {
    match mode() {
        // SAFETY: as in `read`; the callers in this file and timer.rs write only values
        // that keep the APIC in a state the kernel expects.
        Mode::X2Apic => unsafe { Msr::new(0x800 + (reg as u32 >> 4)).write(u64::from(value)) },
        // SAFETY: as in `read`.
        Mode::XApic { base } => unsafe {
            (base + u64::from(reg as u32))
                .as_mut_ptr::<u32>()
                .write_volatile(value)
        },
    }
}

/// Remap the two 8259 PICs to vectors 0x20-0x2F and mask every line.
fn disable_pic() {
    let mut cmd1 = Port::<u8>::new(0x20);
    let mut data1 = Port::<u8>::new(0x21);
    let mut cmd2 = Port::<u8>::new(0xA0);
    let mut data2 = Port::<u8>::new(0xA1);
    // SAFETY: the standard initialisation sequence of the PC's 8259 pair (ICW1-ICW4),
    // then a full mask; no other code drives the PICs.
    unsafe {
        cmd1.write(0x11);
        cmd2.write(0x11);
        data1.write(PIC_VECTOR_BASE);
        data2.write(PIC_VECTOR_BASE + 8);
        data1.write(4);
        data2.write(2);
        data1.write(1);
        data2.write(1);
        data1.write(0xFF);
        data2.write(0xFF);
    }
}

/// The physical page of the xAPIC registers when the local APIC will run in xAPIC mode
/// (None in x2APIC mode, whose registers are MSRs): the caller maps it uncached and
/// hands the mapping to [`init_boot_cpu`].
pub fn xapic_page() -> Option<x86_64::PhysAddr> {
    let cpu = super::cpuid::features();
    (cpu.apic && !cpu.x2apic).then(|| ApicBase::read().0.start_address())
}

/// Disable the PICs, choose x2APIC or xAPIC, and enable the boot CPU's local APIC;
/// `xapic` is the uncached mapping of [`xapic_page`] (needed in xAPIC mode only).
pub(crate) fn init_boot_cpu(xapic: Option<VirtAddr>) -> Result<(), ApicError> {
    let cpu = super::cpuid::features();
    if !cpu.apic {
        return Err(ApicError::NoApic);
    }
    disable_pic();
    let mode = if cpu.x2apic {
        log::info!("local APIC: x2APIC mode");
        Mode::X2Apic
    } else {
        let pa = ApicBase::read().0.start_address();
        let base = xapic.ok_or(ApicError::XapicUnmapped)?;
        log::info!("local APIC: xAPIC mode, registers at {:#x}", pa.as_u64());
        Mode::XApic { base }
    };
    MODE.call_once(|| mode);
    init_this_cpu();
    Ok(())
}

/// Enable the running CPU's local APIC (in the mode the boot CPU chose): spurious and
/// error vectors, no task-priority filtering, LINT0 masked, timer masked.
pub(crate) fn init_this_cpu() {
    let mut flags = ApicBaseFlags::LAPIC_ENABLE;
    if matches!(mode(), Mode::X2Apic) {
        flags |= ApicBaseFlags::X2APIC_ENABLE;
    }
    let (frame, old) = ApicBase::read();
    // SAFETY: the base address stays where the firmware put it (and where the xAPIC
    // page is mapped); only the enable bits are set.
    unsafe { ApicBase::write(frame, old | flags) };
    write(Reg::Tpr, 0);
    write(Reg::LvtLint0, LVT_MASKED);
    write(Reg::LvtTimer, LVT_MASKED);
    write(Reg::LvtError, u32::from(ERROR_VECTOR));
    write(Reg::Esr, 0);
    write(Reg::Esr, 0);
    write(Reg::Svr, SVR_ENABLE | u32::from(SPURIOUS_VECTOR));
    eoi();
}

/// Whether the local APICs run in x2APIC mode (registers are MSRs, no MMIO page).
pub fn is_x2apic() -> bool {
    matches!(mode(), Mode::X2Apic)
}

/// The running CPU's local APIC ID.
pub fn id() -> u32 {
    match mode() {
        Mode::X2Apic => read(Reg::Id),
        Mode::XApic { .. } => read(Reg::Id) >> 24,
    }
}

/// Signal end of interrupt.
pub fn eoi() {
    write(Reg::Eoi, 0);
}

/// Program the running CPU's timer: `vector`, divide by 16, `initial` count, periodic or
/// one-shot, masked or not.
pub(super) fn set_timer(vector: u8, initial: u32, periodic: bool, masked: bool) {
    let mut lvt = u32::from(vector);
    if periodic {
        lvt |= LVT_TIMER_PERIODIC;
    }
    if masked {
        lvt |= LVT_MASKED;
    }
    write(Reg::TimerDivide, TIMER_DIVIDE_16);
    write(Reg::LvtTimer, lvt);
    write(Reg::TimerInitial, initial);
}

/// Write the interrupt command register: `low` to the CPU with APIC ID `dest`.
fn send_icr(dest: u32, low: u32) -> Result<(), ApicError> {
    match mode() {
        Mode::X2Apic => {
            // SAFETY: writing the x2APIC ICR sends an IPI and nothing else. The fences make
            // the sender's earlier stores visible before the IPI (WRMSR to x2APIC registers
            // is not serializing).
            unsafe {
                core::arch::asm!("mfence", "lfence", options(nostack, preserves_flags));
                Msr::new(0x830).write(u64::from(dest) << 32 | u64::from(low));
            }
        }
        Mode::XApic { .. } => {
            let dest = u8::try_from(dest).map_err(|_| ApicError::UnaddressableApicId(dest))?;
            // Interrupts off: a handler on this CPU sending its own IPI between the two
            // halves would redirect ours.
            x86_64::instructions::interrupts::without_interrupts(|| {
                let deadline = Deadline::after_ms(ICR_TIMEOUT_MS);
                while read(Reg::IcrLow) & ICR_PENDING != 0 {
                    if deadline.expired() {
                        return Err(ApicError::IcrBusy);
                    }
                    core::hint::spin_loop();
                }
                write(Reg::IcrHigh, u32::from(dest) << 24);
                write(Reg::IcrLow, low);
                Ok(())
            })?;
        }
    }
    Ok(())
}

fn fixed(vector: u8) -> Result<u32, ApicError> {
    if vector < 32 {
        return Err(ApicError::BadVector(vector));
    }
    Ok(u32::from(vector) | ICR_LEVEL_ASSERT)
}

/// Send `vector` to CPU `cpu` (which may be the sender).
pub fn send_ipi(cpu: u32, vector: u8) -> Result<(), ApicError> {
    let low = fixed(vector)?;
    let target = percpu::get(cpu)
        .filter(|_| percpu::is_online(cpu))
        .ok_or(ApicError::Offline(cpu))?;
    send_icr(target.apic_id(), low)
}

/// Send `vector` to every CPU of `set`. Nothing is sent unless every CPU of `set` is
/// online.
pub fn send_ipi_set(set: &CpuSet, vector: u8) -> Result<(), ApicError> {
    let low = fixed(vector)?;
    let online = percpu::online();
    if let Some(cpu) = set.difference(&online).iter().next() {
        return Err(ApicError::Offline(cpu));
    }
    for cpu in set.iter() {
        let target = percpu::get(cpu).ok_or(ApicError::Offline(cpu))?;
        send_icr(target.apic_id(), low)?;
    }
    Ok(())
}

/// Send `vector` to every CPU but the sender (including any that are not online: they
/// ignore fixed IPIs until they are).
pub fn send_ipi_all_but_self(vector: u8) -> Result<(), ApicError> {
    send_icr(0, fixed(vector)? | ICR_ALL_BUT_SELF)
}

/// Send INIT to the CPU with APIC ID `apic_id` (it waits for a SIPI afterwards).
pub(crate) fn send_init(apic_id: u32) -> Result<(), ApicError> {
    send_icr(apic_id, ICR_INIT | ICR_LEVEL_ASSERT)
}

/// Send a startup IPI: the CPU with APIC ID `apic_id` starts in real mode at physical
/// address `page << 12`.
pub(crate) fn send_startup(apic_id: u32, page: u8) -> Result<(), ApicError> {
    send_icr(apic_id, ICR_STARTUP | ICR_LEVEL_ASSERT | u32::from(page))
}

extern "x86-interrupt" fn spurious(_frame: InterruptStackFrame) {}

extern "x86-interrupt" fn error(_frame: InterruptStackFrame) {
    write(Reg::Esr, 0);
    let status = read(Reg::Esr);
    log::warn!("local APIC error, ESR {status:#x}");
    eoi();
}

extern "x86-interrupt" fn ping(_frame: InterruptStackFrame) {
    percpu::current().count_ping();
    eoi();
}

extern "x86-interrupt" fn wake(_frame: InterruptStackFrame) {
    eoi();
}

/// Install the handlers of the APIC's vectors in `idt`.
pub(super) fn set_vectors(idt: &mut InterruptDescriptorTable) {
    idt[TIMER_VECTOR].set_handler_fn(timer::interrupt);
    idt[WAKE_VECTOR].set_handler_fn(wake);
    idt[PING_VECTOR].set_handler_fn(ping);
    idt[ERROR_VECTOR].set_handler_fn(error);
    idt[SPURIOUS_VECTOR].set_handler_fn(spurious);
    idt[super::tlb::SHOOTDOWN_VECTOR].set_handler_fn(super::tlb::interrupt);
}
