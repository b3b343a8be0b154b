//! Shared anonymous regions: memory that several VMAs (in one or several address spaces)
//! map, so that one frame has several mappings.
//!
//! A [`SharedRegion`] owns the frames of its pages, keyed by the index of their first
//! 4 KiB page in the region. A frame is allocated by the first fault on any mapping of
//! its pages, at the largest size that mapping's policy, alignment and the allocator
//! allow, and every later fault maps that same frame (whole if it can, otherwise the
//! 4 KiB piece it needs). The region holds one reference on each frame (see
//! [`crate::mapping::rmap`]); `Mm::release_region` (in the address-space layer) drops them.

use crate::base::addr::{PageSize, Pfn, PAGE_SIZE};
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use spin::Mutex;

/// Why [`SharedRegion::new`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegionError {
    /// A length of zero.
    ZeroLength,
    /// A length not 4 KiB aligned.
    Unaligned,
}

impl fmt::Display for RegionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RegionError::ZeroLength => "zero length",
            RegionError::Unaligned => "not 4 KiB aligned",
        })
    }
}

impl core::error::Error for RegionError {}

/// One frame of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RegionFrame {
    /// Head of the block.
    pub head: Pfn,
    /// Size of the block.
    pub size: PageSize,
}

impl RegionFrame {
    /// Number of 4 KiB pages.
    pub fn pages(&self) -> u64 {
        self.size.bytes() / PAGE_SIZE
    }
}

/// A shared anonymous region (see the module doc). Lock order: an address space's lock,
/// then a region's lock, then the reverse-map lock.
#[derive(Debug)]
pub struct SharedRegion {
    len: u64,
    pub(crate) frames: Mutex<BTreeMap<u64, RegionFrame>>,
}

impl SharedRegion {
    /// A region of `len` bytes (4 KiB aligned, non-zero) with no frame yet.
    pub fn new(len: u64) -> Result<Arc<SharedRegion>, RegionError> {
        if len == 0 {
            return Err(RegionError::ZeroLength);
        }
        if !len.is_multiple_of(PAGE_SIZE) {
            return Err(RegionError::Unaligned);
        }
        Ok(Arc::new(SharedRegion {
            len,
            frames: Mutex::new(BTreeMap::new()),
        }))
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the region is empty (never: regions have a non-zero length).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The 4 KiB frame holding the region's byte `offset`, and the block it belongs to.
    pub fn frame_at(&self, offset: u64) -> Option<(Pfn, RegionFrame)> {
        let page = offset / PAGE_SIZE;
        covering(&self.frames.lock(), page).map(|(key, f)| (f.head.add(page - key), f))
    }

    /// Every frame, as (offset in bytes, frame), in order.
    pub fn frames(&self) -> Vec<(u64, RegionFrame)> {
        self.frames
            .lock()
            .iter()
            .map(|(&k, &f)| (k * PAGE_SIZE, f))
            .collect()
    }
}

/// The frame covering page `page` of a region's frame map, with its key.
pub(crate) fn covering(
    frames: &BTreeMap<u64, RegionFrame>,
    page: u64,
) -> Option<(u64, RegionFrame)> {
    frames
        .range(..=page)
        .next_back()
        .filter(|(&k, f)| page < k + f.pages())
        .map(|(&k, &f)| (k, f))
}

/// Whether any frame of a region's frame map overlaps pages `[page, page + n)`.
pub(crate) fn overlaps(frames: &BTreeMap<u64, RegionFrame>, page: u64, n: u64) -> bool {
    covering(frames, page).is_some() || frames.range(page..page + n).next().is_some()
}

#[cfg(test)]
mod tests;
