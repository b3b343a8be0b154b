//! The kernel's frame allocator: the `mm` buddy allocator over a frame table placed in
//! usable memory, fed with every usable range of the bootloader's memory map.
//!
//! One lock guards it; it is always taken with interrupts off so that an interrupt
//! handler on the same CPU can never deadlock against it.

use super::physmap;
use super::MemError;
use mm::base::addr::{Pfn, PAGE_SIZE};
use mm::frame::buddy::{BuddyAllocator, MigrateType};
use mm::frame::meta::{FrameMeta, FrameTable};
use spin::{Mutex, Once};
use x86_64::PhysAddr;

static BUDDY: Once<Mutex<BuddyAllocator<'static>>> = Once::new();

/// A usable physical range `[start, end)` in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Range {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// Where the frame table went, for the boot report.
#[derive(Clone, Copy, Debug)]
pub struct FrameTablePlacement {
    /// Physical address of the first record.
    pub start: u64,
    /// Bytes it occupies (rounded up to frames).
    pub bytes: u64,
    /// Frames it describes.
    pub frames: u64,
}

/// Build the frame table and the buddy allocator from the usable ranges.
/// The lowest frame (PFN 0) is never handed out.
pub fn init(usable: &[Range]) -> Result<FrameTablePlacement, MemError> {
    let max_end = usable
        .iter()
        .map(|r| r.end)
        .max()
        .ok_or(MemError::NoUsableMemory)?;
    let frames = max_end / PAGE_SIZE;
    let bytes = (frames * core::mem::size_of::<FrameMeta>() as u64).next_multiple_of(PAGE_SIZE);
    let home = usable
        .iter()
        .filter(|r| r.start >= 0x10_0000)
        .map(|r| (r.start.next_multiple_of(PAGE_SIZE), r.end))
        .find(|&(start, end)| end >= start + bytes)
        .ok_or(MemError::NoRoomForFrameTable)?;
    let table_start = home.0;
    let table_end = table_start + bytes;
    let ptr = physmap::virt(PhysAddr::new(table_start)).as_mut_ptr::<FrameMeta>();
    // SAFETY: [table_start, table_end) lies in a usable range that nothing else uses (the
    // buddy allocator below is told to skip it), and the linear map covers it.
    let table: FrameTable<'static> = unsafe { FrameTable::from_raw(ptr, frames as usize) };
    let mut buddy = BuddyAllocator::new(table);
    for r in usable {
        let start = r.start.max(PAGE_SIZE).next_multiple_of(PAGE_SIZE);
        let end = r.end & !(PAGE_SIZE - 1);
        for (s, e) in [(start, end.min(table_start)), (start.max(table_end), end)] {
            if s < e {
                buddy
                    .add_free_range(Pfn(s / PAGE_SIZE), Pfn(e / PAGE_SIZE))
                    .map_err(|_| MemError::BadMemoryMap)?;
            }
        }
    }
    BUDDY.call_once(|| Mutex::new(buddy));
    Ok(FrameTablePlacement {
        start: table_start,
        bytes,
        frames,
    })
}

/// Run `f` on the buddy allocator, interrupts off, lock held.
pub fn with_buddy<R>(f: impl FnOnce(&mut BuddyAllocator<'static>) -> R) -> R {
    let buddy = BUDDY.get().expect("frame allocator used before mem::init");
    x86_64::instructions::interrupts::without_interrupts(|| f(&mut crate::tlb::lock_serving(buddy)))
}

/// The frame table (metadata of every frame).
pub fn table() -> FrameTable<'static> {
    with_buddy(|b| b.table())
}

/// Allocate a block of `order` (order 0 through this CPU's frame cache).
pub fn alloc(order: u8, mt: MigrateType) -> Result<Pfn, MemError> {
    if order == 0 {
        super::pcp::alloc(table(), mt)
    } else {
        with_buddy(|b| b.alloc(order, mt)).map_err(MemError::Alloc)
    }
}

/// Allocate a block of `order` and zero it.
pub fn alloc_zeroed(order: u8, mt: MigrateType) -> Result<PhysAddr, MemError> {
    let pfn = alloc(order, mt)?;
    for i in 0..1u64 << order {
        mm::backend::phys::PhysMem::zero_frame(&physmap::PHYS, pfn.add(i).addr());
    }
    Ok(pfn.addr())
}

/// Free a block obtained from this allocator (order 0 through this CPU's frame cache).
pub fn free(pa: PhysAddr, order: u8) -> Result<(), MemError> {
    if order == 0 {
        super::pcp::free(table(), Pfn::containing(pa))
    } else {
        with_buddy(|b| b.free(Pfn::containing(pa), order)).map_err(MemError::Free)
    }
}

/// Allocate exactly the block at `pfn` of `order`; a frame of it that sits in a per-CPU
/// cache is drained back first.
pub fn alloc_at(pfn: Pfn, order: u8, mt: MigrateType) -> Result<Pfn, MemError> {
    match with_buddy(|b| b.alloc_at(pfn, order, mt)) {
        Err(mm::frame::buddy::AllocError::NotFree) => {
            super::pcp::drain_all(table())?;
            with_buddy(|b| b.alloc_at(pfn, order, mt)).map_err(MemError::Alloc)
        }
        r => r.map_err(MemError::Alloc),
    }
}

/// Empty every per-CPU frame cache, then audit the buddy allocator.
pub fn drain_and_audit() -> Result<mm::frame::buddy::AuditReport, MemError> {
    super::pcp::drain_all(table())?;
    with_buddy(|b| b.audit()).map_err(MemError::Audit)
}
