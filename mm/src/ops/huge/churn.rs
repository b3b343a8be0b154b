//! Fragmentation over time: a churn workload (address spaces created, touched, partly
//! unmapped and destroyed in rounds, with small allocations of a long-lived space in
//! between) run under one of three policies, each round measured by the share of
//! resident memory in 2 MiB and 1 GiB leaves and the bytes copied to get there:
//! - [`Policy::FaultOnly`]: huge pages only when a fault finds a free huge block;
//! - [`Policy::CopyCollapse`]: Linux's way, each round every VMA is collapsed by copying
//!   into free huge blocks (freed by the allocator's own merging; no in-place moves);
//! - [`Policy::ContigPromote`]: each round every VMA is collapsed in place (contiguity
//!   generation, then promotion).
//!
//! The same code runs on the host (tests) and in the kernel (the benchmark that prints
//! the table as `BENCH` lines).

use super::collapse::{CollapseMethod, CollapseOptions, CollapseTarget};
use crate::aspace::vmstat::Event;
use crate::aspace::{AddressSpace, Mm, SpaceError};
use crate::backend::phys::PhysMem;
use crate::base::addr::{PageSize, PAGE_SIZE};
use crate::mapping::vma::{HugePolicy, VmaFlags};
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;

/// What happens after each round's churn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Nothing: huge pages at fault time only.
    FaultOnly,
    /// Collapse by copying into new huge blocks.
    CopyCollapse,
    /// Collapse in place: contiguity generation, then promotion.
    ContigPromote,
}

impl Policy {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Policy::FaultOnly => "fault_only",
            Policy::CopyCollapse => "copy_collapse",
            Policy::ContigPromote => "contig_promote",
        }
    }
}

/// The size of the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Churn {
    /// Rounds.
    pub rounds: u32,
    /// Address spaces created per round.
    pub spaces_per_round: u32,
    /// Bytes of the VMA of each (a multiple of 2 MiB).
    pub vma_bytes: u64,
    /// Address spaces alive at the end of a round (the oldest go first).
    pub keep: u32,
    /// Small pages the long-lived space touches per round, scattered among the others
    /// (half as many, picked at random, are unmapped again each round).
    pub small_pages: u64,
    /// Pages dropped (and touched again after the small pages) from every 2 MiB range of
    /// each fresh VMA.
    pub holes: u64,
    /// Changes the order of the touches and the holes.
    pub seed: u64,
}

/// One round's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Round {
    /// Resident bytes of the churned spaces.
    pub resident: u64,
    /// Of which mapped by 2 MiB or 1 GiB leaves.
    pub huge: u64,
    /// Bytes copied this round (pages migrated and exchanged).
    pub copied: u64,
}

impl Round {
    /// The huge share, in per mille.
    pub fn huge_per_mille(&self) -> u64 {
        (self.huge * 1000).checked_div(self.resident).unwrap_or(0)
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1)
    }
}

/// Where the churned VMAs live.
const BASE: u64 = 0x10_0000_0000;
/// Where the long-lived space's small pages live.
const SMALL: u64 = 0x40_0000_0000;

impl<'m, M: PhysMem> Mm<'m, M> {
    /// Run the churn workload under `policy`; one [`Round`] per round. The spaces it made
    /// are destroyed at the end.
    pub fn churn(&self, policy: Policy, w: &Churn) -> Result<Vec<Round>, SpaceError> {
        let mut rng = Rng(w.seed | 1);
        let small = self.new_space()?;
        self.map_anon(
            &small,
            SMALL,
            w.small_pages.max(1) * w.rounds.max(1) as u64 * PAGE_SIZE,
            VmaFlags::private(HugePolicy::Never, true),
        )?;
        let mut live: VecDeque<Arc<AddressSpace<'m, M>>> = VecDeque::new();
        let mut rounds = Vec::new();
        let pages = w.vma_bytes / PAGE_SIZE;
        let huge = VmaFlags::private(HugePolicy::Always, true);
        let mut small_next = 0;
        let mut small_alive: Vec<u64> = Vec::new();
        for _ in 0..w.rounds {
            let copied_before = self.copied_bytes();
            let mut fresh = Vec::new();
            for _ in 0..w.spaces_per_round {
                let s = self.new_space()?;
                self.map_anon(&s, BASE, w.vma_bytes, huge.clone())?;
                fresh.push(s);
            }
            // Touch the fresh VMAs a page at a time in a shuffled order, small pages of
            // the long-lived space in between.
            let mut touches: Vec<(usize, u64)> = (0..fresh.len())
                .flat_map(|i| (0..pages).step_by(64).map(move |p| (i, p)))
                .collect();
            for i in (1..touches.len()).rev() {
                touches.swap(i, rng.next(i as u64 + 1) as usize);
            }
            let every = (touches.len() as u64 / w.small_pages.max(1)).max(1);
            for (k, &(i, p)) in touches.iter().enumerate() {
                self.populate(&fresh[i], BASE + p * PAGE_SIZE, PAGE_SIZE)?;
                if (k as u64).is_multiple_of(every) && small_next < w.small_pages * w.rounds as u64
                {
                    self.populate(&small, SMALL + small_next * PAGE_SIZE, PAGE_SIZE)?;
                    small_alive.push(small_next);
                    small_next += 1;
                }
            }
            for s in &fresh {
                self.populate(s, BASE, w.vma_bytes)?;
                // Holes: a page of every 2 MiB range dropped (the range's block is split
                // and the freed frame goes to whoever faults next, small pages
                // included), then touched again.
                for r in 0..w.vma_bytes / PageSize::Size2M.bytes() {
                    let range = BASE + r * PageSize::Size2M.bytes();
                    for _ in 0..w.holes {
                        let p = rng.next(512);
                        self.discard(s, range + p * PAGE_SIZE, PAGE_SIZE)?;
                    }
                }
            }
            // Half of the small pages go again, at random: the free memory they leave is
            // scattered 4 KiB pieces.
            for _ in 0..w.small_pages / 2 {
                if small_alive.is_empty() {
                    break;
                }
                let k = rng.next(small_alive.len() as u64) as usize;
                let page = small_alive.swap_remove(k);
                self.unmap(&small, SMALL + page * PAGE_SIZE, PAGE_SIZE)?;
            }
            for s in &fresh {
                self.populate(s, BASE, w.vma_bytes)?;
            }
            live.extend(fresh);
            while live.len() > w.keep as usize {
                if let Some(old) = live.pop_front() {
                    self.destroy_space(&old)?;
                }
            }
            let method = match policy {
                Policy::FaultOnly => None,
                Policy::CopyCollapse => Some(CollapseMethod::Copy),
                Policy::ContigPromote => Some(CollapseMethod::InPlace),
            };
            if let Some(method) = method {
                let opts = CollapseOptions {
                    target: CollapseTarget::Size2M,
                    method,
                };
                for s in &live {
                    self.collapse(s, BASE, w.vma_bytes, &opts)?;
                }
            }
            let mut round = Round {
                copied: self.copied_bytes() - copied_before,
                ..Round::default()
            };
            for s in &live {
                for r in self.leaf_reports(s) {
                    round.resident += r.resident();
                    round.huge += r.huge();
                }
            }
            rounds.push(round);
        }
        for s in live {
            self.destroy_space(&s)?;
        }
        self.destroy_space(&small)?;
        Ok(rounds)
    }

    /// Bytes migrated and exchanged so far.
    fn copied_bytes(&self) -> u64 {
        let s = self.vmstat();
        (s.get(Event::PagesMigrated) + s.get(Event::PagesExchanged)) * PAGE_SIZE
    }
}
