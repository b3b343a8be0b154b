//! The physical windows claimed by anchored VMAs, across all address spaces: a tree of
//! disjoint half-open frame ranges, each with its owner, that keeps the target windows of
//! different owners from overlapping.
//!
//! Contiguity generation gives a VMA an *anchor*: its page at virtual page number `vpn`
//! belongs at frame `pfn_start + (vpn - vpn_start)`. The frames of that window are claimed
//! here under an opaque [`ClaimId`] before pages move into them, and released when the
//! VMA goes away or is re-anchored. A claim never overlaps another owner's range; ranges of
//! one owner that overlap or touch are merged, so the stored ranges are exactly the maximal
//! runs of frames with one owner.
//!
//! The number of stored ranges is bounded ([`PhysClaims::with_limit`],
//! [`PhysClaims::set_limit`]) so the kernel heap use is bounded: a claim that would need
//! a new range when the limit is reached is
//! refused with [`ClaimError::Full`]. A release never fails, even when cutting a hole in
//! a range needs one range more than the limit; the table may then hold more ranges than
//! the limit until releases or merging claims bring it back.

use crate::base::addr::Pfn;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

/// Ranges a [`PhysClaims::new`] table holds at most.
pub const DEFAULT_LIMIT: usize = 4096;

/// The largest limit [`PhysClaims::set_limit`] accepts: a range costs about 64 bytes of
/// heap, so 64 MiB at most.
pub const MAX_LIMIT: usize = 1 << 20;

/// The opaque owner of claimed frames (an anchored VMA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClaimId(pub u64);

/// Why a claim was refused; the table is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClaimError {
    /// The range is empty or inverted (`start >= end`).
    Empty,
    /// The range overlaps frames of another owner; the first such range is named.
    Overlaps {
        /// The other owner.
        owner: ClaimId,
        /// First frame of its range.
        start: Pfn,
        /// One past the last frame of its range.
        end: Pfn,
    },
    /// The claim needs a new range and the table holds its limit of ranges already.
    Full,
}

impl fmt::Display for ClaimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimError::Empty => f.write_str("empty or inverted frame range"),
            ClaimError::Overlaps { owner, start, end } => write!(
                f,
                "overlaps frames [{:#x}, {:#x}) claimed by owner {}",
                start.0, end.0, owner.0
            ),
            ClaimError::Full => f.write_str("the claim table is full"),
        }
    }
}

impl core::error::Error for ClaimError {}

/// Why a new limit was refused; the limit is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitError {
    /// A limit of zero ranges: no VMA could ever be anchored.
    Zero,
    /// More than [`MAX_LIMIT`] ranges.
    TooLarge {
        /// The limit asked for.
        limit: usize,
    },
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitError::Zero => f.write_str("a claim table limited to zero ranges"),
            LimitError::TooLarge { limit } => {
                write!(
                    f,
                    "a limit of {limit} ranges is above the most, {MAX_LIMIT}"
                )
            }
        }
    }
}

impl core::error::Error for LimitError {}

/// Disjoint claimed frame ranges `[start, end)` with their owners, sorted by start; the
/// ranges of one owner never overlap or touch.
#[derive(Clone, Debug)]
pub struct PhysClaims {
    /// start pfn -> (end pfn, owner).
    ranges: BTreeMap<u64, (u64, ClaimId)>,
    /// Most ranges a claim may leave stored.
    limit: usize,
}

impl Default for PhysClaims {
    fn default() -> PhysClaims {
        PhysClaims::new()
    }
}

impl PhysClaims {
    /// An empty table holding at most [`DEFAULT_LIMIT`] ranges.
    pub fn new() -> PhysClaims {
        PhysClaims::with_limit(DEFAULT_LIMIT)
    }

    /// An empty table whose claims leave at most `limit` ranges stored.
    pub fn with_limit(limit: usize) -> PhysClaims {
        PhysClaims {
            ranges: BTreeMap::new(),
            limit,
        }
    }

    /// The most ranges a claim may leave stored.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Let claims leave at most `limit` ranges stored from now on (1 to [`MAX_LIMIT`]).
    /// Ranges stored already stay, even above a lower limit; claims that need a new range
    /// are refused until releases bring the table under it.
    pub fn set_limit(&mut self, limit: usize) -> Result<(), LimitError> {
        match limit {
            0 => Err(LimitError::Zero),
            l if l > MAX_LIMIT => Err(LimitError::TooLarge { limit }),
            l => {
                self.limit = l;
                Ok(())
            }
        }
    }

    /// Number of stored ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether no frame is claimed.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The stored ranges `(start, end, owner)` in frame order.
    pub fn ranges(&self) -> impl Iterator<Item = (Pfn, Pfn, ClaimId)> + '_ {
        self.ranges.iter().map(|(&s, &(e, o))| (Pfn(s), Pfn(e), o))
    }

    /// The owner of frame `pfn`, if it is claimed.
    pub fn owner_at(&self, pfn: Pfn) -> Option<ClaimId> {
        self.ranges
            .range(..=pfn.0)
            .next_back()
            .filter(|(_, &(e, _))| e > pfn.0)
            .map(|(_, &(_, o))| o)
    }

    /// The first range of an owner other than `owner` that overlaps `[start, end)`
    /// (`None` for an empty or inverted range).
    pub fn conflict(&self, start: Pfn, end: Pfn, owner: ClaimId) -> Option<(Pfn, Pfn, ClaimId)> {
        if start >= end {
            return None;
        }
        self.touching(start.0, end.0)
            .filter(|&(s, e, o)| o != owner && e > start.0 && s < end.0)
            .map(|(s, e, o)| (Pfn(s), Pfn(e), o))
            .next()
    }

    /// Whether some claimed range overlaps `[start, end)`.
    pub fn overlaps(&self, start: Pfn, end: Pfn) -> bool {
        start < end
            && self
                .touching(start.0, end.0)
                .any(|(s, e, _)| e > start.0 && s < end.0)
    }

    /// Frames claimed by `owner`.
    pub fn frames_of(&self, owner: ClaimId) -> u64 {
        self.ranges
            .iter()
            .filter(|(_, &(_, o))| o == owner)
            .map(|(&s, &(e, _))| e - s)
            .sum()
    }

    /// Claim `[start, end)` for `owner`, merging it with the owner's ranges it overlaps or
    /// touches. Refused, with no change, when the range is empty, overlaps another owner's
    /// frames, or needs a new range while [`limit`](Self::limit) ranges are stored.
    pub fn claim(&mut self, start: Pfn, end: Pfn, owner: ClaimId) -> Result<(), ClaimError> {
        let (start, end) = (start.0, end.0);
        if start >= end {
            return Err(ClaimError::Empty);
        }
        if let Some((s, e, o)) = self.conflict(Pfn(start), Pfn(end), owner) {
            return Err(ClaimError::Overlaps {
                owner: o,
                start: s,
                end: e,
            });
        }
        let merged: Vec<(u64, u64)> = self
            .touching(start, end)
            .filter(|&(_, _, o)| o == owner)
            .map(|(s, e, _)| (s, e))
            .collect();
        if merged.is_empty() && self.ranges.len() >= self.limit {
            return Err(ClaimError::Full);
        }
        let new_start = merged.first().map_or(start, |&(s, _)| s.min(start));
        let new_end = merged.last().map_or(end, |&(_, e)| e.max(end));
        for (s, _) in merged {
            self.ranges.remove(&s);
        }
        self.ranges.insert(new_start, (new_end, owner));
        Ok(())
    }

    /// Remove `owner`'s claim on the frames of `[start, end)`, trimming or splitting its
    /// ranges; other owners' ranges are untouched. Returns the frames released. Never
    /// fails: splitting a range may leave one range more than the limit stored.
    pub fn release(&mut self, start: Pfn, end: Pfn, owner: ClaimId) -> u64 {
        let (start, end) = (start.0, end.0);
        if start >= end {
            return 0;
        }
        let hit: Vec<(u64, u64)> = self
            .touching(start, end)
            .filter(|&(s, e, o)| o == owner && e > start && s < end)
            .map(|(s, e, _)| (s, e))
            .collect();
        let mut released = 0;
        for (s, e) in hit {
            self.ranges.remove(&s);
            released += e.min(end) - s.max(start);
            if s < start {
                self.ranges.insert(s, (start, owner));
            }
            if e > end {
                self.ranges.insert(end, (e, owner));
            }
        }
        released
    }

    /// Remove every range of `owner`; returns the frames released.
    pub fn release_owner(&mut self, owner: ClaimId) -> u64 {
        let mut released = 0;
        self.ranges.retain(|&s, &mut (e, o)| {
            let mine = o == owner;
            if mine {
                released += e - s;
            }
            !mine
        });
        released
    }

    /// The ranges `(start, end, owner)` that overlap or touch `[start, end]` (`start <
    /// end`), in order.
    fn touching(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, u64, ClaimId)> + '_ {
        let before = self
            .ranges
            .range(..start)
            .next_back()
            .filter(|(_, &(e, _))| e >= start);
        before
            .into_iter()
            .chain(self.ranges.range(start..=end))
            .map(|(&s, &(e, o))| (s, e, o))
    }
}

mod marks;
#[cfg(test)]
mod tests;

pub use marks::{ClaimsGuard, MarkedClaims};
