//! The background daemon alone makes always-huge VMAs huge while writers keep changing
//! their words: four 2 MiB ranges of 4 KiB pages scattered among a filler's (one with a
//! few pages missing, fewer than `max_ptes_none`) become 2 MiB leaves, and where 1 GiB
//! pages and a free gigabyte allow, a 1 GiB VMA of 2 MiB pages (its first 2 MiB range
//! scattered 4 KiB pages) becomes one 1 GiB leaf. The daemon is retuned while it runs
//! (zero and absurd rates refused, typed, the old tuning kept; a good one taken), refuses
//! a second start, and stops; its tuning is then put back.

use super::super::{audits, free_1g_blocks, private, Env, KernelMm, Space, BASE, G1, K4, M2};
use super::{accounted, leaf, other_cpus};
use crate::arch::timer::Deadline;
use crate::harness::{TestContext, TestError, TestResult};
use crate::tlb::tests::Helpers;
use crate::vm::daemon::{self, DaemonError};
use crate::vm::load::{self, Writer};
use crate::{check, check_eq, skip, sprint};
use alloc::vec::Vec;
use mm::aspace::vmstat::Event;
use mm::base::addr::PageSize;
use mm::mapping::vma::HugePolicy;
use mm::ops::huge::daemon::{Tuning, TuningError, MAX_PAGES_PER_STEP, MAX_SLEEP_MS};

/// How long the daemon has to make everything huge.
const HUGE_WITHIN_MS: u64 = 120_000;
/// 2 MiB ranges of the small VMA.
const RANGES: u64 = 4;
/// Where the small VMA, the 1 GiB VMA and the filler go.
const SMALL: u64 = BASE;
const GIGA: u64 = BASE + 2 * G1;
const FILLER: u64 = BASE + 8 * G1;
/// The tuning the test switches to while the daemon runs.
const FAST: Tuning = Tuning {
    pages_per_step: 32_768,
    sleep_ms: 1,
    max_ptes_none: 64,
};
/// Pages left out of the last 2 MiB range (the daemon faults them in).
const MISSING: core::ops::Range<u64> = 100..120;

/// Fault `[va, va + len)` in 4 KiB at a time, a page of the filler at `filler` after
/// each, with 4 KiB leaves only; `skip` pages (indices) left out.
fn scattered(
    env: &Env,
    space: &Space,
    (va, len, filler): (u64, u64, u64),
    skip: impl Fn(u64) -> bool,
) -> TestResult {
    let mm = env.mm;
    let keep = mm.max_leaf();
    mm.set_max_leaf(PageSize::Size4K);
    let mut result = Ok(());
    for i in (0..len / K4).filter(|&i| !skip(i)) {
        for at in [va + i * K4, filler + i * K4] {
            if let Err(e) = mm.handle_fault(space, at, true) {
                result = Err(super::super::fail(alloc::format!("fault {at:#x}: {e}")));
            }
        }
        if result.is_err() {
            break;
        }
    }
    mm.set_max_leaf(keep);
    result
}

/// The 1 GiB VMA: its first 2 MiB range scattered 4 KiB pages, the rest 2 MiB pages.
fn gigabyte(env: &Env, space: &Space) -> TestResult {
    let mm = env.mm;
    env.map(space, GIGA, G1, private(HugePolicy::Always))?;
    scattered(env, space, (GIGA, M2, FILLER + RANGES * M2), |_| false)?;
    let keep = mm.max_leaf();
    mm.set_max_leaf(PageSize::Size2M);
    let populated = env.populate(space, GIGA + M2, G1 - M2);
    mm.set_max_leaf(keep);
    populated
}

/// Bad tunings are refused while it runs, the old one kept; a second start too.
fn refusals(cpu: u32) -> TestResult {
    let keep = daemon::tuning();
    check!(keep.is_ok(), "{keep:?}");
    let keep = keep.unwrap_or_default();
    for (bad, e) in [
        (
            Tuning {
                pages_per_step: 0,
                ..keep
            },
            TuningError::ZeroRate,
        ),
        (
            Tuning {
                pages_per_step: MAX_PAGES_PER_STEP + 1,
                ..keep
            },
            TuningError::RateTooHigh,
        ),
        (
            Tuning {
                pages_per_step: u64::MAX,
                ..keep
            },
            TuningError::RateTooHigh,
        ),
        (
            Tuning {
                sleep_ms: MAX_SLEEP_MS + 1,
                ..keep
            },
            TuningError::SleepTooLong,
        ),
        (
            Tuning {
                max_ptes_none: 512,
                ..keep
            },
            TuningError::MaxPtesNone,
        ),
    ] {
        check_eq!(daemon::retune(bad), Err(DaemonError::Tuning(e)));
        check_eq!(daemon::tuning(), Ok(keep));
    }
    check_eq!(daemon::start(), Err(DaemonError::AlreadyRunning(cpu)));
    // A good one is taken while it runs: faster steps.
    check_eq!(daemon::retune(FAST), Ok(()));
    check_eq!(daemon::tuning(), Ok(FAST));
    Ok(())
}

/// Whether everything the daemon should make huge is huge.
fn all_huge(space: &Space, with_1g: bool) -> bool {
    (0..RANGES).all(|i| leaf(space, SMALL + i * M2).map(|l| l.0) == Some(PageSize::Size2M))
        && (!with_1g || leaf(space, GIGA).map(|l| l.0) == Some(PageSize::Size1G))
}

pub(super) fn daemon_under_writers(_: &TestContext) -> TestResult {
    let others = other_cpus(3, "two writers, the daemon's CPU, and this one")?;
    if let Some(cpu) = daemon::running_on() {
        skip!("the daemon already runs (on CPU {cpu}, thp_daemon=on): it must start from stopped");
    }
    let before = accounted();
    let mut env = Env::new()?;
    let mm = env.mm;
    let s = env.space()?;
    let with_1g = mm.max_leaf() == PageSize::Size1G && free_1g_blocks() >= 1;
    env.map(&s, SMALL, RANGES * M2, private(HugePolicy::Always))?;
    env.map(&s, FILLER, G1, private(HugePolicy::Never))?;
    let last = RANGES - 1;
    scattered(&env, &s, (SMALL, RANGES * M2, FILLER), |i| {
        i / 512 == last && MISSING.contains(&(i % 512))
    })?;
    if with_1g {
        gigabyte(&env, &s)?;
    }
    check_eq!(mm.unmap(&s, FILLER, G1), Ok(()));
    check!(!all_huge(&s, false), "huge before the daemon ran");
    let mut pages: Vec<u64> = (0..RANGES)
        .flat_map(|i| [0, 1, 255, 511].map(|p| SMALL + i * M2 + p * K4))
        .collect();
    if with_1g {
        pages.extend([
            GIGA,
            GIGA + 511 * K4,
            GIGA + M2,
            GIGA + 255 * M2,
            GIGA + G1 - K4,
        ]);
    }
    // The daemon goes to the highest CPU other than this one; the writers to the others.
    let daemon_cpu = others.iter().copied().max().unwrap_or(0);
    let writer_cpus: Vec<u32> = others
        .iter()
        .copied()
        .filter(|&c| c != daemon_cpu)
        .take(2)
        .collect();
    let mut helpers: Helpers<Writer> = Helpers::default();
    for (k, &cpu) in writer_cpus.iter().enumerate() {
        let w = Writer::new(s.clone(), k as u64 + 1, &pages);
        helpers.start(cpu, move |stop| w.run(stop))?;
    }
    let stat = mm.vmstat();
    let totals = daemon::totals();
    let tuning = daemon::tuning();
    check!(tuning.is_ok(), "{tuning:?}");
    let started = daemon::start();
    check_eq!(started, Ok(daemon_cpu));
    let result = watch(mm, &s, with_1g, daemon_cpu);
    let stopped = daemon::stop();
    let mut writers = helpers.finish();
    let retuned = tuning.and_then(daemon::retune);
    result?;
    check_eq!(retuned, Ok(()));
    let stopped = stopped.map_err(|e| super::super::fail(alloc::format!("stop: {e}")))?;
    check_eq!(daemon::stop(), Err(DaemonError::NotRunning));
    check_eq!(daemon::running_on(), None);
    for w in writers.iter_mut() {
        w.verify();
    }
    let (updates, errors, first) = load::totals(&writers);
    let d = mm.vmstat().since(&stat);
    sprint!(
        "(daemon on CPU {daemon_cpu}: {} steps, {} pages scanned, {} promoted to 2 MiB, {} to 1 GiB{}; writers on CPUs {writer_cpus:?}: {updates} updates, {errors} errors) ",
        stopped.steps - totals.steps,
        stopped.scanned - totals.scanned,
        stopped.promoted_2m - totals.promoted_2m,
        stopped.promoted_1g - totals.promoted_1g,
        if with_1g { "" } else { "; no 1 GiB part: no 1 GiB pages or no free 1 GiB block" },
    );
    check!(errors == 0, "{errors} word errors, first: {first:?}");
    check!(all_huge(&s, with_1g), "not huge after the daemon ran");
    check!(stopped.promoted_2m - totals.promoted_2m >= RANGES);
    check!(!with_1g || stopped.promoted_1g > totals.promoted_1g);
    check!(d.get(Event::DaemonScans) > 0 && d.get(Event::Promote2m) >= RANGES);
    check!(mm.rmap_audit().is_ok(), "{:?}", mm.rmap_audit());
    drop(writers);
    env.teardown()?;
    audits(mm)?;
    check_eq!(accounted(), before);
    Ok(())
}

/// While the daemon runs: the refusals, then wait until everything is huge.
fn watch(mm: &KernelMm, space: &Space, with_1g: bool, cpu: u32) -> Result<(), TestError> {
    refusals(cpu)?;
    let deadline = Deadline::after_ms(HUGE_WITHIN_MS);
    while !all_huge(space, with_1g) {
        check!(
            !deadline.expired(),
            "not huge within {HUGE_WITHIN_MS} ms: {:?}",
            mm.vmstat().json()
        );
        crate::arch::timer::delay_us(10_000);
    }
    Ok(())
}
