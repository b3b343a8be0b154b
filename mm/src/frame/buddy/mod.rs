//! The buddy allocator of physical frames: free lists, splitting and coalescing, the
//! grouping of unmovable allocations into their own pageblocks, and range allocation.
//!
//! A block of order `k` is `2^k` naturally aligned frames, `k` in `0..=MAX_ORDER`. Free
//! blocks sit on intrusive doubly linked lists threaded through the heads' [`FrameMeta`]
//! links, so any block can be unlinked in O(1), and `alloc`/`free` cost O(MAX_ORDER)
//! whatever the size of memory or of the block. Free buddies of the same order are
//! always merged, so every free block is maximal; as a consequence an aligned run of free
//! frames always lies inside a single free block, which `alloc_at` relies on.
//!
//! Anti-fragmentation: memory is grouped in pageblocks of `2^PAGEBLOCK_ORDER` frames
//! (2 MiB), each typed [`MigrateType::Movable`] or [`MigrateType::Unmovable`] by a flag on
//! its first frame. Free blocks smaller than a pageblock are listed by the type of their
//! pageblock; free blocks of a pageblock or more are type-neutral. An allocation is served
//! from its own type's lists first, then by taking a whole free pageblock (which then gets
//! the allocation's type), and only as a last resort from the other type's pageblocks
//! (a *fallback*, counted). A pageblock's type changes only while it is one whole free
//! block, so small free blocks never need to move between lists.
//!
//! Unmovable allocations that take whole free pageblocks take the lowest-addressed ones
//! outside the windows contiguity generation has claimed (pageblocks marked
//! [`FrameFlags::PAGEBLOCK_CLAIMED`]), and claimed ones only when nothing else is free:
//! unmovable memory packs at the bottom of physical memory, where the kernel already
//! sits, instead of landing in the gigabytes and windows that VMAs are being moved into.
//! Movable allocations take the first block of their list.
//!
//! The allocator is not locked: the kernel wraps it in a `spin::Mutex`. Every method that
//! fails returns a typed error and leaves the allocator and the metadata unchanged.
//!
//! [`FrameMeta`]: crate::frame::meta::FrameMeta

mod audit;
#[cfg(test)]
mod tests;

pub use audit::{AuditError, AuditReport};

use crate::base::addr::{Pfn, MAX_ORDER, PAGEBLOCK_ORDER};
use crate::frame::meta::{FrameFlags, FrameState, FrameTable, NO_LINK, PAGEBLOCK_FLAGS};
use alloc::vec::Vec;

/// Number of buddy orders, `0..=MAX_ORDER`.
pub const NR_ORDERS: usize = MAX_ORDER as usize + 1;

/// Orders below a pageblock, whose free blocks are listed per migrate type.
const TYPED_ORDERS: usize = PAGEBLOCK_ORDER as usize;

/// Two lists per order below a pageblock (one per migrate type), then one per order from
/// a pageblock up.
const NR_LISTS: usize = 2 * TYPED_ORDERS + (NR_ORDERS - TYPED_ORDERS);

/// What may be done with an allocation's contents, which decides where it is placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MigrateType {
    /// Contents may be migrated or exchanged (user memory).
    Movable,
    /// Contents stay where they are (kernel data, page tables, pinned buffers).
    Unmovable,
}

impl MigrateType {
    const fn index(self) -> usize {
        match self {
            MigrateType::Movable => 0,
            MigrateType::Unmovable => 1,
        }
    }

    const fn other(self) -> MigrateType {
        match self {
            MigrateType::Movable => MigrateType::Unmovable,
            MigrateType::Unmovable => MigrateType::Movable,
        }
    }
}

/// Why an allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// No free memory of the requested shape.
    OutOfMemory,
    /// The order is above `MAX_ORDER` (or an alignment order is).
    InvalidOrder,
    /// A range of zero frames was requested.
    InvalidSize,
    /// `alloc_at`: the PFN is not aligned to the order.
    Unaligned,
    /// `alloc_at`: the block does not fit in the frame table.
    OutOfRange,
    /// `alloc_at`: some frame of the block is allocated or reserved.
    NotFree,
}

/// Why a free failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeError {
    /// The frame is reserved, or free and was never handed out as the head of a block.
    NotAllocated,
    /// The frame is free and was the head of a block that has already been freed.
    DoubleFree,
    /// The block was allocated with another order.
    WrongOrder {
        /// The order of the allocated block.
        allocated: u8,
    },
    /// The frame is inside an allocated block but is not its head.
    NotHead,
    /// The PFN (or range) is outside the frame table.
    OutOfRange,
    /// The order is above `MAX_ORDER`.
    InvalidOrder,
    /// A range of zero frames was given.
    InvalidSize,
    /// The block's head is pinned (nonzero pin count).
    Pinned,
    /// The block's head is still mapped (nonzero map count).
    Mapped,
}

/// Why a range could not be handed to the allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddRangeError {
    /// `start > end`.
    InvalidRange,
    /// The range ends past the frame table.
    OutOfRange,
    /// This frame is already managed by the allocator.
    AlreadyManaged(Pfn),
}

/// Counters of the allocator, all in frames except the event counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BuddyStats {
    /// Frames handed to the allocator.
    pub total_frames: usize,
    /// Free frames.
    pub free_frames: usize,
    /// Free frames in blocks smaller than a pageblock, in movable pageblocks.
    pub free_movable: usize,
    /// Free frames in blocks smaller than a pageblock, in unmovable pageblocks.
    pub free_unmovable: usize,
    /// Free frames in type-neutral blocks (a pageblock or larger).
    pub free_neutral: usize,
    /// Frames allocated as movable.
    pub allocated_movable: usize,
    /// Frames allocated as unmovable.
    pub allocated_unmovable: usize,
    /// Whole free pageblocks taken over by an allocation of a type.
    pub pageblock_steals: usize,
    /// Allocations served from the other type's pageblocks.
    pub fallbacks: usize,
}

/// Where `alloc` found its block.
enum Source {
    OwnType,
    Pageblock,
    Fallback,
}

/// The buddy allocator over one [`FrameTable`].
pub struct BuddyAllocator<'a> {
    table: FrameTable<'a>,
    heads: [u32; NR_LISTS],
    counts: [usize; NR_LISTS],
    total: usize,
    free: usize,
    allocated: [usize; 2],
    steals: usize,
    fallbacks: usize,
}

impl<'a> BuddyAllocator<'a> {
    /// An allocator managing no frame yet; hand it memory with
    /// [`add_free_range`](Self::add_free_range).
    pub fn new(table: FrameTable<'a>) -> BuddyAllocator<'a> {
        BuddyAllocator {
            table,
            heads: [NO_LINK; NR_LISTS],
            counts: [0; NR_LISTS],
            total: 0,
            free: 0,
            allocated: [0; 2],
            steals: 0,
            fallbacks: 0,
        }
    }

    /// The frame table the allocator works on.
    pub fn table(&self) -> FrameTable<'a> {
        self.table
    }

    /// Hand the frames `start..end` to the allocator as free memory, as maximal aligned
    /// blocks merged with free neighbours. Returns the number of frames added. Frames never
    /// added stay reserved. O(end - start).
    pub fn add_free_range(&mut self, start: Pfn, end: Pfn) -> Result<usize, AddRangeError> {
        if start.0 > end.0 {
            return Err(AddRangeError::InvalidRange);
        }
        if end.0 > self.table.len() as u64 {
            return Err(AddRangeError::OutOfRange);
        }
        let (s, e) = (start.0 as usize, end.0 as usize);
        if let Some(i) = (s..e).find(|&i| self.table.at(i).state() != FrameState::Reserved) {
            return Err(AddRangeError::AlreadyManaged(Pfn(i as u64)));
        }
        for i in s..e {
            let m = self.table.at(i);
            m.reset_free();
            m.remove_flags(!PAGEBLOCK_FLAGS);
            m.set_state(FrameState::Tail, 0);
        }
        for (head, order) in Blocks::new(s, e) {
            self.merge_and_push(head, order);
        }
        self.total += e - s;
        Ok(e - s)
    }

    /// Allocate a block of `2^order` frames for an allocation of type `mt`.
    pub fn alloc(&mut self, order: u8, mt: MigrateType) -> Result<Pfn, AllocError> {
        if order > MAX_ORDER {
            return Err(AllocError::InvalidOrder);
        }
        let (list, source) = self.pick_list(order, mt).ok_or(AllocError::OutOfMemory)?;
        match source {
            Source::OwnType => {}
            Source::Pageblock => self.steals += 1,
            Source::Fallback => self.fallbacks += 1,
        }
        let whole = list_order(list) >= PAGEBLOCK_ORDER;
        let pick = (whole && mt == MigrateType::Unmovable)
            .then(|| self.lowest_pageblocks(order))
            .flatten();
        let (head, from, target) = pick.unwrap_or_else(|| {
            let head = self.heads[list] as usize;
            (head, list_order(list), head)
        });
        self.unlink(head, from);
        self.split(head, from, target, order, mt);
        self.mark_allocated(target, order, mt);
        Ok(Pfn(target as u64))
    }

    /// For an allocation of `order` taking whole free pageblocks: the free block (head,
    /// order) to split and the aligned block inside it of `order` (at least a pageblock)
    /// to take, the lowest-addressed one that overlaps no claimed pageblock, or the
    /// lowest one when every one does. `None` when no free block is a pageblock or more.
    /// O(free blocks of a pageblock or more, and the pageblocks in them up to the first
    /// unclaimed one in each).
    fn lowest_pageblocks(&self, order: u8) -> Option<(usize, u8, usize)> {
        let span = order.max(PAGEBLOCK_ORDER);
        // (claimed, target, head, order) of the best so far.
        let mut best: Option<(bool, usize, usize, u8)> = None;
        for from in span..=MAX_ORDER {
            let mut at = self.heads[list_id(from, MigrateType::Movable)];
            while at != NO_LINK {
                let head = at as usize;
                for target in (head..head + (1 << from)).step_by(1 << span) {
                    let claimed = self.claimed(target, span);
                    if best.is_none_or(|(c, t, _, _)| (claimed, target) < (c, t)) {
                        best = Some((claimed, target, head, from));
                    }
                    if !claimed {
                        break;
                    }
                }
                at = self.table.at(head).next();
            }
        }
        best.map(|(_, target, head, from)| (head, from, target))
    }

    /// Whether some pageblock of the block of `order` (at least a pageblock) at `head`
    /// is marked claimed.
    fn claimed(&self, head: usize, order: u8) -> bool {
        (head..head + (1 << order))
            .step_by(1 << PAGEBLOCK_ORDER)
            .any(|pb| {
                self.table
                    .at(pb)
                    .flags()
                    .contains(FrameFlags::PAGEBLOCK_CLAIMED)
            })
    }

    /// Allocate exactly the block of `2^order` frames at `pfn`, if all of it is free.
    pub fn alloc_at(&mut self, pfn: Pfn, order: u8, mt: MigrateType) -> Result<Pfn, AllocError> {
        if order > MAX_ORDER {
            return Err(AllocError::InvalidOrder);
        }
        if !pfn.is_aligned(order) {
            return Err(AllocError::Unaligned);
        }
        let i = self
            .index(pfn)
            .filter(|&i| i + (1usize << order) <= self.table.len())
            .ok_or(AllocError::OutOfRange)?;
        let (head, from) = self
            .free_block_at(i)
            .filter(|&(_, k)| k >= order)
            .ok_or(AllocError::NotFree)?;
        self.unlink(head, from);
        self.split(head, from, i, order, mt);
        self.mark_allocated(i, order, mt);
        Ok(pfn)
    }

    /// Allocate exactly each block of `blocks` (head and order), as [`alloc_at`] of each
    /// in turn would, appending one result per block, in order, to `out`; a run of single
    /// frames one after the other goes through [`alloc_frames_at`] in one go (and one at
    /// a time only when some frame of it is not free).
    ///
    /// [`alloc_at`]: Self::alloc_at
    /// [`alloc_frames_at`]: Self::alloc_frames_at
    pub fn alloc_at_batch<E: From<AllocError>>(
        &mut self,
        blocks: &[(Pfn, u8)],
        mt: MigrateType,
        out: &mut Vec<Result<Pfn, E>>,
    ) {
        let mut rest = blocks;
        while let Some(&(start, order)) = rest.first() {
            let run = if order == 0 {
                rest.iter()
                    .enumerate()
                    .take_while(|&(k, &(p, o))| {
                        o == 0 && p.0.checked_sub(start.0) == Some(k as u64)
                    })
                    .count()
            } else {
                1
            };
            if run > 1 && self.alloc_frames_at(start, run, mt).is_ok() {
                out.extend((0..run as u64).map(|k| Ok(start.add(k))));
            } else {
                out.extend(
                    rest[..run]
                        .iter()
                        .map(|&(pfn, order)| self.alloc_at(pfn, order, mt).map_err(E::from)),
                );
            }
            rest = &rest[run..];
        }
    }

    /// Allocate each of the `count` frames from `start` as a block of its own (order 0),
    /// all of them or none: the same as [`alloc_at`](Self::alloc_at) of each frame in
    /// turn, but with one unlink and split per maximal aligned block of the run instead
    /// of one per frame (a migration into a window asks for runs of single frames).
    pub fn alloc_frames_at(
        &mut self,
        start: Pfn,
        count: usize,
        mt: MigrateType,
    ) -> Result<(), AllocError> {
        let first = self.index(start).ok_or(AllocError::OutOfRange)?;
        let end = first
            .checked_add(count)
            .filter(|&end| end <= self.table.len())
            .ok_or(AllocError::OutOfRange)?;
        let mut at = first;
        while at < end {
            let (head, order) = self.free_block_at(at).ok_or(AllocError::NotFree)?;
            at = head + (1usize << order);
        }
        for (head, order) in Blocks::new(first, end) {
            // Every frame of the run was just seen free, and each step below only takes
            // frames of the run: this block still lies inside one free block.
            let Some((free_head, from)) = self.free_block_at(head) else {
                continue;
            };
            self.unlink(free_head, from);
            self.split(free_head, from, head, order, mt);
            if order >= PAGEBLOCK_ORDER {
                // One frame at a time would have split each of these pageblocks, which
                // gives it the allocation's type.
                for pb in (head..head + (1usize << order)).step_by(1 << PAGEBLOCK_ORDER) {
                    self.set_pageblock_type(pb, mt);
                }
            }
            for frame in head..head + (1usize << order) {
                self.mark_allocated(frame, 0, mt);
            }
        }
        Ok(())
    }

    /// Allocate `nframes` contiguous frames starting at a multiple of `2^align_order`,
    /// as the maximal aligned blocks that make up the run (release them with
    /// [`free_range`](Self::free_range) or block by block with [`free`](Self::free)).
    ///
    /// First fit, scanning the table block by block: O(frames / average block size). Meant
    /// for contiguity generation, not for the hot path.
    pub fn alloc_range(
        &mut self,
        nframes: usize,
        align_order: u8,
        mt: MigrateType,
    ) -> Result<Pfn, AllocError> {
        if nframes == 0 {
            return Err(AllocError::InvalidSize);
        }
        if align_order > MAX_ORDER {
            return Err(AllocError::InvalidOrder);
        }
        let start = self
            .find_free_run(nframes, align_order)
            .ok_or(AllocError::OutOfMemory)?;
        for (head, order) in Blocks::new(start, start + nframes) {
            // Every frame of the run was just seen free, so each block is inside a free
            // block and this succeeds.
            self.alloc_at(Pfn(head as u64), order, mt)?;
        }
        Ok(Pfn(start as u64))
    }

    /// Free the block of `2^order` frames headed at `pfn`, merging it with its free buddies.
    pub fn free(&mut self, pfn: Pfn, order: u8) -> Result<(), FreeError> {
        let head = self.check_free(pfn, order)?;
        self.release(head, order);
        Ok(())
    }

    /// Free the `nframes` frames at `pfn` allocated by [`alloc_range`](Self::alloc_range)
    /// (or any allocation made of the same maximal aligned blocks). Nothing is freed
    /// unless every block is an allocated head of the expected order.
    pub fn free_range(&mut self, pfn: Pfn, nframes: usize) -> Result<(), FreeError> {
        if nframes == 0 {
            return Err(FreeError::InvalidSize);
        }
        let start = self
            .index(pfn)
            .filter(|&s| nframes <= self.table.len() - s)
            .ok_or(FreeError::OutOfRange)?;
        for (head, order) in Blocks::new(start, start + nframes) {
            self.check_free(Pfn(head as u64), order)?;
        }
        for (head, order) in Blocks::new(start, start + nframes) {
            self.release(head, order);
        }
        Ok(())
    }

    /// Whether `pfn` is a managed frame inside a free block.
    pub fn is_free(&self, pfn: Pfn) -> bool {
        self.free_block_containing(pfn).is_some()
    }

    /// The free block (head, order) containing `pfn`, if `pfn` is free.
    pub fn free_block_containing(&self, pfn: Pfn) -> Option<(Pfn, u8)> {
        let i = self.index(pfn)?;
        self.free_block_at(i)
            .map(|(head, order)| (Pfn(head as u64), order))
    }

    /// The migrate type of the pageblock containing `pfn`.
    pub fn pageblock_type(&self, pfn: Pfn) -> Option<MigrateType> {
        self.index(pfn).map(|i| self.pageblock_type_at(i))
    }

    /// Free frames.
    pub fn free_frames(&self) -> usize {
        self.free
    }

    /// Frames managed by the allocator (free or allocated).
    pub fn total_frames(&self) -> usize {
        self.total
    }

    /// Allocated frames.
    pub fn allocated_frames(&self) -> usize {
        self.allocated.iter().sum()
    }

    /// Number of free blocks of each order.
    pub fn free_areas(&self) -> [usize; NR_ORDERS] {
        let mut areas = [0; NR_ORDERS];
        for (list, &count) in self.counts.iter().enumerate() {
            areas[list_order(list) as usize] += count;
        }
        areas
    }

    /// All counters.
    pub fn stats(&self) -> BuddyStats {
        let mut free_by_class = [0usize; 3];
        for (list, &count) in self.counts.iter().enumerate() {
            let class = list_type(list).map_or(2, MigrateType::index);
            free_by_class[class] += count << list_order(list);
        }
        BuddyStats {
            total_frames: self.total,
            free_frames: self.free,
            free_movable: free_by_class[0],
            free_unmovable: free_by_class[1],
            free_neutral: free_by_class[2],
            allocated_movable: self.allocated[MigrateType::Movable.index()],
            allocated_unmovable: self.allocated[MigrateType::Unmovable.index()],
            pageblock_steals: self.steals,
            fallbacks: self.fallbacks,
        }
    }

    fn index(&self, pfn: Pfn) -> Option<usize> {
        usize::try_from(pfn.0)
            .ok()
            .filter(|&i| i < self.table.len())
    }

    /// The free block (head, order) containing index `i`.
    fn free_block_at(&self, i: usize) -> Option<(usize, u8)> {
        let head = self.table.head_of(Pfn(i as u64))?.0 as usize;
        let m = self.table.at(head);
        (m.state() == FrameState::Free).then(|| (head, m.order()))
    }

    fn pageblock_type_at(&self, i: usize) -> MigrateType {
        let first = self.table.at(FrameTable::pageblock_start(i));
        if first.flags().contains(FrameFlags::PAGEBLOCK_UNMOVABLE) {
            MigrateType::Unmovable
        } else {
            MigrateType::Movable
        }
    }

    fn set_pageblock_type(&self, i: usize, mt: MigrateType) {
        let first = self.table.at(FrameTable::pageblock_start(i));
        match mt {
            MigrateType::Movable => first.remove_flags(FrameFlags::PAGEBLOCK_UNMOVABLE),
            MigrateType::Unmovable => first.insert_flags(FrameFlags::PAGEBLOCK_UNMOVABLE),
        }
    }

    /// The list a free block headed at `head` of `order` belongs on.
    fn list_of(&self, head: usize, order: u8) -> usize {
        if order >= PAGEBLOCK_ORDER {
            list_id(order, MigrateType::Movable)
        } else {
            list_id(order, self.pageblock_type_at(head))
        }
    }

    /// The nonempty list an allocation of `order` and type `mt` takes its block from.
    fn pick_list(&self, order: u8, mt: MigrateType) -> Option<(usize, Source)> {
        let nonempty = |list: &usize| self.heads[*list] != NO_LINK;
        let whole_pageblocks = || (order.max(PAGEBLOCK_ORDER)..=MAX_ORDER).map(|o| list_id(o, mt));
        if order >= PAGEBLOCK_ORDER {
            return whole_pageblocks()
                .find(nonempty)
                .map(|l| (l, Source::OwnType));
        }
        let typed = |t: MigrateType| (order..PAGEBLOCK_ORDER).map(move |o| list_id(o, t));
        typed(mt)
            .find(nonempty)
            .map(|l| (l, Source::OwnType))
            .or_else(|| {
                whole_pageblocks()
                    .find(nonempty)
                    .map(|l| (l, Source::Pageblock))
            })
            .or_else(|| {
                typed(mt.other())
                    .find(nonempty)
                    .map(|l| (l, Source::Fallback))
            })
    }

    /// Split the unlinked free block (`block`, `order`) down to the block of order `to`
    /// at `target`, putting the other halves on the free lists. Splitting a whole
    /// pageblock gives it type `mt`.
    fn split(&mut self, mut block: usize, mut order: u8, target: usize, to: u8, mt: MigrateType) {
        while order > to {
            if order == PAGEBLOCK_ORDER {
                self.set_pageblock_type(block, mt);
            }
            order -= 1;
            let half = 1usize << order;
            if target >= block + half {
                self.push(block, order);
                block += half;
            } else {
                self.push(block + half, order);
            }
        }
        debug_assert_eq!(block, target);
    }

    fn mark_allocated(&mut self, head: usize, order: u8, mt: MigrateType) {
        let m = self.table.at(head);
        m.reset_allocated();
        let mut flags = FrameFlags::empty();
        flags.set(FrameFlags::MOVABLE, mt == MigrateType::Movable);
        flags.set(FrameFlags::HUGE_HEAD, order > 0);
        m.replace_flags(
            FrameFlags::FREED | FrameFlags::MOVABLE | FrameFlags::HUGE_HEAD,
            flags,
        );
        m.set_state(FrameState::Allocated, order);
        self.allocated[mt.index()] += 1 << order;
    }

    /// The head index of the allocated block `pfn` of `order`, or why it cannot be freed.
    fn check_free(&self, pfn: Pfn, order: u8) -> Result<usize, FreeError> {
        let i = self.index(pfn).ok_or(FreeError::OutOfRange)?;
        if order > MAX_ORDER {
            return Err(FreeError::InvalidOrder);
        }
        let m = self.table.at(i);
        match m.state() {
            FrameState::Reserved => Err(FreeError::NotAllocated),
            FrameState::Free => Err(self.free_frame_error(i)),
            FrameState::Tail if self.free_block_at(i).is_some() => Err(self.free_frame_error(i)),
            FrameState::Tail => Err(FreeError::NotHead),
            FrameState::Allocated if m.order() != order => Err(FreeError::WrongOrder {
                allocated: m.order(),
            }),
            FrameState::Allocated if m.pincount() != 0 => Err(FreeError::Pinned),
            FrameState::Allocated if m.mapcount() != 0 => Err(FreeError::Mapped),
            FrameState::Allocated => Ok(i),
        }
    }

    fn free_frame_error(&self, i: usize) -> FreeError {
        if self.table.at(i).flags().contains(FrameFlags::FREED) {
            FreeError::DoubleFree
        } else {
            FreeError::NotAllocated
        }
    }

    /// Free the checked allocated block (`head`, `order`).
    fn release(&mut self, head: usize, order: u8) {
        let m = self.table.at(head);
        let mt = if m.flags().contains(FrameFlags::MOVABLE) {
            MigrateType::Movable
        } else {
            MigrateType::Unmovable
        };
        self.allocated[mt.index()] -= 1 << order;
        m.reset_free();
        m.replace_flags(!PAGEBLOCK_FLAGS, FrameFlags::FREED);
        self.merge_and_push(head, order);
    }

    /// Merge the block (`head`, `order`), whose frames are all free, with its free buddies
    /// and list the result.
    fn merge_and_push(&mut self, mut head: usize, mut order: u8) {
        while order < MAX_ORDER {
            let buddy = head ^ (1usize << order);
            if buddy >= self.table.len() {
                break;
            }
            let b = self.table.at(buddy);
            if b.state() != FrameState::Free || b.order() != order {
                break;
            }
            self.unlink(buddy, order);
            self.table
                .at(head.max(buddy))
                .set_state(FrameState::Tail, 0);
            head = head.min(buddy);
            order += 1;
        }
        self.push(head, order);
    }

    /// Make `head` a free block of `order` at the front of its list.
    fn push(&mut self, head: usize, order: u8) {
        let list = self.list_of(head, order);
        let m = self.table.at(head);
        let old = self.heads[list];
        m.set_prev(NO_LINK);
        m.set_next(old);
        m.set_state(FrameState::Free, order);
        if old != NO_LINK {
            self.table.at(old as usize).set_prev(head as u32);
        }
        self.heads[list] = head as u32;
        self.counts[list] += 1;
        self.free += 1 << order;
    }

    /// Take the free block (`head`, `order`) off its list. Its state stays `Free` until
    /// the caller changes it.
    fn unlink(&mut self, head: usize, order: u8) {
        let list = self.list_of(head, order);
        let m = self.table.at(head);
        let (prev, next) = (m.prev(), m.next());
        if prev == NO_LINK {
            debug_assert_eq!(self.heads[list], head as u32);
            self.heads[list] = next;
        } else {
            self.table.at(prev as usize).set_next(next);
        }
        if next != NO_LINK {
            self.table.at(next as usize).set_prev(prev);
        }
        m.set_prev(NO_LINK);
        m.set_next(NO_LINK);
        self.counts[list] -= 1;
        self.free -= 1 << order;
    }

    /// The first index, a multiple of `2^align_order`, that starts `nframes` free frames.
    fn find_free_run(&self, nframes: usize, align_order: u8) -> Option<usize> {
        let align_mask = (1usize << align_order) - 1;
        let mut run_start = None;
        let mut i = 0;
        while i < self.table.len() {
            let m = self.table.at(i);
            match m.state() {
                FrameState::Free => {
                    let end = i + (1usize << m.order());
                    let start = *run_start.get_or_insert(i);
                    let aligned = (start + align_mask) & !align_mask;
                    if aligned <= end && end - aligned >= nframes {
                        return Some(aligned);
                    }
                    i = end;
                }
                FrameState::Allocated => {
                    run_start = None;
                    i += 1usize << m.order();
                }
                FrameState::Reserved | FrameState::Tail => {
                    debug_assert_eq!(m.state(), FrameState::Reserved, "orphan tail at {i}");
                    run_start = None;
                    i += 1;
                }
            }
        }
        None
    }
}

/// The list of free blocks of `order` in pageblocks of type `mt` (ignored from a
/// pageblock up).
const fn list_id(order: u8, mt: MigrateType) -> usize {
    let order = order as usize;
    if order < TYPED_ORDERS {
        2 * order + mt.index()
    } else {
        2 * TYPED_ORDERS + (order - TYPED_ORDERS)
    }
}

const fn list_order(list: usize) -> u8 {
    if list < 2 * TYPED_ORDERS {
        (list / 2) as u8
    } else {
        (list - TYPED_ORDERS) as u8
    }
}

/// The migrate type of a list, `None` for the type-neutral ones.
const fn list_type(list: usize) -> Option<MigrateType> {
    if list >= 2 * TYPED_ORDERS {
        None
    } else if list % 2 == 0 {
        Some(MigrateType::Movable)
    } else {
        Some(MigrateType::Unmovable)
    }
}

/// The maximal naturally aligned blocks, lowest first, that make up `start..end`.
struct Blocks {
    next: usize,
    end: usize,
}

impl Blocks {
    fn new(start: usize, end: usize) -> Blocks {
        Blocks { next: start, end }
    }
}

impl Iterator for Blocks {
    type Item = (usize, u8);

    fn next(&mut self) -> Option<(usize, u8)> {
        if self.next >= self.end {
            return None;
        }
        let head = self.next;
        let align = if head == 0 {
            u32::from(MAX_ORDER)
        } else {
            head.trailing_zeros()
        };
        let order = align
            .min((self.end - head).ilog2())
            .min(u32::from(MAX_ORDER)) as u8;
        self.next += 1usize << order;
        Some((head, order))
    }
}
