//! Races of migration with the other operations on the same memory from another CPU:
//! unmap, protect, address-space destroy, pin and unpin, a second migrator; and a double
//! free of the same frames from two CPUs through the per-CPU frame caches.
//!
//! The migrated memory is shared regions that a keeper address space maps for the whole
//! test (loaded on the migrating CPU, which filled them through it): whatever the other
//! CPU does to its own mappings, every block keeps a user, so every migration must
//! succeed (or be refused, typed, for a pinned block) and every word must keep its value.

use super::{
    activate, audits, available, block_at, deactivate, fail, fill, intact, private, shared, Env,
    KernelMm, Space, BASE, G1, K4, M2,
};
use crate::arch::percpu;
use crate::arch::timer::{delay_us, Deadline};
use crate::harness::{TestContext, TestResult};
use crate::mem::frames;
use crate::mem::tests::Rng;
use crate::tlb::tests::Helpers;
use crate::{check, check_eq, skip, sprint};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use mm::aspace::PinError;
use mm::base::addr::{PageSize, Pfn};
use mm::frame::buddy::{FreeError, MigrateType};
use mm::mapping::region::SharedRegion;
use mm::mapping::vma::HugePolicy;
use mm::ops::migrate::{Destination, MigrateError};

/// Migration rounds (every block once per round) of each race.
const ROUNDS: u64 = 150;
/// Cycles the other CPU completes at least (unless the race runs out of time).
const MIN_CYCLES: u64 = 20;
/// Each race ends after this long even if its rounds are not done.
const RACE_MS: u64 = 20_000;
/// Longest pause of a migrator of the same blocks after a round that moved some.
const BACKOFF_US: u64 = 200;
/// 4 KiB pages of the shared 4 KiB region.
const PAGES_4K: u64 = 16;
/// Where the other CPU's address space maps the regions: this much above the keeper.
const OTHER: u64 = 8 * G1;

/// What the other CPU does while this one migrates.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Map both regions in its own space, check them, unmap them.
    Unmap,
    /// Make its mapping read-only (a write must fault and change nothing), then writable.
    Protect,
    /// Create a space, map and check both regions in it, destroy the space.
    Destroy,
    /// Pin a block, check that it stays where it is, unpin it.
    Pin,
}

/// The shared regions, where the keeper maps them, and the blocks found there.
struct Keeper {
    space: Arc<Space>,
    regions: [Arc<SharedRegion>; 2],
    /// (address in the keeper, leaf size) of every block.
    blocks: Vec<(u64, PageSize)>,
}

/// Both regions (16 pages of 4 KiB, one 2 MiB page) mapped in a new keeper space at
/// `BASE` and `BASE + G1`, loaded here and filled (block i with seed i).
fn keeper(env: &mut Env) -> Result<Keeper, crate::harness::TestError> {
    let space = env.space()?;
    let r4 = env.region(PAGES_4K * K4)?;
    let r2 = env.region(M2)?;
    env.map(&space, BASE, PAGES_4K * K4, shared(&r4, HugePolicy::Never))?;
    env.map(&space, BASE + G1, M2, shared(&r2, HugePolicy::Always))?;
    env.populate(&space, BASE, PAGES_4K * K4)?;
    env.populate(&space, BASE + G1, M2)?;
    check_eq!(activate(&space), Ok(()));
    let mut blocks: Vec<(u64, PageSize)> = (0..PAGES_4K)
        .map(|i| (BASE + i * K4, PageSize::Size4K))
        .collect();
    blocks.push((BASE + G1, PageSize::Size2M));
    for (i, &(va, size)) in blocks.iter().enumerate() {
        check_eq!(block_at(&space, va).map(|(_, t)| t.size), Some(size));
        check!(fill(va, size, i as u64), "filling {va:#x}");
    }
    Ok(Keeper {
        space,
        regions: [r4, r2],
        blocks,
    })
}

/// Map both regions in `space` at the keeper's addresses plus [`OTHER`].
fn map_both(mm: &KernelMm, space: &Space, regions: &[Arc<SharedRegion>; 2]) -> Result<(), String> {
    mm.map_anon(
        space,
        BASE + OTHER,
        PAGES_4K * K4,
        shared(&regions[0], HugePolicy::Never),
    )
    .map_err(|e| format!("map 4K region: {e}"))?;
    mm.map_anon(
        space,
        BASE + G1 + OTHER,
        M2,
        shared(&regions[1], HugePolicy::Always),
    )
    .map_err(|e| format!("map 2M region: {e}"))
}

/// The blocks seen through the mapping at [`OTHER`] (in the space loaded here) hold
/// their values.
fn intact_other(blocks: &[(u64, PageSize)]) -> Result<(), String> {
    for (i, &(va, size)) in blocks.iter().enumerate() {
        if !intact(va + OTHER, size, i as u64) {
            return Err(format!("{:#x} lost its contents", va + OTHER));
        }
    }
    Ok(())
}

/// What the other CPU did: cycles of its operation, pins that missed a moving block,
/// and the first error.
#[derive(Default)]
struct Other {
    cycles: u64,
    missed: u64,
    error: Option<String>,
}

/// The other CPU's side of a race.
struct OtherCpu {
    /// Cycles done so far.
    progress: Arc<AtomicU64>,
    op: Op,
    mm: &'static KernelMm,
    /// Its own address space, loaded there (Unmap and Protect work on it).
    mine: Arc<Space>,
    keeper: Arc<Space>,
    regions: [Arc<SharedRegion>; 2],
    blocks: Vec<(u64, PageSize)>,
}

impl OtherCpu {
    /// Cycles of the operation until `stop`, or until one fails.
    fn run(&self, stop: &AtomicBool) -> Other {
        let mut other = Other::default();
        if let Err(e) = activate(&self.mine) {
            other.error = Some(format!("activate: {e}"));
            return other;
        }
        while !stop.load(Ordering::Acquire) && other.error.is_none() {
            match self.cycle(other.cycles, &mut other) {
                Ok(()) => {
                    other.cycles += 1;
                    self.progress.store(other.cycles, Ordering::Relaxed);
                }
                Err(e) => other.error = Some(e),
            }
        }
        deactivate();
        other
    }

    /// Cycle number `n` of the operation.
    fn cycle(&self, n: u64, other: &mut Other) -> Result<(), String> {
        let (mm, mine, keeper, regions, blocks) = (
            self.mm,
            &self.mine,
            &self.keeper,
            &self.regions,
            &self.blocks[..],
        );
        let ranges = [(BASE + OTHER, PAGES_4K * K4), (BASE + G1 + OTHER, M2)];
        match self.op {
            Op::Unmap => {
                map_both(mm, mine, regions)?;
                intact_other(blocks)?;
                for (start, len) in ranges {
                    mm.unmap(mine, start, len)
                        .map_err(|e| format!("unmap {start:#x}: {e}"))?;
                }
            }
            Op::Protect => {
                for (start, len) in ranges {
                    mm.protect(mine, start, len, false)
                        .map_err(|e| format!("protect {start:#x}: {e}"))?;
                }
                let (va, _) = blocks[(n % blocks.len() as u64) as usize];
                if super::write(va + OTHER, !0) {
                    return Err(format!(
                        "{:#x}: a write to read-only memory went through",
                        va + OTHER
                    ));
                }
                intact_other(blocks)?;
                for (start, len) in ranges {
                    mm.protect(mine, start, len, true)
                        .map_err(|e| format!("unprotect {start:#x}: {e}"))?;
                }
            }
            Op::Destroy => {
                let space = mm.new_space().map_err(|e| format!("new_space: {e}"))?;
                let checked = map_both(mm, &space, regions)
                    .and_then(|()| activate(&space).map_err(|e| format!("activate: {e}")))
                    .and_then(|()| intact_other(blocks));
                deactivate();
                let destroyed = mm.destroy_space(&space);
                checked?;
                destroyed.map_err(|e| format!("destroy_space: {e}"))?;
            }
            Op::Pin => {
                let (va, _) = blocks[(n % blocks.len() as u64) as usize];
                match mm.pin(keeper, va) {
                    Ok(pinned) => {
                        // Pinned by address under the space's lock: the block pinned is the
                        // one mapped at `va`, and it stays there until unpinned.
                        let here = || block_at(keeper, va).map(|(h, _)| h) == Some(pinned);
                        for _ in 0..200 {
                            if !here() {
                                let _ = mm.unpin(pinned);
                                return Err(format!("{va:#x}: the pinned block is not (or no longer) the one mapped there"));
                            }
                        }
                        mm.unpin(pinned)
                            .map_err(|e| format!("unpin {pinned:?}: {e:?}"))?;
                    }
                    // A migration entry is there now.
                    Err(PinError::Migrating) => other.missed += 1,
                    Err(e) => return Err(format!("pin {va:#x}: {e:?}")),
                }
            }
        }
        Ok(())
    }
}

/// Migrate every block of the keeper once per round while another CPU runs `op` on the
/// same memory; then check every word and both audits.
fn race(op: Op, name: &str) -> TestResult {
    let me = percpu::cpu_index();
    let Some(cpu) = percpu::online().iter().find(|&c| c != me) else {
        skip!("needs 2 CPUs: the race is with another CPU");
    };
    let before = available();
    let mut env = Env::new()?;
    let mm = env.mm;
    let k = keeper(&mut env)?;
    // The other CPU's own address space, with the regions mapped for Protect.
    let mine = env.space()?;
    if op == Op::Protect {
        map_both(mm, &mine, &k.regions).map_err(fail)?;
    }
    let mut helpers = Helpers::default();
    let progress = Arc::new(AtomicU64::new(0));
    let side = OtherCpu {
        progress: progress.clone(),
        op,
        mm,
        mine: mine.clone(),
        keeper: k.space.clone(),
        regions: k.regions.clone(),
        blocks: k.blocks.clone(),
    };
    helpers.start(cpu, move |stop: &AtomicBool| side.run(stop))?;
    let deadline = Deadline::after_ms(RACE_MS);
    let (mut moved, mut pinned, mut rounds) = (0u64, 0u64, 0u64);
    let mut errors: Vec<String> = Vec::new();
    while (rounds < ROUNDS || progress.load(Ordering::Relaxed) < MIN_CYCLES)
        && !deadline.expired()
        && errors.is_empty()
    {
        let requests: Vec<(Pfn, Destination)> = k
            .blocks
            .iter()
            .filter_map(|&(va, _)| block_at(&k.space, va).map(|(h, _)| (h, Destination::Any)))
            .collect();
        check_eq!(requests.len(), k.blocks.len());
        for (r, (src, _)) in mm.migrate_batch(&requests).iter().zip(&requests) {
            match r {
                Ok(_) => moved += 1,
                Err(MigrateError::Pinned) if op == Op::Pin => pinned += 1,
                Err(e) => errors.push(format!("migrating {src:?}: {e}")),
            }
        }
        for (i, &(va, size)) in k.blocks.iter().enumerate() {
            if !intact(va, size, i as u64) {
                errors.push(format!("{va:#x} lost its contents in round {rounds}"));
            }
        }
        rounds += 1;
    }
    let other = helpers.finish().pop().unwrap_or_default();
    sprint!(
        "({rounds} rounds: {moved} blocks migrated{} while CPU {cpu} did {} {name} cycles{}) ",
        if op == Op::Pin {
            format!(", {pinned} refused as pinned")
        } else {
            String::new()
        },
        other.cycles,
        if op == Op::Pin {
            format!(" ({} pins missed a moving block)", other.missed)
        } else {
            String::new()
        },
    );
    check!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    check!(other.error.is_none(), "CPU {cpu}: {:?}", other.error);
    check!(moved > 0 && other.cycles > 0, "one side made no progress");
    check!(mm.rmap_audit().is_ok(), "{:?}", mm.rmap_audit());
    let Keeper { regions, .. } = k;
    drop(regions);
    env.teardown()?;
    audits(mm)?;
    check_eq!(available(), before);
    Ok(())
}

pub(super) fn migrate_vs_unmap(_: &TestContext) -> TestResult {
    race(Op::Unmap, "map+unmap")
}

pub(super) fn migrate_vs_protect(_: &TestContext) -> TestResult {
    race(Op::Protect, "read-only+writable")
}

pub(super) fn migrate_vs_destroy(_: &TestContext) -> TestResult {
    race(Op::Destroy, "create+map+destroy")
}

pub(super) fn migrate_vs_pin(_: &TestContext) -> TestResult {
    race(Op::Pin, "pin+unpin")
}

/// What one of two migrators of the same blocks did.
#[derive(Default, Debug)]
struct Migrator {
    moved: u64,
    busy: u64,
    gone: u64,
    error: Option<String>,
}

/// Migrate every block of `space` at `blocks` once per round, until [`ROUNDS`] rounds
/// moved something or the race's time is up; refusals because the other migrator has the
/// block, or moved it since the lookup, are counted, others are errors.
/// After a round that moved blocks the migrator pauses for a random while (up to
/// [`BACKOFF_US`], `seed` choosing): a migrator that starts its next batch at once holds
/// every block nearly all the time, and on a loaded host, where its CPU may be held up
/// mid-batch for long, the other one then finds them all taken for the whole race.
fn migrate_rounds(
    mm: &KernelMm,
    space: &Space,
    blocks: &[(u64, PageSize)],
    stop: &AtomicBool,
    seed: u64,
) -> Migrator {
    let mut rng = Rng::new(seed);
    let mut m = Migrator::default();
    let deadline = Deadline::after_ms(RACE_MS);
    let mut rounds = 0;
    while rounds < ROUNDS && !deadline.expired() {
        if stop.load(Ordering::Acquire) || m.error.is_some() {
            break;
        }
        // A block without a leaf is under the other migrator's migration entry.
        let requests: Vec<(Pfn, Destination)> = blocks
            .iter()
            .filter_map(|&(va, _)| block_at(space, va).map(|(h, _)| (h, Destination::Any)))
            .collect();
        m.busy += (blocks.len() - requests.len()) as u64;
        let moved = m.moved;
        for (r, (src, _)) in mm.migrate_batch(&requests).iter().zip(&requests) {
            match r {
                Ok(_) => m.moved += 1,
                Err(MigrateError::AlreadyMigrating) => m.busy += 1,
                Err(MigrateError::NotInUse | MigrateError::NotHead) => m.gone += 1,
                Err(e) => {
                    m.error.get_or_insert(format!("migrating {src:?}: {e}"));
                }
            }
        }
        // Only a round that moved something counts: refused rounds are quick, and a
        // migrator counting them could run out of rounds inside one batch of the other.
        if m.moved > moved {
            rounds += 1;
            delay_us(rng.below(BACKOFF_US + 1));
        }
    }
    m
}

pub(super) fn two_migrators(ctx: &TestContext) -> TestResult {
    let seed = ctx.seed;
    let me = percpu::cpu_index();
    let Some(cpu) = percpu::online().iter().find(|&c| c != me) else {
        skip!("needs 2 CPUs: two migrators of the same blocks");
    };
    let before = available();
    let mut env = Env::new()?;
    let mm = env.mm;
    let s = env.space()?;
    env.map(&s, BASE, PAGES_4K * K4, private(HugePolicy::Never))?;
    env.map(&s, BASE + G1, 2 * M2, private(HugePolicy::Always))?;
    env.populate(&s, BASE, PAGES_4K * K4)?;
    env.populate(&s, BASE + G1, 2 * M2)?;
    check_eq!(activate(&s), Ok(()));
    let mut blocks: Vec<(u64, PageSize)> = (0..PAGES_4K)
        .map(|i| (BASE + i * K4, PageSize::Size4K))
        .collect();
    blocks.extend([
        (BASE + G1, PageSize::Size2M),
        (BASE + G1 + M2, PageSize::Size2M),
    ]);
    for (i, &(va, size)) in blocks.iter().enumerate() {
        check!(fill(va, size, i as u64), "filling {va:#x}");
    }
    let mut helpers = Helpers::default();
    {
        let (s, blocks) = (s.clone(), blocks.clone());
        helpers.start(cpu, move |stop: &AtomicBool| {
            migrate_rounds(mm, &s, &blocks, stop, seed ^ 1)
        })?;
    }
    let never = AtomicBool::new(false);
    let here = migrate_rounds(mm, &s, &blocks, &never, seed);
    let there = helpers.finish().pop().unwrap_or_default();
    sprint!("(CPU {me}: {here:?}; CPU {cpu}: {there:?}) ");
    check!(
        here.error.is_none() && there.error.is_none(),
        "an unexpected refusal"
    );
    check!(
        here.moved > 0 && there.moved > 0,
        "a migrator never moved a block"
    );
    for (i, &(va, size)) in blocks.iter().enumerate() {
        check!(intact(va, size, i as u64), "{va:#x} lost its contents");
    }
    check!(mm.rmap_audit().is_ok(), "{:?}", mm.rmap_audit());
    env.teardown()?;
    audits(mm)?;
    check_eq!(available(), before);
    Ok(())
}

/// Frames freed twice (once on each CPU) by the double-free race, unless it runs out of
/// time first.
const DOUBLE_FREES: u64 = 10_000;
/// How long the double-free race waits for the other CPU's free of one frame.
const ACK_MS: u64 = 5_000;

pub(super) fn double_free_across_cpus(_: &TestContext) -> TestResult {
    let me = percpu::cpu_index();
    let Some(cpu) = percpu::online().iter().find(|&c| c != me) else {
        skip!("needs 2 CPUs: the second free comes from another CPU");
    };
    // The results are collected in vectors allocated before the free count is taken (the
    // heap would grow on frames otherwise).
    let mut here = Vec::with_capacity(DOUBLE_FREES as usize);
    let mut results = Vec::with_capacity(DOUBLE_FREES as usize);
    let before = available();
    // In lockstep: this CPU publishes frame t as turn t, then both CPUs free it at once
    // and acknowledge; the next turn starts once both did.
    let turn = Arc::new(AtomicU64::new(0));
    let frame = Arc::new(AtomicU64::new(0));
    let acks = Arc::new(AtomicU64::new(0));
    let mut helpers = Helpers::default();
    {
        let (turn, frame, acks) = (turn.clone(), frame.clone(), acks.clone());
        helpers.start(cpu, move |stop: &AtomicBool| {
            let mut seen = 0;
            while !stop.load(Ordering::Acquire) {
                let t = turn.load(Ordering::Acquire);
                if t == seen {
                    core::hint::spin_loop();
                    continue;
                }
                seen = t;
                results.push(frames::free(Pfn(frame.load(Ordering::Acquire)).addr(), 0));
                acks.fetch_add(1, Ordering::AcqRel);
            }
            results
        })?;
    }
    let deadline = Deadline::after_ms(RACE_MS);
    for t in 1..=DOUBLE_FREES {
        if deadline.expired() {
            break;
        }
        let pfn =
            frames::alloc(0, MigrateType::Movable).map_err(|e| fail(format!("alloc: {e:?}")))?;
        frame.store(pfn.0, Ordering::Release);
        turn.store(t, Ordering::Release);
        here.push(frames::free(pfn.addr(), 0));
        acks.fetch_add(1, Ordering::AcqRel);
        let answer = Deadline::after_ms(ACK_MS);
        while acks.load(Ordering::Acquire) < 2 * t {
            check!(
                !answer.expired(),
                "CPU {cpu} did not free frame {t} within {ACK_MS} ms"
            );
            core::hint::spin_loop();
        }
    }
    let there = helpers.finish().pop().unwrap_or_default();
    check_eq!(there.len(), here.len());
    let (mut once, mut twice, mut errors) = (0u64, 0u64, Vec::new());
    for (a, b) in here.iter().zip(&there) {
        match (a, b) {
            (Ok(()), Ok(())) => twice += 1,
            (Ok(()), Err(e)) | (Err(e), Ok(())) if is_double_free(e) => once += 1,
            _ => errors.push(format!("{a:?} / {b:?}")),
        }
    }
    sprint!(
        "({} frames freed by both CPUs at once: {once} with one free accepted and one refused, {twice} accepted twice) ",
        here.len()
    );
    check!(
        errors.is_empty(),
        "{} unexpected results, first: {:?}",
        errors.len(),
        errors.first()
    );
    check!(twice == 0, "{twice} frames freed twice were both accepted");
    check!(once > 0, "no frame was freed twice");
    let audit = frames::drain_and_audit();
    check!(audit.is_ok(), "allocator audit: {audit:?}");
    check_eq!(available(), before);
    Ok(())
}

/// The typed refusals of a second free: still cached, or back in the allocator.
fn is_double_free(e: &crate::mem::MemError) -> bool {
    matches!(
        e,
        crate::mem::MemError::Free(FreeError::DoubleFree | FreeError::NotAllocated)
    )
}
