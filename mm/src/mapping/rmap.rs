//! The reverse map: from a frame to every leaf that maps it.
//!
//! # Design
//!
//! Frames mapped into user address spaces are *managed* frames: allocated blocks of
//! order 0, 9 or 18 (4 KiB, 2 MiB, 1 GiB) whose head's [`FrameMeta::owner`] word carries
//! [`OWNER_MANAGED`]. The reverse map is one side structure for all of them, a
//! `BTreeMap` keyed by `(head PFN, address space, virtual address)`, whose value is the
//! size of the leaf and the index (in 4 KiB frames) of the first frame it maps inside the
//! block. A block is usually mapped by leaves of its own size, but a huge block whose
//! mapping was split (a partial unmap or protect) is mapped by several smaller leaves;
//! keying by head keeps all of them together, so "every mapping of this block" is one
//! range query, O(log n + k), and removing one mapping is O(log n) even when a 1 GiB
//! block is mapped by 262144 PTEs. Nothing is allocated per frame: a `BTreeMap` entry
//! costs about 40 bytes per mapping.
//!
//! A second map records the *holder* of a frame that belongs to a
//! [`SharedRegion`] (the region keeps the frame alive while
//! nothing maps it), so that migration can point the region at the new frame.
//!
//! # Counters
//!
//! All of them live on the head's [`FrameMeta`] and change only under the reverse-map
//! lock, so they are exact:
//!
//! - `mapcount` = number of reverse-map entries of the block (leaves, present or
//!   migration entries);
//! - `refcount` = mappings + 1 if a shared region holds it + `pincount` + 1 while it is
//!   under migration + mappings already removed from the tables whose TLB shootdown has
//!   not completed yet. A frame is freed when it drops to zero, which can therefore only
//!   happen after every CPU has flushed its last translation.
//!
//! # The owner word
//!
//! The buddy allocator clears `owner` on allocation and on free; this layer uses two bits
//! of it: [`OWNER_MANAGED`] (set while the block is a managed frame) and
//! [`OWNER_MIGRATING`] (set with a compare-exchange by the migration that claims the
//! block, on the source and on the destination, until it completes). Other code (an
//! exchange, a DMA pin) can read them lock-free.

use crate::base::addr::{PageSize, Pfn};
use crate::mapping::region::SharedRegion;
use alloc::collections::btree_map::Entry;
use alloc::collections::BTreeMap;
use alloc::sync::Weak;
use alloc::vec::Vec;
use core::ops::Bound;
use x86_64::VirtAddr;

/// Identifies an address space within its [`Mm`](crate::aspace::Mm).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpaceId(pub u64);

/// One mapping of a managed block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RmapEntry {
    /// The address space.
    pub space: SpaceId,
    /// First virtual address of the leaf.
    pub va: VirtAddr,
    /// Size of the leaf.
    pub size: PageSize,
    /// Index, in 4 KiB frames, of the first frame the leaf maps, from the block's head.
    pub offset: u64,
}

/// Who holds a frame besides its mappings.
#[derive(Clone, Debug)]
pub(crate) struct Holder {
    /// The shared region.
    pub region: Weak<SharedRegion>,
    /// The key of the frame in the region (its first 4 KiB page index).
    pub index: u64,
}

/// The reverse map proper (see the module doc); guarded by the `Mm`'s rmap lock.
#[derive(Default)]
pub(crate) struct Rmap {
    maps: BTreeMap<(u64, SpaceId, u64), (PageSize, u64)>,
    holders: BTreeMap<u64, Holder>,
}

fn key_entry(key: &(u64, SpaceId, u64), value: &(PageSize, u64)) -> RmapEntry {
    RmapEntry {
        space: key.1,
        va: VirtAddr::new_truncate(key.2),
        size: value.0,
        offset: value.1,
    }
}

impl Rmap {
    /// Record `entry` as a mapping of the block headed at `head`; `false` if that
    /// (space, address) was already recorded.
    pub fn insert(&mut self, head: Pfn, entry: RmapEntry) -> bool {
        match self.maps.entry((head.0, entry.space, entry.va.as_u64())) {
            Entry::Occupied(_) => false,
            Entry::Vacant(slot) => {
                slot.insert((entry.size, entry.offset));
                true
            }
        }
    }

    /// Forget the mapping of `head` at `va` in `space`.
    pub fn remove(&mut self, head: Pfn, space: SpaceId, va: u64) -> Option<RmapEntry> {
        let key = (head.0, space, va);
        self.maps.remove(&key).map(|v| key_entry(&key, &v))
    }

    /// The mapping of `head` at `va` in `space`, if recorded.
    pub fn get(&self, head: Pfn, space: SpaceId, va: u64) -> Option<RmapEntry> {
        let key = (head.0, space, va);
        self.maps.get(&key).map(|v| key_entry(&key, v))
    }

    /// Every mapping of `head`, in key order (by address space, then address).
    pub fn range_of(&self, head: Pfn) -> impl Iterator<Item = RmapEntry> + '_ {
        let lo = Bound::Included((head.0, SpaceId(0), 0));
        let hi = Bound::Excluded((head.0 + 1, SpaceId(0), 0));
        self.maps.range((lo, hi)).map(|(k, v)| key_entry(k, v))
    }

    /// Every mapping of `head`.
    pub fn entries(&self, head: Pfn) -> Vec<RmapEntry> {
        self.range_of(head).collect()
    }

    /// The mappings of `head` in `space`, in address order.
    pub fn range_in(&self, head: Pfn, space: SpaceId) -> impl Iterator<Item = RmapEntry> + '_ {
        let lo = Bound::Included((head.0, space, 0));
        let hi = match space.0.checked_add(1) {
            Some(next) => Bound::Excluded((head.0, SpaceId(next), 0)),
            None => Bound::Excluded((head.0 + 1, SpaceId(0), 0)),
        };
        self.maps.range((lo, hi)).map(|(k, v)| key_entry(k, v))
    }

    /// Every (head, mapping) pair, in key order.
    pub fn all(&self) -> impl Iterator<Item = (Pfn, RmapEntry)> + '_ {
        self.maps.iter().map(|(k, v)| (Pfn(k.0), key_entry(k, v)))
    }

    /// The holder of `head`.
    pub fn holder(&self, head: Pfn) -> Option<&Holder> {
        self.holders.get(&head.0)
    }

    /// Make `holder` the holder of `head`.
    pub fn set_holder(&mut self, head: Pfn, holder: Holder) {
        self.holders.insert(head.0, holder);
    }

    /// Forget and return the holder of `head`.
    pub fn take_holder(&mut self, head: Pfn) -> Option<Holder> {
        self.holders.remove(&head.0)
    }

    /// Every held frame.
    pub fn holders(&self) -> impl Iterator<Item = (Pfn, &Holder)> + '_ {
        self.holders.iter().map(|(&k, h)| (Pfn(k), h))
    }
}

#[cfg(test)]
mod tests;
