//! The kernel binary: the thin layer that puts the `mm` library on x86_64 hardware.
//!
//! Boot order: serial console and logging, GDT/TSS and IDT, then memory (frame table,
//! buddy allocator, our own page tables, heap), the other CPUs, address spaces and the
//! NUMA topology, the huge-page daemon (started when the options say so), then whatever
//! the kernel options ask for:
//! the demonstration (default), the in-kernel tests, the benchmarks, or the soak.
#![no_std]
#![no_main]
#![feature(abi_x86_interrupt)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

mod arch;
mod bench;
mod harness;
mod mem;
mod options;
mod smp;
mod tlb;
mod vm;

use arch::ExitStatus;
use bootloader_api::config::{BootloaderConfig, Mapping};
use bootloader_api::{entry_point, BootInfo};
use options::{Mode, Options, SelfTest};

/// Where the bootloader maps all physical memory; our own page tables keep the same
/// linear map so pointers into it stay valid across the switch.
pub const PHYS_MAP_BASE: u64 = 0xFFFF_8000_0000_0000;

/// The bootloader's view of what we need: a linear map of physical memory at a fixed
/// address, its own mappings kept out of our ranges, and a roomy boot stack.
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
    log::info!("booting; kernel options: {:?}", Options::load().raw());
    // On success `mem::init` continues in `after_switch` and never returns.
    match mem::init(boot_info, after_switch) {
        Err(e) => log::error!("memory setup failed: {e:?}"),
        Ok(()) => log::error!("memory setup returned instead of continuing on its own stack"),
    }
    arch::exit(ExitStatus::Failure)
}

/// Runs on our own page tables and our own boot stack.
extern "sysv64" fn after_switch(_: usize) -> ! {
    if let Err(e) = mem::heap::init() {
        log::error!("heap setup failed: {e:?}");
        arch::exit(ExitStatus::Failure)
    }
    log::info!(
        "on our own page tables (root {:#x})",
        mem::kernel_space::root().as_u64()
    );
    let opts = Options::load();
    let parsed = match opts.parse() {
        Ok(parsed) => parsed,
        Err(e) => {
            log::error!("kernel options {:?} refused: {e}", opts.raw());
            arch::exit(ExitStatus::Failure)
        }
    };
    if let Err(e) = smp::init(mem::boot_memory().rsdp, parsed.apfail) {
        log::error!("CPU bring-up: {e}");
    }
    if let Err(e) = vm::init(mem::boot_memory().rsdp) {
        log::error!("address-space setup failed: {e:?}");
        arch::exit(ExitStatus::Failure)
    }
    if let Err(e) = vm::daemon::init(parsed.thp) {
        log::error!("huge-page daemon: {e}");
    }
    match parsed.mode {
        Mode::Demo => demo(parsed.seed, parsed.selftest == Some(SelfTest::Corrupt)),
        Mode::Test => harness::run(&parsed),
        Mode::Bench => {
            bench::run(parsed.seed, parsed.quick, parsed.filter);
            arch::exit(ExitStatus::Success)
        }
        Mode::Overflow => overflow(0),
        Mode::Soak => match vm::soak::run(parsed.seed, parsed.minutes) {
            Ok(0) => arch::exit(ExitStatus::Success),
            Ok(_) => arch::exit(ExitStatus::Failure),
            Err(why) => {
                log::error!("soak: {why}");
                arch::exit(ExitStatus::Failure)
            }
        },
    }
}

/// The demonstration: what the kernel built, then contiguity generation on the scenario
/// of `seed`, then the end of the run: a failure when a goal was not met (corruption and
/// failed audits included) or the scenario could not be built. `corrupt` damages a page
/// before the check (a self-test).
fn demo(seed: u64, corrupt: bool) -> ! {
    mem::report::memory_map();
    mem::report::free_areas();
    mem::report::page_tables();
    sprintln!("NUMA nodes (free / used / reserved):");
    vm::numa::report_usage();
    match vm::demo::run(seed, corrupt) {
        Ok(()) => arch::exit(ExitStatus::Success),
        Err(why) => {
            log::error!("demonstration FAILED: {why}");
            arch::exit(ExitStatus::Failure)
        }
    }
}

/// Recurse until the kernel stack runs into its guard page (the double-fault handler
/// reports it and ends the run); the depth bound only exists to make the recursion
/// finite on paper: no kernel stack holds that many frames.
fn overflow(depth: u64) -> ! {
    let frame = [depth; 64];
    core::hint::black_box(&frame);
    if depth < u64::MAX {
        overflow(core::hint::black_box(depth + 1))
    }
    panic!("the stack never overflowed")
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    if let Some(test) = harness::current_test() {
        arch::serial::emergency_unlock();
        sprintln!("FAILED: panicked in {test}: {info}");
    }
    arch::panic_report(info)
}
