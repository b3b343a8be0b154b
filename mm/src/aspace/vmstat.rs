//! The memory manager's event counters, in the vocabulary of Linux's `/proc/vmstat`:
//! faults served huge at each size and their fallbacks, promotions, splits and collapses
//! at each level by kind and result, pages migrated and exchanged, and the background
//! daemon's scans and full passes, and the compactions of the copying collapse. Only the memory manager counts
//! ([`VmStat::count`] is crate-private); anyone may read a [`VmStatSnapshot`], which
//! prints as the payload of one `VMSTAT {json}` line with stable field names.

use alloc::string::String;
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

/// What is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A fault mapped a 2 MiB leaf.
    FaultHuge2m,
    /// A fault mapped a 1 GiB leaf.
    FaultHuge1g,
    /// A fault that could have been huge got a smaller leaf (no free block).
    FaultFallback,
    /// 512 4 KiB leaves became one 2 MiB leaf in place.
    Promote2m,
    /// 512 2 MiB leaves became one 1 GiB leaf in place.
    Promote1g,
    /// A promotion was refused (not contiguous, busy, pinned...).
    PromoteFailed,
    /// A 2 MiB block (and its mapping) was split into 4 KiB ones in place.
    Split2m,
    /// A 1 GiB block was split into 2 MiB ones in place.
    Split1g,
    /// A 2 MiB range was collapsed by contiguity generation and promotion.
    CollapseInPlace2m,
    /// A 1 GiB range was collapsed by contiguity generation and promotion.
    CollapseInPlace1g,
    /// A 2 MiB range was collapsed by copying into a new huge block.
    CollapseCopy2m,
    /// A 1 GiB range was collapsed by copying into a new huge block.
    CollapseCopy1g,
    /// A range could not be collapsed.
    CollapseFailed,
    /// 4 KiB pages migrated (a 2 MiB block counts 512).
    PagesMigrated,
    /// 4 KiB pages exchanged (each side counts).
    PagesExchanged,
    /// Daemon scan steps.
    DaemonScans,
    /// Daemon passes over every address space.
    DaemonFullPasses,
    /// Compactions of a window for a copying collapse that found no free huge block.
    CompactStall,
    /// Compactions that freed their window.
    CompactSuccess,
    /// Compactions that did not.
    CompactFail,
    /// 4 KiB pages migrated out of compacted windows.
    CompactMigrated,
}

impl Event {
    /// Every event, in the order of the JSON line.
    pub const ALL: [Event; 21] = [
        Event::FaultHuge2m,
        Event::FaultHuge1g,
        Event::FaultFallback,
        Event::Promote2m,
        Event::Promote1g,
        Event::PromoteFailed,
        Event::Split2m,
        Event::Split1g,
        Event::CollapseInPlace2m,
        Event::CollapseInPlace1g,
        Event::CollapseCopy2m,
        Event::CollapseCopy1g,
        Event::CollapseFailed,
        Event::PagesMigrated,
        Event::PagesExchanged,
        Event::DaemonScans,
        Event::DaemonFullPasses,
        Event::CompactStall,
        Event::CompactSuccess,
        Event::CompactFail,
        Event::CompactMigrated,
    ];

    /// The field name in the `VMSTAT` line.
    pub fn name(self) -> &'static str {
        match self {
            Event::FaultHuge2m => "thp_fault_alloc_2m",
            Event::FaultHuge1g => "thp_fault_alloc_1g",
            Event::FaultFallback => "thp_fault_fallback",
            Event::Promote2m => "thp_promote_2m",
            Event::Promote1g => "thp_promote_1g",
            Event::PromoteFailed => "thp_promote_failed",
            Event::Split2m => "thp_split_2m",
            Event::Split1g => "thp_split_1g",
            Event::CollapseInPlace2m => "thp_collapse_inplace_2m",
            Event::CollapseInPlace1g => "thp_collapse_inplace_1g",
            Event::CollapseCopy2m => "thp_collapse_copy_2m",
            Event::CollapseCopy1g => "thp_collapse_copy_1g",
            Event::CollapseFailed => "thp_collapse_failed",
            Event::PagesMigrated => "pgmigrate_success",
            Event::PagesExchanged => "pgexchange_success",
            Event::DaemonScans => "thp_daemon_scans",
            Event::DaemonFullPasses => "thp_daemon_full_passes",
            Event::CompactStall => "compact_stall",
            Event::CompactSuccess => "compact_success",
            Event::CompactFail => "compact_fail",
            Event::CompactMigrated => "compact_migrated",
        }
    }

    fn index(self) -> usize {
        Event::ALL.iter().position(|&e| e == self).unwrap_or(0)
    }
}

/// The counters (see the module doc).
#[derive(Debug, Default)]
pub struct VmStat {
    counters: [AtomicU64; Event::ALL.len()],
}

impl VmStat {
    /// Count `n` more of `event`.
    pub(crate) fn count(&self, event: Event, n: u64) {
        self.counters[event.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> VmStatSnapshot {
        VmStatSnapshot {
            values: core::array::from_fn(|i| self.counters[i].load(Ordering::Relaxed)),
        }
    }
}

/// The counters at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VmStatSnapshot {
    values: [u64; Event::ALL.len()],
}

impl VmStatSnapshot {
    /// The count of `event`.
    pub fn get(&self, event: Event) -> u64 {
        self.values[event.index()]
    }

    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &VmStatSnapshot) -> VmStatSnapshot {
        VmStatSnapshot {
            values: core::array::from_fn(|i| self.values[i].saturating_sub(earlier.values[i])),
        }
    }

    /// The payload of a `VMSTAT` line: one JSON object, every counter by name.
    pub fn json(&self) -> String {
        let mut out = String::from("{");
        for (i, e) in Event::ALL.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(out, "{sep}\"{}\":{}", e.name(), self.values[i]);
        }
        out.push('}');
        out
    }
}
