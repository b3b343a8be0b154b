//! The scenario's layout, decided before anything is allocated: from the machine (free
//! frames, RAM) and the seed, every VMA's space, range, pages to fault and fault order;
//! the pinned pages; how many 2 MiB background blocks fill memory and how many of them
//! are unmapped again to leave scattered free holes; the kernel allocations. Pure: the
//! same inputs give the same plan.

use alloc::vec::Vec;

/// Bytes in 4 KiB, 2 MiB and 1 GiB.
pub const K4: u64 = 4096;
/// Bytes in 2 MiB.
pub const M2: u64 = 2 << 20;
/// Bytes in 1 GiB.
pub const G1: u64 = 1 << 30;
/// 4 KiB pages in 2 MiB.
const M2_PAGES: u64 = M2 / K4;
/// Where the demo VMAs' slots begin (each VMA has 64 GiB of its own).
const SLOT_BASE: u64 = 0x0000_3000_0000_0000;
const SLOT: u64 = 64 * G1;
/// Where the background VMAs begin: one per gigabyte, each 2 MiB short of it, so no
/// aligned gigabyte lies inside one and its faults map 2 MiB leaves, never 1 GiB.
pub const BACKGROUND_BASE: u64 = 0x0000_6000_0000_0000;
/// 2 MiB blocks per background VMA.
pub const BACKGROUND_VMA_BLOCKS: u64 = G1 / M2 - 1;
/// RAM from which the machine counts as a 4 GiB one (the firmware keeps some of it).
pub const BIG_MACHINE_RAM: u64 = 3584 << 20;
/// RAM from which the machine counts as a 1 GiB one, the smallest the scenario is sized
/// for: below it the VMAs are a few MiB and find free windows, so nothing is exchanged.
pub const SMALL_MACHINE_RAM: u64 = 896 << 20;
/// The size unit of the demo VMAs: 1/64 of free memory rounded down to 256 MiB (so
/// that a seed gives the same layout on machines of one size), between 2 and 32 MiB of
/// pages.
const UNIT_MIN: u64 = M2_PAGES;
const UNIT_MAX: u64 = 32 << 20 >> 12;
const UNIT_ROUND: u64 = 256 << 20 >> 12;
/// Free memory (per mille of what was free at the start) left as scattered 2 MiB holes
/// for displaced blocks.
pub const HOLES_PER_MILLE: u64 = 125;
/// Pages kept free besides the holes (page tables, heap, kernel allocations): 8 MiB and
/// 1/1024 of free memory. What is left free in one piece must stay smaller than the
/// demo VMAs, or they find a free window there and need no exchange.
const SLACK_PAGES: u64 = 2048;

/// What a VMA's pages are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Private 4 KiB pages.
    Small,
    /// Private, `HugePolicy::Always`, 2 MiB aligned: 2 MiB blocks.
    Huge,
    /// The region shared with the [`Kind::SharedSecond`] VMA, faulted in through
    /// this VMA.
    SharedFirst,
    /// The same region, mapped after the faults (no frames of its own).
    SharedSecond,
}

/// One demo VMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmaPlan {
    /// Its letter in the picture and the table.
    pub letter: char,
    /// Index of its address space (0 to [`SPACES`] - 1).
    pub space: usize,
    /// First byte.
    pub start: u64,
    /// Bytes.
    pub len: u64,
    /// Its pages.
    pub kind: Kind,
    /// The pages faulted in: indices `[first, end)` of the VMA's pages.
    pub resident: (u64, u64),
    /// Faulted from the last resident page down.
    pub descending: bool,
}

impl VmaPlan {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }

    /// Resident 4 KiB pages.
    pub fn resident_pages(&self) -> u64 {
        self.resident.1 - self.resident.0
    }

    /// Fault units (pages, or 2 MiB blocks for [`Kind::Huge`]).
    pub fn units(&self) -> u64 {
        match self.kind {
            Kind::Huge => self.resident_pages() / M2_PAGES,
            Kind::SharedSecond => 0,
            _ => self.resident_pages(),
        }
    }

    /// The address of fault unit `i` (in fault order).
    pub fn unit_va(&self, i: u64) -> u64 {
        let (step, n) = match self.kind {
            Kind::Huge => (M2, self.units()),
            _ => (K4, self.units()),
        };
        let k = if self.descending { n - 1 - i } else { i };
        self.start + self.resident.0 * K4 + k * step
    }

    /// Bytes per fault unit.
    pub fn unit_bytes(&self) -> u64 {
        if self.kind == Kind::Huge {
            M2
        } else {
            K4
        }
    }
}

/// Address spaces of the demo VMAs (the background has one more of its own).
pub const SPACES: usize = 4;

/// What fills memory and what is left free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Background {
    /// 2 MiB blocks faulted in.
    pub blocks: u64,
    /// Of which this many are unmapped again after the faults, spread by the seed.
    pub holes: u64,
}

impl Background {
    /// Background VMAs needed for the blocks.
    pub fn vmas(&self) -> u64 {
        self.blocks.div_ceil(BACKGROUND_VMA_BLOCKS).max(1)
    }

    /// The address of block `i`.
    pub fn block_va(i: u64) -> u64 {
        BACKGROUND_BASE + (i / BACKGROUND_VMA_BLOCKS) * G1 + (i % BACKGROUND_VMA_BLOCKS) * M2
    }
}

/// A fault stream: what one step of the interleaved faults does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// The next unit of demo VMA `i`.
    Vma(usize),
    /// The next background block.
    Background,
    /// The next unmovable kernel allocation.
    Kernel,
}

/// The whole layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The seed it came from.
    pub seed: u64,
    /// The demo VMAs.
    pub vmas: Vec<VmaPlan>,
    /// The VMA with pinned pages (index into `vmas`).
    pub pinned_vma: usize,
    /// Pinned page indices in it.
    pub pinned: Vec<u64>,
    /// The background.
    pub background: Background,
    /// Order-0 unmovable kernel allocations made during the faults.
    pub kernel_allocs: u64,
    /// Streams in the order a step visits them.
    pub streams: Vec<Stream>,
}

/// What the plan is sized to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Machine {
    /// Free frames when the scenario starts.
    pub free_pages: u64,
    /// Bytes of RAM the firmware lists.
    pub ram_bytes: u64,
}

impl Machine {
    /// Whether the machine has 4 GiB (and so gets the 1 GiB VMA).
    pub fn is_big(&self) -> bool {
        self.ram_bytes >= BIG_MACHINE_RAM
    }

    /// Whether the machine has at least 1 GiB (the scenario's memory is tight).
    pub fn is_sized_for(&self) -> bool {
        self.ram_bytes >= SMALL_MACHINE_RAM
    }
}

/// Splitmix64: a small, seedable generator.
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6a09_e667_f3bc_c908)
    }

    /// The next 64 bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `[lo, hi]`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// `n` scaled by a per-cent factor drawn from `[lo, hi]`.
    fn scaled(&mut self, n: u64, lo: u64, hi: u64) -> u64 {
        n * self.range(lo, hi) / 100
    }
}

/// The first byte of VMA slot `i`.
fn slot(i: usize) -> u64 {
    SLOT_BASE + i as u64 * SLOT
}

/// A start in slot `i`: a seeded number of 2 MiB, plus `sub` pages.
fn start_in(rng: &mut Rng, i: usize, sub: u64) -> u64 {
    slot(i) + rng.range(0, 255) * M2 + sub * K4
}

/// A private 4 KiB VMA of about `pages` pages in slot `i`, unaligned at both ends.
fn small(rng: &mut Rng, letter: char, space: usize, i: usize, pages: u64) -> VmaPlan {
    let pages = pages.max(64) + rng.range(1, M2_PAGES - 1);
    let sub = rng.range(1, M2_PAGES - 1);
    VmaPlan {
        letter,
        space,
        start: start_in(rng, i, sub),
        len: pages * K4,
        kind: Kind::Small,
        resident: (0, pages),
        descending: rng.next() & 1 == 1,
    }
}

/// The layout for `machine` and `seed`.
pub fn plan(machine: Machine, seed: u64) -> Plan {
    let mut rng = Rng::new(seed);
    let unit = (machine.free_pages / UNIT_ROUND * UNIT_ROUND / 64).clamp(UNIT_MIN, UNIT_MAX);
    let mut vmas = Vec::new();
    let a = rng.scaled(unit, 100, 150);
    vmas.push(small(&mut rng, 'A', 0, 0, a));
    let b = rng.scaled(unit, 75, 125);
    vmas.push(small(&mut rng, 'B', 1, 1, b));
    let c = rng.scaled(unit, 75, 125);
    vmas.push(small(&mut rng, 'C', 2, 2, c));
    let blocks = (rng.scaled(unit, 50, 100) / M2_PAGES).max(2);
    vmas.push(VmaPlan {
        letter: 'D',
        space: 0,
        start: start_in(&mut rng, 3, 0),
        len: blocks * M2,
        kind: Kind::Huge,
        resident: (0, blocks * M2_PAGES),
        descending: rng.next() & 1 == 1,
    });
    let shared = rng.scaled(unit, 25, 50).max(64);
    let sub = rng.range(1, M2_PAGES - 1);
    let first = start_in(&mut rng, 4, sub);
    vmas.push(VmaPlan {
        letter: 'E',
        space: 1,
        start: first,
        len: shared * K4,
        kind: Kind::SharedFirst,
        resident: (0, shared),
        descending: rng.next() & 1 == 1,
    });
    // The second mapping is congruent with the first modulo 2 MiB, as a huge mapping of
    // the region in both would have to be.
    vmas.push(VmaPlan {
        letter: 'F',
        space: 3,
        start: slot(5) + rng.range(0, 255) * M2 + first % M2,
        len: shared * K4,
        kind: Kind::SharedSecond,
        resident: (0, shared),
        descending: false,
    });
    if machine.is_big() {
        // 1 GiB and a bit on each side, covering the aligned gigabyte of its slot; a run of
        // pages inside that gigabyte is faulted in.
        let before = rng.range(1, 8 * M2_PAGES);
        let after = rng.range(1, 8 * M2_PAGES);
        let run = rng.scaled(unit, 100, 150);
        let at = before + rng.range(0, G1 / K4 - run);
        vmas.push(VmaPlan {
            letter: 'G',
            space: 2,
            start: slot(6) + G1 - before * K4,
            len: (before + after) * K4 + G1,
            kind: Kind::Small,
            resident: (at, at + run),
            descending: rng.next() & 1 == 1,
        });
    }
    // The pinned pages: k = 2 or 3 of C's, apart from each other and from its ends.
    let pinned_vma = 2;
    let c_pages = vmas[pinned_vma].resident_pages();
    let k = rng.range(2, 3);
    let mut pinned: Vec<u64> = Vec::new();
    while (pinned.len() as u64) < k {
        let p = rng.range(16, c_pages - 17);
        if pinned.iter().all(|&q| q.abs_diff(p) > 16) {
            pinned.push(p);
        }
    }
    pinned.sort_unstable();
    let demo_pages: u64 = vmas
        .iter()
        .filter(|v| v.kind != Kind::SharedSecond)
        .map(VmaPlan::resident_pages)
        .sum();
    let kernel_allocs = (unit / 64).max(16);
    let holes = machine.free_pages * HOLES_PER_MILLE / 1000 / M2_PAGES;
    let slack = SLACK_PAGES + machine.free_pages / 1024 + kernel_allocs;
    let background = Background {
        blocks: machine
            .free_pages
            .saturating_sub(demo_pages + slack)
            .div_euclid(M2_PAGES)
            .max(holes),
        holes,
    };
    let mut streams: Vec<Stream> = (0..vmas.len())
        .filter(|&i| vmas[i].units() > 0)
        .map(Stream::Vma)
        .collect();
    streams.push(Stream::Background);
    streams.push(Stream::Kernel);
    for i in (1..streams.len()).rev() {
        streams.swap(i, rng.range(0, i as u64) as usize);
    }
    Plan {
        seed,
        vmas,
        pinned_vma,
        pinned,
        background,
        kernel_allocs,
        streams,
    }
}

impl Plan {
    /// Units of stream `s`.
    pub fn units(&self, s: Stream) -> u64 {
        match s {
            Stream::Vma(i) => self.vmas[i].units(),
            Stream::Background => self.background.blocks,
            Stream::Kernel => self.kernel_allocs,
        }
    }

    /// Every fault step in order: each stream advances in proportion to its units, so
    /// every stream is spread over the whole run (streams of equal size take turns one
    /// unit at a time).
    pub fn schedule(&self) -> Schedule<'_> {
        Schedule {
            plan: self,
            done: alloc::vec![0; self.streams.len()],
        }
    }
}

/// The interleaved fault order: yields each stream with the index of its next unit.
pub struct Schedule<'p> {
    plan: &'p Plan,
    done: Vec<u64>,
}

impl Iterator for Schedule<'_> {
    type Item = (Stream, u64);

    fn next(&mut self) -> Option<(Stream, u64)> {
        // The stream that is furthest behind: least (done + 1) / units.
        let mut best: Option<(usize, u64, u64)> = None;
        for (k, &s) in self.plan.streams.iter().enumerate() {
            let (d, n) = (self.done[k], self.plan.units(s));
            if d >= n {
                continue;
            }
            let behind = best.is_none_or(|(_, bd, bn)| {
                u128::from(d + 1) * u128::from(bn) < u128::from(bd + 1) * u128::from(n)
            });
            if behind {
                best = Some((k, d, n));
            }
        }
        let (k, d, _) = best?;
        self.done[k] += 1;
        Some((self.plan.streams[k], d))
    }
}
