//! Contiguity generation under writers, with memory so tight that pages can only trade
//! places: every free frame is taken away ([`crate::vm::squeeze`]) but one 2 MiB block F,
//! into which three 4 KiB VMAs are faulted interleaved (private in A, private in B, and a
//! region shared by A and B), and three adjacent 2 MiB blocks G1 G2 G3 holding a 2 MiB
//! VMA D of A in reverse order (D[1] at G1, D[0] at G3) around a 2 MiB VMA E of B at G2.
//! The only windows without blocked frames are F and G, so every misplaced page is put in
//! place by exchange with the page of another VMA (or its own) that sits at its target.
//!
//! Three writers keep checking and rewriting slots in every one of those pages while this
//! CPU makes D and the 4 KiB VMAs contiguous, then scrambles them again by exchanges, for
//! several rounds. Every call must return a complete report without failed pages and
//! with `frames_allocated_by_exchange == 0`, and leave each VMA one chunk.

use super::writers::{self, Block, Slot, Writer};
use super::{
    audits, available, block_at, private, shared, tag, tagged, Env, KernelMm, Space, BASE, G1, K4,
    M2,
};
use crate::arch::percpu;
use crate::harness::{TestContext, TestError, TestResult};
use crate::mem::tests::Rng;
use crate::tlb::tests::Helpers;
use crate::vm::squeeze::{self, Squeeze};
use crate::{check, check_eq, skip, sprint};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use mm::base::addr::Pfn;
use mm::mapping::vma::HugePolicy;
use mm::ops::contig::{ContigOptions, ContigReport};

/// Pages of the private 4 KiB VMA of A, and of B.
const PRIVATE: u64 = 112;
/// Pages of the shared 4 KiB region.
const SHARED: u64 = 256;
/// Where the three 4 KiB VMAs start: congruent modulo 2 MiB with the places their
/// windows in F can take one after the other (A at F, B at F + 112, S at F + 224).
const A_PRIV: u64 = BASE;
const B_PRIV: u64 = BASE + PRIVATE * K4;
const S_IN_A: u64 = BASE + 2 * PRIVATE * K4;
const S_IN_B: u64 = BASE + 4 * G1;
/// D (two 2 MiB pages) in A and E (one) in B.
const D: u64 = BASE + G1;
const E: u64 = BASE + G1;
/// Rounds of contiguity generation (the first on the pages as faulted, each later one
/// after a scramble).
const ROUNDS: usize = 4;
/// Calls per VMA and round before a VMA that is still not one chunk is a failure.
const MAX_CALLS: usize = 8;
/// Pairs of 4 KiB pages exchanged by each scramble.
const SCRAMBLE: usize = 96;
/// 2 MiB blocks the scenario needs: F, G1-G3.
const PAGES_2M: u64 = 512;

/// The scenario, set up with memory squeezed.
struct Tight {
    a: Arc<Space>,
    b: Arc<Space>,
    /// Every 4 KiB page once (the shared ones through A).
    pages: Vec<Block>,
    f: Pfn,
    g: Pfn,
}

/// The VMAs made contiguous, in order: D first, so that its window takes G before the
/// 4 KiB VMAs look.
fn targets(t: &Tight) -> [(&Arc<Space>, u64, &'static str); 4] {
    [
        (&t.a, D, "D"),
        (&t.a, A_PRIV, "A"),
        (&t.b, B_PRIV, "B"),
        (&t.a, S_IN_A, "S"),
    ]
}

/// Fault `va` (a 2 MiB page) in right after giving back the 2 MiB block `pfn`, and check
/// it landed there.
fn fault_2m_at(env: &Env, sq: &mut Squeeze, s: &Space, va: u64, pfn: Pfn) -> TestResult {
    sq.give_back(pfn, 1)
        .map_err(|e| super::fail(format!("give back {pfn:?}: {e:?}")))?;
    env.populate(s, va, M2)?;
    check_eq!(block_at(s, va).map(|(h, _)| h), Some(pfn));
    Ok(())
}

/// Map the VMAs, squeeze memory, then fault them in where the scenario wants them.
fn setup(env: &mut Env) -> Result<(Tight, Squeeze), TestError> {
    let a = env.space()?;
    let b = env.space()?;
    let region = env.region(SHARED * K4)?;
    env.map(&a, A_PRIV, PRIVATE * K4, private(HugePolicy::Never))?;
    env.map(&b, B_PRIV, PRIVATE * K4, private(HugePolicy::Never))?;
    env.map(&a, S_IN_A, SHARED * K4, shared(&region, HugePolicy::Never))?;
    env.map(&b, S_IN_B, SHARED * K4, shared(&region, HugePolicy::Never))?;
    env.map(&a, D, 2 * M2, private(HugePolicy::Always))?;
    env.map(&b, E, M2, private(HugePolicy::Always))?;
    drop(region);
    let mut sq = Squeeze::take_all().map_err(|e| super::fail(format!("squeeze: {e:?}")))?;
    sq.table_pool()
        .map_err(|e| super::fail(format!("table pool: {e:?}")))?;
    let f = sq.movable_run(1, Pfn(0));
    let g = f.and_then(|f| sq.movable_run(3, f.add(2 * PAGES_2M)));
    let (Some(f), Some(g)) = (f, g) else {
        return Err(super::fail(format!(
            "no movable 2 MiB block F below three adjacent ones G among {} taken",
            sq.blocks()
        )));
    };
    fault_2m_at(env, &mut sq, &a, D, g.add(2 * PAGES_2M))?;
    fault_2m_at(env, &mut sq, &b, E, g.add(PAGES_2M))?;
    fault_2m_at(env, &mut sq, &a, D + M2, g)?;
    sq.give_back(f, 1)
        .map_err(|e| super::fail(format!("give back F: {e:?}")))?;
    // One page of each VMA in turn: their frames interleave in F.
    let mut pages = Vec::new();
    for i in 0..SHARED {
        for (s, start, n) in [
            (&a, A_PRIV, PRIVATE),
            (&b, B_PRIV, PRIVATE),
            (&a, S_IN_A, SHARED),
        ] {
            if i < n {
                env.populate(s, start + i * K4, K4)?;
                pages.push(Block {
                    space: s.clone(),
                    va: start + i * K4,
                });
            }
        }
    }
    for p in &pages {
        let h = block_at(&p.space, p.va).map(|(h, _)| h);
        check!(
            h.is_some_and(|h| h >= f && h < f.add(PAGES_2M)),
            "{:#x} faulted in at {h:?}, outside F {f:?}",
            p.va
        );
    }
    Ok((Tight { a, b, pages, f, g }, sq))
}

/// Writer k's slots: A's private pages split between writers 1 and 3, B's for writer 2,
/// the shared pages split among all three (writer 2 through B), D's subpages for 1 and
/// 3, E's for 2.
fn slots(t: &Tight) -> Vec<Writer> {
    let mut id = 0;
    let mut slot = |page, k| {
        id += 1;
        Slot::new(page, k, id)
    };
    let mut by: [Vec<Slot>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..PRIVATE {
        let k = if i % 2 == 0 { 1 } else { 3 };
        by[k as usize - 1].push(slot(A_PRIV + i * K4, k));
        by[1].push(slot(B_PRIV + i * K4, 2));
    }
    for i in 0..SHARED {
        let k = i % 3 + 1;
        let base = if k == 2 { S_IN_B } else { S_IN_A };
        by[k as usize - 1].push(slot(base + i * K4, k));
    }
    for block in 0..2 {
        for (k, sub) in [(1u64, [0u64, 1, 256]), (3, [2, 300, 511])] {
            for s in sub {
                by[k as usize - 1].push(slot(D + block * M2 + s * K4, k));
            }
        }
    }
    for s in [0u64, 7, 255, 511] {
        by[1].push(slot(E + s * K4, 2));
    }
    let [one, two, three] = by;
    vec![
        Writer::new(t.a.clone(), one),
        Writer::new(t.b.clone(), two),
        Writer::new(t.a.clone(), three),
    ]
}

/// What the contiguity rounds did.
#[derive(Default)]
struct Rounds {
    reports: Vec<(&'static str, ContigReport)>,
    errors: Vec<String>,
    /// Most calls one round needed, per target.
    calls: [usize; 4],
}

/// Where `name` is in [`targets`].
fn targets_index(name: &str) -> usize {
    ["D", "A", "B", "S"]
        .iter()
        .position(|&n| n == name)
        .unwrap_or(0)
}

impl Rounds {
    fn exchanged(&self) -> u64 {
        self.reports.iter().map(|(_, r)| r.exchanged).sum()
    }

    fn moved(&self) -> u64 {
        self.reports.iter().map(|(_, r)| r.moved()).sum()
    }

    /// One round: each target made contiguous, called again while its report says it
    /// is not one chunk yet (at most [`MAX_CALLS`] times), each report checked.
    fn round(&mut self, mm: &KernelMm, t: &Tight, n: usize) {
        for (space, va, name) in targets(t) {
            for call in 1..=MAX_CALLS {
                match mm.make_vma_contiguous(space, va, &ContigOptions::default()) {
                    Ok(r) => {
                        let done = r.complete && r.failed == 0 && r.after.chunks == 1;
                        if r.frames_allocated_by_exchange != 0 || (!done && call == MAX_CALLS) {
                            self.errors
                                .push(format!("round {n}, {name}, call {call}: {r:?}"));
                        }
                        self.calls[targets_index(name)] = self.calls[targets_index(name)].max(call);
                        self.reports.push((name, r));
                        if done {
                            break;
                        }
                    }
                    Err(e) => {
                        self.errors.push(format!("round {n}, {name}: {e}"));
                        break;
                    }
                }
            }
        }
    }

    /// Exchange random pairs of 4 KiB pages, and D's first page with E.
    fn scramble(&mut self, mm: &KernelMm, t: &Tight, rng: &mut Rng) {
        let head = |s: &Space, va| block_at(s, va).map(|(h, _)| h);
        let mut order: Vec<usize> = (0..t.pages.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut pairs: Vec<(Pfn, Pfn)> = order[..2 * SCRAMBLE]
            .chunks(2)
            .filter_map(|c| {
                let (x, y) = (&t.pages[c[0]], &t.pages[c[1]]);
                Some((head(&x.space, x.va)?, head(&y.space, y.va)?))
            })
            .collect();
        pairs.extend(head(&t.a, D).zip(head(&t.b, E)));
        for (r, p) in mm.exchange_batch(&pairs).iter().zip(&pairs) {
            if let Err(e) = r {
                self.errors.push(format!("scramble exchange {p:?}: {e}"));
            }
        }
    }
}

pub(super) fn contig_under_writers(ctx: &TestContext) -> TestResult {
    let me = percpu::cpu_index();
    let writer_cpus: Vec<u32> = percpu::online()
        .iter()
        .filter(|&c| c != me)
        .take(3)
        .collect();
    if writer_cpus.len() < 3 {
        skip!(
            "needs 4 CPUs: writers on 3, contiguity generation on a 4th ({} online)",
            writer_cpus.len() + 1
        );
    }
    squeeze::reserve_heap().map_err(|e| super::fail(format!("reserve_heap: {e:?}")))?;
    let before = available();
    let claimed_before = super::need_mm()?.claimed_windows();
    let mut env = Env::new()?;
    let mm = env.mm;
    let (t, sq) = setup(&mut env)?;
    crate::check_eq!(super::activate(&t.a), Ok(()));
    for (i, p) in t.pages.iter().enumerate() {
        check!(
            super::activate(&p.space).is_ok() && tag(p.va, K4, i as u64),
            "tagging {:#x}",
            p.va
        );
    }
    super::deactivate();
    let mut helpers = Helpers::default();
    writers::start(&mut helpers, slots(&t), &writer_cpus)?;
    let mut rng = Rng::new(ctx.seed);
    let mut rounds = Rounds::default();
    for n in 0..ROUNDS {
        if n > 0 {
            rounds.scramble(mm, &t, &mut rng);
        }
        rounds.round(mm, &t, n);
        if !rounds.errors.is_empty() {
            break;
        }
    }
    let writers = writers::finish(helpers);
    let (updates, errors, first_error) = writers::tally(&writers);
    let mut lost = Vec::new();
    for (i, p) in t.pages.iter().enumerate() {
        if super::activate(&p.space).is_err() || !tagged(p.va, K4, i as u64) {
            lost.push(p.va);
        }
    }
    super::deactivate();
    let first: Vec<&(&str, ContigReport)> = ["D", "A", "B", "S"]
        .iter()
        .filter_map(|n| rounds.reports.iter().find(|(name, _)| name == n))
        .collect();
    sprint!(
        "(F {:?}, G {:?}; {ROUNDS} rounds: {} pages moved, {} by exchange, most calls per round (D, A, B, S) {:?}; first call {}; 3 writers on CPUs {writer_cpus:?}, {updates} updates, {errors} checksum errors) ",
        t.f,
        t.g,
        rounds.moved(),
        rounds.exchanged(),
        rounds.calls,
        first
            .iter()
            .map(|(name, r)| format!(
                "{name}: {} chunks -> {}, {} misplaced, {} migrated, {} exchanged, {} displaced",
                r.before.chunks, r.after.chunks, r.misplaced, r.migrated, r.exchanged, r.displaced
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    check!(
        rounds.errors.is_empty(),
        "{} bad results, first: {:?}",
        rounds.errors.len(),
        rounds.errors.first()
    );
    check!(
        errors == 0,
        "{errors} checksum errors, first: {first_error:?}"
    );
    check!(lost.is_empty(), "pages lost their tags: {lost:x?}");
    check!(rounds.exchanged() > 0, "no page was exchanged");
    check!(
        first.iter().all(|(_, r)| r.misplaced > 0),
        "a VMA had nothing to move in the first round: the scenario is not what it claims"
    );
    check!(
        writers.iter().all(|w| w.updates > 0),
        "a writer never wrote"
    );
    check!(mm.rmap_audit().is_ok(), "{:?}", mm.rmap_audit());
    drop(writers);
    drop(t);
    sq.release()
        .map_err(|e| super::fail(format!("release the squeeze: {e:?}")))?;
    env.teardown()?;
    audits(mm)?;
    check_eq!(mm.claimed_windows(), claimed_before);
    check_eq!(available(), before);
    Ok(())
}
