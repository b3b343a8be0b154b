//! Per-frame metadata, found by arithmetic: one 32-byte [`FrameMeta`] record per 4 KiB
//! frame, stored in a [`FrameTable`] indexed by PFN.
//!
//! Every field is an atomic, so a `&FrameMeta` can be shared between CPUs. The buddy
//! allocator owns `state`, `order`, the free-list links and the allocator flags (it
//! changes them only under its lock); the layers above own the counters and the `owner`
//! word.
//!
//! Blocks (free or allocated) are naturally aligned runs of `2^order` frames. The first
//! frame, the *head*, holds the block's state and order; every other frame of the block is
//! a [`FrameState::Tail`]. A tail does not store its head: [`FrameTable::head_of`] finds it
//! by looking at the aligned frames below it, at most `MAX_ORDER + 1` loads. This keeps
//! allocating and freeing a block O(MAX_ORDER) however large the block is, at the price of
//! an O(order) head lookup.

use crate::base::addr::{Pfn, MAX_ORDER, PAGEBLOCK_ORDER};
use alloc::vec::Vec;
use core::mem::size_of;
use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

/// The most frames a table may describe: free-list links are 32-bit PFNs and
/// `u32::MAX` means "no frame".
pub const MAX_FRAMES: usize = u32::MAX as usize;

/// The free-list link value that means "no frame".
pub(crate) const NO_LINK: u32 = u32::MAX;

/// What a frame currently is, as far as the frame allocator is concerned.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameState {
    /// Not managed by the allocator (firmware, kernel image, holes, the table itself).
    Reserved = 0,
    /// Head of a free block of `order`.
    Free = 1,
    /// Head of an allocated block of `order` (a compound page when `order > 0`).
    Allocated = 2,
    /// Any frame of a block other than its head; [`FrameTable::head_of`] finds the head.
    Tail = 3,
}

impl FrameState {
    fn from_u8(v: u8) -> FrameState {
        match v {
            1 => FrameState::Free,
            2 => FrameState::Allocated,
            3 => FrameState::Tail,
            _ => {
                debug_assert_eq!(v, 0, "corrupt frame state {v}");
                FrameState::Reserved
            }
        }
    }

    /// Whether this is the head of a block (free or allocated).
    pub const fn is_head(self) -> bool {
        matches!(self, FrameState::Free | FrameState::Allocated)
    }
}

bitflags::bitflags! {
    /// Per-frame flags. The allocator owns `MOVABLE`, `RESERVED`, `HUGE_HEAD`, `FREED`
    /// and `PAGEBLOCK_UNMOVABLE`; the others belong to the layers above (the allocator
    /// reads `PAGEBLOCK_CLAIMED` and keeps it across frees).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct FrameFlags: u16 {
        /// The allocated block was asked for as [`MigrateType::Movable`](crate::frame::buddy::MigrateType):
        /// its contents may be migrated or exchanged.
        const MOVABLE = 1 << 0;
        /// Must never be moved whatever its migrate type (long-term pin, kernel stack...).
        const PINNED = 1 << 1;
        /// Never handed to the allocator (mirrors [`FrameState::Reserved`]).
        const RESERVED = 1 << 2;
        /// Head of an allocated compound block (`order > 0`).
        const HUGE_HEAD = 1 << 3;
        /// Holds a page table.
        const PAGETABLE = 1 << 4;
        /// Was the head of a block that has since been freed and not handed out as a head
        /// again: freeing it again is a double free.
        const FREED = 1 << 5;
        /// Meaningful on the first frame of a pageblock only: the pageblock groups
        /// unmovable allocations (cleared: movable ones).
        const PAGEBLOCK_UNMOVABLE = 1 << 6;
        /// Meaningful on the first frame of a pageblock only: some frame of the pageblock
        /// lies in a window claimed by contiguity generation, which will fill it with a
        /// VMA's pages; unmovable allocations keep out of it while they can. Set and
        /// cleared by the claimed windows' owner, read by the allocator.
        const PAGEBLOCK_CLAIMED = 1 << 7;
        /// Allocated from the buddy allocator but sitting, unused, in a per-CPU frame
        /// cache of the kernel: freeing it again is a double free.
        const CACHED = 1 << 8;
    }
}

/// The flags of a pageblock's first frame that describe the whole pageblock: they stay
/// when that frame is freed or allocated.
pub const PAGEBLOCK_FLAGS: FrameFlags =
    FrameFlags::PAGEBLOCK_UNMOVABLE.union(FrameFlags::PAGEBLOCK_CLAIMED);

/// The metadata of one 4 KiB frame.
#[repr(C)]
#[derive(Debug)]
pub struct FrameMeta {
    state: AtomicU8,
    order: AtomicU8,
    flags: AtomicU16,
    /// References to the frame (to the head, for a compound block); 1 after allocation.
    /// Changed only by [`super::refs`].
    pub(super) refcount: AtomicU32,
    /// Page-table entries mapping the frame. Changed only by [`super::refs`].
    pub(super) mapcount: AtomicU32,
    /// Short-term pins (DMA); a pinned frame is neither moved nor freed. Changed only by
    /// [`super::refs`].
    pub(super) pincount: AtomicU32,
    next: AtomicU32,
    prev: AtomicU32,
    /// Who owns the frame's mappings (bits of [`super::refs`]). Changed only there.
    pub(super) owner: AtomicU64,
}

const _: () = assert!(size_of::<FrameMeta>() == 32);

impl FrameMeta {
    /// A record of a reserved frame with zero counters.
    pub const fn new() -> FrameMeta {
        FrameMeta {
            state: AtomicU8::new(FrameState::Reserved as u8),
            order: AtomicU8::new(0),
            flags: AtomicU16::new(FrameFlags::RESERVED.bits()),
            refcount: AtomicU32::new(0),
            mapcount: AtomicU32::new(0),
            pincount: AtomicU32::new(0),
            next: AtomicU32::new(NO_LINK),
            prev: AtomicU32::new(NO_LINK),
            owner: AtomicU64::new(0),
        }
    }

    /// References to the block (see [`super::refs`]).
    #[inline]
    pub fn refcount(&self) -> u32 {
        self.refcount.load(Ordering::Acquire)
    }

    /// Page-table entries mapping the block.
    #[inline]
    pub fn mapcount(&self) -> u32 {
        self.mapcount.load(Ordering::Acquire)
    }

    /// Pins of the block.
    #[inline]
    pub fn pincount(&self) -> u32 {
        self.pincount.load(Ordering::Acquire)
    }

    /// The owner word (bits of [`super::refs`]).
    #[inline]
    pub fn owner(&self) -> u64 {
        self.owner.load(Ordering::Acquire)
    }

    /// The frame's state. Acquire: a reader that sees a head also sees its order.
    #[inline]
    pub fn state(&self) -> FrameState {
        FrameState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Order of the block this frame heads; meaningless on tails and reserved frames.
    #[inline]
    pub fn order(&self) -> u8 {
        self.order.load(Ordering::Relaxed)
    }

    /// The frame's flags.
    #[inline]
    pub fn flags(&self) -> FrameFlags {
        FrameFlags::from_bits_retain(self.flags.load(Ordering::Acquire))
    }

    /// Set `flags`, leaving the others as they are.
    pub fn insert_flags(&self, flags: FrameFlags) {
        self.flags.fetch_or(flags.bits(), Ordering::AcqRel);
    }

    /// Clear `flags`, leaving the others as they are.
    pub fn remove_flags(&self, flags: FrameFlags) {
        self.flags.fetch_and(!flags.bits(), Ordering::AcqRel);
    }

    /// Clear `remove`, then set `insert`, leaving the others as they are, in one atomic
    /// step (flags of one word have writers under different locks: a pageblock's marks
    /// change beside its first frame's allocation).
    pub fn replace_flags(&self, remove: FrameFlags, insert: FrameFlags) {
        let change = |f: u16| Some((f & !remove.bits()) | insert.bits());
        // The closure never declines: the update always happens.
        let _ = self
            .flags
            .try_update(Ordering::AcqRel, Ordering::Relaxed, change);
    }

    /// Make this frame a head (`Free` or `Allocated`) of `order`, or a tail / reserved
    /// frame (then `order` is stored but meaningless). The order is published before
    /// the state.
    pub(crate) fn set_state(&self, state: FrameState, order: u8) {
        self.order.store(order, Ordering::Relaxed);
        self.state.store(state as u8, Ordering::Release);
    }

    /// Next block on the free list (`NO_LINK`: none). Ordered by the allocator lock.
    pub(crate) fn next(&self) -> u32 {
        self.next.load(Ordering::Relaxed)
    }

    /// Previous block on the free list (`NO_LINK`: none). Ordered by the allocator lock.
    pub(crate) fn prev(&self) -> u32 {
        self.prev.load(Ordering::Relaxed)
    }

    pub(crate) fn set_next(&self, pfn: u32) {
        self.next.store(pfn, Ordering::Relaxed);
    }

    pub(crate) fn set_prev(&self, pfn: u32) {
        self.prev.store(pfn, Ordering::Relaxed);
    }
}

impl Default for FrameMeta {
    fn default() -> FrameMeta {
        FrameMeta::new()
    }
}

/// The metadata of PFNs `0..len()`, indexed by PFN.
#[derive(Clone, Copy, Debug)]
pub struct FrameTable<'a> {
    metas: &'a [FrameMeta],
}

impl<'a> FrameTable<'a> {
    /// A table over `metas` (record `i` describes PFN `i`), or `None` if it has more than
    /// [`MAX_FRAMES`] records. The records should be fresh ([`FrameMeta::new`]): the
    /// allocator takes frames over only through `add_free_range`.
    pub fn new(metas: &'a [FrameMeta]) -> Option<FrameTable<'a>> {
        (metas.len() <= MAX_FRAMES).then_some(FrameTable { metas })
    }

    /// Bytes of memory a table of `n_frames` records occupies (8-byte aligned).
    pub const fn bytes_needed(n_frames: usize) -> usize {
        n_frames * size_of::<FrameMeta>()
    }

    /// Build a table in raw memory, initialising every record to a reserved frame.
    ///
    /// # Safety
    /// `ptr` must be aligned for `FrameMeta` and valid for reads and writes of
    /// `FrameTable::bytes_needed(n)` bytes, which nothing else may access for the rest of
    /// the program other than through the returned table; `n <= MAX_FRAMES`.
    pub unsafe fn from_raw(ptr: *mut FrameMeta, n: usize) -> FrameTable<'static> {
        debug_assert!(n <= MAX_FRAMES);
        for i in 0..n {
            // SAFETY: `i < n`, so the record is inside the region the caller gave us,
            // which is aligned and valid for writes; it may hold garbage, which `write`
            // overwrites without reading or dropping.
            unsafe { ptr.add(i).write(FrameMeta::new()) };
        }
        // SAFETY: the `n` records were initialised above, the region is valid and not
        // otherwise accessed for the rest of the program (caller's contract), and shared
        // references are sound because every field is an atomic.
        let metas = unsafe { core::slice::from_raw_parts(ptr.cast_const(), n) };
        FrameTable { metas }
    }

    /// `n` fresh records on the heap, to back a [`FrameTable::new`] in host tests.
    #[cfg(any(test, feature = "std"))]
    pub fn boxed_records(n: usize) -> std::boxed::Box<[FrameMeta]> {
        (0..n).map(|_| FrameMeta::new()).collect()
    }

    /// Number of frames described.
    pub fn len(&self) -> usize {
        self.metas.len()
    }

    /// Whether the table describes no frame at all.
    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    /// The record of `pfn`, if the table covers it.
    #[inline]
    pub fn get(&self, pfn: Pfn) -> Option<&'a FrameMeta> {
        self.metas.get(usize::try_from(pfn.0).ok()?)
    }

    /// The maximal runs `[start, end)` of reserved frames (never handed to the
    /// allocator), in order. One pass over the table.
    pub fn reserved_runs(&self) -> Vec<(Pfn, Pfn)> {
        let mut runs: Vec<(Pfn, Pfn)> = Vec::new();
        for (i, m) in self.metas.iter().enumerate() {
            if m.state() != FrameState::Reserved {
                continue;
            }
            let i = i as u64;
            match runs.last_mut() {
                Some((_, end)) if end.0 == i => end.0 = i + 1,
                _ => runs.push((Pfn(i), Pfn(i + 1))),
            }
        }
        runs
    }

    /// The record at index `i` (crate internal: the caller has checked `i < len()`).
    pub(crate) fn at(&self, i: usize) -> &'a FrameMeta {
        &self.metas[i]
    }

    /// The head of the block (free or allocated) containing `pfn`: `pfn` itself for a
    /// head, `None` for a reserved frame or a PFN outside the table.
    ///
    /// The head of a block of order `k` containing `pfn` is `pfn` rounded down to `2^k`
    /// and every frame between them is a tail, so the first head met while rounding
    /// `pfn` down to ever larger powers of two is the answer, if its order reaches.
    #[inline]
    pub fn head_of(&self, pfn: Pfn) -> Option<Pfn> {
        let i = usize::try_from(pfn.0).ok().filter(|&i| i < self.len())?;
        for o in 0..=MAX_ORDER {
            let h = i & !((1usize << o) - 1);
            let m = self.at(h);
            match m.state() {
                FrameState::Tail => continue,
                s if s.is_head() && m.order() >= o => return Some(Pfn(h as u64)),
                _ => return None,
            }
        }
        None
    }

    /// The first frame of the pageblock containing index `i`.
    pub(crate) fn pageblock_start(i: usize) -> usize {
        i & !((1usize << PAGEBLOCK_ORDER) - 1)
    }
}

#[cfg(test)]
mod tests;
