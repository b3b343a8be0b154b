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
//! 1. **claim** each block of each unit under the reverse-map lock (one hold for the
//!    whole batch), the lock under which a managed block's head, state and order are
//!    stable (a managed block is freed only after its last reference was dropped under
//!    that lock): the block is re-read there and refused with [`MigrateError::Changed`]
//!    if it is no longer what the caller saw before the lock; it must be a managed head,
//!    movable, unpinned and unclaimed; the claim (the owner word's `MIGRATING` bit, set
//!    under that lock, which serialises it) holds one reference; the address spaces mapping the
//!    block are noted there. Then, with no lock held, the exact blocks the claimed units
//!    want ([`Move::wants_at`], a migration's given destination) are allocated together,
//!    in one call of the frame source, and each unit is prepared ([`Move::prepare`]: a
//!    migration takes its destination, or allocates one). A unit that fails here drops
//!    its claims; nothing else changed. A page pinned once its unit has claimed it is
//!    refused by the pin ([`PinError::Migrating`](crate::aspace::PinError::Migrating)),
//!    so the whole batch's claims coming first lets no pin in between.
//! 2. **install**: in each address space noted, under its lock and the reverse map's
//!    (each taken once for all the batch's blocks there), every mapping of every claimed
//!    block is replaced by a migration entry with a compare-exchange (retried when the
//!    MMU sets accessed/dirty meanwhile, so those bits are carried over). A unit whose
//!    tables disagree with the reverse map is put back exactly (original leaves, claims
//!    dropped, [`Move::abandon`]) and reported, once every space has been visited.
//! 3. **shoot down** once for the whole batch: one request to the union of the CPUs that
//!    have any of the batch's address spaces loaded, covering every migration entry
//!    installed (a full flush past the range limit). Then wait, per block, until no unmap
//!    of it is still between its table change and its own shootdown.
//! 4. **transform** ([`Move::transform`]) with no lock held: copy, swap, or nothing.
//! 5. **remap**: each block's holder (a shared region's pointer and reference) moves to
//!    [`Move::target`], then, in each address space, every migration entry becomes a leaf
//!    of the same size and flags to the target's frame at the same offset, its
//!    reverse-map entry, map count and reference moving with it.
//! 6. **finish** ([`Move::finish`]): under one hold of the reverse-map lock, each unit
//!    drops its claims through a [`ClaimDrops`]; the blocks that lost their last
//!    reference are freed together, in one call of the frame source, once the lock is
//!    let go, and the events the units counted are added to the counters once. The migration epoch is bumped so that CPUs waiting on a migration entry
//!    retry.
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

use crate::aspace::vmstat::Event;
use crate::aspace::{size_of_order, AddressSpace, Flush, Mm, SpaceId};
use crate::backend::flush::FlushSink;
use crate::backend::phys::PhysMem;
use crate::base::addr::Pfn;
use crate::base::cpuset::CpuSet;
use crate::frame::buddy::{AllocError, MigrateType};
use crate::frame::meta::{FrameFlags, FrameState};
use crate::frame::refs::Released;
use crate::mapping::region::SharedRegion;
use crate::mapping::rmap::Rmap;
use crate::ops::error::MigrateError;
use crate::paging::MigrationEntry;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use spin::MutexGuard;
use x86_64::VirtAddr;

/// What the claim saw of a block before taking the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    order: u8,
}

/// One migration entry installed for a claimed block.
struct Installed {
    /// Index of the unit in the batch, and of the block in the batch's blocks.
    unit: usize,
    block: usize,
    /// Index of the address space in the batch's spaces.
    space: usize,
    va: u64,
    /// Index, in 4 KiB frames from the head, of the first frame the leaf maps.
    offset: u64,
    mig: MigrationEntry,
}

/// A block claimed by a unit: its head and order, stable until the unit finishes.
pub(crate) struct Claimed {
    /// Head of the block.
    pub head: Pfn,
    /// Order of the block.
    pub order: u8,
    /// Mappings found gone at remap or put-back (see the module doc).
    lost: usize,
}

/// Claims dropped under one hold of the reverse-map lock: the blocks that lose their last
/// reference are freed together, through one call of the frame source, when it is let
/// go, and the events the units count are added to the memory manager's counters then,
/// once per event (a shared atomic counter per page would be a locked instruction each).
/// Only the engine makes one: while claiming (for blocks no table ever changed for), when
/// a unit is put back, and at step 6, after the batch's shootdown.
pub(crate) struct ClaimDrops<'a, 'm, M: PhysMem> {
    mm: &'a Mm<'m, M>,
    rmap: Option<MutexGuard<'a, Rmap>>,
    dead: Vec<(Pfn, u8)>,
    events: Vec<(Event, u64)>,
}

impl<'a, 'm, M: PhysMem> ClaimDrops<'a, 'm, M> {
    fn new(mm: &'a Mm<'m, M>) -> ClaimDrops<'a, 'm, M> {
        ClaimDrops {
            mm,
            rmap: Some(mm.rmap.lock()),
            dead: Vec::new(),
            events: Vec::new(),
        }
    }

    fn rmap(&mut self) -> &mut Rmap {
        self.rmap
            .as_deref_mut()
            .expect("the reverse map stays locked until the drops are let go")
    }

    /// Count `n` of `event` when the drops are let go.
    pub fn count(&mut self, event: Event, n: u64) {
        match self.events.iter_mut().find(|(e, _)| *e == event) {
            Some((_, sum)) => *sum += n,
            None => self.events.push((event, n)),
        }
    }

    /// Drop the claim on `head` and the reference it held; say whether that was the
    /// block's (of `order`) last reference: it is then freed when the drops are let go.
    pub fn drop_claim(&mut self, head: Pfn, order: u8) -> bool {
        let Some(meta) = self.mm.meta(head) else {
            return false;
        };
        let counts = self
            .rmap
            .as_deref()
            .expect("the reverse map stays locked until the drops are let go")
            .counts();
        meta.unclaim(counts);
        let released = self.mm.count_result(meta.put_ref(counts)) == Some(Released::Last);
        if released {
            self.dead.push((head, order));
        }
        released
    }
}

impl<M: PhysMem> Drop for ClaimDrops<'_, '_, M> {
    fn drop(&mut self) {
        drop(self.rmap.take());
        if !self.dead.is_empty() {
            self.mm.free_blocks(&self.dead);
        }
        for &(event, n) in &self.events {
            self.mm.vmstat.count(event, n);
        }
    }
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

    /// The exact block (head and order) [`prepare`](Self::prepare) needs allocated, if
    /// any: the engine allocates those of every claimed unit of the batch together and
    /// hands each unit its own result.
    fn wants_at(&self, claimed: &[Claimed]) -> Option<(Pfn, u8)> {
        let _ = claimed;
        None
    }

    /// Check the claimed blocks against each other and get what the transform needs (a
    /// migration takes its destination: `at`, the allocation of what
    /// [`wants_at`](Self::wants_at) asked for, which it then owns; or one it allocates
    /// itself). On error the claims are dropped and nothing has changed.
    fn prepare(
        &mut self,
        mm: &Mm<'m, M>,
        claimed: &[Claimed],
        at: Option<Result<Pfn, AllocError>>,
    ) -> Result<(), MigrateError>;

    /// Undo [`prepare`](Self::prepare) for a unit that is put back (a claim it took goes
    /// through `drops`).
    fn abandon(&mut self, drops: &mut ClaimDrops<'_, 'm, M>, claimed: &[Claimed]);

    /// With every mapping of every claimed block replaced by a migration entry and every
    /// CPU flushed: transform the memory. No lock is held.
    fn transform(&mut self, mm: &Mm<'m, M>, claimed: &[Claimed]);

    /// The head of the block whose frames the mappings (and holder) of claimed block `i`
    /// point to after the move, at the same offsets.
    fn target(&self, i: usize) -> Pfn;

    /// After the remap, with the claims still held: drop them through `drops`, which
    /// frees what is no longer used and counts the unit's events.
    fn finish(
        self,
        claimed: &[Claimed],
        drops: &mut ClaimDrops<'_, 'm, M>,
    ) -> Result<Self::Output, MigrateError>;
}

/// A batch between [`Mm::begin_moves`] and [`Mm::complete_moves`]: its units' migration
/// entries are installed, and CPUs touching them wait until it completes.
#[must_use = "a begun batch leaves migration entries that only completing it removes"]
pub(crate) struct Batch<'m, M: PhysMem, T: Move<'m, M>> {
    results: Vec<Option<Result<T::Output, MigrateError>>>,
    /// The units whose migration entries are installed (and those put back, without
    /// their move).
    units: Vec<Unit<T>>,
    /// Every claimed block, each unit's consecutive.
    blocks: Vec<Claimed>,
    /// The address spaces the entries are in.
    spaces: Vec<Arc<AddressSpace<'m, M>>>,
    /// The entries, grouped by address space.
    installed: Vec<Installed>,
}

impl<'m, M: PhysMem, T: Move<'m, M>> Batch<'m, M, T> {
    /// Units whose migration entries are installed.
    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.units.iter().filter(|u| u.mv.is_some()).count()
    }
}

/// A unit in flight: its move (taken when it is put back or finishes) and its blocks,
/// `blocks[first..first + len]` of the batch.
struct Unit<T> {
    slot: usize,
    mv: Option<T>,
    first: usize,
    len: usize,
}

impl<T> Unit<T> {
    fn claimed<'b>(&self, blocks: &'b [Claimed]) -> &'b [Claimed] {
        &blocks[self.first..self.first + self.len]
    }
}

impl<'m, M: PhysMem> Mm<'m, M> {
    /// Steps 1 and 2 for a batch of units (the protocol of the module doc): claim,
    /// prepare and install. Units that fail get their result now; the others wait in the
    /// returned batch for [`complete_moves`](Self::complete_moves).
    pub(crate) fn begin_moves<T: Move<'m, M>>(&self, units: Vec<T>) -> Batch<'m, M, T> {
        let mut results: Vec<Option<Result<T::Output, MigrateError>>> =
            (0..units.len()).map(|_| None).collect();
        let mut blocks = Vec::with_capacity(units.len());
        let mut looked = Vec::with_capacity(units.len());
        let mut orders = Vec::new();
        for (slot, mv) in units.into_iter().enumerate() {
            let first = blocks.len();
            match self.look_unit(&mv, &mut blocks, &mut orders) {
                Ok(()) => looked.push(Unit {
                    slot,
                    len: blocks.len() - first,
                    mv: Some(mv),
                    first,
                }),
                Err(e) => {
                    blocks.truncate(first);
                    results[slot] = Some(Err(e));
                }
            }
        }
        // (space, block): the address spaces that map each claimed block.
        let mut mapped: Vec<(SpaceId, usize)> = Vec::with_capacity(blocks.len());
        // The units stay in one vector from here on: one that fails is taken out of it
        // (no unit moves while none fails).
        let mut units = looked;
        {
            let mut drops = ClaimDrops::new(self);
            units.retain(|unit| {
                let noted = mapped.len();
                match self.claim_unit(&mut drops, unit, &blocks, &mut mapped) {
                    Ok(()) => true,
                    Err(e) => {
                        mapped.truncate(noted);
                        results[unit.slot] = Some(Err(e));
                        false
                    }
                }
            });
        }
        self.prepare_units(&mut units, &blocks, &mut mapped, &mut results);
        let mut batch = Batch {
            results,
            units,
            blocks,
            spaces: Vec::new(),
            installed: Vec::with_capacity(mapped.len()),
        };
        self.install_all(&mut batch, mapped);
        batch
    }

    /// Steps 3 to 6 for a batch begun by [`begin_moves`](Self::begin_moves); one result
    /// per unit, in order.
    pub(crate) fn complete_moves<T: Move<'m, M>>(
        &self,
        mut batch: Batch<'m, M, T>,
    ) -> Vec<Result<T::Output, MigrateError>> {
        if batch.units.iter().any(|u| u.mv.is_some()) {
            self.shoot_down_batch(&batch.spaces, &batch.installed);
            self.wait_unshared(&batch.units, &batch.blocks);
            for unit in &mut batch.units {
                let claimed = &batch.blocks[unit.first..unit.first + unit.len];
                if let Some(mv) = unit.mv.as_mut() {
                    mv.transform(self, claimed);
                }
            }
            self.remap_all(&mut batch);
            let mut drops = ClaimDrops::new(self);
            for unit in core::mem::take(&mut batch.units) {
                let Some(mv) = unit.mv else {
                    continue;
                };
                let claimed = &batch.blocks[unit.first..unit.first + unit.len];
                let lost = claimed.iter().any(|c| c.lost > 0);
                let result = mv.finish(claimed, &mut drops);
                // A lost mapping is the news, even when the block then lost its last
                // user because of it.
                batch.results[unit.slot] = Some(if lost {
                    Err(MigrateError::Inconsistent)
                } else {
                    result
                });
            }
            drop(drops);
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        batch
            .results
            .into_iter()
            .map(|r| r.unwrap_or(Err(MigrateError::NotInUse)))
            .collect()
    }

    /// Step 1 before any lock, for one unit: refuse what can be refused from the blocks
    /// as seen now, and append them to `blocks` (`orders` is scratch space).
    fn look_unit<T: Move<'m, M>>(
        &self,
        mv: &T,
        blocks: &mut Vec<Claimed>,
        orders: &mut Vec<u8>,
    ) -> Result<(), MigrateError> {
        let heads = mv.blocks();
        if heads
            .iter()
            .enumerate()
            .any(|(i, b)| heads[..i].contains(b))
        {
            return Err(MigrateError::SameBlock);
        }
        orders.clear();
        for &head in heads {
            orders.push(self.look(head)?.order);
        }
        mv.check(self, orders)?;
        blocks.extend(
            heads
                .iter()
                .zip(orders.iter())
                .map(|(&head, &order)| Claimed {
                    head,
                    order,
                    lost: 0,
                }),
        );
        Ok(())
    }

    /// Step 1 for one unit: claim its blocks (their orders as seen before the lock) under
    /// the batch's hold of the reverse-map lock (`drops`), noting in `mapped` the address
    /// spaces mapping each. On failure the claims it took are dropped.
    fn claim_unit<T: Move<'m, M>>(
        &self,
        drops: &mut ClaimDrops<'_, 'm, M>,
        unit: &Unit<T>,
        blocks: &[Claimed],
        mapped: &mut Vec<(SpaceId, usize)>,
    ) -> Result<(), MigrateError> {
        let claimed = unit.claimed(blocks);
        for (k, c) in claimed.iter().enumerate() {
            let seen = Seen { order: c.order };
            if let Err(e) = self.claim_block(drops.rmap(), c.head, seen) {
                for c in &claimed[..k] {
                    drops.drop_claim(c.head, c.order);
                }
                return Err(e);
            }
            let mut last = None;
            for e in drops.rmap().range_of(c.head) {
                if last != Some(e.space) {
                    last = Some(e.space);
                    mapped.push((e.space, unit.first + k));
                }
            }
        }
        Ok(())
    }

    /// Step 1, second half, with no lock held: allocate what the claimed units want, in
    /// one call of the frame source, and prepare each. The units that fail get their
    /// result, drop their claims, leave `mapped` and are taken out of `units`.
    fn prepare_units<T: Move<'m, M>>(
        &self,
        units: &mut Vec<Unit<T>>,
        blocks: &[Claimed],
        mapped: &mut Vec<(SpaceId, usize)>,
        results: &mut [Option<Result<T::Output, MigrateError>>],
    ) {
        let mut asked: Vec<(Pfn, u8)> = Vec::with_capacity(units.len());
        let wants: Vec<bool> = units
            .iter()
            .map(|u| {
                let want = u.mv.as_ref().and_then(|mv| mv.wants_at(u.claimed(blocks)));
                asked.extend(want);
                want.is_some()
            })
            .collect();
        let mut got = Vec::with_capacity(asked.len());
        if !asked.is_empty() {
            self.frames
                .alloc_at_batch(&asked, MigrateType::Movable, &mut got);
        }
        let mut got = got.into_iter();
        let mut wants = wants.into_iter();
        let mut failed: Vec<(usize, usize)> = Vec::new();
        units.retain_mut(|unit| {
            // A frame source that answered for fewer blocks than asked allocated none of
            // the rest.
            let at = wants
                .next()
                .unwrap_or(false)
                .then(|| got.next().unwrap_or(Err(AllocError::OutOfMemory)));
            let claimed = unit.claimed(blocks);
            let result = match unit.mv.as_mut() {
                Some(mv) => mv.prepare(self, claimed, at),
                None => Err(MigrateError::NotInUse),
            };
            match result {
                Ok(()) => true,
                Err(e) => {
                    results[unit.slot] = Some(Err(e));
                    failed.push((unit.first, unit.len));
                    false
                }
            }
        });
        if !failed.is_empty() {
            let mut gone = alloc::vec![false; blocks.len()];
            let mut drops = ClaimDrops::new(self);
            for &(first, len) in &failed {
                for c in &blocks[first..first + len] {
                    drops.drop_claim(c.head, c.order);
                }
                gone[first..first + len].fill(true);
            }
            mapped.retain(|&(_, b)| !gone[b]);
        }
    }

    /// What `head` looks like before any lock: refuses what can be refused without one.
    fn look(&self, head: Pfn) -> Result<Seen, MigrateError> {
        let table = self.table;
        let meta = table.get(head).ok_or(MigrateError::OutOfRange)?;
        match table.head_of(head) {
            Some(h) if h == head => {}
            // A tail of a free block (a page freed since the caller looked, merged with
            // its buddy) is not in use; only a tail of an allocated block is `NotHead`.
            Some(h) if table.get(h).map(|m| m.state()) == Some(FrameState::Allocated) => {
                return Err(MigrateError::NotHead)
            }
            _ => return Err(MigrateError::NotInUse),
        }
        if meta.state() != FrameState::Allocated {
            return Err(MigrateError::NotInUse);
        }
        let order = meta.order();
        size_of_order(order).ok_or(MigrateError::NotInUse)?;
        Ok(Seen { order })
    }

    /// Claim one block (see the module doc, step 1), under the reverse-map lock (`rmap`).
    fn claim_block(&self, rmap: &Rmap, head: Pfn, seen: Seen) -> Result<(), MigrateError> {
        let meta = self.meta(head).ok_or(MigrateError::OutOfRange)?;
        // Under the lock: a managed block is freed only by dropping its last reference
        // under this lock, so what is read now stays true while the claim is held.
        if !meta.is_managed() {
            return Err(MigrateError::NotInUse);
        }
        let table = self.table;
        if table.head_of(head) != Some(head) || meta.state() != FrameState::Allocated {
            return Err(MigrateError::Changed);
        }
        if meta.order() != seen.order {
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
        let counts = rmap.counts();
        meta.get_ref(counts).map_err(MigrateError::Count)?;
        if !meta.try_claim(counts) {
            self.count_result(meta.put_ref(counts));
            return Err(MigrateError::AlreadyMigrating);
        }
        Ok(())
    }

    /// Step 2 for the whole batch: in each address space of `mapped` (space, block), under
    /// its lock and the reverse map's taken once, every mapping of the batch's blocks
    /// there becomes a migration entry. Units whose tables disagree are put back.
    fn install_all<T: Move<'m, M>>(
        &self,
        batch: &mut Batch<'m, M, T>,
        mut mapped: Vec<(SpaceId, usize)>,
    ) {
        let mut unit_of = alloc::vec![usize::MAX; batch.blocks.len()];
        for (u, unit) in batch.units.iter().enumerate() {
            unit_of[unit.first..unit.first + unit.len].fill(u);
        }
        mapped.sort_unstable();
        let mut failed: BTreeMap<usize, MigrateError> = BTreeMap::new();
        for group in mapped.chunk_by(|a, b| a.0 == b.0) {
            let Some(space) = self.space(group[0].0) else {
                continue;
            };
            let mut guard = space.state.lock();
            if guard.dead {
                continue;
            }
            let st = &mut *guard;
            let mut slots = st.pt.raw_slots();
            let s = batch.spaces.len();
            let first_installed = batch.installed.len();
            {
                let rmap = self.rmap.lock();
                for &(id, b) in group {
                    let u = unit_of[b];
                    if failed.contains_key(&u) {
                        continue;
                    }
                    let head = batch.blocks[b].head;
                    for e in rmap.range_in(head, id) {
                        let va = e.va.as_u64();
                        let level = e.size.level();
                        let expected = head.add(e.offset).addr();
                        let installed = slots.change_leaf(va, level, |cur| {
                            if cur.leaf_size(level) != Some(e.size)
                                || cur.leaf_addr(e.size) != expected
                            {
                                return None;
                            }
                            let mig = MigrationEntry::from_leaf(cur, e.size)?;
                            Some((mig.entry(), mig))
                        });
                        let Ok(Some(mig)) = installed else {
                            failed.insert(u, MigrateError::Inconsistent);
                            break;
                        };
                        batch.installed.push(Installed {
                            unit: u,
                            block: b,
                            space: s,
                            va,
                            offset: e.offset,
                            mig,
                        });
                    }
                }
            }
            // Listed before the space's lock is let go.
            st.migrating.extend(
                batch.installed[first_installed..]
                    .iter()
                    .map(|i| (i.va, i.mig)),
            );
            drop(guard);
            if batch.installed.len() > first_installed {
                batch.spaces.push(space);
            }
        }
        if !failed.is_empty() {
            self.put_back(batch, &failed);
        }
    }

    /// Put the units that failed in step 2 back exactly: original leaves, `prepare`
    /// undone, claims dropped; the other units keep their entries.
    fn put_back<T: Move<'m, M>>(
        &self,
        batch: &mut Batch<'m, M, T>,
        failed: &BTreeMap<usize, MigrateError>,
    ) {
        // No shootdown has happened yet: a mapping found gone here may still be cached
        // by the space's CPUs as the leaf it was, so its reference waits for a flush.
        let mut flush = Flush::new();
        let mut cpus = CpuSet::new();
        let (back, kept): (Vec<Installed>, Vec<Installed>) = core::mem::take(&mut batch.installed)
            .into_iter()
            .partition(|inst| failed.contains_key(&inst.unit));
        batch.installed = kept;
        for inst in back {
            let space = &batch.spaces[inst.space];
            let mut st = space.state.lock();
            let level = inst.mig.size().level();
            st.migrating.remove(inst.va);
            if st
                .pt
                .compare_exchange_leaf(inst.va, level, inst.mig.entry(), inst.mig.original())
                .is_err()
            {
                drop(st);
                flush.flush_page(VirtAddr::new_truncate(inst.va), inst.mig.size());
                cpus = cpus.union(&space.cpus().load());
                self.forget_mapping(
                    &mut batch.blocks[inst.block],
                    space.id(),
                    inst.va,
                    &mut flush,
                );
            }
        }
        flush.complete_on(self, cpus);
        let mut drops = ClaimDrops::new(self);
        for (&u, &e) in failed {
            let unit = &mut batch.units[u];
            let claimed = &batch.blocks[unit.first..unit.first + unit.len];
            if let Some(mut mv) = unit.mv.take() {
                mv.abandon(&mut drops, claimed);
            }
            for c in claimed {
                drops.drop_claim(c.head, c.order);
            }
            batch.results[unit.slot] = Some(Err(e));
        }
        drop(drops);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// A slot no longer holds the migration entry this batch installed: drop the mapping
    /// from the reverse map with its count; its reference goes to `flush`.
    fn forget_mapping(&self, c: &mut Claimed, space: SpaceId, va: u64, flush: &mut Flush) {
        c.lost += 1;
        let Some(meta) = self.meta(c.head) else {
            return;
        };
        let mut rmap = self.rmap.lock();
        if rmap.remove(c.head, space, va).is_some() {
            self.count_result(meta.remove_mapping(rmap.counts()));
            flush.put_ref(c.head);
        }
    }

    /// Step 3: one shootdown for every migration entry of the batch, to the union of the
    /// CPUs of the address spaces they are in.
    fn shoot_down_batch(&self, spaces: &[Arc<AddressSpace<'m, M>>], installed: &[Installed]) {
        let mut flush = Flush::new();
        let mut cpus = CpuSet::new();
        let mut last = None;
        for inst in installed {
            if last != Some(inst.space) {
                last = Some(inst.space);
                cpus = cpus.union(&spaces[inst.space].cpus().load());
            }
            flush.flush_page(VirtAddr::new_truncate(inst.va), inst.mig.size());
        }
        flush.complete_on(self, cpus);
    }

    /// Step 3, second half: wait until each live unit's blocks have as their only
    /// references their mappings, their holder, their pins and the claim (an unmap that
    /// already took a mapping off the tables holds a reference until its shootdown has
    /// completed).
    fn wait_unshared<T>(&self, units: &[Unit<T>], blocks: &[Claimed]) {
        let mut pending = units
            .iter()
            .filter(|u| u.mv.is_some())
            .flat_map(|u| u.claimed(blocks))
            .peekable();
        while pending.peek().is_some() {
            {
                let rmap = self.rmap.lock();
                while let Some(c) = pending.peek() {
                    let Some(meta) = self.meta(c.head) else {
                        pending.next();
                        continue;
                    };
                    let expected = meta.mapcount()
                        + u32::from(rmap.holder(c.head).is_some())
                        + meta.pincount()
                        + 1;
                    if meta.refcount() > expected {
                        break;
                    }
                    pending.next();
                }
            }
            if pending.peek().is_some() {
                core::hint::spin_loop();
            }
        }
    }

    /// Step 5 for the whole batch: each unit's holders, then every leaf, to the
    /// targets, with one lock of each address space (and of the reverse map under it)
    /// for all the batch's migration entries in that space.
    fn remap_all<T: Move<'m, M>>(&self, batch: &mut Batch<'m, M, T>) {
        let Batch {
            units,
            blocks,
            spaces,
            installed,
            ..
        } = batch;
        let target = |inst: &Installed| {
            let unit = &units[inst.unit];
            unit.mv.as_ref().map_or(blocks[inst.block].head, |mv| {
                mv.target(inst.block - unit.first)
            })
        };
        let any_holder = {
            let rmap = self.rmap.lock();
            units
                .iter()
                .filter(|u| u.mv.is_some())
                .flat_map(|u| u.claimed(blocks))
                .any(|c| rmap.holder(c.head).is_some())
        };
        if any_holder {
            for unit in units.iter() {
                if let Some(mv) = &unit.mv {
                    let targets: Vec<Pfn> = (0..unit.len).map(|i| mv.target(i)).collect();
                    self.move_holders(unit.claimed(blocks), &targets);
                }
            }
        }
        let mut gone = Vec::new();
        let mut moved = Vec::new();
        for group in installed.chunk_by(|a, b| a.space == b.space) {
            let space = &spaces[group[0].space];
            let mut guard = space.state.lock();
            let st = &mut *guard;
            let mut rmap = self.rmap.lock();
            // Only the batch that installed an entry removes it.
            st.migrating.remove_all(group.iter().map(|inst| inst.va));
            // Take every moved mapping off its old block first, then add them to their
            // new ones: in an exchange the two blocks trade mappings.
            moved.clear();
            let mut slots = st.pt.raw_slots();
            for inst in group {
                let head = blocks[inst.block].head;
                let level = inst.mig.size().level();
                let new = inst.mig.retarget(target(inst).add(inst.offset).addr());
                let swapped = slots.compare_exchange_leaf(inst.va, level, inst.mig.entry(), new);
                let entry = rmap.remove(head, space.id(), inst.va);
                match (swapped, entry) {
                    (Ok(()), Some(entry)) => moved.push((inst, entry)),
                    (_, entry) => {
                        // The mapping is gone from the map: its count goes now, its
                        // reference below.
                        if let (Some(_), Some(meta)) = (entry, self.meta(head)) {
                            self.count_result(meta.remove_mapping(rmap.counts()));
                        }
                        gone.push((inst.block, entry.is_some()));
                    }
                }
            }
            for &(inst, entry) in &moved {
                let to = target(inst);
                let (Some(from), Some(to_meta)) =
                    (self.meta(blocks[inst.block].head), self.meta(to))
                else {
                    continue;
                };
                rmap.insert(to, entry);
                self.count_result(from.move_mapping_to(rmap.counts(), to_meta));
            }
        }
        if !gone.is_empty() {
            // The batch's shootdown already covered these addresses: the flush only
            // carries the references.
            let mut flush = Flush::new();
            for (b, had_entry) in gone {
                let c = &mut blocks[b];
                c.lost += 1;
                if had_entry {
                    flush.put_ref(c.head);
                }
            }
            flush.complete_on(self, CpuSet::new());
        }
        installed.clear();
    }

    /// Step 5, first half: each claimed block's holder (a shared region's pointer and
    /// its reference) moves to the block's target, all of a unit's at once: in an
    /// exchange two blocks trade holders. The regions involved are locked in address
    /// order, then the reverse map (the lock order: regions before the reverse map).
    fn move_holders(&self, claimed: &[Claimed], targets: &[Pfn]) {
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
                self.count_result(from.move_ref_to(rmap.counts(), to));
            }
        }
    }
}
