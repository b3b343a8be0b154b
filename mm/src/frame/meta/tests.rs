//! Unit tests of `meta`.

use super::*;

#[test]
fn layout_is_fixed() {
    assert_eq!(size_of::<FrameMeta>(), 32);
    assert_eq!(core::mem::align_of::<FrameMeta>(), 8);
    assert_eq!(FrameTable::bytes_needed(3), 96);
}

#[test]
fn fresh_records_are_reserved() {
    let recs = FrameTable::boxed_records(4);
    let t = FrameTable::new(&recs).unwrap();
    assert_eq!(t.len(), 4);
    for p in 0..4 {
        let m = t.get(Pfn(p)).unwrap();
        assert_eq!(m.state(), FrameState::Reserved);
        assert_eq!(m.flags(), FrameFlags::RESERVED);
        assert_eq!(t.head_of(Pfn(p)), None);
    }
    assert!(t.get(Pfn(4)).is_none());
    assert!(t.get(Pfn(u64::MAX)).is_none());
}

#[test]
fn from_raw_initialises_garbage() {
    let mut buf = std::vec::Vec::<FrameMeta>::with_capacity(8);
    // SAFETY: the capacity holds 8 aligned records; filling them with 0xAB bytes
    // leaves garbage for `from_raw` to overwrite, as in the kernel.
    unsafe { core::ptr::write_bytes(buf.as_mut_ptr(), 0xAB, 8) };
    let ptr = buf.as_mut_ptr();
    core::mem::forget(buf);
    // SAFETY: the leaked allocation is aligned, holds 8 records and is never used
    // again except through the table.
    let t = unsafe { FrameTable::from_raw(ptr, 8) };
    for p in 0..8 {
        let m = t.get(Pfn(p)).unwrap();
        assert_eq!(m.state(), FrameState::Reserved);
        assert_eq!(m.refcount.load(Ordering::Relaxed), 0);
        assert_eq!(m.next(), NO_LINK);
    }
}

#[test]
fn head_of_walks_down_to_the_head() {
    let recs = FrameTable::boxed_records(16);
    let t = FrameTable::new(&recs).unwrap();
    // Block of order 3 at 8, order 2 at 4 (free), frames 0..4 reserved.
    t.at(8).set_state(FrameState::Allocated, 3);
    (9..16).for_each(|i| t.at(i).set_state(FrameState::Tail, 0));
    t.at(4).set_state(FrameState::Free, 2);
    (5..8).for_each(|i| t.at(i).set_state(FrameState::Tail, 0));
    for p in 8..16 {
        assert_eq!(t.head_of(Pfn(p)), Some(Pfn(8)));
    }
    for p in 4..8 {
        assert_eq!(t.head_of(Pfn(p)), Some(Pfn(4)));
    }
    for p in 0..4 {
        assert_eq!(t.head_of(Pfn(p)), None);
    }
    assert_eq!(t.head_of(Pfn(16)), None);
}

#[test]
fn head_of_rejects_an_orphan_tail() {
    let recs = FrameTable::boxed_records(4);
    let t = FrameTable::new(&recs).unwrap();
    t.at(0).set_state(FrameState::Free, 0);
    t.at(1).set_state(FrameState::Tail, 0);
    assert_eq!(t.head_of(Pfn(1)), None);
}

#[test]
fn flags_are_set_and_cleared_individually() {
    let m = FrameMeta::new();
    m.insert_flags(FrameFlags::PINNED | FrameFlags::MOVABLE);
    m.remove_flags(FrameFlags::RESERVED | FrameFlags::MOVABLE);
    assert_eq!(m.flags(), FrameFlags::PINNED);
}

#[test]
fn reserved_runs_are_maximal_and_in_order() {
    let recs = FrameTable::boxed_records(16);
    let t = FrameTable::new(&recs).unwrap();
    // Reserved: 0..2, 5, 9..16.
    (2..5).for_each(|i| t.at(i).set_state(FrameState::Free, 0));
    (6..9).for_each(|i| t.at(i).set_state(FrameState::Allocated, 0));
    assert_eq!(
        t.reserved_runs(),
        [(Pfn(0), Pfn(2)), (Pfn(5), Pfn(6)), (Pfn(9), Pfn(16))]
    );
    (0..16).for_each(|i| t.at(i).set_state(FrameState::Free, 0));
    assert_eq!(t.reserved_runs(), []);
}
