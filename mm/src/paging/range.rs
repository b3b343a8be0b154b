//! Operations over a virtual range: unmap, protect, and tearing a whole tree down.
//!
//! A range operation first splits the (at most four) huge leaves that straddle an end of
//! the range, with tables allocated before anything changes, so every leaf it then meets
//! lies entirely inside or entirely outside the range. It then visits the tables under
//! the range recursively, and unlinks the tables an unmap leaves empty.

use super::{
    entry_span, index, is_canonical, unmapped, vaddr, valid_leaf_flags, Entry, PageTable,
    RangeError, TableAlloc, UnmappedLeaf, ENTRIES, LOWER_HALF_END, UPPER_HALF_START,
};
use crate::backend::flush::FlushSink;
use crate::backend::phys::PhysMem;
use crate::base::addr::{PageSize, PAGE_SIZE};
use core::sync::atomic::Ordering;
use x86_64::structures::paging::PageTableFlags;
use x86_64::PhysAddr;

/// A non-empty range `[start, last]` (inclusive), canonical and within one half.
#[derive(Clone, Copy)]
struct Span {
    start: u64,
    last: u64,
}

/// Check `[start, end)` (`end == 0` meaning 2^64); `None` when it is empty.
fn span(start: u64, end: u64) -> Result<Option<Span>, RangeError> {
    if !start.is_multiple_of(PAGE_SIZE) || !end.is_multiple_of(PAGE_SIZE) {
        return Err(RangeError::Unaligned);
    }
    if start == end {
        return Ok(None);
    }
    if end != 0 && start > end {
        return Err(RangeError::InvalidRange);
    }
    let last = end.wrapping_sub(1);
    if !is_canonical(start)
        || !is_canonical(last)
        || (start < LOWER_HALF_END) != (last < LOWER_HALF_END)
    {
        return Err(RangeError::NonCanonical);
    }
    Ok(Some(Span { start, last }))
}

/// The huge leaves to split before a range operation, in order (a 1 GiB leaf before the
/// 2 MiB leaf its split produces), without duplicates.
struct SplitPlan {
    items: [(u64, PageSize); 4],
    len: usize,
}

impl SplitPlan {
    fn push(&mut self, va: u64, size: PageSize) {
        if !self.items[..self.len].contains(&(va, size)) {
            self.items[self.len] = (va, size);
            self.len += 1;
        }
    }
}

/// What a range operation does to each leaf inside the range.
enum Action<'f> {
    Unmap(&'f mut dyn FnMut(UnmappedLeaf)),
    Protect(PageTableFlags),
}

impl<M: PhysMem> PageTable<'_, M> {
    /// Unmap every leaf in `[start, end)` (4 KiB aligned; `end == 0` means the top of
    /// the address space), calling `on_leaf` with each removed leaf. Huge leaves only
    /// partly inside are split first, which may need up to four tables from `alloc`.
    /// Every table left empty is unlinked and handed to the sink, so unmapping whole
    /// table regions frees all their table frames.
    pub fn unmap_range<A, S>(
        &mut self,
        start: u64,
        end: u64,
        alloc: &mut A,
        sink: &mut S,
        mut on_leaf: impl FnMut(UnmappedLeaf),
    ) -> Result<(), RangeError>
    where
        A: TableAlloc + ?Sized,
        S: FlushSink + ?Sized,
    {
        let Some(span) = span(start, end)? else {
            return Ok(());
        };
        self.split_boundaries(span, alloc, sink)?;
        self.apply(
            self.root,
            4,
            0,
            span,
            &mut Action::Unmap(&mut on_leaf),
            sink,
        );
        Ok(())
    }

    /// Give every leaf in `[start, end)` the leaf `flags` (`PRESENT` added, accessed and
    /// dirty kept), splitting huge leaves only partly inside first (up to four tables
    /// from `alloc`). Unmapped parts of the range are skipped.
    pub fn protect_range<A, S>(
        &mut self,
        start: u64,
        end: u64,
        flags: PageTableFlags,
        alloc: &mut A,
        sink: &mut S,
    ) -> Result<(), RangeError>
    where
        A: TableAlloc + ?Sized,
        S: FlushSink + ?Sized,
    {
        let checked = span(start, end)?;
        if !valid_leaf_flags(flags) {
            return Err(RangeError::InvalidFlags);
        }
        let Some(span) = checked else {
            return Ok(());
        };
        self.split_boundaries(span, alloc, sink)?;
        self.apply(self.root, 4, 0, span, &mut Action::Protect(flags), sink);
        Ok(())
    }

    /// Tear the whole tree down: unmap every leaf of both halves (calling `on_leaf` with
    /// each) and hand every table, the root included, to the sink.
    pub fn destroy<S: FlushSink + ?Sized>(
        self,
        sink: &mut S,
        mut on_leaf: impl FnMut(UnmappedLeaf),
    ) {
        let mut action = Action::Unmap(&mut on_leaf);
        for span in [
            Span {
                start: 0,
                last: LOWER_HALF_END - 1,
            },
            Span {
                start: UPPER_HALF_START,
                last: u64::MAX,
            },
        ] {
            self.apply(self.root, 4, 0, span, &mut action, sink);
        }
        sink.defer_free_table(self.root);
    }

    /// Split the huge leaves that straddle an end of `span`, allocating every table
    /// first: on allocation failure nothing has changed.
    fn split_boundaries<A, S>(
        &self,
        span: Span,
        alloc: &mut A,
        sink: &mut S,
    ) -> Result<(), RangeError>
    where
        A: TableAlloc + ?Sized,
        S: FlushSink + ?Sized,
    {
        let mut plan = SplitPlan {
            items: [(0, PageSize::Size4K); 4],
            len: 0,
        };
        self.plan_split_at(span.start, &mut plan);
        if let Some(after) = span.last.checked_add(1) {
            self.plan_split_at(after, &mut plan);
        }
        let tables = self
            .alloc_tables(plan.len, alloc)
            .ok_or(RangeError::OutOfTables)?;
        for (&(va, size), &table) in plan.items[..plan.len].iter().zip(&tables.frames) {
            let d = self.descend(va, size.level());
            debug_assert_eq!(d.entry.leaf_size(d.level), Some(size));
            self.split_leaf(&d, va, size, table, sink);
        }
        Ok(())
    }

    /// Add to `plan` the splits that make `boundary` (4 KiB aligned) a leaf boundary.
    fn plan_split_at(&self, boundary: u64, plan: &mut SplitPlan) {
        let Some(t) = self.query(boundary) else {
            return;
        };
        let align_1g = PageSize::Size1G.bytes() - 1;
        let align_2m = PageSize::Size2M.bytes() - 1;
        if t.size == PageSize::Size1G && boundary & align_1g != 0 {
            plan.push(boundary & !align_1g, PageSize::Size1G);
        }
        if t.size != PageSize::Size4K && boundary & align_2m != 0 {
            plan.push(boundary & !align_2m, PageSize::Size2M);
        }
    }

    /// Apply `action` to every leaf in `span` below the table at `table` (level
    /// `level`, mapping from `base`; the root ignores `base`). Every leaf met must lie
    /// inside `span` (the boundaries were split).
    fn apply<S: FlushSink + ?Sized>(
        &self,
        table: PhysAddr,
        level: u8,
        base: u64,
        span: Span,
        action: &mut Action<'_>,
        sink: &mut S,
    ) {
        let step = entry_span(level);
        let (first, last) = if level == 4 {
            (index(span.start, 4), index(span.last, 4))
        } else {
            let first = if span.start <= base {
                0
            } else {
                index(span.start, level)
            };
            let last = if span.last >= base + (step * ENTRIES as u64 - 1) {
                ENTRIES - 1
            } else {
                index(span.last, level)
            };
            (first, last)
        };
        for i in first..=last {
            let va = if level == 4 {
                vaddr((i as u64) << 39).as_u64()
            } else {
                base + i as u64 * step
            };
            let slot = self.slot(table, i);
            let entry = Entry::from_raw(slot.load(Ordering::Acquire));
            if !entry.is_present() {
                continue;
            }
            if let Some(size) = entry.leaf_size(level) {
                debug_assert!(va >= span.start && va + (step - 1) <= span.last);
                match action {
                    Action::Unmap(on_leaf) => {
                        let old = Entry::from_raw(slot.swap(0, Ordering::AcqRel));
                        sink.flush_page(vaddr(va), size);
                        on_leaf(unmapped(va, old, size));
                    }
                    Action::Protect(flags) => {
                        self.update_leaf(slot, size, *flags, va, sink);
                    }
                }
            } else {
                let child = entry.table_addr();
                self.apply(child, level - 1, va, span, action, sink);
                if matches!(action, Action::Unmap(_)) && self.is_empty_table(child) {
                    slot.store(0, Ordering::Release);
                    sink.defer_free_table(child);
                }
            }
        }
    }
}
