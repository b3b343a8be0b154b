//! The physical windows of VMAs that go: an anchored VMA (or piece of one) that is
//! unmapped, or whose space is destroyed, gives its claimed windows back to the range
//! tree. Where such a window holds frames of a shared region that another VMA maps and
//! has anchored there too (the second mapping's pages stay on the first one's frames, so
//! its own claim could not take them), that VMA takes those frames over at once, so no
//! third VMA's window can be put over pages that are already in place. When the last
//! piece of an anchored VMA goes, everything its owner holds goes with it.

use super::{AddressSpace, Mm};
use crate::backend::phys::PhysMem;
use crate::base::addr::Pfn;
use crate::frame::meta::FrameState;
use crate::mapping::anchor::Anchor;
use crate::mapping::claims::ClaimId;
use crate::mapping::rmap::SpaceId;
use crate::mapping::vma::Vma;
use alloc::collections::BTreeSet;
use alloc::vec::Vec;

/// Blocks looked up in the reverse map per hold of its lock.
const LOOKUPS_PER_HOLD: usize = 512;

impl<'m, M: PhysMem> Mm<'m, M> {
    /// Give back the physical windows of the anchored parts of `removed` (VMAs, or
    /// pieces of VMAs, that are gone from `space`), then hand those of shared-region
    /// VMAs over to the other mappings anchored on them (see the module doc). An anchor
    /// no VMA left in the space shares (pieces of a split VMA share one) gives back
    /// everything its owner holds, not only its windows: nothing it ever claimed can
    /// outlive it.
    pub(crate) fn release_windows(&self, space: &AddressSpace<'m, M>, removed: &[Vma]) {
        let anchored: Vec<(&Vma, &Anchor)> = removed
            .iter()
            .filter_map(|v| Some((v, v.anchor.as_ref()?)))
            .collect();
        if anchored.is_empty() {
            return;
        }
        let mut shared = Vec::new();
        {
            let st = space.state.lock();
            let live: BTreeSet<ClaimId> = st
                .vmas
                .iter()
                .filter_map(|v| v.anchor.as_ref().map(|a| a.claim))
                .collect();
            let mut claims = self.claims();
            for (v, anchor) in anchored {
                let windows = anchor.windows(v.start, v.end);
                if v.flags.shared.is_some() {
                    shared.extend(anchor.windows(v.start, v.end));
                }
                if live.contains(&anchor.claim) {
                    for (first, end) in windows {
                        claims.release(first, end, anchor.claim);
                    }
                } else {
                    claims.release_owner(anchor.claim);
                }
            }
        }
        if !shared.is_empty() {
            self.hand_over_windows(&shared);
        }
    }

    /// Let every anchored VMA that maps a block inside `released` (windows just given
    /// back) claim the part of its own windows that lies there. Each VMA's windows are
    /// read and claimed under its space's lock, so a VMA unmapped meanwhile either is
    /// gone already or gives back what it claims here when its own unmap releases its
    /// windows. A part someone else claimed in between stays theirs. A VMA being
    /// re-anchored meanwhile may be handed a part of its old windows that its new
    /// anchor leaves out: that part stays its owner's until the VMA is made contiguous
    /// again (which gives back all its owner holds first) or its last piece goes.
    fn hand_over_windows(&self, released: &[(Pfn, Pfn)]) {
        let mappers = self.mappers_in(released);
        for of_one in mappers.chunk_by(|a, b| a.0 == b.0) {
            if let Some(space) = self.space(of_one[0].0) {
                self.claim_released_parts(&space, of_one.iter().map(|m| m.1), released);
            }
        }
    }

    /// Who maps a block inside `released`: (space, first address of the leaf), sorted.
    /// The reverse-map lock is taken for [`LOOKUPS_PER_HOLD`] blocks at a time, so that
    /// a gigabyte of small pages does not hold it for long.
    fn mappers_in(&self, released: &[(Pfn, Pfn)]) -> Vec<(SpaceId, u64)> {
        let table = self.table;
        let mut mappers = BTreeSet::new();
        for &(first, end) in released {
            let mut f = first;
            while f < end {
                let rmap = self.rmap.lock();
                for _ in 0..LOOKUPS_PER_HOLD {
                    let head = table.head_of(f).unwrap_or(f);
                    let Some(meta) = table.get(head) else {
                        f = end;
                        break;
                    };
                    if meta.state() == FrameState::Allocated {
                        for e in rmap.entries(head) {
                            mappers.insert((e.space, e.va.as_u64()));
                        }
                    }
                    f = head.add(1 << meta.order()).max(f.add(1));
                    if f >= end {
                        break;
                    }
                }
            }
        }
        mappers.into_iter().collect()
    }

    /// For the anchored VMAs of `space` containing one of `vas`: claim, for each, the
    /// parts of its windows inside `released`.
    fn claim_released_parts(
        &self,
        space: &AddressSpace<'m, M>,
        vas: impl Iterator<Item = u64>,
        released: &[(Pfn, Pfn)],
    ) {
        let st = space.state.lock();
        if st.dead {
            return;
        }
        let mut seen: Vec<u64> = Vec::new();
        let mut claims = self.claims();
        for va in vas {
            let Some(vma) = st.vmas.find(va) else {
                continue;
            };
            let Some(anchor) = &vma.anchor else {
                continue;
            };
            if seen.contains(&vma.start) {
                continue;
            }
            seen.push(vma.start);
            for (first, end) in anchor.windows(vma.start, vma.end) {
                for &(a, b) in released {
                    let (x, y) = (first.max(a), end.min(b));
                    if x < y {
                        // Refused only when another VMA claimed the part meanwhile, or
                        // the tree is full: the part then stays unclaimed by this VMA,
                        // as it was before the hand-over.
                        let _ = claims.claim(x, y, anchor.claim);
                    }
                }
            }
        }
    }
}
