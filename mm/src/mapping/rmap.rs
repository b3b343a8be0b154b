//! The reverse map: from a frame to every leaf that maps it.
//!
//! # Design
//!
//! Frames mapped into user address spaces are *managed* frames: allocated blocks of
//! order 0, 9 or 18 (4 KiB, 2 MiB, 1 GiB) whose head's [`FrameMeta::owner`] word carries
//! [`OWNER_MANAGED`]. The reverse map is one side structure for all of them, a
//! `BTreeMap` keyed by `(head PFN, address space, virtual address)`, whose value is the
//! size of the leaf and the index (in 4 KiB frames) of the first frame it maps inside the
//! block. It is stored as a hash table from the head to the block's mappings: a block
//! mapped once (nearly every private page) keeps its one mapping inline, a block mapped
//! twice (a page of a region shared by two address spaces; the target of an exchange
//! between two spaces, while its remap has moved one space's mapping to it and not yet
//! the other's away) keeps both inline, packed into two words each, and a block mapped
//! more often keeps them in a `BTreeMap` keyed by `(address space, address)`. A block is
//! usually mapped by leaves of its own size, but a huge block whose mapping was split (a
//! partial unmap or protect) is mapped by several smaller leaves; keeping all of them
//! under the head makes "every mapping of this block" one lookup plus O(k), and removing
//! one mapping O(1) for a block mapped once, O(log k) even when a 1 GiB block is mapped
//! by 262144 PTEs. The moves of the move engine look a block's mappings up three times
//! and re-key each one, so the cost per 4 KiB page is a few hash lookups rather than
//! tree descents through every mapping of the machine. Nothing is allocated per frame:
//! about 48 bytes per block mapped once or twice, plus about 40 per mapping of a block
//! mapped three times or more. The table
//! grows by doubling, moving every entry once per doubling under the lock: an insert
//! that grows it costs O(n), amortised O(1).
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
use crate::frame::refs::CountLock;
use crate::mapping::region::SharedRegion;
use alloc::collections::btree_map;
use alloc::collections::BTreeMap;
use alloc::sync::Weak;
use alloc::vec::Vec;
use core::hash::{BuildHasherDefault, Hasher};
use core::ops::Bound;
use hashbrown::hash_map::Entry;
use hashbrown::HashMap;
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

/// Where a mapping is: (address space, address).
type Key = (SpaceId, u64);
/// What it maps: (leaf size, offset of its first frame in the block).
type Value = (PageSize, u64);

/// The mappings of one block.
enum Mappings {
    /// Mapped once.
    One(Key, Value),
    /// Mapped twice, in key order.
    Two([Packed; 2]),
    /// Mapped at least three times (or twice by mappings that do not pack), in key order.
    Many(BTreeMap<Key, Value>),
}

/// Bits of a [`Packed`] mapping's offset: a 1 GiB block has `2^18` frames.
const OFFSET_BITS: u32 = 18;
/// Bits of a [`Packed`] mapping's address kept (12 to 47: a canonical address is the
/// sign extension of its bit 47).
const VA_BITS: u32 = 36;

/// One mapping in two words, so that a block mapped twice keeps both inline in the room
/// of one: the address space, and one word holding the leaf's address (its bits 12 to
/// 47, at the top, so that packed mappings order as their keys do), the offset of its
/// first frame and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Packed(SpaceId, u64);

impl Packed {
    /// `None` when the mapping does not fit: an offset past a 1 GiB block or an
    /// address that is not page aligned.
    fn new(key: Key, value: Value) -> Option<Packed> {
        let (va, offset) = (key.1, value.1);
        if va % 4096 != 0 || offset >> OFFSET_BITS != 0 {
            return None;
        }
        let size = match value.0 {
            PageSize::Size4K => 0,
            PageSize::Size2M => 1,
            PageSize::Size1G => 2,
        };
        let page = (va >> 12) & ((1 << VA_BITS) - 1);
        Some(Packed(
            key.0,
            page << (OFFSET_BITS + 2) | offset << 2 | size,
        ))
    }

    fn key(self) -> Key {
        let va = VirtAddr::new_truncate((self.1 >> (OFFSET_BITS + 2)) << 12);
        (self.0, va.as_u64())
    }

    fn value(self) -> Value {
        let size = match self.1 & 3 {
            0 => PageSize::Size4K,
            1 => PageSize::Size2M,
            _ => PageSize::Size1G,
        };
        (size, (self.1 >> 2) & ((1 << OFFSET_BITS) - 1))
    }

    fn entry(self) -> RmapEntry {
        key_entry(&self.key(), &self.value())
    }
}

/// Hashes a head PFN with one multiplication by an odd constant: a bijection on the low
/// bits (the table's index), so consecutive heads never collide there, and its high
/// bits (the table's tag) mixed from all of them.
#[derive(Clone, Copy, Default)]
struct HeadHasher(u64);

impl Hasher for HeadHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(29) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The reverse map proper (see the module doc); guarded by the `Mm`'s rmap lock.
pub(crate) struct Rmap {
    maps: HashMap<u64, Mappings, BuildHasherDefault<HeadHasher>>,
    holders: BTreeMap<u64, Holder>,
    /// The memory manager's one right to change frame counters: lent only through the
    /// lock this map lives in.
    counts: CountLock,
}

impl Default for Rmap {
    fn default() -> Rmap {
        Rmap {
            maps: HashMap::default(),
            holders: BTreeMap::new(),
            counts: CountLock::new(),
        }
    }
}

#[inline]
fn key_entry(key: &Key, value: &Value) -> RmapEntry {
    RmapEntry {
        space: key.0,
        va: VirtAddr::new_truncate(key.1),
        size: value.0,
        offset: value.1,
    }
}

/// The mappings of one block that [`Rmap::range_of`] and [`Rmap::range_in`] list: those
/// of a block mapped once or twice, or a range of the map of a block mapped more.
pub(crate) struct MappingsOf<'a> {
    inline: [Option<RmapEntry>; 2],
    many: Option<btree_map::Range<'a, Key, Value>>,
    /// Only this space's, if given.
    space: Option<SpaceId>,
}

impl Iterator for MappingsOf<'_> {
    type Item = RmapEntry;

    #[inline]
    fn next(&mut self) -> Option<RmapEntry> {
        if let Some(e) = self.inline.iter_mut().find_map(Option::take) {
            return Some(e);
        }
        let (k, v) = self.many.as_mut()?.next()?;
        if self.space.is_some_and(|s| s != k.0) {
            self.many = None;
            return None;
        }
        Some(key_entry(k, v))
    }
}

impl Rmap {
    /// The right to change frame counters, held as long as this lock is.
    #[inline]
    pub fn counts(&self) -> &CountLock {
        &self.counts
    }

    /// Record `entry` as a mapping of the block headed at `head`; `false` if that
    /// (space, address) was already recorded.
    pub fn insert(&mut self, head: Pfn, entry: RmapEntry) -> bool {
        let (key, value) = ((entry.space, entry.va.as_u64()), (entry.size, entry.offset));
        match self.maps.entry(head.0) {
            Entry::Vacant(slot) => {
                slot.insert(Mappings::One(key, value));
                true
            }
            Entry::Occupied(mut slot) => match slot.get_mut() {
                Mappings::One(k, _) if *k == key => false,
                Mappings::One(k, v) => {
                    let two = match (Packed::new(*k, *v), Packed::new(key, value)) {
                        (Some(a), Some(b)) => Mappings::Two(if a < b { [a, b] } else { [b, a] }),
                        _ => Mappings::Many(BTreeMap::from([(*k, *v), (key, value)])),
                    };
                    slot.insert(two);
                    true
                }
                Mappings::Two(two) if two.iter().any(|p| p.key() == key) => false,
                Mappings::Two(two) => {
                    let mut many: BTreeMap<Key, Value> =
                        two.iter().map(|p| (p.key(), p.value())).collect();
                    many.insert(key, value);
                    slot.insert(Mappings::Many(many));
                    true
                }
                Mappings::Many(many) => match many.entry(key) {
                    btree_map::Entry::Occupied(_) => false,
                    btree_map::Entry::Vacant(e) => {
                        e.insert(value);
                        true
                    }
                },
            },
        }
    }

    /// Forget the mapping of `head` at `va` in `space`.
    pub fn remove(&mut self, head: Pfn, space: SpaceId, va: u64) -> Option<RmapEntry> {
        let key = (space, va);
        let Entry::Occupied(mut slot) = self.maps.entry(head.0) else {
            return None;
        };
        let value = match slot.get_mut() {
            Mappings::One(k, v) if *k == key => {
                let v = *v;
                slot.remove();
                v
            }
            Mappings::One(..) => return None,
            Mappings::Two(two) => {
                let i = two.iter().position(|p| p.key() == key)?;
                let (gone, kept) = (two[i], two[1 - i]);
                slot.insert(Mappings::One(kept.key(), kept.value()));
                gone.value()
            }
            Mappings::Many(many) => {
                let value = many.remove(&key)?;
                if many.len() <= 2 {
                    match (many.pop_first(), many.pop_first()) {
                        (None, _) => {
                            slot.remove();
                        }
                        (Some((k, v)), None) => {
                            slot.insert(Mappings::One(k, v));
                        }
                        (Some((k0, v0)), Some((k1, v1))) => {
                            match (Packed::new(k0, v0), Packed::new(k1, v1)) {
                                (Some(a), Some(b)) => {
                                    slot.insert(Mappings::Two([a, b]));
                                }
                                _ => {
                                    many.insert(k0, v0);
                                    many.insert(k1, v1);
                                }
                            }
                        }
                    }
                }
                value
            }
        };
        Some(key_entry(&key, &value))
    }

    /// The mapping of `head` at `va` in `space`, if recorded.
    pub fn get(&self, head: Pfn, space: SpaceId, va: u64) -> Option<RmapEntry> {
        let key = (space, va);
        match self.maps.get(&head.0)? {
            Mappings::One(k, v) => (*k == key).then(|| key_entry(k, v)),
            Mappings::Two(two) => two.iter().find(|p| p.key() == key).map(|p| p.entry()),
            Mappings::Many(many) => many.get(&key).map(|v| key_entry(&key, v)),
        }
    }

    /// Every mapping of `head`, in key order (by address space, then address).
    #[inline]
    pub fn range_of(&self, head: Pfn) -> MappingsOf<'_> {
        self.mappings(head, None)
    }

    /// Every mapping of `head`.
    pub fn entries(&self, head: Pfn) -> Vec<RmapEntry> {
        self.range_of(head).collect()
    }

    /// The mappings of `head` in `space`, in address order.
    #[inline]
    pub fn range_in(&self, head: Pfn, space: SpaceId) -> MappingsOf<'_> {
        self.mappings(head, Some(space))
    }

    /// The mappings of `head`, of `space` only if given, in key order.
    #[inline(always)]
    fn mappings(&self, head: Pfn, space: Option<SpaceId>) -> MappingsOf<'_> {
        let mut it = MappingsOf {
            inline: [None; 2],
            many: None,
            space,
        };
        match self.maps.get(&head.0) {
            Some(Mappings::One(k, v)) => {
                it.inline[0] = space.is_none_or(|s| s == k.0).then(|| key_entry(k, v));
            }
            Some(Mappings::Two(two)) => {
                for (slot, p) in it.inline.iter_mut().zip(two) {
                    *slot = space.is_none_or(|s| s == p.0).then(|| p.entry());
                }
            }
            Some(Mappings::Many(many)) => {
                let lo = Bound::Included((space.unwrap_or(SpaceId(0)), 0));
                let hi = match space.map(|s| s.0.checked_add(1)) {
                    Some(Some(next)) => Bound::Excluded((SpaceId(next), 0)),
                    _ => Bound::Unbounded,
                };
                it.many = Some(many.range((lo, hi)));
            }
            None => {}
        }
        it
    }

    /// Every (head, mapping) pair, in order of head, address space and address.
    pub fn all(&self) -> impl Iterator<Item = (Pfn, RmapEntry)> + '_ {
        let mut heads: Vec<u64> = self.maps.keys().copied().collect();
        heads.sort_unstable();
        heads
            .into_iter()
            .flat_map(move |h| self.range_of(Pfn(h)).map(move |e| (Pfn(h), e)))
    }

    /// The holder of `head`.
    #[inline]
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
