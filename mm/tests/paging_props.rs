//! Model-based property test of the page tables.
//!
//! Random sequences of map / unmap / protect / split / collapse / range operations (with
//! injected table-allocation failures and simulated MMU accessed/dirty updates) run
//! against both a
//! `PageTable` over an arena and a model: a `BTreeMap` from each leaf's first virtual
//! address to its size, physical address and flags. (The model is per leaf rather than
//! per 4 KiB page because one 1 GiB leaf would be 262144 pages; the per-page translation
//! is checked by querying addresses inside every leaf.) After every operation:
//!
//! - the result (or typed error) is the one the model predicts, and an error changed
//!   nothing: layout, allocator and sink (range operations refuse a huge leaf that
//!   straddles an end; the model splits those first, through `begin_split` and
//!   `finish_split`, as often as not);
//! - split then collapse of the same range gives the same leaf back, and a collapse
//!   keeps the OR of its children's accessed/dirty bits;
//! - `walk_all()` lists exactly the model's leaves and `query()` agrees with the model at
//!   the first, last and a middle byte of each leaf and at unmapped probe addresses;
//! - the tables reachable from the root are exactly those the model's leaves need (no
//!   empty table survives) and equal the allocator's outstanding frames (nothing leaks);
//! - every leaf that changed or vanished was reported to the flush sink, and every table
//!   handed to the sink is unreachable (it is then given back to the allocator).

use mm::backend::phys::Arena;
use mm::base::addr::PageSize;
use mm::paging::testing::{leaf_word, split_boundaries, ListTableAlloc, RecordingSink};
use mm::paging::{
    CollapseError, MapError, PageTable, ProtectError, RangeError, SplitError, Translation,
    UnmapError, UnmappedLeaf, LEAF_PAT, LOWER_HALF_END,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use x86_64::structures::paging::PageTableFlags as F;
use x86_64::{PhysAddr, VirtAddr};

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
const G512: u64 = 1 << 39;
const TABLE_FRAMES: u64 = 160;
/// Three 4 GiB windows: at address 0, just below the non-canonical hole, and at the very
/// top of the address space (so a range can end at 2^64, written `end == 0`).
const WINDOWS: [u64; 3] = [0, LOWER_HALF_END - 4 * G1, 0u64.wrapping_sub(4 * G1)];
/// Where points fall inside a 1 GiB / 2 MiB region: both ends and a few neighbours.
const SLOTS: [u64; 4] = [0, 1, 2, 511];
/// Flags used by map and protect; the last one (HUGE_PAGE) is invalid.
const FLAGS: [F; 8] = [
    F::WRITABLE,
    F::empty(),
    F::WRITABLE.union(F::NO_EXECUTE),
    F::WRITABLE.union(F::USER_ACCESSIBLE),
    F::WRITABLE.union(LEAF_PAT),
    F::GLOBAL.union(F::NO_EXECUTE),
    F::BIT_52.union(F::BIT_62).union(F::WRITABLE),
    F::HUGE_PAGE,
];
const SIZES: [PageSize; 3] = PageSize::ALL;

#[derive(Clone, Copy, Debug)]
struct Point {
    window: usize,
    g: u64,
    m: u64,
    p: u64,
}

impl Point {
    /// The address of the point, aligned down to `size`.
    fn va(self, size: PageSize) -> u64 {
        let mut va = WINDOWS[self.window] + self.g * G1;
        if size != PageSize::Size1G {
            va += self.m * M2;
        }
        if size == PageSize::Size4K {
            va += self.p * K4;
        }
        va
    }
}

/// Where an operation acts: inside an existing leaf of the model (most of the time, so
/// that unmap, protect and split find something), or at a fresh point.
#[derive(Clone, Debug)]
struct Spot {
    existing: Option<prop::sample::Index>,
    point: Point,
    /// Offset into an existing leaf, in 4 KiB pages (modulo the leaf's pages).
    pages: u64,
}

impl Spot {
    fn leaf(&self, model: &Model) -> Option<(u64, Leaf)> {
        let index = self.existing.as_ref()?;
        (!model.is_empty()).then(|| {
            let (&va, &leaf) = model.iter().nth(index.index(model.len())).unwrap();
            (va, leaf)
        })
    }

    /// A leaf address for an op on `size`: an existing leaf with its own size, or the
    /// point aligned to `size`.
    fn target(&self, model: &Model, size: PageSize) -> (u64, PageSize) {
        match self.leaf(model) {
            Some((va, leaf)) => (va, leaf.size),
            None => (self.point.va(size), size),
        }
    }

    /// A 4 KiB-aligned address: inside an existing leaf, or the point.
    fn addr(&self, model: &Model) -> u64 {
        match self.leaf(model) {
            Some((va, leaf)) => va + (self.pages % (leaf.size.bytes() / K4)) * K4,
            None => self.point.va(PageSize::Size4K),
        }
    }
}

/// How a single-leaf request is spoiled, if at all.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    /// The virtual address is off by 4 KiB (by 8 bytes for a 4 KiB leaf).
    UnalignedVa,
    /// The physical address is off (map only).
    UnalignedPa,
    /// The virtual address lies in the non-canonical hole.
    NonCanonical,
    /// A size other than the leaf's (unmap, protect, split), or than the next larger
    /// one (collapse).
    OtherSize(usize),
}

/// An operation as generated, before it is aimed at the model's current leaves.
#[derive(Clone, Debug)]
enum Op {
    Map {
        at: Spot,
        size: usize,
        frame: u64,
        flags: usize,
        fault: Fault,
    },
    Unmap {
        at: Spot,
        fault: Fault,
    },
    Protect {
        at: Spot,
        flags: usize,
        fault: Fault,
    },
    Split {
        at: Spot,
        fault: Fault,
    },
    /// Collapse the table that holds the leaf at `at` (the leaf's size's parent).
    Collapse {
        at: Spot,
        fault: Fault,
    },
    /// `split`: first split the huge leaves that straddle an end.
    UnmapRange {
        a: Spot,
        b: Spot,
        past_b: bool,
        split: bool,
    },
    ProtectRange {
        a: Spot,
        b: Spot,
        past_b: bool,
        flags: usize,
        split: bool,
    },
    Touch {
        at: Spot,
        dirty: bool,
    },
}

/// An operation with concrete arguments.
#[derive(Clone, Copy, Debug)]
enum Concrete {
    Map {
        va: u64,
        pa: u64,
        size: PageSize,
        flags: F,
    },
    Unmap {
        va: u64,
        size: PageSize,
    },
    Protect {
        va: u64,
        size: PageSize,
        flags: F,
    },
    Split {
        va: u64,
        size: PageSize,
    },
    /// Collapse into one leaf of `size` at `va`.
    Collapse {
        va: u64,
        size: PageSize,
    },
    /// `[start, end)`, `end == 0` meaning 2^64.
    UnmapRange {
        start: u64,
        end: u64,
        split: bool,
    },
    ProtectRange {
        start: u64,
        end: u64,
        flags: F,
        split: bool,
    },
    /// The MMU sets accessed (and maybe dirty) on the leaf containing `va`.
    Touch {
        va: u64,
        dirty: bool,
    },
}

fn point() -> impl Strategy<Value = Point> {
    (
        0..WINDOWS.len(),
        0..4u64,
        prop::sample::select(&SLOTS[..]),
        prop::sample::select(&SLOTS[..]),
    )
        .prop_map(|(window, g, m, p)| Point { window, g, m, p })
}

fn spot(existing: f64) -> impl Strategy<Value = Spot> {
    let pages = prop_oneof![
        Just(0u64),
        Just(1),
        Just(511),
        Just(512),
        Just(513),
        0..1u64 << 18
    ];
    (
        prop::option::weighted(existing, any::<prop::sample::Index>()),
        point(),
        pages,
    )
        .prop_map(|(existing, point, pages)| Spot {
            existing,
            point,
            pages,
        })
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        16 => Just(Fault::None),
        1 => Just(Fault::UnalignedVa),
        1 => Just(Fault::UnalignedPa),
        1 => Just(Fault::NonCanonical),
        2 => (0..3usize).prop_map(Fault::OtherSize),
    ]
}

/// Sizes weighted toward the small ones, which build deeper trees.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![3 => Just(0usize), 2 => Just(1usize), 1 => Just(2usize)]
}

fn op() -> impl Strategy<Value = Op> {
    let flags = 0..FLAGS.len();
    prop_oneof![
        8 => (spot(0.15), size(), 0..64u64, flags.clone(), fault())
            .prop_map(|(at, size, frame, flags, fault)| Op::Map { at, size, frame, flags, fault }),
        2 => (spot(0.8), fault()).prop_map(|(at, fault)| Op::Unmap { at, fault }),
        2 => (spot(0.8), flags.clone(), fault())
            .prop_map(|(at, flags, fault)| Op::Protect { at, flags, fault }),
        2 => (spot(0.8), fault()).prop_map(|(at, fault)| Op::Split { at, fault }),
        2 => (spot(0.9), fault()).prop_map(|(at, fault)| Op::Collapse { at, fault }),
        3 => (spot(0.6), spot(0.6), any::<bool>(), any::<bool>())
            .prop_map(|(a, b, past_b, split)| Op::UnmapRange { a, b, past_b, split }),
        3 => (spot(0.6), spot(0.6), any::<bool>(), flags, any::<bool>()).prop_map(
            |(a, b, past_b, flags, split)| Op::ProtectRange { a, b, past_b, flags, split }
        ),
        2 => (spot(0.8), any::<bool>()).prop_map(|(at, dirty)| Op::Touch { at, dirty }),
    ]
}

/// One operation and, sometimes, a cap on the tables it may allocate.
fn step() -> impl Strategy<Value = (Op, Option<usize>)> {
    (
        op(),
        prop_oneof![5 => Just(None), 1 => (0..4usize).prop_map(Some)],
    )
}

/// `va` spoiled by `fault` for a leaf of `size`.
fn spoil(va: u64, size: PageSize, fault: Fault) -> u64 {
    match fault {
        Fault::UnalignedVa if size == PageSize::Size4K => va + 8,
        Fault::UnalignedVa => va + K4,
        Fault::NonCanonical => LOWER_HALF_END + va % G512,
        _ => va,
    }
}

/// Aim `op` at the model's current state.
fn concrete(op: &Op, model: &Model) -> Concrete {
    let sized = |at: &Spot, fault: Fault| {
        let (va, size) = at.target(model, PageSize::Size4K);
        let size = match fault {
            Fault::OtherSize(i) => SIZES[i],
            _ => size,
        };
        (spoil(va & !(size.bytes() - 1), size, fault), size)
    };
    let range = |a: &Spot, b: &Spot, past_b: bool| {
        let (a, b) = (a.addr(model), b.addr(model));
        let (lo, hi) = (a.min(b), a.max(b));
        (lo, if past_b { hi.wrapping_add(K4) } else { hi })
    };
    match op {
        Op::Map {
            at,
            size,
            frame,
            flags,
            fault,
        } => {
            let size = SIZES[*size];
            let va = spoil(at.addr(model) & !(size.bytes() - 1), size, *fault);
            let mut pa = frame * size.bytes();
            if *fault == Fault::UnalignedPa {
                pa += if size == PageSize::Size4K { 8 } else { K4 };
            }
            Concrete::Map {
                va,
                pa,
                size,
                flags: FLAGS[*flags],
            }
        }
        Op::Unmap { at, fault } => {
            let (va, size) = sized(at, *fault);
            Concrete::Unmap { va, size }
        }
        Op::Protect { at, flags, fault } => {
            let (va, size) = sized(at, *fault);
            Concrete::Protect {
                va,
                size,
                flags: FLAGS[*flags],
            }
        }
        Op::Split { at, fault } => {
            let (va, size) = sized(at, *fault);
            Concrete::Split { va, size }
        }
        Op::Collapse { at, fault } => {
            let (va, size) = at.target(model, PageSize::Size4K);
            let size = match fault {
                Fault::OtherSize(i) => SIZES[*i],
                _ => larger(size),
            };
            Concrete::Collapse {
                va: spoil(va & !(size.bytes() - 1), size, *fault),
                size,
            }
        }
        Op::UnmapRange {
            a,
            b,
            past_b,
            split,
        } => {
            let (start, end) = range(a, b, *past_b);
            Concrete::UnmapRange {
                start,
                end,
                split: *split,
            }
        }
        Op::ProtectRange {
            a,
            b,
            past_b,
            flags,
            split,
        } => {
            let (start, end) = range(a, b, *past_b);
            Concrete::ProtectRange {
                start,
                end,
                flags: FLAGS[*flags],
                split: *split,
            }
        }
        Op::Touch { at, dirty } => Concrete::Touch {
            va: at.addr(model),
            dirty: *dirty,
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Leaf {
    size: PageSize,
    pa: u64,
    flags: F,
}

type Model = BTreeMap<u64, Leaf>;

/// The model leaf containing `va`.
fn covering(model: &Model, va: u64) -> Option<(u64, Leaf)> {
    let (&base, &leaf) = model.range(..=va).next_back()?;
    (va - base < leaf.size.bytes()).then_some((base, leaf))
}

/// Whether any model leaf overlaps `[start, last]`.
fn overlaps(model: &Model, start: u64, last: u64) -> bool {
    covering(model, start).is_some() || model.range(start..=last).next().is_some()
}

/// The leaves a huge leaf of `size` splits into (4 KiB for 4 KiB).
fn smaller(size: PageSize) -> PageSize {
    size.smaller().unwrap_or(PageSize::Size4K)
}

fn larger(size: PageSize) -> PageSize {
    match size {
        PageSize::Size4K => PageSize::Size2M,
        _ => PageSize::Size1G,
    }
}

/// The model's answer to a collapse into a leaf of `size` at `va` (canonical, aligned,
/// huge): the first child, its flags without accessed/dirty and the OR of the
/// children's accessed/dirty bits; or the error, found in the order the table is read.
fn plan_collapse(model: &Model, va: u64, size: PageSize) -> Result<(u64, F, F), CollapseError> {
    if covering(model, va).is_some_and(|(_, leaf)| leaf.size >= size) {
        return Err(CollapseError::AlreadyLeaf);
    }
    if !overlaps(model, va, va + (size.bytes() - 1)) {
        return Err(CollapseError::NotMapped);
    }
    let child = smaller(size);
    let ad = F::ACCESSED | F::DIRTY;
    let (mut base, mut flags, mut bits) = (0, F::empty(), F::empty());
    for i in 0..512 {
        let child_va = va + i * child.bytes();
        let vaddr = VirtAddr::new(child_va);
        let leaf = match model.get(&child_va) {
            Some(leaf) if leaf.size == child => *leaf,
            _ if overlaps(model, child_va, child_va + (child.bytes() - 1)) => {
                return Err(CollapseError::NotLeaf { va: vaddr })
            }
            _ => return Err(CollapseError::Hole { va: vaddr }),
        };
        if i == 0 {
            if !aligned(leaf.pa, size) {
                return Err(CollapseError::Misaligned);
            }
            (base, flags) = (leaf.pa, leaf.flags - ad);
        } else if leaf.pa != base + i * child.bytes() {
            return Err(CollapseError::NotContiguous { va: vaddr });
        } else if leaf.flags - ad != flags {
            return Err(CollapseError::FlagsDiffer { va: vaddr });
        }
        bits |= leaf.flags & ad;
    }
    Ok((base, flags, bits))
}

/// The first huge leaf (in address order) only partly inside `[start, last]`.
fn straddler(model: &Model, start: u64, last: u64) -> Option<(u64, PageSize)> {
    [start, last].into_iter().find_map(|edge| {
        let (base, leaf) = covering(model, edge)?;
        (base < start || base + (leaf.size.bytes() - 1) > last).then_some((base, leaf.size))
    })
}

/// Replace the huge leaf at `va` by 512 leaves of the next smaller size.
fn split_model(model: &mut Model, va: u64) {
    let leaf = model.remove(&va).expect("splitting a model leaf");
    let child = smaller(leaf.size);
    for i in 0..512 {
        let off = i * child.bytes();
        model.insert(
            va + off,
            Leaf {
                size: child,
                pa: leaf.pa + off,
                ..leaf
            },
        );
    }
}

/// Split the leaves only partly inside `[start, last]` until none is, as
/// `split_boundaries` does (the start's first, one table per split), while `budget`
/// tables last.
fn split_partial(
    model: &mut Model,
    start: u64,
    last: u64,
    budget: Option<usize>,
) -> Result<(), SplitError> {
    let mut left = budget;
    while let Some((base, _)) = straddler(model, start, last) {
        if let Some(left) = &mut left {
            *left = left.checked_sub(1).ok_or(SplitError::OutOfTables)?;
        }
        split_model(model, base);
    }
    Ok(())
}

/// Split the huge leaves straddling an end of a real (non-empty, one-half) range
/// `[start, end)` when `split` says so.
fn boundaries(
    pt: &mut PageTable<'_, Arena>,
    start: u64,
    end: u64,
    split: bool,
    alloc: &mut ListTableAlloc,
    sink: &mut RecordingSink,
) -> Result<(), SplitError> {
    let last = end.wrapping_sub(1);
    let real = start != end && (start < LOWER_HALF_END) == (last < LOWER_HALF_END);
    if split && real {
        split_boundaries(pt, start, end, alloc, sink)
    } else {
        Ok(())
    }
}

/// The regions whose tables the model's leaves need: PDPTs (per 512 GiB), PDs (per
/// 1 GiB, for leaves of 2 MiB or less) and PTs (per 2 MiB, for 4 KiB leaves).
fn table_regions(model: &Model) -> [BTreeSet<u64>; 3] {
    let mut regions: [BTreeSet<u64>; 3] = Default::default();
    for (&va, leaf) in model {
        regions[0].insert(va & !(G512 - 1));
        if leaf.size != PageSize::Size1G {
            regions[1].insert(va & !(G1 - 1));
        }
        if leaf.size == PageSize::Size4K {
            regions[2].insert(va & !(M2 - 1));
        }
    }
    regions
}

/// Tables a new leaf of `size` at `va` needs beyond those present.
fn tables_for_map(model: &Model, va: u64, size: PageSize) -> usize {
    let regions = table_regions(model);
    let mut needed = usize::from(!regions[0].contains(&(va & !(G512 - 1))));
    if size != PageSize::Size1G {
        needed += usize::from(!regions[1].contains(&(va & !(G1 - 1))));
    }
    if size == PageSize::Size4K {
        needed += usize::from(!regions[2].contains(&(va & !(M2 - 1))));
    }
    needed
}

fn unmapped(va: u64, leaf: Leaf) -> UnmappedLeaf {
    UnmappedLeaf {
        va: VirtAddr::new(va),
        pa: PhysAddr::new(leaf.pa),
        size: leaf.size,
        flags: leaf.flags,
    }
}

fn canonical(va: u64) -> bool {
    VirtAddr::try_new(va).is_ok()
}

fn aligned(addr: u64, size: PageSize) -> bool {
    addr.is_multiple_of(size.bytes())
}

struct Harness<'a> {
    arena: &'a Arena,
    pt: PageTable<'a, Arena>,
    alloc: ListTableAlloc,
    sink: RecordingSink,
    model: Model,
}

/// The outcome of an operation, in one type for comparison with the prediction.
#[derive(Debug, PartialEq)]
enum Outcome {
    Map(Result<(), MapError>),
    Unmap(Result<UnmappedLeaf, UnmapError>),
    Protect(Result<F, ProtectError>),
    Split(Result<(), SplitError>),
    Collapse(Result<(), CollapseError>),
    /// A range operation, after the boundary splits it asked for (if any) and their
    /// outcome.
    Range(
        Result<(), SplitError>,
        Result<Vec<UnmappedLeaf>, RangeError>,
    ),
    Touch,
}

impl Outcome {
    /// Whether the operation failed in a way that must change nothing.
    fn is_err(&self) -> bool {
        match self {
            Outcome::Map(r) => r.is_err(),
            Outcome::Unmap(r) => r.is_err(),
            Outcome::Protect(r) => r.is_err(),
            Outcome::Split(r) => r.is_err(),
            Outcome::Collapse(r) => r.is_err(),
            // Boundary splits done before a failed one stay (and were flushed); `run`
            // checks that a refused range operation changed nothing after them.
            Outcome::Range(..) => false,
            Outcome::Touch => false,
        }
    }
}

impl Harness<'_> {
    /// Run `op` on the page table.
    fn run(&mut self, op: Concrete) -> Outcome {
        let (alloc, sink) = (&mut self.alloc, &mut self.sink);
        match op {
            Concrete::Map {
                va,
                pa,
                size,
                flags,
            } => Outcome::Map(self.pt.map(va, PhysAddr::new(pa), size, flags, alloc, sink)),
            Concrete::Unmap { va, size } => Outcome::Unmap(self.pt.unmap(va, size, sink)),
            Concrete::Protect { va, size, flags } => {
                Outcome::Protect(self.pt.protect(va, size, flags, sink))
            }
            Concrete::Split { va, size } => {
                Outcome::Split(self.pt.begin_split(va, size, alloc, sink).map(|token| {
                    // Here a kernel would shoot the huge leaf down; no CPU caches it.
                    self.pt.finish_split(token).expect("finishing the split")
                }))
            }
            Concrete::Collapse { va, size } => {
                Outcome::Collapse(self.pt.begin_collapse(va, size, sink).map(|token| {
                    self.pt
                        .finish_collapse(token, sink)
                        .expect("finishing the collapse")
                }))
            }
            Concrete::UnmapRange { start, end, split } => {
                let s = boundaries(&mut self.pt, start, end, split, alloc, sink);
                let before: Vec<_> = self.pt.walk_all().collect();
                let flushes = sink.flushes.len();
                let mut removed = Vec::new();
                let r = if s.is_ok() {
                    self.pt
                        .unmap_range(start, end, sink, |l| removed.push(l))
                        .map(|()| removed)
                } else {
                    Ok(Vec::new())
                };
                if r.is_err() {
                    let after: Vec<_> = self.pt.walk_all().collect();
                    assert!(after == before && sink.flushes.len() == flushes);
                }
                Outcome::Range(s, r)
            }
            Concrete::ProtectRange {
                start,
                end,
                flags,
                split,
            } => {
                let s = boundaries(&mut self.pt, start, end, split, alloc, sink);
                let before: Vec<_> = self.pt.walk_all().collect();
                let flushes = sink.flushes.len();
                let r = if s.is_ok() {
                    self.pt
                        .protect_range(start, end, flags, sink)
                        .map(|()| Vec::new())
                } else {
                    Ok(Vec::new())
                };
                if r.is_err() {
                    let after: Vec<_> = self.pt.walk_all().collect();
                    assert!(after == before && sink.flushes.len() == flushes);
                }
                Outcome::Range(s, r)
            }
            Concrete::Touch { va, dirty } => {
                if let Some((word, _)) = leaf_word(self.arena, self.pt.root(), va) {
                    let bits = if dirty {
                        F::ACCESSED | F::DIRTY
                    } else {
                        F::ACCESSED
                    };
                    word.fetch_or(bits.bits(), Ordering::AcqRel);
                }
                Outcome::Touch
            }
        }
    }

    /// Predict the outcome of `op` with a table budget, updating the model when it
    /// succeeds. The checks come in the order the API documents.
    fn predict(&mut self, op: Concrete, budget: Option<usize>) -> Outcome {
        let out_of_tables = |needed: usize| budget.is_some_and(|b| needed > b);
        let model = &mut self.model;
        match op {
            Concrete::Map {
                va,
                pa,
                size,
                flags,
            } => Outcome::Map(if !canonical(va) {
                Err(MapError::NonCanonical)
            } else if !aligned(va, size) || !aligned(pa, size) {
                Err(MapError::Unaligned)
            } else if flags.contains(F::HUGE_PAGE) {
                Err(MapError::InvalidFlags)
            } else if overlaps(model, va, va + (size.bytes() - 1)) {
                Err(MapError::AlreadyMapped)
            } else if out_of_tables(tables_for_map(model, va, size)) {
                Err(MapError::OutOfTables)
            } else {
                model.insert(
                    va,
                    Leaf {
                        size,
                        pa,
                        flags: flags | F::PRESENT,
                    },
                );
                Ok(())
            }),
            Concrete::Unmap { va, size } => Outcome::Unmap(if !canonical(va) {
                Err(UnmapError::NonCanonical)
            } else if !aligned(va, size) {
                Err(UnmapError::Unaligned)
            } else {
                lookup(model, va, size).map(|leaf| {
                    model.remove(&va);
                    unmapped(va, leaf)
                })
            }),
            Concrete::Protect { va, size, flags } => Outcome::Protect(if !canonical(va) {
                Err(ProtectError::NonCanonical)
            } else if !aligned(va, size) {
                Err(ProtectError::Unaligned)
            } else if flags.contains(F::HUGE_PAGE) {
                Err(ProtectError::InvalidFlags)
            } else {
                match lookup(model, va, size) {
                    Ok(leaf) => {
                        let kept = leaf.flags & (F::ACCESSED | F::DIRTY);
                        model.insert(
                            va,
                            Leaf {
                                flags: flags | F::PRESENT | kept,
                                ..leaf
                            },
                        );
                        Ok(leaf.flags)
                    }
                    Err(UnmapError::SizeMismatch) => Err(ProtectError::SizeMismatch),
                    Err(_) => Err(ProtectError::NotMapped),
                }
            }),
            Concrete::Split { va, size } => Outcome::Split(if !canonical(va) {
                Err(SplitError::NonCanonical)
            } else if size == PageSize::Size4K {
                Err(SplitError::NotHuge)
            } else if !aligned(va, size) {
                Err(SplitError::Unaligned)
            } else {
                match lookup(model, va, size) {
                    Ok(_) if out_of_tables(1) => Err(SplitError::OutOfTables),
                    Ok(_) => {
                        split_model(model, va);
                        Ok(())
                    }
                    Err(UnmapError::SizeMismatch) => Err(SplitError::SizeMismatch),
                    Err(_) => Err(SplitError::NotMapped),
                }
            }),
            Concrete::Collapse { va, size } => Outcome::Collapse(if !canonical(va) {
                Err(CollapseError::NonCanonical)
            } else if size == PageSize::Size4K {
                Err(CollapseError::NotHuge)
            } else if !aligned(va, size) {
                Err(CollapseError::Unaligned)
            } else {
                plan_collapse(model, va, size).map(|(pa, flags, bits)| {
                    for i in 0..512 {
                        model.remove(&(va + i * smaller(size).bytes()));
                    }
                    let flags = flags | bits;
                    model.insert(va, Leaf { size, pa, flags });
                })
            }),
            Concrete::UnmapRange { start, end, split }
            | Concrete::ProtectRange {
                start, end, split, ..
            } => {
                let last = end.wrapping_sub(1);
                let protect = match op {
                    Concrete::ProtectRange { flags, .. } => Some(flags),
                    _ => None,
                };
                let crosses = (start < LOWER_HALF_END) != (last < LOWER_HALF_END);
                let real = start != end && !crosses;
                if split && real {
                    if let Err(e) = split_partial(model, start, last, budget) {
                        return Outcome::Range(Err(e), Ok(Vec::new()));
                    }
                }
                Outcome::Range(
                    Ok(()),
                    if start != end && crosses {
                        Err(RangeError::NonCanonical)
                    } else if protect.is_some_and(|f| f.contains(F::HUGE_PAGE)) {
                        Err(RangeError::InvalidFlags)
                    } else if start == end {
                        Ok(Vec::new())
                    } else {
                        let after = model.clone();
                        if let Some((va, size)) = straddler(&after, start, last) {
                            Err(RangeError::Straddles {
                                va: VirtAddr::new(va),
                                size,
                            })
                        } else {
                            let mut after = after;
                            let inside: Vec<(u64, Leaf)> =
                                after.range(start..=last).map(|(&va, &l)| (va, l)).collect();
                            let mut removed = Vec::new();
                            for (va, leaf) in inside {
                                match protect {
                                    Some(flags) => {
                                        let kept = leaf.flags & (F::ACCESSED | F::DIRTY);
                                        let flags = flags | F::PRESENT | kept;
                                        after.insert(va, Leaf { flags, ..leaf });
                                    }
                                    None => {
                                        after.remove(&va);
                                        removed.push(unmapped(va, leaf));
                                    }
                                }
                            }
                            *model = after;
                            Ok(removed)
                        }
                    },
                )
            }
            Concrete::Touch { va, dirty } => {
                if let Some((base, leaf)) = covering(model, va) {
                    let bits = if dirty {
                        F::ACCESSED | F::DIRTY
                    } else {
                        F::ACCESSED
                    };
                    model.insert(
                        base,
                        Leaf {
                            flags: leaf.flags | bits,
                            ..leaf
                        },
                    );
                }
                Outcome::Touch
            }
        }
    }

    /// Compare the page table with the model, and account for the tables.
    fn check(&self, probes: &[u64]) -> Result<(), TestCaseError> {
        let walked: Vec<(VirtAddr, Translation)> = self.pt.walk_all().collect();
        let expected: Vec<(VirtAddr, Translation)> = self
            .model
            .iter()
            .map(|(&va, leaf)| (VirtAddr::new(va), translation(leaf, 0)))
            .collect();
        prop_assert_eq!(&walked, &expected);
        // A walk over part of the space, from one probe to the next (4 KiB aligned), lists
        // the leaves overlapping that part.
        for w in probes.windows(2) {
            let (a, b) = (w[0].min(w[1]) & !0xfff, w[0].max(w[1]) & !0xfff);
            if a == b {
                continue;
            }
            let part: Vec<(VirtAddr, Translation)> = self.pt.walk(a, b).collect();
            let want: Vec<(VirtAddr, Translation)> = expected
                .iter()
                .filter(|(va, t)| va.as_u64() < b && va.as_u64() + (t.size.bytes() - 1) >= a)
                .copied()
                .collect();
            prop_assert_eq!(part, want);
        }

        for (&va, leaf) in &self.model {
            let bytes = leaf.size.bytes();
            for off in [0, (bytes / 2) | 0x238, bytes - 1] {
                prop_assert_eq!(self.pt.query(va + off), Some(translation(leaf, off)));
            }
        }
        for &va in probes {
            let expected = covering(&self.model, va).map(|(base, l)| translation(&l, va - base));
            prop_assert_eq!(self.pt.query(va), expected);
        }

        let mut reachable = BTreeSet::new();
        self.pt.visit_tables(|table, _| {
            reachable.insert(table);
        });
        let regions = table_regions(&self.model);
        let needed = 1 + regions.iter().map(BTreeSet::len).sum::<usize>();
        prop_assert_eq!(
            reachable.len(),
            needed,
            "tables reachable vs needed by the leaves"
        );
        prop_assert_eq!(
            self.alloc.outstanding(),
            needed + self.sink.deferred.len(),
            "tables handed out vs reachable and awaiting the flush"
        );
        for table in &self.sink.deferred {
            prop_assert!(
                !reachable.contains(table),
                "deferred table {:?} still linked",
                table
            );
        }
        Ok(())
    }
}

/// The model's answer for a leaf of `size` at `va` (aligned): the leaf, or the error.
fn lookup(model: &Model, va: u64, size: PageSize) -> Result<Leaf, UnmapError> {
    match covering(model, va) {
        Some((base, leaf)) if base == va && leaf.size == size => Ok(leaf),
        Some(_) => Err(UnmapError::SizeMismatch),
        None if overlaps(model, va, va + (size.bytes() - 1)) => Err(UnmapError::SizeMismatch),
        None => Err(UnmapError::NotMapped),
    }
}

fn translation(leaf: &Leaf, offset: u64) -> Translation {
    Translation {
        pa: PhysAddr::new(leaf.pa + offset),
        leaf_base_pa: PhysAddr::new(leaf.pa),
        size: leaf.size,
        flags: leaf.flags,
    }
}

fn run_case(steps: &[(Op, Option<usize>)], probes: &[Point]) -> Result<(), TestCaseError> {
    let arena = Arena::new(TABLE_FRAMES);
    let mut alloc = ListTableAlloc::new(PhysAddr::zero(), TABLE_FRAMES);
    let pt = PageTable::new(&arena, &mut alloc).expect("a root table");
    let mut h = Harness {
        arena: &arena,
        pt,
        alloc,
        sink: RecordingSink::default(),
        model: Model::new(),
    };
    let probes: Vec<u64> = probes
        .iter()
        .map(|p| p.va(PageSize::Size4K) + 0x18)
        .collect();

    for (op, budget) in steps {
        let before_model = h.model.clone();
        let before_walk: Vec<_> = h.pt.walk_all().collect();
        let before_outstanding = h.alloc.outstanding();

        let op = concrete(op, &h.model);
        let predicted = h.predict(op, *budget);
        h.alloc.budget = *budget;
        let actual = h.run(op);
        h.alloc.budget = None;
        prop_assert_eq!(&actual, &predicted, "op {:?} budget {:?}", op, budget);

        if actual.is_err() {
            let after_walk: Vec<_> = h.pt.walk_all().collect();
            prop_assert_eq!(after_walk, before_walk, "an error changed the layout");
            prop_assert_eq!(h.alloc.outstanding(), before_outstanding);
            prop_assert!(h.sink.flushes.is_empty() && h.sink.deferred.is_empty());
        }
        // Every leaf that changed or vanished (except by the MMU's own hand) was flushed.
        if !matches!(op, Concrete::Touch { .. }) {
            for (&va, leaf) in &before_model {
                if h.model.get(&va) != Some(leaf) {
                    prop_assert!(
                        h.sink.covers(VirtAddr::new(va), leaf.size),
                        "no flush for the changed leaf {:#x} {:?} after {:?}",
                        va,
                        leaf,
                        op
                    );
                }
            }
        }
        h.check(&probes)?;
        // The flush has completed: the deferred tables go back to the allocator.
        for table in std::mem::take(&mut h.sink.deferred) {
            h.alloc.release(table);
        }
        h.sink.clear();
    }

    let Harness {
        pt,
        mut alloc,
        mut sink,
        model,
        ..
    } = h;
    let mut leaves = 0;
    pt.destroy(&mut sink, |_| leaves += 1);
    prop_assert_eq!(leaves, model.len());
    for table in std::mem::take(&mut sink.deferred) {
        alloc.release(table);
    }
    prop_assert_eq!(alloc.outstanding(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn page_table_matches_model(
        steps in prop::collection::vec(step(), 1..48),
        probes in prop::collection::vec(point(), 8),
    ) {
        run_case(&steps, &probes)?;
    }
}
