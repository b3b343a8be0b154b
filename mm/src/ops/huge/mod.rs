//! Huge pages in place: promotion of 512 contiguous, aligned 4 KiB (2 MiB) mappings into
//! one 2 MiB (1 GiB) leaf and compound block, and the split back, the data never moving.
//!
//! # Promotion ([`Mm::promote`])
//!
//! Under the address space's lock (after any migration in the range has settled):
//! 1. the 512 child leaves must map 512 consecutive blocks of the child size, the first
//!    aligned to the new size, with the same flags, in one VMA whose policy allows huge
//!    pages; each block must be a managed, movable, unpinned private block mapped only
//!    there, with no reference beyond that mapping (none held by an unmap whose shootdown
//!    is pending);
//! 2. the blocks are claimed under the reverse-map lock, so no move, exchange or pin can
//!    take them meanwhile;
//! 3. the table is replaced by the huge leaf in two steps ([`PageTable::begin_collapse`],
//!    a shootdown of the space's CPUs, [`PageTable::finish_collapse`]): every child entry
//!    goes non-present first, their accessed/dirty bits are harvested into the new leaf,
//!    and no CPU holds translations of both sizes;
//! 4. under the reverse-map lock the 512 blocks are fused into one compound block
//!    ([`crate::frame::compound::fuse`]), their 512 mappings become the one huge mapping
//!    in the reverse map and the counts, and the claim is dropped;
//! 5. the old table is freed after a second shootdown (the flush owns it).
//!
//! As with the address-space split, the shootdown of step 3 is made with the space's
//! lock held; a CPU touching the range meanwhile faults on the non-present slot and
//! waits for the lock, then finds the huge leaf.
//!
//! # Split ([`Mm::split_huge`])
//!
//! The inverse for a private huge block mapped once: claimed, its leaf split into 512
//! smaller leaves (the two-step split of the address space), then the compound block
//! split into 512 blocks ([`crate::frame::compound::split`]), each taking its own
//! mapping.
//!
//! # Shared regions
//!
//! Pages of a shared region, which several spaces may map, are promoted and split by
//! [`shared`]: the block (with the region's index, holders and reverse map) first,
//! under the region's and the reverse map's locks, then each space's mapping under its
//! own lock; a space whose mapping cannot become one leaf keeps smaller leaves of the
//! compound block.
//!
//! [`PageTable::begin_collapse`]: crate::paging::PageTable::begin_collapse
//! [`PageTable::finish_collapse`]: crate::paging::PageTable::finish_collapse

pub mod churn;
pub mod collapse;
pub mod compact;
pub mod daemon;
pub mod leaves;
mod shared;
#[cfg(test)]
mod tests;

use crate::aspace::vmstat::Event;
use crate::aspace::{AddressSpace, Flush, Mm, SpaceError, SpaceState};
use crate::backend::phys::PhysMem;
use crate::base::addr::{PageSize, Pfn, PAGE_SIZE};
use crate::frame::compound::{self, CompoundError};
use crate::frame::meta::{FrameFlags, FrameMeta, FrameState};
use crate::frame::refs::CountError;
use crate::mapping::rmap::{Rmap, RmapEntry, SpaceId};
use crate::mapping::vma::HugePolicy;
use crate::paging::CollapseError;
use alloc::vec::Vec;
use compact::CompactError;
use core::fmt;
use x86_64::VirtAddr;

/// Why a promotion or split was refused. Nothing changed, except for
/// [`Inconsistent`](Self::Inconsistent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HugeError {
    /// The size is 4 KiB (nothing to promote to or split), or above the largest leaf
    /// allowed ([`Mm::set_max_leaf`]).
    BadSize,
    /// The address is not aligned to the size (or, in a shared VMA, its offset in the
    /// region is not).
    Unaligned,
    /// No VMA covers the whole range, or nothing is mapped there.
    NotMapped,
    /// The VMA is marked never-huge.
    NeverHuge,
    /// The range's leaves cannot become one: a hole, a smaller or larger leaf, frames
    /// not contiguous or not aligned, different flags.
    NotContiguous(CollapseError),
    /// A block is claimed by a move, or holds references beyond its mapping (an unmap's
    /// shootdown is pending): transient, retry.
    Busy,
    /// A block is pinned.
    Pinned,
    /// A block is unmovable (a pinned VMA's).
    Unmovable,
    /// A block is mapped elsewhere too, or held by a shared region.
    Shared,
    /// A frame counter would overflow.
    Count(CountError),
    /// The frame metadata refused (see [`CompoundError`]).
    Compound(CompoundError),
    /// The address space refused.
    Space(SpaceError),
    /// No huge block was free for a copying collapse and none could be compacted.
    Compact(CompactError),
    /// The tables or the metadata changed in a way the checks exclude (a bug or
    /// corruption); the error counter of the audit records it.
    Inconsistent,
}

impl fmt::Display for HugeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HugeError::BadSize => f.write_str("no such huge size here"),
            HugeError::Unaligned => f.write_str("address not aligned to the size"),
            HugeError::NotMapped => f.write_str("range not mapped by one VMA"),
            HugeError::NeverHuge => f.write_str("VMA marked never-huge"),
            HugeError::NotContiguous(e) => write!(f, "not contiguous: {e}"),
            HugeError::Busy => f.write_str("block busy (moving or being unmapped)"),
            HugeError::Pinned => f.write_str("pinned block"),
            HugeError::Unmovable => f.write_str("unmovable block"),
            HugeError::Shared => f.write_str("shared block"),
            HugeError::Count(e) => write!(f, "{e}"),
            HugeError::Compound(e) => write!(f, "{e}"),
            HugeError::Space(e) => write!(f, "{e}"),
            HugeError::Compact(e) => write!(f, "compaction: {e}"),
            HugeError::Inconsistent => f.write_str("tables changed under the operation"),
        }
    }
}

impl core::error::Error for HugeError {}

impl From<SpaceError> for HugeError {
    fn from(e: SpaceError) -> Self {
        match e {
            SpaceError::NotMapped => HugeError::NotMapped,
            e => HugeError::Space(e),
        }
    }
}

/// Check that `head` is a private block of `order` mapped exactly once, at `va` of
/// space `id` by a leaf of `size`, with no other reference, and claim it.
fn claim_private(
    rmap: &Rmap,
    meta: &FrameMeta,
    head: Pfn,
    order: u8,
    id: SpaceId,
    va: u64,
) -> Result<(), HugeError> {
    if meta.state() != FrameState::Allocated || meta.order() != order || !meta.is_managed() {
        return Err(HugeError::NotContiguous(CollapseError::Misaligned));
    }
    let flags = meta.flags();
    if flags.contains(FrameFlags::PINNED) || !flags.contains(FrameFlags::MOVABLE) {
        return Err(HugeError::Unmovable);
    }
    if meta.pincount() != 0 {
        return Err(HugeError::Pinned);
    }
    if rmap.holder(head).is_some() || meta.mapcount() != 1 || rmap.get(head, id, va).is_none() {
        return Err(HugeError::Shared);
    }
    if meta.refcount() != 1 || !meta.try_claim(rmap.counts()) {
        return Err(HugeError::Busy);
    }
    Ok(())
}

impl<'m, M: PhysMem> Mm<'m, M> {
    /// Promote the 512 leaves of `size.smaller()` covering `[va, va + size)` of `space`
    /// into one leaf of `size` (2 MiB or 1 GiB) in place (see the module doc).
    pub fn promote(
        &self,
        space: &AddressSpace<'m, M>,
        va: u64,
        size: PageSize,
    ) -> Result<(), HugeError> {
        let result = self.promote_locked(space, va, size);
        match result {
            Ok(()) => self.vmstat.count(
                if size == PageSize::Size1G {
                    Event::Promote1g
                } else {
                    Event::Promote2m
                },
                1,
            ),
            Err(_) => self.vmstat.count(Event::PromoteFailed, 1),
        }
        result
    }

    fn promote_locked(
        &self,
        space: &AddressSpace<'m, M>,
        va: u64,
        size: PageSize,
    ) -> Result<(), HugeError> {
        self.check_space(space)?;
        let child = size.smaller().ok_or(HugeError::BadSize)?;
        if size > self.max_leaf() {
            return Err(HugeError::BadSize);
        }
        if !size.is_aligned_va(VirtAddr::new_truncate(va)) {
            return Err(HugeError::Unaligned);
        }
        let end = va.checked_add(size.bytes()).ok_or(HugeError::Unaligned)?;
        let mut st = self.lock_settled(space, va, end, true)?;
        let vma = st.vmas.find(va).ok_or(HugeError::NotMapped)?;
        if vma.end < end {
            return Err(HugeError::NotMapped);
        }
        if vma.flags.huge == HugePolicy::Never {
            return Err(HugeError::NeverHuge);
        }
        if let Some(backing) = vma.flags.shared.clone() {
            let vma_start = vma.start;
            return self.promote_shared(space, st, &backing, vma_start, va, size);
        }
        let first = st
            .pt
            .query(va)
            .ok_or(HugeError::NotContiguous(CollapseError::Hole {
                va: VirtAddr::new_truncate(va),
            }))?;
        if first.size != child {
            return Err(HugeError::NotContiguous(CollapseError::AlreadyLeaf));
        }
        let pfn0 = Pfn::containing(first.leaf_base_pa);
        if !pfn0.is_aligned(size.order()) {
            return Err(HugeError::NotContiguous(CollapseError::Misaligned));
        }
        let step = child.bytes() / PAGE_SIZE;
        let (id, order) = (space.id(), child.order());
        let heads: Vec<Pfn> = (0..512).map(|i| pfn0.add(i * step)).collect();
        self.claim_children(&st, &heads, order, id, va, child)?;
        let mut flush = Flush::new();
        let token = match st.pt.begin_collapse(va, size, &mut flush) {
            Ok(token) => token,
            Err(e) => {
                drop(flush);
                self.unclaim_all(&heads);
                return Err(HugeError::NotContiguous(e));
            }
        };
        flush.complete(self, space);
        let mut table_flush = Flush::new();
        if st.pt.finish_collapse(token, &mut table_flush).is_err() {
            // Under the space lock nothing else writes the slot: the tables are corrupt.
            self.count_errors
                .fetch_add(1, core::sync::atomic::Ordering::AcqRel);
            self.unclaim_all(&heads);
            drop(st);
            table_flush.complete(self, space);
            return Err(HugeError::Inconsistent);
        }
        let fused = {
            let mut rmap = self.rmap.lock();
            for (i, &h) in heads.iter().enumerate() {
                rmap.remove(h, id, va + i as u64 * child.bytes());
            }
            let table = self.table;
            let fused = compound::fuse(rmap.counts(), &table, pfn0, order)
                .map_err(HugeError::Compound)
                .and_then(|()| {
                    let meta = self.meta(pfn0).ok_or(HugeError::Inconsistent)?;
                    meta.merge_mappings(rmap.counts(), 512)
                        .map_err(HugeError::Count)
                });
            rmap.insert(
                pfn0,
                RmapEntry {
                    space: id,
                    va: VirtAddr::new_truncate(va),
                    size,
                    offset: 0,
                },
            );
            if let Some(meta) = self.meta(pfn0) {
                meta.unclaim(rmap.counts());
            }
            fused
        };
        if fused.is_err() {
            self.count_errors
                .fetch_add(1, core::sync::atomic::Ordering::AcqRel);
        }
        drop(st);
        table_flush.complete(self, space);
        fused
    }

    /// Step 2 of a promotion: check and claim each child block (all or none).
    fn claim_children(
        &self,
        st: &SpaceState<'m, M>,
        heads: &[Pfn],
        order: u8,
        id: SpaceId,
        va: u64,
        child: PageSize,
    ) -> Result<(), HugeError> {
        let rmap = self.rmap.lock();
        for (i, &h) in heads.iter().enumerate() {
            let child_va = va + i as u64 * child.bytes();
            let claimed = match (self.meta(h), st.pt.query(child_va)) {
                (Some(meta), Some(t))
                    if Pfn::containing(t.leaf_base_pa) == h && t.size == child =>
                {
                    claim_private(&rmap, meta, h, order, id, child_va)
                }
                (_, None) => Err(HugeError::NotContiguous(CollapseError::Hole {
                    va: VirtAddr::new_truncate(child_va),
                })),
                _ => Err(HugeError::NotContiguous(CollapseError::Misaligned)),
            };
            if let Err(e) = claimed {
                for &done in &heads[..i] {
                    if let Some(m) = self.meta(done) {
                        m.unclaim(rmap.counts());
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn unclaim_all(&self, heads: &[Pfn]) {
        let rmap = self.rmap.lock();
        for &h in heads {
            if let Some(m) = self.meta(h) {
                m.unclaim(rmap.counts());
            }
        }
    }

    /// Split the private huge block mapped at `va` of `space` (2 MiB or 1 GiB, mapped
    /// once by one leaf) into 512 blocks of the next size down, each mapped by its own
    /// leaf, in place (see the module doc); returns the new leaf size.
    pub fn split_huge(&self, space: &AddressSpace<'m, M>, va: u64) -> Result<PageSize, HugeError> {
        let result = self.split_locked(space, va);
        match result {
            Ok(PageSize::Size2M) => self.vmstat.count(Event::Split1g, 1),
            Ok(_) => self.vmstat.count(Event::Split2m, 1),
            Err(_) => {}
        }
        result
    }

    fn split_locked(&self, space: &AddressSpace<'m, M>, va: u64) -> Result<PageSize, HugeError> {
        self.check_space(space)?;
        let mut st = self.lock_settled(space, va, va.saturating_add(1), false)?;
        let t = st.pt.query(va).ok_or(HugeError::NotMapped)?;
        let child = t.size.smaller().ok_or(HugeError::BadSize)?;
        let vma = st.vmas.find(va).ok_or(HugeError::NotMapped)?;
        let leaf_va = va & !(t.size.bytes() - 1);
        if let Some(backing) = vma.flags.shared.clone() {
            return self.split_shared(space, st, &backing.region, leaf_va, t);
        }
        let head = Pfn::containing(t.leaf_base_pa);
        let meta = self.meta(head).ok_or(HugeError::NotMapped)?;
        let id = space.id();
        claim_private(&self.rmap.lock(), meta, head, t.size.order(), id, leaf_va)?;
        if let Err(e) = self.split_leaf(space, &mut st, leaf_va, t) {
            self.unclaim_all(&[head]);
            return Err(e.into());
        }
        let step = child.bytes() / PAGE_SIZE;
        let result = {
            let mut rmap = self.rmap.lock();
            let table = self.table;
            let split = compound::split(rmap.counts(), &table, head, child.order(), |_| (1, 1))
                .map_err(HugeError::Compound);
            if split.is_ok() {
                for i in 0..512u64 {
                    let child_va = leaf_va + i * child.bytes();
                    if let Some(mut e) = rmap.remove(head, id, child_va) {
                        e.offset = 0;
                        rmap.insert(head.add(i * step), e);
                    }
                }
            }
            meta.unclaim(rmap.counts());
            split
        };
        match result {
            Ok(()) => Ok(child),
            Err(e) => {
                self.count_errors
                    .fetch_add(1, core::sync::atomic::Ordering::AcqRel);
                Err(e)
            }
        }
    }
}
