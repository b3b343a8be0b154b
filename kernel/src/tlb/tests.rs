//! In-kernel tests of TLB shootdown on real (emulated) CPUs.
//!
//! QEMU's software TLB keeps a translation until it is flushed, so a missing or late
//! flush on any CPU shows up as a read of the new contents through the old address.
//!
//! [`Helpers`] runs the helpers of a multi-CPU test (here and in the `vm` tests): a test
//! that fails returns early, and the guard stops its helpers before it does.

use crate::arch::percpu::{self, CpuSet};
use crate::arch::probe;
use crate::arch::timer::Deadline;
use crate::arch::tlb::{shootdown, MAIL};
use crate::harness::{KernelTest, TestContext, TestError, TestResult};
use crate::mem::kernel_flush::KernelFlush;
use crate::mem::kernel_space::{self, KernelTableAlloc};
use crate::mem::tests::Rng;
use crate::mem::{frames, physmap};
use crate::smp::{self, Pending};
use crate::vm;
use crate::{check, check_eq, skip, sprint};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use mm::backend::flush::FlushSink;
use mm::backend::phys::PhysMem;
use mm::backend::shootdown::{FlushBatch, ShootdownError};
use mm::base::addr::{PageSize, Pfn, PAGE_SIZE};
use mm::frame::buddy::MigrateType;
use mm::mapping::vma::{HugePolicy, VmaFlags};
use x86_64::structures::paging::PageTableFlags as F;
use x86_64::{PhysAddr, VirtAddr};

/// Virtual window of these tests (unused by anything else).
const TEST_VA: u64 = 0xFFFF_A100_0000_0000;
/// User-half window of these tests, in an address space of their own.
const USER_VA: u64 = 0x0000_3000_0000_0000;
/// Page index (in [`TEST_VA`]) of CPU 0's page in [`Changing`]; the page before it stays
/// mapped meanwhile, so the page table holding them is never freed.
const CHANGING_PAGE: u64 = 128;
/// How long a [`Helpers`] guard waits for each helper to stop.
const HELPER_STOP_MS: u64 = 10_000;

/// The tests of this module.
pub const TESTS: &[KernelTest] = &[
    KernelTest {
        name: "tlb::failed_test_stops_its_helpers",
        run: failed_test_stops_helpers,
    },
    KernelTest {
        name: "tlb::no_stale_translation_after_unmap_free_reuse",
        run: no_stale_translation,
    },
    KernelTest {
        name: "tlb::stress_100k_shootdowns_random_initiators",
        run: stress,
    },
    KernelTest {
        name: "tlb::shootdown_with_interrupts_disabled",
        run: interrupts_disabled,
    },
    KernelTest {
        name: "tlb::bad_requests_are_typed_errors",
        run: bad_requests,
    },
];

fn fail(message: String) -> TestError {
    TestError::Check {
        message,
        file: file!(),
        line: line!(),
    }
}

// ---------------------------------------------------------------- helpers

/// Work a multi-CPU test runs on other CPUs until told to stop. Dropping the guard (the
/// test failed a check and returns early) tells the helpers to stop and waits for them,
/// so no helper keeps another CPU busy, or an address space loaded, into the next test.
pub struct Helpers<R: Send + 'static> {
    stop: Arc<AtomicBool>,
    pending: Vec<Pending<R>>,
}

impl<R: Send + 'static> Default for Helpers<R> {
    fn default() -> Self {
        Helpers {
            stop: Arc::new(AtomicBool::new(false)),
            pending: Vec::new(),
        }
    }
}

impl<R: Send + 'static> Helpers<R> {
    /// The flag the helpers poll (set once they must stop).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Run `f(stop)` on `cpu`, another CPU than the running one (which would run it to
    /// the end before returning); `f` returns once `stop` is set.
    pub fn start<F>(&mut self, cpu: u32, f: F) -> TestResult
    where
        F: FnOnce(&AtomicBool) -> R + Send + 'static,
    {
        check!(
            cpu != percpu::cpu_index(),
            "a helper cannot run on its test's CPU {cpu}"
        );
        let stop = self.stop.clone();
        let pending = smp::run_on(cpu, move || f(&stop));
        check!(
            pending.is_ok(),
            "starting a helper on CPU {cpu}: {:?}",
            pending.as_ref().err()
        );
        self.pending.extend(pending.ok());
        Ok(())
    }

    /// Tell every helper to stop and wait for all; their results, in start order.
    pub fn finish(mut self) -> Vec<R> {
        self.stop.store(true, Ordering::Release);
        core::mem::take(&mut self.pending)
            .into_iter()
            .map(Pending::wait)
            .collect()
    }
}

impl<R: Send + 'static> Drop for Helpers<R> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for p in self.pending.drain(..) {
            if p.wait_timeout_ms(HELPER_STOP_MS).is_none() {
                sprint!(
                    "(helper on CPU {} did not stop within {HELPER_STOP_MS} ms) ",
                    p.cpu()
                );
            }
        }
    }
}

/// Start helpers on every other CPU, then fail a check, as a failing test does.
/// Leaves the helpers' stop flag in `flag`, for cleaning up after a guard that did not.
fn provoked_failure(
    running: &Arc<AtomicU64>,
    stopped: &Arc<AtomicU64>,
    flag: &mut Option<Arc<AtomicBool>>,
) -> TestResult {
    let mut helpers = Helpers::default();
    *flag = Some(helpers.stop_flag());
    let others: Vec<u32> = percpu::online()
        .iter()
        .filter(|&c| c != percpu::cpu_index())
        .collect();
    for &cpu in &others {
        let (running, stopped) = (running.clone(), stopped.clone());
        helpers.start(cpu, move |stop| {
            running.fetch_add(1, Ordering::AcqRel);
            while !stop.load(Ordering::Acquire) {
                core::hint::spin_loop();
            }
            stopped.fetch_add(1, Ordering::AcqRel);
        })?;
    }
    while running.load(Ordering::Acquire) < others.len() as u64 {
        core::hint::spin_loop();
    }
    check!(
        running.load(Ordering::Acquire) > others.len() as u64,
        "the failure this test provokes"
    );
    drop(helpers.finish());
    Ok(())
}

fn failed_test_stops_helpers(_: &TestContext) -> TestResult {
    let n = percpu::online().len() as u64 - 1;
    if n == 0 {
        skip!("needs 2 CPUs: no other CPU to run a helper on");
    }
    let (running, stopped) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut flag = None;
    let failed = provoked_failure(&running, &stopped, &mut flag);
    // The provoked failure has returned: its helpers must have stopped already.
    let at_return = stopped.load(Ordering::Acquire);
    if at_return < n {
        // They did not: stop them now, so that this failure stays this test's.
        flag.inspect(|f| f.store(true, Ordering::Release));
        let deadline = Deadline::after_ms(HELPER_STOP_MS);
        while stopped.load(Ordering::Acquire) < n && !deadline.expired() {
            core::hint::spin_loop();
        }
    }
    check!(
        matches!(failed, Err(TestError::Check { .. })),
        "the provoked failure did not fail: {failed:?}"
    );
    check_eq!(running.load(Ordering::Acquire), n);
    check!(
        at_return == n,
        "{} of {n} helpers still running when the failed test returned",
        n - at_return
    );
    // And their CPUs take new work at once.
    for cpu in percpu::online()
        .iter()
        .filter(|&c| c != percpu::cpu_index())
    {
        let p = smp::run_on(cpu, || ());
        check!(
            p.as_ref().is_ok_and(|p| p.wait_timeout_ms(1000).is_some()),
            "CPU {cpu} does not take new work"
        );
    }
    sprint!("({n} helpers stopped before the failed test returned) ");
    Ok(())
}

// ---------------------------------------------------------------- stale translations

const OLD: u64 = 0x01D0_01D0_01D0_01D0;
/// Rounds of the stale-translation test in each half.
const STALE_ROUNDS: u64 = 100;

/// Where the stale-translation test maps its page.
enum Half {
    /// Kernel page tables: shot down on every CPU, acknowledged after the flush.
    Kernel,
    /// An address space loaded on the readers: shot down on them, acknowledged early.
    User {
        mm: &'static vm::KernelMm,
        space: Arc<vm::Space>,
    },
}

impl Half {
    fn va(&self, round: u64) -> u64 {
        let base = match self {
            Half::Kernel => TEST_VA,
            Half::User { .. } => USER_VA,
        };
        base + (round % 64) * PAGE_SIZE
    }

    /// Map a frame holding [`OLD`] at `va`; returns the frame.
    fn map(&self, va: u64) -> Result<PhysAddr, String> {
        match self {
            Half::Kernel => {
                let frame = frames::alloc_zeroed(0, MigrateType::Movable)
                    .map_err(|e| format!("alloc: {e:?}"))?;
                physmap::PHYS.word(frame).store(OLD, Ordering::SeqCst);
                let mapped = kernel_space::with_kernel(|pt, f| {
                    pt.map(
                        va,
                        frame,
                        PageSize::Size4K,
                        F::WRITABLE | F::NO_EXECUTE,
                        &mut KernelTableAlloc,
                        f,
                    )
                });
                if let Err(e) = mapped {
                    let _ = frames::free(frame, 0);
                    return Err(format!("map {va:#x}: {e:?}"));
                }
                Ok(frame)
            }
            Half::User { mm, space } => {
                let flags = VmaFlags::private(HugePolicy::Never, true);
                mm.map_anon(space, va, PAGE_SIZE, flags)
                    .map_err(|e| format!("map_anon {va:#x}: {e}"))?;
                mm.populate(space, va, PAGE_SIZE)
                    .map_err(|e| format!("populate {va:#x}: {e}"))?;
                let t = space.translate(va).ok_or("not mapped after populate")?;
                physmap::PHYS.word(t.pa).store(OLD, Ordering::SeqCst);
                Ok(t.pa)
            }
        }
    }

    /// Unmap `va` and free its `frame`; the shootdown is over when this returns.
    fn unmap(&self, va: u64, frame: PhysAddr) -> Result<(), String> {
        match self {
            Half::Kernel => {
                let _leaf = kernel_space::with_kernel(|pt, f| pt.unmap(va, PageSize::Size4K, f))
                    .map_err(|e| format!("unmap {va:#x}: {e:?}"))?;
                frames::free(frame, 0).map_err(|e| format!("free: {e:?}"))
            }
            Half::User { mm, space } => mm
                .unmap(space, va, PAGE_SIZE)
                .map_err(|e| format!("unmap {va:#x}: {e}")),
        }
    }

    fn space(&self) -> Option<Arc<vm::Space>> {
        match self {
            Half::Kernel => None,
            Half::User { space, .. } => Some(space.clone()),
        }
    }
}

/// What the readers of one half saw.
#[derive(Default)]
struct Reads {
    reads: AtomicU64,
    faults: AtomicU64,
    violations: AtomicU64,
    errors: AtomicU64,
}

/// `STALE_ROUNDS` rounds: map a page holding [`OLD`], let `readers` cache it and keep
/// reading it, unmap it, free its frame, take the very same frame back and fill it with a
/// new value. A reader that sees the new value read through the old translation.
fn stale_rounds(half: &Half, readers: &CpuSet, seed: u64) -> Result<Arc<Reads>, TestError> {
    let seen = Arc::new(Reads::default());
    let mut rng = Rng::new(seed);
    for round in 0..STALE_ROUNDS {
        let va = half.va(round);
        let new = 0x5EED_0000_0000_0000 | rng.next() >> 16;
        let frame = half.map(va).map_err(fail)?;
        // Readers load the translation into their TLBs, then keep reading.
        let warm = Arc::new(AtomicU64::new(0));
        let mut helpers = Helpers::default();
        for cpu in readers.iter() {
            let (warm, seen, space) = (warm.clone(), seen.clone(), half.space());
            helpers.start(cpu, move |stop| {
                if let Some(space) = &space {
                    if vm::activate(space).is_err() {
                        seen.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let mut warmed = false;
                loop {
                    match probe::read_u64(va) {
                        Some(v) if v == new => {
                            seen.violations.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(_) => {}
                        None => {
                            seen.faults.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    seen.reads.fetch_add(1, Ordering::Relaxed);
                    if !warmed {
                        warmed = true;
                        warm.fetch_add(1, Ordering::AcqRel);
                    }
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                }
                vm::deactivate();
            })?;
        }
        while warm.load(Ordering::Acquire) < readers.len() as u64 {
            core::hint::spin_loop();
        }
        // Unmap (the shootdown is over when this returns), free, reallocate the very same
        // frame and fill it with the new pattern.
        half.unmap(va, frame).map_err(fail)?;
        let again = frames::alloc_at(Pfn::containing(frame), 0, MigrateType::Movable);
        check!(again.is_ok(), "frame could not be taken back: {again:?}");
        physmap::PHYS.word(frame).store(new, Ordering::SeqCst);
        // Give the readers time to trip over a stale entry.
        for _ in 0..2000 {
            core::hint::spin_loop();
        }
        let before = seen.reads.load(Ordering::Relaxed);
        while seen.reads.load(Ordering::Relaxed) < before + 4 * readers.len() as u64 {
            core::hint::spin_loop();
        }
        drop(helpers.finish());
        check_eq!(frames::free(frame, 0), Ok(()));
    }
    Ok(seen)
}

fn no_stale_translation(ctx: &TestContext) -> TestResult {
    let online = percpu::online();
    let readers: CpuSet = online
        .iter()
        .filter(|&c| c != percpu::cpu_index())
        .collect();
    if readers.is_empty() {
        skip!("needs 2 CPUs: no other CPU to hold a stale translation");
    }
    let Some(mm) = vm::mm() else {
        return Err(fail("address spaces are not set up".into()));
    };
    let kernel = stale_rounds(&Half::Kernel, &readers, ctx.seed)?;
    let space = mm
        .new_space()
        .map_err(|e| fail(format!("new_space: {e}")))?;
    let user = stale_rounds(
        &Half::User {
            mm,
            space: space.clone(),
        },
        &readers,
        ctx.seed ^ 1,
    );
    let destroyed = mm.destroy_space(&space);
    let user = user?;
    check_eq!(destroyed, Ok(()));
    sprint!("({} readers", readers.len());
    for (name, r) in [("kernel", &kernel), ("user", &user)] {
        sprint!(
            "; {name}: {} reads, {} faults, {} stale",
            r.reads.load(Ordering::Relaxed),
            r.faults.load(Ordering::Relaxed),
            r.violations.load(Ordering::Relaxed)
        );
    }
    sprint!(") ");
    for (name, r) in [("kernel", &kernel), ("user", &user)] {
        check_eq!(r.errors.load(Ordering::Relaxed), 0);
        check!(
            r.violations.load(Ordering::Relaxed) == 0,
            "{name} half: {} reads of the new contents through the old translation",
            r.violations.load(Ordering::Relaxed)
        );
        check!(
            r.faults.load(Ordering::Relaxed) > 0,
            "{name} half: no reader ever saw the unmapped page fault"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- changing mappings

/// Keeps translation changes to itself (the test shoots them down), passing unlinked
/// page tables on to the real sink.
struct Quiet<'a>(&'a mut KernelFlush);

impl FlushSink for Quiet<'_> {
    fn flush_page(&mut self, _: VirtAddr, _: PageSize) {}

    fn flush_all(&mut self) {}

    fn defer_free_table(&mut self, table: PhysAddr) {
        self.0.defer_free_table(table);
    }
}

/// One kernel page per CPU whose translation keeps changing: CPU c's page is remapped,
/// without any flush, alternately to two frames, and the frame of generation g holds g.
/// Once c has shot the change down and published g, a read of its page on any CPU
/// returns at least g; a smaller value was read through a translation some CPU kept.
struct Changing {
    /// The two frames of each CPU's page, by CPU index.
    frames: Vec<[PhysAddr; 2]>,
    /// The page table's anchor (see [`CHANGING_PAGE`]).
    anchor: PhysAddr,
    /// The last generation each CPU shot down.
    generation: Vec<AtomicU64>,
}

impl Changing {
    fn page(cpu: u32) -> u64 {
        TEST_VA + (CHANGING_PAGE + u64::from(cpu)) * PAGE_SIZE
    }

    fn map(va: u64, frame: PhysAddr) -> Result<(), String> {
        kernel_space::with_kernel(|pt, f| {
            pt.map(
                va,
                frame,
                PageSize::Size4K,
                F::WRITABLE | F::NO_EXECUTE,
                &mut KernelTableAlloc,
                f,
            )
        })
        .map_err(|e| format!("map {va:#x}: {e:?}"))
    }

    /// Pages for every CPU index up to the highest of `online` (indices have gaps when
    /// a CPU failed to start), each at generation 0.
    fn new(online: &CpuSet) -> Result<Arc<Changing>, TestError> {
        let cpus = online.iter().max().map_or(0, |cpu| cpu + 1);
        let frame =
            || frames::alloc_zeroed(0, MigrateType::Unmovable).map_err(|e| fail(format!("{e:?}")));
        let mut changing = Changing {
            frames: Vec::new(),
            anchor: frame()?,
            generation: (0..cpus).map(|_| AtomicU64::new(0)).collect(),
        };
        Changing::map(Changing::page(0) - PAGE_SIZE, changing.anchor).map_err(fail)?;
        for cpu in 0..cpus {
            changing.frames.push([frame()?, frame()?]);
            Changing::map(Changing::page(cpu), changing.frames[cpu as usize][0]).map_err(fail)?;
        }
        Ok(Arc::new(changing))
    }

    /// Remap `cpu`'s page to the frame of its next generation without flushing anything;
    /// returns that generation, to publish once shot down.
    fn change(&self, cpu: u32) -> Result<u64, String> {
        let g = self.generation[cpu as usize].load(Ordering::Relaxed) + 1;
        let frame = self.frames[cpu as usize][(g % 2) as usize];
        physmap::PHYS.word(frame).store(g, Ordering::SeqCst);
        let va = Changing::page(cpu);
        kernel_space::with_kernel(|pt, f| {
            let mut quiet = Quiet(f);
            let _leaf = pt
                .unmap(va, PageSize::Size4K, &mut quiet)
                .map_err(|e| format!("unmap {va:#x}: {e:?}"))?;
            let flags = F::WRITABLE | F::NO_EXECUTE;
            pt.map(
                va,
                frame,
                PageSize::Size4K,
                flags,
                &mut KernelTableAlloc,
                &mut quiet,
            )
            .map_err(|e| format!("map {va:#x}: {e:?}"))
        })?;
        Ok(g)
    }

    /// `cpu`'s change to generation `g` has been shot down.
    fn publish(&self, cpu: u32, g: u64) {
        self.generation[cpu as usize].store(g, Ordering::Release);
    }

    /// Read `cpu`'s page: Ok(true) when read, Ok(false) when it was being remapped (it
    /// faulted), Err((value, published generation)) when read through a stale translation.
    fn check(&self, cpu: u32) -> Result<bool, (u64, u64)> {
        let want = self.generation[cpu as usize].load(Ordering::Acquire);
        match probe::read_u64(Changing::page(cpu)) {
            Some(v) if v < want => Err((v, want)),
            Some(_) => Ok(true),
            None => Ok(false),
        }
    }
}

impl Drop for Changing {
    fn drop(&mut self) {
        let pages = self.frames.len() as u32;
        let unmapped = kernel_space::with_kernel(|pt, f| {
            (0..pages)
                .map(Changing::page)
                .chain([Changing::page(0) - PAGE_SIZE])
                .all(|va| pt.unmap(va, PageSize::Size4K, f).is_ok())
        });
        if !unmapped {
            log::error!("tlb test: a changing page could not be unmapped");
        }
        for &frame in self.frames.iter().flatten().chain([&self.anchor]) {
            if let Err(e) = frames::free(frame, 0) {
                log::error!("tlb test: freeing {frame:?}: {e:?}");
            }
        }
    }
}

/// Stale and successful reads of the changing pages by one CPU.
#[derive(Default, Debug)]
struct Checked {
    read: u64,
    stale: u64,
    first_stale: Option<String>,
}

impl Checked {
    fn check(&mut self, changing: &Changing, me: u32, cpu: u32) {
        match changing.check(cpu) {
            Ok(read) => self.read += u64::from(read),
            Err((seen, want)) => {
                self.stale += 1;
                self.first_stale.get_or_insert(format!(
                    "CPU {me} read {seen} in CPU {cpu}'s page after generation {want} was shot down"
                ));
            }
        }
    }
}

// ---------------------------------------------------------------- shootdown tests

/// One shootdown in this many of the stress also changes the initiator's page.
const STRESS_CHANGE_EVERY: u64 = 8;

fn stress(ctx: &TestContext) -> TestResult {
    let online = percpu::online();
    let total: u64 = 100_000;
    let per_cpu = total / online.len() as u64;
    let seed = ctx.seed;
    let changing = Changing::new(&online)?;
    let before: u64 = online.iter().map(|c| MAIL.served(c)).sum();
    let pages = changing.clone();
    let results = smp::broadcast(move |cpu| {
        let mut rng = Rng::new(seed ^ u64::from(cpu) << 32);
        let (mut done, mut remote, mut changes) = (0u64, 0u64, 0u64);
        let mut checked = Checked::default();
        for i in 0..per_cpu {
            let mut batch = FlushBatch::new();
            let n = 1 + rng.below(48);
            let base = if rng.next() & 1 == 0 {
                0x4000_0000
            } else {
                TEST_VA + (8 << 30)
            };
            let start = base + rng.below(1 << 20) * PAGE_SIZE;
            batch
                .add_range(start, start + n * PAGE_SIZE, PageSize::Size4K)
                .map_err(|e| format!("add_range: {e:?}"))?;
            // Random targets among the online CPUs, sometimes all of them; all of them
            // when this CPU's page changed, since every CPU may cache it.
            let change = i % STRESS_CHANGE_EVERY == 0;
            let targets: CpuSet = if change {
                online
            } else {
                online.iter().filter(|_| rng.next() & 3 != 0).collect()
            };
            let generation = if change {
                batch.add_page(Changing::page(cpu), PageSize::Size4K);
                Some(pages.change(cpu)?)
            } else {
                None
            };
            remote += targets.len() as u64 - u64::from(targets.contains(cpu));
            shootdown(targets, &batch).map_err(|e| format!("shootdown: {e:?}"))?;
            if let Some(g) = generation {
                pages.publish(cpu, g);
                changes += 1;
            }
            done += 1;
            checked.check(&pages, cpu, cpu);
            let nth = rng.below(online.len() as u64) as usize;
            if let Some(other) = online.iter().nth(nth) {
                checked.check(&pages, cpu, other);
            }
        }
        Ok::<_, String>((done, remote, changes, checked))
    });
    check!(results.is_ok(), "broadcast failed: {results:?}");
    let results = results.unwrap_or_default();
    let (mut done, mut remote, mut changes) = (0, 0, 0);
    let mut checked = Checked::default();
    for (cpu, r) in results {
        let r = r.map_err(|e| fail(format!("CPU {cpu}: {e}")))?;
        done += r.0;
        remote += r.1;
        changes += r.2;
        checked.read += r.3.read;
        checked.stale += r.3.stale;
        checked.first_stale = checked.first_stale.or(r.3.first_stale);
    }
    check_eq!(done, per_cpu * online.len() as u64);
    let served: u64 = online.iter().map(|c| MAIL.served(c)).sum::<u64>() - before;
    check_eq!(served, remote);
    sprint!(
        "({done} shootdowns, {remote} remote acks, {changes} of them changed a mapping; {} reads of changing pages) ",
        checked.read
    );
    check!(
        checked.stale == 0,
        "{} reads through a stale translation, first: {:?}",
        checked.stale,
        checked.first_stale
    );
    check!(checked.read > 0, "no changing page was ever read");
    drop(changing);
    let audit = frames::drain_and_audit();
    check!(audit.is_ok(), "audit: {audit:?}");
    Ok(())
}

/// Shootdowns per CPU in the interrupts-off test.
const IRQ_OFF_ROUNDS: u64 = 100;

fn interrupts_disabled(_: &TestContext) -> TestResult {
    let online = percpu::online();
    let n = online.len() as u64;
    if n < 2 {
        skip!("needs 2 CPUs: with one there is no other CPU to flush");
    }
    let changing = Changing::new(&online)?;
    let before: u64 = online.iter().map(|c| MAIL.served(c)).sum();
    // Every CPU at once changes its page and shoots it down on every CPU with interrupts
    // off (each must serve the others' requests while waiting for its own
    // acknowledgements), then reads every CPU's page.
    let pages = changing.clone();
    let results = smp::broadcast(move |cpu| {
        x86_64::instructions::interrupts::without_interrupts(|| {
            let mut checked = Checked::default();
            for _ in 0..IRQ_OFF_ROUNDS {
                let g = pages.change(cpu)?;
                let mut batch = FlushBatch::new();
                batch.add_page(Changing::page(cpu), PageSize::Size4K);
                shootdown(online, &batch).map_err(|e| format!("shootdown: {e:?}"))?;
                pages.publish(cpu, g);
                for other in online.iter() {
                    checked.check(&pages, cpu, other);
                }
            }
            Ok::<_, String>(checked)
        })
    });
    check!(results.is_ok(), "broadcast failed: {results:?}");
    let mut checked = Checked::default();
    for (cpu, r) in results.unwrap_or_default() {
        let r = r.map_err(|e| fail(format!("CPU {cpu}: {e}")))?;
        checked.read += r.read;
        checked.stale += r.stale;
        checked.first_stale = checked.first_stale.or(r.first_stale);
    }
    let served: u64 = online.iter().map(|c| MAIL.served(c)).sum::<u64>() - before;
    sprint!(
        "({n} CPUs x {IRQ_OFF_ROUNDS} changed pages shot down, {served} requests served, {} reads of every CPU's page after) ",
        checked.read
    );
    check!(
        checked.stale == 0,
        "{} reads through a stale translation, first: {:?}",
        checked.stale,
        checked.first_stale
    );
    check!(
        served >= IRQ_OFF_ROUNDS * n * (n - 1),
        "too few requests served"
    );
    check!(checked.read > 0, "no changing page was ever read");
    Ok(())
}

fn bad_requests(_: &TestContext) -> TestResult {
    let mut batch = FlushBatch::new();
    check_eq!(
        batch.add_range(TEST_VA, TEST_VA, PageSize::Size4K),
        Err(ShootdownError::EmptyRange)
    );
    check_eq!(
        batch.add_range(
            0x0000_7FFF_FFFF_F000,
            0x0000_8000_0000_1000,
            PageSize::Size4K
        ),
        Err(ShootdownError::NonCanonical)
    );
    check!(batch.is_empty());
    batch.add_page(TEST_VA, PageSize::Size4K);
    let offline = (0..crate::arch::percpu::MAX_CPUS as u32).find(|&c| !percpu::is_online(c));
    if let Some(cpu) = offline {
        check_eq!(
            shootdown(CpuSet::single(cpu), &batch),
            Err(ShootdownError::OfflineCpu(cpu))
        );
    }
    check_eq!(shootdown(CpuSet::new(), &batch), Ok(()));
    check_eq!(shootdown(percpu::online(), &FlushBatch::new()), Ok(()));
    Ok(())
}
