//! Contiguity generation through the public API: VMAs whose pages were faulted in
//! interleaved end in one chunk aligned for huge mappings, with their data; pinned pages
//! stay put and cost at most two chunks each; pages on each other's targets are exchanged
//! with each other; a region shared by two spaces is placed once;
//! huge blocks (whole or partly mapped) move
//! whole; blocks of another size on the targets (another VMA's 2 MiB block under 4 KiB
//! targets, its 4 KiB pages under a 2 MiB target) are moved out whole; the window lies on
//! the node holding most of the VMA's pages, or on the VMA's own node, or on the one asked
//! for; later faults land at their target; windows are released with their VMA; bad
//! input gets typed errors, a full range tree of windows among them; and writers on three emulated CPUs lose nothing while a
//! fourth makes their VMAs contiguous and another unmaps and protects parts of them.
#![cfg(feature = "std")]

use mm::aspace::testing::{read_user, with_env, write_user, EmuCpu, EmuTlb, Env};
use mm::aspace::{AddressSpace, Mm, SpaceError};
use mm::backend::phys::Arena;
use mm::backend::source::{BuddyFrames, FrameSource};
use mm::base::addr::{PageSize, Pfn};
use mm::frame::buddy::{BuddyAllocator, MigrateType};
use mm::frame::meta::FrameTable;
use mm::frame::node::{NodeId, NodeMap};
use mm::mapping::claims::LimitError;
use mm::mapping::region::SharedRegion;
use mm::mapping::vma::{HugePolicy, SharedBacking, VmaFlags};
use mm::ops::contig::{ContigError, ContigOptions, ContigReport, Phase, Placement};
use mm::ops::migrate::Destination;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const FRAMES: u64 = 16384;

fn arena<R>(f: impl FnOnce(&Env<'_, Arena>) -> R) -> R {
    with_env(Arena::new(FRAMES), FRAMES, &[], f)
}

/// An arena whose lower half is node 0 and upper half node 1.
fn two_nodes<R>(f: impl FnOnce(&Env<'_, Arena>) -> R) -> R {
    with_env(
        Arena::new(FRAMES),
        FRAMES,
        &[(0, FRAMES / 2, 0), (FRAMES / 2, FRAMES, 1)],
        f,
    )
}

fn small() -> VmaFlags {
    VmaFlags::private(HugePolicy::Never, true)
}

fn tag(space: u64, va: u64) -> u64 {
    (space << 48) ^ va ^ 0x5a5a
}

/// Fault in the pages of `vmas` (space, start, pages) one page of each in turn, so
/// their frames interleave, writing a tag into each.
fn interleave<'a>(env: &Env<'a, Arena>, vmas: &[(&Arc<AddressSpace<'a, Arena>>, u64, u64)]) {
    let most = vmas.iter().map(|v| v.2).max().unwrap_or(0);
    for i in 0..most {
        for &(s, start, pages) in vmas {
            if i < pages {
                let va = start + i * K4;
                env.mm.populate(s, va, K4).unwrap();
                assert!(write_user(env.mem, s, va + 8, tag(s.id().0, va)));
            }
        }
    }
}

fn check_tags<'a>(env: &Env<'a, Arena>, s: &AddressSpace<'a, Arena>, start: u64, pages: u64) {
    for i in 0..pages {
        let va = start + i * K4;
        assert_eq!(
            read_user(env.mem, s, va + 8),
            Some(tag(s.id().0, va)),
            "{va:#x}"
        );
    }
}

fn report<'a>(env: &Env<'a, Arena>, s: &Arc<AddressSpace<'a, Arena>>, va: u64) -> ContigReport {
    let r = env
        .mm
        .make_vma_contiguous(s, va, &ContigOptions::default())
        .unwrap();
    std::println!("CONTIG {}", r.json(Phase::Before));
    std::println!("CONTIG {}", r.json(Phase::After));
    r
}

#[test]
fn interleaved_vmas_end_in_one_aligned_chunk_each_with_their_data() {
    arena(|env| {
        let a = env.mm.new_space().unwrap();
        let b = env.mm.new_space().unwrap();
        let (va, vb, vc) = (0x4000_0000u64, 0x8000_0000u64, 0x4080_0000u64);
        env.mm.map_anon(&a, va, 2 * M2, small()).unwrap();
        env.mm.map_anon(&b, vb, 2 * M2, small()).unwrap();
        env.mm.map_anon(&a, vc, M2 + 64 * K4, small()).unwrap();
        interleave(env, &[(&a, va, 1024), (&b, vb, 1024), (&a, vc, 576)]);
        let allocations = env.frames.allocations();
        for (s, v, pages) in [(&a, va, 1024u64), (&b, vb, 1024), (&a, vc, 576)] {
            let r = report(env, s, v);
            assert!(r.before.chunks > 100, "interleaved to begin with: {r:?}");
            assert_eq!(r.after.resident_pages, pages);
            assert_eq!(r.after.chunks, 1, "{r:?}");
            assert_eq!(r.after.aligned_2m, pages / 512, "{r:?}");
            assert!(r.complete && r.failed == 0, "{r:?}");
            assert_eq!(r.frames_allocated_by_exchange, 0);
            assert!(r.moved() as f64 <= 1.05 * r.misplaced as f64, "{r:?}");
            check_tags(env, s, v, pages);
        }
        // Migrations into free targets allocate those targets, exchanges nothing; the
        // allocator never handed out more blocks than pages were migrated.
        assert!(env.frames.allocations() - allocations <= 2 * 1024 + 576);
        env.audit();
        // Again: everything is in place, nothing moves.
        let r = report(env, &a, va);
        assert_eq!((r.misplaced, r.moved(), r.displaced), (0, 0, 0));
        // Unmapping gives the windows back.
        let (claimed, _) = env.mm.claimed_windows();
        assert!(claimed >= 2 * 1024 + 576);
        env.mm.unmap(&b, vb, 2 * M2).unwrap();
        assert_eq!(env.mm.claimed_windows().0, claimed - 1024);
        env.mm.destroy_space(&a).unwrap();
        assert_eq!(env.mm.claimed_windows(), (0, 0));
        env.audit();
    });
}

#[test]
fn with_no_free_window_pages_are_exchanged_into_place_and_nothing_is_lost() {
    arena(|env| {
        let a = env.mm.new_space().unwrap();
        let b = env.mm.new_space().unwrap();
        let (va, vb, vc) = (0x4000_0000u64, 0x8000_0000u64, 0xc000_0000u64);
        env.mm.map_anon(&a, va, 2 * M2, small()).unwrap();
        env.mm.map_anon(&b, vb, 2 * M2, small()).unwrap();
        // Almost all the rest of memory: a third VMA interleaved with the other two, so
        // that every window holds other VMAs' pages.
        let free = env.free_frames() as u64;
        let filler = free - 2 * 1024 - 600;
        env.mm.map_anon(&b, vc, filler * K4, small()).unwrap();
        interleave(env, &[(&a, va, 1024), (&b, vb, 1024), (&b, vc, filler)]);
        let allocations = env.frames.allocations();
        let r = report(env, &a, va);
        assert_eq!(r.after.chunks, 1, "{r:?}");
        assert!(
            r.exchanged > 0,
            "memory was tight: pages had to be exchanged: {r:?}"
        );
        assert_eq!(r.frames_allocated_by_exchange, 0);
        assert!(r.moved() as f64 <= 1.05 * r.misplaced as f64, "{r:?}");
        // Every allocation was a migration into a free target.
        assert!(env.frames.allocations() - allocations <= r.migrated + r.displaced);
        check_tags(env, &a, va, 1024);
        check_tags(env, &b, vb, 1024);
        check_tags(env, &b, vc, filler);
        env.audit();
    });
}

/// Pages of one VMA that sit on each other's targets (swapped in pairs, and three
/// rotated in a cycle) are exchanged with each other: a pair's exchange puts both in
/// place, the cycle's first puts one in place and moves another on (four pages moved for
/// three); nothing else is moved out of the way and no frame is allocated.
#[test]
fn pages_on_each_other_s_targets_are_exchanged_with_each_other() {
    arena(|env| {
        let a = env.mm.new_space().unwrap();
        let va = 0x4000_0000u64;
        env.mm.map_anon(&a, va, 2 * M2, small()).unwrap();
        interleave(env, &[(&a, va, 1024)]);
        let first = report(env, &a, va);
        assert_eq!(first.after.chunks, 1, "{first:?}");
        let pfn = |i: u64| Pfn::containing(a.translate(va + i * K4).unwrap().pa);
        // 150 pairs swapped, then pages 700, 701, 702 rotated: 700 holds 702's frame,
        // 701 holds 700's and 702 holds 701's.
        for j in 0..150u64 {
            env.mm.exchange(pfn(4 * j + 1), pfn(4 * j + 2)).unwrap();
        }
        env.mm.exchange(pfn(700), pfn(701)).unwrap();
        env.mm.exchange(pfn(700), pfn(702)).unwrap();
        let scrambled = 2 * 150 + 3;
        let allocations = env.frames.allocations();
        let r = report(env, &a, va);
        assert_eq!(r.misplaced, scrambled, "{r:?}");
        assert_eq!(
            (r.migrated, r.exchanged, r.displaced, r.failed),
            (0, scrambled + 1, 0, 0),
            "{r:?}"
        );
        assert_eq!(r.after.chunks, 1, "{r:?}");
        assert!(r.complete, "{r:?}");
        assert_eq!(env.frames.allocations(), allocations);
        let anchor = a.vmas()[0].anchor.clone().expect("anchored");
        for i in 0..1024 {
            assert_eq!(Some(pfn(i)), anchor.target(va + i * K4), "page {i}");
        }
        check_tags(env, &a, va, 1024);
        env.audit();
    });
}

#[test]
fn pinned_pages_stay_and_cost_at_most_two_chunks_each() {
    arena(|env| {
        let a = env.mm.new_space().unwrap();
        let b = env.mm.new_space().unwrap();
        let (va, vb) = (0x4000_0000u64, 0x8000_0000u64);
        env.mm.map_anon(&a, va, 2 * M2, small()).unwrap();
        env.mm.map_anon(&b, vb, 2 * M2, small()).unwrap();
        interleave(env, &[(&a, va, 1024), (&b, vb, 1024)]);
        let offsets = [37u64, 500, 801];
        let pins: Vec<(u64, Pfn)> = offsets
            .iter()
            .map(|&o| (va + o * K4, env.mm.pin(&a, va + o * K4).unwrap()))
            .collect();
        let r = report(env, &a, va);
        assert_eq!(r.pinned, 3);
        assert!(r.after.chunks <= 2 * 3 + 1, "{r:?}");
        assert!(r.after.chunks_99 <= 2 * 3 + 1, "{r:?}");
        for &(v, head) in &pins {
            let t = a.translate(v).unwrap();
            assert_eq!(
                Pfn::containing(t.pa),
                head,
                "a pinned page stays where it is"
            );
            env.mm.unpin(head).unwrap();
        }
        check_tags(env, &a, va, 1024);
        env.audit();
    });
}

/// A region shared by two spaces: once the first mapping is made contiguous, its frames
/// are in place for the second too. The second keeps them where they are (its pages are
/// in the first one's window) instead of moving them, and the first one's undone, to a
/// window of its own; when the first is unmapped, the second takes the frames over at
/// once (no third VMA's window can be put over them in between).
#[test]
fn a_shared_region_placed_for_one_mapping_stays_in_place_for_the_other() {
    arena(|env| {
        let a = env.mm.new_space().unwrap();
        let b = env.mm.new_space().unwrap();
        let region = SharedRegion::new(4 * M2).unwrap();
        let shared = VmaFlags {
            shared: Some(SharedBacking {
                region: region.clone(),
                offset: 0,
            }),
            ..small()
        };
        let (va, vb, vc) = (0x4000_0000u64, 0x7000_0000u64, 0x8000_0000u64);
        let pages = 2048u64;
        env.mm.map_anon(&a, va, pages * K4, shared.clone()).unwrap();
        env.mm.map_anon(&b, vb, pages * K4, shared).unwrap();
        env.mm.map_anon(&a, vc, pages * K4, small()).unwrap();
        interleave(env, &[(&a, va, pages), (&a, vc, pages)]);
        env.mm.populate(&b, vb, pages * K4).unwrap();
        let through_b = |i: u64| read_user(env.mem, &b, vb + i * K4 + 8);
        let first = report(env, &a, va);
        assert_eq!(first.after.chunks, 1, "{first:?}");
        let second = report(env, &b, vb);
        assert_eq!(second.before.chunks, 1, "{second:?}");
        assert_eq!(
            (second.misplaced, second.moved(), second.displaced),
            (0, 0, 0),
            "{second:?}"
        );
        assert_eq!(second.after.chunks, 1, "{second:?}");
        assert!(
            second.segments < 8,
            "a run in line is one segment: {second:?}"
        );
        let again = report(env, &a, va);
        assert_eq!((again.misplaced, again.moved()), (0, 0), "{again:?}");
        for i in 0..pages {
            assert_eq!(through_b(i), Some(tag(a.id().0, va + i * K4)), "page {i}");
        }
        env.audit();
        // With the first mapping gone, the second claims the frames it stays on.
        let before = env.mm.claimed_windows().0;
        env.mm.unmap(&a, va, pages * K4).unwrap();
        assert_eq!(
            env.mm.claimed_windows().0,
            before,
            "the second mapping takes the first one's frames over when it is unmapped"
        );
        let alone = report(env, &b, vb);
        assert_eq!((alone.misplaced, alone.moved()), (0, 0), "{alone:?}");
        assert_eq!(alone.after.chunks, 1, "{alone:?}");
        assert_eq!(env.mm.claimed_windows().0, before, "{alone:?}");
        for i in 0..pages {
            assert_eq!(through_b(i), Some(tag(a.id().0, va + i * K4)), "page {i}");
        }
        env.mm.destroy_space(&a).unwrap();
        env.mm.destroy_space(&b).unwrap();
        assert_eq!(env.mm.release_region(&region), Ok(pages as usize));
        env.audit();
    });
}

#[test]
fn huge_blocks_move_whole_even_when_partly_mapped() {
    arena(|env| {
        let a = env.mm.new_space().unwrap();
        let flags = VmaFlags::private(HugePolicy::Always, true);
        let va = 0x4000_0000u64;
        // Scatter: a 2 MiB block at a low address, something in between.
        let filler = env.frames.alloc(9, MigrateType::Movable, None).unwrap();
        env.mm.map_anon(&a, va, 4 * M2, flags).unwrap();
        env.mm.populate(&a, va, 4 * M2).unwrap();
        env.frames.free(filler, 9).unwrap();
        for i in 0..4 * M2 / K4 {
            assert!(write_user(env.mem, &a, va + i * K4, tag(1, va + i * K4)));
        }
        // Protect part of the third block: its 2 MiB leaf becomes 512 small leaves of one
        // compound block; unmap part of the fourth.
        env.mm
            .protect(&a, va + 2 * M2 + 16 * K4, 16 * K4, false)
            .unwrap();
        env.mm.unmap(&a, va + 3 * M2 + M2 / 2, M2 / 2).unwrap();
        // Three VMAs now (the protect split one); each is made contiguous on the line
        // of the first.
        let reports = env
            .mm
            .make_space_contiguous(&a, &ContigOptions::default())
            .unwrap();
        assert_eq!(reports.len(), 3);
        for r in reports {
            let r = r.unwrap();
            std::println!("CONTIG {}", r.json(Phase::After));
            assert!(r.complete && r.failed == 0, "{r:?}");
        }
        for i in 0..(3 * M2 + M2 / 2) / K4 {
            let v = va + i * K4;
            if a.vmas().iter().any(|m| m.contains(v)) {
                assert_eq!(read_user(env.mem, &a, v), Some(tag(1, v)), "{v:#x}");
            }
        }
        let t0 = a.translate(va).unwrap();
        for i in 0..(3 * M2 + M2 / 2) / K4 {
            let t = a.translate(va + i * K4).unwrap();
            assert_eq!(
                t.pa.as_u64(),
                t0.pa.as_u64() + i * K4,
                "contiguous at page {i}"
            );
        }
        assert!(t0.pa.is_aligned(M2));
        env.audit();
    });
}

#[test]
fn pages_faulted_later_land_at_their_target() {
    arena(|env| {
        let a = env.mm.new_space().unwrap();
        let b = env.mm.new_space().unwrap();
        let (va, vb) = (0x4000_0000u64, 0x8000_0000u64);
        env.mm.map_anon(&a, va, 2 * M2, small()).unwrap();
        env.mm.map_anon(&b, vb, 2 * M2, small()).unwrap();
        interleave(env, &[(&a, va, 300), (&b, vb, 300)]);
        let r = report(env, &a, va);
        assert_eq!(r.after.chunks, 1);
        env.mm
            .populate(&a, va + 300 * K4, 2 * M2 - 300 * K4)
            .unwrap();
        interleave(env, &[(&b, vb + 300 * K4, 700)]);
        let after = report(env, &a, va);
        assert_eq!(
            after.before.chunks, 1,
            "later faults went to their targets: {after:?}"
        );
        assert_eq!(after.misplaced, 0);
        env.audit();
    });
}

#[test]
fn bad_input_gets_typed_errors_and_changes_nothing() {
    two_nodes(|env| {
        let a = env.mm.new_space().unwrap();
        let va = 0x4000_0000u64;
        env.mm.map_anon(&a, va, 2 * M2, small()).unwrap();
        env.mm.populate(&a, va, 2 * M2).unwrap();
        let leaves = a.leaves();
        let opts = ContigOptions::default();
        let node = |n| ContigOptions {
            placement: Placement::Node(NodeId(n)),
            ..opts
        };
        assert_eq!(
            env.mm
                .make_vma_contiguous(&a, 0x9000_0000, &opts)
                .unwrap_err(),
            ContigError::NotMapped
        );
        assert_eq!(
            env.mm.make_vma_contiguous(&a, va, &node(7)).unwrap_err(),
            ContigError::NoSuchNode
        );
        assert!(matches!(
            env.mm.make_vma_contiguous(&a, u64::MAX - 5, &opts),
            Err(ContigError::Space(_))
        ));
        // A VMA larger than any window of its node.
        let big = env.mm.new_space().unwrap();
        env.mm.map_anon(&big, va, 20 * M2, small()).unwrap();
        env.mm.populate(&big, va, K4).unwrap();
        assert_eq!(
            env.mm.make_vma_contiguous(&big, va, &node(0)).unwrap_err(),
            ContigError::NoRoom
        );
        assert_eq!(a.leaves(), leaves);
        assert_eq!(env.mm.claimed_windows(), (0, 0));
        env.mm.destroy_space(&a).unwrap();
        assert_eq!(
            env.mm.make_vma_contiguous(&a, va, &opts).unwrap_err(),
            ContigError::Space(SpaceError::SpaceDestroyed)
        );
        env.audit();
    });
}

/// The nodes of the frames of `s`'s pages `[va, va + pages * 4 KiB)`, each page's.
fn nodes_of<'a>(
    env: &Env<'a, Arena>,
    s: &AddressSpace<'a, Arena>,
    va: u64,
    pages: u64,
) -> Vec<u32> {
    frames_of(s, va, pages)
        .into_iter()
        .map(|p| env.frames.node_of(p).map_or(u32::MAX, |n| n.0))
        .collect()
}

#[test]
fn the_window_lies_on_the_node_of_most_of_the_vma_s_pages_unless_told_otherwise() {
    two_nodes(|env| {
        let va = 0x4000_0000u64;
        let pages = 64u64;
        // (flags, which pages move to node 1 first, where the VMA must end): 40 of
        // 64 on node 1; 20 of 64 on node 1, the first page among them; 40 of 64 on
        // node 1 in a VMA bound to node 0.
        let on0 = VmaFlags {
            node: Some(NodeId(0)),
            ..small()
        };
        type Case = (VmaFlags, fn(u64) -> bool, u32);
        let cases: [Case; 3] = [
            (small(), |i| i % 8 < 5, 1),
            (small(), |i| i % 16 < 5, 0),
            (on0, |i| i % 8 < 5, 0),
        ];
        for (flags, moved, node) in cases {
            let s = env.mm.new_space().unwrap();
            env.mm.map_anon(&s, va, pages * K4, flags).unwrap();
            interleave(env, &[(&s, va, pages)]);
            for i in (0..pages).filter(|&i| moved(i)) {
                let r = env
                    .mm
                    .move_range_to_node(&s, va + i * K4, K4, NodeId(1))
                    .unwrap();
                assert!(r.failed.is_empty(), "{r:?}");
            }
            let ones = nodes_of(env, &s, va, pages)
                .iter()
                .filter(|&&n| n == 1)
                .count();
            assert_eq!(ones as u64, (0..pages).filter(|&i| moved(i)).count() as u64);
            let r = report(env, &s, va);
            assert_eq!((r.after.chunks, r.failed), (1, 0), "{r:?}");
            assert_eq!(nodes_of(env, &s, va, pages), vec![node; pages as usize]);
            check_tags(env, &s, va, pages);
            // Told otherwise: the other node.
            let other = ContigOptions {
                placement: Placement::Node(NodeId(1 - node)),
                ..ContigOptions::default()
            };
            let r = env.mm.make_vma_contiguous(&s, va, &other).unwrap();
            assert_eq!((r.after.chunks, r.failed), (1, 0), "{r:?}");
            assert_eq!(nodes_of(env, &s, va, pages), vec![1 - node; pages as usize]);
            check_tags(env, &s, va, pages);
            env.mm.destroy_space(&s).unwrap();
        }
        env.audit();
    });
}

/// Ranges the claim tree may hold in the full-tree test: one window each for that many
/// VMAs.
const SMALL_LIMIT: usize = 3;

#[test]
fn a_full_range_tree_refuses_the_next_vma_with_no_room_and_changes_nothing() {
    arena(|env| {
        let limits = [0, mm::mapping::claims::MAX_LIMIT + 1];
        assert_eq!(env.mm.set_claim_limit(limits[0]), Err(LimitError::Zero));
        assert_eq!(
            env.mm.set_claim_limit(limits[1]),
            Err(LimitError::TooLarge { limit: limits[1] })
        );
        assert_eq!(env.mm.claim_limit(), mm::mapping::claims::DEFAULT_LIMIT);
        env.mm.set_claim_limit(SMALL_LIMIT).unwrap();
        let spaces: Vec<_> = (0..=SMALL_LIMIT)
            .map(|_| env.mm.new_space().unwrap())
            .collect();
        let va = 0x4000_0000u64;
        for s in &spaces {
            env.mm.map_anon(s, va, M2, small()).unwrap();
        }
        let vmas: Vec<_> = spaces.iter().map(|s| (s, va, 256)).collect();
        interleave(env, &vmas);
        // One window each for the first SMALL_LIMIT VMAs fills the tree.
        for s in &spaces[..SMALL_LIMIT] {
            let r = report(env, s, va);
            assert_eq!((r.segments, r.after.chunks, r.failed), (1, 1, 0), "{r:?}");
        }
        let full = env.mm.claimed_windows();
        assert_eq!(full.1, SMALL_LIMIT);
        let last = &spaces[SMALL_LIMIT];
        let leaves = last.leaves();
        let free = env.free_frames();
        assert_eq!(
            env.mm
                .make_vma_contiguous(last, va, &ContigOptions::default())
                .unwrap_err(),
            ContigError::NoRoom
        );
        assert_eq!(last.leaves(), leaves, "the refused VMA's pages moved");
        assert_eq!(env.free_frames(), free);
        assert!(last.vmas().iter().all(|v| v.anchor.is_none()));
        assert_eq!(env.mm.claimed_windows(), full);
        // An anchored VMA whose new anchor does not fit either (a page of it moved away
        // and pinned there needs a segment of its own): refused, and its anchor goes
        // with the windows it gave back, none stays stale.
        let first = &spaces[0];
        let page = va + 100 * K4;
        let at = Pfn::containing(first.translate(page).unwrap().pa);
        env.mm.migrate_one(at, Destination::Any).unwrap();
        let pinned = env.mm.pin(first, page).unwrap();
        assert_eq!(
            env.mm
                .make_vma_contiguous(first, va, &ContigOptions::default())
                .unwrap_err(),
            ContigError::NoRoom
        );
        assert!(
            first.vmas().iter().all(|v| v.anchor.is_none()),
            "stale anchor"
        );
        assert_eq!(env.mm.claimed_windows().1, SMALL_LIMIT - 1);
        env.mm.unpin(pinned).unwrap();
        for s in &spaces {
            check_tags(env, s, va, 256);
        }
        env.audit();
        for s in &spaces {
            env.mm.unmap(s, va, M2).unwrap();
        }
        assert_eq!(env.mm.claimed_windows(), (0, 0), "a claim leaked");
        env.audit();
    });
}

#[test]
fn the_work_bound_stops_a_call_and_the_next_call_continues() {
    arena(|env| {
        let a = env.mm.new_space().unwrap();
        let b = env.mm.new_space().unwrap();
        let (va, vb) = (0x4000_0000u64, 0x8000_0000u64);
        env.mm.map_anon(&a, va, 2 * M2, small()).unwrap();
        env.mm.map_anon(&b, vb, 2 * M2, small()).unwrap();
        interleave(env, &[(&a, va, 1024), (&b, vb, 1024)]);
        let bounded = ContigOptions {
            max_pages: 100,
            batch: 32,
            ..ContigOptions::default()
        };
        let r = env.mm.make_vma_contiguous(&a, va, &bounded).unwrap();
        assert!(!r.complete, "{r:?}");
        assert!(r.moved() + r.displaced <= 100, "{r:?}");
        let r = report(env, &a, va);
        assert_eq!(r.after.chunks, 1);
        check_tags(env, &a, va, 1024);
        env.audit();
    });
}

/// Writers on three emulated CPUs keep writing changing values into private 4 KiB
/// pages, private 2 MiB pages and a 2 MiB region shared by two spaces, while a fourth
/// CPU makes every VMA contiguous over and over and a fifth thread (no CPU of its own)
/// unmaps and protects pieces of a VMA being made contiguous.
#[test]
fn writers_never_lose_data_while_their_vmas_are_made_contiguous() {
    let mem = Arena::new(FRAMES);
    let records = FrameTable::boxed_records(FRAMES as usize);
    let table = FrameTable::new(&records).unwrap();
    let mut buddy = BuddyAllocator::new(table);
    buddy.add_free_range(Pfn(1), Pfn(FRAMES)).unwrap();
    let frames = BuddyFrames::new(buddy, NodeMap::single(Pfn(0), Pfn(FRAMES)));
    let tlb = EmuTlb::default();
    let mm = Mm::new(&mem, &frames, &tlb, None);
    let a = mm.new_space().unwrap();
    let b = mm.new_space().unwrap();
    let region = SharedRegion::new(M2).unwrap();
    let base = |w: u64| 0x4000_0000 + w * 0x1000_0000;
    for w in 0..3u64 {
        mm.map_anon(&a, base(w), 64 * K4, small()).unwrap();
        mm.map_anon(&b, base(w), 64 * K4, small()).unwrap();
    }
    mm.map_anon(
        &a,
        0x9000_0000,
        2 * M2,
        VmaFlags::private(HugePolicy::Always, true),
    )
    .unwrap();
    let shared = VmaFlags {
        shared: Some(SharedBacking {
            region: region.clone(),
            offset: 0,
        }),
        ..VmaFlags::private(HugePolicy::Always, true)
    };
    mm.map_anon(&a, 0xa000_0000, M2, shared.clone()).unwrap();
    mm.map_anon(&b, 0xa000_0000, M2, shared).unwrap();
    // The victim VMA, cut by the churning thread while it is made contiguous.
    mm.map_anon(&b, 0xc000_0000, 2 * M2, small()).unwrap();
    for i in 0..64 {
        for w in 0..3 {
            mm.populate(&a, base(w) + i * K4, K4).unwrap();
            mm.populate(&b, base(w) + i * K4, K4).unwrap();
        }
    }
    mm.populate(&a, 0x9000_0000, 2 * M2).unwrap();
    mm.populate(&a, 0xa000_0000, M2).unwrap();
    mm.populate(&b, 0xc000_0000, 2 * M2).unwrap();
    let done = AtomicBool::new(false);
    let rounds = AtomicUsize::new(0);
    let passes = AtomicUsize::new(0);
    let cuts = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for w in 0..3usize {
            let (mm, mem, tlb, a, b, done, rounds) = (&mm, &mem, &tlb, &a, &b, &done, &rounds);
            scope.spawn(move || {
                a.cpus().insert(w as u32);
                b.cpus().insert(w as u32);
                let cpu = EmuCpu::new(mm, mem, tlb, w);
                let mut value = 0u64;
                while !done.load(Ordering::Acquire) {
                    value += 1;
                    let (wr, rd) = if value % 2 == 0 {
                        (&**a, &**b)
                    } else {
                        (&**b, &**a)
                    };
                    let v = base(w as u64);
                    let pages = [
                        (v + (value % 64) * K4, &**a, &**a),
                        (v + ((value * 7) % 64) * K4, &**b, &**b),
                        (
                            0x9000_0000 + w as u64 * M2 / 2 + (value % 256) * K4,
                            &**a,
                            &**a,
                        ),
                        (0xa000_0000 + w as u64 * (M2 / 4), wr, rd),
                    ];
                    for (k, &(va, ws, rs)) in pages.iter().enumerate() {
                        let t = value * 8 + k as u64;
                        cpu.access(ws, va + 16, true, |x| x.store(t, Ordering::Release));
                        let got = cpu.access(rs, va + 16, false, |x| x.load(Ordering::Acquire));
                        assert_eq!(got, t, "writer {w} lost a write at {va:#x}");
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
                a.cpus().remove(w as u32);
                b.cpus().remove(w as u32);
            });
        }
        let churn = (&mm, &b, &done, &cuts);
        scope.spawn(move || {
            let (mm, b, done, cuts) = churn;
            let mut i = 0u64;
            while !done.load(Ordering::Acquire) && i < 200 {
                let va = 0xc000_0000 + (i * 37 % 1000) * K4;
                if i % 2 == 0 {
                    let _ = mm.protect(b, va, K4, false);
                } else {
                    let _ = mm.unmap(b, va, K4);
                }
                cuts.fetch_add(1, Ordering::Relaxed);
                i += 1;
                std::thread::yield_now();
            }
        });
        let gen = (&mm, &a, &b, &done, &passes);
        scope.spawn(move || {
            let (mm, a, b, done, passes) = gen;
            for _ in 0..6 {
                for s in [a, b] {
                    for r in mm
                        .make_space_contiguous(s, &ContigOptions::default())
                        .unwrap()
                    {
                        // The victim's pieces change under it: a typed, clean result.
                        if let Err(e) = r {
                            assert!(
                                matches!(e, ContigError::Changed | ContigError::NotMapped),
                                "{e:?}"
                            );
                        }
                    }
                }
                passes.fetch_add(1, Ordering::Relaxed);
            }
            done.store(true, Ordering::Release);
        });
    });
    assert!(rounds.load(Ordering::Relaxed) > 0 && cuts.load(Ordering::Relaxed) > 0);
    mm.rmap_audit().unwrap();
    frames.lock().audit().unwrap();
    // Every VMA of A is one chunk now (nothing cuts them).
    for v in a.vmas() {
        let r = mm
            .make_vma_contiguous(&a, v.start, &ContigOptions::default())
            .unwrap();
        assert_eq!(r.after.chunks, 1, "{r:?}");
    }
    mm.destroy_space(&a).unwrap();
    mm.destroy_space(&b).unwrap();
    assert_eq!(mm.release_region(&region), Ok(1));
    mm.rmap_audit().unwrap();
    assert_eq!(mm.claimed_windows(), (0, 0));
    assert_eq!(frames.lock().free_frames(), FRAMES as usize - 1);
}

/// Pages misplaced, migrated, exchanged, displaced and failed.
fn moves(r: &ContigReport) -> (u64, u64, u64, u64, u64) {
    (r.misplaced, r.migrated, r.exchanged, r.displaced, r.failed)
}

/// The frame each page of the `pages` pages from `va` is mapped at.
fn frames_of<'a>(s: &AddressSpace<'a, Arena>, va: u64, pages: u64) -> Vec<Pfn> {
    (0..pages)
        .map(|i| Pfn::containing(s.translate(va + i * K4).unwrap().pa))
        .collect()
}

/// Targets held by blocks of another size: a 4 KiB VMA whose target window holds another
/// VMA's 2 MiB block moves that block out whole (still one 2 MiB leaf, its data with it),
/// and a 2 MiB VMA whose target holds another VMA's 4 KiB pages moves those out and its
/// own block in whole; each with its window chosen over a free one because most of its
/// pages are already in place there.
#[test]
fn blocks_of_another_size_on_the_targets_are_moved_out_whole() {
    arena(|env| {
        let a = env.mm.new_space().unwrap();
        let b = env.mm.new_space().unwrap();
        let (va, vb, vc, vd) = (
            0x4000_0000u64,
            0x8000_0000u64,
            0xc000_0000u64,
            0x1_0000_0000u64,
        );
        let huge = VmaFlags::private(HugePolicy::Always, true);
        // A: three 2 MiB ranges of 4 KiB pages, made contiguous.
        env.mm.map_anon(&a, va, 3 * M2, small()).unwrap();
        interleave(env, &[(&a, va, 1536)]);
        assert_eq!(report(env, &a, va).after.chunks, 1);
        // B: one 2 MiB block; C: a few 4 KiB pages; D: three 2 MiB blocks, contiguous.
        env.mm.map_anon(&b, vb, M2, huge.clone()).unwrap();
        env.mm.populate(&b, vb, M2).unwrap();
        env.mm.map_anon(&b, vc, 16 * K4, small()).unwrap();
        interleave(env, &[(&b, vc, 16)]);
        env.mm.map_anon(&b, vd, 3 * M2, huge).unwrap();
        env.mm.populate(&b, vd, 3 * M2).unwrap();
        for (v, pages) in [(vb, 512), (vd, 1536)] {
            for i in 0..pages {
                assert!(write_user(
                    env.mem,
                    &b,
                    v + i * K4 + 8,
                    tag(b.id().0, v + i * K4)
                ));
            }
        }
        assert_eq!(report(env, &b, vd).after.chunks, 1);

        // A's first 512 pages go elsewhere and B's block takes their targets.
        let a_targets = frames_of(&a, va, 1536);
        let away: Vec<(Pfn, Destination)> = a_targets[..512]
            .iter()
            .map(|&p| (p, Destination::Any))
            .collect();
        assert!(env.mm.migrate_batch(&away).iter().all(|r| r.is_ok()));
        let b_head = Pfn::containing(b.translate(vb).unwrap().leaf_base_pa);
        env.mm
            .migrate_batch(&[(b_head, Destination::Frame(a_targets[0]))])[0]
            .unwrap();
        // D's first block goes elsewhere and C's pages take frames of its target.
        let d_targets = frames_of(&b, vd, 1536);
        env.mm.migrate_batch(&[(d_targets[0], Destination::Any)])[0].unwrap();
        let c_pages = frames_of(&b, vc, 16);
        let into: Vec<(Pfn, Destination)> = c_pages
            .iter()
            .enumerate()
            .map(|(i, &p)| (p, Destination::Frame(d_targets[31 * i + 7])))
            .collect();
        assert!(env.mm.migrate_batch(&into).iter().all(|r| r.is_ok()));

        let allocations = env.frames.allocations();
        let r = report(env, &a, va);
        let moved_out_whole = moves(&r) == (512, 512, 0, 512, 0);
        assert!(moved_out_whole, "B's block out whole, A's pages in: {r:?}");
        assert_eq!((r.after.chunks, r.after.aligned_2m), (1, 3), "{r:?}");
        assert_eq!(frames_of(&a, va, 1536), a_targets, "A on its old line");
        let t = b.translate(vb).unwrap();
        assert_eq!(t.size, PageSize::Size2M, "B is still one 2 MiB leaf");
        assert_ne!(Pfn::containing(t.leaf_base_pa), a_targets[0]);
        assert_eq!(r.frames_allocated_by_exchange, 0);
        // A page migrated in allocates its target; B's new block is looked for outside
        // every window (a block found inside one is held while looking on, then given
        // back).
        assert!(env.frames.allocations() - allocations <= 512 + 2, "{r:?}");

        let r = report(env, &b, vd);
        let moved_in_whole = moves(&r) == (512, 512, 0, 16, 0);
        assert!(moved_in_whole, "C's pages out, D's block in whole: {r:?}");
        assert_eq!((r.after.chunks, r.after.aligned_2m), (1, 3), "{r:?}");
        assert_eq!(frames_of(&b, vd, 1536), d_targets, "D on its old line");
        for i in 0..3 {
            let t = b.translate(vd + i * M2).unwrap();
            assert_eq!(t.size, PageSize::Size2M, "D's block {i}");
        }
        assert!(frames_of(&b, vc, 16).iter().all(|p| !d_targets.contains(p)));

        check_tags(env, &a, va, 1536);
        check_tags(env, &b, vb, 512);
        check_tags(env, &b, vc, 16);
        check_tags(env, &b, vd, 1536);
        env.audit();
    });
}
