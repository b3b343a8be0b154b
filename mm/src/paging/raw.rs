//! Raw access to leaf-level slots, for software (non-present) entries such as the
//! [`MigrationEntry`](super::MigrationEntry).
//!
//! The rest of this module never creates nor removes a software entry (except
//! [`destroy`](PageTable::destroy), which reports each): `map` refuses the slot (it is
//! not unused), `unmap`, `protect`, splits, collapses and the range operations refuse
//! with a `Busy` error, [`walk`](PageTable::walk) skips it (it is not present), and it
//! keeps its table alive (the table is not empty). These functions let the layer that
//! owns such entries read them and swap them in and out atomically.
//!
//! Changing an entry here reports nothing to a [`FlushSink`](crate::backend::flush::FlushSink):
//! the caller invalidates the TLBs itself (a present leaf replaced by a non-present entry
//! must be shot down before its frame is reused; a non-present entry replaced by a leaf
//! needs no flush, since the TLB never caches non-present translations).

use super::{index, is_canonical, Entry, PageTable};
use crate::backend::phys::PhysMem;
use crate::base::addr::PageSize;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::PhysAddr;

/// Why [`PageTable::compare_exchange_leaf`] did not swap the entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RawError {
    /// The virtual address is not canonical.
    NonCanonical,
    /// `level` is not 1, 2 or 3, or an entry is neither a leaf of that level nor
    /// non-present (table pointers cannot be swapped here).
    InvalidEntry,
    /// The walk toward the address stops above `level` (no table there, or a leaf or
    /// software entry at a higher level).
    NoSlot,
    /// The slot holds this entry instead of the expected one.
    Changed(Entry),
}

/// Whether `entry` may stand in a leaf-level slot at `level`: a leaf of that level or a
/// non-present entry.
#[inline]
const fn leaf_level_entry(entry: Entry, level: u8) -> bool {
    !entry.is_present() || entry.leaf_size(level).is_some()
}

impl<'m, M: PhysMem> PageTable<'m, M> {
    /// Where a walk toward `va` stops: the level (1..=4) and the entry there, which is a
    /// present leaf, an unused slot or a non-present software entry. `None` if `va` is
    /// not canonical.
    pub fn raw_entry(&self, va: u64) -> Option<(u8, Entry)> {
        if !is_canonical(va) {
            return None;
        }
        let d = self.descend(va, 1);
        Some((d.level, d.entry))
    }

    /// The entry at exactly `level` (1..=4) on the walk toward `va`, or `None` if the walk
    /// stops above that level or `va` is not canonical.
    pub fn entry_at(&self, va: u64, level: u8) -> Option<Entry> {
        if !is_canonical(va) || !(1..=4).contains(&level) {
            return None;
        }
        let d = self.descend(va, level);
        (d.level == level).then_some(d.entry)
    }

    /// Atomically replace the leaf-level entry for `va` at `level` (1, 2 or 3) by `new` if
    /// it still is `current`. Both must be leaves of that level or non-present entries.
    /// Nothing is reported to a flush sink (see the module doc).
    pub fn compare_exchange_leaf(
        &mut self,
        va: u64,
        level: u8,
        current: Entry,
        new: Entry,
    ) -> Result<(), RawError> {
        self.raw_slots()
            .compare_exchange_leaf(va, level, current, new)
    }

    /// Replace the leaf-level entry for `va` at `level` (1, 2 or 3) by what `change`
    /// makes of it, atomically, with one walk: `change` sees the entry there (a leaf of
    /// that level or a non-present entry; a table pointer is left alone, as if declined)
    /// and returns the entry to put in its place with a value, or `None` to leave it.
    /// When the MMU changes the entry meanwhile (accessed, dirty), `change` is asked
    /// again about the new one. `Ok(None)` when declined.
    pub fn change_leaf<T>(
        &mut self,
        va: u64,
        level: u8,
        change: impl FnMut(Entry) -> Option<(Entry, T)>,
    ) -> Result<Option<T>, RawError> {
        self.raw_slots().change_leaf(va, level, change)
    }

    /// [`compare_exchange_leaf`](Self::compare_exchange_leaf) and
    /// [`change_leaf`](Self::change_leaf) for many addresses: see [`RawSlots`].
    pub fn raw_slots(&mut self) -> RawSlots<'_, 'm, M> {
        RawSlots {
            pt: self,
            last: None,
        }
    }
}

/// Leaf-level slots of one page table, changed one after another (a batch of migration
/// entries installed or removed): a 4 KiB slot in the same 2 MiB as the last one is found
/// through the level-1 table that one was in, without a walk from the root. That table
/// cannot go away meanwhile: this value holds the table's only software writer, and
/// neither function here replaces a table pointer (the MMU only sets accessed and dirty
/// bits).
pub struct RawSlots<'p, 'm, M: PhysMem> {
    pt: &'p mut PageTable<'m, M>,
    /// The first address of the 2 MiB of the last 4 KiB slot found, and the level-1
    /// table mapping it.
    last: Option<(u64, PhysAddr)>,
}

impl<'m, M: PhysMem> RawSlots<'_, 'm, M> {
    /// The slot for `va` at `level` (1, 2 or 3).
    #[inline]
    fn slot(&mut self, va: u64, level: u8) -> Result<&'m AtomicU64, RawError> {
        if !is_canonical(va) {
            return Err(RawError::NonCanonical);
        }
        if !(1..=3).contains(&level) {
            return Err(RawError::InvalidEntry);
        }
        let region = va & !(PageSize::Size2M.bytes() - 1);
        let table = match self.last {
            Some((r, table)) if level == 1 && r == region => table,
            _ => {
                let d = self.pt.descend(va, level);
                if d.level != level {
                    return Err(RawError::NoSlot);
                }
                let table = d.path[level as usize];
                if level == 1 {
                    self.last = Some((region, table));
                }
                table
            }
        };
        Ok(self.pt.slot(table, index(va, level)))
    }

    /// [`PageTable::compare_exchange_leaf`].
    #[inline]
    pub fn compare_exchange_leaf(
        &mut self,
        va: u64,
        level: u8,
        current: Entry,
        new: Entry,
    ) -> Result<(), RawError> {
        let slot = self.slot(va, level)?;
        if !leaf_level_entry(current, level) || !leaf_level_entry(new, level) {
            return Err(RawError::InvalidEntry);
        }
        if !current.is_present() {
            // Only software writes a non-present entry (the MMU sets accessed and dirty
            // bits in present ones only), and this value holds the table's only
            // software writer: a load and a store do what a compare-exchange would.
            let seen = slot.load(Ordering::Acquire);
            if seen != current.raw() {
                return Err(RawError::Changed(Entry::from_raw(seen)));
            }
            slot.store(new.raw(), Ordering::Release);
            return Ok(());
        }
        slot.compare_exchange(
            current.raw(),
            new.raw(),
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .map(|_| ())
        .map_err(|seen| RawError::Changed(Entry::from_raw(seen)))
    }

    /// [`PageTable::change_leaf`].
    #[inline]
    pub fn change_leaf<T>(
        &mut self,
        va: u64,
        level: u8,
        mut change: impl FnMut(Entry) -> Option<(Entry, T)>,
    ) -> Result<Option<T>, RawError> {
        let slot = self.slot(va, level)?;
        let mut current = Entry::from_raw(slot.load(Ordering::Acquire));
        loop {
            if !leaf_level_entry(current, level) {
                return Ok(None);
            }
            let Some((new, value)) = change(current) else {
                return Ok(None);
            };
            if !leaf_level_entry(new, level) {
                return Err(RawError::InvalidEntry);
            }
            match slot.compare_exchange(
                current.raw(),
                new.raw(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(Some(value)),
                Err(seen) => current = Entry::from_raw(seen),
            }
        }
    }
}

#[cfg(test)]
mod tests;
