//! Giving back the unmapped part of a huge block: after an unmap took some of a private
//! 2 MiB or 1 GiB block's mappings away (its huge leaf was split at the range's ends),
//! the block is split in place into 512 blocks of the next size down
//! ([`crate::frame::compound::split`]), each keeping the mappings that fall in it, and
//! the pieces left without any are freed. A piece that is itself still huge and only
//! partly mapped is split again. Blocks with a reference beyond their mappings (a pin, a
//! shared region's hold, a move's claim, a shootdown still pending) are left whole.

use super::{AddressSpace, Mm};
use crate::backend::phys::PhysMem;
use crate::base::addr::Pfn;
use crate::frame::compound;
use crate::frame::meta::FrameState;
use alloc::vec;
use alloc::vec::Vec;

impl<'m, M: PhysMem> Mm<'m, M> {
    /// Split and free the unmapped parts of the blocks `heads` (see the module doc).
    pub(crate) fn free_unmapped_parts(&self, space: &AddressSpace<'m, M>, heads: &[Pfn]) {
        let mut work: Vec<Pfn> = heads.to_vec();
        while let Some(head) = work.pop() {
            let mut dead = Vec::new();
            {
                // The space's lock keeps its faults and pins out; the reverse-map lock
                // keeps claims out.
                let _st = space.state.lock();
                let mut rmap = self.rmap.lock();
                let Some(meta) = self.meta(head) else {
                    continue;
                };
                let order = meta.order();
                if meta.state() != FrameState::Allocated
                    || order < 9
                    || !meta.is_managed()
                    || meta.is_claimed()
                    || meta.pincount() != 0
                    || meta.refcount() != meta.mapcount()
                    || rmap.holder(head).is_some()
                {
                    continue;
                }
                let child_order = order - 9;
                let child_pages = 1u64 << child_order;
                let entries = rmap.entries(head);
                if entries.is_empty() || entries.iter().any(|e| e.size.bytes() / 4096 > child_pages)
                {
                    continue;
                }
                let mut counts = vec![0u32; 512];
                for e in &entries {
                    counts[(e.offset / child_pages) as usize] += 1;
                }
                if counts.iter().all(|&c| c > 0) {
                    continue;
                }
                let table = self.table;
                let c = |i: u64| (counts[i as usize], counts[i as usize]);
                if compound::split(rmap.counts(), &table, head, child_order, c).is_err() {
                    self.count_errors
                        .fetch_add(1, core::sync::atomic::Ordering::AcqRel);
                    continue;
                }
                for mut e in entries {
                    let piece = e.offset / child_pages;
                    if piece != 0 {
                        rmap.remove(head, e.space, e.va.as_u64());
                        e.offset -= piece * child_pages;
                        rmap.insert(head.add(piece * child_pages), e);
                    }
                }
                for (i, &n) in counts.iter().enumerate() {
                    let piece = head.add(i as u64 * child_pages);
                    if n == 0 {
                        dead.push(piece);
                    } else if child_order >= 9 {
                        work.push(piece);
                    }
                }
            }
            let child_order = self.meta(head).map_or(0, |m| m.order());
            for piece in dead {
                self.free_block(piece, child_order);
            }
        }
    }
}
