//! Address spaces: a user half of VMAs and page tables per process, the reverse map
//! shared by all of them, and the operations that keep the two consistent.
//!
//! # Objects
//!
//! [`Mm`] is the memory manager of one machine. It borrows the physical memory
//! ([`PhysMem`]), the frame allocator ([`FrameSource`]) and the TLB shootdown
//! ([`TlbShootdown`]) the kernel implements, owns the registry of address spaces and the
//! reverse map ([`crate::mapping::rmap`]), and carries every operation: `map_anon`, `unmap`,
//! `protect`, `handle_fault` and `populate` ([`crate::ops::fault`]), `pin`/`unpin`,
//! `migrate_one`/`migrate_batch` ([`crate::ops::migrate`]), `move_range_to_node`
//! ([`crate::ops::numa`]) and [`rmap_audit`](Mm::rmap_audit).
//!
//! An [`AddressSpace`] has its own PML4 (the kernel half copied from the kernel's root
//! when it is created), an id, the [`AtomicCpuSet`] of the CPUs that have it loaded, and one
//! `spin::Mutex` over its mutable state: the VMA set, the page table, the set of its
//! migration entries and a generation counter bumped by every VMA change. One lock per
//! address space is enough here: faults hold it for a table walk and a map, never while
//! zeroing or copying a frame or waiting for anything.
//!
//! # Lock order
//!
//! 1. the address-space lock (at most one at a time),
//! 2. a shared region's lock,
//! 3. the reverse-map lock,
//! 4. the allocator's lock (inside [`FrameSource`]).
//!
//! The registry lock is only held to look a space up. No lock is held during a TLB
//! shootdown (except the space lock while a huge leaf is split, see `split_leaf`),
//! while zeroing or copying frames, or while waiting for a migration (a waiter spins on
//! an epoch counter, not on a lock).
//!
//! # Waiting
//!
//! Some operations wait for other CPUs: every operation that shoots TLBs down waits for
//! their acknowledgements; `unmap`, `protect`, `destroy_space` and `move_range_to_node`
//! wait for a migration in their range to finish; a migration waits for an unmap of its
//! source that is still between its table change and its shootdown. The kernel must
//! call them with interrupts enabled (or serve shootdown requests while it spins), and a
//! fault handler that waits for a migration uses
//! [`Mm::wait_migration_with`] to serve them, since the migrating CPU shoots the
//! waiter's TLB down before it copies.
//!
//! # Frees after flushes
//!
//! An operation that changes leaves collects, under the locks, what it made stale and
//! what it may release afterwards in one per-operation flush (`Flush`, must-use): the
//! page-table frames it unlinked and one reference per mapping it took off the page
//! table and the reverse map. It drops the locks and completes the flush, which shoots
//! the TLBs of the space's CPUs down (saying whether tables are freed) and only then
//! frees the tables and drops the references. Nothing else releases them: a flush
//! dropped without completing, or whose shootdown failed, leaks them rather than free
//! them early. A frame is freed when its reference count reaches zero (see
//! [`crate::mapping::rmap`]), so never while a CPU may still hold a translation to it.

mod audit;
pub mod inject;
mod migrating;
mod partial;

mod sink;
#[cfg(any(test, feature = "std"))]
pub mod testing;
#[cfg(test)]
mod tests;
pub mod vmstat;
mod windows;

use crate::mapping::region::SharedRegion;
pub use audit::{RmapAuditError, RmapAuditReport};

#[cfg(any(debug_assertions, test, feature = "std"))]
pub use sink::leaked_frames;
pub(crate) use sink::{Flush, Tables};

use crate::backend::flush::FlushSink;
use crate::backend::phys::PhysMem;
use crate::backend::source::FrameSource;
use crate::backend::tlb::TlbShootdown;
use crate::base::addr::{PageSize, Pfn, PAGE_SIZE};
use crate::base::cpuset::AtomicCpuSet;
use crate::frame::meta::{FrameMeta, FrameState, FrameTable};
use crate::frame::refs::{CountError, Released};
use crate::mapping::claims::{ClaimId, ClaimsGuard, LimitError, MarkedClaims};
use crate::mapping::rmap::{Holder, Rmap, RmapEntry};
use crate::mapping::vma::{
    check_user_addr, check_user_range, HugePolicy, Vma, VmaError, VmaFlags, VmaSet,
};
use crate::paging::{
    Entry, PageTable, RangeError, SplitError, Translation, UnmappedLeaf, LOWER_HALF_END,
};
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use migrating::Migrating;
use spin::Mutex;
use vmstat::{VmStat, VmStatSnapshot};
use x86_64::structures::paging::PageTableFlags;
use x86_64::{PhysAddr, VirtAddr};

pub use crate::mapping::rmap::SpaceId;

/// Why an address-space operation refused. Every error leaves the address space, the
/// reverse map and the allocator as they were (an operation that split huge leaves before
/// failing leaves them split: the same translations in more leaves).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpaceError {
    /// A length of zero.
    ZeroLength,
    /// An address, length or region offset not 4 KiB aligned.
    Unaligned,
    /// The range is not canonical (it reaches into the hole between the halves or wraps).
    NonCanonical,
    /// The range lies in the kernel half.
    KernelHalf,
    /// The range overlaps an existing VMA.
    Overlap,
    /// Part of the range is not covered by a VMA.
    NotMapped,
    /// No frame (or page-table frame) could be allocated.
    OutOfMemory,
    /// The address space was destroyed.
    SpaceDestroyed,
    /// The address space belongs to another [`Mm`].
    ForeignSpace,
    /// A CPU still has the address space loaded.
    InUse,
    /// The window does not fit in the shared region.
    RegionBounds,
    /// The shared region is still referenced (by a VMA or another handle).
    RegionInUse,
    /// The NUMA node does not exist.
    NoSuchNode,
    /// A frame counter would overflow (or, if this crate's accounting were broken, drop
    /// below zero).
    Count(CountError),
    /// The page-table layer refused a range operation.
    PageTable(RangeError),
    /// The page-table layer refused to split a huge leaf (for a reason other than
    /// memory).
    Split(SplitError),
    /// A write to a read-only VMA.
    ReadOnly,
    /// A page-table slot holds a non-present entry that is neither empty nor a software
    /// entry this crate writes.
    BadEntry,
}

/// Why [`Mm::pin`] or [`Mm::unpin`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PinError {
    /// The PFN is outside the frame table.
    OutOfRange,
    /// The frame is not a managed frame (free, reserved, or kernel memory).
    NotInUse,
    /// The frame is under migration; retry after it completes.
    Migrating,
    /// `unpin` of a frame with no pin.
    NotPinned,
    /// Nothing is mapped at the address.
    NotMapped,
    /// The pin count would overflow.
    Count(CountError),
    /// The address or the address space was refused.
    Space(SpaceError),
}

impl From<VmaError> for SpaceError {
    fn from(e: VmaError) -> SpaceError {
        match e {
            VmaError::ZeroLength => SpaceError::ZeroLength,
            VmaError::Unaligned => SpaceError::Unaligned,
            VmaError::NonCanonical => SpaceError::NonCanonical,
            VmaError::KernelHalf => SpaceError::KernelHalf,
            VmaError::Overlap => SpaceError::Overlap,
        }
    }
}

impl fmt::Display for SpaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpaceError::ZeroLength => f.write_str("zero length"),
            SpaceError::Unaligned => f.write_str("not 4 KiB aligned"),
            SpaceError::NonCanonical => f.write_str("non-canonical range"),
            SpaceError::KernelHalf => f.write_str("range in the kernel half"),
            SpaceError::Overlap => f.write_str("overlaps an existing VMA"),
            SpaceError::NotMapped => f.write_str("range not covered by VMAs"),
            SpaceError::OutOfMemory => f.write_str("out of memory"),
            SpaceError::SpaceDestroyed => f.write_str("address space destroyed"),
            SpaceError::ForeignSpace => f.write_str("address space of another Mm"),
            SpaceError::InUse => f.write_str("address space loaded on a CPU"),
            SpaceError::RegionBounds => f.write_str("window outside the shared region"),
            SpaceError::RegionInUse => f.write_str("shared region still referenced"),
            SpaceError::NoSuchNode => f.write_str("no such NUMA node"),
            SpaceError::Count(e) => write!(f, "{e}"),
            SpaceError::PageTable(e) => write!(f, "page table: {e}"),
            SpaceError::Split(e) => write!(f, "split: {e}"),
            SpaceError::ReadOnly => f.write_str("write to a read-only VMA"),
            SpaceError::BadEntry => f.write_str("corrupt page-table entry"),
        }
    }
}

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PinError::OutOfRange => "PFN outside the frame table",
            PinError::NotInUse => "not a mapped user frame",
            PinError::Migrating => "frame under migration",
            PinError::NotPinned => "frame not pinned",
            PinError::NotMapped => "nothing mapped at the address",
            PinError::Count(e) => return write!(f, "{e}"),
            PinError::Space(e) => return write!(f, "{e}"),
        })
    }
}

impl core::error::Error for SpaceError {}
impl core::error::Error for PinError {}

/// Mutable state of an address space, behind its lock.
pub(crate) struct SpaceState<'m, M: PhysMem> {
    pub pt: PageTable<'m, M>,
    pub vmas: VmaSet,
    /// The migration entries currently in the table.
    pub migrating: Migrating,
    /// Bumped by every change of the VMA set.
    pub generation: u64,
    pub dead: bool,
}

impl<M: PhysMem> SpaceState<'_, M> {
    /// Whether a migration entry overlaps `[start, end)`.
    pub fn migration_in(&self, start: u64, end: u64) -> bool {
        self.migrating.overlaps(start, end)
    }
}

/// One address space (see the module doc).
pub struct AddressSpace<'m, M: PhysMem> {
    id: SpaceId,
    mm_id: u64,
    root: PhysAddr,
    cpus: AtomicCpuSet,
    pub(crate) state: Mutex<SpaceState<'m, M>>,
}

impl<M: PhysMem> AddressSpace<'_, M> {
    /// The id, unique within its [`Mm`].
    pub fn id(&self) -> SpaceId {
        self.id
    }

    /// Physical address of the PML4, for CR3.
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// The CPUs that have this address space loaded (the kernel updates it on switches).
    pub fn cpus(&self) -> &AtomicCpuSet {
        &self.cpus
    }

    /// What `va` translates to now (present leaves only).
    pub fn translate(&self, va: u64) -> Option<Translation> {
        let st = self.state.lock();
        if st.dead {
            return None;
        }
        st.pt.query(va)
    }

    /// A copy of the VMAs, in order.
    pub fn vmas(&self) -> Vec<Vma> {
        self.state.lock().vmas.iter().cloned().collect()
    }

    /// Every present leaf of the user half, in order.
    pub fn leaves(&self) -> Vec<(VirtAddr, Translation)> {
        let st = self.state.lock();
        if st.dead {
            return Vec::new();
        }
        st.pt.walk(0, LOWER_HALF_END).collect()
    }

    /// Whether the address space was destroyed.
    pub fn is_destroyed(&self) -> bool {
        self.state.lock().dead
    }
}

/// Source of distinct [`Mm`] ids, so that a space is never used with another `Mm`.
static NEXT_MM_ID: AtomicU64 = AtomicU64::new(1);

/// The memory manager (see the module doc).
pub struct Mm<'m, M: PhysMem> {
    id: u64,
    pub(crate) mem: &'m M,
    pub(crate) frames: &'m dyn FrameSource,
    /// The frame source's metadata table, read once: it never changes, and the per-page
    /// paths would otherwise ask the source for it through a virtual call each time.
    pub(crate) table: FrameTable<'m>,
    pub(crate) tlb: &'m dyn TlbShootdown,
    kernel_root: Option<PhysAddr>,
    spaces: Mutex<BTreeMap<SpaceId, Arc<AddressSpace<'m, M>>>>,
    pub(crate) rmap: Mutex<Rmap>,
    next_space: AtomicU64,
    /// Bumped whenever a migration completes (or is rolled back); waiters spin on it.
    pub(crate) epoch: AtomicU64,
    /// Counter operations that failed where no caller could take the error (a drop
    /// below zero would mean broken accounting); [`rmap_audit`](Self::rmap_audit)
    /// reports them.
    pub(crate) count_errors: AtomicU64,
    /// The buddy order of the largest leaf the fault path may map (see
    /// [`Mm::set_max_leaf`]).
    max_leaf_order: AtomicU8,
    /// The physical windows claimed by anchored VMAs, across every address space
    /// (taken after a space's lock, never before it), with their pageblock marks; only
    /// [`Mm::claims`] locks them.
    windows: MarkedClaims,
    /// Source of anchor ids.
    next_claim: AtomicU64,
    /// The event counters.
    pub(crate) vmstat: VmStat,
    /// The runs of reserved frames, found on first use (see
    /// [`reserved_runs`](Self::reserved_runs)).
    reserved: spin::Once<Vec<(Pfn, Pfn)>>,
}

/// The leaf flags of a user mapping.
pub(crate) fn user_leaf_flags(writable: bool) -> PageTableFlags {
    let mut flags = PageTableFlags::USER_ACCESSIBLE | PageTableFlags::NO_EXECUTE;
    flags.set(PageTableFlags::WRITABLE, writable);
    flags
}

/// The leaf size of a block of `order`, if one exists.
#[inline]
pub(crate) fn size_of_order(order: u8) -> Option<PageSize> {
    PageSize::ALL.into_iter().find(|s| s.order() == order)
}

impl<'m, M: PhysMem> Mm<'m, M> {
    /// A memory manager over `mem`, `frames` and `tlb`. New address spaces copy the
    /// upper 256 PML4 entries (the kernel half) of `kernel_root`, if given; the kernel
    /// must have populated all of them, since later additions are not propagated.
    pub fn new(
        mem: &'m M,
        frames: &'m dyn FrameSource,
        tlb: &'m dyn TlbShootdown,
        kernel_root: Option<PhysAddr>,
    ) -> Mm<'m, M> {
        Mm {
            id: NEXT_MM_ID.fetch_add(1, Ordering::Relaxed),
            mem,
            frames,
            table: frames.frame_table(),
            tlb,
            kernel_root,
            spaces: Mutex::new(BTreeMap::new()),
            rmap: Mutex::new(Rmap::default()),
            next_space: AtomicU64::new(1),
            epoch: AtomicU64::new(0),
            count_errors: AtomicU64::new(0),
            max_leaf_order: AtomicU8::new(PageSize::Size1G.order()),
            windows: MarkedClaims::new(),
            next_claim: AtomicU64::new(1),
            vmstat: VmStat::default(),
            reserved: spin::Once::new(),
        }
    }

    /// The maximal runs of reserved frames (never handed to the allocator), by one scan
    /// of the frame table the first time they are asked for. Frames leave the reserved
    /// state only when added to the allocator, which happens before a memory manager is
    /// built over it; a range added later would still be listed, and a snapshot of
    /// memory built from the list would only take it for blocked.
    pub(crate) fn reserved_runs(&self) -> &[(Pfn, Pfn)] {
        self.reserved.call_once(|| self.table.reserved_runs())
    }

    /// Cap the leaves new faults map at `size` (default 1 GiB), e.g. 2 MiB on a CPU
    /// without 1 GiB pages: a huge-page VMA then gets 2 MiB leaves. Existing mappings are
    /// left as they are.
    pub fn set_max_leaf(&self, size: PageSize) {
        self.max_leaf_order.store(size.order(), Ordering::Relaxed);
    }

    /// The largest leaf new faults may map.
    pub fn max_leaf(&self) -> PageSize {
        size_of_order(self.max_leaf_order.load(Ordering::Relaxed)).unwrap_or(PageSize::Size4K)
    }

    /// The claimed windows, locked; their changes keep the pageblock marks the
    /// allocator reads in step.
    pub(crate) fn claims(&self) -> ClaimsGuard<'_> {
        self.windows.lock(self.table)
    }

    /// A fresh owner id for the windows of a new anchor.
    pub(crate) fn new_claim_id(&self) -> ClaimId {
        ClaimId(self.next_claim.fetch_add(1, Ordering::Relaxed))
    }

    /// Let the range tree of claimed windows hold at most `limit` ranges (default
    /// [`DEFAULT_LIMIT`](crate::mapping::claims::DEFAULT_LIMIT)); contiguity generation of
    /// a VMA whose windows would need more is refused with `ContigError::NoRoom`. Zero
    /// or more than [`MAX_LIMIT`](crate::mapping::claims::MAX_LIMIT) is refused, and
    /// nothing changes; ranges claimed already stay.
    pub fn set_claim_limit(&self, limit: usize) -> Result<(), LimitError> {
        self.claims().set_limit(limit)
    }

    /// The most ranges the range tree of claimed windows may hold.
    pub fn claim_limit(&self) -> usize {
        self.claims().limit()
    }

    /// Frames claimed by the windows of anchored VMAs, and the number of ranges.
    pub fn claimed_windows(&self) -> (u64, usize) {
        let claims = self.claims();
        let frames = claims.ranges().map(|(a, b, _)| b.0 - a.0).sum();
        (frames, claims.len())
    }

    /// The event counters now (see [`vmstat`]).
    pub fn vmstat(&self) -> VmStatSnapshot {
        self.vmstat.snapshot()
    }

    /// The frame source.
    pub fn frames(&self) -> &'m dyn FrameSource {
        self.frames
    }

    /// A new, empty address space.
    pub fn new_space(&self) -> Result<Arc<AddressSpace<'m, M>>, SpaceError> {
        let mut tables = Tables::new(self.frames);
        let pt = PageTable::new(self.mem, &mut tables).ok_or(SpaceError::OutOfMemory)?;
        let root = pt.root();
        if let Some(kernel) = self.kernel_root {
            for i in 256..512u64 {
                let word = self.mem.word(kernel + i * 8).load(Ordering::Acquire);
                self.mem.word(root + i * 8).store(word, Ordering::Release);
            }
        }
        let id = SpaceId(self.next_space.fetch_add(1, Ordering::Relaxed));
        let space = Arc::new(AddressSpace {
            id,
            mm_id: self.id,
            root,
            cpus: AtomicCpuSet::new(),
            state: Mutex::new(SpaceState {
                pt,
                vmas: VmaSet::new(),
                migrating: Migrating::default(),
                generation: 0,
                dead: false,
            }),
        });
        self.spaces.lock().insert(id, space.clone());
        Ok(space)
    }

    /// The live address space with id `id`.
    pub fn space(&self, id: SpaceId) -> Option<Arc<AddressSpace<'m, M>>> {
        self.spaces.lock().get(&id).cloned()
    }

    /// Every live address space.
    pub fn spaces(&self) -> Vec<Arc<AddressSpace<'m, M>>> {
        self.spaces.lock().values().cloned().collect()
    }

    pub(crate) fn check_space(&self, space: &AddressSpace<'m, M>) -> Result<(), SpaceError> {
        if space.mm_id == self.id {
            Ok(())
        } else {
            Err(SpaceError::ForeignSpace)
        }
    }

    /// The metadata of `pfn`.
    #[inline]
    pub(crate) fn meta(&self, pfn: Pfn) -> Option<&'m FrameMeta> {
        self.table.get(pfn)
    }

    /// The head of the allocated block containing `pfn`.
    #[inline]
    pub(crate) fn head_of(&self, pfn: Pfn) -> Option<Pfn> {
        let table = self.table;
        table.head_of(pfn).filter(|&h| {
            table
                .get(h)
                .is_some_and(|m| m.state() == FrameState::Allocated)
        })
    }

    /// Spin until the migration epoch moves past `epoch`.
    pub(crate) fn wait_epoch(&self, epoch: u64) {
        while self.epoch.load(Ordering::Acquire) == epoch {
            core::hint::spin_loop();
        }
    }

    /// Add a VMA of `len` bytes at `start` with `flags`. Frames come at fault time.
    pub fn map_anon(
        &self,
        space: &AddressSpace<'m, M>,
        start: u64,
        len: u64,
        flags: VmaFlags,
    ) -> Result<(), SpaceError> {
        self.check_space(space)?;
        let (start, end) = check_user_range(start, len)?;
        if let Some(shared) = &flags.shared {
            if !shared.offset.is_multiple_of(PAGE_SIZE) {
                return Err(SpaceError::Unaligned);
            }
            if shared
                .offset
                .checked_add(len)
                .is_none_or(|e| e > shared.region.len())
            {
                return Err(SpaceError::RegionBounds);
            }
        }
        if let Some(node) = flags.node {
            if !self.frames.node_exists(node) {
                return Err(SpaceError::NoSuchNode);
            }
        }
        let mut st = space.state.lock();
        if st.dead {
            return Err(SpaceError::SpaceDestroyed);
        }
        st.vmas.insert(Vma {
            start,
            end,
            flags,
            anchor: None,
        })?;
        st.generation += 1;
        Ok(())
    }

    /// Remove `[start, start + len)` from the address space: split the VMAs at its ends,
    /// unmap its pages (splitting huge leaves that straddle an end), and free the frames
    /// nothing else uses once the TLBs are shot down. Unmapped parts are skipped.
    pub fn unmap(
        &self,
        space: &AddressSpace<'m, M>,
        start: u64,
        len: u64,
    ) -> Result<(), SpaceError> {
        let removed = self.drop_pages(space, start, len, false, |st, start, end| {
            st.generation += 1;
            st.vmas.remove_range(start, end)
        })?;
        self.release_windows(space, &removed);
        Ok(())
    }

    /// Unmap the pages of `[start, start + len)` (covered by VMAs when `covered`), then
    /// `then` under the same lock; shoot down, free, and give back the unmapped parts of
    /// huge blocks.
    fn drop_pages<T>(
        &self,
        space: &AddressSpace<'m, M>,
        start: u64,
        len: u64,
        covered: bool,
        then: impl FnOnce(&mut SpaceState<'m, M>, u64, u64) -> T,
    ) -> Result<T, SpaceError> {
        self.check_space(space)?;
        let (start, end) = check_user_range(start, len)?;
        let mut st = self.lock_settled(space, start, end, covered)?;
        let mut flush = Flush::new();
        let result = self
            .unmap_locked(space, &mut st, start, end, &mut flush)
            .map(|()| then(&mut st, start, end));
        drop(st);
        let mut touched: Vec<Pfn> = flush.ref_heads().to_vec();
        flush.complete(self, space);
        touched.sort_unstable();
        touched.dedup();
        self.free_unmapped_parts(space, &touched);
        result
    }

    /// Drop the pages of `[start, start + len)` (which VMAs must cover) but keep the
    /// VMAs, as `MADV_DONTNEED` does: the next touch faults a zero page in. Huge leaves
    /// straddling an end are split, and a huge block left partly mapped gives its
    /// dropped frames back.
    pub fn discard(
        &self,
        space: &AddressSpace<'m, M>,
        start: u64,
        len: u64,
    ) -> Result<(), SpaceError> {
        self.drop_pages(space, start, len, true, |_, _, _| ())
    }

    /// Lock `space` once no migration entry lies in `[start, end)`, waiting for those in
    /// flight without the lock held. Fails if the space is destroyed or, when `covered`,
    /// if its VMAs do not cover the whole range.
    pub(crate) fn lock_settled<'s>(
        &self,
        space: &'s AddressSpace<'m, M>,
        start: u64,
        end: u64,
        covered: bool,
    ) -> Result<spin::MutexGuard<'s, SpaceState<'m, M>>, SpaceError> {
        loop {
            let epoch = self.epoch.load(Ordering::Acquire);
            let st = space.state.lock();
            if st.dead {
                return Err(SpaceError::SpaceDestroyed);
            }
            if covered && !st.vmas.covers(start, end) {
                return Err(SpaceError::NotMapped);
            }
            if !st.migration_in(start, end) {
                return Ok(st);
            }
            drop(st);
            self.wait_epoch(epoch);
        }
    }

    /// Unmap the leaves of `[start, end)` and take them off the reverse map; `flush`
    /// drops their references once it completes. On error, the leaves already unmapped
    /// are detached all the same.
    fn unmap_locked(
        &self,
        space: &AddressSpace<'m, M>,
        st: &mut SpaceState<'m, M>,
        start: u64,
        end: u64,
        flush: &mut Flush,
    ) -> Result<(), SpaceError> {
        self.split_boundaries(space, st, start, end)?;
        let mut leaves = Vec::new();
        let unmapped = st
            .pt
            .unmap_range(start, end, flush, |leaf| leaves.push(leaf));
        self.detach(space.id, &leaves, flush);
        unmapped.map_err(SpaceError::PageTable)
    }

    /// Give `[start, start + len)` (entirely covered by VMAs) the write permission
    /// `writable`, splitting VMAs and huge leaves at its ends.
    pub fn protect(
        &self,
        space: &AddressSpace<'m, M>,
        start: u64,
        len: u64,
        writable: bool,
    ) -> Result<(), SpaceError> {
        self.check_space(space)?;
        let (start, end) = check_user_range(start, len)?;
        let mut st = self.lock_settled(space, start, end, true)?;
        let mut flush = Flush::new();
        let mut result = self.split_boundaries(space, &mut st, start, end);
        if result.is_ok() {
            result = st
                .pt
                .protect_range(start, end, user_leaf_flags(writable), &mut flush)
                .map_err(SpaceError::PageTable);
        }
        if result.is_ok() {
            st.vmas.set_writable(start, end, writable);
            st.generation += 1;
        }
        drop(st);
        flush.complete(self, space);
        result
    }

    /// Change when `[start, end)` may be mapped by huge pages (`madvise` with
    /// `MADV_HUGEPAGE` / `MADV_NOHUGEPAGE`): VMAs are split at the range's ends (and a
    /// huge leaf across an end split there), the leaves inside stay as they are; later
    /// faults, promotions, collapses and the daemon follow the new policy. Gaps are
    /// skipped.
    pub fn advise_huge(
        &self,
        space: &AddressSpace<'m, M>,
        start: u64,
        len: u64,
        huge: HugePolicy,
    ) -> Result<(), SpaceError> {
        self.check_space(space)?;
        let (start, end) = check_user_range(start, len)?;
        let mut st = self.lock_settled(space, start, end, true)?;
        self.split_boundaries(space, &mut st, start, end)?;
        st.vmas.set_huge(start, end, huge);
        st.generation += 1;
        Ok(())
    }

    /// Tear the address space down: unmap everything, free its page tables and its root,
    /// and drop it from the registry. Refused while a CPU has it loaded.
    pub fn destroy_space(&self, space: &AddressSpace<'m, M>) -> Result<(), SpaceError> {
        self.check_space(space)?;
        loop {
            let epoch = self.epoch.load(Ordering::Acquire);
            let mut st = space.state.lock();
            if st.dead {
                return Err(SpaceError::SpaceDestroyed);
            }
            if !space.cpus.load().is_empty() {
                return Err(SpaceError::InUse);
            }
            if !st.migrating.is_empty() {
                drop(st);
                self.wait_epoch(epoch);
                continue;
            }
            let mut flush = Flush::new();
            let mut leaves = Vec::new();
            let unmapped = st
                .pt
                .unmap_range(0, LOWER_HALF_END, &mut flush, |l| leaves.push(l));
            self.detach(space.id, &leaves, &mut flush);
            if let Err(e) = unmapped {
                drop(st);
                flush.complete(self, space);
                return Err(SpaceError::PageTable(e));
            }
            st.dead = true;
            if self.kernel_root.is_some() {
                for i in 256..512u64 {
                    self.mem
                        .word(space.root + i * 8)
                        .store(0, Ordering::Release);
                }
            }
            let vmas = st.vmas.clear();
            st.generation += 1;
            drop(st);
            self.spaces.lock().remove(&space.id);
            flush.defer_free_table(space.root);
            flush.flush_all();
            flush.complete(self, space);
            self.release_windows(space, &vmas);
            return Ok(());
        }
    }

    /// Split every huge leaf that straddles `start` or `end`, keeping the reverse map
    /// exact.
    fn split_boundaries(
        &self,
        space: &AddressSpace<'m, M>,
        st: &mut SpaceState<'m, M>,
        start: u64,
        end: u64,
    ) -> Result<(), SpaceError> {
        for boundary in [start, end] {
            while let Some(t) = st.pt.query(boundary) {
                if t.size.is_aligned_va(VirtAddr::new_truncate(boundary)) {
                    break;
                }
                let va = boundary & !(t.size.bytes() - 1);
                self.split_leaf(space, st, va, t)?;
            }
        }
        Ok(())
    }

    /// Split the huge leaf `t` at `va` into 512 smaller leaves and record them.
    ///
    /// The leaf's slot is made non-present and its translation shot down on every CPU
    /// of the space before the table of smaller leaves is linked, so no CPU ever holds
    /// TLB entries of both sizes for one address. That shootdown is synchronous and made
    /// with the space lock held (the only one made under a lock): a CPU that faults on
    /// the range meanwhile waits for the lock, and finds the table once it gets it, so
    /// no fault ever sees the non-present step. Its targets acknowledge while spinning on
    /// the lock, since the kernel takes it with interrupts enabled (see the module doc).
    pub(crate) fn split_leaf(
        &self,
        space: &AddressSpace<'m, M>,
        st: &mut SpaceState<'m, M>,
        va: u64,
        t: Translation,
    ) -> Result<(), SpaceError> {
        let Some(child) = t.size.smaller() else {
            return Ok(());
        };
        let id = space.id;
        // The head is read under the reverse-map lock: a shared block mapped here may be
        // fused or split by a promotion started from another space, which changes heads
        // under that lock only (and refuses a block whose map count runs ahead of its
        // reverse-map entries, as it does from here until the entries are recorded).
        let rmap = self.rmap.lock();
        let head = self.head_of(Pfn::containing(t.leaf_base_pa));
        let meta = head.and_then(|h| self.meta(h));
        // The 511 new mappings are counted before anything changes, so a count that
        // would overflow refuses the split with the tables untouched.
        let recorded = match (head, meta) {
            (Some(h), Some(meta)) => {
                let recorded = rmap.get(h, id, va).is_some();
                if recorded {
                    meta.add_mappings(rmap.counts(), 511)
                        .map_err(SpaceError::Count)?;
                }
                recorded
            }
            _ => false,
        };
        drop(rmap);
        let unreserve = || {
            if let (true, Some(meta)) = (recorded, meta) {
                let rmap = self.rmap.lock();
                for _ in 0..511 {
                    self.count_result(meta.remove_mapping(rmap.counts()));
                    self.count_result(meta.put_ref(rmap.counts()));
                }
            }
        };
        let mut tables = Tables::new(self.frames);
        let mut split_flush = Flush::new();
        let token = match st.pt.begin_split(va, t.size, &mut tables, &mut split_flush) {
            Ok(token) => token,
            Err(e) => {
                unreserve();
                return Err(match e {
                    SplitError::OutOfTables => SpaceError::OutOfMemory,
                    other => SpaceError::Split(other),
                });
            }
        };
        split_flush.complete(self, space);
        // Under the space lock nothing else writes the slot, so this only fails if the
        // tables are corrupt; the cause is kept.
        st.pt.finish_split(token).map_err(|_| {
            SpaceError::Split(SplitError::Busy {
                va: VirtAddr::new_truncate(va),
                size: t.size,
            })
        })?;
        let (Some(head), true) = (head, recorded) else {
            return Ok(());
        };
        let mut rmap = self.rmap.lock();
        if let Some(old) = rmap.remove(head, id, va) {
            let step = child.bytes() / PAGE_SIZE;
            for i in 0..512u64 {
                rmap.insert(
                    head,
                    RmapEntry {
                        space: id,
                        va: VirtAddr::new_truncate(va + i * child.bytes()),
                        size: child,
                        offset: old.offset + i * step,
                    },
                );
            }
        }
        Ok(())
    }

    /// Take removed leaves off the reverse map; their references go to `flush`, which
    /// drops them once its shootdown is done.
    pub(crate) fn detach(&self, id: SpaceId, leaves: &[UnmappedLeaf], flush: &mut Flush) {
        let mut rmap = self.rmap.lock();
        for leaf in leaves {
            let Some(head) = self.head_of(Pfn::containing(leaf.pa)) else {
                continue;
            };
            if rmap.remove(head, id, leaf.va.as_u64()).is_some() {
                if let Some(meta) = self.meta(head) {
                    self.count_result(meta.remove_mapping(rmap.counts()));
                }
                flush.put_ref(head);
            }
        }
    }

    /// Free a block whose last reference is gone (or a page-table frame); a refusal means
    /// broken accounting and is counted for the audit.
    pub(crate) fn free_block(&self, head: Pfn, order: u8) {
        if self.frames.free(head, order).is_err() {
            self.count_errors.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Free blocks whose last reference is gone, (head, order) each, through one call of
    /// the frame source; each refusal is counted for the audit.
    pub(crate) fn free_blocks(&self, blocks: &[(Pfn, u8)]) {
        let refused = self.frames.free_batch(blocks);
        if refused != 0 {
            self.count_errors.fetch_add(refused, Ordering::AcqRel);
        }
    }

    /// Drop one reference on each of `heads`; free the blocks that lose their last one.
    pub(crate) fn put_refs(&self, heads: &[Pfn]) {
        let mut dead = Vec::new();
        {
            let rmap = self.rmap.lock();
            for &head in heads {
                if let Some(meta) = self.meta(head) {
                    if self.count_result(meta.put_ref(rmap.counts())) == Some(Released::Last) {
                        dead.push((head, meta.order()));
                    }
                }
            }
        }
        if !dead.is_empty() {
            self.free_blocks(&dead);
        }
    }

    /// Record a new mapping of the managed block `head` (under the reverse-map lock the
    /// caller holds): one more reference and map count.
    pub(crate) fn add_mapping(
        rmap: &mut Rmap,
        meta: &FrameMeta,
        head: Pfn,
        entry: RmapEntry,
    ) -> Result<(), CountError> {
        if rmap.insert(head, entry) {
            if let Err(e) = meta.add_mappings(rmap.counts(), 1) {
                rmap.remove(head, entry.space, entry.va.as_u64());
                return Err(e);
            }
        }
        Ok(())
    }

    /// Keep the value of a counter operation that cannot fail unless this crate's
    /// accounting is broken; a failure is counted for [`rmap_audit`](Self::rmap_audit) to
    /// report instead of being lost.
    pub(crate) fn count_result<T>(&self, r: Result<T, CountError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(_) => {
                self.count_errors.fetch_add(1, Ordering::AcqRel);
                None
            }
        }
    }

    /// Pin the block that `va` of `space` maps (as a device doing DMA would): it is
    /// neither moved nor freed until [`unpin`](Self::unpin). Returns the block's head.
    ///
    /// The head is found under the address space's lock, from the present leaf at `va`,
    /// and checked against the reverse map under its lock, so the block pinned is the one
    /// mapped there at that moment (a block cannot be freed or merged while this space
    /// maps it and the lock is held).
    pub fn pin(&self, space: &AddressSpace<'m, M>, va: u64) -> Result<Pfn, PinError> {
        self.check_space(space).map_err(PinError::Space)?;
        check_user_addr(va).map_err(|e| PinError::Space(e.into()))?;
        let st = space.state.lock();
        if st.dead {
            return Err(PinError::Space(SpaceError::SpaceDestroyed));
        }
        let Some(t) = st.pt.query(va) else {
            let migrating = st.migrating.covering(va).is_some();
            return Err(if migrating {
                PinError::Migrating
            } else {
                PinError::NotMapped
            });
        };
        let pfn = Pfn::containing(t.leaf_base_pa);
        let rmap = self.rmap.lock();
        let head = self.head_of(pfn).ok_or(PinError::NotInUse)?;
        let meta = self.meta(head).ok_or(PinError::NotInUse)?;
        let leaf_va = va & !(t.size.bytes() - 1);
        if !meta.is_managed() || rmap.get(head, space.id, leaf_va).is_none() {
            return Err(PinError::NotInUse);
        }
        if meta.is_claimed() {
            return Err(PinError::Migrating);
        }
        meta.pin(rmap.counts()).map_err(PinError::Count)?;
        Ok(head)
    }

    /// Drop one pin of the block headed at `head` (as [`pin`](Self::pin) returned it);
    /// frees it if that was its last use.
    pub fn unpin(&self, head: Pfn) -> Result<(), PinError> {
        let table = self.table;
        let meta = table.get(head).ok_or(PinError::OutOfRange)?;
        {
            let rmap = self.rmap.lock();
            // Under the lock: a pinned block is neither freed nor merged, so a head that
            // still is one here is the block that was pinned.
            if self.head_of(head) != Some(head) || !meta.is_managed() {
                return Err(PinError::NotInUse);
            }
            meta.unpin(rmap.counts()).map_err(|_| PinError::NotPinned)?;
        }
        self.put_refs(&[head]);
        Ok(())
    }

    /// Every mapping of the block containing `pfn`.
    pub fn rmap_of(&self, pfn: Pfn) -> Vec<RmapEntry> {
        match self.head_of(pfn) {
            Some(head) => self.rmap.lock().entries(head),
            None => Vec::new(),
        }
    }

    /// Drop the frames of `region`, which no VMA may reference any more (`region` must
    /// be the last handle). Returns the number of frames released; frames still mapped
    /// somewhere (during an unmap's shootdown) are freed when their last mapping goes.
    pub fn release_region(&self, region: &Arc<SharedRegion>) -> Result<usize, SpaceError> {
        if Arc::strong_count(region) != 1 {
            return Err(SpaceError::RegionInUse);
        }
        let frames = core::mem::take(&mut *region.frames.lock());
        let mut heads = Vec::with_capacity(frames.len());
        {
            let mut rmap = self.rmap.lock();
            for f in frames.values() {
                if rmap.take_holder(f.head).is_some() {
                    heads.push(f.head);
                }
            }
        }
        self.put_refs(&heads);
        Ok(frames.len())
    }

    /// Make the fresh block `head` a managed frame held by `region` at page `index` (the
    /// region's reference is the block's initial one).
    pub(crate) fn adopt_region_frame(
        rmap: &mut Rmap,
        meta: &FrameMeta,
        head: Pfn,
        region: &Arc<SharedRegion>,
        index: u64,
    ) {
        meta.make_managed();
        rmap.set_holder(
            head,
            Holder {
                region: Arc::downgrade(region),
                index,
            },
        );
    }

    /// The migration entry (decoded) of `space` at `va`, if any: for audits and tests.
    pub fn migration_entry_at(&self, space: &AddressSpace<'m, M>, va: u64) -> Option<(u64, Entry)> {
        let st = space.state.lock();
        st.migrating
            .covering(va)
            .map(|(start, m)| (start, m.entry()))
    }
}
