//! Contiguity generation of a VMA with a 1 GiB block, under writers: X (in A) is a 1 GiB
//! page at P, the highest free 1 GiB block, followed by a 2 MiB page; Y is a 1 GiB region
//! shared by A and B at Q, the lowest. X cannot be made contiguous where it is: the
//! 2 MiB block after P is beyond memory, or taken away here. So its 1 GiB block must
//! move whole: exchanged with Y's when no free gigabyte is left (a 4 GiB guest has only
//! P and Q), migrated into a free one otherwise. Three writers keep checking and
//! rewriting slots in X and Y (Y through both spaces) meanwhile.

use super::writers::{self, Slot, Writer};
use super::{
    activate, audits, available, block_at, deactivate, private, shared, tag, tagged, Env, BASE, G1,
    K4, M2, ORDER_1G,
};
use crate::arch::percpu;
use crate::harness::{TestContext, TestResult};
use crate::mem::frames;
use crate::tlb::tests::Helpers;
use crate::{check, check_eq, skip, sprint};
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;
use mm::base::addr::Pfn;
use mm::frame::buddy::MigrateType;
use mm::mapping::vma::HugePolicy;
use mm::ops::contig::ContigOptions;

/// X in A: a 1 GiB page, then a 2 MiB page.
const X: u64 = BASE + 2 * G1;
/// Y: in A, and in B.
const Y_IN_A: u64 = BASE + 4 * G1;
const Y_IN_B: u64 = BASE + 6 * G1;
/// Frames in a 1 GiB block.
const PAGES_1G: u64 = 1 << 18;
/// Subpages of a 1 GiB page where the writers have slots.
const SUBPAGES: [u64; 5] = [0, 1, 131_072, 200_000, 262_143];

/// The free 1 GiB blocks now, lowest first.
fn free_gigs() -> Vec<Pfn> {
    let table = frames::table().len() as u64;
    (0..table)
        .step_by(PAGES_1G as usize)
        .map(Pfn)
        .filter(|&p| frames::with_buddy(|b| b.free_block_containing(p)) == Some((p, ORDER_1G)))
        .collect()
}

/// Take the free 1 GiB blocks `gigs` out of the allocator (so that a 1 GiB fault gets the
/// one left), or give them back.
fn take(gigs: &[Pfn]) -> TestResult {
    for &g in gigs {
        let r = frames::alloc_at(g, ORDER_1G, MigrateType::Movable);
        check!(r.is_ok(), "taking 1 GiB block {g:?}: {r:?}");
    }
    Ok(())
}

fn give(gigs: &[Pfn]) -> TestResult {
    for &g in gigs {
        check_eq!(frames::free(g.addr(), ORDER_1G), Ok(()));
    }
    Ok(())
}

pub(super) fn contig_under_writers_1g(_: &TestContext) -> TestResult {
    let me = percpu::cpu_index();
    let writer_cpus: Vec<u32> = percpu::online()
        .iter()
        .filter(|&c| c != me)
        .take(3)
        .collect();
    if writer_cpus.len() < 3 {
        skip!(
            "needs 4 CPUs: writers on 3, contiguity generation on a 4th ({} online)",
            writer_cpus.len() + 1
        );
    }
    let gigs = free_gigs();
    if gigs.len() < 2 {
        skip!("needs 2 free 1 GiB blocks, has {}", gigs.len());
    }
    let before = available();
    let setup_started = crate::arch::timer::now_ns();
    let mut env = Env::new()?;
    let mm = env.mm;
    let a = env.space()?;
    let b = env.space()?;
    let region = env.region(G1)?;
    env.map(&a, X, G1 + M2, private(HugePolicy::Always))?;
    env.map(&a, Y_IN_A, G1, shared(&region, HugePolicy::Always))?;
    env.map(&b, Y_IN_B, G1, shared(&region, HugePolicy::Always))?;
    drop(region);
    let (p, q) = (gigs[gigs.len() - 1], gigs[0]);
    let others = &gigs[..gigs.len() - 1];
    take(others)?;
    let faulted = env.populate(&a, X, G1);
    give(others)?;
    faulted?;
    take(&gigs[1..gigs.len() - 1])?;
    let faulted = env.populate(&a, Y_IN_A, G1);
    give(&gigs[1..gigs.len() - 1])?;
    faulted?;
    env.populate(&b, Y_IN_B, G1)?;
    check_eq!(block_at(&a, X).map(|(h, _)| h), Some(p));
    check_eq!(block_at(&b, Y_IN_B).map(|(h, _)| h), Some(q));
    // Where X's 2 MiB page would have to go to stay in place: taken away unless it is
    // beyond memory or taken already.
    let after_p = p.add(PAGES_1G);
    let blocker = frames::alloc_at(after_p, 9, MigrateType::Unmovable).ok();
    env.populate(&a, X + G1, M2)?;
    check_eq!(activate(&a), Ok(()));
    check!(tag(X, G1 + M2, 1) && tag(Y_IN_A, G1, 2), "tagging X and Y");
    deactivate();
    let mut id = 0;
    let mut slots = |base: u64, k: u64| -> Vec<Slot> {
        SUBPAGES
            .iter()
            .map(|&s| {
                id += 1;
                Slot::new(base + s * K4, k, id)
            })
            .collect()
    };
    let mut one = slots(X, 1);
    one.extend(slots(Y_IN_A, 1));
    let two = slots(Y_IN_B, 2);
    let mut three = slots(X, 3);
    three.extend(slots(Y_IN_A, 3));
    three.push(Slot::new(X + G1 + 5 * K4, 3, 0));
    let ws = vec![
        Writer::new(a.clone(), one),
        Writer::new(b.clone(), two),
        Writer::new(a.clone(), three),
    ];
    let setup_ms = (crate::arch::timer::now_ns() - setup_started) / 1_000_000;
    let mut helpers = Helpers::default();
    writers::start(&mut helpers, ws, &writer_cpus)?;
    let started = crate::arch::timer::now_ns();
    let first = mm.make_vma_contiguous(&a, X, &ContigOptions::default());
    let contig_ms = (crate::arch::timer::now_ns() - started) / 1_000_000;
    let again = mm.make_vma_contiguous(&a, X, &ContigOptions::default());
    let writers = writers::finish(helpers);
    let (updates, errors, first_error) = writers::tally(&writers);
    check_eq!(activate(&a), Ok(()));
    let intact = tagged(X, G1 + M2, 1) && tagged(Y_IN_A, G1, 2);
    deactivate();
    let x_now = block_at(&a, X).map(|(h, _)| h);
    let y_now = block_at(&b, Y_IN_B).map(|(h, _)| h);
    if let Some(pfn) = blocker {
        check_eq!(frames::free(pfn.addr(), 9), Ok(()));
    }
    sprint!(
        "(X's 1 GiB block {p:?} -> {x_now:?}, Y's {q:?} -> {y_now:?}, {} 2 MiB after P; {first:?} in {contig_ms} ms (setup {setup_ms} ms); again: {again:?}; {updates} updates, {errors} checksum errors) ",
        if blocker.is_some() { "taken away" } else { "no free" }
    );
    let report = first.map_err(|e| super::fail(format!("make_vma_contiguous: {e}")))?;
    check!(
        report.complete && report.failed == 0 && report.after.chunks == 1,
        "{report:?}"
    );
    check_eq!(report.frames_allocated_by_exchange, 0);
    check!(x_now != Some(p), "X's 1 GiB block did not move");
    check!(
        report.exchanged >= PAGES_1G || report.migrated >= PAGES_1G,
        "the 1 GiB block moved neither by exchange nor by migration: {report:?}"
    );
    if report.exchanged >= PAGES_1G {
        check_eq!(y_now, Some(p));
    }
    let again = again.map_err(|e| super::fail(format!("second make_vma_contiguous: {e}")))?;
    check_eq!((again.misplaced, again.moved()), (0, 0));
    check!(
        errors == 0,
        "{errors} checksum errors, first: {first_error:?}"
    );
    check!(intact, "X or Y lost its tags");
    check!(
        writers.iter().all(|w| w.updates > 0),
        "a writer never wrote"
    );
    drop(writers);
    env.teardown()?;
    audits(mm)?;
    check_eq!(available(), before);
    Ok(())
}
