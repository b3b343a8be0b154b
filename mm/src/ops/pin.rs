//! Long-term pins: a block that a device will hold for long (an RDMA region, a buffer
//! given to a device for its lifetime) is first moved to where unmovable allocations go,
//! then pinned there, as Linux's `FOLL_LONGTERM` pins move pages out of the movable
//! zones first. A pinned block never moves again; left where it was faulted in, it
//! would sit in the middle of memory that contiguity generation wants whole (one pinned
//! frame keeps a gigabyte from ever being a 1 GiB leaf).

use crate::aspace::{AddressSpace, Mm, PinError};
use crate::backend::phys::PhysMem;
use crate::base::addr::Pfn;
use crate::frame::buddy::MigrateType;
use crate::ops::migrate::Destination;

impl<'m, M: PhysMem> Mm<'m, M> {
    /// Pin the block that `va` of `space` maps, as [`pin`](Self::pin) does, after moving
    /// it to the frames an unmovable allocation of its size would take now (the lowest
    /// pageblocks outside the claimed windows) when those lie below it. The move is best
    /// effort: when it is refused (the block is busy or shared out of reach, or the frame
    /// was taken meanwhile) the block is pinned where it is. Returns the head pinned.
    pub fn pin_longterm(&self, space: &AddressSpace<'m, M>, va: u64) -> Result<Pfn, PinError> {
        let head = space
            .translate(va)
            .and_then(|t| self.head_of(Pfn::containing(t.pa)));
        let order = head.and_then(|h| self.meta(h)).map(|m| m.order());
        if let (Some(head), Some(order)) = (head, order) {
            if let Ok(low) = self.frames.alloc(order, MigrateType::Unmovable, None) {
                self.free_block(low, order);
                if low < head {
                    // Best effort: refused, the block stays where it is.
                    let _ = self.migrate_one(head, Destination::Frame(low));
                }
            }
        }
        self.pin(space, va)
    }
}

#[cfg(test)]
mod tests;
