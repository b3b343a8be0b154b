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

/// Most CPUs the kernel drives.
pub const MAX_CPUS: usize = 256;

const WORDS: usize = MAX_CPUS / 64;

/// A closure queued for a CPU (see [`crate::arch::smp::run_on`]).
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
}

/// The CPUs that are up.
pub fn online() -> CpuSet {
    ONLINE.load()
}

/// Whether CPU `index` is up.
pub fn is_online(index: u32) -> bool {
    ONLINE.contains(index)
}

/// A set of CPUs by index, up to [`MAX_CPUS`].
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuSet {
    words: [u64; WORDS],
}

impl CpuSet {
    /// The empty set.
    pub const fn new() -> CpuSet {
        CpuSet { words: [0; WORDS] }
    }

    /// The set holding just `cpu` (empty if `cpu` is not below [`MAX_CPUS`]).
    pub fn single(cpu: u32) -> CpuSet {
        let mut set = CpuSet::new();
        set.insert(cpu);
        set
    }

    /// Add `cpu`; false (and no change) if it is not below [`MAX_CPUS`].
    pub fn insert(&mut self, cpu: u32) -> bool {
        let Some(word) = self.words.get_mut(cpu as usize / 64) else {
            return false;
        };
        *word |= 1 << (cpu % 64);
        true
    }

    /// Remove `cpu` (no-op if absent).
    pub fn remove(&mut self, cpu: u32) {
        if let Some(word) = self.words.get_mut(cpu as usize / 64) {
            *word &= !(1 << (cpu % 64));
        }
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: u32) -> bool {
        self.words
            .get(cpu as usize / 64)
            .is_some_and(|w| w & (1 << (cpu % 64)) != 0)
    }

    /// How many CPUs are in the set.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The CPUs in the set, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + use<> {
        let words = self.words;
        (0..MAX_CPUS as u32).filter(move |&cpu| words[cpu as usize / 64] & (1 << (cpu % 64)) != 0)
    }

    /// The CPUs in `self` but not in `other`.
    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        CpuSet {
            words: core::array::from_fn(|i| self.words[i] & !other.words[i]),
        }
    }

    /// The CPUs in `self` or in `other`.
    pub fn union(&self, other: &CpuSet) -> CpuSet {
        CpuSet {
            words: core::array::from_fn(|i| self.words[i] | other.words[i]),
        }
    }
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> CpuSet {
        let mut set = CpuSet::new();
        for cpu in iter {
            set.insert(cpu);
        }
        set
    }
}

impl core::fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// A [`CpuSet`] that CPUs update concurrently.
pub struct AtomicCpuSet {
    words: [AtomicU64; WORDS],
}

impl AtomicCpuSet {
    /// The empty set.
    pub const fn new() -> AtomicCpuSet {
        AtomicCpuSet {
            words: [const { AtomicU64::new(0) }; WORDS],
        }
    }

    /// Add `cpu`; false (and no change) if it is not below [`MAX_CPUS`].
    pub fn insert(&self, cpu: u32) -> bool {
        let Some(word) = self.words.get(cpu as usize / 64) else {
            return false;
        };
        word.fetch_or(1 << (cpu % 64), Ordering::AcqRel);
        true
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: u32) -> bool {
        self.words
            .get(cpu as usize / 64)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (cpu % 64)) != 0)
    }

    /// A snapshot of the set.
    pub fn load(&self) -> CpuSet {
        CpuSet {
            words: core::array::from_fn(|i| self.words[i].load(Ordering::Acquire)),
        }
    }
}
