//! A split followed by a promotion returns to the very same mapping: the same leaf size
//! at the same physical base, the data in place, the frame metadata and reverse map as
//! before (one compound block mapped once), both audits clean after every step, and the
//! event counters counting each step once.

use super::super::{activate, audits, available, block_at, read, value, write, Env, BASE, K4};
use super::{huge_page, leaf, need_1g};
use crate::harness::{TestContext, TestResult};
use crate::{check, check_eq, sprint};
use alloc::vec::Vec;
use mm::aspace::vmstat::Event;
use mm::base::addr::{PageSize, Pfn};

/// Split + promotion cycles of each test.
const CYCLES: u64 = 3;

/// Words checked: four in each 4 KiB page of `pages`.
fn words(pages: &[u64]) -> Vec<u64> {
    pages
        .iter()
        .flat_map(|&p| [p, p + 8, p + 2048, p + K4 - 8])
        .collect()
}

fn same_mapping(size: PageSize) -> TestResult {
    let before = available();
    let mut env = Env::new()?;
    let mm = env.mm;
    let s = env.space()?;
    let pa = huge_page(&env, &s, BASE, size)?;
    check_eq!(activate(&s), Ok(()));
    let child = size.smaller().unwrap_or(PageSize::Size4K);
    let c = child.bytes();
    let checked = words(&[
        BASE,
        BASE + c,
        BASE + 300 * c + 5 * K4,
        BASE + 511 * c + c - K4,
    ]);
    for (i, &w) in checked.iter().enumerate() {
        check!(write(w, value(7, i as u64, 0)), "writing {w:#x}");
    }
    let intact = || {
        checked
            .iter()
            .enumerate()
            .all(|(i, &w)| read(w) == Some(value(7, i as u64, 0)))
    };
    let head = block_at(&s, BASE).map(|(h, _)| h);
    check!(head.is_some(), "no block at {BASE:#x}");
    let head = head.unwrap_or(Pfn(0));
    check_eq!(mm.rmap_of(head).len(), 1);
    let stat = mm.vmstat();
    for n in 0..CYCLES {
        // Split through an address inside the page, not its first byte.
        check_eq!(mm.split_huge(&s, BASE + (n + 1) * c + 8), Ok(child));
        check_eq!(leaf(&s, BASE + 77 * c), Some((child, pa + 77 * c)));
        check_eq!(mm.rmap_of(head).len(), 1);
        check!(intact(), "data moved or lost by the split");
        audits(mm)?;
        if size == PageSize::Size1G {
            // One level further down and back, inside the gigabyte.
            let inner = BASE + 300 * c;
            check_eq!(mm.split_huge(&s, inner), Ok(PageSize::Size4K));
            check_eq!(
                leaf(&s, inner + 5 * K4),
                Some((PageSize::Size4K, pa + 300 * c + 5 * K4))
            );
            check_eq!(mm.promote(&s, inner, PageSize::Size2M), Ok(()));
            check_eq!(leaf(&s, inner), Some((PageSize::Size2M, pa + 300 * c)));
            audits(mm)?;
        }
        check_eq!(mm.promote(&s, BASE, size), Ok(()));
        check_eq!(leaf(&s, BASE), Some((size, pa)));
        check_eq!(block_at(&s, BASE + c + 8).map(|(h, _)| h), Some(head));
        check_eq!(mm.rmap_of(head).len(), 1);
        check!(intact(), "data moved or lost by the promotion");
        audits(mm)?;
    }
    let d = mm.vmstat().since(&stat);
    let (promote, split) = match size {
        PageSize::Size1G => (Event::Promote1g, Event::Split1g),
        _ => (Event::Promote2m, Event::Split2m),
    };
    check_eq!((d.get(promote), d.get(split)), (CYCLES, CYCLES));
    check_eq!(d.get(Event::PromoteFailed), 0);
    sprint!("({CYCLES} splits and promotions of the {size:?} page at {pa:#x}, back each time) ");
    env.teardown()?;
    audits(mm)?;
    check_eq!(available(), before);
    Ok(())
}

pub(super) fn same_mapping_2m(_: &TestContext) -> TestResult {
    same_mapping(PageSize::Size2M)
}

pub(super) fn same_mapping_1g(_: &TestContext) -> TestResult {
    need_1g(1)?;
    same_mapping(PageSize::Size1G)
}
