//! Unit tests of the page-table operations and of every error path.

use super::testing::{leaf_word, split_boundaries, split_now, ListTableAlloc, RecordingSink};
use super::*;
use crate::backend::phys::Arena;
use std::vec::Vec;

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
/// A lower-half window well away from 0.
const BASE: u64 = 0x0000_0040_0000_0000;
const KERNEL: u64 = 0xFFFF_8000_0000_0000;
const RW: PageTableFlags = PageTableFlags::WRITABLE;
const F_RO: PageTableFlags = PageTableFlags::empty();
const TABLE_FRAMES: u64 = 64;

fn pa(addr: u64) -> PhysAddr {
    PhysAddr::new(addr)
}

fn present(flags: PageTableFlags) -> PageTableFlags {
    flags | PageTableFlags::PRESENT
}

struct Env {
    arena: Arena,
    alloc: ListTableAlloc,
    sink: RecordingSink,
}

impl Env {
    fn new() -> Env {
        Env {
            arena: Arena::new(TABLE_FRAMES),
            alloc: ListTableAlloc::new(PhysAddr::zero(), TABLE_FRAMES),
            sink: RecordingSink::default(),
        }
    }
}

type Snapshot = (Vec<(VirtAddr, Translation)>, usize, usize);

/// Everything an error must leave alone: the layout, the allocator, the sink.
fn snapshot<M: PhysMem>(
    pt: &PageTable<'_, M>,
    alloc: &ListTableAlloc,
    sink: &RecordingSink,
) -> Snapshot {
    let sink_calls = sink.flushes.len() + sink.full_flushes + sink.deferred.len();
    (pt.walk_all().collect(), alloc.outstanding(), sink_calls)
}

fn count_tables<M: PhysMem>(pt: &PageTable<'_, M>) -> usize {
    let mut n = 0;
    pt.visit_tables(|_, _| n += 1);
    n
}

#[test]
fn map_query_walk_every_size() {
    let Env {
        arena,
        mut alloc,
        mut sink,
    } = Env::new();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    let nx = RW | PageTableFlags::NO_EXECUTE;
    pt.map(
        BASE + 5 * K4,
        pa(0x5000),
        PageSize::Size4K,
        nx,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    pt.map(
        BASE + 3 * M2,
        pa(7 * M2),
        PageSize::Size2M,
        RW | LEAF_PAT,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    pt.map(
        BASE + 2 * G1,
        pa(3 * G1),
        PageSize::Size1G,
        PageTableFlags::empty(),
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    assert!(
        sink.flushes.is_empty(),
        "mapping into unused slots needs no flush"
    );

    let t = pt.query(BASE + 5 * K4 + 0x123).unwrap();
    assert_eq!(t.pa, pa(0x5123));
    assert_eq!(t.leaf_base_pa, pa(0x5000));
    assert_eq!((t.size, t.flags), (PageSize::Size4K, present(nx)));
    let t = pt.query(BASE + 3 * M2 + 0x1_2345).unwrap();
    assert_eq!(t.pa, pa(7 * M2 + 0x1_2345));
    assert_eq!(
        (t.size, t.flags),
        (PageSize::Size2M, present(RW | LEAF_PAT))
    );
    let t = pt.query(BASE + 2 * G1 + G1 - 1).unwrap();
    assert_eq!(t.pa, pa(4 * G1 - 1));
    assert_eq!(t.size, PageSize::Size1G);
    assert_eq!(pt.query(BASE + 4 * K4), None);
    assert_eq!(pt.query(BASE + 3 * G1), None);

    let leaves: Vec<_> = pt.walk_all().map(|(va, t)| (va.as_u64(), t.size)).collect();
    assert_eq!(
        leaves,
        [
            (BASE + 5 * K4, PageSize::Size4K),
            (BASE + 3 * M2, PageSize::Size2M),
            (BASE + 2 * G1, PageSize::Size1G)
        ]
    );
    // A walk starting inside a leaf reports the whole leaf.
    let first = pt.walk(BASE + 3 * M2 + K4, BASE + 2 * G1).next().unwrap();
    assert_eq!(first.0.as_u64(), BASE + 3 * M2);
    assert_eq!(pt.walk(BASE + 3 * M2 + K4, BASE + 2 * G1).count(), 1);
    // Root, PDPT, PD (with a PT below) and the PD of the 4K/2M region.
    assert_eq!(count_tables(&pt), 4);
}

#[test]
fn kernel_half_and_the_top_of_the_address_space() {
    let Env {
        arena,
        mut alloc,
        mut sink,
    } = Env::new();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    let top = u64::MAX - (K4 - 1);
    pt.map(
        KERNEL,
        pa(0x1000),
        PageSize::Size4K,
        RW,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    pt.map(top, pa(0x2000), PageSize::Size4K, RW, &mut alloc, &mut sink)
        .unwrap();
    pt.map(
        LOWER_HALF_END - G1,
        pa(G1),
        PageSize::Size1G,
        RW,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    assert_eq!(pt.query(top + 8).unwrap().pa, pa(0x2008));
    let vas: Vec<u64> = pt.walk_all().map(|(va, _)| va.as_u64()).collect();
    assert_eq!(vas, [LOWER_HALF_END - G1, KERNEL, top]);
    // A walk across the hole, and one to the top (end 0 = 2^64).
    assert_eq!(pt.walk(LOWER_HALF_END - K4, KERNEL + K4).count(), 2);
    assert_eq!(pt.walk(KERNEL + K4, 0).count(), 1);

    let mut removed = Vec::new();
    pt.unmap_range(KERNEL, 0, &mut sink, |leaf| removed.push(leaf))
        .unwrap();
    assert_eq!(removed.len(), 2);
    assert!(sink.covers(vaddr(top), PageSize::Size4K));
    assert_eq!(pt.walk_all().count(), 1);
    // The upper half's tables are gone again: the root and the lower half's PDPT remain.
    assert_eq!(count_tables(&pt), 2);
}

#[test]
fn mapping_over_an_existing_mapping_changes_nothing() {
    let Env {
        arena,
        mut alloc,
        mut sink,
    } = Env::new();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    pt.map(BASE, pa(0), PageSize::Size4K, RW, &mut alloc, &mut sink)
        .unwrap();
    pt.map(
        BASE + M2,
        pa(0),
        PageSize::Size2M,
        RW,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    pt.map(
        BASE + G1,
        pa(0),
        PageSize::Size1G,
        RW,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    let before = snapshot(&pt, &alloc, &sink);
    let cases = [
        (BASE, PageSize::Size4K, "same 4K leaf"),
        (BASE, PageSize::Size2M, "2M over a table with a 4K below"),
        (BASE, PageSize::Size1G, "1G over tables with leaves below"),
        (BASE + M2, PageSize::Size2M, "same 2M leaf"),
        (BASE + M2 + 7 * K4, PageSize::Size4K, "4K inside a 2M leaf"),
        (BASE + G1 + 5 * M2, PageSize::Size2M, "2M inside a 1G leaf"),
        (BASE + G1 + 5 * K4, PageSize::Size4K, "4K inside a 1G leaf"),
        (BASE + G1, PageSize::Size1G, "same 1G leaf"),
    ];
    for (va, size, what) in cases {
        let result = pt.map(va, pa(0), size, RW, &mut alloc, &mut sink);
        assert_eq!(result, Err(MapError::AlreadyMapped), "{what}");
        assert_eq!(snapshot(&pt, &alloc, &sink), before, "{what}");
    }
}

#[test]
fn unmapping_what_is_not_mapped_changes_nothing() {
    let Env {
        arena,
        mut alloc,
        mut sink,
    } = Env::new();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    assert_eq!(
        pt.unmap(BASE, PageSize::Size4K, &mut sink),
        Err(UnmapError::NotMapped)
    );
    pt.map(BASE, pa(0), PageSize::Size4K, RW, &mut alloc, &mut sink)
        .unwrap();
    let before = snapshot(&pt, &alloc, &sink);
    for (va, size) in [
        (BASE + K4, PageSize::Size4K),
        (BASE + M2, PageSize::Size2M),
        (BASE + G1, PageSize::Size1G),
        (KERNEL, PageSize::Size4K),
    ] {
        assert_eq!(pt.unmap(va, size, &mut sink), Err(UnmapError::NotMapped));
        assert_eq!(
            pt.protect(va, size, RW, &mut sink),
            Err(ProtectError::NotMapped)
        );
        assert_eq!(snapshot(&pt, &alloc, &sink), before);
    }
    assert_eq!(
        pt.begin_split(BASE + M2, PageSize::Size2M, &mut alloc, &mut sink),
        Err(SplitError::NotMapped)
    );
    assert_eq!(snapshot(&pt, &alloc, &sink), before);
}

#[test]
fn size_mismatch_changes_nothing() {
    let Env {
        arena,
        mut alloc,
        mut sink,
    } = Env::new();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    pt.map(BASE, pa(0), PageSize::Size4K, RW, &mut alloc, &mut sink)
        .unwrap();
    pt.map(
        BASE + M2,
        pa(0),
        PageSize::Size2M,
        RW,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    pt.map(
        BASE + G1,
        pa(0),
        PageSize::Size1G,
        RW,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    let before = snapshot(&pt, &alloc, &sink);
    for (va, size, what) in [
        (BASE, PageSize::Size2M, "2M where 4K leaves are"),
        (BASE, PageSize::Size1G, "1G where smaller leaves are"),
        (BASE + M2, PageSize::Size4K, "4K at the start of a 2M leaf"),
        (BASE + M2 + K4, PageSize::Size4K, "4K inside a 2M leaf"),
        (BASE + G1, PageSize::Size2M, "2M at the start of a 1G leaf"),
        (BASE + G1 + K4, PageSize::Size4K, "4K inside a 1G leaf"),
    ] {
        assert_eq!(
            pt.unmap(va, size, &mut sink),
            Err(UnmapError::SizeMismatch),
            "{what}"
        );
        assert_eq!(
            pt.protect(va, size, RW, &mut sink),
            Err(ProtectError::SizeMismatch),
            "{what}"
        );
        if size != PageSize::Size4K {
            assert_eq!(
                pt.begin_split(va, size, &mut alloc, &mut sink),
                Err(SplitError::SizeMismatch),
                "{what}"
            );
        }
        assert_eq!(snapshot(&pt, &alloc, &sink), before, "{what}");
    }
    assert_eq!(
        pt.begin_split(BASE, PageSize::Size4K, &mut alloc, &mut sink),
        Err(SplitError::NotHuge)
    );
    assert_eq!(snapshot(&pt, &alloc, &sink), before);
}

#[test]
fn unaligned_requests_change_nothing() {
    let Env {
        arena,
        mut alloc,
        mut sink,
    } = Env::new();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    pt.map(BASE, pa(0), PageSize::Size2M, RW, &mut alloc, &mut sink)
        .unwrap();
    let before = snapshot(&pt, &alloc, &sink);
    let map = |pt: &mut PageTable<'_, Arena>,
               va,
               p,
               size,
               a: &mut ListTableAlloc,
               s: &mut RecordingSink| { pt.map(va, pa(p), size, RW, a, s) };
    for (va, p, size) in [
        (BASE + G1 + K4, 0, PageSize::Size2M),
        (BASE + G1, K4, PageSize::Size2M),
        (BASE + G1, M2, PageSize::Size1G),
        (BASE + G1 + M2, 0, PageSize::Size1G),
        (BASE + G1 + 8, 0, PageSize::Size4K),
        (BASE + G1, 8, PageSize::Size4K),
    ] {
        assert_eq!(
            map(&mut pt, va, p, size, &mut alloc, &mut sink),
            Err(MapError::Unaligned)
        );
    }
    assert_eq!(
        pt.unmap(BASE + K4, PageSize::Size2M, &mut sink),
        Err(UnmapError::Unaligned)
    );
    assert_eq!(
        pt.protect(BASE + K4, PageSize::Size2M, RW, &mut sink),
        Err(ProtectError::Unaligned)
    );
    assert_eq!(
        pt.begin_split(BASE + K4, PageSize::Size2M, &mut alloc, &mut sink),
        Err(SplitError::Unaligned)
    );
    assert_eq!(
        pt.unmap_range(BASE + 8, BASE + M2, &mut sink, |_| {}),
        Err(RangeError::Unaligned)
    );
    assert_eq!(
        pt.protect_range(BASE, BASE + 8, RW, &mut sink),
        Err(RangeError::Unaligned)
    );
    assert_eq!(
        pt.protect_range(BASE + M2, BASE, RW, &mut sink),
        Err(RangeError::InvalidRange)
    );
    assert_eq!(snapshot(&pt, &alloc, &sink), before);
}

#[test]
fn non_canonical_addresses_and_invalid_flags_change_nothing() {
    let Env {
        arena,
        mut alloc,
        mut sink,
    } = Env::new();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    pt.map(
        LOWER_HALF_END - K4,
        pa(0),
        PageSize::Size4K,
        RW,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    let before = snapshot(&pt, &alloc, &sink);
    let hole = LOWER_HALF_END;
    for va in [hole, hole + G1, UPPER_HALF_START - G1] {
        assert_eq!(
            pt.map(va, pa(0), PageSize::Size4K, RW, &mut alloc, &mut sink),
            Err(MapError::NonCanonical)
        );
        assert_eq!(
            pt.unmap(va, PageSize::Size4K, &mut sink),
            Err(UnmapError::NonCanonical)
        );
        assert_eq!(
            pt.protect(va, PageSize::Size4K, RW, &mut sink),
            Err(ProtectError::NonCanonical)
        );
        assert_eq!(
            pt.begin_split(va, PageSize::Size2M, &mut alloc, &mut sink),
            Err(SplitError::NonCanonical)
        );
        assert_eq!(pt.query(va), None);
    }
    for (start, end) in [
        (hole - K4, hole + K4),
        (hole - K4, KERNEL + K4),
        (hole, hole + K4),
        (hole - K4, 0),
    ] {
        assert_eq!(
            pt.unmap_range(start, end, &mut sink, |_| {}),
            Err(RangeError::NonCanonical)
        );
        assert_eq!(
            pt.protect_range(start, end, RW, &mut sink),
            Err(RangeError::NonCanonical)
        );
    }
    for bad in [
        PageTableFlags::HUGE_PAGE,
        PageTableFlags::from_bits_retain(1 << 20),
    ] {
        assert_eq!(
            pt.map(BASE, pa(0), PageSize::Size4K, bad, &mut alloc, &mut sink),
            Err(MapError::InvalidFlags)
        );
        assert_eq!(
            pt.protect(hole - K4, PageSize::Size4K, bad, &mut sink),
            Err(ProtectError::InvalidFlags)
        );
        assert_eq!(
            pt.protect_range(hole - M2, hole, bad, &mut sink),
            Err(RangeError::InvalidFlags)
        );
    }
    assert_eq!(snapshot(&pt, &alloc, &sink), before);
    // The range right up to the hole is fine.
    let mut removed = 0;
    pt.unmap_range(hole - G1, hole, &mut sink, |_| removed += 1)
        .unwrap();
    assert_eq!(removed, 1);
}

#[test]
fn out_of_tables_changes_nothing() {
    let Env {
        arena,
        mut alloc,
        mut sink,
    } = Env::new();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    pt.map(
        BASE + G1,
        pa(G1),
        PageSize::Size1G,
        RW,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    let before = snapshot(&pt, &alloc, &sink);
    for budget in 0..3 {
        alloc.budget = Some(budget);
        assert_eq!(
            pt.map(KERNEL, pa(0), PageSize::Size4K, RW, &mut alloc, &mut sink),
            Err(MapError::OutOfTables)
        );
        assert_eq!(snapshot(&pt, &alloc, &sink), before, "map, budget {budget}");
    }
    // Unmapping one 4K page from the middle of a 1G leaf needs two splits first.
    let middle = BASE + G1 + 5 * M2 + 3 * K4;
    let straddles = Err(RangeError::Straddles {
        va: vaddr(BASE + G1),
        size: PageSize::Size1G,
    });
    assert_eq!(
        pt.unmap_range(middle, middle + K4, &mut sink, |_| {}),
        straddles
    );
    assert_eq!(
        pt.protect_range(middle, middle + K4, PageTableFlags::empty(), &mut sink),
        straddles
    );
    assert_eq!(snapshot(&pt, &alloc, &sink), before);
    alloc.budget = Some(0);
    assert_eq!(
        pt.begin_split(BASE + G1, PageSize::Size1G, &mut alloc, &mut sink),
        Err(SplitError::OutOfTables)
    );
    assert_eq!(snapshot(&pt, &alloc, &sink), before);

    alloc.budget = Some(2);
    split_boundaries(&mut pt, middle, middle + K4, &mut alloc, &mut sink).unwrap();
    let mut removed = Vec::new();
    pt.unmap_range(middle, middle + K4, &mut sink, |l| removed.push(l))
        .unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].va.as_u64(), middle);
    assert_eq!(removed[0].pa, pa(G1 + 5 * M2 + 3 * K4));
    assert_eq!(removed[0].size, PageSize::Size4K);
    assert!(sink.covers(vaddr(BASE + G1), PageSize::Size1G));
    assert_eq!(pt.query(middle), None);
    assert_eq!(pt.query(middle + K4).unwrap().pa, pa(G1 + 5 * M2 + 4 * K4));
    assert_eq!(pt.walk_all().count(), 511 + 511);
}

#[test]
fn unmap_returns_dirty_bits_and_frees_empty_tables() {
    let Env {
        arena,
        mut alloc,
        mut sink,
    } = Env::new();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    pt.map(
        BASE,
        pa(0x7000),
        PageSize::Size4K,
        RW,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    pt.map(
        BASE + K4,
        pa(0x8000),
        PageSize::Size4K,
        RW,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    assert_eq!(alloc.outstanding(), 4);
    let (word, _) = leaf_word(&arena, pt.root(), BASE).unwrap();
    word.fetch_or(
        (PageTableFlags::ACCESSED | PageTableFlags::DIRTY).bits(),
        Ordering::Relaxed,
    );

    let leaf = pt.unmap(BASE, PageSize::Size4K, &mut sink).unwrap();
    assert!(leaf.is_dirty());
    assert_eq!(leaf.pa, pa(0x7000));
    assert_eq!(
        leaf.flags,
        present(RW | PageTableFlags::ACCESSED | PageTableFlags::DIRTY)
    );
    assert_eq!(sink.flushes, [(vaddr(BASE), PageSize::Size4K)]);
    assert!(sink.deferred.is_empty(), "the PT still maps BASE + 4K");

    let leaf = pt.unmap(BASE + K4, PageSize::Size4K, &mut sink).unwrap();
    assert!(!leaf.is_dirty());
    assert_eq!(sink.deferred.len(), 3, "PT, PD and PDPT are empty now");
    assert_eq!(count_tables(&pt), 1);
    assert!(pt.is_empty_table(pt.root()));
}

#[test]
fn split_preserves_translation_flags_and_dirty() {
    let Env {
        arena,
        mut alloc,
        mut sink,
    } = Env::new();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    let flags = RW | LEAF_PAT | PageTableFlags::USER_ACCESSIBLE | PageTableFlags::NO_EXECUTE;
    pt.map(
        BASE,
        pa(5 * G1),
        PageSize::Size1G,
        flags,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    let (word, _) = leaf_word(&arena, pt.root(), BASE).unwrap();
    word.fetch_or(PageTableFlags::DIRTY.bits(), Ordering::Relaxed);
    let flags = present(flags | PageTableFlags::DIRTY);

    split_now(&mut pt, BASE, PageSize::Size1G, &mut alloc, &mut sink).unwrap();
    assert_eq!(sink.flushes, [(vaddr(BASE), PageSize::Size1G)]);
    let leaves: Vec<_> = pt.walk_all().collect();
    assert_eq!(leaves.len(), 512);
    for (i, (va, t)) in leaves.iter().enumerate() {
        assert_eq!(va.as_u64(), BASE + i as u64 * M2);
        assert_eq!(t.leaf_base_pa, pa(5 * G1 + i as u64 * M2));
        assert_eq!((t.size, t.flags), (PageSize::Size2M, flags));
    }
    split_now(
        &mut pt,
        BASE + 7 * M2,
        PageSize::Size2M,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    let t = pt.query(BASE + 7 * M2 + 9 * K4 + 1).unwrap();
    assert_eq!(t.pa, pa(5 * G1 + 7 * M2 + 9 * K4 + 1));
    assert_eq!((t.size, t.flags), (PageSize::Size4K, flags));
    let (pte, _) = leaf_word(&arena, pt.root(), BASE + 7 * M2).unwrap();
    assert_ne!(
        pte.load(Ordering::Relaxed) & (1 << 7),
        0,
        "PAT at bit 7 in a PTE"
    );
    assert_eq!(pt.walk_all().count(), 511 + 512);
}

#[test]
fn protect_keeps_accessed_dirty_and_reports_changes() {
    let Env {
        arena,
        mut alloc,
        mut sink,
    } = Env::new();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    pt.map(BASE, pa(M2), PageSize::Size2M, RW, &mut alloc, &mut sink)
        .unwrap();
    let (word, _) = leaf_word(&arena, pt.root(), BASE).unwrap();
    word.fetch_or(PageTableFlags::ACCESSED.bits(), Ordering::Relaxed);

    let old = pt.protect(BASE, PageSize::Size2M, RW, &mut sink).unwrap();
    assert_eq!(old, present(RW | PageTableFlags::ACCESSED));
    assert!(sink.flushes.is_empty(), "nothing changed");
    let nx = PageTableFlags::NO_EXECUTE;
    pt.protect(BASE, PageSize::Size2M, nx, &mut sink).unwrap();
    assert_eq!(sink.flushes, [(vaddr(BASE), PageSize::Size2M)]);
    let t = pt.query(BASE).unwrap();
    assert_eq!(t.flags, present(nx | PageTableFlags::ACCESSED));
    assert_eq!(t.leaf_base_pa, pa(M2));
}

#[test]
fn range_operations_need_partly_covered_leaves_split() {
    let Env {
        arena,
        mut alloc,
        mut sink,
    } = Env::new();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    pt.map(BASE, pa(0), PageSize::Size2M, RW, &mut alloc, &mut sink)
        .unwrap();
    pt.map(
        BASE + M2,
        pa(M2),
        PageSize::Size2M,
        RW,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    // Protect the last 4K of the first 2M leaf and the first half of the second.
    let ro = PageTableFlags::empty();
    let (start, end) = (BASE + M2 - K4, BASE + M2 + M2 / 2);
    assert_eq!(
        pt.protect_range(start, end, ro, &mut sink),
        Err(RangeError::Straddles {
            va: vaddr(BASE),
            size: PageSize::Size2M
        })
    );
    assert!(sink.flushes.is_empty());
    split_boundaries(&mut pt, start, end, &mut alloc, &mut sink).unwrap();
    pt.protect_range(start, end, ro, &mut sink).unwrap();
    assert!(sink.covers(vaddr(BASE), PageSize::Size2M));
    assert!(sink.covers(vaddr(BASE + M2), PageSize::Size2M));
    for va in (BASE..BASE + 2 * M2).step_by(K4 as usize) {
        let t = pt.query(va).unwrap();
        assert_eq!(t.pa, pa(va - BASE));
        let expect = if (BASE + M2 - K4..BASE + M2 + M2 / 2).contains(&va) {
            ro
        } else {
            RW
        };
        assert_eq!(t.flags, present(expect), "{va:#x}");
    }
    assert_eq!(pt.walk_all().count(), 1024);

    sink.clear();
    let mut removed = Vec::new();
    pt.unmap_range(BASE, BASE + 2 * M2, &mut sink, |l| removed.push(l.va))
        .unwrap();
    assert_eq!(removed.len(), 1024);
    assert!(removed.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(sink.deferred.len(), 4, "two PTs, the PD and the PDPT");
    assert_eq!(count_tables(&pt), 1);
}

#[test]
fn user_leaves_open_the_tables_above() {
    let Env {
        arena,
        mut alloc,
        mut sink,
    } = Env::new();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    pt.map(BASE, pa(0), PageSize::Size4K, RW, &mut alloc, &mut sink)
        .unwrap();
    let user = RW | PageTableFlags::USER_ACCESSIBLE;
    pt.map(
        BASE + K4,
        pa(0),
        PageSize::Size4K,
        user,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    assert_eq!(sink.flushes, [(vaddr(BASE + K4), PageSize::Size4K)]);
    let mut tables = 0;
    pt.visit_tables(|table, level| {
        if level > 1 {
            tables += 1;
            let e = pt.load(table, index(BASE, level));
            assert!(e.raw_flags().contains(PageTableFlags::USER_ACCESSIBLE));
        }
    });
    assert_eq!(tables, 3);
}

#[test]
fn destroy_hands_back_every_table() {
    let Env {
        arena,
        mut alloc,
        mut sink,
    } = Env::new();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    pt.map(BASE, pa(0), PageSize::Size4K, RW, &mut alloc, &mut sink)
        .unwrap();
    pt.map(
        BASE + G1,
        pa(0),
        PageSize::Size2M,
        RW,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    pt.map(
        KERNEL + G1,
        pa(0),
        PageSize::Size1G,
        RW,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    let tables = count_tables(&pt);
    let mut leaves = 0;
    pt.destroy(&mut sink, |_| leaves += 1);
    assert_eq!(leaves, 3);
    assert_eq!(sink.deferred.len(), tables);
    assert_eq!(sink.deferred.len(), alloc.outstanding());
    assert_eq!(sink.flushes.len(), 3);
}

#[test]
fn software_entries_make_operations_busy_and_destroy_reports_them() {
    let Env {
        arena,
        mut alloc,
        mut sink,
    } = Env::new();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    let m2 = PageSize::Size2M;
    for (va, size, frame) in [
        (BASE, PageSize::Size4K, 0x7000),
        (BASE + M2, m2, M2),
        (BASE + 3 * M2, PageSize::Size4K, 0x8000),
        (BASE + 2 * G1, PageSize::Size1G, G1),
    ] {
        pt.map(va, pa(frame), size, RW, &mut alloc, &mut sink)
            .unwrap();
    }
    let soften = |pt: &mut PageTable<'_, Arena>, va: u64, size: PageSize| {
        let leaf = pt.entry_at(va, size.level()).unwrap();
        let mig = MigrationEntry::from_leaf(leaf, size).unwrap();
        pt.compare_exchange_leaf(va, size.level(), leaf, mig.entry())
            .unwrap();
        mig
    };
    let mig = soften(&mut pt, BASE + M2, m2);
    let mig_1g = soften(&mut pt, BASE + 2 * G1, PageSize::Size1G);
    sink.clear();
    let before = snapshot(&pt, &alloc, &sink);
    let busy = RangeError::Busy {
        va: vaddr(BASE + M2),
        size: m2,
    };
    for (start, end, what) in [
        (BASE + M2 + K4, BASE + 4 * M2, "straddles the start"),
        (BASE, BASE + 2 * M2 - K4, "straddles the end"),
        (BASE + M2 + K4, BASE + M2 + 2 * K4, "inside it"),
        (BASE, BASE + 4 * M2, "covered whole"),
    ] {
        assert_eq!(
            pt.unmap_range(start, end, &mut sink, |_| {}),
            Err(busy),
            "{what}"
        );
        assert_eq!(
            pt.protect_range(start, end, RW, &mut sink),
            Err(busy),
            "{what}"
        );
        assert_eq!(snapshot(&pt, &alloc, &sink), before, "{what}");
    }
    let g1_middle = BASE + 2 * G1 + 7 * M2;
    assert_eq!(
        pt.unmap_range(g1_middle, g1_middle + K4, &mut sink, |_| {}),
        Err(RangeError::Busy {
            va: vaddr(BASE + 2 * G1),
            size: PageSize::Size1G
        })
    );
    let busy_leaf = (vaddr(BASE + M2), m2);
    for (va, size) in [(BASE + M2, m2), (BASE + M2 + K4, PageSize::Size4K)] {
        let (bva, bsize) = busy_leaf;
        assert_eq!(
            pt.unmap(va, size, &mut sink),
            Err(UnmapError::Busy {
                va: bva,
                size: bsize
            })
        );
        assert_eq!(
            pt.protect(va, size, RW, &mut sink),
            Err(ProtectError::Busy {
                va: bva,
                size: bsize
            })
        );
    }
    assert_eq!(
        pt.begin_split(BASE + M2, m2, &mut alloc, &mut sink),
        Err(SplitError::Busy {
            va: vaddr(BASE + M2),
            size: m2
        })
    );
    assert_eq!(snapshot(&pt, &alloc, &sink), before);
    assert_eq!(pt.entry_at(BASE + M2, 2), Some(mig.entry()), "still there");
    // Ranges next to it are fine.
    pt.unmap_range(BASE, BASE + M2, &mut sink, |_| {}).unwrap();
    pt.protect_range(BASE + 2 * M2, BASE + 4 * M2, F_RO, &mut sink)
        .unwrap();

    let tables = count_tables(&pt);
    sink.clear();
    let mut removed = Vec::new();
    pt.destroy(&mut sink, |r| removed.push(r));
    let software: Vec<_> = removed
        .iter()
        .filter_map(|r| match *r {
            Removed::Software { va, level, entry } => Some((va.as_u64(), level, entry)),
            Removed::Leaf(_) => None,
        })
        .collect();
    assert_eq!(
        software,
        [
            (BASE + M2, 2, SoftwareEntry::Migration(mig)),
            (BASE + 2 * G1, 3, SoftwareEntry::Migration(mig_1g)),
        ]
    );
    assert_eq!(removed.len(), 3, "the two entries and the 4 KiB leaf left");
    assert_eq!(
        sink.deferred.len(),
        tables,
        "every table, the root included"
    );
}
