//! Virtual memory areas: the anonymous regions of an address space's user half, kept
//! sorted by start address in a `BTreeMap`, and the checks every user range goes through.
//!
//! A [`Vma`] is `[start, end)`, 4 KiB aligned and non-empty, with [`VmaFlags`]: the
//! huge-page policy, whether its frames may move, whether it is writable, an optional
//! preferred NUMA node, and an optional [`SharedBacking`] (a window into a
//! [`SharedRegion`] that other address spaces may map too). VMAs never overlap. Unmapping
//! or protecting part of a VMA splits it; adjacent VMAs are not merged.

use crate::base::addr::PAGE_SIZE;

use crate::frame::node::NodeId;
use crate::mapping::anchor::Anchor;
use crate::mapping::region::SharedRegion;
use crate::paging::{LOWER_HALF_END, UPPER_HALF_START};
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

/// When faults may map huge pages in a VMA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HugePolicy {
    /// Only 4 KiB pages.
    Never,
    /// 1 GiB, else 2 MiB, else 4 KiB, whichever fits the VMA and the allocator at fault
    /// time.
    Always,
    /// 4 KiB at fault time; huge pages when asked for explicitly
    /// ([`Mm::populate`](crate::aspace::Mm::populate), and later promotion/collapse).
    OnRequest,
}

/// Whether the frames of a VMA may be moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mobility {
    /// Allocated as movable memory: migration and exchange may move them.
    Movable,
    /// Allocated as unmovable memory and flagged `PINNED`: never moved.
    Pinned,
}

/// A window into a shared anonymous region: the VMA's first byte is the region's byte
/// `offset`.
#[derive(Clone, Debug)]
pub struct SharedBacking {
    /// The region.
    pub region: Arc<SharedRegion>,
    /// Offset of the VMA's start in the region (4 KiB aligned).
    pub offset: u64,
}

/// The attributes of a VMA.
#[derive(Clone, Debug)]
pub struct VmaFlags {
    /// Huge-page policy.
    pub huge: HugePolicy,
    /// Movable or pinned frames.
    pub mobility: Mobility,
    /// Whether user code may write.
    pub writable: bool,
    /// Backing shared with other mappings of the same region, or `None` for private
    /// anonymous memory.
    pub shared: Option<SharedBacking>,
    /// Node to allocate frames on first (falling back to any node).
    pub node: Option<NodeId>,
}

impl VmaFlags {
    /// Private, movable memory with the given huge-page policy and write permission.
    pub fn private(huge: HugePolicy, writable: bool) -> VmaFlags {
        VmaFlags {
            huge,
            mobility: Mobility::Movable,
            writable,
            shared: None,
            node: None,
        }
    }

    /// The same flags with the shared backing moved `delta` bytes further.
    fn advanced(&self, delta: u64) -> VmaFlags {
        let mut flags = self.clone();
        if let Some(shared) = &mut flags.shared {
            shared.offset += delta;
        }
        flags
    }
}

/// One anonymous region `[start, end)` of an address space.
#[derive(Clone, Debug)]
pub struct Vma {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Attributes.
    pub flags: VmaFlags,
    /// Where its pages belong, once contiguity generation anchored it.
    pub anchor: Option<Anchor>,
}

impl Vma {
    /// Whether `va` lies inside.
    pub fn contains(&self, va: u64) -> bool {
        self.start <= va && va < self.end
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the VMA is empty (never true for a VMA in a set).
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Offset in the shared region of the byte at `va` (inside the VMA), if shared.
    pub fn region_offset(&self, va: u64) -> Option<u64> {
        self.flags
            .shared
            .as_ref()
            .map(|s| s.offset + (va - self.start))
    }
}

/// Why a VMA-level check or change refused; the address-space layer turns each into the
/// [`SpaceError`](crate::aspace::SpaceError) of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VmaError {
    /// A length of zero.
    ZeroLength,
    /// An address, length or offset not 4 KiB aligned.
    Unaligned,
    /// The range is not canonical (it reaches into the hole between the halves or wraps).
    NonCanonical,
    /// The range lies in the kernel half.
    KernelHalf,
    /// The range overlaps an existing VMA.
    Overlap,
}

impl fmt::Display for VmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmaError::ZeroLength => "zero length",
            VmaError::Unaligned => "not 4 KiB aligned",
            VmaError::NonCanonical => "non-canonical range",
            VmaError::KernelHalf => "range in the kernel half",
            VmaError::Overlap => "overlaps an existing VMA",
        })
    }
}

impl core::error::Error for VmaError {}

/// Check a user range given as start and length: non-empty, 4 KiB aligned, canonical
/// and entirely in the lower (user) half. Returns `[start, end)`.
pub fn check_user_range(start: u64, len: u64) -> Result<(u64, u64), VmaError> {
    if len == 0 {
        return Err(VmaError::ZeroLength);
    }
    if !start.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
        return Err(VmaError::Unaligned);
    }
    check_user_addr(start)?;
    match start.checked_add(len) {
        Some(end) if end <= LOWER_HALF_END => Ok((start, end)),
        _ => Err(VmaError::NonCanonical),
    }
}

/// Check that `va` is a canonical user-half address.
pub fn check_user_addr(va: u64) -> Result<(), VmaError> {
    if va >= UPPER_HALF_START {
        Err(VmaError::KernelHalf)
    } else if va >= LOWER_HALF_END {
        Err(VmaError::NonCanonical)
    } else {
        Ok(())
    }
}

/// The VMAs of one address space, sorted and non-overlapping.
#[derive(Default, Debug)]
pub struct VmaSet {
    map: BTreeMap<u64, Vma>,
}

impl VmaSet {
    /// No VMA.
    pub const fn new() -> VmaSet {
        VmaSet {
            map: BTreeMap::new(),
        }
    }

    /// Number of VMAs.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there is no VMA.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The VMAs in address order.
    pub fn iter(&self) -> impl Iterator<Item = &Vma> {
        self.map.values()
    }

    /// The VMA containing `va`.
    pub fn find(&self, va: u64) -> Option<&Vma> {
        self.map
            .range(..=va)
            .next_back()
            .map(|(_, v)| v)
            .filter(|v| v.contains(va))
    }

    /// The VMAs overlapping `[start, end)`, in order.
    pub fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = &Vma> {
        let first = self
            .map
            .range(..start)
            .next_back()
            .filter(|(_, v)| v.end > start)
            .map(|(_, v)| v);
        first
            .into_iter()
            .chain(self.map.range(start..end).map(|(_, v)| v))
    }

    /// Whether `[start, end)` is entirely covered by VMAs (no gap).
    pub fn covers(&self, start: u64, end: u64) -> bool {
        let mut at = start;
        for v in self.overlapping(start, end) {
            if v.start > at {
                return false;
            }
            at = v.end;
            if at >= end {
                return true;
            }
        }
        at >= end
    }

    /// Add `vma` (non-empty, checked range); refused if it overlaps a VMA.
    pub fn insert(&mut self, vma: Vma) -> Result<(), VmaError> {
        if vma.is_empty() {
            return Err(VmaError::ZeroLength);
        }
        if self.overlapping(vma.start, vma.end).next().is_some() {
            return Err(VmaError::Overlap);
        }
        self.map.insert(vma.start, vma);
        Ok(())
    }

    /// Make `at` a VMA boundary: split the VMA strictly containing it in two.
    fn split_at(&mut self, at: u64) {
        let Some(v) = self.map.range_mut(..at).next_back().map(|(_, v)| v) else {
            return;
        };
        if v.end <= at {
            return;
        }
        let right = Vma {
            start: at,
            end: v.end,
            flags: v.flags.advanced(at - v.start),
            anchor: v.anchor.clone(),
        };
        v.end = at;
        self.map.insert(at, right);
    }

    /// Remove `[start, end)` from the set, splitting the VMAs at its ends; returns the
    /// removed pieces in order.
    pub fn remove_range(&mut self, start: u64, end: u64) -> Vec<Vma> {
        self.split_at(start);
        self.split_at(end);
        let keys: Vec<u64> = self.map.range(start..end).map(|(&k, _)| k).collect();
        keys.into_iter()
            .filter_map(|k| self.map.remove(&k))
            .collect()
    }

    /// Set the write permission of `[start, end)`, splitting the VMAs whose permission
    /// changes at the range's ends. Gaps are skipped.
    pub fn set_writable(&mut self, start: u64, end: u64, writable: bool) {
        self.set_flag(start, end, writable, |f| f.writable, |f, w| f.writable = w);
    }

    /// Set the huge-page policy of `[start, end)`, splitting the VMAs whose policy
    /// changes at the range's ends. Gaps are skipped.
    pub fn set_huge(&mut self, start: u64, end: u64, huge: HugePolicy) {
        self.set_flag(start, end, huge, |f| f.huge, |f, h| f.huge = h);
    }

    /// Set one flag (read by `get`, written by `set`) to `value` over `[start, end)`,
    /// splitting the VMAs where it changes at the range's ends.
    fn set_flag<T: PartialEq + Copy>(
        &mut self,
        start: u64,
        end: u64,
        value: T,
        get: impl Fn(&VmaFlags) -> T,
        set: impl Fn(&mut VmaFlags, T),
    ) {
        let changing: Vec<(u64, u64)> = self
            .overlapping(start, end)
            .filter(|v| get(&v.flags) != value)
            .map(|v| (v.start.max(start), v.end.min(end)))
            .collect();
        for (s, e) in changing {
            self.split_at(s);
            self.split_at(e);
            if let Some(v) = self.map.get_mut(&s) {
                set(&mut v.flags, value);
            }
        }
    }

    /// Set the anchor of the VMA that is exactly `[start, end)`; `false` (nothing
    /// changed) if there is none.
    pub fn set_anchor(&mut self, start: u64, end: u64, anchor: Option<Anchor>) -> bool {
        match self.map.get_mut(&start).filter(|v| v.end == end) {
            Some(v) => {
                v.anchor = anchor;
                true
            }
            None => false,
        }
    }

    /// Remove every VMA.
    pub fn clear(&mut self) -> Vec<Vma> {
        core::mem::take(&mut self.map).into_values().collect()
    }
}

#[cfg(test)]
mod tests;
