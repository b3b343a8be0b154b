//! Replacing a huge leaf by a table of 512 smaller leaves (*split*) and a table of 512
//! leaves by one huge leaf (*collapse*), each in two steps around a TLB shootdown.
//!
//! A CPU must never hold TLB entries of two sizes for one address (the processor may
//! then use either, or raise a machine check: AMD erratum 383), and an accessed or dirty
//! bit the MMU sets while the entry is replaced must not be lost. So neither replacement
//! writes the new entry over the live old one:
//!
//! 1. `begin_*` changes every entry being replaced to a non-present value with a
//!    compare-exchange (retried when the MMU set a bit meanwhile, so the value it
//!    replaces is final: the MMU never writes a non-present entry), reports the stale
//!    translations to the [`FlushSink`], and returns a `#[must_use]` token holding the
//!    harvested accessed/dirty bits and the replacement. The replaced slot holds a
//!    *replacement in progress* software entry (see [`SoftwareEntry`]) meanwhile; a CPU
//!    touching the range faults.
//! 2. The caller shoots the reported translations down on every CPU that may cache them.
//! 3. `finish_*` installs the replacement, with the harvested bits: a split copies the
//!    huge leaf's accessed/dirty bits to each of the 512 leaves; a collapse gives the new
//!    leaf the OR of its 512 children's bits and hands the old table to
//!    [`FlushSink::defer_free_table`].
//!
//! Until step 3 no CPU can load the new entry, and after step 2 none holds the old one.
//! A refusal at `begin_*` changes nothing (every check comes before the first change,
//! and nothing after it can fail); `finish_*` refuses (changing nothing, giving
//! the token back in [`Unfinished`]) only a token of another page table or a slot
//! someone changed meanwhile through [`compare_exchange_leaf`](PageTable::compare_exchange_leaf).

use super::swentry::replacing;
use super::{
    index, is_canonical, slot_of, vaddr, CollapseError, Entry, PageTable, SoftwareEntry,
    SplitError, TableAlloc, Unfinished, UnmapError, ACCESSED_DIRTY, ENTRIES,
};
use crate::backend::flush::FlushSink;
use crate::backend::phys::PhysMem;
use crate::base::addr::PageSize;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::structures::paging::PageTableFlags;
use x86_64::{PhysAddr, VirtAddr};

#[cfg(test)]
mod tests;

/// A split begun by [`PageTable::begin_split`]: the huge leaf's slot is non-present, its
/// flush was reported, and the table of smaller leaves waits for
/// [`PageTable::finish_split`], which the caller calls once that flush has completed on
/// every CPU. (The same two steps replace a table by a huge leaf: [`CollapseToken`].)
/// Neither step lets a CPU hold TLB entries of two sizes for one address (AMD erratum
/// 383) nor loses an accessed/dirty bit the MMU sets meanwhile: `begin_*` harvests them
/// with compare-exchanges while making every replaced entry non-present.
#[must_use = "the slot stays non-present until finish_split, after the shootdown"]
#[derive(Debug, PartialEq, Eq)]
pub struct SplitToken {
    root: PhysAddr,
    va: u64,
    size: PageSize,
    marker: Entry,
    table: PhysAddr,
    flags: PageTableFlags,
}

impl SplitToken {
    /// The first address of the leaf being split.
    pub fn va(&self) -> VirtAddr {
        vaddr(self.va)
    }

    /// The size of the leaf being split.
    pub fn size(&self) -> PageSize {
        self.size
    }

    /// The leaf flags the huge leaf had when it became non-present, accessed/dirty
    /// included: every smaller leaf gets them.
    pub fn flags(&self) -> PageTableFlags {
        self.flags
    }
}

/// A collapse begun by [`PageTable::begin_collapse`]: the 512 leaves and the table slot
/// above them are non-present, their flushes were reported, and the huge leaf waits for
/// [`PageTable::finish_collapse`].
#[must_use = "the range stays non-present until finish_collapse, after the shootdown"]
#[derive(Debug, PartialEq, Eq)]
pub struct CollapseToken {
    root: PhysAddr,
    va: u64,
    size: PageSize,
    marker: Entry,
    table: PhysAddr,
    leaf: Entry,
}

impl CollapseToken {
    /// The first address of the new leaf.
    pub fn va(&self) -> VirtAddr {
        vaddr(self.va)
    }

    /// The size of the new leaf.
    pub fn size(&self) -> PageSize {
        self.size
    }

    /// The first byte of the frame the new leaf maps.
    pub fn frame(&self) -> PhysAddr {
        self.leaf.leaf_addr(self.size)
    }

    /// The new leaf's flags: the children's, with the OR of their accessed/dirty bits.
    pub fn flags(&self) -> PageTableFlags {
        self.leaf.leaf_flags(self.size)
    }
}

/// Change `slot` to `f(value)` by compare-exchange, retrying when the MMU set an
/// accessed/dirty bit meanwhile (this page table being the only software writer, that is
/// the only change possible). Returns the value replaced: final, since the MMU does not
/// write a non-present entry.
fn harvest(slot: &AtomicU64, f: impl Fn(Entry) -> Entry) -> Entry {
    let mut current = slot.load(Ordering::Acquire);
    loop {
        let old = Entry::from_raw(current);
        match slot.compare_exchange(current, f(old).raw(), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return old,
            Err(seen) => current = seen,
        }
    }
}

impl<M: PhysMem> PageTable<'_, M> {
    /// Begin splitting the huge leaf of `size` at `va` into 512 leaves of the next
    /// smaller size with the same translation and flags (step 1 of the module doc): take
    /// a table from `alloc`, make the leaf's slot non-present (harvesting its accessed/
    /// dirty bits), fill the table, report the leaf's flush to `sink`.
    pub fn begin_split<A, S>(
        &mut self,
        va: u64,
        size: PageSize,
        alloc: &mut A,
        sink: &mut S,
    ) -> Result<SplitToken, SplitError>
    where
        A: TableAlloc + ?Sized,
        S: FlushSink + ?Sized,
    {
        if !is_canonical(va) {
            return Err(SplitError::NonCanonical);
        }
        let Some(child) = size.smaller() else {
            return Err(SplitError::NotHuge);
        };
        if !size.is_aligned_va(vaddr(va)) {
            return Err(SplitError::Unaligned);
        }
        let d = self.find_leaf(va, size).map_err(|e| match e {
            UnmapError::SizeMismatch => SplitError::SizeMismatch,
            UnmapError::Busy { va, size } => SplitError::Busy { va, size },
            _ => SplitError::NotMapped,
        })?;
        let table = self
            .alloc_tables(1, alloc)
            .ok_or(SplitError::OutOfTables)?
            .frames[0];
        let old = harvest(
            self.slot(d.path[d.level as usize], index(va, d.level)),
            replacing,
        );
        let base = old.leaf_addr(size).as_u64();
        let flags = old.leaf_flags(size);
        for i in 0..ENTRIES {
            let pa = PhysAddr::new_truncate(base + i as u64 * child.bytes());
            self.slot(table, i)
                .store(Entry::leaf(pa, child, flags).raw(), Ordering::Release);
        }
        sink.flush_page(vaddr(va), size);
        Ok(SplitToken {
            root: self.root,
            va,
            size,
            marker: replacing(old),
            table,
            flags,
        })
    }

    /// Finish the split of `token` (step 3 of the module doc): link its table in place of
    /// the non-present slot. Call it only after the flush [`begin_split`](Self::begin_split)
    /// reported has completed on every CPU.
    pub fn finish_split(&mut self, token: SplitToken) -> Result<(), Unfinished<SplitToken>> {
        let user = token.flags.contains(PageTableFlags::USER_ACCESSIBLE);
        let new = Entry::table(token.table, user);
        match self.install(token.root, token.va, token.size.level(), token.marker, new) {
            Ok(()) => Ok(()),
            Err(found) => Err(Unfinished { token, found }),
        }
    }

    /// Begin collapsing the table under the slot for `va` at the level of `size` (2 MiB:
    /// 512 PTEs; 1 GiB: 512 2 MiB leaves) into one leaf of `size` (step 1 of the module
    /// doc). The 512 entries must be leaves mapping contiguous frames, the first aligned
    /// to `size`, with the same flags (accessed/dirty aside). Each of them, then the
    /// table's slot, is made non-present by compare-exchange, and the flush of each leaf
    /// is reported to `sink`.
    pub fn begin_collapse<S: FlushSink + ?Sized>(
        &mut self,
        va: u64,
        size: PageSize,
        sink: &mut S,
    ) -> Result<CollapseToken, CollapseError> {
        if !is_canonical(va) {
            return Err(CollapseError::NonCanonical);
        }
        let Some(child) = size.smaller() else {
            return Err(CollapseError::NotHuge);
        };
        if !size.is_aligned_va(vaddr(va)) {
            return Err(CollapseError::Unaligned);
        }
        let level = size.level();
        let d = self.descend(va, level);
        if !d.entry.is_present() && !d.entry.is_unused() {
            let (va, size) = slot_of(va, d.level);
            return Err(CollapseError::Busy { va, size });
        }
        if d.entry.is_unused() {
            return Err(CollapseError::NotMapped);
        }
        if d.level != level || d.entry.leaf_size(level).is_some() {
            return Err(CollapseError::AlreadyLeaf);
        }
        let table = d.entry.table_addr();
        let (base, flags) = self.check_collapse(table, va, size, child)?;
        // Nothing changes before this point; from here on nothing can fail.
        let mut accessed_dirty = PageTableFlags::empty();
        for i in 0..ENTRIES {
            let old = harvest(self.slot(table, i), clear_present);
            accessed_dirty |= old.leaf_flags(child) & ACCESSED_DIRTY;
        }
        let old_parent = harvest(
            self.slot(d.path[level as usize], index(va, level)),
            replacing,
        );
        for i in 0..ENTRIES as u64 {
            sink.flush_page(vaddr(va + i * child.bytes()), child);
        }
        Ok(CollapseToken {
            root: self.root,
            va,
            size,
            marker: replacing(old_parent),
            table,
            leaf: Entry::leaf(base, size, flags | accessed_dirty),
        })
    }

    /// Finish the collapse of `token` (step 3 of the module doc): install the huge leaf
    /// and hand the old table to `sink`. Call it only after the flushes
    /// [`begin_collapse`](Self::begin_collapse) reported have completed on every CPU.
    pub fn finish_collapse<S: FlushSink + ?Sized>(
        &mut self,
        token: CollapseToken,
        sink: &mut S,
    ) -> Result<(), Unfinished<CollapseToken>> {
        match self.install(
            token.root,
            token.va,
            token.size.level(),
            token.marker,
            token.leaf,
        ) {
            Ok(()) => {
                sink.defer_free_table(token.table);
                Ok(())
            }
            Err(found) => Err(Unfinished { token, found }),
        }
    }

    /// The first frame and the flags (accessed/dirty cleared) of the 512 leaves of
    /// `child` size in `table` (mapping from `va`), if they can become one leaf of `size`.
    fn check_collapse(
        &self,
        table: PhysAddr,
        va: u64,
        size: PageSize,
        child: PageSize,
    ) -> Result<(PhysAddr, PageTableFlags), CollapseError> {
        let child_level = child.level();
        let mut first = None;
        for i in 0..ENTRIES {
            let child_va = vaddr(va + i as u64 * child.bytes());
            let entry = self.load(table, i);
            if entry.is_unused() {
                return Err(CollapseError::Hole { va: child_va });
            }
            if SoftwareEntry::decode(entry, child_level).is_some() {
                return Err(CollapseError::Busy {
                    va: child_va,
                    size: child,
                });
            }
            if entry.leaf_size(child_level).is_none() {
                return Err(CollapseError::NotLeaf { va: child_va });
            }
            let pa = entry.leaf_addr(child);
            let flags = entry.leaf_flags(child) - ACCESSED_DIRTY;
            match first {
                None => {
                    if !size.is_aligned_pa(pa) {
                        return Err(CollapseError::Misaligned);
                    }
                    first = Some((pa, flags));
                }
                Some((base, base_flags)) => {
                    if pa.as_u64() != base.as_u64() + i as u64 * child.bytes() {
                        return Err(CollapseError::NotContiguous { va: child_va });
                    }
                    if flags != base_flags {
                        return Err(CollapseError::FlagsDiffer { va: child_va });
                    }
                }
            }
        }
        first.ok_or(CollapseError::NotMapped)
    }

    /// Replace `marker` in the slot at `level` for `va` by `new`, if this is the page
    /// table `root` and the slot still holds `marker`; otherwise return what is there.
    fn install(
        &mut self,
        root: PhysAddr,
        va: u64,
        level: u8,
        marker: Entry,
        new: Entry,
    ) -> Result<(), Option<Entry>> {
        if root != self.root {
            return Err(None);
        }
        let d = self.descend(va, level);
        if d.level != level {
            return Err(Some(d.entry));
        }
        self.slot(d.path[level as usize], index(va, level))
            .compare_exchange(marker.raw(), new.raw(), Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(|seen| Some(Entry::from_raw(seen)))
    }
}

/// `entry` with the present bit cleared.
const fn clear_present(entry: Entry) -> Entry {
    Entry::from_raw(entry.raw() & !PageTableFlags::PRESENT.bits())
}
