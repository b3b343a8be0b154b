//! The goals of the scenario, checked on what contiguity generation reported and what the
//! data check and the audits found; each unmet goal is one [`Failure`].
//!
//! Per VMA, with `r` its resident run and `c` its chunks afterwards:
//!
//! - without pinned pages: `chunks_99 <= ceil(size / 1 GiB) + 1`;
//! - with `k` pinned pages: `chunks <= 2k + 1`;
//! - aligned for huge mappings: `aligned_2m >= A - (c - 1)`, where `A` is the number of
//!   2 MiB-aligned virtual ranges inside `r` (what one chunk congruent modulo 2 MiB
//!   gives) and each of the `c - 1` chunk boundaries can cut at most one of them; the
//!   same for `aligned_1g` where 1 GiB leaves are allowed;
//! - `moved() <= 1.05 * misplaced`, no absolute slack;
//! - of the shared region's two mappings, the one made contiguous second moves nothing
//!   when the first was placed completely (its pages are already at their targets);
//! - `frames_allocated_by_exchange == 0`, the call complete, the resident pages the ones
//!   faulted in.
//!
//! Then every page's data, the reverse-map audit and the allocator audit.

use super::data::Damage;
use super::plan::{Kind, Plan, VmaPlan, G1, K4, M2};
use super::{Failure, VmaOutcome};
use alloc::vec::Vec;
use mm::base::addr::PageSize;

/// The limit on a VMA's chunks and whether it applies to `chunks` (pinned) rather than
/// `chunks_99`.
pub fn chunk_limit(plan: &Plan, index: usize) -> (u64, bool) {
    if index == plan.pinned_vma {
        (2 * plan.pinned.len() as u64 + 1, true)
    } else {
        (plan.vmas[index].len.div_ceil(G1) + 1, false)
    }
}

/// Aligned ranges of `bytes` inside the resident run of `v`.
fn aligned_inside(v: &VmaPlan, bytes: u64) -> u64 {
    let from = (v.start + v.resident.0 * K4).next_multiple_of(bytes);
    let to = (v.start + v.resident.1 * K4) / bytes * bytes;
    to.saturating_sub(from) / bytes
}

/// Check one VMA's report against its goals.
fn vma_goals(plan: &Plan, index: usize, o: &VmaOutcome, big_leaves: bool, out: &mut Vec<Failure>) {
    let v = &plan.vmas[index];
    let letter = v.letter;
    let r = match &o.result {
        Ok(r) => r,
        Err(error) => {
            out.push(Failure::Refused {
                letter,
                error: *error,
            });
            return;
        }
    };
    let (limit, all_chunks) = chunk_limit(plan, index);
    let chunks = if all_chunks {
        r.after.chunks
    } else {
        r.after.chunks_99
    };
    if chunks > limit {
        out.push(Failure::Chunks {
            letter,
            chunks,
            limit,
            all: all_chunks,
        });
    }
    let cuts = r.after.chunks.saturating_sub(1);
    let want_2m = aligned_inside(v, M2).saturating_sub(cuts);
    if r.after.aligned_2m < want_2m {
        out.push(Failure::Aligned {
            letter,
            size: PageSize::Size2M,
            got: r.after.aligned_2m,
            want: want_2m,
        });
    }
    let want_1g = aligned_inside(v, G1).saturating_sub(cuts);
    if big_leaves && r.after.aligned_1g < want_1g {
        out.push(Failure::Aligned {
            letter,
            size: PageSize::Size1G,
            got: r.after.aligned_1g,
            want: want_1g,
        });
    }
    if r.moved() * 100 > r.misplaced * 105 {
        out.push(Failure::Moved {
            letter,
            moved: r.moved(),
            misplaced: r.misplaced,
        });
    }
    if r.frames_allocated_by_exchange != 0 {
        out.push(Failure::ExchangeAllocated {
            letter,
            frames: r.frames_allocated_by_exchange,
        });
    }
    if !r.complete {
        out.push(Failure::Incomplete { letter });
    }
    let resident = v.resident_pages();
    if r.before.resident_pages != resident || r.after.resident_pages != resident {
        out.push(Failure::Resident {
            letter,
            before: r.before.resident_pages,
            after: r.after.resident_pages,
            want: resident,
        });
    }
    let pinned = if index == plan.pinned_vma {
        plan.pinned.len() as u64
    } else {
        0
    };
    if r.pinned != pinned {
        out.push(Failure::Pinned {
            letter,
            got: r.pinned,
            want: pinned,
        });
    }
    // A 2 MiB VMA whose faults fell back to 4 KiB pages would not show what it claims.
    if v.kind == Kind::Huge && r.before.aligned_2m != resident / 512 {
        out.push(Failure::NotHuge {
            letter,
            blocks: r.before.aligned_2m,
            want: resident / 512,
        });
    }
}

/// The shared region is placed once: when the mapping of it made contiguous first was
/// placed completely, the second moves nothing.
fn shared_goal(plan: &Plan, outcomes: &[VmaOutcome], out: &mut Vec<Failure>) {
    let mut shared = outcomes.iter().filter(|o| {
        matches!(
            plan.vmas[o.index].kind,
            Kind::SharedFirst | Kind::SharedSecond
        )
    });
    let (Some(first), Some(second)) = (shared.next(), shared.next()) else {
        return;
    };
    let (Ok(a), Ok(b)) = (&first.result, &second.result) else {
        return;
    };
    if a.complete && a.failed == 0 && b.moved() > 0 {
        out.push(Failure::SharedMovedAgain {
            letter: plan.vmas[second.index].letter,
            moved: b.moved(),
        });
    }
}

/// What the checks look at besides the reports.
pub struct Findings {
    /// The data check.
    pub damage: Damage,
    /// The reverse-map audit's complaint, if any.
    pub rmap: Option<alloc::string::String>,
    /// The allocator audit's complaint, if any.
    pub allocator: Option<alloc::string::String>,
    /// Whether 1 GiB leaves are allowed (then 1 GiB alignment is a goal too).
    pub big_leaves: bool,
}

/// Every unmet goal.
pub fn check(plan: &Plan, outcomes: &[VmaOutcome], found: &Findings) -> Vec<Failure> {
    let mut out = Vec::new();
    for o in outcomes {
        vma_goals(plan, o.index, o, found.big_leaves, &mut out);
    }
    shared_goal(plan, outcomes, &mut out);
    if found.damage.bad > 0 {
        out.push(Failure::Data(found.damage));
    }
    if let Some(why) = &found.rmap {
        out.push(Failure::RmapAudit(why.clone()));
    }
    if let Some(why) = &found.allocator {
        out.push(Failure::AllocatorAudit(why.clone()));
    }
    out
}
