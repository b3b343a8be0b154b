//! Operations over a virtual range: unmap, protect, and tearing a whole tree down.
//!
//! A range operation first looks at every slot of the range with a [`Cursor`]: it refuses
//! a range that a software entry overlaps ([`RangeError::Busy`]; only the layer that
//! installed the entry may remove it, so the caller waits for it and retries) or that
//! ends inside a huge leaf ([`RangeError::Straddles`]; the caller splits it with
//! [`PageTable::begin_split`], shoots the huge translation down, finishes the split and
//! retries). So every leaf it then changes lies entirely inside the range, and a refusal
//! changes nothing. It then visits the tables under the range recursively, and unlinks
//! the tables an unmap leaves empty. [`PageTable::destroy`] removes software entries
//! too, and reports each to its caller.

use super::cursor::{Cursor, SlotKind};
use super::{
    entry_span, index, is_canonical, slot_of, unmapped, vaddr, valid_leaf_flags, Entry, PageTable,
    RangeError, SoftwareEntry, UnmappedLeaf, ENTRIES, LOWER_HALF_END, UPPER_HALF_START,
};
use crate::backend::flush::FlushSink;
use crate::backend::phys::PhysMem;
use crate::base::addr::PAGE_SIZE;
use core::sync::atomic::Ordering;
use x86_64::structures::paging::PageTableFlags;
use x86_64::{PhysAddr, VirtAddr};

/// A non-empty range `[start, last]` (inclusive), canonical and within one half.
#[derive(Clone, Copy)]
pub(super) struct Span {
    pub start: u64,
    pub last: u64,
}

/// Check `[start, end)` (`end == 0` meaning 2^64); `None` when it is empty.
pub(super) fn span(start: u64, end: u64) -> Result<Option<Span>, RangeError> {
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

/// What [`PageTable::destroy`] took out of the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Removed {
    /// A present leaf (its frame is released after the flush, as for an unmap).
    Leaf(UnmappedLeaf),
    /// A software entry: nothing to flush, but its owner must learn that it is gone
    /// (a migration entry still names its source frame).
    Software {
        /// The first address of its slot.
        va: VirtAddr,
        /// The level of its slot.
        level: u8,
        /// What it was.
        entry: SoftwareEntry,
    },
}

/// What a range operation does to each leaf inside the range.
enum Action<'f> {
    Unmap(&'f mut dyn FnMut(UnmappedLeaf)),
    Protect(PageTableFlags),
    Destroy(&'f mut dyn FnMut(Removed)),
}

impl<M: PhysMem> PageTable<'_, M> {
    /// Unmap every leaf in `[start, end)` (4 KiB aligned; `end == 0` means the top of
    /// the address space), calling `on_leaf` with each removed leaf. Refused, with
    /// nothing changed, when a software entry overlaps the range or a huge leaf straddles
    /// an end (see the module doc). Every table left empty is unlinked and handed to the
    /// sink, so unmapping whole table regions frees all their table frames.
    pub fn unmap_range<S: FlushSink + ?Sized>(
        &mut self,
        start: u64,
        end: u64,
        sink: &mut S,
        mut on_leaf: impl FnMut(UnmappedLeaf),
    ) -> Result<(), RangeError> {
        let Some(span) = span(start, end)? else {
            return Ok(());
        };
        self.check_range(span)?;
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
    /// dirty kept). Unmapped parts of the range are skipped; refused like
    /// [`unmap_range`](Self::unmap_range).
    pub fn protect_range<S: FlushSink + ?Sized>(
        &mut self,
        start: u64,
        end: u64,
        flags: PageTableFlags,
        sink: &mut S,
    ) -> Result<(), RangeError> {
        let checked = span(start, end)?;
        if !valid_leaf_flags(flags) {
            return Err(RangeError::InvalidFlags);
        }
        let Some(span) = checked else {
            return Ok(());
        };
        self.check_range(span)?;
        self.apply(self.root, 4, 0, span, &mut Action::Protect(flags), sink);
        Ok(())
    }

    /// Tear the whole tree down: remove every leaf and software entry of both halves
    /// (calling `on_removed` with each; the software entries of a token still
    /// outstanding included) and hand every table, the root included, to the sink.
    pub fn destroy<S: FlushSink + ?Sized>(self, sink: &mut S, mut on_removed: impl FnMut(Removed)) {
        let mut action = Action::Destroy(&mut on_removed);
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

    /// Refuse `span` if a software entry overlaps it or a huge leaf straddles an end.
    fn check_range(&self, span: Span) -> Result<(), RangeError> {
        let cursor: Cursor<'_, '_, M> = self.cursor_over(Some(span));
        let end = span.last.wrapping_add(1);
        for slot in cursor {
            match slot.kind {
                SlotKind::Software(_) => {
                    let (va, size) = slot_of(slot.va.as_u64(), slot.level);
                    return Err(RangeError::Busy { va, size });
                }
                SlotKind::Leaf(t) if !slot.within(span.start, end) => {
                    return Err(RangeError::Straddles {
                        va: slot.va,
                        size: t.size,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Apply `action` to every leaf in `span` below the table at `table` (level
    /// `level`, mapping from `base`; the root ignores `base`). Every leaf met lies inside
    /// `span` (checked by [`check_range`](Self::check_range), or the whole half).
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
            if entry.is_unused() {
                continue;
            }
            if !entry.is_present() {
                if let Action::Destroy(on_removed) = action {
                    slot.store(0, Ordering::Release);
                    on_removed(Removed::Software {
                        va: vaddr(va),
                        level,
                        entry: SoftwareEntry::decode(entry, level)
                            .unwrap_or(SoftwareEntry::Unknown(entry)),
                    });
                }
                continue;
            }
            if let Some(size) = entry.leaf_size(level) {
                match action {
                    Action::Unmap(on_leaf) => {
                        let old = Entry::from_raw(slot.swap(0, Ordering::AcqRel));
                        sink.flush_page(vaddr(va), size);
                        on_leaf(unmapped(va, old, size));
                    }
                    Action::Destroy(on_removed) => {
                        let old = Entry::from_raw(slot.swap(0, Ordering::AcqRel));
                        sink.flush_page(vaddr(va), size);
                        on_removed(Removed::Leaf(unmapped(va, old, size)));
                    }
                    Action::Protect(flags) => {
                        self.update_leaf(slot, size, *flags, va, sink);
                    }
                }
            } else {
                let child = entry.table_addr();
                self.apply(child, level - 1, va, span, action, sink);
                if !matches!(action, Action::Protect(_)) && self.is_empty_table(child) {
                    slot.store(0, Ordering::Release);
                    sink.defer_free_table(child);
                }
            }
        }
    }
}
