//! The kernel's own page tables: built from scratch at boot, then loaded in CR3 for good.
//!
//! Layout of the kernel half:
//! - [`crate::PHYS_MAP_BASE`]: the linear map, write-back, of the RAM the memory map
//!   lists (usable, ACPI tables and NVS, bootloader and firmware regions) and nothing
//!   else: never a reserved range or an MMIO hole. Each RAM range gets the largest leaves
//!   that fit inside it (1 GiB only when the CPU has 1 GiB pages);
//! - [`FIRMWARE_BASE`]` + pa`: firmware tables outside RAM (ACPI tables in a reserved
//!   range, the BIOS's RSDP), mapped read-only write-back, page by page, on first use;
//! - [`HEAP_BASE`]: the kernel heap, grown on demand;
//! - [`STACKS_BASE`]: kernel stacks, one slot per CPU, each above an unmapped guard page;
//! - [`MMIO_BASE`]` + pa`: uncached device registers (local APIC, I/O APIC, HPET), each
//!   page mapped once whoever asks, never a page of RAM;
//! - 0xFFFF_FFFF_8000_0000: the kernel image, W^X: text read+execute, rodata read-only,
//!   data and bss read+write no-execute.
//!
//! Kernel mappings are global (they are the same in every address space). So every
//! physical page has at most one memory type: write-back RAM and firmware tables,
//! uncached devices.
//!
//! Address spaces copy the 256 upper PML4 entries when they are created, so those entries
//! must never change afterwards: [`preallocate_upper_half`] gives every one of them its
//! PDPT at boot, before the first address space exists, and [`with_kernel`] links back
//! any of these PDPTs that a change left empty and unlinked (they are never freed; see
//! [`is_permanent_table`]). Kernel mappings made later land below these PDPTs, which
//! every address space shares.

use super::elf::{self, SegmentKind};
use super::kernel_flush::KernelFlush;
use super::{frames, physmap, MemError};
use crate::arch::tlb::lock_serving;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use fwparse::memmap::Range;
use mm::backend::phys::PhysMem;
use mm::base::addr::{PageSize, PAGE_SIZE};
use mm::frame::buddy::MigrateType;
use mm::paging::{Entry, PageTable, TableAlloc};
use spin::{Mutex, Once};
use x86_64::structures::paging::PageTableFlags as F;
use x86_64::{PhysAddr, VirtAddr};

/// Start of the kernel heap's virtual range.
pub const HEAP_BASE: u64 = 0xFFFF_C000_0000_0000;
/// Most bytes the heap may grow to.
pub const HEAP_MAX: u64 = 64 << 30;
/// Start of the kernel stacks' virtual range.
pub const STACKS_BASE: u64 = 0xFFFF_D000_0000_0000;
/// Virtual bytes reserved per stack slot (stack + guard + spare).
pub const STACK_SLOT: u64 = 1 << 20;
/// Pages of one kernel stack.
pub const STACK_PAGES: u64 = 64;
/// Start of the uncached device-mapping range.
pub const MMIO_BASE: u64 = 0xFFFF_E000_0000_0000;
/// Device registers above this physical address cannot be mapped.
pub const MMIO_MAX: u64 = 1 << 44;
/// Start of the firmware-table window.
pub const FIRMWARE_BASE: u64 = 0xFFFF_B000_0000_0000;
/// Firmware tables above this physical address cannot be mapped.
pub const FIRMWARE_MAX: u64 = 1 << 44;
/// RAM above this physical address is left out of the linear map (and of the frame
/// allocator); the 16 TiB above it hold test mappings.
pub const LINEAR_MAX: u64 = 1 << 45;

/// Whether our own tables are in CR3 (before, the bootloader's map all of physical
/// memory at the same place).
static LOADED: AtomicBool = AtomicBool::new(false);

/// Whether [`switch_to`] has loaded the kernel's own page tables.
pub fn own_tables_loaded() -> bool {
    LOADED.load(Ordering::Acquire)
}

/// The largest leaf this CPU can map: 1 GiB if CPUID says so, else 2 MiB.
pub fn max_leaf() -> PageSize {
    if crate::arch::cpuid::features().page_1g {
        PageSize::Size1G
    } else {
        PageSize::Size2M
    }
}

/// The kernel page tables.
static KERNEL: Once<Mutex<PageTable<'static, physmap::KernelPhys>>> = Once::new();

/// Index of the first upper-half (kernel) PML4 entry.
const FIRST_KERNEL_PML4: usize = 256;

/// The PDPT of each upper-half PML4 entry (index - 256) once [`preallocate_upper_half`]
/// has run; 0 before.
static UPPER_PDPTS: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];

/// Page-table frames for kernel tables: unmovable order-0 frames.
pub struct KernelTableAlloc;

impl TableAlloc for KernelTableAlloc {
    fn alloc_table(&mut self) -> Option<PhysAddr> {
        let pfn = frames::alloc(0, MigrateType::Unmovable).ok()?;
        if let Some(meta) = frames::table().get(pfn) {
            meta.insert_flags(mm::frame::meta::FrameFlags::PAGETABLE);
        }
        Some(pfn.addr())
    }

    fn free_table(&mut self, table: PhysAddr) {
        if let Err(e) = frames::free(table, 0) {
            log::error!("returning unused page-table frame {table:?} failed: {e:?}");
        }
    }
}

/// Run `f` on the kernel page tables (lock held, interrupts off); the flush it collects
/// runs when `f` returns.
pub fn with_kernel<R>(
    f: impl FnOnce(&mut PageTable<'static, physmap::KernelPhys>, &mut KernelFlush) -> R,
) -> R {
    let kernel = KERNEL
        .get()
        .expect("kernel page tables used before mem::init");
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut flush = KernelFlush::new();
        let mut pt = lock_serving(kernel);
        let r = f(&mut pt, &mut flush);
        relink_upper_half(pt.root());
        drop(pt);
        flush.finish();
        r
    })
}

/// The word of PML4 entry `index` of the table at `root`.
fn pml4_slot(root: PhysAddr, index: usize) -> &'static AtomicU64 {
    physmap::PHYS.word(root + index as u64 * 8)
}

/// Give every upper-half PML4 entry of the kernel's root a PDPT (1 MiB of tables at
/// most), so that the kernel half address spaces copy is complete and never changes.
/// Called once at boot, before the first address space is created; returns how many
/// PDPTs were added.
pub fn preallocate_upper_half() -> Result<usize, MemError> {
    with_kernel(|pt, _| {
        let root = pt.root();
        let mut added = 0;
        for (i, pdpt) in UPPER_PDPTS.iter().enumerate() {
            let slot = pml4_slot(root, FIRST_KERNEL_PML4 + i);
            let entry = Entry::from_raw(slot.load(Ordering::Acquire));
            let table = if entry.is_present() {
                entry.table_addr()
            } else {
                let table = KernelTableAlloc
                    .alloc_table()
                    .ok_or(MemError::OutOfFrames)?;
                physmap::PHYS.zero_frame(table);
                slot.store(Entry::table(table, false).raw(), Ordering::Release);
                added += 1;
                table
            };
            pdpt.store(table.as_u64(), Ordering::Release);
        }
        Ok(added)
    })
}

/// Whether `table` is one of the upper-half PDPTs every address space shares: the
/// kernel flush sink keeps them when a change leaves them empty.
pub fn is_permanent_table(table: PhysAddr) -> bool {
    UPPER_PDPTS
        .iter()
        .any(|p| p.load(Ordering::Acquire) == table.as_u64())
}

/// Link back the permanent PDPTs that a change of the kernel tables (rooted at `root`)
/// unlinked because they became empty. Runs under the kernel page-table lock, before
/// anything else can map there; no translation went through them (they were empty).
fn relink_upper_half(root: PhysAddr) {
    for (i, pdpt) in UPPER_PDPTS.iter().enumerate() {
        let table = pdpt.load(Ordering::Acquire);
        let slot = pml4_slot(root, FIRST_KERNEL_PML4 + i);
        if table != 0 && slot.load(Ordering::Acquire) == 0 {
            slot.store(
                Entry::table(PhysAddr::new(table), false).raw(),
                Ordering::Release,
            );
        }
    }
}

/// Physical address of the kernel's PML4.
pub fn root() -> PhysAddr {
    with_kernel(|pt, _| pt.root())
}

/// Map `[va, va + len)` to `[pa, pa + len)` with the largest pages that fit (up to
/// [`max_leaf`]).
fn map_linear(
    pt: &mut PageTable<'static, physmap::KernelPhys>,
    va: u64,
    pa: u64,
    len: u64,
    flags: F,
    flush: &mut KernelFlush,
) -> Result<(), MemError> {
    let max = max_leaf();
    let mut off = 0;
    while off < len {
        let size = [PageSize::Size1G, PageSize::Size2M, PageSize::Size4K]
            .into_iter()
            .filter(|&s| s <= max)
            .find(|s| {
                (va + off).is_multiple_of(s.bytes())
                    && (pa + off).is_multiple_of(s.bytes())
                    && off + s.bytes() <= len
            })
            .unwrap_or(PageSize::Size4K);
        pt.map(
            va + off,
            PhysAddr::new(pa + off),
            size,
            flags,
            &mut KernelTableAlloc,
            flush,
        )
        .map_err(MemError::Map)?;
        off += size.bytes();
    }
    Ok(())
}

/// What was built, for the boot report.
pub struct Built {
    /// The new PML4.
    pub root: PhysAddr,
    /// Top of the boot CPU's new stack.
    pub stack_top: VirtAddr,
}

/// Build the kernel page tables: the linear map of the `ram` ranges, the kernel image
/// (from its ELF segments, translated through the bootloader's tables) and the boot
/// CPU's stack. Nothing is loaded yet.
pub fn build(ram: &[Range], kernel_elf: (u64, u64, u64)) -> Result<Built, MemError> {
    let mut alloc = KernelTableAlloc;
    let mut pt = PageTable::new(&physmap::PHYS, &mut alloc).ok_or(MemError::OutOfFrames)?;
    let mut flush = KernelFlush::new();
    let data = F::WRITABLE | F::NO_EXECUTE | F::GLOBAL;
    for r in ram {
        map_linear(
            &mut pt,
            crate::PHYS_MAP_BASE + r.start,
            r.start,
            r.len(),
            data,
            &mut flush,
        )?;
    }

    // SAFETY: CR3 holds the bootloader's PML4, a valid 4-level table reachable through
    // the linear map; we only read it.
    let boot = unsafe {
        PageTable::from_root(
            &physmap::PHYS,
            x86_64::registers::control::Cr3::read().0.start_address(),
        )
    };
    let (image, len, offset) = kernel_elf;
    let (segments, n) =
        elf::load_segments(PhysAddr::new(image), len, offset).map_err(MemError::Elf)?;
    for seg in segments[..n].iter().flatten() {
        let flags = match seg.kind {
            SegmentKind::Text => F::GLOBAL,
            SegmentKind::ReadOnly => F::NO_EXECUTE | F::GLOBAL,
            SegmentKind::Data => F::WRITABLE | F::NO_EXECUTE | F::GLOBAL,
        };
        let mut va = seg.start & !(PAGE_SIZE - 1);
        while va < seg.end {
            let t = boot.query(va).ok_or(MemError::KernelNotMapped(va))?;
            let pa = PhysAddr::new(t.pa.as_u64() & !(PAGE_SIZE - 1));
            pt.map(va, pa, PageSize::Size4K, flags, &mut alloc, &mut flush)
                .map_err(MemError::Map)?;
            va += PAGE_SIZE;
        }
    }
    let stack_top = map_stack(&mut pt, 0, &mut flush)?;
    flush.finish();
    let root = pt.root();
    KERNEL.call_once(|| Mutex::new(pt));
    Ok(Built { root, stack_top })
}

/// Map the stack of stack slot `slot` (its guard page stays unmapped and is registered)
/// and return its top.
fn map_stack(
    pt: &mut PageTable<'static, physmap::KernelPhys>,
    slot: u32,
    flush: &mut KernelFlush,
) -> Result<VirtAddr, MemError> {
    let guard = STACKS_BASE + u64::from(slot) * STACK_SLOT;
    let bottom = guard + PAGE_SIZE;
    for i in 0..STACK_PAGES {
        let frame = frames::alloc_zeroed(0, MigrateType::Unmovable)?;
        if let Some(meta) = frames::table().get(mm::base::addr::Pfn::containing(frame)) {
            meta.insert_flags(mm::frame::meta::FrameFlags::PINNED);
        }
        pt.map(
            bottom + i * PAGE_SIZE,
            frame,
            PageSize::Size4K,
            F::WRITABLE | F::NO_EXECUTE | F::GLOBAL,
            &mut KernelTableAlloc,
            flush,
        )
        .map_err(MemError::Map)?;
    }
    crate::arch::guard::register(guard, bottom, u64::from(slot));
    Ok(VirtAddr::new(bottom + STACK_PAGES * PAGE_SIZE))
}

/// A new kernel stack (with its guard page) in stack slot `slot`; returns its top.
pub fn alloc_stack(slot: u32) -> Result<VirtAddr, MemError> {
    with_kernel(|pt, flush| map_stack(pt, slot, flush))
}

/// Load the kernel page tables (built by [`build`]), switch to `stack_top` and continue
/// in `next(arg)`. Turns on no-execute and write protection first.
pub fn switch_to(built: &Built, next: extern "sysv64" fn(usize) -> !, arg: usize) -> ! {
    use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};
    use x86_64::registers::model_specific::{Efer, EferFlags};
    // SAFETY: enabling NX (our tables set NO_EXECUTE), WP (kernel honours read-only
    // pages) and PGE (we mark kernel mappings global) changes no current translation.
    unsafe {
        Efer::update(|f| f.insert(EferFlags::NO_EXECUTE_ENABLE));
        Cr0::update(|f| f.insert(Cr0Flags::WRITE_PROTECT));
        Cr4::update(|f| f.insert(Cr4Flags::PAGE_GLOBAL));
        LOADED.store(true, Ordering::Release);
        enter(built.root.as_u64(), built.stack_top.as_u64(), next, arg)
    }
}

core::arch::global_asm!(
    ".global mmk_enter",
    "mmk_enter:",
    "    mov cr3, rdi",
    "    mov rsp, rsi",
    "    xor ebp, ebp",
    "    mov rdi, rcx",
    "    call rdx",
    "    ud2",
);

unsafe extern "sysv64" {
    #[link_name = "mmk_enter"]
    fn enter(cr3: u64, stack_top: u64, next: extern "sysv64" fn(usize) -> !, arg: usize) -> !;
}

/// Map the pages of `[pa, pa + len)` at `base + pa` with `flags`, skipping those already
/// mapped there; returns the address of `pa`. Mapping the same page twice is harmless.
fn map_window(base: u64, limit: u64, pa: u64, len: u64, flags: F) -> Result<VirtAddr, MemError> {
    let end = pa
        .checked_add(len.max(1))
        .filter(|&end| end <= limit)
        .ok_or(MemError::OutsideWindow(pa))?;
    let first = pa & !(PAGE_SIZE - 1);
    with_kernel(|pt, flush| {
        let mut page = first;
        while page < end {
            if pt.query(base + page).is_none() {
                pt.map(
                    base + page,
                    PhysAddr::new(page),
                    PageSize::Size4K,
                    flags,
                    &mut KernelTableAlloc,
                    flush,
                )
                .map_err(MemError::Map)?;
            }
            page += PAGE_SIZE;
        }
        Ok(VirtAddr::new(base + pa))
    })
}

/// Map `len` bytes of device registers at `pa` uncached, at [`MMIO_BASE`]` + pa` (each
/// page once, however often it is asked for); returns where. Refused for RAM, which the
/// linear map has write-back.
pub fn map_mmio(pa: PhysAddr, len: u64) -> Result<VirtAddr, MemError> {
    let (start, end) = (pa.as_u64(), pa.as_u64().saturating_add(len.max(1)));
    if super::boot_memory().ram.overlaps(start, end) {
        return Err(MemError::MmioOverRam(start));
    }
    map_window(
        MMIO_BASE,
        MMIO_MAX,
        start,
        len,
        F::WRITABLE | F::NO_EXECUTE | F::NO_CACHE | F::WRITE_THROUGH | F::GLOBAL,
    )
}

/// Map `len` bytes of firmware tables at `pa` (outside RAM) read-only write-back, at
/// [`FIRMWARE_BASE`]` + pa`; returns where.
pub fn map_firmware(pa: PhysAddr, len: u64) -> Result<VirtAddr, MemError> {
    map_window(
        FIRMWARE_BASE,
        FIRMWARE_MAX,
        pa.as_u64(),
        len,
        F::NO_EXECUTE | F::GLOBAL,
    )
}
