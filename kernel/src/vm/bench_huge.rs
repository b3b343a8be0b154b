//! Huge pages in place against Linux's copying collapse, one `BENCH {json}` line per
//! figure, ratios from the same run.
//!
//! `vm.huge.promote.2m` / `vm.huge.promote.1g`: cycles of one promotion in place
//! ([`Mm::promote`](mm::aspace::Mm::promote)) of a range that is already contiguous and
//! aligned (512 4 KiB leaves, or 512 2 MiB leaves, left by a split of a huge page), the
//! value; the baseline is one copying collapse
//! ([`CollapseMethod::Copy`](mm::ops::huge::collapse::CollapseMethod::Copy)) of a range of
//! the same size whose pages are scattered (4 KiB pages faulted in between a filler's; for
//! 1 GiB, the 2 MiB pages of a split 1 GiB page, a few of them migrated elsewhere): every
//! page is migrated into
//! a free huge block, then promoted. `ratio` is promotion / copy. A copy on an already
//! contiguous range would only promote, hence the scattered one.
//!
//! `vm.huge.split.2m` / `vm.huge.split.1g`: cycles of one split in place
//! ([`Mm::split_huge`](mm::aspace::Mm::split_huge)) of a 2 MiB (1 GiB) page into 512
//! 4 KiB (2 MiB) ones.
//!
//! The address space is loaded on the measuring CPU only, so every shootdown is a local
//! flush. Each figure is the median of [`REPS`] measurements (one with `quick`); the
//! 1 GiB copy is measured once (it copies a gigabyte).
//!
//! `vm.huge.churn.<policy>` (`fault_only`, `copy_collapse`, `contig_promote`): the
//! fragmentation-over-time workload of [`Mm::churn`](mm::aspace::Mm::churn) under each
//! policy, in memory squeezed to [`CHURN_BLOCKS`] free 2 MiB blocks (with the whole
//! machine free, every fault would find a free huge block and nothing would fragment);
//! the value is the huge share of resident memory after the last round, with the lowest
//! and the mean over the rounds and the bytes copied in all (pages migrated and
//! exchanged). A `# vm.huge.churn check` line says whether in-place promotion kept at
//! least 90 % huge in every round while copying fewer bytes than the copying collapse
//! (`bench-check` requires it); each round is also printed as a `#` line.

use super::squeeze::{self, Squeeze};
use super::{activate, deactivate, KernelMm, Space};
use crate::arch::timer;
use crate::sprintln;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use mm::backend::source::FrameSource;
use mm::base::addr::{PageSize, Pfn};
use mm::mapping::vma::{HugePolicy, VmaFlags};
use mm::ops::huge::churn::{Churn, Policy, Round};
use mm::ops::huge::collapse::{CollapseMethod, CollapseOptions, CollapseTarget, Collapsed};
use mm::ops::migrate::Destination;

/// Where the benchmark maps its pages (1 GiB aligned, user half).
const BENCH_BASE: u64 = 0x0000_2800_0000_0000;
/// Where the filler of the scattered ranges goes.
const FILLER: u64 = BENCH_BASE + (64 << 30);
/// Measurements per figure (the median is reported).
const REPS: usize = 5;
/// 2 MiB pages of the scattered 1 GiB range migrated elsewhere.
const SCATTER_1G: u64 = 8;

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Cycles of `f`, with its result.
fn timed<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let start = timer::tsc();
    let r = f();
    (timer::tsc().saturating_sub(start), r)
}

fn on_request() -> VmaFlags {
    VmaFlags::private(HugePolicy::OnRequest, true)
}

/// A huge page of `size` at [`BENCH_BASE`], split once into 512 contiguous smaller
/// leaves; then `reps` times: promote (timed), split (timed). Cycles of each.
fn in_place(
    mm: &KernelMm,
    space: &Arc<Space>,
    size: PageSize,
    reps: usize,
) -> Result<(u64, u64), String> {
    mm.map_anon(space, BENCH_BASE, size.bytes(), on_request())
        .map_err(|e| format!("map: {e}"))?;
    mm.populate(space, BENCH_BASE, size.bytes())
        .map_err(|e| format!("populate: {e}"))?;
    if space.translate(BENCH_BASE).map(|t| t.size) != Some(size) {
        return Err(format!("no free {size:?} block"));
    }
    mm.split_huge(space, BENCH_BASE)
        .map_err(|e| format!("first split: {e}"))?;
    let (mut promotes, mut splits) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let (c, r) = timed(|| mm.promote(space, BENCH_BASE, size));
        r.map_err(|e| format!("promote: {e}"))?;
        promotes.push(c);
        let (c, r) = timed(|| mm.split_huge(space, BENCH_BASE));
        r.map_err(|e| format!("split: {e}"))?;
        splits.push(c);
    }
    mm.unmap(space, BENCH_BASE, size.bytes())
        .map_err(|e| format!("unmap: {e}"))?;
    Ok((median(promotes), median(splits)))
}

/// A 2 MiB range of 4 KiB pages faulted in between the pages of a filler VMA.
fn scattered_2m(mm: &KernelMm, space: &Arc<Space>) -> Result<(), String> {
    let m2 = PageSize::Size2M.bytes();
    let never = VmaFlags::private(HugePolicy::Never, true);
    mm.map_anon(space, BENCH_BASE, m2, on_request())
        .map_err(|e| format!("map: {e}"))?;
    mm.map_anon(space, FILLER, m2, never)
        .map_err(|e| format!("map filler: {e}"))?;
    for i in 0..512 {
        for base in [BENCH_BASE, FILLER] {
            mm.handle_fault(space, base + i * 4096, true)
                .map_err(|e| format!("fault: {e}"))?;
        }
    }
    mm.unmap(space, FILLER, m2)
        .map_err(|e| format!("unmap filler: {e}"))
}

/// A 1 GiB range of 2 MiB pages (a 1 GiB page split), [`SCATTER_1G`] of them migrated
/// elsewhere.
fn scattered_1g(mm: &KernelMm, space: &Arc<Space>) -> Result<(), String> {
    let (m2, g1) = (PageSize::Size2M.bytes(), PageSize::Size1G.bytes());
    mm.map_anon(space, BENCH_BASE, g1, on_request())
        .map_err(|e| format!("map: {e}"))?;
    mm.populate(space, BENCH_BASE, g1)
        .map_err(|e| format!("populate: {e}"))?;
    mm.split_huge(space, BENCH_BASE)
        .map_err(|e| format!("split: {e}"))?;
    let table = super::frames().frame_table();
    let requests: Vec<(Pfn, Destination)> = (0..SCATTER_1G)
        .filter_map(|i| space.translate(BENCH_BASE + i * 61 * m2))
        .filter_map(|t| table.head_of(Pfn::containing(t.leaf_base_pa)))
        .map(|h| (h, Destination::Any))
        .collect();
    match mm.migrate_batch(&requests).iter().find_map(|r| r.err()) {
        Some(e) => Err(format!("scattering the 2 MiB pages: {e}")),
        None if requests.len() as u64 == SCATTER_1G => Ok(()),
        None => Err("not mapped by 2 MiB pages".into()),
    }
}

/// Cycles of one copying collapse of a scattered range of `size` (`reps` times).
fn copied(mm: &KernelMm, space: &Arc<Space>, size: PageSize, reps: usize) -> Result<u64, String> {
    let target = if size == PageSize::Size1G {
        CollapseTarget::Size1G
    } else {
        CollapseTarget::Size2M
    };
    let opts = CollapseOptions {
        target,
        method: CollapseMethod::Copy,
    };
    let mut cycles = Vec::new();
    for _ in 0..reps {
        if size == PageSize::Size1G {
            scattered_1g(mm, space)?;
        } else {
            scattered_2m(mm, space)?;
        }
        let (c, r) = timed(|| mm.collapse(space, BENCH_BASE, size.bytes(), &opts));
        let out = r.map_err(|e| format!("collapse: {e}"))?;
        match out.as_slice() {
            [o] if o.result == Ok(Collapsed::Copied) => cycles.push(c),
            other => return Err(format!("collapse did not copy: {other:?}")),
        }
        mm.unmap(space, BENCH_BASE, size.bytes())
            .map_err(|e| format!("unmap: {e}"))?;
    }
    Ok(median(cycles))
}

/// The figures of one size, in a fresh address space loaded here.
fn figures(mm: &KernelMm, size: PageSize, reps: usize) -> Result<(u64, u64, u64), String> {
    let space = mm.new_space().map_err(|e| format!("new_space: {e}"))?;
    let result = activate(&space)
        .map_err(|e| format!("activate: {e}"))
        .and_then(|()| {
            let (promote, split) = in_place(mm, &space, size, reps)?;
            let copy_reps = if size == PageSize::Size1G { 1 } else { reps };
            let copy = copied(mm, &space, size, copy_reps)?;
            Ok((promote, split, copy))
        });
    deactivate();
    mm.destroy_space(&space)
        .map_err(|e| format!("destroy_space: {e}"))?;
    result
}

/// Free 2 MiB blocks the churn workload runs in (128 MiB).
const CHURN_BLOCKS: usize = 64;
/// The lowest huge share (per mille) in-place promotion must keep in every round.
const CHURN_HUGE_PER_MILLE: u64 = 900;

/// The churn workload; `quick` runs half the rounds.
fn churn_workload(quick: bool) -> Churn {
    Churn {
        rounds: if quick { 4 } else { 8 },
        spaces_per_round: 2,
        vma_bytes: 8 * PageSize::Size2M.bytes(),
        keep: 2,
        small_pages: 3000,
        holes: 2,
        seed: 7,
    }
}

/// The churn under `policy` in squeezed memory: [`CHURN_BLOCKS`] adjacent free 2 MiB
/// blocks and a page-table pool, everything else taken away meanwhile.
fn churn_rounds(mm: &KernelMm, policy: Policy, w: &Churn) -> Result<Vec<Round>, String> {
    squeeze::reserve_heap().map_err(|e| format!("reserving heap: {e:?}"))?;
    let mut sq = Squeeze::take_all().map_err(|e| format!("squeeze: {e:?}"))?;
    let given = sq
        .table_pool()
        .and_then(|()| sq.table_pool())
        .map_err(|e| format!("table pool: {e:?}"))
        .and_then(|()| {
            let first = sq
                .movable_run(CHURN_BLOCKS, Pfn(0))
                .ok_or_else(|| format!("no run of {CHURN_BLOCKS} movable 2 MiB blocks"))?;
            sq.give_back(first, CHURN_BLOCKS)
                .map_err(|e| format!("give back: {e:?}"))
        });
    let rounds = given.and_then(|()| mm.churn(policy, w).map_err(|e| format!("churn: {e}")));
    sq.release().map_err(|e| format!("release: {e:?}"))?;
    rounds
}

/// The churn figures: one `BENCH` line per policy, its rounds as `#` lines, the check.
fn churn(mm: &KernelMm, quick: bool) {
    let w = churn_workload(quick);
    let mut copied = Vec::new();
    let mut lowest_in_place = None;
    for policy in [
        Policy::FaultOnly,
        Policy::CopyCollapse,
        Policy::ContigPromote,
    ] {
        let name = policy.name();
        let rounds = match churn_rounds(mm, policy, &w) {
            Ok(r) if !r.is_empty() => r,
            Ok(_) => {
                sprintln!("# vm.huge.churn.{name}: skipped (no rounds)");
                continue;
            }
            Err(why) => {
                sprintln!("# vm.huge.churn.{name}: skipped ({why})");
                continue;
            }
        };
        for (i, r) in rounds.iter().enumerate() {
            sprintln!(
                "# vm.huge.churn.{name} round {i}: huge {}.{} % of {} MiB resident, {} KiB copied",
                r.huge_per_mille() / 10,
                r.huge_per_mille() % 10,
                r.resident >> 20,
                r.copied >> 10
            );
        }
        let last = rounds[rounds.len() - 1].huge_per_mille();
        let min = rounds.iter().map(Round::huge_per_mille).min().unwrap_or(0);
        let mean = rounds.iter().map(Round::huge_per_mille).sum::<u64>() / rounds.len() as u64;
        let bytes: u64 = rounds.iter().map(|r| r.copied).sum();
        sprintln!(
            "BENCH {{\"name\":\"vm.huge.churn.{name}\",\"value\":{:.1},\"unit\":\"% huge\",\"huge_min\":{:.1},\"huge_mean\":{:.1},\"copied_bytes\":{bytes},\"rounds\":{},\"spaces_per_round\":{},\"vma_bytes\":{},\"memory_bytes\":{}}}",
            last as f64 / 10.0,
            min as f64 / 10.0,
            mean as f64 / 10.0,
            w.rounds,
            w.spaces_per_round,
            w.vma_bytes,
            CHURN_BLOCKS as u64 * PageSize::Size2M.bytes()
        );
        copied.push((policy, bytes));
        if policy == Policy::ContigPromote {
            lowest_in_place = Some(min);
        }
    }
    let bytes_of = |p: Policy| copied.iter().find(|(q, _)| *q == p).map(|&(_, b)| b);
    match (
        lowest_in_place,
        bytes_of(Policy::ContigPromote),
        bytes_of(Policy::CopyCollapse),
    ) {
        (Some(min), Some(in_place), Some(copy)) => {
            let ok = min >= CHURN_HUGE_PER_MILLE && in_place < copy;
            sprintln!(
                "# vm.huge.churn check: contig_promote lowest huge {}.{} % (at least {} %), \
                 copied {in_place} bytes against copy_collapse's {copy}: {}",
                min / 10,
                min % 10,
                CHURN_HUGE_PER_MILLE / 10,
                if ok { "ok" } else { "FAILED" }
            );
        }
        _ => sprintln!("# vm.huge.churn check: FAILED (a policy did not run)"),
    }
}

/// Every huge-page figure; with `quick`, one measurement each.
pub fn run(quick: bool) {
    let reps = if quick { 1 } else { REPS };
    let Some(mm) = super::mm() else {
        sprintln!("# vm.huge: address spaces are not set up");
        return;
    };
    for (size, tag) in [(PageSize::Size2M, "2m"), (PageSize::Size1G, "1g")] {
        match figures(mm, size, reps) {
            Ok((promote, split, copy)) => {
                sprintln!(
                    "BENCH {{\"name\":\"vm.huge.promote.{tag}\",\"value\":{promote},\"unit\":\"cycles\",\"baseline\":\"copying collapse of a scattered range\",\"baseline_value\":{copy},\"ratio\":{:.6},\"bytes\":{},\"reps\":{reps}}}",
                    promote as f64 / copy.max(1) as f64,
                    size.bytes()
                );
                sprintln!(
                    "BENCH {{\"name\":\"vm.huge.split.{tag}\",\"value\":{split},\"unit\":\"cycles\",\"bytes\":{},\"reps\":{reps}}}",
                    size.bytes()
                );
            }
            Err(why) => sprintln!("# vm.huge {tag}: skipped ({why})"),
        }
    }
    churn(mm, quick);
}
