//! In-order iteration over the leaves of a page table.

use super::{
    entry_span, translation, vaddr, PageTable, Translation, LOWER_HALF_END, UPPER_HALF_START,
};
use crate::backend::phys::PhysMem;
use x86_64::VirtAddr;

/// Iterator over the leaves overlapping a virtual range, in address order, as
/// `(first virtual address of the leaf, its translation at that address)`.
///
/// Each step walks down from the root, so the iterator sees the tree as it is at that
/// step; it skips unmapped regions a whole table entry at a time.
pub struct Walk<'a, 'm, M: PhysMem> {
    table: &'a PageTable<'m, M>,
    /// Next address to look at (canonical unless `done`).
    next: u64,
    /// Last address of the range (inclusive).
    last: u64,
    done: bool,
}

impl<'m, M: PhysMem> PageTable<'m, M> {
    /// The leaves overlapping `[start, end)` (`end == 0` means 2^64), in order. A leaf
    /// that begins before `start` is included, with its own first address. The
    /// non-canonical hole is skipped; an empty or reversed range yields nothing.
    pub fn walk(&self, start: u64, end: u64) -> Walk<'_, 'm, M> {
        let empty = start == end || (end != 0 && start > end);
        Walk {
            table: self,
            next: start,
            last: end.wrapping_sub(1),
            done: empty,
        }
    }

    /// Every leaf of the address space, in order.
    pub fn walk_all(&self) -> Walk<'_, 'm, M> {
        Walk {
            table: self,
            next: 0,
            last: u64::MAX,
            done: false,
        }
    }
}

impl<M: PhysMem> Walk<'_, '_, M> {
    /// Continue at `next` (the first address after what was just looked at, `None` on
    /// overflow), or stop when it lies past the range.
    fn advance(&mut self, next: Option<u64>) {
        match next {
            Some(next) if next <= self.last => self.next = next,
            _ => self.done = true,
        }
    }
}

impl<M: PhysMem> Iterator for Walk<'_, '_, M> {
    type Item = (VirtAddr, Translation);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let va = self.next;
            if (LOWER_HALF_END..UPPER_HALF_START).contains(&va) {
                self.advance(Some(UPPER_HALF_START));
                continue;
            }
            let d = self.table.descend(va, 1);
            match d.entry.leaf_size(d.level) {
                Some(size) => {
                    let base = va & !(size.bytes() - 1);
                    self.advance(base.checked_add(size.bytes()));
                    return Some((vaddr(base), translation(d.entry, size, 0)));
                }
                None => {
                    let step = entry_span(d.level);
                    self.advance((va & !(step - 1)).checked_add(step));
                }
            }
        }
        None
    }
}
