//! Typed errors of the page-table operations. Every error leaves the tables, the table
//! allocator and the flush sink exactly as they were before the call.

use core::fmt;

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
}

/// Why [`PageTable::split`](super::PageTable::split) refused.
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
    /// The table allocator ran out of frames.
    OutOfTables,
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
    /// A huge leaf only partly covered by the range had to be split, and the table
    /// allocator ran out of frames.
    OutOfTables,
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
            SplitError::OutOfTables => "out of page-table frames",
        })
    }
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RangeError::NonCanonical => "range not canonical",
            RangeError::Unaligned => "range not 4 KiB aligned",
            RangeError::InvalidRange => "range start after its end",
            RangeError::InvalidFlags => "invalid leaf flags",
            RangeError::OutOfTables => "out of page-table frames",
        })
    }
}

impl core::error::Error for MapError {}
impl core::error::Error for UnmapError {}
impl core::error::Error for ProtectError {}
impl core::error::Error for SplitError {}
impl core::error::Error for RangeError {}
