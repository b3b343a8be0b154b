//! Unit tests of `raw`.

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
