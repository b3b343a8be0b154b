//! The demonstration's last step: the VMAs just made contiguous are mapped by 2 MiB and
//! 1 GiB leaves through the synchronous collapse (in place: they are contiguous, so
//! nothing is copied), one fully resident range at a time (a range with missing pages
//! is left as it is rather than faulted in). Prints a `LEAVES {json}` line per VMA before
//! and after, a table of the translation entries each needs, and the `VMSTAT` line.

use super::scenario::Built;
use crate::sprintln;
use alloc::vec::Vec;
use mm::base::addr::PageSize;
use mm::ops::huge::collapse::{CollapseMethod, CollapseOptions, CollapseTarget};
use mm::ops::huge::leaves::LeafReport;

/// Collapse every fully resident 2 MiB range of each demo VMA, then every aligned 1 GiB
/// whose ranges all became huge; print the reports. Returns the number of ranges whose
/// collapse failed (shared-region pages, which are not promoted yet, and pinned ones).
pub fn run(built: &Built) -> usize {
    let Some(mm) = super::mm() else {
        return 0;
    };
    let leaves = |phase: &str| -> Vec<(char, LeafReport)> {
        let mut out = Vec::new();
        for v in &built.plan.vmas {
            let space = &built.spaces[v.space];
            if let Some(r) = mm
                .leaf_reports(space)
                .into_iter()
                .find(|r| r.start <= v.start && v.start < r.end)
            {
                sprintln!("LEAVES {}", r.json(phase));
                out.push((v.letter, r));
            }
        }
        out
    };
    let before = leaves("before");
    let (m2, g1) = (PageSize::Size2M.bytes(), PageSize::Size1G.bytes());
    let mut failed = 0;
    for v in &built.plan.vmas {
        let space = &built.spaces[v.space];
        let resident: Vec<u64> = space
            .leaves()
            .iter()
            .map(|(va, _)| va.as_u64())
            .filter(|&va| va >= v.start && va < v.end())
            .collect();
        let full = |at: u64| {
            resident
                .iter()
                .filter(|&&va| va >= at && va < at + m2)
                .count()
                == 512
        };
        for (size, step) in [(CollapseTarget::Size2M, m2), (CollapseTarget::Size1G, g1)] {
            let opts = CollapseOptions {
                target: size,
                method: CollapseMethod::InPlace,
            };
            let mut at = v.start.next_multiple_of(step);
            while at + step <= v.end() {
                let whole = step == g1
                    || full(at)
                    || space
                        .translate(at)
                        .is_some_and(|t| t.size != PageSize::Size4K);
                if whole
                    && (step == m2
                        || (at..at + g1).step_by(m2 as usize).all(|r| {
                            space
                                .translate(r)
                                .is_some_and(|t| t.size >= PageSize::Size2M)
                        }))
                {
                    if let Ok(out) = mm.collapse(space, at, step, &opts) {
                        failed += out.iter().filter(|o| o.result.is_err()).count();
                    }
                }
                at += step;
            }
        }
    }
    let after = leaves("after");
    sprintln!("translation entries per VMA (one per leaf), before -> after the collapse:");
    sprintln!("VMA      entries before -> after    4 KiB   2 MiB   1 GiB");
    let (mut tb, mut ta) = (0, 0);
    for ((letter, b), (_, a)) in before.iter().zip(&after) {
        sprintln!(
            "{letter}   {:>14} -> {:<10} {:>7} {:>7} {:>7}",
            b.entries(),
            a.entries(),
            a.leaves_4k,
            a.leaves_2m,
            a.leaves_1g
        );
        tb += b.entries();
        ta += a.entries();
    }
    sprintln!("all {tb:>14} -> {ta:<10} ({failed} ranges refused: shared-region or pinned pages)");
    sprintln!("VMSTAT {}", mm.vmstat().json());
    failed
}
