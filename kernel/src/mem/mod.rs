//! Memory on real hardware: the linear physical map, the frame allocator, the kernel's
//! own page tables, kernel stacks and the heap. The policies live in the `mm` library;
//! this module feeds it the bootloader's memory map and loads what it builds.

pub mod elf;
pub mod frames;
pub mod heap;
pub mod kernel_flush;
pub mod kernel_space;
pub mod kernel_space_tests;
pub mod pcp;
pub mod physmap;
pub mod report;
pub mod tests;
pub mod zone;

use bootloader_api::info::MemoryRegionKind;
use bootloader_api::BootInfo;
use fwparse::memmap::{self, Kind, RangeSet};
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
    Alloc(mm::frame::buddy::AllocError),
    /// The frame allocator refused a free.
    Free(mm::frame::buddy::FreeError),
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
    /// The CPU has no no-execute bit (or the firmware turned it off); the kernel's W^X
    /// layout and every user mapping rely on it.
    NoNx,
    /// A device mapping was asked for over RAM (which is mapped write-back).
    MmioOverRam(u64),
    /// A physical address beyond what the device or firmware window reaches.
    OutsideWindow(u64),
    /// The allocator audit found a broken invariant.
    Audit(mm::frame::buddy::AuditError),
}

impl From<mm::frame::buddy::AllocError> for MemError {
    fn from(e: mm::frame::buddy::AllocError) -> Self {
        MemError::Alloc(e)
    }
}

/// Most memory-map regions kept for the boot report, and most ranges of usable memory
/// and of RAM kept (more are dropped and reported, never overflowing a table).
pub const MAX_REGIONS: usize = 256;

/// What the boot-time memory setup saw and did, kept for reports and later setup (the
/// bootloader's boot info is not mapped once our page tables are loaded).
pub struct BootMemory {
    /// The memory map: (start, end, kind).
    pub regions: [(u64, u64, MemoryRegionKind); MAX_REGIONS],
    /// How many entries of `regions` are valid.
    pub n_regions: usize,
    /// Every range of RAM (what the linear map covers), sorted and disjoint.
    pub ram: RangeSet<MAX_REGIONS>,
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

/// How a region of the bootloader's memory map is mapped.
fn kind_of(kind: MemoryRegionKind) -> Kind {
    match kind {
        MemoryRegionKind::Usable => Kind::Usable,
        MemoryRegionKind::Bootloader => Kind::Ram,
        MemoryRegionKind::UnknownUefi(ty) => memmap::uefi_kind(ty),
        MemoryRegionKind::UnknownBios(ty) => memmap::e820_kind(ty),
        _ => Kind::Reserved,
    }
}

/// Set up all memory management, switch to our own page tables and a stack with a guard
/// page, and continue in `next` (which never returns).
pub fn init(
    boot_info: &'static BootInfo,
    next: extern "sysv64" fn(usize) -> !,
) -> Result<(), MemError> {
    crate::arch::set_phys_access(crate::arch::PhysAccess {
        firmware: physmap::firmware_ptr,
        registers: |pa, len| map_mmio(pa, len).ok(),
    });
    crate::arch::set_rsdp(boot_info.rsdp_addr.into_option());
    crate::arch::baked::capture(boot_info);
    crate::arch::cpuid::report();
    if !crate::arch::cpuid::features().nx {
        return Err(MemError::NoNx);
    }
    let mut regions = [(0, 0, MemoryRegionKind::Bootloader); MAX_REGIONS];
    let mut n_regions = 0usize;
    // UEFI maps come in many small pieces: adjacent regions of one kind are merged for
    // the report; what does not fit is left out of it (the ranges below keep it).
    for r in boot_info.memory_regions.iter() {
        match n_regions.checked_sub(1).map(|i| &mut regions[i]) {
            Some(last) if last.1 == r.start && last.2 == r.kind => last.1 = r.end,
            _ => {
                if let Some(slot) = regions.get_mut(n_regions) {
                    *slot = (r.start, r.end, r.kind);
                    n_regions += 1;
                }
            }
        }
    }
    let map = memmap::normalise::<MAX_REGIONS>(
        boot_info
            .memory_regions
            .iter()
            .map(|r| (r.start, r.end, kind_of(r.kind))),
        kernel_space::LINEAR_MAX,
    );
    if map.inverted > 0 || map.usable.dropped_bytes() > 0 || map.ram.dropped_bytes() > 0 {
        log::warn!(
            "memory map: {} inverted regions ignored; {} KiB of usable memory and {} KiB of RAM left out (more than {MAX_REGIONS} ranges)",
            map.inverted,
            map.usable.dropped_bytes() >> 10,
            map.ram.dropped_bytes() >> 10
        );
    }
    let mut usable = [frames::Range { start: 0, end: 0 }; MAX_REGIONS];
    for (slot, r) in usable.iter_mut().zip(map.usable.ranges()) {
        *slot = frames::Range {
            start: r.start,
            end: r.end,
        };
    }
    let frame_table = frames::init(&usable[..map.usable.ranges().len()])?;
    let built = kernel_space::build(
        map.ram.ranges(),
        (
            boot_info.kernel_addr,
            boot_info.kernel_len,
            boot_info.kernel_image_offset,
        ),
    )?;
    BOOT_MEMORY.call_once(|| BootMemory {
        regions,
        n_regions,
        ram: map.ram,
        frame_table,
        rsdp: boot_info.rsdp_addr.into_option(),
    });
    kernel_space::switch_to(&built, next, 0)
}
