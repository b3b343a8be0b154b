//! Migration under writers on other CPUs, and batches with injected failures.

use super::writers::{self, Block, Workload};
use super::{
    activate, audits, available, block_at, fill, free_1g_blocks, intact, private, Env, KernelMm,
    BASE, G1, K4, M2,
};
use crate::arch::percpu;
use crate::arch::timer;
use crate::harness::{TestContext, TestResult};
use crate::mem::tests::Rng;
use crate::tlb::tests::Helpers;
use crate::{check, check_eq, skip, sprint};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use mm::aspace::PinError;
use mm::base::addr::{PageSize, Pfn};
use mm::mapping::vma::HugePolicy;
use mm::ops::migrate::{Destination, MigrateError};

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
    let Workload { writers, blocks } =
        writers::workload(&mut env, writer_cpus.len() as u64, u64::from(with_1g))?;
    let waits_before = crate::vm::migration_waits();
    let mut helpers = Helpers::default();
    writers::start(&mut helpers, writers, &writer_cpus)?;
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
    let writers = writers::finish(helpers);
    let waits = crate::vm::migration_waits() - waits_before;
    let (updates, errors, first_error) = writers::tally(&writers);
    sprint!(
        "({} writers on CPUs {writer_cpus:?}, {updates} updates, {waits} faults waited for a migration; migrated 4K {} + 2M {} + 1G {} = {} in {elapsed_ms} ms{}; {errors} checksum errors) ",
        writers.len(),
        migrated.done[0],
        migrated.done[1],
        migrated.done[2],
        migrated.total(),
        if with_1g { "" } else { ", no 1 GiB page: fewer than 2 free 1 GiB blocks" },
    );
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
    // Batch: 4K 0-3, the 2 MiB page, 4K 4-7, with page 6 pinned, as by a device, before
    // it. Destinations are allocated in that order once the batch has claimed its pages
    // (a refused page allocates nothing): the 2 MiB page's allocation (the fifth) fails,
    // and a pin of page 7 just before the sixth allocation (page 4's) is refused, since
    // page 7 is claimed by then.
    let order = [0usize, 1, 2, 3, 8, 4, 5, 6, 7];
    let requests: Vec<(Pfn, Destination)> = order
        .iter()
        .map(|&i| (heads[i], Destination::Any))
        .collect();
    check_eq!(mm.pin(&s, pages[6].0), Ok(heads[6]));
    frames_src.injector.fail_nth(4);
    frames_src.injector.pin_at_nth(5, &s, pages[7].0);
    let free_before = available();
    let results = mm.migrate_batch(&requests);
    let injected_pin = frames_src.injector.injected_pin();
    frames_src.injector.disarm();
    check_eq!(injected_pin, Some(Err(PinError::Migrating)));
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
    sprint!("(moved {moved:?}; 2M destination allocation failed; page 6 pinned, a pin of claimed page 7 refused) ");
    env.teardown()?;
    audits(mm)?;
    check_eq!(available(), before);
    Ok(())
}
