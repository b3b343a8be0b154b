//! No CPU keeps a 4 KiB (2 MiB) translation of a range promoted to 2 MiB (1 GiB), nor a
//! 2 MiB (1 GiB) translation of a page split to 4 KiB (2 MiB).
//!
//! The technique of the shootdown tests (`tlb::no_stale_translation_*`), adapted: there a
//! page holding an old value is unmapped and its frame reused with a new value, and a
//! reader that reads the new value through the old address read through a translation
//! the shootdown should have removed. A promotion or a split moves no data, so the old
//! and new translations lead to the same bytes; instead, once the operation returned, the
//! test itself remaps the range to other frames holding new values, without any flush
//! (as `Changing` does in the shootdown tests): a reader whose translations the
//! operation's shootdown dropped walks the tables again and reads the new values, a
//! reader that still reads an old value did so through a translation of the old size
//! that survived the operation.
//!
//! Each round: readers on the other CPUs (up to three) load the address space, read
//! every probe word (the translations are now in their TLBs, of the size before the
//! operation) and wait, touching no user memory; this CPU promotes or splits, remaps the
//! probes' leaves to the replacement frames behind the memory manager's back, and lets
//! the readers read again; then it puts the leaves back, the readers unload the space
//! (a CR3 load drops what they cached) and the range goes back to its first shape. The
//! round trip must give the same mapping (size and physical base) every time.

use super::super::{audits, available, fail, value, Env, KernelMm, Space, BASE};
use super::{huge_page, leaf, need_1g, other_cpus, split_page};
use crate::arch::probe;
use crate::arch::timer::Deadline;
use crate::harness::{TestContext, TestResult};
use crate::mem::frames;
use crate::mem::physmap::PHYS;
use crate::tlb::tests::Helpers;
use crate::vm::{activate, deactivate};
use crate::{check, check_eq, sprint};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use mm::backend::phys::PhysMem;
use mm::base::addr::PageSize;
use mm::frame::buddy::MigrateType;
use mm::paging::{Entry, ADDR_MASK};
use x86_64::PhysAddr;

/// Rounds at 2 MiB and at 1 GiB.
const ROUNDS_2M: u64 = 40;
const ROUNDS_1G: u64 = 4;
/// Passes over the probes each reader makes after the remap, at least.
const PASSES: u64 = 8;
/// How long a round waits for its readers.
const WAIT_MS: u64 = 10_000;

/// The operation under test.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    /// 512 leaves of the next size down become one leaf of the size.
    Promote,
    /// One leaf of the size becomes 512 of the next size down.
    Split,
}

/// What the readers saw after the remap, summed over rounds.
#[derive(Default)]
struct Seen {
    warm: AtomicU64,
    go: AtomicBool,
    passes: AtomicU64,
    fresh: AtomicU64,
    stale: AtomicU64,
    faults: AtomicU64,
    other: AtomicU64,
    errors: AtomicU64,
}

/// The probe words: their offsets in the range, one in each of four different leaves
/// of the smaller size (first, second, middle, last).
fn offsets(size: PageSize) -> [u64; 4] {
    let c = size.bytes() / 512;
    [8, c + 16, 255 * c + c / 2, 511 * c + c - 8]
}

/// The table word of the leaf that maps `va` under `root`, with the leaf's size, read
/// from the raw tables as the MMU walks them.
fn leaf_word(root: PhysAddr, va: u64) -> Option<(&'static AtomicU64, PageSize)> {
    let mut table = root;
    for level in (1..=4u8).rev() {
        let index = (va >> (12 + 9 * (u32::from(level) - 1))) & 511;
        let word = PHYS.word(table + index * 8);
        let entry = Entry::from_raw(word.load(Ordering::Acquire));
        if !entry.is_present() {
            return None;
        }
        if let Some(size) = entry.leaf_size(level) {
            return Some((word, size));
        }
        table = entry.table_addr();
    }
    None
}

/// Point the leaf of `size` that maps `va` from `from` to `to` (frames of `size`), no
/// flush: only the address bits change.
fn remap(space: &Space, va: u64, size: PageSize, from: u64, to: u64) -> Result<(), String> {
    let mask = ADDR_MASK & !(size.bytes() - 1);
    let (word, found) = leaf_word(space.root(), va).ok_or(format!("{va:#x}: no leaf"))?;
    if found != size {
        return Err(format!("{va:#x}: a {found:?} leaf, expected {size:?}"));
    }
    let mut cur = word.load(Ordering::Acquire);
    loop {
        if cur & mask != from {
            return Err(format!("{va:#x}: leaf {cur:#x} does not map {from:#x}"));
        }
        match word.compare_exchange(cur, (cur & !mask) | to, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(()),
            Err(now) => cur = now,
        }
    }
}

/// Remap every leaf of `remaps` to its replacement (`forward`) or back; all or none.
fn remap_all(
    space: &Space,
    remaps: &[(u64, PageSize, u64, u64)],
    forward: bool,
) -> Result<(), String> {
    let ends = |&(_, _, from, to): &(u64, PageSize, u64, u64)| {
        if forward {
            (from, to)
        } else {
            (to, from)
        }
    };
    for (i, r) in remaps.iter().enumerate() {
        let (from, to) = ends(r);
        if let Err(e) = remap(space, r.0, r.1, from, to) {
            for done in &remaps[..i] {
                let (from, to) = ends(done);
                let _ = remap(space, done.0, done.1, to, from);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// The leaves the test remaps after the operation: (va, size, frame of the range,
/// replacement frame), and the replacement frames' order.
fn remapped(op: Op, size: PageSize, pa: u64, blocks: &[u64]) -> Vec<(u64, PageSize, u64, u64)> {
    match op {
        Op::Promote => alloc::vec![(BASE, size, pa, blocks[0])],
        Op::Split => {
            let child = size.smaller().unwrap_or(PageSize::Size4K);
            let c = child.bytes();
            offsets(size)
                .iter()
                .zip(blocks)
                .map(|(&o, &b)| (BASE + o / c * c, child, pa + o / c * c, b))
                .collect()
        }
    }
}

/// One reader of one round: warm the translations, wait for `go`, then read the probes
/// until `stop`, sorting what each read returned.
fn reader(space: &Arc<Space>, probes: &[(u64, u64, u64)], seen: &Seen, stop: &AtomicBool) {
    if activate(space).is_err() {
        seen.errors.fetch_add(1, Ordering::Relaxed);
        return;
    }
    for &(va, _, _) in probes {
        core::hint::black_box(probe::read_u64(va));
    }
    seen.warm.fetch_add(1, Ordering::AcqRel);
    while !seen.go.load(Ordering::Acquire) && !stop.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    while !stop.load(Ordering::Acquire) {
        for &(va, old, new) in probes {
            let counter = match probe::read_u64(va) {
                Some(v) if v == new => &seen.fresh,
                Some(v) if v == old => &seen.stale,
                Some(_) => &seen.other,
                None => &seen.faults,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        seen.passes.fetch_add(1, Ordering::AcqRel);
    }
    deactivate();
}

/// Spin until `counter` reaches `n`, at most [`WAIT_MS`].
fn wait_for(counter: &AtomicU64, n: u64, what: &str) -> TestResult {
    let deadline = Deadline::after_ms(WAIT_MS);
    while counter.load(Ordering::Acquire) < n {
        check!(
            !deadline.expired(),
            "{what}: {} of {n} after {WAIT_MS} ms",
            counter.load(Ordering::Acquire)
        );
        core::hint::spin_loop();
    }
    Ok(())
}

/// Do `op` on the range (in its first shape), then bring it back to that shape: the
/// mapping must be the one it was.
fn operate(mm: &KernelMm, space: &Space, op: Op, size: PageSize, pa: u64) -> Result<(), String> {
    let child = size.smaller().unwrap_or(PageSize::Size4K);
    match op {
        Op::Promote => mm
            .promote(space, BASE, size)
            .map_err(|e| format!("promote: {e}")),
        Op::Split => match mm.split_huge(space, BASE) {
            Ok(c) if c == child => Ok(()),
            other => Err(format!("split: {other:?}")),
        },
    }?;
    let want = if op == Op::Promote { size } else { child };
    match leaf(space, BASE) {
        Some((s, p)) if s == want && p == pa => Ok(()),
        other => Err(format!(
            "after {op:?}: {other:?}, expected ({want:?}, {pa:#x})"
        )),
    }
}

/// The reverse of [`operate`].
fn restore(mm: &KernelMm, space: &Space, op: Op, size: PageSize, pa: u64) -> Result<(), String> {
    let back = if op == Op::Promote {
        Op::Split
    } else {
        Op::Promote
    };
    operate(mm, space, back, size, pa)
}

/// What every round of one test works on.
struct Setup<'a> {
    mm: &'a KernelMm,
    space: &'a Arc<Space>,
    readers: &'a [u32],
    op: Op,
    size: PageSize,
    /// The range's physical base.
    pa: u64,
    /// The replacement frames.
    blocks: &'a [u64],
    seen: &'a Arc<Seen>,
}

/// Round `n` (see the module doc).
fn round(t: &Setup, n: u64) -> TestResult {
    let Setup {
        mm,
        space,
        readers,
        op,
        size,
        pa,
        blocks,
        seen,
    } = *t;
    // Old values in place, new ones in the replacement frames at the same offsets.
    let remaps = remapped(op, size, pa, blocks);
    let mut probes = Vec::new();
    for (i, &o) in offsets(size).iter().enumerate() {
        let (old, new) = (value(n, i as u64, 1), value(n, i as u64, 2));
        PHYS.word(PhysAddr::new(pa + o))
            .store(old, Ordering::SeqCst);
        let (va, _, _, to) = match op {
            Op::Promote => remaps[0],
            Op::Split => remaps[i],
        };
        PHYS.word(PhysAddr::new(to + (BASE + o - va)))
            .store(new, Ordering::SeqCst);
        probes.push((BASE + o, old, new));
    }
    seen.go.store(false, Ordering::Release);
    let warm = seen.warm.load(Ordering::Acquire);
    let mut helpers = Helpers::default();
    for &cpu in readers {
        let (space, probes, seen) = (space.clone(), probes.clone(), seen.clone());
        helpers.start(cpu, move |stop| reader(&space, &probes, &seen, stop))?;
    }
    wait_for(&seen.warm, warm + readers.len() as u64, "readers warmed")?;
    operate(mm, space, op, size, pa).map_err(fail)?;
    remap_all(space, &remaps, true).map_err(fail)?;
    let passes = seen.passes.load(Ordering::Acquire);
    seen.go.store(true, Ordering::Release);
    let waited = wait_for(
        &seen.passes,
        passes + PASSES * readers.len() as u64,
        "reader passes",
    );
    drop(helpers.finish());
    // The readers unloaded the space: no CPU holds the remapped translations now.
    remap_all(space, &remaps, false).map_err(fail)?;
    waited?;
    restore(mm, space, op, size, pa).map_err(fail)
}

/// The test of `op` at `size` over `rounds` rounds.
fn stale(op: Op, size: PageSize, rounds: u64) -> TestResult {
    let readers: Vec<u32> = other_cpus(1, "readers on other CPUs hold the translations")?
        .into_iter()
        .take(3)
        .collect();
    let before = available();
    let mut env = Env::new()?;
    let mm = env.mm;
    let (replacement, count) = match op {
        Op::Promote => (size, 1),
        Op::Split => (size.smaller().unwrap_or(PageSize::Size4K), 4),
    };
    let space = env.space()?;
    let pa = match op {
        Op::Promote => split_page(&env, &space, BASE, size)?,
        Op::Split => huge_page(&env, &space, BASE, size)?,
    };
    let mut blocks = Vec::new();
    for _ in 0..count {
        match frames::alloc(replacement.order(), MigrateType::Movable) {
            Ok(pfn) => blocks.push(pfn.addr().as_u64()),
            Err(e) => {
                free_blocks(&blocks, replacement);
                return Err(fail(format!(
                    "no free {replacement:?} block to remap to: {e:?}"
                )));
            }
        }
    }
    let seen = Arc::new(Seen::default());
    let setup = Setup {
        mm,
        space: &space,
        readers: &readers,
        op,
        size,
        pa,
        blocks: &blocks,
        seen: &seen,
    };
    let mut result = Ok(());
    for n in 0..rounds {
        result = round(&setup, n);
        if result.is_err() {
            break;
        }
    }
    free_blocks(&blocks, replacement);
    drop(space);
    let torn = env.teardown();
    result?;
    torn?;
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    sprint!(
        "({rounds} rounds of {op:?} at {size:?}, {} readers: {} fresh reads, {} stale, {} faults, {} other) ",
        readers.len(),
        count(&seen.fresh),
        count(&seen.stale),
        count(&seen.faults),
        count(&seen.other)
    );
    check!(
        count(&seen.stale) == 0,
        "{} reads of an old value through a translation from before the {op:?}",
        count(&seen.stale)
    );
    check_eq!(
        (count(&seen.faults), count(&seen.other), count(&seen.errors)),
        (0, 0, 0)
    );
    check!(
        count(&seen.fresh) > 0,
        "no reader read through the remapped leaves"
    );
    audits(mm)?;
    check_eq!(available(), before);
    Ok(())
}

fn free_blocks(blocks: &[u64], size: PageSize) {
    for &b in blocks {
        if let Err(e) = frames::free(PhysAddr::new(b), size.order()) {
            log::error!("stale test: freeing {b:#x}: {e:?}");
        }
    }
}

pub(super) fn after_promotion_2m(_: &TestContext) -> TestResult {
    stale(Op::Promote, PageSize::Size2M, ROUNDS_2M)
}

pub(super) fn after_split_2m(_: &TestContext) -> TestResult {
    stale(Op::Split, PageSize::Size2M, ROUNDS_2M)
}

pub(super) fn after_promotion_1g(_: &TestContext) -> TestResult {
    // The range's 1 GiB block and the one it is remapped to.
    need_1g(2)?;
    stale(Op::Promote, PageSize::Size1G, ROUNDS_1G)
}

pub(super) fn after_split_1g(_: &TestContext) -> TestResult {
    need_1g(1)?;
    stale(Op::Split, PageSize::Size1G, ROUNDS_1G)
}
