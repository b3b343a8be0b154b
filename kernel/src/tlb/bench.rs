//! TLB benchmarks, one `BENCH {json}` line per figure, ratios from the same run.
//!
//! - `tlb.threshold.nN`: invalidating N pages one by one (`invlpg`) and touching them
//!   again, against a full flush followed by touching the whole 512-page working set
//!   again (what a full flush really costs is the refill). The smallest N where the full
//!   flush wins is where page-by-page flushing should stop (`tlb.threshold`).
//! - `tlb.shootdown.P.rR`: cycles of one shootdown of P pages (or a full flush) to R remote
//!   CPUs, initiator included, until every acknowledgement is in.
//! - `tlb.batched_vs_unbatched`: one request carrying 32 pages against 32 requests of one.

use super::{flush_local, shootdown};
use crate::arch::probe;
use crate::mem::frames;
use crate::mem::kernel_space::{self, KernelTableAlloc};
use crate::percpu::{self, CpuSet};
use crate::sprintln;
use core::arch::x86_64::_rdtsc;
use mm::backend::shootdown::FlushBatch;
use mm::base::addr::{PageSize, PAGE_SIZE};
use mm::frame::buddy::MigrateType;
use x86_64::structures::paging::PageTableFlags as F;

const BENCH_VA: u64 = 0xFFFF_A200_0000_0000;
const WORKING_SET: u64 = 512;
const REPS: usize = 50;

fn cycles() -> u64 {
    // SAFETY: RDTSC has no side effects; the kernel runs at CPL 0.
    unsafe { _rdtsc() }
}

fn touch(first: u64, n: u64) {
    for i in 0..n {
        core::hint::black_box(probe::read_u64(BENCH_VA + (first + i) * PAGE_SIZE));
    }
}

fn median(mut v: [u64; REPS]) -> u64 {
    v.sort_unstable();
    v[REPS / 2]
}

fn user_batch(pages: u64, full: bool) -> FlushBatch {
    let mut b = FlushBatch::new();
    if full {
        b.set_full(false);
    } else {
        for i in 0..pages {
            b.add_page(0x4000_0000 + i * PAGE_SIZE, PageSize::Size4K);
        }
    }
    b
}

/// The flush threshold measurement; returns the measured threshold.
fn threshold() -> Option<u64> {
    let block = frames::with_buddy(|b| b.alloc(9, MigrateType::Unmovable)).ok()?;
    let mapped = kernel_space::with_kernel(|pt, f| {
        (0..WORKING_SET).all(|i| {
            let pa = block.add(i).addr();
            let flags = F::WRITABLE | F::NO_EXECUTE;
            pt.map(
                BENCH_VA + i * PAGE_SIZE,
                pa,
                PageSize::Size4K,
                flags,
                &mut KernelTableAlloc,
                f,
            )
            .is_ok()
        })
    });
    let mut chosen = None;
    if mapped {
        for n in [1u64, 2, 4, 8, 16, 32, 64, 128, 256, 512] {
            let (mut by_page, mut full) = ([0; REPS], [0; REPS]);
            for r in 0..REPS {
                touch(0, WORKING_SET);
                let t = cycles();
                for i in 0..n {
                    x86_64::instructions::tlb::flush(x86_64::VirtAddr::new(
                        BENCH_VA + i * PAGE_SIZE,
                    ));
                }
                touch(0, n);
                by_page[r] = cycles() - t;
                touch(0, WORKING_SET);
                let t = cycles();
                flush_local(&user_batch(0, true));
                touch(0, WORKING_SET);
                full[r] = cycles() - t;
            }
            let (p, f) = (median(by_page), median(full));
            if chosen.is_none() && p >= f {
                chosen = Some(n);
            }
            sprintln!(
                "BENCH {{\"name\":\"tlb.threshold.n{n}\",\"value\":{p},\"unit\":\"cycles\",\"baseline\":\"full flush + refill of {WORKING_SET} pages\",\"baseline_value\":{f},\"ratio\":{:.3}}}",
                p as f64 / f as f64
            );
        }
        kernel_space::with_kernel(|pt, f| {
            for i in 0..WORKING_SET {
                let _ = pt.unmap(BENCH_VA + i * PAGE_SIZE, PageSize::Size4K, f);
            }
        });
    }
    let _ = frames::with_buddy(|b| b.free(block, 9));
    let threshold = chosen.unwrap_or(WORKING_SET);
    sprintln!(
        "BENCH {{\"name\":\"tlb.threshold\",\"value\":{threshold},\"unit\":\"pages\",\"in_use\":{}}}",
        mm::backend::shootdown::FULL_FLUSH_THRESHOLD
    );
    Some(threshold)
}

/// Median cycles of one shootdown of `batch` to `targets`.
fn shootdown_cycles(targets: CpuSet, batch: &FlushBatch) -> u64 {
    let mut samples = [0; REPS];
    for s in samples.iter_mut() {
        let t = cycles();
        let _ = shootdown(targets, batch);
        *s = cycles() - t;
    }
    median(samples)
}

/// Every TLB figure.
pub fn run() {
    threshold();
    let online = percpu::online();
    let me = percpu::cpu_index();
    for remote in [1usize, 3, 7] {
        if online.len() < remote + 1 {
            sprintln!(
                "# tlb.shootdown to {remote} remote CPUs: only {} CPUs online; skipped",
                online.len()
            );
            continue;
        }
        let targets: CpuSet = online
            .iter()
            .filter(|&c| c != me)
            .take(remote)
            .chain([me])
            .collect();
        for (label, batch) in [
            ("1", user_batch(1, false)),
            ("32", user_batch(32, false)),
            ("512", user_batch(512, false)),
            ("full", user_batch(0, true)),
        ] {
            let c = shootdown_cycles(targets, &batch);
            sprintln!(
                "BENCH {{\"name\":\"tlb.shootdown.{label}.r{remote}\",\"value\":{c},\"unit\":\"cycles\",\"pages\":\"{label}\",\"remote_cpus\":{remote},\"full_flush\":{}}}",
                batch.is_full()
            );
        }
    }
    if online.len() > 1 {
        let batched = shootdown_cycles(online, &user_batch(32, false));
        let one = user_batch(1, false);
        let mut samples = [0; REPS];
        for s in samples.iter_mut() {
            let t = cycles();
            for _ in 0..32 {
                let _ = shootdown(online, &one);
            }
            *s = cycles() - t;
        }
        let unbatched = median(samples);
        sprintln!(
            "BENCH {{\"name\":\"tlb.batched_vs_unbatched\",\"value\":{batched},\"unit\":\"cycles\",\"baseline\":\"32 single-page shootdowns\",\"baseline_value\":{unbatched},\"ratio\":{:.3},\"cpus\":{}}}",
            batched as f64 / unbatched as f64,
            online.len()
        );
    }
}
