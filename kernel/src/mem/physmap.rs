//! The linear map of all physical memory at [`crate::PHYS_MAP_BASE`]: the bootloader
//! sets it up and our own page tables keep it at the same address, mapped with the
//! largest pages that fit. [`KernelPhys`] gives the `mm` library access through it.

use crate::PHYS_MAP_BASE;
use mm::phys::PhysMem;
use x86_64::{PhysAddr, VirtAddr};

/// Physical memory as the kernel reaches it.
pub struct KernelPhys;

/// The one instance.
pub static PHYS: KernelPhys = KernelPhys;

/// Virtual address of physical `pa` in the linear map.
pub fn virt(pa: PhysAddr) -> VirtAddr {
    VirtAddr::new(PHYS_MAP_BASE + pa.as_u64())
}

/// One byte of physical memory.
pub fn read_byte(pa: PhysAddr) -> u8 {
    // SAFETY: every physical address the kernel reads this way lies in a region of the
    // memory map, all of which the linear map covers; a byte read has no side effect.
    unsafe { core::ptr::read_volatile(PHYS.ptr(pa)) }
}

/// One byte of a firmware table (ACPI) at `pa`.
pub fn read_firmware_byte(pa: PhysAddr) -> u8 {
    read_byte(pa)
}

// SAFETY: the linear map covers all of physical memory for the kernel's whole life
// (both the bootloader's tables and ours map it at PHYS_MAP_BASE), each frame at its own
// address, so pointers are valid for whole frames and aligned as the physical address is.
unsafe impl PhysMem for KernelPhys {
    fn ptr(&self, pa: PhysAddr) -> *mut u8 {
        virt(pa).as_mut_ptr()
    }
}
