//! How a VMA is mapped: its present leaves counted by size, the figure promotion
//! improves. [`LeafReport::json`] is the payload of a `LEAVES {json}` line (stable field
//! names: `phase`, `space`, `start`, `end`, `leaves_4k`, `leaves_2m`, `leaves_1g`).

use crate::aspace::{AddressSpace, Mm};
use crate::backend::phys::PhysMem;
use crate::base::addr::PageSize;
use crate::mapping::rmap::SpaceId;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// The leaves of one VMA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LeafReport {
    /// The address space.
    pub space: SpaceId,
    /// First byte of the VMA.
    pub start: u64,
    /// One past its last byte.
    pub end: u64,
    /// 4 KiB leaves.
    pub leaves_4k: u64,
    /// 2 MiB leaves.
    pub leaves_2m: u64,
    /// 1 GiB leaves.
    pub leaves_1g: u64,
}

impl LeafReport {
    /// Translation entries the VMA needs now (one per leaf).
    pub fn entries(&self) -> u64 {
        self.leaves_4k + self.leaves_2m + self.leaves_1g
    }

    /// Resident bytes.
    pub fn resident(&self) -> u64 {
        self.leaves_4k * PageSize::Size4K.bytes()
            + self.leaves_2m * PageSize::Size2M.bytes()
            + self.leaves_1g * PageSize::Size1G.bytes()
    }

    /// Resident bytes mapped by 2 MiB or 1 GiB leaves.
    pub fn huge(&self) -> u64 {
        self.resident() - self.leaves_4k * PageSize::Size4K.bytes()
    }

    /// The `LEAVES` line's payload for `phase` (e.g. `before`, `after`).
    pub fn json(&self, phase: &str) -> String {
        format!(
            "{{\"phase\":\"{phase}\",\"space\":{},\"start\":{},\"end\":{},\"leaves_4k\":{},\
             \"leaves_2m\":{},\"leaves_1g\":{}}}",
            self.space.0, self.start, self.end, self.leaves_4k, self.leaves_2m, self.leaves_1g
        )
    }
}

impl<'m, M: PhysMem> Mm<'m, M> {
    /// The leaves of every VMA of `space`, in address order (empty if it is destroyed).
    pub fn leaf_reports(&self, space: &AddressSpace<'m, M>) -> Vec<LeafReport> {
        let st = space.state.lock();
        if st.dead {
            return Vec::new();
        }
        st.vmas
            .iter()
            .map(|v| {
                let mut r = LeafReport {
                    space: space.id(),
                    start: v.start,
                    end: v.end,
                    ..LeafReport::default()
                };
                for (_, t) in st.pt.walk(v.start, v.end) {
                    match t.size {
                        PageSize::Size4K => r.leaves_4k += 1,
                        PageSize::Size2M => r.leaves_2m += 1,
                        PageSize::Size1G => r.leaves_1g += 1,
                    }
                }
                r
            })
            .collect()
    }
}
