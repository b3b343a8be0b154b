//! The snapshot of physical memory the anchor search scores windows on: each frame of a
//! range classified as free, movable in-use, blocked (kernel, reserved, unmovable,
//! pinned) or claimed by another VMA's window. Read without locks, block by block (a
//! block's head says what all its frames are) and stored as runs, so it costs one look
//! per block and one word operation per 64 frames of a run, not one step per frame; the
//! moves that follow re-check everything under the engine's locks.

use crate::aspace::Mm;
use crate::backend::phys::PhysMem;
use crate::base::addr::Pfn;
use crate::frame::meta::{FrameFlags, FrameMeta, FrameState, FrameTable};
use crate::mapping::claims::ClaimId;
use crate::ops::contig::anchor::{FrameClass, Painter, PhysView};

/// What an allocated block (its head's metadata) is to the anchor search.
#[inline]
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
        self.phys_view_with(lo, hi, own, &[])
    }

    /// Classify `[lo, hi)`; windows of claims other than `own`, and `extra`, are
    /// `Claimed`. One step per block (consecutive blocks of one class painted as one run)
    /// and per claimed window, plus one per 64 frames of each.
    pub(crate) fn phys_view_with(
        &self,
        lo: Pfn,
        hi: Pfn,
        own: Option<ClaimId>,
        extra: &[(Pfn, Pfn)],
    ) -> PhysView {
        let table = self.table;
        let reserved = self.reserved_runs();
        let mut painter = Painter::new(lo, hi);
        // Consecutive blocks of one class, gathered here: most memory is runs of small
        // blocks of one class, and the painter then takes one call per run.
        let mut run: Option<(Pfn, Pfn, FrameClass)> = None;
        let mut at = lo;
        while at < hi {
            let (end, class) = block_at(&table, reserved, at, hi);
            match &mut run {
                Some((_, e, c)) if *c == class => *e = end,
                run => {
                    if let Some((s, e, c)) = run.replace((at, end, class)) {
                        painter.paint(s, e, c);
                    }
                }
            }
            at = end;
        }
        if let Some((s, e, c)) = run {
            painter.paint(s, e, c);
        }
        for (a, b, _) in self
            .claims()
            .ranges()
            .filter(|&(a, b, owner)| Some(owner) != own && b > lo && a < hi)
        {
            painter.paint(a, b, FrameClass::Claimed);
        }
        for &(a, b) in extra {
            painter.paint(a, b, FrameClass::Claimed);
        }
        painter.finish()
    }
}

/// Where the block (or the run of reserved frames, from `reserved`, the runs the memory
/// manager listed) containing `pfn` ends, at most `hi`, and its class. Read without
/// locks: a block changing meanwhile is misread at worst, and the end is always past
/// `pfn`.
#[inline]
fn block_at(
    table: &FrameTable<'_>,
    reserved: &[(Pfn, Pfn)],
    pfn: Pfn,
    hi: Pfn,
) -> (Pfn, FrameClass) {
    let Some(meta) = table.get(pfn) else {
        return (hi, FrameClass::Blocked);
    };
    let (end, class) = match meta.state() {
        FrameState::Reserved => {
            let listed = reserved
                .get(reserved.partition_point(|&(_, end)| end <= pfn))
                .filter(|&&(start, _)| start <= pfn);
            let mut end = listed.map_or(pfn.add(1), |&(_, end)| end);
            while end < hi
                && table
                    .get(end)
                    .is_some_and(|m| m.state() == FrameState::Reserved)
            {
                end = end.add(1);
            }
            (end, FrameClass::Blocked)
        }
        FrameState::Free => (pfn.add(1 << meta.order()), FrameClass::Free),
        FrameState::Allocated => (pfn.add(1 << meta.order()), block_class(meta)),
        FrameState::Tail => match table.head_of(pfn).and_then(|h| Some((h, table.get(h)?))) {
            Some((h, head)) => (
                h.add(1 << head.order()),
                match head.state() {
                    FrameState::Free => FrameClass::Free,
                    FrameState::Allocated => block_class(head),
                    _ => FrameClass::Blocked,
                },
            ),
            None => (pfn.add(1), FrameClass::Blocked),
        },
    };
    (end.max(pfn.add(1)).min(hi.max(pfn.add(1))), class)
}

#[cfg(test)]
mod tests;
