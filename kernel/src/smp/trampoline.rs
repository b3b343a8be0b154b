//! The real-mode entry of the application processors.
//!
//! A startup IPI starts a CPU in 16-bit real mode at a page-aligned address below 1 MiB.
//! [`Trampoline::install`] takes four frames there: the first receives the code below,
//! the other three hold temporary page tables (the first 2 MiB identity-mapped with one
//! large page, plus the kernel half of the kernel's PML4). The code enters protected
//! mode, then long mode on those tables with the boot CPU's EFER and CR0, and jumps to
//! `mmk_ap_entry` in the kernel image, which loads the kernel's CR3 and the boot CPU's
//! CR4, switches to the CPU's own stack and calls the Rust entry with one argument.
//!
//! The code computes its own physical base from CS, so it runs from any page. One CPU
//! uses the trampoline at a time: [`Trampoline::prepare`] before each startup.

use crate::mem::{frames, physmap, MemError};
use core::mem::offset_of;
use mm::base::addr::{Pfn, PAGE_SIZE};
use mm::frame::buddy::MigrateType;
use x86_64::registers::control::{Cr0, Cr4};
use x86_64::registers::model_specific::Efer;
use x86_64::{PhysAddr, VirtAddr};

/// What the trampoline reads, at `mmk_ap_trampoline_params` in its page.
#[repr(C)]
#[derive(Clone, Copy)]
struct Params {
    /// Physical address of the temporary PML4 (below 4 GiB: loaded in 32-bit mode).
    temp_pml4: u64,
    /// EFER to load before paging is on (LME, NXE, ...).
    efer: u64,
    /// CR0 to load: turns on paging.
    cr0: u64,
    /// CR4 to load once on the kernel's page tables.
    cr4: u64,
    /// The kernel's PML4.
    kernel_cr3: u64,
    /// Top of the CPU's stack.
    stack_top: u64,
    /// The Rust entry, `extern "sysv64" fn(u64) -> !`.
    entry: u64,
    /// Its argument.
    arg: u64,
    /// Address of `mmk_ap_entry`.
    long_entry: u64,
}

/// EFER.LMA: set by the CPU, not by us.
const EFER_LMA: u64 = 1 << 10;
/// CR4.PAE.
const CR4_PAE: u32 = 1 << 5;
/// Page-table entry bits for the temporary tables: present, writable (, large page).
const PRESENT_WRITABLE: u64 = 0b11;
const LARGE: u64 = 1 << 7;

core::arch::global_asm!(
    ".pushsection .rodata.mmk_ap_trampoline, \"a\"",
    ".balign 16",
    ".global mmk_ap_trampoline_start",
    ".global mmk_ap_trampoline_params",
    ".global mmk_ap_trampoline_end",
    ".code16",
    "mmk_ap_trampoline_start:",
    "    cli",
    "    cld",
    "    movw %cs, %ax",
    "    movw %ax, %ds",
    "    movw %ax, %ss",
    "    movw $0x1000, %sp",
    "    xorl %ebx, %ebx",
    "    movw %ax, %bx",
    "    shll $4, %ebx",
    "    leal (mmk_ap_trampoline_gdt - mmk_ap_trampoline_start)(%ebx), %eax",
    "    movl %eax, (mmk_ap_trampoline_gdtr - mmk_ap_trampoline_start + 2)",
    "    lgdtl (mmk_ap_trampoline_gdtr - mmk_ap_trampoline_start)",
    "    movl %cr0, %eax",
    "    orl $1, %eax",
    "    movl %eax, %cr0",
    "    leal (mmk_ap_trampoline_32 - mmk_ap_trampoline_start)(%ebx), %eax",
    "    pushl $0x08",
    "    pushl %eax",
    "    lretl",
    ".code32",
    "mmk_ap_trampoline_32:",
    "    movw $0x10, %ax",
    "    movw %ax, %ds",
    "    movw %ax, %es",
    "    movw %ax, %ss",
    "    leal 0x1000(%ebx), %esp",
    "    movl %cr4, %eax",
    "    orl ${pae}, %eax",
    "    movl %eax, %cr4",
    "    movl (mmk_ap_trampoline_params - mmk_ap_trampoline_start + {pml4})(%ebx), %eax",
    "    movl %eax, %cr3",
    "    movl $0xC0000080, %ecx",
    "    movl (mmk_ap_trampoline_params - mmk_ap_trampoline_start + {efer})(%ebx), %eax",
    "    movl (mmk_ap_trampoline_params - mmk_ap_trampoline_start + {efer} + 4)(%ebx), %edx",
    "    wrmsr",
    "    movl (mmk_ap_trampoline_params - mmk_ap_trampoline_start + {cr0})(%ebx), %eax",
    "    movl %eax, %cr0",
    "    leal (mmk_ap_trampoline_64 - mmk_ap_trampoline_start)(%ebx), %eax",
    "    pushl $0x18",
    "    pushl %eax",
    "    lretl",
    ".code64",
    "mmk_ap_trampoline_64:",
    "    movl %ebx, %ebx",
    "    movq (mmk_ap_trampoline_params - mmk_ap_trampoline_start + {cr3})(%rbx), %rax",
    "    movq (mmk_ap_trampoline_params - mmk_ap_trampoline_start + {cr4})(%rbx), %rcx",
    "    movq (mmk_ap_trampoline_params - mmk_ap_trampoline_start + {stack})(%rbx), %rsp",
    "    movq (mmk_ap_trampoline_params - mmk_ap_trampoline_start + {entry})(%rbx), %rsi",
    "    movq (mmk_ap_trampoline_params - mmk_ap_trampoline_start + {arg})(%rbx), %rdi",
    "    jmpq *(mmk_ap_trampoline_params - mmk_ap_trampoline_start + {long_entry})(%rbx)",
    ".balign 8",
    "mmk_ap_trampoline_gdt:",
    "    .quad 0",
    "    .quad 0x00CF9A000000FFFF",
    "    .quad 0x00CF92000000FFFF",
    "    .quad 0x00AF9A000000FFFF",
    "mmk_ap_trampoline_gdtr:",
    "    .word 4 * 8 - 1",
    "    .long 0",
    ".balign 8",
    "mmk_ap_trampoline_params:",
    "    .fill {params_size}, 1, 0",
    "mmk_ap_trampoline_end:",
    ".popsection",
    ".pushsection .text.mmk_ap_entry, \"ax\"",
    ".global mmk_ap_entry",
    "mmk_ap_entry:",
    "    movq %rax, %cr3",
    "    movq %rcx, %cr4",
    "    xorl %ebp, %ebp",
    "    callq *%rsi",
    "    ud2",
    ".popsection",
    pae = const CR4_PAE,
    pml4 = const offset_of!(Params, temp_pml4),
    efer = const offset_of!(Params, efer),
    cr0 = const offset_of!(Params, cr0),
    cr3 = const offset_of!(Params, kernel_cr3),
    cr4 = const offset_of!(Params, cr4),
    stack = const offset_of!(Params, stack_top),
    entry = const offset_of!(Params, entry),
    arg = const offset_of!(Params, arg),
    long_entry = const offset_of!(Params, long_entry),
    params_size = const size_of::<Params>(),
    options(att_syntax)
);

unsafe extern "C" {
    static mmk_ap_trampoline_start: u8;
    static mmk_ap_trampoline_params: u8;
    static mmk_ap_trampoline_end: u8;
    static mmk_ap_entry: u8;
}

/// Bytes at the top of the trampoline page kept for the real-mode stack.
const STACK_ROOM: usize = 256;

/// Why the trampoline could not be installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrampolineError {
    /// No free, aligned block of four frames below 1 MiB.
    NoLowMemory,
    /// The trampoline code does not fit in its page (a build problem).
    TooBig(usize),
    /// Giving the frames back failed.
    Free(MemError),
}

/// The installed trampoline: four frames below 1 MiB, freed by [`Trampoline::remove`].
pub struct Trampoline {
    base: PhysAddr,
    params: PhysAddr,
}

/// Order of the block: the code page and three page tables.
const ORDER: u8 = 2;
/// Frames below 1 MiB: the startup IPI vector is the page number.
const LOW_FRAMES: u64 = 0x100;

fn write_phys<T>(pa: PhysAddr, value: T) {
    // SAFETY: every address written here lies in the trampoline's own four frames, which
    // this module allocated and nothing else uses; the linear map covers them.
    unsafe { physmap::virt(pa).as_mut_ptr::<T>().write_volatile(value) }
}

fn read_phys_u64(pa: PhysAddr) -> u64 {
    // SAFETY: `pa` is an entry of the kernel's PML4, a live page-table frame reached
    // through the linear map; a read has no side effect.
    unsafe { physmap::virt(pa).as_ptr::<u64>().read_volatile() }
}

impl Trampoline {
    /// Take four low frames, copy the code, build the temporary page tables with the
    /// kernel half of `kernel_root`.
    pub fn install(kernel_root: PhysAddr) -> Result<Trampoline, TrampolineError> {
        let start = VirtAddr::from_ptr(&raw const mmk_ap_trampoline_start);
        let len = (VirtAddr::from_ptr(&raw const mmk_ap_trampoline_end) - start) as usize;
        if len > PAGE_SIZE as usize - STACK_ROOM {
            return Err(TrampolineError::TooBig(len));
        }
        let base = (1u64..LOW_FRAMES >> ORDER)
            .map(|i| Pfn(i << ORDER))
            .find_map(|pfn| {
                frames::with_buddy(|b| b.alloc_at(pfn, ORDER, MigrateType::Unmovable)).ok()
            })
            .ok_or(TrampolineError::NoLowMemory)?
            .addr();
        // SAFETY: source is the trampoline's `len` bytes in the kernel image; destination
        // is the first of the frames just allocated, through the linear map; `len` fits.
        unsafe {
            core::ptr::copy_nonoverlapping(
                start.as_ptr::<u8>(),
                physmap::virt(base).as_mut_ptr::<u8>(),
                len,
            );
        }
        let pml4 = base + PAGE_SIZE;
        let pdpt = pml4 + PAGE_SIZE;
        let pd = pdpt + PAGE_SIZE;
        for table in [pml4, pdpt, pd] {
            for i in 0..512u64 {
                write_phys(table + i * 8, 0u64);
            }
        }
        write_phys(pml4, pdpt.as_u64() | PRESENT_WRITABLE);
        write_phys(pdpt, pd.as_u64() | PRESENT_WRITABLE);
        write_phys(pd, PRESENT_WRITABLE | LARGE);
        for i in 256..512u64 {
            write_phys(pml4 + i * 8, read_phys_u64(kernel_root + i * 8));
        }
        let params_off = VirtAddr::from_ptr(&raw const mmk_ap_trampoline_params) - start;
        Ok(Trampoline {
            base,
            params: base + params_off,
        })
    }

    /// The startup IPI vector: the trampoline's page number.
    pub fn sipi_page(&self) -> u8 {
        (self.base.as_u64() >> 12) as u8
    }

    /// Set up the next CPU's start: it will run `entry(arg)` on `stack_top` with the
    /// running CPU's EFER, CR0 and CR4 and the kernel's page tables at `kernel_root`.
    pub fn prepare(
        &self,
        kernel_root: PhysAddr,
        stack_top: VirtAddr,
        entry: extern "sysv64" fn(u64) -> !,
        arg: u64,
    ) {
        let params = Params {
            temp_pml4: self.base.as_u64() + PAGE_SIZE,
            efer: Efer::read_raw() & !EFER_LMA,
            cr0: Cr0::read_raw(),
            cr4: Cr4::read_raw(),
            kernel_cr3: kernel_root.as_u64(),
            stack_top: stack_top.as_u64(),
            entry: entry as usize as u64,
            arg,
            long_entry: VirtAddr::from_ptr(&raw const mmk_ap_entry).as_u64(),
        };
        write_phys(self.params, params);
    }

    /// Give the frames back (once no CPU can still be executing from them).
    pub fn remove(self) -> Result<(), TrampolineError> {
        frames::free(self.base, ORDER).map_err(TrampolineError::Free)
    }
}
