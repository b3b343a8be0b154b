//! The picture of physical memory: a VMA's frames under its letter, a pinned page as
//! pinned, every frame counted once, the maps' sizes, and bad labels refused.

use super::{activate, block_at, private, write, Env, BASE, K4};
use crate::harness::{TestContext, TestResult};
use crate::vm::physmap::{self, PhysmapError};
use crate::{check, check_eq};
use mm::base::addr::Pfn;
use mm::mapping::vma::HugePolicy;

/// Pages of the test's VMA.
const PAGES: u64 = 16;
/// The page that gets pinned.
const PINNED: u64 = 3;

pub(super) fn classifies_frames(_: &TestContext) -> TestResult {
    let mut env = Env::new()?;
    let mm = env.mm;
    let s = env.space()?;
    let (start, end) = (BASE, BASE + PAGES * K4);
    env.map(&s, start, end - start, private(HugePolicy::Never))?;
    env.populate(&s, start, end - start)?;
    check_eq!(activate(&s), Ok(()));
    check!((0..PAGES).all(|i| write(start + i * K4, i + 1)));
    let label = [('A', &*s, start, end)];

    let p = physmap::classify(&label, "test");
    check!(p.is_ok(), "classify: {p:?}");
    let Ok(p) = p else { return Ok(()) };
    check_eq!(p.counts.total(), p.frames);
    check_eq!(p.counts.vma[0], PAGES);
    check_eq!(p.labels[0].mapped, PAGES);
    check!(p.labels[0].runs >= 1 && p.labels[0].runs <= PAGES);
    for cells in [&p.map, &p.fine] {
        check!(cells.frames_per_cell.is_power_of_two());
        check_eq!(
            cells.chars.len() as u64,
            p.frames.div_ceil(cells.frames_per_cell)
        );
    }
    check!(p.map.chars.len() as u64 <= physmap::ROW_CELLS * 32);
    let first = block_at(&s, start).map(|(head, _)| head);
    check!(first.is_some(), "the VMA's first page is not mapped");
    let first = first.unwrap_or(Pfn(0));
    let glyph = |pfn: Pfn| {
        let cell = (pfn.0 / p.fine.frames_per_cell) as usize;
        p.fine.chars.chars().nth(cell)
    };
    check!(
        matches!(glyph(first), Some('A' | 'a')),
        "the VMA's first frame is in a cell {:?}",
        glyph(first)
    );

    let pinned = mm.pin(&s, start + PINNED * K4);
    check!(pinned.is_ok(), "pin: {pinned:?}");
    let pinned = pinned.unwrap_or(Pfn(0));
    let q = physmap::classify(&label, "pinned");
    check_eq!(mm.unpin(pinned), Ok(()));
    check!(q.is_ok(), "classify: {q:?}");
    let Ok(q) = q else { return Ok(()) };
    check_eq!(q.counts.vma[0], PAGES - 1);
    check!(q.counts.pinned >= 1);
    check_eq!(q.counts.total(), q.frames);
    let cell = (pinned.0 / q.fine.frames_per_cell) as usize;
    check_eq!(q.fine.chars.chars().nth(cell), Some('!'));

    for (labels, phase, want) in [
        (
            &[('a', &*s, start, end)][..],
            "x",
            PhysmapError::BadLetter('a'),
        ),
        (
            &[('A', &*s, start, end), ('A', &*s, start, end)][..],
            "x",
            PhysmapError::RepeatedLetter('A'),
        ),
        (
            &[('B', &*s, end, start)][..],
            "x",
            PhysmapError::EmptyRange('B'),
        ),
        (&label[..], "", PhysmapError::BadPhase),
        (&label[..], "Before \"now\"", PhysmapError::BadPhase),
    ] {
        check_eq!(physmap::classify(labels, phase).map(|_| ()), Err(want));
    }
    env.teardown()
}
