//! Unit tests of `raw`.

use super::*;
use crate::backend::phys::Arena;
use crate::base::addr::PageSize;
use crate::paging::testing::{ListTableAlloc, RecordingSink};
use alloc::vec::Vec;
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

/// `change_leaf` replaces a leaf with what the change makes of it, in one step; a decline
/// leaves the entry, a table pointer is never offered, and the change may not put a table
/// pointer in.
#[test]
fn change_leaf_changes_only_what_the_change_accepts() {
    let mem = Arena::new(64);
    let mut alloc = ListTableAlloc::new(PhysAddr::new(0), 16);
    let mut sink = RecordingSink::default();
    let mut pt = PageTable::new(&mem, &mut alloc).unwrap();
    let va = 0x8040_1000u64;
    pt.map(
        va,
        PhysAddr::new(0x3000),
        PageSize::Size4K,
        F::WRITABLE,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    let leaf = pt.entry_at(va, 1).unwrap();
    let soft = Entry::from_raw((leaf.raw() & !1) | (1 << 9));
    assert_eq!(pt.change_leaf(va, 1, |_| None::<(Entry, ())>), Ok(None));
    assert_eq!(pt.entry_at(va, 1), Some(leaf));
    let mut seen = Vec::new();
    let r = pt.change_leaf(va, 1, |cur| {
        seen.push(cur);
        Some((soft, 7))
    });
    assert_eq!((r, seen), (Ok(Some(7)), alloc::vec![leaf]));
    assert_eq!(pt.raw_entry(va), Some((1, soft)));
    // The level-2 slot holds the pointer to the level-1 table: never offered.
    assert_eq!(
        pt.change_leaf(va, 2, |_| -> Option<(Entry, ())> {
            panic!("offered a table")
        }),
        Ok(None)
    );
    // Nor may a table pointer replace a 2 MiB leaf.
    let table = pt.entry_at(va, 2).unwrap();
    let huge = 0x8060_0000u64;
    pt.map(
        huge,
        PhysAddr::new(0x20_0000),
        PageSize::Size2M,
        F::WRITABLE,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    let leaf2 = pt.entry_at(huge, 2).unwrap();
    assert_eq!(
        pt.change_leaf(huge, 2, |_| Some((table, ()))),
        Err(RawError::InvalidEntry)
    );
    assert_eq!(pt.raw_entry(huge), Some((2, leaf2)));
    assert_eq!(pt.raw_entry(va), Some((1, soft)));
    assert_eq!(
        pt.change_leaf(va, 4, |c| Some((c, ()))),
        Err(RawError::InvalidEntry)
    );
}
