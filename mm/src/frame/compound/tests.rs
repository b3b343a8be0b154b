//! Unit tests of fusing and splitting compound blocks over a real buddy allocator.

use super::*;
use crate::frame::buddy::{BuddyAllocator, MigrateType};
use crate::frame::refs::CountLock;

/// The counters' lock token: these tests are their only writers.
const COUNTS: CountLock = CountLock::new();

const FRAMES: u64 = 4096;

fn with_buddy(f: impl FnOnce(&mut BuddyAllocator<'_>)) {
    let records = FrameTable::boxed_records(FRAMES as usize);
    let table = FrameTable::new(&records).unwrap();
    let mut b = BuddyAllocator::new(table);
    b.add_free_range(Pfn(0), Pfn(FRAMES)).unwrap();
    f(&mut b)
}

#[test]
fn fuse_then_split_round_trips_and_the_allocator_stays_sound() {
    with_buddy(|b| {
        let head = Pfn(1024);
        for i in 0..CHILDREN {
            b.alloc_at(head.add(i), 0, MigrateType::Movable).unwrap();
            let m = b.table().get(head.add(i)).unwrap();
            m.make_managed_mapped();
        }
        let table = b.table();
        fuse(&COUNTS, &table, head, 0).unwrap();
        let h = table.get(head).unwrap();
        assert_eq!((h.order(), h.refcount(), h.mapcount()), (9, 512, 512));
        for i in 1..CHILDREN {
            assert_eq!(table.head_of(head.add(i)), Some(head));
            assert_eq!(table.get(head.add(i)).unwrap().state(), FrameState::Tail);
        }
        b.audit().unwrap();
        // Back into 512 blocks: child i keeps one mapping, except child 7 which gets
        // none (it is the caller's to free).
        let counts = |i: u64| if i == 7 { (0, 0) } else { (1, 1) };
        assert_eq!(
            split(&COUNTS, &table, head, 0, |i| (1, 1 + u32::from(i == 0))),
            Err(CompoundError::Counts),
            "counts that do not add up change nothing"
        );
        assert_eq!(table.get(head).unwrap().order(), 9);
        // 511 mappings in all now: one was dropped before the split.
        h.remove_mapping(&COUNTS).unwrap();
        assert_eq!(h.put_ref(&COUNTS), Ok(crate::frame::refs::Released::Alive));
        split(&COUNTS, &table, head, 0, counts).unwrap();
        for i in 0..CHILDREN {
            let m = table.get(head.add(i)).unwrap();
            assert_eq!((m.state(), m.order()), (FrameState::Allocated, 0));
            assert_eq!(m.refcount(), counts(i).1);
            assert_eq!(m.is_managed(), i != 7);
        }
        b.free(head.add(7), 0).unwrap();
        b.audit().unwrap();
        // Fused again (without child 7 it refuses) and freed whole.
        assert_eq!(
            fuse(&COUNTS, &table, head, 0),
            Err(CompoundError::NotBlock(head.add(7)))
        );
        b.alloc_at(head.add(7), 0, MigrateType::Movable).unwrap();
        fuse(&COUNTS, &table, head, 0).unwrap();
        assert_eq!(table.get(head).unwrap().mapcount(), 511);
        // The last user goes: the block is freed whole.
        table.get(head).unwrap().reset_free();
        b.free(head, 9).unwrap();
        b.audit().unwrap();
        assert_eq!(b.free_frames(), FRAMES as usize);
    });
}

#[test]
fn refusals_change_nothing() {
    with_buddy(|b| {
        let table = b.table();
        assert_eq!(
            fuse(&COUNTS, &table, Pfn(3), 0),
            Err(CompoundError::Unaligned)
        );
        assert_eq!(
            fuse(&COUNTS, &table, Pfn(0), 18),
            Err(CompoundError::Unaligned)
        );
        assert_eq!(
            fuse(&COUNTS, &table, Pfn(FRAMES), 0),
            Err(CompoundError::OutOfRange)
        );
        let head = Pfn(512);
        for i in 0..CHILDREN {
            let mt = if i == 100 {
                MigrateType::Unmovable
            } else {
                MigrateType::Movable
            };
            b.alloc_at(head.add(i), 0, mt).unwrap();
        }
        assert_eq!(
            fuse(&COUNTS, &table, head, 0),
            Err(CompoundError::Mixed(head.add(100)))
        );
        assert_eq!(
            split(&COUNTS, &table, head, 0, |_| (0, 0)),
            Err(CompoundError::NotBlock(head))
        );
        for i in 0..CHILDREN {
            assert_eq!(table.get(head.add(i)).unwrap().order(), 0);
        }
        b.audit().unwrap();
    });
}
