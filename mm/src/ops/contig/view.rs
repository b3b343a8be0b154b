//! The snapshot of physical memory the anchor search scores windows on: each frame of a
//! range classified as free, movable in-use, blocked (kernel, reserved, unmovable,
//! pinned) or claimed by another VMA's window. Read without locks, block by block (a
//! block's head says what all its frames are), so it costs one look per block; the moves
//! that follow re-check everything under the engine's locks.

use crate::aspace::Mm;
use crate::backend::phys::PhysMem;
use crate::base::addr::Pfn;
use crate::frame::meta::{FrameFlags, FrameMeta, FrameState};
use crate::mapping::claims::ClaimId;
use crate::ops::contig::anchor::{FrameClass, PhysView};
use alloc::vec::Vec;

/// What an allocated block (its head's metadata) is to the anchor search.
pub(crate) fn block_class(meta: &FrameMeta) -> FrameClass {
    let flags = meta.flags();
    if flags.contains(FrameFlags::CACHED) {
        // Free in a per-CPU cache: an exact allocation drains it.
        FrameClass::Free
    } else if meta.is_managed()
        && flags.contains(FrameFlags::MOVABLE)
        && !flags.contains(FrameFlags::PINNED)
        && meta.pincount() == 0
    {
        FrameClass::Movable
    } else {
        FrameClass::Blocked
    }
}

impl<'m, M: PhysMem> Mm<'m, M> {
    /// Classify `[lo, hi)`; windows of claims other than `own` are `Claimed`.
    pub(crate) fn phys_view(&self, lo: Pfn, hi: Pfn, own: Option<ClaimId>) -> PhysView {
        let claimed: Vec<(Pfn, Pfn)> = self
            .claims
            .lock()
            .ranges()
            .filter(|&(a, b, owner)| Some(owner) != own && b > lo && a < hi)
            .map(|(a, b, _)| (a, b))
            .collect();
        let table = self.frames.frame_table();
        let mut next_claim = 0;
        // The block the previous frame was in: its end and class.
        let mut block = (Pfn(0), FrameClass::Blocked);
        PhysView::new(lo, hi, |pfn| {
            while next_claim < claimed.len() && claimed[next_claim].1 <= pfn {
                next_claim += 1;
            }
            if claimed
                .get(next_claim)
                .is_some_and(|&(a, b)| a <= pfn && pfn < b)
            {
                return FrameClass::Claimed;
            }
            if pfn < block.0 {
                return block.1;
            }
            let Some(meta) = table.get(pfn) else {
                return FrameClass::Blocked;
            };
            let (head, head_meta) = match meta.state() {
                FrameState::Reserved => return FrameClass::Blocked,
                FrameState::Free | FrameState::Allocated => (pfn, meta),
                FrameState::Tail => match table.head_of(pfn).and_then(|h| Some((h, table.get(h)?)))
                {
                    Some(found) => found,
                    None => return FrameClass::Blocked,
                },
            };
            let class = match head_meta.state() {
                FrameState::Free => FrameClass::Free,
                FrameState::Allocated => block_class(head_meta),
                _ => FrameClass::Blocked,
            };
            block = (head.add(1u64 << head_meta.order()), class);
            class
        })
    }
}
