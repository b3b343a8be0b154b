//! Unit tests of the buddy allocator: every error path leaves the state unchanged.

use super::*;
use crate::frame::meta::FrameMeta;
use crate::frame::refs::CountLock;
use std::boxed::Box;
use std::vec::Vec;

/// The counters' lock token: these tests are their only writers.
const COUNTS: CountLock = CountLock::new();

const M: MigrateType = MigrateType::Movable;
const U: MigrateType = MigrateType::Unmovable;

fn records(n: usize) -> Box<[FrameMeta]> {
    FrameTable::boxed_records(n)
}

fn buddy<'a>(recs: &'a [FrameMeta], ranges: &[(u64, u64)]) -> BuddyAllocator<'a> {
    let mut b = BuddyAllocator::new(FrameTable::new(recs).unwrap());
    for &(s, e) in ranges {
        b.add_free_range(Pfn(s), Pfn(e)).unwrap();
    }
    b.audit().unwrap();
    b
}

/// Every field of one record: state, order, flags, refcount, mapcount, pincount, next,
/// prev, owner.
type FrameFields = (FrameState, u8, u16, u32, u32, u32, u32, u32, u64);

/// Everything observable: counters, free lists and every field of every record.
struct Snapshot {
    stats: BuddyStats,
    areas: [usize; NR_ORDERS],
    heads: [u32; NR_LISTS],
    counts: [usize; NR_LISTS],
    frames: Vec<FrameFields>,
}

fn snapshot(b: &BuddyAllocator<'_>) -> Snapshot {
    b.audit().unwrap();
    let t = b.table();
    let frames = (0..t.len())
        .map(|i| {
            let m = t.at(i);
            (
                m.state(),
                m.order(),
                m.flags().bits(),
                m.refcount(),
                m.mapcount(),
                m.pincount(),
                m.next(),
                m.prev(),
                m.owner(),
            )
        })
        .collect();
    Snapshot {
        stats: b.stats(),
        areas: b.free_areas(),
        heads: b.heads,
        counts: b.counts,
        frames,
    }
}

/// Panic with the first difference between `before` and the allocator now.
#[track_caller]
fn assert_unchanged(b: &BuddyAllocator<'_>, before: &Snapshot, what: &str) {
    let now = snapshot(b);
    assert_eq!(now.stats, before.stats, "{what}: stats changed");
    assert_eq!(now.areas, before.areas, "{what}: free areas changed");
    assert_eq!(now.heads, before.heads, "{what}: list heads changed");
    assert_eq!(now.counts, before.counts, "{what}: list counts changed");
    if let Some(i) = (0..now.frames.len()).find(|&i| now.frames[i] != before.frames[i]) {
        panic!(
            "{what}: frame {i} changed from {:?} to {:?}",
            before.frames[i], now.frames[i]
        );
    }
}

fn areas(blocks: &[(u8, usize)]) -> [usize; NR_ORDERS] {
    let mut a = [0; NR_ORDERS];
    for &(order, count) in blocks {
        a[order as usize] = count;
    }
    a
}

#[test]
fn unaligned_range_becomes_maximal_blocks() {
    let recs = records(64);
    let b = buddy(&recs, &[(3, 37)]);
    assert_eq!(b.free_areas(), areas(&[(0, 2), (2, 2), (3, 1), (4, 1)]));
    for (pfn, order) in [(3, 0), (4, 2), (8, 3), (16, 4), (32, 2), (36, 0)] {
        assert_eq!(b.free_block_containing(Pfn(pfn)), Some((Pfn(pfn), order)));
    }
    assert_eq!(b.total_frames(), 34);
    assert_eq!(b.free_frames(), 34);
    assert!(!b.is_free(Pfn(2)) && !b.is_free(Pfn(37)));
    assert_eq!(b.audit().unwrap().reserved_frames, 30);
}

#[test]
fn adjacent_ranges_merge() {
    let recs = records(1 << 20);
    let b = buddy(&recs, &[(8, 16), (0, 8), (1 << 19, 1 << 20), (16, 1 << 19)]);
    assert_eq!(b.free_areas(), areas(&[(18, 4)]));
}

#[test]
fn add_range_errors_change_nothing() {
    let recs = records(64);
    let mut b = buddy(&recs, &[(0, 10)]);
    let before = snapshot(&b);
    assert_eq!(
        b.add_free_range(Pfn(9), Pfn(5)),
        Err(AddRangeError::InvalidRange)
    );
    assert_eq!(
        b.add_free_range(Pfn(60), Pfn(65)),
        Err(AddRangeError::OutOfRange)
    );
    assert_eq!(
        b.add_free_range(Pfn(9), Pfn(20)),
        Err(AddRangeError::AlreadyManaged(Pfn(9)))
    );
    assert_unchanged(&b, &before, "rejected call");
    assert_eq!(b.add_free_range(Pfn(10), Pfn(10)), Ok(0));
}

#[test]
fn alloc_sets_metadata_and_free_restores() {
    let recs = records(1 << 10);
    let mut b = buddy(&recs, &[(0, 1 << 10)]);
    let before = b.free_areas();
    let p = b.alloc(3, M).unwrap();
    let t = b.table();
    let head = t.get(p).unwrap();
    assert_eq!(head.state(), FrameState::Allocated);
    assert_eq!(head.order(), 3);
    assert_eq!(head.refcount(), 1);
    assert!(head
        .flags()
        .contains(FrameFlags::MOVABLE | FrameFlags::HUGE_HEAD));
    for tail in 1..8 {
        assert_eq!(t.get(p.add(tail)).unwrap().state(), FrameState::Tail);
        assert_eq!(t.head_of(p.add(tail)), Some(p));
        assert!(!b.is_free(p.add(tail)));
    }
    let q = b.alloc(0, U).unwrap();
    let qm = t.get(q).unwrap();
    assert!(!qm
        .flags()
        .intersects(FrameFlags::MOVABLE | FrameFlags::HUGE_HEAD));
    let s = b.stats();
    assert_eq!((s.allocated_movable, s.allocated_unmovable), (8, 1));
    b.audit().unwrap();
    b.free(q, 0).unwrap();
    b.free(p, 3).unwrap();
    assert_eq!(b.free_areas(), before);
    assert_eq!(b.allocated_frames(), 0);
    b.audit().unwrap();
}

#[test]
fn alloc_errors_change_nothing() {
    let recs = records(16);
    let mut b = buddy(&recs, &[(0, 16)]);
    let before = snapshot(&b);
    assert_eq!(b.alloc(MAX_ORDER + 1, M), Err(AllocError::InvalidOrder));
    assert_eq!(b.alloc(5, M), Err(AllocError::OutOfMemory));
    assert_unchanged(&b, &before, "rejected call");
    let all = b.alloc(4, U).unwrap();
    let full = snapshot(&b);
    assert_eq!(b.alloc(0, M), Err(AllocError::OutOfMemory));
    assert_unchanged(&b, &full, "rejected call");
    b.free(all, 4).unwrap();
    assert_eq!(b.free_areas(), before.areas);
}

#[test]
fn bad_frees_are_rejected_without_change() {
    let recs = records(64);
    let mut b = buddy(&recs, &[(0, 48)]);
    let p = b.alloc(2, M).unwrap();
    let q = b.alloc(0, M).unwrap();
    b.free(q, 0).unwrap();
    let before = snapshot(&b);
    let cases = [
        (Pfn(40), 0, FreeError::NotAllocated),
        (Pfn(41), 0, FreeError::NotAllocated),
        (Pfn(50), 0, FreeError::NotAllocated),
        (q, 0, FreeError::DoubleFree),
        (p, 1, FreeError::WrongOrder { allocated: 2 }),
        (p, 3, FreeError::WrongOrder { allocated: 2 }),
        (p.add(1), 0, FreeError::NotHead),
        (p.add(2), 1, FreeError::NotHead),
        (Pfn(64), 0, FreeError::OutOfRange),
        (Pfn(u64::MAX), 0, FreeError::OutOfRange),
        (p, MAX_ORDER + 1, FreeError::InvalidOrder),
    ];
    for (pfn, order, err) in cases {
        assert_eq!(b.free(pfn, order), Err(err), "free({pfn:?}, {order})");
        assert_unchanged(&b, &before, &std::format!("free({pfn:?}, {order})"));
    }
    b.free(p, 2).unwrap();
    assert_eq!(b.free(p, 2), Err(FreeError::DoubleFree));
    assert_eq!(b.allocated_frames(), 0);
}

#[test]
fn pinned_or_mapped_blocks_are_not_freed() {
    let recs = records(16);
    let mut b = buddy(&recs, &[(0, 16)]);
    let p = b.alloc(1, M).unwrap();
    let head = b.table().get(p).unwrap();
    head.pin(&COUNTS).unwrap();
    let before = snapshot(&b);
    assert_eq!(b.free(p, 1), Err(FreeError::Pinned));
    assert_unchanged(&b, &before, "rejected call");
    head.unpin(&COUNTS).unwrap();
    let _ = head.put_ref(&COUNTS).unwrap();
    head.add_mappings(&COUNTS, 2).unwrap();
    let before = snapshot(&b);
    assert_eq!(b.free(p, 1), Err(FreeError::Mapped));
    assert_unchanged(&b, &before, "rejected call");
    for _ in 0..2 {
        head.remove_mapping(&COUNTS).unwrap();
        let _ = head.put_ref(&COUNTS).unwrap();
    }
    b.free(p, 1).unwrap();
    b.audit().unwrap();
}

#[test]
fn alloc_at_splits_around_the_target() {
    let recs = records(1 << 10);
    let mut b = buddy(&recs, &[(0, 1 << 10)]);
    assert_eq!(b.alloc_at(Pfn(12), 2, M), Ok(Pfn(12)));
    assert_eq!(
        b.free_areas(),
        areas(&[
            (2, 1),
            (3, 1),
            (4, 1),
            (5, 1),
            (6, 1),
            (7, 1),
            (8, 1),
            (9, 1)
        ])
    );
    assert_eq!(b.free_block_containing(Pfn(9)), Some((Pfn(8), 2)));
    assert!(!b.is_free(Pfn(13)));
    b.audit().unwrap();
    b.free(Pfn(12), 2).unwrap();
    assert_eq!(b.free_areas(), areas(&[(10, 1)]));
}

#[test]
fn alloc_at_errors_change_nothing() {
    let recs = records(64);
    let mut b = buddy(&recs, &[(0, 40)]);
    b.alloc_at(Pfn(9), 0, M).unwrap();
    let before = snapshot(&b);
    let cases = [
        (Pfn(8), 2, AllocError::NotFree),
        (Pfn(0), 4, AllocError::NotFree),
        (Pfn(9), 0, AllocError::NotFree),
        (Pfn(32), 4, AllocError::NotFree),
        (Pfn(40), 0, AllocError::NotFree),
        (Pfn(2), 2, AllocError::Unaligned),
        (Pfn(3), 1, AllocError::Unaligned),
        (Pfn(64), 0, AllocError::OutOfRange),
        (Pfn(0), 7, AllocError::OutOfRange),
        (Pfn(u64::MAX), 0, AllocError::OutOfRange),
        (Pfn(0), MAX_ORDER + 1, AllocError::InvalidOrder),
    ];
    for (pfn, order, err) in cases {
        assert_eq!(
            b.alloc_at(pfn, order, U),
            Err(err),
            "alloc_at({pfn:?}, {order})"
        );
        assert_unchanged(&b, &before, &std::format!("alloc_at({pfn:?}, {order})"));
    }
}

#[test]
fn alloc_range_finds_an_aligned_run_and_free_range_releases_it() {
    let recs = records(256);
    let mut b = buddy(&recs, &[(0, 256)]);
    b.alloc_at(Pfn(5), 0, U).unwrap();
    b.alloc_at(Pfn(70), 0, U).unwrap();
    let before = snapshot(&b);
    // 6..70 is the first free run of 40 frames; aligned to 8 it starts at 8.
    let r = b.alloc_range(40, 3, M).unwrap();
    assert_eq!(r, Pfn(8));
    assert!((8..48).all(|p| !b.is_free(Pfn(p))));
    assert!(b.is_free(Pfn(7)) && b.is_free(Pfn(48)));
    b.audit().unwrap();
    // No run of 64 free frames before 71; aligned to 1, it starts there.
    assert_eq!(b.alloc_range(100, 0, M), Ok(Pfn(71)));
    b.free_range(Pfn(71), 100).unwrap();
    b.free_range(r, 40).unwrap();
    assert_eq!(b.free_areas(), before.areas);
    assert_eq!(b.stats(), before.stats);
    b.audit().unwrap();
}

#[test]
fn alloc_range_and_free_range_errors_change_nothing() {
    let recs = records(64);
    let mut b = buddy(&recs, &[(0, 64)]);
    let r = b.alloc_range(10, 0, M).unwrap();
    let before = snapshot(&b);
    assert_eq!(b.alloc_range(0, 0, M), Err(AllocError::InvalidSize));
    assert_eq!(
        b.alloc_range(1, MAX_ORDER + 1, M),
        Err(AllocError::InvalidOrder)
    );
    assert_eq!(b.alloc_range(55, 0, M), Err(AllocError::OutOfMemory));
    assert_eq!(b.alloc_range(20, 6, M), Err(AllocError::OutOfMemory));
    assert_unchanged(&b, &before, "rejected call");
    assert_eq!(b.free_range(r, 0), Err(FreeError::InvalidSize));
    assert_eq!(b.free_range(r, 11), Err(FreeError::NotAllocated));
    assert_eq!(
        b.free_range(r, 9),
        Err(FreeError::WrongOrder { allocated: 1 })
    );
    assert_eq!(b.free_range(r.add(1), 9), Err(FreeError::NotHead));
    assert_eq!(b.free_range(Pfn(60), 5), Err(FreeError::OutOfRange));
    assert_eq!(b.free_range(Pfn(64), 1), Err(FreeError::OutOfRange));
    assert_unchanged(&b, &before, "rejected call");
    b.free_range(r, 10).unwrap();
    assert_eq!(b.free_areas(), areas(&[(6, 1)]));
}

#[test]
fn unmovable_allocations_take_their_own_pageblock() {
    let pb = 1usize << PAGEBLOCK_ORDER;
    let recs = records(4 * pb);
    let mut b = buddy(&recs, &[(0, 4 * pb as u64)]);
    let m0 = b.alloc(0, M).unwrap();
    let u0 = b.alloc(0, U).unwrap();
    let m1 = b.alloc(0, M).unwrap();
    let u1 = b.alloc(0, U).unwrap();
    let block = |p: Pfn| p.0 as usize / pb;
    assert_eq!(block(m0), block(m1));
    assert_eq!(block(u0), block(u1));
    assert_ne!(block(m0), block(u0));
    assert_eq!(b.pageblock_type(u0), Some(U));
    assert_eq!(b.pageblock_type(m0), Some(M));
    let s = b.stats();
    assert_eq!((s.pageblock_steals, s.fallbacks), (2, 0));
    assert_eq!(s.free_movable, pb - 2);
    assert_eq!(s.free_unmovable, pb - 2);
    assert_eq!(s.free_neutral, 2 * pb);
    b.audit().unwrap();
}

#[test]
fn unmovable_pageblocks_are_the_lowest_unclaimed_ones() {
    let pb = 1usize << PAGEBLOCK_ORDER;
    let recs = records(8 * pb);
    let mut b = buddy(&recs, &[(0, 8 * pb as u64)]);
    let mark = |b: &BuddyAllocator<'_>, k: usize| {
        b.table()
            .at(k * pb)
            .insert_flags(FrameFlags::PAGEBLOCK_CLAIMED)
    };
    mark(&b, 0);
    mark(&b, 2);
    // A movable allocation takes its list's first block, wherever it is.
    let m = b.alloc(PAGEBLOCK_ORDER, M).unwrap();
    // The unmovable ones: the lowest pageblocks not claimed, 1 then 3 (or 4 when the
    // movable block took 3).
    let u0 = b.alloc(0, U).unwrap();
    assert_eq!(u0, Pfn(pb as u64));
    let heap = b.alloc(PAGEBLOCK_ORDER, U).unwrap();
    let want = if m == Pfn(3 * pb as u64) { 4 } else { 3 };
    assert_eq!(heap, Pfn((want * pb) as u64));
    // With every free pageblock claimed, the lowest claimed one.
    for k in 0..8 {
        mark(&b, k);
    }
    let lowest_free = (0..8)
        .map(|k| Pfn((k * pb) as u64))
        .find(|&p| {
            b.free_block_containing(p)
                .is_some_and(|(_, o)| o >= PAGEBLOCK_ORDER)
        })
        .unwrap();
    assert_eq!(b.alloc(PAGEBLOCK_ORDER, U).unwrap(), lowest_free);
    b.audit().unwrap();
}

#[test]
fn the_claimed_mark_stays_across_alloc_and_free() {
    let pb = 1usize << PAGEBLOCK_ORDER;
    let recs = records(2 * pb);
    let mut b = buddy(&recs, &[(0, 2 * pb as u64)]);
    let first = b.table().at(pb);
    first.insert_flags(FrameFlags::PAGEBLOCK_CLAIMED);
    for order in [0, 3, PAGEBLOCK_ORDER] {
        let p = b.alloc_at(Pfn(pb as u64), order, M).unwrap();
        assert!(first.flags().contains(FrameFlags::PAGEBLOCK_CLAIMED));
        b.free(p, order).unwrap();
        assert!(first.flags().contains(FrameFlags::PAGEBLOCK_CLAIMED));
    }
    b.audit().unwrap();
}

#[test]
fn fallback_only_when_no_pageblock_is_left() {
    let pb = 1usize << PAGEBLOCK_ORDER;
    let recs = records(2 * pb);
    let mut b = buddy(&recs, &[(0, 2 * pb as u64)]);
    let m = b.alloc(0, M).unwrap();
    let u = b.alloc(0, U).unwrap();
    assert_ne!(m.0 as usize / pb, u.0 as usize / pb);
    // Fill the unmovable pageblock, then one more unmovable frame must fall back.
    for _ in 1..pb {
        b.alloc(0, U).unwrap();
    }
    assert_eq!(b.stats().fallbacks, 0);
    let f = b.alloc(0, U).unwrap();
    assert_eq!(f.0 as usize / pb, m.0 as usize / pb);
    assert_eq!(b.stats().fallbacks, 1);
    assert_eq!(b.pageblock_type(f), Some(M));
    b.audit().unwrap();
    b.free(f, 0).unwrap();
    assert_eq!(b.stats().free_movable, pb - 1);
    b.audit().unwrap();
}

#[test]
fn freed_pageblock_becomes_neutral_and_can_change_type() {
    let pb = 1usize << PAGEBLOCK_ORDER;
    let recs = records(pb);
    let mut b = buddy(&recs, &[(0, pb as u64)]);
    let u = b.alloc(0, U).unwrap();
    assert_eq!(b.pageblock_type(u), Some(U));
    b.free(u, 0).unwrap();
    assert_eq!(b.stats().free_neutral, pb);
    let m = b.alloc(0, M).unwrap();
    assert_eq!(b.pageblock_type(m), Some(M));
    assert_eq!(b.stats().fallbacks, 0);
    b.audit().unwrap();
}

#[test]
fn big_blocks_round_trip() {
    let recs = records(1 << 19);
    let mut b = buddy(&recs, &[(1, 1 << 19)]);
    let before = b.free_areas();
    let g = b.alloc(MAX_ORDER, U).unwrap();
    assert_eq!(g, Pfn(1 << 18));
    assert_eq!(b.alloc(MAX_ORDER, M), Err(AllocError::OutOfMemory));
    let h = b.alloc(9, M).unwrap();
    assert_eq!(b.table().head_of(g.add(12345)), Some(g));
    b.audit().unwrap();
    b.free(g, MAX_ORDER).unwrap();
    b.free(h, 9).unwrap();
    assert_eq!(b.free_areas(), before);
    b.audit().unwrap();
}

#[test]
fn audit_reports_corruption() {
    let recs = records(64);
    let b = buddy(&recs, &[(0, 64)]);
    let t = b.table();
    t.at(5).set_state(FrameState::Free, 0);
    assert_eq!(
        b.audit(),
        Err(AuditError::Overlap {
            head: Pfn(0),
            pfn: Pfn(5)
        })
    );
    t.at(5).set_state(FrameState::Tail, 0);
    t.at(7).get_ref(&COUNTS).unwrap();
    assert_eq!(b.audit(), Err(AuditError::FreeFrameInUse { pfn: Pfn(7) }));
    let _ = t.at(7).put_ref(&COUNTS).unwrap();
    b.audit().unwrap();
}

#[test]
fn audit_reports_unmerged_buddies_and_lost_blocks() {
    let recs = records(4);
    let mut b = buddy(&recs, &[(0, 4)]);
    let p = b.alloc(1, M).unwrap();
    // Mark the block free behind the allocator's back: it is on no list.
    b.table().at(p.0 as usize).set_state(FrameState::Free, 1);
    b.table()
        .at(p.0 as usize)
        .remove_flags(FrameFlags::MOVABLE | FrameFlags::HUGE_HEAD);
    let _ = b.table().at(p.0 as usize).put_ref(&COUNTS).unwrap();
    assert!(matches!(
        b.audit(),
        Err(AuditError::Unmerged { order: 1, .. })
    ));
}
