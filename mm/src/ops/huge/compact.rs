//! Compaction of one aligned window for the copying collapse, when no free huge block
//! exists: the window is chosen by the contiguity module's window search
//! ([`crate::ops::contig::anchor::choose`] over the memory snapshot), with the range's
//! own blocks as the resident pages (a block already at its offset in a window stays
//! there and costs nothing); every other block in the window is migrated to a free
//! block outside it; the window is then checked free by allocating it exactly, and
//! handed back for the copy to migrate the range's pages into.
//!
//! A window holding a blocked frame (kernel, reserved, unmovable, pinned) or another
//! VMA's claimed window is never chosen: when every window has one, the compaction
//! fails with [`CompactError::NoWindow`] and nothing moved. Counted in `VMSTAT` as
//! Linux does: `compact_stall` per compaction, `compact_success` / `compact_fail`, and
//! `compact_migrated` for the 4 KiB pages moved out of windows.

use crate::aspace::vmstat::Event;
use crate::aspace::{AddressSpace, Mm};
use crate::backend::phys::PhysMem;
use crate::base::addr::{PageSize, Pfn, MAX_ORDER, PAGE_SIZE};
use crate::frame::buddy::MigrateType;
use crate::frame::meta::FrameState;
use crate::ops::contig::anchor::{self, FrameClass, Unit};
use crate::ops::error::MigrateError;
use crate::ops::migrate::Destination;
use alloc::vec::Vec;
use core::fmt;

/// Why a window could not be compacted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompactError {
    /// Every aligned window holds a blocked or claimed frame (nothing moved).
    NoWindow,
    /// No free block outside the window for a block in it (nothing moved).
    NoDestination,
    /// A block in the window did not move (the others that did stay moved).
    Migrate(MigrateError),
    /// The window was not free after the moves (another allocation took a frame).
    Taken,
}

impl fmt::Display for CompactError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompactError::NoWindow => f.write_str("no window without blocked frames"),
            CompactError::NoDestination => f.write_str("no free block outside the window"),
            CompactError::Migrate(e) => write!(f, "a block in the window did not move: {e}"),
            CompactError::Taken => f.write_str("the window was taken meanwhile"),
        }
    }
}

impl core::error::Error for CompactError {}

impl<'m, M: PhysMem> Mm<'m, M> {
    /// Free an aligned window of `size` for the pages of `[va, va + size)` of `space`
    /// (see the module doc); returns its first frame. The range's blocks already at
    /// their offset in it are left there.
    pub(super) fn compact_window(
        &self,
        space: &AddressSpace<'m, M>,
        va: u64,
        size: PageSize,
    ) -> Result<Pfn, CompactError> {
        self.vmstat.count(Event::CompactStall, 1);
        let result = self.compact_locked(space, va, size);
        self.vmstat.count(
            if result.is_ok() {
                Event::CompactSuccess
            } else {
                Event::CompactFail
            },
            1,
        );
        result
    }

    fn compact_locked(
        &self,
        space: &AddressSpace<'m, M>,
        va: u64,
        size: PageSize,
    ) -> Result<Pfn, CompactError> {
        let pages = size.bytes() / PAGE_SIZE;
        let end = va + size.bytes();
        let units: Vec<Unit> = space
            .leaves()
            .into_iter()
            .filter(|(v, _)| (va..end).contains(&v.as_u64()))
            .map(|(v, t)| Unit {
                vpn: (v.as_u64() - va) / PAGE_SIZE,
                pfn: Pfn::containing(t.leaf_base_pa).0,
                pages: t.size.bytes() / PAGE_SIZE,
                pinned: false,
            })
            .collect();
        let table_len = self.table.len() as u64;
        let view = self.phys_view(Pfn(0), Pfn(table_len), None);
        let choice =
            anchor::choose(&view, &units, 0, pages, pages).ok_or(CompactError::NoWindow)?;
        let window = Pfn(choice.pfn_start);
        let in_window = |p: Pfn| p >= window && p < window.add(pages);
        if (0..pages).any(|i| {
            matches!(
                view.class(window.add(i)),
                FrameClass::Blocked | FrameClass::Claimed
            )
        }) {
            return Err(CompactError::NoWindow);
        }
        let placed = |head: Pfn| {
            units
                .iter()
                .any(|u| u.pfn == head.0 && head == window.add(u.vpn))
        };
        let table = self.table;
        let mut blocks: Vec<(Pfn, u8)> = Vec::new();
        let mut pfn = window;
        while in_window(pfn) {
            let head = table.head_of(pfn).unwrap_or(pfn);
            let meta = table.get(head);
            let order = meta.map_or(0, |m| m.order());
            if meta.is_some_and(|m| m.state() == FrameState::Allocated)
                && view.class(pfn) == FrameClass::Movable
                && !placed(head)
            {
                blocks.push((head, order));
            }
            pfn = head.add(1 << order).max(pfn.add(1));
        }
        let requests = self.destinations_outside(window, pages, &blocks)?;
        let moved = self.migrate_batch(&requests);
        let migrated: u64 = blocks
            .iter()
            .zip(&moved)
            .filter(|(_, r)| r.is_ok())
            .map(|(&(_, o), _)| 1u64 << o)
            .sum();
        self.vmstat.count(Event::CompactMigrated, migrated);
        if let Some(Err(e)) = moved.into_iter().find(|r| r.is_err()) {
            return Err(CompactError::Migrate(e));
        }
        // The window must be free now but for the range's own blocks in place: each free
        // stretch between them is allocated exactly (and given back at once).
        let mut kept: Vec<(u64, u64)> = units
            .iter()
            .filter(|u| window.add(u.vpn) == Pfn(u.pfn))
            .map(|u| (u.vpn, u.pages))
            .collect();
        kept.sort_unstable();
        let mut at = 0;
        while at < pages {
            if let Some(&(_, n)) = kept.iter().find(|&&(vpn, _)| vpn == at) {
                at += n;
                continue;
            }
            let next = kept.iter().map(|&(vpn, _)| vpn).find(|&vpn| vpn > at);
            let order = free_order(window.add(at), next.unwrap_or(pages) - at);
            let got = self
                .frames
                .alloc_at(window.add(at), order, MigrateType::Movable)
                .map_err(|_| CompactError::Taken)?;
            self.free_block(got, order);
            at += 1 << order;
        }
        Ok(window)
    }

    /// A free block outside `[window, window + pages)` for each block, as migration
    /// requests; blocks the allocator hands out inside the window are held until all are
    /// chosen, then every block is given back for the migrations to take.
    fn destinations_outside(
        &self,
        window: Pfn,
        pages: u64,
        blocks: &[(Pfn, u8)],
    ) -> Result<Vec<(Pfn, Destination)>, CompactError> {
        let overlaps = |p: Pfn, o: u8| p < window.add(pages) && window < p.add(1 << o);
        let mut held = Vec::new();
        let mut out = Vec::with_capacity(blocks.len());
        let mut short = false;
        for &(head, order) in blocks {
            let mut dst = None;
            while dst.is_none() {
                match self.frames.alloc(order, MigrateType::Movable, None) {
                    Ok(p) if overlaps(p, order) => held.push((p, order)),
                    Ok(p) => {
                        held.push((p, order));
                        dst = Some(p);
                    }
                    Err(_) => break,
                }
            }
            match dst {
                Some(p) => out.push((head, Destination::Frame(p))),
                None => {
                    short = true;
                    break;
                }
            }
        }
        for (p, o) in held {
            self.free_block(p, o);
        }
        if short {
            Err(CompactError::NoDestination)
        } else {
            Ok(out)
        }
    }
}

/// The largest order of a block starting at `pfn`, aligned, and no longer than `pages`.
fn free_order(pfn: Pfn, pages: u64) -> u8 {
    let mut order = 0u8;
    while order < MAX_ORDER && pfn.is_aligned(order + 1) && (1u64 << (order + 1)) <= pages {
        order += 1;
    }
    order
}

#[cfg(test)]
mod tests;
