//! A cursor over a virtual range that sees every kind of slot: unused, table pointer,
//! present leaf and software entry, at every level, each with the virtual range it
//! covers.
//!
//! The cursor borrows the [`PageTable`] shared, so no software change happens while it
//! lives (the page table is the single software writer of its tree); only the MMU may
//! set accessed/dirty bits meanwhile, which [`SlotKind::Leaf`] reports as read.

use super::range::{span, Span};
use super::{
    entry_span, translation, vaddr, Entry, PageTable, RangeError, SoftwareEntry, Translation,
    LOWER_HALF_END, UPPER_HALF_START,
};
use crate::backend::phys::PhysMem;
use x86_64::{PhysAddr, VirtAddr};

#[cfg(test)]
mod tests;

/// What a slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SlotKind {
    /// Nothing (all bits zero).
    Absent,
    /// A pointer to the next-level table at this address; the cursor visits its slots
    /// next.
    Table(PhysAddr),
    /// A present leaf, translated at its first byte.
    Leaf(Translation),
    /// A non-present entry with other bits set.
    Software(SoftwareEntry),
}

/// One slot met by a [`Cursor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    /// The first virtual address the slot covers (it may lie before the cursor's start).
    pub va: VirtAddr,
    /// The level of the table holding the slot (1..=4).
    pub level: u8,
    /// The raw entry.
    pub entry: Entry,
    /// What the entry is.
    pub kind: SlotKind,
}

impl Slot {
    /// The number of bytes the slot covers.
    pub fn bytes(&self) -> u64 {
        entry_span(self.level)
    }

    /// The last virtual address the slot covers.
    pub fn last(&self) -> u64 {
        self.va.as_u64() + (self.bytes() - 1)
    }

    /// Whether the slot lies entirely inside `[start, end)` (`end == 0` meaning 2^64).
    pub fn within(&self, start: u64, end: u64) -> bool {
        self.va.as_u64() >= start && self.last() <= end.wrapping_sub(1)
    }
}

/// In-order, depth-first iteration over the slots overlapping a range: a table slot comes
/// before the slots of its table. Unused slots are reported at the level where the walk
/// finds them, so an unmapped gigabyte is one slot, not 262 144.
pub struct Cursor<'a, 'm, M: PhysMem> {
    table: &'a PageTable<'m, M>,
    /// Address of the next slot (canonical unless `done`).
    next: u64,
    /// Level of the next slot.
    level: u8,
    /// Last address of the range (inclusive).
    last: u64,
    done: bool,
}

impl<'m, M: PhysMem> PageTable<'m, M> {
    /// A cursor over the slots overlapping `[start, end)` (4 KiB aligned, canonical, in
    /// one half; `end == 0` means 2^64). An empty range yields nothing.
    pub fn cursor(&self, start: u64, end: u64) -> Result<Cursor<'_, 'm, M>, RangeError> {
        Ok(self.cursor_over(span(start, end)?))
    }

    /// A cursor over `span` (`None`: nothing).
    pub(super) fn cursor_over(&self, span: Option<Span>) -> Cursor<'_, 'm, M> {
        let (next, last, done) = match span {
            Some(s) => (s.start, s.last, false),
            None => (0, 0, true),
        };
        Cursor {
            table: self,
            next,
            level: 4,
            last,
            done,
        }
    }
}

impl<M: PhysMem> Cursor<'_, '_, M> {
    /// Move past the slot at `base` of `level`: to the next slot of the same table, or of
    /// the lowest table above that has one.
    fn advance(&mut self, base: u64, level: u8) {
        let Some(mut next) = base.checked_add(entry_span(level)) else {
            self.done = true;
            return;
        };
        if next == LOWER_HALF_END {
            next = UPPER_HALF_START;
        }
        if next > self.last {
            self.done = true;
            return;
        }
        let mut level = level;
        while level < 4 && next.is_multiple_of(entry_span(level + 1)) {
            level += 1;
        }
        self.next = next;
        self.level = level;
    }
}

impl<M: PhysMem> Iterator for Cursor<'_, '_, M> {
    type Item = Slot;

    fn next(&mut self) -> Option<Slot> {
        if self.done {
            return None;
        }
        let va = self.next;
        let d = self.table.descend(va, self.level);
        let level = d.level;
        let base = va & !(entry_span(level) - 1);
        let entry = d.entry;
        let kind = if entry.is_unused() {
            SlotKind::Absent
        } else if let Some(size) = entry.leaf_size(level) {
            SlotKind::Leaf(translation(entry, size, 0))
        } else if entry.is_present() {
            SlotKind::Table(entry.table_addr())
        } else {
            SlotKind::Software(
                SoftwareEntry::decode(entry, level).unwrap_or(SoftwareEntry::Unknown(entry)),
            )
        };
        if matches!(kind, SlotKind::Table(_)) {
            self.level = level - 1;
        } else {
            self.advance(base, level);
        }
        Some(Slot {
            va: vaddr(base),
            level,
            entry,
            kind,
        })
    }
}
