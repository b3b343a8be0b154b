//! Physical frame numbers, page sizes and the orders of the buddy allocator.

use x86_64::{PhysAddr, VirtAddr};

/// Size of the base page (a 4 KiB frame).
pub const PAGE_SIZE: u64 = 4096;
/// Shift from a byte address to a frame number.
pub const PAGE_SHIFT: u32 = 12;
/// Highest buddy order: 2^18 frames = 1 GiB blocks.
pub const MAX_ORDER: u8 = 18;
/// Order of a pageblock (2 MiB), the unit in which movable and unmovable memory is grouped.
pub const PAGEBLOCK_ORDER: u8 = 9;
/// Order of a 2 MiB huge page.
pub const HUGE_2M_ORDER: u8 = 9;
/// Order of a 1 GiB huge page.
pub const HUGE_1G_ORDER: u8 = 18;

/// A physical frame number: physical address >> 12.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pfn(pub u64);

impl Pfn {
    /// The frame containing `pa`.
    #[inline]
    pub const fn containing(pa: PhysAddr) -> Pfn {
        Pfn(pa.as_u64() >> PAGE_SHIFT)
    }

    /// First byte of the frame.
    #[inline]
    pub fn addr(self) -> PhysAddr {
        PhysAddr::new(self.0 << PAGE_SHIFT)
    }

    /// Whether the frame is the first of a naturally aligned block of `order`.
    #[inline]
    pub const fn is_aligned(self, order: u8) -> bool {
        self.0 & ((1u64 << order) - 1) == 0
    }

    /// The frame `n` frames after this one.
    #[inline]
    pub const fn add(self, n: u64) -> Pfn {
        Pfn(self.0 + n)
    }
}

/// The sizes a leaf mapping can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB, mapped by a PTE.
    Size4K,
    /// 2 MiB, mapped by a PMD.
    Size2M,
    /// 1 GiB, mapped by a PUD.
    Size1G,
}

impl PageSize {
    /// All sizes, smallest first.
    pub const ALL: [PageSize; 3] = [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G];

    /// Bytes covered by one leaf of this size.
    #[inline]
    pub const fn bytes(self) -> u64 {
        1u64 << (PAGE_SHIFT + self.order() as u32)
    }

    /// The buddy order of a frame block of this size.
    #[inline]
    pub const fn order(self) -> u8 {
        match self {
            PageSize::Size4K => 0,
            PageSize::Size2M => HUGE_2M_ORDER,
            PageSize::Size1G => HUGE_1G_ORDER,
        }
    }

    /// Page-table level whose entries are leaves of this size (1 = PT, 2 = PD, 3 = PDPT).
    #[inline]
    pub const fn level(self) -> u8 {
        match self {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
            PageSize::Size1G => 3,
        }
    }

    /// The next smaller leaf size (a huge leaf splits into 512 of them).
    #[inline]
    pub const fn smaller(self) -> Option<PageSize> {
        match self {
            PageSize::Size4K => None,
            PageSize::Size2M => Some(PageSize::Size4K),
            PageSize::Size1G => Some(PageSize::Size2M),
        }
    }

    /// The leaf size mapped at page-table `level`, if that level can hold leaves.
    #[inline]
    pub const fn at_level(level: u8) -> Option<PageSize> {
        match level {
            1 => Some(PageSize::Size4K),
            2 => Some(PageSize::Size2M),
            3 => Some(PageSize::Size1G),
            _ => None,
        }
    }

    /// Whether `va` is aligned to this size.
    #[inline]
    pub fn is_aligned_va(self, va: VirtAddr) -> bool {
        va.as_u64().is_multiple_of(self.bytes())
    }

    /// Whether `pa` is aligned to this size.
    #[inline]
    pub fn is_aligned_pa(self, pa: PhysAddr) -> bool {
        pa.as_u64().is_multiple_of(self.bytes())
    }
}
