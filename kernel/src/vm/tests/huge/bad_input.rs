//! Bad input to collapse, promotion and split: typed answers that change nothing.
//!
//! Collapse (`MADV_COLLAPSE` semantics) clamps a range to huge alignment (an unaligned
//! range with no whole 2 MiB range inside gives no outcome and faults nothing), goes VMA
//! by VMA (a range partly unmapped, or a VMA cut by an unmapped page, gives outcomes only
//! for the whole 2 MiB ranges inside VMAs), refuses a never-huge VMA per range
//! (`Invalid`), a range with a pinned page (`Busy`), and a kernel, non-canonical, empty
//! or unaligned range, or a destroyed space, as a whole. Promotion and split refuse
//! sizes, alignment and holes, typed.

use super::super::{
    activate, audits, fail, fill, intact, private, snapshot, Env, Space, BASE, G1, K4, M2,
};
use super::{accounted, leaf};
use crate::harness::{TestContext, TestResult};
use crate::{check, check_eq, sprint};
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;
use mm::aspace::SpaceError;
use mm::base::addr::PageSize;
use mm::mapping::vma::HugePolicy;
use mm::ops::huge::collapse::{
    CollapseFailure, CollapseMethod, CollapseOptions, CollapseTarget, Collapsed, RangeOutcome,
};
use mm::ops::huge::HugeError;

fn opts(method: CollapseMethod) -> CollapseOptions {
    CollapseOptions {
        target: CollapseTarget::Size2M,
        method,
    }
}

/// Fault every 4 KiB page of `[va, va + len)` in (4 KiB leaves in an on-request VMA).
fn fault_4k(env: &Env, space: &Space, va: u64, len: u64) -> TestResult {
    for i in 0..len / K4 {
        let r = env.mm.handle_fault(space, va + i * K4, true);
        check!(r.is_ok(), "fault {:#x}: {r:?}", va + i * K4);
    }
    Ok(())
}

/// What collapse says of one range.
type Outcome = Result<Collapsed, (CollapseFailure, HugeError)>;

/// The results of `outcomes` with their starts.
fn results(outcomes: &[RangeOutcome]) -> Vec<(u64, Outcome)> {
    outcomes.iter().map(|o| (o.start, o.result)).collect()
}

pub(super) fn bad_collapse(_: &TestContext) -> TestResult {
    let before = accounted();
    let mut env = Env::new()?;
    let mm = env.mm;
    let s = env.space()?;
    let (empty, half, holed, never, pinned) =
        (BASE, BASE + G1, BASE + 2 * G1, BASE + 3 * G1, BASE + 4 * G1);
    let on_request = || private(HugePolicy::OnRequest);
    env.map(&s, empty, 2 * M2, on_request())?;
    env.map(&s, half, M2, on_request())?;
    env.map(&s, holed, M2, on_request())?;
    env.map(&s, never, M2, private(HugePolicy::Never))?;
    env.map(&s, pinned, M2, on_request())?;
    fault_4k(&env, &s, half, M2)?;
    fault_4k(&env, &s, holed, M2)?;
    env.populate(&s, never, M2)?;
    fault_4k(&env, &s, pinned, M2)?;
    check_eq!(mm.unmap(&s, holed + 100 * K4, K4), Ok(()));
    check_eq!(activate(&s), Ok(()));
    for (i, &va) in [half, holed, never, pinned].iter().enumerate() {
        check!(fill(va, PageSize::Size4K, i as u64), "filling {va:#x}");
    }
    let auto = opts(CollapseMethod::Auto);
    let snap = snapshot(&s, &[]);
    let mut typed = 0;

    // Unaligned, no whole 2 MiB range inside: nothing, not even a fault.
    check_eq!(
        mm.collapse(&s, empty + K4, M2, &auto).map(|o| o.len()),
        Ok(0)
    );
    // Unmapped beyond the first VMA, and a VMA cut in two by an unmapped page: outcomes
    // only for whole 2 MiB ranges inside VMAs, none here.
    check_eq!(mm.collapse(&s, holed, M2, &auto).map(|o| o.len()), Ok(0));
    check_eq!(
        mm.collapse(&s, holed - M2, 3 * M2, &auto).map(|o| o.len()),
        Ok(0)
    );
    // A never-huge VMA: refused, per range.
    let out = mm.collapse(&s, never, M2, &auto).map(|o| results(&o));
    check_eq!(
        out,
        Ok(vec![(
            never,
            Err((CollapseFailure::Invalid, HugeError::NeverHuge))
        )])
    );
    typed += 1;
    // Refused as a whole.
    let whole = [
        (0xFFFF_8000_0000_0000, M2, SpaceError::KernelHalf),
        (0x0000_8000_0000_0000, M2, SpaceError::NonCanonical),
        (0x0000_7FFF_FFE0_0000, 2 * M2, SpaceError::NonCanonical),
        (half, 0, SpaceError::ZeroLength),
        (half + 8, M2, SpaceError::Unaligned),
    ];
    for (start, len, e) in whole {
        check_eq!(mm.collapse(&s, start, len, &auto).err(), Some(e));
        typed += 1;
    }
    // Promotion and split: sizes, alignment, holes.
    check_eq!(
        mm.promote(&s, half, PageSize::Size4K),
        Err(HugeError::BadSize)
    );
    check_eq!(
        mm.promote(&s, half + K4, PageSize::Size2M),
        Err(HugeError::Unaligned)
    );
    check_eq!(
        mm.promote(&s, never, PageSize::Size2M),
        Err(HugeError::NeverHuge)
    );
    check_eq!(
        mm.promote(&s, half, PageSize::Size1G),
        Err(HugeError::NotMapped)
    );
    check_eq!(
        mm.promote(&s, BASE + 5 * G1, PageSize::Size2M),
        Err(HugeError::NotMapped)
    );
    check!(
        matches!(
            mm.promote(&s, holed, PageSize::Size2M),
            Err(HugeError::NotMapped)
        ),
        "promotion across a hole"
    );
    check_eq!(mm.split_huge(&s, half), Err(HugeError::BadSize));
    check_eq!(mm.split_huge(&s, BASE + 5 * G1), Err(HugeError::NotMapped));
    typed += 8;
    check_eq!(snapshot(&s, &[]), snap);

    // A pinned page: transient, whatever the method; the data stays.
    let pin = mm.pin(&s, pinned + 9 * K4);
    check!(pin.is_ok(), "pin: {pin:?}");
    let pin = pin.unwrap_or(mm::base::addr::Pfn(0));
    let at = leaf(&s, pinned + 9 * K4);
    for method in [
        CollapseMethod::Auto,
        CollapseMethod::InPlace,
        CollapseMethod::Copy,
    ] {
        let out = mm
            .collapse(&s, pinned, M2, &opts(method))
            .map(|o| results(&o));
        check!(
            matches!(out.as_deref(), Ok([(start, Err((CollapseFailure::Busy, _)))]) if *start == pinned),
            "{method:?} with a pinned page: {out:?}"
        );
        check_eq!(leaf(&s, pinned + 9 * K4), at);
        check!(
            intact(pinned, PageSize::Size4K, 3),
            "the pinned range lost data"
        );
        typed += 1;
    }
    check_eq!(mm.unpin(pin), Ok(()));
    let out = mm.collapse(&s, pinned, M2, &auto).map(|o| results(&o));
    check!(
        matches!(out.as_deref(), Ok([(_, Ok(_))])),
        "unpinned, it collapses: {out:?}"
    );
    check_eq!(leaf(&s, pinned).map(|l| l.0), Some(PageSize::Size2M));
    check!(
        intact(pinned, PageSize::Size4K, 3),
        "the collapse lost data"
    );
    for (i, &va) in [half, holed, never].iter().enumerate() {
        check!(intact(va, PageSize::Size4K, i as u64), "{va:#x} lost data");
    }
    // A destroyed space.
    let gone = mm
        .new_space()
        .map_err(|e| fail(format!("new_space: {e}")))?;
    check_eq!(mm.destroy_space(&gone), Ok(()));
    check_eq!(
        mm.collapse(&gone, BASE, M2, &auto).err(),
        Some(SpaceError::SpaceDestroyed)
    );
    typed += 1;
    sprint!("({typed} typed refusals) ");
    check!(mm.rmap_audit().is_ok(), "{:?}", mm.rmap_audit());
    env.teardown()?;
    audits(mm)?;
    check_eq!(accounted(), before);
    Ok(())
}
