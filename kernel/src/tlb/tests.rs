//! In-kernel tests of TLB shootdown on real (emulated) CPUs.
//!
//! QEMU's software TLB keeps a translation until it is flushed, so a missing or late
//! flush on any CPU shows up as a read of the new contents through the old address.

use super::{shootdown, MAIL};
use crate::arch::probe;
use crate::arch::smp;
use crate::harness::{KernelTest, TestContext, TestResult};
use crate::mem::kernel_space::{self, KernelTableAlloc};
use crate::mem::tests::Rng;
use crate::mem::{frames, physmap};
use crate::percpu::{self, CpuSet};
use crate::{check, check_eq};
use alloc::sync::Arc;

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use mm::backend::shootdown::{FlushBatch, ShootdownError};
use mm::base::addr::{PageSize, PAGE_SIZE};
use mm::frame::buddy::MigrateType;
use x86_64::structures::paging::PageTableFlags as F;

/// Virtual window of these tests (unused by anything else).
const TEST_VA: u64 = 0xFFFF_A100_0000_0000;

/// The tests of this module.
pub const TESTS: &[KernelTest] = &[
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

const OLD: u64 = 0x01D0_01D0_01D0_01D0;

fn no_stale_translation(ctx: &TestContext) -> TestResult {
    let online = percpu::online();
    let readers: CpuSet = online.iter().filter(|&c| c != 0).collect();
    let rounds = 200;
    let violations = Arc::new(AtomicU64::new(0));
    let faults = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let mut rng = Rng::new(ctx.seed);
    for round in 0..rounds {
        let va = TEST_VA + (round % 64) * PAGE_SIZE;
        let new = 0x5EED_0000_0000_0000 | rng.next() >> 16;
        let frame = frames::alloc_zeroed(0, MigrateType::Movable);
        check!(frame.is_ok());
        let Ok(frame) = frame else { return Ok(()) };
        // SAFETY: the frame was just allocated for this test.
        check!(unsafe { probe::write_u64(physmap::virt(frame).as_u64(), OLD) });
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
        check_eq!(mapped, Ok(()));
        // Readers load the translation into their TLBs, then keep reading.
        let stop = Arc::new(AtomicBool::new(false));
        let warm = Arc::new(AtomicU64::new(0));
        let pending = {
            let (stop, warm, violations, faults, reads) = (
                stop.clone(),
                warm.clone(),
                violations.clone(),
                faults.clone(),
                reads.clone(),
            );
            smp::run_on_set(&readers, move |_| {
                let mut warmed = false;
                loop {
                    match probe::read_u64(va) {
                        Some(OLD) => {}
                        Some(v) if v == new => {
                            violations.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(_) => {}
                        None => {
                            faults.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                    if !warmed {
                        warmed = true;
                        warm.fetch_add(1, Ordering::AcqRel);
                    }
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                }
            })
        };
        check!(pending.is_ok());
        while warm.load(Ordering::Acquire) < readers.len() as u64 {
            core::hint::spin_loop();
        }
        // Unmap (the shootdown runs before with_kernel returns), free, reallocate the
        // very same frame and fill it with the new pattern.
        let leaf = kernel_space::with_kernel(|pt, f| pt.unmap(va, PageSize::Size4K, f));
        check!(leaf.is_ok());
        check_eq!(frames::free(frame, 0), Ok(()));
        let again = frames::alloc_at(
            mm::base::addr::Pfn::containing(frame),
            0,
            MigrateType::Movable,
        );
        check!(again.is_ok(), "frame could not be taken back: {again:?}");
        // SAFETY: the frame is ours again.
        check!(unsafe { probe::write_u64(physmap::virt(frame).as_u64(), new) });
        // Give the readers time to trip over a stale entry.
        for _ in 0..2000 {
            core::hint::spin_loop();
        }
        let seen = reads.load(Ordering::Relaxed);
        while reads.load(Ordering::Relaxed) < seen + 4 * readers.len() as u64 {
            core::hint::spin_loop();
        }
        stop.store(true, Ordering::Release);
        if let Ok(p) = pending {
            for w in p {
                w.wait();
            }
        }
        check_eq!(frames::free(frame, 0), Ok(()));
    }
    crate::sprint!(
        "({} readers, {} reads, {} faults) ",
        readers.len(),
        reads.load(Ordering::Relaxed),
        faults.load(Ordering::Relaxed)
    );
    check_eq!(violations.load(Ordering::Relaxed), 0);
    if !readers.is_empty() {
        check!(
            faults.load(Ordering::Relaxed) > 0,
            "no reader ever saw the unmapped page fault"
        );
    }
    Ok(())
}

fn stress(ctx: &TestContext) -> TestResult {
    let online = percpu::online();
    let total: u64 = 100_000;
    let per_cpu = total / online.len() as u64;
    let seed = ctx.seed;
    let before: u64 = online.iter().map(|c| MAIL.served(c)).sum();
    let results = smp::broadcast(move |cpu| {
        let mut rng = Rng::new(seed ^ u64::from(cpu) << 32);
        let mut done = 0u64;
        let mut remote = 0u64;
        for _ in 0..per_cpu {
            let mut batch = FlushBatch::new();
            let pages = 1 + rng.below(48);
            let base = if rng.next() & 1 == 0 {
                0x4000_0000
            } else {
                TEST_VA + (8 << 30)
            };
            let start = base + rng.below(1 << 20) * PAGE_SIZE;
            if batch
                .add_range(start, start + pages * PAGE_SIZE, PageSize::Size4K)
                .is_err()
            {
                return (done, remote, false);
            }
            // Random targets among the online CPUs, sometimes all of them.
            let targets: CpuSet = online.iter().filter(|_| rng.next() & 3 != 0).collect();
            remote += targets.len() as u64 - u64::from(targets.contains(cpu));
            if shootdown(targets, &batch).is_err() {
                return (done, remote, false);
            }
            done += 1;
        }
        (done, remote, true)
    });
    check!(results.is_ok(), "broadcast failed: {results:?}");
    let Ok(results) = results else { return Ok(()) };
    let done: u64 = results.iter().map(|(_, r)| r.0).sum();
    let remote: u64 = results.iter().map(|(_, r)| r.1).sum();
    check!(results.iter().all(|(_, r)| r.2), "a shootdown was refused");
    check_eq!(done, per_cpu * online.len() as u64);
    let served: u64 = online.iter().map(|c| MAIL.served(c)).sum::<u64>() - before;
    check_eq!(served, remote);
    crate::sprint!("({done} shootdowns, {remote} remote acks) ");
    let audit = frames::drain_and_audit();
    check!(audit.is_ok(), "audit: {audit:?}");
    Ok(())
}

fn interrupts_disabled(_: &TestContext) -> TestResult {
    let online = percpu::online();
    // Every CPU at once shoots down every CPU with interrupts off: each must serve the
    // others' requests while waiting for its own acknowledgements.
    let results = smp::broadcast(move |_| {
        x86_64::instructions::interrupts::without_interrupts(|| {
            let mut batch = FlushBatch::new();
            batch.add_page(TEST_VA, PageSize::Size4K);
            (0..100).all(|_| shootdown(online, &batch).is_ok())
        })
    });
    check!(
        matches!(&results, Ok(r) if r.iter().all(|(_, ok)| *ok)),
        "{results:?}"
    );
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
    let offline = (0..crate::percpu::MAX_CPUS as u32).find(|&c| !percpu::is_online(c));
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
