//! Split and collapse over the emulated MMU: round trips, accessed/dirty bits (also
//! against a concurrent "MMU" thread), and refusals that leave the table untouched.

use super::*;
use crate::backend::phys::Arena;
use crate::paging::testing::{leaf_word, ListTableAlloc, RecordingSink};
use crate::paging::{MigrationEntry, Translation, LOWER_HALF_END};
use core::sync::atomic::AtomicBool;
use std::vec::Vec;

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
const BASE: u64 = 0x0000_0040_0000_0000;
const AD: PageTableFlags = PageTableFlags::ACCESSED.union(PageTableFlags::DIRTY);

fn pa(addr: u64) -> PhysAddr {
    PhysAddr::new(addr)
}

fn leaves<M: PhysMem>(pt: &PageTable<'_, M>) -> Vec<(VirtAddr, Translation)> {
    pt.walk_all().collect()
}

/// Every raw word of the tables of `pt`, in visiting order: what "untouched" means.
fn words<M: PhysMem>(pt: &PageTable<'_, M>) -> Vec<u64> {
    let mut all = Vec::new();
    pt.visit_tables(|table, _| {
        all.extend((0..ENTRIES).map(|i| pt.load(table, i).raw()));
    });
    all
}

/// Map 512 leaves of `child` size from `va` to contiguous frames from `first` with
/// `flags`, the leaf `odd` (if any) getting `odd_pa` / `odd_flags` instead.
fn map_children(
    pt: &mut PageTable<'_, Arena>,
    (alloc, sink): (&mut ListTableAlloc, &mut RecordingSink),
    va: u64,
    child: PageSize,
    first: u64,
    flags: PageTableFlags,
    odd: Option<(usize, u64, PageTableFlags)>,
) {
    for i in 0..ENTRIES {
        let (frame, f) = match odd {
            Some((j, odd_pa, odd_flags)) if j == i => (odd_pa, odd_flags),
            _ => (first + i as u64 * child.bytes(), flags),
        };
        let child_va = va + i as u64 * child.bytes();
        pt.map(child_va, pa(frame), child, f, alloc, sink).unwrap();
    }
}

#[test]
fn split_then_collapse_returns_to_the_same_mapping() {
    let arena = Arena::new(64);
    let mut alloc = ListTableAlloc::new(PhysAddr::zero(), 64);
    let mut sink = RecordingSink::default();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    let flags = PageTableFlags::WRITABLE
        | PageTableFlags::USER_ACCESSIBLE
        | PageTableFlags::NO_EXECUTE
        | crate::paging::LEAF_PAT;
    for (va, size, frame) in [
        (BASE, PageSize::Size2M, 7 * M2),
        (BASE + G1, PageSize::Size1G, 3 * G1),
    ] {
        pt.map(va, pa(frame), size, flags, &mut alloc, &mut sink)
            .unwrap();
        let before = leaves(&pt);
        let level = size.level();
        let child = size.smaller().unwrap();
        sink.clear();

        let token = pt.begin_split(va, size, &mut alloc, &mut sink).unwrap();
        assert_eq!(sink.flushes, [(vaddr(va), size)]);
        let marker = pt.entry_at(va, level).unwrap();
        assert_eq!(
            SoftwareEntry::decode(marker, level),
            Some(SoftwareEntry::Replacing(marker)),
            "the slot is non-present between the steps"
        );
        assert_eq!(pt.query(va), None);
        assert_eq!((token.va(), token.size()), (vaddr(va), size));
        assert_eq!(token.flags(), flags | PageTableFlags::PRESENT);
        pt.finish_split(token).unwrap();
        let split: Vec<_> = pt.walk(va, va + size.bytes()).collect();
        assert_eq!(split.len(), ENTRIES);
        for (i, (leaf_va, t)) in split.iter().enumerate() {
            let off = i as u64 * child.bytes();
            assert_eq!(leaf_va.as_u64(), va + off);
            assert_eq!((t.leaf_base_pa, t.size), (pa(frame + off), child));
            assert_eq!(t.flags, flags | PageTableFlags::PRESENT);
        }

        sink.clear();
        let token = pt.begin_collapse(va, size, &mut sink).unwrap();
        assert_eq!(sink.flushes.len(), ENTRIES, "every child is flushed");
        assert!(
            sink.covers(vaddr(va), child)
                && sink.covers(vaddr(va + size.bytes() - child.bytes()), child)
        );
        assert_eq!(pt.query(va), None);
        assert_eq!(
            (token.va(), token.size(), token.frame()),
            (vaddr(va), size, pa(frame))
        );
        assert!(sink.deferred.is_empty(), "the table is freed by finish");
        let table = pt.entry_at(va, level).map(|e| e.table_addr());
        pt.finish_collapse(token, &mut sink).unwrap();
        assert_eq!(sink.deferred.len(), 1);
        assert_eq!(Some(sink.deferred[0]), table);
        alloc.release(sink.deferred[0]);
        assert_eq!(leaves(&pt), before, "back to the same mapping");
    }
}

#[test]
fn accessed_dirty_bits_survive_split_and_collapse() {
    let arena = Arena::new(64);
    let mut alloc = ListTableAlloc::new(PhysAddr::zero(), 64);
    let mut sink = RecordingSink::default();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    let rw = PageTableFlags::WRITABLE;
    pt.map(BASE, pa(M2), PageSize::Size2M, rw, &mut alloc, &mut sink)
        .unwrap();
    // The huge leaf's dirty bit reaches every small leaf.
    let (word, _) = leaf_word(&arena, pt.root(), BASE).unwrap();
    word.fetch_or(AD.bits(), Ordering::AcqRel);
    let token = pt
        .begin_split(BASE, PageSize::Size2M, &mut alloc, &mut sink)
        .unwrap();
    pt.finish_split(token).unwrap();
    assert!(pt.walk(BASE, BASE + M2).all(|(_, t)| t.flags.contains(AD)));
    let token = pt
        .begin_collapse(BASE, PageSize::Size2M, &mut sink)
        .unwrap();
    pt.finish_collapse(token, &mut sink).unwrap();
    assert!(pt.query(BASE).unwrap().flags.contains(AD));

    // Clean children, one accessed and another dirty: the leaf gets both bits.
    let va = BASE + G1;
    map_children(
        &mut pt,
        (&mut alloc, &mut sink),
        va,
        PageSize::Size4K,
        4 * M2,
        rw,
        None,
    );
    for (i, bit) in [
        (5u64, PageTableFlags::ACCESSED),
        (300, PageTableFlags::DIRTY),
    ] {
        let (word, _) = leaf_word(&arena, pt.root(), va + i * K4).unwrap();
        word.fetch_or(bit.bits(), Ordering::AcqRel);
    }
    let token = pt.begin_collapse(va, PageSize::Size2M, &mut sink).unwrap();
    assert_eq!(token.flags(), rw | AD | PageTableFlags::PRESENT);
    pt.finish_collapse(token, &mut sink).unwrap();
    let t = pt.query(va).unwrap();
    assert_eq!((t.size, t.leaf_base_pa), (PageSize::Size2M, pa(4 * M2)));
    assert_eq!(t.flags, rw | AD | PageTableFlags::PRESENT);
}

#[test]
fn collapse_refusals_leave_the_table_untouched() {
    let arena = Arena::new(128);
    let mut alloc = ListTableAlloc::new(PhysAddr::zero(), 128);
    let mut sink = RecordingSink::default();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    let rw = PageTableFlags::WRITABLE;
    let k4 = PageSize::Size4K;
    let m2 = PageSize::Size2M;
    let at = |i: u64| vaddr(BASE + i * M2 + 9 * K4);
    // One 2 MiB region per refusal, each with one odd child (index 9).
    map_children(
        &mut pt,
        (&mut alloc, &mut sink),
        BASE,
        k4,
        0,
        rw,
        Some((9, 0x7777_7000, rw)),
    );
    map_children(
        &mut pt,
        (&mut alloc, &mut sink),
        BASE + M2,
        k4,
        M2,
        rw,
        Some((9, M2 + 9 * K4, PageTableFlags::empty())),
    );
    map_children(
        &mut pt,
        (&mut alloc, &mut sink),
        BASE + 2 * M2,
        k4,
        2 * M2 + K4,
        rw,
        None,
    );
    map_children(
        &mut pt,
        (&mut alloc, &mut sink),
        BASE + 3 * M2,
        k4,
        3 * M2,
        rw,
        None,
    );
    let _ = pt.unmap(at(3).as_u64(), k4, &mut sink).unwrap();
    map_children(
        &mut pt,
        (&mut alloc, &mut sink),
        BASE + 4 * M2,
        k4,
        4 * M2,
        rw,
        None,
    );
    let leaf = pt.entry_at(at(4).as_u64(), 1).unwrap();
    let mig = MigrationEntry::from_leaf(leaf, k4).unwrap();
    pt.compare_exchange_leaf(at(4).as_u64(), 1, leaf, mig.entry())
        .unwrap();
    pt.map(BASE + 5 * M2, pa(5 * M2), m2, rw, &mut alloc, &mut sink)
        .unwrap();
    map_children(&mut pt, (&mut alloc, &mut sink), BASE + G1, m2, 0, rw, None);
    let _ = pt.unmap(BASE + G1 + 9 * M2, m2, &mut sink).unwrap();
    pt.map(
        BASE + G1 + 9 * M2,
        pa(9 * M2),
        k4,
        rw,
        &mut alloc,
        &mut sink,
    )
    .unwrap();
    sink.clear();
    let before = (words(&pt), leaves(&pt), alloc.outstanding());

    for (va, size, expected) in [
        (BASE, m2, CollapseError::NotContiguous { va: at(0) }),
        (BASE + M2, m2, CollapseError::FlagsDiffer { va: at(1) }),
        (BASE + 2 * M2, m2, CollapseError::Misaligned),
        (BASE + 3 * M2, m2, CollapseError::Hole { va: at(3) }),
        (
            BASE + 4 * M2,
            m2,
            CollapseError::Busy {
                va: at(4),
                size: k4,
            },
        ),
        (BASE + 5 * M2, m2, CollapseError::AlreadyLeaf),
        (BASE + 6 * M2, m2, CollapseError::NotMapped),
        (
            BASE + G1,
            PageSize::Size1G,
            CollapseError::NotLeaf {
                va: vaddr(BASE + G1 + 9 * M2),
            },
        ),
        (BASE + 8 * G1, PageSize::Size1G, CollapseError::NotMapped),
        (
            BASE,
            PageSize::Size1G,
            CollapseError::NotLeaf { va: vaddr(BASE) },
        ),
        (BASE + K4, m2, CollapseError::Unaligned),
        (BASE, k4, CollapseError::NotHuge),
        (LOWER_HALF_END, m2, CollapseError::NonCanonical),
    ] {
        assert_eq!(
            pt.begin_collapse(va, size, &mut sink),
            Err(expected),
            "{va:#x}"
        );
        assert_eq!(
            (words(&pt), leaves(&pt), alloc.outstanding()),
            before,
            "{expected:?}"
        );
        assert!(
            sink.flushes.is_empty() && sink.deferred.is_empty(),
            "{expected:?}"
        );
    }
    // A software entry where the table pointer should be.
    let leaf = pt.entry_at(BASE + 5 * M2, 2).unwrap();
    let mig = MigrationEntry::from_leaf(leaf, m2).unwrap();
    pt.compare_exchange_leaf(BASE + 5 * M2, 2, leaf, mig.entry())
        .unwrap();
    assert_eq!(
        pt.begin_collapse(BASE + 5 * M2, m2, &mut sink),
        Err(CollapseError::Busy {
            va: vaddr(BASE + 5 * M2),
            size: m2
        })
    );
    assert_eq!(
        pt.begin_split(BASE + 5 * M2, m2, &mut alloc, &mut sink),
        Err(SplitError::Busy {
            va: vaddr(BASE + 5 * M2),
            size: m2
        })
    );
}

#[test]
fn finish_refuses_a_foreign_or_changed_token_and_gives_it_back() {
    let arena = Arena::new(64);
    let mut alloc = ListTableAlloc::new(PhysAddr::zero(), 64);
    let mut sink = RecordingSink::default();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    let mut other = PageTable::new(&arena, &mut alloc).unwrap();
    let rw = PageTableFlags::WRITABLE;
    pt.map(BASE, pa(M2), PageSize::Size2M, rw, &mut alloc, &mut sink)
        .unwrap();
    let token = pt
        .begin_split(BASE, PageSize::Size2M, &mut alloc, &mut sink)
        .unwrap();
    let Err(Unfinished { token, found: None }) = other.finish_split(token) else {
        panic!("a token of another page table must come back");
    };
    let marker = pt.entry_at(BASE, 2).unwrap();
    pt.compare_exchange_leaf(BASE, 2, marker, Entry::UNUSED)
        .unwrap();
    let Err(Unfinished { token, found }) = pt.finish_split(token) else {
        panic!("a changed slot must refuse the split");
    };
    assert_eq!(found, Some(Entry::UNUSED));
    assert_eq!(pt.query(BASE), None, "nothing installed");
    pt.compare_exchange_leaf(BASE, 2, Entry::UNUSED, marker)
        .unwrap();
    pt.finish_split(token).unwrap();
    assert_eq!(pt.query(BASE + K4).unwrap().size, PageSize::Size4K);
}

/// Regions the threaded test cycles through, each split and collapsed again and again.
const REGIONS: usize = 32;
/// Rounds of the threaded test (each takes `REGIONS` tables for good).
const ROUNDS: usize = 200;

/// Play the MMU writing to the first page of the region at `va`: set the dirty bit on
/// the leaf that maps it (a 2 MiB leaf, or the first 4 KiB leaf of a split region) as
/// the hardware does, atomically and only while it is present, but only if it is clean.
/// Returns whether this call made it dirty.
fn mmu_dirty(arena: &Arena, root: PhysAddr, va: u64) -> bool {
    let Some((word, size)) = leaf_word(arena, root, va) else {
        return false;
    };
    let current = word.load(Ordering::Acquire);
    let dirty = PageTableFlags::DIRTY.bits();
    // Like the MMU's locked update, only a present leaf of the size just walked is
    // dirtied: the slot may have become a table pointer since the walk read it.
    Entry::from_raw(current).leaf_size(size.level()) == Some(size)
        && current & dirty == 0
        && word
            .compare_exchange(
                current,
                current | dirty,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Clear the dirty bit of the 2 MiB leaf at `va` if it is set; returns whether it was.
fn clear_dirty(pt: &mut PageTable<'_, Arena>, va: u64) -> bool {
    loop {
        let leaf = pt.entry_at(va, 2).unwrap();
        if leaf.raw() & PageTableFlags::DIRTY.bits() == 0 {
            return false;
        }
        let clean = Entry::from_raw(leaf.raw() & !PageTableFlags::DIRTY.bits());
        if pt.compare_exchange_leaf(va, 2, leaf, clean).is_ok() {
            return true;
        }
    }
}

/// An "MMU" thread keeps dirtying the first page of each region whenever its leaf is
/// clean, while this thread splits and collapses every region and then cleans its leaf.
/// A split copies the huge leaf's dirty bit to every small leaf and a collapse ORs them,
/// so each dirtying is seen exactly once by a cleaning (at most one dirtying happens
/// between two cleanings): a bit lost by a split or a collapse leaves more dirtyings
/// than cleanings.
#[test]
fn a_concurrent_mmu_never_loses_a_dirty_bit() {
    const FRAMES: u64 = (REGIONS * ROUNDS) as u64 + 64;
    let arena = Arena::new(FRAMES);
    let mut alloc = ListTableAlloc::new(PhysAddr::zero(), FRAMES);
    let mut sink = RecordingSink::default();
    let mut pt = PageTable::new(&arena, &mut alloc).unwrap();
    let rw = PageTableFlags::WRITABLE;
    let region = |r: usize| BASE + r as u64 * M2;
    for r in 0..REGIONS {
        let frame = pa((r as u64 + 1) * M2);
        pt.map(
            region(r),
            frame,
            PageSize::Size2M,
            rw,
            &mut alloc,
            &mut sink,
        )
        .unwrap();
    }
    let root = pt.root();
    let stop = AtomicBool::new(false);
    let mut cleaned = [0u64; REGIONS];
    let dirtied = std::thread::scope(|scope| {
        let mmu = scope.spawn(|| {
            let mut dirtied = [0u64; REGIONS];
            while !stop.load(Ordering::Acquire) {
                for (r, count) in dirtied.iter_mut().enumerate() {
                    *count += u64::from(mmu_dirty(&arena, root, region(r)));
                }
            }
            dirtied
        });
        // The "MMU" stops even if this thread panics.
        let stopper = StopOnDrop(&stop);
        // Deferred tables are never reused here: the "MMU" may still walk them, as a CPU
        // could before its shootdown.
        for _ in 0..ROUNDS {
            for (r, count) in cleaned.iter_mut().enumerate() {
                let va = region(r);
                let token = pt
                    .begin_split(va, PageSize::Size2M, &mut alloc, &mut sink)
                    .unwrap();
                pt.finish_split(token).unwrap();
                let token = pt.begin_collapse(va, PageSize::Size2M, &mut sink).unwrap();
                pt.finish_collapse(token, &mut sink).unwrap();
                *count += u64::from(clear_dirty(&mut pt, va));
            }
        }
        drop(stopper);
        mmu.join().unwrap()
    });
    for (r, count) in cleaned.iter_mut().enumerate() {
        *count += u64::from(clear_dirty(&mut pt, region(r)));
    }
    assert!(
        dirtied.iter().sum::<u64>() > REGIONS as u64,
        "the MMU thread raced"
    );
    assert_eq!(dirtied, cleaned, "dirtyings vs cleanings per region");
}
