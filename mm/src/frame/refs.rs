//! The frame counters and the owner word: the only code that stores to a frame's
//! `refcount`, `mapcount`, `pincount` and `owner`.
//!
//! Every other module reads them through [`FrameMeta`]'s accessors and changes them with
//! the typed operations here, which say what happened (a mapping was added, moved to
//! another block, taken off the tables; a pin; a claim by a move) instead of which
//! counter moves by how much. Counts that would overflow are refused with
//! [`CountError::Overflow`] before anything changes, and a drop below zero with
//! [`CountError::Underflow`], so a bug elsewhere cannot wrap a count around and free a
//! frame that is still in use.
//!
//! # What the counts mean (on the head of a block)
//!
//! - `mapcount`: page-table entries (present leaves or software entries) that map the
//!   block and are in the reverse map;
//! - `pincount`: pins (a device doing DMA): a pinned block is neither moved nor freed;
//! - `refcount`: mappings + pins + 1 if a shared region holds the block + 1 per move that
//!   claimed it + mappings already taken off the tables whose TLB shootdown has not
//!   completed. The block is freed when it reaches zero, which can only happen after every
//!   CPU that could translate to it has flushed.
//!
//! The callers serialise changes with the reverse-map lock; the operations are still
//! atomic read-modify-writes, so lock-free readers see consistent values.
//!
//! # The owner word
//!
//! The allocator clears it on allocation and on free. Two bits are used:
//! [`OWNER_MANAGED`] while the block is a managed (user) block, and [`OWNER_MIGRATING`]
//! while a move (migration, exchange, promotion) has claimed it; the claim is taken with a
//! compare-exchange so two movers cannot both claim one block.

use super::meta::FrameMeta;
use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

/// Owner bit: the block is a managed (user) block.
pub const OWNER_MANAGED: u64 = 1 << 0;
/// Owner bit: the block is claimed by a move in progress.
pub const OWNER_MIGRATING: u64 = 1 << 1;

/// Why a counter operation refused; nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CountError {
    /// The count would exceed `u32::MAX`.
    Overflow,
    /// The count is already zero.
    Underflow,
}

impl fmt::Display for CountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CountError::Overflow => "frame counter would overflow",
            CountError::Underflow => "frame counter already zero",
        })
    }
}

impl core::error::Error for CountError {}

/// Whether a dropped reference was the block's last one.
#[must_use = "a block whose last reference went must be freed"]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Released {
    /// Other references remain.
    Alive,
    /// That was the last reference: the owner word is cleared and the caller frees the
    /// block.
    Last,
}

fn add(counter: &AtomicU32, n: u32) -> Result<u32, CountError> {
    counter
        .try_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_add(n))
        .map_err(|_| CountError::Overflow)
}

fn sub(counter: &AtomicU32, n: u32) -> Result<u32, CountError> {
    counter
        .try_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(n))
        .map(|old| old - n)
        .map_err(|_| CountError::Underflow)
}

/// Add `n` to both counters or to neither.
fn add_both(a: &AtomicU32, b: &AtomicU32, n: u32) -> Result<(), CountError> {
    add(a, n)?;
    if let Err(e) = add(b, n) {
        // `a` was raised just now and cannot underflow.
        let _ = sub(a, n);
        return Err(e);
    }
    Ok(())
}

impl FrameMeta {
    /// The block was just handed out by an allocator: one reference (the allocator's
    /// caller's), no mappings, no pins, no owner.
    pub fn reset_allocated(&self) {
        self.refcount.store(1, Ordering::Release);
        self.mapcount.store(0, Ordering::Release);
        self.pincount.store(0, Ordering::Release);
        self.owner.store(0, Ordering::Release);
    }

    /// The block was just freed (or is being initialised as free): every count zero.
    pub fn reset_free(&self) {
        self.refcount.store(0, Ordering::Release);
        self.mapcount.store(0, Ordering::Release);
        self.pincount.store(0, Ordering::Release);
        self.owner.store(0, Ordering::Release);
    }

    /// The fresh block becomes a managed block; its allocation reference becomes the
    /// reference of its first user (a mapping, or the shared region that holds it).
    pub fn make_managed(&self) {
        self.owner.store(OWNER_MANAGED, Ordering::Release);
    }

    /// The fresh block becomes a managed block mapped once: its allocation reference is
    /// that mapping's.
    pub fn make_managed_mapped(&self) {
        self.mapcount.store(1, Ordering::Release);
        self.owner.store(OWNER_MANAGED, Ordering::Release);
    }

    /// The fresh block becomes the destination of a move: managed and claimed; its
    /// allocation reference is the claim's.
    pub fn make_managed_claimed(&self) {
        self.owner
            .store(OWNER_MANAGED | OWNER_MIGRATING, Ordering::Release);
    }

    /// `n` more mappings of the block (a new leaf, or a huge leaf split into `n + 1`).
    pub fn add_mappings(&self, n: u32) -> Result<(), CountError> {
        add_both(&self.mapcount, &self.refcount, n)
    }

    /// A mapping was taken off the reverse map. Its reference stays until the TLB
    /// shootdown that removes its translations has completed, when the flush that owns
    /// it calls [`put_ref`](Self::put_ref).
    pub fn remove_mapping(&self) -> Result<(), CountError> {
        sub(&self.mapcount, 1).map(|_| ())
    }

    /// A mapping (and its reference) moves from this block to `to` (a move remapped it).
    pub fn move_mapping_to(&self, to: &FrameMeta) -> Result<(), CountError> {
        to.add_mappings(1)?;
        let undo_to = || {
            let _ = sub(&to.mapcount, 1);
            let _ = sub(&to.refcount, 1);
        };
        if let Err(e) = sub(&self.mapcount, 1) {
            undo_to();
            return Err(e);
        }
        if let Err(e) = sub(&self.refcount, 1) {
            // The map count was lowered just now and cannot overflow going back.
            let _ = add(&self.mapcount, 1);
            undo_to();
            return Err(e);
        }
        Ok(())
    }

    /// A reference that is not a mapping's (a shared region's hold) moves to `to`.
    pub fn move_ref_to(&self, to: &FrameMeta) -> Result<(), CountError> {
        add(&to.refcount, 1)?;
        if let Err(e) = sub(&self.refcount, 1) {
            let _ = sub(&to.refcount, 1);
            return Err(e);
        }
        Ok(())
    }

    /// One more reference (a move's claim).
    pub fn get_ref(&self) -> Result<(), CountError> {
        add(&self.refcount, 1).map(|_| ())
    }

    /// Drop one reference. On [`Released::Last`] the owner word is cleared and the caller
    /// must free the block.
    pub fn put_ref(&self) -> Result<Released, CountError> {
        let left = sub(&self.refcount, 1)?;
        if left == 0 {
            self.owner.store(0, Ordering::Release);
            Ok(Released::Last)
        } else {
            Ok(Released::Alive)
        }
    }

    /// One more pin (and its reference).
    pub fn pin(&self) -> Result<(), CountError> {
        add_both(&self.pincount, &self.refcount, 1)
    }

    /// One pin fewer; its reference is dropped with [`put_ref`](Self::put_ref).
    pub fn unpin(&self) -> Result<(), CountError> {
        sub(&self.pincount, 1).map(|_| ())
    }

    /// Claim the managed, unclaimed block for a move. `false` when it is not managed or
    /// already claimed.
    pub fn try_claim(&self) -> bool {
        self.owner
            .try_update(Ordering::AcqRel, Ordering::Acquire, |o| {
                (o & OWNER_MANAGED != 0 && o & OWNER_MIGRATING == 0).then_some(o | OWNER_MIGRATING)
            })
            .is_ok()
    }

    /// Drop the claim of a move.
    pub fn unclaim(&self) {
        self.owner.fetch_and(!OWNER_MIGRATING, Ordering::AcqRel);
    }

    /// Fusing blocks into one compound block: this head takes over `child`'s references
    /// and mappings, and `child` (about to become a tail) is left with none and no owner.
    /// Refused, changing nothing, on overflow.
    pub fn absorb(&self, child: &FrameMeta) -> Result<(), CountError> {
        let (refs, maps) = (child.refcount(), child.mapcount());
        add(&self.mapcount, maps)?;
        if let Err(e) = add(&self.refcount, refs) {
            let _ = sub(&self.mapcount, maps);
            return Err(e);
        }
        child.reset_free();
        Ok(())
    }

    /// `n` mappings of the block became one (512 leaves replaced by one huge leaf): `n - 1`
    /// mappings and their references go.
    pub fn merge_mappings(&self, n: u32) -> Result<(), CountError> {
        let gone = n.saturating_sub(1);
        if self.mapcount() < gone || self.refcount() < gone {
            return Err(CountError::Underflow);
        }
        sub(&self.mapcount, gone)?;
        sub(&self.refcount, gone).map(|_| ())
    }

    /// `n` blocks, each held by one shared region, were fused into this one (which took
    /// their references): the `n` holds become the region's one hold on the compound.
    pub fn merge_holds(&self, n: u32) -> Result<(), CountError> {
        sub(&self.refcount, n.saturating_sub(1)).map(|_| ())
    }

    /// This block, held by a shared region, is about to be split into `n` blocks that the
    /// region each holds: its one hold becomes `n`.
    pub fn split_hold(&self, n: u32) -> Result<(), CountError> {
        add(&self.refcount, n.saturating_sub(1)).map(|_| ())
    }

    /// Splitting a compound block: `maps` of this head's mappings and `refs` of its
    /// references (mappings included) go to `child`, a new head that had none; `child`
    /// becomes managed when it gets a reference. Refused, changing nothing, when this
    /// head has fewer.
    pub fn hand_to(&self, child: &FrameMeta, maps: u32, refs: u32) -> Result<(), CountError> {
        if maps > refs || self.mapcount() < maps || self.refcount() < refs {
            return Err(CountError::Underflow);
        }
        sub(&self.mapcount, maps)?;
        sub(&self.refcount, refs)?;
        child.refcount.store(refs, Ordering::Release);
        child.mapcount.store(maps, Ordering::Release);
        child.pincount.store(0, Ordering::Release);
        child
            .owner
            .store(if refs > 0 { OWNER_MANAGED } else { 0 }, Ordering::Release);
        Ok(())
    }

    /// Whether the block is a managed (user) block.
    pub fn is_managed(&self) -> bool {
        self.owner() & OWNER_MANAGED != 0
    }

    /// Whether a move has claimed the block.
    pub fn is_claimed(&self) -> bool {
        self.owner() & OWNER_MIGRATING != 0
    }
}

#[cfg(test)]
mod tests;
