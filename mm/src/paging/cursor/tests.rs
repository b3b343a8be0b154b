//! The cursor meets every kind of slot, in order, and its slots tile the range.

use super::*;
use crate::backend::phys::Arena;
use crate::base::addr::PageSize;
use crate::paging::testing::{ListTableAlloc, RecordingSink};
use crate::paging::MigrationEntry;
use std::vec::Vec;
use x86_64::structures::paging::PageTableFlags as F;

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
const BASE: u64 = 0x0000_0040_0000_0000;

/// The slots of `[start, end)` as (first address, level, kind name), checking that the
/// slots that are not tables tile the range exactly, in order, and that a table comes
/// right before its first slot.
fn slots<M: PhysMem>(pt: &PageTable<'_, M>, start: u64, end: u64) -> Vec<(u64, u8, &'static str)> {
    let mut out = Vec::new();
    let mut next = start;
    let mut parent: Option<Slot> = None;
    for slot in pt.cursor(start, end).unwrap() {
        if let Some(p) = parent.take() {
            assert_eq!(slot.level + 1, p.level, "a table's slots follow it");
            assert!(slot.va >= p.va && slot.last() <= p.last());
        }
        let name = match slot.kind {
            SlotKind::Absent => "absent",
            SlotKind::Table(_) => "table",
            SlotKind::Leaf(_) => "leaf",
            SlotKind::Software(SoftwareEntry::Migration(_)) => "migration",
            SlotKind::Software(_) => "software",
        };
        if let SlotKind::Table(_) = slot.kind {
            parent = Some(slot);
        } else {
            assert!(
                slot.va.as_u64() <= next && next <= slot.last(),
                "gap before {slot:?}"
            );
            next = slot.last().wrapping_add(1);
        }
        out.push((slot.va.as_u64(), slot.level, name));
    }
    assert!(
        next.wrapping_sub(1) >= end.wrapping_sub(1),
        "the range is covered"
    );
    out
}

#[test]
fn the_cursor_sees_every_kind_of_slot_at_every_level() {
    let arena = Arena::new(64);
    let mut alloc = ListTableAlloc::new(PhysAddr::zero(), 64);
    let mut sink = RecordingSink::default();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    let rw = F::WRITABLE;
    pt.map(
        BASE,
        PhysAddr::new(G1),
        PageSize::Size1G,
        rw,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    pt.map(
        BASE + G1,
        PhysAddr::new(M2),
        PageSize::Size2M,
        rw,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    pt.map(
        BASE + G1 + M2,
        PhysAddr::new(2 * M2),
        PageSize::Size2M,
        rw,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    pt.map(
        BASE + G1 + 2 * M2 + K4,
        PhysAddr::new(K4),
        PageSize::Size4K,
        rw,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    let leaf = pt.entry_at(BASE + G1 + M2, 2).unwrap();
    let mig = MigrationEntry::from_leaf(leaf, PageSize::Size2M).unwrap();
    pt.compare_exchange_leaf(BASE + G1 + M2, 2, leaf, mig.entry())
        .unwrap();

    // From the middle of the 1 GiB leaf to the second 4 KiB slot of the PT.
    let got = slots(&pt, BASE + G1 / 2, BASE + G1 + 2 * M2 + 2 * K4);
    assert_eq!(
        got,
        [
            (BASE & !((1 << 39) - 1), 4, "table"),
            (BASE, 3, "leaf"),
            (BASE + G1, 3, "table"),
            (BASE + G1, 2, "leaf"),
            (BASE + G1 + M2, 2, "migration"),
            (BASE + G1 + 2 * M2, 2, "table"),
            (BASE + G1 + 2 * M2, 1, "absent"),
            (BASE + G1 + 2 * M2 + K4, 1, "leaf"),
        ]
    );
    let mut cursor = pt.cursor(BASE + G1 + M2, BASE + G1 + M2 + K4).unwrap();
    let slot = cursor.nth(2).unwrap();
    assert_eq!(slot.kind, SlotKind::Software(SoftwareEntry::Migration(mig)));
    assert_eq!((slot.bytes(), slot.entry), (M2, mig.entry()));
    assert!(!slot.within(BASE + G1 + M2, BASE + G1 + M2 + K4));
    assert!(slot.within(BASE + G1 + M2, BASE + G1 + 2 * M2));
    let Some(Slot {
        kind: SlotKind::Leaf(t),
        ..
    }) = pt.cursor(BASE, BASE + K4).unwrap().nth(1)
    else {
        panic!("the 1 GiB leaf");
    };
    assert_eq!(
        (t.size, t.leaf_base_pa),
        (PageSize::Size1G, PhysAddr::new(G1))
    );
}

#[test]
fn the_cursor_covers_empty_space_coarsely_and_both_ends_of_the_address_space() {
    let arena = Arena::new(64);
    let mut alloc = ListTableAlloc::new(PhysAddr::zero(), 64);
    let mut sink = RecordingSink::default();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    // Nothing mapped: one slot per PML4 entry.
    assert_eq!(slots(&pt, 0, LOWER_HALF_END).len(), 256);
    assert_eq!(slots(&pt, UPPER_HALF_START, 0).len(), 256);
    let top = 0u64.wrapping_sub(K4);
    pt.map(
        top,
        PhysAddr::new(K4),
        PageSize::Size4K,
        F::WRITABLE,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    let got = slots(&pt, top - M2, 0);
    assert_eq!(
        got.first(),
        Some(&(UPPER_HALF_START | (511 << 39), 4, "table"))
    );
    assert_eq!(got.last(), Some(&(top, 1, "leaf")));
    // Three table slots (PML4, PDPT, PD), the unused PD slot below, the 512 PT slots.
    assert_eq!(got.len(), 3 + 1 + 512);
    // Out of a PT, up past the end of its PD and PDPT, into the next PML4 slot's tables.
    let g512 = 1u64 << 39;
    for va in [g512 - K4, g512] {
        pt.map(
            va,
            PhysAddr::new(K4),
            PageSize::Size4K,
            F::WRITABLE,
            &mut alloc,
            &mut sink,
        )
        .unwrap();
    }
    let got = slots(&pt, g512 - K4, g512 + K4);
    assert_eq!(
        got,
        [
            (0, 4, "table"),
            (g512 - G1, 3, "table"),
            (g512 - M2, 2, "table"),
            (g512 - K4, 1, "leaf"),
            (g512, 4, "table"),
            (g512, 3, "table"),
            (g512, 2, "table"),
            (g512, 1, "leaf"),
        ]
    );
    assert_eq!(pt.cursor(K4, K4).unwrap().count(), 0);
    assert_eq!(
        pt.cursor(LOWER_HALF_END - K4, UPPER_HALF_START + K4).err(),
        Some(RangeError::NonCanonical)
    );
    assert_eq!(pt.cursor(K4 + 8, 2 * K4).err(), Some(RangeError::Unaligned));
}
