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
}
