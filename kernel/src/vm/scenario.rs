//! The contiguity scenario: memory scattered the way a busy machine scatters it, then
//! contiguity generation over every VMA, and its goals checked. The demonstration
//! (`mode=demo`) runs it for the `seed=` option; the in-kernel tests run it for several
//! seeds. It is sized to the machine it finds (1 to 16 GiB, 1 to 8 CPUs, BIOS or UEFI;
//! smaller machines get a smaller scenario of the same shape, whose VMAs of a few MiB
//! may find free windows and need no exchange).
//!
//! # What it builds ([`plan`])
//!
//! With `u` = 1/64 of free memory (rounded down to 256 MiB), between 2 and 32 MiB (the
//! seed picks each size within its bounds, every start, the fault order and the pinned
//! pages):
//!
//! - four address spaces with the demo VMAs: `A` (space 1, 1-1.5 u of 4 KiB pages), `B`
//!   (space 2, 0.75-1.25 u), `C` (space 3, 0.75-1.25 u, with k = 2 or 3 pinned pages at
//!   seed-chosen offsets), `D` (space 1, 0.5-1 u of 2 MiB blocks, `HugePolicy::Always`),
//!   `E` and `F` (one region of 0.25-0.5 u shared by spaces 2 and 4), and on machines
//!   with 4 GiB `G` (space 3): 1 GiB plus up to 32 MiB on each side, covering an aligned
//!   gigabyte, of which a run of 1-1.5 u inside that gigabyte is faulted in (the whole
//!   gigabyte would take more displacement room than 4 GiB leave). 4 KiB VMAs start and
//!   end off 2 MiB boundaries;
//! - a fifth space, the background `Z`: 2 MiB blocks that fill free memory but for a
//!   slack of 8 MiB + 1/1024 of it; after the faults 12.5 % of what was free is unmapped
//!   again as scattered 2 MiB holes, so no VMA finds a free window and contiguity
//!   generation has to exchange pages with other VMAs and displace background blocks
//!   into the holes;
//! - the faults interleaved: every VMA's pages (one at a time; `D`'s a block at a time),
//!   the background's blocks and u/64 unmovable order-0 kernel allocations made through
//!   the frame allocator all advance in proportion, in a seeded stream order, so the
//!   VMAs' frames scatter among each other. The kernel allocations stay until the end.
//!
//! On the default machine (4 GiB, u = 32 MiB) that is 140-230 MiB of demo pages among
//! 3.7 GiB of background blocks (0.5 GiB of them unmapped again); at 1 GiB (u = 12 MiB)
//! 50-80 MiB among 0.9 GiB; at 16 GiB the same demo VMAs as at 4 GiB (u is capped)
//! among 15.5 GiB of background.
//!
//! # What it runs
//!
//! Every resident page is tagged (a value and its checksum, [`data`]); then
//! [`Mm::make_vma_contiguous`](mm::aspace::Mm::make_vma_contiguous) runs on each demo
//! VMA in the order `make_all_contiguous` would visit them (VMAs covering an aligned
//! gigabyte first, then spaces in creation order, VMAs by address), one call each so progress can be shown, with the default options;
//! the background is left as it is.
//! Then the goals ([`goals`]) are checked: contiguity and alignment per VMA, moves within
//! 5 % of the misplaced pages, no frame allocated by an exchange, every page's data (read
//! back through its virtual address), the reverse-map and allocator audits. Finally
//! everything is torn down (spaces destroyed, pages unpinned, the region released, the
//! kernel allocations freed), so the scenario can run again.

mod build;
mod data;
mod goals;
mod plan;

pub use build::{Built, BACKGROUND_LETTER};
pub use data::Damage;
pub use goals::chunk_limit;
pub use plan::{Kind, Machine, Plan, Rng, VmaPlan};

use super::KernelMm;
use crate::arch::timer;
use crate::mem::{boot_memory, frames, pcp, MemError};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use mm::aspace::{PinError, SpaceError};
use mm::base::addr::{PageSize, Pfn};
use mm::mapping::region::RegionError;
use mm::ops::contig::{ContigError, ContigOptions, ContigReport};

/// Why the scenario could not be built or torn down (its goals are [`Failure`]s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScenarioError {
    /// Address spaces are not set up.
    NoMemoryManager,
    /// An address space could not be created or destroyed.
    Space(SpaceError),
    /// The shared region could not be created.
    Region(RegionError),
    /// A VMA could not be mapped (or a background block unmapped).
    Map {
        /// The VMA.
        letter: char,
        /// Why.
        error: SpaceError,
    },
    /// A fault failed.
    Populate {
        /// The VMA.
        letter: char,
        /// Where.
        va: u64,
        /// Why.
        error: SpaceError,
    },
    /// A page of the plan could not be pinned.
    Pin {
        /// The VMA.
        letter: char,
        /// Where.
        va: u64,
        /// Why.
        error: PinError,
    },
    /// A pin could not be dropped.
    Unpin {
        /// The pinned block.
        head: Pfn,
        /// Why.
        error: PinError,
    },
    /// A page that was faulted in is not mapped when it is tagged.
    NotMapped {
        /// The VMA.
        letter: char,
        /// Where.
        va: u64,
    },
    /// A kernel allocation (or its free) failed.
    KernelAlloc(MemError),
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScenarioError::NoMemoryManager => f.write_str("address spaces are not set up"),
            ScenarioError::Space(e) => write!(f, "address space: {e}"),
            ScenarioError::Region(e) => write!(f, "shared region: {e}"),
            ScenarioError::Map { letter, error } => write!(f, "mapping VMA {letter}: {error}"),
            ScenarioError::Populate { letter, va, error } => {
                write!(f, "faulting VMA {letter} at {va:#x}: {error}")
            }
            ScenarioError::Pin { letter, va, error } => {
                write!(f, "pinning VMA {letter} at {va:#x}: {error}")
            }
            ScenarioError::Unpin { head, error } => write!(f, "unpinning {:#x}: {error}", head.0),
            ScenarioError::NotMapped { letter, va } => {
                write!(f, "VMA {letter}: {va:#x} is not mapped after its fault")
            }
            ScenarioError::KernelAlloc(e) => write!(f, "kernel allocation: {e:?}"),
        }
    }
}

/// One unmet goal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Contiguity generation refused the VMA.
    Refused {
        /// The VMA.
        letter: char,
        /// Why.
        error: ContigError,
    },
    /// Too many chunks (`all`: counting every chunk, else those holding 99 %).
    Chunks {
        /// The VMA.
        letter: char,
        /// Chunks afterwards.
        chunks: u64,
        /// The most allowed.
        limit: u64,
        /// Whether every chunk counts (the pinned VMA) or those holding 99 %.
        all: bool,
    },
    /// Fewer aligned huge ranges than one congruent chunk per piece gives.
    Aligned {
        /// The VMA.
        letter: char,
        /// The huge size.
        size: PageSize,
        /// Aligned ranges afterwards.
        got: u64,
        /// The fewest expected.
        want: u64,
    },
    /// More pages moved than 1.05 times the misplaced ones.
    Moved {
        /// The VMA.
        letter: char,
        /// Pages moved.
        moved: u64,
        /// Pages misplaced.
        misplaced: u64,
    },
    /// The second mapping of the shared region moved pages although the first had put
    /// them all in place (it should leave them there).
    SharedMovedAgain {
        /// The second mapping.
        letter: char,
        /// Pages it moved.
        moved: u64,
    },
    /// An exchange allocated frames.
    ExchangeAllocated {
        /// The VMA.
        letter: char,
        /// Blocks allocated.
        frames: u64,
    },
    /// The call stopped before it was done.
    Incomplete {
        /// The VMA.
        letter: char,
    },
    /// The resident pages are not the ones faulted in.
    Resident {
        /// The VMA.
        letter: char,
        /// Before the call.
        before: u64,
        /// After it.
        after: u64,
        /// Faulted in.
        want: u64,
    },
    /// The report counts other pinned pages than the plan pinned.
    Pinned {
        /// The VMA.
        letter: char,
        /// Reported.
        got: u64,
        /// Pinned.
        want: u64,
    },
    /// The 2 MiB VMA's faults did not all map 2 MiB blocks.
    NotHuge {
        /// The VMA.
        letter: char,
        /// 2 MiB blocks mapped.
        blocks: u64,
        /// Blocks faulted.
        want: u64,
    },
    /// Pages whose data did not read back.
    Data(Damage),
    /// The reverse-map audit failed.
    RmapAudit(String),
    /// The allocator audit failed.
    AllocatorAudit(String),
    /// Tearing the scenario down failed.
    Teardown(ScenarioError),
    /// Windows of contiguity generation still claimed after the teardown.
    WindowsLeft {
        /// Frames claimed.
        frames: u64,
        /// Ranges claimed.
        ranges: usize,
    },
    /// The self-test's damage could not be done (its page is not mapped).
    NotDamaged,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Refused { letter, error } => write!(f, "{letter}: refused: {error}"),
            Failure::Chunks {
                letter,
                chunks,
                limit,
                all,
            } => {
                let what = if *all { "chunks" } else { "chunks_99" };
                write!(f, "{letter}: {what} {chunks} > {limit}")
            }
            Failure::Aligned {
                letter,
                size,
                got,
                want,
            } => write!(f, "{letter}: {got} aligned {size:?} ranges < {want}"),
            Failure::Moved {
                letter,
                moved,
                misplaced,
            } => write!(f, "{letter}: moved {moved} > 1.05 * misplaced {misplaced}"),
            Failure::SharedMovedAgain { letter, moved } => write!(
                f,
                "{letter}: moved {moved} pages of the shared region the first mapping had placed"
            ),
            Failure::ExchangeAllocated { letter, frames } => {
                write!(f, "{letter}: exchanges allocated {frames} blocks")
            }
            Failure::Incomplete { letter } => {
                write!(f, "{letter}: contiguity generation incomplete")
            }
            Failure::Resident {
                letter,
                before,
                after,
                want,
            } => write!(f, "{letter}: resident {before} -> {after}, faulted {want}"),
            Failure::Pinned { letter, got, want } => {
                write!(
                    f,
                    "{letter}: report counts {got} pinned pages, {want} pinned"
                )
            }
            Failure::NotHuge {
                letter,
                blocks,
                want,
            } => write!(f, "{letter}: {blocks} of {want} blocks mapped as 2 MiB"),
            Failure::Data(d) => {
                write!(
                    f,
                    "contents CORRUPTED: {} of {} pages wrong",
                    d.bad, d.checked
                )?;
                if let Some((space, va)) = d.first {
                    write!(f, " (first: space index {space}, {va:#x})")?;
                }
                Ok(())
            }
            Failure::RmapAudit(why) => write!(f, "reverse-map audit: {why}"),
            Failure::AllocatorAudit(why) => write!(f, "allocator audit: {why}"),
            Failure::Teardown(e) => write!(f, "teardown: {e}"),
            Failure::WindowsLeft { frames, ranges } => write!(
                f,
                "{ranges} windows ({frames} frames) still claimed after the teardown"
            ),
            Failure::NotDamaged => f.write_str("the self-test could not damage its page"),
        }
    }
}

/// What contiguity generation did to one demo VMA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmaOutcome {
    /// Index of the VMA in the plan.
    pub index: usize,
    /// The VMA as planned.
    pub vma: VmaPlan,
    /// Its report, or why it was refused.
    pub result: Result<ContigReport, ContigError>,
    /// How long the call took.
    pub elapsed_ns: u64,
}

/// Where the time went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    /// Mapping, faulting, pinning and tagging.
    pub build_ns: u64,
    /// Contiguity generation of every VMA.
    pub contig_ns: u64,
    /// The data check and the audits.
    pub check_ns: u64,
}

/// The scenario's result.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The machine it was sized to.
    pub machine: Machine,
    /// The layout.
    pub plan: Plan,
    /// One per demo VMA, in the order they were made contiguous.
    pub vmas: Vec<VmaOutcome>,
    /// The data check.
    pub damage: Damage,
    /// Every unmet goal (empty: all met).
    pub failed: Vec<Failure>,
    /// Where the time went.
    pub timings: Timings,
}

impl Outcome {
    /// Whether every goal was met.
    pub fn passed(&self) -> bool {
        self.failed.is_empty()
    }
}

/// What the caller sees while the scenario runs (the demonstration prints it; the tests
/// pass `()`).
pub trait Observer {
    /// A step began (one line, no newline).
    fn progress(&mut self, _line: fmt::Arguments<'_>) {}
    /// Everything is built, nothing moved yet.
    fn built(&mut self, _built: &Built) {}
    /// One VMA was made contiguous.
    fn placed(&mut self, _vma: &VmaOutcome) {}
    /// Every VMA was made contiguous and checked; nothing is torn down yet (the observer
    /// may go on changing the mappings: the demonstration's huge pages).
    fn contiguous(&mut self, _built: &mut Built) {}
}

impl Observer for () {}

/// How to run it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// The layout's seed.
    pub seed: u64,
    /// Damage one page after contiguity generation (the demonstration's self-test: the
    /// data check must catch it).
    pub damage: bool,
}

/// Free frames now, those in the per-CPU caches included.
fn free_pages() -> u64 {
    (frames::with_buddy(|b| b.free_frames()) + pcp::cached()) as u64
}

/// The machine as the scenario sizes itself to it now.
pub fn machine() -> Machine {
    Machine {
        free_pages: free_pages(),
        ram_bytes: boot_memory()
            .ram
            .ranges()
            .iter()
            .map(|r| r.end - r.start)
            .sum(),
    }
}

/// Make each demo VMA contiguous in the order `make_all_contiguous` visits them (the
/// VMAs covering an aligned gigabyte first, then spaces in creation order, each space's
/// VMAs by address), one call per VMA.
fn make_contiguous(built: &Built, observer: &mut dyn Observer) -> Vec<VmaOutcome> {
    let plan = &built.plan;
    let mut order: Vec<usize> = (0..plan.vmas.len()).collect();
    order.sort_by_key(|&i| {
        let v = &plan.vmas[i];
        (!built.mm.gigabyte_first(v.start, v.end()), v.space, v.start)
    });
    let mut out = Vec::new();
    for index in order {
        let v = plan.vmas[index];
        observer.progress(format_args!(
            "contiguity: VMA {} ({} pages)...",
            v.letter,
            v.resident_pages()
        ));
        let started = timer::now_ns();
        let result = built.mm.make_vma_contiguous(
            &built.spaces[v.space],
            v.start,
            &ContigOptions::default(),
        );
        let o = VmaOutcome {
            index,
            vma: v,
            result,
            elapsed_ns: timer::now_ns().saturating_sub(started),
        };
        observer.placed(&o);
        out.push(o);
    }
    out
}

/// The data check and both audits.
fn findings(mm: &KernelMm, built: &Built) -> goals::Findings {
    let damage = built.verify();
    let rmap = mm.rmap_audit().err().map(|e| alloc::format!("{e:?}"));
    let allocator = frames::drain_and_audit()
        .err()
        .map(|e| alloc::format!("{e:?}"));
    goals::Findings {
        damage,
        rmap,
        allocator,
        big_leaves: mm.max_leaf() == PageSize::Size1G,
    }
}

/// Build the scenario for `opts.seed`, make every demo VMA contiguous, check the goals and
/// tear everything down. An error is a scenario that could not be built; unmet goals are
/// in the outcome.
pub fn run(opts: Options, observer: &mut dyn Observer) -> Result<Outcome, ScenarioError> {
    let mm = super::mm().ok_or(ScenarioError::NoMemoryManager)?;
    let machine = machine();
    let plan = plan::plan(machine, opts.seed);
    let mut timings = Timings::default();
    let started = timer::now_ns();
    observer.progress(format_args!(
        "building: {} demo VMAs, {} background blocks ({} unmapped again as holes), {} kernel allocations...",
        plan.vmas.len(),
        plan.background.blocks,
        plan.background.holes,
        plan.kernel_allocs
    ));
    let mut built = build::build(mm, plan)?;
    timings.build_ns = timer::now_ns().saturating_sub(started);
    observer.built(&built);
    let started = timer::now_ns();
    let vmas = make_contiguous(&built, observer);
    timings.contig_ns = timer::now_ns().saturating_sub(started);
    let damaged = opts.damage && built.damage();
    let started = timer::now_ns();
    observer.progress(format_args!("checking every page's data and the audits..."));
    let found = findings(mm, &built);
    timings.check_ns = timer::now_ns().saturating_sub(started);
    observer.contiguous(&mut built);
    let mut failed = goals::check(&built.plan, &vmas, &found);
    if opts.damage && !damaged {
        failed.push(Failure::NotDamaged);
    }
    let plan = built.plan.clone();
    if let Err(e) = built.teardown() {
        failed.push(Failure::Teardown(e));
    }
    if let Err(e) = frames::drain_and_audit() {
        failed.push(Failure::AllocatorAudit(alloc::format!(
            "after teardown: {e:?}"
        )));
    }
    let (frames, ranges) = mm.claimed_windows();
    if ranges > 0 {
        failed.push(Failure::WindowsLeft { frames, ranges });
    }
    Ok(Outcome {
        machine,
        plan,
        vmas,
        damage: found.damage,
        failed,
        timings,
    })
}
