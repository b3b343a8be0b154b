//! Host tests of the anchor plan on memory that other VMAs' windows have cut into pieces
//! shorter than the VMA: the window of the VMA's resident pages must still land on
//! frames its pages can be moved to; and of the claimed windows keeping unmovable
//! allocations out; of `covered`, against asking every frame; and of `target_state`,
//! against asking every frame of the target, and its free-block memo, against a fresh
//! look at every target.

use super::*;
use crate::aspace::testing::{read_user, with_env, write_user, Env, SparseMem};
use crate::backend::phys::Arena;
use crate::backend::source::FrameSource;
use crate::frame::buddy::MigrateType;
use crate::mapping::vma::{HugePolicy, VmaFlags};

const K4: u64 = 4096;
/// The machine: RAM in `[1, HOLE)`, then frames no page can move to (as the 3-4 GiB
/// hole of a 4 GiB PC, here unmovable kernel blocks) up to `FRAMES`.
const FRAMES: u64 = 16384;
const HOLE: u64 = 8192;
/// The VMA: 8192 pages (so no piece of RAM between the other windows holds its window),
/// of which 256 from page 3072 on are resident.
const VA: u64 = 0x4000_0000;
const PAGES: u64 = 8192;
const RESIDENT: (u64, u64) = (3072, 3328);
/// Single frames other VMAs claim (pinned pages' segments), cutting RAM into pieces of
/// about 2000 frames.
const OTHER_CLAIMS: [u64; 3] = [2000, 4000, 6000];

fn tag(va: u64) -> u64 {
    va ^ 0x6a09_e667
}

/// Fill `[HOLE, FRAMES)` with unmovable blocks, claim the single frames of
/// `OTHER_CLAIMS` for another owner (returned) and fault in the VMA's resident run.
fn cut_memory<'a>(env: &Env<'a, Arena>) -> (Arc<AddressSpace<'a, Arena>>, ClaimId) {
    let order = 12;
    for head in (HOLE..FRAMES).step_by(1 << order) {
        env.frames
            .alloc_at(Pfn(head), order, MigrateType::Unmovable)
            .unwrap();
    }
    let other = env.mm.new_claim_id();
    for f in OTHER_CLAIMS {
        env.mm.claims().claim(Pfn(f), Pfn(f + 1), other).unwrap();
    }
    let space = env.mm.new_space().unwrap();
    let flags = VmaFlags::private(HugePolicy::Never, true);
    env.mm.map_anon(&space, VA, PAGES * K4, flags).unwrap();
    for p in RESIDENT.0..RESIDENT.1 {
        let va = VA + p * K4;
        env.mm.populate(&space, va, K4).unwrap();
        assert!(write_user(env.mem, &space, va, tag(va)));
    }
    (space, other)
}

/// Every feasible window of the whole VMA puts its resident pages on the unmovable
/// frames; so does every window of the VMA from its first resident page on once the
/// part before is anchored. The resident pages must still be placed in one chunk, with
/// their data, each at its target, and the windows must hold no blocked target.
#[test]
fn resident_pages_get_a_movable_window_when_memory_is_cut_shorter_than_the_vma() {
    with_env(Arena::new(FRAMES), FRAMES, &[], |env| {
        let (space, other) = cut_memory(env);
        let r = env
            .mm
            .make_vma_contiguous(&space, VA, &ContigOptions::default())
            .unwrap();
        std::println!("CONTIG {}", r.json(crate::ops::contig::Phase::Before));
        std::println!("CONTIG {}", r.json(crate::ops::contig::Phase::After));
        let resident = RESIDENT.1 - RESIDENT.0;
        assert_eq!(r.misplaced, resident);
        assert_eq!((r.failed, r.migrated + r.exchanged), (0, resident));
        assert_eq!(r.after.chunks, 1);
        assert!(r.complete);
        let anchor = space.vmas()[0].anchor.clone().expect("anchored");
        for p in RESIDENT.0..RESIDENT.1 {
            let va = VA + p * K4;
            let t = space.translate(va).expect("resident");
            assert_eq!(Some(Pfn::containing(t.pa)), anchor.target(va), "{va:#x}");
            assert!(Pfn::containing(t.pa).0 < HOLE, "{va:#x}");
            assert_eq!(read_user(env.mem, &space, va), Some(tag(va)), "{va:#x}");
        }
        env.mm.destroy_space(&space).unwrap();
        assert_eq!(env.mm.claims().release_owner(other), 3);
        assert!(env.mm.claims().is_empty());
        env.audit();
    });
}

/// A claimed window keeps unmovable allocations of whole pageblocks (a kernel heap
/// growing, a new page-table pageblock) out while any pageblock outside the windows is
/// free: they take the lowest unclaimed ones first, then the window's, lowest first.
/// Released, the window is an ordinary free range again.
#[test]
fn unmovable_pageblocks_keep_out_of_claimed_windows() {
    const PB: u64 = 512;
    with_env(Arena::new(FRAMES), FRAMES, &[], |env| {
        let owner = env.mm.new_claim_id();
        // Not pageblock-aligned at either end: the two pageblocks it shares with free
        // memory count as claimed.
        let (start, end) = (3 * PB + 100, 9 * PB + 7);
        env.mm.claims().claim(Pfn(start), Pfn(end), owner).unwrap();
        let inside = |p: Pfn| p.0 + PB > start && p.0 < end;
        let mut heads = Vec::new();
        while let Ok(p) = env.frames.alloc(9, MigrateType::Unmovable, None) {
            heads.push(p);
        }
        let outside: Vec<Pfn> = heads.iter().copied().filter(|&p| !inside(p)).collect();
        let window: Vec<Pfn> = heads.iter().copied().filter(|&p| inside(p)).collect();
        assert_eq!(window.len(), 7, "{window:?}");
        assert_eq!(
            heads[..outside.len()],
            outside[..],
            "the window went first: {heads:?}"
        );
        assert!(window.windows(2).all(|w| w[0] < w[1]), "{window:?}");
        for p in heads {
            env.frames.free(p, 9).unwrap();
        }
        assert_eq!(env.mm.claims().release_owner(owner), end - start);
        let first = env.frames.alloc(9, MigrateType::Unmovable, None).unwrap();
        assert_eq!(
            first,
            Pfn(PB),
            "the lowest whole free pageblock (frame 0 is reserved)"
        );
        env.frames.free(first, 9).unwrap();
        env.audit();
    });
}

/// Where 1 GiB leaves are allowed, a VMA's aligned gigabyte gets a window of its own,
/// congruent modulo 1 GiB, with no blocked frame anywhere in it, and the VMA's two ends
/// windows of their own. Here the only such window is the third gigabyte: the first
/// starts below the managed frames and the second holds one unmovable frame, which no
/// resident page's target is on (so a window there would cost no more, but the
/// gigabyte could never be one leaf). With the third blocked as well, the VMA is
/// anchored whole, as without 1 GiB leaves; with no blocked frame left, one window holds
/// the whole VMA, which gets one segment.
#[test]
fn the_aligned_gigabyte_gets_a_clean_window_of_its_own() {
    const G: u64 = 1 << 18;
    const VA: u64 = 0x40_0000_0000;
    const EDGE: u64 = 16;
    let resident = 1000..1064u64;
    with_env(SparseMem::new(3 * G), 3 * G, &[], |env| {
        let block = |f: u64| {
            env.frames
                .alloc_at(Pfn(f), 0, MigrateType::Unmovable)
                .unwrap()
        };
        let first = block(G + G / 2 + 7);
        let run = |env: &Env<'_, SparseMem>| {
            let space = env.mm.new_space().unwrap();
            let flags = VmaFlags::private(HugePolicy::Never, true);
            let start = VA - EDGE * K4;
            env.mm
                .map_anon(&space, start, G * K4 + 2 * EDGE * K4, flags)
                .unwrap();
            for p in resident.clone() {
                let va = VA + p * K4;
                env.mm.populate(&space, va, K4).unwrap();
                assert!(write_user(env.mem, &space, va, tag(va)));
            }
            let r = env
                .mm
                .make_vma_contiguous(&space, start, &ContigOptions::default())
                .unwrap();
            assert_eq!((r.failed, r.after.chunks), (0, 1));
            let anchor = space.vmas()[0].anchor.clone().expect("anchored");
            for p in resident.clone() {
                let va = VA + p * K4;
                let pfn = Pfn::containing(space.translate(va).expect("resident").pa);
                assert_eq!(Some(pfn), anchor.target(va), "{va:#x}");
                assert_eq!(read_user(env.mem, &space, va), Some(tag(va)), "{va:#x}");
            }
            env.mm.destroy_space(&space).unwrap();
            anchor
        };
        let anchor = run(env);
        let giga: Vec<_> = anchor
            .segments
            .iter()
            .map(|s| (s.start, s.end, s.pfn))
            .collect();
        assert_eq!(giga.len(), 3, "{giga:?}");
        assert!(giga.contains(&(VA, VA + G * K4, Pfn(2 * G))), "{giga:?}");
        let second = block(2 * G + 5);
        let anchor = run(env);
        assert_eq!(anchor.segments.len(), 1, "{:?}", anchor.segments);
        assert_eq!(anchor.target(VA).map(|p| p.0 % G), Some(0));
        // With the blocks gone, a window from the end of the first gigabyte into the
        // third holds the whole VMA, ends included: one segment.
        env.frames.free(first, 0).unwrap();
        env.frames.free(second, 0).unwrap();
        let anchor = run(env);
        let whole: Vec<_> = anchor.segments.iter().map(|s| (s.start, s.pfn)).collect();
        assert_eq!(whole, [(VA - EDGE * K4, Pfn(G - EDGE))]);
        env.audit();
    });
}

/// The operations on several VMAs visit the VMAs covering an aligned gigabyte first
/// (while 1 GiB leaves are allowed), then the others in space and address order.
#[test]
fn gigabyte_vmas_are_made_contiguous_first() {
    const G: u64 = 1 << 18;
    with_env(SparseMem::new(3 * G), 3 * G, &[], |env| {
        let flags = VmaFlags::private(HugePolicy::Never, true);
        let small = env.mm.new_space().unwrap();
        let big = env.mm.new_space().unwrap();
        env.mm.map_anon(&small, VA, 64 * K4, flags.clone()).unwrap();
        let giga = 0x40_0000_0000 - 8 * K4;
        env.mm
            .map_anon(&big, giga, G * K4 + 16 * K4, flags.clone())
            .unwrap();
        env.mm.map_anon(&big, VA, 64 * K4, flags).unwrap();
        for (space, va) in [(&small, VA), (&big, giga + 8 * K4), (&big, VA)] {
            env.mm.populate(space, va, K4).unwrap();
        }
        assert!(env.mm.gigabyte_first(giga, giga + G * K4 + 16 * K4));
        assert!(!env
            .mm
            .gigabyte_first(giga + 16 * K4, giga + G * K4 + 16 * K4));
        let visited: Vec<(SpaceId, u64)> = env
            .mm
            .make_all_contiguous(&ContigOptions::default())
            .into_iter()
            .map(|(s, r)| (s, r.unwrap().start))
            .collect();
        assert_eq!(
            visited,
            [(big.id(), giga), (small.id(), VA), (big.id(), VA)]
        );
        let in_space: Vec<u64> = env
            .mm
            .make_space_contiguous(&big, &ContigOptions::default())
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap().start)
            .collect();
        assert_eq!(in_space, [giga, VA]);
        env.mm.set_max_leaf(PageSize::Size2M);
        assert!(!env.mm.gigabyte_first(giga, giga + G * K4 + 16 * K4));
        for space in [small, big] {
            env.mm.destroy_space(&space).unwrap();
        }
        env.audit();
    });
}

proptest::proptest! {
    /// `covered` agrees with asking every frame of the window.
    #[test]
    fn covered_agrees_with_every_frame(
        ranges in proptest::collection::vec((0..64u64, 1..16u64), 0..8),
        first in 0..80u64,
        len in 0..24u64,
    ) {
        let mut fixed: Vec<(Pfn, Pfn)> =
            ranges.iter().map(|&(a, n)| (Pfn(a), Pfn(a + n))).collect();
        fixed.sort_unstable();
        let every = (first..first + len).all(|f| fixed.iter().any(|&(a, b)| a.0 <= f && f < b.0));
        proptest::prop_assert_eq!(covered(&fixed, Pfn(first), Pfn(first + len)), every);
    }
}

/// Memory for the `target_state` property: a VMA's pages faulted in at random among
/// kernel blocks of random orders, some of those freed again.
const MEMO_FRAMES: u64 = 4096;

/// What `target_state` must say, asking each frame of the target `[t, t + 2^o)` which
/// block holds it: blocked if any is held by a block that cannot move, else free if none
/// is held by a movable one, exact if one movable block of order `o` headed at `t` holds
/// all, else the movable blocks in frame order.
fn frame_by_frame(env: &Env<'_, Arena>, t: Pfn, o: u8) -> Target {
    let table = env.frames.frame_table();
    let mut blocks: Vec<(Pfn, u8)> = Vec::new();
    for f in t.0..t.0 + (1 << o) {
        let Some(meta) = table.head_of(Pfn(f)).and_then(|h| Some((h, table.get(h)?))) else {
            return Target::Blocked;
        };
        let (h, meta) = meta;
        match (meta.state(), block_class(meta)) {
            (FrameState::Free, _) | (FrameState::Allocated, FrameClass::Free) => {}
            (FrameState::Allocated, FrameClass::Movable) => {
                if blocks.last().map(|b| b.0) != Some(h) {
                    blocks.push((h, meta.order()));
                }
            }
            _ => return Target::Blocked,
        }
    }
    match blocks[..] {
        [] => Target::Free,
        [(h, k)] if h == t && k == o => Target::Exact(h),
        _ => Target::Occupied(blocks),
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    /// Every target, random ones and the heads of blocks in use at their own order and
    /// another, gets the state asking each of its frames gives; and the targets of one
    /// pass, in the order `place` takes them (largest first, then by frame), get the
    /// same state with the free-block memo as with a fresh look each.
    #[test]
    fn target_state_agrees_with_every_frame_and_with_its_free_block_memo(
        steps in proptest::collection::vec((0..10u8, 0..4u8, proptest::bool::ANY), 1..48),
        targets in proptest::collection::vec((1..MEMO_FRAMES, proptest::bool::ANY), 1..256),
    ) {
        with_env(Arena::new(MEMO_FRAMES), MEMO_FRAMES, &[], |env| {
            let space = env.mm.new_space().unwrap();
            let flags = VmaFlags::private(HugePolicy::Never, true);
            env.mm.map_anon(&space, VA, 1024 * K4, flags).unwrap();
            let mut kernel = Vec::new();
            for (i, &(order, kind, free_again)) in steps.iter().enumerate() {
                match kind {
                    // A user page: a movable block.
                    0 | 1 => {
                        let va = VA + (i as u64 * 37 % 1024) * K4;
                        let _ = env.mm.populate(&space, va, K4);
                    }
                    // A kernel block, perhaps freed again once all are in.
                    _ => {
                        let mt = if kind == 2 { MigrateType::Unmovable } else { MigrateType::Movable };
                        if let Ok(p) = env.frames.alloc(order, mt, None) {
                            kernel.push((p, order, free_again));
                        }
                    }
                }
            }
            for &(p, order, _) in kernel.iter().filter(|k| k.2) {
                env.frames.free(p, order).unwrap();
            }
            let mut targets: Vec<(Pfn, u8)> = targets
                .iter()
                .map(|&(f, huge)| if huge { (Pfn(f & !511), 9) } else { (Pfn(f), 0) })
                .collect();
            // Heads of blocks in use as targets of their own order and of another: the
            // user pages (movable) and the kernel blocks still allocated (blocked).
            let pages = (0..1024).filter_map(|p| space.translate(VA + p * K4));
            targets.extend(pages.flat_map(|t| [(Pfn::containing(t.pa), 0), (Pfn::containing(t.pa), 9)]));
            for &(p, order, _) in kernel.iter().filter(|k| !k.2) {
                targets.extend([(p, order), (p, if order == 0 { 1 } else { 0 })]);
            }
            targets.retain(|&(t, o)| t.0 > 0 && t.0 + (1 << o) <= MEMO_FRAMES);
            targets.sort_by_key(|&(t, o)| (core::cmp::Reverse(o), t));
            let mut memo = None;
            for (t, o) in targets {
                let fresh = env.mm.target_state(t, o, &mut None);
                proptest::prop_assert_eq!(&fresh, &frame_by_frame(env, t, o), "target {:?} of order {}", t, o);
                let memoed = env.mm.target_state(t, o, &mut memo);
                proptest::prop_assert_eq!(memoed, fresh, "target {:?} of order {}", t, o);
            }
            Ok(())
        })?;
    }
}

/// A VMA's pieces share one anchor: unmapping one piece gives back its share of the
/// windows only; unmapping the last gives back everything its owner holds, even a range
/// outside its windows (as a hand-over racing the VMA's new anchor may leave one).
#[test]
fn the_last_piece_of_an_anchored_vma_gives_back_everything_its_owner_holds() {
    const FRAMES: u64 = 8192;
    with_env(Arena::new(FRAMES), FRAMES, &[], |env| {
        let space = env.mm.new_space().unwrap();
        let flags = VmaFlags::private(HugePolicy::Never, true);
        env.mm.map_anon(&space, VA, 1024 * K4, flags).unwrap();
        env.mm.populate(&space, VA, 1024 * K4).unwrap();
        env.mm
            .make_vma_contiguous(&space, VA, &ContigOptions::default())
            .unwrap();
        let anchor = space.vmas()[0].anchor.clone().expect("anchored");
        assert_eq!(env.mm.claimed_windows().0, 1024);
        let stray = (Pfn(FRAMES - 16), Pfn(FRAMES));
        assert!(anchor
            .windows(VA, VA + 1024 * K4)
            .all(|(a, b)| b <= stray.0 || a >= stray.1));
        env.mm
            .claims()
            .claim(stray.0, stray.1, anchor.claim)
            .unwrap();
        env.mm.unmap(&space, VA, 512 * K4).unwrap();
        assert_eq!(
            env.mm.claimed_windows().0,
            512 + 16,
            "the other piece keeps its share"
        );
        env.mm.unmap(&space, VA + 512 * K4, 512 * K4).unwrap();
        assert_eq!(
            env.mm.claimed_windows(),
            (0, 0),
            "the last piece gives back all"
        );
        env.mm.destroy_space(&space).unwrap();
        env.audit();
    });
}
