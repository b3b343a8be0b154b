//! Migration under writers on other CPUs, and batches with injected failures.

use super::{
    activate, audits, available, block_at, deactivate, fill, free_1g_blocks, intact, private, read,
    shared, value, write, Env, KernelMm, Space, BASE, G1, K4, M2,
};
use crate::arch::percpu;
use crate::arch::timer;
use crate::harness::{TestContext, TestError, TestResult};
use crate::mem::tests::Rng;
use crate::tlb::tests::Helpers;
use crate::{check, check_eq, skip, sprint};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use mm::aspace::PinError;
use mm::base::addr::{PageSize, Pfn};
use mm::mapping::vma::HugePolicy;
use mm::ops::migrate::{Destination, MigrateError};

/// Words of a slot, spread over its 4 KiB page.
const SLOT_WORDS: u64 = 8;

/// One writer's eight words in a 4 KiB page: word j at `page + j * 512 + index * 8`.
struct Slot {
    page: u64,
    index: u64,
    id: u64,
    generation: u64,
}

impl Slot {
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
struct Writer {
    space: Arc<Space>,
    slots: Vec<Slot>,
    updates: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Writer {
    fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }

    /// Check every slot against its generation; with `update`, write the next one.
    fn pass(&mut self, update: bool) {
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

/// A block to migrate, found through one of its mappings.
struct Block {
    space: Arc<Space>,
    va: u64,
}

/// Everything the concurrency test set up.
struct Workload {
    writers: Vec<Writer>,
    blocks: [Vec<Block>; 3],
}

/// Build the address spaces, regions, VMAs and slots of the concurrency test for
/// `writers` writers (1-based indices; odd ones write through A, even ones through B).
fn workload(env: &mut Env, writers: u64, with_1g: bool) -> Result<Workload, TestError> {
    let a = env.space()?;
    let b = env.space()?;
    let space_of = |k: u64| if k % 2 == 1 { a.clone() } else { b.clone() };
    let mut blocks: [Vec<Block>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut next_id = 0;
    let mut slots: Vec<Vec<Slot>> = (0..=writers).map(|_| Vec::new()).collect();
    let mut add_slots = |k: u64, page_base: u64, subpages: &[u64]| {
        for &s in subpages {
            next_id += 1;
            slots[k as usize].push(Slot {
                page: page_base + s * K4,
                index: k,
                id: next_id,
                generation: 0,
            });
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
    // Shared regions, mapped in both spaces: 4 KiB pages, 2 MiB pages, one 1 GiB page.
    let mut shared_sets = vec![(SHARED_4K * K4, BASE + 4 * G1, HugePolicy::Never, 0usize)];
    shared_sets.push((2 * M2, BASE + 5 * G1, HugePolicy::Always, 1));
    if with_1g {
        shared_sets.push((G1, BASE + 8 * G1, HugePolicy::Always, 2));
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
        check_eq!(t.map(|t| t.size), Some(PageSize::Size2M));
    }
    let writers = slots
        .into_iter()
        .enumerate()
        .skip(1)
        .map(|(k, slots)| Writer {
            space: space_of(k as u64),
            slots,
            updates: 0,
            errors: 0,
            first_error: None,
        })
        .collect();
    Ok(Workload { writers, blocks })
}

/// Migration counts of the concurrency test.
#[derive(Default)]
struct Migrated {
    done: [u64; 3],
    failed: u64,
    first_failure: Option<String>,
}

impl Migrated {
    fn total(&self) -> u64 {
        self.done.iter().sum()
    }

    /// Migrate the blocks `picks` of `blocks` (one batch) anywhere.
    fn batch(&mut self, mm: &KernelMm, kind: usize, blocks: &[Block], picks: &[usize]) {
        let mut requests = Vec::with_capacity(picks.len());
        for &i in picks {
            match block_at(&blocks[i].space, blocks[i].va) {
                Some((head, _)) => requests.push((head, Destination::Any)),
                None => {
                    self.failed += 1;
                    self.first_failure
                        .get_or_insert(format!("{:#x} is not mapped", blocks[i].va));
                }
            }
        }
        for (r, &(src, _)) in mm.migrate_batch(&requests).iter().zip(&requests) {
            match r {
                Ok(_) => self.done[kind] += 1,
                Err(e) => {
                    self.failed += 1;
                    self.first_failure
                        .get_or_insert(format!("migrating {src:?}: {e}"));
                }
            }
        }
    }
}

/// Total migrations the test performs at least.
const MIGRATIONS: u64 = 100_000;
/// 4 KiB pages per batch.
const BATCH_4K: usize = 64;
/// One 2 MiB migration every this many batches.
const EVERY_2M: u64 = 3;
/// One 1 GiB migration every this many batches.
const EVERY_1G: u64 = 300;

pub(super) fn writers_vs_migrator(ctx: &TestContext) -> TestResult {
    let online = percpu::online();
    let me = percpu::cpu_index();
    let writer_cpus: Vec<u32> = online.iter().filter(|&c| c != me).take(3).collect();
    if writer_cpus.is_empty() {
        skip!("needs 2 CPUs: the writers run on other CPUs than the migrator");
    }
    let before = available();
    let mut env = Env::new()?;
    let mm = env.mm;
    // A 1 GiB page and a free 1 GiB block to move it to.
    let with_1g = free_1g_blocks() >= 2;
    let Workload { writers, blocks } = workload(&mut env, writer_cpus.len() as u64, with_1g)?;
    let waits_before = crate::vm::migration_waits();
    let mut helpers = Helpers::default();
    for (w, &cpu) in writers.into_iter().zip(&writer_cpus) {
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
    let started = timer::now_ns();
    let mut rng = Rng::new(ctx.seed);
    let mut migrated = Migrated::default();
    let mut order: Vec<usize> = (0..blocks[0].len()).collect();
    let mut round = 0u64;
    while migrated.total() < MIGRATIONS {
        for i in 0..BATCH_4K.min(order.len()) {
            let j = i + rng.below((order.len() - i) as u64) as usize;
            order.swap(i, j);
        }
        let picks = &order[..BATCH_4K.min(order.len())];
        migrated.batch(mm, 0, &blocks[0], picks);
        round += 1;
        if round.is_multiple_of(EVERY_2M) {
            let i = (round / EVERY_2M) as usize % blocks[1].len();
            migrated.batch(mm, 1, &blocks[1], &[i]);
        }
        if round.is_multiple_of(EVERY_1G) && !blocks[2].is_empty() {
            migrated.batch(mm, 2, &blocks[2], &[0]);
        }
        if migrated.failed > 0 {
            break;
        }
    }
    let elapsed_ms = (timer::now_ns() - started) / 1_000_000;
    let mut writers = helpers.finish();
    let waits = crate::vm::migration_waits() - waits_before;
    // Every slot holds its writer's last generation.
    for w in writers.iter_mut() {
        if activate(&w.space).is_ok() {
            w.pass(false);
        }
    }
    deactivate();
    let updates: u64 = writers.iter().map(|w| w.updates).sum();
    let errors: u64 = writers.iter().map(|w| w.errors).sum();
    sprint!(
        "({} writers on CPUs {writer_cpus:?}, {updates} updates, {waits} faults waited for a migration; migrated 4K {} + 2M {} + 1G {} = {} in {elapsed_ms} ms{}; {errors} checksum errors) ",
        writers.len(),
        migrated.done[0],
        migrated.done[1],
        migrated.done[2],
        migrated.total(),
        if with_1g { "" } else { ", no 1 GiB page: fewer than 2 free 1 GiB blocks" },
    );
    let first_error = writers.iter().find_map(|w| w.first_error.clone());
    check!(
        errors == 0,
        "{errors} checksum errors, first: {first_error:?}"
    );
    check!(
        migrated.failed == 0,
        "{} migrations failed, first: {:?}",
        migrated.failed,
        migrated.first_failure
    );
    check!(migrated.total() >= MIGRATIONS);
    check!(migrated.done[1] > 0 && (!with_1g || migrated.done[2] > 0));
    check!(
        writers.iter().all(|w| w.updates > 0),
        "a writer never wrote"
    );
    check!(waits > 0, "no writer ever ran into a migration");
    check!(mm.rmap_audit().is_ok(), "{:?}", mm.rmap_audit());
    drop(writers);
    drop(blocks);
    env.teardown()?;
    audits(mm)?;
    check_eq!(available(), before);
    Ok(())
}

// ---------------------------------------------------------------- fault injection

pub(super) fn injected_failures(_: &TestContext) -> TestResult {
    let before = available();
    let mut env = Env::new()?;
    let mm = env.mm;
    let frames_src = crate::vm::frames();
    let s = env.space()?;
    let (small, huge) = (BASE, BASE + G1);
    env.map(&s, small, 8 * K4, private(HugePolicy::Never))?;
    env.map(&s, huge, M2, private(HugePolicy::Always))?;
    env.populate(&s, small, 8 * K4)?;
    env.populate(&s, huge, M2)?;
    check_eq!(activate(&s), Ok(()));
    // Pages 0-7 (4 KiB) and 8 (2 MiB), each with its own contents.
    let pages: Vec<(u64, PageSize)> = (0..8)
        .map(|i| (small + i * K4, PageSize::Size4K))
        .chain([(huge, PageSize::Size2M)])
        .collect();
    for (i, &(va, size)) in pages.iter().enumerate() {
        check!(fill(va, size, i as u64));
    }
    let heads: Vec<Pfn> = pages
        .iter()
        .filter_map(|&(va, _)| block_at(&s, va).map(|(h, _)| h))
        .collect();
    check_eq!(heads.len(), pages.len());
    // Batch: 4K 0-3, the 2 MiB page, 4K 4-7. Destinations are allocated in that order
    // (a refused page allocates nothing): the 2 MiB page's allocation (the fifth) fails,
    // and page 6 is pinned, as by a device, just before the sixth allocation (page 4's).
    let order = [0usize, 1, 2, 3, 8, 4, 5, 6, 7];
    let requests: Vec<(Pfn, Destination)> = order
        .iter()
        .map(|&i| (heads[i], Destination::Any))
        .collect();
    frames_src.injector.fail_nth(4);
    frames_src.injector.pin_at_nth(5, &s, pages[6].0);
    let free_before = available();
    let results = mm.migrate_batch(&requests);
    let injected_pin = frames_src.injector.injected_pin();
    frames_src.injector.disarm();
    check_eq!(injected_pin, Some(Ok(heads[6])));
    let mut moved = Vec::new();
    for (k, (&i, r)) in order.iter().zip(&results).enumerate() {
        let want_err = match i {
            8 => Some(MigrateError::OutOfMemory),
            6 => Some(MigrateError::Pinned),
            _ => None,
        };
        match want_err {
            Some(e) => check_eq!(*r, Err(e)),
            None => {
                check!(r.is_ok(), "request {k} (page {i}): {r:?}");
                moved.push(i);
            }
        }
        let now = block_at(&s, pages[i].0).map(|(h, t)| (h, t.size));
        match r {
            Ok(dst) => check_eq!(now, Some((*dst, pages[i].1))),
            Err(_) => {
                check_eq!(now, Some((heads[i], pages[i].1)));
                check!(mm.migration_entry_at(&s, pages[i].0).is_none());
            }
        }
        check!(
            intact(pages[i].0, pages[i].1, i as u64),
            "page {i} lost data"
        );
    }
    check_eq!(available(), free_before);
    check!(mm.rmap_audit().is_ok(), "{:?}", mm.rmap_audit());
    // Once unpinned and with memory back, both move.
    check_eq!(
        mm.migrate_one(heads[6], Destination::Any).err(),
        Some(MigrateError::Pinned)
    );
    check_eq!(mm.unpin(heads[6]), Ok(()));
    check_eq!(mm.unpin(heads[6]), Err(PinError::NotPinned));
    for i in [6, 8] {
        check!(mm.migrate_one(heads[i], Destination::Any).is_ok());
        check!(intact(pages[i].0, pages[i].1, i as u64));
    }
    // A destination that is not free fails one page of a batch, not the others.
    let now: Vec<Pfn> = (0..3)
        .filter_map(|i| block_at(&s, pages[i].0).map(|(h, _)| h))
        .collect();
    check_eq!(now.len(), 3);
    let results = mm.migrate_batch(&[
        (now[0], Destination::Any),
        (now[1], Destination::Frame(now[2])),
        (now[2], Destination::Any),
    ]);
    check!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    check_eq!(results[1], Err(MigrateError::DestinationNotFree));
    check_eq!(block_at(&s, pages[1].0).map(|(h, _)| h), Some(now[1]));
    for (i, &(va, size)) in pages.iter().enumerate() {
        check!(intact(va, size, i as u64), "page {i} lost data");
    }
    sprint!("(moved {moved:?}; 2M destination allocation failed; page 6 pinned mid-batch) ");
    env.teardown()?;
    audits(mm)?;
    check_eq!(available(), before);
    Ok(())
}
