//! The anchor of a VMA being made physically contiguous: where each of its pages
//! belongs. An anchor is one or more *segments*, each a virtual range `[start, end)` of
//! the VMA and the frame its first page belongs at; page `va` of a segment belongs at
//! `pfn + (va - start) / 4 KiB`. One segment is the usual case; a VMA whose pinned pages
//! sit off the line gets one segment per stretch between them (the pinned page is its
//! own segment, anchored where it is). Segments keep the virtual and physical addresses
//! congruent modulo 2 MiB (and 1 GiB where the segment spans an aligned gigabyte), so
//! that a contiguous result can be mapped by huge leaves.
//!
//! The physical windows of an anchor are claimed in the [`PhysClaims`] of the memory
//! manager under the anchor's [`ClaimId`]; a piece of the VMA that is unmapped gives its
//! share of the windows back ([`Anchor::windows`]). A VMA split (by an unmap or a
//! protect of part of it) gives both pieces a copy of the anchor, so each keeps the same
//! target line; VMAs are never merged.
//!
//! [`PhysClaims`]: crate::mapping::claims::PhysClaims

#[cfg(test)]
mod tests;

use crate::base::addr::{Pfn, PAGE_SIZE};
use crate::mapping::claims::ClaimId;
use alloc::vec::Vec;

/// One segment of an anchor (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AnchorSegment {
    /// First virtual byte of the segment (page-aligned).
    pub start: u64,
    /// One past its last byte (page-aligned).
    pub end: u64,
    /// The frame the page at `start` belongs at.
    pub pfn: Pfn,
}

impl AnchorSegment {
    /// Where the page containing `va` belongs, if `va` lies in the segment.
    pub fn target(&self, va: u64) -> Option<Pfn> {
        (self.start <= va && va < self.end).then(|| self.pfn.add((va - self.start) / PAGE_SIZE))
    }
}

/// The anchor of a VMA (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Anchor {
    /// The owner of its windows in the range tree.
    pub claim: ClaimId,
    /// Its segments, in address order, disjoint.
    pub segments: Vec<AnchorSegment>,
}

impl Anchor {
    /// Where the page containing `va` belongs, if a segment covers it.
    pub fn target(&self, va: u64) -> Option<Pfn> {
        self.segments.iter().find_map(|s| s.target(va))
    }

    /// The physical windows `[first, end)` of the part `[start, end)` of the VMA, one per
    /// segment that overlaps it.
    pub fn windows(&self, start: u64, end: u64) -> impl Iterator<Item = (Pfn, Pfn)> + '_ {
        self.segments.iter().filter_map(move |s| {
            let (a, b) = (s.start.max(start), s.end.min(end));
            (a < b).then(|| {
                let first = s.pfn.add((a - s.start) / PAGE_SIZE);
                (first, first.add((b - a).div_ceil(PAGE_SIZE)))
            })
        })
    }
}
