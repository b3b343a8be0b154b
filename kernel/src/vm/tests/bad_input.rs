//! Bad input to every operation: typed refusals that change nothing.

use super::{
    activate, audits, available, block_at, fill, intact, private, read, snapshot, write, Env, BASE,
    G1, K4, M2,
};
use crate::harness::{TestContext, TestResult};
use crate::mem::frames;
use crate::vm::numa;
use crate::{check, check_eq, sprint};
use mm::addr::{PageSize, Pfn};
use mm::aspace::{FrameSource, PinError, SpaceError};
use mm::buddy::MigrateType;
use mm::migrate::{Destination, MigrateError};
use mm::numa::NodeId;
use mm::vma::{HugePolicy, SharedBacking, VmaFlags};

pub(super) fn bad_input(_: &TestContext) -> TestResult {
    let before = available();
    let mut env = Env::new()?;
    let mm = env.mm;
    let s = env.space()?;
    let (small, huge, ro) = (BASE, BASE + G1, BASE + 2 * G1);
    env.map(&s, small, 4 * K4, private(HugePolicy::Never))?;
    env.map(&s, huge, M2, private(HugePolicy::Always))?;
    env.map(&s, ro, K4, VmaFlags::private(HugePolicy::Never, false))?;
    env.populate(&s, small, 4 * K4)?;
    env.populate(&s, huge, M2)?;
    check_eq!(activate(&s), Ok(()));
    check!(fill(small, PageSize::Size4K, 1) && fill(huge, PageSize::Size2M, 2));
    let hs = block_at(&s, small).map(|(h, _)| h);
    let hh = block_at(&s, huge).map(|(h, _)| h);
    check!(hs.is_some() && hh.is_some());
    let (hs, hh) = (hs.unwrap_or(Pfn(0)), hh.unwrap_or(Pfn(0)));
    let heads = [hs, hh];
    let region = env.region(M2)?;
    let hole = 0x0000_8000_0000_0000u64;
    let kernel = 0xFFFF_8000_0000_0000u64;
    let top = 0x0000_7FFF_FFFF_F000u64;
    let unmapped = BASE + 3 * G1;
    let nowhere = NodeId(1 + numa::nodes().last().map_or(0, |n| n.0));
    let used_frame = block_at(&s, small + K4).map_or(Pfn(0), |(h, _)| h);
    let free_frame = frames::alloc(0, MigrateType::Movable);
    check!(free_frame.is_ok());
    let free_frame = free_frame.unwrap_or(Pfn(0));
    check_eq!(frames::free(free_frame.addr(), 0), Ok(()));
    let root_frame = Pfn::containing(s.root());
    let table_len = crate::vm::frames().frame_table().len() as u64;
    let flags = || private(HugePolicy::Always);
    let window = |offset| VmaFlags {
        shared: Some(SharedBacking {
            region: region.clone(),
            offset,
        }),
        ..private(HugePolicy::Never)
    };
    let mut snap = snapshot(&s, &heads);
    let mut n = 0;
    macro_rules! refused {
        ($op:expr, $want:expr) => {{
            let got = $op;
            let want = $want;
            let same = got == want;
            check!(same, "{}: {:?}, expected {:?}", stringify!($op), got, want);
            check_eq!(snapshot(&s, &heads), snap);
            n += 1;
        }};
    }
    // Address-space operations.
    refused!(
        mm.map_anon(&s, unmapped, 0, flags()),
        Err(SpaceError::ZeroLength)
    );
    refused!(
        mm.map_anon(&s, unmapped + 8, K4, flags()),
        Err(SpaceError::Unaligned)
    );
    refused!(
        mm.map_anon(&s, unmapped, K4 + 8, flags()),
        Err(SpaceError::Unaligned)
    );
    refused!(
        mm.map_anon(&s, hole, K4, flags()),
        Err(SpaceError::NonCanonical)
    );
    refused!(
        mm.map_anon(&s, top, 2 * K4, flags()),
        Err(SpaceError::NonCanonical)
    );
    refused!(
        mm.map_anon(&s, kernel, K4, flags()),
        Err(SpaceError::KernelHalf)
    );
    refused!(
        mm.map_anon(&s, small + K4, 4 * K4, flags()),
        Err(SpaceError::Overlap)
    );
    refused!(
        mm.map_anon(&s, unmapped, K4, window(8)),
        Err(SpaceError::Unaligned)
    );
    refused!(
        mm.map_anon(&s, unmapped, 2 * M2, window(0)),
        Err(SpaceError::RegionBounds)
    );
    refused!(
        mm.map_anon(
            &s,
            unmapped,
            K4,
            VmaFlags {
                node: Some(nowhere),
                ..flags()
            }
        ),
        Err(SpaceError::NoSuchNode)
    );
    refused!(mm.unmap(&s, small + 8, K4), Err(SpaceError::Unaligned));
    refused!(mm.unmap(&s, hole, K4), Err(SpaceError::NonCanonical));
    refused!(mm.unmap(&s, kernel, K4), Err(SpaceError::KernelHalf));
    refused!(mm.unmap(&s, unmapped, K4), Ok(()));
    refused!(
        mm.protect(&s, unmapped, K4, false),
        Err(SpaceError::NotMapped)
    );
    refused!(
        mm.protect(&s, small, 8 * K4, false),
        Err(SpaceError::NotMapped)
    );
    refused!(
        mm.protect(&s, kernel, K4, false),
        Err(SpaceError::KernelHalf)
    );
    refused!(mm.populate(&s, unmapped, K4), Err(SpaceError::NotMapped));
    refused!(mm.destroy_space(&s), Err(SpaceError::InUse));
    // Moving a range to a node.
    let node0 = numa::nodes().first().copied().unwrap_or(NodeId(0));
    refused!(
        mm.move_range_to_node(&s, small + 8, K4, node0).err(),
        Some(SpaceError::Unaligned)
    );
    refused!(
        mm.move_range_to_node(&s, hole, K4, node0).err(),
        Some(SpaceError::NonCanonical)
    );
    refused!(
        mm.move_range_to_node(&s, kernel, K4, node0).err(),
        Some(SpaceError::KernelHalf)
    );
    refused!(
        mm.move_range_to_node(&s, unmapped, K4, node0).err(),
        Some(SpaceError::NotMapped)
    );
    refused!(
        mm.move_range_to_node(&s, small, 8 * K4, node0).err(),
        Some(SpaceError::NotMapped)
    );
    refused!(
        mm.move_range_to_node(&s, small, K4, nowhere).err(),
        Some(SpaceError::NoSuchNode)
    );
    // Migration.
    let migrate = |src, dst| mm.migrate_one(src, dst);
    refused!(
        migrate(Pfn(table_len + 7), Destination::Any),
        Err(MigrateError::OutOfRange)
    );
    refused!(
        migrate(hh.add(1), Destination::Any),
        Err(MigrateError::NotHead)
    );
    refused!(
        migrate(free_frame, Destination::Any),
        Err(MigrateError::NotInUse)
    );
    refused!(
        migrate(root_frame, Destination::Any),
        Err(MigrateError::NotInUse)
    );
    refused!(
        migrate(hs, Destination::Frame(hs)),
        Err(MigrateError::DestinationOverlaps)
    );
    refused!(
        migrate(hh, Destination::Frame(hh)),
        Err(MigrateError::DestinationOverlaps)
    );
    refused!(
        migrate(hh, Destination::Frame(hh.add(1))),
        Err(MigrateError::DestinationUnaligned)
    );
    refused!(
        migrate(hs, Destination::Frame(Pfn(table_len))),
        Err(MigrateError::DestinationOutOfRange)
    );
    refused!(
        migrate(hs, Destination::Frame(used_frame)),
        Err(MigrateError::DestinationNotFree)
    );
    refused!(
        migrate(hs, Destination::Node(nowhere)),
        Err(MigrateError::NoSuchNode)
    );
    refused!(mm.pin(free_frame), Err(PinError::NotInUse));
    refused!(mm.unpin(hs), Err(PinError::NotPinned));
    refused!(mm.pin(Pfn(table_len + 7)), Err(PinError::OutOfRange));
    // Faults the address space cannot resolve: no VMA, a write to read-only memory.
    refused!(read(unmapped), None);
    refused!(write(unmapped, 1), false);
    let leaves = s.leaves().len();
    check_eq!(read(ro), Some(0));
    check_eq!(s.leaves().len(), leaves + 1);
    snap = snapshot(&s, &heads);
    refused!(write(ro, 1), false);
    refused!(read(ro), Some(0));
    check!(intact(small, PageSize::Size4K, 1) && intact(huge, PageSize::Size2M, 2));
    sprint!("({n} refusals, each typed and without effect) ");
    drop(region);
    env.teardown()?;
    audits(mm)?;
    check_eq!(available(), before);
    Ok(())
}
