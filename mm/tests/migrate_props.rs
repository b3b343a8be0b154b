//! Migration through the public API: every typed error leaves mappings, contents and
//! the allocator unchanged; 4 KiB, 2 MiB and 1 GiB blocks move whole with their contents,
//! flags and accessed/dirty bits; batches with injected allocation failures and a pin in
//! the middle report page by page and lose nothing; NUMA moves keep huge pages huge; and
//! a threaded stress test runs writers against a migrator over an emulated MMU whose
//! "TLB" lives for one access, so a shootdown waits for accesses in flight, while another
//! CPU maps, protects, unmaps and destroys address spaces and releases shared regions
//! whose pages the migrator moves too, and pins and unpins the writers' pages.
#![cfg(feature = "std")]

use mm::aspace::testing::{
    cached_leaves, read_user, uncovered_free, with_env, write_user, EmuCpu, EmuTlb, Env, Event,
    SparseMem,
};
use mm::aspace::{leaked_frames, AddressSpace, Mm, PinError, SpaceError};
use mm::backend::phys::{Arena, PhysMem};
use mm::backend::source::BuddyFrames;
use mm::backend::source::FrameSource;
use mm::base::addr::{PageSize, Pfn};
use mm::frame::buddy::BuddyAllocator;
use mm::frame::meta::FrameTable;
use mm::frame::node::{NodeId, NodeMap};
use mm::mapping::region::SharedRegion;
use mm::mapping::vma::{HugePolicy, Mobility, SharedBacking, VmaFlags};
use mm::ops::migrate::{Destination, MigrateError};
use mm::paging::testing::leaf_word;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use x86_64::structures::paging::PageTableFlags;
use x86_64::VirtAddr;

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
const FRAMES: u64 = 8192;

fn arena<R>(f: impl FnOnce(&Env<'_, Arena>) -> R) -> R {
    with_env(Arena::new(FRAMES), FRAMES, &[], f)
}

fn private(huge: HugePolicy) -> VmaFlags {
    VmaFlags::private(huge, true)
}

fn head_at<'a, M: PhysMem>(env: &Env<'a, M>, space: &AddressSpace<'a, M>, va: u64) -> Pfn {
    let pa = space.translate(va).expect("mapped").pa;
    let table = env.frames.frame_table();
    table.head_of(Pfn::containing(pa)).expect("allocated")
}

/// A recognisable value for byte offset `off` of a page.
fn pattern(seed: u64, off: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ off
}

/// Offsets worth checking in a block of `size`: both ends and a few frames inside.
fn probes(size: PageSize) -> Vec<u64> {
    let b = size.bytes();
    let mut v = vec![0, 8, K4 - 8, K4, b / 2, b / 2 + 4088, b - 8];
    v.retain(|&o| o < b);
    v.sort_unstable();
    v.dedup();
    v
}

fn fill<'a, M: PhysMem>(
    env: &Env<'a, M>,
    s: &AddressSpace<'a, M>,
    va: u64,
    size: PageSize,
    seed: u64,
) {
    for off in probes(size) {
        assert!(write_user(env.mem, s, va + off, pattern(seed, off)));
    }
}

fn check<'a, M: PhysMem>(
    env: &Env<'a, M>,
    s: &AddressSpace<'a, M>,
    va: u64,
    size: PageSize,
    seed: u64,
) {
    for off in probes(size) {
        assert_eq!(
            read_user(env.mem, s, va + off),
            Some(pattern(seed, off)),
            "{va:#x}+{off:#x}"
        );
    }
}

/// Everything a refused migration must leave unchanged.
#[derive(Debug, PartialEq, Eq)]
struct State {
    leaves: Vec<Vec<(VirtAddr, mm::paging::Translation)>>,
    free: usize,
    rmap: Vec<mm::mapping::rmap::RmapEntry>,
}

fn state<'a, M: PhysMem>(env: &Env<'a, M>, spaces: &[&AddressSpace<'a, M>], head: Pfn) -> State {
    State {
        leaves: spaces.iter().map(|s| s.leaves()).collect(),
        free: env.free_frames(),
        rmap: env.mm.rmap_of(head),
    }
}

#[test]
fn every_refusal_is_typed_and_changes_nothing() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        env.mm
            .map_anon(&s, 0x4000_0000, M2, private(HugePolicy::Always))
            .unwrap();
        env.mm
            .map_anon(&s, 0x5000_0000, 2 * K4, private(HugePolicy::Never))
            .unwrap();
        let pinned = VmaFlags {
            mobility: Mobility::Pinned,
            ..private(HugePolicy::Never)
        };
        env.mm.map_anon(&s, 0x6000_0000, K4, pinned).unwrap();
        env.mm.populate(&s, 0x4000_0000, M2).unwrap();
        env.mm.populate(&s, 0x5000_0000, 2 * K4).unwrap();
        env.mm.populate(&s, 0x6000_0000, K4).unwrap();
        fill(env, &s, 0x4000_0000, PageSize::Size2M, 1);
        let huge = head_at(env, &s, 0x4000_0000);
        let small = head_at(env, &s, 0x5000_0000);
        let other = head_at(env, &s, 0x5000_1000);
        let unmovable = head_at(env, &s, 0x6000_0000);
        let free_pfn = (1..FRAMES)
            .map(Pfn)
            .find(|&p| env.frames.buddy().lock().is_free(p))
            .unwrap();
        let table_pfn = Pfn::containing(s.root());
        let cases = [
            (Pfn(FRAMES + 5), Destination::Any, MigrateError::OutOfRange),
            (huge.add(1), Destination::Any, MigrateError::NotHead),
            (free_pfn, Destination::Any, MigrateError::NotInUse),
            (Pfn(0), Destination::Any, MigrateError::NotInUse),
            (table_pfn, Destination::Any, MigrateError::NotInUse),
            (unmovable, Destination::Any, MigrateError::Unmovable),
            (
                huge,
                Destination::Frame(huge.add(512 + 1)),
                MigrateError::DestinationUnaligned,
            ),
            (
                huge,
                Destination::Frame(huge),
                MigrateError::DestinationOverlaps,
            ),
            (
                small,
                Destination::Frame(small),
                MigrateError::DestinationOverlaps,
            ),
            (
                small,
                Destination::Frame(Pfn(FRAMES)),
                MigrateError::DestinationOutOfRange,
            ),
            (
                huge,
                Destination::Frame(Pfn(FRAMES - 256)),
                MigrateError::DestinationOutOfRange,
            ),
            (
                small,
                Destination::Frame(other),
                MigrateError::DestinationNotFree,
            ),
            (
                small,
                Destination::Frame(table_pfn),
                MigrateError::DestinationNotFree,
            ),
            (
                small,
                Destination::Node(NodeId(7)),
                MigrateError::NoSuchNode,
            ),
        ];
        for (src, dst, err) in cases {
            let before = state(env, &[&s], huge);
            assert_eq!(env.mm.migrate_one(src, dst), Err(err), "{src:?} -> {dst:?}");
            assert_eq!(state(env, &[&s], huge), before);
        }
        // Allocation failure of the destination.
        let before = state(env, &[&s], huge);
        env.frames.injector.fail_nth(0);
        assert_eq!(
            env.mm.migrate_one(huge, Destination::Any),
            Err(MigrateError::OutOfMemory)
        );
        assert_eq!(state(env, &[&s], huge), before);
        // Pinned, then unpinned.
        env.mm.pin(&s, 0x4000_0000).unwrap();
        assert_eq!(
            env.mm.migrate_one(huge, Destination::Any),
            Err(MigrateError::Pinned)
        );
        assert_eq!(state(env, &[&s], huge), before);
        env.mm.unpin(huge).unwrap();
        // The same block twice in one batch: the second is under migration.
        let results = env
            .mm
            .migrate_batch(&[(huge, Destination::Any), (huge, Destination::Any)]);
        assert!(results[0].is_ok());
        assert_eq!(results[1], Err(MigrateError::AlreadyMigrating));
        check(env, &s, 0x4000_0000, PageSize::Size2M, 1);
        env.audit();
    });
}

/// Migrate the block mapped at `va` to `dst`, checking contents, leaf size and flags,
/// accessed/dirty, the reverse map and that the source is freed after a shootdown of
/// every one of its mappings on every CPU that had the space loaded.
fn migrate_and_check<'a, M: PhysMem>(
    env: &Env<'a, M>,
    spaces: &[(&AddressSpace<'a, M>, u64)],
    size: PageSize,
    dst: Destination,
    seed: u64,
) -> Pfn {
    let (s0, va0) = spaces[0];
    let src = head_at(env, s0, va0);
    let before: Vec<_> = spaces
        .iter()
        .map(|(s, va)| s.translate(*va).unwrap())
        .collect();
    let cached = cached_leaves(&spaces.iter().map(|&(s, _)| s).collect::<Vec<_>>());
    env.log.take();
    let new = env.mm.migrate_one(src, dst).expect("migration");
    assert_ne!(new, src);
    if let Destination::Frame(want) = dst {
        assert_eq!(new, want);
    }
    for ((s, va), old) in spaces.iter().zip(&before) {
        let t = s.translate(*va).unwrap();
        assert_eq!(t.size, size);
        assert_eq!(t.flags, old.flags, "flags, accessed and dirty carried over");
        assert_eq!(head_at(env, s, *va), new);
        check(env, s, *va, size, seed);
    }
    assert_eq!(env.mm.rmap_of(new).len(), spaces.len());
    assert!(env.mm.rmap_of(src).is_empty());
    let events = env.log.take();
    assert!(
        events.contains(&Event::Free {
            pfn: src,
            order: size.order(),
        }),
        "the source is freed: {events:?}"
    );
    assert_eq!(uncovered_free(&cached, &events), None, "{events:?}");
    assert_eq!(leaked_frames(), 0, "every flush completed");
    env.audit();
    new
}

#[test]
fn a_4k_page_moves_with_its_contents_and_dirty_bit() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        s.cpus().insert(2);
        env.mm
            .map_anon(&s, 0x10_0000, K4, private(HugePolicy::Never))
            .unwrap();
        env.mm.populate(&s, 0x10_0000, K4).unwrap();
        fill(env, &s, 0x10_0000, PageSize::Size4K, 7);
        let (word, _) = leaf_word(env.mem, s.root(), 0x10_0000).unwrap();
        word.fetch_or(
            (PageTableFlags::ACCESSED | PageTableFlags::DIRTY).bits(),
            Ordering::AcqRel,
        );
        let target = (1..FRAMES)
            .rev()
            .map(Pfn)
            .find(|&p| env.frames.buddy().lock().is_free(p))
            .unwrap();
        let new = migrate_and_check(
            env,
            &[(&s, 0x10_0000)],
            PageSize::Size4K,
            Destination::Frame(target),
            7,
        );
        assert!(s
            .translate(0x10_0000)
            .unwrap()
            .flags
            .contains(PageTableFlags::DIRTY));
        let back = migrate_and_check(
            env,
            &[(&s, 0x10_0000)],
            PageSize::Size4K,
            Destination::Any,
            7,
        );
        assert_ne!(back, new);
    });
}

#[test]
fn a_2m_mapping_shared_by_two_spaces_moves_whole() {
    arena(|env| {
        let a = env.mm.new_space().unwrap();
        let b = env.mm.new_space().unwrap();
        a.cpus().insert(0);
        b.cpus().insert(1);
        let region = SharedRegion::new(M2).unwrap();
        let flags = |writable| VmaFlags {
            shared: Some(SharedBacking {
                region: region.clone(),
                offset: 0,
            }),
            ..VmaFlags::private(HugePolicy::Always, writable)
        };
        env.mm.map_anon(&a, 0x4000_0000, M2, flags(true)).unwrap();
        env.mm.map_anon(&b, 0x8000_0000, M2, flags(false)).unwrap();
        env.mm.populate(&a, 0x4000_0000, M2).unwrap();
        env.mm.populate(&b, 0x8000_0000, M2).unwrap();
        fill(env, &a, 0x4000_0000, PageSize::Size2M, 3);
        let spaces = [(&*a, 0x4000_0000), (&*b, 0x8000_0000)];
        env.log.take();
        let new = migrate_and_check(env, &spaces, PageSize::Size2M, Destination::Any, 3);
        assert_eq!(
            region.frame_at(0).unwrap().0,
            new,
            "the region follows the frame"
        );
        assert!(!b
            .translate(0x8000_0000)
            .unwrap()
            .flags
            .contains(PageTableFlags::WRITABLE));
        let back = migrate_and_check(env, &spaces, PageSize::Size2M, Destination::Any, 3);
        assert_eq!(region.frame_at(K4).unwrap().0, back.add(1));
        a.cpus().remove(0);
        b.cpus().remove(1);
        env.mm.destroy_space(&a).unwrap();
        env.mm.destroy_space(&b).unwrap();
        assert_eq!(env.mm.release_region(&region), Ok(1));
        env.audit();
    });
}

#[test]
fn a_1g_mapping_moves_whole_on_sparse_memory() {
    let frames = 4 * G1 / K4;
    with_env(SparseMem::new(frames), frames, &[], |env| {
        let s = env.mm.new_space().unwrap();
        s.cpus().insert(1);
        env.mm
            .map_anon(&s, G1, G1, private(HugePolicy::Always))
            .unwrap();
        env.mm.populate(&s, G1, G1).unwrap();
        assert_eq!(s.leaves().len(), 1);
        fill(env, &s, G1, PageSize::Size1G, 11);
        let first = migrate_and_check(env, &[(&s, G1)], PageSize::Size1G, Destination::Any, 11);
        let free_1g = (1..4u64)
            .map(|g| Pfn(g * G1 / K4))
            .find(|&p| {
                p != first
                    && env
                        .frames
                        .buddy()
                        .lock()
                        .free_block_containing(p)
                        .is_some_and(|(_, o)| o == 18)
            })
            .unwrap();
        migrate_and_check(
            env,
            &[(&s, G1)],
            PageSize::Size1G,
            Destination::Frame(free_1g),
            11,
        );
        assert_eq!(
            env.mm.migrate_one(free_1g, Destination::Frame(free_1g)),
            Err(MigrateError::DestinationOverlaps)
        );
    });
}

#[test]
fn a_batch_reports_page_by_page_and_loses_nothing() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        env.mm
            .map_anon(&s, 0x4000_0000, 2 * M2, private(HugePolicy::Always))
            .unwrap();
        env.mm
            .map_anon(&s, 0x5000_0000, 4 * K4, private(HugePolicy::Never))
            .unwrap();
        env.mm.populate(&s, 0x4000_0000, 2 * M2).unwrap();
        env.mm.populate(&s, 0x5000_0000, 4 * K4).unwrap();
        let pages: Vec<(u64, PageSize)> = vec![
            (0x4000_0000, PageSize::Size2M),
            (0x5000_0000, PageSize::Size4K),
            (0x4020_0000, PageSize::Size2M),
            (0x5000_1000, PageSize::Size4K),
            (0x5000_2000, PageSize::Size4K),
        ];
        for (i, &(va, size)) in pages.iter().enumerate() {
            fill(env, &s, va, size, i as u64);
        }
        let heads: Vec<Pfn> = pages.iter().map(|&(va, _)| head_at(env, &s, va)).collect();
        // Page 3 is pinned by a "device" before the batch; allocation 1 (page 1's
        // destination) fails; page 4 gets pinned just before allocation 2, once the
        // batch has claimed every page: that pin is refused and page 4 moves.
        env.mm.pin(&s, pages[3].0).unwrap();
        let free = env.free_frames();
        env.frames.injector.fail_nth(1);
        env.frames.injector.pin_at_nth(2, &s, pages[4].0);
        let batch: Vec<_> = heads.iter().map(|&h| (h, Destination::Any)).collect();
        let results = env.mm.migrate_batch(&batch);
        assert!(
            results[0].is_ok() && results[2].is_ok() && results[4].is_ok(),
            "{results:?}"
        );
        assert_eq!(results[1], Err(MigrateError::OutOfMemory));
        assert_eq!(results[3], Err(MigrateError::Pinned));
        assert_eq!(
            env.frames.injector.injected_pin(),
            Some(Err(PinError::Migrating)),
            "a pin of a claimed page is refused"
        );
        for (i, &(va, size)) in pages.iter().enumerate() {
            check(env, &s, va, size, i as u64);
            let now = head_at(env, &s, va);
            match results[i] {
                Ok(new) => assert_eq!(now, new),
                Err(_) => assert_eq!(now, heads[i], "a failed page stays where it was"),
            }
        }
        assert_eq!(env.free_frames(), free, "no frame leaked");
        env.audit();
        env.mm.unpin(heads[3]).unwrap();
        let again = env
            .mm
            .migrate_batch(&[(heads[1], Destination::Any), (heads[3], Destination::Any)]);
        assert!(again.iter().all(Result::is_ok), "{again:?}");
        env.audit();
    });
}

#[test]
fn moving_a_range_to_a_node_keeps_huge_pages_huge() {
    let frames = 4 * G1 / K4;
    let half = frames / 2;
    with_env(
        SparseMem::new(frames),
        frames,
        &[(0, half, 0), (half, frames, 1)],
        |env| {
            let s = env.mm.new_space().unwrap();
            let on0 = |huge| VmaFlags {
                node: Some(NodeId(0)),
                ..private(huge)
            };
            env.mm
                .map_anon(&s, G1, G1 + 2 * M2, on0(HugePolicy::Always))
                .unwrap();
            env.mm
                .map_anon(&s, 8 * G1, 4 * K4, on0(HugePolicy::Never))
                .unwrap();
            env.mm.populate(&s, G1, G1 + 2 * M2).unwrap();
            env.mm.populate(&s, 8 * G1, 4 * K4).unwrap();
            let sizes = |s: &AddressSpace<'_, SparseMem>| {
                s.leaves().iter().map(|(_, t)| t.size).collect::<Vec<_>>()
            };
            let before = sizes(&s);
            assert_eq!(before.iter().filter(|&&z| z == PageSize::Size1G).count(), 1);
            assert_eq!(before.iter().filter(|&&z| z == PageSize::Size2M).count(), 2);
            fill(env, &s, G1, PageSize::Size1G, 21);
            fill(env, &s, 2 * G1 + M2, PageSize::Size2M, 22);
            fill(env, &s, 8 * G1 + K4, PageSize::Size4K, 23);
            for (_, t) in s.leaves() {
                assert_eq!(env.frames.node_of(Pfn::containing(t.pa)), Some(NodeId(0)));
            }
            let usage0 = env.frames.buddy().usage();
            // Bad input first: nothing moves.
            assert_eq!(
                env.mm.move_range_to_node(&s, G1, G1, NodeId(4)),
                Err(SpaceError::NoSuchNode)
            );
            assert_eq!(
                env.mm.move_range_to_node(&s, 0, G1, NodeId(1)),
                Err(SpaceError::NotMapped)
            );
            assert_eq!(
                env.mm.move_range_to_node(&s, G1 + 1, K4, NodeId(1)),
                Err(SpaceError::Unaligned)
            );
            assert_eq!(
                env.mm
                    .move_range_to_node(&s, 0xFFFF_8000_0000_0000, K4, NodeId(1)),
                Err(SpaceError::KernelHalf)
            );
            assert_eq!(
                env.mm.move_range_to_node(&s, G1, 0, NodeId(1)),
                Err(SpaceError::ZeroLength)
            );
            assert_eq!(
                env.mm
                    .move_range_to_node(&s, 0x7FFF_FFFF_F000, 2 * K4, NodeId(1)),
                Err(SpaceError::NonCanonical)
            );
            assert_eq!(env.frames.buddy().usage(), usage0);
            // Part of the first 1 GiB and all the rest: every block moves whole.
            let report = env
                .mm
                .move_range_to_node(&s, G1 + G1 / 2, G1 / 2 + 2 * M2, NodeId(1))
                .unwrap();
            assert_eq!(
                (
                    report.moved.len(),
                    report.failed.len(),
                    report.already_there
                ),
                (3, 0, 0)
            );
            let report = env
                .mm
                .move_range_to_node(&s, 8 * G1, 4 * K4, NodeId(1))
                .unwrap();
            assert_eq!(report.moved.len(), 4);
            assert_eq!(sizes(&s), before, "2M and 1G stay huge");
            for (_, t) in s.leaves() {
                assert_eq!(env.frames.node_of(Pfn::containing(t.pa)), Some(NodeId(1)));
            }
            check(env, &s, G1, PageSize::Size1G, 21);
            check(env, &s, 2 * G1 + M2, PageSize::Size2M, 22);
            check(env, &s, 8 * G1 + K4, PageSize::Size4K, 23);
            let usage1 = env.frames.buddy().usage();
            let moved = (G1 + 2 * M2 + 4 * K4) / K4;
            assert_eq!(usage1[0].used, usage0[0].used - moved);
            assert_eq!(usage1[1].used, usage0[1].used + moved);
            let again = env.mm.move_range_to_node(&s, G1, G1, NodeId(1)).unwrap();
            assert_eq!((again.moved.len(), again.already_there), (0, 1));
            env.audit();
        },
    );
}

/// Pages the churning CPU has mapped now: (address space, address).
type Published<'a> = Mutex<Vec<(Arc<AddressSpace<'a, Arena>>, u64)>>;

/// One round of the churning CPU: a fresh address space with private 4 KiB and 2 MiB
/// pages and a window of a fresh shared region (mapped twice), filled and checked through
/// the emulated MMU while the migrator may move any of it; then part protected read-only,
/// part unmapped, the rest destroyed with the space, and the region released.
fn churn<'a>(cpu: &EmuCpu<'_, 'a, Arena>, published: &Published<'a>, round: u64) {
    let mm = cpu.mm();
    let c = mm.new_space().unwrap();
    let region = SharedRegion::new(M2).unwrap();
    let base = 0x10_0000_0000u64;
    let small = base;
    let huge = base + 0x4000_0000;
    let (win_a, win_b) = (base + 0x8000_0000, base + 0xC000_0000);
    let window = |r: &Arc<SharedRegion>| VmaFlags {
        shared: Some(SharedBacking {
            region: r.clone(),
            offset: 0,
        }),
        ..private(HugePolicy::Always)
    };
    mm.map_anon(&c, small, 4 * K4, private(HugePolicy::Never))
        .unwrap();
    mm.map_anon(&c, huge, M2, private(HugePolicy::Always))
        .unwrap();
    mm.map_anon(&c, win_a, M2, window(&region)).unwrap();
    mm.map_anon(&c, win_b, M2, window(&region)).unwrap();
    c.cpus().insert(3);
    *published.lock().unwrap() = vec![
        (c.clone(), small),
        (c.clone(), small + K4),
        (c.clone(), huge),
        (c.clone(), win_a),
    ];
    let vas = [small, small + 3 * K4 + 8, huge + M2 / 2, win_a + 16];
    for (k, &va) in vas.iter().enumerate() {
        cpu.access(&c, va, true, |w| {
            w.store(round * 10 + k as u64, Ordering::Release)
        });
    }
    for (k, &va) in vas.iter().enumerate() {
        let got = cpu.access(&c, va, false, |w| w.load(Ordering::Acquire));
        assert_eq!(got, round * 10 + k as u64, "churn lost a write at {va:#x}");
    }
    let through_b = cpu.access(&c, win_b + 16, false, |w| w.load(Ordering::Acquire));
    assert_eq!(
        through_b,
        round * 10 + 3,
        "the region's two windows disagree"
    );
    mm.protect(&c, small, 2 * K4, false).unwrap();
    mm.unmap(&c, small + 2 * K4, 2 * K4).unwrap();
    mm.unmap(&c, win_b, M2).unwrap();
    c.cpus().remove(3);
    published.lock().unwrap().clear();
    mm.destroy_space(&c).unwrap();
    assert_eq!(mm.release_region(&region), Ok(1));
}

#[test]
fn writers_on_three_cpus_never_lose_data_while_a_fourth_migrates() {
    const STRESS_FRAMES: u64 = 16384;
    const MIGRATIONS: usize = 1000;
    let mem = Arena::new(STRESS_FRAMES);
    let records = FrameTable::boxed_records(STRESS_FRAMES as usize);
    let table = FrameTable::new(&records).unwrap();
    let mut buddy = BuddyAllocator::new(table);
    buddy.add_free_range(Pfn(1), Pfn(STRESS_FRAMES)).unwrap();
    let frames = BuddyFrames::new(buddy, NodeMap::single(Pfn(0), Pfn(STRESS_FRAMES)));
    let tlb = EmuTlb::default();
    let mm = Mm::new(&mem, &frames, &tlb, None);
    let a = mm.new_space().unwrap();
    let b = mm.new_space().unwrap();
    let region = SharedRegion::new(3 * M2).unwrap();
    let shared = |offset| VmaFlags {
        shared: Some(SharedBacking {
            region: region.clone(),
            offset,
        }),
        ..private(HugePolicy::Always)
    };
    // Per writer: a private 4 KiB page and 2 MiB page in A, and a 2 MiB shared page
    // mapped in A and B (written through both).
    for w in 0..3u64 {
        let base = 0x4000_0000 + w * 0x1000_0000;
        mm.map_anon(&a, base, K4, private(HugePolicy::Never))
            .unwrap();
        mm.map_anon(&a, base + M2, M2, private(HugePolicy::Always))
            .unwrap();
        mm.map_anon(&a, base + 2 * M2, M2, shared(w * M2)).unwrap();
        mm.map_anon(&b, base + 2 * M2, M2, shared(w * M2)).unwrap();
        // Fault everything in first: the migrator may finish before a writer's first
        // access, and the region must hold all three blocks whatever the interleaving.
        mm.populate(&a, base, K4).unwrap();
        mm.populate(&a, base + M2, 2 * M2).unwrap();
    }
    let done = AtomicBool::new(false);
    let moved = AtomicUsize::new(0);
    let writes = AtomicUsize::new(0);
    // What the churning CPU has mapped now, for the migrator to move as well.
    let churned: Published<'_> = Mutex::new(Vec::new());
    let churn_rounds = AtomicUsize::new(0);
    let pins = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for w in 0..3usize {
            let (mm, mem, tlb, a, b, done, writes) = (&mm, &mem, &tlb, &a, &b, &done, &writes);
            scope.spawn(move || {
                a.cpus().insert(w as u32);
                b.cpus().insert(w as u32);
                let cpu = EmuCpu::new(mm, mem, tlb, w);
                let base = 0x4000_0000 + w as u64 * 0x1000_0000;
                let mut value = 0u64;
                while !done.load(Ordering::Acquire) {
                    value += 1;
                    // The shared page is written through A and B in turn and read back
                    // through the other one.
                    let (wr, rd) = if value % 2 == 0 {
                        (&**a, &**b)
                    } else {
                        (&**b, &**a)
                    };
                    let pages = [
                        (base, K4, &**a, &**a),
                        (base + M2, M2, &**a, &**a),
                        (base + 2 * M2, M2, wr, rd),
                    ];
                    for &(va, len, wspace, rspace) in &pages {
                        let offs = [0, len / 2 + 8, len - 8];
                        for &o in &offs {
                            cpu.access(wspace, va + o, true, |word| {
                                word.store(value, Ordering::Release)
                            });
                        }
                        for &o in &offs {
                            let got = cpu
                                .access(rspace, va + o, false, |word| word.load(Ordering::Acquire));
                            assert_eq!(got, value, "writer {w} lost a write at {va:#x}+{o:#x}");
                        }
                    }
                    writes.fetch_add(1, Ordering::Relaxed);
                }
                a.cpus().remove(w as u32);
                b.cpus().remove(w as u32);
            });
        }
        let churner = (&mm, &mem, &tlb, &a, &done, &churned, &churn_rounds, &pins);
        scope.spawn(move || {
            let (mm, mem, tlb, a, done, churned, churn_rounds, pins) = churner;
            let cpu = EmuCpu::new(mm, mem, tlb, 3);
            let mut round = 0u64;
            while !done.load(Ordering::Acquire) {
                round += 1;
                churn(&cpu, churned, round);
                churn_rounds.fetch_add(1, Ordering::Relaxed);
                // Pin and unpin a writer's page while it may be migrating.
                let va = 0x4000_0000 + (round % 3) * 0x1000_0000 + (round % 2) * M2;
                match mm.pin(a, va) {
                    Ok(head) => {
                        let t = a.translate(va).expect("a pinned page stays mapped");
                        assert_eq!(
                            mm.frames().frame_table().head_of(Pfn::containing(t.pa)),
                            Some(head),
                            "the pinned block is the one mapped at {va:#x}"
                        );
                        mm.unpin(head).unwrap();
                        pins.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(PinError::Migrating) => {}
                    Err(e) => panic!("pin {va:#x}: {e:?}"),
                }
            }
        });
        let (mm, a, done, moved, churned) = (&mm, &a, &done, &moved, &churned);
        scope.spawn(move || {
            let vas: Vec<u64> = (0..3u64)
                .flat_map(|w| {
                    let base = 0x4000_0000 + w * 0x1000_0000;
                    [base, base + M2, base + 2 * M2]
                })
                .collect();
            let mut i = 0;
            while moved.load(Ordering::Relaxed) < MIGRATIONS {
                let va = vas[i % vas.len()];
                i += 1;
                // Every other batch also moves a page that the churning CPU is mapping,
                // protecting, unmapping or destroying meanwhile (its result is whatever
                // the race gives; only the writers' pages count).
                if i % 2 == 0 {
                    let pick = {
                        let list = churned.lock().unwrap();
                        (!list.is_empty()).then(|| list[i % list.len()].clone())
                    };
                    if let Some((space, cva)) = pick {
                        if let Some(t) = space.translate(cva) {
                            if let Some(h) =
                                mm.frames().frame_table().head_of(Pfn::containing(t.pa))
                            {
                                let _ = mm.migrate_one(h, Destination::Any);
                            }
                        }
                    }
                }
                let Some(t) = a.translate(va) else {
                    continue;
                };
                let head = mm
                    .frames()
                    .frame_table()
                    .head_of(Pfn::containing(t.pa))
                    .unwrap();
                let batch = [(head, Destination::Any)];
                if let [Ok(_)] = mm.migrate_batch(&batch)[..] {
                    moved.fetch_add(1, Ordering::Relaxed);
                }
            }
            done.store(true, Ordering::Release);
        });
    });
    assert!(writes.load(Ordering::Relaxed) > 0);
    assert!(
        churn_rounds.load(Ordering::Relaxed) > 0,
        "the churning CPU ran"
    );
    assert!(pins.load(Ordering::Relaxed) > 0, "pins went through");
    assert!(tlb.calls() >= MIGRATIONS);
    mm.rmap_audit().unwrap();
    frames.lock().audit().unwrap();
    mm.destroy_space(&a).unwrap();
    mm.destroy_space(&b).unwrap();
    assert_eq!(mm.release_region(&region), Ok(3));
    mm.rmap_audit().unwrap();
    assert_eq!(frames.lock().free_frames(), STRESS_FRAMES as usize - 1);
}
