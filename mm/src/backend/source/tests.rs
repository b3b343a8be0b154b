//! Unit tests of `source`.

use super::*;

#[test]
fn allocation_on_a_node_stays_in_its_ranges() {
    let recs = FrameTable::boxed_records(4096);
    let table = FrameTable::new(&recs).unwrap();
    let mut buddy = BuddyAllocator::new(table);
    buddy.add_free_range(Pfn(1), Pfn(4096)).unwrap();
    let mut map = NodeMap::new();
    map.add(Pfn(0), Pfn(1536), NodeId(0)).unwrap();
    map.add(Pfn(1536), Pfn(4096), NodeId(1)).unwrap();
    let frames = BuddyFrames::new(buddy, map);
    let on1 = frames
        .alloc(9, MigrateType::Movable, Some(NodeId(1)))
        .unwrap();
    assert_eq!(frames.node_of(on1), Some(NodeId(1)));
    assert!(on1.is_aligned(9));
    let mut small = Vec::new();
    while let Ok(p) = frames.alloc(0, MigrateType::Movable, Some(NodeId(0))) {
        assert_eq!(frames.node_of(p), Some(NodeId(0)));
        small.push(p);
    }
    assert_eq!(small.len(), 1535);
    assert_eq!(
        frames.alloc(0, MigrateType::Movable, Some(NodeId(7))),
        Err(AllocError::OutOfMemory)
    );
    let usage = frames.usage();
    assert_eq!(
        usage[0],
        NodeUsage {
            node: NodeId(0),
            frames: 1536,
            free: 0,
            used: 1535,
            reserved: 1
        }
    );
    assert_eq!((usage[1].used, usage[1].free), (512, 2048));
    for p in small {
        frames.free(p, 0).unwrap();
    }
    frames.free(on1, 9).unwrap();
    assert_eq!(frames.lock().free_frames(), 4095);
    assert_eq!(
        frames.alloc(MAX_ORDER + 1, MigrateType::Movable, None),
        Err(AllocError::InvalidOrder)
    );
}

/// Two identical sources: one serves exact allocations in one batch, the other one at a
/// time; the results, the allocation count, the free blocks and every frame's state,
/// order and flags (pageblock types included) agree, whatever the mix of free, taken,
/// unaligned and out-of-range requests, and of runs of single frames (which the batch
/// allocates a run at a time), some longer than a pageblock.
mod batch {
    use super::*;
    use proptest::prelude::*;

    const FRAMES: u64 = 2048;

    fn source<'a>(
        recs: &'a [crate::frame::meta::FrameMeta],
        taken: &[(u64, bool)],
    ) -> BuddyFrames<'a> {
        let table = FrameTable::new(recs).unwrap();
        let mut buddy = BuddyAllocator::new(table);
        buddy.add_free_range(Pfn(1), Pfn(FRAMES)).unwrap();
        let frames = BuddyFrames::new(buddy, NodeMap::single(Pfn(0), Pfn(FRAMES)));
        for &(t, movable) in taken {
            let _ = frames.alloc_at(Pfn(t), 0, migrate_type(movable));
        }
        frames
    }

    fn migrate_type(movable: bool) -> MigrateType {
        if movable {
            MigrateType::Movable
        } else {
            MigrateType::Unmovable
        }
    }

    /// A block of any order, or a run of single frames.
    fn requests() -> impl Strategy<Value = Vec<(u64, u8)>> {
        prop_oneof![
            2 => (0..FRAMES + 16, 0u8..4).prop_map(|(p, o)| std::vec![(p, o)]),
            2 => (0..FRAMES + 16, 1u64..40).prop_map(|(s, n)| (s..s + n).map(|p| (p, 0)).collect()),
            1 => (0..FRAMES, 400u64..1200).prop_map(|(s, n)| (s..s + n).map(|p| (p, 0)).collect()),
        ]
    }

    proptest! {
        #[test]
        fn alloc_at_batch_agrees_with_one_at_a_time(
            taken in proptest::collection::vec((0..FRAMES, any::<bool>()), 0..64),
            requests in proptest::collection::vec(requests(), 0..12),
            movable in any::<bool>(),
        ) {
            let blocks: Vec<(Pfn, u8)> =
                requests.into_iter().flatten().map(|(p, o)| (Pfn(p), o)).collect();
            let mt = migrate_type(movable);
            let (recs_a, recs_b) = (
                FrameTable::boxed_records(FRAMES as usize),
                FrameTable::boxed_records(FRAMES as usize),
            );
            let (a, b) = (source(&recs_a, &taken), source(&recs_b, &taken));
            let mut batched = Vec::new();
            a.alloc_at_batch(&blocks, mt, &mut batched);
            let single: Vec<_> = blocks
                .iter()
                .map(|&(pfn, order)| b.alloc_at(pfn, order, mt))
                .collect();
            prop_assert_eq!(&batched, &single);
            prop_assert_eq!(a.allocations(), b.allocations());
            let state = |f: &BuddyFrames<'_>| -> Vec<_> {
                let t = f.frame_table();
                (0..FRAMES)
                    .map(|p| t.get(Pfn(p)).map(|m| (m.state(), m.order(), m.flags())))
                    .collect()
            };
            prop_assert_eq!(state(&a), state(&b));
            let (la, lb) = (a.lock(), b.lock());
            prop_assert!(la.audit().is_ok());
            prop_assert_eq!(la.free_areas(), lb.free_areas());
            prop_assert_eq!(la.stats(), lb.stats());
        }
    }
}
