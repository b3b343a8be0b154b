//! The background daemon (Linux's khugepaged and the contiguity RFC's defrag thread in
//! one), as a scan step the kernel calls from its own thread between sleeps: each step
//! looks at a bounded number of pages, continuing where the last one stopped, address
//! space by address space and VMA by VMA. In a VMA whose policy is
//! [`HugePolicy::Always`], a 2 MiB range with at most `max_ptes_none` missing pages is
//! made huge: the missing pages are faulted in and the range promoted in place; when its
//! pages are not contiguous, the VMA is made contiguous first. A VMA covering an aligned
//! gigabyte whose 2 MiB ranges are all huge is promoted to 1 GiB; when those 2 MiB
//! blocks are not contiguous and aligned, the VMA is made contiguous (its anchor is
//! congruent modulo 1 GiB there) and the gigabyte promoted.
//!
//! Contiguity generation is bounded like the scan: one call moves at most
//! `pages_per_step` pages (at least [`MIN_PLACE_PAGES`], one exchange of 2 MiB blocks);
//! a call the bound stopped ends the step, and the next step carries on at the same
//! range from the VMA's stored anchor. A VMA is made contiguous at most once per pass to
//! completion, so a range that cannot be promoted (pinned or shared pages) does not make
//! every later range of the VMA run it again. It is started, stopped and retuned while
//! running through [`Daemon`]; the kernel's options set its defaults.

use super::HugeError;
use crate::aspace::vmstat::Event;
use crate::aspace::{AddressSpace, Mm};
use crate::backend::phys::PhysMem;
use crate::base::addr::{PageSize, PAGE_SIZE};
use crate::mapping::rmap::SpaceId;
use crate::mapping::vma::{HugePolicy, Vma};
use crate::ops::contig::ContigOptions;
use alloc::sync::Arc;
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Mutex;

/// The largest scan budget of one step (pages); more would hold a CPU for too long.
pub const MAX_PAGES_PER_STEP: u64 = 1 << 24;
/// The longest sleep between steps, in milliseconds.
pub const MAX_SLEEP_MS: u64 = 60_000;
/// The fewest pages one contiguity-generation call of a step may move: an exchange of
/// two 2 MiB blocks, so a small scan budget still makes progress.
pub const MIN_PLACE_PAGES: u64 = 1024;

/// The daemon's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuning {
    /// Pages looked at per step (Linux's `pages_to_scan`).
    pub pages_per_step: u64,
    /// Sleep between steps, in milliseconds (`scan_sleep_millisecs`).
    pub sleep_ms: u64,
    /// Missing pages a 2 MiB range may have and still be collapsed (`max_ptes_none`,
    /// 0 to 511).
    pub max_ptes_none: u32,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            pages_per_step: 4096,
            sleep_ms: 10,
            max_ptes_none: 64,
        }
    }
}

/// Why a tuning was refused (the daemon keeps its old one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TuningError {
    /// A scan budget of zero pages would never make progress.
    ZeroRate,
    /// More than [`MAX_PAGES_PER_STEP`] pages per step.
    RateTooHigh,
    /// A sleep longer than [`MAX_SLEEP_MS`].
    SleepTooLong,
    /// `max_ptes_none` above 511.
    MaxPtesNone,
}

impl fmt::Display for TuningError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TuningError::ZeroRate => "zero pages per step",
            TuningError::RateTooHigh => "too many pages per step",
            TuningError::SleepTooLong => "sleep too long",
            TuningError::MaxPtesNone => "max_ptes_none above 511",
        })
    }
}

impl core::error::Error for TuningError {}

impl Tuning {
    /// Check the settings.
    pub fn check(&self) -> Result<(), TuningError> {
        if self.pages_per_step == 0 {
            return Err(TuningError::ZeroRate);
        }
        if self.pages_per_step > MAX_PAGES_PER_STEP {
            return Err(TuningError::RateTooHigh);
        }
        if self.sleep_ms > MAX_SLEEP_MS {
            return Err(TuningError::SleepTooLong);
        }
        if self.max_ptes_none > 511 {
            return Err(TuningError::MaxPtesNone);
        }
        Ok(())
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Step {
    /// Pages looked at.
    pub scanned: u64,
    /// 2 MiB ranges promoted.
    pub promoted_2m: u64,
    /// 1 GiB ranges promoted.
    pub promoted_1g: u64,
    /// Pages contiguity generation moved (each move counted).
    pub placed: u64,
    /// Ranges skipped (too many missing pages, busy, pinned...).
    pub skipped: u64,
    /// Whether the step finished a pass over every address space.
    pub full_pass: bool,
}

/// Where the scan is: the address space and the address it continues from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cursor {
    space: SpaceId,
    va: u64,
    /// Whether the VMA at the cursor was made contiguous in this pass.
    contiguous: bool,
}

/// What one bounded contiguity-generation call came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placing {
    /// The VMA is as contiguous as it gets (or was refused): promote now, and do not
    /// run it again in this pass.
    Done,
    /// The bound stopped it: the step ends, the next one carries on.
    Stopped,
}

/// The daemon's state (see the module doc).
#[derive(Debug)]
pub struct Daemon {
    running: AtomicBool,
    tuning: Mutex<Tuning>,
    cursor: Mutex<Cursor>,
}

impl Daemon {
    /// A stopped daemon with `tuning` (refused if it does not [`check`](Tuning::check)).
    pub fn new(tuning: Tuning) -> Result<Daemon, TuningError> {
        tuning.check()?;
        Ok(Daemon {
            running: AtomicBool::new(false),
            tuning: Mutex::new(tuning),
            cursor: Mutex::new(Cursor::default()),
        })
    }

    /// Let steps run.
    pub fn start(&self) {
        self.running.store(true, Ordering::Release);
    }

    /// Make further steps do nothing (a step in progress finishes).
    pub fn stop(&self) {
        self.running.store(false, Ordering::Release);
    }

    /// Whether it is started.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Change the settings while running; a bad tuning is refused and the old one kept.
    pub fn retune(&self, tuning: Tuning) -> Result<(), TuningError> {
        tuning.check()?;
        *self.tuning.lock() = tuning;
        Ok(())
    }

    /// The settings now.
    pub fn tuning(&self) -> Tuning {
        *self.tuning.lock()
    }

    /// One scan step over `mm` (nothing if stopped).
    pub fn step<M: PhysMem>(&self, mm: &Mm<'_, M>) -> Step {
        let mut step = Step::default();
        if !self.is_running() {
            return step;
        }
        let tuning = self.tuning();
        let mut cursor = self.cursor.lock();
        mm.vmstat.count(Event::DaemonScans, 1);
        let m2 = PageSize::Size2M.bytes();
        while step.scanned < tuning.pages_per_step {
            let Some(space) = mm.spaces().into_iter().find(|s| s.id() >= cursor.space) else {
                *cursor = Cursor::default();
                step.full_pass = true;
                mm.vmstat.count(Event::DaemonFullPasses, 1);
                break;
            };
            if space.id() != cursor.space {
                *cursor = Cursor {
                    space: space.id(),
                    va: 0,
                    contiguous: false,
                };
            }
            let Some(vma) = space
                .vmas()
                .into_iter()
                .find(|v| v.end > cursor.va && v.flags.huge == HugePolicy::Always)
            else {
                *cursor = Cursor {
                    space: SpaceId(space.id().0 + 1),
                    va: 0,
                    contiguous: false,
                };
                continue;
            };
            if cursor.va < vma.start {
                cursor.va = vma.start;
                cursor.contiguous = false;
            }
            let at = cursor.va.next_multiple_of(m2);
            if at + m2 > vma.end {
                cursor.va = vma.end;
                continue;
            }
            step.scanned += m2 / PAGE_SIZE;
            cursor.va = at + m2;
            if space
                .translate(at)
                .is_some_and(|t| t.size >= PageSize::Size2M)
            {
                if self.try_1g(mm, &space, &vma, at, &mut cursor, &tuning, &mut step)
                    == Placing::Stopped
                {
                    cursor.va = at;
                    break;
                }
                continue;
            }
            let present = space
                .leaves()
                .iter()
                .filter(|(v, _)| (at..at + m2).contains(&v.as_u64()))
                .count() as u64;
            if 512 - present > u64::from(tuning.max_ptes_none) || present == 0 {
                step.skipped += 1;
                continue;
            }
            if mm.populate(&space, at, m2).is_err() {
                step.skipped += 1;
                continue;
            }
            let mut promoted = mm.promote(&space, at, PageSize::Size2M);
            if matches!(promoted, Err(HugeError::NotContiguous(_))) && !cursor.contiguous {
                if self.place(mm, &space, at, &mut cursor, &tuning, &mut step) == Placing::Stopped {
                    cursor.va = at;
                    break;
                }
                promoted = mm.promote(&space, at, PageSize::Size2M);
            }
            match promoted {
                Ok(()) => step.promoted_2m += 1,
                Err(_) => step.skipped += 1,
            }
            if self.try_1g(mm, &space, &vma, at, &mut cursor, &tuning, &mut step)
                == Placing::Stopped
            {
                cursor.va = at;
                break;
            }
        }
        step
    }

    /// One bounded contiguity-generation call on the VMA at `va` (see the module doc).
    fn place<'m, M: PhysMem>(
        &self,
        mm: &Mm<'m, M>,
        space: &Arc<AddressSpace<'m, M>>,
        va: u64,
        cursor: &mut Cursor,
        tuning: &Tuning,
        step: &mut Step,
    ) -> Placing {
        let opts = ContigOptions {
            max_pages: tuning.pages_per_step.max(MIN_PLACE_PAGES),
            ..ContigOptions::default()
        };
        match mm.make_vma_contiguous(space, va, &opts) {
            Ok(r) => {
                step.placed += r.moved();
                if r.complete {
                    cursor.contiguous = true;
                    Placing::Done
                } else if r.moved() == 0 {
                    // Stopped with nothing moved (the VMA changed under it): leave it
                    // for the next pass rather than retrying at once.
                    cursor.contiguous = true;
                    Placing::Done
                } else {
                    Placing::Stopped
                }
            }
            Err(_) => {
                cursor.contiguous = true;
                Placing::Done
            }
        }
    }

    /// After the last 2 MiB range of an aligned gigabyte of `vma`: promote it to 1 GiB,
    /// making the VMA contiguous first when its 2 MiB blocks are all huge but not
    /// contiguous and aligned.
    #[allow(clippy::too_many_arguments)]
    fn try_1g<'m, M: PhysMem>(
        &self,
        mm: &Mm<'m, M>,
        space: &Arc<AddressSpace<'m, M>>,
        vma: &Vma,
        at: u64,
        cursor: &mut Cursor,
        tuning: &Tuning,
        step: &mut Step,
    ) -> Placing {
        let (g1, m2) = (PageSize::Size1G.bytes(), PageSize::Size2M.bytes());
        let base = at & !(g1 - 1);
        if at != base + g1 - m2 || base < vma.start || base + g1 > vma.end {
            return Placing::Done;
        }
        if mm.max_leaf() < PageSize::Size1G
            || space
                .translate(base)
                .is_some_and(|t| t.size == PageSize::Size1G)
        {
            return Placing::Done;
        }
        let mut promoted = mm.promote(space, base, PageSize::Size1G);
        if matches!(promoted, Err(HugeError::NotContiguous(_)))
            && !cursor.contiguous
            && (base..base + g1).step_by(m2 as usize).all(|r| {
                space
                    .translate(r)
                    .is_some_and(|t| t.size == PageSize::Size2M)
            })
        {
            if self.place(mm, space, base, cursor, tuning, step) == Placing::Stopped {
                return Placing::Stopped;
            }
            promoted = mm.promote(space, base, PageSize::Size1G);
        }
        if promoted.is_ok() {
            step.promoted_1g += 1;
        }
        Placing::Done
    }
}
