//! Exchange under writers: three CPUs keep checking and rewriting their slots in 4 KiB,
//! 2 MiB and 1 GiB pages, private and shared by two address spaces, while a fourth keeps
//! exchanging pairs of those blocks. Every exchange must succeed and swap exactly its
//! two blocks, no write may be lost, and the frame source hands out nothing meanwhile.

use super::writers::{self, Block, Workload};
use super::{audits, available, block_at, free_1g_blocks, Env, KernelMm};
use crate::arch::percpu;
use crate::arch::timer::{self, Deadline};
use crate::harness::{TestContext, TestResult};
use crate::mem::tests::Rng;
use crate::tlb::tests::Helpers;
use crate::{check, check_eq, skip, sprint};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use mm::backend::source::FrameSource;
use mm::base::addr::Pfn;

/// Pairs of 4 KiB blocks per batch (one shootdown each).
const PAIRS_4K: usize = 16;
/// Exchanges of 4 KiB blocks the test performs at least.
const EXCHANGES_4K: u64 = 400;
/// One 2 MiB exchange after every this many 4 KiB batches.
const EVERY_2M: u64 = 2;
/// Exchanges of 1 GiB blocks (each swaps 2 GiB of data: few, under emulation).
const EXCHANGES_1G: u64 = 1;
/// The 1 GiB exchanges happen after these 4 KiB batches.
const AT_1G: [u64; 1] = [5];
/// The run stops here even if its counts are not reached (they are then checked).
const RUN_MS: u64 = 60_000;

/// Exchanges done by size (4 KiB, 2 MiB, 1 GiB) and the first failure.
#[derive(Default)]
struct Exchanged {
    done: [u64; 3],
    /// Milliseconds spent exchanging, by size.
    ms: [u64; 3],
    failed: u64,
    first_failure: Option<String>,
}

impl Exchanged {
    fn fail(&mut self, what: String) {
        self.failed += 1;
        self.first_failure.get_or_insert(what);
    }

    /// Exchange the blocks `pairs` of `blocks` in one batch, then check that each
    /// exchanged pair swapped its frames.
    fn batch(&mut self, mm: &KernelMm, kind: usize, blocks: &[Block], pairs: &[(usize, usize)]) {
        let head = |i: usize| block_at(&blocks[i].space, blocks[i].va).map(|(h, _)| h);
        let mut requests: Vec<(Pfn, Pfn)> = Vec::with_capacity(pairs.len());
        let mut picked: Vec<(usize, usize)> = Vec::with_capacity(pairs.len());
        for &(i, j) in pairs {
            match (head(i), head(j)) {
                (Some(a), Some(b)) => {
                    requests.push((a, b));
                    picked.push((i, j));
                }
                _ => self.fail(format!(
                    "{:#x} or {:#x} is not mapped",
                    blocks[i].va, blocks[j].va
                )),
            }
        }
        let started = timer::now_ns();
        let results = mm.exchange_batch(&requests);
        self.ms[kind] += (timer::now_ns() - started) / 1_000_000;
        for ((r, &(a, b)), &(i, j)) in results.iter().zip(&requests).zip(&picked) {
            match r {
                Ok(()) if head(i) == Some(b) && head(j) == Some(a) => self.done[kind] += 1,
                Ok(()) => self.fail(format!(
                    "exchange of {a:?} and {b:?} succeeded but {:#x} maps {:?} and {:#x} maps {:?}",
                    blocks[i].va,
                    head(i),
                    blocks[j].va,
                    head(j)
                )),
                Err(e) => self.fail(format!("exchanging {a:?} and {b:?}: {e}")),
            }
        }
    }
}

/// `n` disjoint random pairs of indices below `len` (`2n <= len`).
fn pairs(rng: &mut Rng, len: usize, n: usize) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..len).collect();
    for i in 0..(2 * n).min(len) {
        let j = i + rng.below((len - i) as u64) as usize;
        order.swap(i, j);
    }
    order[..2 * n].chunks(2).map(|c| (c[0], c[1])).collect()
}

pub(super) fn exchange_under_writers(ctx: &TestContext) -> TestResult {
    let me = percpu::cpu_index();
    let writer_cpus: Vec<u32> = percpu::online()
        .iter()
        .filter(|&c| c != me)
        .take(3)
        .collect();
    if writer_cpus.len() < 3 {
        skip!(
            "needs 4 CPUs: writers on 3, the exchanger on a 4th ({} online)",
            writer_cpus.len() + 1
        );
    }
    let before = available();
    let mut env = Env::new()?;
    let mm = env.mm;
    let gigs = if free_1g_blocks() >= 2 { 2 } else { 0 };
    let Workload { writers, blocks } = writers::workload(&mut env, 3, gigs)?;
    let allocations = crate::vm::frames().allocations();
    let waits_before = crate::vm::migration_waits();
    let mut helpers = Helpers::default();
    writers::start(&mut helpers, writers, &writer_cpus)?;
    let started = timer::now_ns();
    let deadline = Deadline::after_ms(RUN_MS);
    let mut rng = Rng::new(ctx.seed);
    let mut x = Exchanged::default();
    let mut round = 0u64;
    let enough = |x: &Exchanged| {
        x.done[0] >= EXCHANGES_4K && x.done[1] > 0 && x.done[2] >= EXCHANGES_1G.min(gigs)
    };
    while !enough(&x) && !deadline.expired() && x.failed == 0 {
        let picks = pairs(&mut rng, blocks[0].len(), PAIRS_4K);
        x.batch(mm, 0, &blocks[0], &picks);
        round += 1;
        if round.is_multiple_of(EVERY_2M) {
            let picks = pairs(&mut rng, blocks[1].len(), 1);
            x.batch(mm, 1, &blocks[1], &picks);
        }
        if gigs == 2 && AT_1G.contains(&round) {
            x.batch(mm, 2, &blocks[2], &[(0, 1)]);
        }
    }
    let elapsed_ms = (timer::now_ns() - started) / 1_000_000;
    let writers = writers::finish(helpers);
    let waits = crate::vm::migration_waits() - waits_before;
    let allocated = crate::vm::frames().allocations() - allocations;
    let (updates, errors, first_error) = writers::tally(&writers);
    sprint!(
        "(3 writers on CPUs {writer_cpus:?}, {updates} updates, {waits} faults waited for an exchange; exchanged 4K {} ({} ms) + 2M {} ({} ms) + 1G {} ({} ms) pairs in {elapsed_ms} ms; {allocated} frames allocated meanwhile; {errors} checksum errors) ",
        x.done[0],
        x.ms[0],
        x.done[1],
        x.ms[1],
        x.done[2],
        x.ms[2],
    );
    check!(
        errors == 0,
        "{errors} checksum errors, first: {first_error:?}"
    );
    check!(
        x.failed == 0,
        "{} exchanges failed, first: {:?}",
        x.failed,
        x.first_failure
    );
    check!(
        enough(&x),
        "only 4K {} + 2M {} + 1G {} exchanges within {RUN_MS} ms",
        x.done[0],
        x.done[1],
        x.done[2]
    );
    check_eq!(allocated, 0);
    check!(
        writers.iter().all(|w| w.updates > 0),
        "a writer never wrote"
    );
    check!(waits > 0, "no writer ever ran into an exchange");
    check!(mm.rmap_audit().is_ok(), "{:?}", mm.rmap_audit());
    drop(writers);
    drop(blocks);
    env.teardown()?;
    audits(mm)?;
    check_eq!(available(), before);
    if gigs == 0 {
        skip!(
            "4 KiB and 2 MiB exchanges under writers passed; fewer than 2 free 1 GiB blocks for the 1 GiB exchanges"
        );
    }
    Ok(())
}
