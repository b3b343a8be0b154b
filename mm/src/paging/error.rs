//! Typed errors of the page-table operations. Every error leaves the tables, the table
//! allocator and the flush sink exactly as they were before the call.

use super::Entry;
use crate::base::addr::PageSize;
use core::fmt;
use x86_64::VirtAddr;

/// Why [`PageTable::map`](super::PageTable::map) refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapError {
    /// The virtual address is not canonical.
    NonCanonical,
    /// The virtual or physical address is not aligned to the page size.
    Unaligned,
    /// The flags hold bits outside [`LEAF_FLAGS_MASK`](super::LEAF_FLAGS_MASK).
    InvalidFlags,
    /// Something is mapped in the range already: a leaf there or a huge leaf above it,
    /// or a table with mappings below it.
    AlreadyMapped,
    /// The table allocator ran out of frames.
    OutOfTables,
}

/// Why [`PageTable::unmap`](super::PageTable::unmap) refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnmapError {
    /// The virtual address is not canonical.
    NonCanonical,
    /// The virtual address is not aligned to the page size.
    Unaligned,
    /// Nothing is mapped at the address.
    NotMapped,
    /// The mapping at the address has another size.
    SizeMismatch,
    /// A software entry (see [`SoftwareEntry`](super::SoftwareEntry)) of `size` at `va`
    /// covers the address: its owner must remove it first (wait and retry).
    Busy {
        /// First address of the software entry.
        va: VirtAddr,
        /// The span of its slot.
        size: PageSize,
    },
}

/// Why [`PageTable::protect`](super::PageTable::protect) refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtectError {
    /// The virtual address is not canonical.
    NonCanonical,
    /// The virtual address is not aligned to the page size.
    Unaligned,
    /// The flags hold bits outside [`LEAF_FLAGS_MASK`](super::LEAF_FLAGS_MASK).
    InvalidFlags,
    /// Nothing is mapped at the address.
    NotMapped,
    /// The mapping at the address has another size.
    SizeMismatch,
    /// A software entry (see [`SoftwareEntry`](super::SoftwareEntry)) of `size` at `va`
    /// covers the address: its owner must remove it first (wait and retry).
    Busy {
        /// First address of the software entry.
        va: VirtAddr,
        /// The span of its slot.
        size: PageSize,
    },
}

/// Why [`PageTable::begin_split`](super::PageTable::begin_split) refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SplitError {
    /// The virtual address is not canonical.
    NonCanonical,
    /// The virtual address is not aligned to the page size.
    Unaligned,
    /// A 4 KiB leaf has no smaller size to split into.
    NotHuge,
    /// Nothing is mapped at the address.
    NotMapped,
    /// The mapping at the address has another size.
    SizeMismatch,
    /// A software entry (see [`SoftwareEntry`](super::SoftwareEntry)) of `size` at `va`
    /// covers the address: its owner must remove it first (wait and retry).
    Busy {
        /// First address of the software entry.
        va: VirtAddr,
        /// The span of its slot.
        size: PageSize,
    },
    /// The table allocator ran out of frames.
    OutOfTables,
}

/// Why [`PageTable::begin_collapse`](super::PageTable::begin_collapse) refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CollapseError {
    /// The virtual address is not canonical.
    NonCanonical,
    /// The virtual address is not aligned to the leaf size.
    Unaligned,
    /// A 4 KiB leaf replaces no table.
    NotHuge,
    /// No table is linked at the address.
    NotMapped,
    /// The address is mapped by a leaf of this size or larger already.
    AlreadyLeaf,
    /// A software entry (see [`SoftwareEntry`](super::SoftwareEntry)) of `size` at `va`
    /// covers the address: its owner must remove it first (wait and retry).
    Busy {
        /// First address of the software entry.
        va: VirtAddr,
        /// The span of its slot.
        size: PageSize,
    },
    /// The entry for `va` in the table is unused: there is nothing to collapse there.
    Hole {
        /// First address of the unused entry.
        va: VirtAddr,
    },
    /// The entry for `va` in the table points at a further table, not at a leaf.
    NotLeaf {
        /// First address of the entry.
        va: VirtAddr,
    },
    /// The first leaf's frame is not aligned to the leaf size.
    Misaligned,
    /// The leaf at `va` does not map the frame that follows its predecessor's.
    NotContiguous {
        /// First address of the leaf.
        va: VirtAddr,
    },
    /// The leaf at `va` has other flags than the first leaf (accessed and dirty aside).
    FlagsDiffer {
        /// First address of the leaf.
        va: VirtAddr,
    },
}

/// Why [`PageTable::finish_split`](super::PageTable::finish_split) or
/// [`PageTable::finish_collapse`](super::PageTable::finish_collapse) did not install the
/// replacement: nothing changed, and the token comes back.
#[derive(Debug)]
pub struct Unfinished<T> {
    /// The token, still to be finished.
    pub token: T,
    /// What the token's slot holds in this page table instead of the non-present step
    /// its `begin_*` left; `None` when the walk does not reach the slot (the token belongs
    /// to another page table).
    pub found: Option<Entry>,
}

/// Why a range operation ([`PageTable::unmap_range`](super::PageTable::unmap_range),
/// [`PageTable::protect_range`](super::PageTable::protect_range)) refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RangeError {
    /// The range contains non-canonical addresses (it crosses the hole between the
    /// halves, or an end is in it).
    NonCanonical,
    /// An end of the range is not 4 KiB aligned.
    Unaligned,
    /// The start lies after the end.
    InvalidRange,
    /// The flags hold bits outside [`LEAF_FLAGS_MASK`](super::LEAF_FLAGS_MASK).
    InvalidFlags,
    /// The huge leaf of `size` at `va` lies only partly inside the range: split it first
    /// ([`PageTable::begin_split`](super::PageTable::begin_split)).
    Straddles {
        /// First address of the leaf.
        va: VirtAddr,
        /// Its size.
        size: PageSize,
    },
    /// A software entry (see [`SoftwareEntry`](super::SoftwareEntry)) of `size` at `va`
    /// overlaps the range: its owner must remove it first (wait and retry).
    Busy {
        /// First address of the software entry.
        va: VirtAddr,
        /// The span of its slot.
        size: PageSize,
    },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MapError::NonCanonical => "non-canonical virtual address",
            MapError::Unaligned => "address not aligned to the page size",
            MapError::InvalidFlags => "invalid leaf flags",
            MapError::AlreadyMapped => "range already mapped",
            MapError::OutOfTables => "out of page-table frames",
        })
    }
}

impl fmt::Display for UnmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnmapError::NonCanonical => "non-canonical virtual address",
            UnmapError::Unaligned => "address not aligned to the page size",
            UnmapError::NotMapped => "not mapped",
            UnmapError::SizeMismatch => "mapped with another page size",
            UnmapError::Busy { .. } => "a software entry covers the address",
        })
    }
}

impl fmt::Display for ProtectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProtectError::NonCanonical => "non-canonical virtual address",
            ProtectError::Unaligned => "address not aligned to the page size",
            ProtectError::InvalidFlags => "invalid leaf flags",
            ProtectError::NotMapped => "not mapped",
            ProtectError::SizeMismatch => "mapped with another page size",
            ProtectError::Busy { .. } => "a software entry covers the address",
        })
    }
}

impl fmt::Display for SplitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SplitError::NonCanonical => "non-canonical virtual address",
            SplitError::Unaligned => "address not aligned to the page size",
            SplitError::NotHuge => "a 4 KiB leaf cannot be split",
            SplitError::NotMapped => "not mapped",
            SplitError::SizeMismatch => "mapped with another page size",
            SplitError::Busy { .. } => "a software entry covers the address",
            SplitError::OutOfTables => "out of page-table frames",
        })
    }
}

impl fmt::Display for CollapseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CollapseError::NonCanonical => f.write_str("non-canonical virtual address"),
            CollapseError::Unaligned => f.write_str("address not aligned to the leaf size"),
            CollapseError::NotHuge => f.write_str("a 4 KiB leaf replaces no table"),
            CollapseError::NotMapped => f.write_str("no table at the address"),
            CollapseError::AlreadyLeaf => f.write_str("already mapped by a huge leaf"),
            CollapseError::Busy { va, .. } => write!(f, "software entry at {:#x}", va),
            CollapseError::Hole { va } => write!(f, "nothing mapped at {:#x}", va),
            CollapseError::NotLeaf { va } => write!(f, "a table, not a leaf, at {:#x}", va),
            CollapseError::Misaligned => f.write_str("first frame not aligned to the leaf size"),
            CollapseError::NotContiguous { va } => write!(f, "frame at {:#x} not contiguous", va),
            CollapseError::FlagsDiffer { va } => write!(f, "other flags at {:#x}", va),
        }
    }
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RangeError::NonCanonical => f.write_str("range not canonical"),
            RangeError::Unaligned => f.write_str("range not 4 KiB aligned"),
            RangeError::InvalidRange => f.write_str("range start after its end"),
            RangeError::InvalidFlags => f.write_str("invalid leaf flags"),
            RangeError::Straddles { va, size } => {
                write!(f, "{size:?} leaf at {:#x} straddles the range", va)
            }
            RangeError::Busy { va, size } => {
                write!(f, "{size:?} software entry at {:#x} in the range", va)
            }
        }
    }
}

impl core::error::Error for MapError {}
impl core::error::Error for UnmapError {}
impl core::error::Error for ProtectError {}
impl core::error::Error for SplitError {}
impl core::error::Error for CollapseError {}
impl core::error::Error for RangeError {}
