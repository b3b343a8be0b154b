//! The audit of the buddy allocator: a full walk of the frame table and of every free list
//! that checks them against each other and against the allocator's counters.

use super::{list_order, BuddyAllocator, MigrateType, NR_LISTS, NR_ORDERS};
use crate::base::addr::{Pfn, MAX_ORDER};
use crate::frame::meta::{FrameFlags, FrameState, NO_LINK};

/// What the audit counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditReport {
    /// Frames in free blocks.
    pub free_frames: usize,
    /// Frames in allocated blocks.
    pub allocated_frames: usize,
    /// Frames never handed to the allocator.
    pub reserved_frames: usize,
    /// Allocated blocks.
    pub allocated_blocks: usize,
    /// Free blocks of each order.
    pub free_areas: [usize; NR_ORDERS],
}

/// The first broken invariant the audit met, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditError {
    /// A tail frame that no block covers.
    OrphanTail {
        /// The tail.
        pfn: Pfn,
    },
    /// A head whose order is above `MAX_ORDER`, that is misaligned, or whose block runs
    /// past the end of the table.
    BadBlock {
        /// The head.
        pfn: Pfn,
        /// Its order.
        order: u8,
    },
    /// A frame inside a block that is not a tail: blocks overlap.
    Overlap {
        /// The block's head.
        head: Pfn,
        /// The frame that should be a tail.
        pfn: Pfn,
    },
    /// Two free buddies of the same order were left unmerged.
    Unmerged {
        /// One free block.
        pfn: Pfn,
        /// Its free buddy.
        buddy: Pfn,
        /// Their order.
        order: u8,
    },
    /// A frame of a free block still has references, mappings or pins.
    FreeFrameInUse {
        /// The frame.
        pfn: Pfn,
    },
    /// A frame's flags contradict its state (`RESERVED` on a managed frame or missing on
    /// a reserved one, allocation flags on a free head, `HUGE_HEAD` not matching the order).
    BadFlags {
        /// The frame.
        pfn: Pfn,
    },
    /// A free list holds a frame outside the table or that is not a free head of the
    /// list's order and pageblock type.
    BadListEntry {
        /// The order of the list.
        list_order: u8,
        /// The entry.
        pfn: Pfn,
    },
    /// A free list's back link is wrong, or the list runs past its counted length.
    BrokenList {
        /// The order of the list.
        list_order: u8,
        /// The entry where it broke.
        pfn: Pfn,
    },
    /// A free head that is not linked into its free list.
    Unlisted {
        /// The head.
        pfn: Pfn,
    },
    /// A free list's counter, its walked length and the free heads of the table disagree.
    ListCount {
        /// The order of the list.
        list_order: u8,
        /// The allocator's counter.
        counted: usize,
        /// Entries met walking the list.
        walked: usize,
        /// Free heads in the table that belong on it.
        in_table: usize,
    },
    /// A total of the metadata disagrees with the allocator's counter.
    Accounting {
        /// Which total.
        what: &'static str,
        /// Counted in the metadata.
        metadata: usize,
        /// Kept by the allocator.
        counter: usize,
    },
}

impl BuddyAllocator<'_> {
    /// Check every invariant of the allocator against the metadata: O(frames in the
    /// table). Blocks are aligned, in the table and made of a head and tails; free blocks
    /// are maximal, unused and each on exactly the list of its order and pageblock type;
    /// lists are well linked and their counters right; free + allocated + reserved frames
    /// add up to the table and match the allocator's counters.
    pub fn audit(&self) -> Result<AuditReport, AuditError> {
        let listed = self.audit_table()?;
        self.audit_lists(&listed.free_heads)?;
        let n = self.table.len();
        let checks = [
            ("free frames", listed.report.free_frames, self.free),
            (
                "allocated movable frames",
                listed.allocated[MigrateType::Movable.index()],
                self.allocated[MigrateType::Movable.index()],
            ),
            (
                "allocated unmovable frames",
                listed.allocated[MigrateType::Unmovable.index()],
                self.allocated[MigrateType::Unmovable.index()],
            ),
            (
                "managed frames",
                listed.report.free_frames + listed.report.allocated_frames,
                self.total,
            ),
            (
                "frames in the table",
                listed.report.free_frames
                    + listed.report.allocated_frames
                    + listed.report.reserved_frames,
                n,
            ),
        ];
        for (what, metadata, counter) in checks {
            if metadata != counter {
                return Err(AuditError::Accounting {
                    what,
                    metadata,
                    counter,
                });
            }
        }
        Ok(listed.report)
    }

    /// Walk the table block by block.
    fn audit_table(&self) -> Result<TableWalk, AuditError> {
        let n = self.table.len();
        let mut walk = TableWalk {
            report: AuditReport {
                free_frames: 0,
                allocated_frames: 0,
                reserved_frames: 0,
                allocated_blocks: 0,
                free_areas: [0; NR_ORDERS],
            },
            allocated: [0; 2],
            free_heads: [0; NR_LISTS],
        };
        let mut i = 0;
        while i < n {
            let m = self.table.at(i);
            let pfn = Pfn(i as u64);
            let state = m.state();
            if !state.is_head() {
                if state == FrameState::Tail {
                    return Err(AuditError::OrphanTail { pfn });
                }
                if !m.flags().contains(FrameFlags::RESERVED) {
                    return Err(AuditError::BadFlags { pfn });
                }
                walk.report.reserved_frames += 1;
                i += 1;
                continue;
            }
            let order = m.order();
            if order > MAX_ORDER || !pfn.is_aligned(order) || n - i < 1usize << order {
                return Err(AuditError::BadBlock { pfn, order });
            }
            let size = 1usize << order;
            if let Some(t) =
                (i + 1..i + size).find(|&t| self.table.at(t).state() != FrameState::Tail)
            {
                return Err(AuditError::Overlap {
                    head: pfn,
                    pfn: Pfn(t as u64),
                });
            }
            let flags = m.flags();
            if flags.contains(FrameFlags::RESERVED) {
                return Err(AuditError::BadFlags { pfn });
            }
            if state == FrameState::Free {
                self.audit_free_block(i, order)?;
                walk.free_heads[self.list_of(i, order)] += 1;
                walk.report.free_frames += size;
                walk.report.free_areas[order as usize] += 1;
            } else {
                if flags.contains(FrameFlags::HUGE_HEAD) != (order > 0) {
                    return Err(AuditError::BadFlags { pfn });
                }
                let mt = if flags.contains(FrameFlags::MOVABLE) {
                    MigrateType::Movable
                } else {
                    MigrateType::Unmovable
                };
                walk.allocated[mt.index()] += size;
                walk.report.allocated_frames += size;
                walk.report.allocated_blocks += 1;
            }
            i += size;
        }
        Ok(walk)
    }

    /// Check the free block (`head`, `order`): unused, no allocation flags, not mergeable
    /// with its buddy, linked into its list.
    fn audit_free_block(&self, head: usize, order: u8) -> Result<(), AuditError> {
        let size = 1usize << order;
        let in_use = |t: &usize| {
            let m = self.table.at(*t);
            m.refcount() != 0 || m.mapcount() != 0 || m.pincount() != 0
        };
        if let Some(t) = (head..head + size).find(in_use) {
            return Err(AuditError::FreeFrameInUse { pfn: Pfn(t as u64) });
        }
        let m = self.table.at(head);
        let pfn = Pfn(head as u64);
        if m.flags()
            .intersects(FrameFlags::MOVABLE | FrameFlags::HUGE_HEAD)
        {
            return Err(AuditError::BadFlags { pfn });
        }
        let buddy = head ^ size;
        if order < MAX_ORDER && buddy < self.table.len() {
            let b = self.table.at(buddy);
            if b.state() == FrameState::Free && b.order() == order {
                return Err(AuditError::Unmerged {
                    pfn,
                    buddy: Pfn(buddy as u64),
                    order,
                });
            }
        }
        let list = self.list_of(head, order);
        let prev = m.prev();
        let linked = if prev == NO_LINK {
            self.heads[list] == head as u32
        } else {
            (prev as usize) < self.table.len() && {
                let p = self.table.at(prev as usize);
                p.next() == head as u32
                    && p.state() == FrameState::Free
                    && self.list_of(prev as usize, p.order()) == list
            }
        };
        if linked {
            Ok(())
        } else {
            Err(AuditError::Unlisted { pfn })
        }
    }

    /// Walk every free list, checking entries, back links and lengths.
    fn audit_lists(&self, free_heads: &[usize; NR_LISTS]) -> Result<(), AuditError> {
        for list in 0..NR_LISTS {
            let order = list_order(list);
            let mut walked = 0;
            let mut prev = NO_LINK;
            let mut cur = self.heads[list];
            while cur != NO_LINK {
                let pfn = Pfn(u64::from(cur));
                if walked == self.counts[list] {
                    return Err(AuditError::BrokenList {
                        list_order: order,
                        pfn,
                    });
                }
                let c = cur as usize;
                let entry_ok = c < self.table.len() && {
                    let m = self.table.at(c);
                    m.state() == FrameState::Free
                        && m.order() == order
                        && self.list_of(c, order) == list
                };
                if !entry_ok {
                    return Err(AuditError::BadListEntry {
                        list_order: order,
                        pfn,
                    });
                }
                let m = self.table.at(c);
                if m.prev() != prev {
                    return Err(AuditError::BrokenList {
                        list_order: order,
                        pfn,
                    });
                }
                walked += 1;
                prev = cur;
                cur = m.next();
            }
            if walked != self.counts[list] || walked != free_heads[list] {
                return Err(AuditError::ListCount {
                    list_order: order,
                    counted: self.counts[list],
                    walked,
                    in_table: free_heads[list],
                });
            }
        }
        Ok(())
    }
}

/// What the table walk counted.
struct TableWalk {
    report: AuditReport,
    allocated: [usize; 2],
    free_heads: [usize; NR_LISTS],
}
