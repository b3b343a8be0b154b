//! Bringing up the application processors, and running work on a chosen CPU.
//!
//! [`init`] runs once on the boot CPU after the heap exists. It enables the boot CPU's
//! local APIC, points its GS base at its per-CPU data and calibrates the timers; then it
//! reads the enabled CPUs from the MADT and starts the others one at a time with
//! INIT-SIPI-SIPI through the real-mode [`trampoline`]. Each application processor gets a
//! kernel stack with a guard page, its own GDT and TSS (with its own IST stacks) and
//! per-CPU data; it loads the shared IDT, enables its local APIC and timer, marks itself
//! online and enters its idle loop: serve the work queue, halt with interrupts on until
//! an IPI or a timer tick. A CPU that does not come up in time is sent INIT again
//! (parking it) and reported; the others still start. The hidden option `apfail=N`
//! makes CPU N such a CPU for the harness's own tests: it is sent no INIT/SIPI, so the
//! same timeout and the same continue path run.
//!
//! CPU indices follow the MADT's order (the boot CPU is 0; repeated APIC IDs and CPUs
//! past [`percpu::MAX_CPUS`] are left out by the parser). A CPU that fails to start
//! keeps its index, never online: indices are dense only when every CPU came up, so code
//! walks [`percpu::online`] rather than counting up to the number of CPUs.
//!
//! [`run_on`] queues a closure for one CPU and wakes it with an IPI; [`run_on_set`] and
//! [`broadcast`] do it for several. Work meant for the calling CPU runs at once, in the
//! caller. A CPU waiting on a [`Pending`] serves its own queue meanwhile, so CPUs that
//! wait on each other's work do not deadlock.
//!
//! Long work on a CPU (the huge-page daemon's loop) sleeps with [`sleep_serving`], which
//! runs what else is queued for that CPU meanwhile, so the CPU keeps taking work.

pub mod tests;
mod trampoline;

use crate::arch::acpi::{self, AcpiCpuError};
use crate::arch::apic::{self, ApicError};
use crate::arch::gdt::{self, CpuTables};
use crate::arch::percpu::{self, CpuSet, PerCpuError};
use crate::arch::timer::{self, Deadline};
use crate::mem::{self, MemError};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use spin::{Mutex, Once};
use trampoline::{Trampoline, TrampolineError};
use x86_64::{PhysAddr, VirtAddr};

/// Bytes of each IST stack of an application processor.
const IST_STACK_SIZE: usize = 16 * 1024;
/// How long a started CPU has to come online (generous: QEMU's TCG is slow).
const AP_START_TIMEOUT_MS: u64 = 5_000;
/// Wait between INIT and the first SIPI.
const INIT_DELAY_US: u64 = 10_000;
/// Wait between the two SIPIs.
const SIPI_DELAY_US: u64 = 200;

/// Why bringing up the CPUs, or running work on one, failed.
#[derive(Clone, Debug)]
pub enum SmpError {
    /// The firmware gave no ACPI RSDP.
    NoRsdp,
    /// The MADT could not be read.
    Acpi(AcpiCpuError),
    /// The local APIC could not be set up, or an IPI not sent.
    Apic(ApicError),
    /// A stack or a mapping could not be made.
    Mem(MemError),
    /// The AP trampoline could not be installed or removed.
    Trampoline(TrampolineError),
    /// Per-CPU data could not be set up.
    PerCpu(PerCpuError),
    /// A started CPU did not come online in time.
    StartTimeout,
    /// These CPUs (index, APIC ID) did not come up (each one's reason is logged).
    Missing(Vec<(u32, u32)>),
    /// The target CPU is not online.
    Offline(u32),
}

impl core::fmt::Display for SmpError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            SmpError::NoRsdp => write!(f, "the firmware gave no ACPI RSDP"),
            SmpError::Acpi(e) => write!(f, "finding the CPUs: {e}"),
            SmpError::Apic(e) => write!(f, "local APIC: {e:?}"),
            SmpError::Mem(e) => write!(f, "memory for a CPU: {e:?}"),
            SmpError::Trampoline(e) => write!(f, "AP trampoline: {e:?}"),
            SmpError::PerCpu(e) => write!(f, "per-CPU data: {e:?}"),
            SmpError::StartTimeout => {
                write!(f, "no sign of life within {AP_START_TIMEOUT_MS} ms")
            }
            SmpError::Missing(cpus) => {
                write!(f, "CPUs (index, APIC ID) {cpus:?} did not come up")
            }
            SmpError::Offline(cpu) => write!(f, "CPU {cpu} is not online"),
        }
    }
}

impl From<ApicError> for SmpError {
    fn from(e: ApicError) -> Self {
        match e {
            ApicError::Offline(cpu) => SmpError::Offline(cpu),
            e => SmpError::Apic(e),
        }
    }
}

/// The APIC IDs the MADT lists, in CPU-index order (the boot CPU first).
static MADT_APIC_IDS: Once<Vec<u32>> = Once::new();

/// The CPU that bring-up was told (`apfail=N`) not to start.
static SILENCED_AP: Once<u32> = Once::new();

/// Everything an application processor needs from the boot CPU, leaked for its lifetime.
struct ApStart {
    index: u32,
    tables: &'static CpuTables,
}

/// A stack of `IST_STACK_SIZE` bytes on the heap, kept for good; returns its top.
fn leak_ist_stack() -> VirtAddr {
    let stack: &'static mut [u8] = alloc::vec![0u8; IST_STACK_SIZE].leak();
    VirtAddr::from_ptr(stack.as_ptr_range().end).align_down(16u64)
}

/// Set up the boot CPU (local APIC, per-CPU data, timers), then find the other CPUs in
/// the MADT and start them, except `silenced` (sent no INIT/SIPI, to test the path of a
/// CPU that never answers). Returns the number of CPUs online. The boot CPU is set up
/// whatever fails later; when some CPUs do not come up the others still run and the
/// error names the missing ones.
pub fn init(rsdp: Option<u64>, silenced: Option<u32>) -> Result<usize, SmpError> {
    let xapic = apic::xapic_page()
        .map(|pa| mem::map_mmio(pa, 4096))
        .transpose()
        .map_err(SmpError::Mem)?;
    apic::init_boot_cpu(xapic)?;
    let boot_id = apic::id();
    percpu::prepare(0, boot_id, None).map_err(SmpError::PerCpu)?;
    percpu::enter(0).map_err(SmpError::PerCpu)?;
    if let Err(e) = timer::init(rsdp, &|pa, len| mem::map_mmio(pa, len).ok()) {
        // Every timeout and delay reads the TSC: without its frequency they would all
        // expire at once. Stop here, saying why.
        log::error!("timer calibration failed ({e:?}); the kernel cannot go on without a timer");
        crate::arch::exit(crate::arch::ExitStatus::Failure);
    }
    timer::start_this_cpu();
    percpu::mark_online();
    x86_64::instructions::interrupts::enable();

    let rsdp = rsdp.ok_or(SmpError::NoRsdp)?;
    let madt = acpi::madt_cpus(PhysAddr::new(rsdp)).map_err(SmpError::Acpi)?;
    if madt.dropped > 0 {
        log::warn!(
            "MADT lists {} CPUs more than the kernel drives",
            madt.dropped
        );
    }
    if !madt.apic_ids().contains(&boot_id) {
        log::warn!("the boot CPU (APIC ID {boot_id}) is not in the MADT");
    }
    let ids = MADT_APIC_IDS.call_once(|| {
        core::iter::once(boot_id)
            .chain(madt.apic_ids().iter().copied().filter(|&id| id != boot_id))
            .take(percpu::MAX_CPUS)
            .collect()
    });
    if let Some(cpu) = silenced {
        SILENCED_AP.call_once(|| cpu);
        if cpu as usize >= ids.len() {
            log::error!(
                "apfail={cpu}: there is no such application processor ({} CPUs)",
                ids.len()
            );
        }
    }
    let missing = start_aps(ids, silenced)?;
    let online = percpu::online();
    let online_ids: Vec<u32> = online
        .iter()
        .filter_map(|cpu| percpu::get(cpu).map(|c| c.apic_id()))
        .collect();
    log::info!("CPUs: {} online (APIC IDs {online_ids:?})", online.len());
    if !missing.is_empty() {
        return Err(SmpError::Missing(missing));
    }
    Ok(online.len())
}

/// Start the CPUs of `ids[1..]` one after the other (CPU `silenced` sent nothing);
/// returns (index, APIC ID) of those that did not come up.
fn start_aps(ids: &[u32], silenced: Option<u32>) -> Result<Vec<(u32, u32)>, SmpError> {
    let mut missing = Vec::new();
    if ids.len() < 2 {
        return Ok(missing);
    }
    let root = mem::kernel_space::root();
    let trampoline = Trampoline::install(root).map_err(SmpError::Trampoline)?;
    for (index, &apic_id) in ids.iter().enumerate().skip(1) {
        let index = index as u32;
        let silent = silenced == Some(index);
        if let Err(e) = start_one(&trampoline, root, index, apic_id, silent) {
            log::error!("CPU {index} (APIC ID {apic_id}) did not come up: {e}");
            // Park it: a CPU still on its way must not run the trampoline prepared for
            // the next one.
            apic::send_init(apic_id)?;
            missing.push((index, apic_id));
        }
    }
    trampoline.remove().map_err(SmpError::Trampoline)?;
    Ok(missing)
}

/// Give CPU `index` its stacks and tables, send it INIT-SIPI-SIPI (nothing when
/// `silent`) and wait until it is online.
fn start_one(
    trampoline: &Trampoline,
    root: PhysAddr,
    index: u32,
    apic_id: u32,
    silent: bool,
) -> Result<(), SmpError> {
    let stack_top = mem::alloc_stack(index).map_err(SmpError::Mem)?;
    let tss = Box::leak(Box::new(gdt::make_tss([
        leak_ist_stack(),
        leak_ist_stack(),
        leak_ist_stack(),
    ])));
    let tables: &'static CpuTables = Box::leak(Box::new(gdt::make_tables(tss)));
    let start: &'static ApStart = Box::leak(Box::new(ApStart { index, tables }));
    percpu::prepare(index, apic_id, Some(stack_top)).map_err(SmpError::PerCpu)?;
    trampoline.prepare(root, stack_top, ap_main, start as *const ApStart as u64);

    if silent {
        log::warn!("CPU {index} (APIC ID {apic_id}): apfail={index}, sending it no INIT/SIPI");
    } else {
        apic::send_init(apic_id)?;
        timer::delay_us(INIT_DELAY_US);
        for _ in 0..2 {
            apic::send_startup(apic_id, trampoline.sipi_page())?;
            timer::delay_us(SIPI_DELAY_US);
            if percpu::is_online(index) {
                return Ok(());
            }
        }
    }
    let deadline = Deadline::after_ms(AP_START_TIMEOUT_MS);
    while !percpu::is_online(index) {
        if deadline.expired() {
            return Err(SmpError::StartTimeout);
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// The Rust entry of an application processor, on its own stack and the kernel's page
/// tables; `start` is its leaked [`ApStart`].
extern "sysv64" fn ap_main(start: u64) -> ! {
    // SAFETY: the boot CPU passes the address of an `ApStart` it leaked for this CPU.
    let start: &'static ApStart = unsafe { &*(start as *const ApStart) };
    gdt::load(start.tables);
    if percpu::enter(start.index).is_err() {
        crate::arch::halt_forever();
    }
    crate::arch::idt::init();
    apic::init_this_cpu();
    timer::start_this_cpu();
    percpu::mark_online();
    idle()
}

/// Serve this CPU's work queue forever, halting while it is empty.
fn idle() -> ! {
    let me = percpu::current();
    loop {
        x86_64::instructions::interrupts::disable();
        match me.pop_work() {
            Some(work) => {
                x86_64::instructions::interrupts::enable();
                work();
            }
            // Interrupts come back on with the halt, atomically: a wake-up IPI sent after
            // the queue was seen empty ends the halt.
            None => x86_64::instructions::interrupts::enable_and_hlt(),
        }
    }
}

/// Run the oldest work queued for the running CPU, if any; true if there was some.
pub fn serve_one() -> bool {
    match percpu::current().pop_work() {
        Some(work) => {
            work();
            true
        }
        None => false,
    }
}

/// Sleep on the running CPU until `deadline` has passed or `wake()` holds, running the
/// work queued for it meanwhile (at least what is queued now, even past the deadline) and
/// halting until the next interrupt (a timer tick, an IPI) while its queue is empty: a
/// CPU that runs long work this way keeps taking the work queued for it. With interrupts
/// disabled it spins instead of halting.
pub fn sleep_serving(deadline: Deadline, wake: impl Fn() -> bool) {
    let me = percpu::current();
    let halt = x86_64::instructions::interrupts::are_enabled();
    loop {
        while serve_one() {}
        if deadline.expired() || wake() {
            return;
        }
        if !halt {
            core::hint::spin_loop();
            continue;
        }
        x86_64::instructions::interrupts::disable();
        match me.pop_work() {
            Some(work) => {
                x86_64::instructions::interrupts::enable();
                work();
            }
            // As in `idle`: a wake-up IPI sent after the queue was seen empty ends the
            // halt.
            None => x86_64::instructions::interrupts::enable_and_hlt(),
        }
    }
}

/// The APIC IDs the MADT lists, in CPU-index order (empty before [`init`]).
pub fn madt_apic_ids() -> &'static [u32] {
    MADT_APIC_IDS.get().map_or(&[], Vec::as_slice)
}

/// The CPU that `apfail=N` told bring-up not to start, if any.
pub fn silenced_ap() -> Option<u32> {
    SILENCED_AP.get().copied()
}

/// Where a queued closure leaves its result.
struct Slot<R> {
    done: AtomicBool,
    value: Mutex<Option<R>>,
}

/// The result of work queued with [`run_on`], to wait on.
#[must_use = "work runs anyway, but its result is lost unless waited on"]
pub struct Pending<R> {
    cpu: u32,
    slot: Arc<Slot<R>>,
}

impl<R> Pending<R> {
    /// The CPU the work runs on.
    pub fn cpu(&self) -> u32 {
        self.cpu
    }

    /// Whether the work has finished.
    pub fn is_done(&self) -> bool {
        self.slot.done.load(Ordering::Acquire)
    }

    fn take(&self) -> Option<R> {
        if !self.is_done() {
            return None;
        }
        self.slot.value.lock().take()
    }

    /// Wait for the result, serving this CPU's own queue meanwhile.
    pub fn wait(self) -> R {
        loop {
            if let Some(r) = self.take() {
                return r;
            }
            if !serve_one() {
                core::hint::spin_loop();
            }
        }
    }

    /// Wait at most `ms` milliseconds; None if the work has not finished by then (or its
    /// result was already taken).
    pub fn wait_timeout_ms(&self, ms: u64) -> Option<R> {
        let deadline = Deadline::after_ms(ms);
        loop {
            if let Some(r) = self.take() {
                return Some(r);
            }
            if deadline.expired() {
                return None;
            }
            if !serve_one() {
                core::hint::spin_loop();
            }
        }
    }
}

/// Run `f` on CPU `cpu` and return a handle on its result. Runs at once, in the caller,
/// when `cpu` is the running CPU; otherwise queued and the CPU woken with an IPI.
pub fn run_on<F, R>(cpu: u32, f: F) -> Result<Pending<R>, SmpError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    if !percpu::is_online(cpu) {
        return Err(SmpError::Offline(cpu));
    }
    let target = percpu::get(cpu).ok_or(SmpError::Offline(cpu))?;
    let slot = Arc::new(Slot {
        done: AtomicBool::new(false),
        value: Mutex::new(None),
    });
    let result = Arc::clone(&slot);
    let work = move || {
        *result.value.lock() = Some(f());
        result.done.store(true, Ordering::Release);
    };
    if cpu == percpu::cpu_index() {
        work();
    } else {
        target.push_work(Box::new(work));
        apic::send_ipi(cpu, apic::WAKE_VECTOR)?;
    }
    Ok(Pending { cpu, slot })
}

/// Run `f(cpu)` on every CPU of `set` (the running CPU's share last, in the caller).
/// Nothing is queued unless every CPU of `set` is online.
pub fn run_on_set<F, R>(set: &CpuSet, f: F) -> Result<Vec<Pending<R>>, SmpError>
where
    F: Fn(u32) -> R + Send + Sync + 'static,
    R: Send + 'static,
{
    if let Some(cpu) = set.difference(&percpu::online()).iter().next() {
        return Err(SmpError::Offline(cpu));
    }
    let f = Arc::new(f);
    let me = percpu::cpu_index();
    let others = set.iter().filter(|&cpu| cpu != me);
    let mine = set.contains(me).then_some(me);
    others
        .chain(mine)
        .map(|cpu| {
            let f = Arc::clone(&f);
            run_on(cpu, move || f(cpu))
        })
        .collect()
}

/// Run `f(cpu)` on every online CPU and wait for all; returns (cpu, result) pairs in
/// CPU order.
pub fn broadcast<F, R>(f: F) -> Result<Vec<(u32, R)>, SmpError>
where
    F: Fn(u32) -> R + Send + Sync + 'static,
    R: Send + 'static,
{
    let mut results: Vec<(u32, R)> = run_on_set(&percpu::online(), f)?
        .into_iter()
        .map(|p| (p.cpu(), p.wait()))
        .collect();
    results.sort_by_key(|&(cpu, _)| cpu);
    Ok(results)
}

/// The guard page under CPU `cpu`'s kernel stack (application processors only).
pub fn stack_guard(cpu: u32) -> Option<VirtAddr> {
    let top = percpu::get(cpu)?.stack_top()?;
    Some(top - (mem::kernel_space::STACK_PAGES + 1) * mm::base::addr::PAGE_SIZE)
}
