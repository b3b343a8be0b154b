//! Unit tests of address spaces, faults, shared regions, pins and the audit.

use super::testing::{
    cached_leaves, read_user, uncovered_free, with_env, write_user, Env, Event, SparseMem,
};
use super::*;
use crate::backend::phys::Arena;
use crate::mapping::vma::{HugePolicy, Mobility, SharedBacking};
use crate::ops::fault::{FaultError, FaultOutcome};
use crate::paging::MigrationEntry;

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
/// 32 MiB of arena: room for a few 2 MiB blocks.
const FRAMES: u64 = 8192;

fn arena<R>(f: impl FnOnce(&Env<'_, Arena>) -> R) -> R {
    with_env(Arena::new(FRAMES), FRAMES, &[], f)
}

/// 4 GiB of sparse memory: room for a few 1 GiB blocks.
fn sparse<R>(f: impl FnOnce(&Env<'_, SparseMem>) -> R) -> R {
    let frames = 4 * G1 / K4;
    with_env(SparseMem::new(frames), frames, &[], f)
}

fn private(huge: HugePolicy) -> VmaFlags {
    VmaFlags::private(huge, true)
}

fn shared(region: &Arc<SharedRegion>, offset: u64, huge: HugePolicy) -> VmaFlags {
    VmaFlags {
        shared: Some(SharedBacking {
            region: region.clone(),
            offset,
        }),
        ..private(huge)
    }
}

/// Everything an error must leave unchanged.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    vmas: Vec<(u64, u64, bool, HugePolicy)>,
    leaves: Vec<(VirtAddr, Translation)>,
    free: usize,
    rmap: usize,
}

fn snapshot<'a, M: PhysMem>(env: &Env<'a, M>, space: &AddressSpace<'a, M>) -> Snapshot {
    Snapshot {
        vmas: space
            .vmas()
            .iter()
            .map(|v| (v.start, v.end, v.flags.writable, v.flags.huge))
            .collect(),
        leaves: space.leaves(),
        free: env.free_frames(),
        rmap: env.mm.rmap.lock().all().count(),
    }
}

fn mapped<'a, M: PhysMem>(
    env: &Env<'a, M>,
    space: &AddressSpace<'a, M>,
    va: u64,
    write: bool,
) -> (u64, PageSize) {
    match env.mm.handle_fault(space, va, write) {
        Ok(FaultOutcome::Mapped { va, size }) => (va.as_u64(), size),
        other => panic!("fault at {va:#x}: {other:?}"),
    }
}

/// The head of the block mapped at `va`, its map count and reference count.
fn head_meta<'a, M: PhysMem>(
    env: &Env<'a, M>,
    space: &AddressSpace<'a, M>,
    va: u64,
) -> (Pfn, u32, u32) {
    let t = space.translate(va).unwrap();
    let head = env.mm.head_of(Pfn::containing(t.pa)).unwrap();
    let meta = env.mm.meta(head).unwrap();
    (head, meta.mapcount(), meta.refcount())
}

#[test]
fn map_anon_rejects_bad_input_and_changes_nothing() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        env.mm
            .map_anon(&s, 0x40_0000, 4 * K4, private(HugePolicy::Never))
            .unwrap();
        let before = snapshot(env, &s);
        let region = SharedRegion::new(8 * K4).unwrap();
        let cases: [(u64, u64, VmaFlags, SpaceError); 9] = [
            (
                0x10_0000,
                0,
                private(HugePolicy::Never),
                SpaceError::ZeroLength,
            ),
            (
                0x10_0001,
                K4,
                private(HugePolicy::Never),
                SpaceError::Unaligned,
            ),
            (
                0x10_0000,
                100,
                private(HugePolicy::Never),
                SpaceError::Unaligned,
            ),
            (
                LOWER_HALF_END - K4,
                2 * K4,
                private(HugePolicy::Never),
                SpaceError::NonCanonical,
            ),
            (
                0xFFFF_8000_0000_0000,
                K4,
                private(HugePolicy::Never),
                SpaceError::KernelHalf,
            ),
            (
                0x40_3000,
                2 * K4,
                private(HugePolicy::Never),
                SpaceError::Overlap,
            ),
            (
                0x80_0000,
                16 * K4,
                shared(&region, 0, HugePolicy::Never),
                SpaceError::RegionBounds,
            ),
            (
                0x80_0000,
                K4,
                shared(&region, 100, HugePolicy::Never),
                SpaceError::Unaligned,
            ),
            (
                0x80_0000,
                K4,
                VmaFlags {
                    node: Some(crate::frame::node::NodeId(9)),
                    ..private(HugePolicy::Never)
                },
                SpaceError::NoSuchNode,
            ),
        ];
        for (start, len, flags, err) in cases {
            assert_eq!(
                env.mm.map_anon(&s, start, len, flags),
                Err(err),
                "{start:#x}+{len:#x}"
            );
            assert_eq!(snapshot(env, &s), before);
        }
        assert_eq!(
            Arc::strong_count(&region),
            1,
            "refused VMAs keep no reference"
        );
        env.audit();
    });
}

#[test]
fn a_space_of_another_mm_is_refused() {
    arena(|env| {
        let other = Mm::new(env.mem, env.frames, env.tlb, None);
        let s = env.mm.new_space().unwrap();
        let flags = private(HugePolicy::Never);
        assert_eq!(
            other.map_anon(&s, 0, K4, flags),
            Err(SpaceError::ForeignSpace)
        );
        assert_eq!(other.unmap(&s, 0, K4), Err(SpaceError::ForeignSpace));
        assert_eq!(
            other.protect(&s, 0, K4, false),
            Err(SpaceError::ForeignSpace)
        );
        assert_eq!(
            other.handle_fault(&s, 0, false),
            Err(FaultError::ForeignSpace)
        );
        assert_eq!(other.destroy_space(&s), Err(SpaceError::ForeignSpace));
        assert_eq!(other.populate(&s, 0, K4), Err(SpaceError::ForeignSpace));
        assert!(s.vmas().is_empty());
    });
}

#[test]
fn a_fault_maps_a_zeroed_4k_page_and_records_it() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        env.mm
            .map_anon(&s, 0x1000_0000, 16 * K4, private(HugePolicy::Always))
            .unwrap();
        let free = env.free_frames();
        assert_eq!(
            mapped(env, &s, 0x1000_5123, true),
            (0x1000_5000, PageSize::Size4K)
        );
        let t = s.translate(0x1000_5008).unwrap();
        assert!(t.flags.contains(
            PageTableFlags::USER_ACCESSIBLE | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE
        ));
        assert_eq!(read_user(env.mem, &s, 0x1000_5ff8), Some(0));
        let (head, mapcount, refcount) = head_meta(env, &s, 0x1000_5000);
        assert_eq!((mapcount, refcount), (1, 1));
        assert_eq!(
            env.mm.rmap_of(head),
            [RmapEntry {
                space: s.id(),
                va: VirtAddr::new(0x1000_5000),
                size: PageSize::Size4K,
                offset: 0
            }]
        );
        // One frame plus the three tables below the root.
        assert_eq!(env.free_frames(), free - 4);
        assert_eq!(
            env.mm.handle_fault(&s, 0x1000_5000, false),
            Ok(FaultOutcome::Spurious)
        );
        let report = env.mm.rmap_audit().unwrap();
        assert_eq!((report.spaces, report.mappings, report.frames), (1, 1, 1));
        env.audit();
    });
}

#[test]
fn faults_map_2m_when_the_policy_range_and_allocator_allow() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        // 4 MiB aligned VMA: 2 MiB pages; a VMA that does not cover an aligned 2 MiB
        // range gets 4 KiB pages, and so does a `Never` VMA.
        env.mm
            .map_anon(&s, 0x4000_0000, 2 * M2, private(HugePolicy::Always))
            .unwrap();
        env.mm
            .map_anon(&s, 0x5000_1000, M2, private(HugePolicy::Always))
            .unwrap();
        env.mm
            .map_anon(&s, 0x6000_0000, M2, private(HugePolicy::Never))
            .unwrap();
        assert_eq!(
            mapped(env, &s, 0x4030_0010, false),
            (0x4020_0000, PageSize::Size2M)
        );
        assert_eq!(
            mapped(env, &s, 0x5010_0000, false),
            (0x5010_0000, PageSize::Size4K)
        );
        assert_eq!(
            mapped(env, &s, 0x6000_0000, false),
            (0x6000_0000, PageSize::Size4K)
        );
        let (head, mapcount, refcount) = head_meta(env, &s, 0x4020_0000);
        assert!(head.is_aligned(9));
        assert_eq!((mapcount, refcount), (1, 1));
        // No 2 MiB block: the fault falls back to 4 KiB.
        env.frames.injector.fail_orders(&[9]);
        assert_eq!(
            mapped(env, &s, 0x4000_0000, true),
            (0x4000_0000, PageSize::Size4K)
        );
        env.frames.injector.fail_orders(&[]);
        // A 4 KiB page in the first 2 MiB: the next fault there stays 4 KiB.
        assert_eq!(
            mapped(env, &s, 0x4010_0000, true),
            (0x4010_0000, PageSize::Size4K)
        );
        env.audit();
    });
}

#[test]
fn faults_map_1g_on_sparse_memory_and_fall_back_in_order() {
    sparse(|env| {
        let s = env.mm.new_space().unwrap();
        env.mm
            .map_anon(&s, 2 * G1, 2 * G1, private(HugePolicy::Always))
            .unwrap();
        assert_eq!(
            mapped(env, &s, 2 * G1 + 12345, true),
            (2 * G1, PageSize::Size1G)
        );
        let (head, _, _) = head_meta(env, &s, 2 * G1);
        assert!(head.is_aligned(18));
        assert!(write_user(env.mem, &s, 2 * G1 + G1 - 8, 0xfeed));
        assert_eq!(read_user(env.mem, &s, 2 * G1 + G1 - 8), Some(0xfeed));
        env.frames.injector.fail_orders(&[18]);
        assert_eq!(
            mapped(env, &s, 3 * G1 + M2, false),
            (3 * G1 + M2, PageSize::Size2M)
        );
        env.frames.injector.fail_orders(&[18, 9]);
        assert_eq!(mapped(env, &s, 3 * G1, false), (3 * G1, PageSize::Size4K));
        env.frames.injector.fail_orders(&[]);
        assert!(
            env.mem.backed_frames() < 64,
            "zeroing must not back untouched frames"
        );
        env.audit();
    });
}

#[test]
fn fault_errors_are_typed_and_change_nothing() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        env.mm
            .map_anon(
                &s,
                0x10_0000,
                4 * K4,
                VmaFlags::private(HugePolicy::Never, false),
            )
            .unwrap();
        let before = snapshot(env, &s);
        let cases = [
            (0x20_0000, false, FaultError::NoVma),
            (0x10_0000, true, FaultError::ReadOnly),
            (0xFFFF_8000_0000_1000, false, FaultError::KernelHalf),
            (0x0000_8000_0000_0000, false, FaultError::NonCanonical),
        ];
        for (va, write, err) in cases {
            assert_eq!(env.mm.handle_fault(&s, va, write), Err(err));
            assert_eq!(snapshot(env, &s), before);
        }
        env.frames.injector.fail_orders(&[0]);
        assert_eq!(
            env.mm.handle_fault(&s, 0x10_0000, false),
            Err(FaultError::OutOfMemory)
        );
        assert_eq!(snapshot(env, &s), before);
        env.frames.injector.fail_orders(&[]);
        // The page-table allocation fails after the data frame was taken: it goes back.
        env.frames.injector.fail_nth(1);
        assert_eq!(
            env.mm.handle_fault(&s, 0x10_0000, false),
            Err(FaultError::OutOfMemory)
        );
        assert_eq!(snapshot(env, &s), before);
        assert_eq!(mapped(env, &s, 0x10_0000, false).1, PageSize::Size4K);
        env.audit();
    });
}

#[test]
fn on_request_maps_huge_pages_only_when_populated() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        env.mm
            .map_anon(&s, 0x4000_0000, 2 * M2, private(HugePolicy::OnRequest))
            .unwrap();
        assert_eq!(mapped(env, &s, 0x4000_0000, false).1, PageSize::Size4K);
        env.mm.populate(&s, 0x4000_0000, 2 * M2).unwrap();
        let sizes: Vec<_> = s.leaves().iter().map(|(_, t)| t.size).collect();
        assert_eq!(sizes.len(), 1 + 511 + 1);
        assert_eq!(sizes.last(), Some(&PageSize::Size2M));
        assert_eq!(
            env.mm.populate(&s, 0x4000_0000, 3 * M2),
            Err(SpaceError::NotMapped)
        );
        assert_eq!(
            env.mm.populate(&s, 0x4000_0000, 0),
            Err(SpaceError::ZeroLength)
        );
        env.audit();
    });
}

#[test]
fn partial_unmap_splits_a_huge_leaf_and_gives_the_unmapped_frames_back() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        s.cpus().insert(3);
        env.mm
            .map_anon(&s, 0x4000_0000, M2, private(HugePolicy::Always))
            .unwrap();
        mapped(env, &s, 0x4000_0000, true);
        assert!(write_user(env.mem, &s, 0x4010_0000, 77));
        let (head, _, _) = head_meta(env, &s, 0x4000_0000);
        env.log.take();
        env.mm.unmap(&s, 0x4000_1000, 2 * K4).unwrap();
        let events = env.log.take();
        // The split shoots the huge leaf down before the table is linked, then the
        // unmap shoots its two pages down; then the block is split in place and the two
        // unmapped frames go back to the allocator.
        assert!(
            matches!(
                &events[..],
                [Event::Shootdown { cpus: c1, ranges, .. }, Event::Shootdown { cpus: c2, .. }, rest @ ..]
                    if c1.contains(3) && c2.contains(3)
                        && ranges[..] == [(VirtAddr::new(0x4000_0000), PageSize::Size2M)]
                        && rest.len() == 2
                        && rest.iter().all(|e| matches!(e, Event::Free { order: 0, .. }))
            ),
            "{events:?}"
        );
        assert_eq!(s.leaves().len(), 510);
        assert_eq!(read_user(env.mem, &s, 0x4010_0000), Some(77));
        let meta = env.mm.meta(head).unwrap();
        assert_eq!(
            (meta.order(), meta.mapcount()),
            (0, 1),
            "split into 4 KiB blocks"
        );
        assert_eq!(env.mm.rmap_of(head).len(), 1);
        for freed in [head.add(1), head.add(2)] {
            assert_eq!(
                env.mm.meta(freed).unwrap().state(),
                crate::frame::meta::FrameState::Free
            );
        }
        assert_eq!(
            s.vmas()
                .iter()
                .map(|v| (v.start, v.end))
                .collect::<Vec<_>>(),
            [(0x4000_0000, 0x4000_1000), (0x4000_3000, 0x4020_0000)]
        );
        env.audit();
        let free = env.free_frames();
        let cached = cached_leaves(&[&s]);
        env.mm.unmap(&s, 0x4000_0000, M2).unwrap();
        let events = env.log.take();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Shootdown { full: true, .. })),
            "510 leaves: a full flush"
        );
        assert!(events.contains(&Event::Free {
            pfn: head.add(511),
            order: 0
        }));
        assert_eq!(uncovered_free(&cached, &events), None, "{events:?}");
        assert!(s.leaves().is_empty() && s.vmas().is_empty());
        assert_eq!(
            env.free_frames(),
            free + 510 + 3,
            "the rest of the block, three tables"
        );
        env.audit();
    });
}

#[test]
fn unmap_rejects_bad_ranges_and_skips_holes() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        env.mm
            .map_anon(&s, 0x10_0000, 4 * K4, private(HugePolicy::Never))
            .unwrap();
        mapped(env, &s, 0x10_0000, true);
        let before = snapshot(env, &s);
        for (start, len, err) in [
            (0x10_0000, 0, SpaceError::ZeroLength),
            (0x10_0800, K4, SpaceError::Unaligned),
            (0xFFFF_FFFF_FFFF_F000, K4, SpaceError::KernelHalf),
            (0x7FFF_FFFF_F000, 2 * K4, SpaceError::NonCanonical),
        ] {
            assert_eq!(env.mm.unmap(&s, start, len), Err(err));
            assert_eq!(snapshot(env, &s), before);
        }
        env.mm.unmap(&s, 0x20_0000, 16 * K4).unwrap();
        assert_eq!(snapshot(env, &s), before);
        env.mm.unmap(&s, 0, 0x20_0000).unwrap();
        assert!(s.vmas().is_empty() && s.leaves().is_empty());
        env.audit();
    });
}

#[test]
fn protect_changes_permissions_splitting_vmas_and_leaves() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        env.mm
            .map_anon(&s, 0x4000_0000, M2, private(HugePolicy::Always))
            .unwrap();
        mapped(env, &s, 0x4000_0000, true);
        let before = snapshot(env, &s);
        assert_eq!(
            env.mm.protect(&s, 0x4000_0000, 2 * M2, false),
            Err(SpaceError::NotMapped)
        );
        for (start, len, err) in [
            (0x4000_0000, 0, SpaceError::ZeroLength),
            (0x4000_0800, K4, SpaceError::Unaligned),
            (0xFFFF_8000_4000_0000, K4, SpaceError::KernelHalf),
            (LOWER_HALF_END - K4, 2 * K4, SpaceError::NonCanonical),
        ] {
            assert_eq!(env.mm.protect(&s, start, len, false), Err(err));
            assert_eq!(env.mm.populate(&s, start, len), Err(err));
        }
        assert_eq!(snapshot(env, &s), before);
        env.mm.protect(&s, 0x4010_0000, 16 * K4, false).unwrap();
        assert_eq!(s.vmas().len(), 3);
        assert_eq!(s.leaves().len(), 512);
        let ro = s.translate(0x4010_0000).unwrap();
        assert!(!ro.flags.contains(PageTableFlags::WRITABLE));
        assert!(s
            .translate(0x4011_0000)
            .unwrap()
            .flags
            .contains(PageTableFlags::WRITABLE));
        assert_eq!(
            env.mm.handle_fault(&s, 0x4010_0000, true),
            Err(FaultError::ReadOnly)
        );
        env.audit();
        env.mm.protect(&s, 0x4000_0000, M2, true).unwrap();
        assert!(s.vmas().iter().all(|v| v.flags.writable));
        env.audit();
    });
}

#[test]
fn a_shared_region_maps_one_frame_in_two_spaces() {
    arena(|env| {
        let a = env.mm.new_space().unwrap();
        let b = env.mm.new_space().unwrap();
        let region = SharedRegion::new(2 * M2).unwrap();
        env.mm
            .map_anon(
                &a,
                0x4000_0000,
                2 * M2,
                shared(&region, 0, HugePolicy::Always),
            )
            .unwrap();
        // B maps the second half only, at an address where 2 MiB leaves line up.
        env.mm
            .map_anon(&b, 0x8020_0000, M2, shared(&region, M2, HugePolicy::Always))
            .unwrap();
        assert_eq!(
            mapped(env, &b, 0x8020_1000, true),
            (0x8020_0000, PageSize::Size2M)
        );
        assert!(write_user(env.mem, &b, 0x8020_1008, 42));
        assert_eq!(
            mapped(env, &a, 0x4030_0000, false),
            (0x4020_0000, PageSize::Size2M)
        );
        assert_eq!(read_user(env.mem, &a, 0x4020_1008), Some(42));
        let (head, mapcount, refcount) = head_meta(env, &a, 0x4020_0000);
        assert_eq!((mapcount, refcount), (2, 3), "two mappings and the region");
        assert_eq!(env.mm.rmap_of(head).len(), 2);
        assert_eq!(region.frame_at(M2).unwrap().1.head, head);
        env.audit();
        assert_eq!(env.mm.release_region(&region), Err(SpaceError::RegionInUse));
        env.mm.unmap(&a, 0x4000_0000, 2 * M2).unwrap();
        assert_eq!(env.mm.meta(head).unwrap().refcount(), 2);
        env.audit();
        env.mm.destroy_space(&b).unwrap();
        env.audit();
        let free = env.free_frames();
        assert_eq!(env.mm.release_region(&region), Ok(1));
        assert_eq!(env.free_frames(), free + 512);
        env.audit();
    });
}

#[test]
fn a_huge_region_frame_is_mapped_in_pieces_where_it_does_not_line_up() {
    arena(|env| {
        let a = env.mm.new_space().unwrap();
        let b = env.mm.new_space().unwrap();
        let region = SharedRegion::new(M2).unwrap();
        env.mm
            .map_anon(&a, 0x4000_0000, M2, shared(&region, 0, HugePolicy::Always))
            .unwrap();
        env.mm
            .map_anon(
                &b,
                0x8000_1000,
                M2 - K4,
                shared(&region, K4, HugePolicy::Always),
            )
            .unwrap();
        mapped(env, &a, 0x4000_0000, true);
        assert!(write_user(env.mem, &a, 0x4000_5000, 5));
        assert_eq!(
            mapped(env, &b, 0x8000_5000, false),
            (0x8000_5000, PageSize::Size4K)
        );
        assert_eq!(read_user(env.mem, &b, 0x8000_5000), Some(5));
        let (_, mapcount, refcount) = head_meta(env, &a, 0x4000_0000);
        assert_eq!((mapcount, refcount), (2, 3));
        env.audit();
        env.mm.destroy_space(&a).unwrap();
        env.mm.destroy_space(&b).unwrap();
        assert_eq!(env.mm.release_region(&region), Ok(1));
        env.audit();
    });
}

#[test]
fn pins_keep_frames_and_errors_are_typed() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        env.mm
            .map_anon(&s, 0x10_0000, K4, private(HugePolicy::Never))
            .unwrap();
        mapped(env, &s, 0x10_0000, true);
        let pfn = Pfn::containing(s.translate(0x10_0000).unwrap().pa);
        assert_eq!(env.mm.pin(&s, 0x20_0000), Err(PinError::NotMapped));
        assert_eq!(
            env.mm.pin(&s, 0xFFFF_8000_0000_0000),
            Err(PinError::Space(SpaceError::KernelHalf))
        );
        let other = Mm::new(env.mem, env.frames, env.tlb, None);
        assert_eq!(
            other.pin(&s, 0x10_0000),
            Err(PinError::Space(SpaceError::ForeignSpace))
        );
        let table_pfn = Pfn::containing(s.root());
        assert_eq!(env.mm.unpin(table_pfn), Err(PinError::NotInUse));
        assert_eq!(env.mm.unpin(pfn), Err(PinError::NotPinned));
        assert_eq!(env.mm.unpin(Pfn(FRAMES)), Err(PinError::OutOfRange));
        assert_eq!(env.mm.pin(&s, 0x10_0000), Ok(pfn));
        env.audit();
        let free = env.free_frames();
        env.mm.unmap(&s, 0x10_0000, K4).unwrap();
        assert_eq!(
            env.free_frames(),
            free + 3,
            "tables go, the pinned frame stays"
        );
        env.audit();
        env.mm.unpin(pfn).unwrap();
        assert_eq!(env.free_frames(), free + 4);
        assert_eq!(env.mm.unpin(pfn), Err(PinError::NotInUse));
        env.audit();
    });
}

#[test]
fn pinned_vmas_get_unmovable_pinned_frames() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        let flags = VmaFlags {
            mobility: Mobility::Pinned,
            ..private(HugePolicy::Never)
        };
        env.mm.map_anon(&s, 0x10_0000, K4, flags).unwrap();
        mapped(env, &s, 0x10_0000, true);
        let pfn = Pfn::containing(s.translate(0x10_0000).unwrap().pa);
        let meta = env.mm.meta(pfn).unwrap();
        assert!(meta
            .flags()
            .contains(crate::frame::meta::FrameFlags::PINNED));
        assert!(!meta
            .flags()
            .contains(crate::frame::meta::FrameFlags::MOVABLE));
        env.audit();
    });
}

#[test]
fn destroy_space_frees_everything_once_no_cpu_uses_it() {
    arena(|env| {
        let free = env.free_frames();
        let s = env.mm.new_space().unwrap();
        env.mm
            .map_anon(&s, 0x4000_0000, 2 * M2, private(HugePolicy::Always))
            .unwrap();
        env.mm
            .map_anon(&s, 0x7000_0000_0000, 4 * K4, private(HugePolicy::Never))
            .unwrap();
        mapped(env, &s, 0x4000_0000, true);
        mapped(env, &s, 0x7000_0000_2000, true);
        s.cpus().insert(1);
        assert_eq!(env.mm.destroy_space(&s), Err(SpaceError::InUse));
        assert!(!s.is_destroyed());
        s.cpus().remove(1);
        env.mm.destroy_space(&s).unwrap();
        assert_eq!(env.free_frames(), free);
        assert!(env.mm.space(s.id()).is_none());
        assert_eq!(env.mm.destroy_space(&s), Err(SpaceError::SpaceDestroyed));
        assert_eq!(
            env.mm.map_anon(&s, 0, K4, private(HugePolicy::Never)),
            Err(SpaceError::SpaceDestroyed)
        );
        assert_eq!(
            env.mm.handle_fault(&s, 0x4000_0000, false),
            Err(FaultError::SpaceDestroyed)
        );
        assert_eq!(env.mm.unmap(&s, 0, K4), Err(SpaceError::SpaceDestroyed));
        assert_eq!(s.translate(0x4000_0000), None);
        env.audit();
    });
}

#[test]
fn new_spaces_share_the_kernel_half() {
    let frames = 256;
    let mem = Arena::new(frames);
    let log = testing::EventLog::default();
    let records = crate::frame::meta::FrameTable::boxed_records(frames as usize);
    let table = crate::frame::meta::FrameTable::new(&records).unwrap();
    let mut buddy = crate::frame::buddy::BuddyAllocator::new(table);
    buddy.add_free_range(Pfn(2), Pfn(frames)).unwrap();
    let src = crate::backend::source::BuddyFrames::new(buddy, crate::frame::node::NodeMap::new());
    let tlb = testing::TestTlb::new(&log);
    // Frame 1 plays the kernel's PML4, with an entry in each half.
    let kernel = PhysAddr::new(K4);
    mem.word(kernel + 8 * 300u64)
        .store(0xabc_0003, Ordering::Relaxed);
    mem.word(kernel + 8 * 5u64)
        .store(0xdef_0003, Ordering::Relaxed);
    let mm = Mm::new(&mem, &src, &tlb, Some(kernel));
    let s = mm.new_space().unwrap();
    assert_eq!(
        mem.word(s.root() + 8 * 300u64).load(Ordering::Relaxed),
        0xabc_0003
    );
    assert_eq!(mem.word(s.root() + 8 * 5u64).load(Ordering::Relaxed), 0);
    mm.destroy_space(&s).unwrap();
    assert_eq!(mem.word(s.root() + 8 * 300u64).load(Ordering::Relaxed), 0);
    assert!(mm.rmap_audit().is_ok());
    assert_eq!(src.lock().free_frames(), frames as usize - 2);
    assert_eq!(mm.frames().node_of(Pfn(3)), None);
}

#[test]
fn a_shootdown_that_frees_tables_says_so_and_comes_before_their_free() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        s.cpus().insert(2);
        env.mm
            .map_anon(&s, 0x4000_0000, 2 * K4, private(HugePolicy::Never))
            .unwrap();
        env.mm.populate(&s, 0x4000_0000, 2 * K4).unwrap();
        env.log.take();
        env.mm.protect(&s, 0x4000_0000, 2 * K4, false).unwrap();
        assert!(matches!(
            &env.log.take()[..],
            [Event::Shootdown { tables: false, .. }]
        ));
        let free = env.free_frames();
        let cached = cached_leaves(&[&s]);
        env.mm.unmap(&s, 0x4000_0000, 2 * K4).unwrap();
        let events = env.log.take();
        assert_eq!(uncovered_free(&cached, &events), None, "{events:?}");
        let Some((
            Event::Shootdown {
                cpus, tables: true, ..
            },
            frees,
        )) = events.split_first()
        else {
            panic!("one shootdown saying tables are freed, first: {events:?}");
        };
        assert!(cpus.contains(2));
        // Two 4 KiB frames, then the page table, page directory and PDPT that held them.
        assert_eq!(frees.len(), 5, "{events:?}");
        assert!(frees
            .iter()
            .all(|e| matches!(e, Event::Free { order: 0, .. })));
        assert_eq!(env.free_frames(), free + 5);
        env.audit();
    });
}

#[test]
fn a_flush_dropped_without_completing_frees_nothing() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        s.cpus().insert(1);
        env.mm
            .map_anon(&s, 0x4000_0000, 2 * K4, private(HugePolicy::Never))
            .unwrap();
        env.mm.populate(&s, 0x4000_0000, 2 * K4).unwrap();
        let (head, _, _) = head_meta(env, &s, 0x4000_0000);
        let (free, leaked) = (env.free_frames(), leaked_frames());
        env.log.take();
        let mut flush = Flush::new();
        let mut st = s.state.lock();
        env.mm
            .unmap_locked(&s, &mut st, 0x4000_0000, 0x4000_0000 + 2 * K4, &mut flush)
            .unwrap();
        drop(st);
        drop(flush);
        assert_eq!(env.log.take(), [], "no shootdown, no free");
        assert_eq!(env.free_frames(), free);
        let meta = env.mm.meta(head).unwrap();
        assert_eq!(meta.refcount(), 1, "{head:?} kept");
        // Two references and three tables, counted (other tests leak nothing).
        assert!(leaked_frames() >= leaked + 5);
    });
}

#[test]
fn the_audit_reads_software_entries_from_the_page_table() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        env.mm
            .map_anon(&s, 0x10_0000, K4, private(HugePolicy::Never))
            .unwrap();
        mapped(env, &s, 0x10_0000, true);
        env.audit();
        // A migration entry that no migration lists (a CPU faulting on it would wait
        // for ever): the audit finds it in the table.
        let mut st = s.state.lock();
        let leaf = st.pt.entry_at(0x10_0000, 1).unwrap();
        let mig = MigrationEntry::from_leaf(leaf, PageSize::Size4K).unwrap();
        st.pt
            .compare_exchange_leaf(0x10_0000, 1, leaf, mig.entry())
            .unwrap();
        drop(st);
        assert_eq!(
            env.mm.rmap_audit(),
            Err(RmapAuditError::MigratingList { space: s.id() })
        );
        let mut st = s.state.lock();
        st.pt
            .compare_exchange_leaf(0x10_0000, 1, mig.entry(), leaf)
            .unwrap();
        drop(st);
        env.audit();
    });
}

#[test]
fn fault_and_space_errors_keep_their_cause() {
    // Space errors with no fault equivalent used to become `NonCanonical`.
    for e in [
        SpaceError::RegionInUse,
        SpaceError::InUse,
        SpaceError::NoSuchNode,
        SpaceError::Split(SplitError::NotMapped),
    ] {
        assert_eq!(FaultError::from(e), FaultError::Space(e));
        assert_eq!(SpaceError::from(FaultError::from(e)), e);
    }
    assert_eq!(
        FaultError::from(SpaceError::KernelHalf),
        FaultError::KernelHalf
    );
    assert_eq!(
        FaultError::from(VmaError::Overlap),
        FaultError::Space(SpaceError::Overlap)
    );
}
