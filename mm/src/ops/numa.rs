//! Moving a virtual range to a NUMA node: every block mapped in the range migrates whole
//! to frames of the node ([`Mm::move_range_to_node`]).

use crate::aspace::{AddressSpace, Mm, SpaceError};
use crate::backend::phys::PhysMem;
use crate::base::addr::Pfn;
use crate::mapping::vma::check_user_range;
use crate::ops::migrate::{Destination, MigrateError};
use alloc::collections::BTreeSet;
use alloc::vec::Vec;

/// What [`Mm::move_range_to_node`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MoveReport {
    /// Blocks moved: (old head, new head).
    pub moved: Vec<(Pfn, Pfn)>,
    /// Blocks that were on the node already.
    pub already_there: usize,
    /// Blocks that did not move, and why (they are exactly as before).
    pub failed: Vec<(Pfn, MigrateError)>,
}

impl<'m, M: PhysMem> Mm<'m, M> {
    /// Move every block mapped in `[start, start + len)` of `space` (which VMAs must
    /// cover) to frames on `node`, whole: 2 MiB and 1 GiB mappings stay huge, and a huge
    /// block only partly inside the range moves entirely. Blocks that cannot move (pinned,
    /// no room on the node...) are reported, the others move.
    pub fn move_range_to_node(
        &self,
        space: &AddressSpace<'m, M>,
        start: u64,
        len: u64,
        node: crate::frame::node::NodeId,
    ) -> Result<MoveReport, SpaceError> {
        self.check_space(space)?;
        let (start, end) = check_user_range(start, len)?;
        if !self.frames.node_exists(node) {
            return Err(SpaceError::NoSuchNode);
        }
        let heads = {
            let st = self.lock_settled(space, start, end, true)?;
            let mut heads = BTreeSet::new();
            for (_, t) in st.pt.walk(start, end) {
                if let Some(head) = self.head_of(Pfn::containing(t.leaf_base_pa)) {
                    heads.insert(head);
                }
            }
            heads
        };
        let mut report = MoveReport::default();
        let mut batch = Vec::new();
        for head in heads {
            if self.frames.node_of(head) == Some(node) {
                report.already_there += 1;
            } else {
                batch.push((head, Destination::Node(node)));
            }
        }
        for (&(src, _), result) in batch.iter().zip(self.migrate_batch(&batch)) {
            match result {
                Ok(dst) => report.moved.push((src, dst)),
                Err(e) => report.failed.push((src, e)),
            }
        }
        Ok(report)
    }
}
