//! Writers on other CPUs for the tests that move memory under them (migration, exchange,
//! contiguity): each writer owns slots of eight words spread over 4 KiB pages, checks on
//! every pass that each slot still holds the generation it wrote last and then writes
//! the next one, so a lost write is caught as well as a bad copy. The standard workload
//! maps private and shared 4 KiB, 2 MiB and 1 GiB pages in two address spaces.

use super::{
    activate, deactivate, private, read, shared, value, write, Env, Space, BASE, G1, K4, M2,
};
use crate::check;
use crate::harness::TestError;
use crate::tlb::tests::Helpers;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use mm::base::addr::PageSize;
use mm::mapping::vma::HugePolicy;

/// Words of a slot, spread over its 4 KiB page.
const SLOT_WORDS: u64 = 8;

/// One writer's eight words in a 4 KiB page: word j at `page + j * 512 + index * 8`.
pub(super) struct Slot {
    page: u64,
    index: u64,
    id: u64,
    generation: u64,
}

impl Slot {
    /// Slot `id` of writer `index` (at most 63) in the page at `page`, whose words hold
    /// zero until written.
    pub(super) fn new(page: u64, index: u64, id: u64) -> Slot {
        Slot {
            page,
            index,
            id,
            generation: 0,
        }
    }

    fn word(&self, j: u64) -> u64 {
        self.page + j * 512 + self.index * 8
    }

    fn expected(&self, j: u64) -> u64 {
        if self.generation == 0 {
            0
        } else {
            value(self.id, self.generation, j)
        }
    }
}

/// A writer: checks that each of its slots holds what it last wrote, then writes the next
/// generation; it is the only writer of its slots.
pub(super) struct Writer {
    pub(super) space: Arc<Space>,
    slots: Vec<Slot>,
    pub(super) updates: u64,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
}

impl Writer {
    /// A writer of `slots` through `space`.
    pub(super) fn new(space: Arc<Space>, slots: Vec<Slot>) -> Writer {
        Writer {
            space,
            slots,
            updates: 0,
            errors: 0,
            first_error: None,
        }
    }

    pub(super) fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }

    /// Check every slot against its generation; with `update`, write the next one.
    pub(super) fn pass(&mut self, update: bool) {
        for i in 0..self.slots.len() {
            for j in 0..SLOT_WORDS {
                let (va, want) = (self.slots[i].word(j), self.slots[i].expected(j));
                let got = read(va);
                if got != Some(want) {
                    self.error(format!(
                        "{va:#x} (generation {}): {got:x?}, expected {want:#x}",
                        self.slots[i].generation
                    ));
                }
            }
            if !update {
                continue;
            }
            self.slots[i].generation += 1;
            for j in 0..SLOT_WORDS {
                let (va, v) = (self.slots[i].word(j), self.slots[i].expected(j));
                if !write(va, v) {
                    self.error(format!("{va:#x}: write faulted"));
                }
            }
            self.updates += 1;
        }
    }
}

/// Run each writer on its CPU (its address space loaded there) until the helpers stop.
pub(super) fn start(
    helpers: &mut Helpers<Writer>,
    writers: Vec<Writer>,
    cpus: &[u32],
) -> Result<(), TestError> {
    for (w, &cpu) in writers.into_iter().zip(cpus) {
        helpers.start(cpu, move |stop| {
            let mut w = w;
            if let Err(e) = activate(&w.space) {
                w.error(format!("activate: {e}"));
                return w;
            }
            while !stop.load(Ordering::Acquire) {
                w.pass(true);
            }
            deactivate();
            w
        })?;
    }
    Ok(())
}

/// Stop the writers, check once more here that every slot holds its writer's last
/// generation, and return them.
pub(super) fn finish(helpers: Helpers<Writer>) -> Vec<Writer> {
    let mut writers = helpers.finish();
    for w in writers.iter_mut() {
        match activate(&w.space) {
            Ok(()) => w.pass(false),
            Err(e) => w.error(format!("activate for the last check: {e}")),
        }
    }
    deactivate();
    writers
}

/// Updates of all writers, their checksum errors and the first error.
pub(super) fn tally(writers: &[Writer]) -> (u64, u64, Option<String>) {
    let updates = writers.iter().map(|w| w.updates).sum();
    let errors = writers.iter().map(|w| w.errors).sum();
    let first = writers.iter().find_map(|w| w.first_error.clone());
    (updates, errors, first)
}

/// A block to move, found through one of its mappings.
pub(super) struct Block {
    pub(super) space: Arc<Space>,
    pub(super) va: u64,
}

/// The standard workload: writers, and the blocks they write in by size (4 KiB, 2 MiB,
/// 1 GiB).
pub(super) struct Workload {
    pub(super) writers: Vec<Writer>,
    pub(super) blocks: [Vec<Block>; 3],
}

/// Build two address spaces, regions, VMAs and slots for `writers` writers (1-based
/// indices; odd ones write through A, even ones through B): per writer 48 private 4 KiB
/// pages and two private 2 MiB pages; shared by A and B, 32 pages of 4 KiB, two of 2 MiB
/// and `gigs` of 1 GiB (each its own region).
pub(super) fn workload(env: &mut Env, writers: u64, gigs: u64) -> Result<Workload, TestError> {
    let a = env.space()?;
    let b = env.space()?;
    let space_of = |k: u64| if k % 2 == 1 { a.clone() } else { b.clone() };
    let mut blocks: [Vec<Block>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut next_id = 0;
    let mut slots: Vec<Vec<Slot>> = (0..=writers).map(|_| Vec::new()).collect();
    let mut add_slots = |k: u64, page_base: u64, subpages: &[u64]| {
        for &s in subpages {
            next_id += 1;
            slots[k as usize].push(Slot::new(page_base + s * K4, k, next_id));
        }
    };
    const PRIVATE_4K: u64 = 48;
    const SHARED_4K: u64 = 32;
    const SUB_2M: [u64; 4] = [0, 1, 256, 511];
    const SUB_1G: [u64; 7] = [0, 1, 65_536, 131_071, 131_072, 200_000, 262_143];
    // Private memory of each writer: 4 KiB pages and two 2 MiB pages.
    for k in 1..=writers {
        let s = space_of(k);
        let (p4, p2) = (BASE + k * (64 << 20), BASE + G1 + k * (64 << 20));
        env.map(&s, p4, PRIVATE_4K * K4, private(HugePolicy::Never))?;
        env.map(&s, p2, 2 * M2, private(HugePolicy::Always))?;
        env.populate(&s, p4, PRIVATE_4K * K4)?;
        env.populate(&s, p2, 2 * M2)?;
        for i in 0..PRIVATE_4K {
            add_slots(k, p4 + i * K4, &[0]);
            blocks[0].push(Block {
                space: s.clone(),
                va: p4 + i * K4,
            });
        }
        for i in 0..2 {
            add_slots(k, p2 + i * M2, &SUB_2M);
            blocks[1].push(Block {
                space: s.clone(),
                va: p2 + i * M2,
            });
        }
    }
    // Shared regions, mapped in both spaces: 4 KiB pages, 2 MiB pages, 1 GiB pages.
    let mut shared_sets = vec![(SHARED_4K * K4, BASE + 4 * G1, HugePolicy::Never, 0usize)];
    shared_sets.push((2 * M2, BASE + 5 * G1, HugePolicy::Always, 1));
    for g in 0..gigs {
        shared_sets.push((G1, BASE + (8 + g) * G1, HugePolicy::Always, 2));
    }
    for (len, at, huge, kind) in shared_sets {
        let region = env.region(len)?;
        // B maps it 8 GiB (1 GiB aligned) higher than A.
        let (in_a, in_b) = (at, at + 8 * G1);
        env.map(&a, in_a, len, shared(&region, huge))?;
        env.map(&b, in_b, len, shared(&region, huge))?;
        env.populate(&a, in_a, len)?;
        env.populate(&b, in_b, len)?;
        let size = [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G][kind];
        for i in 0..len / size.bytes() {
            let off = i * size.bytes();
            let t = a.translate(in_a + off);
            check!(
                t.map(|t| t.size) == Some(size)
                    && t.map(|t| t.pa) == b.translate(in_b + off).map(|t| t.pa),
                "shared {size:?} page {i}: {t:?}"
            );
            blocks[kind].push(Block {
                space: a.clone(),
                va: in_a + off,
            });
            for k in 1..=writers {
                let base = if k % 2 == 1 { in_a } else { in_b } + off;
                match kind {
                    0 => add_slots(k, base, &[0]),
                    1 => add_slots(k, base, &SUB_2M),
                    _ => add_slots(k, base, &SUB_1G),
                }
            }
        }
    }
    for k in 1..=writers {
        let t = space_of(k).translate(BASE + G1 + k * (64 << 20));
        check!(
            t.map(|t| t.size) == Some(PageSize::Size2M),
            "private 2 MiB page of writer {k}: {t:?}"
        );
    }
    let writers = slots
        .into_iter()
        .enumerate()
        .skip(1)
        .map(|(k, slots)| Writer::new(space_of(k as u64), slots))
        .collect();
    Ok(Workload { writers, blocks })
}
