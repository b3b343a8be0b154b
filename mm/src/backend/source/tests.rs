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
