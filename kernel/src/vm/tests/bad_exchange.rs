//! Bad input to exchange: blocks of different sizes, a block with itself, a kernel frame,
//! a free frame, a pinned and an unmovable block, a tail frame, a frame outside memory.
//! Each is refused with its typed error and leaves both blocks exactly as they were
//! (mappings, reverse map, contents, free frames); in a batch, a refused pair does not
//! stop the good ones.

use super::{
    activate, audits, available, block_at, fill, intact, private, snapshot, Env, BASE, G1, K4, M2,
};
use crate::harness::{TestContext, TestResult};
use crate::mem::frames;
use crate::{check, check_eq, sprint};
use alloc::vec::Vec;
use mm::backend::source::FrameSource;
use mm::base::addr::{PageSize, Pfn};
use mm::frame::buddy::MigrateType;
use mm::mapping::vma::{HugePolicy, Mobility, VmaFlags};
use mm::ops::migrate::MigrateError;

pub(super) fn bad_exchange(_: &TestContext) -> TestResult {
    let before = available();
    let mut env = Env::new()?;
    let mm = env.mm;
    let s = env.space()?;
    let (small, huge, fixed) = (BASE, BASE + G1, BASE + 2 * G1);
    env.map(&s, small, 4 * K4, private(HugePolicy::Never))?;
    env.map(&s, huge, M2, private(HugePolicy::Always))?;
    let unmovable = VmaFlags {
        mobility: Mobility::Pinned,
        ..private(HugePolicy::Never)
    };
    env.map(&s, fixed, K4, unmovable)?;
    env.populate(&s, small, 4 * K4)?;
    env.populate(&s, huge, M2)?;
    env.populate(&s, fixed, K4)?;
    check_eq!(activate(&s), Ok(()));
    let pages: Vec<(u64, PageSize)> = (0..4)
        .map(|i| (small + i * K4, PageSize::Size4K))
        .chain([(huge, PageSize::Size2M), (fixed, PageSize::Size4K)])
        .collect();
    for (i, &(va, size)) in pages.iter().enumerate() {
        check!(fill(va, size, i as u64), "filling {va:#x}");
    }
    let heads: Vec<Pfn> = pages
        .iter()
        .filter_map(|&(va, _)| block_at(&s, va).map(|(h, _)| h))
        .collect();
    check_eq!(heads.len(), pages.len());
    let (p, hh, hu) = (&heads[..4], heads[4], heads[5]);
    let kernel = frames::alloc(0, MigrateType::Unmovable);
    check!(kernel.is_ok(), "{kernel:?}");
    let kernel = kernel.unwrap_or(Pfn(0));
    let free = frames::alloc(0, MigrateType::Movable);
    check!(free.is_ok(), "{free:?}");
    let free = free.unwrap_or(Pfn(0));
    check_eq!(frames::free(free.addr(), 0), Ok(()));
    let root = Pfn::containing(s.root());
    let pinned = mm.pin(&s, small + 3 * K4);
    check_eq!(pinned, Ok(p[3]));
    let table_len = crate::vm::frames().frame_table().len() as u64;
    let cases = [
        ((p[0], hh), MigrateError::SizeMismatch),
        ((hh, p[1]), MigrateError::SizeMismatch),
        ((p[0], p[0]), MigrateError::SameBlock),
        ((hh, hh), MigrateError::SameBlock),
        ((p[0], kernel), MigrateError::NotInUse),
        ((root, p[0]), MigrateError::NotInUse),
        ((free, p[0]), MigrateError::NotInUse),
        ((p[0], free), MigrateError::NotInUse),
        ((p[0], hu), MigrateError::Unmovable),
        ((p[0], p[3]), MigrateError::Pinned),
        ((p[3], p[0]), MigrateError::Pinned),
        ((p[0], hh.add(1)), MigrateError::NotHead),
        ((p[0], Pfn(table_len + 5)), MigrateError::OutOfRange),
    ];
    let allocations = crate::vm::frames().allocations();
    let snap = snapshot(&s, &heads);
    for &((x, y), want) in &cases {
        check_eq!(mm.exchange(x, y), Err(want));
        check_eq!(snapshot(&s, &heads), snap);
        for (i, &(va, size)) in pages.iter().enumerate() {
            check!(
                intact(va, size, i as u64),
                "{va:#x} changed after the refused exchange of {x:?} and {y:?} ({want:?})"
            );
        }
    }
    // In one batch: refused pairs around a good one.
    let results = mm.exchange_batch(&[(p[0], hh), (p[1], p[2]), (p[2], p[3]), (hh, hh)]);
    check_eq!(
        results,
        [
            Err(MigrateError::SizeMismatch),
            Ok(()),
            Err(MigrateError::AlreadyMigrating),
            Err(MigrateError::SameBlock),
        ]
    );
    check_eq!(block_at(&s, small + K4).map(|(h, _)| h), Some(p[2]));
    check_eq!(block_at(&s, small + 2 * K4).map(|(h, _)| h), Some(p[1]));
    check_eq!(block_at(&s, small).map(|(h, _)| h), Some(p[0]));
    check_eq!(block_at(&s, huge).map(|(h, _)| h), Some(hh));
    for (i, &(va, size)) in pages.iter().enumerate() {
        check!(intact(va, size, i as u64), "{va:#x} lost its contents");
    }
    check_eq!(crate::vm::frames().allocations(), allocations);
    check_eq!(mm.unpin(p[3]), Ok(()));
    check_eq!(frames::free(kernel.addr(), 0), Ok(()));
    sprint!(
        "({} refusals, each typed and without effect; a batch exchanged its good pair only) ",
        cases.len()
    );
    env.teardown()?;
    audits(mm)?;
    check_eq!(available(), before);
    Ok(())
}
