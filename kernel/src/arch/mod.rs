//! x86_64-specific pieces: serial console, descriptor tables, exceptions, CPU features,
//! QEMU detection and how a run ends.

pub mod acpi;
pub mod apic;
pub mod baked;
pub mod cpuid;
pub mod fw_cfg;
pub mod gdt;
pub mod guard;
pub mod idt;
pub mod percpu;
pub mod probe;
pub mod serial;
pub mod srat;
pub mod timer;
pub mod tlb;

use core::sync::atomic::{AtomicU64, Ordering};
use spin::Once;
use x86_64::instructions::port::Port;
use x86_64::{PhysAddr, VirtAddr};

/// Maps `len` bytes of device registers at a physical address uncached and says where
/// (None: they cannot be mapped). The memory layer provides it to the hardware code that
/// needs registers, which cannot map anything itself.
pub type MapRegisters<'a> = &'a dyn Fn(PhysAddr, u64) -> Option<VirtAddr>;

/// How the hardware layer reaches physical memory it does not map itself (firmware
/// tables, device registers the ACPI tables name): given by the memory layer with
/// [`set_phys_access`] before anything reads firmware tables.
#[derive(Clone, Copy)]
pub struct PhysAccess {
    /// Where `len` bytes of firmware tables at a physical address can be read (None:
    /// unreachable).
    pub firmware: fn(PhysAddr, u64) -> Option<*const u8>,
    /// Maps `len` bytes of device registers at a physical address uncached and says
    /// where (None: they cannot be mapped).
    pub registers: fn(PhysAddr, u64) -> Option<VirtAddr>,
}

static PHYS_ACCESS: Once<PhysAccess> = Once::new();

/// Give the hardware layer its access to physical memory (the first call stays).
pub fn set_phys_access(access: PhysAccess) {
    PHYS_ACCESS.call_once(|| access);
}

/// Where `len` bytes of firmware tables at `pa` can be read; None before
/// [`set_phys_access`] or when unreachable.
pub fn firmware_ptr(pa: PhysAddr, len: u64) -> Option<*const u8> {
    PHYS_ACCESS.get().and_then(|a| (a.firmware)(pa, len))
}

/// Device registers at `pa` mapped uncached; None before [`set_phys_access`] or when
/// they cannot be mapped.
pub fn map_registers(pa: PhysAddr, len: u64) -> Option<VirtAddr> {
    PHYS_ACCESS.get().and_then(|a| (a.registers)(pa, len))
}

/// One byte of a firmware table (ACPI) at `pa`; all ones (as from nothing) if it cannot
/// be reached.
pub fn read_firmware_byte(pa: PhysAddr) -> u8 {
    match firmware_ptr(pa, 1) {
        // SAFETY: `firmware_ptr` returned a mapping of this byte (the memory layer's
        // linear map or firmware window), which stays mapped; a byte read has no side
        // effect.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => 0xFF,
    }
}

/// Physical address of the ACPI RSDP (0: none given), for [`is_qemu`].
static RSDP: AtomicU64 = AtomicU64::new(0);

/// Offset of the OEM id in the RSDP.
const RSDP_OEM_OFFSET: u64 = 9;

/// Tell [`is_qemu`] where the firmware's RSDP is.
pub fn set_rsdp(rsdp: Option<u64>) {
    RSDP.store(rsdp.unwrap_or(0), Ordering::Relaxed);
}

/// Whether the machine says it is QEMU: the CPUID hypervisor leaf names TCG or KVM, or
/// the ACPI RSDP carries QEMU's OEM id. Only then are QEMU's I/O ports (fw_cfg, the
/// debug-exit device) touched; on any other machine those ports may belong to something
/// else.
pub fn is_qemu() -> bool {
    qemu_evidence().is_some()
}

/// What says the machine is QEMU, if anything.
pub fn qemu_evidence() -> Option<fwparse::platform::QemuEvidence> {
    let rsdp = RSDP.load(Ordering::Relaxed);
    let oem = (rsdp != 0).then(|| {
        let mut oem = [0u8; 6];
        for (i, b) in (0u64..).zip(oem.iter_mut()) {
            *b = read_firmware_byte(PhysAddr::new(rsdp + RSDP_OEM_OFFSET + i));
        }
        oem
    });
    fwparse::platform::qemu_evidence(cpuid::features().hypervisor.as_ref(), oem.as_ref())
}

/// How a run ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// Everything asked for ran and passed.
    Success,
    /// Something failed; the console says what.
    Failure,
}

/// QEMU's isa-debug-exit device (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`):
/// writing v exits QEMU with status 2v+1.
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// End the run: under QEMU leave through isa-debug-exit (status 33 for success, 35 for
/// failure); on real hardware (or if the device is absent) halt forever.
pub fn exit(status: ExitStatus) -> ! {
    if is_qemu() {
        let code: u32 = match status {
            ExitStatus::Success => 0x10,
            ExitStatus::Failure => 0x11,
        };
        let mut port = Port::<u32>::new(DEBUG_EXIT_PORT);
        // SAFETY: under QEMU the run script attaches isa-debug-exit at this port; writing
        // it terminates the emulator. Without the device the write is ignored.
        unsafe { port.write(code) };
    }
    log::info!("run finished ({status:?}); halting");
    halt_forever()
}

/// Stop this CPU for good, interrupts off.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// Report a panic with its location and message, and end the run as a failure.
pub fn panic_report(info: &core::panic::PanicInfo) -> ! {
    x86_64::instructions::interrupts::disable();
    serial::emergency_unlock();
    log::error!("KERNEL PANIC: {info}");
    exit(ExitStatus::Failure)
}

/// The index of the CPU running this code (see [`crate::arch::percpu::cpu_index`]).
pub fn cpu_number() -> u32 {
    crate::arch::percpu::cpu_index()
}
