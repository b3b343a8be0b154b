//! One page-table entry: the x86_64 bit layout, and the size-independent leaf flags.
//!
//! The hardware layout differs between a 4 KiB PTE and a huge (2 MiB / 1 GiB) leaf in one
//! place that matters: the PAT bit is bit 7 in a PTE, but bit 12 in a huge leaf, where bit 7
//! is `HUGE_PAGE` and bit 12 would otherwise be the lowest address bit. The API therefore
//! speaks *leaf flags*: a [`PageTableFlags`] value without `HUGE_PAGE`, in which the PAT bit
//! is always [`LEAF_PAT`] (bit 12), whatever the leaf's size. [`Entry::leaf`] and
//! [`Entry::leaf_flags`] translate between the two, so splitting a huge leaf into smaller
//! ones (or merging them later) keeps the memory type instead of corrupting the address.

use crate::base::addr::PageSize;
use x86_64::structures::paging::PageTableFlags;
use x86_64::PhysAddr;

/// Bits 12..=51 of an entry: the physical address of a table or of a 4 KiB frame.
pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// The PAT bit in leaf flags (bit 12); stored as bit 7 in a 4 KiB PTE, as bit 12 in a
/// huge leaf.
pub const LEAF_PAT: PageTableFlags = PageTableFlags::from_bits_retain(1 << 12);

/// Every bit a caller may set in leaf flags: bits 0-6, 8-12 (with [`LEAF_PAT`]) and
/// 52-63 (software bits, protection key, `NO_EXECUTE`). Bit 7 (`HUGE_PAGE`) is the
/// paging code's business and bits 13-51 are address bits.
pub const LEAF_FLAGS_MASK: u64 = 0xFFF0_0000_0000_1F7F;

/// PAT bit of a 4 KiB PTE (the same bit as `HUGE_PAGE` in the levels above).
const PTE_PAT: u64 = 1 << 7;
/// PAT bit of a huge leaf.
const HUGE_PAT: u64 = 1 << 12;

/// Whether `flags` only holds bits allowed in leaf flags (see [`LEAF_FLAGS_MASK`]).
#[inline]
pub const fn valid_leaf_flags(flags: PageTableFlags) -> bool {
    flags.bits() & !LEAF_FLAGS_MASK == 0
}

/// A page-table entry as a plain value, read from or to be written to a table word.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Entry(u64);

impl Entry {
    /// The entry of an unused slot.
    pub const UNUSED: Entry = Entry(0);

    /// The entry whose raw bits are `raw`.
    #[inline]
    pub const fn from_raw(raw: u64) -> Entry {
        Entry(raw)
    }

    /// The raw 64 bits.
    #[inline]
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// A leaf of `size` mapping the frame at `pa` (aligned to `size`) with `flags`
    /// (leaf flags, see the module doc; `PRESENT` is added, `HUGE_PAGE` set for huge
    /// sizes). Bits of `flags` outside [`LEAF_FLAGS_MASK`] are ignored.
    pub const fn leaf(pa: PhysAddr, size: PageSize, flags: PageTableFlags) -> Entry {
        let bits = flags.bits() & LEAF_FLAGS_MASK;
        let pat = bits & LEAF_PAT.bits() != 0;
        let mut raw = (pa.as_u64() & ADDR_MASK & !(size.bytes() - 1))
            | (bits & !LEAF_PAT.bits())
            | PageTableFlags::PRESENT.bits();
        match size {
            PageSize::Size4K => {
                if pat {
                    raw |= PTE_PAT;
                }
            }
            PageSize::Size2M | PageSize::Size1G => {
                raw |= PageTableFlags::HUGE_PAGE.bits();
                if pat {
                    raw |= HUGE_PAT;
                }
            }
        }
        Entry(raw)
    }

    /// A non-leaf entry pointing at the table at `table`: `PRESENT | WRITABLE`, plus
    /// `USER_ACCESSIBLE` when `user`. Permissions are decided by the leaves.
    #[inline]
    pub const fn table(table: PhysAddr, user: bool) -> Entry {
        let mut raw = (table.as_u64() & ADDR_MASK)
            | PageTableFlags::PRESENT.bits()
            | PageTableFlags::WRITABLE.bits();
        if user {
            raw |= PageTableFlags::USER_ACCESSIBLE.bits();
        }
        Entry(raw)
    }

    /// Whether the slot holds nothing at all (all bits zero).
    #[inline]
    pub const fn is_unused(self) -> bool {
        self.0 == 0
    }

    /// Whether the `PRESENT` bit is set.
    #[inline]
    pub const fn is_present(self) -> bool {
        self.0 & PageTableFlags::PRESENT.bits() != 0
    }

    /// Whether the `HUGE_PAGE` bit is set (meaningful at levels 2 and 3 only; at level 1
    /// the same bit is the PTE's PAT bit).
    #[inline]
    pub const fn is_huge(self) -> bool {
        self.0 & PageTableFlags::HUGE_PAGE.bits() != 0
    }

    /// The size of the leaf this entry is at page-table `level`, or `None` when it is not
    /// present or points at a next-level table. Level 4 entries are never leaves.
    #[inline]
    pub const fn leaf_size(self, level: u8) -> Option<PageSize> {
        if !self.is_present() {
            return None;
        }
        match level {
            1 => Some(PageSize::Size4K),
            2 if self.is_huge() => Some(PageSize::Size2M),
            3 if self.is_huge() => Some(PageSize::Size1G),
            _ => None,
        }
    }

    /// The raw flag bits (everything outside [`ADDR_MASK`]), as stored.
    #[inline]
    pub const fn raw_flags(self) -> PageTableFlags {
        PageTableFlags::from_bits_retain(self.0 & !ADDR_MASK)
    }

    /// The address of the next-level table this non-leaf entry points at.
    #[inline]
    pub const fn table_addr(self) -> PhysAddr {
        PhysAddr::new_truncate(self.0 & ADDR_MASK)
    }

    /// The first byte of the frame this leaf of `size` maps (for huge leaves the bits
    /// below the size, including the PAT bit 12, are not address bits).
    #[inline]
    pub const fn leaf_addr(self, size: PageSize) -> PhysAddr {
        PhysAddr::new_truncate(self.0 & ADDR_MASK & !(size.bytes() - 1))
    }

    /// The leaf flags of this leaf of `size`: without `HUGE_PAGE`, PAT as [`LEAF_PAT`].
    pub const fn leaf_flags(self, size: PageSize) -> PageTableFlags {
        let low_and_high = self.0 & !ADDR_MASK;
        let bits = match size {
            PageSize::Size4K => {
                let pat = if low_and_high & PTE_PAT != 0 {
                    LEAF_PAT.bits()
                } else {
                    0
                };
                (low_and_high & !PTE_PAT) | pat
            }
            PageSize::Size2M | PageSize::Size1G => {
                (low_and_high & !PageTableFlags::HUGE_PAGE.bits()) | (self.0 & HUGE_PAT)
            }
        };
        PageTableFlags::from_bits_retain(bits)
    }
}

impl core::fmt::Debug for Entry {
    #[inline]
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Entry({:#018x})", self.0)
    }
}

#[cfg(test)]
mod tests;
