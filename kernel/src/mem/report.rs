//! The boot report: the memory map, the allocator's free areas per order and the layout
//! of the page tables the kernel built, as a person reads them on the console.

use super::{boot_memory, frames, heap, kernel_space};
use crate::sprintln;
use mm::base::addr::{PageSize, MAX_ORDER};
use x86_64::structures::paging::PageTableFlags as F;

fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

/// Print the memory map as the bootloader gave it.
pub fn memory_map() {
    let bm = boot_memory();
    sprintln!("memory map ({} regions):", bm.n_regions);
    let mut usable = 0;
    for &(start, end, kind) in &bm.regions[..bm.n_regions] {
        sprintln!(
            "  {start:#014x}-{end:#014x} {:>8} KiB  {kind:?}",
            (end - start) >> 10
        );
        if kind == bootloader_api::info::MemoryRegionKind::Usable {
            usable += end - start;
        }
    }
    let ft = bm.frame_table;
    sprintln!(
        "usable: {} MiB; frame table: {} frames x {} B = {} KiB at {:#x}",
        mib(usable),
        ft.frames,
        core::mem::size_of::<mm::frame::meta::FrameMeta>(),
        ft.bytes >> 10,
        ft.start
    );
}

/// Print the buddy allocator's free blocks per order.
pub fn free_areas() {
    let (areas, free, total) =
        frames::with_buddy(|b| (b.free_areas(), b.free_frames(), b.total_frames()));
    sprintln!("free areas per order (order: blocks):");
    for (order, chunk) in areas.chunks(7).enumerate() {
        let mut line = alloc::string::String::new();
        for (i, n) in chunk.iter().enumerate() {
            let o = order * 7 + i;
            if o <= MAX_ORDER as usize {
                line.push_str(&alloc::format!("  {o:>2}:{n:<6}"));
            }
        }
        sprintln!("{line}");
    }
    sprintln!(
        "free frames: {free} of {total} managed ({} MiB free)",
        mib(free as u64 * 4096)
    );
}

fn describe(flags: F) -> &'static str {
    match (flags.contains(F::WRITABLE), flags.contains(F::NO_EXECUTE)) {
        (false, false) => "r-x",
        (false, true) => "r--",
        (true, true) => "rw-",
        (true, false) => "rwx",
    }
}

/// Print the kernel page tables as runs of leaves of one size and one set of rights.
pub fn page_tables() {
    let mut runs: alloc::vec::Vec<(u64, u64, PageSize, &'static str, u64, bool)> =
        alloc::vec::Vec::new();
    kernel_space::with_kernel(|pt, _| {
        for (va, t) in pt.walk_all() {
            let (va, rights, cache) = (
                va.as_u64(),
                describe(t.flags),
                t.flags.contains(F::NO_CACHE),
            );
            match runs.last_mut() {
                Some(r) if r.1 == va && r.2 == t.size && r.3 == rights && r.5 == cache => {
                    r.1 += t.size.bytes();
                    r.4 += 1;
                }
                _ => runs.push((va, va + t.size.bytes(), t.size, rights, 1, cache)),
            }
        }
    });
    sprintln!(
        "kernel page tables (root {:#x}):",
        kernel_space::root().as_u64()
    );
    for (start, end, size, rights, n, uncached) in runs {
        let what = match start {
            s if s >= 0xFFFF_FFFF_8000_0000 => "kernel image",
            s if s >= kernel_space::MMIO_BASE => "device memory",
            s if s >= kernel_space::STACKS_BASE => "kernel stack",
            s if s >= kernel_space::HEAP_BASE => "kernel heap",
            s if s >= kernel_space::FIRMWARE_BASE => "firmware tables",
            s if s >= crate::PHYS_MAP_BASE => "physical memory map",
            _ => "lower half",
        };
        sprintln!(
            "  {start:#018x}-{end:#018x} {rights}{} {n:>6} x {size:?}  {what}",
            if uncached { " uncached" } else { "" }
        );
    }
    let (size, used) = heap::usage();
    sprintln!("heap: {} KiB mapped, {} KiB used", size >> 10, used >> 10);
}
