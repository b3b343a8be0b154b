//! The kernel binary: the thin layer that puts the `mm` library on x86_64 hardware.
//!
//! Boot order: serial console and logging, GDT/TSS and IDT, then memory (frame table,
//! buddy allocator, our own page tables, heap), then whatever the kernel options ask for:
//! the demonstration (default), the in-kernel tests, or the benchmarks.
#![no_std]
#![no_main]
#![feature(abi_x86_interrupt)]
#![deny(unsafe_op_in_unsafe_fn)]



mod arch;
mod options;

use bootloader_api::config::{BootloaderConfig, Mapping};
use bootloader_api::{entry_point, BootInfo};

/// Where the bootloader maps all physical memory; our own page tables keep the same
/// linear map so pointers into it stay valid across the switch.
pub const PHYS_MAP_BASE: u64 = 0xFFFF_8000_0000_0000;

/// The bootloader's view of what we need: a linear map of physical memory at a fixed
/// address, and a boot stack big enough to build our own page tables on.
pub static BOOTLOADER_CONFIG: BootloaderConfig = {
    let mut config = BootloaderConfig::new_default();
    config.mappings.physical_memory = Some(Mapping::FixedAddress(PHYS_MAP_BASE));
    config.mappings.dynamic_range_start = Some(0xFFFF_F000_0000_0000);
    config.mappings.dynamic_range_end = Some(0xFFFF_F7FF_FFFF_FFFF);
    config.kernel_stack_size = 256 * 1024;
    config
};

entry_point!(kernel_main, config = &BOOTLOADER_CONFIG);

fn kernel_main(boot_info: &'static mut BootInfo) -> ! {
    arch::serial::init();
    arch::gdt::init_boot_cpu();
    arch::idt::init();
    let opts = options::Options::load();
    log::info!("kernel options: {}", opts.raw());
    let _ = boot_info;
    arch::exit(arch::ExitStatus::Success)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    arch::panic_report(info)
}
