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

/// One `RawSlots` used for a whole sequence of swaps agrees with a walk from the root for
/// each: over 4 KiB slots in two level-1 tables, a 2 MiB leaf, slots with no table, and
/// swaps that fail because the slot holds something else.
#[test]
fn raw_slots_agree_with_one_walk_each() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let regions = [0x8000_0000u64, 0x8020_0000, 0x8060_0000];
    // Eight 4 KiB pages in each of the first two regions, a 2 MiB leaf in the third.
    fn build<'m>(
        mem: &'m Arena,
        alloc: &mut ListTableAlloc,
        regions: &[u64],
    ) -> PageTable<'m, Arena> {
        let mut sink = RecordingSink::default();
        let mut pt = PageTable::new(mem, alloc).unwrap();
        for (r, &va) in regions[..2].iter().enumerate() {
            for i in 0..8u64 {
                let pa = PhysAddr::new(0x10_0000 * (r as u64 + 1) + i * 0x1000);
                pt.map(
                    va + i * 0x1000,
                    pa,
                    PageSize::Size4K,
                    F::WRITABLE,
                    alloc,
                    &mut sink,
                )
                .unwrap();
            }
        }
        let pa = PhysAddr::new(0x40_0000);
        pt.map(
            regions[2],
            pa,
            PageSize::Size2M,
            F::WRITABLE,
            alloc,
            &mut sink,
        )
        .unwrap();
        pt
    }
    let mut runner = TestRunner::new(Config::with_cases(64));
    let op = (0usize..3, 0u64..8, 1u8..3, any::<bool>());
    runner
        .run(&proptest::collection::vec(op, 1..40), |ops| {
            let (mem_a, mem_b) = (Arena::new(64), Arena::new(64));
            let mut alloc_a = ListTableAlloc::new(PhysAddr::new(0), 16);
            let mut alloc_b = ListTableAlloc::new(PhysAddr::new(0), 16);
            let mut a = build(&mem_a, &mut alloc_a, &regions);
            let mut b = build(&mem_b, &mut alloc_b, &regions);
            let mut slots = a.raw_slots();
            for &(r, page, level, expect_current) in &ops {
                let va = regions[r] + if level == 1 { page * 0x1000 } else { 0 };
                let current = match b.entry_at(va, level) {
                    Some(e) if expect_current => e,
                    _ => Entry::from_raw(0),
                };
                let soft = Entry::from_raw((current.raw() & !1) | (1 << 9) | (page << 12));
                let via_slots = slots.compare_exchange_leaf(va, level, current, soft);
                let via_walk = b.compare_exchange_leaf(va, level, current, soft);
                prop_assert_eq!(via_slots, via_walk, "{:#x} level {}", va, level);
            }
            for &r in &regions {
                for i in 0..8u64 {
                    let va = r + i * 0x1000;
                    prop_assert_eq!(a.raw_entry(va), b.raw_entry(va));
                }
            }
            Ok(())
        })
        .unwrap();
}
