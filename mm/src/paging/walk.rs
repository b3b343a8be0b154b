//! In-order iteration over the leaves of a page table.

use super::{
    entry_span, index, translation, vaddr, PageTable, Translation, LOWER_HALF_END, UPPER_HALF_START,
};
use crate::backend::phys::PhysMem;
use x86_64::{PhysAddr, VirtAddr};

/// Iterator over the leaves overlapping a virtual range, in address order, as
/// `(first virtual address of the leaf, its translation at that address)`.
///
/// It skips unmapped regions a whole table entry at a time. A step walks down from the
/// root, except inside the 2 MiB that the last step's level-1 table maps, which it reads
/// there directly: the walk borrows the page table shared, so no table is freed or
/// replaced while it lives (only the MMU sets accessed/dirty bits meanwhile).
pub struct Walk<'a, 'm, M: PhysMem> {
    table: &'a PageTable<'m, M>,
    /// The level-1 table the last step went through and the first address it maps.
    last_pte_table: Option<(PhysAddr, u64)>,
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
            last_pte_table: None,
            next: start,
            last: end.wrapping_sub(1),
            done: empty,
        }
    }

    /// Every leaf of the address space, in order.
    pub fn walk_all(&self) -> Walk<'_, 'm, M> {
        Walk {
            table: self,
            last_pte_table: None,
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

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let va = self.next;
            if (LOWER_HALF_END..UPPER_HALF_START).contains(&va) {
                self.advance(Some(UPPER_HALF_START));
                continue;
            }
            let pmd_span = entry_span(2);
            let (level, entry) = match self.last_pte_table {
                Some((table, first)) if va & !(pmd_span - 1) == first => {
                    (1, self.table.load(table, index(va, 1)))
                }
                _ => {
                    let d = self.table.descend(va, 1);
                    self.last_pte_table = (d.level == 1).then(|| (d.path[1], va & !(pmd_span - 1)));
                    (d.level, d.entry)
                }
            };
            match entry.leaf_size(level) {
                Some(size) => {
                    let base = va & !(size.bytes() - 1);
                    self.advance(base.checked_add(size.bytes()));
                    return Some((vaddr(base), translation(entry, size, 0)));
                }
                None => {
                    let step = entry_span(level);
                    self.advance((va & !(step - 1)).checked_add(step));
                }
            }
        }
        None
    }
}
