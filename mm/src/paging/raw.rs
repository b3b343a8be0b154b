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
use core::sync::atomic::Ordering;

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
const fn leaf_level_entry(entry: Entry, level: u8) -> bool {
    !entry.is_present() || entry.leaf_size(level).is_some()
}

impl<M: PhysMem> PageTable<'_, M> {
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
        if !is_canonical(va) {
            return Err(RawError::NonCanonical);
        }
        if !(1..=3).contains(&level)
            || !leaf_level_entry(current, level)
            || !leaf_level_entry(new, level)
        {
            return Err(RawError::InvalidEntry);
        }
        let d = self.descend(va, level);
        if d.level != level {
            return Err(RawError::NoSlot);
        }
        self.slot(d.path[level as usize], index(va, level))
            .compare_exchange(
                current.raw(),
                new.raw(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(|_| ())
            .map_err(|seen| RawError::Changed(Entry::from_raw(seen)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::phys::Arena;
    use crate::base::addr::PageSize;
    use crate::paging::testing::{ListTableAlloc, RecordingSink};
    use x86_64::structures::paging::PageTableFlags as F;
    use x86_64::PhysAddr;

    #[test]
    fn software_entries_round_trip_at_every_level() {
        let mem = Arena::new(64);
        let mut alloc = ListTableAlloc::new(PhysAddr::new(0), 16);
        let mut sink = RecordingSink::default();
        let mut pt = PageTable::new(&mem, &mut alloc).unwrap();
        let cases = [
            (0x4000_0000u64, PageSize::Size1G, 0x4000_0000u64),
            (0x8020_0000, PageSize::Size2M, 0x20_0000),
            (0x8040_1000, PageSize::Size4K, 0x3000),
        ];
        for &(va, size, pa) in &cases {
            pt.map(
                va,
                PhysAddr::new(pa),
                size,
                F::WRITABLE,
                &mut alloc,
                &mut sink,
            )
            .unwrap();
            let level = size.level();
            let leaf = pt.entry_at(va, level).unwrap();
            assert_eq!(pt.raw_entry(va), Some((level, leaf)));
            let soft = Entry::from_raw((leaf.raw() & !1) | (1 << 9));
            pt.compare_exchange_leaf(va, level, leaf, soft).unwrap();
            assert_eq!(pt.raw_entry(va), Some((level, soft)));
            assert_eq!(pt.query(va), None);
            assert_eq!(
                pt.compare_exchange_leaf(va, level, leaf, soft),
                Err(RawError::Changed(soft))
            );
            pt.compare_exchange_leaf(va, level, soft, leaf).unwrap();
            assert_eq!(pt.query(va).unwrap().size, size);
        }
    }

    #[test]
    fn refuses_table_pointers_missing_slots_and_bad_addresses() {
        let mem = Arena::new(64);
        let mut alloc = ListTableAlloc::new(PhysAddr::new(0), 16);
        let mut sink = RecordingSink::default();
        let mut pt = PageTable::new(&mem, &mut alloc).unwrap();
        pt.map(
            0x1000,
            PhysAddr::new(0x5000),
            PageSize::Size4K,
            F::empty(),
            &mut alloc,
            &mut sink,
        )
        .unwrap();
        let table = pt.entry_at(0x1000, 2).unwrap();
        assert_eq!(
            pt.compare_exchange_leaf(0x0, 2, table, Entry::UNUSED),
            Err(RawError::InvalidEntry)
        );
        assert_eq!(
            pt.compare_exchange_leaf(0x1000, 4, Entry::UNUSED, Entry::UNUSED),
            Err(RawError::InvalidEntry)
        );
        assert_eq!(
            pt.compare_exchange_leaf(0x4000_0000, 1, Entry::UNUSED, Entry::UNUSED),
            Err(RawError::NoSlot)
        );
        assert_eq!(
            pt.compare_exchange_leaf(1 << 47, 1, Entry::UNUSED, Entry::UNUSED),
            Err(RawError::NonCanonical)
        );
        assert_eq!(pt.raw_entry(1 << 47), None);
        assert_eq!(pt.entry_at(0x4000_0000, 1), None);
        assert_eq!(pt.entry_at(0x1000, 5), None);
    }
}
