//! Address spaces: a user half of VMAs and page tables per process, the reverse map
//! shared by all of them, and the operations that keep the two consistent.
//!
//! # Objects
//!
//! [`Mm`] is the memory manager of one machine. It borrows the physical memory
//! ([`PhysMem`]), the frame allocator ([`FrameSource`]) and the TLB shootdown
//! ([`TlbShootdown`]) the kernel implements, owns the registry of address spaces and the
//! reverse map ([`crate::rmap`]), and carries every operation: `map_anon`, `unmap`,
//! `protect`, `handle_fault` and `populate` ([`crate::fault`]), `pin`/`unpin`,
//! `migrate_one`/`migrate_batch` ([`crate::migrate`]), `move_range_to_node`
//! ([`crate::numa`]) and [`rmap_audit`](Mm::rmap_audit).
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
//! shootdown, while zeroing or copying frames, or while waiting for a migration (a waiter
//! spins on an epoch counter, not on a lock).
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
//! An operation that removes leaves takes them off the page table and the reverse map
//! under the locks, drops the locks, shoots the TLBs down, frees the unlinked page
//! tables and only then drops the references the leaves held; a frame is freed when its
//! reference count reaches zero (see [`crate::rmap`]), so never while a CPU may still
//! hold a translation to it.

mod audit;
pub(crate) mod shared;
mod sink;
#[cfg(any(test, feature = "std"))]
pub mod testing;
#[cfg(test)]
mod tests;

pub use audit::{RmapAuditError, RmapAuditReport};
pub use shared::{RegionFrame, SharedRegion};

pub(crate) use sink::{Flush, Tables};

use crate::addr::{PageSize, Pfn, PAGE_SIZE};
use crate::buddy::{AllocError, FreeError, MigrateType};
use crate::cpuset::AtomicCpuSet;
use crate::fault::FaultError;
use crate::frame::{FrameMeta, FrameState, FrameTable};
use crate::migrate::MigrationEntry;
use crate::numa::NodeId;
use crate::paging::{Entry, PageTable, RangeError, Translation, UnmappedLeaf, LOWER_HALF_END};
use crate::phys::PhysMem;
use crate::rmap::{Holder, Rmap, RmapEntry, OWNER_MANAGED, OWNER_MIGRATING};
use crate::vma::{check_user_range, Vma, VmaFlags, VmaSet};
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use spin::Mutex;
use x86_64::structures::paging::PageTableFlags;
use x86_64::{PhysAddr, VirtAddr};

pub use crate::rmap::SpaceId;

/// Past this many leaves a shootdown asks for a full flush instead of ranges: the
/// kernel's measured threshold, so that the ranges fit one
/// [`FlushBatch`](crate::shootdown::FlushBatch).
pub const SHOOTDOWN_RANGE_LIMIT: usize = crate::shootdown::FULL_FLUSH_THRESHOLD;

/// Where frames come from: the kernel's buddy allocator(s) and frame table.
///
/// Implementations lock internally (every method takes `&self`) and must be callable
/// from any CPU. [`crate::numa::BuddyFrames`] is one over a [`BuddyAllocator`](crate::buddy::BuddyAllocator).
pub trait FrameSource: Sync {
    /// A block of `2^order` frames of type `mt`, on `node` if given (strictly: an
    /// allocation that cannot be served there fails).
    fn alloc(&self, order: u8, mt: MigrateType, node: Option<NodeId>) -> Result<Pfn, AllocError>;
    /// Exactly the block of `2^order` frames at `pfn`, if it is free.
    fn alloc_at(&self, pfn: Pfn, order: u8, mt: MigrateType) -> Result<Pfn, AllocError>;
    /// Free the block of `2^order` frames headed at `pfn`.
    fn free(&self, pfn: Pfn, order: u8) -> Result<(), FreeError>;
    /// The metadata of every frame.
    fn frame_table(&self) -> FrameTable<'_>;
    /// The NUMA node of `pfn`, if known.
    fn node_of(&self, pfn: Pfn) -> Option<NodeId> {
        let _ = pfn;
        None
    }
    /// Whether `node` exists.
    fn node_exists(&self, node: NodeId) -> bool {
        let _ = node;
        false
    }
}

/// Synchronous TLB shootdown, implemented by the kernel with IPIs.
pub trait TlbShootdown: Sync {
    /// Invalidate `ranges` (or everything of the address space, when `full`) on every CPU
    /// in `cpus` (the current CPU included if it is in the mask), and return only after
    /// every one of them has flushed. `ranges` are user-half leaves of the address space
    /// the mask belongs to; page-table frames unlinked by the change are freed after this
    /// returns, so the flush must cover paging-structure caches too (`invlpg` does).
    fn shootdown(&self, cpus: &AtomicCpuSet, ranges: &[(VirtAddr, PageSize)], full: bool);
}

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
    /// The page-table layer refused a range operation.
    PageTable(RangeError),
    /// Pre-faulting a page failed.
    Fault(FaultError),
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
            SpaceError::PageTable(e) => write!(f, "page table: {e}"),
            SpaceError::Fault(e) => write!(f, "fault: {e}"),
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
        })
    }
}

impl core::error::Error for SpaceError {}
impl core::error::Error for PinError {}

/// Mutable state of an address space, behind its lock.
pub(crate) struct SpaceState<'m, M: PhysMem> {
    pub pt: PageTable<'m, M>,
    pub vmas: VmaSet,
    /// The migration entries currently in the table: first address → (size, entry).
    pub migrating: BTreeMap<u64, (PageSize, MigrationEntry)>,
    /// Bumped by every change of the VMA set.
    pub generation: u64,
    pub dead: bool,
}

impl<M: PhysMem> SpaceState<'_, M> {
    /// Whether a migration entry overlaps `[start, end)`.
    pub fn migration_in(&self, start: u64, end: u64) -> bool {
        let from = start.saturating_sub(PageSize::Size1G.bytes() - 1);
        self.migrating
            .range(from..end)
            .any(|(&va, &(size, _))| va + size.bytes() > start)
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
    pub(crate) tlb: &'m dyn TlbShootdown,
    kernel_root: Option<PhysAddr>,
    spaces: Mutex<BTreeMap<SpaceId, Arc<AddressSpace<'m, M>>>>,
    pub(crate) rmap: Mutex<Rmap>,
    next_space: AtomicU64,
    /// Bumped whenever a migration completes (or is rolled back); waiters spin on it.
    pub(crate) epoch: AtomicU64,
    /// The buddy order of the largest leaf the fault path may map (see
    /// [`Mm::set_max_leaf`]).
    max_leaf_order: AtomicU8,
}

/// The leaf flags of a user mapping.
pub(crate) fn user_leaf_flags(writable: bool) -> PageTableFlags {
    let mut flags = PageTableFlags::USER_ACCESSIBLE | PageTableFlags::NO_EXECUTE;
    flags.set(PageTableFlags::WRITABLE, writable);
    flags
}

/// The next smaller leaf size.
pub(crate) fn smaller(size: PageSize) -> Option<PageSize> {
    match size {
        PageSize::Size4K => None,
        PageSize::Size2M => Some(PageSize::Size4K),
        PageSize::Size1G => Some(PageSize::Size2M),
    }
}

/// The leaf size of a block of `order`, if one exists.
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
            tlb,
            kernel_root,
            spaces: Mutex::new(BTreeMap::new()),
            rmap: Mutex::new(Rmap::default()),
            next_space: AtomicU64::new(1),
            epoch: AtomicU64::new(0),
            max_leaf_order: AtomicU8::new(PageSize::Size1G.order()),
        }
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
                migrating: BTreeMap::new(),
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
    pub(crate) fn meta(&self, pfn: Pfn) -> Option<&'m FrameMeta> {
        self.frames.frame_table().get(pfn)
    }

    /// The head of the allocated block containing `pfn`.
    pub(crate) fn head_of(&self, pfn: Pfn) -> Option<Pfn> {
        let table = self.frames.frame_table();
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
        st.vmas.insert(Vma { start, end, flags })?;
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
        self.check_space(space)?;
        let (start, end) = check_user_range(start, len)?;
        let mut st = self.lock_settled(space, start, end, false)?;
        let mut flush = Flush::new();
        let result = self.unmap_locked(space.id, &mut st, start, end, &mut flush);
        let removed = match result {
            Ok(refs) => {
                let vmas = st.vmas.remove_range(start, end);
                st.generation += 1;
                Ok((refs, vmas))
            }
            Err(e) => Err(e),
        };
        drop(st);
        self.shootdown(space, flush);
        let (refs, vmas) = removed?;
        self.put_refs(&refs);
        drop(vmas);
        Ok(())
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

    /// Unmap the leaves of `[start, end)` and take them off the reverse map; returns the
    /// heads whose references must be dropped after the shootdown.
    fn unmap_locked(
        &self,
        id: SpaceId,
        st: &mut SpaceState<'m, M>,
        start: u64,
        end: u64,
        flush: &mut Flush,
    ) -> Result<Vec<Pfn>, SpaceError> {
        self.split_boundaries(id, st, start, end, flush)?;
        let mut leaves = Vec::new();
        let mut tables = Tables::new(self.frames);
        st.pt
            .unmap_range(start, end, &mut tables, flush, |leaf| leaves.push(leaf))
            .map_err(SpaceError::PageTable)?;
        Ok(self.detach(id, &leaves))
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
        let mut result = self.split_boundaries(space.id, &mut st, start, end, &mut flush);
        if result.is_ok() {
            let mut tables = Tables::new(self.frames);
            result = st
                .pt
                .protect_range(
                    start,
                    end,
                    user_leaf_flags(writable),
                    &mut tables,
                    &mut flush,
                )
                .map_err(SpaceError::PageTable);
        }
        if result.is_ok() {
            st.vmas.set_writable(start, end, writable);
            st.generation += 1;
        }
        drop(st);
        self.shootdown(space, flush);
        result
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
            let mut tables = Tables::new(self.frames);
            st.pt
                .unmap_range(0, LOWER_HALF_END, &mut tables, &mut flush, |l| {
                    leaves.push(l)
                })
                .map_err(SpaceError::PageTable)?;
            st.dead = true;
            if self.kernel_root.is_some() {
                for i in 256..512u64 {
                    self.mem
                        .word(space.root + i * 8)
                        .store(0, Ordering::Release);
                }
            }
            let refs = self.detach(space.id, &leaves);
            let vmas = st.vmas.clear();
            st.generation += 1;
            drop(st);
            self.spaces.lock().remove(&space.id);
            flush.tables.push(space.root);
            flush.full = true;
            self.shootdown(space, flush);
            self.put_refs(&refs);
            drop(vmas);
            return Ok(());
        }
    }

    /// Split every huge leaf that straddles `start` or `end`, keeping the reverse map
    /// exact.
    fn split_boundaries(
        &self,
        id: SpaceId,
        st: &mut SpaceState<'m, M>,
        start: u64,
        end: u64,
        flush: &mut Flush,
    ) -> Result<(), SpaceError> {
        for boundary in [start, end] {
            while let Some(t) = st.pt.query(boundary) {
                if t.size.is_aligned_va(VirtAddr::new_truncate(boundary)) {
                    break;
                }
                let va = boundary & !(t.size.bytes() - 1);
                self.split_leaf(id, st, va, t, flush)?;
            }
        }
        Ok(())
    }

    /// Split the huge leaf `t` at `va` into 512 smaller leaves and record them.
    pub(crate) fn split_leaf(
        &self,
        id: SpaceId,
        st: &mut SpaceState<'m, M>,
        va: u64,
        t: Translation,
        flush: &mut Flush,
    ) -> Result<(), SpaceError> {
        let Some(child) = smaller(t.size) else {
            return Ok(());
        };
        let mut tables = Tables::new(self.frames);
        st.pt
            .split(va, t.size, &mut tables, flush)
            .map_err(|_| SpaceError::OutOfMemory)?;
        let pfn = Pfn::containing(t.leaf_base_pa);
        let Some(head) = self.head_of(pfn) else {
            return Ok(());
        };
        let Some(meta) = self.meta(head) else {
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
            meta.mapcount.fetch_add(511, Ordering::AcqRel);
            meta.refcount.fetch_add(511, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Take removed leaves off the reverse map (their references stay until the
    /// shootdown; see [`put_refs`](Self::put_refs)). Returns the heads to drop.
    pub(crate) fn detach(&self, id: SpaceId, leaves: &[UnmappedLeaf]) -> Vec<Pfn> {
        let mut heads = Vec::with_capacity(leaves.len());
        let mut rmap = self.rmap.lock();
        for leaf in leaves {
            let Some(head) = self.head_of(Pfn::containing(leaf.pa)) else {
                continue;
            };
            if rmap.remove(head, id, leaf.va.as_u64()).is_some() {
                if let Some(meta) = self.meta(head) {
                    meta.mapcount.fetch_sub(1, Ordering::AcqRel);
                }
                heads.push(head);
            }
        }
        heads
    }

    /// Drop one reference on each of `heads`; free the blocks that lose their last one.
    pub(crate) fn put_refs(&self, heads: &[Pfn]) {
        let mut dead = Vec::new();
        {
            let _rmap = self.rmap.lock();
            for &head in heads {
                if let Some(meta) = self.meta(head) {
                    if meta.refcount.fetch_sub(1, Ordering::AcqRel) == 1 {
                        meta.owner.store(0, Ordering::Release);
                        dead.push((head, meta.order()));
                    }
                }
            }
        }
        for (head, order) in dead {
            let freed = self.frames.free(head, order);
            debug_assert!(freed.is_ok(), "freeing {head:?}: {freed:?}");
        }
    }

    /// Shoot down what `flush` collected on the CPUs of `space`, then free the page-table
    /// frames it unlinked.
    pub(crate) fn shootdown(&self, space: &AddressSpace<'m, M>, flush: Flush) {
        if flush.is_empty() {
            return;
        }
        self.tlb.shootdown(&space.cpus, &flush.ranges, flush.full);
        for table in flush.tables {
            let freed = self.frames.free(Pfn::containing(table), 0);
            debug_assert!(freed.is_ok(), "freeing table {table:?}: {freed:?}");
        }
    }

    /// Record a new mapping of the managed block `head` (under the reverse-map lock the
    /// caller holds): one more reference and map count.
    pub(crate) fn add_mapping(rmap: &mut Rmap, meta: &FrameMeta, head: Pfn, entry: RmapEntry) {
        if rmap.insert(head, entry) {
            meta.mapcount.fetch_add(1, Ordering::AcqRel);
            meta.refcount.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Pin the block containing `pfn` (as a device doing DMA would): it is neither moved
    /// nor freed until [`unpin`](Self::unpin). Returns the block's head.
    pub fn pin(&self, pfn: Pfn) -> Result<Pfn, PinError> {
        let table = self.frames.frame_table();
        table.get(pfn).ok_or(PinError::OutOfRange)?;
        let head = self.head_of(pfn).ok_or(PinError::NotInUse)?;
        let meta = self.meta(head).ok_or(PinError::NotInUse)?;
        let _rmap = self.rmap.lock();
        let owner = meta.owner.load(Ordering::Acquire);
        if owner & OWNER_MANAGED == 0 {
            return Err(PinError::NotInUse);
        }
        if owner & OWNER_MIGRATING != 0 {
            return Err(PinError::Migrating);
        }
        meta.pincount.fetch_add(1, Ordering::AcqRel);
        meta.refcount.fetch_add(1, Ordering::AcqRel);
        Ok(head)
    }

    /// Drop one pin of the block containing `pfn`; frees it if that was its last use.
    pub fn unpin(&self, pfn: Pfn) -> Result<(), PinError> {
        let table = self.frames.frame_table();
        table.get(pfn).ok_or(PinError::OutOfRange)?;
        let head = self.head_of(pfn).ok_or(PinError::NotInUse)?;
        let meta = self.meta(head).ok_or(PinError::NotInUse)?;
        {
            let _rmap = self.rmap.lock();
            if meta.owner.load(Ordering::Acquire) & OWNER_MANAGED == 0 {
                return Err(PinError::NotInUse);
            }
            if meta.pincount.load(Ordering::Acquire) == 0 {
                return Err(PinError::NotPinned);
            }
            meta.pincount.fetch_sub(1, Ordering::AcqRel);
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
        meta.owner.store(OWNER_MANAGED, Ordering::Release);
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
        let from = va.saturating_sub(PageSize::Size1G.bytes() - 1);
        st.migrating
            .range(from..=va)
            .find(|(&start, &(size, _))| va < start + size.bytes())
            .map(|(&start, &(_, m))| (start, m.entry()))
    }
}
