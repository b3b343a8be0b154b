//! Per-CPU data, reached through the GS base.
//!
//! Each CPU owns one [`PerCpu`] slot of a static table, indexed by its dense CPU index:
//! 0 is the boot CPU, then the application processors in MADT order. A CPU's
//! IA32_GS_BASE points at its slot (IA32_KERNEL_GS_BASE too: the kernel has no user mode
//! yet, so a stray `swapgs` must not lose it), which makes [`cpu_index`] one `gs`-relative
//! load. Until the boot CPU has set its GS base only the boot CPU runs, and [`cpu_index`]
//! answers 0, so it can be called from the first line of the kernel on.
//!
//! [`CpuSet`] names CPUs by index (IPI targets, shootdown targets, where to run work);
//! [`online`] is the set of CPUs that have come up.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use spin::Mutex;
use x86_64::registers::model_specific::{GsBase, KernelGsBase};
use x86_64::VirtAddr;

pub use mm::base::cpuset::{AtomicCpuSet, CpuSet, MAX_CPUS};

/// A closure queued for a CPU (see [`crate::smp::run_on`]).
pub type Work = Box<dyn FnOnce() + Send>;

/// The state of one CPU.
///
/// `index` must stay the first field: [`cpu_index`] reads it at `gs:[0]`.
#[repr(C, align(64))]
pub struct PerCpu {
    index: AtomicU32,
    apic_id: AtomicU32,
    ticks: AtomicU64,
    pings: AtomicU64,
    stack_top: AtomicU64,
    work: Mutex<VecDeque<Work>>,
}

impl PerCpu {
    const fn new() -> PerCpu {
        PerCpu {
            index: AtomicU32::new(0),
            apic_id: AtomicU32::new(0),
            ticks: AtomicU64::new(0),
            pings: AtomicU64::new(0),
            stack_top: AtomicU64::new(0),
            work: Mutex::new(VecDeque::new()),
        }
    }

    /// This CPU's index.
    pub fn index(&self) -> u32 {
        self.index.load(Ordering::Relaxed)
    }

    /// This CPU's local APIC ID.
    pub fn apic_id(&self) -> u32 {
        self.apic_id.load(Ordering::Relaxed)
    }

    /// Local APIC timer interrupts this CPU has taken.
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Count one timer interrupt (called by the timer handler on this CPU).
    pub fn count_tick(&self) {
        self.ticks.fetch_add(1, Ordering::Relaxed);
    }

    /// Ping IPIs this CPU has received (see [`crate::arch::apic::PING_VECTOR`]).
    pub fn pings(&self) -> u64 {
        self.pings.load(Ordering::Acquire)
    }

    /// Count one ping IPI (called by the ping handler on this CPU).
    pub fn count_ping(&self) {
        self.pings.fetch_add(1, Ordering::AcqRel);
    }

    /// Top of the kernel stack this CPU was started on; None for the boot CPU, which runs
    /// on the boot stack that memory setup gave it.
    pub fn stack_top(&self) -> Option<VirtAddr> {
        match self.stack_top.load(Ordering::Acquire) {
            0 => None,
            top => Some(VirtAddr::new(top)),
        }
    }

    /// Queue `work` for this CPU (any CPU may call this).
    pub fn push_work(&self, work: Work) {
        x86_64::instructions::interrupts::without_interrupts(|| self.work.lock().push_back(work));
    }

    /// The oldest work queued for this CPU, if any.
    pub fn pop_work(&self) -> Option<Work> {
        x86_64::instructions::interrupts::without_interrupts(|| self.work.lock().pop_front())
    }
}

static CPUS: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];

/// Set once the boot CPU's GS base points at its slot.
static GS_READY: AtomicBool = AtomicBool::new(false);

static ONLINE: AtomicCpuSet = AtomicCpuSet::new();

/// Why a CPU could not get its per-CPU slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PerCpuError {
    /// The index is not below [`MAX_CPUS`].
    IndexOutOfRange(u32),
}

/// Record `apic_id` and `stack_top` for the CPU of `index` before it starts.
pub fn prepare(index: u32, apic_id: u32, stack_top: Option<VirtAddr>) -> Result<(), PerCpuError> {
    let slot = get(index).ok_or(PerCpuError::IndexOutOfRange(index))?;
    slot.index.store(index, Ordering::Relaxed);
    slot.apic_id.store(apic_id, Ordering::Relaxed);
    slot.stack_top
        .store(stack_top.map_or(0, VirtAddr::as_u64), Ordering::Release);
    Ok(())
}

/// Point the running CPU's GS base at the slot of `index` (prepared with [`prepare`]).
/// The boot CPU calls this with index 0 before any other CPU starts.
pub fn enter(index: u32) -> Result<(), PerCpuError> {
    let slot = get(index).ok_or(PerCpuError::IndexOutOfRange(index))?;
    let base = VirtAddr::from_ptr(slot);
    GsBase::write(base);
    KernelGsBase::write(base);
    if index == 0 {
        GS_READY.store(true, Ordering::Release);
    }
    Ok(())
}

/// The index of the running CPU (0 before per-CPU data is set up: only the boot CPU runs
/// then).
pub fn cpu_index() -> u32 {
    if !GS_READY.load(Ordering::Acquire) {
        return 0;
    }
    let index: u32;
    // SAFETY: once GS_READY is set, every running CPU's GS base points at its PerCpu slot
    // (the boot CPU set it before publishing GS_READY; each application processor sets it
    // before running any other Rust code), whose first field is the u32 index.
    unsafe {
        core::arch::asm!(
            "mov {:e}, gs:[0]",
            out(reg) index,
            options(nostack, readonly, preserves_flags)
        );
    }
    index
}

/// The running CPU's state.
pub fn current() -> &'static PerCpu {
    &CPUS[cpu_index() as usize]
}

/// The state of CPU `index`, online or not; None past [`MAX_CPUS`].
pub fn get(index: u32) -> Option<&'static PerCpu> {
    CPUS.get(index as usize)
}

/// Mark the running CPU online.
pub fn mark_online() {
    ONLINE.insert(cpu_index());
    super::tlb::cpu_online(cpu_index());
}

/// The CPUs that are up.
pub fn online() -> CpuSet {
    ONLINE.load()
}

/// Whether CPU `index` is up.
pub fn is_online(index: u32) -> bool {
    ONLINE.contains(index)
}
