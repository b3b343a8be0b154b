//! Host-side stand-ins for the page-table collaborators (feature `std`): a table
//! allocator over arena frames that can be told to fail, and a flush sink that records
//! what it was told.

use super::{index, Entry, PageTable, SplitError, TableAlloc};
use crate::backend::flush::FlushSink;
use crate::backend::phys::PhysMem;
use crate::base::addr::{PageSize, PAGE_SIZE};
use core::sync::atomic::{AtomicU64, Ordering};
use std::vec::Vec;
use x86_64::{PhysAddr, VirtAddr};

/// The word of the leaf that maps `va` in the tree at `root`, found by reading the raw
/// tables independently of [`PageTable`](super::PageTable); tests use it to play the
/// MMU and set accessed/dirty bits.
pub fn leaf_word<M: PhysMem>(mem: &M, root: PhysAddr, va: u64) -> Option<(&AtomicU64, PageSize)> {
    let mut table = root;
    for level in (1..=4u8).rev() {
        let word = mem.word(table + index(va, level) as u64 * 8);
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

/// Hands out the frames of an arena region from a free list, and counts.
pub struct ListTableAlloc {
    free: Vec<PhysAddr>,
    /// Allocations that may still succeed before `alloc_table` fails (`None`: no limit).
    pub budget: Option<usize>,
    /// Frames handed out by `alloc_table`.
    pub allocated: usize,
    /// Frames given back through `free_table` or [`release`](Self::release).
    pub freed: usize,
}

impl ListTableAlloc {
    /// An allocator of the `frames` frames starting at physical address `first`.
    pub fn new(first: PhysAddr, frames: u64) -> Self {
        let free = (0..frames).rev().map(|i| first + i * PAGE_SIZE).collect();
        ListTableAlloc {
            free,
            budget: None,
            allocated: 0,
            freed: 0,
        }
    }

    /// Frames currently handed out and not given back.
    pub fn outstanding(&self) -> usize {
        self.allocated - self.freed
    }

    /// Give back a table that went through [`FlushSink::defer_free_table`], once the
    /// flush has completed.
    pub fn release(&mut self, table: PhysAddr) {
        self.free.push(table);
        self.freed += 1;
    }
}

impl TableAlloc for ListTableAlloc {
    fn alloc_table(&mut self) -> Option<PhysAddr> {
        if let Some(budget) = &mut self.budget {
            *budget = budget.checked_sub(1)?;
        }
        let frame = self.free.pop()?;
        self.allocated += 1;
        Some(frame)
    }

    fn free_table(&mut self, table: PhysAddr) {
        self.release(table);
    }
}

/// A flush sink that records every call.
#[derive(Default)]
pub struct RecordingSink {
    /// `flush_page` calls, in order.
    pub flushes: Vec<(VirtAddr, PageSize)>,
    /// Number of `flush_all` calls.
    pub full_flushes: usize,
    /// Tables handed to `defer_free_table`, in order.
    pub deferred: Vec<PhysAddr>,
}

impl RecordingSink {
    /// Whether a recorded `flush_page` covers all of `[va, va + size)`, or a full flush
    /// was recorded.
    pub fn covers(&self, va: VirtAddr, size: PageSize) -> bool {
        self.full_flushes > 0
            || self.flushes.iter().any(|&(fva, fsize)| {
                fva.as_u64() <= va.as_u64()
                    && va.as_u64() + (size.bytes() - 1) <= fva.as_u64() + (fsize.bytes() - 1)
            })
    }

    /// Forget everything recorded.
    pub fn clear(&mut self) {
        self.flushes.clear();
        self.full_flushes = 0;
        self.deferred.clear();
    }
}

impl FlushSink for RecordingSink {
    fn flush_page(&mut self, va: VirtAddr, size: PageSize) {
        self.flushes.push((va, size));
    }

    fn flush_all(&mut self) {
        self.full_flushes += 1;
    }

    fn defer_free_table(&mut self, table: PhysAddr) {
        self.deferred.push(table);
    }
}

/// Split the huge leaf of `size` at `va` at once: [`begin_split`](PageTable::begin_split)
/// then [`finish_split`](PageTable::finish_split) with no shootdown between, which is
/// only right where no CPU caches the tree (host tests: `sink` just records the flush).
pub fn split_now<M, A, S>(
    pt: &mut PageTable<'_, M>,
    va: u64,
    size: PageSize,
    alloc: &mut A,
    sink: &mut S,
) -> Result<(), SplitError>
where
    M: PhysMem,
    A: TableAlloc + ?Sized,
    S: FlushSink + ?Sized,
{
    let token = pt.begin_split(va, size, alloc, sink)?;
    pt.finish_split(token).map_err(|_| SplitError::Busy {
        va: VirtAddr::new_truncate(va),
        size,
    })
}

/// Split (with [`split_now`]) every huge leaf that straddles `start` or `end`, as
/// [`unmap_range`](PageTable::unmap_range) and
/// [`protect_range`](PageTable::protect_range) require.
pub fn split_boundaries<M, A, S>(
    pt: &mut PageTable<'_, M>,
    start: u64,
    end: u64,
    alloc: &mut A,
    sink: &mut S,
) -> Result<(), SplitError>
where
    M: PhysMem,
    A: TableAlloc + ?Sized,
    S: FlushSink + ?Sized,
{
    for boundary in [start, end] {
        while let Some(t) = pt.query(boundary) {
            if boundary & (t.size.bytes() - 1) == 0 {
                break;
            }
            split_now(pt, boundary & !(t.size.bytes() - 1), t.size, alloc, sink)?;
        }
    }
    Ok(())
}
