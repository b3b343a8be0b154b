//! The move engine: the one protocol every operation that moves or reshapes in-use
//! blocks follows (migration today; exchange, contiguity generation and promotion plug in
//! as further [`Move`]s).
//!
//! # Protocol
//!
//! A batch is a list of *units*; a unit claims one or more blocks (a migration claims its
//! source, an exchange both of its blocks) and says, through its [`Move`], what becomes
//! of them. For the whole batch:
//!
//! 1. **claim** each block of each unit under the reverse-map lock, the lock under which
//!    a managed block's head, state and order are stable (a managed block is freed only
//!    after its last reference was dropped under that lock): the block is re-read there
//!    and refused with [`MigrateError::Changed`] if it is no longer what the caller saw
//!    before the lock; it must be a managed head, movable, unpinned and unclaimed; the
//!    claim (the owner word's `MIGRATING` bit, taken by compare-exchange) holds one
//!    reference. Then [`Move::prepare`] (a migration allocates its destination there).
//!    A unit that fails here drops its claims; nothing else changed.
//! 2. **install**: under each address space's lock, every mapping of every claimed block
//!    is replaced by a migration entry with a compare-exchange (retried when the MMU sets
//!    accessed/dirty meanwhile, so those bits are carried over). A unit whose tables
//!    disagree with the reverse map is put back exactly (original leaves, claims dropped,
//!    [`Move::abandon`]) and reported.
//! 3. **shoot down** once for the whole batch: one request to the union of the CPUs that
//!    have any of the batch's address spaces loaded, covering every migration entry
//!    installed (a full flush past the range limit). Then wait, per block, until no unmap
//!    of it is still between its table change and its own shootdown.
//! 4. **transform** ([`Move::transform`]) with no lock held: copy, swap, or nothing.
//! 5. **remap**: each block's holder (a shared region's pointer and reference) moves to
//!    [`Move::target`], then, in each address space, every migration entry becomes a leaf
//!    of the same size and flags to the target's frame at the same offset, its
//!    reverse-map entry, map count and reference moving with it.
//! 6. **finish** ([`Move::finish`]): the unit drops its claims; blocks that lost their
//!    last reference are freed. The migration epoch is bumped so that CPUs waiting on a
//!    migration entry retry.
//!
//! A CPU touching a block during steps 2-5 faults on the migration entry, waits without
//! holding any lock and retries. Unmap, protect and destroy wait the same way for a
//! migration entry in their range, so only the batch that installed an entry removes it.
//! A slot that nevertheless no longer holds the entry at step 5 (or when a unit is put
//! back) is not written: the mapping is dropped from the reverse map with its counts, the
//! unit reports [`MigrateError::Inconsistent`], and no entry is left behind for a CPU to
//! wait on forever.

#[cfg(test)]
mod tests;

use crate::aspace::{size_of_order, AddressSpace, Flush, Mm, SpaceId};
use crate::backend::flush::FlushSink;
use crate::backend::phys::PhysMem;
use crate::base::addr::Pfn;
use crate::base::cpuset::CpuSet;
use crate::frame::meta::{FrameFlags, FrameState};
use crate::frame::refs::Released;
use crate::mapping::region::SharedRegion;
use crate::ops::error::MigrateError;
use crate::paging::{MigrationEntry, RawError};
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use x86_64::VirtAddr;

/// What the claim saw of a block before taking the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    order: u8,
}

/// One migration entry installed for a claimed block.
pub(crate) struct Installed<'m, M: PhysMem> {
    space: Arc<AddressSpace<'m, M>>,
    va: u64,
    /// Index, in 4 KiB frames from the head, of the first frame the leaf maps.
    offset: u64,
    mig: MigrationEntry,
}

/// A block claimed by a unit: its head and order, stable until the unit finishes.
pub(crate) struct Claimed<'m, M: PhysMem> {
    /// Head of the block.
    pub head: Pfn,
    /// Order of the block.
    pub order: u8,
    spaces: Vec<SpaceId>,
    installed: Vec<Installed<'m, M>>,
    /// Mappings found gone at remap or put-back (see the module doc).
    lost: usize,
}

/// What one unit of a batch does with the blocks it claims.
pub(crate) trait Move<'m, M: PhysMem> {
    /// What a finished unit reports.
    type Output;

    /// The heads of the blocks to claim, in order.
    fn blocks(&self) -> &[Pfn];

    /// Refuse what can be refused before claiming anything, from the blocks' orders as
    /// seen without a lock (a migration checks its destination here).
    fn check(&self, mm: &Mm<'m, M>, orders: &[u8]) -> Result<(), MigrateError>;

    /// Check the claimed blocks against each other and get what the transform needs (a
    /// migration allocates its destination). On error the claims are dropped and
    /// nothing has changed.
    fn prepare(&mut self, mm: &Mm<'m, M>, claimed: &[Claimed<'m, M>]) -> Result<(), MigrateError>;

    /// Undo [`prepare`](Self::prepare) for a unit that is put back.
    fn abandon(&mut self, mm: &Mm<'m, M>, claimed: &[Claimed<'m, M>]);

    /// With every mapping of every claimed block replaced by a migration entry and every
    /// CPU flushed: transform the memory. No lock is held.
    fn transform(&mut self, mm: &Mm<'m, M>, claimed: &[Claimed<'m, M>]);

    /// The head of the block whose frames the mappings (and holder) of claimed block `i`
    /// point to after the move, at the same offsets.
    fn target(&self, i: usize) -> Pfn;

    /// After the remap, with the claims still held: drop them and free what is no longer
    /// used (through [`Mm::drop_claim`]).
    fn finish(
        self,
        mm: &Mm<'m, M>,
        claimed: &[Claimed<'m, M>],
    ) -> Result<Self::Output, MigrateError>;
}

/// A batch between [`Mm::begin_moves`] and [`Mm::complete_moves`]: its units' migration
/// entries are installed, and CPUs touching them wait until it completes.
#[must_use = "a begun batch leaves migration entries that only completing it removes"]
pub(crate) struct Batch<'m, M: PhysMem, T: Move<'m, M>> {
    results: Vec<Option<Result<T::Output, MigrateError>>>,
    live: Vec<Unit<'m, M, T>>,
}

impl<'m, M: PhysMem, T: Move<'m, M>> Batch<'m, M, T> {
    /// Units whose migration entries are installed.
    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.live.len()
    }
}

/// A unit in flight.
struct Unit<'m, M: PhysMem, T> {
    slot: usize,
    mv: T,
    claimed: Vec<Claimed<'m, M>>,
}

impl<'m, M: PhysMem> Mm<'m, M> {
    /// Steps 1 and 2 for a batch of units (the protocol of the module doc): claim,
    /// prepare and install. Units that fail get their result now; the others wait in the
    /// returned batch for [`complete_moves`](Self::complete_moves).
    pub(crate) fn begin_moves<T: Move<'m, M>>(&self, units: Vec<T>) -> Batch<'m, M, T> {
        let mut results: Vec<Option<Result<T::Output, MigrateError>>> =
            (0..units.len()).map(|_| None).collect();
        let mut claimed = Vec::with_capacity(units.len());
        for (slot, mv) in units.into_iter().enumerate() {
            match self.claim_unit(slot, mv) {
                Ok(unit) => claimed.push(unit),
                Err(e) => results[slot] = Some(Err(e)),
            }
        }
        let mut live = Vec::with_capacity(claimed.len());
        for mut unit in claimed {
            match self.install_unit(&mut unit) {
                Ok(()) => live.push(unit),
                Err(e) => {
                    results[unit.slot] = Some(Err(e));
                    self.put_back(unit);
                }
            }
        }
        Batch { results, live }
    }

    /// Steps 3 to 6 for a batch begun by [`begin_moves`](Self::begin_moves); one result
    /// per unit, in order.
    pub(crate) fn complete_moves<T: Move<'m, M>>(
        &self,
        batch: Batch<'m, M, T>,
    ) -> Vec<Result<T::Output, MigrateError>> {
        let Batch {
            mut results,
            live: mut installed,
        } = batch;
        if !installed.is_empty() {
            self.shoot_down_batch(&installed);
            for unit in &mut installed {
                for c in &unit.claimed {
                    self.wait_unshared(c.head);
                }
                unit.mv.transform(self, &unit.claimed);
            }
            self.remap_all(&mut installed);
            for unit in installed {
                let lost = unit.claimed.iter().any(|c| c.lost > 0);
                let result = unit.mv.finish(self, &unit.claimed);
                // A lost mapping is the news, even when the block then lost its last
                // user because of it.
                results[unit.slot] = Some(if lost {
                    Err(MigrateError::Inconsistent)
                } else {
                    result
                });
            }
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(MigrateError::NotInUse)))
            .collect()
    }

    /// Step 1 for one unit: claim its blocks, then prepare it.
    fn claim_unit<T: Move<'m, M>>(
        &self,
        slot: usize,
        mut mv: T,
    ) -> Result<Unit<'m, M, T>, MigrateError> {
        let blocks = mv.blocks();
        if blocks
            .iter()
            .enumerate()
            .any(|(i, b)| blocks[..i].contains(b))
        {
            return Err(MigrateError::SameBlock);
        }
        let seen = blocks
            .iter()
            .map(|&head| self.look(head))
            .collect::<Result<Vec<Seen>, MigrateError>>()?;
        let orders: Vec<u8> = seen.iter().map(|s| s.order).collect();
        mv.check(self, &orders)?;
        let mut claimed: Vec<Claimed<'m, M>> = Vec::with_capacity(blocks.len());
        for (&head, &seen) in mv.blocks().iter().zip(&seen) {
            match self.claim_block(head, seen) {
                Ok(c) => claimed.push(c),
                Err(e) => {
                    self.release_claims(&claimed);
                    return Err(e);
                }
            }
        }
        if let Err(e) = mv.prepare(self, &claimed) {
            self.release_claims(&claimed);
            return Err(e);
        }
        Ok(Unit { slot, mv, claimed })
    }

    /// What `head` looks like before any lock: refuses what can be refused without one.
    fn look(&self, head: Pfn) -> Result<Seen, MigrateError> {
        let table = self.frames.frame_table();
        let meta = table.get(head).ok_or(MigrateError::OutOfRange)?;
        match table.head_of(head) {
            Some(h) if h == head => {}
            Some(_) => return Err(MigrateError::NotHead),
            None => return Err(MigrateError::NotInUse),
        }
        if meta.state() != FrameState::Allocated {
            return Err(MigrateError::NotInUse);
        }
        let order = meta.order();
        size_of_order(order).ok_or(MigrateError::NotInUse)?;
        Ok(Seen { order })
    }

    /// Claim one block (see the module doc, step 1).
    fn claim_block(&self, head: Pfn, seen: Seen) -> Result<Claimed<'m, M>, MigrateError> {
        let meta = self.meta(head).ok_or(MigrateError::OutOfRange)?;
        let rmap = self.rmap.lock();
        // Under the lock: a managed block is freed only by dropping its last reference
        // under this lock, so what is read now stays true while the claim is held.
        if !meta.is_managed() {
            return Err(MigrateError::NotInUse);
        }
        let table = self.frames.frame_table();
        if table.head_of(head) != Some(head) || meta.state() != FrameState::Allocated {
            return Err(MigrateError::Changed);
        }
        let order = meta.order();
        if order != seen.order {
            return Err(MigrateError::Changed);
        }
        if meta.is_claimed() {
            return Err(MigrateError::AlreadyMigrating);
        }
        let flags = meta.flags();
        if flags.contains(FrameFlags::PINNED) || !flags.contains(FrameFlags::MOVABLE) {
            return Err(MigrateError::Unmovable);
        }
        if meta.pincount() != 0 {
            return Err(MigrateError::Pinned);
        }
        meta.get_ref().map_err(MigrateError::Count)?;
        if !meta.try_claim() {
            self.count_result(meta.put_ref());
            return Err(MigrateError::AlreadyMigrating);
        }
        Ok(Claimed {
            head,
            order,
            spaces: rmap.spaces(head),
            installed: Vec::new(),
            lost: 0,
        })
    }

    /// Drop the claims of a unit that never installed anything.
    fn release_claims(&self, claimed: &[Claimed<'m, M>]) {
        for c in claimed {
            let _ = self.drop_claim(c.head, c.order);
        }
    }

    /// Drop the claim on `head` and the reference it held; free the block (of `order`)
    /// if that was its last reference, and say whether it did.
    pub(crate) fn drop_claim(&self, head: Pfn, order: u8) -> bool {
        let Some(meta) = self.meta(head) else {
            return false;
        };
        let released = {
            let _rmap = self.rmap.lock();
            meta.unclaim();
            self.count_result(meta.put_ref()).unwrap_or(Released::Alive)
        };
        if released == Released::Last {
            self.free_block(head, order);
        }
        released == Released::Last
    }

    /// Step 2 for one unit.
    fn install_unit<T: Move<'m, M>>(&self, unit: &mut Unit<'m, M, T>) -> Result<(), MigrateError> {
        for c in &mut unit.claimed {
            self.install_block(c)?;
        }
        Ok(())
    }

    /// Replace every mapping of one claimed block by a migration entry.
    fn install_block(&self, c: &mut Claimed<'m, M>) -> Result<(), MigrateError> {
        for &id in &c.spaces {
            let Some(space) = self.space(id) else {
                continue;
            };
            let mut st = space.state.lock();
            if st.dead {
                continue;
            }
            let entries = self.rmap.lock().entries_in(c.head, id);
            for e in entries {
                let va = e.va.as_u64();
                let level = e.size.level();
                let expected = c.head.add(e.offset).addr();
                loop {
                    let cur = st
                        .pt
                        .entry_at(va, level)
                        .filter(|cur| cur.leaf_size(level) == Some(e.size))
                        .filter(|cur| cur.leaf_addr(e.size) == expected)
                        .ok_or(MigrateError::Inconsistent)?;
                    let mig =
                        MigrationEntry::from_leaf(cur, e.size).ok_or(MigrateError::Inconsistent)?;
                    match st.pt.compare_exchange_leaf(va, level, cur, mig.entry()) {
                        Ok(()) => {
                            st.migrating.insert(va, (e.size, mig));
                            c.installed.push(Installed {
                                space: space.clone(),
                                va,
                                offset: e.offset,
                                mig,
                            });
                            break;
                        }
                        Err(RawError::Changed(_)) => continue,
                        Err(_) => return Err(MigrateError::Inconsistent),
                    }
                }
            }
        }
        Ok(())
    }

    /// Put a unit that failed in step 2 back exactly: original leaves, claims dropped.
    fn put_back<T: Move<'m, M>>(&self, mut unit: Unit<'m, M, T>) {
        // No shootdown has happened yet: a mapping found gone here may still be cached
        // by the space's CPUs as the leaf it was, so its reference waits for a flush.
        let mut flush = Flush::new();
        let mut cpus = CpuSet::new();
        for c in &mut unit.claimed {
            let installed = core::mem::take(&mut c.installed);
            for inst in installed {
                let mut st = inst.space.state.lock();
                let level = inst.mig.size().level();
                st.migrating.remove(&inst.va);
                if st
                    .pt
                    .compare_exchange_leaf(inst.va, level, inst.mig.entry(), inst.mig.original())
                    .is_err()
                {
                    drop(st);
                    flush.flush_page(VirtAddr::new_truncate(inst.va), inst.mig.size());
                    cpus = cpus.union(&inst.space.cpus().load());
                    self.forget_mapping(c, &inst, &mut flush);
                }
            }
        }
        flush.complete_on(self, cpus);
        unit.mv.abandon(self, &unit.claimed);
        self.release_claims(&unit.claimed);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// A slot no longer holds the migration entry this batch installed: drop the mapping
    /// from the reverse map with its count; its reference goes to `flush`.
    fn forget_mapping(&self, c: &mut Claimed<'m, M>, inst: &Installed<'m, M>, flush: &mut Flush) {
        c.lost += 1;
        let Some(meta) = self.meta(c.head) else {
            return;
        };
        let removed = self.rmap.lock().remove(c.head, inst.space.id(), inst.va);
        if removed.is_some() {
            self.count_result(meta.remove_mapping());
            flush.put_ref(c.head);
        }
    }

    /// Step 3: one shootdown for every migration entry of the batch, to the union of the
    /// CPUs of its address spaces.
    fn shoot_down_batch<T: Move<'m, M>>(&self, units: &[Unit<'m, M, T>]) {
        let mut flush = Flush::new();
        let mut cpus = CpuSet::new();
        let mut seen: BTreeMap<SpaceId, ()> = BTreeMap::new();
        for inst in units
            .iter()
            .flat_map(|u| &u.claimed)
            .flat_map(|c| &c.installed)
        {
            if seen.insert(inst.space.id(), ()).is_none() {
                cpus = cpus.union(&inst.space.cpus().load());
            }
            flush.flush_page(VirtAddr::new_truncate(inst.va), inst.mig.size());
        }
        flush.complete_on(self, cpus);
    }

    /// Step 3, second half: wait until the block's only references are its mappings,
    /// its holder, its pins and the claim (an unmap that already took a mapping off the
    /// tables holds a reference until its shootdown has completed).
    fn wait_unshared(&self, head: Pfn) {
        let Some(meta) = self.meta(head) else {
            return;
        };
        loop {
            {
                let rmap = self.rmap.lock();
                let expected =
                    meta.mapcount() + u32::from(rmap.holder(head).is_some()) + meta.pincount() + 1;
                if meta.refcount() <= expected {
                    return;
                }
            }
            core::hint::spin_loop();
        }
    }

    /// Step 5 for the whole batch: each unit's holders, then every leaf, to the
    /// targets, with one lock of each address space (and of the reverse map under it)
    /// for all the batch's migration entries in that space.
    fn remap_all<T: Move<'m, M>>(&self, units: &mut [Unit<'m, M, T>]) {
        let targets: Vec<Vec<Pfn>> = units
            .iter()
            .map(|u| (0..u.claimed.len()).map(|i| u.mv.target(i)).collect())
            .collect();
        let any_holder = {
            let rmap = self.rmap.lock();
            units
                .iter()
                .flat_map(|u| &u.claimed)
                .any(|c| rmap.holder(c.head).is_some())
        };
        if any_holder {
            for (unit, targets) in units.iter().zip(&targets) {
                self.move_holders(&unit.claimed, targets);
            }
        }
        // (unit, claimed block, installed entry), by address space.
        let mut by_space: BTreeMap<SpaceId, Vec<(usize, usize, usize)>> = BTreeMap::new();
        for (u, unit) in units.iter().enumerate() {
            for (i, c) in unit.claimed.iter().enumerate() {
                for (j, inst) in c.installed.iter().enumerate() {
                    by_space.entry(inst.space.id()).or_default().push((u, i, j));
                }
            }
        }
        let mut gone = Vec::new();
        for items in by_space.into_values() {
            let (u0, i0, j0) = items[0];
            let space = units[u0].claimed[i0].installed[j0].space.clone();
            let mut st = space.state.lock();
            let mut rmap = self.rmap.lock();
            // Take every moved mapping off its old block first, then add them to their
            // new ones: in an exchange the two blocks trade mappings.
            let mut moved = Vec::with_capacity(items.len());
            for &(u, i, j) in &items {
                let c = &units[u].claimed[i];
                let inst = &c.installed[j];
                let level = inst.mig.size().level();
                let new = inst.mig.retarget(targets[u][i].add(inst.offset).addr());
                st.migrating.remove(&inst.va);
                let swapped = st
                    .pt
                    .compare_exchange_leaf(inst.va, level, inst.mig.entry(), new);
                let entry = rmap.remove(c.head, space.id(), inst.va);
                match (swapped, entry) {
                    (Ok(()), Some(entry)) => moved.push((u, i, entry)),
                    (_, entry) => gone.push((u, i, entry.is_some())),
                }
            }
            for &(u, i, entry) in &moved {
                let to = targets[u][i];
                let (Some(from), Some(to_meta)) =
                    (self.meta(units[u].claimed[i].head), self.meta(to))
                else {
                    continue;
                };
                rmap.insert(to, entry);
                self.count_result(from.move_mapping_to(to_meta));
            }
        }
        if !gone.is_empty() {
            // The batch's shootdown already covered these addresses: the flush only
            // carries the references.
            let mut flush = Flush::new();
            for (u, i, had_entry) in gone {
                let c = &mut units[u].claimed[i];
                c.lost += 1;
                if had_entry {
                    if let Some(meta) = self.meta(c.head) {
                        self.count_result(meta.remove_mapping());
                    }
                    flush.put_ref(c.head);
                }
            }
            flush.complete_on(self, CpuSet::new());
        }
        for c in units.iter_mut().flat_map(|u| &mut u.claimed) {
            c.installed.clear();
        }
    }

    /// Step 5, first half: each claimed block's holder (a shared region's pointer and
    /// its reference) moves to the block's target, all of a unit's at once: in an
    /// exchange two blocks trade holders. The regions involved are locked in address
    /// order, then the reverse map (the lock order: regions before the reverse map).
    fn move_holders(&self, claimed: &[Claimed<'m, M>], targets: &[Pfn]) {
        let regions: Vec<Arc<SharedRegion>> = {
            let rmap = self.rmap.lock();
            let mut regions: Vec<Arc<SharedRegion>> = claimed
                .iter()
                .filter_map(|c| rmap.holder(c.head)?.region.upgrade())
                .collect();
            regions.sort_by_key(|r| Arc::as_ptr(r) as usize);
            regions.dedup_by(|a, b| Arc::ptr_eq(a, b));
            regions
        };
        if regions.is_empty() {
            return;
        }
        let mut frames: Vec<_> = regions.iter().map(|r| r.frames.lock()).collect();
        let mut rmap = self.rmap.lock();
        let mut taken = Vec::new();
        for (i, c) in claimed.iter().enumerate() {
            let Some(h) = rmap.take_holder(c.head) else {
                continue;
            };
            let region = h.region.upgrade();
            let slot = region.and_then(|r| regions.iter().position(|x| Arc::ptr_eq(x, &r)));
            let points_here =
                slot.is_some_and(|k| frames[k].get(&h.index).is_some_and(|f| f.head == c.head));
            if points_here {
                if let Some(f) = slot.and_then(|k| frames[k].get_mut(&h.index)) {
                    f.head = targets[i];
                }
                taken.push((i, h));
            } else {
                // The region let go of the block meanwhile: leave the holder where it was.
                rmap.set_holder(c.head, h);
            }
        }
        for (i, h) in taken {
            rmap.set_holder(targets[i], h);
            if let (Some(from), Some(to)) = (self.meta(claimed[i].head), self.meta(targets[i])) {
                self.count_result(from.move_ref_to(to));
            }
        }
    }
}
