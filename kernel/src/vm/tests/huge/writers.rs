//! Writers on three CPUs keep changing checksummed words (see [`super::load`]) while
//! this CPU promotes, splits and collapses the memory under them, over and over.
//!
//! At 2 MiB: private 2 MiB ranges in two address spaces go back and forth between one
//! 2 MiB leaf and 512 4 KiB leaves: split, promotion in place, and collapse after a few
//! of their pages were migrated elsewhere, in place (contiguity generation, then
//! promotion) or by copy. Two shared regions mapped in both spaces are written too, from
//! both spaces, and operated on from each space in turn: the 2 MiB page is split and
//! promoted back, the 4 KiB pages are collapsed (in place or by copy) and split again;
//! after each operation both spaces must map the region with the same leaf size and
//! frames.
//!
//! At 1 GiB: a 1 GiB page goes back and forth between one 1 GiB leaf and 512 2 MiB
//! leaves, one of which is split to 4 KiB and promoted back now and then, or migrated
//! away and brought back by a collapse in place.
//!
//! No word may lose its value, every operation must succeed (a promotion may be refused
//! as `Busy`, transiently) and leave the leaf size and physical base it should, and both
//! audits must be clean.

use super::super::{audits, block_at, shared, Env, KernelMm, Space, BASE, G1, K4, M2};
use super::{accounted, huge_page, leaf, need_1g, other_cpus};
use crate::arch::timer::Deadline;
use crate::harness::{TestContext, TestError, TestResult};
use crate::mem::tests::Rng;
use crate::tlb::tests::Helpers;
use crate::vm::load::{self, Writer};
use crate::{check, check_eq, sprint};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use mm::base::addr::{PageSize, Pfn};
use mm::mapping::vma::HugePolicy;
use mm::ops::huge::collapse::{
    CollapseFailure, CollapseMethod, CollapseOptions, CollapseTarget, Collapsed,
};
use mm::ops::huge::HugeError;
use mm::ops::migrate::Destination;

/// How long the operations go on (unless they reach [`MAX_CYCLES`] first).
const RUN_MS: u64 = 8_000;
/// Cycles the test does at most, and at least (unless time runs out first).
const MAX_CYCLES: u64 = 400;
const MIN_CYCLES_2M: u64 = 20;
const MIN_CYCLES_1G: u64 = 4;
/// 4 KiB pages of a 2 MiB range migrated away before it is collapsed.
const SCATTER: u64 = 8;
/// Where the second address space maps the shared regions: this much above the first.
const OTHER: u64 = 8 * G1;

/// What the operating CPU did, and what went wrong.
#[derive(Default)]
struct Ops {
    cycles: u64,
    promoted: u64,
    split: u64,
    in_place: u64,
    copied: u64,
    busy: u64,
    shared: u64,
    errors: Vec<String>,
}

impl Ops {
    fn error(&mut self, e: String) {
        self.errors.push(e);
    }

    /// `got` must be `want`.
    fn expect<T: PartialEq + core::fmt::Debug>(&mut self, what: &str, got: T, want: T) -> bool {
        if got == want {
            true
        } else {
            self.error(format!("{what}: {got:?}, expected {want:?}"));
            false
        }
    }

    /// Promote `[va, va + size)`, which must then be one leaf of `size` at `pa`.
    fn promote(&mut self, mm: &KernelMm, space: &Space, va: u64, size: PageSize, pa: u64) {
        match mm.promote(space, va, size) {
            Ok(()) => {
                self.promoted += 1;
                self.expect("leaf after promotion", leaf(space, va), Some((size, pa)));
            }
            Err(HugeError::Busy) => self.busy += 1,
            Err(e) => self.error(format!("promote({va:#x}, {size:?}): {e}")),
        }
    }

    /// Split the page of `size` at `pa` mapped at `va` (through an address inside it).
    fn split(&mut self, mm: &KernelMm, space: &Space, va: u64, size: PageSize, pa: u64, at: u64) {
        let child = size.smaller().unwrap_or(PageSize::Size4K);
        if self.expect("split", mm.split_huge(space, va + at), Ok(child)) {
            self.split += 1;
            let probe = va + 3 * child.bytes();
            let want = Some((child, pa + 3 * child.bytes()));
            self.expect("leaf after split", leaf(space, probe), want);
        }
    }

    /// Migrate the blocks mapped at `vas` anywhere.
    fn scatter(&mut self, mm: &KernelMm, space: &Space, vas: &[u64]) {
        let requests: Vec<(Pfn, Destination)> = vas
            .iter()
            .filter_map(|&va| block_at(space, va).map(|(h, _)| (h, Destination::Any)))
            .collect();
        if requests.len() != vas.len() {
            self.error(format!(
                "scatter: {} of {} blocks mapped",
                requests.len(),
                vas.len()
            ));
        }
        for r in mm.migrate_batch(&requests) {
            if let Err(e) = r {
                self.error(format!("scatter: migrating: {e}"));
            }
        }
    }

    /// Collapse `[va, va + size)` with `method`; it must end huge the way `method` says.
    fn collapse(
        &mut self,
        mm: &KernelMm,
        space: &Arc<Space>,
        va: u64,
        size: PageSize,
        method: CollapseMethod,
    ) {
        let target = if size == PageSize::Size1G {
            CollapseTarget::Size1G
        } else {
            CollapseTarget::Size2M
        };
        let opts = CollapseOptions { target, method };
        let out = match mm.collapse(space, va, size.bytes(), &opts) {
            Ok(out) => out,
            Err(e) => return self.error(format!("collapse({va:#x}): {e}")),
        };
        match (out.as_slice(), method) {
            ([o], CollapseMethod::Copy) if o.result == Ok(Collapsed::Copied) => self.copied += 1,
            ([o], CollapseMethod::InPlace) if o.result == Ok(Collapsed::InPlace) => {
                self.in_place += 1
            }
            ([o], _) if matches!(o.result, Err((CollapseFailure::Busy, HugeError::Busy))) => {
                self.busy += 1
            }
            (other, _) => return self.error(format!("collapse({va:#x}, {method:?}): {other:?}")),
        }
        self.expect(
            "size after collapse",
            leaf(space, va).map(|l| l.0),
            Some(size),
        );
    }

    fn report(&self) {
        sprint!(
            "{} cycles: {} promoted, {} split, {} collapsed in place, {} by copy, {} busy, {} shared-region operations; ",
            self.cycles,
            self.promoted,
            self.split,
            self.in_place,
            self.copied,
            self.busy,
            self.shared
        );
    }
}

/// Start one writer per CPU of `cpus`.
fn start(helpers: &mut Helpers<Writer>, cpus: &[u32], writers: Vec<Writer>) -> TestResult {
    for (w, &cpu) in writers.into_iter().zip(cpus) {
        helpers.start(cpu, move |stop| w.run(stop))?;
    }
    Ok(())
}

/// Stop the writers, check their words a last time, report and check the totals and
/// the audits, tear down.
fn finish(
    helpers: Helpers<Writer>,
    ops: &Ops,
    env: Env,
    mm: &KernelMm,
    before: usize,
    min_cycles: u64,
) -> TestResult {
    let mut writers = helpers.finish();
    for w in writers.iter_mut() {
        w.verify();
    }
    let (updates, errors, first) = load::totals(&writers);
    ops.report();
    sprint!(
        "{} writers, {updates} updates, {errors} word errors) ",
        writers.len()
    );
    check!(errors == 0, "{errors} word errors, first: {first:?}");
    check!(
        ops.errors.is_empty(),
        "{} operation errors, first: {:?}",
        ops.errors.len(),
        ops.errors.first()
    );
    check!(ops.cycles >= min_cycles, "only {} cycles", ops.cycles);
    check!(
        ops.busy * 2 <= ops.cycles,
        "mostly busy: {} of {}",
        ops.busy,
        ops.cycles
    );
    check!(
        writers.iter().all(|w| w.updates > 0),
        "a writer never wrote"
    );
    check!(mm.rmap_audit().is_ok(), "{:?}", mm.rmap_audit());
    drop(writers);
    env.teardown()?;
    audits(mm)?;
    check_eq!(accounted(), before);
    Ok(())
}

/// The pages writers use in a 2 MiB range: first, second, middle, last.
fn pages_2m(va: u64) -> [u64; 4] {
    [va, va + K4, va + 255 * K4, va + 511 * K4]
}

/// The shared regions of the 2 MiB test in both spaces: one 2 MiB page (always huge)
/// at [`BASE`] + 1 GiB, and 512 4 KiB pages (huge on request) at [`BASE`] + 2 GiB; the
/// second space maps them [`OTHER`] higher.
fn shared_regions(env: &mut Env, a: &Space, b: &Space) -> Result<(), TestError> {
    let (r2, r4) = (env.region(M2)?, env.region(M2)?);
    for (space, off) in [(a, 0), (b, OTHER)] {
        env.map(space, BASE + G1 + off, M2, shared(&r2, HugePolicy::Always))?;
        env.populate(space, BASE + G1 + off, M2)?;
        env.map(
            space,
            BASE + 2 * G1 + off,
            M2,
            shared(&r4, HugePolicy::OnRequest),
        )?;
        for i in 0..512 {
            let r = env
                .mm
                .handle_fault(space, BASE + 2 * G1 + off + i * K4, true);
            check!(r.is_ok(), "fault in the shared 4 KiB region: {r:?}");
        }
        check_eq!(
            leaf(space, BASE + G1 + off).map(|l| l.0),
            Some(PageSize::Size2M)
        );
        check_eq!(
            leaf(space, BASE + 2 * G1 + off).map(|l| l.0),
            Some(PageSize::Size4K)
        );
    }
    Ok(())
}

/// One operation on each shared region from one space, the other space's mapping
/// checked after it: the region at [`BASE`] + 1 GiB and the one at [`BASE`] + 2 GiB
/// alike, a 2 MiB page is split, 4 KiB pages are collapsed (in place, else by copy).
fn shared_ops(ops: &mut Ops, mm: &KernelMm, turn: u64, a: &Arc<Space>, b: &Arc<Space>) {
    let spaces = [(a, 0), (b, OTHER)];
    let (from, off) = spaces[(turn % 2) as usize];
    let (other, other_off) = spaces[1 - (turn % 2) as usize];
    for region_va in [BASE + G1, BASE + 2 * G1] {
        let (va, other_va) = (region_va + off, region_va + other_off);
        match leaf(from, va) {
            Some((PageSize::Size2M, pa)) => {
                let split = mm.split_huge(from, va + 17 * K4);
                if ops.expect("split of a shared 2 MiB page", split, Ok(PageSize::Size4K)) {
                    ops.shared += 1;
                    let want = Some((PageSize::Size4K, pa + 3 * K4));
                    ops.expect(
                        "the other space after the split",
                        leaf(other, other_va + 3 * K4),
                        want,
                    );
                }
            }
            Some((PageSize::Size4K, _)) => {
                let opts = CollapseOptions {
                    target: CollapseTarget::Size2M,
                    method: CollapseMethod::Auto,
                };
                let out = mm
                    .collapse(from, va, M2, &opts)
                    .map(|out| out.iter().map(|o| o.result).collect::<Vec<_>>());
                match out.as_deref() {
                    Ok([Ok(_)]) => {
                        ops.shared += 1;
                        match leaf(from, va) {
                            Some((PageSize::Size2M, pa)) => {
                                let want = Some((PageSize::Size2M, pa));
                                ops.expect(
                                    "the other space after the collapse",
                                    leaf(other, other_va),
                                    want,
                                );
                            }
                            got => ops.error(format!("shared collapse({va:#x}) left {got:?}")),
                        }
                    }
                    Ok([Err((CollapseFailure::Busy, _))]) => ops.busy += 1,
                    got => ops.error(format!("shared collapse({va:#x}): {got:?}")),
                }
            }
            got => ops.error(format!("shared region at {va:#x}: {got:?}")),
        }
    }
}

pub(super) fn writers_2m(ctx: &TestContext) -> TestResult {
    let cpus = other_cpus(3, "three writers, and this CPU operates")?;
    let before = accounted();
    let mut env = Env::new()?;
    let mm = env.mm;
    let (a, b) = (env.space()?, env.space()?);
    // Private 2 MiB pages: four in A, two in B.
    let mut ranges: Vec<(Arc<Space>, u64, u64)> = Vec::new();
    for (space, n) in [(&a, 4), (&b, 2)] {
        for i in 0..n {
            let va = BASE + i * 4 * M2;
            let pa = huge_page(&env, space, va, PageSize::Size2M)?;
            ranges.push((space.clone(), va, pa));
        }
    }
    shared_regions(&mut env, &a, &b)?;
    let writers = [(&a, 1, 0), (&b, 2, OTHER), (&a, 3, 0)].map(|(space, k, off)| {
        let mut pages: Vec<u64> = ranges
            .iter()
            .filter(|(s, _, _)| Arc::ptr_eq(s, space))
            .flat_map(|&(_, va, _)| pages_2m(va))
            .collect();
        pages.extend(pages_2m(BASE + G1 + off));
        pages.extend(pages_2m(BASE + 2 * G1 + off));
        Writer::new(space.clone(), k, &pages)
    });
    let mut helpers = Helpers::default();
    start(&mut helpers, &cpus, writers.into())?;
    let mut rng = Rng::new(ctx.seed);
    let mut ops = Ops::default();
    let deadline = Deadline::after_ms(RUN_MS);
    while ops.cycles < MAX_CYCLES && (ops.cycles < MIN_CYCLES_2M || !deadline.expired()) {
        let i = rng.below(ranges.len() as u64) as usize;
        let (space, va, pa) = (ranges[i].0.clone(), ranges[i].1, ranges[i].2);
        match leaf(&space, va) {
            Some((PageSize::Size2M, _)) => {
                let at = rng.below(512) * K4;
                ops.split(mm, &space, va, PageSize::Size2M, pa, at)
            }
            Some((PageSize::Size4K, _)) => match rng.below(4) {
                0 | 1 => ops.promote(mm, &space, va, PageSize::Size2M, pa),
                choice => {
                    // Two of the pages the writers write (0 or 1, 255 or 511), and others
                    // from 2 to 254; distinct (a batch may not name a block twice).
                    let written = pages_2m(va);
                    let first = 2 + rng.below(38);
                    let mut vas: Vec<u64> = (0..SCATTER - 2)
                        .map(|j| va + (first + j * 43) * K4)
                        .collect();
                    vas.extend([
                        written[rng.below(2) as usize],
                        written[2 + rng.below(2) as usize],
                    ]);
                    ops.scatter(mm, &space, &vas);
                    let method = if choice == 2 {
                        CollapseMethod::InPlace
                    } else {
                        CollapseMethod::Copy
                    };
                    ops.collapse(mm, &space, va, PageSize::Size2M, method);
                    // A copy (or a new anchor) puts the range elsewhere.
                    if let Some((PageSize::Size2M, now)) = leaf(&space, va) {
                        ranges[i].2 = now;
                    }
                }
            },
            other => ops.error(format!("{va:#x}: {other:?}")),
        }
        if ops.cycles.is_multiple_of(4) {
            let turn = ops.cycles / 4;
            shared_ops(&mut ops, mm, turn, &a, &b);
        }
        ops.cycles += 1;
        if !ops.errors.is_empty() {
            break;
        }
    }
    sprint!("(writers on CPUs {:?}; ", &cpus[..3]);
    finish(helpers, &ops, env, mm, before, MIN_CYCLES_2M)
}

pub(super) fn writers_1g(ctx: &TestContext) -> TestResult {
    let cpus = other_cpus(3, "three writers, and this CPU operates")?;
    need_1g(1)?;
    let before = accounted();
    let mut env = Env::new()?;
    let mm = env.mm;
    let a = env.space()?;
    let pa = huge_page(&env, &a, BASE, PageSize::Size1G)?;
    // The 2 MiB pages written: first, second, middle, last; two 4 KiB pages in each.
    let blocks = [0, 1, 255, 511].map(|j| BASE + j * M2);
    let pages: Vec<u64> = blocks.iter().flat_map(|&b| [b, b + 511 * K4]).collect();
    let writers: Vec<Writer> = (1..=3).map(|k| Writer::new(a.clone(), k, &pages)).collect();
    let mut helpers = Helpers::default();
    start(&mut helpers, &cpus, writers)?;
    let mut rng = Rng::new(ctx.seed);
    let mut ops = Ops::default();
    let mut pa = pa;
    let deadline = Deadline::after_ms(RUN_MS);
    while ops.cycles < MAX_CYCLES && (ops.cycles < MIN_CYCLES_1G || !deadline.expired()) {
        let block = blocks[rng.below(4) as usize];
        let block_pa = pa + (block - BASE);
        match leaf(&a, BASE) {
            Some((PageSize::Size1G, _)) => {
                let at = rng.below(512) * M2 + rng.below(512) * K4;
                ops.split(mm, &a, BASE, PageSize::Size1G, pa, at)
            }
            Some((PageSize::Size2M, _)) => match rng.below(3) {
                0 => ops.promote(mm, &a, BASE, PageSize::Size1G, pa),
                1 => {
                    ops.split(mm, &a, block, PageSize::Size2M, block_pa, 0);
                    ops.promote(mm, &a, block, PageSize::Size2M, block_pa);
                }
                _ => {
                    ops.scatter(mm, &a, &[block]);
                    ops.collapse(mm, &a, BASE, PageSize::Size1G, CollapseMethod::InPlace);
                    if let Some((PageSize::Size1G, now)) = leaf(&a, BASE) {
                        pa = now;
                    }
                }
            },
            other => ops.error(format!("{BASE:#x}: {other:?}")),
        }
        ops.cycles += 1;
        if !ops.errors.is_empty() {
            break;
        }
    }
    sprint!("(writers on CPUs {:?}; ", &cpus[..3]);
    finish(helpers, &ops, env, mm, before, MIN_CYCLES_1G)
}
