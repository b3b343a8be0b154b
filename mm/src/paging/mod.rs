//! Our own 4-level x86_64 page tables.
//!
//! A [`PageTable`] is identified by the physical address of its PML4 (level 4). The
//! tables below it hold the real x86_64 entry layout ([`Entry`]) and are reached through
//! [`PhysMem::word`]: every entry is read and written as an `AtomicU64`, never through a
//! reference to a live table, because the MMU sets accessed/dirty bits concurrently.
//! Software changes are serialised by `&mut PageTable` (one writer per address space);
//! the only concurrent writer is the MMU, so an entry is cleared with one atomic swap
//! (the old value, dirty bit included, is returned), and an entry whose new value depends
//! on the old one (protect, split, collapse) is changed with a compare-exchange loop that
//! retries when the MMU set a bit in between.
//!
//! A slot holds nothing, a table pointer, a present leaf, or a *software entry* (a
//! non-present entry with bit 9 set, see [`SoftwareEntry`]); a [`Cursor`] shows all four
//! at every level. Operations never skip a software entry silently: `unmap`, `protect`,
//! `begin_split`, `begin_collapse` and the range operations refuse one in their way with
//! a typed `Busy` error carrying its address and size (the caller waits for its owner
//! and retries), and [`destroy`](PageTable::destroy) reports each one it removes.
//!
//! A huge leaf is never replaced by a table in one store, nor a table by a huge leaf:
//! [`begin_split`](PageTable::begin_split) / [`begin_collapse`](PageTable::begin_collapse)
//! make the slot non-present and report the flush, the caller shoots it down, and
//! `finish_*` installs the replacement (see [`SplitToken`]). Range operations therefore do
//! not split: they refuse a huge leaf that straddles an end of the range.
//!
//! Leaves are 4 KiB PTEs (level 1), 2 MiB PMDs (level 2) or 1 GiB PUDs (level 3); at
//! levels 2 and 3 `HUGE_PAGE` tells a leaf from a table pointer. Flags are passed as
//! size-independent *leaf flags* (see [`entry`]). Table entries get
//! `PRESENT | WRITABLE` (plus `USER_ACCESSIBLE` when a user leaf lies below), so the
//! leaves alone decide permissions.
//!
//! Tables come from a [`TableAlloc`]. Every change of a present entry is reported to the
//! [`FlushSink`] with `flush_page`; a table that becomes empty is unlinked at once and
//! handed to [`FlushSink::defer_free_table`], which releases it only after the flush (a
//! CPU's paging-structure cache may still walk it). Non-root tables are therefore never
//! empty. Operations that need new tables allocate all of them before changing anything,
//! so an allocation failure leaves the tree untouched.
//!
//! Addresses passed in are raw `u64`s so that non-canonical ones can be refused with a
//! typed error. Ranges are `[start, end)` with an exclusive `end`; `end == 0` stands for
//! 2^64, the top of the address space, so the last page can be covered too.

mod cursor;
pub mod entry;
mod error;
mod range;
mod raw;
mod replace;
mod swentry;
mod walk;

#[cfg(any(test, feature = "std"))]
pub mod testing;
#[cfg(test)]
mod tests;

pub use cursor::{Cursor, Slot, SlotKind};
pub use entry::{valid_leaf_flags, Entry, ADDR_MASK, LEAF_FLAGS_MASK, LEAF_PAT};
pub use error::{
    CollapseError, MapError, ProtectError, RangeError, SplitError, Unfinished, UnmapError,
};
pub use range::Removed;
pub use raw::{RawError, RawSlots};
pub use replace::{CollapseToken, SplitToken};
pub use swentry::{MigrationEntry, SoftwareEntry};
pub use walk::Walk;

use crate::backend::flush::FlushSink;
use crate::backend::phys::PhysMem;
use crate::base::addr::PageSize;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::structures::paging::PageTableFlags;
use x86_64::{PhysAddr, VirtAddr};

/// Entries per table.
pub const ENTRIES: usize = 512;
/// First address of the non-canonical hole (the end of the lower half).
pub const LOWER_HALF_END: u64 = 0x0000_8000_0000_0000;
/// First address of the upper (kernel) half.
pub const UPPER_HALF_START: u64 = 0xFFFF_8000_0000_0000;

/// Accessed and dirty: the bits the MMU sets, kept across protect and split.
const ACCESSED_DIRTY: PageTableFlags = PageTableFlags::ACCESSED.union(PageTableFlags::DIRTY);

/// Where new page-table frames come from.
pub trait TableAlloc {
    /// A frame for a new table, or `None` when memory is exhausted. The frame must be
    /// 4 KiB aligned and reachable through the [`PhysMem`] of the page table; the paging
    /// code zeroes it.
    fn alloc_table(&mut self) -> Option<PhysAddr>;

    /// Take back a frame from [`alloc_table`](Self::alloc_table) that was never linked
    /// into a tree (an operation failed after part of its allocations). No CPU can have
    /// seen it, so it may be reused at once. Tables that were linked are released through
    /// [`FlushSink::defer_free_table`] instead.
    fn free_table(&mut self, table: PhysAddr);
}

/// What a virtual address translates to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Translation {
    /// The physical address of the queried byte (leaf base plus offset).
    pub pa: PhysAddr,
    /// The first byte of the frame the leaf maps.
    pub leaf_base_pa: PhysAddr,
    /// The size of the leaf.
    pub size: PageSize,
    /// The leaf flags (see [`entry`]), including `ACCESSED`/`DIRTY` as the MMU left them.
    pub flags: PageTableFlags,
}

/// A leaf that was removed from the tree. Its frame may be released only after the flush
/// reported for it has completed, and its dirty bit may need writing back.
#[must_use = "the frame of an unmapped leaf must be released after the flush"]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnmappedLeaf {
    /// The first virtual address the leaf mapped.
    pub va: VirtAddr,
    /// The first byte of the frame it mapped.
    pub pa: PhysAddr,
    /// Its size.
    pub size: PageSize,
    /// Its last leaf flags, including `ACCESSED`/`DIRTY`.
    pub flags: PageTableFlags,
}

impl UnmappedLeaf {
    /// Whether the frame was written through this mapping.
    pub fn is_dirty(&self) -> bool {
        self.flags.contains(PageTableFlags::DIRTY)
    }
}

/// A 4-level page table, identified by the physical address of its PML4.
///
/// Dropping it leaves the tree in place (it may be what CR3 points at);
/// [`destroy`](Self::destroy) releases the tables.
pub struct PageTable<'m, M: PhysMem> {
    mem: &'m M,
    root: PhysAddr,
}

/// Where a descent toward an address stopped.
struct Descent {
    /// Level of the table holding `entry`.
    level: u8,
    /// The entry the descent stopped at.
    entry: Entry,
    /// `path[l]` is the table at level `l` that was visited (levels `level..=4`).
    path: [PhysAddr; 5],
}

/// Up to four freshly allocated, zeroed table frames.
struct NewTables {
    frames: [PhysAddr; 4],
    len: usize,
}

/// Bytes mapped by one entry of a table at `level` (1..=4).
const fn entry_span(level: u8) -> u64 {
    1 << (12 + 9 * (level as u32 - 1))
}

/// Index of the entry for `va` in a table at `level`.
const fn index(va: u64, level: u8) -> usize {
    ((va >> (12 + 9 * (level as u32 - 1))) & (ENTRIES as u64 - 1)) as usize
}

/// Whether `va` is canonical (bits 48..64 copy bit 47).
const fn is_canonical(va: u64) -> bool {
    VirtAddr::new_truncate(va).as_u64() == va
}

/// The canonical form of `va` (sign-extends bit 47).
const fn vaddr(va: u64) -> VirtAddr {
    VirtAddr::new_truncate(va)
}

/// The first address and the size of the slot at `level` that covers `va` (a level-4
/// slot, which spans 512 GiB, is reported as 1 GiB: no page size is larger).
const fn slot_of(va: u64, level: u8) -> (VirtAddr, PageSize) {
    let size = match level {
        1 => PageSize::Size4K,
        2 => PageSize::Size2M,
        _ => PageSize::Size1G,
    };
    (vaddr(va & !(entry_span(level) - 1)), size)
}

/// The translation of the byte at `offset` into the leaf `entry` of `size`.
#[inline]
const fn translation(entry: Entry, size: PageSize, offset: u64) -> Translation {
    let base = entry.leaf_addr(size);
    Translation {
        pa: PhysAddr::new_truncate(base.as_u64() + offset),
        leaf_base_pa: base,
        size,
        flags: entry.leaf_flags(size),
    }
}

/// The removed leaf `old` of `size` at `va`.
const fn unmapped(va: u64, old: Entry, size: PageSize) -> UnmappedLeaf {
    UnmappedLeaf {
        va: vaddr(va),
        pa: old.leaf_addr(size),
        size,
        flags: old.leaf_flags(size),
    }
}

impl<'m, M: PhysMem> PageTable<'m, M> {
    /// A new, empty address space with a root from `alloc`; `None` if it has no frame.
    pub fn new<A: TableAlloc + ?Sized>(mem: &'m M, alloc: &mut A) -> Option<Self> {
        let root = alloc.alloc_table()?;
        mem.zero_frame(root);
        Some(PageTable { mem, root })
    }

    /// The page table whose PML4 is at `root`.
    ///
    /// # Safety
    /// `root` must be a PML4 frame reachable through `mem` whose tree follows this
    /// module's rules (built by it, or all zero), and no other `PageTable` for the same
    /// root may be used while this one exists: this value is the single software writer.
    pub unsafe fn from_root(mem: &'m M, root: PhysAddr) -> Self {
        PageTable { mem, root }
    }

    /// Physical address of the PML4 (what CR3 points at).
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// The word of entry `idx` of the table at `table`.
    #[inline]
    fn slot(&self, table: PhysAddr, idx: usize) -> &'m AtomicU64 {
        self.mem.word(table + (idx as u64) * 8)
    }

    #[inline]
    fn load(&self, table: PhysAddr, idx: usize) -> Entry {
        Entry::from_raw(self.slot(table, idx).load(Ordering::Acquire))
    }

    /// Whether every entry of the table at `table` is unused.
    fn is_empty_table(&self, table: PhysAddr) -> bool {
        (0..ENTRIES).all(|i| self.slot(table, i).load(Ordering::Acquire) == 0)
    }

    /// Walk from the root toward `va`, stopping at level `stop` or at the first entry
    /// that is not a table pointer (unused, not present, or a leaf).
    fn descend(&self, va: u64, stop: u8) -> Descent {
        let mut path = [self.root; 5];
        let mut table = self.root;
        let mut level = 4;
        loop {
            path[level as usize] = table;
            let entry = self.load(table, index(va, level));
            if level == stop || !entry.is_present() || entry.leaf_size(level).is_some() {
                return Descent { level, entry, path };
            }
            table = entry.table_addr();
            level -= 1;
        }
    }

    /// Find the leaf of exactly `size` at `va` (canonical, aligned); errors name what is
    /// there instead.
    fn find_leaf(&self, va: u64, size: PageSize) -> Result<Descent, UnmapError> {
        let d = self.descend(va, size.level());
        match d.entry.leaf_size(d.level) {
            Some(found) if found == size => Ok(d),
            Some(_) => Err(UnmapError::SizeMismatch),
            None if d.level == size.level() && d.entry.is_present() => {
                Err(UnmapError::SizeMismatch)
            }
            None if !d.entry.is_unused() => {
                let (va, size) = slot_of(va, d.level);
                Err(UnmapError::Busy { va, size })
            }
            None => Err(UnmapError::NotMapped),
        }
    }

    /// Allocate and zero `n` (at most 4) tables, all or none.
    fn alloc_tables<A: TableAlloc + ?Sized>(&self, n: usize, alloc: &mut A) -> Option<NewTables> {
        let mut tables = NewTables {
            frames: [PhysAddr::zero(); 4],
            len: 0,
        };
        while tables.len < n {
            match alloc.alloc_table() {
                Some(frame) => {
                    debug_assert!(frame.is_aligned(crate::base::addr::PAGE_SIZE));
                    self.mem.zero_frame(frame);
                    tables.frames[tables.len] = frame;
                    tables.len += 1;
                }
                None => {
                    for &frame in &tables.frames[..tables.len] {
                        alloc.free_table(frame);
                    }
                    return None;
                }
            }
        }
        Some(tables)
    }

    /// What `va` translates to, or `None` if it is not mapped or not canonical.
    pub fn query(&self, va: u64) -> Option<Translation> {
        if !is_canonical(va) {
            return None;
        }
        let d = self.descend(va, 1);
        let size = d.entry.leaf_size(d.level)?;
        Some(translation(d.entry, size, va & (size.bytes() - 1)))
    }

    /// Map the leaf of `size` at `va` to the frame at `pa` with leaf `flags`
    /// (`PRESENT` is added). Allocates the missing tables up front.
    pub fn map<A, S>(
        &mut self,
        va: u64,
        pa: PhysAddr,
        size: PageSize,
        flags: PageTableFlags,
        alloc: &mut A,
        sink: &mut S,
    ) -> Result<(), MapError>
    where
        A: TableAlloc + ?Sized,
        S: FlushSink + ?Sized,
    {
        if !is_canonical(va) {
            return Err(MapError::NonCanonical);
        }
        if !size.is_aligned_va(vaddr(va)) || !size.is_aligned_pa(pa) {
            return Err(MapError::Unaligned);
        }
        if !valid_leaf_flags(flags) {
            return Err(MapError::InvalidFlags);
        }
        let target = size.level();
        let d = self.descend(va, target);
        if !d.entry.is_unused() {
            return Err(MapError::AlreadyMapped);
        }
        let missing = (d.level - target) as usize;
        let tables = self
            .alloc_tables(missing, alloc)
            .ok_or(MapError::OutOfTables)?;
        let user = flags.contains(PageTableFlags::USER_ACCESSIBLE);
        // Build the new branch bottom-up in tables no CPU can see yet, then publish it
        // with one store into the unused slot.
        let mut entry = Entry::leaf(pa, size, flags);
        for (k, &table) in tables.frames[..tables.len].iter().enumerate() {
            let level = target + k as u8;
            self.slot(table, index(va, level))
                .store(entry.raw(), Ordering::Release);
            entry = Entry::table(table, user);
        }
        self.slot(d.path[d.level as usize], index(va, d.level))
            .store(entry.raw(), Ordering::Release);
        if user {
            let mut upgraded = false;
            for level in d.level + 1..=4 {
                let user_bit = PageTableFlags::USER_ACCESSIBLE.bits();
                let old = self
                    .slot(d.path[level as usize], index(va, level))
                    .fetch_or(user_bit, Ordering::AcqRel);
                upgraded |= old & user_bit == 0;
            }
            if upgraded {
                // Paging-structure caches may hold the supervisor-only table entries.
                sink.flush_page(vaddr(va), size);
            }
        }
        Ok(())
    }

    /// Remove the leaf of `size` at `va`, returning what it mapped (with its dirty and
    /// accessed bits). Tables left empty are unlinked and handed to the sink.
    pub fn unmap<S: FlushSink + ?Sized>(
        &mut self,
        va: u64,
        size: PageSize,
        sink: &mut S,
    ) -> Result<UnmappedLeaf, UnmapError> {
        if !is_canonical(va) {
            return Err(UnmapError::NonCanonical);
        }
        if !size.is_aligned_va(vaddr(va)) {
            return Err(UnmapError::Unaligned);
        }
        let d = self.find_leaf(va, size)?;
        let table = d.path[d.level as usize];
        let old = Entry::from_raw(
            self.slot(table, index(va, d.level))
                .swap(0, Ordering::AcqRel),
        );
        sink.flush_page(vaddr(va), size);
        self.free_empty_tables(va, d.level, &d.path, sink);
        Ok(unmapped(va, old, size))
    }

    /// Starting with the table at `level` on `path` (toward `va`), unlink every table
    /// that is empty, up to but excluding the root.
    fn free_empty_tables<S: FlushSink + ?Sized>(
        &self,
        va: u64,
        level: u8,
        path: &[PhysAddr; 5],
        sink: &mut S,
    ) {
        let mut level = level;
        while level < 4 && self.is_empty_table(path[level as usize]) {
            self.slot(path[level as usize + 1], index(va, level + 1))
                .store(0, Ordering::Release);
            sink.defer_free_table(path[level as usize]);
            level += 1;
        }
    }

    /// Replace the permissions of the leaf of `size` at `va` by leaf `flags`
    /// (`PRESENT` is added; accessed and dirty are kept). Returns the previous leaf flags.
    pub fn protect<S: FlushSink + ?Sized>(
        &mut self,
        va: u64,
        size: PageSize,
        flags: PageTableFlags,
        sink: &mut S,
    ) -> Result<PageTableFlags, ProtectError> {
        if !is_canonical(va) {
            return Err(ProtectError::NonCanonical);
        }
        if !size.is_aligned_va(vaddr(va)) {
            return Err(ProtectError::Unaligned);
        }
        if !valid_leaf_flags(flags) {
            return Err(ProtectError::InvalidFlags);
        }
        let d = self.find_leaf(va, size).map_err(|e| match e {
            UnmapError::SizeMismatch => ProtectError::SizeMismatch,
            UnmapError::Busy { va, size } => ProtectError::Busy { va, size },
            _ => ProtectError::NotMapped,
        })?;
        let slot = self.slot(d.path[d.level as usize], index(va, d.level));
        let old = self.update_leaf(slot, size, flags, va, sink);
        Ok(old.leaf_flags(size))
    }

    /// Give the leaf of `size` in `slot` (at `va`) the leaf `flags`, keeping its
    /// accessed/dirty bits; reports a flush if the entry changed. Returns the old entry.
    fn update_leaf<S: FlushSink + ?Sized>(
        &self,
        slot: &AtomicU64,
        size: PageSize,
        flags: PageTableFlags,
        va: u64,
        sink: &mut S,
    ) -> Entry {
        let mut current = slot.load(Ordering::Acquire);
        loop {
            let old = Entry::from_raw(current);
            let kept = old.leaf_flags(size) & ACCESSED_DIRTY;
            let new = Entry::leaf(old.leaf_addr(size), size, flags | kept);
            if new == old {
                return old;
            }
            match slot.compare_exchange(current, new.raw(), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    sink.flush_page(vaddr(va), size);
                    return old;
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// Call `f` with every table of the tree (its address and level), the root first,
    /// each table before the tables below it.
    pub fn visit_tables(&self, mut f: impl FnMut(PhysAddr, u8)) {
        self.visit_below(self.root, 4, &mut f);
    }

    fn visit_below(&self, table: PhysAddr, level: u8, f: &mut impl FnMut(PhysAddr, u8)) {
        f(table, level);
        if level == 1 {
            return;
        }
        for i in 0..ENTRIES {
            let entry = self.load(table, i);
            if entry.is_present() && entry.leaf_size(level).is_none() {
                self.visit_below(entry.table_addr(), level - 1, f);
            }
        }
    }
}
