//! Property tests of the buddy allocator against a simple model: a bitmap of managed and
//! allocated frames, the set of allocated blocks and the claimed pageblocks, with
//! `audit()` after every step.

use mm::base::addr::{Pfn, MAX_ORDER, PAGEBLOCK_ORDER};
use mm::frame::buddy::{AllocError, BuddyAllocator, FreeError, MigrateType};
use mm::frame::meta::{FrameFlags, FrameMeta, FrameTable};
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::{BTreeMap, BTreeSet};

/// 2.5 GiB of frames with holes: exactly one aligned 1 GiB block is usable, so order-18
/// allocations both succeed and run out.
const FRAMES: usize = 5 << 17;
/// Usable ranges; frame 0, 200_000..200_013 and 600_000..600_100 stay reserved.
const RANGES: [(u64, u64); 3] = [(1, 200_000), (200_013, 600_000), (600_100, FRAMES as u64)];

fn records(n: usize) -> Vec<FrameMeta> {
    (0..n).map(|_| FrameMeta::new()).collect()
}

fn allocator(recs: &[FrameMeta]) -> BuddyAllocator<'_> {
    let mut b = BuddyAllocator::new(FrameTable::new(recs).unwrap());
    for (s, e) in RANGES {
        b.add_free_range(Pfn(s), Pfn(e)).unwrap();
    }
    b
}

/// The maximal aligned blocks of `start..end`, as the allocator decomposes ranges.
fn blocks(start: u64, end: u64) -> Vec<(u64, u8)> {
    let mut out = Vec::new();
    let mut p = start;
    while p < end {
        let align = if p == 0 { 63 } else { p.trailing_zeros() };
        let order = align.min((end - p).ilog2()).min(u32::from(MAX_ORDER)) as u8;
        out.push((p, order));
        p += 1 << order;
    }
    out
}

struct Model {
    managed: Vec<bool>,
    used: Vec<bool>,
    /// Allocated blocks: head -> order.
    blocks: BTreeMap<u64, u8>,
    /// Heads freed and not handed out as heads since: freeing them is a double free.
    freed: BTreeSet<u64>,
    /// Runs from `alloc_range`, possibly stale after single-block frees.
    ranges: Vec<(u64, usize)>,
    free_frames: usize,
    /// Pageblocks marked claimed.
    claimed: BTreeSet<u64>,
}

impl Model {
    fn new() -> Model {
        let mut managed = vec![false; FRAMES];
        for (s, e) in RANGES {
            managed[s as usize..e as usize].fill(true);
        }
        let free_frames = managed.iter().filter(|&&m| m).count();
        Model {
            managed,
            used: vec![false; FRAMES],
            blocks: BTreeMap::new(),
            freed: BTreeSet::new(),
            ranges: Vec::new(),
            free_frames,
            claimed: BTreeSet::new(),
        }
    }

    /// Where an unmovable allocation of `order` that takes whole free pageblocks must
    /// land: the lowest free aligned block of `order` (at least a pageblock) with no
    /// claimed pageblock, or the lowest free one when each has one.
    fn unmovable_pageblocks(&self, order: u8) -> Option<u64> {
        let span = 1u64 << order.max(PAGEBLOCK_ORDER);
        let free: Vec<u64> = (0..FRAMES as u64 / span)
            .map(|k| k * span)
            .filter(|&p| self.free_run(p, span as usize))
            .collect();
        let claimed = |p: u64| {
            (p..p + span)
                .step_by(1 << PAGEBLOCK_ORDER)
                .any(|pb| self.claimed.contains(&(pb >> PAGEBLOCK_ORDER)))
        };
        free.iter()
            .copied()
            .find(|&p| !claimed(p))
            .or(free.first().copied())
    }

    fn free_run(&self, start: u64, n: usize) -> bool {
        let s = start as usize;
        s + n <= FRAMES && (s..s + n).all(|i| self.managed[i] && !self.used[i])
    }

    /// Lowest multiple of `2^align` starting `n` free frames.
    fn first_fit(&self, n: usize, align: u8) -> Option<u64> {
        let step = 1usize << align;
        let mut run = 0usize;
        for i in 0..FRAMES {
            if self.managed[i] && !self.used[i] {
                run += 1;
                let start = i + 1 - run;
                let aligned = start.div_ceil(step) * step;
                if aligned + n <= i + 1 {
                    return Some(aligned as u64);
                }
            } else {
                run = 0;
            }
        }
        None
    }

    fn take(&mut self, head: u64, order: u8) {
        let (s, n) = (head as usize, 1usize << order);
        assert!(self.free_run(head, n), "block {head}+{n} was not free");
        self.used[s..s + n].fill(true);
        self.blocks.insert(head, order);
        self.freed.remove(&head);
        self.free_frames -= n;
    }

    fn release(&mut self, head: u64, order: u8) {
        let (s, n) = (head as usize, 1usize << order);
        self.used[s..s + n].fill(false);
        self.blocks.remove(&head);
        self.freed.insert(head);
        self.free_frames += n;
    }

    /// What `free(pfn, order)` must answer.
    fn expect_free(&self, pfn: u64, order: u8) -> Result<(), FreeError> {
        let i = pfn as usize;
        if i >= FRAMES {
            return Err(FreeError::OutOfRange);
        }
        if !self.managed[i] {
            return Err(FreeError::NotAllocated);
        }
        if !self.used[i] {
            return Err(if self.freed.contains(&pfn) {
                FreeError::DoubleFree
            } else {
                FreeError::NotAllocated
            });
        }
        match self.blocks.get(&pfn) {
            None => Err(FreeError::NotHead),
            Some(&k) if k != order => Err(FreeError::WrongOrder { allocated: k }),
            Some(_) => Ok(()),
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Alloc(u8, MigrateType),
    AllocAt(u64, u8, MigrateType),
    AllocRange(usize, u8, MigrateType),
    /// Free an allocated block with its own order.
    Free(Index),
    /// Free an allocated block with another order, or one of its tails.
    BadFree(Index, u8, u64),
    /// Free whatever is at a random PFN.
    FreeAny(u64, u8),
    FreeRange(Index),
    /// Mark a pageblock claimed (or no longer), as contiguity generation does.
    Claim(u64, bool),
}

fn order() -> impl Strategy<Value = u8> {
    prop_oneof![
        8 => 0u8..=2,
        4 => 3u8..=8,
        2 => 9u8..=12,
        1 => 13u8..=MAX_ORDER,
    ]
}

/// A pageblock to mark: mostly among the lowest, where unmovable allocations go.
fn claimable() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0u64..24,
        1 => 0u64..(FRAMES >> PAGEBLOCK_ORDER) as u64,
    ]
}

fn migrate_type() -> impl Strategy<Value = MigrateType> {
    prop_oneof![Just(MigrateType::Movable), Just(MigrateType::Unmovable)]
}

fn op() -> impl Strategy<Value = Op> {
    let pfn = 0u64..FRAMES as u64 + 16;
    prop_oneof![
        8 => (order(), migrate_type()).prop_map(|(o, t)| Op::Alloc(o, t)),
        3 => (pfn.clone(), order(), migrate_type()).prop_map(|(p, o, t)| Op::AllocAt(p, o, t)),
        2 => (1usize..3000, 0u8..=10, migrate_type()).prop_map(|(n, a, t)| Op::AllocRange(n, a, t)),
        7 => any::<Index>().prop_map(Op::Free),
        2 => (any::<Index>(), 0u8..=MAX_ORDER, any::<u64>()).prop_map(|(i, o, t)| Op::BadFree(i, o, t)),
        2 => (pfn, order()).prop_map(|(p, o)| Op::FreeAny(p, o)),
        1 => any::<Index>().prop_map(Op::FreeRange),
        4 => (claimable(), any::<bool>()).prop_map(|(p, c)| Op::Claim(p, c)),
    ]
}

fn step(b: &mut BuddyAllocator<'_>, m: &mut Model, op: &Op) {
    match *op {
        Op::Alloc(order, mt) => {
            let steals = b.stats().pageblock_steals;
            let whole = m.unmovable_pageblocks(order);
            match b.alloc(order, mt) {
                Ok(p) => {
                    assert!(p.is_aligned(order));
                    let took_pageblock =
                        order >= PAGEBLOCK_ORDER || b.stats().pageblock_steals > steals;
                    if mt == MigrateType::Unmovable && took_pageblock {
                        assert_eq!(
                            Some(p.0),
                            whole,
                            "unmovable order {order}: not the lowest unclaimed pageblock"
                        );
                    }
                    m.take(p.0, order);
                }
                Err(e) => {
                    assert_eq!(e, AllocError::OutOfMemory);
                    let size = 1u64 << order;
                    let fits =
                        (0..FRAMES as u64 / size).any(|k| m.free_run(k * size, size as usize));
                    assert!(!fits, "order {order} refused though a free block exists");
                }
            }
        }
        Op::Claim(pageblock, claimed) => {
            let first = b.table().get(Pfn(pageblock << PAGEBLOCK_ORDER)).unwrap();
            if claimed {
                first.insert_flags(FrameFlags::PAGEBLOCK_CLAIMED);
                m.claimed.insert(pageblock);
            } else {
                first.remove_flags(FrameFlags::PAGEBLOCK_CLAIMED);
                m.claimed.remove(&pageblock);
            }
        }
        Op::AllocAt(pfn, order, mt) => {
            let aligned = pfn & !((1u64 << order) - 1);
            for p in [pfn, aligned] {
                let size = 1usize << order;
                let expect = if !Pfn(p).is_aligned(order) {
                    Err(AllocError::Unaligned)
                } else if p as usize + size > FRAMES {
                    Err(AllocError::OutOfRange)
                } else if !m.free_run(p, size) {
                    Err(AllocError::NotFree)
                } else {
                    Ok(Pfn(p))
                };
                assert_eq!(
                    b.alloc_at(Pfn(p), order, mt),
                    expect,
                    "alloc_at({p}, {order})"
                );
                if expect.is_ok() {
                    m.take(p, order);
                }
            }
        }
        Op::AllocRange(n, align, mt) => {
            let expect = m.first_fit(n, align);
            assert_eq!(b.alloc_range(n, align, mt).ok(), expect.map(Pfn));
            if let Some(s) = expect {
                for (h, o) in blocks(s, s + n as u64) {
                    m.take(h, o);
                }
                m.ranges.push((s, n));
            }
        }
        Op::Free(idx) => {
            if m.blocks.is_empty() {
                return;
            }
            let (&h, &o) = m.blocks.iter().nth(idx.index(m.blocks.len())).unwrap();
            assert_eq!(b.free(Pfn(h), o), Ok(()));
            m.release(h, o);
            assert_eq!(b.free(Pfn(h), o), Err(FreeError::DoubleFree));
        }
        Op::BadFree(idx, order, tail) => {
            if m.blocks.is_empty() {
                return;
            }
            let (&h, &o) = m.blocks.iter().nth(idx.index(m.blocks.len())).unwrap();
            let (pfn, order) = if o > 0 && tail % 2 == 0 {
                (h + 1 + tail % ((1 << o) - 1), order)
            } else {
                (
                    h,
                    if order == o {
                        (o + 1) % (MAX_ORDER + 1)
                    } else {
                        order
                    },
                )
            };
            let expect = m.expect_free(pfn, order);
            assert!(expect.is_err());
            assert_eq!(b.free(Pfn(pfn), order), expect);
        }
        Op::FreeAny(pfn, order) => {
            let expect = m.expect_free(pfn, order);
            assert_eq!(b.free(Pfn(pfn), order), expect, "free({pfn}, {order})");
            if expect.is_ok() {
                m.release(pfn, order);
            }
        }
        Op::FreeRange(idx) => {
            if m.ranges.is_empty() {
                return;
            }
            let (s, n) = m.ranges.swap_remove(idx.index(m.ranges.len()));
            let parts = blocks(s, s + n as u64);
            let expect = parts
                .iter()
                .map(|&(h, o)| m.expect_free(h, o))
                .find(Result::is_err)
                .unwrap_or(Ok(()));
            assert_eq!(b.free_range(Pfn(s), n), expect);
            if expect.is_ok() {
                for (h, o) in parts {
                    m.release(h, o);
                }
            }
        }
    }
}

fn check(b: &BuddyAllocator<'_>, m: &Model) {
    let report = b.audit().unwrap_or_else(|e| panic!("audit: {e:?}"));
    assert_eq!(report.free_frames, m.free_frames);
    assert_eq!(b.free_frames(), m.free_frames);
    assert_eq!(report.allocated_blocks, m.blocks.len());
    assert_eq!(b.allocated_frames() + b.free_frames(), b.total_frames());
    for &pb in &m.claimed {
        let first = b.table().get(Pfn(pb << PAGEBLOCK_ORDER)).unwrap();
        assert!(
            first.flags().contains(FrameFlags::PAGEBLOCK_CLAIMED),
            "pageblock {pb} lost its mark"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn random_operations_match_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let recs = records(FRAMES);
        let mut b = allocator(&recs);
        let mut m = Model::new();
        let initial = b.free_areas();
        check(&b, &m);
        for op in &ops {
            step(&mut b, &mut m, op);
            check(&b, &m);
        }
        for p in (0..FRAMES as u64).step_by(97) {
            assert_eq!(b.is_free(Pfn(p)), m.managed[p as usize] && !m.used[p as usize], "{p}");
        }
        let live: Vec<(u64, u8)> = m.blocks.iter().map(|(&h, &o)| (h, o)).collect();
        for (h, o) in live {
            b.free(Pfn(h), o).unwrap();
        }
        prop_assert_eq!(b.free_areas(), initial);
        check(&b, &Model::new());
    }

    #[test]
    fn unmovable_frames_stay_grouped(
        ops in proptest::collection::vec((any::<bool>(), any::<bool>(), any::<Index>()), 1..4000)
    ) {
        let recs = records(FRAMES);
        let mut b = allocator(&recs);
        let mut live: [Vec<Pfn>; 2] = [Vec::new(), Vec::new()];
        let mut peak_unmovable = 0;
        for (unmovable, free, idx) in ops {
            let t = usize::from(unmovable);
            if free && !live[t].is_empty() {
                let p = live[t].swap_remove(idx.index(live[t].len()));
                b.free(p, 0).unwrap();
            } else {
                let mt = if unmovable { MigrateType::Unmovable } else { MigrateType::Movable };
                live[t].push(b.alloc(0, mt).unwrap());
                peak_unmovable = peak_unmovable.max(live[1].len());
            }
        }
        let pageblock = |p: &Pfn| p.0 >> PAGEBLOCK_ORDER;
        let unmovable: BTreeSet<u64> = live[1].iter().map(pageblock).collect();
        let movable: BTreeSet<u64> = live[0].iter().map(pageblock).collect();
        let bound = peak_unmovable / (1 << PAGEBLOCK_ORDER) + 1;
        prop_assert_eq!(b.stats().fallbacks, 0);
        prop_assert!(unmovable.len() <= bound, "{} pageblocks > {}", unmovable.len(), bound);
        prop_assert!(unmovable.is_disjoint(&movable));
        b.audit().unwrap();
    }
}

proptest! {
    // Each case allocates and frees every frame one by one: a few cases suffice.
    #![proptest_config(ProptestConfig::with_cases(3))]

    #[test]
    fn freeing_every_frame_in_any_order_restores_the_free_areas(seed in any::<u64>()) {
        let recs = records(FRAMES);
        let mut b = allocator(&recs);
        let initial = b.free_areas();
        let mut frames = Vec::with_capacity(b.free_frames());
        while let Ok(p) = b.alloc(0, MigrateType::Movable) {
            frames.push(p);
        }
        prop_assert_eq!(frames.len(), b.total_frames());
        prop_assert_eq!(b.free_frames(), 0);
        b.audit().unwrap();
        shuffle(&mut frames, seed);
        for p in frames {
            b.free(p, 0).unwrap();
        }
        prop_assert_eq!(b.free_areas(), initial);
        b.audit().unwrap();
    }
}

/// Fisher-Yates with a xorshift generator.
fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}
