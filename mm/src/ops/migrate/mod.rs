//! Page migration of whole 4 KiB, 2 MiB and 1 GiB blocks, without splitting huge
//! mappings, through non-present *migration entries*.
//!
//! A migration is a unit of the move engine ([`crate::ops::engine`], whose module doc
//! gives the protocol): it claims the source block, allocates the destination in
//! `prepare` (exactly a given block, any block of a NUMA node, or any block), copies every
//! 4 KiB frame in `transform`, has the engine point every mapping and the shared
//! region's holder at the destination, and frees the source in `finish`. A batch
//! ([`Mm::migrate_batch`]; [`Mm::migrate_one`] is a batch of one) shoots down once for
//! all of its blocks; a block that cannot move is reported and left exactly as it was,
//! the others move.
//!
//! A CPU touching the page while it moves faults on the migration entry, gets
//! [`FaultOutcome::WaitMigration`](crate::ops::fault::FaultOutcome::WaitMigration), waits
//! without holding any lock and retries. Migration entries themselves (their encoding)
//! are [`paging::MigrationEntry`](crate::paging::MigrationEntry).

#[cfg(test)]
mod tests;

use crate::aspace::vmstat::Event;
use crate::aspace::Mm;
use crate::backend::phys::PhysMem;
use crate::base::addr::Pfn;
use crate::frame::buddy::{AllocError, MigrateType};
use crate::frame::node::NodeId;
use crate::ops::engine::{Batch, ClaimDrops, Claimed, Move};
pub use crate::ops::error::MigrateError;
use alloc::vec::Vec;
/// Where a migrated block goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    /// Exactly this block (aligned to the source's order, free, not overlapping it).
    Frame(Pfn),
    /// Any free block on this node.
    Node(NodeId),
    /// Any free block.
    Any,
}

fn alloc_error(e: AllocError) -> MigrateError {
    match e {
        AllocError::NotFree => MigrateError::DestinationNotFree,
        AllocError::Unaligned => MigrateError::DestinationUnaligned,
        AllocError::OutOfRange => MigrateError::DestinationOutOfRange,
        AllocError::OutOfMemory | AllocError::InvalidOrder | AllocError::InvalidSize => {
            MigrateError::OutOfMemory
        }
    }
}

/// One migration on the move engine: claim the source, allocate the destination, copy,
/// remap to the destination, free the source.
struct Migration {
    src: [Pfn; 1],
    dst: Destination,
    /// The destination block, once allocated, and its order.
    allocated: Option<(Pfn, u8)>,
}

impl<'m, M: PhysMem> Move<'m, M> for Migration {
    type Output = Pfn;

    fn blocks(&self) -> &[Pfn] {
        &self.src
    }

    fn check(&self, mm: &Mm<'m, M>, orders: &[u8]) -> Result<(), MigrateError> {
        let (src, order) = (self.src[0], orders[0]);
        match self.dst {
            Destination::Frame(d) => {
                let n = 1u64 << order;
                let len = mm.table.len() as u64;
                if d.0.checked_add(n).is_none_or(|end| end > len) {
                    return Err(MigrateError::DestinationOutOfRange);
                }
                if !d.is_aligned(order) {
                    return Err(MigrateError::DestinationUnaligned);
                }
                if d.0 < src.0 + n && src.0 < d.0 + n {
                    return Err(MigrateError::DestinationOverlaps);
                }
            }
            Destination::Node(node) if !mm.frames.node_exists(node) => {
                return Err(MigrateError::NoSuchNode);
            }
            Destination::Node(_) | Destination::Any => {}
        }
        Ok(())
    }

    fn wants_at(&self, claimed: &[Claimed]) -> Option<(Pfn, u8)> {
        match self.dst {
            Destination::Frame(d) => Some((d, claimed[0].order)),
            Destination::Node(_) | Destination::Any => None,
        }
    }

    fn prepare(
        &mut self,
        mm: &Mm<'m, M>,
        claimed: &[Claimed],
        at: Option<Result<Pfn, AllocError>>,
    ) -> Result<(), MigrateError> {
        // The order is the one `check` saw: the claim refuses a block whose order changed.
        let order = claimed[0].order;
        let mt = MigrateType::Movable;
        let allocated = match (at, self.dst) {
            (Some(at), _) => at,
            // The engine allocates the exact destinations of a batch together and hands
            // each its result: one missing is an allocation that did not happen.
            (None, Destination::Frame(_)) => Err(AllocError::OutOfMemory),
            (None, Destination::Node(node)) => mm.frames.alloc(order, mt, Some(node)),
            (None, Destination::Any) => mm.frames.alloc(order, mt, None),
        };
        let dst = allocated.map_err(alloc_error)?;
        // The destination's allocation reference becomes the claim's.
        if let Some(meta) = mm.meta(dst) {
            meta.make_managed_claimed();
        }
        self.allocated = Some((dst, order));
        Ok(())
    }

    fn abandon(&mut self, drops: &mut ClaimDrops<'_, 'm, M>, _claimed: &[Claimed]) {
        if let Some((dst, order)) = self.allocated.take() {
            drops.drop_claim(dst, order);
        }
    }

    fn transform(&mut self, mm: &Mm<'m, M>, claimed: &[Claimed]) {
        let Some((dst, order)) = self.allocated else {
            return;
        };
        for i in 0..1u64 << order {
            mm.mem
                .copy_frame(dst.add(i).addr(), claimed[0].head.add(i).addr());
        }
    }

    fn target(&self, _i: usize) -> Pfn {
        self.allocated.map_or(self.src[0], |(dst, _)| dst)
    }

    fn finish(
        self,
        claimed: &[Claimed],
        drops: &mut ClaimDrops<'_, 'm, M>,
    ) -> Result<Pfn, MigrateError> {
        let Some((dst, order)) = self.allocated else {
            return Err(MigrateError::Inconsistent);
        };
        // The source has no mapping and no holder left: this frees it.
        drops.drop_claim(claimed[0].head, claimed[0].order);
        drops.count(Event::PagesMigrated, 1 << order);
        if drops.drop_claim(dst, order) {
            Err(MigrateError::Released)
        } else {
            Ok(dst)
        }
    }
}

impl<'m, M: PhysMem> Mm<'m, M> {
    /// Migrate the block headed at `src` (4 KiB, 2 MiB or 1 GiB, with every mapping of
    /// it) to `dst`; returns the new head.
    pub fn migrate_one(&self, src: Pfn, dst: Destination) -> Result<Pfn, MigrateError> {
        self.migrate_batch(&[(src, dst)])
            .pop()
            .unwrap_or(Err(MigrateError::NotInUse))
    }

    /// Migrate each block to its destination (see the module doc); one result per
    /// request, in order: the new head, or why that block did not move (it is then
    /// exactly as before).
    pub fn migrate_batch(&self, requests: &[(Pfn, Destination)]) -> Vec<Result<Pfn, MigrateError>> {
        let batch = self.begin_migrations(requests);
        self.complete_moves(batch)
    }

    /// Claim, prepare and install a batch of migrations (steps 1 and 2 of the engine).
    fn begin_migrations(&self, requests: &[(Pfn, Destination)]) -> Batch<'m, M, Migration> {
        let units = requests
            .iter()
            .map(|&(src, dst)| Migration {
                src: [src],
                dst,
                allocated: None,
            })
            .collect();
        self.begin_moves(units)
    }
}
