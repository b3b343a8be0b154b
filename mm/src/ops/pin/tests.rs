//! Host test of long-term pins: the block moves down to where unmovable allocations go,
//! keeps its data and is pinned there; one already there stays.

use crate::aspace::testing::{read_user, with_env, write_user};
use crate::backend::phys::Arena;
use crate::backend::source::FrameSource;
use crate::base::addr::Pfn;
use crate::frame::buddy::MigrateType;
use crate::mapping::vma::{HugePolicy, VmaFlags};
use crate::ops::migrate::Destination;

const FRAMES: u64 = 8192;
const VA: u64 = 0x4000_0000;

#[test]
fn a_longterm_pin_moves_the_block_down_first() {
    with_env(Arena::new(FRAMES), FRAMES, &[], |env| {
        let space = env.mm.new_space().unwrap();
        let flags = VmaFlags::private(HugePolicy::Never, true);
        env.mm.map_anon(&space, VA, 2 * 4096, flags).unwrap();
        env.mm.populate(&space, VA, 2 * 4096).unwrap();
        let at = |va: u64| Pfn::containing(space.translate(va).unwrap().pa);
        // Both pages high up; where an unmovable frame would go now is far below.
        for (va, to) in [(VA, FRAMES - 3), (VA + 4096, FRAMES - 2)] {
            env.mm
                .migrate_one(at(va), Destination::Frame(Pfn(to)))
                .unwrap();
            assert!(write_user(env.mem, &space, va, va ^ 0x77));
        }
        let low = env.frames.alloc(0, MigrateType::Unmovable, None).unwrap();
        env.frames.free(low, 0).unwrap();
        let head = env.mm.pin_longterm(&space, VA).unwrap();
        assert_eq!(head, low);
        assert_eq!(at(VA), low);
        assert_eq!(read_user(env.mem, &space, VA), Some(VA ^ 0x77));
        assert_eq!(env.mm.meta(head).unwrap().pincount(), 1);
        // A plain pin leaves the block where it is.
        let high = env.mm.pin(&space, VA + 4096).unwrap();
        assert_eq!(high, Pfn(FRAMES - 2));
        // Pinned, it cannot be moved any more.
        assert!(env.mm.migrate_one(head, Destination::Any).is_err());
        env.mm.unpin(head).unwrap();
        env.mm.unpin(high).unwrap();
        env.mm.destroy_space(&space).unwrap();
        env.audit();
    });
}
