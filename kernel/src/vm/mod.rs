//! Address spaces on the real machine: the kernel's [`Mm`] instance over the frame
//! allocator, the shootdown IPIs and the linear physical map; switching address spaces on
//! a CPU; and the page-fault path of the lower (user) half.
//!
//! # Pieces
//!
//! - [`source::KernelFrames`] is the [`FrameSource`](mm::aspace::FrameSource): the buddy
//!   allocator with its per-CPU caches, node-aware through [`numa`] (the SRAT's node map),
//!   with a fault-injection hook for tests.
//! - [`SpaceShootdown`] is the [`TlbShootdown`]: the memory manager's [`FlushBatch`]
//!   (leaves, or a full flush, and whether page tables are freed) is shot down as it is
//!   with [`tlb::shootdown`] on the CPUs that have the address space loaded.
//! - [`activate`] / [`deactivate`] load an address space's root in CR3 on the running
//!   CPU. The CPU's bit in [`AddressSpace::cpus`] is set *before* CR3 is loaded and
//!   cleared only *after* the CPU switched away, so a shootdown of the space never misses
//!   a CPU that may cache its translations (without PCIDs a CR3 load drops every
//!   non-global entry, so a CPU that switched away holds none).
//! - [`profile`] counts the cycles spent in the frame source and in shootdowns, for
//!   the benchmarks; [`squeeze`] takes free memory away on purpose, for the tests and
//!   benchmarks of contiguity generation.
//! - [`physmap`] takes the picture of physical memory: free, kernel, pinned and the
//!   frames of labelled VMAs, as a text map and `PHYSMAP` lines for the host.
//! - [`daemon`] runs the background huge-page daemon (`mm`'s scan step) on one CPU,
//!   startable, stoppable and retunable while it runs; [`bench_huge`] measures promotion
//!   in place against the copying collapse, and splits; [`soak`] runs writers on every
//!   CPU but one against a mixed stream of moves for a given time ([`load`]'s writers,
//!   which the huge-page tests use too).
//! - [`handle_page_fault`], called by the page-fault handler, resolves faults on lower-half
//!   addresses in the address space active on the CPU: demand-zero faults map a frame, a
//!   fault on a migration entry waits for the migration (serving shootdown requests, since
//!   the migrating CPU shoots this CPU's TLB down meanwhile) and the access is retried.
//!   The fault runs with interrupts back on when the faulting code had them on, so kernel
//!   code touches user memory with interrupts enabled: the memory manager's locks are
//!   plain spin locks, and their holder may be waiting for this CPU to acknowledge a
//!   shootdown (a kernel-page change while the heap grows, for one).
//!
//! # Kernel half
//!
//! Address spaces copy the kernel's 256 upper PML4 entries when they are created;
//! [`init`] has every one of them point at a PDPT first
//! ([`kernel_space::preallocate_upper_half`]), so kernel mappings made later are seen in
//! every address space.

pub mod bench;
pub mod bench_contig;
pub mod bench_exchange;
pub mod bench_huge;
pub mod daemon;
pub mod demo;
pub mod demo_huge;
pub mod load;
pub mod numa;
pub mod physmap;
pub mod profile;
pub mod scenario;
pub mod soak;
pub mod source;
pub mod squeeze;
pub mod tests;

use crate::arch::percpu::{self, MAX_CPUS};
use crate::arch::tlb;
use crate::mem::physmap::{KernelPhys, PHYS};
use crate::mem::{kernel_space, MemError};
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};
use mm::aspace::{AddressSpace, Mm, SpaceError};
use mm::backend::shootdown::{FlushBatch, ShootdownError};
use mm::backend::tlb::TlbShootdown;
use mm::base::cpuset::CpuSet;
use mm::ops::fault::FaultOutcome;
use mm::paging::LOWER_HALF_END;
use spin::{Mutex, Once};
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::idt::PageFaultErrorCode;
use x86_64::structures::paging::PhysFrame;
use x86_64::PhysAddr;

/// The kernel's memory manager.
pub type KernelMm = Mm<'static, KernelPhys>;
/// An address space of the kernel's memory manager.
pub type Space = AddressSpace<'static, KernelPhys>;

/// TLB shootdowns of user address spaces, with IPIs.
pub struct SpaceShootdown;

impl TlbShootdown for SpaceShootdown {
    fn shootdown(&self, cpus: CpuSet, batch: &FlushBatch) -> Result<(), ShootdownError> {
        // Only online CPUs ever activate an address space, so every target is online; a
        // failure would leak the frames the change released (the memory manager keeps
        // them), so it is reported.
        profile::SHOOTDOWN
            .time(|| tlb::shootdown(cpus, batch))
            .inspect_err(|e| log::error!("address-space shootdown failed: {e:?}"))
    }
}

static FRAMES: source::KernelFrames = source::KernelFrames::new();
/// Faults on migration entries that waited for the migration (statistics).
static MIGRATION_WAITS: AtomicU64 = AtomicU64::new(0);
static SHOOTDOWN: SpaceShootdown = SpaceShootdown;
static MM: Once<KernelMm> = Once::new();
static KERNEL_ROOT: Once<PhysAddr> = Once::new();

/// The address space each CPU has loaded (None: the kernel's own root). Only the CPU
/// itself changes or reads its slot, with interrupts off.
static ACTIVE: [Mutex<Option<Arc<Space>>>; MAX_CPUS] = [const { Mutex::new(None) }; MAX_CPUS];

/// Set up address spaces: preallocate the kernel half's PDPTs, read the NUMA topology
/// (the SRAT through the RSDP at `rsdp`, if any) and create the memory manager. Runs
/// once on the boot CPU, after the CPUs are up and before any address space exists.
pub fn init(rsdp: Option<u64>) -> Result<(), MemError> {
    let added = kernel_space::preallocate_upper_half()?;
    numa::init(rsdp);
    let root = kernel_space::root();
    KERNEL_ROOT.call_once(|| root);
    MM.call_once(|| Mm::new(&PHYS, &FRAMES, &SHOOTDOWN, Some(root)))
        .set_max_leaf(kernel_space::max_leaf());
    crate::arch::idt::set_user_fault_handler(handle_page_fault);
    log::info!("address spaces: kernel half shared through 256 PDPTs ({added} allocated now)");
    Ok(())
}

/// The memory manager (None before [`init`]).
pub fn mm() -> Option<&'static KernelMm> {
    MM.get()
}

/// How many page faults waited for a migration so far.
pub fn migration_waits() -> u64 {
    MIGRATION_WAITS.load(Ordering::Relaxed)
}

/// The frame source behind the memory manager (for fault injection in tests).
pub fn frames() -> &'static source::KernelFrames {
    &FRAMES
}

/// Load `space` on the running CPU (replacing whatever was loaded).
pub fn activate(space: &Arc<Space>) -> Result<(), SpaceError> {
    if current().is_some_and(|s| Arc::ptr_eq(&s, space)) {
        return Ok(());
    }
    let cpu = percpu::cpu_index();
    // Announce first: a shootdown that reads the set afterwards includes this CPU.
    space.cpus().insert(cpu);
    // A space destroyed meanwhile is never loaded (destroy refuses while the bit is set,
    // so it was destroyed before). The space lock is taken with interrupts as the caller
    // has them: its holder may be waiting for this CPU's acknowledgement.
    if space.is_destroyed() {
        space.cpus().remove(cpu);
        return Err(SpaceError::SpaceDestroyed);
    }
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut slot = ACTIVE[cpu as usize].lock();
        load_root(space.root());
        if let Some(previous) = slot.replace(space.clone()) {
            previous.cpus().remove(cpu);
        }
    });
    Ok(())
}

/// Go back to the kernel's own root on the running CPU.
pub fn deactivate() {
    let cpu = percpu::cpu_index();
    let Some(&root) = KERNEL_ROOT.get() else {
        return;
    };
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(previous) = ACTIVE[cpu as usize].lock().take() {
            load_root(root);
            previous.cpus().remove(cpu);
        }
    })
}

/// The address space loaded on the running CPU.
pub fn current() -> Option<Arc<Space>> {
    x86_64::instructions::interrupts::without_interrupts(|| {
        ACTIVE[percpu::cpu_index() as usize].lock().clone()
    })
}

fn load_root(root: PhysAddr) {
    let frame = PhysFrame::containing_address(root);
    // SAFETY: `root` is a PML4 whose upper half is the kernel's (copied from the kernel
    // root at creation, all of whose PDPTs exist from boot on), so the kernel's code,
    // stacks, heap and linear map stay mapped across the switch; the lower half holds
    // only user mappings the memory manager keeps valid.
    unsafe { Cr3::write(frame, Cr3Flags::empty()) };
}

/// Resolve a page fault at `addr` (error code `code`) in the address space active on this
/// CPU. `interruptible`: the faulting context had interrupts enabled, so they are turned
/// back on while the fault is resolved (zeroing a huge page takes long, and the locks the
/// memory manager spins on may be held by a CPU waiting for this one's acknowledgement).
/// Returns true when the access can be retried; false when the fault is not ours to fix
/// (kernel half, no address space, no VMA, a write to read-only memory...).
pub fn handle_page_fault(addr: u64, code: PageFaultErrorCode, interruptible: bool) -> bool {
    if addr >= LOWER_HALF_END
        || code
            .intersects(PageFaultErrorCode::MALFORMED_TABLE | PageFaultErrorCode::INSTRUCTION_FETCH)
    {
        return false;
    }
    let (Some(mm), Some(space)) = (MM.get(), current()) else {
        return false;
    };
    if interruptible {
        x86_64::instructions::interrupts::enable();
    }
    let write = code.contains(PageFaultErrorCode::CAUSED_BY_WRITE);
    let handled = match mm.handle_fault(&space, addr, write) {
        Ok(FaultOutcome::Mapped { .. } | FaultOutcome::Spurious) => true,
        Ok(FaultOutcome::WaitMigration(wait)) => {
            MIGRATION_WAITS.fetch_add(1, Ordering::Relaxed);
            mm.wait_migration_with(&wait, || {
                tlb::MAIL.serve(&tlb::KernelTlb);
                core::hint::spin_loop();
            });
            true
        }
        Err(_) => false,
    };
    x86_64::instructions::interrupts::disable();
    handled
}
