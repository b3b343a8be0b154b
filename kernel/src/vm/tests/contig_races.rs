//! Contiguity generation while another CPU cuts the VMAs being made contiguous: it
//! protects single pages of C (read-only, then writable again) and unmaps others, while
//! this CPU keeps making both address spaces contiguous and re-scrambles their pages by
//! migration between rounds, and writers (on the CPUs left, up to two) keep checking and
//! rewriting slots in pages that nobody cuts. Every result must be a report or a typed
//! [`ContigError`] (`Changed` or `NotMapped` for a VMA cut under it), every page not
//! unmapped must keep its contents, and the audits must be clean.

use super::writers::{self, Slot, Writer};
use super::{
    activate, audits, available, block_at, deactivate, private, tag, tagged, Env, KernelMm, Space,
    BASE, K4,
};
use crate::arch::percpu;
use crate::arch::timer::Deadline;
use crate::harness::{TestContext, TestResult};
use crate::mem::tests::Rng;
use crate::tlb::tests::Helpers;
use crate::{check, check_eq, skip, sprint};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use mm::base::addr::Pfn;
use mm::mapping::vma::HugePolicy;
use mm::ops::contig::{ContigError, ContigOptions};
use mm::ops::migrate::{Destination, MigrateError};

/// Pages of C (in B) and of K (in A), faulted in interleaved.
const PAGES: u64 = 512;
/// C's pages from here on are cut by the other CPU; the ones below are written.
const CUT_FROM: u64 = 256;
const C: u64 = BASE;
const K: u64 = BASE;
/// Rounds of contiguity generation.
const ROUNDS: usize = 8;
/// Pages re-scrambled by migration before each round.
const SCRAMBLE: usize = 64;
/// The race ends after this long even if its rounds are not done.
const RACE_MS: u64 = 30_000;

/// What the cutting CPU did: protect cycles, pages it unmapped, its first error.
#[derive(Default)]
struct Cuts {
    protects: u64,
    unmapped: Vec<u64>,
    error: Option<String>,
}

/// Protect and unprotect, or unmap, pages of C's upper half until `stop`.
fn cut(mm: &KernelMm, b: &Space, seed: u64, stop: &AtomicBool) -> Cuts {
    let mut cuts = Cuts::default();
    let mut rng = Rng::new(seed);
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) && cuts.error.is_none() {
        let page = CUT_FROM + rng.below(PAGES - CUT_FROM);
        let va = C + page * K4;
        n += 1;
        if n % 4 == 0 {
            if cuts.unmapped.contains(&va) {
                continue;
            }
            match mm.unmap(b, va, K4) {
                Ok(()) => cuts.unmapped.push(va),
                Err(e) => cuts.error = Some(format!("unmap {va:#x}: {e}")),
            }
        } else if !cuts.unmapped.contains(&va) {
            let r = mm
                .protect(b, va, K4, false)
                .and_then(|()| mm.protect(b, va, K4, true));
            match r {
                Ok(()) => cuts.protects += 1,
                Err(e) => cuts.error = Some(format!("protect {va:#x}: {e}")),
            }
        }
    }
    cuts
}

/// Results of the contiguity rounds, by kind.
#[derive(Default, Debug)]
struct Results {
    reports: u64,
    moved: u64,
    changed: u64,
    not_mapped: u64,
    other: Vec<String>,
}

impl Results {
    fn add(&mut self, r: Result<mm::ops::contig::ContigReport, ContigError>) {
        match r {
            Ok(r) => {
                self.reports += 1;
                self.moved += r.moved();
                if r.frames_allocated_by_exchange != 0 {
                    self.other.push(format!("an exchange allocated: {r:?}"));
                }
            }
            Err(ContigError::Changed) => self.changed += 1,
            Err(ContigError::NotMapped) => self.not_mapped += 1,
            Err(e) => self.other.push(format!("{e:?}")),
        }
    }
}

/// Migrate `SCRAMBLE` random pages of C and K anywhere (a page unmapped meanwhile is
/// refused, typed, and left alone: its frame may be free by now, or even a tail of a
/// block allocated since).
fn scramble(mm: &KernelMm, spaces: [&Space; 2], rng: &mut Rng, out: &mut Results) {
    let requests: Vec<(Pfn, Destination)> = (0..SCRAMBLE)
        .filter_map(|i| {
            let s = spaces[i % 2];
            let va = BASE + rng.below(PAGES) * K4;
            block_at(s, va).map(|(h, _)| (h, Destination::Any))
        })
        .collect();
    for r in mm.migrate_batch(&requests) {
        match r {
            Ok(_)
            | Err(MigrateError::NotInUse)
            | Err(MigrateError::NotHead)
            | Err(MigrateError::Changed)
            | Err(MigrateError::Released)
            | Err(MigrateError::AlreadyMigrating) => {}
            Err(e) => out.other.push(format!("scramble: {e}")),
        }
    }
}

pub(super) fn contig_vs_unmap_protect(ctx: &TestContext) -> TestResult {
    let me = percpu::cpu_index();
    let others: Vec<u32> = percpu::online()
        .iter()
        .filter(|&c| c != me)
        .take(3)
        .collect();
    let Some((&cutter, writer_cpus)) = others.split_first() else {
        skip!("needs 2 CPUs: the VMAs are cut on another CPU");
    };
    let before = available();
    let claimed_before = super::need_mm()?.claimed_windows();
    let mut env = Env::new()?;
    let mm = env.mm;
    let a = env.space()?;
    let b = env.space()?;
    env.map(&b, C, PAGES * K4, private(HugePolicy::Never))?;
    env.map(&a, K, PAGES * K4, private(HugePolicy::Never))?;
    for i in 0..PAGES {
        env.populate(&b, C + i * K4, K4)?;
        env.populate(&a, K + i * K4, K4)?;
    }
    for (s, start, seed) in [(&b, C, 1u64), (&a, K, 2)] {
        check_eq!(activate(s), Ok(()));
        check!(tag(start, PAGES * K4, seed), "tagging {start:#x}");
    }
    deactivate();
    // Writer 1 in K (A), writer 2 in C's lower half (B).
    let ws: Vec<Writer> = [(a.clone(), K, 1u64), (b.clone(), C, 2)]
        .into_iter()
        .take(writer_cpus.len())
        .map(|(s, start, k): (Arc<Space>, u64, u64)| {
            let slots = (0..CUT_FROM)
                .step_by(4)
                .map(|i| Slot::new(start + i * K4, k, i))
                .collect();
            Writer::new(s, slots)
        })
        .collect();
    let mut writer_helpers = Helpers::default();
    writers::start(&mut writer_helpers, ws, writer_cpus)?;
    let mut cutter_helper = Helpers::default();
    {
        let b = b.clone();
        let seed = ctx.seed;
        cutter_helper.start(cutter, move |stop: &AtomicBool| cut(mm, &b, seed, stop))?;
    }
    let mut rng = Rng::new(ctx.seed ^ 0x5eed);
    let mut results = Results::default();
    let deadline = Deadline::after_ms(RACE_MS);
    let mut rounds = 0;
    while rounds < ROUNDS && !deadline.expired() && results.other.is_empty() {
        scramble(mm, [&a, &b], &mut rng, &mut results);
        for s in [&b, &a] {
            match mm.make_space_contiguous(s, &ContigOptions::default()) {
                Ok(rs) => rs.into_iter().for_each(|r| results.add(r)),
                Err(e) => results.other.push(format!("make_space_contiguous: {e}")),
            }
        }
        rounds += 1;
    }
    let cuts = cutter_helper.finish().pop().unwrap_or_default();
    let writers = writers::finish(writer_helpers);
    let (updates, errors, first_error) = writers::tally(&writers);
    // Every page of K and every page of C the cutter did not unmap keeps its tag.
    let mut lost: Vec<u64> = Vec::new();
    for (s, start, seed, is_c) in [(&b, C, 1u64, true), (&a, K, 2, false)] {
        check_eq!(activate(s), Ok(()));
        for i in 0..PAGES {
            let va = start + i * K4;
            let gone = is_c && cuts.unmapped.contains(&va);
            let mapped = super::read(va).is_some();
            if gone == mapped || (!gone && !tagged(va, K4, seed)) {
                lost.push(va);
            }
        }
    }
    deactivate();
    sprint!(
        "({rounds} rounds: {results:?}; CPU {cutter}: {} protect cycles, {} pages unmapped; {} writers, {updates} updates, {errors} checksum errors) ",
        cuts.protects,
        cuts.unmapped.len(),
        writers.len()
    );
    check!(cuts.error.is_none(), "CPU {cutter}: {:?}", cuts.error);
    check!(
        results.other.is_empty(),
        "unexpected results: {:?}",
        results.other
    );
    check!(
        errors == 0,
        "{errors} checksum errors, first: {first_error:?}"
    );
    check!(lost.is_empty(), "pages lost or kept wrongly: {lost:x?}");
    check!(
        results.reports > 0 && results.moved > 0 && cuts.protects > 0 && !cuts.unmapped.is_empty(),
        "one side made no progress"
    );
    check!(mm.rmap_audit().is_ok(), "{:?}", mm.rmap_audit());
    drop(writers);
    env.teardown()?;
    audits(mm)?;
    check_eq!(mm.claimed_windows(), claimed_before);
    check_eq!(available(), before);
    Ok(())
}
