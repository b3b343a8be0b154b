//! The reverse-map audit: every leaf and migration entry of every address space against
//! the reverse map, the VMAs, the shared regions and the frame metadata.
//!
//! It expects a quiet system (no operation in flight): an unmap between its table change
//! and its shootdown, or a migration, holds references the audit would report.

use super::{user_leaf_flags, Mm};
use crate::backend::phys::PhysMem;
use crate::base::addr::{PageSize, Pfn};
use crate::frame::meta::FrameState;
use crate::mapping::region;
use crate::mapping::rmap::{RmapEntry, SpaceId};
use crate::paging::{MigrationEntry, SlotKind, SoftwareEntry, LOWER_HALF_END};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::fmt;
use x86_64::structures::paging::PageTableFlags;
use x86_64::VirtAddr;

/// What the audit counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RmapAuditReport {
    /// Live address spaces.
    pub spaces: usize,
    /// Leaves (present or migration entries).
    pub mappings: usize,
    /// Managed blocks.
    pub frames: usize,
    /// Managed frames counted in 4 KiB units.
    pub frames_4k: u64,
}

/// The first inconsistency the audit met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RmapAuditError {
    /// Counter operations failed where no caller could take the error (see
    /// [`CountError`](crate::frame::refs::CountError)): the accounting is broken.
    CountErrors {
        /// How many.
        count: u64,
    },
    /// A leaf has no reverse-map entry (or one with another size or offset).
    MissingRmap {
        /// The address space.
        space: SpaceId,
        /// The leaf.
        va: VirtAddr,
    },
    /// A reverse-map entry has no matching leaf.
    StaleRmap {
        /// The block.
        head: Pfn,
        /// The entry.
        entry: RmapEntry,
    },
    /// A leaf maps a frame that is not inside an allocated block.
    UnallocatedFrame {
        /// The address space.
        space: SpaceId,
        /// The leaf.
        va: VirtAddr,
    },
    /// The list of migration entries in flight disagrees with the software entries
    /// found in the page table.
    MigratingList {
        /// The address space.
        space: SpaceId,
    },
    /// A leaf lies outside every VMA, or its flags do not match its VMA's.
    BadLeaf {
        /// The address space.
        space: SpaceId,
        /// The leaf.
        va: VirtAddr,
    },
    /// A mapped or held block is not a managed head, or a managed head has no user.
    BadOwner {
        /// The block.
        head: Pfn,
    },
    /// A block's map count differs from its reverse-map entries.
    Mapcount {
        /// The block.
        head: Pfn,
        /// Reverse-map entries.
        expected: u32,
        /// The map count.
        found: u32,
    },
    /// A block's reference count differs from mappings + holder + pins.
    Refcount {
        /// The block.
        head: Pfn,
        /// Expected count.
        expected: u32,
        /// The reference count.
        found: u32,
    },
    /// A shared region and the holder record of its frame disagree.
    BadRegion {
        /// The block.
        head: Pfn,
    },
}

impl fmt::Display for RmapAuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reverse-map audit: {self:?}")
    }
}

impl core::error::Error for RmapAuditError {}

type Key = (u64, SpaceId, u64);

impl<M: PhysMem> Mm<'_, M> {
    /// Check the reverse map against the page tables of every address space, the VMAs,
    /// the shared regions and the frame metadata (map counts, reference counts, owner
    /// bits). Call it when no operation is in flight.
    pub fn rmap_audit(&self) -> Result<RmapAuditReport, RmapAuditError> {
        let count = self
            .count_errors
            .load(core::sync::atomic::Ordering::Acquire);
        if count != 0 {
            return Err(RmapAuditError::CountErrors { count });
        }
        let mut leaves: BTreeMap<Key, (PageSize, u64)> = BTreeMap::new();
        let spaces = self.spaces();
        for space in &spaces {
            let id = space.id();
            let st = space.state.lock();
            // Every present leaf and every software entry, read from the page table
            // itself (not from the list of migrations in flight, which must agree).
            let mut found = Vec::new();
            let mut migrating = BTreeMap::new();
            let slots = st
                .pt
                .cursor(0, LOWER_HALF_END)
                .map_err(|_| RmapAuditError::BadLeaf {
                    space: id,
                    va: VirtAddr::zero(),
                })?;
            for slot in slots {
                match slot.kind {
                    SlotKind::Leaf(t) => {
                        found.push((slot.va, t.size, Pfn::containing(t.leaf_base_pa), t.flags))
                    }
                    SlotKind::Software(SoftwareEntry::Migration(mig)) => {
                        migrating.insert(slot.va.as_u64(), mig);
                        found.push((slot.va, mig.size(), mig.source_pfn(), mig.flags()));
                    }
                    SlotKind::Software(_) => {
                        return Err(RmapAuditError::BadLeaf {
                            space: id,
                            va: slot.va,
                        })
                    }
                    SlotKind::Absent | SlotKind::Table(_) => {}
                }
            }
            let listed: BTreeMap<u64, MigrationEntry> = st.migrating.iter().collect();
            if listed != migrating {
                return Err(RmapAuditError::MigratingList { space: id });
            }
            for (va, size, pfn, flags) in found {
                let bad = RmapAuditError::BadLeaf { space: id, va };
                let vma = st.vmas.find(va.as_u64()).ok_or(bad)?;
                let mask = PageTableFlags::WRITABLE
                    | PageTableFlags::USER_ACCESSIBLE
                    | PageTableFlags::NO_EXECUTE;
                if va.as_u64() + size.bytes() > vma.end
                    || flags & mask != user_leaf_flags(vma.flags.writable)
                {
                    return Err(bad);
                }
                let head = self
                    .head_of(pfn)
                    .ok_or(RmapAuditError::UnallocatedFrame { space: id, va })?;
                leaves.insert((head.0, id, va.as_u64()), (size, pfn.0 - head.0));
            }
        }
        let (entries, holders) = {
            let rmap = self.rmap.lock();
            let entries: Vec<(Pfn, RmapEntry)> = rmap.all().collect();
            let holders: Vec<(Pfn, u64, _)> = rmap
                .holders()
                .map(|(p, h)| (p, h.index, h.region.clone()))
                .collect();
            (entries, holders)
        };
        let mut remaining = leaves;
        let mut per_head: BTreeMap<u64, u32> = BTreeMap::new();
        for &(head, entry) in &entries {
            let key = (head.0, entry.space, entry.va.as_u64());
            match remaining.remove(&key) {
                Some((size, offset)) if size == entry.size && offset == entry.offset => {}
                Some(_) => {
                    return Err(RmapAuditError::MissingRmap {
                        space: entry.space,
                        va: entry.va,
                    })
                }
                None => return Err(RmapAuditError::StaleRmap { head, entry }),
            }
            *per_head.entry(head.0).or_default() += 1;
        }
        if let Some((&(_, space, va), _)) = remaining.iter().next() {
            return Err(RmapAuditError::MissingRmap {
                space,
                va: VirtAddr::new_truncate(va),
            });
        }
        let mut held = BTreeSet::new();
        for (head, index, region) in &holders {
            let region = region
                .upgrade()
                .ok_or(RmapAuditError::BadRegion { head: *head })?;
            let frames = region.frames.lock();
            match region::covering(&frames, *index) {
                Some((k, f)) if k == *index && f.head == *head => {}
                _ => return Err(RmapAuditError::BadRegion { head: *head }),
            }
            held.insert(head.0);
        }
        let table = self.table;
        let mut report = RmapAuditReport {
            spaces: spaces.len(),
            mappings: entries.len(),
            ..RmapAuditReport::default()
        };
        for i in 0..table.len() as u64 {
            let Some(meta) = table.get(Pfn(i)) else {
                break;
            };
            let maps = per_head.get(&i).copied().unwrap_or(0);
            let holder = held.contains(&i);
            let used = maps > 0 || holder;
            let managed = meta.state() == FrameState::Allocated && meta.is_managed();
            if !used && !managed {
                continue;
            }
            let pins = meta.pincount();
            if !managed || (!used && pins == 0) || meta.is_claimed() {
                return Err(RmapAuditError::BadOwner { head: Pfn(i) });
            }
            let mapcount = meta.mapcount();
            if mapcount != maps {
                return Err(RmapAuditError::Mapcount {
                    head: Pfn(i),
                    expected: maps,
                    found: mapcount,
                });
            }
            let expected = maps + u32::from(holder) + pins;
            let refcount = meta.refcount();
            if refcount != expected {
                return Err(RmapAuditError::Refcount {
                    head: Pfn(i),
                    expected,
                    found: refcount,
                });
            }
            report.frames += 1;
            report.frames_4k += 1u64 << meta.order();
        }
        Ok(report)
    }
}
