//! The error of the move engine and of migration, exchange and the other moves built on
//! it: why a block did not move.

use crate::frame::refs::CountError;
use core::fmt;

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
    /// The page tables disagree with the reverse map; the block was put back (or, when
    /// found at remap, the mapping that disagreed was dropped and the rest moved).
    Inconsistent,
    /// The block was freed, merged or reallocated between the caller's look and the
    /// claim under the lock.
    Changed,
    /// The same block appears twice in one unit (an exchange of a block with itself).
    SameBlock,
    /// The two blocks of an exchange are of different sizes.
    SizeMismatch,
    /// A frame counter would overflow.
    Count(CountError),
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
            MigrateError::Changed => "block changed before it could be claimed",
            MigrateError::SameBlock => "the same block twice",
            MigrateError::SizeMismatch => "blocks of different sizes",
            MigrateError::Count(e) => return write!(f, "{e}"),
        })
    }
}

impl core::error::Error for MigrateError {}
