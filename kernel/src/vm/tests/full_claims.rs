//! Contiguity generation when the range tree of claimed windows has no room: with the
//! tree's limit set to what it holds plus one window each for a few VMAs, those VMAs are
//! made contiguous and fill it; the next VMA is refused with `NoRoom` and nothing changes
//! (its pages stay where they are with their data, no anchor, no claim, no frame taken);
//! after every VMA is unmapped the tree holds what it held before. Absurd limits are
//! refused with typed errors. The limit is put back at the end, even when a check fails.

use super::{
    activate, audits, available, deactivate, fail, private, snapshot, tag, tagged, Env, BASE, G1,
    K4,
};
use crate::harness::{TestContext, TestResult};
use crate::vm::KernelMm;
use crate::{check, check_eq, sprint};
use alloc::format;
use alloc::vec::Vec;
use mm::base::addr::Pfn;
use mm::mapping::claims::{LimitError, MAX_LIMIT};
use mm::mapping::vma::HugePolicy;
use mm::ops::contig::{ContigError, ContigOptions};

/// VMAs whose windows fill the tree, and pages of each (every VMA has one more).
const FILLING: usize = 3;
const PAGES: u64 = 256;

/// Puts the range tree's limit back when dropped.
struct LimitBack<'a> {
    mm: &'a KernelMm,
    limit: usize,
}

impl Drop for LimitBack<'_> {
    fn drop(&mut self) {
        let _ = self.mm.set_claim_limit(self.limit);
    }
}

pub(super) fn full_range_tree(_: &TestContext) -> TestResult {
    let before = available();
    let mut env = Env::new()?;
    let mm = env.mm;
    let held = mm.claimed_windows();
    let limit = mm.claim_limit();
    check_eq!(mm.set_claim_limit(0), Err(LimitError::Zero));
    check_eq!(
        mm.set_claim_limit(MAX_LIMIT + 1),
        Err(LimitError::TooLarge {
            limit: MAX_LIMIT + 1
        })
    );
    check_eq!(mm.claim_limit(), limit);
    let back = LimitBack { mm, limit };
    let small = held.1 + FILLING;
    check_eq!(mm.set_claim_limit(small), Ok(()));
    let s = env.space()?;
    let vmas: Vec<u64> = (0..=FILLING as u64).map(|i| BASE + i * G1).collect();
    for &va in &vmas {
        env.map(&s, va, PAGES * K4, private(HugePolicy::Never))?;
    }
    // Faulted a page of each in turn, so their frames interleave and every VMA has
    // pages to move.
    for p in 0..PAGES {
        for &va in &vmas {
            env.populate(&s, va + p * K4, K4)?;
        }
    }
    check_eq!(activate(&s), Ok(()));
    for (i, &va) in vmas.iter().enumerate() {
        check!(tag(va, PAGES * K4, i as u64 + 1), "tagging VMA {i}");
    }
    let opts = ContigOptions::default();
    for (i, &va) in vmas[..FILLING].iter().enumerate() {
        let r = mm
            .make_vma_contiguous(&s, va, &opts)
            .map_err(|e| fail(format!("VMA {i}: {e:?}")))?;
        check!(
            r.segments == 1 && r.failed == 0 && r.after.chunks == 1 && r.complete,
            "VMA {i}: {r:?}"
        );
    }
    let full = mm.claimed_windows();
    check_eq!(full.1, small);
    let last = vmas[FILLING];
    let heads: Vec<Pfn> = (0..PAGES)
        .filter_map(|p| super::block_at(&s, last + p * K4).map(|(h, _)| h))
        .collect();
    check_eq!(heads.len() as u64, PAGES);
    let snap = snapshot(&s, &heads);
    let got = mm.make_vma_contiguous(&s, last, &opts);
    check!(
        got.as_ref().err() == Some(&ContigError::NoRoom),
        "the VMA past the limit: {got:?}, expected NoRoom"
    );
    check_eq!(snapshot(&s, &heads), snap);
    check_eq!(mm.claimed_windows(), full);
    check!(
        s.vmas()
            .iter()
            .filter(|v| v.start == last)
            .all(|v| v.anchor.is_none()),
        "the refused VMA kept an anchor"
    );
    for (i, &va) in vmas.iter().enumerate() {
        check!(
            tagged(va, PAGES * K4, i as u64 + 1),
            "VMA {i}: contents changed"
        );
    }
    deactivate();
    for &va in &vmas {
        let r = mm.unmap(&s, va, PAGES * K4);
        check_eq!(r, Ok(()));
    }
    check_eq!(mm.claimed_windows(), held);
    drop(back);
    check_eq!(mm.claim_limit(), limit);
    env.teardown()?;
    audits(mm)?;
    check_eq!(available(), before);
    sprint!(
        "({FILLING} windows filled a tree limited to {small} ranges; the next VMA: NoRoom, \
         nothing moved or claimed) "
    );
    Ok(())
}
