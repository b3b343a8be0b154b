//! The demonstration's last steps: the VMAs just made contiguous are mapped by 1 GiB and
//! 2 MiB leaves, once by the synchronous collapse and once by the background daemon
//! alone.
//!
//! 1. **Room**: a VMA covering an aligned gigabyte (`G`) has only a run of it resident;
//!    to become one 1 GiB leaf it must be faulted in whole, into a gigabyte of physical
//!    memory without an unmovable frame. The scenario's unmovable kernel allocations,
//!    scattered over every gigabyte, are freed (its short-lived kernel work is done), and
//!    when free memory is short of the gigabyte, seeded background blocks are unmapped
//!    (the busy machine's other tenant gives memory back) until it is not; the rest of
//!    the background stays scattered.
//! 2. **Synchronously** ([`Mm::collapse`](mm::aspace::Mm::collapse), target "largest
//!    possible"): every aligned gigabyte of a VMA (faulted in) and every fully resident
//!    2 MiB range elsewhere (a range with missing pages is left as it is).
//! 3. **Reset**: the leaves are split back in place (1 GiB to 2 MiB in `G` and the 2 MiB
//!    VMA `D`, everything to 4 KiB in the 4 KiB VMAs) and re-scattered by seeded
//!    exchanges of the VMA's own blocks (1 in 8 pages of a 4 KiB VMA, 1 in 4 blocks of a
//!    2 MiB one), so nothing is contiguous or huge any more; the private VMAs are then
//!    advised always-huge, the policy the daemon scans.
//! 4. **By the daemon**: started with its defaults from the kernel options (on the last
//!    CPU), it generates contiguity and promotes by itself; the demonstration only waits,
//!    printing progress, until the goal is met, the daemon finishes passes without
//!    changing anything, or a timeout. With one CPU online this part is skipped (the
//!    daemon needs a CPU of its own).
//!
//! Each way prints a `LEAVES {json}` line per VMA before and after, a table of the
//! translation entries each needs, and the share of the demo spaces' resident memory
//! mapped by huge leaves; the `VMSTAT` line ends it.

use super::daemon::{self, DaemonError};
use super::scenario::{Built, Kind, Rng};
use super::Space;
use crate::arch::timer::{self, Deadline};
use crate::{smp, sprintln};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use mm::base::addr::{PageSize, Pfn};
use mm::mapping::vma::HugePolicy;
use mm::ops::contig::{ContigOptions, Phase};
use mm::ops::huge::collapse::{CollapseMethod, CollapseOptions, CollapseTarget};
use mm::ops::huge::leaves::LeafReport;

const M2: u64 = 2 << 20;
const G1: u64 = 1 << 30;
/// Free memory kept beyond what faulting in the gigabytes takes (page tables, moves).
const ROOM_MARGIN: u64 = 64 << 20;
/// The share of resident memory (per mille) in huge leaves the goal asks for.
pub const GOAL_PER_MILLE: u64 = 950;
/// How long the daemon gets.
const DAEMON_TIMEOUT_MS: u64 = 240_000;
/// How often the wait looks, and how often it prints progress.
const POLL_MS: u64 = 500;
const PROGRESS_MS: u64 = 5_000;
/// Passes the daemon may finish without changing the leaves before the wait gives up.
const IDLE_PASSES: u64 = 2;

/// How the demo spaces are mapped at one moment.
#[derive(Clone, Debug, Default)]
pub struct Mapping {
    /// One report per demo VMA, with its letter, in the layout's order.
    pub vmas: Vec<(char, LeafReport)>,
    /// Resident bytes of every VMA of the demo spaces.
    pub resident: u64,
    /// Of those, bytes mapped by 2 MiB or 1 GiB leaves.
    pub huge: u64,
    /// VMAs of at least 1 GiB covering an aligned gigabyte with no 1 GiB leaf (when the
    /// machine allows 1 GiB leaves).
    pub missing_1g: Vec<char>,
}

impl Mapping {
    /// Huge share of resident memory, per mille.
    pub fn huge_per_mille(&self) -> u64 {
        (self.huge * 1000).checked_div(self.resident).unwrap_or(0)
    }

    /// Whether the goal is met: enough huge, every gigabyte VMA with its 1 GiB leaf.
    pub fn goal_met(&self) -> bool {
        self.huge_per_mille() >= GOAL_PER_MILLE && self.missing_1g.is_empty()
    }

    fn entries(&self) -> u64 {
        self.vmas.iter().map(|(_, r)| r.entries()).sum()
    }
}

/// What one way (synchronous or daemon) came to.
#[derive(Clone, Debug)]
pub struct Way {
    /// Before.
    pub before: Mapping,
    /// After.
    pub after: Mapping,
    /// How long it took.
    pub elapsed_ms: u64,
}

/// The two ways; the daemon's is `Err(why it was skipped or failed)`.
#[derive(Clone, Debug)]
pub struct HugeOutcome {
    /// By the synchronous collapse.
    pub sync: Way,
    /// By the daemon alone.
    pub daemon: Result<Way, String>,
    /// Background blocks unmapped to make room.
    pub room_blocks: u64,
    /// Pages whose data did not read back after both ways (of those checked).
    pub damaged: (u64, u64),
}

/// The aligned gigabytes inside `[start, end)`.
fn gigabytes(start: u64, end: u64) -> impl Iterator<Item = u64> {
    let first = start.next_multiple_of(G1);
    (0..)
        .map(move |i| first + i * G1)
        .take_while(move |g| g + G1 <= end)
}

fn mapping(built: &Built, print: Option<&str>) -> Mapping {
    let mm = built.mm;
    let big = mm.max_leaf() == PageSize::Size1G;
    let mut m = Mapping::default();
    let mut seen = Vec::new();
    for space in &built.spaces {
        if seen.iter().any(|s: &&Arc<Space>| Arc::ptr_eq(s, space)) {
            continue;
        }
        seen.push(space);
        for r in mm.leaf_reports(space) {
            m.resident += r.resident();
            m.huge += r.huge();
        }
    }
    for v in &built.plan.vmas {
        let space = &built.spaces[v.space];
        if let Some(r) = mm
            .leaf_reports(space)
            .into_iter()
            .find(|r| r.start <= v.start && v.start < r.end)
        {
            if let Some(phase) = print {
                sprintln!("LEAVES {}", r.json(phase));
            }
            if big
                && v.len >= G1
                && gigabytes(v.start, v.end()).next().is_some()
                && r.leaves_1g == 0
            {
                m.missing_1g.push(v.letter);
            }
            m.vmas.push((v.letter, r));
        }
    }
    m
}

/// Free frames now.
fn free_bytes() -> u64 {
    super::scenario::machine().free_pages * 4096
}

/// Step 1: free the scenario's unmovable kernel allocations (a frame of one in a
/// gigabyte keeps it from ever being one 1 GiB leaf) and unmap background blocks until
/// the gigabytes' missing pages fit; how many of each.
fn make_room(built: &mut Built) -> (usize, u64) {
    let gigabyte_vmas = built
        .plan
        .vmas
        .iter()
        .any(|v| gigabytes(v.start, v.end()).next().is_some());
    if built.mm.max_leaf() != PageSize::Size1G || !gigabyte_vmas {
        return (0, 0);
    }
    let kernel = built.free_kernel_allocations().unwrap_or(0);
    (kernel, background_room(built))
}

/// Unmap background blocks until the gigabytes' missing pages fit.
fn background_room(built: &mut Built) -> u64 {
    let mut missing = 0;
    for v in &built.plan.vmas {
        let space = &built.spaces[v.space];
        for g in gigabytes(v.start, v.end()) {
            let resident = space
                .leaves()
                .iter()
                .filter(|(va, _)| (g..g + G1).contains(&va.as_u64()))
                .map(|(_, t)| t.size.bytes())
                .sum::<u64>();
            missing += G1 - resident.min(G1);
        }
    }
    let need = missing + ROOM_MARGIN;
    let free = free_bytes();
    if missing == 0 || free >= need {
        return 0;
    }
    let blocks = (need - free).div_ceil(M2);
    built.shrink_background(blocks)
}

/// Step 2: the synchronous collapse.
fn collapse_all(built: &Built) -> usize {
    let mm = built.mm;
    let opts = CollapseOptions {
        target: CollapseTarget::Largest,
        method: CollapseMethod::Auto,
    };
    let mut failed = 0;
    for v in &built.plan.vmas {
        let space = &built.spaces[v.space];
        let giga: Vec<u64> = if mm.max_leaf() == PageSize::Size1G {
            gigabytes(v.start, v.end()).collect()
        } else {
            Vec::new()
        };
        let resident: Vec<u64> = space
            .leaves()
            .iter()
            .map(|(va, _)| va.as_u64())
            .filter(|&va| va >= v.start && va < v.end())
            .collect();
        let mut ranges: Vec<(u64, u64)> = giga.iter().map(|&g| (g, G1)).collect();
        let mut at = v.start.next_multiple_of(M2);
        while at + M2 <= v.end() {
            let in_giga = giga.iter().any(|&g| (g..g + G1).contains(&at));
            let full = resident
                .iter()
                .filter(|&&va| (at..at + M2).contains(&va))
                .count()
                == 512
                || space
                    .translate(at)
                    .is_some_and(|t| t.size != PageSize::Size4K);
            if !in_giga && full {
                ranges.push((at, M2));
            }
            at += M2;
        }
        for (start, len) in ranges {
            let Ok(out) = mm.collapse(space, start, len, &opts) else {
                continue;
            };
            failed += out.iter().filter(|o| o.result.is_err()).count();
            for o in out.iter().filter(|o| o.size == PageSize::Size1G) {
                if let Err((kind, cause)) = o.result {
                    sprintln!(
                        "huge pages: {} 1 GiB at {:#x} not collapsed: {kind:?} ({cause})",
                        v.letter,
                        o.start
                    );
                    if let Ok(r) = mm.make_vma_contiguous(space, o.start, &ContigOptions::default())
                    {
                        sprintln!("  its contiguity now: CONTIG {}", r.json(Phase::After));
                    }
                }
            }
        }
    }
    failed
}

/// Step 3: split back and re-scatter; then advise the private VMAs always-huge.
fn reset(built: &Built, seed: u64) -> (u64, u64) {
    let mm = built.mm;
    let mut rng = Rng::new(seed ^ 0xdae3);
    let (mut split, mut exchanged) = (0, 0);
    for v in &built.plan.vmas {
        if matches!(v.kind, Kind::SharedFirst | Kind::SharedSecond) {
            continue;
        }
        let space = &built.spaces[v.space];
        let keep = if v.kind == Kind::Huge || v.len >= G1 {
            PageSize::Size2M
        } else {
            PageSize::Size4K
        };
        loop {
            let bigger: Vec<u64> = space
                .leaves()
                .iter()
                .filter(|(va, t)| (v.start..v.end()).contains(&va.as_u64()) && t.size > keep)
                .map(|(va, _)| va.as_u64())
                .collect();
            if bigger.is_empty() {
                break;
            }
            let mut any = false;
            for va in bigger {
                if mm.split_huge(space, va).is_ok() {
                    split += 1;
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        let heads: Vec<Pfn> = space
            .leaves()
            .iter()
            .filter(|(va, t)| (v.start..v.end()).contains(&va.as_u64()) && t.size == keep)
            .map(|(_, t)| Pfn::containing(t.leaf_base_pa))
            .collect();
        let n = heads.len() as u64;
        if n >= 2 {
            let per = if keep == PageSize::Size4K { 8 } else { 4 };
            let pairs: Vec<(Pfn, Pfn)> = (0..(n / per).max(1))
                .map(|_| {
                    let a = rng.range(0, n - 1);
                    let b = (a + rng.range(1, n - 1)) % n;
                    (heads[a as usize], heads[b as usize])
                })
                .collect();
            for batch in pairs.chunks(64) {
                exchanged += mm
                    .exchange_batch(batch)
                    .iter()
                    .filter(|r| r.is_ok())
                    .count() as u64;
            }
        }
        if v.kind != Kind::Huge {
            let _ = mm.advise_huge(space, v.start, v.len, HugePolicy::Always);
        }
    }
    (split, exchanged)
}

/// Step 4: start the daemon (unless it runs already) and wait for it.
fn wait_for_daemon(built: &Built) -> Result<u64, String> {
    let started_here = match daemon::start() {
        Ok(cpu) => {
            sprintln!(
                "daemon: started on CPU {cpu} with {:?} (the thp_* options)",
                daemon::tuning().map_err(|e| format!("{e}"))?
            );
            true
        }
        Err(DaemonError::AlreadyRunning(cpu)) => {
            sprintln!("daemon: already running on CPU {cpu} (thp_daemon=on)");
            false
        }
        Err(e) => return Err(format!("{e}")),
    };
    let t0 = timer::now_ns();
    let first = daemon::totals();
    let mut last_print = 0;
    let mut idle_from = (first.passes, mapping(built, None).vmas);
    let mut reason = "timeout";
    loop {
        smp::sleep_serving(Deadline::after_ms(POLL_MS), || false);
        let now = timer::now_ns().saturating_sub(t0) / 1_000_000;
        let m = mapping(built, None);
        let t = daemon::totals();
        if now - last_print >= PROGRESS_MS || m.goal_met() {
            last_print = now;
            sprintln!(
                "daemon: {:>3} s, {} steps, {} passes, {} pages placed, {} 2 MiB and {} 1 GiB \
                 promotions; huge {}.{} % of resident",
                now / 1000,
                t.steps - first.steps,
                t.passes - first.passes,
                t.placed - first.placed,
                t.promoted_2m - first.promoted_2m,
                t.promoted_1g - first.promoted_1g,
                m.huge_per_mille() / 10,
                m.huge_per_mille() % 10
            );
        }
        if m.goal_met() {
            reason = "goal met";
            break;
        }
        if m.vmas != idle_from.1 {
            idle_from = (t.passes, m.vmas);
        } else if t.passes >= idle_from.0 + IDLE_PASSES {
            reason = "passes without change";
            break;
        }
        if now >= DAEMON_TIMEOUT_MS {
            break;
        }
    }
    let elapsed = timer::now_ns().saturating_sub(t0) / 1_000_000;
    if started_here {
        let t = daemon::stop().map_err(|e| format!("{e}"))?;
        sprintln!(
            "daemon: stopped after {elapsed} ms ({reason}); since boot {} steps, {} passes, \
             {} pages placed, {} 2 MiB and {} 1 GiB promotions, {} ranges skipped",
            t.steps,
            t.passes,
            t.placed,
            t.promoted_2m,
            t.promoted_1g,
            t.skipped
        );
    } else {
        sprintln!("daemon: waited {elapsed} ms ({reason}); it keeps running");
    }
    Ok(elapsed)
}

fn table(title: &str, before: &Mapping, after: &Mapping) {
    sprintln!("translation entries per VMA (one per leaf), {title}:");
    sprintln!("VMA      entries before -> after    4 KiB   2 MiB   1 GiB");
    for ((letter, b), (_, a)) in before.vmas.iter().zip(&after.vmas) {
        sprintln!(
            "{letter}   {:>14} -> {:<10} {:>7} {:>7} {:>7}",
            b.entries(),
            a.entries(),
            a.leaves_4k,
            a.leaves_2m,
            a.leaves_1g
        );
    }
    sprintln!(
        "all {:>14} -> {:<10} huge share of resident {}.{} % -> {}.{} %{}",
        before.entries(),
        after.entries(),
        before.huge_per_mille() / 10,
        before.huge_per_mille() % 10,
        after.huge_per_mille() / 10,
        after.huge_per_mille() % 10,
        if after.missing_1g.is_empty() {
            String::new()
        } else {
            format!("; no 1 GiB leaf in {:?}", after.missing_1g)
        }
    );
}

/// Run the four steps on `built` (see the module doc) and print as it goes.
pub fn run(built: &mut Built) -> HugeOutcome {
    let (kernel, room_blocks) = make_room(built);
    if kernel > 0 || room_blocks > 0 {
        sprintln!(
            "huge pages: {kernel} unmovable kernel allocations of the scenario freed, \
             {room_blocks} background blocks of 2 MiB unmapped to leave room for the \
             gigabytes to be faulted in"
        );
    }
    sprintln!("huge pages, by the synchronous collapse (target: largest possible)...");
    let before = mapping(built, Some("before"));
    let t0 = timer::now_ns();
    let failed = collapse_all(built);
    let elapsed_ms = timer::now_ns().saturating_sub(t0) / 1_000_000;
    let after = mapping(built, Some("after"));
    table(
        &format!("before -> after the collapse ({elapsed_ms} ms, {failed} ranges refused: shared-region or pinned pages)"),
        &before,
        &after,
    );
    let sync = Way {
        before,
        after,
        elapsed_ms,
    };
    let daemon = if smp_cpus() < 2 {
        let why = String::from(
            "skipped: one CPU online, and the daemon runs on a CPU other than the demonstration's",
        );
        sprintln!("huge pages, by the daemon alone: {why}");
        Err(why)
    } else {
        let (split, exchanged) = reset(built, built.plan.seed);
        sprintln!(
            "huge pages, by the daemon alone: {split} huge leaves split back, {exchanged} \
             exchanges re-scattered the VMAs' blocks, private VMAs advised always-huge"
        );
        let before = mapping(built, Some("before_daemon"));
        let result = wait_for_daemon(built);
        let after = mapping(built, Some("after_daemon"));
        result.map(|elapsed_ms| {
            table("re-scattered -> after the daemon", &before, &after);
            Way {
                before,
                after,
                elapsed_ms,
            }
        })
    };
    let damage = built.verify();
    sprintln!(
        "huge pages: data of {} pages {}",
        damage.checked,
        if damage.bad == 0 {
            "intact"
        } else {
            "CORRUPTED"
        }
    );
    sprintln!("VMSTAT {}", built.mm.vmstat().json());
    HugeOutcome {
        sync,
        daemon,
        room_blocks,
        damaged: (damage.bad, damage.checked),
    }
}

fn smp_cpus() -> usize {
    crate::arch::percpu::online().len()
}
