//! Promotion and split racing with an unmap or a protect of the same range on another
//! CPU: each operation either succeeds or is refused, typed (`NotMapped`, `NotContiguous`,
//! `Busy`, `BadSize` when the range changed shape under it), and nothing is lost.
//!
//! This CPU splits and promotes two 2 MiB ranges of one address space, loaded on both
//! CPUs, over and over: the victim, which the other CPU keeps unmapping and mapping
//! again (then filling and checking it), or making read-only (a write must fault and
//! change nothing; a promotion must keep the leaf read-only) and writable again (then
//! rewriting and checking it); and a bystander nobody else touches, whose every word must
//! keep its value and whose every split and promotion must succeed.

use super::super::{
    activate, audits, available, deactivate, fill, intact, private, write, Env, KernelMm, Space,
    BASE, G1, M2,
};
use super::{huge_page, leaf, other_cpus};
use crate::arch::timer::Deadline;
use crate::harness::{TestContext, TestResult};
use crate::tlb::tests::Helpers;
use crate::{check, check_eq, sprint};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, Ordering};
use mm::base::addr::PageSize;
use mm::mapping::vma::HugePolicy;
use mm::ops::huge::HugeError;

/// How long a race goes on, and the cycles each side completes at least (unless time
/// runs out first).
const RACE_MS: u64 = 5_000;
const MIN_CYCLES: u64 = 10;
const VICTIM: u64 = BASE;
const BYSTANDER: u64 = BASE + G1;
/// Writes tried, each of which must fault, while the victim is read-only.
const READ_ONLY_WRITES: u64 = 64;
/// The seed of the victim's first contents (then one more per cycle).
const FIRST_SEED: u64 = 1000;

/// What the other CPU does to the victim.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Race {
    Unmap,
    Protect,
}

/// The other CPU's side: cycles until `stop`, or the first error.
fn other(
    mm: &KernelMm,
    space: &Arc<Space>,
    race: Race,
    stop: &AtomicBool,
) -> (u64, Option<String>) {
    if let Err(e) = activate(space) {
        return (0, Some(format!("activate: {e}")));
    }
    let (mut cycles, mut last) = (0, FIRST_SEED);
    let mut error = None;
    while !stop.load(Ordering::Acquire) && error.is_none() {
        let seed = FIRST_SEED + 1 + cycles;
        let r = match race {
            Race::Unmap => mm
                .unmap(space, VICTIM, M2)
                .map_err(|e| format!("unmap: {e}"))
                .and_then(|()| {
                    mm.map_anon(space, VICTIM, M2, private(HugePolicy::OnRequest))
                        .map_err(|e| format!("map: {e}"))
                })
                .and_then(|()| {
                    mm.populate(space, VICTIM, M2)
                        .map_err(|e| format!("populate: {e}"))
                })
                .and_then(|()| fill_checked(seed)),
            Race::Protect => mm
                .protect(space, VICTIM, M2, false)
                .map_err(|e| format!("protect: {e}"))
                .and_then(|()| read_only(last))
                .and_then(|()| {
                    mm.protect(space, VICTIM, M2, true)
                        .map_err(|e| format!("unprotect: {e}"))
                })
                .and_then(|()| fill_checked(seed)),
        };
        match r {
            Ok(()) => {
                cycles += 1;
                last = seed;
            }
            Err(e) => error = Some(format!("cycle {cycles}: {e}")),
        }
    }
    deactivate();
    (cycles, error)
}

/// While the victim is read-only (long enough for this CPU's splits and promotions to
/// happen meanwhile): writes fault, and its words keep the values of `seed`.
fn read_only(seed: u64) -> Result<(), String> {
    for i in 0..READ_ONLY_WRITES {
        let va = VICTIM + (i * 4096 + 8) % M2;
        if write(va, !0) {
            return Err(format!("a write to read-only {va:#x} went through"));
        }
    }
    if intact(VICTIM, PageSize::Size2M, seed) {
        Ok(())
    } else {
        Err("read-only memory lost its contents".into())
    }
}

/// Fill the victim's probe words with values of `seed` and check them.
fn fill_checked(seed: u64) -> Result<(), String> {
    if !fill(VICTIM, PageSize::Size2M, seed) {
        return Err("a write faulted".into());
    }
    if !intact(VICTIM, PageSize::Size2M, seed) {
        return Err("the values written did not read back".into());
    }
    Ok(())
}

/// This CPU's operation on the range at `va` as it is now: split a 2 MiB leaf, promote
/// 4 KiB leaves. Ok(true) if it went through, Ok(false) if refused as the race allows.
fn operate(mm: &KernelMm, space: &Space, va: u64) -> Result<bool, String> {
    let r = match leaf(space, va) {
        Some((PageSize::Size2M, _)) => mm.split_huge(space, va + 4096).map(|_| ()),
        _ => mm.promote(space, va, PageSize::Size2M),
    };
    match r {
        Ok(()) => Ok(true),
        Err(
            HugeError::NotMapped
            | HugeError::NotContiguous(_)
            | HugeError::Busy
            | HugeError::BadSize,
        ) => Ok(false),
        Err(e) => Err(format!("{va:#x}: {e}")),
    }
}

fn race(race: Race, name: &str) -> TestResult {
    let cpu = other_cpus(1, "the race is with another CPU")?[0];
    let before = available();
    let mut env = Env::new()?;
    let mm = env.mm;
    let s = env.space()?;
    huge_page(&env, &s, VICTIM, PageSize::Size2M)?;
    let pa = huge_page(&env, &s, BYSTANDER, PageSize::Size2M)?;
    check_eq!(activate(&s), Ok(()));
    check!(fill(BYSTANDER, PageSize::Size2M, 1) && fill(VICTIM, PageSize::Size2M, FIRST_SEED));
    let mut helpers = Helpers::default();
    {
        let s = s.clone();
        helpers.start(cpu, move |stop: &AtomicBool| other(mm, &s, race, stop))?;
    }
    let deadline = Deadline::after_ms(RACE_MS);
    let (mut done, mut refused, mut cycles) = (0u64, 0u64, 0u64);
    let mut error = None;
    while (cycles < MIN_CYCLES || !deadline.expired()) && error.is_none() {
        match operate(mm, &s, VICTIM) {
            Ok(true) => done += 1,
            Ok(false) => refused += 1,
            Err(e) => error = Some(e),
        }
        match operate(mm, &s, BYSTANDER) {
            Ok(true) if intact(BYSTANDER, PageSize::Size2M, 1) => {}
            Ok(true) => error = Some("the bystander lost data".into()),
            Ok(false) => error = Some("the bystander's operation was refused".into()),
            Err(e) => error = Some(e),
        }
        cycles += 1;
        if deadline.expired() && cycles >= 10 * MIN_CYCLES {
            break;
        }
    }
    let (theirs, their_error) = helpers.finish().pop().unwrap_or_default();
    sprint!(
        "({cycles} cycles here: {done} victim operations went through, {refused} refused; {theirs} {name} cycles on CPU {cpu}) "
    );
    check!(error.is_none(), "{error:?}");
    check!(their_error.is_none(), "CPU {cpu}: {their_error:?}");
    check!(theirs > 0 && done > 0, "a side made no progress");
    check!(
        intact(BYSTANDER, PageSize::Size2M, 1),
        "the bystander lost data"
    );
    let (size, base) = leaf(&s, BYSTANDER).unwrap_or((PageSize::Size4K, 0));
    check_eq!(base, pa);
    check!(size != PageSize::Size1G);
    check!(mm.rmap_audit().is_ok(), "{:?}", mm.rmap_audit());
    env.teardown()?;
    audits(mm)?;
    check_eq!(available(), before);
    Ok(())
}

pub(super) fn promote_vs_unmap(_: &TestContext) -> TestResult {
    race(Race::Unmap, "unmap+map+populate")
}

pub(super) fn promote_vs_protect(_: &TestContext) -> TestResult {
    race(Race::Protect, "read-only+writable")
}
