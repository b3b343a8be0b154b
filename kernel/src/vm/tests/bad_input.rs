//! Bad input to every operation: typed refusals that change nothing.

use super::{
    activate, audits, available, block_at, fill, intact, private, read, snapshot, write, Env, BASE,
    G1, K4, M2,
};
use crate::harness::{TestContext, TestResult};
use crate::mem::frames;
use crate::vm::numa;
use crate::{check, check_eq, sprint};
use alloc::vec::Vec;
use mm::aspace::{PinError, SpaceError};
use mm::backend::source::FrameSource;
use mm::base::addr::{PageSize, Pfn};
use mm::frame::buddy::MigrateType;
use mm::frame::node::NodeId;
use mm::mapping::vma::{HugePolicy, SharedBacking, VmaFlags};
use mm::ops::migrate::{Destination, MigrateError};

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
    // Typed refusals are counted; the calls that succeed without effect and the fault
    // probes' untyped failures are listed apart, each by its call.
    let mut typed = 0;
    let mut accepted: Vec<&str> = Vec::new();
    let mut untyped: Vec<&str> = Vec::new();
    macro_rules! unchanged {
        ($op:expr, $got:expr, $want:expr) => {{
            let (got, want) = ($got, $want);
            let same = got == want;
            check!(same, "{}: {:?}, expected {:?}", stringify!($op), got, want);
            check_eq!(snapshot(&s, &heads), snap);
        }};
    }
    macro_rules! refused {
        ($op:expr, $err:expr) => {{
            unchanged!($op, ($op).err(), Some($err));
            typed += 1;
        }};
    }
    macro_rules! accepted {
        ($op:expr, $want:expr) => {{
            unchanged!($op, $op, $want);
            accepted.push(stringify!($op));
        }};
    }
    macro_rules! untyped {
        ($op:expr, $want:expr) => {{
            unchanged!($op, $op, $want);
            untyped.push(stringify!($op));
        }};
    }
    // Address-space operations.
    refused!(
        mm.map_anon(&s, unmapped, 0, flags()),
        SpaceError::ZeroLength
    );
    refused!(
        mm.map_anon(&s, unmapped + 8, K4, flags()),
        SpaceError::Unaligned
    );
    refused!(
        mm.map_anon(&s, unmapped, K4 + 8, flags()),
        SpaceError::Unaligned
    );
    refused!(mm.map_anon(&s, hole, K4, flags()), SpaceError::NonCanonical);
    refused!(
        mm.map_anon(&s, top, 2 * K4, flags()),
        SpaceError::NonCanonical
    );
    refused!(mm.map_anon(&s, kernel, K4, flags()), SpaceError::KernelHalf);
    refused!(
        mm.map_anon(&s, small + K4, 4 * K4, flags()),
        SpaceError::Overlap
    );
    refused!(
        mm.map_anon(&s, unmapped, K4, window(8)),
        SpaceError::Unaligned
    );
    refused!(
        mm.map_anon(&s, unmapped, 2 * M2, window(0)),
        SpaceError::RegionBounds
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
        SpaceError::NoSuchNode
    );
    refused!(mm.unmap(&s, small + 8, K4), SpaceError::Unaligned);
    refused!(mm.unmap(&s, hole, K4), SpaceError::NonCanonical);
    refused!(mm.unmap(&s, kernel, K4), SpaceError::KernelHalf);
    accepted!(mm.unmap(&s, unmapped, K4), Ok(()));
    refused!(mm.protect(&s, unmapped, K4, false), SpaceError::NotMapped);
    refused!(mm.protect(&s, small, 8 * K4, false), SpaceError::NotMapped);
    refused!(mm.protect(&s, kernel, K4, false), SpaceError::KernelHalf);
    refused!(mm.populate(&s, unmapped, K4), SpaceError::NotMapped);
    refused!(mm.destroy_space(&s), SpaceError::InUse);
    // Moving a range to a node.
    let node0 = numa::nodes().first().copied().unwrap_or(NodeId(0));
    refused!(
        mm.move_range_to_node(&s, small + 8, K4, node0),
        SpaceError::Unaligned
    );
    refused!(
        mm.move_range_to_node(&s, hole, K4, node0),
        SpaceError::NonCanonical
    );
    refused!(
        mm.move_range_to_node(&s, kernel, K4, node0),
        SpaceError::KernelHalf
    );
    refused!(
        mm.move_range_to_node(&s, unmapped, K4, node0),
        SpaceError::NotMapped
    );
    refused!(
        mm.move_range_to_node(&s, small, 8 * K4, node0),
        SpaceError::NotMapped
    );
    refused!(
        mm.move_range_to_node(&s, small, K4, nowhere),
        SpaceError::NoSuchNode
    );
    // Migration.
    let migrate = |src, dst| mm.migrate_one(src, dst);
    refused!(
        migrate(Pfn(table_len + 7), Destination::Any),
        MigrateError::OutOfRange
    );
    refused!(migrate(hh.add(1), Destination::Any), MigrateError::NotHead);
    refused!(
        migrate(free_frame, Destination::Any),
        MigrateError::NotInUse
    );
    refused!(
        migrate(root_frame, Destination::Any),
        MigrateError::NotInUse
    );
    refused!(
        migrate(hs, Destination::Frame(hs)),
        MigrateError::DestinationOverlaps
    );
    refused!(
        migrate(hh, Destination::Frame(hh)),
        MigrateError::DestinationOverlaps
    );
    refused!(
        migrate(hh, Destination::Frame(hh.add(1))),
        MigrateError::DestinationUnaligned
    );
    refused!(
        migrate(hs, Destination::Frame(Pfn(table_len))),
        MigrateError::DestinationOutOfRange
    );
    refused!(
        migrate(hs, Destination::Frame(used_frame)),
        MigrateError::DestinationNotFree
    );
    refused!(
        migrate(hs, Destination::Node(nowhere)),
        MigrateError::NoSuchNode
    );
    refused!(mm.pin(&s, unmapped), PinError::NotMapped);
    refused!(mm.unpin(free_frame), PinError::NotInUse);
    refused!(mm.unpin(hs), PinError::NotPinned);
    refused!(mm.unpin(Pfn(table_len + 7)), PinError::OutOfRange);
    // Faults the address space cannot resolve: no VMA, a write to read-only memory.
    untyped!(read(unmapped), None);
    untyped!(write(unmapped, 1), false);
    let leaves = s.leaves().len();
    check_eq!(read(ro), Some(0));
    check_eq!(s.leaves().len(), leaves + 1);
    snap = snapshot(&s, &heads);
    untyped!(write(ro, 1), false);
    accepted!(read(ro), Some(0));
    check!(intact(small, PageSize::Size4K, 1) && intact(huge, PageSize::Size2M, 2));
    sprint!(
        "({typed} typed refusals, each without effect; succeeded without effect: {}; untyped probe failures: {}) ",
        accepted.join(", "),
        untyped.join(", ")
    );
    drop(region);
    env.teardown()?;
    audits(mm)?;
    check_eq!(available(), before);
    Ok(())
}
