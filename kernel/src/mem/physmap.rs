//! The linear map of physical memory at [`crate::PHYS_MAP_BASE`]: the bootloader maps
//! everything there; our own page tables keep only RAM at the same address (see
//! [`super::kernel_space`]), so RAM pointers stay valid across the switch.
//! [`KernelPhys`] gives the `mm` library access through it; [`firmware_ptr`] reaches
//! firmware tables wherever they are.

use crate::PHYS_MAP_BASE;
use mm::backend::phys::PhysMem;
use x86_64::{PhysAddr, VirtAddr};

/// Physical memory as the kernel reaches it.
pub struct KernelPhys;

/// The one instance.
pub static PHYS: KernelPhys = KernelPhys;

/// Virtual address of physical `pa` in the linear map.
pub fn virt(pa: PhysAddr) -> VirtAddr {
    VirtAddr::new(PHYS_MAP_BASE + pa.as_u64())
}

/// One byte of RAM.
pub fn read_byte(pa: PhysAddr) -> u8 {
    // SAFETY: every physical address the kernel reads this way is RAM (the kernel image,
    // frames it allocated), which the linear map covers; a byte read has no side effect.
    unsafe { core::ptr::read_volatile(PHYS.ptr(pa)) }
}

/// Where `len` bytes of firmware tables at `pa` can be read: through the linear map
/// while the bootloader's tables are loaded or when they are RAM, else through the
/// firmware window (mapped on demand). None if the window cannot reach them.
pub fn firmware_ptr(pa: PhysAddr, len: u64) -> Option<*const u8> {
    let end = pa.as_u64().checked_add(len.max(1))?;
    let in_ram = !super::kernel_space::own_tables_loaded()
        || super::boot_memory().ram.contains(pa.as_u64(), end);
    if in_ram {
        return Some(virt(pa).as_ptr());
    }
    match super::kernel_space::map_firmware(pa, len) {
        Ok(va) => Some(va.as_ptr()),
        Err(e) => {
            log::warn!("firmware table at {pa:?} ({len} bytes) unreachable: {e:?}");
            None
        }
    }
}

// SAFETY: the linear map covers all RAM for the kernel's whole life (both the
// bootloader's tables and ours map it at PHYS_MAP_BASE), each frame at its own address,
// so pointers are valid for whole frames and aligned as the physical address is; the
// `mm` library only reaches frames of RAM (page tables and frames it allocated).
unsafe impl PhysMem for KernelPhys {
    fn ptr(&self, pa: PhysAddr) -> *mut u8 {
        virt(pa).as_mut_ptr()
    }
}
