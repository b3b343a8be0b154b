//! The claimed windows as the memory manager keeps them: the range tree behind its lock
//! and, on the frame table, the mark of every pageblock a claimed range overlaps
//! ([`FrameFlags::PAGEBLOCK_CLAIMED`]), which the allocator reads to keep unmovable
//! allocations out of the windows (see [`crate::frame::buddy`]).
//!
//! Every change of the tree goes through [`ClaimsGuard`], which redoes the marks of the
//! pageblocks the change touched: a pageblock is marked exactly when some claimed range
//! overlaps it, also when two windows share it and one is released. The allocator reads
//! the marks without this lock; a mark read while it changes only makes one allocation
//! choose as it would have a moment before or after.

use super::{ClaimError, ClaimId, LimitError, PhysClaims};
use crate::base::addr::{Pfn, PAGEBLOCK_ORDER};
use crate::frame::meta::{FrameFlags, FrameTable};
use alloc::vec::Vec;
use core::ops::Deref;
use spin::{Mutex, MutexGuard};

/// Frames in a pageblock.
const PAGEBLOCK: u64 = 1 << PAGEBLOCK_ORDER;

/// The claimed windows of one memory manager; [`lock`](Self::lock) them to read or
/// change them.
#[derive(Default)]
pub struct MarkedClaims {
    tree: Mutex<PhysClaims>,
}

impl MarkedClaims {
    /// No window claimed, at most [`DEFAULT_LIMIT`](super::DEFAULT_LIMIT) ranges.
    pub fn new() -> MarkedClaims {
        MarkedClaims::default()
    }

    /// The windows, locked, with the frame table their marks live on.
    pub fn lock<'a>(&'a self, table: FrameTable<'a>) -> ClaimsGuard<'a> {
        ClaimsGuard {
            tree: self.tree.lock(),
            table,
        }
    }
}

/// The locked windows: reads go to the [`PhysClaims`] (through `Deref`), changes through
/// the methods here, which keep the pageblock marks in step.
pub struct ClaimsGuard<'a> {
    tree: MutexGuard<'a, PhysClaims>,
    table: FrameTable<'a>,
}

impl Deref for ClaimsGuard<'_> {
    type Target = PhysClaims;

    fn deref(&self) -> &PhysClaims {
        &self.tree
    }
}

impl ClaimsGuard<'_> {
    /// [`PhysClaims::claim`], marking the pageblocks of `[start, end)`.
    pub fn claim(&mut self, start: Pfn, end: Pfn, owner: ClaimId) -> Result<(), ClaimError> {
        self.tree.claim(start, end, owner)?;
        self.remark(start, end);
        Ok(())
    }

    /// [`PhysClaims::release`], unmarking the pageblocks of `[start, end)` no other
    /// claimed range overlaps.
    pub fn release(&mut self, start: Pfn, end: Pfn, owner: ClaimId) -> u64 {
        let released = self.tree.release(start, end, owner);
        self.remark(start, end);
        released
    }

    /// [`PhysClaims::release_owner`], unmarking as [`release`](Self::release) does.
    pub fn release_owner(&mut self, owner: ClaimId) -> u64 {
        let gone: Vec<(Pfn, Pfn)> = self
            .tree
            .ranges()
            .filter(|&(_, _, o)| o == owner)
            .map(|(s, e, _)| (s, e))
            .collect();
        let released = self.tree.release_owner(owner);
        for (s, e) in gone {
            self.remark(s, e);
        }
        released
    }

    /// [`PhysClaims::set_limit`].
    pub fn set_limit(&mut self, limit: usize) -> Result<(), LimitError> {
        self.tree.set_limit(limit)
    }

    /// Mark each pageblock overlapping `[start, end)` as the tree has it now.
    fn remark(&self, start: Pfn, end: Pfn) {
        let first = start.0 & !(PAGEBLOCK - 1);
        for pb in (first..end.0).step_by(PAGEBLOCK as usize) {
            let Some(meta) = self.table.get(Pfn(pb)) else {
                continue;
            };
            if self.tree.overlaps(Pfn(pb), Pfn(pb + PAGEBLOCK)) {
                meta.insert_flags(FrameFlags::PAGEBLOCK_CLAIMED);
            } else {
                meta.remove_flags(FrameFlags::PAGEBLOCK_CLAIMED);
            }
        }
    }
}

#[cfg(test)]
mod tests;
