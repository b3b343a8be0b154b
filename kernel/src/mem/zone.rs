//! The buddy zone: the `mm` buddy allocator over a frame table placed in usable memory,
//! fed with every usable range of the bootloader's memory map, behind one lock.
//!
//! The lock is always taken with interrupts off so that an interrupt handler on the same
//! CPU can never deadlock against it. This is the lowest layer of the frame allocator:
//! it calls nothing above it (the per-CPU caches and the front sit over it).

use super::physmap;
use super::MemError;
use crate::arch::tlb::lock_serving;
use mm::base::addr::{Pfn, PAGE_SIZE};
use mm::frame::buddy::BuddyAllocator;
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
    x86_64::instructions::interrupts::without_interrupts(|| f(&mut lock_serving(buddy)))
}

/// The frame table (metadata of every frame).
pub fn table() -> FrameTable<'static> {
    with_buddy(|b| b.table())
}
