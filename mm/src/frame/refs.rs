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
//! # Who may change them
//!
//! Every operation that changes a counter or the owner word of a block in use takes a
//! [`CountLock`]: the proof that its caller holds the lock serialising all such changes,
//! the memory manager's reverse-map lock, inside which the one `CountLock` of a memory
//! manager lives. Writers never race, so each operation checks what it will write and
//! then stores it (a load and a release store per counter, no atomic read-modify-write:
//! a locked instruction costs some twenty cycles, and a moved 4 KiB page took a dozen of
//! them); lock-free readers see each counter as some value it really had. Only a block
//! nobody else can reach is written without it: by the allocator as it hands the block
//! out or takes it back, and by its new user before publishing it
//! ([`make_managed`](FrameMeta::make_managed) and its siblings).
//!
//! # The owner word
//!
//! The allocator clears it on allocation and on free. Two bits are used:
//! [`OWNER_MANAGED`] while the block is a managed (user) block, and [`OWNER_MIGRATING`]
//! while a move (migration, exchange, promotion) has claimed it; the claim is taken under
//! the [`CountLock`], so two movers cannot both claim one block.

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

/// The right to change the counters and owner words of blocks in use (see the module
/// doc): one per memory manager, kept inside its reverse-map lock, so that only code
/// holding that lock can lend it. Neither `Clone` nor `Default`, and code outside this
/// crate cannot make one:
///
/// ```compile_fail
/// let forged = mm::frame::refs::CountLock::new();
/// ```
///
/// ```compile_fail
/// let forged = mm::frame::refs::CountLock(());
/// ```
#[derive(Debug)]
pub struct CountLock(());

impl CountLock {
    /// The token of one memory manager: made only by its reverse map, which keeps it
    /// inside its lock.
    #[inline]
    pub(crate) const fn new() -> CountLock {
        CountLock(())
    }
}

/// `counter` raised by `n`, not yet stored.
#[inline]
fn raised(counter: &AtomicU32, n: u32) -> Result<u32, CountError> {
    // Relaxed: the lock orders this load after the last writer's store.
    counter
        .load(Ordering::Relaxed)
        .checked_add(n)
        .ok_or(CountError::Overflow)
}

/// `counter` lowered by `n`, not yet stored.
#[inline]
fn lowered(counter: &AtomicU32, n: u32) -> Result<u32, CountError> {
    counter
        .load(Ordering::Relaxed)
        .checked_sub(n)
        .ok_or(CountError::Underflow)
}

/// Change `a` by `na` and `b` by `nb` with `step` ([`raised`] or [`lowered`]), both or
/// neither.
#[inline]
fn change_both(
    step: fn(&AtomicU32, u32) -> Result<u32, CountError>,
    (a, na): (&AtomicU32, u32),
    (b, nb): (&AtomicU32, u32),
) -> Result<(), CountError> {
    let (va, vb) = (step(a, na)?, step(b, nb)?);
    set(a, va);
    set(b, vb);
    Ok(())
}

/// Store a value checked by [`raised`] or [`lowered`].
#[inline]
fn set(counter: &AtomicU32, value: u32) {
    counter.store(value, Ordering::Release);
}

impl FrameMeta {
    /// The block was just handed out by an allocator: one reference (the allocator's
    /// caller's), no mappings, no pins, no owner.
    #[inline]
    pub fn reset_allocated(&self) {
        self.refcount.store(1, Ordering::Release);
        self.mapcount.store(0, Ordering::Release);
        self.pincount.store(0, Ordering::Release);
        self.owner.store(0, Ordering::Release);
    }

    /// The block was just freed (or is being initialised as free): every count zero.
    #[inline]
    pub fn reset_free(&self) {
        self.refcount.store(0, Ordering::Release);
        self.mapcount.store(0, Ordering::Release);
        self.pincount.store(0, Ordering::Release);
        self.owner.store(0, Ordering::Release);
    }

    /// The fresh block becomes a managed block; its allocation reference becomes the
    /// reference of its first user (a mapping, or the shared region that holds it).
    #[inline]
    pub fn make_managed(&self) {
        self.owner.store(OWNER_MANAGED, Ordering::Release);
    }

    /// The fresh block becomes a managed block mapped once: its allocation reference is
    /// that mapping's.
    #[inline]
    pub fn make_managed_mapped(&self) {
        self.mapcount.store(1, Ordering::Release);
        self.owner.store(OWNER_MANAGED, Ordering::Release);
    }

    /// The fresh block becomes the destination of a move: managed and claimed; its
    /// allocation reference is the claim's.
    #[inline]
    pub fn make_managed_claimed(&self) {
        self.owner
            .store(OWNER_MANAGED | OWNER_MIGRATING, Ordering::Release);
    }

    /// `n` more mappings of the block (a new leaf, or a huge leaf split into `n + 1`).
    #[inline]
    pub fn add_mappings(&self, _: &CountLock, n: u32) -> Result<(), CountError> {
        change_both(raised, (&self.mapcount, n), (&self.refcount, n))
    }

    /// A mapping was taken off the reverse map. Its reference stays until the TLB
    /// shootdown that removes its translations has completed, when the flush that owns
    /// it calls [`put_ref`](Self::put_ref).
    #[inline]
    pub fn remove_mapping(&self, _: &CountLock) -> Result<(), CountError> {
        set(&self.mapcount, lowered(&self.mapcount, 1)?);
        Ok(())
    }

    /// A mapping (and its reference) moves from this block to `to` (a move remapped it).
    #[inline]
    pub fn move_mapping_to(&self, _: &CountLock, to: &FrameMeta) -> Result<(), CountError> {
        let (to_maps, to_refs) = (raised(&to.mapcount, 1)?, raised(&to.refcount, 1)?);
        let (maps, refs) = (lowered(&self.mapcount, 1)?, lowered(&self.refcount, 1)?);
        set(&to.mapcount, to_maps);
        set(&to.refcount, to_refs);
        set(&self.mapcount, maps);
        set(&self.refcount, refs);
        Ok(())
    }

    /// A reference that is not a mapping's (a shared region's hold) moves to `to`.
    #[inline]
    pub fn move_ref_to(&self, _: &CountLock, to: &FrameMeta) -> Result<(), CountError> {
        let (to_refs, refs) = (raised(&to.refcount, 1)?, lowered(&self.refcount, 1)?);
        set(&to.refcount, to_refs);
        set(&self.refcount, refs);
        Ok(())
    }

    /// One more reference (a move's claim).
    #[inline]
    pub fn get_ref(&self, _: &CountLock) -> Result<(), CountError> {
        set(&self.refcount, raised(&self.refcount, 1)?);
        Ok(())
    }

    /// Drop one reference. On [`Released::Last`] the owner word is cleared and the caller
    /// must free the block.
    #[inline]
    pub fn put_ref(&self, _: &CountLock) -> Result<Released, CountError> {
        let left = lowered(&self.refcount, 1)?;
        set(&self.refcount, left);
        if left == 0 {
            self.owner.store(0, Ordering::Release);
            Ok(Released::Last)
        } else {
            Ok(Released::Alive)
        }
    }

    /// One more pin (and its reference).
    #[inline]
    pub fn pin(&self, _: &CountLock) -> Result<(), CountError> {
        change_both(raised, (&self.pincount, 1), (&self.refcount, 1))
    }

    /// One pin fewer; its reference is dropped with [`put_ref`](Self::put_ref).
    #[inline]
    pub fn unpin(&self, _: &CountLock) -> Result<(), CountError> {
        set(&self.pincount, lowered(&self.pincount, 1)?);
        Ok(())
    }

    /// Claim the managed, unclaimed block for a move. `false` when it is not managed or
    /// already claimed.
    #[inline]
    pub fn try_claim(&self, _: &CountLock) -> bool {
        let owner = self.owner.load(Ordering::Acquire);
        let free = owner & OWNER_MANAGED != 0 && owner & OWNER_MIGRATING == 0;
        if free {
            self.owner.store(owner | OWNER_MIGRATING, Ordering::Release);
        }
        free
    }

    /// Drop the claim of a move.
    #[inline]
    pub fn unclaim(&self, _: &CountLock) {
        let owner = self.owner.load(Ordering::Acquire);
        self.owner
            .store(owner & !OWNER_MIGRATING, Ordering::Release);
    }

    /// Fusing blocks into one compound block: this head takes over `child`'s references
    /// and mappings, and `child` (about to become a tail) is left with none and no owner.
    /// Refused, changing nothing, on overflow.
    #[inline]
    pub fn absorb(&self, _: &CountLock, child: &FrameMeta) -> Result<(), CountError> {
        change_both(
            raised,
            (&self.mapcount, child.mapcount()),
            (&self.refcount, child.refcount()),
        )?;
        child.reset_free();
        Ok(())
    }

    /// `n` mappings of the block became one (512 leaves replaced by one huge leaf): `n - 1`
    /// mappings and their references go.
    #[inline]
    pub fn merge_mappings(&self, _: &CountLock, n: u32) -> Result<(), CountError> {
        let gone = n.saturating_sub(1);
        change_both(lowered, (&self.mapcount, gone), (&self.refcount, gone))
    }

    /// `n` blocks, each held by one shared region, were fused into this one (which took
    /// their references): the `n` holds become the region's one hold on the compound.
    #[inline]
    pub fn merge_holds(&self, _: &CountLock, n: u32) -> Result<(), CountError> {
        set(
            &self.refcount,
            lowered(&self.refcount, n.saturating_sub(1))?,
        );
        Ok(())
    }

    /// This block, held by a shared region, is about to be split into `n` blocks that the
    /// region each holds: its one hold becomes `n`.
    #[inline]
    pub fn split_hold(&self, _: &CountLock, n: u32) -> Result<(), CountError> {
        set(&self.refcount, raised(&self.refcount, n.saturating_sub(1))?);
        Ok(())
    }

    /// Splitting a compound block: `maps` of this head's mappings and `refs` of its
    /// references (mappings included) go to `child`, a new head that had none; `child`
    /// becomes managed when it gets a reference. Refused, changing nothing, when this
    /// head has fewer.
    pub fn hand_to(
        &self,
        _: &CountLock,
        child: &FrameMeta,
        maps: u32,
        refs: u32,
    ) -> Result<(), CountError> {
        if maps > refs {
            return Err(CountError::Underflow);
        }
        change_both(lowered, (&self.mapcount, maps), (&self.refcount, refs))?;
        child.refcount.store(refs, Ordering::Release);
        child.mapcount.store(maps, Ordering::Release);
        child.pincount.store(0, Ordering::Release);
        child
            .owner
            .store(if refs > 0 { OWNER_MANAGED } else { 0 }, Ordering::Release);
        Ok(())
    }

    /// Whether the block is a managed (user) block.
    #[inline]
    pub fn is_managed(&self) -> bool {
        self.owner() & OWNER_MANAGED != 0
    }

    /// Whether a move has claimed the block.
    #[inline]
    pub fn is_claimed(&self) -> bool {
        self.owner() & OWNER_MIGRATING != 0
    }
}

#[cfg(test)]
mod tests;
