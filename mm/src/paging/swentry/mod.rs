//! Software entries: non-present page-table entries with bit 9 set. The MMU faults on
//! any access through them; the paging code keeps them (a table holding one is not
//! empty), reports them ([`Cursor`](super::Cursor), [`Removed`](super::Removed)) and
//! refuses to change a range they overlap, so only the layer that installed one removes
//! it. [`SoftwareEntry::decode`] tells the kinds apart by bits 10-11:
//!
//! - 1, 2, 3: a *migration entry* ([`MigrationEntry`]), standing for a leaf whose frame
//!   is being moved;
//! - 0: a *replacement in progress*: the slot of a leaf being split or of a table being
//!   collapsed, between [`begin_split`](super::PageTable::begin_split) /
//!   [`begin_collapse`](super::PageTable::begin_collapse) and their `finish_*`.
//!
//! # Migration entry encoding
//!
//! A migration entry is the leaf it replaces with the present bit cleared and three
//! software bits set (bits 9-11 are ignored by the MMU and never set in user leaves):
//!
//! ```text
//!  63 | 62..52      | 51..12 (2M: 51..21, 1G: 51..30)  | 11..10 | 9 | 8..1        | 0
//!  NX | sw / pkey   | address of the source frame       | size   | 1 | leaf flags  | 0
//! ```
//!
//! - bit 0 (present) is 0, so the MMU faults on any access;
//! - bit 9 marks a migration entry;
//! - bits 10-11 encode the size: 1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB (it must agree with
//!   the level of the slot);
//! - every other bit is the original leaf's: the address field names the source frame
//!   (the exact 4 KiB frame the leaf mapped), bit 7 is still `HUGE_PAGE` (or the PTE's
//!   PAT bit), bit 12 still the huge leaf's PAT bit, and writable, user, accessed, dirty,
//!   the cache bits and NX are kept, so the new leaf gets the same flags.

use crate::base::addr::{PageSize, Pfn};
use crate::paging::Entry;
use x86_64::structures::paging::PageTableFlags;
use x86_64::PhysAddr;

#[cfg(test)]
mod tests;

/// Bit 9: the entry is a software entry (a migration entry when bits 10-11 are not 0).
const MIGRATION_BIT: u64 = 1 << 9;
/// Bits 10-11: the size code (0: a replacement in progress).
const SIZE_SHIFT: u32 = 10;
/// Bits 9-11: the software bits a software entry uses.
const SOFT_BITS: u64 = 0b111 << 9;

/// The non-present entry that stands in the slot of `entry` (a leaf or a table pointer)
/// while it is being replaced: `entry` with the present bit and bits 10-11 cleared and
/// bit 9 set.
#[inline]
pub(crate) const fn replacing(entry: Entry) -> Entry {
    Entry::from_raw((entry.raw() & !(SOFT_BITS | PageTableFlags::PRESENT.bits())) | MIGRATION_BIT)
}

/// What a non-present, used slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SoftwareEntry {
    /// A migration entry of the slot's size.
    Migration(MigrationEntry),
    /// A leaf being split or a table being collapsed (see the module doc).
    Replacing(Entry),
    /// A non-present entry with no valid software encoding (bit 9 clear, or a migration
    /// size that does not match the slot's level).
    Unknown(Entry),
}

impl SoftwareEntry {
    /// The software entry `entry` read at page-table `level`; `None` if it is present or
    /// unused.
    pub fn decode(entry: Entry, level: u8) -> Option<SoftwareEntry> {
        if entry.is_present() || entry.is_unused() {
            return None;
        }
        let raw = entry.raw();
        if raw & MIGRATION_BIT == 0 {
            return Some(SoftwareEntry::Unknown(entry));
        }
        if (raw >> SIZE_SHIFT) & 0b11 == 0 {
            return Some(SoftwareEntry::Replacing(entry));
        }
        Some(match MigrationEntry::decode(entry, level) {
            Some(mig) => SoftwareEntry::Migration(mig),
            None => SoftwareEntry::Unknown(entry),
        })
    }

    /// The raw entry.
    #[inline]
    pub fn entry(self) -> Entry {
        match self {
            SoftwareEntry::Migration(mig) => mig.entry(),
            SoftwareEntry::Replacing(entry) | SoftwareEntry::Unknown(entry) => entry,
        }
    }
}

#[inline]
const fn size_code(size: PageSize) -> u64 {
    match size {
        PageSize::Size4K => 1,
        PageSize::Size2M => 2,
        PageSize::Size1G => 3,
    }
}

/// A non-present entry standing for a leaf under migration (encoding in the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MigrationEntry(Entry);

impl MigrationEntry {
    /// The migration entry for the present leaf `leaf` of `size`; `None` if the leaf is
    /// not present or uses the software bits 9-11.
    #[inline]
    pub fn from_leaf(leaf: Entry, size: PageSize) -> Option<MigrationEntry> {
        if !leaf.is_present() || leaf.raw() & SOFT_BITS != 0 {
            return None;
        }
        let raw = (leaf.raw() & !PageTableFlags::PRESENT.bits())
            | MIGRATION_BIT
            | (size_code(size) << SIZE_SHIFT);
        Some(MigrationEntry(Entry::from_raw(raw)))
    }

    /// The migration entry `entry` read at page-table `level`, if it is one.
    #[inline]
    pub fn decode(entry: Entry, level: u8) -> Option<MigrationEntry> {
        let raw = entry.raw();
        if entry.is_present() || raw & MIGRATION_BIT == 0 {
            return None;
        }
        let size = match (raw >> SIZE_SHIFT) & 0b11 {
            1 => PageSize::Size4K,
            2 => PageSize::Size2M,
            3 => PageSize::Size1G,
            _ => return None,
        };
        (size.level() == level).then_some(MigrationEntry(entry))
    }

    /// The raw entry to store.
    #[inline]
    pub fn entry(self) -> Entry {
        self.0
    }

    /// The size of the leaf it stands for.
    #[inline]
    pub fn size(self) -> PageSize {
        match (self.0.raw() >> SIZE_SHIFT) & 0b11 {
            1 => PageSize::Size4K,
            2 => PageSize::Size2M,
            _ => PageSize::Size1G,
        }
    }

    /// The leaf it replaced, with the accessed/dirty bits it had then.
    #[inline]
    pub fn original(self) -> Entry {
        Entry::from_raw((self.0.raw() & !SOFT_BITS) | PageTableFlags::PRESENT.bits())
    }

    /// The first byte of the frame the leaf mapped.
    #[inline]
    pub fn source(self) -> PhysAddr {
        self.original().leaf_addr(self.size())
    }

    /// The first frame the leaf mapped.
    #[inline]
    pub fn source_pfn(self) -> Pfn {
        Pfn::containing(self.source())
    }

    /// The leaf flags it carries (see [`crate::paging::entry`]).
    #[inline]
    pub fn flags(self) -> PageTableFlags {
        self.original().leaf_flags(self.size())
    }

    /// A leaf of the same size and flags mapping the frame at `pa`.
    #[inline]
    pub fn retarget(self, pa: PhysAddr) -> Entry {
        Entry::leaf(pa, self.size(), self.flags())
    }
}
