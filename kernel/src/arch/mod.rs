//! x86_64-specific pieces: serial console, descriptor tables, exceptions, QEMU detection
//! and how a run ends.

pub mod acpi;
pub mod apic;
pub mod fw_cfg;
pub mod gdt;
pub mod guard;
pub mod idt;
pub mod probe;
pub mod serial;
pub mod smp;
pub mod srat;
pub mod timer;

use x86_64::instructions::port::Port;

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
    if fw_cfg::is_qemu() {
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

/// The index of the CPU running this code (see [`crate::percpu::cpu_index`]).
pub fn cpu_number() -> u32 {
    crate::percpu::cpu_index()
}
