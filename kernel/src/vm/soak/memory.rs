//! The soak's memory and the operations on it, in one address space at [`BASE`]:
//!
//! - the *pool*: [`POOL_PAGES`] 4 KiB pages (never huge) that batches of
//!   [`BATCH`] migrations or [`PAIRS`] exchanges move, one shootdown per batch;
//! - [`RANGES`] 2 MiB ranges, each its own VMA (huge on request): migrated, exchanged with
//!   each other, split, promoted back, or scattered (a few 4 KiB pages migrated away, or
//!   pairs of its 4 KiB pages exchanged) and collapsed, in place or by copy;
//! - with 1 GiB pages, one 1 GiB page: migrated, exchanged with a second 1 GiB page mapped
//!   for the exchange only, split, promoted back, or one of its 2 MiB pages migrated away
//!   and the gigabyte collapsed in place.
//!
//! [`writer_pages`] lists the pages the writers write: every page of the pool, every 8th
//! 4 KiB page of each range (and its last), two pages of every 16th 2 MiB page of the
//! gigabyte. The 4 KiB pages moved inside ranges and the 2 MiB pages scattered out of
//! the gigabyte are chosen among those, so every block moved holds writers' words.

use super::counts::{Counts, Kind};
use crate::mem::frames;
use crate::vm::load::Writer;
use crate::vm::{activate, deactivate, KernelMm, Space};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use mm::backend::source::FrameSource;
use mm::base::addr::{PageSize, Pfn};
use mm::mapping::vma::{HugePolicy, VmaFlags};
use mm::ops::huge::collapse::{CollapseMethod, CollapseOptions, CollapseTarget, Collapsed};
use mm::ops::huge::HugeError;
use mm::ops::migrate::{Destination, MigrateError};

/// Where the soak maps its memory (1 GiB aligned, user half).
const BASE: u64 = 0x0000_3800_0000_0000;
const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
/// 4 KiB pages of the pool (a power of two: batches walk it with odd strides).
pub const POOL_PAGES: u64 = 1024;
/// 4 KiB blocks per migration batch, pairs per exchange batch (in the pool).
pub const BATCH: usize = 256;
pub const PAIRS: usize = 128;
/// 2 MiB ranges; inside a range, writers' words are in every [`RANGE_STEP`]th page.
const RANGES: u64 = 8;
const RANGE_STEP: u64 = 8;
/// 4 KiB pages migrated out of a range before its collapse.
const SCATTER: u64 = 4;
/// Writers' words are in every [`GIGA_STEP`]th 2 MiB page of the gigabyte.
const GIGA_STEP: u64 = 16;
const MID: u64 = BASE + G1;
const GIGA: u64 = BASE + 4 * G1;
/// The second 1 GiB page, mapped for an exchange only.
const PARTNER: u64 = BASE + 5 * G1;
/// The id of the writer that the operations' CPU runs on the partner around an exchange
/// (the writers on the other CPUs never write there).
const PARTNER_WRITER: u64 = 1;

/// A xorshift generator.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The soak's memory, in one address space.
pub struct Memory {
    mm: &'static KernelMm,
    pub space: Arc<Space>,
    /// Whether the gigabyte is there (1 GiB pages and two free 1 GiB blocks at set-up).
    pub with_1g: bool,
    /// Moves of the gigabyte, and changes of its mapping while it was split: they pick
    /// the next one in turn.
    giga_turns: [u64; 2],
}

/// Free 1 GiB blocks in the allocator.
fn free_1g() -> usize {
    frames::with_buddy(|b| b.free_areas()[PageSize::Size1G.order() as usize])
}

/// Pages of the 2 MiB range at `va` that hold writers' words.
fn range_pages(va: u64) -> impl Iterator<Item = u64> {
    (0..512)
        .step_by(RANGE_STEP as usize)
        .chain([511])
        .map(move |p| va + p * K4)
}

/// Two pages (the first and the last) of every [`GIGA_STEP`]th 2 MiB page of the 1 GiB
/// page at `va`.
fn giga_pages(va: u64) -> impl Iterator<Item = u64> {
    (0..512)
        .step_by(GIGA_STEP as usize)
        .flat_map(move |b| [va + b * M2, va + b * M2 + 511 * K4])
}

impl Memory {
    /// Map and populate the soak's memory; with the pages the writers write.
    pub fn set_up(mm: &'static KernelMm) -> Result<(Memory, Vec<u64>), String> {
        let space = mm.new_space().map_err(|e| format!("new_space: {e}"))?;
        let with_1g = mm.max_leaf() == PageSize::Size1G && free_1g() >= 2;
        let memory = Memory {
            mm,
            space,
            with_1g,
            giga_turns: [0; 2],
        };
        memory.map(BASE, POOL_PAGES * K4, HugePolicy::Never)?;
        let mut pages: Vec<u64> = (0..POOL_PAGES).map(|i| BASE + i * K4).collect();
        for i in 0..RANGES {
            let va = MID + i * 2 * M2;
            memory.map(va, M2, HugePolicy::OnRequest)?;
            pages.extend(range_pages(va));
        }
        if with_1g {
            memory.map(GIGA, G1, HugePolicy::OnRequest)?;
            pages.extend(giga_pages(GIGA));
        }
        Ok((memory, pages))
    }

    fn map(&self, va: u64, len: u64, huge: HugePolicy) -> Result<(), String> {
        self.mm
            .map_anon(&self.space, va, len, VmaFlags::private(huge, true))
            .and_then(|()| self.mm.populate(&self.space, va, len))
            .map_err(|e| format!("mapping {va:#x}: {e}"))
    }

    /// The block mapped at `va`, with its leaf size.
    fn block(&self, va: u64) -> Option<(Pfn, PageSize)> {
        let t = self.space.translate(va)?;
        let head = crate::vm::frames()
            .frame_table()
            .head_of(Pfn::containing(t.leaf_base_pa))?;
        Some((head, t.size))
    }

    fn size(&self, va: u64) -> Option<PageSize> {
        self.space.translate(va).map(|t| t.size)
    }

    /// `n` distinct pages of the pool, in an order `rng` chooses (an odd stride through
    /// a power of two visits every page once).
    fn pool_pages(rng: &mut Rng, n: usize) -> Vec<u64> {
        let first = rng.below(POOL_PAGES);
        let stride = 2 * rng.below(POOL_PAGES / 2) + 1;
        (0..n as u64)
            .map(|j| BASE + (first + j * stride) % POOL_PAGES * K4)
            .collect()
    }

    fn range(rng: &mut Rng) -> u64 {
        MID + rng.below(RANGES) * 2 * M2
    }

    fn migrate(&self, c: &mut Counts, kind: Kind, vas: &[u64]) {
        let requests: Vec<(Pfn, Destination)> = vas
            .iter()
            .filter_map(|&va| self.block(va).map(|(h, _)| (h, Destination::Any)))
            .collect();
        for r in self.mm.migrate_batch(&requests) {
            match r {
                Ok(_) => c.done(kind, 1),
                Err(MigrateError::OutOfMemory) => c.refused(kind),
                Err(e) => c.error(format!("{}: {e}", kind.name())),
            }
        }
    }

    fn exchange(&self, c: &mut Counts, kind: Kind, pairs: &[(u64, u64)]) {
        let blocks: Vec<(Pfn, Pfn)> = pairs
            .iter()
            .filter_map(|&(a, b)| Some((self.block(a)?.0, self.block(b)?.0)))
            .collect();
        for r in self.mm.exchange_batch(&blocks) {
            match r {
                Ok(()) => c.done(kind, 1),
                Err(e) => c.error(format!("{}: {e}", kind.name())),
            }
        }
    }

    fn promote(&self, c: &mut Counts, kind: Kind, va: u64, size: PageSize) {
        match self.mm.promote(&self.space, va, size) {
            Ok(()) => c.done(kind, 1),
            Err(HugeError::Busy | HugeError::NotContiguous(_)) => c.refused(kind),
            Err(e) => c.error(format!("{} {va:#x}: {e}", kind.name())),
        }
    }

    fn split(&self, c: &mut Counts, kind: Kind, va: u64) {
        match self.mm.split_huge(&self.space, va) {
            Ok(_) => c.done(kind, 1),
            Err(HugeError::Busy) => c.refused(kind),
            Err(e) => c.error(format!("{} {va:#x}: {e}", kind.name())),
        }
    }

    fn collapse(&self, c: &mut Counts, kind: Kind, va: u64, size: PageSize, copy: bool) {
        let opts = CollapseOptions {
            target: if size == PageSize::Size1G {
                CollapseTarget::Size1G
            } else {
                CollapseTarget::Size2M
            },
            method: if copy {
                CollapseMethod::Copy
            } else {
                CollapseMethod::InPlace
            },
        };
        match self.mm.collapse(&self.space, va, size.bytes(), &opts) {
            Ok(out) => match out.first().map(|o| o.result) {
                Some(Ok(Collapsed::AlreadyHuge)) | None => c.refused(kind),
                Some(Ok(_)) => c.done(kind, 1),
                Some(Err((_, HugeError::Busy | HugeError::NotContiguous(_)))) => c.refused(kind),
                Some(Err(e)) => c.error(format!("{} {va:#x}: {e:?}", kind.name())),
            },
            Err(e) => c.error(format!("{} {va:#x}: {e}", kind.name())),
        }
    }

    /// One batch in the pool: [`BATCH`] migrations or [`PAIRS`] exchanges.
    pub fn small(&self, c: &mut Counts, rng: &mut Rng) {
        if rng.below(2) == 0 {
            self.migrate(c, Kind::Migrate4k, &Memory::pool_pages(rng, BATCH));
        } else {
            let p = Memory::pool_pages(rng, 2 * PAIRS);
            let pairs: Vec<(u64, u64)> = p.chunks(2).map(|w| (w[0], w[1])).collect();
            self.exchange(c, Kind::Exchange4k, &pairs);
        }
    }

    /// One operation on a 2 MiB range chosen by `rng`: on a 2 MiB page, a migration, an
    /// exchange with another range or a split; on a split range, a promotion, a batch
    /// of exchanges of its 4 KiB pages, or a few of them migrated away and a collapse.
    pub fn mid(&self, c: &mut Counts, rng: &mut Rng) {
        let va = Memory::range(rng);
        let writer_page = |rng: &mut Rng| va + rng.below(512 / RANGE_STEP) * RANGE_STEP * K4;
        match self.size(va) {
            Some(PageSize::Size2M) => match rng.below(3) {
                0 => self.migrate(c, Kind::Migrate2m, &[va]),
                1 => {
                    let other = Memory::range(rng);
                    if other != va && self.size(other) == Some(PageSize::Size2M) {
                        self.exchange(c, Kind::Exchange2m, &[(va, other)]);
                    }
                }
                _ => self.split(c, Kind::Split2m, writer_page(rng)),
            },
            Some(_) => match rng.below(3) {
                0 => self.promote(c, Kind::Promote2m, va, PageSize::Size2M),
                1 => {
                    // Every page of the first half that holds writers' words with its
                    // counterpart in the second half.
                    let half = 256 / RANGE_STEP;
                    let pairs: Vec<(u64, u64)> = (0..half)
                        .map(|q| q * RANGE_STEP * K4)
                        .map(|o| (va + o, va + o + 256 * K4))
                        .collect();
                    self.exchange(c, Kind::Exchange4k, &pairs);
                }
                _ => {
                    let first = rng.below(512 / RANGE_STEP);
                    let vas: Vec<u64> = (0..SCATTER)
                        .map(|j| va + (first + j * 3) % (512 / RANGE_STEP) * RANGE_STEP * K4)
                        .collect();
                    self.migrate(c, Kind::Migrate4k, &vas);
                    let copy = rng.below(2) == 0;
                    self.collapse(c, Kind::Collapse2m, va, PageSize::Size2M, copy);
                }
            },
            None => c.error(format!("{va:#x} is not mapped")),
        }
    }

    /// Whether the gigabyte is mapped by one 1 GiB leaf.
    pub fn giga_is_one_page(&self) -> bool {
        self.with_1g && self.size(GIGA) == Some(PageSize::Size1G)
    }

    /// A move of the gigabyte (one 1 GiB leaf), in turn: an exchange or a migration.
    pub fn giga_move(&mut self, c: &mut Counts) -> Kind {
        self.giga_turns[0] += 1;
        if self.giga_turns[0] % 2 == 1 {
            self.exchange_1g(c);
            Kind::Exchange1g
        } else {
            if free_1g() > 0 {
                self.migrate(c, Kind::Migrate1g, &[GIGA]);
            } else {
                c.refused(Kind::Migrate1g);
            }
            Kind::Migrate1g
        }
    }

    /// A change of the gigabyte's mapping: one 1 GiB leaf is split; split, it is
    /// promoted back in place or, in turn, one of its 2 MiB pages is migrated away and
    /// the gigabyte collapsed in place. Returns the kind it tried.
    pub fn giga_shape(&mut self, c: &mut Counts, rng: &mut Rng) -> Option<Kind> {
        match self.size(GIGA) {
            Some(PageSize::Size1G) => {
                self.split(c, Kind::Split1g, GIGA + rng.below(512) * M2);
                Some(Kind::Split1g)
            }
            Some(_) => {
                self.giga_turns[1] += 1;
                Some(if self.giga_turns[1] % 2 == 1 {
                    self.promote(c, Kind::Promote1g, GIGA, PageSize::Size1G);
                    Kind::Promote1g
                } else {
                    let block = rng.below(512 / GIGA_STEP) * GIGA_STEP;
                    self.migrate(c, Kind::Migrate2m, &[GIGA + block * M2]);
                    self.collapse(c, Kind::Collapse1g, GIGA, PageSize::Size1G, false);
                    Kind::Collapse1g
                })
            }
            None => {
                c.error("the 1 GiB page is not mapped".into());
                None
            }
        }
    }

    /// Exchange the gigabyte with a partner 1 GiB page mapped for it (refused when the
    /// partner gets no 1 GiB page). This CPU writes words of the partner before and
    /// checks them after, the writers check the gigabyte's; then the partner is unmapped.
    fn exchange_1g(&self, c: &mut Counts) {
        if let Err(e) = self.map(PARTNER, G1, HugePolicy::OnRequest) {
            c.error(format!("exchange_1g: {e}"));
        } else if self.size(PARTNER) != Some(PageSize::Size1G) {
            c.refused(Kind::Exchange1g);
        } else if let Err(e) = activate(&self.space) {
            c.error(format!("exchange_1g: activate: {e}"));
        } else {
            let pages: Vec<u64> = giga_pages(PARTNER).collect();
            let mut partner = Writer::new(self.space.clone(), PARTNER_WRITER, &pages);
            partner.pass(true);
            self.exchange(c, Kind::Exchange1g, &[(GIGA, PARTNER)]);
            partner.pass(false);
            deactivate();
            if let Some(e) = partner.first_error {
                c.error(format!(
                    "exchange_1g partner: {} words: {e}",
                    partner.errors
                ));
            }
        }
        if let Err(e) = self.mm.unmap(&self.space, PARTNER, G1) {
            c.error(format!("exchange_1g: unmapping the partner: {e}"));
        }
    }
}
