//! In-kernel tests of timer calibration: every TSC source this machine has agrees with
//! the one in use, and a counter that does not move, or a count of zero, is an error,
//! never a frequency of zero.

use super::{
    hpet, measure_against, measure_against_pit, median_against, pm_timer, tsc_hz, tsc_hz_from,
    ReadCounter, Reference, TimerError, TscSource,
};
use crate::harness::{KernelTest, TestContext, TestResult};
use crate::{check, check_eq, skip};
use alloc::vec::Vec;

/// The tests of this module.
pub const TESTS: &[KernelTest] = &[
    KernelTest {
        name: "timer::tsc_sources_agree",
        run: sources_agree,
    },
    KernelTest {
        name: "timer::zero_or_stuck_calibration_is_an_error",
        run: zero_is_an_error,
    },
];

/// Most a source may differ from the frequency in use, in parts per thousand. Each
/// source is measured as calibration measures it (paired reads, then the median of
/// rounds), which keeps QEMU on a shared host within a few parts per
/// million; a wrong period or unit is off by far more.
const TOLERANCE_PER_MILLE: u64 = 10;

fn sources_agree(_: &TestContext) -> TestResult {
    let rsdp = crate::mem::boot_memory().rsdp;
    let mut found: Vec<(TscSource, u64)> = Vec::new();
    if let Some(hz) = crate::arch::cpuid::features().tsc_hz {
        found.push((TscSource::Cpuid, hz));
    }
    for r in [
        hpet(rsdp, &|pa, len| crate::mem::map_mmio(pa, len).ok()),
        pm_timer(rsdp),
    ]
    .into_iter()
    .flatten()
    {
        let hz = median_against(&r);
        check!(hz.is_ok(), "measuring against {:?}: {hz:?}", r.source);
        found.extend(hz.ok().map(|hz| (r.source, hz)));
    }
    let pit = measure_against_pit();
    check!(pit.is_ok(), "measuring against the PIT: {pit:?}");
    found.extend(pit.ok().map(|hz| (TscSource::Pit, hz)));
    if found.len() < 2 {
        skip!("only {found:?} measures the TSC here: nothing to compare");
    }
    let used = tsc_hz();
    for &(source, hz) in &found {
        let off = hz.abs_diff(used) * 1000 / used;
        check!(
            off <= TOLERANCE_PER_MILLE,
            "{source:?} says {hz} Hz, the kernel uses {used} Hz ({off} per mille off; sources {found:?})"
        );
    }
    crate::sprint!("({found:?}) ");
    Ok(())
}

fn zero_is_an_error(_: &TestContext) -> TestResult {
    check_eq!(tsc_hz_from(0, 1000, 1_000_000), Err(TimerError::TscStopped));
    check_eq!(
        tsc_hz_from(1000, 0, 1_000_000),
        Err(TimerError::ReferenceStopped)
    );
    check_eq!(
        tsc_hz_from(1000, 1000, 0),
        Err(TimerError::ReferenceStopped)
    );
    check_eq!(
        tsc_hz_from(1, 1_000_000, 1000),
        Err(TimerError::Implausible(0))
    );
    check_eq!(tsc_hz_from(2_000_000, 1000, 1_000_000), Ok(2_000_000_000));
    static STUCK: u64 = 42;
    let stuck = Reference {
        source: TscSource::Hpet,
        hz: 1_000_000,
        mask: u64::MAX,
        read: ReadCounter::Mmio(&raw const STUCK, true),
    };
    check_eq!(measure_against(&stuck), Err(TimerError::ReferenceStopped));
    Ok(())
}
