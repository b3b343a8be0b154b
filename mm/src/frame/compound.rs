//! Compound blocks fused and split in place, the data never moving: 512 allocated
//! blocks of one order, consecutive and aligned to the order nine above, become one
//! allocated block of that order ([`fuse`]: 4 KiB into 2 MiB, 2 MiB into 1 GiB), and
//! back ([`split`]). Only the frame metadata changes (head, tails, order, flags and the
//! counters through [`crate::frame::refs`]); the allocator's free lists are untouched,
//! since every frame involved is allocated before and after.
//!
//! The caller holds whatever keeps the blocks from changing meanwhile (the memory
//! manager's reverse-map lock, and claims on the blocks). Readers without a lock may see
//! the head's new order before the tails are marked; [`FrameTable::head_of`] then still
//! finds a head for each frame.

#[cfg(test)]
mod tests;

use crate::base::addr::{Pfn, MAX_ORDER};
use crate::frame::meta::{FrameFlags, FrameState, FrameTable};
use crate::frame::refs::{CountError, CountLock};
use core::fmt;

/// Children per compound step.
pub const CHILDREN: u64 = 512;

/// Why a fuse or a split was refused (nothing changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompoundError {
    /// The head is outside the frame table, or the block would run past it.
    OutOfRange,
    /// The head is not aligned to the compound order, or that order is too large.
    Unaligned,
    /// A child (fuse) or the block (split) is not an allocated head of the expected order.
    NotBlock(Pfn),
    /// The children differ in mobility.
    Mixed(Pfn),
    /// The counts handed to the children do not add up to the block's.
    Counts,
    /// A counter would overflow.
    Count(CountError),
}

impl fmt::Display for CompoundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompoundError::OutOfRange => f.write_str("block outside the frame table"),
            CompoundError::Unaligned => f.write_str("head not aligned to the compound order"),
            CompoundError::NotBlock(p) => write!(f, "{p:?} is not an allocated block of the order"),
            CompoundError::Mixed(p) => write!(f, "{p:?} differs in mobility"),
            CompoundError::Counts => f.write_str("the counts do not add up"),
            CompoundError::Count(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for CompoundError {}

/// The order of the compound of 512 children of `child_order`.
fn parent_order(child_order: u8) -> Result<u8, CompoundError> {
    let order = child_order.checked_add(9).ok_or(CompoundError::Unaligned)?;
    if order > MAX_ORDER {
        return Err(CompoundError::Unaligned);
    }
    Ok(order)
}

/// Check that `[head, head + 2^order)` is in the table with `head` aligned.
fn check_span(table: &FrameTable<'_>, head: Pfn, order: u8) -> Result<(), CompoundError> {
    if !head.is_aligned(order) {
        return Err(CompoundError::Unaligned);
    }
    match head.0.checked_add(1 << order) {
        Some(end) if end <= table.len() as u64 => Ok(()),
        _ => Err(CompoundError::OutOfRange),
    }
}

/// Fuse the 512 allocated blocks of `child_order` from `head` into one block (see the
/// module doc): the head takes every child's references and mappings (see
/// [`FrameMeta::absorb`](crate::frame::meta::FrameMeta)), the children become tails.
pub fn fuse(
    counts: &CountLock,
    table: &FrameTable<'_>,
    head: Pfn,
    child_order: u8,
) -> Result<(), CompoundError> {
    let order = parent_order(child_order)?;
    check_span(table, head, order)?;
    let meta = |i: u64| {
        table
            .get(head.add(i << child_order))
            .ok_or(CompoundError::OutOfRange)
    };
    let first = meta(0)?;
    let movable = first.flags().contains(FrameFlags::MOVABLE);
    let (mut refs, mut maps) = (0u64, 0u64);
    for i in 0..CHILDREN {
        let m = meta(i)?;
        let pfn = head.add(i << child_order);
        if m.state() != FrameState::Allocated || m.order() != child_order {
            return Err(CompoundError::NotBlock(pfn));
        }
        if m.flags().contains(FrameFlags::MOVABLE) != movable {
            return Err(CompoundError::Mixed(pfn));
        }
        refs += u64::from(m.refcount());
        maps += u64::from(m.mapcount());
    }
    if refs > u64::from(u32::MAX) || maps > u64::from(u32::MAX) {
        return Err(CompoundError::Count(CountError::Overflow));
    }
    first.set_state(FrameState::Allocated, order);
    first.insert_flags(FrameFlags::HUGE_HEAD);
    for i in 1..CHILDREN {
        let m = meta(i)?;
        first.absorb(counts, m).map_err(CompoundError::Count)?;
        m.remove_flags(FrameFlags::MOVABLE | FrameFlags::HUGE_HEAD);
        m.set_state(FrameState::Tail, 0);
    }
    Ok(())
}

/// Split the allocated block at `head` into 512 blocks of `child_order` (see the module
/// doc); child `i` gets `counts(i) = (mappings, references)` of the block's (the head
/// keeps child 0's). The counts must add up to the block's. Children left without a
/// reference are the caller's to free.
pub fn split(
    lock: &CountLock,
    table: &FrameTable<'_>,
    head: Pfn,
    child_order: u8,
    counts: impl Fn(u64) -> (u32, u32),
) -> Result<(), CompoundError> {
    let order = parent_order(child_order)?;
    check_span(table, head, order)?;
    let first = table.get(head).ok_or(CompoundError::OutOfRange)?;
    if first.state() != FrameState::Allocated || first.order() != order {
        return Err(CompoundError::NotBlock(head));
    }
    let (mut refs, mut maps) = (0u64, 0u64);
    for i in 0..CHILDREN {
        let (m, r) = counts(i);
        if m > r {
            return Err(CompoundError::Counts);
        }
        maps += u64::from(m);
        refs += u64::from(r);
    }
    if refs != u64::from(first.refcount()) || maps != u64::from(first.mapcount()) {
        return Err(CompoundError::Counts);
    }
    let movable = first.flags().contains(FrameFlags::MOVABLE);
    for i in (1..CHILDREN).rev() {
        let Some(m) = table.get(head.add(i << child_order)) else {
            return Err(CompoundError::OutOfRange);
        };
        let (maps, refs) = counts(i);
        first
            .hand_to(lock, m, maps, refs)
            .map_err(CompoundError::Count)?;
        let mut flags = FrameFlags::empty();
        flags.set(FrameFlags::MOVABLE, movable);
        flags.set(FrameFlags::HUGE_HEAD, child_order > 0);
        m.insert_flags(flags);
        m.set_state(FrameState::Allocated, child_order);
    }
    if child_order == 0 {
        first.remove_flags(FrameFlags::HUGE_HEAD);
    }
    first.set_state(FrameState::Allocated, child_order);
    Ok(())
}
