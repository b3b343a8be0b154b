//! Page migration of whole 4 KiB, 2 MiB and 1 GiB blocks, without splitting huge
//! mappings, through non-present *migration entries*.
//!
//! # Protocol
//!
//! For each block of a batch ([`Mm::migrate_batch`]; [`Mm::migrate_one`] is a batch of
//! one):
//!
//! 1. **claim**: under the reverse-map lock, refuse a block that is not a managed head,
//!    is unmovable, pinned, or already claimed; set [`OWNER_MIGRATING`] with a
//!    compare-exchange and take a reference. Pins and new mappings of a claimed block are
//!    refused from then on. Then allocate the destination; if that fails the claim is
//!    dropped and nothing else has changed.
//! 2. **unmap**: for every reverse-map entry, under its address space's lock, replace
//!    the leaf (PTE, PMD or PUD) by a migration entry with a compare-exchange (retried if
//!    the MMU sets accessed/dirty meanwhile, so those bits are carried over).
//! 3. **shoot down**: one synchronous shootdown per address space for the whole batch,
//!    with no lock held. Then wait until no unmap of the source is still between its own
//!    table change and its shootdown (its reference is still counted), so that no CPU
//!    can write to the source any more.
//! 4. **copy** every 4 KiB frame, no lock held.
//! 5. **remap**: mark the destination managed and claimed, move the shared region's
//!    pointer and holder reference to it, and in each address space replace every
//!    migration entry by a leaf of the same size and flags to the destination, moving
//!    its reverse-map entry, map count and reference.
//! 6. **finish**: drop both claims and the claim references; the source, now unmapped
//!    everywhere and flushed, is freed; bump the migration epoch so waiters retry.
//!
//! A page whose step 2 finds the tables disagreeing with the reverse map is put back
//! exactly (migration entries replaced by the original leaves, destination freed) and
//! reported; the other pages of the batch are unaffected.
//!
//! A CPU touching the page during steps 2-5 faults on the migration entry, gets
//! [`FaultOutcome::WaitMigration`](crate::fault::FaultOutcome::WaitMigration), waits
//! without holding any lock and retries. Unmap, protect and destroy wait the same way
//! when their range holds a migration entry, so only the migration that installed an
//! entry ever removes it.
//!
//! # Migration entry encoding
//!
//! A migration entry is the leaf it replaces with the present bit cleared and three
//! software bits set (bits 9-11 are ignored by the MMU and never set in user leaves):
//!
//! ```text
//!  63 | 62..52      | 51..12 (2M: 51..21, 1G: 51..30)  | 11..10 | 9 | 8..1        | 0
//!  NX | sw / pkey   | address of the source frame       | size   | 1 | leaf flags  | 0
//! ```
//!
//! - bit 0 (present) is 0, so the MMU faults on any access;
//! - bit 9 marks a migration entry;
//! - bits 10-11 encode the size: 1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB (it must agree with
//!   the level of the slot);
//! - every other bit is the original leaf's: the address field names the source frame
//!   (the exact 4 KiB frame the leaf mapped), bit 7 is still `HUGE_PAGE` (or the PTE's
//!   PAT bit), bit 12 still the huge leaf's PAT bit, and writable, user, accessed, dirty,
//!   the cache bits and NX are kept, so the new leaf gets the same flags.

use crate::addr::{PageSize, Pfn};
use crate::aspace::{size_of_order, AddressSpace, Flush, Mm, SpaceId};
use crate::buddy::{AllocError, MigrateType};
use crate::flush::FlushSink;
use crate::frame::{FrameFlags, FrameState};
use crate::numa::NodeId;
use crate::paging::{Entry, RawError};
use crate::phys::PhysMem;
use crate::rmap::{try_claim, unclaim, OWNER_MANAGED, OWNER_MIGRATING};
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::Ordering;
use x86_64::structures::paging::PageTableFlags;
use x86_64::{PhysAddr, VirtAddr};

/// Bit 9: the entry is a migration entry.
const MIGRATION_BIT: u64 = 1 << 9;
/// Bits 10-11: the size code.
const SIZE_SHIFT: u32 = 10;
/// Bits 9-11: the software bits a migration entry uses.
const SOFT_BITS: u64 = 0b111 << 9;

const fn size_code(size: PageSize) -> u64 {
    match size {
        PageSize::Size4K => 1,
        PageSize::Size2M => 2,
        PageSize::Size1G => 3,
    }
}

/// A non-present entry standing for a leaf under migration (encoding in the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MigrationEntry(Entry);

impl MigrationEntry {
    /// The migration entry for the present leaf `leaf` of `size`; `None` if the leaf is
    /// not present or uses the software bits 9-11.
    pub fn from_leaf(leaf: Entry, size: PageSize) -> Option<MigrationEntry> {
        if !leaf.is_present() || leaf.raw() & SOFT_BITS != 0 {
            return None;
        }
        let raw = (leaf.raw() & !PageTableFlags::PRESENT.bits())
            | MIGRATION_BIT
            | (size_code(size) << SIZE_SHIFT);
        Some(MigrationEntry(Entry::from_raw(raw)))
    }

    /// The migration entry `entry` read at page-table `level`, if it is one.
    pub fn decode(entry: Entry, level: u8) -> Option<MigrationEntry> {
        let raw = entry.raw();
        if entry.is_present() || raw & MIGRATION_BIT == 0 {
            return None;
        }
        let size = match (raw >> SIZE_SHIFT) & 0b11 {
            1 => PageSize::Size4K,
            2 => PageSize::Size2M,
            3 => PageSize::Size1G,
            _ => return None,
        };
        (size.level() == level).then_some(MigrationEntry(entry))
    }

    /// The raw entry to store.
    pub fn entry(self) -> Entry {
        self.0
    }

    /// The size of the leaf it stands for.
    pub fn size(self) -> PageSize {
        match (self.0.raw() >> SIZE_SHIFT) & 0b11 {
            1 => PageSize::Size4K,
            2 => PageSize::Size2M,
            _ => PageSize::Size1G,
        }
    }

    /// The leaf it replaced, with the accessed/dirty bits it had then.
    pub fn original(self) -> Entry {
        Entry::from_raw((self.0.raw() & !SOFT_BITS) | PageTableFlags::PRESENT.bits())
    }

    /// The first byte of the frame the leaf mapped.
    pub fn source(self) -> PhysAddr {
        self.original().leaf_addr(self.size())
    }

    /// The first frame the leaf mapped.
    pub fn source_pfn(self) -> Pfn {
        Pfn::containing(self.source())
    }

    /// The leaf flags it carries (see [`crate::paging::entry`]).
    pub fn flags(self) -> PageTableFlags {
        self.original().leaf_flags(self.size())
    }

    /// A leaf of the same size and flags mapping the frame at `pa`.
    pub fn retarget(self, pa: PhysAddr) -> Entry {
        Entry::leaf(pa, self.size(), self.flags())
    }
}

/// Where a migrated block goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    /// Exactly this block (aligned to the source's order, free, not overlapping it).
    Frame(Pfn),
    /// Any free block on this node.
    Node(NodeId),
    /// Any free block.
    Any,
}

/// Why a block was not migrated. The block, its mappings and contents are exactly as
/// before (except [`Released`](Self::Released)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MigrateError {
    /// The PFN is outside the frame table.
    OutOfRange,
    /// The PFN is inside an allocated block but is not its head.
    NotHead,
    /// The PFN is not the head of a managed (user) block: free, reserved or kernel memory.
    NotInUse,
    /// The block is unmovable (allocated as such, or flagged `PINNED`).
    Unmovable,
    /// The block has a nonzero pin count.
    Pinned,
    /// The block is under another migration.
    AlreadyMigrating,
    /// The destination is not aligned to the block's order.
    DestinationUnaligned,
    /// The destination overlaps the source.
    DestinationOverlaps,
    /// The destination runs past the frame table.
    DestinationOutOfRange,
    /// The destination is not entirely free.
    DestinationNotFree,
    /// The destination node does not exist.
    NoSuchNode,
    /// No free block of the right order (on the node).
    OutOfMemory,
    /// The block lost its last user while it was migrated: both frames were freed.
    Released,
    /// The page tables disagree with the reverse map; the block was put back.
    Inconsistent,
}

impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MigrateError::OutOfRange => "PFN outside the frame table",
            MigrateError::NotHead => "not the head of its block",
            MigrateError::NotInUse => "not a user frame",
            MigrateError::Unmovable => "unmovable frame",
            MigrateError::Pinned => "pinned frame",
            MigrateError::AlreadyMigrating => "frame under another migration",
            MigrateError::DestinationUnaligned => "destination not aligned",
            MigrateError::DestinationOverlaps => "destination overlaps the source",
            MigrateError::DestinationOutOfRange => "destination outside the frame table",
            MigrateError::DestinationNotFree => "destination not free",
            MigrateError::NoSuchNode => "no such NUMA node",
            MigrateError::OutOfMemory => "no free block for the destination",
            MigrateError::Released => "frame released during migration",
            MigrateError::Inconsistent => "page tables disagree with the reverse map",
        })
    }
}

impl core::error::Error for MigrateError {}

/// A migration entry installed by a job.
struct Installed<'m, M: PhysMem> {
    space: Arc<AddressSpace<'m, M>>,
    va: u64,
    offset: u64,
    mig: MigrationEntry,
}

/// The migration entries of a batch in one address space, with their jobs.
type SpaceItems<'a, 'm, M> = Vec<(&'a Job<'m, M>, &'a Installed<'m, M>)>;

/// One claimed block of a batch.
struct Job<'m, M: PhysMem> {
    /// Index in the batch.
    slot: usize,
    src: Pfn,
    order: u8,
    dst: Pfn,
    /// The address spaces mapping the source when it was claimed.
    spaces: Vec<SpaceId>,
    installed: Vec<Installed<'m, M>>,
}

fn alloc_error(e: AllocError) -> MigrateError {
    match e {
        AllocError::NotFree => MigrateError::DestinationNotFree,
        AllocError::Unaligned => MigrateError::DestinationUnaligned,
        AllocError::OutOfRange => MigrateError::DestinationOutOfRange,
        AllocError::OutOfMemory | AllocError::InvalidOrder | AllocError::InvalidSize => {
            MigrateError::OutOfMemory
        }
    }
}

impl<'m, M: PhysMem> Mm<'m, M> {
    /// Migrate the block headed at `src` (4 KiB, 2 MiB or 1 GiB, with every mapping of
    /// it) to `dst`; returns the new head.
    pub fn migrate_one(&self, src: Pfn, dst: Destination) -> Result<Pfn, MigrateError> {
        self.migrate_batch(&[(src, dst)])
            .pop()
            .unwrap_or(Err(MigrateError::NotInUse))
    }

    /// Migrate each block to its destination (see the module doc); one result per
    /// request, in order: the new head, or why that block did not move (it is then
    /// exactly as before).
    pub fn migrate_batch(&self, requests: &[(Pfn, Destination)]) -> Vec<Result<Pfn, MigrateError>> {
        let mut results = vec![Err(MigrateError::NotInUse); requests.len()];
        let live = self.begin_batch(requests, &mut results);
        self.complete_batch(live, &mut results);
        results
    }

    /// Steps 1 and 2 of a batch: claim, allocate, install migration entries. Failed
    /// requests get their error in `results`.
    fn begin_batch(
        &self,
        requests: &[(Pfn, Destination)],
        results: &mut [Result<Pfn, MigrateError>],
    ) -> Vec<Job<'m, M>> {
        let mut jobs = Vec::new();
        for (slot, &(src, dst)) in requests.iter().enumerate() {
            match self.claim(slot, src, dst) {
                Ok(job) => jobs.push(job),
                Err(e) => results[slot] = Err(e),
            }
        }
        let mut live = Vec::with_capacity(jobs.len());
        for mut job in jobs {
            match self.install(&mut job) {
                Ok(()) => live.push(job),
                Err(e) => {
                    results[job.slot] = Err(e);
                    self.abort(job);
                }
            }
        }
        live
    }

    /// Steps 3 to 6 of a batch: shoot down, copy, remap, free.
    fn complete_batch(&self, live: Vec<Job<'m, M>>, results: &mut [Result<Pfn, MigrateError>]) {
        if live.is_empty() {
            return;
        }
        let mut flushes: BTreeMap<SpaceId, (Arc<AddressSpace<'m, M>>, Flush)> = BTreeMap::new();
        for inst in live.iter().flat_map(|j| &j.installed) {
            let (_, flush) = flushes
                .entry(inst.space.id())
                .or_insert_with(|| (inst.space.clone(), Flush::new()));
            flush.flush_page(VirtAddr::new_truncate(inst.va), inst.mig.size());
        }
        for (space, flush) in flushes.into_values() {
            flush.complete(self, &space);
        }
        for job in &live {
            self.wait_unshared(job);
            for i in 0..1u64 << job.order {
                self.mem
                    .copy_frame(job.dst.add(i).addr(), job.src.add(i).addr());
            }
        }
        for job in &live {
            self.adopt_destination(job);
        }
        self.remap(&live);
        for job in live {
            let slot = job.slot;
            results[slot] = self.finish(job);
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Step 1: check and claim the source, allocate the destination.
    fn claim(&self, slot: usize, src: Pfn, dst: Destination) -> Result<Job<'m, M>, MigrateError> {
        let table = self.frames.frame_table();
        let meta = table.get(src).ok_or(MigrateError::OutOfRange)?;
        match table.head_of(src) {
            Some(head) if head == src => {}
            Some(_) => return Err(MigrateError::NotHead),
            None => return Err(MigrateError::NotInUse),
        }
        if meta.state() != FrameState::Allocated {
            return Err(MigrateError::NotInUse);
        }
        let order = meta.order();
        size_of_order(order).ok_or(MigrateError::NotInUse)?;
        let n = 1u64 << order;
        match dst {
            Destination::Frame(d) => {
                if d.0
                    .checked_add(n)
                    .is_none_or(|end| end > table.len() as u64)
                {
                    return Err(MigrateError::DestinationOutOfRange);
                }
                if !d.is_aligned(order) {
                    return Err(MigrateError::DestinationUnaligned);
                }
                if d.0 < src.0 + n && src.0 < d.0 + n {
                    return Err(MigrateError::DestinationOverlaps);
                }
            }
            Destination::Node(node) => {
                if !self.frames.node_exists(node) {
                    return Err(MigrateError::NoSuchNode);
                }
            }
            Destination::Any => {}
        }
        let spaces = {
            let rmap = self.rmap.lock();
            let owner = meta.owner.load(Ordering::Acquire);
            if owner & OWNER_MANAGED == 0 {
                return Err(MigrateError::NotInUse);
            }
            if owner & OWNER_MIGRATING != 0 {
                return Err(MigrateError::AlreadyMigrating);
            }
            let flags = meta.flags();
            if flags.contains(FrameFlags::PINNED) || !flags.contains(FrameFlags::MOVABLE) {
                return Err(MigrateError::Unmovable);
            }
            if meta.pincount.load(Ordering::Acquire) != 0 {
                return Err(MigrateError::Pinned);
            }
            if !try_claim(meta) {
                return Err(MigrateError::AlreadyMigrating);
            }
            meta.refcount.fetch_add(1, Ordering::AcqRel);
            rmap.spaces(src)
        };
        let mt = MigrateType::Movable;
        let allocated = match dst {
            Destination::Frame(d) => self.frames.alloc_at(d, order, mt),
            Destination::Node(node) => self.frames.alloc(order, mt, Some(node)),
            Destination::Any => self.frames.alloc(order, mt, None),
        };
        match allocated {
            Ok(dst) => Ok(Job {
                slot,
                src,
                order,
                dst,
                spaces,
                installed: Vec::new(),
            }),
            Err(e) => {
                self.release_claim(src);
                Err(alloc_error(e))
            }
        }
    }

    /// Drop the claim on `src` and its reference.
    fn release_claim(&self, src: Pfn) {
        if let Some(meta) = self.meta(src) {
            let _rmap = self.rmap.lock();
            unclaim(meta);
        }
        self.put_refs(&[src]);
    }

    /// Step 2: replace every mapping of the source by a migration entry.
    fn install(&self, job: &mut Job<'m, M>) -> Result<(), MigrateError> {
        for &id in &job.spaces {
            let Some(space) = self.space(id) else {
                continue;
            };
            let mut st = space.state.lock();
            if st.dead {
                continue;
            }
            let entries = self.rmap.lock().entries_in(job.src, id);
            for e in entries {
                let va = e.va.as_u64();
                let level = e.size.level();
                let expected = job.src.add(e.offset).addr();
                loop {
                    let cur = st
                        .pt
                        .entry_at(va, level)
                        .filter(|c| c.leaf_size(level) == Some(e.size))
                        .filter(|c| c.leaf_addr(e.size) == expected)
                        .ok_or(MigrateError::Inconsistent)?;
                    let mig =
                        MigrationEntry::from_leaf(cur, e.size).ok_or(MigrateError::Inconsistent)?;
                    match st.pt.compare_exchange_leaf(va, level, cur, mig.entry()) {
                        Ok(()) => {
                            st.migrating.insert(va, (e.size, mig));
                            job.installed.push(Installed {
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

    /// Put a job that failed in step 2 back exactly: original leaves, claim dropped,
    /// destination freed.
    fn abort(&self, job: Job<'m, M>) {
        for inst in &job.installed {
            let mut st = inst.space.state.lock();
            let level = inst.mig.size().level();
            let restored =
                st.pt
                    .compare_exchange_leaf(inst.va, level, inst.mig.entry(), inst.mig.original());
            debug_assert!(restored.is_ok(), "migration entry changed: {restored:?}");
            st.migrating.remove(&inst.va);
        }
        self.release_claim(job.src);
        let freed = self.frames.free(job.dst, job.order);
        debug_assert!(freed.is_ok(), "freeing an unused destination: {freed:?}");
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Step 3, second half: wait until the source's only references are its mappings,
    /// its holder and the claim (an unmap that already took a mapping off the tables
    /// holds a reference until its shootdown has completed).
    fn wait_unshared(&self, job: &Job<'m, M>) {
        let Some(meta) = self.meta(job.src) else {
            return;
        };
        loop {
            {
                let rmap = self.rmap.lock();
                let expected = meta.mapcount.load(Ordering::Acquire)
                    + u32::from(rmap.holder(job.src).is_some())
                    + meta.pincount.load(Ordering::Acquire)
                    + 1;
                if meta.refcount.load(Ordering::Acquire) <= expected {
                    return;
                }
            }
            core::hint::spin_loop();
        }
    }

    /// Step 5, first half: make the destination a managed, claimed frame (its initial
    /// reference is the claim's) and move the shared region's pointer to it.
    fn adopt_destination(&self, job: &Job<'m, M>) {
        let (Some(src), Some(dst)) = (self.meta(job.src), self.meta(job.dst)) else {
            return;
        };
        dst.owner
            .store(OWNER_MANAGED | OWNER_MIGRATING, Ordering::Release);
        let holder = self.rmap.lock().holder(job.src).cloned();
        let Some(region) = holder.as_ref().and_then(|h| h.region.upgrade()) else {
            return;
        };
        let mut frames = region.frames.lock();
        let mut rmap = self.rmap.lock();
        let Some(h) = rmap.take_holder(job.src) else {
            return;
        };
        match frames.get_mut(&h.index) {
            Some(f) if f.head == job.src => {
                f.head = job.dst;
                rmap.set_holder(job.dst, h);
                src.refcount.fetch_sub(1, Ordering::AcqRel);
                dst.refcount.fetch_add(1, Ordering::AcqRel);
            }
            _ => rmap.set_holder(job.src, h),
        }
    }

    /// Step 5: in each address space, replace the migration entries by leaves to the
    /// destinations and move their reverse-map entries, counts and references.
    fn remap(&self, jobs: &[Job<'m, M>]) {
        let mut by_space: BTreeMap<SpaceId, SpaceItems<'_, 'm, M>> = BTreeMap::new();
        for job in jobs {
            for inst in &job.installed {
                by_space
                    .entry(inst.space.id())
                    .or_default()
                    .push((job, inst));
            }
        }
        for items in by_space.into_values() {
            let space = &items[0].1.space;
            let mut st = space.state.lock();
            let mut rmap = self.rmap.lock();
            for (job, inst) in items {
                let level = inst.mig.size().level();
                let new = inst.mig.retarget(job.dst.add(inst.offset).addr());
                let swapped = st
                    .pt
                    .compare_exchange_leaf(inst.va, level, inst.mig.entry(), new);
                debug_assert!(swapped.is_ok(), "migration entry changed: {swapped:?}");
                st.migrating.remove(&inst.va);
                let (Some(src), Some(dst)) = (self.meta(job.src), self.meta(job.dst)) else {
                    continue;
                };
                if let Some(entry) = rmap.remove(job.src, space.id(), inst.va) {
                    rmap.insert(job.dst, entry);
                    src.mapcount.fetch_sub(1, Ordering::AcqRel);
                    src.refcount.fetch_sub(1, Ordering::AcqRel);
                    dst.mapcount.fetch_add(1, Ordering::AcqRel);
                    dst.refcount.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// Step 6: drop the claims and their references; free the source (and the
    /// destination, if nothing uses it any more).
    fn finish(&self, job: Job<'m, M>) -> Result<Pfn, MigrateError> {
        let (Some(src), Some(dst)) = (self.meta(job.src), self.meta(job.dst)) else {
            return Err(MigrateError::Inconsistent);
        };
        let mut dead = Vec::new();
        let mut released = false;
        {
            let _rmap = self.rmap.lock();
            unclaim(src);
            if src.refcount.fetch_sub(1, Ordering::AcqRel) == 1 {
                src.owner.store(0, Ordering::Release);
                dead.push(job.src);
            }
            unclaim(dst);
            if dst.refcount.fetch_sub(1, Ordering::AcqRel) == 1 {
                dst.owner.store(0, Ordering::Release);
                dead.push(job.dst);
                released = true;
            }
        }
        for head in dead {
            let freed = self.frames.free(head, job.order);
            debug_assert!(freed.is_ok(), "freeing {head:?}: {freed:?}");
        }
        if released {
            Err(MigrateError::Released)
        } else {
            Ok(job.dst)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aspace::testing::{read_user, with_env, write_user, Env};
    use crate::aspace::SharedRegion;
    use crate::fault::FaultOutcome;
    use crate::phys::Arena;
    use crate::rmap::{is_migrating, RmapEntry};
    use crate::vma::{HugePolicy, SharedBacking, VmaFlags};
    use core::sync::atomic::AtomicBool;

    const M2: u64 = 2 << 20;
    const FRAMES: u64 = 8192;

    fn arena<R>(f: impl FnOnce(&Env<'_, Arena>) -> R) -> R {
        with_env(Arena::new(FRAMES), FRAMES, &[], f)
    }

    fn head_at<'a>(env: &Env<'a, Arena>, space: &AddressSpace<'a, Arena>, va: u64) -> Pfn {
        let pa = space.translate(va).unwrap().pa;
        env.mm.head_of(Pfn::containing(pa)).unwrap()
    }

    #[test]
    fn a_fault_during_migration_waits_then_sees_the_data() {
        arena(|env| {
            let s = env.mm.new_space().unwrap();
            let flags = VmaFlags::private(HugePolicy::Always, true);
            env.mm.map_anon(&s, 0x4000_0000, M2, flags).unwrap();
            env.mm.populate(&s, 0x4000_0000, M2).unwrap();
            assert!(write_user(env.mem, &s, 0x4012_3450, 0x5eed));
            let src = head_at(env, &s, 0x4000_0000);
            let mut results = vec![Err(MigrateError::NotInUse)];
            let live = env.mm.begin_batch(&[(src, Destination::Any)], &mut results);
            assert_eq!(live.len(), 1);
            assert!(s.translate(0x4012_3450).is_none());
            let (start, raw) = env.mm.migration_entry_at(&s, 0x4012_3450).unwrap();
            assert_eq!(start, 0x4000_0000);
            assert_eq!(MigrationEntry::decode(raw, 2).unwrap().source_pfn(), src);
            let Ok(FaultOutcome::WaitMigration(wait)) = env.mm.handle_fault(&s, 0x4012_3450, true)
            else {
                panic!("a migration entry must make the fault wait");
            };
            assert_eq!(wait.frame(), src);
            assert!(!env.mm.migration_done(&wait));
            assert_eq!(env.mm.pin(src), Err(crate::aspace::PinError::Migrating));
            env.mm.complete_batch(live, &mut results);
            let dst = results[0].unwrap();
            assert!(env.mm.migration_done(&wait));
            env.mm.wait_migration(&wait);
            assert_eq!(
                env.mm.handle_fault(&s, 0x4012_3450, true),
                Ok(FaultOutcome::Spurious)
            );
            assert_eq!(read_user(env.mem, &s, 0x4012_3450), Some(0x5eed));
            assert_eq!(head_at(env, &s, 0x4000_0000), dst);
            assert!(!is_migrating(env.mm.meta(dst).unwrap()));
            env.audit();
        });
    }

    #[test]
    fn unmap_and_protect_wait_for_a_migration_in_their_range() {
        arena(|env| {
            let s = env.mm.new_space().unwrap();
            let flags = VmaFlags::private(HugePolicy::Never, true);
            env.mm.map_anon(&s, 0x10_0000, 0x2000, flags).unwrap();
            env.mm.populate(&s, 0x10_0000, 0x2000).unwrap();
            let src = head_at(env, &s, 0x10_1000);
            let mut results = vec![Err(MigrateError::NotInUse)];
            let live = env.mm.begin_batch(&[(src, Destination::Any)], &mut results);
            // The other page is not under migration: no wait.
            env.mm.protect(&s, 0x10_0000, 0x1000, false).unwrap();
            let done = AtomicBool::new(false);
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    env.mm.unmap(&s, 0x10_0000, 0x2000).unwrap();
                    done.store(true, Ordering::Release);
                });
                std::thread::sleep(std::time::Duration::from_millis(50));
                assert!(
                    !done.load(Ordering::Acquire),
                    "unmap went through a migration entry"
                );
                env.mm.complete_batch(live, &mut results);
            });
            assert!(done.load(Ordering::Acquire));
            assert!(results[0].is_ok());
            assert!(s.leaves().is_empty());
            env.audit();
        });
    }

    #[test]
    fn a_page_whose_tables_disagree_is_put_back_exactly() {
        arena(|env| {
            let a = env.mm.new_space().unwrap();
            let b = env.mm.new_space().unwrap();
            let region = SharedRegion::new(M2).unwrap();
            let flags = VmaFlags {
                shared: Some(SharedBacking {
                    region: region.clone(),
                    offset: 0,
                }),
                ..VmaFlags::private(HugePolicy::Always, true)
            };
            env.mm.map_anon(&a, 0x4000_0000, M2, flags).unwrap();
            env.mm.populate(&a, 0x4000_0000, M2).unwrap();
            assert!(write_user(env.mem, &a, 0x4000_0008, 9));
            let src = head_at(env, &a, 0x4000_0000);
            let leaf_before = a.state.lock().pt.entry_at(0x4000_0000, 2).unwrap();
            // B claims a mapping its tables do not have.
            let bogus = RmapEntry {
                space: b.id(),
                va: VirtAddr::new(0x9000_0000),
                size: PageSize::Size2M,
                offset: 0,
            };
            env.mm.rmap.lock().insert(src, bogus);
            let free = env.free_frames();
            let shootdowns = env.tlb.calls();
            assert_eq!(
                env.mm.migrate_one(src, Destination::Any),
                Err(MigrateError::Inconsistent)
            );
            assert_eq!(
                a.state.lock().pt.entry_at(0x4000_0000, 2),
                Some(leaf_before)
            );
            assert!(a.state.lock().migrating.is_empty());
            assert_eq!(env.free_frames(), free, "the destination went back");
            assert_eq!(env.tlb.calls(), shootdowns, "nothing to shoot down");
            assert!(!is_migrating(env.mm.meta(src).unwrap()));
            assert_eq!(read_user(env.mem, &a, 0x4000_0008), Some(9));
            env.mm.rmap.lock().remove(src, b.id(), 0x9000_0000);
            env.audit();
            assert!(env.mm.migrate_one(src, Destination::Any).is_ok());
            assert_eq!(read_user(env.mem, &a, 0x4000_0008), Some(9));
            env.audit();
        });
    }

    #[test]
    fn migration_entries_round_trip_flags_and_sizes() {
        let flags = PageTableFlags::WRITABLE
            | PageTableFlags::USER_ACCESSIBLE
            | PageTableFlags::NO_EXECUTE
            | PageTableFlags::ACCESSED
            | PageTableFlags::DIRTY
            | crate::paging::LEAF_PAT;
        for (size, pa) in [
            (PageSize::Size4K, 0x1234_5000u64),
            (PageSize::Size2M, 0x4020_0000),
            (PageSize::Size1G, 0x1_4000_0000),
        ] {
            let leaf = Entry::leaf(PhysAddr::new(pa), size, flags);
            let mig = MigrationEntry::from_leaf(leaf, size).unwrap();
            let e = mig.entry();
            assert!(!e.is_present() && !e.is_unused());
            assert_eq!(
                e.raw() & SOFT_BITS,
                MIGRATION_BIT | (size_code(size) << SIZE_SHIFT)
            );
            assert_eq!(MigrationEntry::decode(e, size.level()), Some(mig));
            let other = PageSize::ALL.into_iter().find(|&s| s != size).unwrap();
            assert_eq!(MigrationEntry::decode(e, other.level()), None);
            assert_eq!(mig.size(), size);
            assert_eq!(mig.source().as_u64(), pa);
            assert_eq!(mig.original(), leaf);
            assert_eq!(mig.flags(), flags | PageTableFlags::PRESENT);
            let moved = mig.retarget(PhysAddr::new(pa + size.bytes()));
            assert_eq!(moved.leaf_addr(size).as_u64(), pa + size.bytes());
            assert_eq!(moved.leaf_flags(size), leaf.leaf_flags(size));
        }
    }

    #[test]
    fn only_clean_present_leaves_become_migration_entries() {
        let leaf = Entry::leaf(
            PhysAddr::new(0x5000),
            PageSize::Size4K,
            PageTableFlags::BIT_9,
        );
        assert_eq!(MigrationEntry::from_leaf(leaf, PageSize::Size4K), None);
        assert_eq!(
            MigrationEntry::from_leaf(Entry::UNUSED, PageSize::Size4K),
            None
        );
        assert_eq!(MigrationEntry::decode(Entry::from_raw(0x5000), 1), None);
        assert_eq!(MigrationEntry::decode(Entry::from_raw(0x5200), 1), None);
        let present = Entry::leaf(
            PhysAddr::new(0x5000),
            PageSize::Size4K,
            PageTableFlags::empty(),
        );
        assert_eq!(MigrationEntry::decode(present, 1), None);
    }
}
