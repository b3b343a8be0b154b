//! Huge pages of shared regions: promotion and split of blocks that a
//! [`SharedRegion`] holds and that several address spaces may map.
//!
//! # Design: the block first, then each space's mapping
//!
//! The block and its mappings change in separate steps, because the lock order allows
//! one address space's lock at a time (ARCHITECTURE.md, lock order):
//!
//! - **the block** changes under the region's lock and the reverse-map lock, with no
//!   page table touched: the 512 blocks are fused into one compound block (or the
//!   compound split into 512), the region's index gets one entry instead of 512 (or
//!   512 instead of one) with one holder and one hold each, and every reverse-map
//!   entry moves to the new head with its offset in the block recomputed. Every leaf
//!   keeps mapping the same frames, so nothing needs a shootdown: after a fuse a space
//!   maps the compound's frames by leaves of the old size (a huge block mapped by
//!   smaller leaves, which the reverse map records with their offsets already), and
//!   before a split every huge leaf of the block has been split to the child size;
//! - **each mapping** then changes under its own space's lock alone, exactly like a
//!   private promotion's or split's table step: non-present entries, a shootdown of
//!   that space's CPUs, the new leaf or table, the reverse-map entries replaced.
//!
//! A promotion ([`Mm::promote`] on a shared VMA) requires the range's 512 leaves in the
//! calling space to map the region's 512 blocks (or pieces of one compound block of the
//! target size) in order; it fuses them if they are not fused yet, promotes the caller's
//! mapping, then every other space's that maps the compound by 512 aligned leaves of the
//! child size in order. A space that maps it otherwise (not aligned to the huge size,
//! partly, never-huge) keeps its smaller leaves of the compound's frames, as does a space
//! whose own step fails (transiently) after the block step: a valid state, which a
//! later promotion from that space completes with its table step alone. A split
//! ([`Mm::split_huge`]) splits every huge leaf of the block, in every space, then the
//! block.
//!
//! # Invariants
//!
//! - The block is claimed from the first check to the last step, so no move, exchange,
//!   pin or fault of the region takes it meanwhile (faults wait as on a migration).
//! - The block step is refused (`Busy`) while any child has references beyond its
//!   mappings and the region's hold (an unmap's shootdown is pending: its reference
//!   would be dropped on a block that is no longer a head), or a map count ahead of its
//!   reverse-map entries (a leaf split in another space is between its count and its
//!   entries).
//! - The region's index and the holders always agree: key `k` maps the block headed at
//!   the holder of index `k`, and the audit checks it.
//!
//! Lock order, as everywhere: the calling space's lock, the region's, the reverse map's;
//! the other spaces' locks only after the calling space's is dropped, one at a time.

use super::HugeError;
use crate::aspace::{AddressSpace, Flush, Mm, SpaceState};
use crate::backend::phys::PhysMem;
use crate::base::addr::{PageSize, Pfn, PAGE_SIZE};
use crate::frame::compound;
use crate::frame::meta::{FrameFlags, FrameMeta, FrameState};
use crate::frame::refs::CountLock;
use crate::mapping::region::{RegionFrame, SharedRegion};
use crate::mapping::rmap::{Holder, Rmap, RmapEntry, SpaceId};
use crate::mapping::vma::{HugePolicy, SharedBacking};
use crate::paging::{CollapseError, Translation};
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use spin::MutexGuard;
use x86_64::VirtAddr;

fn misaligned() -> HugeError {
    HugeError::NotContiguous(CollapseError::Misaligned)
}

/// Whether `holder` is `region`'s hold at index `index`.
fn held_by(holder: Option<&Holder>, region: &Arc<SharedRegion>, index: u64) -> bool {
    holder
        .is_some_and(|h| h.index == index && core::ptr::eq(h.region.as_ptr(), Arc::as_ptr(region)))
}

/// Check that `head` is a movable, unpinned managed block of `order` held by `region`
/// at `index`, whose only references are its mappings and that hold, and claim it.
fn claim_held(
    rmap: &Rmap,
    meta: &FrameMeta,
    head: Pfn,
    order: u8,
    region: &Arc<SharedRegion>,
    index: u64,
) -> Result<(), HugeError> {
    if meta.state() != FrameState::Allocated || meta.order() != order || !meta.is_managed() {
        return Err(misaligned());
    }
    let flags = meta.flags();
    if flags.contains(FrameFlags::PINNED) || !flags.contains(FrameFlags::MOVABLE) {
        return Err(HugeError::Unmovable);
    }
    if meta.pincount() != 0 {
        return Err(HugeError::Pinned);
    }
    if !held_by(rmap.holder(head), region, index) {
        return Err(HugeError::Inconsistent);
    }
    let entries = rmap.entries(head).len();
    if meta.mapcount() as usize != entries
        || meta.refcount() != meta.mapcount() + 1
        || !meta.try_claim(rmap.counts())
    {
        return Err(HugeError::Busy);
    }
    Ok(())
}

impl<'m, M: PhysMem> Mm<'m, M> {
    /// Promote `[va, va + size)` of the shared VMA starting at `vma_start` of `space`,
    /// whose lock `st` is (see the module doc).
    pub(super) fn promote_shared(
        &self,
        space: &AddressSpace<'m, M>,
        mut st: MutexGuard<'_, SpaceState<'m, M>>,
        backing: &SharedBacking,
        vma_start: u64,
        va: u64,
        size: PageSize,
    ) -> Result<(), HugeError> {
        let child = size.smaller().ok_or(HugeError::BadSize)?;
        let step = child.bytes() / PAGE_SIZE;
        let offset = backing.offset + (va - vma_start);
        if !offset.is_multiple_of(size.bytes()) {
            // No block of the size can start at that offset of the region.
            return Err(HugeError::Unaligned);
        }
        let key = offset / PAGE_SIZE;
        let mut pfn0 = None;
        for i in 0..512u64 {
            let child_va = va + i * child.bytes();
            let t = st
                .pt
                .query(child_va)
                .ok_or(HugeError::NotContiguous(CollapseError::Hole {
                    va: VirtAddr::new_truncate(child_va),
                }))?;
            if t.size != child {
                return Err(HugeError::NotContiguous(CollapseError::AlreadyLeaf));
            }
            let pfn = Pfn::containing(t.leaf_base_pa);
            let first = *pfn0.get_or_insert(pfn);
            if !first.is_aligned(size.order()) || pfn != first.add(i * step) {
                return Err(misaligned());
            }
        }
        let pfn0 = pfn0.ok_or(misaligned())?;
        self.fuse_held(&backing.region, key, pfn0, child)?;
        let own = self.collapse_mapping(space, &mut st, va, size, pfn0);
        drop(st);
        let result = own.map(|flush| flush.complete(self, space));
        if result.is_ok() {
            self.collapse_other_mappings(space.id(), va, size, pfn0);
        }
        self.unclaim_all(&[pfn0]);
        result
    }

    /// The block step of a shared promotion: claim the region's 512 blocks of `child`
    /// size from index `key`, headed at `pfn0` onwards, and fuse them into one compound
    /// block (or claim the compound when they are fused already). The compound stays
    /// claimed.
    fn fuse_held(
        &self,
        region: &Arc<SharedRegion>,
        key: u64,
        pfn0: Pfn,
        child: PageSize,
    ) -> Result<(), HugeError> {
        let order = child.order() + 9;
        let step = child.bytes() / PAGE_SIZE;
        let mut frames = region.frames.lock();
        let mut rmap = self.rmap.lock();
        if let Some(f) = frames.get(&key) {
            if f.head == pfn0 && f.size.order() == order {
                let meta = self.meta(pfn0).ok_or(HugeError::Inconsistent)?;
                return claim_held(&rmap, meta, pfn0, order, region, key);
            }
        }
        let mut claimed: Vec<Pfn> = Vec::with_capacity(512);
        let unclaim = |counts: &CountLock, claimed: &[Pfn]| {
            for &h in claimed {
                if let Some(m) = self.meta(h) {
                    m.unclaim(counts);
                }
            }
        };
        for i in 0..512u64 {
            let (h, index) = (pfn0.add(i * step), key + i * step);
            let frame = RegionFrame {
                head: h,
                size: child,
            };
            let checked = match (frames.get(&index), self.meta(h)) {
                (Some(f), Some(meta)) if *f == frame => {
                    claim_held(&rmap, meta, h, child.order(), region, index)
                }
                _ => Err(misaligned()),
            };
            if let Err(e) = checked {
                unclaim(rmap.counts(), &claimed);
                return Err(e);
            }
            claimed.push(h);
        }
        let table = self.table;
        if let Err(e) = compound::fuse(rmap.counts(), &table, pfn0, child.order()) {
            unclaim(rmap.counts(), &claimed);
            return Err(HugeError::Compound(e));
        }
        let head = self.meta(pfn0).ok_or(HugeError::Inconsistent)?;
        self.count_result(head.merge_holds(rmap.counts(), 512));
        for i in 0..512u64 {
            let (h, index) = (pfn0.add(i * step), key + i * step);
            for e in rmap.entries(h) {
                rmap.remove(h, e.space, e.va.as_u64());
                rmap.insert(
                    pfn0,
                    RmapEntry {
                        offset: e.offset + i * step,
                        ..e
                    },
                );
            }
            rmap.take_holder(h);
            frames.remove(&index);
        }
        rmap.set_holder(
            pfn0,
            Holder {
                region: Arc::downgrade(region),
                index: key,
            },
        );
        frames.insert(
            key,
            RegionFrame {
                head: pfn0,
                size: size_of(order)?,
            },
        );
        Ok(())
    }

    /// The table step of a promotion for one space: its 512 leaves of the claimed block
    /// `head` at `[va, va + size)` become one leaf; returns the flush that frees the old
    /// table, to complete once the space's lock is dropped.
    fn collapse_mapping(
        &self,
        space: &AddressSpace<'m, M>,
        st: &mut SpaceState<'m, M>,
        va: u64,
        size: PageSize,
        head: Pfn,
    ) -> Result<Flush, HugeError> {
        let child = size.smaller().ok_or(HugeError::BadSize)?;
        let (id, step) = (space.id(), child.bytes() / PAGE_SIZE);
        {
            let rmap = self.rmap.lock();
            for i in 0..512u64 {
                let e = rmap.get(head, id, va + i * child.bytes());
                if e.is_none_or(|e| e.size != child || e.offset != i * step) {
                    return Err(misaligned());
                }
            }
        }
        let mut flush = Flush::new();
        let token = match st.pt.begin_collapse(va, size, &mut flush) {
            Ok(token) => token,
            Err(e) => {
                drop(flush);
                return Err(HugeError::NotContiguous(e));
            }
        };
        flush.complete(self, space);
        let mut table_flush = Flush::new();
        if st.pt.finish_collapse(token, &mut table_flush).is_err() {
            // Under the space lock nothing else writes the slot: the tables are corrupt.
            self.count_errors.fetch_add(1, Ordering::AcqRel);
            return Err(HugeError::Inconsistent);
        }
        let mut rmap = self.rmap.lock();
        for i in 0..512u64 {
            rmap.remove(head, id, va + i * child.bytes());
        }
        rmap.insert(
            head,
            RmapEntry {
                space: id,
                va: VirtAddr::new_truncate(va),
                size,
                offset: 0,
            },
        );
        if let Some(meta) = self.meta(head) {
            self.count_result(meta.merge_mappings(rmap.counts(), 512));
        }
        Ok(table_flush)
    }

    /// Promote every other space's mapping of the claimed compound `head` that is made
    /// of 512 aligned leaves of the child size in order; the others keep their leaves.
    fn collapse_other_mappings(&self, caller: SpaceId, caller_va: u64, size: PageSize, head: Pfn) {
        let starts: Vec<(SpaceId, u64)> = self
            .rmap
            .lock()
            .entries(head)
            .into_iter()
            .filter(|e| {
                e.offset == 0
                    && Some(e.size) == size.smaller()
                    && size.is_aligned_va(e.va)
                    && (e.space, e.va.as_u64()) != (caller, caller_va)
            })
            .map(|e| (e.space, e.va.as_u64()))
            .collect();
        for (id, va) in starts {
            let Some(other) = self.space(id) else {
                continue;
            };
            let Ok(mut st) = self.lock_settled(&other, va, va + size.bytes(), true) else {
                continue;
            };
            let huge_ok = st
                .vmas
                .find(va)
                .is_some_and(|v| v.end >= va + size.bytes() && v.flags.huge != HugePolicy::Never);
            if !huge_ok {
                continue;
            }
            let done = self.collapse_mapping(&other, &mut st, va, size, head);
            drop(st);
            if let Ok(flush) = done {
                flush.complete(self, &other);
            }
        }
    }

    /// Split the shared huge block that the leaf `t` at `leaf_va` of `space` maps, whose
    /// lock `st` is: every huge leaf of it in every space, then the block (see the module
    /// doc); returns the new leaf size.
    pub(super) fn split_shared(
        &self,
        space: &AddressSpace<'m, M>,
        mut st: MutexGuard<'_, SpaceState<'m, M>>,
        region: &Arc<SharedRegion>,
        leaf_va: u64,
        t: Translation,
    ) -> Result<PageSize, HugeError> {
        let child = t.size.smaller().ok_or(HugeError::BadSize)?;
        let head = Pfn::containing(t.leaf_base_pa);
        let meta = self.meta(head).ok_or(HugeError::NotMapped)?;
        let key = {
            let _frames = region.frames.lock();
            let rmap = self.rmap.lock();
            let key = rmap
                .holder(head)
                .map(|h| h.index)
                .ok_or(HugeError::Inconsistent)?;
            claim_held(&rmap, meta, head, t.size.order(), region, key)?;
            key
        };
        if let Err(e) = self.split_leaf(space, &mut st, leaf_va, t) {
            self.unclaim_all(&[head]);
            return Err(e.into());
        }
        drop(st);
        let result = self
            .split_other_leaves(head, t.size)
            .and_then(|()| self.split_held(region, key, head, child));
        self.unclaim_all(&[head]);
        result.map(|()| child)
    }

    /// Split every remaining leaf of the claimed block `head` that is as large as the
    /// block, each under its own space's lock.
    fn split_other_leaves(&self, head: Pfn, size: PageSize) -> Result<(), HugeError> {
        let leaves: Vec<RmapEntry> = self
            .rmap
            .lock()
            .entries(head)
            .into_iter()
            .filter(|e| e.size == size)
            .collect();
        for e in leaves {
            let other = self.space(e.space).ok_or(HugeError::Busy)?;
            let va = e.va.as_u64();
            let mut st = self.lock_settled(&other, va, va + 1, false)?;
            match st.pt.query(va) {
                Some(t) if t.size == size && Pfn::containing(t.leaf_base_pa) == head => {
                    self.split_leaf(&other, &mut st, va, t)?;
                }
                _ => return Err(HugeError::Busy),
            }
        }
        Ok(())
    }

    /// The block step of a shared split: the claimed compound `head`, held by `region`
    /// at `key` and mapped by leaves of `child` size or smaller only, becomes 512 blocks
    /// of `child` size, each held by the region and keeping the mappings that fall in it.
    fn split_held(
        &self,
        region: &Arc<SharedRegion>,
        key: u64,
        head: Pfn,
        child: PageSize,
    ) -> Result<(), HugeError> {
        let step = child.bytes() / PAGE_SIZE;
        let mut frames = region.frames.lock();
        let mut rmap = self.rmap.lock();
        let meta = self.meta(head).ok_or(HugeError::Inconsistent)?;
        let entries = rmap.entries(head);
        if entries.iter().any(|e| e.size > child)
            || meta.mapcount() as usize != entries.len()
            || meta.refcount() != meta.mapcount() + 1
            || meta.pincount() != 0
        {
            return Err(HugeError::Busy);
        }
        if !held_by(rmap.holder(head), region, key)
            || frames.get(&key).is_none_or(|f| f.head != head)
        {
            return Err(HugeError::Inconsistent);
        }
        let mut maps: BTreeMap<u64, u32> = BTreeMap::new();
        for e in &entries {
            *maps.entry(e.offset / step).or_default() += 1;
        }
        meta.split_hold(rmap.counts(), 512)
            .map_err(HugeError::Count)?;
        let table = self.table;
        let counts = |i: u64| {
            let n = maps.get(&i).copied().unwrap_or(0);
            (n, n + 1)
        };
        if let Err(e) = compound::split(rmap.counts(), &table, head, child.order(), counts) {
            self.count_result(meta.merge_holds(rmap.counts(), 512));
            return Err(HugeError::Compound(e));
        }
        for e in entries {
            let piece = e.offset / step;
            if piece != 0 {
                rmap.remove(head, e.space, e.va.as_u64());
                rmap.insert(
                    head.add(piece * step),
                    RmapEntry {
                        offset: e.offset - piece * step,
                        ..e
                    },
                );
            }
        }
        frames.remove(&key);
        for i in 0..512u64 {
            let (h, index) = (head.add(i * step), key + i * step);
            frames.insert(
                index,
                RegionFrame {
                    head: h,
                    size: child,
                },
            );
            rmap.set_holder(
                h,
                Holder {
                    region: Arc::downgrade(region),
                    index,
                },
            );
        }
        Ok(())
    }
}

/// The page size of a block of `order`.
fn size_of(order: u8) -> Result<PageSize, HugeError> {
    crate::aspace::size_of_order(order).ok_or(HugeError::Inconsistent)
}

#[cfg(test)]
mod tests;
