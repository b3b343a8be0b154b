//! TLB benchmarks, one `BENCH {json}` line per figure, ratios from the same run.
//!
//! - `tlb.threshold.nN`: invalidating N pages one by one (`invlpg`) and touching them
//!   again, against a full flush followed by touching the whole 512-page working set
//!   again (what a full flush really costs is the refill). The smallest N where the full
//!   flush wins is where page-by-page flushing should stop (`tlb.threshold`).
//! - `tlb.shootdown.P.rR`: cycles of one shootdown of P user-half pages (or a full flush)
//!   to R remote CPUs, initiator included, until every acknowledgement is in; user-half
//!   requests are acknowledged before the targets flush.
//! - `tlb.shootdown.kernel.P.rR`: the same for kernel-half pages (a full flush drops the
//!   global entries too), acknowledged only after the targets flushed.
//! - `tlb.policy.nN`: what flushing N changed kernel pages of the working set costs under
//!   our batching policy (page by page up to `FULL_FLUSH_THRESHOLD` = 128 pages, a full
//!   flush beyond) against Linux's (page by page up to 33 pages, `tlb_single_page_flush_ceiling`,
//!   a full flush beyond): one shootdown to every online CPU, then the initiator touches
//!   the whole working set again (the refill is what a full flush really costs). Below
//!   34 pages and above 128 both policies do the same; in between ours flushes page by
//!   page where Linux flushes everything.
//!
//! With `quick` every figure is measured once (same lines and fields).

use crate::arch::percpu::{self, CpuSet};
use crate::arch::probe;
use crate::arch::tlb::{flush_local, shootdown};
use crate::mem::frames;
use crate::mem::kernel_space::{self, KernelTableAlloc};
use crate::sprintln;
use alloc::vec::Vec;
use core::arch::x86_64::_rdtsc;
use mm::backend::shootdown::FlushBatch;
use mm::base::addr::{PageSize, Pfn, PAGE_SIZE};
use mm::frame::buddy::MigrateType;
use x86_64::structures::paging::PageTableFlags as F;

const BENCH_VA: u64 = 0xFFFF_A200_0000_0000;
const WORKING_SET: u64 = 512;
const REPS: usize = 50;
/// Linux's `tlb_single_page_flush_ceiling`: past this many pages it flushes everything.
const LINUX_CEILING: u64 = 33;

fn cycles() -> u64 {
    // SAFETY: RDTSC has no side effects; the kernel runs at CPL 0.
    unsafe { _rdtsc() }
}

fn touch(first: u64, n: u64) {
    for i in 0..n {
        core::hint::black_box(probe::read_u64(BENCH_VA + (first + i) * PAGE_SIZE));
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn user_batch(pages: u64, full: bool) -> FlushBatch {
    batch_at(0x4000_0000, pages, full)
}

fn kernel_batch(pages: u64, full: bool) -> FlushBatch {
    batch_at(BENCH_VA, pages, full)
}

/// `pages` pages from `base` one by one, or a full flush (of global entries too when
/// `base` is in the kernel half).
fn batch_at(base: u64, pages: u64, full: bool) -> FlushBatch {
    let mut b = FlushBatch::new();
    if full {
        b.set_full(base >= 0xFFFF_8000_0000_0000);
    } else {
        for i in 0..pages {
            b.add_page(base + i * PAGE_SIZE, PageSize::Size4K);
        }
    }
    b
}

/// Map the 512-page working set at `BENCH_VA`; the block behind it.
fn map_working_set() -> Option<Pfn> {
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
    if !mapped {
        unmap_working_set(block);
        return None;
    }
    Some(block)
}

fn unmap_working_set(block: Pfn) {
    kernel_space::with_kernel(|pt, f| {
        for i in 0..WORKING_SET {
            let _ = pt.unmap(BENCH_VA + i * PAGE_SIZE, PageSize::Size4K, f);
        }
    });
    let _ = frames::with_buddy(|b| b.free(block, 9));
}

/// The flush threshold measurement over the mapped working set.
fn threshold(reps: usize) {
    let mut chosen = None;
    for n in [1u64, 2, 4, 8, 16, 32, 64, 128, 256, 512] {
        let (mut by_page, mut full) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            touch(0, WORKING_SET);
            let t = cycles();
            for i in 0..n {
                x86_64::instructions::tlb::flush(x86_64::VirtAddr::new(BENCH_VA + i * PAGE_SIZE));
            }
            touch(0, n);
            by_page.push(cycles() - t);
            touch(0, WORKING_SET);
            let t = cycles();
            flush_local(&user_batch(0, true));
            touch(0, WORKING_SET);
            full.push(cycles() - t);
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
    let threshold = chosen.unwrap_or(WORKING_SET);
    sprintln!(
        "BENCH {{\"name\":\"tlb.threshold\",\"value\":{threshold},\"unit\":\"pages\",\"in_use\":{}}}",
        mm::backend::shootdown::FULL_FLUSH_THRESHOLD
    );
}

/// Median cycles of flushing `n` changed pages of the working set on every online CPU
/// under a policy that flushes page by page up to `ceiling` pages, then the initiator's
/// refill of the working set.
fn policy_cycles(n: u64, ceiling: u64, reps: usize) -> u64 {
    let batch = kernel_batch(n, n > ceiling);
    let online = percpu::online();
    let mut samples = Vec::new();
    for _ in 0..reps {
        touch(0, WORKING_SET);
        let t = cycles();
        let _ = shootdown(online, &batch);
        touch(0, WORKING_SET);
        samples.push(cycles() - t);
    }
    median(samples)
}

/// Our batching policy against Linux's, over the mapped working set.
fn policy(reps: usize) {
    let ours_ceiling = mm::backend::shootdown::FULL_FLUSH_THRESHOLD as u64;
    let how = |n: u64, ceiling: u64| {
        if n > ceiling {
            "full flush"
        } else {
            "page by page"
        }
    };
    for n in [16u64, 33, 64, 128, 256] {
        let ours = policy_cycles(n, ours_ceiling, reps);
        let linux = policy_cycles(n, LINUX_CEILING, reps);
        sprintln!(
            "BENCH {{\"name\":\"tlb.policy.n{n}\",\"value\":{ours},\"unit\":\"cycles\",\"baseline\":\"Linux policy: page by page up to {LINUX_CEILING} pages, then a full flush\",\"baseline_value\":{linux},\"ratio\":{:.3},\"pages\":{n},\"ours\":\"{}\",\"linux\":\"{}\",\"cpus\":{},\"measured\":\"one kernel-half shootdown to every CPU + the initiator touching its {WORKING_SET}-page working set again\"}}",
            ours as f64 / linux as f64,
            how(n, ours_ceiling),
            how(n, LINUX_CEILING),
            percpu::online().len()
        );
    }
}

/// Median cycles of one shootdown of `batch` to `targets`.
fn shootdown_cycles(targets: CpuSet, batch: &FlushBatch, reps: usize) -> u64 {
    let mut samples = Vec::new();
    for _ in 0..reps {
        let t = cycles();
        let _ = shootdown(targets, batch);
        samples.push(cycles() - t);
    }
    median(samples)
}

/// Every TLB figure; with `quick`, each measured once.
pub fn run(quick: bool) {
    let reps = if quick { 1 } else { REPS };
    match map_working_set() {
        Some(block) => {
            threshold(reps);
            policy(reps);
            unmap_working_set(block);
        }
        None => sprintln!("# tlb.threshold, tlb.policy: no 512-page working set; skipped"),
    }
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
        for (half, prefix, ack) in [
            ("user", "", "before the flush"),
            ("kernel", "kernel.", "after the flush"),
        ] {
            let batch = |pages, full| {
                if half == "user" {
                    user_batch(pages, full)
                } else {
                    kernel_batch(pages, full)
                }
            };
            for (label, batch) in [
                ("1", batch(1, false)),
                ("32", batch(32, false)),
                ("512", batch(512, false)),
                ("full", batch(0, true)),
            ] {
                let c = shootdown_cycles(targets, &batch, reps);
                sprintln!(
                    "BENCH {{\"name\":\"tlb.shootdown.{prefix}{label}.r{remote}\",\"value\":{c},\"unit\":\"cycles\",\"pages\":\"{label}\",\"remote_cpus\":{remote},\"full_flush\":{},\"half\":\"{half}\",\"acknowledged\":\"{ack}\"}}",
                    batch.is_full()
                );
            }
        }
    }
}
