//! Memory on real hardware: the linear physical map, the frame allocator, the kernel's
//! own page tables, kernel stacks and the heap. The policies live in the `mm` library;
//! this module feeds it the bootloader's memory map and loads what it builds.

pub mod elf;
pub mod frames;
pub mod heap;
pub mod kernel_space;
pub mod pcp;
pub mod physmap;
pub mod report;
pub mod tests;

use bootloader_api::info::MemoryRegionKind;
use bootloader_api::BootInfo;
use spin::Once;

pub use kernel_space::{alloc_stack, map_mmio};

/// Why a memory operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemError {
    /// The memory map has no usable memory.
    NoUsableMemory,
    /// No usable range can hold the frame table.
    NoRoomForFrameTable,
    /// The memory map has overlapping or malformed usable ranges.
    BadMemoryMap,
    /// The frame allocator refused.
    Alloc(mm::buddy::AllocError),
    /// The frame allocator refused a free.
    Free(mm::buddy::FreeError),
    /// A page-table operation failed.
    Map(mm::paging::MapError),
    /// No frame left for a page table.
    OutOfFrames,
    /// The kernel image could not be read.
    Elf(elf::ElfError),
    /// A page of the kernel image is not mapped by the bootloader.
    KernelNotMapped(u64),
    /// The heap reached its virtual limit.
    HeapExhausted,
    /// More memory-map regions than the kernel keeps.
    TooManyRegions,
    /// The allocator audit found a broken invariant.
    Audit(mm::buddy::AuditError),
}

impl From<mm::buddy::AllocError> for MemError {
    fn from(e: mm::buddy::AllocError) -> Self {
        MemError::Alloc(e)
    }
}

/// Most memory-map regions kept for the boot report.
pub const MAX_REGIONS: usize = 256;

/// What the boot-time memory setup saw and did, kept for reports and later setup (the
/// bootloader's boot info is not mapped once our page tables are loaded).
pub struct BootMemory {
    /// The memory map: (start, end, kind).
    pub regions: [(u64, u64, MemoryRegionKind); MAX_REGIONS],
    /// How many entries of `regions` are valid.
    pub n_regions: usize,
    /// Where the frame table lives.
    pub frame_table: frames::FrameTablePlacement,
    /// Physical address of the ACPI RSDP, if the firmware gave one.
    pub rsdp: Option<u64>,
}

static BOOT_MEMORY: Once<BootMemory> = Once::new();

/// The boot-time memory facts.
pub fn boot_memory() -> &'static BootMemory {
    BOOT_MEMORY.get().expect("mem::init has not run")
}

/// Set up all memory management, switch to our own page tables and a stack with a guard
/// page, and continue in `next` (which never returns).
pub fn init(
    boot_info: &'static BootInfo,
    next: extern "sysv64" fn(usize) -> !,
) -> Result<(), MemError> {
    crate::arch::set_rsdp(boot_info.rsdp_addr.into_option());
    crate::arch::cpuid::report();
    let mut regions = [(0, 0, MemoryRegionKind::Bootloader); MAX_REGIONS];
    let mut usable = [frames::Range { start: 0, end: 0 }; MAX_REGIONS];
    let (mut n_regions, mut n_usable, mut phys_end) = (0usize, 0usize, 0u64);
    // UEFI maps come in many small pieces: adjacent regions of one kind are merged.
    for r in boot_info.memory_regions.iter() {
        phys_end = phys_end.max(r.end);
        match n_regions.checked_sub(1).map(|i| &mut regions[i]) {
            Some(last) if last.1 == r.start && last.2 == r.kind => last.1 = r.end,
            _ => {
                *regions.get_mut(n_regions).ok_or(MemError::TooManyRegions)? =
                    (r.start, r.end, r.kind);
                n_regions += 1;
            }
        }
    }
    for &(start, end, kind) in &regions[..n_regions] {
        if kind == MemoryRegionKind::Usable {
            usable[n_usable] = frames::Range { start, end };
            n_usable += 1;
        }
    }
    let frame_table = frames::init(&usable[..n_usable])?;
    let built = kernel_space::build(
        phys_end,
        (
            boot_info.kernel_addr,
            boot_info.kernel_len,
            boot_info.kernel_image_offset,
        ),
    )?;
    BOOT_MEMORY.call_once(|| BootMemory {
        regions,
        n_regions,
        frame_table,
        rsdp: boot_info.rsdp_addr.into_option(),
    });
    kernel_space::switch_to(&built, next, 0)
}
