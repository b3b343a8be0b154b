//! The soak (`mode=soak`, `./run-qemu.sh soak --minutes N`; not part of the test suite):
//! writers with changing values (see [`super::load`]) on every CPU but this one, against
//! a mixed stream of operations on this CPU for the given number of minutes: migrations
//! and exchanges of 4 KiB, 2 MiB and 1 GiB pages, promotions and splits at 2 MiB and
//! 1 GiB, collapses (in place or by copy) of scattered ranges. Progress every
//! [`PROGRESS_S`] seconds; at the end, the totals per kind as one `SOAK {json}` line and
//! the error count: words that lost a write, operations that failed other than by a
//! transient, typed refusal (`Busy`, a range not contiguous after a refused collapse),
//! and failed audits.
//!
//! The 1 GiB part needs 1 GiB pages and two free 1 GiB blocks (the page and room to
//! migrate it); without them the soak runs at 4 KiB and 2 MiB only and says so.

use super::load::{self, Writer};
use super::{KernelMm, Space};
use crate::arch::percpu;
use crate::arch::timer::{self, Deadline};
use crate::mem::frames;
use crate::smp::{self, Pending};
use crate::sprintln;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use mm::backend::source::FrameSource;
use mm::base::addr::{PageSize, Pfn};
use mm::mapping::vma::{HugePolicy, VmaFlags};
use mm::ops::huge::collapse::{CollapseMethod, CollapseOptions, CollapseTarget, Collapsed};
use mm::ops::huge::HugeError;
use mm::ops::migrate::{Destination, MigrateError};

/// Seconds between progress lines.
pub const PROGRESS_S: u64 = 10;
/// Where the soak maps its memory (1 GiB aligned, user half).
const BASE: u64 = 0x0000_3800_0000_0000;
const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
/// 4 KiB pages of the small VMA, 2 MiB ranges (each its own VMA).
const SMALL_PAGES: u64 = 256;
const RANGES: u64 = 8;
const MID: u64 = BASE + G1;
const GIGA: u64 = BASE + 4 * G1;
/// Per batch: 4 KiB pages migrated, 4 KiB pairs exchanged, pages scattered before a
/// collapse.
const BATCH: usize = 16;
const PAIRS: usize = 8;
const SCATTER: u64 = 4;

/// The kinds of operation counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Migrate4k,
    Migrate2m,
    Migrate1g,
    Exchange4k,
    Exchange2m,
    Promote2m,
    Promote1g,
    Split2m,
    Split1g,
    Collapse2m,
    Collapse1g,
}

impl Kind {
    const ALL: [Kind; 11] = [
        Kind::Migrate4k,
        Kind::Migrate2m,
        Kind::Migrate1g,
        Kind::Exchange4k,
        Kind::Exchange2m,
        Kind::Promote2m,
        Kind::Promote1g,
        Kind::Split2m,
        Kind::Split1g,
        Kind::Collapse2m,
        Kind::Collapse1g,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Migrate4k => "migrate_4k",
            Kind::Migrate2m => "migrate_2m",
            Kind::Migrate1g => "migrate_1g",
            Kind::Exchange4k => "exchange_4k",
            Kind::Exchange2m => "exchange_2m",
            Kind::Promote2m => "promote_2m",
            Kind::Promote1g => "promote_1g",
            Kind::Split2m => "split_2m",
            Kind::Split1g => "split_1g",
            Kind::Collapse2m => "collapse_2m",
            Kind::Collapse1g => "collapse_1g",
        }
    }

    fn index(self) -> usize {
        Kind::ALL.iter().position(|&k| k == self).unwrap_or(0)
    }
}

/// Operations done and refused per kind, and the errors.
#[derive(Default)]
struct Counts {
    done: [u64; Kind::ALL.len()],
    refused: [u64; Kind::ALL.len()],
    errors: u64,
    first_error: Option<String>,
}

impl Counts {
    fn done(&mut self, kind: Kind, n: u64) {
        self.done[kind.index()] += n;
    }

    fn refused(&mut self, kind: Kind) {
        self.refused[kind.index()] += 1;
    }

    fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }

    /// Done of the kinds whose name starts with `prefix`.
    fn sum(&self, prefix: &str) -> u64 {
        Kind::ALL
            .iter()
            .filter(|k| k.name().starts_with(prefix))
            .map(|k| self.done[k.index()])
            .sum()
    }

    fn progress(&self, seconds: u64) {
        sprintln!(
            "soak: {seconds} s: {} migrations, {} exchanges, {} promotions, {} splits, {} collapses, {} errors",
            self.sum("migrate"),
            self.sum("exchange"),
            self.sum("promote"),
            self.sum("split"),
            self.sum("collapse"),
            self.errors
        );
    }

    fn json(&self, writers: (usize, u64, u64), seconds: u64) -> String {
        let mut out = format!("{{\"seconds\":{seconds}");
        for k in Kind::ALL {
            let i = k.index();
            out.push_str(&format!(
                ",\"{}\":{},\"{}_refused\":{}",
                k.name(),
                self.done[i],
                k.name(),
                self.refused[i]
            ));
        }
        out.push_str(&format!(
            ",\"writers\":{},\"writer_updates\":{},\"word_errors\":{},\"errors\":{}}}",
            writers.0, writers.1, writers.2, self.errors
        ));
        out
    }
}

/// A xorshift generator.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The soak's memory, in one address space.
struct Memory {
    mm: &'static KernelMm,
    space: Arc<Space>,
    with_1g: bool,
}

impl Memory {
    /// The block mapped at `va`, with its leaf size.
    fn block(&self, va: u64) -> Option<(Pfn, PageSize)> {
        let t = self.space.translate(va)?;
        let head = super::frames()
            .frame_table()
            .head_of(Pfn::containing(t.leaf_base_pa))?;
        Some((head, t.size))
    }

    fn size(&self, va: u64) -> Option<PageSize> {
        self.space.translate(va).map(|t| t.size)
    }

    fn range(rng: &mut Rng) -> u64 {
        MID + rng.below(RANGES) * 2 * M2
    }

    /// Distinct 4 KiB pages of the small VMA.
    fn small_pages(rng: &mut Rng, n: usize) -> Vec<u64> {
        let first = rng.below(SMALL_PAGES);
        (0..n as u64)
            .map(|j| BASE + (first + j * 13) % SMALL_PAGES * K4)
            .collect()
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

    /// One operation, chosen by `rng`.
    fn step(&self, c: &mut Counts, rng: &mut Rng) {
        let va = Memory::range(rng);
        // Out of a hundred: 1 GiB operations (a gigabyte moved or collapsed takes
        // seconds under emulation) twice at most.
        match rng.below(if self.with_1g { 100 } else { 98 }) {
            0..=19 => self.migrate(c, Kind::Migrate4k, &Memory::small_pages(rng, BATCH)),
            20..=34 => {
                let p = Memory::small_pages(rng, 2 * PAIRS);
                let pairs: Vec<(u64, u64)> = p.chunks(2).map(|w| (w[0], w[1])).collect();
                self.exchange(c, Kind::Exchange4k, &pairs);
            }
            35..=89 => match self.size(va) {
                Some(PageSize::Size2M) => match rng.below(3) {
                    0 => self.migrate(c, Kind::Migrate2m, &[va]),
                    1 => {
                        let other = Memory::range(rng);
                        if other != va && self.size(other) == Some(PageSize::Size2M) {
                            self.exchange(c, Kind::Exchange2m, &[(va, other)]);
                        }
                    }
                    _ => self.split(c, Kind::Split2m, va + rng.below(512) * K4),
                },
                Some(_) => {
                    if rng.below(2) == 0 {
                        self.promote(c, Kind::Promote2m, va, PageSize::Size2M);
                    } else {
                        let first = rng.below(500);
                        let vas: Vec<u64> =
                            (0..SCATTER).map(|j| va + (first + j * 3) * K4).collect();
                        self.migrate(c, Kind::Migrate4k, &vas);
                        self.collapse(c, Kind::Collapse2m, va, PageSize::Size2M, rng.below(2) == 0);
                    }
                }
                None => c.error(format!("{va:#x} is not mapped")),
            },
            90..=97 => {
                // 4 KiB pages of a split 2 MiB range take part in exchanges too.
                if self.size(va) == Some(PageSize::Size4K) {
                    let p = rng.below(256);
                    self.exchange(c, Kind::Exchange4k, &[(va + p * K4, va + (p + 256) * K4)]);
                }
            }
            _ => self.gigabyte(c, rng),
        }
    }

    /// An operation on the 1 GiB page: split, promote, migrate, or scatter one of its
    /// 2 MiB pages and collapse it back in place.
    fn gigabyte(&self, c: &mut Counts, rng: &mut Rng) {
        match self.size(GIGA) {
            Some(PageSize::Size1G) => {
                if rng.below(2) == 0 && free_1g() > 0 {
                    self.migrate(c, Kind::Migrate1g, &[GIGA]);
                } else {
                    self.split(c, Kind::Split1g, GIGA + rng.below(512) * M2);
                }
            }
            Some(_) => {
                if rng.below(2) == 0 {
                    self.promote(c, Kind::Promote1g, GIGA, PageSize::Size1G);
                } else {
                    self.migrate(c, Kind::Migrate2m, &[GIGA + rng.below(512) * M2]);
                    self.collapse(c, Kind::Collapse1g, GIGA, PageSize::Size1G, false);
                }
            }
            None => c.error("the 1 GiB page is not mapped".into()),
        }
    }
}

fn free_1g() -> usize {
    frames::with_buddy(|b| b.free_areas()[PageSize::Size1G.order() as usize])
}

/// Map and populate the soak's memory; the pages writers write.
fn set_up(mm: &'static KernelMm) -> Result<(Memory, Vec<u64>), String> {
    let space = mm.new_space().map_err(|e| format!("new_space: {e}"))?;
    let with_1g = mm.max_leaf() == PageSize::Size1G && free_1g() >= 2;
    let memory = Memory { mm, space, with_1g };
    let map = |va, len, huge| {
        mm.map_anon(&memory.space, va, len, VmaFlags::private(huge, true))
            .and_then(|()| mm.populate(&memory.space, va, len))
            .map_err(|e| format!("mapping {va:#x}: {e}"))
    };
    map(BASE, SMALL_PAGES * K4, HugePolicy::Never)?;
    let mut pages: Vec<u64> = (0..SMALL_PAGES)
        .step_by(16)
        .map(|i| BASE + i * K4)
        .collect();
    for i in 0..RANGES {
        let va = MID + i * 2 * M2;
        map(va, M2, HugePolicy::OnRequest)?;
        pages.extend([0, 1, 255, 511].map(|p| va + p * K4));
    }
    if with_1g {
        map(GIGA, G1, HugePolicy::OnRequest)?;
        for b in [0, 1, 255, 511] {
            pages.extend([GIGA + b * M2, GIGA + b * M2 + 511 * K4]);
        }
    }
    Ok((memory, pages))
}

/// Run the soak for `minutes`; Ok with the error count once it ends (the soak passes
/// when it is zero), Err when it could not start.
pub fn run(seed: u64, minutes: u64) -> Result<u64, String> {
    let mm = super::mm().ok_or("address spaces are not set up")?;
    let (memory, pages) = set_up(mm)?;
    let me = percpu::cpu_index();
    let cpus: Vec<u32> = percpu::online().iter().filter(|&c| c != me).collect();
    sprintln!(
        "soak: {minutes} min, {} writers on CPUs {cpus:?}, operations on CPU {me}{}",
        cpus.len(),
        if memory.with_1g {
            ""
        } else {
            "; no 1 GiB part (no 1 GiB pages or fewer than 2 free 1 GiB blocks)"
        }
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut running: Vec<Pending<Writer>> = Vec::new();
    for (k, &cpu) in cpus.iter().enumerate() {
        let w = Writer::new(memory.space.clone(), k as u64 + 1, &pages);
        let stop = stop.clone();
        match smp::run_on(cpu, move || w.run(&stop)) {
            Ok(p) => running.push(p),
            Err(e) => sprintln!("soak: no writer on CPU {cpu}: {e}"),
        }
    }
    let mut counts = Counts::default();
    let mut rng = Rng(seed | 1);
    let started = timer::now_ns();
    let end = Deadline::after_ms(minutes.saturating_mul(60_000));
    let mut next = PROGRESS_S;
    while !end.expired() {
        memory.step(&mut counts, &mut rng);
        let seconds = (timer::now_ns() - started) / 1_000_000_000;
        if seconds >= next {
            counts.progress(seconds);
            next = seconds + PROGRESS_S;
        }
    }
    stop.store(true, Ordering::Release);
    let mut writers: Vec<Writer> = running.into_iter().map(Pending::wait).collect();
    for w in writers.iter_mut() {
        w.verify();
    }
    let (updates, word_errors, first) = load::totals(&writers);
    counts.errors += word_errors;
    if let Some(e) = first {
        counts.first_error.get_or_insert(e);
    }
    if let Err(e) = mm.rmap_audit() {
        counts.error(format!("reverse-map audit: {e:?}"));
    }
    if let Err(e) = mm.destroy_space(&memory.space) {
        counts.error(format!("destroy_space: {e}"));
    }
    if let Err(e) = frames::drain_and_audit() {
        counts.error(format!("allocator audit: {e:?}"));
    }
    let seconds = (timer::now_ns() - started) / 1_000_000_000;
    counts.progress(seconds);
    sprintln!(
        "SOAK {}",
        counts.json((writers.len(), updates, word_errors), seconds)
    );
    if let Some(e) = &counts.first_error {
        sprintln!("soak: first error: {e}");
    }
    sprintln!("VMSTAT {}", mm.vmstat().json());
    sprintln!("soak: {} errors", counts.errors);
    Ok(counts.errors)
}
