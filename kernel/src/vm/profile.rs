//! Where the memory manager's time goes outside its own code, for the benchmarks: TSC
//! cycles spent in the frame source (allocations and frees) and in TLB shootdowns of
//! address spaces, counted while [`enable`]d. Off, each hook costs one relaxed load.

use crate::arch::timer;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Calls of one hook and the cycles spent in them.
pub struct Tally {
    calls: AtomicU64,
    cycles: AtomicU64,
}

impl Tally {
    const fn new() -> Tally {
        Tally {
            calls: AtomicU64::new(0),
            cycles: AtomicU64::new(0),
        }
    }

    /// Run `f`, counting it when profiling is on.
    pub fn time<R>(&self, f: impl FnOnce() -> R) -> R {
        self.time_many(1, f)
    }

    /// Run `f`, which does the work of `calls` calls at once (a batch), counting it when
    /// profiling is on.
    pub fn time_many<R>(&self, calls: u64, f: impl FnOnce() -> R) -> R {
        if !ENABLED.load(Ordering::Relaxed) {
            return f();
        }
        let start = timer::tsc();
        let r = f();
        self.cycles
            .fetch_add(timer::tsc().wrapping_sub(start), Ordering::Relaxed);
        self.calls.fetch_add(calls, Ordering::Relaxed);
        r
    }

    /// (calls, cycles) so far.
    pub fn read(&self) -> (u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.cycles.load(Ordering::Relaxed),
        )
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Frame-source allocations (`alloc`, `alloc_at`).
pub static ALLOC: Tally = Tally::new();
/// Frame-source frees.
pub static FREE: Tally = Tally::new();
/// Shootdowns of address spaces.
pub static SHOOTDOWN: Tally = Tally::new();

/// Turn counting on or off.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Every tally at one moment: (calls, cycles) of allocations, frees and shootdowns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Allocations.
    pub alloc: (u64, u64),
    /// Frees.
    pub free: (u64, u64),
    /// Shootdowns.
    pub shootdown: (u64, u64),
}

impl Snapshot {
    /// The tallies now.
    pub fn now() -> Snapshot {
        Snapshot {
            alloc: ALLOC.read(),
            free: FREE.read(),
            shootdown: SHOOTDOWN.read(),
        }
    }

    /// What was counted since `earlier`.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let d = |a: (u64, u64), b: (u64, u64)| (a.0 - b.0, a.1 - b.1);
        Snapshot {
            alloc: d(self.alloc, earlier.alloc),
            free: d(self.free, earlier.free),
            shootdown: d(self.shootdown, earlier.shootdown),
        }
    }
}
