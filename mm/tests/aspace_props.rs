//! Model-based property test of address spaces, VMAs and the reverse map.
//!
//! Random sequences of map (private or shared, 4K/2M/1G policies, writable or not),
//! partial unmap, protect, fault, write, populate, pin/unpin and migrate (single and
//! batch, to any frame, a given frame or a node) run against two address spaces sharing
//! one region, over an arena-backed frame source, and against a simple model:
//!
//! - the VMAs of each space (a `BTreeMap` from start to end and attributes, split the
//!   same way; compared after merging adjacent pieces that continue each other);
//! - the contents: the value last written at each page written through a private
//!   mapping (keyed by space and address) or a shared one (keyed by region page);
//! - the pages that were faulted or written and must stay mapped until unmapped;
//! - the pins held.
//!
//! After every step: each result is the one the model allows (typed errors leave the
//! model unchanged), every touched page is mapped and holds its value, every leaf's first
//! word holds the model's value (or zero), every frame a step frees was first shot down
//! at every address that mapped it before the step, on every CPU that had that space
//! loaded, and `rmap_audit()` and the buddy `audit()` are clean. At the end everything is
//! torn down, the allocator must have every frame back and no flush leaked a frame.
//!
//! Two configurations: a 64 MiB arena with a 16 MiB window per space (4K and 2M pages,
//! many cases), and 3 GiB of sparse memory with an 8 GiB window (1G pages, fewer cases).
#![cfg(feature = "std")]

use mm::aspace::leaked_frames;
use mm::aspace::testing::{
    cached_leaves, read_user, uncovered_free, with_env, write_user, Env, SparseMem,
};
use mm::aspace::{AddressSpace, SpaceError};
use mm::backend::phys::{Arena, PhysMem};
use mm::backend::source::FrameSource;
use mm::base::addr::Pfn;
use mm::frame::node::NodeId;
use mm::mapping::region::SharedRegion;
use mm::mapping::vma::{HugePolicy, SharedBacking, VmaFlags};
use mm::ops::fault::{FaultError, FaultOutcome};
use mm::ops::migrate::{Destination, MigrateError};

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const K4: u64 = 4096;
const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;

/// One test machine shape.
struct Config {
    frames: u64,
    /// First address of each space's window.
    base: u64,
    /// Window length.
    window: u64,
    /// Alignments addresses are drawn at.
    units: &'static [u64],
    /// Lengths drawn.
    lens: &'static [u64],
    region: u64,
}

const SMALL: Config = Config {
    frames: 16384,
    base: 0x4000_0000,
    window: 16 << 20,
    units: &[K4, M2, M2, 4 * M2],
    lens: &[K4, 2 * K4, 5 * K4, M2 - K4, M2, M2 + K4, 2 * M2, 4 * M2],
    region: 8 << 20,
};

const LARGE: Config = Config {
    frames: 3 * G1 / K4,
    base: G1,
    window: 8 * G1,
    units: &[M2, G1, G1],
    lens: &[K4, M2, G1, G1, G1 + M2, 2 * G1],
    region: 2 * G1,
};

#[derive(Clone, Debug)]
enum Op {
    Map {
        s: usize,
        at: u64,
        len: u64,
        huge: u8,
        writable: bool,
        shared: Option<u64>,
    },
    Unmap {
        s: usize,
        at: u64,
        len: u64,
    },
    Protect {
        s: usize,
        at: u64,
        len: u64,
        writable: bool,
    },
    Fault {
        s: usize,
        at: u64,
        write: bool,
    },
    Write {
        s: usize,
        at: u64,
        token: u64,
    },
    Populate {
        s: usize,
        at: u64,
        len: u64,
    },
    Migrate {
        s: usize,
        pick: usize,
        dest: u8,
        frame: u64,
    },
    Batch {
        picks: Vec<(usize, usize)>,
    },
    Pin {
        s: usize,
        pick: usize,
    },
    Unpin,
}

fn op() -> impl Strategy<Value = Op> {
    let s = 0..2usize;
    prop_oneof![
        3 => (s.clone(), any::<u64>(), any::<u64>(), 0..4u8, any::<bool>(), proptest::option::weighted(0.3, any::<u64>()))
            .prop_map(|(s, at, len, huge, writable, shared)| Op::Map { s, at, len, huge, writable, shared }),
        1 => (s.clone(), any::<u64>(), any::<u64>()).prop_map(|(s, at, len)| Op::Unmap { s, at, len }),
        1 => (s.clone(), any::<u64>(), any::<u64>(), any::<bool>())
            .prop_map(|(s, at, len, writable)| Op::Protect { s, at, len, writable }),
        3 => (s.clone(), any::<u64>(), any::<bool>()).prop_map(|(s, at, write)| Op::Fault { s, at, write }),
        3 => (s.clone(), any::<u64>(), 1..u64::MAX).prop_map(|(s, at, token)| Op::Write { s, at, token }),
        1 => (s.clone(), any::<u64>(), any::<u64>()).prop_map(|(s, at, len)| Op::Populate { s, at, len }),
        3 => (s.clone(), any::<usize>(), 0..4u8, any::<u64>())
            .prop_map(|(s, pick, dest, frame)| Op::Migrate { s, pick, dest, frame }),
        1 => proptest::collection::vec((0..2usize, any::<usize>()), 1..5).prop_map(|picks| Op::Batch { picks }),
        1 => (s, any::<usize>()).prop_map(|(s, pick)| Op::Pin { s, pick }),
        1 => Just(Op::Unpin),
    ]
}

/// Attributes of a model VMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MVma {
    end: u64,
    huge: HugePolicy,
    writable: bool,
    /// Region offset of the start, if shared.
    off: Option<u64>,
}

impl MVma {
    fn advanced(self, delta: u64) -> MVma {
        MVma {
            off: self.off.map(|o| o + delta),
            ..self
        }
    }
}

/// Where a page's value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Loc {
    Private(usize, u64),
    Region(u64),
}

#[derive(Default)]
struct Model {
    vmas: [BTreeMap<u64, MVma>; 2],
    values: BTreeMap<Loc, u64>,
    touched: BTreeSet<(usize, u64)>,
    pins: Vec<Pfn>,
}

impl Model {
    fn find(&self, s: usize, va: u64) -> Option<(u64, MVma)> {
        self.vmas[s]
            .range(..=va)
            .next_back()
            .filter(|(_, v)| va < v.end)
            .map(|(&k, &v)| (k, v))
    }

    fn overlaps(&self, s: usize, start: u64, end: u64) -> bool {
        self.vmas[s].iter().any(|(&k, v)| k < end && start < v.end)
    }

    fn covers(&self, s: usize, start: u64, end: u64) -> bool {
        let mut at = start;
        while at < end {
            match self.find(s, at) {
                Some((_, v)) => at = v.end,
                None => return false,
            }
        }
        true
    }

    fn split_at(&mut self, s: usize, at: u64) {
        if let Some((k, v)) = self.find(s, at) {
            if k < at {
                self.vmas[s].insert(k, MVma { end: at, ..v });
                self.vmas[s].insert(at, v.advanced(at - k));
            }
        }
    }

    fn remove(&mut self, s: usize, start: u64, end: u64) {
        self.split_at(s, start);
        self.split_at(s, end);
        let keys: Vec<u64> = self.vmas[s].range(start..end).map(|(&k, _)| k).collect();
        for k in keys {
            self.vmas[s].remove(&k);
        }
        self.values.retain(
            |l, _| !matches!(*l, Loc::Private(ls, va) if ls == s && (start..end).contains(&va)),
        );
        self.touched
            .retain(|&(ts, va)| ts != s || !(start..end).contains(&va));
    }

    fn set_writable(&mut self, s: usize, start: u64, end: u64, writable: bool) {
        self.split_at(s, start);
        self.split_at(s, end);
        for (_, v) in self.vmas[s].range_mut(start..end) {
            v.writable = writable;
        }
    }

    fn loc(&self, s: usize, va: u64) -> Option<Loc> {
        let page = va & !(K4 - 1);
        let (k, v) = self.find(s, page)?;
        Some(match v.off {
            Some(off) => Loc::Region((off + page - k) / K4),
            None => Loc::Private(s, page),
        })
    }

    /// The VMAs of `s`, adjacent continuations merged.
    fn normalized(&self, s: usize) -> Vec<(u64, MVma)> {
        normalize(self.vmas[s].iter().map(|(&k, &v)| (k, v)).collect())
    }
}

fn normalize(list: Vec<(u64, MVma)>) -> Vec<(u64, MVma)> {
    let mut out: Vec<(u64, MVma)> = Vec::new();
    for (k, v) in list {
        if let Some((pk, pv)) = out.last_mut() {
            let cont = pv.end == k
                && pv.huge == v.huge
                && pv.writable == v.writable
                && match (pv.off, v.off) {
                    (None, None) => true,
                    (Some(a), Some(b)) => a + (k - *pk) == b,
                    _ => false,
                };
            if cont {
                pv.end = v.end;
                continue;
            }
        }
        out.push((k, v));
    }
    out
}

fn real_vmas<M: PhysMem>(space: &AddressSpace<'_, M>) -> Vec<(u64, MVma)> {
    normalize(
        space
            .vmas()
            .iter()
            .map(|v| {
                (
                    v.start,
                    MVma {
                        end: v.end,
                        huge: v.flags.huge,
                        writable: v.flags.writable,
                        off: v.flags.shared.as_ref().map(|s| s.offset),
                    },
                )
            })
            .collect(),
    )
}

/// A page-aligned address in the window, drawn at one of the config's alignments.
fn addr(cfg: &Config, r: u64) -> u64 {
    let unit = cfg.units[(r % cfg.units.len() as u64) as usize];
    let slots = cfg.window / unit;
    let k = (r >> 8) % slots;
    let jitter = [0, 0, K4, unit.saturating_sub(K4)][((r >> 40) % 4) as usize];
    cfg.base + (k * unit + jitter) % cfg.window
}

/// A range `[at, at + len)` inside the window.
fn range(cfg: &Config, r_at: u64, r_len: u64) -> (u64, u64) {
    let at = addr(cfg, r_at);
    let len = cfg.lens[(r_len % cfg.lens.len() as u64) as usize];
    (at, len.min(cfg.base + cfg.window - at))
}

/// A page-aligned address, most of the time inside one of the VMAs of space `s`.
fn target(cfg: &Config, model: &Model, s: usize, r: u64) -> u64 {
    let vmas: Vec<(u64, MVma)> = model.vmas[s].iter().map(|(&k, &v)| (k, v)).collect();
    if vmas.is_empty() || r % 8 == 0 {
        return addr(cfg, r);
    }
    let (start, v) = vmas[((r >> 8) % vmas.len() as u64) as usize];
    let pages = (v.end - start) / K4;
    let page = match (r >> 16) % 4 {
        0 => 0,
        1 => pages - 1,
        _ => (r >> 24) % pages,
    };
    start + page * K4
}

/// A range starting at a [`target`] address.
fn target_range(cfg: &Config, model: &Model, s: usize, r_at: u64, r_len: u64) -> (u64, u64) {
    let at = target(cfg, model, s, r_at);
    let len = cfg.lens[(r_len % cfg.lens.len() as u64) as usize];
    (at, len.min(cfg.base + cfg.window - at))
}

const POLICIES: [HugePolicy; 4] = [
    HugePolicy::Never,
    HugePolicy::Always,
    HugePolicy::Always,
    HugePolicy::OnRequest,
];

fn run<M: PhysMem>(cfg: &Config, mem: M, ops: &[Op]) -> Result<(), TestCaseError> {
    with_env(mem, cfg.frames, &[(0, cfg.frames, 0)], |env| {
        run_in(cfg, env, ops)
    })
}

fn run_in<'a, M: PhysMem>(cfg: &Config, env: &Env<'a, M>, ops: &[Op]) -> Result<(), TestCaseError> {
    let initial_free = env.free_frames();
    let spaces = [env.mm.new_space().unwrap(), env.mm.new_space().unwrap()];
    spaces[0].cpus().insert(0);
    spaces[1].cpus().insert(1);
    let region = SharedRegion::new(cfg.region).unwrap();
    let mut model = Model::default();
    for op in ops {
        let cached = cached_leaves(&[&spaces[0], &spaces[1]]);
        env.log.take();
        step(cfg, env, &spaces, &region, &mut model, op)?;
        let uncovered = uncovered_free(&cached, &env.log.take());
        prop_assert!(uncovered.is_none(), "{:?}: {:?}", op, uncovered);
        check(env, &spaces, &model)?;
    }
    for pfn in model.pins.drain(..) {
        env.mm.unpin(pfn).unwrap();
    }
    for s in &spaces {
        env.mm.unmap(s, 0, cfg.base + cfg.window).unwrap();
        s.cpus().remove(0);
        s.cpus().remove(1);
        env.mm.destroy_space(s).unwrap();
    }
    prop_assert!(env.mm.release_region(&region).is_ok());
    prop_assert_eq!(leaked_frames(), 0, "every flush completed");
    env.audit();
    prop_assert_eq!(env.free_frames(), initial_free, "every frame came back");
    Ok(())
}

/// The leaf of space `s` picked by `pick`, and the head of its block.
fn pick_leaf<'a, M: PhysMem>(
    env: &Env<'a, M>,
    space: &AddressSpace<'a, M>,
    pick: usize,
) -> Option<(u64, Pfn)> {
    let leaves = space.leaves();
    if leaves.is_empty() {
        return None;
    }
    let (va, t) = leaves[pick % leaves.len()];
    let head = env.frames.frame_table().head_of(Pfn::containing(t.pa))?;
    Some((va.as_u64(), head))
}

fn step<'a, M: PhysMem>(
    cfg: &Config,
    env: &Env<'a, M>,
    spaces: &[Arc<AddressSpace<'a, M>>; 2],
    region: &Arc<SharedRegion>,
    model: &mut Model,
    op: &Op,
) -> Result<(), TestCaseError> {
    let mm = env.mm;
    match *op {
        Op::Map {
            s,
            at,
            len,
            huge,
            writable,
            shared,
        } => {
            let (start, len) = range(cfg, at, len);
            let huge = POLICIES[huge as usize];
            let off =
                shared.map(|r| (r % (cfg.region / M2)) * M2 + if r & 1 == 1 { K4 } else { 0 });
            let flags = VmaFlags {
                shared: off.map(|offset| SharedBacking {
                    region: region.clone(),
                    offset,
                }),
                ..VmaFlags::private(huge, writable)
            };
            let result = mm.map_anon(&spaces[s], start, len, flags);
            let expected = if off.is_some_and(|o| o + len > cfg.region) {
                Err(SpaceError::RegionBounds)
            } else if model.overlaps(s, start, start + len) {
                Err(SpaceError::Overlap)
            } else {
                Ok(())
            };
            prop_assert_eq!(result, expected);
            if result.is_ok() {
                model.vmas[s].insert(
                    start,
                    MVma {
                        end: start + len,
                        huge,
                        writable,
                        off,
                    },
                );
            }
        }
        Op::Unmap { s, at, len } => {
            let (start, len) = target_range(cfg, model, s, at, len);
            match mm.unmap(&spaces[s], start, len) {
                Ok(()) => model.remove(s, start, start + len),
                // Splitting a huge leaf at a boundary needs page-table frames the arena
                // may no longer have: a typed refusal, checked against the model below.
                Err(SpaceError::OutOfMemory) => {}
                Err(e) => prop_assert!(false, "unmap failed: {:?}", e),
            }
        }
        Op::Protect {
            s,
            at,
            len,
            writable,
        } => {
            let (start, len) = target_range(cfg, model, s, at, len);
            let result = mm.protect(&spaces[s], start, len, writable);
            if model.covers(s, start, start + len) {
                prop_assert_eq!(result, Ok(()));
                model.set_writable(s, start, start + len, writable);
            } else {
                prop_assert_eq!(result, Err(SpaceError::NotMapped));
            }
        }
        Op::Fault { s, at, write } => {
            let va = target(cfg, model, s, at) + (at >> 50) % K4;
            fault(env, &spaces[s], model, s, va, write)?;
        }
        Op::Write { s, at, token } => {
            let va = target(cfg, model, s, at);
            if fault(env, &spaces[s], model, s, va, true)? {
                prop_assert!(write_user(env.mem, &spaces[s], va, token));
                let loc = model.loc(s, va).unwrap();
                model.values.insert(loc, token);
            }
        }
        Op::Populate { s, at, len } => {
            let (start, len) = target_range(cfg, model, s, at, len);
            let result = mm.populate(&spaces[s], start, len);
            if !model.covers(s, start, start + len) {
                prop_assert_eq!(result, Err(SpaceError::NotMapped));
            } else if result != Err(SpaceError::OutOfMemory) {
                prop_assert_eq!(result, Ok(()));
                let mut at = start;
                while at < start + len {
                    let t = spaces[s].translate(at);
                    prop_assert!(t.is_some(), "populated page {:#x} unmapped", at);
                    at += K4;
                }
            }
        }
        Op::Migrate {
            s,
            pick,
            dest,
            frame,
        } => {
            let Some((_, head)) = pick_leaf(env, &spaces[s], pick) else {
                return Ok(());
            };
            let order = env.frames.frame_table().get(head).unwrap().order();
            let dst = match dest {
                0 => Destination::Any,
                1 => Destination::Frame(Pfn((frame % cfg.frames) >> order << order)),
                2 => Destination::Node(NodeId(0)),
                _ => Destination::Node(NodeId(9)),
            };
            let result = mm.migrate_one(head, dst);
            check_migration(env, model, head, dst, result)?;
        }
        Op::Batch { ref picks } => {
            let batch: Vec<(Pfn, Destination)> = picks
                .iter()
                .filter_map(|&(s, pick)| pick_leaf(env, &spaces[s], pick))
                .map(|(_, head)| (head, Destination::Any))
                .collect();
            let results = mm.migrate_batch(&batch);
            prop_assert_eq!(results.len(), batch.len());
            for (i, (&(head, dst), &result)) in batch.iter().zip(&results).enumerate() {
                // A block named twice: the second request finds it claimed (unless the
                // first one gave its claim back).
                let dup = batch[..i].iter().any(|&(h, _)| h == head);
                if !(dup && result == Err(MigrateError::AlreadyMigrating)) {
                    check_migration(env, model, head, dst, result)?;
                }
            }
        }
        Op::Pin { s, pick } => {
            if let Some((va, head)) = pick_leaf(env, &spaces[s], pick) {
                prop_assert_eq!(mm.pin(&spaces[s], va), Ok(head));
                model.pins.push(head);
            }
        }
        Op::Unpin => {
            if let Some(pfn) = model.pins.pop() {
                prop_assert_eq!(mm.unpin(pfn), Ok(()));
            }
        }
    }
    Ok(())
}

/// Fault at `va` of space `s`; whether the page is now mapped (and recorded as touched).
fn fault<'a, M: PhysMem>(
    env: &Env<'a, M>,
    space: &AddressSpace<'a, M>,
    model: &mut Model,
    s: usize,
    va: u64,
    write: bool,
) -> Result<bool, TestCaseError> {
    let result = env.mm.handle_fault(space, va, write);
    match model.find(s, va) {
        None => {
            prop_assert_eq!(result, Err(FaultError::NoVma));
            Ok(false)
        }
        Some((_, v)) if write && !v.writable => {
            prop_assert_eq!(result, Err(FaultError::ReadOnly));
            Ok(false)
        }
        Some(_) => match result {
            Ok(FaultOutcome::Mapped { .. } | FaultOutcome::Spurious) => {
                model.touched.insert((s, va & !(K4 - 1)));
                Ok(true)
            }
            Err(FaultError::OutOfMemory) => Ok(false),
            other => Err(TestCaseError::fail(format!("fault at {va:#x}: {other:?}"))),
        },
    }
}

/// A migration result is one the model allows.
fn check_migration<M: PhysMem>(
    env: &Env<'_, M>,
    model: &Model,
    head: Pfn,
    dst: Destination,
    result: Result<Pfn, MigrateError>,
) -> Result<(), TestCaseError> {
    match (dst, result) {
        (Destination::Node(NodeId(9)), r) => prop_assert_eq!(r, Err(MigrateError::NoSuchNode)),
        // The destination is checked first, then the source.
        (Destination::Frame(f), Err(MigrateError::DestinationOverlaps)) if f == head => {}
        (_, r) if model.pins.contains(&head) => prop_assert_eq!(r, Err(MigrateError::Pinned)),
        (_, Ok(new)) => {
            prop_assert!(!env.mm.rmap_of(new).is_empty());
            if let Destination::Frame(f) = dst {
                prop_assert_eq!(new, f);
            }
        }
        (
            Destination::Frame(_),
            Err(
                MigrateError::DestinationNotFree
                | MigrateError::DestinationOverlaps
                | MigrateError::DestinationOutOfRange,
            ),
        ) => {}
        (_, Err(MigrateError::OutOfMemory)) => {}
        (_, Err(e)) => return Err(TestCaseError::fail(format!("migrating {head:?}: {e:?}"))),
    }
    Ok(())
}

fn check<'a, M: PhysMem>(
    env: &Env<'a, M>,
    spaces: &[Arc<AddressSpace<'a, M>>; 2],
    model: &Model,
) -> Result<(), TestCaseError> {
    for (s, space) in spaces.iter().enumerate() {
        prop_assert_eq!(real_vmas(space), model.normalized(s));
        for (va, t) in space.leaves() {
            let va = va.as_u64();
            let loc = model.loc(s, va);
            prop_assert!(loc.is_some(), "leaf {:#x} outside the model's VMAs", va);
            let want = loc.and_then(|l| model.values.get(&l)).copied().unwrap_or(0);
            prop_assert_eq!(
                env.mem
                    .word(t.pa)
                    .load(std::sync::atomic::Ordering::Acquire),
                want,
                "leaf {:#x}",
                va
            );
        }
    }
    for &(s, va) in &model.touched {
        let want = model
            .loc(s, va)
            .and_then(|l| model.values.get(&l))
            .copied()
            .unwrap_or(0);
        prop_assert_eq!(
            read_user(env.mem, &spaces[s], va),
            Some(want),
            "page {:#x} of space {}",
            va,
            s
        );
    }
    if let Err(e) = env.mm.rmap_audit() {
        return Err(TestCaseError::fail(format!("rmap audit: {e:?}")));
    }
    if let Err(e) = env.frames.buddy().lock().audit() {
        return Err(TestCaseError::fail(format!("buddy audit: {e:?}")));
    }
    Ok(())
}

/// Cases per configuration: fewer in unoptimised builds, where every audit's walk of the
/// whole frame table is slow.
const fn cases(release: u32) -> u32 {
    if cfg!(debug_assertions) {
        release / 8
    } else {
        release
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(128), ..ProptestConfig::default() })]

    #[test]
    fn small_pages_match_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(&SMALL, Arena::new(SMALL.frames), &ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(24), ..ProptestConfig::default() })]

    #[test]
    fn gigabyte_pages_match_the_model(ops in proptest::collection::vec(op(), 1..32)) {
        run(&LARGE, SparseMem::new(LARGE.frames), &ops)?;
    }
}
