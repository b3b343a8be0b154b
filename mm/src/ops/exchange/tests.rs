//! Host tests of exchange: two in-use blocks of each size trade frames with every
//! mapping, holder and count following and nothing allocated; every refusal is typed and
//! leaves both blocks exactly as they were; a batch shoots down once.

use super::*;
use crate::aspace::testing::{read_user, with_env, write_user, Env, SparseMem};
use crate::aspace::AddressSpace;
use crate::backend::phys::Arena;
use crate::backend::source::FrameSource;
use crate::base::addr::PageSize;
use crate::frame::buddy::MigrateType;
use crate::mapping::region::SharedRegion;
use crate::mapping::rmap::RmapEntry;
use crate::mapping::vma::{HugePolicy, Mobility, SharedBacking, VmaFlags};
use crate::paging::Translation;
use std::vec;
use x86_64::VirtAddr;

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
const FRAMES: u64 = 8192;

fn arena<R>(f: impl FnOnce(&Env<'_, Arena>) -> R) -> R {
    with_env(Arena::new(FRAMES), FRAMES, &[], f)
}

fn head_at<'a, M: PhysMem>(env: &Env<'a, M>, space: &AddressSpace<'a, M>, va: u64) -> Pfn {
    let t = space.translate(va).expect("mapped");
    env.mm.head_of(Pfn::containing(t.pa)).expect("allocated")
}

fn private(huge: HugePolicy) -> VmaFlags {
    VmaFlags::private(huge, true)
}

/// Offsets to write and check in a block of `size`.
fn probes(size: PageSize) -> Vec<u64> {
    let b = size.bytes();
    let mut v = vec![0, 8, K4 - 8, K4, b / 2 + 8, b - 8];
    v.retain(|&o| o < b);
    v.dedup();
    v
}

fn fill<'a, M: PhysMem>(
    env: &Env<'a, M>,
    s: &AddressSpace<'a, M>,
    va: u64,
    size: PageSize,
    tag: u64,
) {
    for o in probes(size) {
        assert!(write_user(env.mem, s, va + o, tag ^ o));
    }
}

fn check<'a, M: PhysMem>(
    env: &Env<'a, M>,
    s: &AddressSpace<'a, M>,
    va: u64,
    size: PageSize,
    tag: u64,
) {
    for o in probes(size) {
        assert_eq!(
            read_user(env.mem, s, va + o),
            Some(tag ^ o),
            "{va:#x}+{o:#x}"
        );
    }
}

/// Everything a refused exchange must leave as it was.
#[derive(Debug, PartialEq, Eq)]
struct State {
    leaves: Vec<Vec<(VirtAddr, Translation)>>,
    rmap: Vec<Vec<RmapEntry>>,
    counts: Vec<(u32, u32, u32)>,
    free: usize,
}

fn state<'a, M: PhysMem>(
    env: &Env<'a, M>,
    spaces: &[&AddressSpace<'a, M>],
    heads: &[Pfn],
) -> State {
    State {
        leaves: spaces.iter().map(|s| s.leaves()).collect(),
        rmap: heads.iter().map(|&h| env.mm.rmap_of(h)).collect(),
        counts: heads
            .iter()
            .map(|&h| {
                let m = env.mm.meta(h).unwrap();
                (m.refcount(), m.mapcount(), m.pincount())
            })
            .collect(),
        free: env.free_frames(),
    }
}

/// Two blocks of `size`: the first private in space A, the second a shared region's,
/// mapped in A and in B; exchange them and check that every mapping sees its own data at
/// the other's frames, the counts and reverse map moved, and nothing was allocated.
fn exchange_private_with_shared<M: PhysMem>(env: &Env<'_, M>, size: PageSize) {
    let len = size.bytes();
    let huge = if size == PageSize::Size4K {
        HugePolicy::Never
    } else {
        HugePolicy::Always
    };
    let a = env.mm.new_space().unwrap();
    let b = env.mm.new_space().unwrap();
    let region = SharedRegion::new(len).unwrap();
    let shared = VmaFlags {
        shared: Some(SharedBacking {
            region: region.clone(),
            offset: 0,
        }),
        ..private(huge)
    };
    let (pa_va, sa_va, sb_va) = (4 * G1, 8 * G1, 12 * G1);
    env.mm.map_anon(&a, pa_va, len, private(huge)).unwrap();
    env.mm.map_anon(&a, sa_va, len, shared.clone()).unwrap();
    env.mm.map_anon(&b, sb_va, len, shared).unwrap();
    env.mm.populate(&a, pa_va, len).unwrap();
    env.mm.populate(&a, sa_va, len).unwrap();
    env.mm.populate(&b, sb_va, len).unwrap();
    fill(env, &a, pa_va, size, 0x1111);
    fill(env, &a, sa_va, size, 0x2222);
    let (hp, hs) = (head_at(env, &a, pa_va), head_at(env, &a, sa_va));
    assert_eq!(head_at(env, &b, sb_va), hs);
    let before = state(env, &[], &[hp, hs]);
    let allocations = env.frames.allocations();
    let free = env.free_frames();
    assert_eq!(env.mm.exchange(hp, hs), Ok(()));
    assert_eq!(
        env.frames.allocations(),
        allocations,
        "an exchange allocates no frame"
    );
    assert_eq!(env.free_frames(), free);
    assert_eq!(head_at(env, &a, pa_va), hs);
    assert_eq!(head_at(env, &a, sa_va), hp);
    assert_eq!(head_at(env, &b, sb_va), hp);
    assert_eq!(
        a.translate(pa_va).unwrap().size,
        size,
        "stays one leaf of its size"
    );
    check(env, &a, pa_va, size, 0x1111);
    check(env, &a, sa_va, size, 0x2222);
    check(env, &b, sb_va, size, 0x2222);
    // The counts and the reverse map traded places with the data.
    let after = state(env, &[], &[hs, hp]);
    assert_eq!(after.counts, before.counts);
    let key = |v: &Vec<RmapEntry>| {
        v.iter()
            .map(|e| (e.space, e.va, e.size))
            .collect::<Vec<_>>()
    };
    assert_eq!(key(&after.rmap[0]), key(&before.rmap[0]));
    assert_eq!(key(&after.rmap[1]), key(&before.rmap[1]));
    env.audit();
    // Writes after the exchange land in the new frames; the region serves the new head.
    fill(env, &b, sb_va, size, 0x3333);
    check(env, &a, sa_va, size, 0x3333);
    env.mm.destroy_space(&a).unwrap();
    env.mm.destroy_space(&b).unwrap();
    assert_eq!(env.mm.release_region(&region), Ok(1));
    env.audit();
    let all = env.frames.frame_table().len() - 1;
    assert_eq!(env.free_frames(), all, "everything freed at the end");
}

#[test]
fn a_4k_page_and_a_shared_4k_page_trade_frames() {
    arena(|env| exchange_private_with_shared(env, PageSize::Size4K));
}

#[test]
fn a_2m_block_and_a_shared_2m_block_trade_frames_whole() {
    arena(|env| exchange_private_with_shared(env, PageSize::Size2M));
}

#[test]
fn a_1g_block_and_a_shared_1g_block_trade_frames_whole() {
    const BIG: u64 = 3 * (1 << 18);
    with_env(SparseMem::new(BIG), BIG, &[], |env| {
        exchange_private_with_shared(env, PageSize::Size1G)
    });
}

#[test]
fn every_refusal_is_typed_and_leaves_both_blocks_as_they_were() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        env.mm
            .map_anon(&s, G1, 4 * K4, private(HugePolicy::Never))
            .unwrap();
        env.mm
            .map_anon(&s, 2 * G1, M2, private(HugePolicy::Always))
            .unwrap();
        let pinned = VmaFlags {
            mobility: Mobility::Pinned,
            ..private(HugePolicy::Never)
        };
        env.mm.map_anon(&s, 3 * G1, K4, pinned).unwrap();
        env.mm.populate(&s, G1, 4 * K4).unwrap();
        env.mm.populate(&s, 2 * G1, M2).unwrap();
        env.mm.populate(&s, 3 * G1, K4).unwrap();
        for i in 0..4 {
            fill(env, &s, G1 + i * K4, PageSize::Size4K, i);
        }
        let p: Vec<Pfn> = (0..4).map(|i| head_at(env, &s, G1 + i * K4)).collect();
        let huge = head_at(env, &s, 2 * G1);
        let unmovable = head_at(env, &s, 3 * G1);
        let kernel = env.frames.alloc(0, MigrateType::Unmovable, None).unwrap();
        let free = (1..FRAMES)
            .map(Pfn)
            .find(|&f| env.mm.meta(f).unwrap().state() == crate::frame::meta::FrameState::Free)
            .unwrap();
        let free_tail = (1..FRAMES)
            .map(Pfn)
            .find(|&f| {
                let table = env.frames.frame_table();
                table.get(f).unwrap().state() == crate::frame::meta::FrameState::Tail
                    && table
                        .head_of(f)
                        .and_then(|h| table.get(h))
                        .map(|m| m.state())
                        == Some(crate::frame::meta::FrameState::Free)
            })
            .unwrap();
        let pin_head = env.mm.pin(&s, G1 + 3 * K4).unwrap();
        let cases = [
            ((p[0], huge), MigrateError::SizeMismatch),
            ((p[0], p[0]), MigrateError::SameBlock),
            ((p[0], kernel), MigrateError::NotInUse),
            ((free, p[0]), MigrateError::NotInUse),
            ((p[0], free_tail), MigrateError::NotInUse),
            ((p[0], unmovable), MigrateError::Unmovable),
            ((p[0], pin_head), MigrateError::Pinned),
            ((p[0], Pfn(FRAMES + 5)), MigrateError::OutOfRange),
            ((p[0], huge.add(1)), MigrateError::NotHead),
        ];
        let heads = [p[0], p[1], p[2], p[3], huge, unmovable];
        let before = state(env, &[&s], &heads);
        let allocations = env.frames.allocations();
        for ((x, y), want) in cases {
            assert_eq!(env.mm.exchange(x, y), Err(want), "exchange {x:?} {y:?}");
            assert_eq!(
                state(env, &[&s], &heads),
                before,
                "refused {want:?} changed something"
            );
        }
        // In one batch: a refused pair, two good pairs, and a pair that reuses a block
        // claimed by an earlier pair of the same batch.
        let results =
            env.mm
                .exchange_batch(&[(p[0], huge), (p[0], p[1]), (p[1], p[2]), (p[2], p[3])]);
        assert_eq!(
            results,
            [
                Err(MigrateError::SizeMismatch),
                Ok(()),
                Err(MigrateError::AlreadyMigrating),
                Err(MigrateError::Pinned),
            ]
        );
        assert_eq!(env.frames.allocations(), allocations);
        assert_eq!(head_at(env, &s, G1), p[1]);
        assert_eq!(head_at(env, &s, G1 + K4), p[0]);
        assert_eq!(head_at(env, &s, G1 + 2 * K4), p[2]);
        for i in 0..4 {
            check(env, &s, G1 + i * K4, PageSize::Size4K, i);
        }
        env.mm.unpin(pin_head).unwrap();
        env.frames.free(kernel, 0).unwrap();
        env.audit();
    });
}

#[test]
fn a_batch_of_pairs_shoots_down_once() {
    arena(|env| {
        let a = env.mm.new_space().unwrap();
        let b = env.mm.new_space().unwrap();
        a.cpus().insert(1);
        b.cpus().insert(2);
        for s in [&a, &b] {
            env.mm
                .map_anon(s, G1, 8 * K4, private(HugePolicy::Never))
                .unwrap();
            env.mm.populate(s, G1, 8 * K4).unwrap();
        }
        let pairs: Vec<(Pfn, Pfn)> = (0..8)
            .map(|i| (head_at(env, &a, G1 + i * K4), head_at(env, &b, G1 + i * K4)))
            .collect();
        let calls = env.tlb.calls();
        let results = env.mm.exchange_batch(&pairs);
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        assert_eq!(env.tlb.calls(), calls + 1, "one shootdown for eight pairs");
        for (i, &(x, y)) in pairs.iter().enumerate() {
            assert_eq!(head_at(env, &a, G1 + i as u64 * K4), y);
            assert_eq!(head_at(env, &b, G1 + i as u64 * K4), x);
        }
        env.audit();
    });
}

#[test]
fn every_buffer_size_swaps_the_same_bytes() {
    arena(|env| {
        let s = env.mm.new_space().unwrap();
        env.mm
            .map_anon(&s, 2 * G1, 2 * M2, private(HugePolicy::Always))
            .unwrap();
        env.mm.populate(&s, 2 * G1, 2 * M2).unwrap();
        fill(env, &s, 2 * G1, PageSize::Size2M, 7);
        fill(env, &s, 2 * G1 + M2, PageSize::Size2M, 9);
        for buffer in [
            SwapBuffer::Word,
            SwapBuffer::Line,
            SwapBuffer::Page,
            SwapBuffer::Registers,
        ] {
            let (x, y) = (head_at(env, &s, 2 * G1), head_at(env, &s, 2 * G1 + M2));
            assert_eq!(env.mm.exchange_batch_with(&[(x, y)], buffer), [Ok(())]);
            assert_eq!(head_at(env, &s, 2 * G1), y);
            check(env, &s, 2 * G1, PageSize::Size2M, 7);
            check(env, &s, 2 * G1 + M2, PageSize::Size2M, 9);
        }
        env.audit();
    });
}
