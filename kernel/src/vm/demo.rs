//! The demonstration: contiguity generation on the scenario of [`scenario`], for the
//! `seed=` option. It prints the layout, the picture of physical memory before and after
//! ([`physmap`], one letter per VMA, `Z` the background), progress per VMA, for every
//! VMA the `CONTIG {json}` lines of its report (phase `before`, then `after`), a table,
//! and a summary; any unmet goal (or a scenario that could not be built) is returned as
//! the demonstration's failure.

use super::demo_huge::{HugeOutcome, GOAL_PER_MILLE};
use super::physmap;
use super::scenario::{self, Built, Kind, Observer, Outcome, VmaOutcome, VmaPlan};
use crate::arch::percpu;
use crate::sprintln;
use alloc::format;
use alloc::string::String;
use core::fmt;
use mm::ops::contig::Phase;

/// Bytes as MiB with one decimal.
struct Mib(u64);

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenths = self.0 * 10 / (1 << 20);
        write!(f, "{}.{} MiB", tenths / 10, tenths % 10)
    }
}

fn kind(v: &VmaPlan) -> &'static str {
    match v.kind {
        Kind::Small => "4 KiB pages",
        Kind::Huge => "2 MiB blocks",
        Kind::SharedFirst => "shared region, 4 KiB pages",
        Kind::SharedSecond => "the same region, mapped in another space",
    }
}

/// Prints what the scenario does as it goes; keeps what the huge-page steps came to.
#[derive(Default)]
struct Console {
    huge: Option<HugeOutcome>,
}

impl Console {
    fn picture(built: &Built, phase: &str) {
        match physmap::classify(&built.labels(), phase) {
            Ok(p) => p.print(),
            Err(e) => sprintln!("physmap {phase}: {e}"),
        }
    }
}

impl Observer for Console {
    fn progress(&mut self, line: fmt::Arguments<'_>) {
        sprintln!("{line}");
    }

    fn built(&mut self, built: &Built) {
        let plan = &built.plan;
        sprintln!("layout (seed {}):", plan.seed);
        for (i, v) in plan.vmas.iter().enumerate() {
            let pinned = if i == plan.pinned_vma {
                format!(", pinned pages {:?}", plan.pinned)
            } else {
                String::new()
            };
            sprintln!(
                "  {} space {} {:#x}-{:#x} {}: {}, {} resident{pinned}",
                v.letter,
                built.spaces[v.space].id().0,
                v.start,
                v.end(),
                Mib(v.len),
                kind(v),
                Mib(v.resident_pages() * 4096),
            );
        }
        sprintln!(
            "  {} space {}: {} background blocks of 2 MiB, {} of them unmapped again as holes",
            scenario::BACKGROUND_LETTER,
            built.background.id().0,
            plan.background.blocks,
            plan.background.holes
        );
        Self::picture(built, "before");
    }

    fn placed(&mut self, o: &VmaOutcome) {
        match &o.result {
            Ok(r) => sprintln!(
                "  {}: {} chunks -> {}, {} misplaced, {} migrated, {} exchanged, {} displaced in {} ms",
                o.vma.letter,
                r.before.chunks,
                r.after.chunks,
                r.misplaced,
                r.migrated,
                r.exchanged,
                r.displaced,
                o.elapsed_ns / 1_000_000
            ),
            Err(e) => sprintln!("  {}: refused: {e}", o.vma.letter),
        }
    }

    fn contiguous(&mut self, built: &mut Built) {
        Self::picture(built, "after");
        let huge = super::demo_huge::run(built);
        Self::picture(built, "huge");
        self.huge = Some(huge);
    }
}

/// The CONTIG lines and the table, in the order of the layout.
fn report(outcome: &Outcome) {
    let mut vmas: alloc::vec::Vec<&VmaOutcome> = outcome.vmas.iter().collect();
    vmas.sort_by_key(|o| o.index);
    for o in &vmas {
        if let Ok(r) = &o.result {
            sprintln!("CONTIG {}", r.json(Phase::Before));
            sprintln!("CONTIG {}", r.json(Phase::After));
        }
    }
    sprintln!(
        "{:<3} {:>5} {:<31} {:>10} {:>8} {:>15} {:>9} {:>14} {:>10} {:>9} {:>8} {:>9} {:>9}",
        "VMA",
        "space",
        "range",
        "size",
        "resident",
        "chunks",
        "chunks_99",
        "goal",
        "aligned_2m",
        "misplaced",
        "migrated",
        "exchanged",
        "displaced"
    );
    for o in &vmas {
        let v = &o.vma;
        let Ok(r) = &o.result else {
            sprintln!("{:<3} refused", v.letter);
            continue;
        };
        let (limit, all) = scenario::chunk_limit(&outcome.plan, o.index);
        let goal = if all { "chunks" } else { "chunks_99" };
        sprintln!(
            "{:<3} {:>5} {:<31} {:>10} {:>8} {:>15} {:>9} {:>14} {:>10} {:>9} {:>8} {:>9} {:>9}",
            v.letter,
            r.space.0,
            format!("{:#x}-{:#x}", v.start, v.end()),
            format!("{}", Mib(v.len)),
            r.after.resident_pages,
            format!("{} -> {}", r.before.chunks, r.after.chunks),
            r.after.chunks_99,
            format!("{goal} <= {limit}"),
            r.after.aligned_2m,
            r.misplaced,
            r.migrated,
            r.exchanged,
            r.displaced
        );
    }
}

/// The summary line.
fn summary(outcome: &Outcome) -> String {
    let reports = outcome.vmas.iter().filter_map(|o| o.result.as_ref().ok());
    let (mut misplaced, mut moved, mut displaced) = (0, 0, 0);
    for r in reports {
        misplaced += r.misplaced;
        moved += r.moved();
        displaced += r.displaced;
    }
    let t = &outcome.timings;
    let verdict = if outcome.passed() {
        String::from("every goal met")
    } else {
        let failed: alloc::vec::Vec<String> =
            outcome.failed.iter().map(|f| format!("{f}")).collect();
        format!("{} goals FAILED: {}", failed.len(), failed.join("; "))
    };
    format!(
        "contiguity demo (seed {}, {} CPUs, {} free): {} VMAs, {misplaced} pages misplaced, \
         {moved} moved, {displaced} displaced; built in {} ms, made contiguous in {} ms, \
         checked in {} ms; data of {} pages {}; {verdict}",
        outcome.plan.seed,
        percpu::online().len(),
        Mib(outcome.machine.free_pages * 4096),
        outcome.vmas.len(),
        t.build_ns / 1_000_000,
        t.contig_ns / 1_000_000,
        t.check_ns / 1_000_000,
        outcome.damage.checked,
        if outcome.damage.bad == 0 {
            "intact"
        } else {
            "CORRUPTED"
        },
    )
}

/// The huge-page steps' summary line, and whether their data read back intact.
fn huge_summary(h: &HugeOutcome) -> (String, bool) {
    let share = |m: &super::demo_huge::Mapping| {
        let p = m.huge_per_mille();
        let goal = match (
            m.huge_per_mille() >= GOAL_PER_MILLE,
            m.missing_1g.is_empty(),
        ) {
            (true, true) => String::from("goal met"),
            (share, _) => format!(
                "goal NOT met: {}{}",
                if share {
                    "share reached"
                } else {
                    "share below 95 %"
                },
                if m.missing_1g.is_empty() {
                    String::new()
                } else {
                    format!(", no 1 GiB leaf in {:?}", m.missing_1g)
                }
            ),
        };
        format!("{}.{} % huge ({goal})", p / 10, p % 10)
    };
    let daemon = match &h.daemon {
        Ok(w) => format!(
            "by the daemon alone in {} ms: {}",
            w.elapsed_ms,
            share(&w.after)
        ),
        Err(why) => format!("by the daemon: {why}"),
    };
    let intact = h.damaged.0 == 0;
    (
        format!(
            "huge pages demo: by the synchronous collapse in {} ms: {}; {daemon}; data of {} \
             pages {}",
            h.sync.elapsed_ms,
            share(&h.sync.after),
            h.damaged.1,
            if intact { "intact" } else { "CORRUPTED" }
        ),
        intact,
    )
}

/// Run the demonstration for `seed`; `corrupt` damages one page before the check (a
/// self-test). Unmet goals and errors are returned.
pub fn run(seed: u64, corrupt: bool) -> Result<(), String> {
    let opts = scenario::Options {
        seed,
        damage: corrupt,
    };
    let mut console = Console::default();
    let outcome = scenario::run(opts, &mut console).map_err(|e| format!("scenario: {e}"))?;
    report(&outcome);
    let line = summary(&outcome);
    sprintln!("{line}");
    let huge = console.huge.as_ref().map(huge_summary);
    if let Some((line, _)) = &huge {
        sprintln!("{line}");
    }
    if !outcome.passed() {
        return Err(line);
    }
    match huge {
        Some((line, false)) => Err(line),
        _ => Ok(()),
    }
}
