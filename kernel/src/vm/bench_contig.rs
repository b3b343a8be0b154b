//! Contiguity-generation benchmarks, one `BENCH {json}` line per scenario: bytes moved per
//! second against a plain copy of as many bytes measured in the same run, pages moved per
//! misplaced page, and where the time went.
//!
//! Scenarios: two address spaces A and B each map one VMA whose pages are faulted in
//! alternately, so their frames interleave; then A's VMA and B's are made contiguous.
//!
//! - `vm.contig.4k`: 1024 pages of 4 KiB each, memory otherwise free: each VMA's anchor
//!   is a free window and its pages migrate there.
//! - `vm.contig.4k.tight`: the same in squeezed memory ([`super::squeeze`]): the two
//!   VMAs fill four 2 MiB blocks and nothing else is free, so pages trade places with
//!   the other VMA's (exchange), and B's, all in B's window by then, only among
//!   themselves.
//! - `vm.contig.2m.tight`: eight 2 MiB pages each, interleaved in sixteen 2 MiB blocks,
//!   squeezed the same way.
//!
//! `value` is MB/s of pages moved (`migrated + exchanged + displaced`, each page each
//! time it moves) over the cycles of the calls; `rep_movsb_value` / `rep_movsq_value` copy
//! the same number of bytes 4 KiB at a time from the VMAs' frames with `rep movsb` /
//! `rep movsq` into as many frames of its own (the same working set as the moves', up to
//! [`MAX_COPY_TARGETS`]; each written once first, untimed), `baseline` names the faster
//! and `ratio` is against it (see [`super::bench`] on why both). Every figure is the
//! median round's of `rounds` (by ratio), each set up afresh; `ratio_min` and
//! `ratio_max` are the extremes, as wide apart as emulation makes them. A VMA whose
//! report is not one chunk yet is made contiguous again (at most [`MAX_CALLS`] calls; `calls` says how many).
//! An exchange reads and writes each byte once, as a copy does, but through registers,
//! and under QEMU's TCG that loop moves bytes faster than one `rep movsq` (which TCG
//! runs an iteration at a time): where nearly every page is exchanged
//! (`vm.contig.2m.tight`) `ratio` can pass 1 there.
//!
//! Where the time went, as shares of the calls' cycles: `plan_share`, the look at the
//! VMA, the anchor search over the placement's memory and the classification of every
//! target (what a call bounded to zero pages costs, the second of two such calls, times
//! the calls); `shootdown_share`
//! and `frames_share`, cycles inside the shootdown and the frame source
//! ([`super::profile`]); `copy_share`, the data (the page copies and swaps of the moves,
//! at the cost of one `copy_frame` / `swap_frame_in_registers` of 4 KiB measured here); `rest_share`,
//! everything else: the move engine's claims, migration entries and remaps under the
//! address-space, region and reverse-map locks, the passes over the pages still to place,
//! and the vectors allocated per batch; and what the data cost beyond the two measured
//! costs because a move's frames are cold: `first_touch_share` is that part of
//! `rest_share`, from `first_touch_cycles`, what a `copy_frame` costs more the first time
//! its frames are touched in a while (see [`first_touch_cycles`]). `plan_cycles_per_call`
//! against `plan_cycles_one_page` (planning a VMA of one page) shows how much of planning
//! does not depend on the VMA at all.

use super::bench::{copy, fastest, Copy, BENCH_BASE, ROUNDS};
use super::squeeze::{self, Squeeze};
use super::{activate, deactivate, profile, KernelMm, Space};
use crate::arch::timer;
use crate::mem::frames;
use crate::mem::physmap::PHYS;
use crate::sprintln;
use alloc::sync::Arc;
use alloc::vec::Vec;
use mm::backend::phys::PhysMem;
use mm::base::addr::{PageSize, Pfn, PAGE_SIZE};
use mm::frame::buddy::MigrateType;
use mm::mapping::vma::{HugePolicy, VmaFlags};
use mm::ops::contig::{ContigOptions, ContigReport};

/// Calls per VMA before the benchmark gives up on making it one chunk.
const MAX_CALLS: usize = 8;
/// Where the 1-page VMA of [`plan_one_page`] goes, above the scenario's VMA.
const ONE_PAGE_AT: u64 = 64 << 30;
/// Frames the per-frame copy and swap costs are measured on.
const SAMPLE_FRAMES: usize = 256;
/// At most this many frames of its own for the plain copy to write.
const MAX_COPY_TARGETS: usize = 8192;

/// One scenario: `blocks` blocks of `size` per VMA, squeezed or not.
#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    size: PageSize,
    blocks: u64,
    tight: bool,
}

impl Scenario {
    fn len(&self) -> u64 {
        self.blocks * self.size.bytes()
    }
}

/// What the calls did and cost.
#[derive(Default)]
struct Tally {
    misplaced: u64,
    migrated: u64,
    exchanged: u64,
    displaced: u64,
    allocated_by_exchange: u64,
    calls: u64,
    /// Cycles of the calls, and of one call bounded to zero pages per VMA (times its
    /// calls).
    cycles: u64,
    plan: u64,
    profile: profile::Snapshot,
    done: bool,
}

impl Tally {
    fn moved(&self) -> u64 {
        self.migrated + self.exchanged + self.displaced
    }

    fn add(&mut self, r: &ContigReport) {
        self.migrated += r.migrated;
        self.exchanged += r.exchanged;
        self.displaced += r.displaced;
        self.allocated_by_exchange += r.frames_allocated_by_exchange;
    }
}

/// Make the VMA at `BENCH_BASE` of `space` contiguous, counting into `t`.
fn make_contiguous(mm: &KernelMm, space: &Arc<Space>, t: &mut Tally) -> bool {
    let bounded = ContigOptions {
        max_pages: 0,
        ..ContigOptions::default()
    };
    // Planned twice, the second time timed: the first plans with memory and code the
    // calls after it find warm (its snapshot of memory is the first to fill fresh heap).
    let Ok(dry) = mm.make_vma_contiguous(space, BENCH_BASE, &bounded) else {
        return false;
    };
    let start = timer::tsc();
    let planned = mm.make_vma_contiguous(space, BENCH_BASE, &bounded);
    let plan = timer::tsc() - start;
    if planned.is_err() {
        return false;
    }
    t.misplaced += dry.misplaced;
    let before = profile::Snapshot::now();
    profile::enable(true);
    let mut done = false;
    let start = timer::tsc();
    for _ in 0..MAX_CALLS {
        let Ok(r) = mm.make_vma_contiguous(space, BENCH_BASE, &ContigOptions::default()) else {
            break;
        };
        t.calls += 1;
        t.plan += plan;
        t.add(&r);
        if r.complete && r.failed == 0 && r.after.chunks == 1 {
            done = true;
            break;
        }
    }
    t.cycles += timer::tsc() - start;
    profile::enable(false);
    let d = profile::Snapshot::now().since(&before);
    let p = &mut t.profile;
    for (sum, add) in [
        (&mut p.alloc, d.alloc),
        (&mut p.free, d.free),
        (&mut p.shootdown, d.shootdown),
    ] {
        sum.0 += add.0;
        sum.1 += add.1;
    }
    done
}

/// Map the two VMAs, squeeze memory if asked (leaving just enough adjacent 2 MiB blocks
/// for both), and fault their blocks in alternately.
fn setup(
    mm: &KernelMm,
    sc: Scenario,
    spaces: &[Arc<Space>; 2],
) -> Result<Option<Squeeze>, &'static str> {
    let huge = if sc.size == PageSize::Size4K {
        HugePolicy::Never
    } else {
        HugePolicy::Always
    };
    for s in spaces {
        mm.map_anon(s, BENCH_BASE, sc.len(), VmaFlags::private(huge, true))
            .map_err(|_| "mapping failed")?;
    }
    let squeezed = if sc.tight {
        let mut sq = Squeeze::take_all().map_err(|_| "squeezing failed")?;
        sq.table_pool().map_err(|_| "no page-table pool")?;
        let run = (2 * sc.len()).div_ceil(PageSize::Size2M.bytes()) as usize;
        let first = sq
            .movable_run(run, Pfn(0))
            .ok_or("no run of adjacent movable 2 MiB blocks")?;
        sq.give_back(first, run).map_err(|_| "giving back failed")?;
        Some(sq)
    } else {
        None
    };
    for i in 0..sc.blocks {
        for s in spaces {
            mm.populate(s, BENCH_BASE + i * sc.size.bytes(), sc.size.bytes())
                .map_err(|_| "not enough memory")?;
        }
    }
    Ok(squeezed)
}

/// Cycles of planning (a call bounded to zero pages) for a VMA of one resident page in
/// `space`: the part of planning that does not depend on the VMA's size.
fn plan_one_page(mm: &KernelMm, space: &Arc<Space>) -> Option<u64> {
    let va = BENCH_BASE + ONE_PAGE_AT;
    mm.map_anon(
        space,
        va,
        PAGE_SIZE,
        VmaFlags::private(HugePolicy::Never, true),
    )
    .ok()?;
    mm.populate(space, va, PAGE_SIZE).ok()?;
    let bounded = ContigOptions {
        max_pages: 0,
        ..ContigOptions::default()
    };
    let start = timer::tsc();
    let r = mm.make_vma_contiguous(space, va, &bounded);
    let cycles = timer::tsc() - start;
    mm.unmap(space, va, PAGE_SIZE).ok()?;
    r.ok().map(|_| cycles)
}

/// Median cycles of `f` over `SAMPLE_FRAMES` pairs of frames (one untimed pass first).
fn per_frame(pairs: &[(Pfn, Pfn)], mut f: impl FnMut(Pfn, Pfn)) -> u64 {
    let mut v = Vec::new();
    for pass in 0..4 {
        let start = timer::tsc();
        for &(a, b) in pairs {
            f(a, b);
        }
        if pass > 0 {
            v.push((timer::tsc() - start) / pairs.len() as u64);
        }
    }
    v.sort_unstable();
    v[v.len() / 2]
}

/// Cycles of one `copy_frame` and one `swap_frame_in_registers` (the exchange's swap) of
/// 4 KiB, on frames of their own.
fn frame_costs() -> Option<(u64, u64)> {
    let mut frames_ = Vec::with_capacity(2 * SAMPLE_FRAMES);
    for _ in 0..2 * SAMPLE_FRAMES {
        match frames::alloc(0, MigrateType::Movable) {
            Ok(p) => frames_.push(p),
            Err(_) => break,
        }
    }
    let pairs: Vec<(Pfn, Pfn)> = frames_.chunks(2).map(|c| (c[0], c[c.len() - 1])).collect();
    let result = (frames_.len() == 2 * SAMPLE_FRAMES).then(|| {
        let copy_ = per_frame(&pairs, |a, b| PHYS.copy_frame(a.addr(), b.addr()));
        let swap = per_frame(&pairs, |a, b| {
            PHYS.swap_frame_in_registers(a.addr(), b.addr())
        });
        (copy_, swap)
    });
    for p in frames_ {
        if frames::free(p.addr(), 0).is_err() {
            return None;
        }
    }
    result
}

/// MB/s of copying `pages` pages of 4 KiB from the frames of the blocks `heads` (of
/// `size`; cycled) into as many frames of its own (at least [`SAMPLE_FRAMES`], at most
/// [`MAX_COPY_TARGETS`] or what memory has; cycled), with `how`: the faster of two timed
/// passes (under emulation the host's bursts of slowness can halve one pass, and the copy
/// bandwidth the moves are held to is what the copy reaches, not what a slow pass
/// shows).
fn copy_rate(heads: &[Pfn], size: PageSize, pages: u64, how: Copy) -> Option<f64> {
    let want = (pages as usize).clamp(SAMPLE_FRAMES, MAX_COPY_TARGETS);
    let mut targets = Vec::with_capacity(want);
    while targets.len() < want {
        match frames::alloc(0, MigrateType::Movable) {
            Ok(t) => targets.push(t),
            Err(_) if targets.len() >= SAMPLE_FRAMES => break,
            Err(_) => return None,
        }
    }
    let per_block = size.bytes() / PAGE_SIZE;
    let sources: Vec<Pfn> = heads
        .iter()
        .flat_map(|&h| (0..per_block).map(move |i| h.add(i)))
        .collect();
    if sources.is_empty() {
        return None;
    }
    // One untimed pass over the targets first (the host backs guest memory lazily).
    for (i, &t) in targets.iter().enumerate() {
        copy(how, t.addr(), sources[i % sources.len()].addr(), PAGE_SIZE);
    }
    let timed = || {
        let start = timer::now_ns();
        for i in 0..pages as usize {
            let (src, dst) = (sources[i % sources.len()], targets[i % targets.len()]);
            copy(how, dst.addr(), src.addr(), PAGE_SIZE);
        }
        timer::now_ns() - start
    };
    let ns = timed().min(timed());
    for t in targets {
        frames::free(t.addr(), 0).ok()?;
    }
    Some(pages as f64 * PAGE_SIZE as f64 * 1e3 / ns.max(1) as f64)
}

/// What a 4 KiB `copy_frame` costs more, in cycles, the first time its two frames are
/// touched in a while, as a move's are: the median over the pages of the blocks `heads`
/// (of `size`, last touched by the moves) of one copy into a frame of its own (last
/// touched when free memory was warmed) less a second copy of the same pair right after.
/// Under emulation the first touch of a frame fills the emulator's translation cache; on
/// hardware it misses the caches. `None` without frames to copy into.
fn first_touch_cycles(heads: &[Pfn], size: PageSize) -> Option<u64> {
    let per_block = size.bytes() / PAGE_SIZE;
    let sources: Vec<Pfn> = heads
        .iter()
        .flat_map(|&h| (0..per_block).map(move |i| h.add(i)))
        .collect();
    // Whole 2 MiB blocks: a single frame may come from a per-CPU cache the moves have
    // just filled with frames they read.
    let order = PageSize::Size2M.order();
    let mut blocks = Vec::new();
    while (blocks.len() << order) < sources.len() {
        match frames::alloc(order, MigrateType::Movable) {
            Ok(b) => blocks.push(b),
            Err(_) => break,
        }
    }
    let targets = blocks
        .iter()
        .flat_map(|&b| (0..1u64 << order).map(move |i| b.add(i)));
    let mut extra: Vec<u64> = sources
        .iter()
        .zip(targets)
        .map(|(&src, dst)| {
            let timed = || {
                let start = timer::tsc();
                PHYS.copy_frame(dst.addr(), src.addr());
                timer::tsc() - start
            };
            let first = timed();
            first.saturating_sub(timed())
        })
        .collect();
    for b in blocks {
        frames::free(b.addr(), order).ok()?;
    }
    if sources.is_empty() || extra.len() < sources.len() {
        return None;
    }
    extra.sort_unstable();
    Some(extra[extra.len() / 2])
}

/// One timed round of a scenario: what its calls did and cost, and the baselines
/// measured right after them.
struct Round {
    t: Tally,
    /// MB/s of the moves.
    rate: f64,
    movsb: f64,
    movsq: f64,
    copy_cycles: u64,
    swap_cycles: u64,
    first_touch: u64,
    one_page: u64,
}

impl Round {
    /// The moves' rate over the faster copy's.
    fn ratio(&self) -> f64 {
        self.rate / self.movsb.max(self.movsq)
    }
}

/// Set the scenario up, measure it and tear it down; with `timed`, the round's figures.
fn figure(mm: &KernelMm, sc: Scenario, timed: bool) -> Result<Option<Round>, &'static str> {
    squeeze::reserve_heap().map_err(|_| "reserving heap failed")?;
    let spaces = [
        mm.new_space().map_err(|_| "no address space")?,
        mm.new_space().map_err(|_| "no address space")?,
    ];
    let result = measure(mm, sc, &spaces, timed);
    deactivate();
    for s in &spaces {
        if mm.destroy_space(s).is_err() {
            sprintln!("# {}: destroying an address space failed", sc.name);
        }
    }
    result
}

fn measure(
    mm: &KernelMm,
    sc: Scenario,
    spaces: &[Arc<Space>; 2],
    timed: bool,
) -> Result<Option<Round>, &'static str> {
    let squeezed = setup(mm, sc, spaces)?;
    activate(&spaces[0]).map_err(|_| "activation failed")?;
    let mut t = Tally {
        done: true,
        ..Tally::default()
    };
    for s in spaces {
        t.done &= make_contiguous(mm, s, &mut t);
    }
    if let Some(sq) = squeezed {
        sq.release().map_err(|_| "releasing the squeeze failed")?;
    }
    if !timed {
        return Ok(None);
    }
    let sources = super::bench::heads(&spaces[0], BENCH_BASE, sc.len(), sc.size);
    // First, while the first VMA's frames are as cold as the second VMA's moves left them.
    let first_touch = first_touch_cycles(&sources, sc.size).ok_or("no frames to copy into")?;
    let moved_pages = t.moved();
    let copied =
        |how| copy_rate(&sources, sc.size, moved_pages, how).ok_or("no frames to copy into");
    let (movsb, movsq) = (copied(Copy::Movsb)?, copied(Copy::Movsq)?);
    let (copy_cycles, swap_cycles) = frame_costs().ok_or("no frames to measure copies on")?;
    let one_page = plan_one_page(mm, &spaces[0]).ok_or("planning a 1-page VMA failed")?;
    let hz = timer::tsc_hz().max(1) as f64;
    let rate = (moved_pages * PAGE_SIZE) as f64 / (t.cycles.max(1) as f64 / hz) / 1e6;
    Ok(Some(Round {
        t,
        rate,
        movsb,
        movsq,
        copy_cycles,
        swap_cycles,
        first_touch,
        one_page,
    }))
}

/// Print the scenario's line: the figures of the median of `rounds` (by ratio), with
/// the lowest and highest ratio of all.
fn report(sc: Scenario, rounds: &mut [Round]) {
    rounds.sort_unstable_by(|a, b| a.ratio().total_cmp(&b.ratio()));
    let (Some(low), Some(high)) = (rounds.first(), rounds.last()) else {
        return;
    };
    let (ratio_min, ratio_max, n) = (low.ratio(), high.ratio(), rounds.len());
    let median = &rounds[n / 2];
    let t = &median.t;
    let (rate, movsb, movsq) = (median.rate, median.movsb, median.movsq);
    let (copy_cycles, swap_cycles, one_page) =
        (median.copy_cycles, median.swap_cycles, median.one_page);
    let first_touch = median.first_touch;
    let (baseline, copy_rate) = fastest(movsb, movsq);
    let bytes = t.moved() * PAGE_SIZE;
    let pages_per_block = sc.size.bytes() / PAGE_SIZE;
    let total = t.cycles.max(1) as f64;
    // Exchanged and displaced pages moved by swaps (half a swap each), migrated ones by
    // copies; a displaced page migrated away counts as a swap too (rare here).
    let data = (t.migrated * copy_cycles + (t.exchanged + t.displaced) * swap_cycles / 2) as f64;
    let (shoot, alloc, free) = (t.profile.shootdown, t.profile.alloc, t.profile.free);
    let frames_cycles = (alloc.1 + free.1) as f64;
    let rest = total - t.plan as f64 - shoot.1 as f64 - frames_cycles - data;
    // The part of `rest` that is the data's frames touched cold: two frames a migrated
    // page, as one copy; two frames an exchanged pair (two pages).
    let cold = ((t.migrated + (t.exchanged + t.displaced) / 2) * first_touch) as f64;
    sprintln!(
        "BENCH {{\"name\":\"{}\",\"value\":{rate:.1},\"unit\":\"MB/s\",\"baseline\":\"{baseline}\",\"baseline_value\":{copy_rate:.1},\"ratio\":{:.3},\"ratio_min\":{ratio_min:.3},\"ratio_max\":{ratio_max:.3},\"rounds\":{n},\"rep_movsb_value\":{movsb:.1},\"rep_movsq_value\":{movsq:.1},\"rep_movsq_ratio\":{:.3},\"bytes\":{bytes},\"pages_per_vma\":{},\"misplaced\":{},\"moved\":{},\"pages_moved_per_misplaced\":{:.3},\"migrated\":{},\"exchanged\":{},\"displaced\":{},\"frames_allocated_by_exchange\":{},\"calls\":{},\"contiguous\":{},\"cycles\":{},\"plan_share\":{:.3},\"copy_share\":{:.3},\"shootdown_share\":{:.3},\"frames_share\":{:.3},\"rest_share\":{:.3},\"plan_cycles_per_call\":{},\"plan_cycles_one_page\":{one_page},\"shootdowns\":{},\"allocations\":{},\"frees\":{},\"copy_frame_cycles\":{copy_cycles},\"swap_frame_cycles\":{swap_cycles},\"first_touch_cycles\":{first_touch},\"first_touch_share\":{:.3}}}",
        sc.name,
        rate / copy_rate,
        rate / movsq,
        sc.blocks * pages_per_block,
        t.misplaced,
        t.moved(),
        t.moved() as f64 / t.misplaced.max(1) as f64,
        t.migrated,
        t.exchanged,
        t.displaced,
        t.allocated_by_exchange,
        t.calls,
        t.done,
        t.cycles,
        t.plan as f64 / total,
        data / total,
        shoot.1 as f64 / total,
        frames_cycles / total,
        rest / total,
        t.plan / t.calls.max(1),
        shoot.0,
        alloc.0,
        free.0,
        cold / total,
    );
}

/// Every contiguity figure. Each scenario runs once untimed and then [`ROUNDS`] times
/// (once with `quick`), set up afresh each time, and the median round is the figure: the
/// untimed run runs the code paths once, as the migration benchmark's untimed round does
/// (under emulation the first run of a code path also translates it), and under
/// emulation the rounds' ratios spread widely (`ratio_min`, `ratio_max`).
pub fn run(quick: bool) {
    let Some(mm) = super::mm() else {
        sprintln!("# vm: address spaces are not set up");
        return;
    };
    for sc in [
        Scenario {
            name: "vm.contig.4k",
            size: PageSize::Size4K,
            blocks: 1024,
            tight: false,
        },
        Scenario {
            name: "vm.contig.4k.tight",
            size: PageSize::Size4K,
            blocks: 1024,
            tight: true,
        },
        Scenario {
            name: "vm.contig.2m.tight",
            size: PageSize::Size2M,
            blocks: 8,
            tight: true,
        },
    ] {
        let n = if quick { 1 } else { ROUNDS };
        let rounds: Result<Vec<Round>, _> = figure(mm, sc, false).and_then(|_| {
            (0..n)
                .filter_map(|_| figure(mm, sc, true).transpose())
                .collect()
        });
        match rounds {
            Ok(mut rounds) => report(sc, &mut rounds),
            Err(why) => sprintln!("# {}: skipped ({why})", sc.name),
        }
    }
}
